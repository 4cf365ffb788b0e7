"""Lesion extent by hysteresis: seeds at factor f grow into their region at f x g, and nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.cascade import run_cascade
from pipeline.config import CascadeConfig
from pipeline.errors import ConfigError
from pipeline.lesion_growth import grow_lesions
from pipeline.types import Label, LesionType, Phase, VolumeGeometry

LIVER, HCC, ICC, META = int(Label.LIVER), int(Label.HCC), int(Label.ICC), int(Label.META)


def test_a_seed_takes_its_whole_region_and_unseeded_regions_stay_out() -> None:
    seeds = np.full((6, 8, 8), LIVER, np.uint8)
    extent = seeds.copy()
    extent[1:4, 1:4, 1:4] = ICC  # the lesion at the higher factor
    extent[2, 2, 2] = HCC
    seeds[2, 2, 2] = HCC  # its only voxel at the lower factor
    extent[4:6, 6:8, 6:8] = META  # a region with no seed: not a lesion at the lower factor
    grown = grow_lesions(seeds, extent)
    assert (grown[1:4, 1:4, 1:4] == np.where(extent[1:4, 1:4, 1:4] == HCC, HCC, ICC)).all()
    assert (grown[4:6, 6:8, 6:8] == LIVER).all()
    assert int((grown != seeds).sum()) == 26
    assert seeds[1, 1, 1] == LIVER  # the input is not changed


def test_a_region_touching_a_seed_only_at_a_corner_grows_and_seed_labels_are_kept() -> None:
    seeds = np.full((4, 4, 4), LIVER, np.uint8)
    extent = seeds.copy()
    seeds[1, 1, 1] = extent[1, 1, 1] = META
    extent[1, 2, 2] = ICC  # in-plane diagonal neighbour: one lesion to seg2det
    extent[2, 3, 3] = ICC  # diagonal across slices only: another lesion to seg2det, so it does not grow
    extent[1, 1, 1] = ICC  # the extent map may type the seed voxel otherwise: the seed keeps its label
    grown = grow_lesions(seeds, extent)
    assert grown[1, 2, 2] == ICC and grown[1, 1, 1] == META
    assert grown[2, 3, 3] == LIVER


def test_nothing_to_grow_returns_the_seed_map_itself() -> None:
    seeds = np.full((3, 3, 3), LIVER, np.uint8)
    assert grow_lesions(seeds, seeds.copy()) is seeds
    seeds[1, 1, 1] = HCC
    assert grow_lesions(seeds, seeds.copy()) is seeds


def test_bad_maps_are_refused() -> None:
    seeds = np.full((3, 3, 3), LIVER, np.uint8)
    seeds[1, 1, 1] = HCC
    with pytest.raises(ValueError, match="shape"):
        grow_lesions(seeds, np.zeros((3, 3, 4), np.uint8))
    with pytest.raises(ValueError, match="every seed lesion voxel"):
        grow_lesions(seeds, np.full((3, 3, 3), LIVER, np.uint8))


@pytest.mark.parametrize("factor", [0.5, 1.0, -2.0])
def test_growth_factor_must_be_off_or_above_one(factor: float) -> None:
    with pytest.raises(ConfigError, match="lesion_growth_factor"):
        CascadeConfig(lesion_growth_factor=factor)


def test_the_cascade_grows_a_fragment_into_a_lesion_that_passes_the_size_threshold() -> None:
    """An HCC whose core alone wins the argmax: without growth its 0.25 ml fragment is all that
    is found at base sensitivity; with growth 8 the whole 3 ml lesion is found at both factors."""
    geometry = VolumeGeometry((6, 24, 24), (5.0, 5.0, 5.0), (-60.0, -60.0, 100.0))
    p = np.zeros((14,) + geometry.shape, np.float32)
    p[0] = 0.9
    liver = (slice(None), slice(2, 22), slice(2, 22))
    p[0][liver], p[7][liver] = 0.05, 0.8
    lesion = (slice(1, 4), slice(8, 12), slice(8, 10))  # 24 voxels of 0.125 ml
    p[1][lesion], p[7][lesion] = 0.12, 0.7  # found only at f >= 8 (0.12 x 8 > 0.7)
    p[1][2, 9, 8:10], p[7][2, 9, 8:10] = 0.8, 0.15  # the confident core: 2 voxels
    hu = {Phase.VP: np.where(p[7] > 0.5, 100.0, -50.0).astype(np.float32)}
    plain = run_cascade(p, hu, geometry, None, CascadeConfig(patch_size_voxels=(4, 16, 16)))
    assert [l.volume_ml for l in plain.base] == [pytest.approx(0.25)]
    assert [l.volume_ml for l in plain.high] == [pytest.approx(0.25)]  # 0.12 x 4 < 0.7
    grown = run_cascade(p, hu, geometry, None, CascadeConfig(patch_size_voxels=(4, 16, 16), lesion_growth_factor=8))
    for lesions in (grown.base, grown.high):
        assert [(l.lesion_type, l.volume_ml) for l in lesions] == [(LesionType.HCC, pytest.approx(3.0))]
