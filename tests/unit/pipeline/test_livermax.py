"""LiverMax: per-type maximum unscaled probability inside the liver."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.livermax import liver_region, livermax, livermax_vector
from pipeline.sensitivity import scaled_argmax
from pipeline.types import LesionType


def test_maximum_over_liver_and_lesion_voxels_only():
    p = np.zeros((14, 1, 1, 4), np.float32)
    base = np.array([[[7, 3, 0, 11]]], np.uint8)  # liver, Meta lesion, background, spleen
    p[1] = [[[0.30, 0.10, 0.95, 0.99]]]  # HCC: high values outside the liver do not count
    p[3] = [[[0.20, 0.60, 0.00, 0.00]]]
    p[6] = [[[0.05, 0.00, 0.00, 0.00]]]
    scores = livermax(p, base)
    assert scores[LesionType.HCC] == pytest.approx(0.30)
    assert scores[LesionType.META] == pytest.approx(0.60)
    assert scores[LesionType.CYST] == pytest.approx(0.05)
    assert scores[LesionType.ICC] == 0.0
    assert livermax_vector(scores).tolist() == pytest.approx([0.30, 0.0, 0.60, 0.0, 0.0, 0.05])


def test_empty_liver_scores_zero():
    p = np.full((14, 2, 2, 2), 0.5, np.float32)
    scores = livermax(p, np.zeros((2, 2, 2), np.uint8))
    assert set(scores) == set(LesionType)
    assert all(v == 0.0 for v in scores.values())


def test_livermax_is_unscaled_even_when_the_high_map_is_made():
    p = np.zeros((14, 1, 1, 2), np.float16)
    p[7] = 0.7
    p[2] = [[[0.2, 0.1]]]  # at f = 4 the first voxel becomes ICC
    result = scaled_argmax(p, (1.0, 4.0))
    assert result.label_maps[4.0][0, 0, 0] == 2
    assert result.livermax[LesionType.ICC] == pytest.approx(0.2, abs=1e-3)


def test_liver_region_and_shape_check():
    assert liver_region(np.arange(14, dtype=np.uint8)).tolist() == [False] + [True] * 7 + [False] * 6
    with pytest.raises(ValueError, match="base_labels"):
        livermax(np.zeros((14, 2, 2, 2), np.float32), np.zeros((2, 2, 3), np.uint8))
