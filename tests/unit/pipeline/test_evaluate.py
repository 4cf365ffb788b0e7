"""Evaluation on a tiny synthetic folder whose metrics are computed by hand below."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.evaluate import evaluate_folders, load_prediction, write_report
from pipeline.evaluation_metrics import average_ranks, diameter_stratum, mann_whitney_auc, volume_stratum

# (z, y, x) spacing 5 x 10 x 5 mm: one voxel is 0.25 ml, so 1 voxel is under the 0.5 ml filter and
# 2 voxels are exactly at it. Every 2x2 block on one slice is 1 ml, 20 mm x 10 mm, 22.4 mm diagonal.
SPACING = (5.0, 10.0, 5.0)
SHAPE = (3, 10, 10)


def empty() -> np.ndarray:
    out = np.zeros(SHAPE, np.uint8)
    out[:, 1:, 1:] = 7  # liver; organ labels are ignored by the evaluation
    return out


def case_1():
    gt = empty()
    gt[0, 0:2, 0:2] = 1  # A: HCC 1 ml
    gt[1, 6:8, 6:8] = 6  # B: cyst 1 ml
    gt[2, 9, 0] = 3  # T: Meta 0.25 ml, under the filter
    base = empty()
    base[0, 0:2, 0:2] = 1  # A found as HCC: TP
    base[2, 4:6, 4:6] = 4  # Hem over nothing: FP
    base_recls = empty()
    base_recls[0, 0:2, 0:2] = 3  # A found as Meta: FL (but a malignant TP)
    base_recls[1, 6:8, 6:8] = 6  # B: TP
    high_recls = empty()
    high_recls[0, 0:2, 0:2] = 1  # A: TP
    high_recls[1, 6:8, 6:8] = 6  # B: TP
    high_recls[2, 9, 0:2] = 1  # 0.5 ml HCC over T only: not an FP, not counted
    livermax = [0.9, 0.1, 0.3, 0.2, 0.1, 0.7]
    return gt, base, base_recls, high_recls, livermax


def case_2():
    gt = empty()  # normal
    base = empty()
    base[1, 3:5, 3:5] = 6  # cyst FP
    livermax = [0.2, 0.1, 0.1, 0.1, 0.1, 0.7]
    return gt, base, empty(), empty(), livermax


def case_3():
    gt = empty()
    gt[0:2, 2:4, 2:4] = 3  # Meta 2 ml
    gt[2, 8, 8] = 1  # HCC 0.25 ml, under the filter (the patient class stays Meta)
    high_recls = empty()
    high_recls[0:2, 2:4, 2:4] = 3  # TP only at high sensitivity
    livermax = [0.5, 0.1, 0.8, 0.1, 0.1, 0.2]
    return gt, empty(), empty(), high_recls, livermax


@pytest.fixture()
def folders(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    for name, make in (("c1", case_1), ("c2", case_2), ("c3", case_3)):
        gt, base, base_recls, high_recls, livermax = make()
        np.savez_compressed(
            pred_dir / f"{name}.npz", base=base, base_recls=base_recls, high_recls=high_recls,
            livermax=np.asarray(livermax, np.float32), spacing_mm=np.asarray(SPACING),
        )  # fmt: skip
        if name == "c3":  # the phantom generator's layout, read with SimpleITK
            (gt_dir / name / "truth").mkdir(parents=True)
            image = sitk.GetImageFromArray(gt)
            image.SetSpacing(SPACING[::-1])
            sitk.WriteImage(image, str(gt_dir / name / "truth" / "labels.nii.gz"))
        else:
            np.savez_compressed(gt_dir / f"{name}.npz", labels=gt, spacing_mm=np.asarray(SPACING))
    return pred_dir, gt_dir


def counts(tally, group):
    c = tally.overall[group]
    return (c.tp, c.fl, c.fp, c.fn)


def test_lesion_level_counts(folders):
    report = evaluate_folders(*folders)
    base, base_recls, high = (report.lesion_level[m] for m in ("Base", "Base+ReCls", "High+ReCls"))
    # (TP, FL, FP, FN)
    assert counts(base, "HCC") == (1, 0, 0, 0)
    assert counts(base, "Meta") == (0, 0, 0, 1)
    assert counts(base, "Hem") == (0, 0, 1, 0)
    assert counts(base, "Cyst") == (0, 0, 1, 1)
    assert counts(base, "All") == (1, 0, 2, 2)
    assert counts(base, "Malign") == (1, 0, 0, 1)
    assert base.overall["All"].precision == pytest.approx(1 / 3)
    assert base.overall["All"].recall == pytest.approx(1 / 3)
    assert base.overall["Malign"].precision == 1.0 and base.overall["Malign"].recall == 0.5

    assert counts(base_recls, "HCC") == (0, 1, 0, 0)
    assert base_recls.overall["HCC"].recall is None  # TP + FN = 0
    assert base_recls.overall["HCC"].rough_recall == 1.0
    assert counts(base_recls, "Cyst") == (1, 0, 0, 0)
    assert counts(base_recls, "All") == (1, 1, 0, 1)
    assert base_recls.overall["All"].rough_recall == pytest.approx(2 / 3)
    assert counts(base_recls, "Malign") == (1, 0, 0, 1)  # HCC found as Meta is a malignant TP

    assert counts(high, "All") == (3, 0, 0, 0)  # the 0.5 ml HCC over the tiny Meta is not an FP
    assert counts(high, "Malign") == (2, 0, 0, 0)
    assert counts(report.lesion_level["High+ReCls (consensus cases)"], "All") == (0, 0, 0, 0)


def test_strata(folders):
    base = evaluate_folders(*folders).lesion_level["Base"]
    c = base.by_volume["0.5-2"]["All"]
    assert (c.tp, c.fl, c.fp, c.fn) == (1, 0, 2, 1)  # A, B, the Hem FP and the cyst FP (1 ml each)
    c = base.by_volume["2-4"]["All"]
    assert (c.tp, c.fl, c.fp, c.fn) == (0, 0, 0, 1)  # the 2 ml Meta
    assert base.by_volume["<0.5"]["All"].fn == 0  # filtered out, not in a stratum
    assert base.by_diameter["1-3"]["All"].fn == 2  # every lesion is 22.4 mm across
    assert base.by_diameter["<=1"]["All"].tp == 0


def test_patient_level(folders):
    report = evaluate_folders(*folders)
    p = report.patient_level
    assert (p["Base"].accuracy, p["Base"].sensitivity, p["Base"].specificity) == pytest.approx((1 / 3, 0.5, 1.0))
    assert (p["Base+ReCls"].accuracy, p["Base+ReCls"].sensitivity) == pytest.approx((1 / 3, 0.5))
    assert (p["High+ReCls"].accuracy, p["High+ReCls"].sensitivity, p["High+ReCls"].specificity) == (1.0, 1.0, 1.0)
    joint = p["Base+ReCls & High+ReCls"]
    assert (joint.cases, joint.uncertain, joint.accuracy, joint.specificity) == (1, 2, 1.0, 1.0)
    assert joint.sensitivity is None and joint.uncertain_fraction == pytest.approx(2 / 3)
    assert [(c.case, c.truth.value, c.joint) for c in report.cases] == [
        ("c1", "HCC", "uncertain"), ("c2", "normal", "normal"), ("c3", "Meta", "uncertain")
    ]  # fmt: skip


def test_livermax_auc(folders):
    auc = evaluate_folders(*folders).auc
    assert (auc["HCC"].auc, auc["HCC"].positives, auc["HCC"].negatives) == (1.0, 1, 2)
    assert auc["Meta"].auc == 1.0
    assert auc["Cyst"].auc == pytest.approx(0.75)  # ties with the normal case's 0.7 count one half
    assert auc["ICC"].auc is None and auc["ICC"].positives == 0
    assert auc["Malign"].auc == 1.0 and auc["Malign"].positives == 2


def test_write_report(folders, tmp_path):
    json_path, md_path = write_report(evaluate_folders(*folders), tmp_path / "out")
    data = json.loads(json_path.read_text())
    assert data["num_cases"] == 3
    assert data["auc_livermax"]["ICC"]["auc"] is None
    assert data["lesion_level"]["Base"]["overall"]["All"] == {
        "TP": 1, "FL": 0, "FP": 2, "FN": 2, "precision": pytest.approx(1 / 3), "recall": pytest.approx(1 / 3),
        "rough_recall": pytest.approx(1 / 3),
    }  # fmt: skip
    assert data["patient_level"]["Base+ReCls & High+ReCls"]["uncertain"] == 2
    text = md_path.read_text()
    for heading in ("Table II layout", "Table IV layout", "Table V layout", "LiverMax AUC", "by volume"):
        assert heading in text
    assert "| **Malign** |" in text


def test_bad_inputs(tmp_path, folders):
    pred_dir, gt_dir = folders
    with pytest.raises(ValueError, match="no <case>.npz"):
        evaluate_folders(tmp_path, gt_dir)
    (pred_dir / "c4.npz").write_bytes((pred_dir / "c1.npz").read_bytes())
    with pytest.raises(ValueError, match="no ground truth for case 'c4'"):
        evaluate_folders(pred_dir, gt_dir)
    np.savez(pred_dir / "c4.npz", base=np.zeros(SHAPE, np.uint8))
    with pytest.raises(ValueError, match="missing keys"):
        load_prediction(pred_dir / "c4.npz")


def test_strata_boundaries():
    assert volume_stratum(0.49) == "<0.5"
    assert volume_stratum(0.5) == "0.5-2"
    assert volume_stratum(2.0) == "2-4"
    assert volume_stratum(63.99) == "16-64"
    assert volume_stratum(64.0) == ">64"
    assert diameter_stratum(10.0) == "<=1"
    assert diameter_stratum(10.01) == "1-3"
    assert diameter_stratum(30.0) == "1-3"
    assert diameter_stratum(50.0) == "3-5"
    assert diameter_stratum(50.1) == ">5"


def test_auc_known_values():
    assert mann_whitney_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert mann_whitney_auc([0.1, 0.2], [0.9, 0.8]) == 0.0
    assert mann_whitney_auc([0.5], [0.5]) == 0.5
    assert mann_whitney_auc([0.8, 0.4], [0.6, 0.2]) == 0.75
    assert mann_whitney_auc([0.5, 0.7], [0.5, 0.1]) == 0.875
    assert mann_whitney_auc([], [0.1]) is None
    assert mann_whitney_auc([0.1], []) is None
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


scores = st.lists(st.sampled_from([0.0, 0.1, 0.2, 0.5, 0.9]), min_size=1, max_size=12)


@settings(max_examples=80, deadline=None)
@given(scores, scores)
def test_auc_equals_pairwise_probability(pos, neg):
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg]
    assert mann_whitney_auc(pos, neg) == pytest.approx(sum(pairs) / len(pairs))
