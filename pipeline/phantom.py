"""Synthetic multi-phase abdominal CT phantoms (DESIGN section 5).

``make_phantom`` builds a study in memory (HU per phase, venous label map, lesion truth);
``write_phantom_study`` also writes it as DICOM CT series plus ground-truth files::

    OUT_DIR/dicom/<PHASE>/<nnnn>.dcm        one CT Image Storage file per slice, nnnn = InstanceNumber
    OUT_DIR/truth/labels.nii.gz             uint8 labels (DESIGN section 3) on the VP grid
    OUT_DIR/truth/instances.nii.gz          int16 lesion ids on the VP grid (0 = no lesion)
    OUT_DIR/truth/phase_labels/<PHASE>.nii.gz  labels of each phase on its own (misaligned) grid
    OUT_DIR/truth/lesions.json              lesions, per-phase shifts, the study's random parameters

Everything is deterministic by seed: the body, the lesions and the contrast behaviour depend on
the seed only, so any grid samples the same patient; UIDs depend on the seed and the grid.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.errors import ConfigError
from pipeline.phantom_anatomy import sample_anatomy
from pipeline.phantom_dicom import (
    SeriesPlan,
    StudyIdentity,
    decoded_hu,
    encode_pixels,
    make_identity,
    sort_by_z,
    write_series,
)
from pipeline.phantom_grid import PhaseSampler, PhaseWarp
from pipeline.phantom_lesions import LesionRequest, LookalikeSpec, place_lesions, place_lookalikes, sample_lesion_plan
from pipeline.phantom_render import PhantomModel, add_ct_noise, render_phase
from pipeline.phantom_scan import plan_scan, sample_warp
from pipeline.phantom_tissues import phase_index, sample_contrast, sample_tissue_table
from pipeline.phantom_truth import (
    PhantomLesion,
    mean_hu_by_instance,
    measure_lesions,
    write_lesions_json,
    write_nifti,
)
from pipeline.phantom_vendors import ScannerSettings, sample_scanner, series_description
from pipeline.types import PHASE_ORDER, Phase, PhaseVolume, StudyVolumes, VolumeGeometry

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1.0"
REFERENCE_PHASE = Phase.VP
_STREAMS = {"anatomy": 1, "tissues": 2, "lesions": 3, "lookalikes": 4, "motion": 5, "scanner": 6, "noise": 7, "scan": 8, "residual-motion": 9}

__all__ = [
    "LesionRequest",
    "PhantomLesion",
    "PhantomSpec",
    "PhantomStudy",
    "PhantomVolumes",
    "make_phantom",
    "write_phantom_study",
]


def _rng(seed: int, stream: str, *extra: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _STREAMS[stream], *extra]))


@dataclass(frozen=True)
class PhantomSpec:
    """What to generate. ``lesion_requests`` replaces the random lesion plan (e.g. one lesion of
    every type for figures); ``noise=False`` gives noise-free images."""

    seed: int
    phases: tuple[Phase, ...] = PHASE_ORDER
    slices: int = 60
    slice_thickness_mm: float = 5.0
    feet_first: bool = False
    lesions: bool = True
    rows: int = 512
    columns: int = 512
    lesion_requests: tuple[LesionRequest, ...] | None = None
    noise: bool = True
    #: breathing misalignment between phases: "full" (5-15 mm shifts plus deformation, as scanned)
    #: or "residual" (a 0-2 mm shift per phase, as registration leaves them: training data).
    motion: str = "full"

    def __post_init__(self) -> None:
        if self.motion not in ("full", "residual"):
            raise ConfigError("motion: must be 'full' or 'residual'")
        try:
            asked = {Phase(v) for v in self.phases}
        except ValueError as exc:
            raise ConfigError(f"phases: {exc}; use NC, AP, VP, DP") from exc
        object.__setattr__(self, "phases", tuple(p for p in PHASE_ORDER if p in asked))
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError("seed: must be a non-negative integer")
        if not self.phases:
            raise ConfigError("phases: give at least one of NC, AP, VP, DP")
        if not 1 <= self.slices <= 2000:
            raise ConfigError("slices: must be between 1 and 2000")
        if not 0.5 <= self.slice_thickness_mm <= 10.0:
            raise ConfigError("slice_thickness_mm: must be 0.5-10 mm")
        if not (32 <= self.rows <= 1024 and 32 <= self.columns <= 1024):
            raise ConfigError("rows/columns: must be 32-1024")

    @property
    def variant(self) -> str:
        """The grid and options that, with the seed, make the study's identity."""
        req = (
            ""
            if self.lesion_requests is None
            else ",".join(f"{r.lesion_type.display_name}:{r.volume_ml}" for r in self.lesion_requests)
        )
        return (
            f"{self.slices}x{self.slice_thickness_mm:g}mm/{self.rows}x{self.columns}/"
            f"{'FFS' if self.feet_first else 'HFS'}/{int(self.lesions)}/{req}/{int(self.noise)}"
        )


