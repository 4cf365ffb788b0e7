"""A small synthetic CT series as pydicom Datasets, for tests that need real DICOM inputs.

`make_ct_series` returns the slices (single-frame CT Image Storage instances, one per z index)
and the `VolumeGeometry` of the grid they span, so that a test can place masks by voxel index
and know where they must land in patient coordinates. Supports head-first and feet-first supine
patients and oblique slice orientations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from pipeline.types import VolumeGeometry

#: Fixed seed text so every UID of a default series is reproducible between runs.
_DEFAULT_SEED = "livernode-test-ct"


@dataclass(frozen=True)
class CTSeriesSpec:
    """What the synthetic series looks like.

    spacing_mm is (z, y, x): slice spacing, row spacing, column spacing.
    orientation: "HFS" (head first supine), "FFS" (feet first supine) or "OBLIQUE"
    (HFS rotated by `oblique_deg` about a tilted axis).
    """

    rows: int = 64
    cols: int = 64
    slices: int = 12
    spacing_mm: tuple[float, float, float] = (2.5, 0.8, 0.8)
    orientation: str = "HFS"
    oblique_deg: float = 20.0
    origin_mm: tuple[float, float, float] = (-25.0, -30.0, 100.0)
    seed: str = _DEFAULT_SEED
    patient_id: str = "LN-TEST-0001"
    patient_name: str = "Test^Phantom"
    series_description: str = "VP synthetic"
    series_number: int = 3
    manufacturer: str = "livernode-test"
    extra: dict[str, object] = field(default_factory=dict)


def _direction(spec: CTSeriesSpec) -> np.ndarray:
    """3x3 matrix whose columns are the patient directions of the x, y and z index axes."""
    if spec.orientation == "HFS":
        row = np.array([1.0, 0.0, 0.0])
        col = np.array([0.0, 1.0, 0.0])
        normal = np.array([0.0, 0.0, 1.0])  # z index runs towards the head
    elif spec.orientation == "FFS":
        # Feet first supine: the scanner's +x points to the patient's right (-L), the table moves
        # the patient head-last, and slices are stacked towards the feet as the z index grows.
        row = np.array([-1.0, 0.0, 0.0])
        col = np.array([0.0, 1.0, 0.0])
        normal = np.array([0.0, 0.0, -1.0])
    elif spec.orientation == "OBLIQUE":
        a = np.deg2rad(spec.oblique_deg)
        b = np.deg2rad(spec.oblique_deg / 2.0)
        rot_z = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
        rot_x = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
        rot = rot_x @ rot_z
        row, col = rot[:, 0], rot[:, 1]
        normal = np.cross(row, col)
    else:
        raise ValueError(f"orientation: expected HFS, FFS or OBLIQUE, got {spec.orientation!r}")
    return np.stack([row, col, normal], axis=1)


def series_geometry(spec: CTSeriesSpec) -> VolumeGeometry:
    """The voxel grid of the series described by `spec`."""
    direction = _direction(spec)
    return VolumeGeometry(
        shape=(spec.slices, spec.rows, spec.cols),
        spacing_mm=tuple(float(s) for s in spec.spacing_mm),  # type: ignore[arg-type]
        origin_mm=tuple(float(o) for o in spec.origin_mm),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in direction.ravel()),
    )


def default_hu(spec: CTSeriesSpec) -> np.ndarray:
    """A simple body: water background at -1000 (air), an ellipse of soft tissue, a brighter blob."""
    y, x = np.ogrid[0 : spec.rows, 0 : spec.cols]
    cy, cx = (spec.rows - 1) / 2.0, (spec.cols - 1) / 2.0
    body = ((y - cy) / (0.45 * spec.rows)) ** 2 + ((x - cx) / (0.48 * spec.cols)) ** 2 <= 1.0
    liver = ((y - 0.45 * spec.rows) / (0.25 * spec.rows)) ** 2 + (
        (x - 0.35 * spec.cols) / (0.22 * spec.cols)
    ) ** 2 <= 1.0
    plane = np.full((spec.rows, spec.cols), -1000.0, dtype=np.float32)
    plane[body] = 40.0
    plane[liver & body] = 105.0
    return np.broadcast_to(plane, (spec.slices, spec.rows, spec.cols))


def make_ct_series(
    spec: CTSeriesSpec | None = None, hu: np.ndarray | None = None
) -> tuple[list[Dataset], VolumeGeometry]:
    """Build the series: one CT Image Storage dataset per z index, in z order.

    Returns the datasets (with file meta, ready for dcmwrite) and the grid geometry.
    """
    spec = spec or CTSeriesSpec()
    geometry = series_geometry(spec)
    if hu is None:
        hu = default_hu(spec)
    if hu.shape != geometry.shape:
        raise ValueError(f"hu: shape {hu.shape} does not match the series {geometry.shape}")
    direction = geometry.direction_matrix
    study_uid = generate_uid(entropy_srcs=[spec.seed, "study"])
    series_uid = generate_uid(entropy_srcs=[spec.seed, "series", spec.orientation])
    frame_uid = generate_uid(entropy_srcs=[spec.seed, "frame", spec.orientation])
    stored = np.clip(np.round(hu + 1024.0), 0, 4095).astype(np.uint16)
    iop = [float(v) for v in np.concatenate([direction[:, 0], direction[:, 1]])]
    datasets = []
    for k in range(spec.slices):
        position = geometry.index_to_patient(np.array([[k, 0.0, 0.0]]))[0]
        sop_uid = generate_uid(entropy_srcs=[spec.seed, "sop", spec.orientation, str(k)])
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = "20240102"
        ds.SeriesDate = "20240102"
        ds.ContentDate = "20240102"
        ds.StudyTime = "101500"
        ds.SeriesTime = "101700"
        ds.ContentTime = "101700"
        ds.AcquisitionDate = "20240102"
        ds.AcquisitionTime = "101700"
        ds.AccessionNumber = "ACC0001"
        ds.Modality = "CT"
        ds.Manufacturer = spec.manufacturer
        ds.ManufacturerModelName = "synthetic"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "CT abdomen multiphase"
        ds.SeriesDescription = spec.series_description
        ds.PatientName = spec.patient_name
        ds.PatientID = spec.patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.BodyPartExamined = "ABDOMEN"
        ds.SliceThickness = float(spec.spacing_mm[0])
        ds.KVP = 120
        ds.PatientPosition = "FFS" if spec.orientation == "FFS" else "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = spec.series_number
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [round(float(v), 6) for v in position]
        ds.ImageOrientationPatient = [round(v, 9) for v in iop]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = round(float(position[2]), 6)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = spec.rows
        ds.Columns = spec.cols
        ds.PixelSpacing = [float(spec.spacing_mm[1]), float(spec.spacing_mm[2])]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.PixelData = stored[k].tobytes()
        for keyword, value in spec.extra.items():
            setattr(ds, keyword, value)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        datasets.append(ds)
    return datasets, geometry


def write_series(datasets: Sequence[Dataset], directory: Path) -> list[Path]:
    """Write the datasets as DICOM files (Part 10) into `directory`; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(datasets):
        path = directory / f"ct_{index:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths

