"""Data types of the results package: identities passed in by the caller, algorithm description,
study information for failure reports, and the output gate's report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from pipeline.types import ModelIdentity, Phase


class ResultsError(ValueError):
    """The inputs cannot be turned into valid result objects; the message says why."""


class ValidatorMissingError(RuntimeError):
    """A validator the output gate depends on (dciodvfy) is not installed."""


@dataclass(frozen=True)
class SeriesInstanceUIDs:
    """Series and SOP instance UID of one single-instance result series."""

    series_uid: str
    instance_uid: str


@dataclass(frozen=True)
class ResultUIDs:
    """Every UID a result object needs, decided by the caller (`node.identity`).

    seg: one SEG series/instance per phase (the reference phase's SEG is `seg[Phase.VP]`).
    lesion_tracking: lesion id -> Tracking UID (shared by the SEG segment and the SR groups).
    organ_tracking: organ/vessel label (7..13) -> Tracking UID.
    patient_tracking_uid: Tracking UID of the patient-level SR group.
    device_uid: Device UID of the algorithm (model name + version).
    """

    seg: Mapping[Phase, SeriesInstanceUIDs]
    sr: SeriesInstanceUIDs
    lesion_tracking: Mapping[int, str]
    organ_tracking: Mapping[int, str]
    patient_tracking_uid: str
    device_uid: str

    def seg_for(self, phase: Phase) -> SeriesInstanceUIDs:
        """UIDs of the SEG on `phase`; ResultsError if the caller did not provide them."""
        try:
            return self.seg[phase]
        except KeyError:
            raise ResultsError(f"uids.seg: no SEG UIDs for phase {phase.value}") from None

    def lesion_uid(self, lesion_id: int) -> str:
        """Tracking UID of a lesion; ResultsError if missing."""
        try:
            return self.lesion_tracking[lesion_id]
        except KeyError:
            raise ResultsError(f"uids.lesion_tracking: no UID for lesion {lesion_id}") from None

    def organ_uid(self, label: int) -> str:
        """Tracking UID of an organ label; ResultsError if missing."""
        try:
            return self.organ_tracking[label]
        except KeyError:
            raise ResultsError(f"uids.organ_tracking: no UID for label {label}") from None


@dataclass(frozen=True)
class AlgorithmInfo:
    """The algorithm that produced the results (Algorithm Identification, Contributing
    Equipment, SEG/SR equipment attributes).

    name/version: the AI model (AlgorithmName, AlgorithmVersion; Manufacturer's Model Name and
    Software Versions of the "Processing Equipment" contributing-equipment item).
    software_version: the livernode package version (top-level Software Versions).
    parameters: the operating point (e.g. sensitivity factors) as name -> value strings.
    """

    name: str
    version: str
    manufacturer: str = "livernode project"
    software_version: str = "0.1.0"
    device_serial_number: str = "0"
    parameters: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_model(
        cls,
        model: ModelIdentity,
        sensitivity_factors: tuple[float, float],
        software_version: str = "0.1.0",
        manufacturer: str = "livernode project",
    ) -> AlgorithmInfo:
        """Describe `model` run at the given (base, high) sensitivity factors."""
        base, high = sensitivity_factors
        serial = model.weights_sha256[:16] if model.weights_sha256 else "0"
        return cls(
            name=model.name,
            version=model.version,
            manufacturer=manufacturer,
            software_version=software_version,
            device_serial_number=serial,
            parameters={"sensitivity_base": f"{base:g}", "sensitivity_high": f"{high:g}"},
        )

    @property
    def parameter_strings(self) -> list[str]:
        """Parameters as "name=value" strings, sorted by name."""
        return [f"{key}={value}" for key, value in sorted(self.parameters.items())]


@dataclass(frozen=True)
class StudyInfo:
    """Patient and study attributes for a report about a study whose images are not at hand
    (e.g. a failure before the series could be read). Values are copied into the SR verbatim
    and are never logged."""

    study_uid: str
    patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    accession_number: str = ""
    study_id: str = ""
    study_date: str = ""
    study_time: str = ""
    referring_physician_name: str = ""
    specific_character_set: str = "ISO_IR 100"

    @classmethod
    def from_dataset(cls, ds: Dataset) -> StudyInfo:
        """Take the patient and study attributes of any instance of the study."""
        return cls(
            study_uid=str(ds.StudyInstanceUID),
            patient_id=str(ds.get("PatientID", "")),
            patient_name=str(ds.get("PatientName", "")),
            patient_birth_date=str(ds.get("PatientBirthDate", "")),
            patient_sex=str(ds.get("PatientSex", "")),
            accession_number=str(ds.get("AccessionNumber", "")),
            study_id=str(ds.get("StudyID", "")),
            study_date=str(ds.get("StudyDate", "")),
            study_time=str(ds.get("StudyTime", "")),
            referring_physician_name=str(ds.get("ReferringPhysicianName", "")),
            specific_character_set=str(ds.get("SpecificCharacterSet", "ISO_IR 100")),
        )


@dataclass(frozen=True)
class SegmentStats:
    """Voxel count and centroid (patient LPS mm) of one segment, and optionally its voxel count
    on each z plane of the grid (plane_counts[k] = voxels on plane k)."""

    voxel_count: int
    centroid_mm: tuple[float, float, float] | None
    plane_counts: tuple[int, ...] | None = None


@dataclass
class GateReport:
    """What the output gate found about one object. `ok` is False when any error was found;
    such an object must not be sent."""

    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    #: The Part 10 bytes that were validated: send these, not a re-encoding.
    encoded: bytes | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """One line for logs (UIDs and counts only)."""
        state = "ok" if self.ok else "REJECTED"
        return (
            f"{self.modality} {self.sop_instance_uid}: {state}, {len(self.errors)} errors, "
            f"{len(self.warnings)} warnings, checks: {', '.join(self.checks)}"
        )
