"""Reading DICOM headers of loose files: one `SliceHeader` per image slice or frame, or a skip.

This module knows single files only. ``pipeline.series`` groups the headers into volumes.
Headers are read with ``stop_before_pixels``; the pixel data element is only checked for being
complete (a truncated file is skipped with a reason here, not discovered when decoding).
Nothing here logs patient names, IDs or birth dates.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
#: SOP classes whose images can become a phase volume.
CT_IMAGE_SOP_CLASSES = frozenset({CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE, LEGACY_ENHANCED_CT_IMAGE_STORAGE})
MULTIFRAME_CT_SOP_CLASSES = frozenset({ENHANCED_CT_IMAGE_STORAGE, LEGACY_ENHANCED_CT_IMAGE_STORAGE})

_PIXEL_DATA_TAG_LE = b"\xe0\x7f\x10\x00"
_ITEM_TAG_LE = b"\xfe\xff\x00\xe0"
_SEQ_DELIM_TAG_LE = b"\xfe\xff\xdd\xe0"


@dataclass(frozen=True)
class SkippedItem:
    """A file or series that does not become a volume, with the reason in words."""

    what: str  # a file path, or a series description such as "series 3 'Topogram' (1.2...)"
    reason: str
    study_uid: str = ""
    series_uid: str = ""
    file_count: int = 1


@dataclass(frozen=True)
class SeriesAttributes:
    """Series-level header values (taken from the first file of the series)."""

    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    manufacturer: str = ""
    body_part: str = ""
    patient_position: str = ""
    contrast_bolus_agent: str = ""
    contrast_bolus_start_time_s: float | None = None
    series_time_s: float | None = None
    convolution_kernel: str = ""


@dataclass(frozen=True)
class SliceHeader:
    """What is known about one image slice (one frame of a multi-frame file) before decoding it."""

    path: Path
    frame_index: int | None  # 0-based frame of a multi-frame file; None for a single-frame file
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    instance_number: int | None
    position_mm: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing_mm: tuple[float, float] | None  # (between rows, between columns)
    slice_thickness_mm: float | None
    rows: int
    columns: int
    rescale_slope: float
    rescale_intercept: float
    image_type: tuple[str, ...]
    acquisition_number: int | None
    temporal_index: int | None
    acquisition_time_s: float | None
    attributes: SeriesAttributes = field(compare=False, default_factory=SeriesAttributes)

    @property
    def frame_number(self) -> int:
        """1-based frame number for multi-frame sources, 0 for single-frame files."""
        return 0 if self.frame_index is None else self.frame_index + 1


@dataclass
class FileScan:
    """Result of reading one file: its slice headers, or a skip."""

    path: Path
    slices: list[SliceHeader] = field(default_factory=list)
    skipped: SkippedItem | None = None


def iter_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Yield every regular file under `paths` (files as given, folders walked recursively),
    in a stable sorted order, each once."""
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            candidates: list[Path] = []
            for root, dirs, files in os.walk(path):
                dirs.sort()
                candidates.extend(Path(root) / name for name in sorted(files))
        else:
            candidates = [path]
        for candidate in candidates:
            resolved = candidate.resolve()
            if resolved in seen or not candidate.is_file():
                continue
            seen.add(resolved)
            yield candidate


