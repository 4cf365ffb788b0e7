"""SR: TID 1500 content for lesions, the negative report and the failure report; each one read
back by highdicom and accepted by dciodvfy and (when installed) PixelMed's SR validator."""

from __future__ import annotations

import io
import os
from pathlib import Path

import highdicom as hd
import pytest

from dicom_sr.gate import (
    check_object,
    encode,
    find_pixelmed_jar,
    run_pixelmed_sr_validator,
)
from dicom_sr.seg import build_seg
from dicom_sr.sr import build_failure_sr, build_sr
from dicom_sr.types import ResultsError, StudyInfo
from pipeline.types import Label, PatientClass, Phase
from tests.support.dciodvfy import dciodvfy_errors


def _items(ds, code_value, scheme=None):
    """Every content item (anywhere in the tree) whose concept name has `code_value`."""
    found = []

    def walk(items):
        for item in items:
            name = item.get("ConceptNameCodeSequence")
            if name and name[0].CodeValue == code_value and (
                scheme is None or name[0].CodingSchemeDesignator == scheme
            ):
                found.append(item)
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(ds.ContentSequence)
    return found


def _code(item):
    return item.ConceptCodeSequence[0].CodeValue


def _num(item):
    return float(item.MeasuredValueSequence[0].NumericValue)


def _groups(ds):
    return _items(ds, "125007", "DCM")


def _child(group, code_value):
    return [c for c in group.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == code_value]


def _read_back(sr):
    return hd.sr.srread(io.BytesIO(encode(sr)))


@pytest.fixture(scope="module")
def seg_hfs(findings_hfs, ct_hfs, uids_hfs, algorithm):
    return build_seg(findings_hfs, ct_hfs[0], uids_hfs, algorithm)


@pytest.fixture(scope="module")
def sr_hfs(findings_hfs, ct_hfs, seg_hfs, uids_hfs, algorithm):
    return build_sr(findings_hfs, ct_hfs[0], seg_hfs, uids_hfs, algorithm)


def test_report_passes_the_gate(sr_hfs):
    report = check_object(sr_hfs)
    assert report.ok, report.errors
    assert {"read-back", "dciodvfy"} <= set(report.checks)


def test_lesion_groups_share_tracking_with_seg_segments(sr_hfs, seg_hfs, uids_hfs):
    sr = _read_back(sr_hfs)
    assert sr.SOPInstanceUID == uids_hfs.sr.instance_uid
    assert sr.SeriesInstanceUID == uids_hfs.sr.series_uid
    assert sr.StudyInstanceUID == seg_hfs.StudyInstanceUID
    assert "RESEARCH USE ONLY" in sr.SeriesDescription
    report = sr.content
    volumetric = report.get_volumetric_roi_measurement_groups()
    assert len(volumetric) == 3  # two lesions and the liver
    segments = {int(item.SegmentNumber): item for item in seg_hfs.SegmentSequence}
    for group in volumetric:
        referenced = group.referenced_segment
        assert referenced.referenced_sop_instance_uid == seg_hfs.SOPInstanceUID
        number = referenced.referenced_segment_numbers[0]
        assert group.tracking_uid == segments[number].TrackingUID
    lesion_one = report.get_volumetric_roi_measurement_groups(
        tracking_uid=uids_hfs.lesion_tracking[1]
    )[0]
    assert lesion_one.finding_type.value == "25370001"
    assert lesion_one.finding_sites[0].value.value == "10200004"
    names = {m.name.meaning for m in lesion_one.get_measurements()}
    assert {"Volume", "Long axis", "Mean Attenuation Coefficient", "Reclassification score"} <= names


def test_lesion_measurements_and_evaluations(sr_hfs, findings_hfs, uids_hfs):
    groups = {
        (_child(g, "112040")[0].UID, g.ContentTemplateSequence[0].TemplateIdentifier): g
        for g in _groups(sr_hfs)
    }
    hcc, cyst = findings_hfs.lesions
    group = groups[(uids_hfs.lesion_tracking[1], "1411")]
    volume = [i for i in _child(group, "118565006")]
    assert _num(volume[0]) == pytest.approx(hcc.volume_ml)
    assert volume[0].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "ml"
    mean_hu = _child(group, "112181")
    phases = {
        next(c for c in m.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "109058")
        .ConceptCodeSequence[0].CodeMeaning: _num(m)
        for m in mean_hu
    }
    assert phases == {"Non-contrast phase": 40.0, "Arterial phase": 120.5,
                      "Portal venous phase": 80.25}
    assert mean_hu[0].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "[hnsf'U]"
    assert _code(_child(group, "LN0001")[0]) == "21594007"  # malignant
    assert _code(_child(group, "111012")[0]) == "LN0002"  # certain
    cyst_group = groups[(uids_hfs.lesion_tracking[2], "1411")]
    assert _code(_child(cyst_group, "LN0001")[0]) == "30807003"  # benign
    assert _code(_child(cyst_group, "111012")[0]) == "LN0003"  # suspicious
    assert _num(_child(group, "LN0004")[0]) == pytest.approx(2.5)
    algorithm_names = [i.TextValue for i in _child(group, "111001")]
    assert algorithm_names == ["livernode-cascade"]
    parameters = {i.TextValue for i in _child(group, "111002")}
    assert parameters == {"sensitivity_base=1", "sensitivity_high=4"}


