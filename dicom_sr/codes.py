"""The one table from lesion types and organ labels to coded concepts, plus every other code
the results use.

Standard codes come from pydicom's DICOM code dictionary (`pydicom.sr.codedict.codes`) wherever
it has them; the few SNOMED CT codes it lacks are written out here with their source (see
docs/results.md). Concepts with no standard code use the private coding scheme "99LIVERNODE",
declared in each object's Coding Scheme Identification Sequence (`private_coding_scheme()`).
Constants are immutable pydicom `Code`s; `concept()` turns one into a fresh highdicom
`CodedConcept` where a Dataset is needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.color import CIELabColor
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from pipeline.types import Label, LesionType, PatientClass, Phase

PRIVATE_SCHEME = "99LIVERNODE"



def private_coding_scheme() -> CodingSchemeIdentificationItem:
    """Declaration of the private scheme, for the Coding Scheme Identification Sequence."""
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name="livernode private codes",
        version="1",
        responsible_organization="livernode project",
    )


def concept(code: Code) -> CodedConcept:
    """A fresh highdicom `CodedConcept` for a code of this table."""
    return CodedConcept(
        value=code.value,
        scheme_designator=code.scheme_designator,
        meaning=code.meaning,
        scheme_version=code.scheme_version,
    )


def _private(value: str, meaning: str) -> Code:
    return Code(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


def _sct(value: str, meaning: str) -> Code:
    return Code(value=value, scheme_designator="SCT", meaning=meaning)


def _std(code: Code) -> Code:
    """A code of pydicom's DICOM dictionary (kept as an immutable `Code`)."""
    return code


# --- segment categories (DICOM CID 7150) -------------------------------------------------------
CATEGORY_ABNORMAL = _std(codes.SCT.MorphologicallyAbnormalStructure)  # SCT 49755003
CATEGORY_ANATOMY = _std(codes.SCT.AnatomicalStructure)  # SCT 91723000

LIVER = _std(codes.SCT.Liver)  # SCT 10200004
BENIGN = _std(codes.SCT.Benign)  # SCT 30807003
MALIGNANT = _std(codes.SCT.Malignant)  # SCT 21594007


@dataclass(frozen=True)
class SegmentCoding:
    """How one lesion type or organ is described in a SEG segment and an SR finding.

    `type_modifier` refines `type` (e.g. "Lesion" + "Benign"); `anatomic_region` says where the
    structure lies when the type alone does not (lesions, hepatic vessels); `rgb` is the
    recommended display colour (stored as CIELab).
    """

    name: str
    category: Code
    type: Code
    rgb: tuple[int, int, int]
    type_modifier: Code | None = None
    anatomic_region: Code | None = None

    @property
    def cielab(self) -> CIELabColor:
        """The display colour as a DICOM CIELab value."""
        return CIELabColor.from_rgb(*self.rgb)


#: Lesion type -> coding. HCC and cholangiocarcinoma are SNOMED CT morphologic abnormalities
#: (sources in docs/results.md); "Other" (FNH and other benign lesions) has no single SNOMED
#: concept and is coded as Lesion with the modifier Benign.
LESION_CODING: Mapping[LesionType, SegmentCoding] = MappingProxyType(
    {
        LesionType.HCC: SegmentCoding(
            "Hepatocellular carcinoma",
            CATEGORY_ABNORMAL,
            _sct("25370001", "Hepatocellular carcinoma"),
            (230, 25, 75),
            anatomic_region=LIVER,
        ),
        LesionType.ICC: SegmentCoding(
            "Cholangiocarcinoma",
            CATEGORY_ABNORMAL,
            _sct("70179006", "Cholangiocarcinoma"),
            (245, 130, 48),
            anatomic_region=LIVER,
        ),
        LesionType.META: SegmentCoding(
            "Metastasis",
            CATEGORY_ABNORMAL,
            _std(codes.SCT.Metastasis),  # SCT 128462008
            (145, 30, 180),
            anatomic_region=LIVER,
        ),
        LesionType.HEM: SegmentCoding(
            "Hemangioma",
            CATEGORY_ABNORMAL,
            _std(codes.SCT.Hemangioma),  # SCT 400210000
            (240, 50, 230),
            anatomic_region=LIVER,
        ),
        LesionType.OTHER: SegmentCoding(
            "Other benign lesion",
            CATEGORY_ABNORMAL,
            _std(codes.SCT.Lesion),  # SCT 52988006
            (255, 225, 25),
            type_modifier=BENIGN,
            anatomic_region=LIVER,
        ),
        LesionType.CYST: SegmentCoding(
            "Cyst",
            CATEGORY_ABNORMAL,
            _std(codes.SCT.Cyst),  # SCT 367643001
            (70, 240, 240),
            anatomic_region=LIVER,
        ),
    }
)

