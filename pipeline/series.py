"""Series assembly: loose DICOM files -> studies -> series -> HU volumes (docs/ingest.md).

`scan_files` reads headers only and returns the candidate volumes (`SeriesInfo`, one per stack of
slices that can be loaded) and everything skipped with a reason. `load_series` decodes the pixels
of one candidate into a float32 (z, y, x) HU array. Slices are ordered by their position along the
slice normal; geometry problems (missing slices, gantry tilt, spacing too uneven) are refused at
scan time as recorded skips, so one bad series never fails a study that has a good one.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pydicom

from pipeline.config import SeriesConfig
from pipeline.dicom_scan import (
    FileScan,
    SeriesAttributes,
    SkippedItem,
    SliceHeader,
    iter_files,
    read_file,
)
from pipeline.errors import InputError
from pipeline.types import Phase, PhaseVolume, VolumeGeometry

log = logging.getLogger(__name__)

__all__ = [
    "LoadedSeries",
    "ScanResult",
    "SeriesInfo",
    "SkippedItem",
    "StudyScan",
    "group_studies",
    "load_series",
    "sample_series_hu",
    "scan_files",
]

_POSITION_TOLERANCE_MM = 0.01


@dataclass(frozen=True)
class SeriesInfo:
    """One loadable stack of CT slices (a series, or one acquisition of a series), header only."""

    study_uid: str
    series_uid: str
    key: str  # unique per stack: the series UID, plus "#<label>" when a series was split
    acquisition_label: str  # "" or e.g. "acquisition 2" when the series held several
    attributes: SeriesAttributes
    image_type: tuple[str, ...]
    geometry: VolumeGeometry  # of the volume `load_series` returns
    slices: tuple[SliceHeader, ...]  # ordered along the slice normal
    slice_positions_mm: tuple[float, ...]  # of `slices` along the normal, relative to slice 0
    slice_thickness_mm: float | None
    acquisition_time_s: float | None  # earliest slice; seconds since 0001-01-01 (or since midnight)
    resampled: bool = False  # uneven spacing: `load_series` interpolates onto `geometry`
    notes: tuple[str, ...] = ()

    @property
    def series_number(self) -> int | None:
        return self.attributes.series_number

    @property
    def description(self) -> str:
        return self.attributes.series_description

    @property
    def num_slices(self) -> int:
        return self.geometry.shape[0]

    @property
    def label(self) -> str:
        """Human-readable name for logs and decisions (no patient data)."""
        text = f"series {self.series_number} '{self.description}'"
        if self.acquisition_label:
            text += f" ({self.acquisition_label})"
        return text


@dataclass
class ScanResult:
    """Candidate volumes and everything skipped, over all studies found."""

    series: list[SeriesInfo] = field(default_factory=list)
    skipped: list[SkippedItem] = field(default_factory=list)


@dataclass
class StudyScan:
    """The candidate volumes and skips of one study."""

    study_uid: str
    series: list[SeriesInfo] = field(default_factory=list)
    skipped: list[SkippedItem] = field(default_factory=list)


@dataclass
class LoadedSeries:
    """A decoded series: HU volume (z, y, x) float32 with geometry and source references."""

    info: SeriesInfo
    hu: np.ndarray
    geometry: VolumeGeometry
    sop_instance_uids: tuple[str, ...]  # per z; for multi-frame sources the UID repeats
    frame_numbers: tuple[int, ...]  # per z; 1-based frame numbers, 0 for single-frame files

    def to_phase_volume(self, phase: Phase) -> PhaseVolume:
        """Wrap as a `PhaseVolume` (the array is shared, not copied)."""
        return PhaseVolume(
            phase=phase,
            hu=self.hu,
            geometry=self.geometry,
            series_uid=self.info.series_uid,
            sop_instance_uids=self.sop_instance_uids,
        )


# --------------------------------------------------------------------------------------------
# scanning


def scan_files(paths: Iterable[str | os.PathLike[str]], config: SeriesConfig | None = None) -> ScanResult:
    """Read the headers of every file under `paths` (files or folders, any layout, any names)
    and assemble candidate volumes. DICOMDIR, non-DICOM, non-CT-image, truncated and malformed
    files, localizers, derived series and stacks with unusable geometry are returned as skips."""
    config = config or SeriesConfig()
    file_scans = [read_file(path) for path in iter_files(paths)]
    return assemble(file_scans, config)


def assemble(file_scans: Sequence[FileScan], config: SeriesConfig) -> ScanResult:
    """Group read files into stacks and validate them (the header-only half of `scan_files`)."""
    result = ScanResult()
    by_series: dict[tuple[str, str], list[SliceHeader]] = defaultdict(list)
    file_skips: dict[tuple[str, str, str], list[SkippedItem]] = defaultdict(list)
    for scan in file_scans:
        if scan.skipped is not None:
            item = scan.skipped
            file_skips[(item.study_uid, item.series_uid, item.reason)].append(item)
        for header in scan.slices:
            by_series[(header.study_uid, header.series_uid)].append(header)
    for (study_uid, series_uid, reason), items in file_skips.items():
        if len(items) == 1 or not series_uid:
            result.skipped.extend(items)
        else:
            result.skipped.append(
                SkippedItem(
                    what=f"{len(items)} files of series {series_uid}",
                    reason=reason,
                    study_uid=study_uid,
                    series_uid=series_uid,
                    file_count=len(items),
                )
            )
    for (study_uid, series_uid), headers in sorted(by_series.items(), key=_series_sort_key):
        infos, skips = _assemble_series(study_uid, series_uid, headers, config)
        result.series.extend(infos)
        result.skipped.extend(skips)
    for item in result.skipped:
        # series labels and reasons only: file paths may carry names of patients (export layouts)
        if item.series_uid:
            log.info("skipped in series %s (%d file(s)): %s", item.series_uid, item.file_count, item.reason)
        else:
            log.debug("skipped %s: %s", item.what, item.reason)
    for info in result.series:
        log.info("series %s: %d slices, %s", info.key, info.num_slices, "; ".join(info.notes) or "ok")
    return result


def group_studies(scan: ScanResult) -> list[StudyScan]:
    """Split a scan by StudyInstanceUID (series ordered by series number, then acquisition).
    Skips whose study is unknown (non-DICOM files) are not attached to any study."""
    studies: dict[str, StudyScan] = {}
    for info in scan.series:
        studies.setdefault(info.study_uid, StudyScan(info.study_uid)).series.append(info)
    for item in scan.skipped:
        if item.study_uid:
            studies.setdefault(item.study_uid, StudyScan(item.study_uid)).skipped.append(item)
    for study in studies.values():
        study.series.sort(key=lambda s: (s.series_number is None, s.series_number or 0, s.key))
    return sorted(studies.values(), key=lambda s: s.study_uid)


def _series_sort_key(item: tuple[tuple[str, str], list[SliceHeader]]) -> tuple:
    (study_uid, series_uid), headers = item
    number = headers[0].attributes.series_number
    return (study_uid, number is None, number or 0, series_uid)


def _describe(headers: Sequence[SliceHeader], label: str = "") -> str:
    attrs = headers[0].attributes
    text = f"series {attrs.series_number} '{attrs.series_description}' ({headers[0].series_uid})"
    return f"{text} {label}" if label else text


def _assemble_series(
    study_uid: str, series_uid: str, headers: list[SliceHeader], config: SeriesConfig
) -> tuple[list[SeriesInfo], list[SkippedItem]]:
    def skip(reason: str, subset: Sequence[SliceHeader] = headers, label: str = "") -> SkippedItem:
        files = len({h.path for h in subset})
        return SkippedItem(_describe(subset, label), reason, study_uid, series_uid, files)

    headers = _unique_instances(headers)
    attrs = headers[0].attributes
    image_types = {h.image_type for h in headers}
    if any("LOCALIZER" in t for t in image_types):
        return [], [skip("localizer (ImageType LOCALIZER): not a phase")]
    if attrs.modality and attrs.modality.upper() != "CT":
        return [], [skip(f"modality {attrs.modality} is not CT")]
    derived = [t for t in image_types if t and (t[0] == "DERIVED" or (len(t) > 1 and t[1] == "SECONDARY"))]
    if derived and not config.accept_derived:
        return [], [skip(f"derived/secondary images (ImageType {'/'.join(derived[0])}): not an original phase")]
    if len(headers) == 1:
        return [], [skip("a single slice is not a volume")]
    missing = [h for h in headers if h.position_mm is None or h.orientation is None or h.pixel_spacing_mm is None]
    if missing:
        return [], [skip(f"{len(missing)} slice(s) lack ImagePositionPatient/ImageOrientationPatient/PixelSpacing")]
    if any(h.rows <= 0 or h.columns <= 0 for h in headers):
        return [], [skip("slices without Rows/Columns")]

    infos: list[SeriesInfo] = []
    skips: list[SkippedItem] = []
    geometry_groups = _group_by(headers, _geometry_key)
    for g_index, group in enumerate(geometry_groups):
        g_label = f"stack {g_index + 1}" if len(geometry_groups) > 1 else ""
        try:
            stacks = _split_acquisitions(group, config)
        except InputError as exc:
            skips.append(skip(str(exc), group, g_label))
            continue
        for a_index, stack in enumerate(stacks):
            label = ", ".join(
                x for x in (g_label, f"acquisition {a_index + 1}" if len(stacks) > 1 else "") if x
            )
            try:
                infos.append(_build_info(study_uid, series_uid, stack, label, config))
            except InputError as exc:
                skips.append(skip(str(exc), stack, label))
    return infos, skips


def _unique_instances(headers: list[SliceHeader]) -> list[SliceHeader]:
    """Drop repeated copies of the same SOP instance (and frame), keeping the first file."""
    seen: set[tuple[str, int | None]] = set()
    unique = []
    for header in headers:
        key = (header.sop_instance_uid, header.frame_index)
        if key in seen:
            continue
        seen.add(key)
        unique.append(header)
    return unique


def _geometry_key(header: SliceHeader) -> tuple:
    orientation = tuple(round(v, 3) + 0.0 for v in header.orientation or ())
    spacing = tuple(round(v, 4) for v in header.pixel_spacing_mm or ())
    return (orientation, spacing, header.rows, header.columns)


def _group_by(headers: Sequence[SliceHeader], key) -> list[list[SliceHeader]]:
    groups: dict = {}
    for header in headers:
        groups.setdefault(key(header), []).append(header)
    return sorted(groups.values(), key=len, reverse=True)


def _normal(orientation: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orthonormal row, column and normal directions from ImageOrientationPatient."""
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:], dtype=np.float64)
    row /= np.linalg.norm(row)
    col = col - row * float(row @ col)
    col /= np.linalg.norm(col)
    return row, col, np.cross(row, col)


