"""The code table: complete, well-formed, and every private code documented."""

from __future__ import annotations

from pathlib import Path

from dicom_sr import codes
from pipeline.types import ORGAN_LABELS, LesionType, PatientClass

DOC = Path(__file__).resolve().parents[3] / "docs" / "results.md"


def test_every_lesion_type_and_organ_has_a_coding():
    for lesion_type in LesionType:
        coding = codes.lesion_coding(lesion_type)
        assert coding.category == codes.CATEGORY_ABNORMAL
        assert coding.anatomic_region == codes.LIVER
    for label in ORGAN_LABELS:
        assert codes.organ_coding(label).category == codes.CATEGORY_ANATOMY
    colours = [c.rgb for c in codes.LESION_CODING.values()] + [
        c.rgb for c in codes.ORGAN_CODING.values()
    ]
    assert len(set(colours)) == len(colours)


def test_standard_codes_are_the_expected_snomed_concepts():
    by_type = {t: codes.lesion_coding(t).type.value for t in LesionType}
    assert by_type == {
        LesionType.HCC: "25370001",
        LesionType.ICC: "70179006",
        LesionType.META: "128462008",
        LesionType.HEM: "400210000",
        LesionType.OTHER: "52988006",
        LesionType.CYST: "367643001",
    }
    assert codes.lesion_coding(LesionType.OTHER).type_modifier == codes.BENIGN
    assert codes.CATEGORY_ABNORMAL.value == "49755003"
    assert codes.CATEGORY_ANATOMY.value == "91723000"


def test_organ_label_outside_7_to_13_is_refused():
    for label in (0, 3, 14):
        try:
            codes.organ_coding(label)
        except ValueError as error:
            assert "7..13" in str(error)
        else:
            raise AssertionError(f"label {label} accepted")


def test_patient_classes_are_coded():
    values = {p: codes.patient_class_code(p).value for p in PatientClass}
    assert values[PatientClass.NORMAL] == "17621005"
    assert values[PatientClass.HCC] == "25370001"
    assert codes.patient_class_code(None) == codes.INDETERMINATE
    assert len(set(values.values())) == len(values)


def test_private_codes_are_valid_and_documented():
    private = codes.all_private_codes()
    values = [c.value for c in private]
    assert len(set(values)) == len(values)
    text = DOC.read_text()
    for code in private:
        assert code.scheme_designator == "99LIVERNODE"
        assert len(code.value) <= 16 and len(code.meaning) <= 64
        assert f"`{code.value}`" in text, f"{code.value} is not documented in docs/results.md"
    item = codes.private_coding_scheme()
    assert item.CodingSchemeDesignator == "99LIVERNODE"