@dataclass
class PhantomVolumes:
    """A phantom study in memory. HU arrays are exactly what a reader decodes from the written
    DICOM (rounded, clipped to -1024..3071, scanner padding outside the reconstruction circle)."""

    spec: PhantomSpec
    geometry: VolumeGeometry  # the grid of every phase, as SimpleITK sorts the series
    hu: dict[Phase, np.ndarray]
    labels: np.ndarray  # uint8 VP labels
    instances: np.ndarray  # int16 VP lesion ids
    phase_labels: dict[Phase, np.ndarray]  # labels of each phase on its own grid
    lesions: list[PhantomLesion]
    shifts_mm: dict[Phase, tuple[float, float, float]]
    identity: StudyIdentity
    scanner: ScannerSettings
    noise_sigma_hu: dict[Phase, float]
    model: PhantomModel
    warps: dict[Phase, PhaseWarp]
    patient_offset_mm: tuple[float, float, float]
    plans: dict[Phase, SeriesPlan]
    fov_mm: float
    fov_mask: np.ndarray  # (rows, columns) inside the reconstruction circle
    timings_s: dict[str, float] = field(default_factory=dict)

    def series_sop_uids(self, phase: Phase) -> tuple[str, ...]:
        """SOP instance UIDs ordered like the z axis of the arrays."""
        numbers = sort_by_z(self.plans[phase].instance_order)
        return tuple(self.identity.sop_instance_uid(phase, n) for n in numbers)

    def to_study_volumes(self) -> StudyVolumes:
        """The phases as pipeline ``StudyVolumes`` (unregistered: phases still misaligned)."""
        return StudyVolumes(
            study_uid=self.identity.study_uid,
            phases={
                p: PhaseVolume(p, self.hu[p], self.geometry, self.identity.series_uids[p], self.series_sop_uids(p))
                for p in self.hu
            },
        )

    def phase_position_mm(self, phase: Phase, point_mm: Sequence[float]) -> np.ndarray:
        """Where a point given in the VP frame (patient LPS mm) appears in another phase."""
        off = np.asarray(self.patient_offset_mm)
        body = np.asarray(point_mm, dtype=np.float64)[None, :] - off
        return self.warps[phase].image_position(body)[0] + off


@dataclass
class PhantomStudy:
    """What ``write_phantom_study`` wrote."""

    out_dir: Path
    study_uid: str
    frame_of_reference_uid: str
    series_uids: dict[Phase, str]
    series_dirs: dict[Phase, Path]
    label_path: Path
    instances_path: Path
    lesions_path: Path
    lesions: list[PhantomLesion]
    shifts_mm: dict[Phase, tuple[float, float, float]]
    seconds: float


# ---------------------------------------------------------------------------------------------