def _positions_along_normal(stack: Sequence[SliceHeader]) -> np.ndarray:
    _, _, normal = _normal(stack[0].orientation)  # type: ignore[arg-type]
    return np.asarray([np.dot(h.position_mm, normal) for h in stack], dtype=np.float64)


def _has_duplicate_positions(stack: Sequence[SliceHeader]) -> bool:
    positions = np.sort(_positions_along_normal(stack))
    return bool(np.any(np.diff(positions) < _POSITION_TOLERANCE_MM))


def _split_acquisitions(group: list[SliceHeader], config: SeriesConfig) -> list[list[SliceHeader]]:
    """One stack per acquisition. Needed when slices repeat a position: split by AcquisitionNumber,
    then by temporal position, then by acquisition-time clusters, then by repetition rank."""
    if not _has_duplicate_positions(group):
        by_number = _group_by(group, lambda h: h.acquisition_number)
        if len(by_number) > 1 and not _stack_is_valid(group, config):
            if all(_stack_is_valid(g, config) for g in by_number):
                return _order_by_time(by_number)
        return [group]
    attempts = [
        ("AcquisitionNumber", lambda h: h.acquisition_number),
        ("temporal position", lambda h: h.temporal_index),
        ("acquisition time", _time_cluster_key(group, config.acquisition_gap_s)),
    ]
    for _name, key in attempts:
        parts = _group_by(group, key)
        if len(parts) > 1 and not any(_has_duplicate_positions(p) for p in parts):
            return _order_by_time(parts)
    ranked = _split_by_rank(group)
    if ranked is not None:
        return ranked
    raise InputError(
        "slices repeat positions and cannot be separated into acquisitions "
        "(no distinguishing AcquisitionNumber, temporal position or acquisition time)"
    )


