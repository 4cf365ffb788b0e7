"""run_cascade end to end on small hand-built probability maps."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pipeline.cascade import run_cascade, save_evaluation_npz
from pipeline.config import CascadeConfig
from pipeline.evaluate import evaluate_folders, load_prediction
from pipeline.lesion_features import feature_count, feature_names
from pipeline.types import LesionType, ModelIdentity, PatientClass, Phase, VolumeGeometry

# 5 mm voxels: 0.125 ml each
GEOMETRY = VolumeGeometry((8, 32, 32), (5.0, 5.0, 5.0), (-80.0, -80.0, 100.0))
CONFIG = CascadeConfig(patch_size_voxels=(4, 16, 16), inference_patches_per_lesion=4)
STRONG = (slice(2, 5), slice(8, 12), slice(8, 12))  # Hem, 48 voxels = 6 ml, found at f = 1
WEAK = (slice(2, 4), slice(18, 21), slice(18, 21))  # Meta, 18 voxels = 2.25 ml, found only at f = 4


def study(dtype=np.float16):
    p = np.zeros((14,) + GEOMETRY.shape, np.float32)
    p[0] = 0.9
    liver = (slice(None), slice(4, 28), slice(4, 28))
    p[0][liver] = 0.05
    p[7][liver] = 0.8
    p[4][STRONG], p[7][STRONG] = 0.9, 0.1
    p[3][WEAK], p[7][WEAK] = 0.25, 0.6
    hu = np.where(p[7] > 0.5, 100.0, -50.0).astype(np.float32)
    hu[STRONG], hu[WEAK] = 300.0, 200.0
    return p.astype(dtype), {Phase.VP: hu, Phase.AP: hu + 10.0}


def hu_model(table):
    def model(batch: np.ndarray) -> np.ndarray:
        out = np.zeros((batch.shape[0],) + batch.shape[2:], np.uint8)
        for hu, label in table.items():
            out[batch[:, 0] == hu] = label  # channel 0 is NC if present, else AP: here AP = VP + 10
        return out

    return model


def test_without_patch_model_high_sensitivity_adds_a_suspicious_lesion_and_the_verdict_is_uncertain():
    probabilities, hu = study()
    result = run_cascade(probabilities, hu, GEOMETRY, None, CONFIG)
    assert [l.lesion_type for l in result.base] == [LesionType.HEM]
    assert [l.lesion_type for l in result.high] == [LesionType.HEM, LesionType.META]
    assert not result.reclassified
    assert result.base_recls == result.base and result.high_recls == result.high
    assert any(d.stage == "reclassify" and d.outcome == "skipped" for d in result.decisions)
    assert (result.class_base_recls, result.class_high_recls) == (PatientClass.HEM, PatientClass.META)
    assert not result.verdict.certain
    hem, meta = result.reported
    assert hem.certain is True and hem.sensitivities == (1.0, 4.0)
    assert meta.certain is False and meta.sensitivities == (4.0,)
    assert hem.volume_ml == pytest.approx(6.0) and meta.volume_ml == pytest.approx(2.25)
    assert hem.mean_hu == {Phase.VP: pytest.approx(300.0), Phase.AP: pytest.approx(310.0)}
    assert result.livermax[LesionType.HEM] == pytest.approx(0.9, abs=1e-3)
    assert result.livermax[LesionType.META] == pytest.approx(0.25, abs=1e-3)
    assert set(np.unique(result.organ_labels)) == {0, 7}


def test_patch_model_removes_the_false_alarm_and_the_verdict_becomes_certain():
    probabilities, hu = study(np.float32)
    model = hu_model({310.0: 4})  # confirms the Hem, sees nothing at the weak site
    result = run_cascade(probabilities, hu, GEOMETRY, model, CONFIG)
    assert result.reclassified
    assert [l.lesion_type for l in result.high_recls] == [LesionType.HEM]
    assert result.verdict.certain and result.verdict.patient_class is PatientClass.HEM
    (hem,) = result.reported
    assert hem.certain and hem.reclassification_score_ml == pytest.approx(6.0)
    assert [o.kept for o in result.reclassify_outcomes["high"]] == [True, False]


def test_reclassification_can_retype():
    probabilities, hu = study()
    model = hu_model({310.0: 1, 210.0: 3})  # the Hem is called HCC by the patch model
    result = run_cascade(probabilities, hu, GEOMETRY, model, CONFIG)
    assert [l.lesion_type for l in result.base_recls] == [LesionType.HCC]
    assert result.class_base is PatientClass.HEM and result.class_base_recls is PatientClass.HCC


def test_empty_liver_is_normal_with_no_lesions():
    p = np.zeros((14,) + GEOMETRY.shape, np.float16)
    p[0] = 1.0
    result = run_cascade(p, {}, GEOMETRY, hu_model({}), CONFIG)
    assert result.base == result.high == result.reported == []
    assert result.class_base is result.class_high_recls is PatientClass.NORMAL
    assert result.verdict.certain
    assert all(v == 0.0 for v in result.livermax.values())
    assert not result.organ_labels.any()


def test_findings_and_evaluation_file(tmp_path):
    probabilities, hu = study()
    result = run_cascade(probabilities, hu, GEOMETRY, None, CONFIG)
    findings = result.to_findings("1.2.3", "1.2.3.4", ModelIdentity("test", "0"), (Phase.AP, Phase.VP))
    assert len(findings.lesions) == 2 and not findings.certain and findings.joint_class is None
    assert findings.sensitivity_factors == (1.0, 4.0) and "seg2det_s" in findings.timings_s

    path = save_evaluation_npz(result, tmp_path / "pred" / "case.npz")
    loaded = load_prediction(path)
    assert loaded.spacing_mm == GEOMETRY.spacing_mm
    assert loaded.livermax.tolist() == pytest.approx([0, 0, 0.25, 0.9, 0, 0], abs=1e-3)  # HCC..Cyst
    # ground truth: both lesions are real, the weak one is a Meta
    gt = np.zeros(GEOMETRY.shape, np.uint8)
    gt[STRONG], gt[WEAK] = 4, 3
    (tmp_path / "gt").mkdir()
    np.savez(tmp_path / "gt" / "case.npz", labels=gt, spacing_mm=np.asarray(GEOMETRY.spacing_mm))
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    assert report.lesion_level["Base"].overall["All"].fn == 1
    assert report.lesion_level["High+ReCls"].overall["All"].tp == 2
    with pytest.raises(ValueError, match=".npz"):
        save_evaluation_npz(result, tmp_path / "case.txt")


def test_input_checks():
    probabilities, hu = study()
    with pytest.raises(ValueError, match="geometry"):
        run_cascade(probabilities[:, :4], hu, GEOMETRY, None, CONFIG)
    with pytest.raises(ValueError, match="HU volume"):
        run_cascade(probabilities, {Phase.VP: hu[Phase.VP][:4]}, GEOMETRY, None, CONFIG)


def test_lesion_typer_types_the_kept_lesions_and_leaves_base_alone():
    probabilities, hu = study()
    model = hu_model({310.0: 4, 210.0: 3})  # both kept by reclassification
    calls = []

    def typer(features: np.ndarray) -> np.ndarray:
        calls.append(features.shape)
        out = np.zeros((len(features), 7), np.float32)
        out[:, LesionType.CYST] = 1.0
        return out

    result = run_cascade(probabilities, hu, GEOMETRY, model, CONFIG, lesion_typer=typer)
    assert [l.lesion_type for l in result.base] == [LesionType.HEM]
    assert [l.lesion_type for l in result.base_recls] == [LesionType.CYST]
    assert [l.lesion_type for l in result.high_recls] == [LesionType.CYST, LesionType.CYST]
    assert result.verdict.certain and result.verdict.patient_class is PatientClass.CYST
    assert calls == [(1, feature_count()), (2, feature_count())]
    assert [d.outcome for d in result.decisions if d.stage == "lesion typing"] == [
        "typed 1, dropped 0 as not a lesion", "typed 2, dropped 0 as not a lesion"]


def test_lesion_typer_drops_at_base_sensitivity_only_and_the_verdict_becomes_uncertain():
    probabilities, hu = study()

    def typer(features: np.ndarray) -> np.ndarray:  # the strong site (VP 300 HU): "not a lesion", 0.9
        vp_mean_hu = features[:, feature_names().index("VP_absolute")] * 100.0
        out = np.zeros((len(features), 7), np.float32)
        strong = vp_mean_hu >= 250.0
        out[strong, 0], out[strong, LesionType.HEM] = 0.9, 0.1
        out[~strong, LesionType.META] = 1.0
        return out

    result = run_cascade(probabilities, hu, GEOMETRY, None, CONFIG, lesion_typer=typer)
    assert [l.lesion_type for l in result.base] == [LesionType.HEM]
    assert result.base_recls == []  # dropped at base sensitivity
    assert [l.lesion_type for l in result.high_recls] == [LesionType.HEM, LesionType.META]  # kept, typed
    assert result.class_base_recls is PatientClass.NORMAL and result.class_high_recls is PatientClass.META
    assert not result.verdict.certain
    assert [d.outcome for d in result.decisions if d.stage == "lesion typing"] == [
        "typed 0, dropped 1 as not a lesion", "typed 2, dropped 0 as not a lesion"]


def _weak_site_typer(malignant: float):
    """Typer: the weak site (VP 200 HU) metastasis with probability `malignant`, the rest Hem."""

    def typer(features: np.ndarray) -> np.ndarray:
        vp_mean_hu = features[:, feature_names().index("VP_absolute")] * 100.0
        out = np.zeros((len(features), 7), np.float32)
        weak = vp_mean_hu < 250.0
        out[weak, LesionType.META], out[weak, LesionType.HEM] = malignant, 1.0 - malignant
        out[~weak, LesionType.HEM] = 1.0
        return out

    return typer


def test_malignant_rescue_keeps_a_small_lesion_reclassification_dropped_when_the_typer_is_sure():
    probabilities, hu = study(np.float32)
    model = hu_model({310.0: 4})  # UNet_patch sees nothing at the weak site: dropped
    plain = run_cascade(probabilities, hu, GEOMETRY, model, replace(CONFIG, rescue_malignant_probability=0.0),
                        lesion_typer=_weak_site_typer(0.9))
    assert [l.lesion_type for l in plain.high_recls] == [LesionType.HEM]

    rescue = CascadeConfig(patch_size_voxels=(4, 16, 16), inference_patches_per_lesion=4,
                           rescue_malignant_probability=0.8, rescue_max_volume_ml=4.0,
                           high_rescue_max_volume_ml=4.0)
    result = run_cascade(probabilities, hu, GEOMETRY, model, rescue, lesion_typer=_weak_site_typer(0.9))
    assert [l.lesion_type for l in result.high_recls] == [LesionType.HEM, LesionType.META]
    assert result.class_high_recls is PatientClass.META and not result.verdict.certain
    assert [d.outcome for d in result.decisions if d.stage == "malignant rescue"] == [
        "kept 0 of 0 dropped by reclassification", "kept 1 of 1 dropped by reclassification"]

    unsure = run_cascade(probabilities, hu, GEOMETRY, model, rescue, lesion_typer=_weak_site_typer(0.6))
    assert [l.lesion_type for l in unsure.high_recls] == [LesionType.HEM]
    too_large = run_cascade(probabilities, hu, GEOMETRY, model, replace(rescue, high_rescue_max_volume_ml=2.0),
                            lesion_typer=_weak_site_typer(0.9))  # the weak site holds 2.25 ml
    assert [l.lesion_type for l in too_large.high_recls] == [LesionType.HEM]


def test_a_larger_rescue_limit_at_high_sensitivity_makes_the_verdict_uncertain_instead_of_benign():
    probabilities, hu = study(np.float32)
    probabilities[3][WEAK], probabilities[7][WEAK] = 0.7, 0.2  # the metastasis is found at f = 1 too
    model = hu_model({310.0: 4})  # UNet_patch drops it in both sets
    rescue = CascadeConfig(patch_size_voxels=(4, 16, 16), inference_patches_per_lesion=4,
                           rescue_malignant_probability=0.8, rescue_max_volume_ml=2.0,
                           high_rescue_max_volume_ml=2.0)
    same_limits = run_cascade(probabilities, hu, GEOMETRY, model, rescue, lesion_typer=_weak_site_typer(0.9))
    assert [l.lesion_type for l in same_limits.base] == [LesionType.HEM, LesionType.META]
    assert same_limits.verdict.certain and same_limits.verdict.patient_class is PatientClass.HEM  # 2.25 ml > 2 ml

    result = run_cascade(probabilities, hu, GEOMETRY, model, replace(rescue, high_rescue_max_volume_ml=8.0),
                         lesion_typer=_weak_site_typer(0.9))
    assert [l.lesion_type for l in result.base_recls] == [LesionType.HEM]
    assert [l.lesion_type for l in result.high_recls] == [LesionType.HEM, LesionType.META]
    assert not result.verdict.certain
    assert [d.rule.rsplit("volume <= ", 1)[1] for d in result.decisions if d.stage == "malignant rescue"] == [
        "2 ml", "8 ml"]


def test_malignant_rescue_settings_are_checked():
    with pytest.raises(ValueError, match="rescue_malignant_probability"):
        CascadeConfig(rescue_malignant_probability=1.5)
    with pytest.raises(ValueError, match="rescue_max_volume_ml"):
        CascadeConfig(rescue_max_volume_ml=0.0)
    with pytest.raises(ValueError, match="high_rescue_max_volume_ml"):
        CascadeConfig(high_rescue_max_volume_ml=-1.0)


def _everything_fnh_like(features: np.ndarray) -> np.ndarray:
    out = np.zeros((len(features), 7), np.float32)
    out[:, LesionType.OTHER] = 1.0
    return out


def test_fnh_like_without_a_delayed_phase_is_read_as_hcc_at_high_sensitivity() -> None:
    probabilities, hu = study(np.float32)
    rule = replace(CONFIG, high_fnh_needs_delayed_phase=True)
    result = run_cascade(probabilities, hu, GEOMETRY, None, rule, lesion_typer=_everything_fnh_like)  # AP + VP
    assert [l.lesion_type for l in result.base_recls] == [LesionType.OTHER]
    assert [l.lesion_type for l in result.high_recls] == [LesionType.HCC, LesionType.HCC]
    assert (result.class_base_recls, result.class_high_recls) == (PatientClass.OTHER, PatientClass.HCC)
    assert not result.verdict.certain
    assert [d.outcome for d in result.decisions if d.stage == "FNH-like without a delayed phase"] == [
        "read 2 FNH-like lesion(s) as HCC"]

    with_delayed = {**hu, Phase.DP: hu[Phase.VP] - 10.0}
    certain = run_cascade(probabilities, with_delayed, GEOMETRY, None, rule, lesion_typer=_everything_fnh_like)
    assert certain.verdict.certain and certain.verdict.patient_class is PatientClass.OTHER
    assert not any(d.stage == "FNH-like without a delayed phase" for d in certain.decisions)
    off = run_cascade(probabilities, hu, GEOMETRY, None, replace(CONFIG, high_fnh_needs_delayed_phase=False),
                      lesion_typer=_everything_fnh_like)
    assert off.verdict.certain and off.verdict.patient_class is PatientClass.OTHER