#: Organ / vessel label -> coding. Hepatic vessels are "Blood vessel" in the liver (as in
#: TotalSegmentator's DICOM mapping); label 9 uses SCT 110765007 "Portal vein and splenic vein".
ORGAN_CODING: Mapping[Label, SegmentCoding] = MappingProxyType(
    {
        Label.LIVER: SegmentCoding("Liver", CATEGORY_ANATOMY, LIVER, (221, 130, 101)),
        Label.HEPATIC_VESSELS: SegmentCoding(
            "Hepatic vessels",
            CATEGORY_ANATOMY,
            _std(codes.SCT.BloodVessel),  # SCT 59820001
            (0, 151, 206),
            anatomic_region=LIVER,
        ),
        Label.PORTAL_SPLENIC_VEIN: SegmentCoding(
            "Portal and splenic vein",
            CATEGORY_ANATOMY,
            _sct("110765007", "Portal vein and splenic vein"),
            (0, 90, 220),
        ),
        Label.GALLBLADDER: SegmentCoding(
            "Gallbladder", CATEGORY_ANATOMY, _std(codes.SCT.Gallbladder), (139, 150, 98)
        ),
        Label.SPLEEN: SegmentCoding(
            "Spleen", CATEGORY_ANATOMY, _std(codes.SCT.Spleen), (157, 108, 162)
        ),
        Label.PANCREAS: SegmentCoding(
            "Pancreas", CATEGORY_ANATOMY, _std(codes.SCT.Pancreas), (249, 180, 111)
        ),
        Label.STOMACH: SegmentCoding(
            "Stomach", CATEGORY_ANATOMY, _std(codes.SCT.Stomach), (60, 180, 75)
        ),
    }
)


def lesion_coding(lesion_type: LesionType) -> SegmentCoding:
    """The coding of a lesion type."""
    return LESION_CODING[LesionType(lesion_type)]


def organ_coding(label: int) -> SegmentCoding:
    """The coding of an organ/vessel label (7..13); raises ValueError for other labels."""
    try:
        return ORGAN_CODING[Label(label)]
    except (KeyError, ValueError):
        raise ValueError(f"label: {label} is not an organ or vessel label (7..13)") from None


# --- SR: standard concepts ---------------------------------------------------------------------
PROCEDURE_CT = _std(codes.LN.CTUnspecifiedBodyRegion)  # LN 25045-6 (CID 100)
ALGORITHM_FAMILY = _std(codes.DCM.ArtificialIntelligence)  # DCM 123110
PROCESSING_EQUIPMENT = _std(codes.DCM.ProcessingEquipment)  # DCM 109102 (CID 7005)
VOLUME = _std(codes.SCT.Volume)  # SCT 118565006
LONG_AXIS = _std(codes.SCT.LongAxis)  # SCT 103339001
MEAN_ATTENUATION = _std(codes.DCM.MeanAttenuationCoefficient)  # DCM 112181
CONTRAST_PHASE = _std(codes.DCM.ContrastPhase)  # DCM 109058
CERTAINTY_OF_FINDING = _std(codes.DCM.CertaintyOfFinding)  # DCM 111012
CAD_SUMMARY = _std(codes.DCM.CADProcessingAndFindingsSummary)  # DCM 111017
CAD_WITH_FINDINGS = _std(codes.DCM.AllAlgorithmsSucceededWithFindings)  # DCM 111242
CAD_WITHOUT_FINDINGS = _std(codes.DCM.AllAlgorithmsSucceededWithoutFindings)  # DCM 111241
CAD_FAILED = _std(codes.DCM.NoAlgorithmsSucceededWithoutFindings)  # DCM 111245
LESION = _std(codes.SCT.Lesion)  # SCT 52988006
ABSENT = _std(codes.SCT.Absent)  # SCT 272519000
NORMAL = _std(codes.SCT.Normal)  # SCT 17621005
INDETERMINATE = _std(codes.SCT.Indeterminate)  # SCT 82334004

