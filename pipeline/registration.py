"""Registration of every phase onto the reference (venous) phase (docs/ingest.md).

Per phase: both volumes are smoothed and downsampled to a working grid (about 2 mm), windowed,
and registered with elastix (affine, then B-spline on a coarse control grid), with the sampling
restricted to the reference's body mask. The elastix transform is turned into a dense
displacement field on the reference's working grid, and that field is what is kept: it resamples
the full-resolution phase onto the reference grid (SimpleITK, linear) and, inverted by fixed-point
iteration, maps masks from the reference grid back onto the phase's own grid
(`resample_to_phase_grid`). The quality figure is the normalised cross-correlation (NCC) with the
reference inside its body mask, before and after; a failed or worse registration falls back to
the unregistered phase resampled by patient coordinates, recorded as a decision.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from pipeline.config import RegistrationConfig
from pipeline.errors import InputError
from pipeline.sitk_geometry import geometry_of, set_geometry, to_sitk
from pipeline.types import Decision, Phase, PhaseVolume, RegistrationQuality, StudyVolumes, VolumeGeometry

log = logging.getLogger(__name__)

__all__ = [
    "PhaseMapping",
    "RegisteredStudy",
    "normalised_cross_correlation",
    "phase_grid_resampler",
    "register_study",
    "resample_to_phase_grid",
    "resample_to_reference_grid",
]

_BODY_THRESHOLD_HU = -400.0
_INVERSE_ITERATIONS = 30
_INVERSE_TOLERANCE_MM = 0.01

#: (fixed, moving, fixed_mask, config) -> displacement field (z, y, x, 3) on the fixed grid.
Registrar = Callable[[sitk.Image, sitk.Image, np.ndarray, RegistrationConfig], np.ndarray]


@dataclass
class PhaseMapping:
    """How one phase relates to the reference grid.

    `displacement_mm` (z, y, x, 3; LPS x, y, z components) lives on `field_geometry`, the
    reference's working grid: the reference point p corresponds to the phase point p + d(p).
    None when the phase was not registered (identity: same patient coordinates)."""

    phase: Phase
    source_geometry: VolumeGeometry
    source_series_uid: str
    source_sop_instance_uids: tuple[str, ...]
    registered: bool
    displacement_mm: np.ndarray | None = None
    field_geometry: VolumeGeometry | None = None
    seconds: float = 0.0


@dataclass
class RegisteredStudy(StudyVolumes):
    """`StudyVolumes` plus what is needed to map results back to each phase's own grid.

    In `phases`, every phase lies on the reference grid; a resampled phase keeps its own series
    UID but has no per-slice SOP instance UIDs (they are in `mappings[phase]`)."""

    mappings: dict[Phase, PhaseMapping] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# public API


def register_study(
    phases: dict[Phase, PhaseVolume],
    config: RegistrationConfig | None = None,
    *,
    study_uid: str = "",
    reference_phase: Phase | None = None,
    registrar: Registrar | None = None,
) -> RegisteredStudy:
    """Register every phase onto the reference phase (VP unless `reference_phase` is given) and
    resample it onto the reference grid. `registrar` replaces elastix (tests)."""
    config = config or RegistrationConfig()
    reference_phase = reference_phase or Phase.VP
    if reference_phase not in phases:
        raise InputError(f"reference phase {reference_phase.value} is not among the phases {[p.value for p in phases]}")
    reference = phases[reference_phase]
    registrar = registrar or elastix_displacement
    ref_full = to_sitk(reference.hu, reference.geometry)
    fixed_w, field_geometry = _to_working(ref_full, config.working_spacing_mm)
    fixed_mask = body_mask(sitk.GetArrayViewFromImage(fixed_w))
    fixed_w = _window(fixed_w, config)

    study = RegisteredStudy(study_uid=study_uid, phases={}, reference_phase=reference_phase)
    for phase, volume in phases.items():
        if phase is reference_phase:
            study.phases[phase] = volume
            study.mappings[phase] = PhaseMapping(
                phase, volume.geometry, volume.series_uid, volume.sop_instance_uids, registered=False
            )
            continue
        started = time.perf_counter()
        quality, mapping, decision = _register_phase(
            phase, volume, fixed_w, fixed_mask, field_geometry, config, registrar
        )
        transform = _transform(mapping)
        hu = _resample(to_sitk(volume.hu, volume.geometry), ref_full, transform, sitk.sitkLinear, config)
        mapping.seconds = time.perf_counter() - started
        study.phases[phase] = PhaseVolume(
            phase=phase,
            hu=sitk.GetArrayFromImage(hu).astype(np.float32, copy=False),
            geometry=reference.geometry,
            series_uid=volume.series_uid,
            sop_instance_uids=(),
        )
        study.mappings[phase] = mapping
        study.registration.append(quality)
        study.decisions.append(decision)
        log.info(
            "study %s: %s onto %s: NCC %.3f -> %.3f, %s (%.1f s)",
            study_uid, phase.value, reference_phase.value, quality.before, quality.after,
            "registered" if quality.used_registered else "unregistered", mapping.seconds,
        )
    return study


def phase_grid_resampler(study: RegisteredStudy, phase: Phase) -> Callable[[np.ndarray], np.ndarray]:
    """A function mapping masks or label maps on the reference grid onto `phase`'s own grid (see
    :func:`resample_to_phase_grid`). The inverse of the registration's displacement field is
    computed once here, not once per mask: a study's per-phase SEG maps every segment through it.
    Each mask is resampled only where it can land: its bounding box on the reference grid, and
    the phase voxels within the field's largest displacement of it (everything else is 0 either
    way); a lesion's segment then costs a small fraction of the whole grid."""
    if phase not in study.mappings:
        raise InputError(f"phase {phase.value} is not part of this study")
    mapping = study.mappings[phase]
    reference_geometry = study.phases[study.reference_phase].geometry
    transform: sitk.Transform = sitk.Transform(3, sitk.sitkIdentity)
    reach_mm = 0.0
    if mapping.registered and mapping.displacement_mm is not None and mapping.field_geometry is not None:
        inverse, inverse_geometry = _inverse_field(mapping)
        transform = _field_transform(inverse, inverse_geometry)
        reach_mm = float(np.sqrt((inverse.astype(np.float64) ** 2).sum(axis=-1)).max()) if inverse.size else 0.0
    target_geometry = mapping.source_geometry

    def resample(mask_on_reference: np.ndarray) -> np.ndarray:
        if tuple(mask_on_reference.shape) != tuple(reference_geometry.shape):
            raise InputError(f"mask shape {mask_on_reference.shape} is not the reference grid {reference_geometry.shape}")
        dtype = mask_on_reference.dtype
        binary = dtype == np.bool_
        values = np.asarray(mask_on_reference).astype(np.float32 if binary else np.int32)
        out = np.zeros(tuple(target_geometry.shape), dtype=bool if binary else dtype)
        source_box = _nonzero_box(values, margin=2)
        if source_box is None:
            return out
        target_box = _landing_box(source_box, reference_geometry, target_geometry, reach_mm)
        if target_box is None:
            return out
        source = to_sitk(values[source_box], _sub_geometry(reference_geometry, source_box))
        resampler = sitk.ResampleImageFilter()
        resampler.SetReferenceImage(_empty_image(_sub_geometry(target_geometry, target_box)))
        resampler.SetTransform(transform)
        # a binary mask is interpolated linearly and cut at 0.5 (no half-voxel snapping of its
        # outline); a label map takes the nearest label
        resampler.SetInterpolator(sitk.sitkLinear if binary else sitk.sitkNearestNeighbor)
        resampler.SetDefaultPixelValue(0)
        mapped = sitk.GetArrayFromImage(resampler.Execute(source))
        out[target_box] = mapped >= 0.5 if binary else mapped.astype(dtype, copy=False)
        return out

    return resample