def _time_cluster_key(group: Sequence[SliceHeader], gap_s: float):
    times = sorted({h.acquisition_time_s for h in group if h.acquisition_time_s is not None})
    cluster_of: dict[float | None, int] = {None: -1}
    cluster = 0
    for i, t in enumerate(times):
        if i and t - times[i - 1] > gap_s:
            cluster += 1
        cluster_of[t] = cluster
    return lambda h: cluster_of[h.acquisition_time_s]


def _split_by_rank(group: list[SliceHeader]) -> list[list[SliceHeader]] | None:
    """If every position occurs exactly k times, the j-th occurrence (by time, then instance
    number) of each position forms acquisition j."""
    positions = _positions_along_normal(group)
    order = np.argsort(positions, kind="stable")
    clusters: list[list[int]] = [[int(order[0])]]
    for idx in order[1:]:
        if positions[idx] - positions[clusters[-1][0]] < _POSITION_TOLERANCE_MM:
            clusters[-1].append(int(idx))
        else:
            clusters.append([int(idx)])
    counts = {len(c) for c in clusters}
    if len(counts) != 1 or counts == {1}:
        return None
    k = counts.pop()
    parts: list[list[SliceHeader]] = [[] for _ in range(k)]
    for cluster in clusters:
        ranked = sorted(
            cluster,
            key=lambda i: (
                group[i].acquisition_time_s if group[i].acquisition_time_s is not None else math.inf,
                group[i].instance_number if group[i].instance_number is not None else 0,
            ),
        )
        for j, i in enumerate(ranked):
            parts[j].append(group[i])
    return parts


