"""The training loss: per-class Dice+CE plus the "any lesion" union Dice term."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss

from pipeline.training_loss import SegmentationLoss
from pipeline.types import LESION_LABELS, NUM_CLASSES


def _labels() -> torch.Tensor:
    label = torch.zeros(1, 1, 4, 8, 8, dtype=torch.long)
    label[..., 1:3, 2:6, 2:6] = 1  # an HCC
    label[..., :, :, 7] = 7  # some liver
    return label


def _confident_logits(label: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    return 40.0 * torch.nn.functional.one_hot(label[:, 0], num_classes).permute(0, 4, 1, 2, 3).float()


def test_without_union_term_it_is_monai_dice_ce_with_lesion_weights() -> None:
    label = _labels()
    logits = torch.randn(1, NUM_CLASSES, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    weight = torch.ones(NUM_CLASSES)
    weight[list(LESION_LABELS)] = 3.0
    reference = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True, weight=weight)
    ours = SegmentationLoss(NUM_CLASSES, LESION_LABELS, lesion_class_weight=3.0, union_weight=0.0)
    assert torch.allclose(ours(logits, label), reference(logits, label))


def test_union_term_rewards_a_found_lesion_of_the_wrong_type() -> None:
    label = _labels()
    wrong_type = label.clone()
    wrong_type[label == 1] = 3  # found, typed Meta
    missed = label.clone()
    missed[label == 1] = 7  # called liver
    loss = SegmentationLoss(NUM_CLASSES, LESION_LABELS, union_weight=1.0)
    plain = SegmentationLoss(NUM_CLASSES, LESION_LABELS, union_weight=0.0)
    union_found = float(loss(_confident_logits(wrong_type), label) - plain(_confident_logits(wrong_type), label))
    union_missed = float(loss(_confident_logits(missed), label) - plain(_confident_logits(missed), label))
    assert union_found == pytest.approx(0.0, abs=1e-4)
    assert union_missed == pytest.approx(1.0, abs=1e-4)


def test_union_term_has_a_gradient_towards_any_lesion_class() -> None:
    label = _labels()
    logits = torch.zeros(1, NUM_CLASSES, 4, 8, 8, requires_grad=True)
    SegmentationLoss(NUM_CLASSES, LESION_LABELS, union_weight=1.0)(logits, label).backward()
    inside = label[0, 0] == 1
    # raising any lesion class inside the lesion lowers the loss
    for lesion_label in LESION_LABELS:
        assert float(logits.grad[0, lesion_label][inside].mean()) < 0


def test_works_for_the_patch_network_classes_and_rejects_a_negative_weight() -> None:
    label = _labels()
    label[label == 7] = 0
    loss = SegmentationLoss(len(LESION_LABELS) + 1, LESION_LABELS, lesion_class_weight=3.0, union_weight=1.0)
    value = loss(_confident_logits(label, len(LESION_LABELS) + 1), label)
    assert float(value) < 0.05
    with pytest.raises(ValueError, match="union_weight"):
        SegmentationLoss(NUM_CLASSES, LESION_LABELS, union_weight=-1.0)


def test_organ_weights_are_monai_class_weights_of_the_organs_besides_the_liver() -> None:
    label = _labels()
    logits = torch.randn(1, NUM_CLASSES, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    weight = torch.ones(NUM_CLASSES)
    weight[list(LESION_LABELS)] = 2.0
    weight[8:14] = 5.0
    reference = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True, weight=weight)
    ours = SegmentationLoss(NUM_CLASSES, LESION_LABELS, lesion_class_weight=2.0, organ_labels=range(8, 14),
                            organ_class_weight=5.0)
    assert torch.allclose(ours(logits, label), reference(logits, label))
    with pytest.raises(ValueError, match="class weights must be > 0"):
        SegmentationLoss(NUM_CLASSES, LESION_LABELS, organ_labels=range(8, 14), organ_class_weight=0.0)


def _two_lesions() -> torch.Tensor:
    label = torch.zeros(1, 1, 6, 16, 16, dtype=torch.long)
    label[..., :, :, 12:] = 7  # liver
    label[..., 1:5, 1:9, 1:9] = 3  # a large metastasis, 256 voxels
    label[..., 2:4, 12:14, 12:14] = 2  # a small ICC, 8 voxels, apart from it
    return label


def test_blob_term_makes_a_missed_small_lesion_cost_as_much_as_a_missed_large_one() -> None:
    label = _two_lesions()
    small_missed, large_missed = label.clone(), label.clone()
    small_missed[label == 2] = 7
    large_missed[label == 3] = 7
    blob = SegmentationLoss(NUM_CLASSES, LESION_LABELS, blob_weight=1.0)
    plain = SegmentationLoss(NUM_CLASSES, LESION_LABELS)
    union = SegmentationLoss(NUM_CLASSES, LESION_LABELS, union_weight=1.0)

    def term(loss: SegmentationLoss, prediction: torch.Tensor) -> float:
        return float(loss(_confident_logits(prediction), label) - plain(_confident_logits(prediction), label))

    assert term(blob, label) == pytest.approx(0.0, abs=1e-4)
    assert term(blob, small_missed) == pytest.approx(0.5, abs=1e-3)  # one of two instances lost
    assert term(blob, large_missed) == pytest.approx(0.5, abs=1e-3)
    # the union Dice barely notices the small one
    assert term(union, small_missed) < 0.02 < 0.9 < term(union, large_missed)


def test_blob_term_masks_the_other_lesions_and_needs_no_lesion_in_the_batch() -> None:
    label = _two_lesions()
    logits = torch.zeros(1, NUM_CLASSES, 6, 16, 16, requires_grad=True)
    SegmentationLoss(NUM_CLASSES, LESION_LABELS, blob_weight=1.0)(logits, label).backward()
    assert float(logits.grad[0, 2][label[0, 0] == 2].mean()) < 0  # more lesion inside the small one helps
    no_lesion = torch.full((1, 1, 6, 16, 16), 7, dtype=torch.long)
    loss = SegmentationLoss(NUM_CLASSES, LESION_LABELS, blob_weight=1.0)
    assert float(loss(_confident_logits(no_lesion), no_lesion)) == pytest.approx(
        float(SegmentationLoss(NUM_CLASSES, LESION_LABELS)(_confident_logits(no_lesion), no_lesion)), abs=1e-6)
    with pytest.raises(ValueError, match="blob_weight"):
        SegmentationLoss(NUM_CLASSES, LESION_LABELS, blob_weight=-0.5)
