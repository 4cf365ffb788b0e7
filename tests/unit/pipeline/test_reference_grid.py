"""Results carried from the working grid back onto the reference series' grid."""

from __future__ import annotations

import numpy as np

from pipeline.inference import resampled_geometry
from pipeline.reference_grid import labels_to_reference, lesions_to_reference
from pipeline.seg2det import seg2det
from pipeline.types import Label, LesionType, Phase, VolumeGeometry


def _grids() -> tuple[VolumeGeometry, VolumeGeometry]:
    reference = VolumeGeometry(shape=(20, 64, 64), spacing_mm=(2.5, 1.0, 1.0), origin_mm=(-32.0, -32.0, 100.0))
    working = resampled_geometry(reference, (10, 32, 32))
    return reference, working


def test_lesion_is_remeasured_on_the_reference_grid() -> None:
    reference, working = _grids()
    labels = np.zeros(working.shape, dtype=np.uint8)
    labels[4:6, 10:14, 10:14] = int(LesionType.HCC)
    (lesion,) = seg2det(labels, working)
    lesion.certain = True
    hu = {Phase.VP: np.full(reference.shape, 42.0, dtype=np.float32)}

    (moved,) = lesions_to_reference([lesion], working, reference, hu)

    assert moved.lesion_id == lesion.lesion_id and moved.lesion_type == LesionType.HCC and moved.certain
    # 2 x 4 x 4 working voxels of 5 x 2 x 2 mm -> 4 x 8 x 8 reference voxels of 2.5 x 1 x 1 mm
    assert moved.voxel_count == 4 * 8 * 8
    assert np.isclose(moved.volume_ml, lesion.volume_ml)
    assert np.allclose(moved.centroid_mm, lesion.centroid_mm, atol=1e-6)
    assert moved.bbox.shape == (4, 8, 8) and moved.mask.all()
    assert moved.mean_hu == {Phase.VP: 42.0}
    assert np.isclose(moved.longest_axial_diameter_mm, lesion.longest_axial_diameter_mm)


def test_lesion_thinner_than_a_reference_voxel_keeps_one_voxel() -> None:
    # reference coarser in z than the working grid: a one-slice lesion can fall between samples
    reference = VolumeGeometry(shape=(4, 32, 32), spacing_mm=(10.0, 1.0, 1.0), origin_mm=(0.0, 0.0, 0.0))
    working = resampled_geometry(reference, (20, 32, 32))
    labels = np.zeros(working.shape, dtype=np.uint8)
    labels[2, 5:7, 5:7] = int(LesionType.CYST)
    (lesion,) = seg2det(labels, working)
    (moved,) = lesions_to_reference([lesion], working, reference, {})
    assert moved.voxel_count >= 1
    assert moved.lesion_type == LesionType.CYST


def test_organ_labels_are_upsampled_nearest() -> None:
    reference, working = _grids()
    organs = np.zeros(working.shape, dtype=np.uint8)
    organs[:, :16, :] = int(Label.LIVER)
    out = labels_to_reference(organs, reference)
    assert out.shape == reference.shape and out.dtype == np.uint8
    assert set(np.unique(out)) == {0, int(Label.LIVER)}
    assert (out[:, :32, :] == int(Label.LIVER)).all() and (out[:, 32:, :] == 0).all()