def _nonzero_box(values: np.ndarray, margin: int) -> tuple[slice, slice, slice] | None:
    """The bounding box of `values`' non-zero voxels widened by `margin` (zeros around it keep
    linear interpolation at its edge as on the whole grid); None when all are zero."""
    where = np.nonzero(values)
    if not where[0].size:
        return None
    return tuple(slice(max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, n))  # type: ignore[return-value]
                 for i, n in zip(where, values.shape))


def _sub_geometry(geometry: VolumeGeometry, box: tuple[slice, slice, slice]) -> VolumeGeometry:
    """The geometry of the voxels `box` of `geometry`."""
    start = np.array([[b.start for b in box]], dtype=np.float64)
    return VolumeGeometry(shape=tuple(b.stop - b.start for b in box), spacing_mm=geometry.spacing_mm,  # type: ignore[arg-type]
                          origin_mm=tuple(float(v) for v in geometry.index_to_patient(start)[0]),  # type: ignore[arg-type]
                          direction=geometry.direction)


def _landing_box(source_box: tuple[slice, slice, slice], source: VolumeGeometry, target: VolumeGeometry,
                 reach_mm: float) -> tuple[slice, slice, slice] | None:
    """The voxels of `target` whose sample point can fall in `source_box` of `source` when the
    transform moves points by at most `reach_mm`: the box's corners widened by the reach (and
    a voxel) along every patient axis, in target indices; None when that misses the target."""
    corners = np.array([[b.start - 0.5 if pick == 0 else b.stop - 0.5 for b, pick in zip(source_box, picks)]
                        for picks in np.ndindex(2, 2, 2)], dtype=np.float64)
    points = source.index_to_patient(corners)
    widen = reach_mm + max(target.spacing_mm) + max(source.spacing_mm)
    grown = np.array([points.min(axis=0) - widen, points.max(axis=0) + widen])
    box_corners = np.array([[grown[i, 0], grown[j, 1], grown[k, 2]] for i, j, k in np.ndindex(2, 2, 2)])
    index = _physical_to_index(box_corners, target)  # (3, 8) z, y, x
    out = []
    for axis, n in enumerate(target.shape):
        lo, hi = max(int(np.floor(index[axis].min())) - 1, 0), min(int(np.ceil(index[axis].max())) + 2, n)
        if lo >= hi:
            return None
        out.append(slice(lo, hi))
    return tuple(out)  # type: ignore[return-value]


