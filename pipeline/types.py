"""Data types that cross module boundaries (DESIGN section 2).

Arrays are indexed (z, y, x). Patient coordinates are DICOM LPS millimetres.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class Phase(str, enum.Enum):
    """Contrast phase of a CT series."""

    NC = "NC"  # non-contrast
    AP = "AP"  # arterial
    VP = "VP"  # portal venous (the reference phase)
    DP = "DP"  # delayed

    @property
    def long_name(self) -> str:
        return _PHASE_LONG_NAMES[self]


_PHASE_LONG_NAMES = {
    Phase.NC: "non-contrast",
    Phase.AP: "arterial",
    Phase.VP: "portal venous",
    Phase.DP: "delayed",
}

#: Canonical order of phases as model input channels.
PHASE_ORDER: tuple[Phase, ...] = (Phase.NC, Phase.AP, Phase.VP, Phase.DP)


class Label(enum.IntEnum):
    """Voxel labels of UNet_whole and of the ground truth (DESIGN section 3)."""

    BACKGROUND = 0
    HCC = 1
    ICC = 2
    META = 3
    HEM = 4
    OTHER = 5
    CYST = 6
    LIVER = 7
    HEPATIC_VESSELS = 8
    PORTAL_SPLENIC_VEIN = 9
    GALLBLADDER = 10
    SPLEEN = 11
    PANCREAS = 12
    STOMACH = 13


class LesionType(enum.IntEnum):
    """The six lesion types; values equal their voxel label."""

    HCC = 1
    ICC = 2
    META = 3
    HEM = 4
    OTHER = 5
    CYST = 6

    @property
    def malignant(self) -> bool:
        return self in MALIGNANT_TYPES

    @property
    def display_name(self) -> str:
        return _LESION_DISPLAY_NAMES[self]


MALIGNANT_TYPES = frozenset({LesionType.HCC, LesionType.ICC, LesionType.META})

_LESION_DISPLAY_NAMES = {
    LesionType.HCC: "HCC",
    LesionType.ICC: "ICC",
    LesionType.META: "Meta",
    LesionType.HEM: "Hem",
    LesionType.OTHER: "Other",
    LesionType.CYST: "Cyst",
}

LESION_LABELS: tuple[int, ...] = tuple(int(t) for t in LesionType)
ORGAN_LABELS: tuple[int, ...] = tuple(range(int(Label.LIVER), int(Label.STOMACH) + 1))
#: The organs and vessels besides the liver (labels 8-13).
OTHER_ORGAN_LABELS: tuple[Label, ...] = tuple(Label(value) for value in ORGAN_LABELS if value != Label.LIVER)
NUM_CLASSES = 14


class PatientClass(str, enum.Enum):
    """Patient-level class: the highest-priority lesion type present, else normal."""

    HCC = "HCC"
    ICC = "ICC"
    META = "Meta"
    HEM = "Hem"
    OTHER = "Other"
    CYST = "Cyst"
    NORMAL = "normal"

    @property
    def malignant(self) -> bool:
        return self in (PatientClass.HCC, PatientClass.ICC, PatientClass.META)

    @classmethod
    def from_lesion_type(cls, lesion_type: LesionType) -> "PatientClass":
        return cls(lesion_type.display_name)


#: classifyPatient priority, most severe first (DESIGN section 3, step 7).
PATIENT_CLASS_PRIORITY: tuple[LesionType, ...] = (
    LesionType.HCC,
    LesionType.ICC,
    LesionType.META,
    LesionType.HEM,
    LesionType.OTHER,
    LesionType.CYST,
)


@dataclass(frozen=True)
class VolumeGeometry:
    """Voxel grid of a volume: shape (z, y, x), spacing (z, y, x) mm, origin of voxel (0,0,0)
    in patient LPS mm, and direction: 3x3 matrix whose columns are the patient-space unit
    vectors of the x, y and z index axes (as in SimpleITK/ITK)."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing_mm)) / 1000.0

    def index_to_patient(self, zyx: np.ndarray) -> np.ndarray:
        """Map (N, 3) continuous (z, y, x) indices to (N, 3) patient (x, y, z) mm."""
        zyx = np.atleast_2d(np.asarray(zyx, dtype=np.float64))
        ijk = zyx[:, ::-1] * np.asarray(self.spacing_mm[::-1])
        return np.asarray(self.origin_mm) + ijk @ self.direction_matrix.T


