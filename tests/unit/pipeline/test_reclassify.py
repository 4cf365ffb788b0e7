"""Reclassification with fake patch models whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import CascadeConfig
from pipeline.reclassify import reclassify
from pipeline.seg2det import seg2det
from pipeline.shuffle import PatchSource
from pipeline.types import LesionType, VolumeGeometry

# 10 mm voxels: one voxel is exactly 1 ml, so scores are whole numbers of ml.
GEOMETRY = VolumeGeometry((8, 24, 24), (10.0, 10.0, 10.0), (0.0, 0.0, 0.0))
LIVER_HU = 100.0


def scene():
    labels = np.zeros(GEOMETRY.shape, np.uint8)
    labels[:, 2:22, 2:22] = 7
    labels[3, 5, 5:7] = 1  # lesion 1: HCC, 2 ml
    labels[1:6, 8:21, 18] = 3  # lesion 2: Meta, 65 ml (> 64 ml: skips reclassification)
    labels[3, 15, 10] = 6  # lesion 3: cyst, 1 ml
    image = np.where(labels > 0, LIVER_HU, -50.0).astype(np.float32)
    image[3, 5, 5], image[3, 5, 6] = 300.0, 310.0
    image[1:6, 8:21, 18] = 320.0
    image[3, 15, 10] = 330.0
    lesions = seg2det(labels, GEOMETRY)
    assert [(l.lesion_id, l.lesion_type, l.volume_ml) for l in lesions] == [
        (1, LesionType.META, 65.0), (2, LesionType.HCC, 2.0), (3, LesionType.CYST, 1.0)
    ]  # fmt: skip
    return PatchSource(image[None], labels), lesions


def config(**kwargs) -> CascadeConfig:
    base = dict(patch_size_voxels=(4, 8, 8), inference_patches_per_lesion=4, reclassify_threshold_ml=2.0)
    base.update(kwargs)
    return CascadeConfig(**base)


class HuModel:
    """Labels voxels by their HU: a lookup {hu: label}; every other voxel 0. Counts calls."""

    def __init__(self, table: dict[float, int]):
        self.table = table
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32 and batch.ndim == 5
        self.calls.append(batch.shape)
        out = np.zeros((batch.shape[0],) + batch.shape[2:], np.uint8)
        for hu, label in self.table.items():
            out[batch[:, 0] == hu] = label
        return out


ORACLE = {300.0: 1, 310.0: 1, 320.0: 3, 330.0: 6}


def by_id(items):
    return {item.lesion_id: item for item in items}


def test_score_is_mean_overlap_ml_and_threshold_is_inclusive():
    source, lesions = scene()
    result = reclassify(lesions, source, HuModel(ORACLE), config(), GEOMETRY.voxel_volume_ml)
    outcomes = by_id(result.outcomes)
    assert outcomes[2].score_ml == pytest.approx(2.0) and outcomes[2].kept  # exactly at 2.0 ml: kept
    assert outcomes[3].score_ml == pytest.approx(1.0) and not outcomes[3].kept
    assert [l.lesion_id for l in result.kept] == [1, 2]
    assert [l.lesion_id for l in result.dropped] == [3]
    assert by_id(result.kept)[2].reclassification_score_ml == pytest.approx(2.0)


def test_just_under_the_threshold_is_dropped():
    source, lesions = scene()
    result = reclassify(lesions, source, HuModel(ORACLE), config(reclassify_threshold_ml=2.000001), 1.0)
    assert by_id(result.outcomes)[2].kept is False


def test_lesion_over_64_ml_skips_reclassification():
    source, lesions = scene()
    silent = HuModel({})  # finds nothing: every scored lesion is dropped
    result = reclassify(lesions, source, silent, config(), GEOMETRY.voxel_volume_ml)
    large = by_id(result.outcomes)[1]
    assert large.skipped and large.kept and large.score_ml is None
    assert [l.lesion_id for l in result.kept] == [1]
    assert by_id(result.kept)[1].reclassification_score_ml is None
    assert by_id(result.kept)[1].lesion_type is LesionType.META


def test_kept_lesions_take_the_patch_models_volume_vote():
    source, lesions = scene()
    icc = HuModel({300.0: 2, 310.0: 2, 330.0: 6})
    result = reclassify(lesions, source, icc, config(), 1.0)
    assert by_id(result.kept)[2].lesion_type is LesionType.ICC
    assert by_id(result.outcomes)[2].votes == {LesionType.ICC: 8}  # 2 voxels x 4 patches


def test_vote_tie_goes_to_the_lower_label():
    source, lesions = scene()
    split = HuModel({300.0: 6, 310.0: 4})
    result = reclassify(lesions, source, split, config(), 1.0)
    assert by_id(result.kept)[2].lesion_type is LesionType.HEM


def test_relative_threshold():
    source, lesions = scene()
    half = HuModel({300.0: 1})  # finds one of the two voxels: 1 ml of a 2 ml lesion
    at_half = config(reclassify_threshold_ml=0.5, reclassify_relative_threshold=0.5)
    assert by_id(reclassify(lesions, source, half, at_half, 1.0).outcomes)[2].kept  # 1 ml >= 0.5 x 2 ml
    above = config(reclassify_threshold_ml=0.5, reclassify_relative_threshold=0.6)
    assert not by_id(reclassify(lesions, source, half, above, 1.0).outcomes)[2].kept  # 1 ml < 1.2 ml


def test_batching_does_not_change_results():
    source, lesions = scene()
    small_batches, one_batch = HuModel(ORACLE), HuModel(ORACLE)
    a = reclassify(lesions, source, small_batches, config(), 1.0, batch_size=3)
    b = reclassify(lesions, source, one_batch, config(), 1.0, batch_size=64)
    assert [c[0] for c in small_batches.calls] == [3, 3, 2]  # 2 scored lesions x 4 patches
    assert [c[0] for c in one_batch.calls] == [8]
    assert small_batches.calls[0][1:] == (1, 4, 8, 8)
    summary = [[(o.lesion_id, o.score_ml, o.kept) for o in r.outcomes] for r in (a, b)]
    assert summary[0] == summary[1]


def test_patch_model_contract_is_checked():
    source, lesions = scene()
    with pytest.raises(ValueError, match="shape"):
        reclassify(lesions, source, lambda batch: np.zeros((1, 2, 2, 2), np.uint8), config(), 1.0)
    with pytest.raises(ValueError, match="integer"):
        reclassify(lesions, source, lambda batch: np.zeros((batch.shape[0],) + batch.shape[2:]), config(), 1.0)
    with pytest.raises(ValueError, match="batch_size"):
        reclassify(lesions, source, HuModel(ORACLE), config(), 1.0, batch_size=0)


def test_no_lesions_no_model_calls():
    source, _ = scene()
    model = HuModel(ORACLE)
    result = reclassify([], source, model, config(), 1.0)
    assert result.kept == [] and result.outcomes == [] and model.calls == []