def resample_to_phase_grid(mask_on_reference: np.ndarray, study: RegisteredStudy, phase: Phase) -> np.ndarray:
    """Map a mask (bool: linear interpolation cut at 0.5) or a label map (integers: nearest
    neighbour) on the reference grid onto `phase`'s own (original) grid. Each phase voxel y takes the label at the reference point x with x + d(x) = y,
    found by fixed-point iteration x <- y - d(x) on a working-resolution grid (the inverse of the
    registration's displacement field). Several masks of one phase: :func:`phase_grid_resampler`."""
    return phase_grid_resampler(study, phase)(mask_on_reference)


def resample_to_reference_grid(array_on_phase: np.ndarray, study: RegisteredStudy, phase: Phase) -> np.ndarray:
    """Map an array on `phase`'s own grid onto the reference grid with the same transform that
    made ``study.phases[phase]``: bool masks linearly (cut at 0.5), integer label maps by nearest
    neighbour, floats linearly (outside the phase: 0)."""
    if phase not in study.mappings:
        raise InputError(f"phase {phase.value} is not part of this study")
    mapping = study.mappings[phase]
    if tuple(array_on_phase.shape) != tuple(mapping.source_geometry.shape):
        raise InputError(f"array shape {array_on_phase.shape} is not the {phase.value} grid {mapping.source_geometry.shape}")
    dtype = array_on_phase.dtype
    binary = dtype == np.bool_
    integer = np.issubdtype(dtype, np.integer)
    source = to_sitk(np.asarray(array_on_phase).astype(np.int32 if integer else np.float32), mapping.source_geometry)
    reference = _empty_image(study.phases[study.reference_phase].geometry)
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(reference)
    resampler.SetTransform(_transform(mapping))
    resampler.SetInterpolator(sitk.sitkNearestNeighbor if integer else sitk.sitkLinear)
    resampler.SetOutputPixelType(sitk.sitkInt32 if integer else sitk.sitkFloat32)
    resampler.SetDefaultPixelValue(0)
    out = sitk.GetArrayFromImage(resampler.Execute(source))
    return out >= 0.5 if binary else out.astype(dtype, copy=False)


