"""keep_largest_liver_region: stray liver islands go, the liver, lesions and other organs stay."""

from __future__ import annotations

import numpy as np

from pipeline.liver_region import keep_largest_liver_region
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