def _order_by_time(parts: list[list[SliceHeader]]) -> list[list[SliceHeader]]:
    def start(part: list[SliceHeader]) -> tuple:
        times = [h.acquisition_time_s for h in part if h.acquisition_time_s is not None]
        numbers = [h.acquisition_number for h in part if h.acquisition_number is not None]
        return (min(times) if times else math.inf, min(numbers) if numbers else 0)

    return sorted(parts, key=start)


def _stack_is_valid(stack: Sequence[SliceHeader], config: SeriesConfig) -> bool:
    try:
        _stack_geometry(stack, config)
    except InputError:
        return False
    return True


@dataclass(frozen=True)
class _StackGeometry:
    order: np.ndarray  # indices into the stack, along the normal
    positions_mm: np.ndarray  # sorted positions along the normal
    geometry: VolumeGeometry
    resampled: bool
    notes: tuple[str, ...]


def _stack_geometry(stack: Sequence[SliceHeader], config: SeriesConfig) -> _StackGeometry:
    """Order slices along the normal and check the spacing; raise InputError with the reason."""
    if len(stack) < config.min_slices:
        raise InputError(f"only {len(stack)} slices (at least {config.min_slices} needed for a volume)")
    first = stack[0]
    row, col, normal = _normal(first.orientation)  # type: ignore[arg-type]
    axial_angle = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    if axial_angle > config.max_axial_angle_deg:
        raise InputError(
            f"non-axial stack (slice normal {axial_angle:.0f} deg from the head-feet axis): "
            "a reformat, not a phase"
        )
    points = np.asarray([h.position_mm for h in stack], dtype=np.float64)
    positions = points @ normal
    order = np.argsort(positions, kind="stable")
    positions = positions[order]
    points = points[order]
    gaps = np.diff(positions)
    nominal = float(np.median(gaps))
    if nominal <= _POSITION_TOLERANCE_MM:
        raise InputError("slices repeat positions")
    big = np.flatnonzero(gaps >= config.missing_slice_gap_factor * nominal)
    if big.size:
        i = int(big[0])
        lost = int(round(gaps[i] / nominal)) - 1
        raise InputError(
            f"missing slice(s): gap of {gaps[i]:.2f} mm between slice positions {positions[i]:.2f} and "
            f"{positions[i + 1]:.2f} mm where {nominal:.2f} mm is expected (about {max(lost, 1)} slice(s) "
            f"missing, {big.size} gap(s) in all)"
        )
    span = points[-1] - points[0]
    along = float(span @ normal)
    across = float(np.linalg.norm(span - along * normal))
    tilt_deg = math.degrees(math.atan2(across, abs(along)))
    if tilt_deg > config.gantry_tilt_tolerance_deg:
        raise InputError(
            f"gantry tilt of {tilt_deg:.1f} deg (slice positions are not along the slice normal); "
            "tilted series are refused: reconstruct without tilt or send a tilt-corrected series"
        )
    deviation = float(np.max(np.abs(gaps - nominal))) / nominal
    notes: list[str] = []
    resampled = False
    spacing_z = float(positions[-1] - positions[0]) / (len(positions) - 1)
    if deviation > config.max_resample_deviation:
        raise InputError(
            f"uneven slice spacing: gaps from {gaps.min():.2f} to {gaps.max():.2f} mm (more than "
            f"{config.max_resample_deviation:.0%} from the nominal {nominal:.2f} mm)"
        )
    if deviation > config.even_spacing_tolerance:
        resampled = True
        notes.append(
            f"uneven slice spacing (gaps {gaps.min():.2f}-{gaps.max():.2f} mm) resampled onto even "
            f"{spacing_z:.3f} mm spacing by linear interpolation along the normal"
        )
    ps = first.pixel_spacing_mm  # (between rows = y, between columns = x)
    direction = np.column_stack([row, col, normal])
    geometry = VolumeGeometry(
        shape=(len(stack), first.rows, first.columns),
        spacing_mm=(spacing_z, float(ps[0]), float(ps[1])),  # type: ignore[index]
        origin_mm=tuple(float(v) for v in points[0]),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in direction.ravel()),
    )
    return _StackGeometry(order, positions - positions[0], geometry, resampled, tuple(notes))


