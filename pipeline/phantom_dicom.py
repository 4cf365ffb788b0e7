"""DICOM encoding of phantom series as scanners write them: CT Image Storage, one file per slice,
vendor-specific pixel encoding, series descriptions, kernels and acquisition parameters.

Identity is derived from the seed (``generate_uid`` with entropy sources), so the same seed and
settings give the same UIDs; patient data are synthetic and never name a real person.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from pipeline.phantom_vendors import ScannerSettings, VendorProfile, series_description
from pipeline.types import PHASE_ORDER, Phase, VolumeGeometry

UID_NAMESPACE = "livernode-phantom-v1"
HU_MIN, HU_MAX = -1024.0, 3071.0


@dataclass(frozen=True)
class StudyIdentity:
    """UIDs and synthetic patient identifiers of one phantom study."""

    study_uid: str
    frame_of_reference_uid: str
    series_uids: dict[Phase, str]
    patient_name: str
    patient_id: str

    def sop_instance_uid(self, phase: Phase, instance_number: int) -> str:
        return generate_uid(entropy_srcs=[self.study_uid, "sop", phase.value, str(instance_number)])

    def irradiation_event_uid(self, phase: Phase) -> str:
        return generate_uid(entropy_srcs=[self.study_uid, "irradiation", phase.value])


def make_identity(seed: int, variant: str) -> StudyIdentity:
    """Deterministic identity: same seed and variant (grid, options) give the same UIDs."""
    src = [UID_NAMESPACE, str(seed), variant]
    study_uid = generate_uid(entropy_srcs=src + ["study"])
    return StudyIdentity(
        study_uid=study_uid,
        frame_of_reference_uid=generate_uid(entropy_srcs=src + ["frame-of-reference"]),
        series_uids={p: generate_uid(entropy_srcs=src + ["series", p.value]) for p in PHASE_ORDER},
        patient_name=f"PHANTOM^LIVER{seed:06d}",
        patient_id=f"LNPH{seed:08d}",
    )


def encode_pixels(hu: np.ndarray, vendor: VendorProfile, fov_mask: np.ndarray) -> np.ndarray:
    """Stored values (RescaleIntercept -1024, slope 1) of a HU slab, padding outside the FOV."""
    stored = np.clip(np.rint(hu), HU_MIN, HU_MAX) + 1024.0
    dtype = np.int16 if vendor.signed else np.uint16
    out = stored.astype(dtype)
    if vendor.padding_value is not None:
        out[..., ~fov_mask] = vendor.padding_value
    else:
        out[..., ~fov_mask] = 0
    return out


def decoded_hu(hu: np.ndarray, vendor: VendorProfile, fov_mask: np.ndarray) -> np.ndarray:
    """The HU a reader gets back from ``encode_pixels`` (rounded, clipped, padded)."""
    return encode_pixels(hu, vendor, fov_mask).astype(np.float32) - np.float32(1024.0)


def _da(d: dt.date) -> str:
    return d.strftime("%Y%m%d")


def _tm(t: dt.datetime) -> str:
    return t.strftime("%H%M%S.%f")


def _ds(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("-0", "") else "0"


@dataclass(frozen=True)
class SeriesPlan:
    """What is needed to write one phase as a series."""

    phase: Phase
    geometry: VolumeGeometry  # of the array handed to write_series, as a reader sorts it
    row_direction: tuple[float, float, float]
    column_direction: tuple[float, float, float]
    instance_order: tuple[int, ...]  # array z index of instance 1, 2, ...
    feet_first: bool
    thickness_mm: float
    fov_mm: float


def _common_dataset(
    plan: SeriesPlan, settings: ScannerSettings, identity: StudyIdentity, sex_age: tuple[str, str]
) -> Dataset:
    v = settings.vendor
    phase_i = PHASE_ORDER.index(plan.phase)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    study = settings.study_datetime
    acq_start = study + dt.timedelta(seconds=settings.acquisition_offsets_s[phase_i])
    ds.StudyDate = _da(study)
    ds.SeriesDate = _da(acq_start)
    ds.AcquisitionDate = _da(acq_start)
    ds.ContentDate = _da(acq_start)
    ds.StudyTime = _tm(study - dt.timedelta(seconds=60))
    ds.SeriesTime = _tm(acq_start)
    ds.AccessionNumber = settings.accession_number
    ds.Modality = "CT"
    ds.Manufacturer = v.manufacturer
    ds.InstitutionName = "LIVERNODE PHANTOM"
    ds.ReferringPhysicianName = ""
    ds.StationName = settings.station_name
    ds.StudyDescription = settings.study_description
    ds.SeriesDescription = series_description(settings, plan.phase, plan.thickness_mm)
    ds.ManufacturerModelName = settings.model
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = _da(settings.patient_birth_date)
    ds.PatientSex = sex_age[0]
    ds.PatientAge = sex_age[1]
    ds.PatientSize = _ds(settings.patient_size_m)
    ds.PatientWeight = _ds(settings.patient_weight_kg)
    ds.PatientIdentityRemoved = "NO"
    ds.BodyPartExamined = "ABDOMEN"
    ds.ScanOptions = "HELICAL MODE"
    ds.SliceThickness = _ds(plan.thickness_mm)
    ds.KVP = _ds(settings.kvp)
    ds.DataCollectionDiameter = "500"
    ds.DeviceSerialNumber = settings.device_serial
    ds.SoftwareVersions = settings.software
    ds.ProtocolName = settings.protocol_name
    ds.ReconstructionDiameter = _ds(plan.fov_mm)
    ds.DistanceSourceToDetector = _ds(v.source_to_detector_mm)
    ds.DistanceSourceToPatient = _ds(v.source_to_patient_mm)
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = _ds(settings.table_height_mm)
    ds.RotationDirection = "CW"
    ds.ExposureTime = str(settings.exposure_time_ms)
    ds.XRayTubeCurrent = str(settings.tube_current_ma)
    ds.Exposure = str(int(round(settings.tube_current_ma * settings.exposure_time_ms / 1000.0)))
    ds.FilterType = "BODY FILTER"
    ds.GeneratorPower = str(int(round(settings.kvp * settings.tube_current_ma / 1000.0)))
    ds.FocalSpots = "1.2"
    ds.ConvolutionKernel = settings.kernel
    ds.PatientPosition = "FFS" if plan.feet_first else "HFS"
    ds.RevolutionTime = 0.5
    ds.SingleCollimationWidth = 0.625
    ds.TotalCollimationWidth = 40.0
    ds.TableSpeed = round(plan.thickness_mm / settings.seconds_per_slice, 1)
    ds.SpiralPitchFactor = 0.984375
    ds.CTDIvol = float(settings.ctdi_vol_mgy)
    phantom_code = Dataset()
    phantom_code.CodeValue = "113691"
    phantom_code.CodingSchemeDesignator = "DCM"
    phantom_code.CodeMeaning = "IEC Body Dosimetry Phantom"
    ds.CTDIPhantomTypeCodeSequence = [phantom_code]
    if plan.phase != Phase.NC:
        ds.ContrastBolusAgent = settings.contrast_agent
        ds.ContrastBolusRoute = "IV"
        ds.ContrastBolusVolume = _ds(settings.contrast_volume_ml)
        ds.ContrastBolusStartTime = _tm(study + dt.timedelta(seconds=settings.bolus_start_s))
        ds.ContrastFlowRate = _ds(settings.contrast_flow_ml_s)
        ds.ContrastFlowDuration = _ds(round(settings.contrast_volume_ml / settings.contrast_flow_ml_s, 1))
        ds.ContrastBolusIngredient = "IODINE"
    ds.StudyInstanceUID = identity.study_uid
    ds.SeriesInstanceUID = identity.series_uids[plan.phase]
    ds.StudyID = settings.accession_number[-4:]
    ds.SeriesNumber = v.series_numbers[phase_i]
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [_ds(c) for c in plan.row_direction + plan.column_direction]
    ds.FrameOfReferenceUID = identity.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = plan.geometry.shape[1], plan.geometry.shape[2]
    ds.PixelSpacing = [_ds(plan.geometry.spacing_mm[1]), _ds(plan.geometry.spacing_mm[2])]
    ds.BitsAllocated = 16
    ds.BitsStored = v.bits_stored
    ds.HighBit = v.bits_stored - 1
    ds.PixelRepresentation = 1 if v.signed else 0
    if v.padding_value is not None:
        ds.PixelPaddingValue = v.padding_value
    ds.WindowCenter = [_ds(c) for c in v.windows[0]] if len(v.windows[0]) > 1 else _ds(v.windows[0][0])
    ds.WindowWidth = [_ds(c) for c in v.windows[1]] if len(v.windows[1]) > 1 else _ds(v.windows[1][0])
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.IrradiationEventUID = identity.irradiation_event_uid(plan.phase)
    ds.InstanceCreationDate = _da(acq_start)
    ds.InstanceCreationTime = _tm(acq_start + dt.timedelta(seconds=30))
    return ds


def _age(settings: ScannerSettings) -> str:
    d, b = settings.study_datetime.date(), settings.patient_birth_date
    years = d.year - b.year - ((d.month, d.day) < (b.month, b.day))
    return f"{years:03d}Y"


def write_series(
    out_dir: Path,
    stored: np.ndarray,
    plan: SeriesPlan,
    settings: ScannerSettings,
    identity: StudyIdentity,
) -> list[Path]:
    """Write one phase (stored values from ``encode_pixels``, array (z, y, x)) as one file per
    slice named by instance number; returns the paths in instance order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    common = _common_dataset(plan, settings, identity, (settings.patient_sex, _age(settings)))
    phase_i = PHASE_ORDER.index(plan.phase)
    acq_start = settings.study_datetime + dt.timedelta(seconds=settings.acquisition_offsets_s[phase_i])
    paths = []
    g = plan.geometry
    for n, k in enumerate(plan.instance_order, start=1):
        position = g.index_to_patient(np.array([[k, 0.0, 0.0]]))[0]
        t = acq_start + dt.timedelta(seconds=(n - 1) * settings.seconds_per_slice)
        ds = Dataset()
        ds.update(common)
        sop_uid = identity.sop_instance_uid(plan.phase, n)
        ds.SOPInstanceUID = sop_uid
        ds.AcquisitionTime = _tm(t)
        ds.ContentTime = _tm(t + dt.timedelta(seconds=1))
        ds.InstanceNumber = n
        ds.ImagePositionPatient = [_ds(round(float(c), 4)) for c in position]
        ds.SliceLocation = _ds(round(float(position[2]), 4))
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        ds.file_meta = _file_meta(sop_uid)
        path = out_dir / f"{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _file_meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "LIVERNODE_PH1"
    return meta


def sort_by_z(order: Sequence[int]) -> tuple[int, ...]:
    """Instance numbers (1-based) of array z indices 0..N-1 given the instance order."""
    inverse = [0] * len(order)
    for n, k in enumerate(order, start=1):
        inverse[k] = n
    return tuple(inverse)