def normalised_cross_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """NCC of `a` and `b` over `mask` (NaN when the mask is empty or an image is flat there)."""
    x = a[mask].astype(np.float64)
    y = b[mask].astype(np.float64)
    if x.size < 2:
        return math.nan
    x -= x.mean()
    y -= y.mean()
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / denominator if denominator > 0 else math.nan


def body_mask(hu: np.ndarray) -> np.ndarray:
    """Largest connected region above -400 HU with its holes filled slice by slice."""
    labels, count = ndimage.label(hu > _BODY_THRESHOLD_HU)
    if count == 0:
        return np.zeros(hu.shape, dtype=bool)
    sizes = ndimage.sum_labels(np.ones(hu.shape, dtype=np.int32), labels, index=np.arange(1, count + 1))
    mask = labels == int(np.argmax(sizes)) + 1
    for k in range(mask.shape[0]):
        mask[k] = ndimage.binary_fill_holes(mask[k])
    return mask


# --------------------------------------------------------------------------------------------
# one phase


def _register_phase(
    phase: Phase,
    volume: PhaseVolume,
    fixed_w: sitk.Image,
    fixed_mask: np.ndarray,
    field_geometry: VolumeGeometry,
    config: RegistrationConfig,
    registrar: Registrar,
) -> tuple[RegistrationQuality, PhaseMapping, Decision]:
    moving_w, _ = _to_working(to_sitk(volume.hu, volume.geometry), config.working_spacing_mm)
    moving_w = _window(moving_w, config)
    identity = sitk.Transform(3, sitk.sitkIdentity)
    before_img, before_valid = _resample_with_validity(moving_w, fixed_w, identity, config)
    fixed_arr = sitk.GetArrayViewFromImage(fixed_w)
    before = normalised_cross_correlation(fixed_arr, before_img, fixed_mask & before_valid)
    mapping = PhaseMapping(phase, volume.geometry, volume.series_uid, volume.sop_instance_uids, registered=False)
    metric = "NCC in the reference body mask"
    subject = volume.series_uid

    def fallback(reason: str, after: float) -> tuple[RegistrationQuality, PhaseMapping, Decision]:
        message = f"{reason}; using the unregistered phase resampled by patient coordinates"
        log.warning("%s registration fell back: %s", phase.value, message)
        quality = RegistrationQuality(phase, metric, before, after, used_registered=False, message=message)
        return quality, mapping, Decision("registration", subject, "unregistered", message, 0.5)

    if not config.enabled:
        quality = RegistrationQuality(phase, metric, before, before, False, "registration disabled by config")
        return quality, mapping, Decision("registration", subject, "unregistered", "registration disabled by config", 1.0)
    if not np.any(fixed_mask & before_valid):
        return fallback("the phase does not overlap the reference body", math.nan)
    try:
        displacement = registrar(fixed_w, moving_w, fixed_mask, config)
        if displacement.shape != tuple(field_geometry.shape) + (3,) or not np.all(np.isfinite(displacement)):
            raise ValueError(f"displacement field of shape {displacement.shape} or with non-finite values")
    except Exception as exc:  # noqa: BLE001 - any registration failure must fall back, with its reason
        return fallback(f"registration failed ({type(exc).__name__}: {exc})", math.nan)
    candidate = PhaseMapping(
        phase, volume.geometry, volume.series_uid, volume.sop_instance_uids, True,
        displacement.astype(np.float32), field_geometry,
    )
    after_img, after_valid = _resample_with_validity(moving_w, fixed_w, _transform(candidate), config)
    after = normalised_cross_correlation(fixed_arr, after_img, fixed_mask & after_valid)
    if not (after >= before + config.min_ncc_improvement) and not math.isnan(before):
        return fallback(f"NCC after registration {after:.3f} is not better than before {before:.3f}", after)
    if math.isnan(after):
        return fallback("NCC after registration is undefined", after)
    magnitude = float(np.percentile(np.linalg.norm(displacement[fixed_mask], axis=-1), 95))
    message = (
        f"registered: NCC {before:.3f} -> {after:.3f}, 95th percentile displacement in the body "
        f"{magnitude:.1f} mm"
    )
    quality = RegistrationQuality(phase, metric, before, after, used_registered=True, message=message)
    return quality, candidate, Decision("registration", subject, "registered", message, 1.0)


def warm_up_elastix(config: RegistrationConfig) -> float:
    """Register two tiny synthetic images with `config`'s metric and stages so that itk loads its
    elastix modules now (about 10-15 s the first time in a process) rather than during the first
    study; returns the seconds it took. The result is discarded."""
    started = time.perf_counter()
    grid = np.zeros((16, 16, 16), np.float32)
    grid[4:12, 5:11, 4:12] = 200.0
    fixed = sitk.GetImageFromArray(ndimage.gaussian_filter(grid, 1.0))
    moving = sitk.GetImageFromArray(ndimage.gaussian_filter(np.roll(grid, 1, axis=2), 1.0))
    for image in (fixed, moving):
        image.SetSpacing((8.0, 8.0, 8.0))
    tiny = dataclasses.replace(config, resolutions=1, affine_iterations=4, bspline_iterations=4,
                               spatial_samples=256, bspline_grid_spacing_mm=64.0)
    elastix_displacement(fixed, moving, np.ones((16, 16, 16), bool), tiny)
    return time.perf_counter() - started


def elastix_displacement(
    fixed: sitk.Image, moving: sitk.Image, fixed_mask: np.ndarray, config: RegistrationConfig
) -> np.ndarray:
    """Affine then B-spline elastix registration; returns the displacement field (z, y, x, 3),
    LPS mm, on the fixed grid: fixed point p corresponds to moving point p + d(p)."""
    with warnings.catch_warnings():
        # itk's SWIG wrappers raise hundreds of DeprecationWarnings while they load lazily
        warnings.simplefilter("ignore", DeprecationWarning)
        return _elastix_displacement(fixed, moving, fixed_mask, config)


def _elastix_displacement(
    fixed: sitk.Image, moving: sitk.Image, fixed_mask: np.ndarray, config: RegistrationConfig
) -> np.ndarray:
    import itk  # imported here: loading itk's elastix module takes about 10 s

    fixed_itk = _sitk_to_itk(fixed, itk)
    moving_itk = _sitk_to_itk(moving, itk)
    mask_itk = _sitk_to_itk(_like(fixed_mask.astype(np.uint8), fixed), itk)
    parameters = itk.ParameterObject.New()
    parameters.AddParameterMap(_parameter_map(itk, "affine", config))
    if config.deformable:
        parameters.AddParameterMap(_parameter_map(itk, "bspline", config))
    _, transform_parameters = itk.elastix_registration_method(
        fixed_itk,
        moving_itk,
        parameter_object=parameters,
        fixed_mask=mask_itk,
        log_to_console=False,
        number_of_threads=config.threads,
    )
    with tempfile.TemporaryDirectory(prefix="livernode-transformix-") as scratch:
        # transformix writes deformationField.nii into its output directory (default: the cwd)
        deformation = itk.transformix_deformation_field(
            moving_itk, transform_parameters, output_directory=scratch, log_to_console=False
        )
        field = np.asarray(itk.array_from_image(deformation), dtype=np.float32)
    return field.reshape(
        tuple(reversed(fixed.GetSize())) + (3,)
    )


