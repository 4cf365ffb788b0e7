"""Writes small synthetic CT series to disk for the ingest tests (series assembly, phases).

`abdomen_hu` draws a crude axial abdomen (body, fat, spine, aorta, liver with a portal vein,
spleen) whose enhancement follows the phase, so the image-based phase check has something real
to measure. `write_ct_series` writes it as single-frame CT Image Storage files (or one Enhanced CT
multi-frame file) with the header quirks a test asks for: file names, transfer syntax, patient
position, gantry tilt, explicit slice positions (missing/uneven slices), acquisition numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, UID, generate_uid

ENHANCED_CT = UID("1.2.840.10008.5.1.4.1.1.2.1")

#: HU of (aorta, portal vein, liver, spleen) per phase, as DESIGN section 5.
PHASE_HU: dict[str, tuple[float, float, float, float]] = {
    "NC": (40.0, 40.0, 55.0, 45.0),
    "AP": (280.0, 120.0, 70.0, 110.0),
    "VP": (150.0, 170.0, 105.0, 120.0),
    "DP": (120.0, 130.0, 90.0, 100.0),
}

HFS_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
FFS_ORIENTATION = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def abdomen_hu(
    shape: tuple[int, int, int],
    pixel_spacing_mm: float,
    phase: str = "VP",
    seed: int = 0,
    noise_hu: float = 8.0,
) -> np.ndarray:
    """A (z, y, x) float32 HU volume of a simple abdomen in HFS image layout (patient right on
    the image left, posterior at the bottom), enhanced like `phase`."""
    aorta, portal, liver, spleen = PHASE_HU[phase]
    nz, ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float32)
    cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
    scale = pixel_spacing_mm
    mm_y, mm_x = (y - cy) * scale, (x - cx) * scale
    half_w, half_h = 0.45 * nx * scale, 0.36 * ny * scale
    body = (mm_x / half_w) ** 2 + (mm_y / half_h) ** 2 <= 1.0
    inner = (mm_x / (half_w - 12)) ** 2 + (mm_y / (half_h - 12)) ** 2 <= 1.0
    slice_ = np.full((ny, nx), -1000.0, dtype=np.float32)
    slice_[body] = -100.0  # subcutaneous fat
    slice_[inner] = 45.0  # muscle / bowel
    spine_c = (0.55 * half_h, 0.0)
    spine = (mm_y - spine_c[0]) ** 2 + (mm_x - spine_c[1]) ** 2 <= (0.16 * half_h) ** 2
    spine_core = (mm_y - spine_c[0]) ** 2 + (mm_x - spine_c[1]) ** 2 <= (0.12 * half_h) ** 2
    slice_[spine] = 700.0
    slice_[spine_core] = 250.0
    aorta_r = 11.0  # mm, a 22 mm aorta
    aorta_mask = (mm_y - (spine_c[0] - 0.3 * half_h)) ** 2 + (mm_x - 0.12 * half_w) ** 2 <= aorta_r**2
    liver_mask = ((mm_x + 0.45 * half_w) / (0.42 * half_w)) ** 2 + ((mm_y + 0.1 * half_h) / (0.5 * half_h)) ** 2 <= 1.0
    spleen_mask = ((mm_x - 0.6 * half_w) / (0.18 * half_w)) ** 2 + ((mm_y - 0.1 * half_h) / (0.3 * half_h)) ** 2 <= 1.0
    portal_mask = (mm_y + 0.05 * half_h) ** 2 + (mm_x + 0.25 * half_w) ** 2 <= 7.0**2
    slice_[liver_mask & inner] = liver
    slice_[spleen_mask & inner] = spleen
    slice_[portal_mask] = portal
    slice_[aorta_mask] = aorta
    rng = np.random.default_rng(seed)
    volume = np.repeat(slice_[None], nz, axis=0)
    volume += rng.normal(0.0, noise_hu, size=volume.shape).astype(np.float32)
    return volume.astype(np.float32)


@dataclass
class WrittenSeries:
    """What `write_ct_series` wrote: files in z order (as given), UIDs and slice positions."""

    paths: list[Path]
    study_uid: str
    series_uid: str
    sop_instance_uids: list[str]  # per z index of the input volume
    positions_mm: list[tuple[float, float, float]]  # per z index
    extra: dict = field(default_factory=dict)


def write_ct_series(
    out_dir: Path,
    hu: np.ndarray,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 3,
    description: str = "Abdomen portal venous 5mm",
    pixel_spacing_mm: float = 1.0,
    slice_spacing_mm: float = 5.0,
    slice_thickness_mm: float | None = None,
    z_positions_mm: Sequence[float] | None = None,
    orientation: Sequence[float] = HFS_ORIENTATION,
    patient_position: str = "HFS",
    origin_mm: Sequence[float] | None = None,
    tilt_deg: float = 0.0,
    acquisition_time: str = "120000.000000",
    acquisition_date: str = "20240101",
    acquisition_numbers: Sequence[int] | None = None,
    contrast_agent: str | None = "Iomeprol",
    contrast_start_time: str | None = None,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    transfer_syntax: str = ExplicitVRLittleEndian,
    file_names: str = "sop",  # "sop": <sop uid>.dcm, "noext": <index> without extension
    enhanced: bool = False,
    unsigned: bool = False,
    shuffle_seed: int | None = None,
) -> WrittenSeries:
    """Write `hu` (z, y, x) as a CT series under `out_dir` and return what was written.

    Slice k lies at origin + z_k * normal (+ tilt shear along the column direction), where z_k is
    `z_positions_mm[k]` or k * slice_spacing_mm. `shuffle_seed` shuffles the file names' order
    relative to z (instance numbers are shuffled too), so that only the positions tell the order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = hu.shape
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    row = np.asarray(orientation[:3], dtype=float)
    col = np.asarray(orientation[3:], dtype=float)
    normal = np.cross(row, col)
    if origin_mm is None:
        origin = -(row * (nx - 1) + col * (ny - 1)) * pixel_spacing_mm / 2.0
    else:
        origin = np.asarray(origin_mm, dtype=float)
    zs = list(z_positions_mm) if z_positions_mm is not None else [k * slice_spacing_mm for k in range(nz)]
    shear = math.tan(math.radians(tilt_deg))
    positions = [tuple(float(v) for v in origin + z * normal + z * shear * col) for z in zs]
    sop_uids = [generate_uid() for _ in range(nz)]
    instance_numbers = list(range(1, nz + 1))
    if shuffle_seed is not None:
        np.random.default_rng(shuffle_seed).shuffle(instance_numbers)
    stored, slope, intercept = _to_stored(hu, unsigned)
    common = dict(
        study_uid=study_uid,
        series_uid=series_uid,
        series_number=series_number,
        description=description,
        pixel_spacing_mm=pixel_spacing_mm,
        slice_thickness_mm=slice_thickness_mm if slice_thickness_mm is not None else slice_spacing_mm,
        orientation=orientation,
        patient_position=patient_position,
        acquisition_time=acquisition_time,
        acquisition_date=acquisition_date,
        contrast_agent=contrast_agent,
        contrast_start_time=contrast_start_time,
        image_type=image_type,
        unsigned=unsigned,
        slope=slope,
        intercept=intercept,
    )
    if enhanced:
        path = out_dir / (f"{series_uid}.dcm" if file_names == "sop" else "multiframe")
        order = list(range(nz))
        if shuffle_seed is not None:
            np.random.default_rng(shuffle_seed).shuffle(order)
        ds = _enhanced_dataset(stored, positions, order, sop_uids[0], **common)
        _save(ds, path, transfer_syntax)
        return WrittenSeries([path], study_uid, series_uid, [sop_uids[0]] * nz, positions, {"frame_order": order})
    paths = []
    for k in range(nz):
        ds = _slice_dataset(stored[k], positions[k], sop_uids[k], instance_numbers[k], **common)
        if acquisition_numbers is not None:
            ds.AcquisitionNumber = int(acquisition_numbers[k])
        name = f"{sop_uids[k]}.dcm" if file_names == "sop" else f"IM{instance_numbers[k]:05d}"
        path = out_dir / name
        _save(ds, path, transfer_syntax)
        paths.append(path)
    return WrittenSeries(paths, study_uid, series_uid, sop_uids, positions)


