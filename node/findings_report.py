"""``findings.json``: the study's findings as plain JSON for people and scripts (no patient
identifiers: UIDs, measurements, classes, decisions and timings only)."""

from __future__ import annotations

from typing import Any

from pipeline.phases import PhaseAssignment
from pipeline.registration import RegisteredStudy
from pipeline.types import Findings, Lesion


def _lesion(lesion: Lesion) -> dict[str, Any]:
    return {
        "id": lesion.lesion_id,
        "type": lesion.lesion_type.name,
        "volume_ml": round(lesion.volume_ml, 3),
        "longest_axial_diameter_mm": round(lesion.longest_axial_diameter_mm, 2),
        "centroid_mm_lps": [round(v, 2) for v in lesion.centroid_mm],
        "mean_hu": {phase.value: round(value, 1) for phase, value in lesion.mean_hu.items()},
        "type_fractions": {t.name: round(v, 3) for t, v in lesion.type_fractions.items()},
        "reclassification_score_ml": (
            None if lesion.reclassification_score_ml is None else round(lesion.reclassification_score_ml, 3)
        ),
        "certain": lesion.certain,
        "sensitivities": list(lesion.sensitivities),
    }


def findings_document(findings: Findings, assignment: PhaseAssignment, registered: RegisteredStudy) -> dict[str, Any]:
    """The JSON document of one analysed study."""
    return {
        "study_uid": findings.study_uid,
        "analysed": True,
        "reference_series_uid": findings.reference_series_uid,
        "phases": {phase.value: info.series_uid for phase, info in assignment.chosen.items()},
        "phases_used_by_model": [p.value for p in findings.phases_present],
        "registration": [
            {"phase": q.phase.value, "ncc_before": round(q.before, 4), "ncc_after": round(q.after, 4),
             "registered": q.used_registered}
            for q in registered.registration
        ],
        "patient_class": {
            "base": findings.class_base.name,
            "high": findings.class_high.name,
            "certain": findings.certain,
            "joint": None if findings.joint_class is None else findings.joint_class.name,
        },
        "livermax": {t.name: round(v, 4) for t, v in findings.livermax.items()},
        "sensitivity_factors": list(findings.sensitivity_factors),
        "lesions": [_lesion(lesion) for lesion in findings.lesions],
        "model": {"name": findings.model.name, "version": findings.model.version,
                  "weights_sha256": findings.model.weights_sha256, "trained_on": findings.model.trained_on},
        "decisions": [
            {"stage": d.stage, "subject": d.subject, "outcome": d.outcome, "rule": d.rule,
             "confidence": d.confidence}
            for d in findings.decisions
        ],
        "timings_s": {k: round(v, 3) for k, v in findings.timings_s.items()},
    }
