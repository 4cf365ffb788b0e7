"""The output gate: validators must be present, broken objects are rejected, and an SR must
track the segments of the SEGs sent with it."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from dicom_sr.gate import (
    GateItem,
    check_object,
    encode,
    find_dciodvfy,
    gate_all,
    run_dciodvfy,
    seg_segment_stats,
)
from dicom_sr.seg import build_seg, segment_masks, segment_stats
from dicom_sr.sr import build_sr
from dicom_sr.types import SegmentStats, ValidatorMissingError


@pytest.fixture(scope="module")
def seg_hfs(findings_hfs, ct_hfs, uids_hfs, algorithm):
    return build_seg(findings_hfs, ct_hfs[0], uids_hfs, algorithm)


def test_missing_dciodvfy_is_an_error_not_a_pass(seg_hfs, tmp_path: Path, monkeypatch):
    with pytest.raises(ValidatorMissingError, match="dciodvfy"):
        check_object(seg_hfs, dciodvfy=tmp_path / "no-such-dciodvfy")
    monkeypatch.setenv("LIVERNODE_DCIODVFY", str(tmp_path / "absent"))
    with pytest.raises(ValidatorMissingError):
        find_dciodvfy()


def test_dciodvfy_errors_reject_the_object(seg_hfs, tmp_path: Path):
    broken = copy.deepcopy(seg_hfs)
    del broken.SegmentSequence[0].SegmentedPropertyCategoryCodeSequence  # type 1 attribute
    report = check_object(broken)
    assert not report.ok
    assert any(line.startswith("dciodvfy: Error") for line in report.errors)
    path = tmp_path / "ok.dcm"
    path.write_bytes(encode(seg_hfs))
    output = run_dciodvfy(path)
    assert output.errors == []


def test_unreadable_object_is_rejected(seg_hfs):
    broken = copy.deepcopy(seg_hfs)
    broken.NumberOfFrames = int(broken.NumberOfFrames) + 5  # pixel data no longer fits
    report = check_object(broken)
    assert not report.ok
    assert report.errors


def test_frame_off_the_grid_is_rejected(seg_hfs, findings_hfs, ct_hfs):
    _, geometry = ct_hfs
    moved = copy.deepcopy(seg_hfs)
    item = moved.PerFrameFunctionalGroupsSequence[0]
    position = copy.deepcopy(item.PlanePositionSequence)
    position[0].ImagePositionPatient = [
        float(v) + 0.5 * step for v, step in zip(position[0].ImagePositionPatient, (0, 0, 2.5), strict=True)
    ]
    item.PlanePositionSequence = position
    report = check_object(moved, segment_stats(findings_hfs), geometry)
    assert not report.ok
    assert any("not on a plane of the grid" in error for error in report.errors)


def test_geometry_check_accepts_arrays_or_stats(seg_hfs, findings_hfs, ct_hfs):
    _, geometry = ct_hfs
    masks = segment_masks(findings_hfs)
    assert check_object(seg_hfs, masks, geometry).ok
    stats = segment_stats(findings_hfs)
    assert check_object(seg_hfs, stats, geometry).ok
    readout = seg_segment_stats(encode(seg_hfs), geometry)
    for number, expected in stats.items():
        assert readout[number] == SegmentStats(
            expected.voxel_count, readout[number].centroid_mm, expected.plane_counts
        )
        np.testing.assert_allclose(readout[number].centroid_mm, expected.centroid_mm, atol=1e-6)
    # A missing or extra segment is an error too.
    fewer = {k: v for k, v in stats.items() if k != 2}
    report = check_object(seg_hfs, fewer, geometry)
    assert any("segment 2: in the SEG but not expected" in e for e in report.errors)
    report = check_object(seg_hfs, {**stats, 99: stats[1]}, geometry)
    assert any("segment 99: expected but missing" in e for e in report.errors)


def test_expected_masks_need_a_geometry(seg_hfs, findings_hfs):
    report = check_object(seg_hfs, segment_masks(findings_hfs), None)
    assert not report.ok


def test_gate_all_checks_sr_tracking_against_the_segs(seg_hfs, findings_hfs, ct_hfs, uids_hfs,
                                                      algorithm):
    datasets, geometry = ct_hfs
    sr = build_sr(findings_hfs, datasets, seg_hfs, uids_hfs, algorithm)
    reports = gate_all([GateItem(seg_hfs, segment_stats(findings_hfs), geometry), sr])
    assert [r.ok for r in reports] == [True, True], [r.errors for r in reports]
    assert "tracking" in reports[1].checks
    # The same SR sent with a SEG whose tracking UIDs differ is rejected.
    other = copy.deepcopy(seg_hfs)
    for item in other.SegmentSequence:
        item.TrackingUID = generate_uid()
    reports = gate_all([other, sr])
    assert reports[0].ok
    assert not reports[1].ok
    assert any("names no segment" in e for e in reports[1].errors)


def test_logged_validator_messages_carry_no_values():
    from dicom_sr.gate import redact

    line = "Error - Value invalid - (0x0010,0x0010) PN Patient's Name - <Smith^John>"
    assert "Smith" not in redact(line)
    assert "(0x0010,0x0010)" in redact(line)
