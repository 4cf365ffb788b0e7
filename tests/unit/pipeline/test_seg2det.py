"""seg2det: 2D components per slice joined across slices by shared (y, x) pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.seg2det import label_lesions, label_lesions_by_slices, paint_lesions, seg2det, structure
from pipeline.types import BoundingBox, LesionType, Phase, VolumeGeometry


def geometry(shape, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> VolumeGeometry:
    return VolumeGeometry(shape=shape, spacing_mm=spacing, origin_mm=origin)


def lesions_of(label_map, **kwargs):
    return seg2det(label_map, geometry(label_map.shape), **kwargs)


def test_diagonal_contact_across_slices_does_not_join():
    lm = np.zeros((2, 5, 5), np.uint8)
    lm[0, 1, 1] = 1
    lm[1, 2, 2] = 1  # touches the first only at a corner on the next slice
    assert len(lesions_of(lm)) == 2
    assert len(lesions_of(lm, connectivity_2d=4)) == 2


def test_shared_pixel_across_slices_joins():
    lm = np.zeros((2, 5, 5), np.uint8)
    lm[0, 1, 1:3] = 1
    lm[1, 1, 2:4] = 1  # shares pixel (1, 2)
    (lesion,) = lesions_of(lm)
    assert lesion.voxel_count == 4


def test_one_slice_gap_gives_two_lesions():
    lm = np.zeros((3, 5, 5), np.uint8)
    lm[0, 1:3, 1:3] = 1
    lm[2, 1:3, 1:3] = 1  # slice 1 empty
    assert [l.voxel_count for l in lesions_of(lm)] == [4, 4]


def test_in_plane_connectivity_is_8_by_default_and_4_on_request():
    lm = np.zeros((1, 4, 4), np.uint8)
    lm[0, 0, 0] = 1
    lm[0, 1, 1] = 1  # diagonal within one slice
    assert len(lesions_of(lm)) == 1
    assert len(lesions_of(lm, connectivity_2d=4)) == 2
    with pytest.raises(ValueError, match="connectivity_2d"):
        structure(6)


def test_two_components_on_a_slice_joined_through_another_slice_are_one_lesion():
    lm = np.zeros((2, 5, 7), np.uint8)
    lm[0, 2, 1] = lm[0, 2, 5] = 1  # two 2D components on slice 0 (a "U" seen from above)
    lm[1, 2, 1:6] = 1  # bridge on slice 1 sharing both pixels
    (lesion,) = lesions_of(lm)
    assert lesion.voxel_count == 7


def test_lesion_types_of_all_labels_join_and_organs_are_ignored():
    lm = np.full((1, 4, 6), 7, np.uint8)  # liver everywhere
    lm[0, 1, 1:3] = 1
    lm[0, 1, 3] = 3  # adjacent Meta voxel joins the HCC: one lesion, voted HCC
    lm[0, 3, 5] = 13
    (lesion,) = lesions_of(lm)
    assert lesion.lesion_type is LesionType.HCC
    assert lesion.type_fractions == {LesionType.HCC: pytest.approx(2 / 3), LesionType.META: pytest.approx(1 / 3)}


def test_volume_vote_tie_goes_to_the_lower_label():
    lm = np.zeros((1, 3, 6), np.uint8)
    lm[0, 1, 1:3] = 6  # cyst
    lm[0, 1, 3:5] = 4  # hemangioma, same count
    (lesion,) = lesions_of(lm)
    assert lesion.lesion_type is LesionType.HEM


def test_empty_and_organ_only_maps_have_no_lesions():
    assert lesions_of(np.zeros((3, 4, 4), np.uint8)) == []
    assert lesions_of(np.full((3, 4, 4), 7, np.uint8)) == []


def test_measurements():
    lm = np.zeros((4, 10, 12), np.uint8)
    lm[1:3, 2:5, 3:9] = 2  # 2 slices x 3 rows x 6 columns
    hu_vp = np.zeros(lm.shape, np.float32)
    hu_vp[1] = 10.0
    hu_vp[2] = 30.0
    geo = geometry(lm.shape, spacing=(2.0, 0.5, 0.75), origin=(100.0, -50.0, 7.0))
    (lesion,) = seg2det(lm, geo, {Phase.VP: hu_vp}, sensitivities=(4.0,))
    assert lesion.lesion_id == 1
    assert lesion.lesion_type is LesionType.ICC
    assert lesion.voxel_count == 36
    assert lesion.volume_ml == pytest.approx(36 * 2.0 * 0.5 * 0.75 / 1000)
    # pixel squares: 3 rows x 0.5 mm = 1.5 mm by 6 columns x 0.75 mm = 4.5 mm -> the diagonal
    assert lesion.longest_axial_diameter_mm == pytest.approx(math.hypot(1.5, 4.5))
    # mean index (z, y, x) = (1.5, 3, 5.5); patient (x, y, z) = origin + index * spacing
    assert lesion.centroid_mm == pytest.approx((100.0 + 5.5 * 0.75, -50.0 + 3 * 0.5, 7.0 + 1.5 * 2.0))
    assert lesion.mean_hu == {Phase.VP: pytest.approx(20.0)}
    assert lesion.bbox == BoundingBox(1, 3, 2, 5, 3, 9)
    assert lesion.mask.shape == (2, 3, 6) and lesion.mask.all()
    assert lesion.sensitivities == (4.0,)
    assert lesion.type_fractions == {LesionType.ICC: 1.0}


def test_single_pixel_diameter_is_its_diagonal_and_max_is_over_slices():
    lm = np.zeros((3, 20, 20), np.uint8)
    lm[0, 5, 5] = 1
    lm[1, 5, 5:15] = 1  # 10 pixels in a row on the middle slice
    lm[2, 5, 5] = 1
    (lesion,) = seg2det(lm, geometry(lm.shape, spacing=(5.0, 0.8, 0.8)))
    assert lesion.longest_axial_diameter_mm == pytest.approx(math.hypot(10 * 0.8, 0.8))
    single = np.zeros((1, 3, 3), np.uint8)
    single[0, 1, 1] = 6
    (dot,) = seg2det(single, geometry(single.shape, spacing=(1.0, 0.6, 0.8)))
    assert dot.longest_axial_diameter_mm == pytest.approx(1.0)


def test_diameter_of_a_large_disc_uses_the_hull_and_matches_its_width():
    yy, xx = np.mgrid[:101, :101]
    disc = ((yy - 50) ** 2 + (xx - 50) ** 2 <= 40**2).astype(np.uint8)
    (lesion,) = seg2det(disc[None], geometry((1, 101, 101)))
    # 81 pixels across; corners of the extreme pixels add a little
    assert 81.0 <= lesion.longest_axial_diameter_mm <= 82.0


def test_min_volume_filter_keeps_ids():
    lm = np.zeros((1, 5, 8), np.uint8)
    lm[0, 0, 0] = 1
    lm[0, 3, 3:7] = 1
    (lesion,) = lesions_of(lm, min_volume_ml=0.002)
    assert lesion.lesion_id == 2 and lesion.voxel_count == 4


def test_invalid_inputs_raise_value_error():
    with pytest.raises(ValueError, match="geometry shape"):
        seg2det(np.zeros((2, 3, 3), np.uint8), geometry((2, 3, 4)))
    with pytest.raises(ValueError, match="integer"):
        seg2det(np.zeros((2, 3, 3), np.float32), geometry((2, 3, 3)))
    with pytest.raises(ValueError, match="HU volume"):
        seg2det(np.zeros((2, 3, 3), np.uint8), geometry((2, 3, 3)), {Phase.NC: np.zeros((2, 3, 2))})


def test_paint_lesions_round_trip_keeps_organs():
    lm = np.full((2, 6, 6), 7, np.uint8)
    lm[0, 1:3, 1:3] = 1
    lm[1, 1, 1] = 2
    lm[1, 4:6, 4:6] = 6
    lesions = lesions_of(lm)
    painted = paint_lesions(lesions, lm.shape, base=lm)
    assert painted[1, 1, 1] == 1  # the lesion is painted with its voted type
    assert painted[0, 0, 0] == 7
    assert [(l.voxel_count, l.lesion_type) for l in lesions_of(painted)] == [
        (l.voxel_count, l.lesion_type) for l in lesions
    ]


label_maps = arrays(
    np.uint8,
    st.tuples(st.integers(1, 4), st.integers(1, 7), st.integers(1, 7)),
    elements=st.sampled_from([0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 9]),
)


@settings(max_examples=60, deadline=None)
@given(label_maps, st.sampled_from([4, 8]))
def test_every_lesion_voxel_belongs_to_exactly_one_lesion(lm, connectivity):
    lesions = lesions_of(lm, connectivity_2d=connectivity)
    cover = np.zeros(lm.shape, np.int32)
    for lesion in lesions:
        cover += lesion.full_mask(lm.shape)
    is_lesion = (lm >= 1) & (lm <= 6)
    assert np.array_equal(cover, is_lesion.astype(np.int32))
    assert sum(l.voxel_count for l in lesions) == int(is_lesion.sum())


@settings(max_examples=60, deadline=None)
@given(label_maps, st.sampled_from([4, 8]))
def test_single_label_call_equals_paper_literal_union_find(lm, connectivity):
    fast = label_lesions(lm, connectivity)
    literal = label_lesions_by_slices(lm, connectivity)
    assert fast.count == literal.count
    assert fast.crop == literal.crop
    assert np.array_equal(fast.labels, literal.labels)
