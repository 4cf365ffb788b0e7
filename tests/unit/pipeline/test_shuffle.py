"""Lesion shuffle: the four patch kinds, masking, padding and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.seg2det import seg2det
from pipeline.shuffle import (
    PatchKind,
    PatchSource,
    ShuffleSettings,
    inference_patches,
    original_negative,
    original_positive,
    shuffled_negative,
    shuffled_positive,
    training_patches,
)
from pipeline.types import VolumeGeometry

LIVER_HU, LESION_HU, OUTSIDE_HU = 100.0, 300.0, -100.0
SETTINGS = ShuffleSettings(patch_size_voxels=(4, 16, 16), fill_value=-7.0)


def scene(textured: bool = False):
    """Two channels; liver block with one HCC of 3x4x4 voxels; spleen in a corner."""
    labels = np.zeros((12, 40, 40), np.uint8)
    labels[:, 4:36, 4:36] = 7
    labels[:, 36:, 36:] = 11
    labels[5:8, 10:14, 10:14] = 1
    ch0 = np.full(labels.shape, OUTSIDE_HU, np.float32)
    ch0[labels == 7] = LIVER_HU
    if textured:
        rng = np.random.default_rng(9)
        ch0[labels == 7] = rng.uniform(80.0, 120.0, size=int((labels == 7).sum()))
    ch0[labels == 1] = LESION_HU
    ch1 = ch0 * 2.0 - 50.0
    (lesion,) = seg2det(labels, VolumeGeometry(labels.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))
    return PatchSource(np.stack([ch0, ch1]), labels), lesion


def assert_masked(patch, fill=SETTINGS.fill_value):
    outside = ~((patch.labels >= 1) & (patch.labels <= 7))
    assert np.all(patch.image[:, outside] == fill)
    assert np.all(np.isin(patch.labels, [0, 1, 2, 3, 4, 5, 6, 7]))  # spleen (11) masked to 0


def test_original_positive_contains_the_whole_lesion():
    source, lesion = scene()
    patch = original_positive(source, lesion, SETTINGS, np.random.default_rng(0))
    assert patch.kind is PatchKind.ORIGINAL_POSITIVE and patch.lesion_id == lesion.lesion_id
    assert patch.image.shape == (2, 4, 16, 16) and patch.image.dtype == np.float32
    assert patch.lesion_mask.sum() == lesion.voxel_count == 48
    assert np.all(patch.labels[patch.lesion_mask] == 1)
    assert np.all(patch.image[0][patch.lesion_mask] == LESION_HU)
    assert np.all(patch.image[1][patch.lesion_mask] == LESION_HU * 2 - 50)
    z, y, x = patch.origin
    assert z <= 5 and z + 4 >= 8 and y <= 10 and y + 16 >= 14 and x <= 10 and x + 16 >= 14
    assert_masked(patch)


def test_original_negative_is_lesion_free_liver():
    source, _ = scene()
    patch = original_negative(source, SETTINGS, np.random.default_rng(1))
    assert patch is not None and patch.kind is PatchKind.ORIGINAL_NEGATIVE and patch.lesion_id is None
    assert not np.any((patch.labels >= 1) & (patch.labels <= 6))
    assert not patch.lesion_mask.any()
    assert np.count_nonzero(patch.labels == 7) >= SETTINGS.min_liver_fraction * patch.labels.size
    assert np.all(patch.image[0][patch.labels == 7] == LIVER_HU)
    z, y, x = patch.origin  # the crop really is lesion-free in the volume
    window = source.label_map[max(z, 0) : z + 4, max(y, 0) : y + 16, max(x, 0) : x + 16]
    assert not np.any((window >= 1) & (window <= 6))
    assert_masked(patch)


def test_shuffled_positive_transplants_image_and_mask():
    source, lesion = scene()
    patch = shuffled_positive(source, lesion, SETTINGS, np.random.default_rng(2))
    assert patch is not None and patch.kind is PatchKind.SHUFFLED_POSITIVE
    mask = patch.lesion_mask
    assert mask.sum() == 48
    assert np.all(patch.image[0][mask] == LESION_HU) and np.all(patch.image[1][mask] == LESION_HU * 2 - 50)
    assert np.all(patch.labels[mask] == 1)
    assert not np.any((patch.labels[~mask] >= 1) & (patch.labels[~mask] <= 6))
    # pasted into lesion-free liver, not onto the original lesion site
    z, y, x = patch.origin
    window = source.label_map[max(z, 0) : z + 4, max(y, 0) : y + 16, max(x, 0) : x + 16]
    assert not np.any(window == 1)
    assert_masked(patch)


def test_shuffled_negative_replaces_the_lesion_with_liver_texture():
    source, lesion = scene(textured=True)
    patch = shuffled_negative(source, lesion, SETTINGS, np.random.default_rng(3))
    assert patch.kind is PatchKind.SHUFFLED_NEGATIVE and patch.lesion_id == lesion.lesion_id
    assert not patch.lesion_mask.any()
    assert not np.any((patch.labels >= 1) & (patch.labels <= 6))
    liver = patch.labels == 7
    assert np.all((patch.image[0][liver] >= 80.0) & (patch.image[0][liver] <= 120.0))
    # the former lesion site is now liver (label 7) filled with liver values
    local = tuple(slice(a - o, b - o) for a, b, o in zip((5, 10, 10), (8, 14, 14), patch.origin))
    assert np.all(patch.labels[local] == 7)
    assert_masked(patch)


def test_shuffled_negative_falls_back_to_nearest_liver_when_no_donor_fits():
    labels = np.zeros((4, 8, 8), np.uint8)
    labels[:, 2:6, 2:6] = 7
    labels[1:3, 3:5, 3:5] = 2  # lesion fills most of the liver: no lesion-free donor of its shape
    image = np.where(labels == 7, LIVER_HU, OUTSIDE_HU).astype(np.float32)
    image[labels == 2] = LESION_HU
    (lesion,) = seg2det(labels, VolumeGeometry(labels.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))
    settings = ShuffleSettings(patch_size_voxels=(4, 8, 8), max_tries=5)
    patch = shuffled_negative(PatchSource(image, labels), lesion, settings, np.random.default_rng(0))
    assert np.all(patch.image[0][patch.labels == 7] == LIVER_HU)


def test_patches_pad_at_volume_borders():
    labels = np.zeros((6, 20, 20), np.uint8)
    labels[:3, :6, :6] = 7
    labels[0:2, 0:2, 0:2] = 5  # lesion in the corner of the volume
    image = np.where(labels > 0, LIVER_HU, OUTSIDE_HU).astype(np.float32)
    (lesion,) = seg2det(labels, VolumeGeometry(labels.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))
    settings = ShuffleSettings(patch_size_voxels=(4, 16, 16), fill_value=0.0)
    source = PatchSource(image, labels)  # a 3D image is one channel
    origins = set()
    for seed in range(10):
        patch = original_positive(source, lesion, settings, np.random.default_rng(seed))
        assert patch.image.shape == (1, 4, 16, 16)
        assert patch.lesion_mask.sum() == 8
        assert_masked(patch, fill=0.0)
        origins.add(patch.origin)
    assert any(min(o) < 0 for o in origins)  # some patches hang over the border and are padded


def test_lesion_larger_than_the_patch_gives_a_window_inside_it():
    labels = np.zeros((12, 40, 40), np.uint8)
    labels[:, 2:38, 2:38] = 7
    labels[1:11, 8:32, 8:32] = 1
    image = np.where(labels == 1, LESION_HU, LIVER_HU).astype(np.float32)
    (lesion,) = seg2det(labels, VolumeGeometry(labels.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))
    small = ShuffleSettings(patch_size_voxels=(4, 8, 8))
    patch = original_positive(PatchSource(image, labels), lesion, small, np.random.default_rng(0))
    z, y, x = patch.origin
    assert 1 <= z and z + 4 <= 11 and 8 <= y and y + 8 <= 32 and 8 <= x and x + 8 <= 32
    assert patch.lesion_mask.all()


def test_same_seed_same_patches_other_seed_other_patches():
    source, lesion = scene(textured=True)

    def run(seed):
        return training_patches(source, [lesion], 8, SETTINGS, np.random.default_rng(seed))

    first, second, other = run(5), run(5), run(6)
    assert [p.kind for p in first] == [p.kind for p in second]
    for a, b in zip(first, second):
        assert a.origin == b.origin
        assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
        assert np.array_equal(a.lesion_mask, b.lesion_mask)
    assert [p.origin for p in first] != [p.origin for p in other]


def test_training_patches_cycle_through_the_four_kinds():
    source, lesion = scene()
    patches = training_patches(source, [lesion], 8, SETTINGS, np.random.default_rng(0))
    kinds = [p.kind for p in patches]
    for kind in PatchKind:
        assert kinds.count(kind) == 2


def test_false_positives_make_hard_cases_with_no_lesion_label():
    source, lesion = scene()
    fp_labels = np.zeros_like(source.label_map)
    fp_labels[2:4, 25:28, 25:28] = 3  # a detection where the label map has only liver
    (false_positive,) = seg2det(fp_labels, VolumeGeometry(fp_labels.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))
    patches = training_patches(source, [], 4, SETTINGS, np.random.default_rng(0), false_positives=[false_positive])
    assert len(patches) == 4 and all(p.hard_case for p in patches)
    for patch in patches:
        assert patch.lesion_mask.sum() == 18
        assert np.all(patch.labels[patch.lesion_mask] == 7)


def test_inference_patches_alternate_original_and_shuffled_positives():
    source, lesion = scene()
    patches = inference_patches(source, lesion, 10, SETTINGS, np.random.default_rng(0))
    assert [p.kind for p in patches] == [PatchKind.ORIGINAL_POSITIVE, PatchKind.SHUFFLED_POSITIVE] * 5
    assert all(p.lesion_mask.sum() == 48 for p in patches)


def test_inference_falls_back_to_originals_without_lesion_free_liver():
    labels = np.zeros((4, 10, 10), np.uint8)
    labels[:, 2:8, 2:8] = 7
    labels[1:3, 3:7, 3:7] = 6
    image = np.zeros(labels.shape, np.float32)
    (lesion,) = seg2det(labels, VolumeGeometry(labels.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))
    settings = ShuffleSettings(patch_size_voxels=(4, 8, 8), max_tries=5)
    patches = inference_patches(PatchSource(image, labels), lesion, 4, settings, np.random.default_rng(0))
    assert [p.kind for p in patches] == [PatchKind.ORIGINAL_POSITIVE] * 4


def test_invalid_arguments_raise_value_error():
    source, lesion = scene()
    with pytest.raises(ValueError, match="patch_size_voxels"):
        ShuffleSettings(patch_size_voxels=(4, 0, 8))
    with pytest.raises(ValueError, match="min_liver_fraction"):
        ShuffleSettings(min_liver_fraction=1.5)
    with pytest.raises(ValueError, match="count"):
        inference_patches(source, lesion, 0, SETTINGS, np.random.default_rng(0))
    with pytest.raises(ValueError, match="channel 0"):
        PatchSource(np.zeros((1, 2, 2, 2), np.float32), np.zeros((2, 2, 3), np.uint8))
