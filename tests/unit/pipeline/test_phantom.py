"""Tests of the synthetic multi-phase CT phantom (pipeline.phantom and its modules)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from pipeline.errors import ConfigError
from pipeline.phantom import LesionRequest, PhantomSpec, make_phantom, write_phantom_study
from pipeline.phantom_figure import patient_to_index
from pipeline.phantom_lesions import sample_lesion_plan
from pipeline.phantom_tissues import phase_index
from pipeline.types import PHASE_ORDER, Label, LesionType, Phase
from tests.support.dciodvfy import dciodvfy_errors

SEED = 11
ALL_TYPES = tuple(LesionRequest(t, v) for t, v in zip(LesionType, (14.0, 12.0, 9.0, 12.0, 10.0, 8.0)))
SMALL = dict(rows=128, columns=128, slices=48, slice_thickness_mm=5.0, lesion_requests=ALL_TYPES)
FFS = dict(rows=96, columns=112, slices=30, slice_thickness_mm=3.0, feet_first=True)


@pytest.fixture(scope="module")
def hfs(tmp_path_factory: pytest.TempPathFactory):
    return write_phantom_study(tmp_path_factory.mktemp("hfs"), SEED, **SMALL)


@pytest.fixture(scope="module")
def hfs_memory():
    return make_phantom(SEED, **SMALL)


@pytest.fixture(scope="module")
def ffs(tmp_path_factory: pytest.TempPathFactory):
    return write_phantom_study(tmp_path_factory.mktemp("ffs"), 12, **FFS)


def _read_series(directory: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(directory)))
    return reader.Execute()


def _files(study, phase: Phase) -> list[Path]:
    return sorted(study.series_dirs[phase].glob("*.dcm"))


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_pixels_and_uids(hfs, tmp_path: Path) -> None:
    again = write_phantom_study(tmp_path / "again", SEED, **SMALL)
    assert again.study_uid == hfs.study_uid
    assert again.series_uids == hfs.series_uids
    for phase in PHASE_ORDER:
        a, b = _files(hfs, phase), _files(again, phase)
        assert [p.name for p in a] == [p.name for p in b]
        for fa, fb in zip(a, b):
            da, db = pydicom.dcmread(fa), pydicom.dcmread(fb)
            assert da.SOPInstanceUID == db.SOPInstanceUID
            assert da.PixelData == db.PixelData
    la = sitk.GetArrayFromImage(sitk.ReadImage(str(hfs.label_path)))
    lb = sitk.GetArrayFromImage(sitk.ReadImage(str(again.label_path)))
    assert np.array_equal(la, lb)


def test_other_seed_gives_other_study(hfs_memory) -> None:
    other = make_phantom(SEED + 1, **SMALL)
    assert other.identity.study_uid != hfs_memory.identity.study_uid
    assert set(other.identity.series_uids.values()).isdisjoint(hfs_memory.identity.series_uids.values())
    assert not np.array_equal(other.hu[Phase.VP], hfs_memory.hu[Phase.VP])
    assert not np.array_equal(other.labels, hfs_memory.labels)


def test_phase_subset_renders_the_same_images(hfs_memory) -> None:
    only_vp = make_phantom(SEED, phases=[Phase.VP], **SMALL)
    assert np.array_equal(only_vp.hu[Phase.VP], hfs_memory.hu[Phase.VP])
    assert only_vp.identity.series_uids[Phase.VP] == hfs_memory.identity.series_uids[Phase.VP]


def test_in_memory_volumes_equal_the_written_series(hfs, hfs_memory) -> None:
    for phase in PHASE_ORDER:
        image = _read_series(hfs.series_dirs[phase])
        assert np.array_equal(sitk.GetArrayFromImage(image).astype(np.float32), hfs_memory.hu[phase])


# ---------------------------------------------------------------------------------------------
# DICOM validity and geometry
# ---------------------------------------------------------------------------------------------


@pytest.mark.peer
@pytest.mark.parametrize("phase", PHASE_ORDER)
def test_dciodvfy_reports_no_errors(hfs, ffs, phase: Phase) -> None:
    for study in (hfs, ffs):
        files = _files(study, phase)
        assert dciodvfy_errors(files[len(files) // 2]) == []


def _assert_geometry(image: sitk.Image, geometry) -> None:
    assert image.GetSize() == tuple(reversed(geometry.shape))
    np.testing.assert_allclose(image.GetSpacing(), geometry.spacing_mm[::-1], atol=1e-4)
    np.testing.assert_allclose(image.GetOrigin(), geometry.origin_mm, atol=1e-3)
    np.testing.assert_allclose(image.GetDirection(), geometry.direction, atol=1e-6)


def test_series_read_by_simpleitk_with_right_geometry(hfs, hfs_memory) -> None:
    for phase in PHASE_ORDER:
        _assert_geometry(_read_series(hfs.series_dirs[phase]), hfs_memory.geometry)
    labels = sitk.ReadImage(str(hfs.label_path))
    vp = _read_series(hfs.series_dirs[Phase.VP])
    assert labels.GetSize() == vp.GetSize()
    np.testing.assert_allclose(labels.GetSpacing(), vp.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(labels.GetOrigin(), vp.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(labels.GetDirection(), vp.GetDirection(), atol=1e-6)
    assert labels.GetPixelID() == sitk.sitkUInt8


def test_feet_first_series_is_read_correctly(ffs) -> None:
    memory = make_phantom(12, **FFS)
    vp = _read_series(ffs.series_dirs[Phase.VP])
    _assert_geometry(vp, memory.geometry)
    assert np.array_equal(sitk.GetArrayFromImage(vp).astype(np.float32), memory.hu[Phase.VP])
    # Feet first: rows run to the patient's right, the slices come cranial first.
    files = _files(ffs, Phase.VP)
    first, last = pydicom.dcmread(files[0]), pydicom.dcmread(files[-1])
    assert first.PatientPosition == "FFS"
    assert [float(v) for v in first.ImageOrientationPatient] == [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert float(first.ImagePositionPatient[2]) > float(last.ImagePositionPatient[2])
    # The same anatomy lies in the same patient place whatever the patient position.
    hfs_twin = make_phantom(12, **{**FFS, "feet_first": False})
    liver_ffs = _centroid_mm(memory.labels == Label.LIVER, memory.geometry)
    liver_hfs = _centroid_mm(hfs_twin.labels == Label.LIVER, hfs_twin.geometry)
    np.testing.assert_allclose(liver_ffs, liver_hfs, atol=1.0)
    labels = sitk.ReadImage(str(ffs.label_path))
    np.testing.assert_allclose(labels.GetDirection(), vp.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(labels.GetOrigin(), vp.GetOrigin(), atol=1e-3)


def test_phases_share_study_and_frame_of_reference(hfs) -> None:
    headers = [pydicom.dcmread(_files(hfs, p)[0], stop_before_pixels=True) for p in PHASE_ORDER]
    assert {h.StudyInstanceUID for h in headers} == {hfs.study_uid}
    assert {h.FrameOfReferenceUID for h in headers} == {hfs.frame_of_reference_uid}
    assert len({h.SeriesInstanceUID for h in headers}) == 4
    assert len({h.SeriesDescription for h in headers}) == 4


def test_headers_look_like_scanner_output(hfs) -> None:
    times = {}
    for phase in PHASE_ORDER:
        files = _files(hfs, phase)
        h = pydicom.dcmread(files[0], stop_before_pixels=True)
        assert h.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert list(h.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert float(h.RescaleIntercept) == -1024.0 and float(h.RescaleSlope) == 1.0
        assert float(h.SliceThickness) == 5.0
        assert h.PatientPosition == "HFS"
        assert "WindowCenter" in h and "WindowWidth" in h
        assert ("ContrastBolusAgent" in h) == (phase != Phase.NC)
        assert h.PatientName.family_name == "PHANTOM"
        t = h.AcquisitionTime
        times[phase] = int(t[:2]) * 3600 + int(t[2:4]) * 60 + float(t[4:])
        last = pydicom.dcmread(files[-1], stop_before_pixels=True)
        assert float(h.ImagePositionPatient[2]) > float(last.ImagePositionPatient[2])  # cranial first
    offsets = [times[p] - times[Phase.NC] for p in PHASE_ORDER]
    assert 20 < offsets[1] < 45 and 55 < offsets[2] < 90 and 150 < offsets[3] < 240


def test_vendors_vary_with_seed() -> None:
    manufacturers = {
        make_phantom(s, phases=[Phase.VP], rows=48, columns=48, slices=8).scanner.vendor.manufacturer for s in range(12)
    }
    assert len(manufacturers) >= 3


def test_invalid_spec_is_rejected() -> None:
    with pytest.raises(ConfigError):
        PhantomSpec(seed=-1)
    with pytest.raises(ConfigError):
        PhantomSpec(seed=1, slice_thickness_mm=20.0)
    with pytest.raises(ConfigError):
        PhantomSpec(seed=1, phases=("VP", "XX"))
    assert PhantomSpec(seed=1, phases=("DP", "NC")).phases == (Phase.NC, Phase.DP)


# ---------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------


def _centroid_mm(mask: np.ndarray, geometry) -> np.ndarray:
    return geometry.index_to_patient(np.argwhere(mask).mean(axis=0, keepdims=True))[0]


def test_truth_files_are_consistent(hfs, hfs_memory) -> None:
    doc = json.loads(hfs.lesions_path.read_text())
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(hfs.label_path)))
    instances = sitk.GetArrayFromImage(sitk.ReadImage(str(hfs.instances_path)))
    voxel_ml = hfs_memory.geometry.voxel_volume_ml
    assert {d["type"] for d in doc["lesions"]} == {t.display_name for t in LesionType}
    assert doc["series_uids"] == {p.value: u for p, u in hfs.series_uids.items()}
    for d in doc["lesions"]:
        mask = instances == d["id"]
        assert mask.sum() == d["voxel_count"] > 0
        assert d["volume_ml"] == pytest.approx(d["voxel_count"] * voxel_ml, rel=1e-3)
        assert np.all(labels[mask] == d["label"])
        assert d["volume_ml"] == pytest.approx(d["nominal_volume_ml"], rel=0.3)
        np.testing.assert_allclose(_centroid_mm(mask, hfs_memory.geometry), d["centroid_mm"], atol=0.01)
    lesion_voxels = np.isin(labels, [int(t) for t in LesionType])
    assert np.array_equal(lesion_voxels, instances > 0)
    for label in Label:
        if label != Label.BACKGROUND:
            assert (labels == label).any(), label.name
    assert set(doc["phase_shifts_mm"]) == {p.value for p in PHASE_ORDER}


def test_lesions_lie_inside_the_liver_without_touching(hfs_memory) -> None:
    labels, instances = hfs_memory.labels, hfs_memory.instances
    for les in hfs_memory.lesions:
        mask = instances == les.lesion_id
        shell = ndimage.binary_dilation(mask, iterations=2) & ~mask
        around = labels[shell]
        in_liver = np.isin(around, [Label.LIVER, Label.HEPATIC_VESSELS]).mean()
        assert in_liver > 0.85, (les.lesion_type, in_liver)
        assert not np.any((instances[shell] > 0) & (instances[shell] != les.lesion_id))


def test_mean_hu_in_written_dicom_matches_intended_values(hfs, hfs_memory) -> None:
    tissues = hfs_memory.model.tissues
    for phase in PHASE_ORDER:
        hu = sitk.GetArrayFromImage(_read_series(hfs.series_dirs[phase])).astype(np.float64)
        liver = ndimage.binary_erosion(hfs_memory.phase_labels[phase] == Label.LIVER, iterations=2)
        intended = tissues.hu("liver", phase_index(phase))
        assert abs(hu[liver].mean() - intended) < 6.0, phase
        if phase != Phase.VP:
            continue
        sigma = hfs_memory.noise_sigma_hu[phase]
        for les in hfs_memory.lesions:
            mask = hfs_memory.instances == les.lesion_id
            tolerance = 4.0 * sigma / np.sqrt(mask.sum() / 4.0) + 1.0  # noise is 2x2-correlated
            assert abs(hu[mask].mean() - les.mean_hu[phase]) < tolerance, les.lesion_type


def test_lesions_follow_textbook_enhancement_patterns(hfs_memory) -> None:
    liver = hfs_memory.model.tissues.row("liver")
    by_type = {les.lesion_type: np.array([les.mean_hu[p] for p in PHASE_ORDER]) for les in hfs_memory.lesions}
    nc, ap, vp, dp = range(4)
    hcc = by_type[LesionType.HCC] - liver
    assert hcc[nc] < 0 and hcc[ap] > 10 and hcc[vp] < -5 and hcc[dp] < -5  # hyper, then washout
    icc = by_type[LesionType.ICC] - liver
    assert icc[nc] < 0 and icc[vp] < 0 and icc[dp] > icc[vp] + 10  # delayed central fill
    meta = by_type[LesionType.META] - liver
    assert meta[vp] < -8 and meta[dp] < 0 and meta[nc] < 0
    hem = by_type[LesionType.HEM]
    assert hem[nc] < liver[nc] and hem[dp] > hem[vp] > hem[nc] + 10  # centripetal fill
    fnh = by_type[LesionType.OTHER] - liver
    assert fnh[ap] > 25 and abs(fnh[vp]) < 15 and abs(fnh[dp]) < 15  # bright arterial, iso later
    cyst = by_type[LesionType.CYST]  # partial volume with the liver lifts the mean of small cysts
    assert np.all(cyst > -5) and np.all(cyst < 30) and np.all(cyst < liver - 30)
    core = next(s.core_hu for s in hfs_memory.model.lesions if s.lesion_type == LesionType.CYST)
    assert 0.0 <= min(core) and max(core) <= 13.0 and np.ptp(core) < 1.0  # ~5 HU in every phase


def test_non_venous_phases_are_shifted_by_the_recorded_breathing_motion(hfs_memory) -> None:
    g = hfs_memory.geometry
    vp = _centroid_mm(hfs_memory.phase_labels[Phase.VP] == Label.LIVER, g)
    for phase in (Phase.NC, Phase.AP, Phase.DP):
        shift = np.asarray(hfs_memory.shifts_mm[phase])
        assert 5.0 <= np.linalg.norm(shift) <= 15.0
        assert abs(shift[2]) >= 5.0  # mostly cranio-caudal
        moved = _centroid_mm(hfs_memory.phase_labels[phase] == Label.LIVER, g)
        np.testing.assert_allclose(moved - vp, shift, atol=3.0)
    assert hfs_memory.shifts_mm[Phase.VP] == (0.0, 0.0, 0.0)


def test_phase_position_finds_the_lesion_in_each_phase(hfs_memory) -> None:
    g = hfs_memory.geometry
    les = max(hfs_memory.lesions, key=lambda lesion: lesion.voxel_count)
    for phase in PHASE_ORDER:
        z, y, x = np.round(patient_to_index(g, hfs_memory.phase_position_mm(phase, les.centroid_mm))).astype(int)
        assert hfs_memory.phase_labels[phase][z, y, x] == les.label


def test_no_lesions_gives_no_lesion_voxels() -> None:
    vol = make_phantom(SEED, lesions=False, rows=96, columns=96, slices=40)
    assert vol.lesions == []
    assert not np.isin(vol.labels, [int(t) for t in LesionType]).any()
    assert not vol.instances.any()
    assert (vol.labels == Label.LIVER).any()


def test_lookalikes_are_not_labelled_as_lesions() -> None:
    for seed in range(40):
        vol = make_phantom(seed, phases=[Phase.VP], rows=96, columns=96, slices=40, lesions=False)
        if vol.model.lookalikes:
            break
    else:
        pytest.fail("no study with look-alikes in 40 seeds")
    off = np.asarray(vol.patient_offset_mm)
    for la in vol.model.lookalikes:
        z, y, x = np.round(patient_to_index(vol.geometry, np.asarray(la.shape.center_mm) + off)).astype(int)
        if 0 <= z < vol.geometry.shape[0]:
            assert vol.labels[z, y, x] in (Label.LIVER, Label.HEPATIC_VESSELS, Label.PORTAL_SPLENIC_VEIN)


def test_same_body_at_any_slice_thickness() -> None:
    thick = make_phantom(SEED, phases=[Phase.VP], rows=96, columns=96, slices=40, slice_thickness_mm=5.0, lesions=False)
    thin = make_phantom(SEED, phases=[Phase.VP], rows=96, columns=96, slices=80, slice_thickness_mm=2.5, lesions=False)
    v_thick = (thick.labels == Label.LIVER).sum() * thick.geometry.voxel_volume_ml
    v_thin = (thin.labels == Label.LIVER).sum() * thin.geometry.voxel_volume_ml
    assert v_thick == pytest.approx(v_thin, rel=0.03)
    np.testing.assert_allclose(
        _centroid_mm(thick.labels == Label.LIVER, thick.geometry),
        _centroid_mm(thin.labels == Label.LIVER, thin.geometry),
        atol=1.5,
    )


def test_lesion_plan_statistics() -> None:
    plans = [sample_lesion_plan(np.random.default_rng(s)) for s in range(3000)]
    free = np.mean([len(p) == 0 for p in plans])
    assert 0.07 < free < 0.13
    assert max(len(p) for p in plans) <= 6
    volumes = np.array([r.volume_ml for p in plans for r in p])
    assert volumes.min() >= 0.5 and volumes.max() > 64.0
    assert 0.24 < np.mean(volumes < 2.0) < 0.32
    types = {r.lesion_type for p in plans for r in p}
    assert types == set(LesionType)
    metas = [len(p) for p in plans if p and p[0].lesion_type == LesionType.META]
    assert np.mean(metas) > 2.5  # metastases often several


def test_noise_level_is_in_range() -> None:
    vol = make_phantom(SEED, phases=[Phase.VP], rows=128, columns=128, slices=24)
    assert 8.0 <= vol.noise_sigma_hu[Phase.VP] <= 26.0
    clean = make_phantom(SEED, phases=[Phase.VP], rows=128, columns=128, slices=24, noise=False)
    inside = ndimage.binary_erosion(vol.labels == Label.LIVER, iterations=2)
    measured = (vol.hu[Phase.VP] - clean.hu[Phase.VP])[inside].std()
    assert measured == pytest.approx(vol.noise_sigma_hu[Phase.VP], rel=0.15)


@pytest.mark.slow
def test_full_size_four_phase_study_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    study = write_phantom_study(tmp_path, 5)
    seconds = time.perf_counter() - start
    assert len(_files(study, Phase.AP)) == 60
    assert pydicom.dcmread(_files(study, Phase.AP)[0], stop_before_pixels=True).Rows == 512
    assert seconds < 45.0, f"512x512x60 x4 took {seconds:.1f} s (target 30 s)"
