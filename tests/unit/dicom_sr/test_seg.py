"""SEG: content, geometry on HFS / FFS / oblique series, LABELMAP, phases, and read-back by a
third-party reader (dcmqi) voxel for voxel."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pytest

from dicom_sr import codes
from dicom_sr.gate import check_object, encode, seg_segment_stats
from dicom_sr.geometry import geometry_from_datasets
from dicom_sr.render_check import ReaderMissingError, dcmqi_readback, readback_on_grid
from dicom_sr.seg import (
    build_phase_segs,
    build_seg,
    plan_segments,
    segment_masks,
    segment_stats,
)
from dicom_sr.types import ResultsError
from pipeline.types import Label, LesionType, Phase
from tests.support.ct_series import CTSeriesSpec, make_ct_series


def _gate_ok(seg, expected, geometry):
    report = check_object(seg, expected, geometry)
    assert report.ok, report.errors
    assert {"read-back", "dciodvfy", "geometry"} <= set(report.checks)
    return report


def test_binary_seg_content(findings_hfs, ct_hfs, uids_hfs, algorithm):
    datasets, geometry = ct_hfs
    seg = build_seg(findings_hfs, datasets, uids_hfs, algorithm)
    _gate_ok(seg, segment_masks(findings_hfs), geometry)

    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert seg.PatientID == datasets[0].PatientID
    assert seg.SeriesInstanceUID == uids_hfs.seg[Phase.VP].series_uid
    assert seg.SOPInstanceUID == uids_hfs.seg[Phase.VP].instance_uid
    assert "RESEARCH USE ONLY" in seg.SeriesDescription
    assert len(seg.SeriesDescription) <= 64
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == findings_hfs.reference_series_uid

    labels = [item.SegmentLabel for item in seg.SegmentSequence]
    assert labels == ["HCC 1", "Cyst 2", "Liver", "Hepatic vessels", "Spleen", "Stomach"]
    hcc, cyst, liver, vessels = seg.SegmentSequence[:4]
    assert hcc.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert hcc.SegmentedPropertyTypeCodeSequence[0].CodeValue == "25370001"
    assert hcc.AnatomicRegionSequence[0].CodeValue == "10200004"
    assert cyst.SegmentedPropertyTypeCodeSequence[0].CodeValue == "367643001"
    assert liver.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert vessels.SegmentedPropertyTypeCodeSequence[0].CodeValue == "59820001"
    assert hcc.TrackingUID == uids_hfs.lesion_tracking[1]
    assert liver.TrackingUID == uids_hfs.organ_tracking[int(Label.LIVER)]
    assert hcc.TrackingID == "livernode lesion 1 (HCC)"
    assert tuple(hcc.RecommendedDisplayCIELabValue) == codes.lesion_coding(LesionType.HCC).cielab.value
    algo = hcc.SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == algorithm.name and algo.AlgorithmVersion == algorithm.version
    assert algo.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    assert "sensitivity_high=4" in algo.AlgorithmParameters

    processing = [  # (highdicom adds an item for itself too, without a Device UID)
        item for item in seg.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102" and "DeviceUID" in item
    ]
    assert len(processing) == 1
    assert processing[0].DeviceUID == uids_hfs.device_uid
    assert processing[0].ManufacturerModelName == algorithm.name
    assert processing[0].SoftwareVersions == algorithm.version

    # Empty frames are omitted: one frame per (segment, slice) with voxels, in source order.
    masks = segment_masks(findings_hfs)
    expected_frames = sum(int(mask.any(axis=(1, 2)).sum()) for mask in masks.values())
    assert int(seg.NumberOfFrames) == expected_frames


def test_labelmap_lesions_take_priority(findings_hfs, ct_hfs, uids_hfs, algorithm,
                                        labelmap_validator):
    datasets, geometry = ct_hfs
    seg = build_seg(findings_hfs, datasets, uids_hfs, algorithm, segmentation_type="LABELMAP")
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"
    masks = segment_masks(findings_hfs, "LABELMAP")
    _gate_ok(seg, masks, geometry)
    hcc = findings_hfs.lesions[0].full_mask(geometry.shape)
    liver = findings_hfs.organ_labels == Label.LIVER
    assert (hcc & liver).any(), "the fixture must make the HCC overlap the liver label"
    assert masks[1].sum() == hcc.sum()  # the lesion keeps all its voxels
    lesions = hcc | findings_hfs.lesions[1].full_mask(geometry.shape)
    assert not (masks[3] & lesions).any()  # the liver segment gives them up
    assert masks[3].sum() == (liver & ~lesions).sum()


def test_sources_in_any_order(findings_hfs, ct_hfs, uids_hfs, algorithm):
    datasets, geometry = ct_hfs
    shuffled = list(datasets)
    random.Random(3).shuffle(shuffled)
    seg = build_seg(findings_hfs, shuffled, uids_hfs, algorithm)
    _gate_ok(seg, segment_stats(findings_hfs), geometry)


def test_sources_that_do_not_match_the_grid_are_refused(findings_hfs, uids_hfs, algorithm):
    other, _ = make_ct_series(CTSeriesSpec(spacing_mm=(3.0, 0.8, 0.8)))
    with pytest.raises(ResultsError, match="not on a plane"):
        build_seg(findings_hfs, other, uids_hfs, algorithm)
    fewer, _ = make_ct_series(CTSeriesSpec(slices=11))
    with pytest.raises(ResultsError, match="11 slices"):
        build_seg(findings_hfs, fewer, uids_hfs, algorithm)


@pytest.mark.parametrize("orientation", ["HFS", "FFS", "OBLIQUE"])
def test_voxels_land_at_the_right_patient_position(orientation, factories, algorithm):
    """A one-voxel lesion at a known index must appear in the SEG at the patient coordinates
    the series puts that voxel at (worked out by hand for HFS and FFS)."""
    spec = CTSeriesSpec(orientation=orientation, origin_mm=(-25.0, -30.0, 100.0))
    datasets, geometry = make_ct_series(spec)
    k, j, i = 9, 20, 33
    lesion = factories.lesion(1, LesionType.META, (k, j, i), (0, 0, 0), geometry)
    big = factories.lesion(2, LesionType.HEM, (4, 40, 20), (2, 3, 4), geometry)
    findings = factories.findings(datasets, geometry, [lesion, big])
    uids = factories.uids(findings)
    seg = build_seg(findings, datasets, uids, algorithm)
    _gate_ok(seg, segment_masks(findings), geometry)

    stats = seg_segment_stats(encode(seg))
    assert stats[1].voxel_count == 1
    dz, dy, dx = spec.spacing_mm
    ox, oy, oz = spec.origin_mm
    by_hand = {
        "HFS": (ox + i * dx, oy + j * dy, oz + k * dz),
        "FFS": (ox - i * dx, oy + j * dy, oz - k * dz),
    }
    expected = by_hand.get(orientation, lesion.centroid_mm)
    np.testing.assert_allclose(stats[1].centroid_mm, expected, atol=1e-3)
    np.testing.assert_allclose(stats[1].centroid_mm, lesion.centroid_mm, atol=1e-3)
    # The source slice of that frame is the CT slice that holds the voxel.
    frame = next(
        item for item in seg.PerFrameFunctionalGroupsSequence
        if item.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 1
    )
    source_uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
    assert source_uid == datasets[k].SOPInstanceUID


def test_gate_rejects_a_seg_whose_mask_was_altered(findings_hfs, ct_hfs, uids_hfs, algorithm,
                                                    factories):
    datasets, geometry = ct_hfs
    altered = factories.findings(datasets, geometry)
    altered.lesions[0].mask = altered.lesions[0].mask.copy()
    altered.lesions[0].mask[2, 4, 5] = False  # one voxel less than the findings we report
    seg = build_seg(altered, datasets, uids_hfs, algorithm)
    report = check_object(seg, segment_masks(findings_hfs), geometry)
    assert not report.ok
    assert any("segment 1" in error and "voxels" in error for error in report.errors)


def test_gate_rejects_a_frame_moved_to_another_plane(findings_hfs, ct_hfs, uids_hfs, algorithm):
    datasets, geometry = ct_hfs
    seg = build_seg(findings_hfs, datasets, uids_hfs, algorithm)
    frames = [
        item for item in seg.PerFrameFunctionalGroupsSequence
        if item.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 1
    ]
    # highdicom shares one Plane Position item between the frames of a plane: copy it first.
    moved = copy.deepcopy(frames[0].PlanePositionSequence)
    moved[0].ImagePositionPatient = [float(v) - geometry.spacing_mm[0] * n for v, n in
                                     zip(moved[0].ImagePositionPatient, (0, 0, 1), strict=True)]
    frames[0].PlanePositionSequence = moved
    report = check_object(seg, segment_stats(findings_hfs), geometry)
    assert not report.ok
    assert any("segment 1: voxels per plane" in error for error in report.errors)


def test_nothing_to_segment_is_an_error(ct_hfs, factories, algorithm):
    datasets, geometry = ct_hfs
    findings = factories.findings(datasets, geometry, [])
    findings.organ_labels = np.zeros(geometry.shape, dtype=np.uint8)
    with pytest.raises(ResultsError, match="nothing to segment"):
        build_seg(findings, datasets, factories.uids(findings), algorithm)


def _shifted_series(shift_x_vox: int, **spec_kwargs):
    """A second phase on a grid shifted along x (same anatomy, other series UIDs)."""
    base = CTSeriesSpec(**spec_kwargs)
    ox, oy, oz = base.origin_mm
    spec = CTSeriesSpec(
        **{**spec_kwargs, "origin_mm": (ox + shift_x_vox * base.spacing_mm[2], oy, oz),
           "seed": "arterial", "series_description": "AP synthetic", "series_number": 2},
    )
    return make_ct_series(spec)


def test_phase_segs_identity_and_shift(findings_hfs, ct_hfs, factories, algorithm):
    datasets, geometry = ct_hfs
    uids = factories.uids(findings_hfs, phases=(Phase.VP, Phase.AP, Phase.NC))
    ap, ap_geometry = _shifted_series(3)
    nc, _ = make_ct_series(CTSeriesSpec(seed="plain", series_number=1))

    def shift(mask):  # reference x index i is phase index i - 3
        out = np.zeros_like(mask)
        out[..., :-3] = mask[..., 3:]
        return out

    segs = build_phase_segs(
        findings_hfs,
        {Phase.VP: datasets, Phase.AP: ap, Phase.NC: nc},
        {Phase.AP: shift, Phase.NC: lambda mask: mask},
        uids,
        algorithm,
    )
    assert set(segs) == {Phase.VP, Phase.AP, Phase.NC}
    reference = seg_segment_stats(encode(segs[Phase.VP].segmentation))
    for phase, result in segs.items():
        seg = result.segmentation
        _gate_ok(seg, result.expected, result.geometry)
        assert seg.SeriesInstanceUID == uids.seg[phase].series_uid
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == (
            {Phase.VP: datasets, Phase.AP: ap, Phase.NC: nc}[phase][0].SeriesInstanceUID
        )
        stats = seg_segment_stats(encode(seg))
        for number in (1, 2):  # lesions lie well inside: same patient position on every phase
            assert stats[number].voxel_count == reference[number].voxel_count
            np.testing.assert_allclose(stats[number].centroid_mm, reference[number].centroid_mm,
                                       atol=1e-6)
    assert ap_geometry.origin_mm != geometry.origin_mm


def test_phase_seg_needs_a_resampler(findings_hfs, factories, algorithm):
    ap, _ = _shifted_series(0)
    uids = factories.uids(findings_hfs, phases=(Phase.VP, Phase.AP))
    with pytest.raises(ResultsError, match="resamplers"):
        build_phase_segs(findings_hfs, {Phase.AP: ap}, {}, uids, algorithm)


def test_geometry_from_datasets_matches_the_series():
    for orientation in ("HFS", "FFS", "OBLIQUE"):
        datasets, geometry = make_ct_series(CTSeriesSpec(orientation=orientation))
        derived = geometry_from_datasets(datasets)
        assert derived.shape == geometry.shape
        np.testing.assert_allclose(derived.origin_mm, geometry.origin_mm, atol=1e-6)
        np.testing.assert_allclose(derived.direction, geometry.direction, atol=1e-6)
        np.testing.assert_allclose(derived.spacing_mm, geometry.spacing_mm, atol=1e-6)


@pytest.mark.parametrize("segmentation_type", ["BINARY", "LABELMAP"])
@pytest.mark.parametrize("orientation", ["HFS", "FFS", "OBLIQUE"])
def test_dcmqi_reads_back_the_same_voxels(segmentation_type, orientation, factories, algorithm,
                                          tmp_path: Path, request):
    if segmentation_type == "LABELMAP":
        request.getfixturevalue("labelmap_validator")
    try:
        from dicom_sr.render_check import find_segimage2itkimage

        find_segimage2itkimage()
    except ReaderMissingError:
        pytest.skip("dcmqi (segimage2itkimage) is not installed")
    datasets, geometry = make_ct_series(CTSeriesSpec(orientation=orientation))
    findings = factories.findings(datasets, geometry)
    seg = build_seg(findings, datasets, factories.uids(findings), algorithm, segmentation_type)
    path = tmp_path / "seg.dcm"
    path.write_bytes(encode(seg))
    readback = readback_on_grid(dcmqi_readback(path, tmp_path / "dcmqi"), geometry)
    ours = segment_masks(findings, segmentation_type)
    assert set(readback) == set(ours)
    for number, mask in ours.items():
        assert np.array_equal(readback[number], mask), f"segment {number} differs"
    labels = {spec.number: spec.label for spec in plan_segments(findings)}
    assert labels[1] == "HCC 1"
