"""TID 1500 measurement reports (Comprehensive 3D SR) of the findings.

`build_sr`: per lesion a volumetric group (TID 1411) on its SEG segment and a planar group
(TID 1410) with its long axis drawn on its key slice; a liver-level group (TID 1411 on the liver
segment, else TID 1501) with the liver volume, lesion count, total lesion volume, tumour burden
and LiverMax scores; the patient-level statements (CAD summary, class at each sensitivity, joint
verdict) in the report's Qualitative Evaluations container. A study without lesions says so
explicitly ("Lesion: Absent"). `build_failure_sr`: a report that says the study was not
analysed, and why.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from highdicom.sr import (
    CodeContentItem,
    ContentSequence,
    RelationshipTypeValues,
    TextContentItem,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code
from pydicom.uid import Comprehensive3DSRStorage

from dicom_sr import codes
from dicom_sr.geometry import long_axis_on_key_slice, order_sources
from dicom_sr.seg import (
    PRODUCT_NAME,
    contributing_equipment,
    lesion_tracking_id,
    plan_segments,
)
from dicom_sr.types import AlgorithmInfo, ResultsError, ResultUIDs, StudyInfo
from pipeline.types import PHASE_ORDER, Findings, Label, Lesion, LesionType

logger = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9801
SR_SERIES_DESCRIPTION = "livernode report - RESEARCH USE ONLY, not for diagnosis"
PATIENT_TRACKING_ID = "livernode patient-level findings"
_C = codes.concept


def _algorithm_id(algorithm: AlgorithmInfo) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=algorithm.parameter_strings or None,
    )


def _observation_context(algorithm: AlgorithmInfo, uids: ResultUIDs) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=uids.device_uid,
        name=algorithm.name,
        manufacturer_name=algorithm.manufacturer,
        model_name=f"{algorithm.name} {algorithm.version}",
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=_C(dcm_codes.DCM.Device),
            observer_identifying_attributes=device,
        )
    )


def _measurement(name: Code, value: float, unit: Code) -> hd.sr.Measurement:
    """A NUM (TID 300); the algorithm is identified once per group, not per measurement."""
    return hd.sr.Measurement(name=_C(name), value=float(value), unit=_C(unit))


def _evaluation(name: Code, value: Code) -> hd.sr.QualitativeEvaluation:
    return hd.sr.QualitativeEvaluation(name=_C(name), value=_C(value))


def _add_concept_modifier(measurement: hd.sr.Measurement, name: Code, value: Code) -> None:
    """Add a HAS CONCEPT MOD code to a measurement's NUM item (e.g. its contrast phase)."""
    item = measurement[0]
    content = getattr(item, "ContentSequence", None) or ContentSequence()
    content.insert(
        0,
        CodeContentItem(
            name=_C(name), value=_C(value), relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD
        ),
    )
    item.ContentSequence = content


def _lesion_measurements(lesion: Lesion) -> list[hd.sr.Measurement]:
    measurements = [
        _measurement(codes.VOLUME, lesion.volume_ml, codes.UNIT_ML),
        _measurement(codes.LONG_AXIS, lesion.longest_axial_diameter_mm, codes.UNIT_MM),
    ]
    for phase in PHASE_ORDER:
        if phase not in lesion.mean_hu:
            continue
        mean_hu = _measurement(codes.MEAN_ATTENUATION, lesion.mean_hu[phase], codes.UNIT_HU)
        _add_concept_modifier(mean_hu, codes.CONTRAST_PHASE, codes.PHASE_CODE[phase])
        measurements.append(mean_hu)
    if lesion.reclassification_score_ml is not None:
        measurements.append(
            _measurement(codes.RECLASSIFICATION_SCORE, lesion.reclassification_score_ml,
                         codes.UNIT_ML)
        )
    return measurements


def _lesion_evaluations(lesion: Lesion) -> list[hd.sr.QualitativeEvaluation]:
    evaluations = [_evaluation(codes.MALIGNANCY_ASSESSMENT, codes.malignancy_code(lesion.lesion_type))]
    if lesion.certain is not None:
        evaluations.append(
            _evaluation(codes.CERTAINTY_OF_FINDING, codes.CERTAIN if lesion.certain else codes.SUSPICIOUS)
        )
    return evaluations


def _finding_sites() -> list[hd.sr.FindingSite]:
    return [hd.sr.FindingSite(anatomic_location=_C(codes.LIVER))]