def _build_model(spec: PhantomSpec) -> PhantomModel:
    anatomy = sample_anatomy(_rng(spec.seed, "anatomy"))
    contrast = sample_contrast(_rng(spec.seed, "tissues", 1))
    tissues = sample_tissue_table(_rng(spec.seed, "tissues"), contrast)
    rng_l = _rng(spec.seed, "lesions")
    if spec.lesion_requests is not None:
        plan = list(spec.lesion_requests)
    else:
        plan = sample_lesion_plan(rng_l) if spec.lesions else []
    lesions = place_lesions(rng_l, anatomy, tissues, plan) if plan else []
    lookalikes: list[LookalikeSpec] = place_lookalikes(_rng(spec.seed, "lookalikes"), anatomy, lesions)
    return PhantomModel(anatomy, tissues, tuple(lesions), tuple(lookalikes), contrast)


def make_phantom(
    seed: int,
    phases: Sequence[Phase] = PHASE_ORDER,
    slices: int = 60,
    slice_thickness_mm: float = 5.0,
    feet_first: bool = False,
    lesions: bool = True,
    rows: int = 512,
    columns: int = 512,
    lesion_requests: Sequence[LesionRequest] | None = None,
    noise: bool = True,
    workers: int = 2,
    motion: str = "full",
) -> PhantomVolumes:
    """Generate a phantom study in memory (no disk I/O). ``motion="residual"`` leaves the phases
    aligned as registration would (training data for the models)."""
    spec = PhantomSpec(seed, tuple(phases), slices, slice_thickness_mm, feet_first, lesions, rows, columns,
                       None if lesion_requests is None else tuple(lesion_requests), noise, motion)
    return _generate(spec, workers=workers)


def _generate(spec: PhantomSpec, workers: int = 2) -> PhantomVolumes:
    t0 = time.perf_counter()
    model = _build_model(spec)
    scanner = sample_scanner(_rng(spec.seed, "scanner"))
    scan = plan_scan(
        model.anatomy,
        spec.slices,
        spec.slice_thickness_mm,
        spec.rows,
        spec.columns,
        spec.feet_first,
        _rng(spec.seed, "scan"),
    )
    identity = make_identity(spec.seed, spec.variant)
    rng_m = _rng(spec.seed, "motion")
    warps = {p: sample_warp(rng_m) for p in PHASE_ORDER}  # drawn for all phases: subsets stay identical
    if spec.motion == "residual":
        rng_r = _rng(spec.seed, "residual-motion")
        warps = {p: PhaseWarp(tuple(float(v) for v in rng_r.uniform(-1.2, 1.2, 3))) for p in PHASE_ORDER}
    warps[REFERENCE_PHASE] = PhaseWarp()
    sigma_5mm = float(_rng(spec.seed, "noise").uniform(8.0, 25.0))
    sigma = {
        p: sigma_5mm
        * float(_rng(spec.seed, "noise", 100 + phase_index(p)).uniform(0.92, 1.08))
        * (5.0 / spec.slice_thickness_mm) ** 0.25
        for p in PHASE_ORDER
    }
    voxel = (scan.geometry.spacing_mm[2], scan.geometry.spacing_mm[1], scan.geometry.spacing_mm[0])
    t_model = time.perf_counter() - t0

    def one(phase: Phase) -> tuple[Phase, np.ndarray, np.ndarray, np.ndarray, dict[int, float]]:
        pi = phase_index(phase)
        sampler = PhaseSampler(*scan.axes_body, warps[phase], voxel, scanner.psf_mm)
        canvas = render_phase(model, sampler, pi)
        means = mean_hu_by_instance(canvas.hu, canvas.instances, len(model.lesions))
        if spec.noise:
            add_ct_noise(canvas.hu, sigma[phase], _rng(spec.seed, "noise", pi))
        hu = decoded_hu(canvas.hu, scanner.vendor, scan.fov_mask)
        return phase, hu, canvas.labels, canvas.instances, means

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(spec.phases)))) as pool:
        results = list(pool.map(one, spec.phases))
    if REFERENCE_PHASE in spec.phases:
        ref = next(r for r in results if r[0] == REFERENCE_PHASE)
        labels, instances = ref[2], ref[3]
    else:  # no venous phase asked for: still give the reference truth
        sampler = PhaseSampler(*scan.axes_body, warps[REFERENCE_PHASE], voxel, scanner.psf_mm)
        canvas = render_phase(model, sampler, phase_index(REFERENCE_PHASE))
        labels, instances = canvas.labels, canvas.instances
    off = np.asarray(scan.offset_mm)
    ids = {
        s.lesion_id: (s.lesion_type, s.nominal_volume_ml, tuple(float(v) for v in np.asarray(s.shape.center_mm) + off))
        for s in model.lesions
    }
    truth = measure_lesions(instances, scan.geometry, ids)
    for les in truth:
        les.mean_hu = {r[0]: r[4][les.lesion_id] for r in results if les.lesion_id in r[4]}
    dropped = len(model.lesions) - len(truth)
    if dropped:
        log.info("%d lesion(s) lie outside the scanned range and are not in the truth", dropped)
    plans = {
        p: SeriesPlan(
            p,
            scan.geometry,
            scan.row_direction,
            (0.0, 1.0, 0.0),
            scan.instance_order,
            spec.feet_first,
            spec.slice_thickness_mm,
            scan.fov_mm,
        )
        for p in spec.phases
    }
    return PhantomVolumes(
        spec=spec,
        geometry=scan.geometry,
        hu={r[0]: r[1] for r in results},
        labels=labels,
        instances=instances,
        phase_labels={r[0]: r[2] for r in results},
        lesions=truth,
        shifts_mm={p: tuple(float(v) for v in warps[p].shift_mm) for p in spec.phases},
        identity=identity,
        scanner=scanner,
        noise_sigma_hu={p: sigma[p] for p in spec.phases},
        model=model,
        warps=warps,
        patient_offset_mm=scan.offset_mm,
        plans=plans,
        fov_mm=scan.fov_mm,
        fov_mask=scan.fov_mask,
        timings_s={"model": t_model, "render": time.perf_counter() - t0 - t_model},
    )


