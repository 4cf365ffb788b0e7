"""classifyPatient and the joint verdict (paper eq. 12, section V-B; DESIGN steps 7-8)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.types import PATIENT_CLASS_PRIORITY, Lesion, LesionType, PatientClass


def classify_patient(lesions: Iterable[Lesion | LesionType], *, min_volume_ml: float = 0.0) -> PatientClass:
    """The highest-priority lesion type present (HCC > ICC > Meta > Hem > Other > Cyst), else normal.

    Accepts lesions or bare lesion types; lesions under ``min_volume_ml`` do not count (bare types
    always count).
    """
    present: set[LesionType] = set()
    for item in lesions:
        if isinstance(item, Lesion):
            if item.volume_ml >= min_volume_ml:
                present.add(LesionType(item.lesion_type))
        else:
            present.add(LesionType(item))
    for lesion_type in PATIENT_CLASS_PRIORITY:
        if lesion_type in present:
            return PatientClass.from_lesion_type(lesion_type)
    return PatientClass.NORMAL


@dataclass(frozen=True)
class JointVerdict:
    """Base and high sensitivity classes; certain when they agree, else uncertain (for a radiologist)."""

    base: PatientClass
    high: PatientClass

    @property
    def certain(self) -> bool:
        return self.base == self.high

    @property
    def patient_class(self) -> PatientClass | None:
        """The agreed class, or None when uncertain."""
        return self.base if self.certain else None

    @property
    def label(self) -> str:
        """The agreed class's value, or ``"uncertain"``."""
        return self.base.value if self.certain else "uncertain"


def joint_verdict(base: PatientClass, high: PatientClass) -> JointVerdict:
    """Joint verdict of the base (f = 1) and high (f = 4) sensitivity patient classes."""
    return JointVerdict(PatientClass(base), PatientClass(high))
