"""match: TP / FL / FN / FP against ground truth, and same / diff between sensitivities."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.matching import LesionPair, Outcome, malignancy_key, match, match_sensitivities, overlap_voxels
from pipeline.seg2det import seg2det
from pipeline.types import VolumeGeometry

SHAPE = (2, 12, 12)


def lesions(label_map: np.ndarray):
    return seg2det(label_map, VolumeGeometry(label_map.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))


def outcomes(result):
    return [(o.lesion.lesion_id, o.outcome, o.matched_ids) for o in result.ground_truth]


def test_tp_fl_fn_fp():
    gt = np.zeros(SHAPE, np.uint8)
    pred = np.zeros(SHAPE, np.uint8)
    gt[0, 0:2, 0:2] = 1  # id 1: HCC, predicted as HCC -> TP
    pred[0, 1:3, 1:3] = 1
    gt[0, 0:2, 6:8] = 2  # id 2: ICC, predicted only as Meta -> FL
    pred[0, 0:2, 7:9] = 3
    gt[0, 6:8, 0:2] = 6  # id 3: cyst, nothing predicted -> FN
    pred[1, 10:12, 10:12] = 4  # predicted Hem over no ground truth -> FP
    result = match(lesions(gt), lesions(pred))
    # predicted ids follow raster order of first voxels: the Meta (row 0) is 1, the HCC 2, the Hem 3
    assert outcomes(result) == [(1, Outcome.TP, (2,)), (2, Outcome.FL, (1,)), (3, Outcome.FN, ())]
    assert [(o.lesion.lesion_id, o.outcome) for o in result.predicted] == [
        (1, Outcome.FL), (2, Outcome.TP), (3, Outcome.FP)
    ]  # fmt: skip
    assert result.counts() == {Outcome.TP: 1, Outcome.FL: 1, Outcome.FN: 1, Outcome.FP: 1}
    assert sorted(result.pairs, key=lambda p: p.first_id) == [LesionPair(1, 2, 1), LesionPair(2, 1, 2)]


def test_same_type_among_several_overlaps_is_tp():
    gt = np.zeros(SHAPE, np.uint8)
    gt[0, 2, 1:9] = 1  # one long HCC
    pred = np.zeros(SHAPE, np.uint8)
    pred[0, 2, 1:3] = 3  # Meta piece
    pred[0, 2, 6:8] = 1  # HCC piece, separate
    (gt_outcome,) = match(lesions(gt), lesions(pred)).ground_truth
    assert gt_outcome.outcome is Outcome.TP
    assert gt_outcome.matched_ids == (1, 2)


def test_one_prediction_over_two_ground_truth_lesions():
    gt = np.zeros(SHAPE, np.uint8)
    gt[0, 2, 1:3] = 1
    gt[0, 2, 5:7] = 3
    pred = np.zeros(SHAPE, np.uint8)
    pred[0, 2, 1:7] = 1
    result = match(lesions(gt), lesions(pred))
    assert [o.outcome for o in result.ground_truth] == [Outcome.TP, Outcome.FL]
    assert [o.outcome for o in result.predicted] == [Outcome.TP]


def test_malignancy_key_merges_malignant_types_only():
    gt = np.zeros(SHAPE, np.uint8)
    pred = np.zeros(SHAPE, np.uint8)
    gt[0, 0:2, 0:2] = 1
    pred[0, 0:2, 0:2] = 3  # HCC found as Meta: FL by type, TP for the malignant group
    gt[0, 6:8, 6:8] = 4
    pred[0, 6:8, 6:8] = 6  # Hem found as Cyst: FL either way
    assert [o.outcome for o in match(lesions(gt), lesions(pred)).ground_truth] == [Outcome.FL, Outcome.FL]
    grouped = match(lesions(gt), lesions(pred), type_key=malignancy_key)
    assert [o.outcome for o in grouped.ground_truth] == [Outcome.TP, Outcome.FL]


def test_overlap_voxels_and_disjoint_boxes():
    a = np.zeros(SHAPE, np.uint8)
    a[0, 0:3, 0:3] = 1
    b = np.zeros(SHAPE, np.uint8)
    b[0, 2:5, 2:5] = 1
    b[1, 9, 9] = 2
    (la,) = lesions(a)
    lb1, lb2 = lesions(b)
    assert overlap_voxels(la, lb1) == 1
    assert overlap_voxels(la, lb2) == 0


def test_boxes_intersect_but_masks_do_not():
    a = np.zeros(SHAPE, np.uint8)
    a[0, 0, 0:4] = 1
    a[0, 0:4, 0] = 1  # an "L"
    b = np.zeros(SHAPE, np.uint8)
    b[0, 2:4, 2:4] = 1  # inside the L's box, touching nothing
    assert match(lesions(a), lesions(b)).counts()[Outcome.FN] == 1


def test_same_and_diff_between_sensitivities():
    base = np.zeros(SHAPE, np.uint8)
    base[0, 1:3, 1:3] = 1
    high = np.zeros(SHAPE, np.uint8)
    high[0, 1:4, 1:4] = 3  # grown version of the base lesion, other type: still "same"
    high[1, 8:10, 8:10] = 1  # only at high sensitivity: "diff"
    split = match_sensitivities(lesions(base), lesions(high))
    assert split.same_ids == (1,)
    assert split.diff_ids == (2,)


def test_duplicate_ids_raise():
    gt = np.zeros(SHAPE, np.uint8)
    gt[0, 0, 0] = 1
    (lesion,) = lesions(gt)
    with pytest.raises(ValueError, match="unique"):
        match([lesion, lesion], [])


maps = arrays(np.uint8, (2, 6, 6), elements=st.sampled_from([0, 0, 0, 1, 2, 3, 6, 7]))


@settings(max_examples=60, deadline=None)
@given(maps, maps)
def test_tp_fl_fn_add_up_to_the_ground_truth_count(gt, pred):
    gt_lesions, pred_lesions = lesions(gt), lesions(pred)
    counts = match(gt_lesions, pred_lesions).counts()
    assert counts[Outcome.TP] + counts[Outcome.FL] + counts[Outcome.FN] == len(gt_lesions)
    assert counts[Outcome.FP] <= len(pred_lesions)
    # a prediction is FP exactly when it shares no voxel with any ground-truth lesion
    gt_any = (gt >= 1) & (gt <= 6)
    for item in match(gt_lesions, pred_lesions).predicted:
        assert (item.outcome is Outcome.FP) == (not gt_any[item.lesion.bbox.slices][item.lesion.mask].any())