@dataclass
class PhaseVolume:
    """One contrast phase as a HU volume with its DICOM provenance."""

    phase: Phase
    hu: np.ndarray  # float32 (z, y, x)
    geometry: VolumeGeometry
    series_uid: str
    sop_instance_uids: tuple[str, ...]  # ordered like the z axis of `hu`


@dataclass
class RegistrationQuality:
    """Similarity of a phase to the reference phase before and after registration."""

    phase: Phase
    metric: str
    before: float
    after: float
    used_registered: bool
    message: str = ""


@dataclass
class StudyVolumes:
    """The phases of one study, all resampled onto the reference (venous) grid."""

    study_uid: str
    phases: dict[Phase, PhaseVolume]
    reference_phase: Phase = Phase.VP
    registration: list[RegistrationQuality] = field(default_factory=list)

    @property
    def present(self) -> tuple[Phase, ...]:
        return tuple(p for p in PHASE_ORDER if p in self.phases)


@dataclass(frozen=True)
class BoundingBox:
    """Half-open voxel box [z0, z1) x [y0, y1) x [x0, x1)."""

    z0: int
    z1: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return (slice(self.z0, self.z1), slice(self.y0, self.y1), slice(self.x0, self.x1))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.z1 - self.z0, self.y1 - self.y0, self.x1 - self.x0)


@dataclass
class Lesion:
    """One 3D lesion instance as produced by seg2det (and refined by reclassification)."""

    lesion_id: int
    lesion_type: LesionType
    bbox: BoundingBox
    mask: np.ndarray  # bool, cropped to bbox
    voxel_count: int
    volume_ml: float
    longest_axial_diameter_mm: float
    centroid_mm: tuple[float, float, float]  # patient LPS (x, y, z)
    mean_hu: dict[Phase, float] = field(default_factory=dict)
    type_fractions: dict[LesionType, float] = field(default_factory=dict)
    sensitivities: tuple[float, ...] = ()
    reclassification_score_ml: float | None = None
    certain: bool | None = None

    def full_mask(self, shape: tuple[int, int, int]) -> np.ndarray:
        """The lesion mask pasted into a zero volume of `shape`."""
        out = np.zeros(shape, dtype=bool)
        out[self.bbox.slices] = self.mask
        return out


@dataclass(frozen=True)
class ModelIdentity:
    """Which model produced a result."""

    name: str
    version: str
    weights_sha256: str = ""
    trained_on: str = ""


@dataclass
class Decision:
    """A recorded decision of the pipeline (phase assignment, registration fallback, ...)."""

    stage: str
    subject: str  # e.g. a series UID
    outcome: str
    rule: str
    confidence: float = 1.0


@dataclass
class Findings:
    """Everything the pipeline concluded about one study."""

    study_uid: str
    reference_series_uid: str
    geometry: VolumeGeometry
    lesions: list[Lesion]  # reported lesions (High+ReCls, each marked certain or suspicious)
    organ_labels: np.ndarray  # uint8 (z, y, x) organ/vessel labels 7..13 on the reference grid
    class_base: PatientClass
    class_high: PatientClass
    livermax: dict[LesionType, float]
    model: ModelIdentity
    phases_present: tuple[Phase, ...] = ()
    sensitivity_factors: tuple[float, float] = (1.0, 4.0)
    timings_s: dict[str, float] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)

    @property
    def certain(self) -> bool:
        """Joint verdict: base and high sensitivity agree on the patient class."""
        return self.class_base == self.class_high

    @property
    def joint_class(self) -> PatientClass | None:
        """The agreed patient class, or None when the verdict is uncertain."""
        return self.class_base if self.certain else None
