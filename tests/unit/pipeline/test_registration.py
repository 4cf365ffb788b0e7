"""Registration onto the venous phase: accuracy on a known shift, quality figures, fallbacks,
and mapping masks back onto a phase's own grid."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline.config import RegistrationConfig
from pipeline.errors import ConfigError, InputError
from pipeline.registration import (
    RegisteredStudy,
    normalised_cross_correlation,
    register_study,
    phase_grid_resampler,
    resample_to_phase_grid,
)
from pipeline.types import Phase, PhaseVolume, VolumeGeometry

SHAPE = (40, 96, 96)
SPACING_MM = 4.0
SHIFT_MM = (0.0, 8.0, 6.0)  # x, y, z: about 10 mm
WARP_MM = 3.0
FAST = RegistrationConfig(affine_iterations=200, bspline_iterations=200, resolutions=3, spatial_samples=3000)


def _geometry(shape=SHAPE, spacing=SPACING_MM, offset=(0.0, 0.0, 0.0)) -> VolumeGeometry:
    nz, ny, nx = shape
    origin = (-(nx - 1) * spacing / 2 + offset[0], -(ny - 1) * spacing / 2 + offset[1], -(nz - 1) * spacing / 2 + offset[2])
    return VolumeGeometry(shape, (spacing, spacing, spacing), origin)


def _abdomen(geometry: VolumeGeometry, liver_hu: float, aorta_hu: float, shift=(0.0, 0.0, 0.0), warp=0.0, seed=0):
    """Analytic abdomen sampled at the grid points; content moved by `shift` plus a smooth warp.
    Returns (hu, lesion blob mask)."""
    zyx = np.indices(geometry.shape).reshape(3, -1).T
    p = geometry.index_to_patient(zyx)
    x, y, z = (p[:, i].reshape(geometry.shape) for i in range(3))
    x = x - shift[0] - warp * np.sin(2 * np.pi * z / 160.0)
    y = y - shift[1] - warp * np.cos(2 * np.pi * x / 200.0)
    z = z - shift[2]
    hu = np.full(geometry.shape, -1000.0, dtype=np.float32)
    hu[(x / 150) ** 2 + (y / 110) ** 2 <= 1] = -100.0
    hu[(x / 135) ** 2 + (y / 95) ** 2 <= 1] = 40.0
    hu[((x + 50) / 70) ** 2 + ((y + 10) / 55) ** 2 + (z / 60) ** 2 <= 1] = liver_hu
    hu[x**2 + (y - 60) ** 2 <= 20**2] = 500.0
    hu[(x - 20) ** 2 + (y - 25) ** 2 <= 11**2] = aorta_hu
    blob = (x + 50) ** 2 + (y + 10) ** 2 + (z - 10) ** 2 <= 15**2
    hu[blob] = liver_hu - 60.0
    hu += np.random.default_rng(seed).normal(0.0, 10.0, geometry.shape).astype(np.float32)
    return hu, blob


def _centroid_mm(mask: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    return geometry.index_to_patient(np.argwhere(mask).mean(axis=0))[0]


def _phase(phase: Phase, hu: np.ndarray, geometry: VolumeGeometry, uid: str) -> PhaseVolume:
    return PhaseVolume(phase, hu, geometry, uid, tuple(f"{uid}.{k}" for k in range(geometry.shape[0])))


@pytest.fixture(scope="module")
def pair():
    geometry = _geometry()
    vp_hu, vp_blob = _abdomen(geometry, 105.0, 150.0)
    ap_hu, ap_blob = _abdomen(geometry, 70.0, 280.0, shift=SHIFT_MM, warp=WARP_MM, seed=1)
    phases = {Phase.VP: _phase(Phase.VP, vp_hu, geometry, "1.2.3"), Phase.AP: _phase(Phase.AP, ap_hu, geometry, "1.2.4")}
    return phases, vp_blob, ap_blob


@pytest.fixture(scope="module")
def registered(pair) -> RegisteredStudy:
    phases, _, _ = pair
    return register_study(phases, FAST, study_uid="1.2.9")


def test_known_shift_registers_to_under_2_mm(pair, registered):
    phases, vp_blob, ap_blob = pair
    geometry = phases[Phase.VP].geometry
    before = np.linalg.norm(_centroid_mm(vp_blob, geometry) - _centroid_mm(ap_blob, geometry))
    assert before > 9.0
    ap = registered.phases[Phase.AP]
    assert ap.geometry == geometry and ap.hu.shape == SHAPE and ap.hu.dtype == np.float32
    # the lesion is 60 HU below the liver (70 HU) in the registered arterial phase
    liver_region = np.zeros(SHAPE, dtype=bool)
    centre = np.round(np.argwhere(vp_blob).mean(axis=0)).astype(int)
    liver_region[centre[0] - 8 : centre[0] + 9, centre[1] - 12 : centre[1] + 13, centre[2] - 12 : centre[2] + 13] = True
    smooth = ndimage.gaussian_filter(ap.hu, 1.0)
    labels, _ = ndimage.label(liver_region & (smooth < 25.0) & (smooth > -10.0))
    found = labels == np.argmax(np.bincount(labels[labels > 0]))
    after = np.linalg.norm(_centroid_mm(vp_blob, geometry) - _centroid_mm(found, geometry))
    assert after < 2.0, (before, after)


def test_quality_improves_and_is_recorded(registered):
    (quality,) = registered.registration
    assert quality.phase is Phase.AP and quality.used_registered
    assert quality.after > quality.before + 0.1
    assert registered.decisions[0].stage == "registration" and registered.decisions[0].outcome == "registered"
    assert registered.reference_phase is Phase.VP and registered.present == (Phase.AP, Phase.VP)
    assert registered.phases[Phase.AP].sop_instance_uids == ()
    assert registered.mappings[Phase.AP].source_sop_instance_uids[0] == "1.2.4.0"


def test_masks_map_back_onto_the_phase_grid(pair, registered):
    phases, vp_blob, ap_blob = pair
    geometry = phases[Phase.AP].geometry
    back = resample_to_phase_grid(vp_blob, registered, Phase.AP)
    assert back.dtype == bool and back.shape == SHAPE
    assert np.linalg.norm(_centroid_mm(back, geometry) - _centroid_mm(ap_blob, geometry)) < 2.0
    dice = 2 * (back & ap_blob).sum() / (back.sum() + ap_blob.sum())
    assert dice > 0.8
    labels = resample_to_phase_grid(vp_blob.astype(np.uint8) * 3, registered, Phase.AP)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 3}
    same = resample_to_phase_grid(vp_blob, registered, Phase.VP)
    np.testing.assert_array_equal(same, vp_blob)
    with pytest.raises(InputError, match="mask shape"):
        resample_to_phase_grid(vp_blob[:-1], registered, Phase.AP)


def test_one_resampler_inverts_the_field_once_for_many_masks(pair, registered, monkeypatch):
    phases, vp_blob, _ = pair
    import pipeline.registration as registration

    calls = []
    real = registration._inverse_field
    monkeypatch.setattr(registration, "_inverse_field", lambda mapping: calls.append(mapping) or real(mapping))
    resample = phase_grid_resampler(registered, Phase.AP)
    masks = [vp_blob, np.roll(vp_blob, 2, axis=2), vp_blob.astype(np.uint8) * 5]
    out = [resample(mask) for mask in masks]
    assert len(calls) == 1
    for mask, mapped in zip(masks, out):
        np.testing.assert_array_equal(mapped, resample_to_phase_grid(mask, registered, Phase.AP))
    with pytest.raises(InputError, match="not part of this study"):
        phase_grid_resampler(registered, Phase.DP)


def test_masks_are_resampled_on_their_boxes_with_the_values_of_the_whole_grid(pair, registered, monkeypatch):
    """Cropping to where a mask can land changes no voxel: the same masks through a resampler that
    works on the whole grids (the boxes forced to everything) give identical arrays."""
    _, vp_blob, _ = pair
    import pipeline.registration as registration

    edge = np.zeros_like(vp_blob)
    edge[:3, :4, -5:] = True  # touches three faces of the grid
    corner_label = edge.astype(np.uint8) * 7
    masks = [vp_blob, np.roll(vp_blob, 3, axis=1), edge, vp_blob.astype(np.uint8) * 5, corner_label,
             np.zeros_like(vp_blob)]
    cropped = [phase_grid_resampler(registered, Phase.AP)(mask) for mask in masks]
    everything = lambda shape: tuple(slice(0, n) for n in shape)  # noqa: E731
    monkeypatch.setattr(registration, "_nonzero_box", lambda values, margin: everything(values.shape))
    monkeypatch.setattr(registration, "_landing_box", lambda box, source, target, reach: everything(target.shape))
    whole = [phase_grid_resampler(registered, Phase.AP)(mask) for mask in masks]
    for mask, fast, slow in zip(masks, cropped, whole):
        assert fast.dtype == slow.dtype and fast.shape == slow.shape
        np.testing.assert_array_equal(fast, slow)
    assert cropped[0].any() and cropped[2].any() and not cropped[-1].any()


def _failing(*_args):
    raise RuntimeError("elastix exploded")


def test_fallback_when_registration_fails(pair):
    phases, _, _ = pair
    study = register_study(phases, FAST, registrar=_failing)
    (quality,) = study.registration
    assert not quality.used_registered and "elastix exploded" in quality.message
    decision = study.decisions[0]
    assert decision.outcome == "unregistered" and "registration failed (RuntimeError" in decision.rule
    # the same grid: the unregistered phase is the original voxels
    np.testing.assert_allclose(study.phases[Phase.AP].hu, phases[Phase.AP].hu, atol=1e-3)
    assert study.mappings[Phase.AP].registered is False


def test_fallback_when_registration_makes_it_worse(pair):
    phases, _, _ = pair

    def away(fixed, moving, mask, config):
        size = tuple(reversed(fixed.GetSize()))
        field = np.zeros(size + (3,), dtype=np.float32)
        field[..., 0] = 40.0  # 40 mm the wrong way
        return field

    study = register_study(phases, FAST, registrar=away)
    (quality,) = study.registration
    assert not quality.used_registered and quality.after < quality.before
    assert "is not better than before" in study.decisions[0].rule


def test_unregistered_resampling_uses_patient_coordinates():
    vp_geometry = _geometry(shape=(20, 48, 48), spacing=4.0)
    dp_geometry = _geometry(shape=(30, 64, 64), spacing=3.0, offset=(3.0, -6.0, 9.0))
    vp_hu, _ = _abdomen(vp_geometry, 105.0, 150.0)
    dp_hu, _ = _abdomen(dp_geometry, 90.0, 120.0)
    # a linear ramp in patient x, so linear interpolation is exact
    points = dp_geometry.index_to_patient(np.indices(dp_geometry.shape).reshape(3, -1).T)
    dp_hu = (points[:, 0] * 2.0).reshape(dp_geometry.shape).astype(np.float32)
    phases = {Phase.VP: _phase(Phase.VP, vp_hu, vp_geometry, "1"), Phase.DP: _phase(Phase.DP, dp_hu, dp_geometry, "2")}
    study = register_study(phases, RegistrationConfig(enabled=False))
    out = study.phases[Phase.DP].hu
    assert out.shape == vp_geometry.shape
    vp_points = vp_geometry.index_to_patient(np.indices(vp_geometry.shape).reshape(3, -1).T)
    expected = (vp_points[:, 0] * 2.0).reshape(vp_geometry.shape)
    inside = out > -1000.0
    assert inside.mean() > 0.5
    np.testing.assert_allclose(out[inside], expected[inside], atol=1e-2)
    assert study.decisions[0].rule == "registration disabled by config"


def test_missing_reference_is_an_input_error(pair):
    phases, _, _ = pair
    with pytest.raises(InputError, match="reference phase VP"):
        register_study({Phase.AP: phases[Phase.AP]}, FAST)


def test_ncc():
    a = np.arange(10.0)
    mask = np.ones(10, dtype=bool)
    assert normalised_cross_correlation(a, 2 * a + 1, mask) == pytest.approx(1.0)
    assert normalised_cross_correlation(a, -a, mask) == pytest.approx(-1.0)
    assert np.isnan(normalised_cross_correlation(a, a, np.zeros(10, dtype=bool)))


def test_registration_config_is_checked():
    with pytest.raises(ConfigError, match="metric"):
        RegistrationConfig(metric="Nope")
    with pytest.raises(ConfigError, match="working_spacing_mm"):
        RegistrationConfig(working_spacing_mm=0.1)