def read_file(path: Path) -> FileScan:
    """Read the header of one file. Never raises for a malformed file: it becomes a skip."""
    scan = FileScan(path=path)
    if path.name.upper() == "DICOMDIR":
        scan.skipped = SkippedItem(str(path), "DICOMDIR (a media directory, not an image)")
        return scan
    try:
        file_size = path.stat().st_size
        with path.open("rb") as fp:
            ds = _read_header(fp)
            if ds is None:
                scan.skipped = SkippedItem(str(path), "not a DICOM file")
                return scan
            pixel_offset = fp.tell()
            sop_class = str(ds.get("SOPClassUID", "") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", ""))
            study_uid = str(ds.get("StudyInstanceUID", ""))
            series_uid = str(ds.get("SeriesInstanceUID", ""))
            if sop_class == MEDIA_STORAGE_DIRECTORY:
                scan.skipped = SkippedItem(str(path), "DICOMDIR (a media directory, not an image)")
                return scan
            if sop_class not in CT_IMAGE_SOP_CLASSES:
                name = UID(sop_class).name if sop_class else "no SOP class"
                scan.skipped = SkippedItem(
                    str(path), f"{name} is not a CT image", study_uid=study_uid, series_uid=series_uid
                )
                return scan
            problem = _check_pixel_data(fp, pixel_offset, file_size, ds)
            if problem:
                scan.skipped = SkippedItem(str(path), problem, study_uid=study_uid, series_uid=series_uid)
                return scan
            scan.slices = _slice_headers(path, ds, sop_class)
    except Exception as exc:  # noqa: BLE001 - any malformed file must become a skip, never a crash
        log.debug("unreadable file %s: %s", path, exc)
        scan.skipped = SkippedItem(str(path), f"unreadable DICOM header ({type(exc).__name__}: {exc})")
        scan.slices = []
    return scan


def _read_header(fp) -> Dataset | None:
    """dcmread up to the pixel data; None when the file is not DICOM."""
    try:
        return pydicom.dcmread(fp, stop_before_pixels=True)
    except InvalidDicomError:
        pass
    # No preamble/meta: accept a raw data set only if it carries the identifying UIDs.
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - garbage bytes parse in unpredictable ways
        return None
    try:
        if not (ds.get("SOPClassUID") and ds.get("SOPInstanceUID") and ds.get("SeriesInstanceUID")):
            return None
    except Exception:  # noqa: BLE001
        return None
    return ds


def _check_pixel_data(fp, offset: int, file_size: int, ds: Dataset) -> str:
    """Return a reason when the pixel data element is missing or truncated, else ''."""
    meta = ds.get("file_meta")
    ts_text = str(getattr(meta, "TransferSyntaxUID", "") or "")
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if ts_text:
        ts = UID(ts_text)
        if ts.is_deflated:
            return ""  # offsets are not file offsets; decoding will tell
        implicit, little = ts.is_implicit_VR, ts.is_little_endian
    if not little:
        return ""
    fp.seek(offset)
    head = fp.read(12)
    if len(head) < 8 or head[:4] != _PIXEL_DATA_TAG_LE:
        return "no pixel data"
    if implicit:
        length = struct.unpack("<I", head[4:8])[0]
        start = offset + 8
    else:
        if len(head) < 12:
            return "truncated file: pixel data element header cut off"
        length = struct.unpack("<I", head[8:12])[0]
        start = offset + 12
    if length != 0xFFFFFFFF:
        rows = int(ds.get("Rows", 0) or 0)
        cols = int(ds.get("Columns", 0) or 0)
        bits = int(ds.get("BitsAllocated", 16) or 16)
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = (rows * cols * frames * spp * bits + 7) // 8
        available = file_size - start
        if available < min(length, expected):
            return f"truncated file: {available} bytes of pixel data, {expected} expected"
        if length < expected:
            return f"pixel data too short: {length} bytes, {expected} expected"
        return ""
    # encapsulated: walk the items up to the sequence delimiter
    pos = start
    while True:
        fp.seek(pos)
        item = fp.read(8)
        if len(item) < 8:
            return "truncated file: encapsulated pixel data ends before its delimiter"
        tag, item_len = item[:4], struct.unpack("<I", item[4:8])[0]
        if tag == _SEQ_DELIM_TAG_LE:
            return ""
        if tag != _ITEM_TAG_LE:
            return "malformed encapsulated pixel data (unexpected tag between fragments)"
        pos += 8 + item_len
        if pos > file_size:
            return "truncated file: a compressed fragment extends past the end of the file"


def _slice_headers(path: Path, ds: Dataset, sop_class: str) -> list[SliceHeader]:
    attributes = _series_attributes(ds)
    common = dict(
        path=path,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        sop_class_uid=sop_class,
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        instance_number=_int_or_none(ds.get("InstanceNumber")),
        rows=int(ds.get("Rows", 0) or 0),
        columns=int(ds.get("Columns", 0) or 0),
        image_type=tuple(str(v).upper() for v in _as_list(ds.get("ImageType"))),
        acquisition_number=_int_or_none(ds.get("AcquisitionNumber")),
        attributes=attributes,
    )
    file_time = (
        parse_datetime_s(ds.get("AcquisitionDateTime"))
        or parse_date_time_s(ds.get("AcquisitionDate") or ds.get("SeriesDate") or ds.get("StudyDate"), ds.get("AcquisitionTime"))
        or parse_date_time_s(ds.get("ContentDate") or ds.get("StudyDate"), ds.get("ContentTime"))
    )
    if sop_class not in MULTIFRAME_CT_SOP_CLASSES and int(ds.get("NumberOfFrames", 1) or 1) <= 1:
        return [
            SliceHeader(
                frame_index=None,
                position_mm=_triple(ds.get("ImagePositionPatient")),
                orientation=_sextuple(ds.get("ImageOrientationPatient")),
                pixel_spacing_mm=_pair(ds.get("PixelSpacing")),
                slice_thickness_mm=_float_or_none(ds.get("SliceThickness")),
                rescale_slope=_float_or_none(ds.get("RescaleSlope")) or 1.0,
                rescale_intercept=_float_or_none(ds.get("RescaleIntercept")) or 0.0,
                temporal_index=_int_or_none(ds.get("TemporalPositionIdentifier")),
                acquisition_time_s=file_time,
                **common,
            )
        ]
    return _frame_headers(ds, common, file_time)


def _frame_headers(ds: Dataset, common: dict, file_time: float | None) -> list[SliceHeader]:
    """One header per frame of an Enhanced (or Legacy Converted Enhanced) CT object."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    shared = _first_item(ds.get("SharedFunctionalGroupsSequence"))
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    headers = []
    for index in range(frames):
        groups = per_frame[index] if index < len(per_frame) else None

        def find(sequence_name: str, keyword: str, groups=groups):
            for source in (groups, shared):
                item = _first_item(source.get(sequence_name)) if source is not None else None
                if item is not None and keyword in item:
                    return item.get(keyword)
            return ds.get(keyword)

        frame_time = parse_datetime_s(find("FrameContentSequence", "FrameAcquisitionDateTime")) or file_time
        headers.append(
            SliceHeader(
                frame_index=index,
                position_mm=_triple(find("PlanePositionSequence", "ImagePositionPatient")),
                orientation=_sextuple(find("PlaneOrientationSequence", "ImageOrientationPatient")),
                pixel_spacing_mm=_pair(find("PixelMeasuresSequence", "PixelSpacing")),
                slice_thickness_mm=_float_or_none(find("PixelMeasuresSequence", "SliceThickness")),
                rescale_slope=_float_or_none(find("PixelValueTransformationSequence", "RescaleSlope")) or 1.0,
                rescale_intercept=_float_or_none(find("PixelValueTransformationSequence", "RescaleIntercept")) or 0.0,
                temporal_index=_int_or_none(find("FrameContentSequence", "TemporalPositionIndex")),
                acquisition_time_s=frame_time,
                **common,
            )
        )
    return headers


def _series_attributes(ds: Dataset) -> SeriesAttributes:
    date_value = ds.get("SeriesDate") or ds.get("StudyDate")
    return SeriesAttributes(
        modality=str(ds.get("Modality", "") or ""),
        series_number=_int_or_none(ds.get("SeriesNumber")),
        series_description=str(ds.get("SeriesDescription", "") or ""),
        manufacturer=str(ds.get("Manufacturer", "") or ""),
        body_part=str(ds.get("BodyPartExamined", "") or ""),
        patient_position=str(ds.get("PatientPosition", "") or ""),
        contrast_bolus_agent=_contrast_agent(ds),
        contrast_bolus_start_time_s=parse_date_time_s(date_value, ds.get("ContrastBolusStartTime")),
        series_time_s=parse_date_time_s(date_value, ds.get("SeriesTime")),
        convolution_kernel=" ".join(str(v) for v in _as_list(ds.get("ConvolutionKernel"))),
    )


def _contrast_agent(ds: Dataset) -> str:
    agent = str(ds.get("ContrastBolusAgent", "") or "").strip()
    if agent:
        return agent
    for item in ds.get("ContrastBolusAgentSequence") or []:  # Enhanced CT
        meaning = str(item.get("CodeMeaning", "") or "").strip()
        if meaning:
            return meaning
    return ""


def parse_date_time_s(date_value, time_value) -> float | None:
    """Seconds since 0001-01-01 of a DICOM DA + TM pair (date optional); None if unparsable."""
    tod = _parse_tm(time_value)
    if tod is None:
        return None
    day = _parse_da(date_value)
    return (day.toordinal() * 86400.0 if day else 0.0) + tod


def parse_datetime_s(value) -> float | None:
    """Seconds since 0001-01-01 of a DICOM DT value (YYYYMMDDHHMMSS.FFFFFF&ZZXX)."""
    if value is None:
        return None
    text = str(value).strip()
    for sign in "+-":
        if sign in text[8:]:
            text = text[: 8 + text[8:].index(sign)]
    if len(text) < 8:
        return None
    return parse_date_time_s(text[:8], text[8:] or "000000")


def _parse_da(value) -> date | None:
    text = str(value or "").strip().replace(".", "").replace("-", "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def _parse_tm(value) -> float | None:
    text = str(value or "").strip().replace(":", "")
    if not text:
        return None
    whole, _, frac = text.partition(".")
    if not whole.isdigit() or len(whole) < 2 or (frac and not frac.isdigit()):
        return None
    hours = int(whole[0:2])
    minutes = int(whole[2:4]) if len(whole) >= 4 else 0
    seconds = int(whole[4:6]) if len(whole) >= 6 else 0
    return hours * 3600.0 + minutes * 60.0 + seconds + (float("0." + frac) if frac else 0.0)


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]


def _first_item(sequence) -> Dataset | None:
    try:
        return sequence[0] if sequence else None
    except (TypeError, IndexError):
        return None


def _floats(value, count: int) -> tuple[float, ...] | None:
    values = _as_list(value)
    if len(values) != count:
        return None
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None


def _triple(value) -> tuple[float, float, float] | None:
    return _floats(value, 3)  # type: ignore[return-value]


def _sextuple(value) -> tuple[float, float, float, float, float, float] | None:
    return _floats(value, 6)  # type: ignore[return-value]


def _pair(value) -> tuple[float, float] | None:
    return _floats(value, 2)  # type: ignore[return-value]


def _float_or_none(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int_or_none(value) -> int | None:
    number = _float_or_none(value)
    return None if number is None else int(number)
