"""Long axis on the key slice, and matching slices to the grid."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_sr.geometry import long_axis_on_key_slice, order_sources, patient_to_index
from dicom_sr.types import ResultsError
from pipeline.types import BoundingBox, Lesion, LesionType, VolumeGeometry

GRID = VolumeGeometry(shape=(10, 40, 40), spacing_mm=(5.0, 0.5, 1.0), origin_mm=(0.0, 0.0, 0.0))


def _lesion(mask: np.ndarray, z0: int, y0: int, x0: int) -> Lesion:
    box = BoundingBox(z0, z0 + mask.shape[0], y0, y0 + mask.shape[1], x0, x0 + mask.shape[2])
    return Lesion(1, LesionType.HCC, box, mask, int(mask.sum()), 0.0, 0.0, (0.0, 0.0, 0.0))


def test_long_axis_uses_mm_not_pixels_and_the_widest_slice():
    mask = np.zeros((2, 9, 5), dtype=bool)
    mask[0, 0:9, 2] = True  # 8 pixels apart along y: 4 mm
    mask[1, 4, 0:5] = True  # 4 pixels apart along x: 4 mm ... tie, first wins
    mask[1, 0, 0] = True  # corner: (0,0)-(4,4)? rows 0..4 * 0.5, cols 0..4 * 1.0
    axis = long_axis_on_key_slice(_lesion(mask, 3, 10, 20), GRID)
    assert axis.z_index == 4
    assert axis.length_mm == pytest.approx(np.hypot(4 * 0.5, 4 * 1.0))
    (c1, r1), (c2, r2) = axis.points_colrow
    assert {(c1, r1), (c2, r2)} == {(20.5, 10.5), (24.5, 14.5)}


def test_single_pixel_lesion_gets_a_one_pixel_line():
    axis = long_axis_on_key_slice(_lesion(np.ones((1, 1, 1), dtype=bool), 2, 5, 6), GRID)
    assert axis.length_mm == pytest.approx(1.0)
    assert axis.points_colrow == ((6.0, 5.5), (7.0, 5.5))


def test_patient_to_index_inverts_index_to_patient():
    oblique = VolumeGeometry(
        shape=(4, 5, 6), spacing_mm=(2.0, 0.7, 0.9), origin_mm=(10.0, -5.0, 3.0),
        direction=tuple(np.linalg.qr(np.arange(9.0).reshape(3, 3) + np.eye(3))[0].ravel()),
    )
    zyx = np.array([[1.0, 2.5, 3.25], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(patient_to_index(oblique, oblique.index_to_patient(zyx)), zyx,
                               atol=1e-9)


def test_order_sources_rejects_duplicates(ct_hfs):
    datasets, geometry = ct_hfs
    with pytest.raises(ResultsError, match="second slice"):
        order_sources([datasets[0]] + list(datasets[:-1]), geometry)
