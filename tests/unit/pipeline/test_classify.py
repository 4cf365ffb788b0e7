"""classifyPatient priority and the joint verdict."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.classify import classify_patient, joint_verdict
from pipeline.types import PATIENT_CLASS_PRIORITY, BoundingBox, Lesion, LesionType, PatientClass


def lesion(lesion_type: LesionType, volume_ml: float = 1.0) -> Lesion:
    return Lesion(
        lesion_id=1, lesion_type=lesion_type, bbox=BoundingBox(0, 1, 0, 1, 0, 1), mask=np.ones((1, 1, 1), bool),
        voxel_count=1, volume_ml=volume_ml, longest_axial_diameter_mm=1.0, centroid_mm=(0.0, 0.0, 0.0),
    )  # fmt: skip


def test_priority_order_hcc_icc_meta_hem_other_cyst():
    order = [LesionType.HCC, LesionType.ICC, LesionType.META, LesionType.HEM, LesionType.OTHER, LesionType.CYST]
    assert list(PATIENT_CLASS_PRIORITY) == order
    for higher, lower in itertools.combinations(order, 2):
        expected = PatientClass.from_lesion_type(higher)
        assert classify_patient([lower, higher]) is expected
        assert classify_patient([lesion(lower), lesion(higher)]) is expected
    assert classify_patient([LesionType.CYST, LesionType.OTHER, LesionType.META]) is PatientClass.META


def test_no_lesions_is_normal():
    assert classify_patient([]) is PatientClass.NORMAL


def test_small_lesions_can_be_left_out():
    lesions = [lesion(LesionType.HCC, 0.3), lesion(LesionType.CYST, 2.0)]
    assert classify_patient(lesions) is PatientClass.HCC
    assert classify_patient(lesions, min_volume_ml=0.5) is PatientClass.CYST


def test_joint_verdict_certain_when_classes_agree():
    verdict = joint_verdict(PatientClass.HCC, PatientClass.HCC)
    assert verdict.certain and verdict.patient_class is PatientClass.HCC and verdict.label == "HCC"


@pytest.mark.parametrize(
    "base, high", [(PatientClass.NORMAL, PatientClass.META), (PatientClass.CYST, PatientClass.HCC)]
)
def test_joint_verdict_uncertain_when_classes_differ(base, high):
    verdict = joint_verdict(base, high)
    assert not verdict.certain and verdict.patient_class is None and verdict.label == "uncertain"