def test_planar_group_draws_the_long_axis_on_the_key_slice(sr_hfs, ct_hfs, uids_hfs):
    datasets, geometry = ct_hfs
    planar = [
        g for g in _groups(sr_hfs)
        if g.ContentTemplateSequence[0].TemplateIdentifier == "1410"
        and _child(g, "112040")[0].UID == uids_hfs.lesion_tracking[1]
    ]
    assert len(planar) == 1
    region = _child(planar[0], "111030")[0]
    assert region.GraphicType == "POLYLINE"
    points = [float(v) for v in region.GraphicData]
    assert len(points) == 4
    source = region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    # HCC of the fixture: centre (5, 26, 16), radii (2, 4, 5): widest on slice 5, along x.
    assert source == datasets[5].SOPInstanceUID
    length = _num(_child(planar[0], "103339001")[0])
    assert length == pytest.approx(10 * geometry.spacing_mm[2])
    assert abs(points[0] - points[2]) * geometry.spacing_mm[2] == pytest.approx(length)


def test_patient_level_findings(sr_hfs, findings_hfs, uids_hfs):
    container = _items(sr_hfs, "C0034375", "UMLS")
    assert len(container) == 1
    statements = {c.ConceptNameCodeSequence[0].CodeValue: _code(c) for c in container[0].ContentSequence}
    assert statements == {
        "111017": "111242",  # all algorithms succeeded; with findings
        "LN0010": "25370001",  # class at base sensitivity: HCC
        "LN0011": "25370001",
        "LN0012": "25370001",  # joint verdict: HCC (certain)
    }
    liver = [
        g for g in _groups(sr_hfs)
        if _child(g, "112040")[0].UID == uids_hfs.organ_tracking[int(Label.LIVER)]
    ][0]
    assert _num(_child(liver, "LN0020")[0]) == 2
    lesion_ml = sum(lesion.volume_ml for lesion in findings_hfs.lesions)
    assert _num(_child(liver, "LN0021")[0]) == pytest.approx(lesion_ml)
    liver_voxels = int((findings_hfs.organ_labels == Label.LIVER).sum())
    assert _num(_child(liver, "118565006")[0]) == pytest.approx(
        liver_voxels * findings_hfs.geometry.voxel_volume_ml
    )
    burden = _num(_child(liver, "LN0022")[0])
    assert 0.0 < burden < 100.0
    assert _num(_child(liver, "LN0041")[0]) == pytest.approx(0.1)  # LiverMax HCC
    schemes = {item.CodingSchemeDesignator for item in sr_hfs.CodingSchemeIdentificationSequence}
    assert "99LIVERNODE" in schemes


def test_uncertain_verdict_is_indeterminate(ct_hfs, factories, algorithm):
    datasets, geometry = ct_hfs
    findings = factories.findings(datasets, geometry)
    findings.class_base = PatientClass.CYST
    uids = factories.uids(findings)
    seg = build_seg(findings, datasets, uids, algorithm)
    sr = build_sr(findings, datasets, seg, uids, algorithm)
    joint = _items(sr, "LN0012")[0]
    assert _code(joint) == "82334004"
    assert _code(_items(sr, "LN0010")[0]) == "367643001"


def test_negative_report_says_no_lesion(ct_hfs, factories, algorithm):
    datasets, geometry = ct_hfs
    findings = factories.findings(datasets, geometry, [])
    uids = factories.uids(findings)
    seg = build_seg(findings, datasets, uids, algorithm)
    sr = build_sr(findings, datasets, seg, uids, algorithm)
    report = check_object(sr)
    assert report.ok, report.errors
    statements = {c.ConceptNameCodeSequence[0].CodeValue: _code(c)
                  for c in _items(sr, "C0034375")[0].ContentSequence}
    assert statements["111017"] == "111241"  # all algorithms succeeded; without findings
    assert statements["52988006"] == "272519000"  # Lesion: Absent
    assert statements["LN0012"] == "17621005"  # Normal
    assert _num(_items(sr, "LN0020")[0]) == 0
    assert not _items(sr, "121191")[1:]  # only the liver segment is referenced
    # No organ either: still an explicit negative report, without a SEG.
    findings.organ_labels[:] = 0
    sr = build_sr(findings, datasets, None, uids, algorithm)
    assert check_object(sr).ok
    assert _code(_items(sr, "52988006")[0]) == "272519000"