#: TID 1500 row 12 container (UMLS C0034375; not in pydicom's dictionary).
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")

UNIT_ML = Code("ml", "UCUM", "milliliter")
UNIT_MM = _std(codes.UCUM.Millimeter)
UNIT_HU = _std(codes.UCUM.HounsfieldUnit)
UNIT_PERCENT = _std(codes.UCUM.Percent)
UNIT_NONE = _std(codes.UCUM.NoUnits)
UNIT_LESIONS = Code("{lesions}", "UCUM", "lesions")

# --- SR: private concepts (99LIVERNODE); every one is listed in docs/results.md ---------------
MALIGNANCY_ASSESSMENT = _private("LN0001", "Malignancy assessment")
CERTAIN = _private("LN0002", "Certain (found at base and high sensitivity)")
SUSPICIOUS = _private("LN0003", "Suspicious (found at high sensitivity only)")
RECLASSIFICATION_SCORE = _private("LN0004", "Reclassification score")
CLASS_BASE = _private("LN0010", "Patient class at base sensitivity")
CLASS_HIGH = _private("LN0011", "Patient class at high sensitivity")
JOINT_VERDICT = _private("LN0012", "Joint patient class")
OTHER_BENIGN = _private("LN0013", "Other benign liver lesion")
LESION_COUNT = _private("LN0020", "Number of reported lesions")
TOTAL_LESION_VOLUME = _private("LN0021", "Total lesion volume")
TUMOUR_BURDEN = _private("LN0022", "Tumour burden")
REASON_NOT_ANALYSED = _private("LN0030", "Reason not analysed")
ANALYSIS_STATUS = _private("LN0031", "Analysis status")
NOT_ANALYSED = _private("LN0032", "Not analysed")

#: LiverMax per-type score names (patient-level, 0..1).
LIVERMAX_SCORE: Mapping[LesionType, Code] = MappingProxyType(
    {
        LesionType.HCC: _private("LN0041", "LiverMax score HCC"),
        LesionType.ICC: _private("LN0042", "LiverMax score ICC"),
        LesionType.META: _private("LN0043", "LiverMax score metastasis"),
        LesionType.HEM: _private("LN0044", "LiverMax score hemangioma"),
        LesionType.OTHER: _private("LN0045", "LiverMax score other benign"),
        LesionType.CYST: _private("LN0046", "LiverMax score cyst"),
    }
)

#: Contrast phase values (no standard code set for CT liver phases).
PHASE_CODE: Mapping[Phase, Code] = MappingProxyType(
    {
        Phase.NC: _private("LN0051", "Non-contrast phase"),
        Phase.AP: _private("LN0052", "Arterial phase"),
        Phase.VP: _private("LN0053", "Portal venous phase"),
        Phase.DP: _private("LN0054", "Delayed phase"),
    }
)


def patient_class_code(patient_class: PatientClass | None) -> Code:
    """Coded value of a patient class; None (an uncertain joint verdict) is Indeterminate."""
    if patient_class is None:
        return INDETERMINATE
    if patient_class == PatientClass.NORMAL:
        return NORMAL
    if patient_class == PatientClass.OTHER:
        return OTHER_BENIGN
    lesion_type = next(t for t in LesionType if t.display_name == patient_class.value)
    return LESION_CODING[lesion_type].type


def malignancy_code(lesion_type: LesionType) -> Code:
    """Malignant or Benign, from the lesion type."""
    return MALIGNANT if LesionType(lesion_type).malignant else BENIGN


def all_private_codes() -> list[Code]:
    """Every private code defined here (documented one by one in docs/results.md)."""
    fixed = [
        MALIGNANCY_ASSESSMENT,
        CERTAIN,
        SUSPICIOUS,
        RECLASSIFICATION_SCORE,
        CLASS_BASE,
        CLASS_HIGH,
        JOINT_VERDICT,
        OTHER_BENIGN,
        LESION_COUNT,
        TOTAL_LESION_VOLUME,
        TUMOUR_BURDEN,
        REASON_NOT_ANALYSED,
        ANALYSIS_STATUS,
        NOT_ANALYSED,
    ]
    return fixed + list(LIVERMAX_SCORE.values()) + list(PHASE_CODE.values())
