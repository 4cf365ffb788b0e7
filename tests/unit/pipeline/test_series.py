"""Series assembly: loose DICOM files -> candidate volumes with reasons for every skip."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

_REPO = Path(__file__).resolve().parents[3]
if str(_REPO) not in sys.path:  # tests.support is imported by path from the repository root
    sys.path.insert(0, str(_REPO))

from pipeline.config import SeriesConfig  # noqa: E402
from pipeline.dicom_scan import parse_date_time_s, read_file  # noqa: E402
from pipeline.errors import ConfigError, InputError  # noqa: E402
from pipeline.series import group_studies, load_series, scan_files  # noqa: E402
from pipeline.types import Phase  # noqa: E402
from tests.support.series_factory import (  # noqa: E402
    FFS_ORIENTATION,
    abdomen_hu,
    write_ct_series,
    write_dicomdir,
    write_non_image,
)

SHAPE = (12, 32, 32)


def _volume(seed: int = 0, shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round(rng.uniform(-1000, 1500, size=shape)).astype(np.float32)


def _only(scan):
    assert len(scan.series) == 1, (scan.series, scan.skipped)
    return scan.series[0]


def _reasons(scan) -> str:
    return " | ".join(item.reason for item in scan.skipped)


def test_shuffled_files_without_extension_are_ordered_by_position(tmp_path):
    hu = _volume()
    written = write_ct_series(tmp_path / "a" / "b", hu, file_names="noext", shuffle_seed=3, unsigned=True)
    scan = scan_files([tmp_path])
    info = _only(scan)
    assert scan.skipped == []
    loaded = load_series(info)
    np.testing.assert_array_equal(loaded.hu, hu)  # unsigned storage, intercept -1024: HU restored
    assert loaded.hu.dtype == np.float32
    assert loaded.sop_instance_uids == tuple(written.sop_instance_uids)
    assert loaded.geometry.spacing_mm == (5.0, 1.0, 1.0)
    assert loaded.geometry.origin_mm == pytest.approx(written.positions_mm[0])
    phase = loaded.to_phase_volume(Phase.VP)
    assert phase.series_uid == written.series_uid and phase.hu is loaded.hu


def test_dicomdir_non_dicom_truncated_and_dose_report_are_skipped_with_reasons(tmp_path):
    hu = _volume()
    written = write_ct_series(tmp_path / "series", hu)
    write_dicomdir(tmp_path / "DICOMDIR")
    (tmp_path / "notes.txt").write_text("not a DICOM file at all\n")
    (tmp_path / "empty").write_bytes(b"")
    write_non_image(tmp_path / "dose", "1.2.840.10008.5.1.4.1.1.88.67", written.study_uid)
    write_non_image(tmp_path / "sc", "1.2.840.10008.5.1.4.1.1.7", written.study_uid, "Screen capture")
    extra = write_ct_series(tmp_path / "other", _volume(1), study_uid=written.study_uid, series_number=9)
    data = extra.paths[5].read_bytes()
    extra.paths[5].write_bytes(data[: len(data) - 700])  # truncated inside the pixel data
    scan = scan_files([tmp_path])
    reasons = {Path(item.what).name if "/" in item.what else item.what: item.reason for item in scan.skipped}
    assert "DICOMDIR" in reasons["DICOMDIR"]
    assert reasons["notes.txt"] == "not a DICOM file"
    assert reasons["empty"] == "not a DICOM file"
    assert "Radiation Dose SR Storage is not a CT image" in reasons["dose"]
    assert "Secondary Capture Image Storage is not a CT image" in reasons["sc"]
    assert any("truncated file" in r for r in reasons.values())
    # the series with a truncated slice now has a gap: refused with the reason, not loaded
    assert any("missing slice" in item.reason and item.series_uid == extra.series_uid for item in scan.skipped)
    assert [s.series_uid for s in scan.series] == [written.series_uid]
    study = group_studies(scan)[0]
    assert study.study_uid == written.study_uid and len(study.skipped) >= 3


def test_truncated_compressed_file_is_skipped(tmp_path):
    written = write_ct_series(tmp_path, _volume(), transfer_syntax=RLELossless)
    data = written.paths[5].read_bytes()
    written.paths[5].write_bytes(data[:-300])
    scan = read_file(written.paths[5])
    assert scan.skipped is not None and "truncated" in scan.skipped.reason


def test_feet_first_series_geometry_and_order(tmp_path):
    hu = _volume(2)
    written = write_ct_series(
        tmp_path, hu, orientation=FFS_ORIENTATION, patient_position="FFS", shuffle_seed=1, slice_spacing_mm=2.5
    )
    loaded = load_series(_only(scan_files([tmp_path])))
    np.testing.assert_array_equal(loaded.hu, hu)
    direction = loaded.geometry.direction_matrix
    np.testing.assert_allclose(direction[:, 0], [-1, 0, 0])
    np.testing.assert_allclose(direction[:, 2], [0, 0, -1])  # z index runs towards the feet
    # every voxel centre lands where its slice says
    for k in (0, 7):
        point = loaded.geometry.index_to_patient(np.array([[k, 0, 0]]))[0]
        np.testing.assert_allclose(point, written.positions_mm[k], atol=1e-3)


def test_gantry_tilt_is_refused_with_reason(tmp_path):
    write_ct_series(tmp_path, _volume(), tilt_deg=15.0)
    scan = scan_files([tmp_path])
    assert scan.series == []
    assert "gantry tilt of 15.0 deg" in _reasons(scan)


def test_missing_slice_is_refused_with_reason(tmp_path):
    written = write_ct_series(tmp_path, _volume())
    written.paths[6].unlink()
    scan = scan_files([tmp_path])
    assert scan.series == []
    assert "missing slice" in _reasons(scan) and "10.00 mm" in _reasons(scan)


def test_slightly_uneven_spacing_is_resampled_and_noted(tmp_path):
    z = [0.0, 5.0, 10.0, 15.4, 20.0, 25.0, 30.0, 34.6, 40.0, 45.0, 50.0, 55.0]
    ramp = np.broadcast_to(np.asarray(z, dtype=np.float32)[:, None, None] * 10.0, SHAPE).copy()
    write_ct_series(tmp_path, ramp, z_positions_mm=z)
    info = _only(scan_files([tmp_path]))
    assert info.resampled and "resampled onto even" in " ".join(info.notes)
    loaded = load_series(info)
    assert loaded.geometry.spacing_mm[0] == pytest.approx(5.0)
    # a linear ramp along z stays linear after resampling onto even spacing
    np.testing.assert_allclose(loaded.hu[:, 0, 0], np.arange(12) * 50.0, atol=0.6)


def test_very_uneven_spacing_is_refused(tmp_path):
    z = [0.0, 5.0, 10.0, 13.0, 20.0, 25.0, 30.0, 37.0, 40.0, 45.0, 50.0, 55.0]
    write_ct_series(tmp_path, _volume(), z_positions_mm=z)
    scan = scan_files([tmp_path])
    assert scan.series == [] and "uneven slice spacing" in _reasons(scan)


def test_two_acquisitions_in_one_series_are_split(tmp_path):
    first, second = _volume(1), _volume(2)
    uid, study = generate_uid(), generate_uid()
    write_ct_series(tmp_path / "a", first, series_uid=uid, study_uid=study, acquisition_numbers=[1] * 12,
                    acquisition_time="120030")
    write_ct_series(tmp_path / "b", second, series_uid=uid, study_uid=study, acquisition_numbers=[2] * 12,
                    acquisition_time="120110")
    scan = scan_files([tmp_path])
    assert len(scan.series) == 2 and scan.skipped == []
    a, b = scan.series
    assert a.series_uid == b.series_uid == uid and a.key != b.key
    assert (a.acquisition_label, b.acquisition_label) == ("acquisition 1", "acquisition 2")
    np.testing.assert_array_equal(load_series(a).hu, first)
    np.testing.assert_array_equal(load_series(b).hu, second)


def test_two_acquisitions_without_acquisition_number_split_by_time(tmp_path):
    uid, study = generate_uid(), generate_uid()
    write_ct_series(tmp_path / "a", _volume(1), series_uid=uid, study_uid=study, acquisition_time="120030")
    write_ct_series(tmp_path / "b", _volume(2), series_uid=uid, study_uid=study, acquisition_time="120300")
    scan = scan_files([tmp_path])
    assert [s.acquisition_label for s in scan.series] == ["acquisition 1", "acquisition 2"]
    assert scan.series[1].acquisition_time_s - scan.series[0].acquisition_time_s == pytest.approx(150.0)


def test_localizer_single_slice_and_reformat_are_skipped(tmp_path):
    study = generate_uid()
    write_ct_series(tmp_path / "loc", _volume(shape=(2, 32, 32)), study_uid=study,
                    image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), description="Topogram")
    write_ct_series(tmp_path / "one", _volume(shape=(1, 32, 32)), study_uid=study, series_number=4)
    write_ct_series(tmp_path / "cor", _volume(), study_uid=study, series_number=5,
                    orientation=(1.0, 0.0, 0.0, 0.0, 0.0, -1.0), description="Cor 3mm")
    write_ct_series(tmp_path / "der", _volume(), study_uid=study, series_number=6,
                    image_type=("DERIVED", "SECONDARY", "AXIAL"))
    scan = scan_files([tmp_path])
    reasons = _reasons(scan)
    assert scan.series == []
    assert "localizer" in reasons and "single slice" in reasons
    assert "non-axial" in reasons and "derived/secondary" in reasons
    accepted = scan_files([tmp_path / "der"], SeriesConfig(accept_derived=True))
    assert len(accepted.series) == 1


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_series_decode_to_the_same_hu(tmp_path, syntax):
    hu = _volume(4)
    write_ct_series(tmp_path, hu, transfer_syntax=syntax, shuffle_seed=2)
    np.testing.assert_array_equal(load_series(_only(scan_files([tmp_path]))).hu, hu)


@pytest.mark.parametrize("syntax", [None, RLELossless])
def test_enhanced_ct_multiframe_with_shuffled_frames(tmp_path, syntax):
    hu = _volume(5)
    kwargs = {"transfer_syntax": syntax} if syntax else {}
    written = write_ct_series(tmp_path, hu, enhanced=True, shuffle_seed=4, file_names="noext", **kwargs)
    info = _only(scan_files([tmp_path]))
    loaded = load_series(info)
    np.testing.assert_array_equal(loaded.hu, hu)
    order = written.extra["frame_order"]  # frame f holds slice order[f]
    expected = [order.index(k) + 1 for k in range(len(order))]
    assert loaded.frame_numbers == tuple(expected)
    assert set(loaded.sop_instance_uids) == {written.sop_instance_uids[0]}


def test_pixel_padding_value_becomes_padding_hu(tmp_path):
    hu = _volume(6)
    written = write_ct_series(tmp_path, hu)
    for path in written.paths:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array.copy()
        arr[0, 0] = -2000
        ds.add_new(0x00280120, "SS", -2000)  # PixelPaddingValue
        ds.PixelData = arr.tobytes()
        ds.save_as(path)
    loaded = load_series(_only(scan_files([tmp_path])))
    assert np.all(loaded.hu[:, 0, 0] == -1024.0)


def test_pydicom_ct_small_is_read(tmp_path):
    """pydicom's bundled CT slice: a single slice is reported, and copies shifted along z make a volume."""
    source = Path(get_testdata_file("CT_small.dcm"))
    shutil.copy(source, tmp_path / "ct_small")
    scan = scan_files([tmp_path])
    assert scan.series == [] and "single slice" in _reasons(scan)
    reference = pydicom.dcmread(source)
    for k in range(1, 10):
        ds = pydicom.dcmread(source)
        ds.SOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], ds.ImagePositionPatient[2] + 5 * k]
        ds.save_as(tmp_path / f"copy{k}")
    info = _only(scan_files([tmp_path]))
    loaded = load_series(info)
    expected = reference.pixel_array * float(reference.RescaleSlope) + float(reference.RescaleIntercept)
    np.testing.assert_array_equal(loaded.hu[0], expected.astype(np.float32))
    assert loaded.hu.shape == (10, 128, 128)