# ---------------------------------------------------------------------------------------------


def _parameters(vol: PhantomVolumes) -> dict[str, Any]:
    s, m = vol.scanner, vol.model
    a = m.anatomy
    return {
        "manufacturer": s.vendor.manufacturer,
        "model": s.model,
        "kernel": s.kernel,
        "in_plane_blur_fwhm_mm": round(s.psf_mm, 3),
        "series_descriptions": {
            p.value: series_description(s, p, vol.spec.slice_thickness_mm) for p in vol.spec.phases
        },
        "patient_position": "FFS" if vol.spec.feet_first else "HFS",
        "kvp": s.kvp,
        "contrast_agent": s.contrast_agent,
        "acquisition_offsets_s": {p.value: round(s.acquisition_offsets_s[phase_index(p)], 2) for p in PHASE_ORDER},
        "noise_sigma_hu": {p.value: round(v, 2) for p, v in vol.noise_sigma_hu.items()},
        "contrast_phase_scale": {p.value: round(m.contrast.phase_scale[phase_index(p)], 3) for p in PHASE_ORDER},
        "arterial_timing": round(m.contrast.arterial_timing, 3),
        "oral_contrast": m.contrast.oral_contrast,
        "tissue_hu": {k: [round(x, 1) for x in v] for k, v in m.tissues.values.items()},
        "reconstruction_diameter_mm": vol.fov_mm,
        "patient_offset_mm": list(vol.patient_offset_mm),
        "body_half_width_mm": round(a.body_extent_mm()[0], 1),
        "liver_center_mm": [round(v + o, 1) for v, o in zip(a.liver.center_mm, vol.patient_offset_mm)],
        "liver_semi_axes_mm": [round(v, 1) for v in a.liver.semi_axes_mm],
        "gallbladder": a.gallbladder is not None,
        "deformation_bound_mm": {p.value: round(vol.warps[p].deformation_bound_mm, 2) for p in vol.spec.phases},
        "lookalikes": [
            {
                "kind": la.kind,
                "center_mm": [round(v + o, 1) for v, o in zip(la.shape.center_mm, vol.patient_offset_mm)],
                "delta_hu": [round(v, 1) for v in la.delta_hu],
            }
            for la in m.lookalikes
        ],
    }