def _lesion_groups(
    findings: Findings,
    lesion: Lesion,
    segment_number: int,
    seg: hd.seg.Segmentation,
    key_slices: Sequence[Dataset],
    uids: ResultUIDs,
    algorithm: AlgorithmInfo,
) -> list[object]:
    coding = codes.lesion_coding(lesion.lesion_type)
    tracking = hd.sr.TrackingIdentifier(
        uid=uids.lesion_uid(lesion.lesion_id), identifier=lesion_tracking_id(lesion)
    )
    volumetric = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_segment=_referenced_segment(seg, segment_number, findings),
        finding_type=_C(coding.type),
        finding_category=_C(codes.CATEGORY_ABNORMAL),
        algorithm_id=_algorithm_id(algorithm),
        finding_sites=_finding_sites(),
        measurements=_lesion_measurements(lesion),
        qualitative_evaluations=_lesion_evaluations(lesion),
    )
    axis = long_axis_on_key_slice(lesion, findings.geometry)
    key_slice = key_slices[axis.z_index]
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.asarray(axis.points_colrow, dtype=np.float64),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=key_slice.SOPClassUID,
            referenced_sop_instance_uid=key_slice.SOPInstanceUID,
        ),
    )
    planar = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.lesion_uid(lesion.lesion_id), identifier=lesion_tracking_id(lesion)
        ),
        referenced_region=region,
        finding_type=_C(coding.type),
        finding_category=_C(codes.CATEGORY_ABNORMAL),
        algorithm_id=_algorithm_id(algorithm),
        finding_sites=_finding_sites(),
        measurements=[_measurement(codes.LONG_AXIS, axis.length_mm, codes.UNIT_MM)],
    )
    return [volumetric, planar]


def total_liver_volume_ml(findings: Findings) -> float:
    """Total liver volume: voxels labelled liver together with the voxels of reported lesions,
    each voxel counted once (lesions may or may not also carry the liver label)."""
    liver = findings.organ_labels == Label.LIVER
    for lesion in findings.lesions:
        liver[lesion.bbox.slices] |= lesion.mask
    return float(liver.sum()) * findings.geometry.voxel_volume_ml


def _liver_level_measurements(
    findings: Findings, segment_volume_ml: float | None
) -> list[hd.sr.Measurement]:
    """Volume (of the liver segment, when there is one), lesion count, total lesion volume,
    tumour burden and LiverMax scores: the quantities that describe the liver as a whole."""
    measurements = []
    if segment_volume_ml is not None:
        measurements.append(_measurement(codes.VOLUME, segment_volume_ml, codes.UNIT_ML))
    lesion_ml = float(sum(lesion.volume_ml for lesion in findings.lesions))
    measurements += [
        _measurement(codes.LESION_COUNT, len(findings.lesions), codes.UNIT_LESIONS),
        _measurement(codes.TOTAL_LESION_VOLUME, lesion_ml, codes.UNIT_ML),
    ]
    liver_ml = total_liver_volume_ml(findings)
    if liver_ml > 0.0:
        measurements.append(
            _measurement(codes.TUMOUR_BURDEN, 100.0 * lesion_ml / liver_ml, codes.UNIT_PERCENT)
        )
    for lesion_type in LesionType:
        if lesion_type in findings.livermax:
            measurements.append(
                _measurement(codes.LIVERMAX_SCORE[lesion_type], findings.livermax[lesion_type],
                             codes.UNIT_NONE)
            )
    return measurements


def _liver_group(
    findings: Findings,
    seg: hd.seg.Segmentation | None,
    liver_segment: int | None,
    uids: ResultUIDs,
    algorithm: AlgorithmInfo,
) -> object:
    """The liver-level group: TID 1411 on the SEG's liver segment when there is one, else a
    TID 1501 group (tracked by the patient-level tracking UID)."""
    if seg is not None and liver_segment is not None:
        liver_voxels = int(np.count_nonzero(findings.organ_labels == Label.LIVER))
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=uids.organ_uid(int(Label.LIVER)), identifier="livernode liver"
            ),
            referenced_segment=_referenced_segment(seg, liver_segment, findings),
            finding_type=_C(codes.LIVER),
            finding_category=_C(codes.CATEGORY_ANATOMY),
            algorithm_id=_algorithm_id(algorithm),
            finding_sites=_finding_sites(),
            measurements=_liver_level_measurements(
                findings, liver_voxels * findings.geometry.voxel_volume_ml
            ),
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.patient_tracking_uid, identifier=PATIENT_TRACKING_ID
        ),
        algorithm_id=_algorithm_id(algorithm),
        finding_sites=_finding_sites(),
        measurements=_liver_level_measurements(findings, None),
    )


