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