def truth_document(vol: PhantomVolumes) -> dict[str, Any]:
    """The content of lesions.json."""
    g = vol.geometry
    return {
        "generator": "livernode.phantom",
        "generator_version": GENERATOR_VERSION,
        "seed": vol.spec.seed,
        "study_uid": vol.identity.study_uid,
        "frame_of_reference_uid": vol.identity.frame_of_reference_uid,
        "series_uids": {p.value: vol.identity.series_uids[p] for p in vol.spec.phases},
        "reference_phase": REFERENCE_PHASE.value,
        "geometry": {
            "shape_zyx": list(g.shape),
            "spacing_zyx_mm": [round(v, 6) for v in g.spacing_mm],
            "origin_mm": [round(v, 4) for v in g.origin_mm],
            "direction": list(g.direction),
        },
        "phase_shifts_mm": {p.value: [round(v, 3) for v in vol.shifts_mm[p]] for p in vol.spec.phases},
        "lesions": [les.to_json() for les in vol.lesions],
        "parameters": _parameters(vol),
    }


def write_phantom_study(
    out_dir: Path,
    seed: int,
    phases: Sequence[Phase] = PHASE_ORDER,
    slices: int = 60,
    slice_thickness_mm: float = 5.0,
    feet_first: bool = False,
    lesions: bool = True,
    rows: int = 512,
    columns: int = 512,
    lesion_requests: Sequence[LesionRequest] | None = None,
    noise: bool = True,
) -> PhantomStudy:
    """Generate a phantom study and write it: DICOM series per phase plus ground truth."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    vol = make_phantom(seed, phases, slices, slice_thickness_mm, feet_first, lesions, rows, columns,
                       lesion_requests, noise)
    spec = vol.spec
    series_dirs = {p: out_dir / "dicom" / p.value for p in spec.phases}
    scanner, identity = vol.scanner, vol.identity

    def write(phase: Phase) -> None:
        for stale in series_dirs[phase].glob("*.dcm"):  # from an earlier run with another grid
            stale.unlink()
        stored = encode_pixels(vol.hu[phase], scanner.vendor, vol.fov_mask)
        write_series(series_dirs[phase], stored, vol.plans[phase], scanner, identity)

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(write, spec.phases))
    truth_dir = out_dir / "truth"
    label_path, instances_path, lesions_path = (
        truth_dir / "labels.nii.gz",
        truth_dir / "instances.nii.gz",
        truth_dir / "lesions.json",
    )
    write_nifti(label_path, vol.labels, vol.geometry)
    write_nifti(instances_path, vol.instances, vol.geometry)
    for p, lab in vol.phase_labels.items():
        write_nifti(truth_dir / "phase_labels" / f"{p.value}.nii.gz", lab, vol.geometry)
    write_lesions_json(lesions_path, truth_document(vol))
    seconds = time.perf_counter() - t0
    log.info(
        "phantom study %s written: %d phases, %d lesions, %.1f s",
        vol.identity.study_uid,
        len(spec.phases),
        len(vol.lesions),
        seconds,
    )
    return PhantomStudy(
        out_dir=out_dir,
        study_uid=identity.study_uid,
        frame_of_reference_uid=identity.frame_of_reference_uid,
        series_uids={p: identity.series_uids[p] for p in spec.phases},
        series_dirs=series_dirs,
        label_path=label_path,
        instances_path=instances_path,
        lesions_path=lesions_path,
        lesions=vol.lesions,
        shifts_mm=vol.shifts_mm,
        seconds=seconds,
    )