def _referenced_segment(
    seg: hd.seg.Segmentation, segment_number: int, findings: Findings
) -> hd.sr.ReferencedSegment:
    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=segment_number,
        source_series=hd.sr.SourceSeriesForSegmentation(findings.reference_series_uid),
    )


def _patient_evaluations(findings: Findings) -> list[CodeContentItem]:
    """Patient-level statements for the report's Qualitative Evaluations container."""
    items = [
        (codes.CAD_SUMMARY,
         codes.CAD_WITH_FINDINGS if findings.lesions else codes.CAD_WITHOUT_FINDINGS),
    ]
    if not findings.lesions:
        items.append((codes.LESION, codes.ABSENT))
    items += [
        (codes.CLASS_BASE, codes.patient_class_code(findings.class_base)),
        (codes.CLASS_HIGH, codes.patient_class_code(findings.class_high)),
        (codes.JOINT_VERDICT, codes.patient_class_code(findings.joint_class)),
    ]
    return [
        CodeContentItem(name=_C(name), value=_C(value),
                        relationship_type=RelationshipTypeValues.CONTAINS)
        for name, value in items
    ]


def _make_sr(
    evidence: Sequence[Dataset],
    groups: Sequence[object],
    evaluations: Sequence[object],
    uids: ResultUIDs,
    algorithm: AlgorithmInfo,
) -> hd.sr.Comprehensive3DSR:
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm, uids),
        procedure_reported=_C(codes.PROCEDURE_CT),
        imaging_measurements=list(groups),  # type: ignore[arg-type]
    )
    root = report[0]
    if evaluations:
        # TID 1500 row 12: CONTAINER (C0034375, UMLS, "Qualitative Evaluations").
        container = hd.sr.ContainerContentItem(
            name=_C(codes.QUALITATIVE_EVALUATIONS),
            relationship_type=RelationshipTypeValues.CONTAINS,
        )
        container.ContentSequence = ContentSequence(list(evaluations))
        root.ContentSequence.append(container)
    return hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=root,
        series_instance_uid=uids.sr.series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sr.instance_uid,
        instance_number=1,
        manufacturer=algorithm.manufacturer,
        is_complete=True,
        is_final=False,
        series_description=SR_SERIES_DESCRIPTION,
        manufacturer_model_name=PRODUCT_NAME,
        software_versions=algorithm.software_version,
        device_serial_number=algorithm.device_serial_number,
        coding_schemes=[codes.private_coding_scheme()],
        contributing_equipment=[contributing_equipment(algorithm, uids.device_uid)],
    )