def test_lesions_need_a_seg_of_the_same_findings(findings_hfs, ct_hfs, uids_hfs, algorithm,
                                                 factories):
    datasets, geometry = ct_hfs
    with pytest.raises(ResultsError, match="SEG is needed"):
        build_sr(findings_hfs, datasets, None, uids_hfs, algorithm)
    other = factories.findings(datasets, geometry)
    other_uids = factories.uids(other, model=factories.model.__class__("other", "9"))
    foreign = build_seg(other, datasets, other_uids, algorithm)
    with pytest.raises(ResultsError, match="segment 1"):
        build_sr(findings_hfs, datasets, foreign, uids_hfs, algorithm)


@pytest.mark.parametrize("with_images", [True, False])
def test_failure_report(ct_hfs, factories, algorithm, with_images, tmp_path: Path):
    datasets, geometry = ct_hfs
    findings = factories.findings(datasets, geometry, [])
    uids = factories.uids(findings)
    reason = "no portal venous series found (phases seen: NC, AP)"
    study = datasets if with_images else StudyInfo.from_dataset(datasets[0])
    sr = build_failure_sr(study, reason, uids, algorithm)
    report = check_object(sr)
    assert report.ok, report.errors
    path = tmp_path / "failure.dcm"
    path.write_bytes(encode(sr))
    assert dciodvfy_errors(path) == []  # the shared test helper agrees with the gate
    container = _items(sr, "C0034375")[0]
    statements = {c.ConceptNameCodeSequence[0].CodeValue: c for c in container.ContentSequence}
    assert _code(statements["LN0031"]) == "LN0032"  # analysis status: not analysed
    assert statements["LN0031"].ConceptCodeSequence[0].CodeMeaning == "Not analysed"
    assert _code(statements["111017"]) == "111245"  # no algorithms succeeded
    assert statements["LN0030"].TextValue == reason
    assert not _items(sr, "121191")  # nothing is claimed about any region
    assert sr.PatientID == datasets[0].PatientID
    assert sr.StudyInstanceUID == datasets[0].StudyInstanceUID
    if with_images:
        assert len(sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
                   .ReferencedSOPSequence) == len(datasets)
    else:
        assert "CurrentRequestedProcedureEvidenceSequence" not in sr
    with pytest.raises(ResultsError, match="reason"):
        build_failure_sr(study, "  ", uids, algorithm)


@pytest.mark.slow
@pytest.mark.peer
@pytest.mark.parametrize("kind", ["lesions", "negative", "failure"])
def test_pixelmed_accepts_the_report(kind, sr_hfs, ct_hfs, factories, algorithm, tmp_path: Path):
    """PixelMed's template validator (about 7 s a report, so the negative and failure reports,
    whose structure the lesion report shares, run only with LIVERNODE_FULL_VALIDATION=1)."""
    if find_pixelmed_jar() is None:
        pytest.skip("PixelMed (Debian pixelmed-apps) and java are not installed")
    if kind != "lesions" and not os.environ.get("LIVERNODE_FULL_VALIDATION"):
        pytest.skip("set LIVERNODE_FULL_VALIDATION=1 to validate every report with PixelMed")
    datasets, geometry = ct_hfs
    negative = factories.findings(datasets, geometry, [])
    uids = factories.uids(negative)
    if kind == "lesions":
        sr = sr_hfs
    elif kind == "negative":
        seg = build_seg(negative, datasets, uids, algorithm)
        sr = build_sr(negative, datasets, seg, uids, algorithm)
    else:
        sr = build_failure_sr(StudyInfo.from_dataset(datasets[0]), "timeout", uids, algorithm)
    path = tmp_path / f"{kind}.dcm"
    path.write_bytes(encode(sr))
    output = run_pixelmed_sr_validator(path)
    assert not output.errors, output.errors


def test_phases_keep_their_order_in_the_report(sr_hfs):
    phases = [
        next(c for c in m.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "109058")
        .ConceptCodeSequence[0].CodeValue
        for m in _items(sr_hfs, "112181")[:3]
    ]
    assert phases == ["LN0051", "LN0052", "LN0053"]
    assert Phase.NC.value == "NC"
