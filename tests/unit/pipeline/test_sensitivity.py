"""Multi-sensitivity scaling and argmax."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.livermax import livermax
from pipeline.sensitivity import scaled_argmax, scaled_argmax_reference


def one_voxel(**values: float) -> np.ndarray:
    """(14, 1, 1, 1) float32 probabilities with the given channel values (c0..c13), rest 0."""
    p = np.zeros((14, 1, 1, 1), np.float32)
    for key, value in values.items():
        p[int(key[1:]), 0, 0, 0] = value
    return p


def label(p: np.ndarray, factor: float) -> int:
    return int(scaled_argmax(p, (factor,)).label_maps[factor][0, 0, 0])


def test_scaling_turns_a_weak_lesion_into_a_lesion():
    p = one_voxel(c1=0.2, c7=0.7, c0=0.1)
    assert label(p, 1.0) == 7
    assert label(p, 4.0) == 1  # 0.8 > 0.7


def test_tie_rules_follow_np_argmax_lowest_channel_wins():
    # background vs scaled lesion tie: background (channel 0) wins
    assert label(one_voxel(c0=0.5, c2=0.125), 4.0) == 0
    # organ vs scaled lesion tie: the lesion (lower channel) wins
    assert label(one_voxel(c7=0.5, c2=0.125), 4.0) == 2
    # two lesion channels tie: the lower label (more severe type) wins
    assert label(one_voxel(c3=0.4, c5=0.4, c7=0.1), 1.0) == 3
    # two organ channels tie: the lower one
    assert label(one_voxel(c9=0.4, c8=0.4), 1.0) == 8
    for p in (one_voxel(c0=0.5, c2=0.125), one_voxel(c7=0.5, c2=0.125), one_voxel(c3=0.4, c5=0.4)):
        assert label(p, 4.0) == int(scaled_argmax_reference(p, 4.0)[0, 0, 0])


def test_output_is_uint8_for_each_factor_and_slab_size_does_not_matter():
    rng = np.random.default_rng(1)
    p = rng.random((14, 7, 5, 6)).astype(np.float16)
    by_one = scaled_argmax(p, (1.0, 4.0, 2.0), slab_slices=1)
    by_all = scaled_argmax(p, (1.0, 4.0, 2.0), slab_slices=100)
    assert set(by_one.label_maps) == {1.0, 4.0, 2.0}
    for f in (1.0, 4.0, 2.0):
        assert by_one.label_maps[f].dtype == np.uint8
        assert np.array_equal(by_one.label_maps[f], by_all.label_maps[f])
    assert by_one.livermax == by_all.livermax


def test_memmap_input(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.random((14, 4, 3, 5)).astype(np.float32)
    mm = np.lib.format.open_memmap(tmp_path / "p.npy", mode="w+", dtype=np.float32, shape=data.shape)
    mm[:] = data
    mm.flush()
    ro = np.load(tmp_path / "p.npy", mmap_mode="r")
    result = scaled_argmax(ro, (1.0, 4.0), slab_slices=3)
    assert np.array_equal(result.label_maps[1.0], np.argmax(data, axis=0))
    assert np.array_equal(result.label_maps[4.0], scaled_argmax_reference(data, 4.0))


def test_non_power_of_two_factor_matches_exact_arithmetic_on_clear_cases():
    p = one_voxel(c4=0.3, c8=0.8)
    assert label(p, 3.0) == 4  # 0.9 > 0.8
    assert label(p, 2.5) == 8  # 0.75 < 0.8


def test_fused_livermax_equals_standalone():
    rng = np.random.default_rng(3)
    p = rng.random((14, 6, 4, 4)).astype(np.float32)
    result = scaled_argmax(p, (1.0, 4.0), slab_slices=4)
    assert result.livermax == livermax(p, result.label_maps[1.0], slab_slices=2)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((13, 2, 2, 2), np.float32), "shape"),
        (np.zeros((14, 2, 2), np.float32), "shape"),
        (np.zeros((14, 2, 2, 2), np.float64), "float16 or float32"),
        ([[0.0]], "numpy array"),
    ],
)
def test_invalid_probabilities_raise_value_error(bad, message):
    with pytest.raises(ValueError, match=message):
        scaled_argmax(bad)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("bad_value", [-0.1, float("nan")])
def test_negative_or_nan_probabilities_raise_value_error(dtype, bad_value):
    p = np.full((14, 2, 2, 2), 0.1, dtype)
    p[9, 1, 0, 1] = bad_value
    with pytest.raises(ValueError, match="non-negative"):
        scaled_argmax(p)


def test_invalid_factors_raise_value_error():
    p = np.zeros((14, 1, 1, 1), np.float32)
    for factors in ((), (0.0,), (-1.0,), (float("nan"),)):
        with pytest.raises(ValueError, match="factor"):
            scaled_argmax(p, factors)


probabilities = st.sampled_from([np.float16, np.float32]).flatmap(
    lambda dtype: arrays(
        dtype,
        st.tuples(st.just(14), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
        # a small alphabet of values makes ties frequent
        elements=st.sampled_from([0.0, 0.0625, 0.125, 0.25, 0.5, 0.75, 1.0]),
    )
)


@settings(max_examples=80, deadline=None)
@given(probabilities, st.integers(1, 3))
def test_factor_one_reproduces_plain_argmax(p, slab):
    result = scaled_argmax(p, (1.0,), slab_slices=slab)
    assert np.array_equal(result.label_maps[1.0], np.argmax(p, axis=0))


@settings(max_examples=80, deadline=None)
@given(probabilities, st.sampled_from([2.0, 4.0, 8.0, 0.5]))
def test_power_of_two_factor_reproduces_the_scaled_reference(p, factor):
    result = scaled_argmax(p, (factor,), slab_slices=2)
    assert np.array_equal(result.label_maps[factor], scaled_argmax_reference(p, factor))