def build_sr(
    findings: Findings,
    source_datasets: Sequence[Dataset],
    seg: hd.seg.Segmentation | None,
    uids: ResultUIDs,
    algorithm: AlgorithmInfo,
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of the findings.

    source_datasets: the reference (venous) series the SEG was drawn on.
    seg: the reference SEG from `build_seg`; may be None only when there is no lesion.
    Content: per lesion a TID 1411 group (on its SEG segment) and a TID 1410 group (long axis
    on the key slice); a liver-level group (TID 1411 on the liver segment, else TID 1501) with
    the liver volume, lesion count, total lesion volume, tumour burden and LiverMax scores; and
    the patient-level statements (CAD summary, class at each sensitivity, joint verdict, and
    "Lesion: Absent" when there is none) in the report's Qualitative Evaluations container.
    """
    key_slices = order_sources(source_datasets, findings.geometry)
    specs = plan_segments(findings)
    if findings.lesions and seg is None:
        raise ResultsError("seg: a SEG is needed to report lesions")
    if seg is not None:
        _check_seg_matches(seg, findings, uids, specs)
    liver_segment = next((s.number for s in specs if s.organ_label == Label.LIVER), None)
    groups: list[object] = []
    numbers = {spec.lesion_id: spec.number for spec in specs if spec.lesion_id is not None}
    for lesion in sorted(findings.lesions, key=lambda item: item.lesion_id):
        groups += _lesion_groups(findings, lesion, numbers[lesion.lesion_id], seg,  # type: ignore[arg-type]
                                 key_slices, uids, algorithm)
    groups.append(_liver_group(findings, seg, liver_segment, uids, algorithm))
    evidence = list(key_slices) + ([seg] if seg is not None else [])
    sr = _make_sr(evidence, groups, _patient_evaluations(findings), uids, algorithm)
    logger.info(
        "built SR %s for study %s: %d lesions", uids.sr.instance_uid, findings.study_uid,
        len(findings.lesions),
    )
    return sr


def _check_seg_matches(
    seg: hd.seg.Segmentation, findings: Findings, uids: ResultUIDs, specs: Sequence
) -> None:
    """The SEG must be the one `build_seg` made of these findings (same segments, same UIDs)."""
    if seg.StudyInstanceUID != findings.study_uid:
        raise ResultsError("seg: belongs to another study")
    by_number = {int(item.SegmentNumber): item for item in seg.SegmentSequence}
    for spec in specs:
        expected = (uids.lesion_uid(spec.lesion_id) if spec.lesion_id is not None
                    else uids.organ_uid(spec.organ_label))
        item = by_number.get(spec.number)
        if item is None or str(item.get("TrackingUID", "")) != expected:
            raise ResultsError(f"seg: segment {spec.number} is not {spec.label} of these findings")


def _study_evidence(study: StudyInfo, uids: ResultUIDs) -> Dataset:
    """A stand-in instance carrying the study's attributes (its evidence entry is removed)."""
    ds = Dataset()
    ds.SOPClassUID = Comprehensive3DSRStorage
    ds.SOPInstanceUID = uids.sr.instance_uid
    ds.SeriesInstanceUID = uids.sr.series_uid
    ds.SpecificCharacterSet = study.specific_character_set
    ds.StudyInstanceUID = study.study_uid
    ds.PatientID = study.patient_id
    ds.PatientName = study.patient_name
    ds.PatientBirthDate = study.patient_birth_date
    ds.PatientSex = study.patient_sex
    ds.AccessionNumber = study.accession_number
    ds.StudyID = study.study_id
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.ReferringPhysicianName = study.referring_physician_name
    return ds


def build_failure_sr(
    study: Sequence[Dataset] | StudyInfo,
    reason: str,
    uids: ResultUIDs,
    algorithm: AlgorithmInfo,
) -> hd.sr.Comprehensive3DSR:
    """A report that says the study was NOT analysed, and why, so that silence never reads as
    "normal": CAD summary "No algorithms succeeded; without findings", "Analysis status: Not
    analysed" and the reason as text, in the report's Qualitative Evaluations container.

    study: the instances that were received (listed as evidence), or just the study's patient
    and study attributes when no instance can be referenced.
    """
    if not reason.strip():
        raise ResultsError("reason: a failure report needs a reason")
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.patient_tracking_uid, identifier=PATIENT_TRACKING_ID
        ),
        algorithm_id=_algorithm_id(algorithm),
        finding_sites=_finding_sites(),
    )
    evaluations = [
        CodeContentItem(name=_C(codes.CAD_SUMMARY), value=_C(codes.CAD_FAILED),
                        relationship_type=RelationshipTypeValues.CONTAINS),
        CodeContentItem(name=_C(codes.ANALYSIS_STATUS), value=_C(codes.NOT_ANALYSED),
                        relationship_type=RelationshipTypeValues.CONTAINS),
        TextContentItem(name=_C(codes.REASON_NOT_ANALYSED), value=reason[:1024],
                        relationship_type=RelationshipTypeValues.CONTAINS),
    ]
    if isinstance(study, StudyInfo):
        sr = _make_sr([_study_evidence(study, uids)], [group], evaluations, uids, algorithm)
        # Nothing in the content references an instance: there is no evidence to list.
        if "CurrentRequestedProcedureEvidenceSequence" in sr:
            del sr.CurrentRequestedProcedureEvidenceSequence
        study_uid = study.study_uid
    else:
        if not study:
            raise ResultsError("study: no instance and no study information")
        sr = _make_sr(list(study), [group], evaluations, uids, algorithm)
        study_uid = str(study[0].StudyInstanceUID)
    logger.info("built failure SR %s for study %s", uids.sr.instance_uid, study_uid)
    return sr