def test_undecodable_pixel_data_raises_input_error(tmp_path):
    written = write_ct_series(tmp_path, _volume(), transfer_syntax=RLELossless)
    ds = pydicom.dcmread(written.paths[3])
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    ds.save_as(written.paths[3])
    info = _only(scan_files([tmp_path]))
    with pytest.raises(InputError, match="cannot decode pixel data"):
        load_series(info)


def test_study_grouping_and_image_statistics_inputs(tmp_path):
    s1, s2 = generate_uid(), generate_uid()
    write_ct_series(tmp_path / "x", abdomen_hu((10, 48, 48), 6.0, "NC"), study_uid=s1, series_number=2, pixel_spacing_mm=6.0)
    write_ct_series(tmp_path / "y", abdomen_hu((10, 48, 48), 6.0, "VP"), study_uid=s1, series_number=1, pixel_spacing_mm=6.0)
    write_ct_series(tmp_path / "z", _volume(), study_uid=s2)
    studies = group_studies(scan_files([tmp_path]))
    assert sorted(s.study_uid for s in studies) == sorted([s1, s2])
    first = next(s for s in studies if s.study_uid == s1)
    assert [s.series_number for s in first.series] == [1, 2]


def test_time_parsing():
    assert parse_date_time_s("20240101", "120030.5") - parse_date_time_s("20240101", "120000") == pytest.approx(30.5)
    assert parse_date_time_s("20240102", "000010") - parse_date_time_s("20240101", "235950") == pytest.approx(20.0)
    assert parse_date_time_s(None, "12:00:10") == pytest.approx(43210.0)
    assert parse_date_time_s("20240101", "garbage") is None


def test_series_config_is_checked():
    with pytest.raises(ConfigError, match="min_slices"):
        SeriesConfig(min_slices=1)
    with pytest.raises(ConfigError, match="max_resample_deviation"):
        SeriesConfig(even_spacing_tolerance=0.3, max_resample_deviation=0.1)


@pytest.mark.skipif(shutil.which("dcmcjpeg") is None, reason="DCMTK dcmcjpeg not installed")
def test_jpeg_lossless_series_written_by_dcmtk(tmp_path):
    import subprocess

    hu = _volume(7)
    written = write_ct_series(tmp_path / "raw", hu)
    out = tmp_path / "jpeg"
    out.mkdir()
    for k, path in enumerate(written.paths):
        subprocess.run(["dcmcjpeg", "+e1", str(path), str(out / f"slice{k}")], check=True, capture_output=True)
    assert pydicom.dcmread(out / "slice0").file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    np.testing.assert_array_equal(load_series(_only(scan_files([out]))).hu, hu)