def _parameter_map(itk, kind: str, config: RegistrationConfig):
    parameter_map = itk.ParameterObject.New().GetDefaultParameterMap(kind, config.resolutions)
    iterations = config.affine_iterations if kind == "affine" else config.bspline_iterations
    settings = {
        "Registration": ["MultiResolutionRegistration"],
        "Metric": [config.metric],
        "NumberOfHistogramBins": ["32"],
        "MaximumNumberOfIterations": [str(iterations)],
        "NumberOfSpatialSamples": [str(config.spatial_samples)],
        "ImageSampler": ["RandomCoordinate"],
        "NewSamplesEveryIteration": ["true"],
        "AutomaticTransformInitialization": ["false"],
        "WriteResultImage": ["false"],
        "DefaultPixelValue": [str(config.intensity_window_hu[0])],
        "ResultImagePixelType": ["float"],
        "HowToCombineTransforms": ["Compose"],
        "ErodeMask": ["false"],
    }
    if kind == "affine":
        settings["AutomaticScalesEstimation"] = ["true"]
    else:
        settings["FinalGridSpacingInPhysicalUnits"] = [str(config.bspline_grid_spacing_mm)]
        settings["GridSpacingSchedule"] = [str(2.0 ** (config.resolutions - 1 - i)) for i in range(config.resolutions)]
    for key, value in settings.items():
        parameter_map[key] = value
    return parameter_map


# --------------------------------------------------------------------------------------------
# grids, transforms and resampling


def _empty_image(geometry: VolumeGeometry) -> sitk.Image:
    image = sitk.Image([int(v) for v in reversed(geometry.shape)], sitk.sitkUInt8)
    set_geometry(image, geometry)
    return image


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.CopyInformation(reference)
    return image


def _working_geometry(geometry: VolumeGeometry, spacing_mm: float) -> VolumeGeometry:
    """A grid with at least `spacing_mm` voxels covering the same extent as `geometry`."""
    old = np.asarray(geometry.spacing_mm[::-1], dtype=np.float64)  # x, y, z
    size = np.asarray(geometry.shape[::-1], dtype=np.float64)
    new = np.maximum(old, spacing_mm)
    new_size = np.maximum(1, np.ceil(size * old / new - 1e-6)).astype(int)
    # centre the new grid on the old one (same physical centre)
    old_centre = (size - 1) * old / 2.0
    new_centre = (new_size - 1) * new / 2.0
    shift = geometry.direction_matrix @ (old_centre - new_centre)
    return VolumeGeometry(
        shape=tuple(int(v) for v in new_size[::-1]),  # type: ignore[arg-type]
        spacing_mm=tuple(float(v) for v in new[::-1]),  # type: ignore[arg-type]
        origin_mm=tuple(float(v) for v in np.asarray(geometry.origin_mm) + shift),  # type: ignore[arg-type]
        direction=geometry.direction,
    )


def _to_working(image: sitk.Image, spacing_mm: float) -> tuple[sitk.Image, VolumeGeometry]:
    """Gaussian-smoothed and linearly downsampled copy of `image` on its working grid."""
    geometry = geometry_of(image)
    target = _working_geometry(geometry, spacing_mm)
    old = np.asarray(image.GetSpacing())
    new = np.asarray(target.spacing_mm[::-1])
    sigma = 0.5 * np.sqrt(np.maximum(new**2 - old**2, 0.0))
    source = sitk.Cast(image, sitk.sitkFloat32)
    if np.any(sigma > 0):
        source = sitk.SmoothingRecursiveGaussian(source, [float(max(s, 1e-3)) for s in sigma])
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(_empty_image(target))
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    resampler.SetDefaultPixelValue(float(_BODY_THRESHOLD_HU * 2.5))
    return resampler.Execute(source), target


def _window(image: sitk.Image, config: RegistrationConfig) -> sitk.Image:
    low, high = config.intensity_window_hu
    return sitk.Clamp(image, sitk.sitkFloat32, float(low), float(high))