def _to_stored(hu: np.ndarray, unsigned: bool) -> tuple[np.ndarray, float, float]:
    if unsigned:
        return np.clip(np.round(hu + 1024.0), 0, 65535).astype(np.uint16), 1.0, -1024.0
    return np.clip(np.round(hu), -32768, 32767).astype(np.int16), 1.0, 0.0


def _base_dataset(sop_class: str, sop_uid: str, c: dict) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = "Phantom^Test"
    ds.PatientID = "TEST0001"
    ds.StudyInstanceUID = c["study_uid"]
    ds.SeriesInstanceUID = c["series_uid"]
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[c["study_uid"], "for"])
    ds.StudyDate = c["acquisition_date"]
    ds.SeriesDate = c["acquisition_date"]
    ds.Modality = "CT"
    ds.Manufacturer = "LivernodeTest"
    ds.SeriesNumber = c["series_number"]
    ds.SeriesDescription = c["description"]
    ds.PatientPosition = c["patient_position"]
    ds.ImageType = list(c["image_type"])
    if c["contrast_agent"]:
        ds.ContrastBolusAgent = c["contrast_agent"]
    if c["contrast_start_time"]:
        ds.ContrastBolusStartTime = c["contrast_start_time"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0 if c["unsigned"] else 1
    return ds


def _slice_dataset(pixels, position, sop_uid, instance_number, **c) -> Dataset:
    ds = _base_dataset(CTImageStorage, sop_uid, c)
    ds.InstanceNumber = instance_number
    ds.AcquisitionNumber = 1
    ds.AcquisitionDate = c["acquisition_date"]
    ds.AcquisitionTime = c["acquisition_time"]
    ds.ImagePositionPatient = [round(v, 4) for v in position]
    ds.ImageOrientationPatient = list(c["orientation"])
    ds.PixelSpacing = [c["pixel_spacing_mm"], c["pixel_spacing_mm"]]
    ds.SliceThickness = c["slice_thickness_mm"]
    ds.RescaleSlope = c["slope"]
    ds.RescaleIntercept = c["intercept"]
    ds.RescaleType = "HU"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def _enhanced_dataset(stored, positions, order, sop_uid, **c) -> Dataset:
    ds = _base_dataset(ENHANCED_CT, sop_uid, c)
    ds.InstanceNumber = 1
    ds.AcquisitionNumber = 1
    ds.ContentDate = c["acquisition_date"]
    ds.ContentTime = c["acquisition_time"]
    ds.NumberOfFrames = len(order)
    ds.Rows, ds.Columns = stored.shape[1:]
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [c["pixel_spacing_mm"], c["pixel_spacing_mm"]]
    measures.SliceThickness = c["slice_thickness_mm"]
    shared.PixelMeasuresSequence = DicomSequence([measures])
    plane = Dataset()
    plane.ImageOrientationPatient = list(c["orientation"])
    shared.PlaneOrientationSequence = DicomSequence([plane])
    transform = Dataset()
    transform.RescaleSlope = c["slope"]
    transform.RescaleIntercept = c["intercept"]
    transform.RescaleType = "HU"
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for k in order:
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [round(v, 4) for v in positions[k]]
        item.PlanePositionSequence = DicomSequence([pos])
        content = Dataset()
        content.FrameAcquisitionDateTime = c["acquisition_date"] + c["acquisition_time"]
        content.TemporalPositionIndex = 1
        item.FrameContentSequence = DicomSequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = np.ascontiguousarray(stored[order]).tobytes()
    return ds


def _save(ds: Dataset, path: Path, transfer_syntax: str) -> None:
    if UID(transfer_syntax) != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)


def write_dicomdir(path: Path) -> Path:
    """A minimal DICOMDIR file (Media Storage Directory Storage, no records)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.FileSetID = "TEST"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = DicomSequence([])
    ds.save_as(path, enforce_file_format=True)
    return path


def write_non_image(path: Path, sop_class: str, study_uid: str, description: str = "Dose Report") -> Path:
    """A minimal non-image object (e.g. a dose SR or secondary capture header) in `study_uid`."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 999
    ds.SeriesDescription = description
    ds.Modality = "SR"
    ds.save_as(path, enforce_file_format=True)
    return path
