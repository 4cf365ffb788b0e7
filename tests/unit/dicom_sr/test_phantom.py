"""SEG of a phantom study written by `pipeline.phantom` (another module's DICOM writer, a
feet-first series): it lands on the phantom's own ground truth. Skipped if the phantom
generator is not available."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_sr.gate import check_object, encode, seg_segment_stats
from dicom_sr.geometry import centroid_offset_voxels
from dicom_sr.seg import build_seg, segment_masks
from pipeline.types import (
    BoundingBox,
    Findings,
    Lesion,
    PatientClass,
    Phase,
    VolumeGeometry,
)

phantom = pytest.importorskip("pipeline.phantom")
sitk = pytest.importorskip("SimpleITK")


def _read_truth(path: Path) -> tuple[np.ndarray, VolumeGeometry]:
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    geometry = VolumeGeometry(
        shape=tuple(int(v) for v in array.shape),  # type: ignore[arg-type]
        spacing_mm=tuple(float(v) for v in image.GetSpacing()[::-1]),  # type: ignore[arg-type]
        origin_mm=tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in image.GetDirection()),
    )
    return array, geometry


def test_seg_of_a_feet_first_phantom_matches_its_truth(tmp_path: Path, factories, algorithm):
    study = phantom.write_phantom_study(
        tmp_path, seed=5, phases=(Phase.VP,), slices=16, slice_thickness_mm=5.0,
        feet_first=True, rows=96, columns=96, noise=False,
    )
    datasets = [pydicom.dcmread(p) for p in sorted(study.series_dirs[Phase.VP].iterdir())]
    labels, geometry = _read_truth(study.label_path)
    instances, _ = _read_truth(study.instances_path)
    lesions = []
    for truth in study.lesions:
        where = np.argwhere(instances == truth.lesion_id)
        low, high = where.min(axis=0), where.max(axis=0) + 1
        box = BoundingBox(int(low[0]), int(high[0]), int(low[1]), int(high[1]), int(low[2]),
                          int(high[2]))
        mask = instances[box.slices] == truth.lesion_id
        lesions.append(Lesion(truth.lesion_id, truth.lesion_type, box, mask, int(mask.sum()),
                              truth.volume_ml, truth.longest_axial_diameter_mm,
                              tuple(truth.centroid_mm), dict(truth.mean_hu)))
    assert lesions, "the phantom of this seed has lesions"
    findings = Findings(
        study_uid=study.study_uid,
        reference_series_uid=study.series_uids[Phase.VP],
        geometry=geometry,
        lesions=lesions,
        organ_labels=np.where(labels >= 7, labels, 0).astype(np.uint8),
        class_base=PatientClass.HCC,
        class_high=PatientClass.HCC,
        livermax={},
        model=factories.model,
    )
    uids = factories.uids(findings)
    seg = build_seg(findings, datasets, uids, algorithm)
    report = check_object(seg, segment_masks(findings), geometry)
    assert report.ok, report.errors
    stats = seg_segment_stats(encode(seg))
    for number, truth in enumerate(sorted(study.lesions, key=lambda t: t.lesion_id), start=1):
        offset = centroid_offset_voxels(geometry, stats[number].centroid_mm, truth.centroid_mm)
        assert offset.max() <= 0.5, (truth.lesion_id, offset)
