"""The liver outline steps: stray liver islands go (the liver, lesions and other organs stay), and
the liver is redrawn from the liver-or-lesion probability."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.liver_region import keep_largest_liver_region, threshold_liver
from pipeline.types import Label

LIVER, SPLEEN, BACKGROUND = int(Label.LIVER), int(Label.SPLEEN), int(Label.BACKGROUND)
HCC, CYST = int(Label.HCC), int(Label.CYST)


def test_liver_islands_become_background_and_everything_else_stays() -> None:
    labels = np.zeros((6, 12, 12), np.uint8)
    labels[1:5, 1:7, 1:7] = LIVER
    labels[2:4, 2:4, 2:4] = HCC  # a lesion inside the liver
    labels[2:4, 5:8, 5:8] = CYST  # a lesion on the liver's edge joins the liver region
    labels[1:5, 8:11, 8:11] = SPLEEN
    labels[2:3, 9:10, 9:10] = LIVER  # an island of "liver" inside the spleen
    labels[0, 10, 1] = LIVER  # a lone voxel
    labels[4, 10, 4] = HCC  # a lesion away from the liver: left for seg2det and reclassification
    cleaned = keep_largest_liver_region(labels)
    assert cleaned[2, 9, 9] == BACKGROUND and cleaned[0, 10, 1] == BACKGROUND
    changed = cleaned != labels
    assert changed.sum() == 2
    assert cleaned[4, 10, 4] == HCC and (cleaned[2:4, 5:8, 5:8] == CYST).all()
    assert labels[2, 9, 9] == LIVER  # the input is not modified


def test_one_region_or_no_liver_is_returned_as_is() -> None:
    labels = np.zeros((4, 6, 6), np.uint8)
    assert keep_largest_liver_region(labels) is labels
    labels[1:3, 1:4, 1:4] = LIVER
    labels[3, 5, 5] = SPLEEN
    assert keep_largest_liver_region(labels) is labels


def test_threshold_liver_redraws_the_liver_from_the_liver_or_lesion_probability() -> None:
    probabilities = np.zeros((14, 1, 1, 4), np.float16)
    probabilities[0, 0, 0] = [0.45, 0.30, 0.20, 0.70]  # background
    probabilities[7, 0, 0] = [0.55, 0.40, 0.30, 0.10]  # liver
    probabilities[3, 0, 0] = [0.00, 0.30, 0.50, 0.20]  # metastasis
    probabilities[11, 0, 0] = [0.00, 0.00, 0.00, 0.00]
    labels = np.array([[[7, 0, 3, 0]]], np.uint8)  # the argmax
    # voxel 0: liver wins the argmax but liver-or-lesion is only 0.55 -> background
    # voxel 1: labelled background, but liver-or-lesion is 0.70 -> liver
    # voxel 2: a lesion voxel stays a lesion; voxel 3: stays background (0.30)
    out = threshold_liver(labels, probabilities, 0.6)
    assert out.tolist() == [[[0, 7, 3, 0]]]
    assert labels.tolist() == [[[7, 0, 3, 0]]]  # the input is not changed
    assert threshold_liver(labels, probabilities, 0.5).tolist() == [[[7, 7, 3, 0]]]


def test_threshold_liver_refuses_bad_input() -> None:
    probabilities = np.full((14, 2, 2, 2), 1 / 14, np.float32)
    with pytest.raises(ValueError, match="label map"):
        threshold_liver(np.zeros((2, 2, 3), np.uint8), probabilities, 0.6)
    with pytest.raises(ValueError, match="between 0 and 1"):
        threshold_liver(np.zeros((2, 2, 2), np.uint8), probabilities, 1.0)