def _build_info(
    study_uid: str, series_uid: str, stack: Sequence[SliceHeader], label: str, config: SeriesConfig
) -> SeriesInfo:
    geo = _stack_geometry(stack, config)
    ordered = tuple(stack[int(i)] for i in geo.order)
    times = [h.acquisition_time_s for h in ordered if h.acquisition_time_s is not None]
    thicknesses = [h.slice_thickness_mm for h in ordered if h.slice_thickness_mm]
    notes = list(geo.notes)
    if label:
        notes.append(f"{label} of a series that holds several")
    return SeriesInfo(
        study_uid=study_uid,
        series_uid=series_uid,
        key=f"{series_uid}#{label.replace(' ', '')}" if label else series_uid,
        acquisition_label=label,
        attributes=ordered[0].attributes,
        image_type=ordered[0].image_type,
        geometry=geo.geometry,
        slices=ordered,
        slice_positions_mm=tuple(float(p) for p in geo.positions_mm),
        slice_thickness_mm=float(np.median(thicknesses)) if thicknesses else None,
        acquisition_time_s=min(times) if times else None,
        resampled=geo.resampled,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------------------------
# loading


def load_series(info: SeriesInfo, config: SeriesConfig | None = None) -> LoadedSeries:
    """Decode the pixel data of `info` into HU (pixel * RescaleSlope + RescaleIntercept),
    float32 (z, y, x) ordered along the slice normal. Raises InputError naming the file when a
    slice cannot be decoded."""
    config = config or SeriesConfig()
    hu = _read_slices(info, range(len(info.slices)), config)
    if info.resampled:
        hu = _resample_even(hu, np.asarray(info.slice_positions_mm), info.geometry.spacing_mm[0])
    return LoadedSeries(
        info=info,
        hu=hu,
        geometry=info.geometry,
        sop_instance_uids=tuple(h.sop_instance_uid for h in info.slices),
        frame_numbers=tuple(h.frame_number for h in info.slices),
    )


def sample_series_hu(info: SeriesInfo, max_slices: int, config: SeriesConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode up to `max_slices` slices spread over the central 60% of the stack (for quick image
    statistics). Returns (hu (k, y, x), slice indices)."""
    config = config or SeriesConfig()
    n = len(info.slices)
    lo, hi = int(round(0.2 * (n - 1))), int(round(0.8 * (n - 1)))
    indices = np.unique(np.linspace(lo, hi, num=min(max_slices, hi - lo + 1)).round().astype(int))
    return _read_slices(info, indices, config), indices


def _read_slices(info: SeriesInfo, indices: Iterable[int], config: SeriesConfig) -> np.ndarray:
    indices = list(indices)
    rows, cols = info.geometry.shape[1], info.geometry.shape[2]
    out = np.empty((len(indices), rows, cols), dtype=np.float32)
    by_path: dict = defaultdict(list)
    for out_index, slice_index in enumerate(indices):
        header = info.slices[slice_index]
        by_path[header.path].append((out_index, header))

    def read_one(item) -> None:
        path, wanted = item
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - decoder errors come in many types
            sop = wanted[0][1].sop_instance_uid
            raise InputError(
                f"cannot decode pixel data of instance {sop} in {info.label}: {type(exc).__name__}: {exc}"
            ) from exc
        padding = ds.get("PixelPaddingValue")
        for out_index, header in wanted:
            frame = pixels if header.frame_index is None else (pixels[header.frame_index] if pixels.ndim == 3 else pixels)
            if frame.shape != (rows, cols):
                raise InputError(
                    f"instance {header.sop_instance_uid} in {info.label}: pixel data is {frame.shape}, "
                    f"expected {(rows, cols)}"
                )
            values = frame.astype(np.float32)
            values *= np.float32(header.rescale_slope)
            values += np.float32(header.rescale_intercept)
            if padding is not None:
                values[frame == padding] = config.padding_hu
            out[out_index] = values

    items = list(by_path.items())
    if config.threads > 1 and len(items) > 1:
        with ThreadPoolExecutor(max_workers=config.threads) as pool:
            list(pool.map(read_one, items))
    else:
        for item in items:
            read_one(item)
    return out


def _resample_even(hu: np.ndarray, positions_mm: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Linear interpolation along z from uneven `positions_mm` onto 0, spacing, 2*spacing, ..."""
    targets = np.arange(hu.shape[0], dtype=np.float64) * spacing_mm
    upper = np.clip(np.searchsorted(positions_mm, targets, side="right"), 1, len(positions_mm) - 1)
    lower = upper - 1
    span = positions_mm[upper] - positions_mm[lower]
    weight = np.clip((targets - positions_mm[lower]) / span, 0.0, 1.0).astype(np.float32)
    out = np.empty_like(hu)
    for k in range(hu.shape[0]):
        out[k] = hu[lower[k]] * (1.0 - weight[k]) + hu[upper[k]] * weight[k]
    return out