def _field_transform(displacement: np.ndarray, geometry: VolumeGeometry) -> sitk.Transform:
    image = sitk.GetImageFromArray(displacement.astype(np.float64), isVector=True)
    set_geometry(image, geometry)
    return sitk.DisplacementFieldTransform(image)


def _transform(mapping: PhaseMapping) -> sitk.Transform:
    if mapping.registered and mapping.displacement_mm is not None and mapping.field_geometry is not None:
        return _field_transform(mapping.displacement_mm, mapping.field_geometry)
    return sitk.Transform(3, sitk.sitkIdentity)


def _resample(
    moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform, interpolator: int, config: RegistrationConfig
) -> sitk.Image:
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(reference)
    resampler.SetTransform(transform)
    resampler.SetInterpolator(interpolator)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    resampler.SetDefaultPixelValue(float(config.outside_hu))
    resampler.SetNumberOfThreads(config.threads)
    return resampler.Execute(moving)


def _resample_with_validity(
    moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform, config: RegistrationConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Resampled values and where they came from inside the moving image."""
    values = sitk.GetArrayFromImage(_resample(moving, reference, transform, sitk.sitkLinear, config))
    ones = _like(np.ones(tuple(reversed(moving.GetSize())), dtype=np.float32), moving)
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(reference)
    resampler.SetTransform(transform)
    resampler.SetInterpolator(sitk.sitkNearestNeighbor)
    resampler.SetDefaultPixelValue(0.0)
    valid = sitk.GetArrayFromImage(resampler.Execute(ones)) > 0.5
    return values, valid


def _sitk_to_itk(image: sitk.Image, itk):
    array = sitk.GetArrayFromImage(image)
    if array.dtype not in (np.float32, np.uint8):
        array = array.astype(np.float32)
    result = itk.image_from_array(np.ascontiguousarray(array))
    result.SetSpacing([float(v) for v in image.GetSpacing()])
    result.SetOrigin([float(v) for v in image.GetOrigin()])
    result.SetDirection(itk.matrix_from_array(np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)))
    return result


def _physical_to_index(points_xyz: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    """(N, 3) patient points -> (3, N) continuous (z, y, x) indices."""
    inverse = np.linalg.inv(geometry.direction_matrix)
    ijk = (points_xyz - np.asarray(geometry.origin_mm)) @ inverse.T / np.asarray(geometry.spacing_mm[::-1])
    return ijk[:, ::-1].T


def _grid_points(geometry: VolumeGeometry) -> np.ndarray:
    zyx = np.indices(geometry.shape, dtype=np.float64).reshape(3, -1).T
    return geometry.index_to_patient(zyx)


def _inverse_field(mapping: PhaseMapping) -> tuple[np.ndarray, VolumeGeometry]:
    """Inverse displacement e on a working grid over the phase's own extent: phase point y
    corresponds to reference point y + e(y). Fixed-point iteration x <- y - d(x)."""
    forward = mapping.displacement_mm
    field_geometry = mapping.field_geometry
    if forward is None or field_geometry is None:
        raise InputError(f"phase {mapping.phase.value} has no displacement field to invert")
    spacing = min(field_geometry.spacing_mm)
    geometry = _working_geometry(mapping.source_geometry, spacing)
    y = _grid_points(geometry)
    components = [np.ascontiguousarray(forward[..., c], dtype=np.float32) for c in range(3)]

    def displacement_at(points: np.ndarray) -> np.ndarray:
        index = _physical_to_index(points, field_geometry)
        return np.stack(
            [ndimage.map_coordinates(comp, index, order=1, mode="nearest") for comp in components], axis=1
        )

    x = y - displacement_at(y)
    for _ in range(_INVERSE_ITERATIONS):
        x_next = y - displacement_at(x)
        change = float(np.max(np.abs(x_next - x))) if x.size else 0.0
        x = x_next
        if change < _INVERSE_TOLERANCE_MM:
            break
    inverse = (x - y).reshape(tuple(geometry.shape) + (3,))
    return inverse, geometry
