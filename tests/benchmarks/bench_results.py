"""Benchmark of the DICOM results: SEG and SR build time and size, against dcmqi.

Run on demand (not collected by pytest):

    .venv/bin/python tests/benchmarks/bench_results.py [--slices 60 300] [--repeat 2]

A synthetic 512 x 512 venous series of 60 and 300 slices, with every organ/vessel class of the
label set (labels 7-13: liver, hepatic vessels, portal/splenic vein, gallbladder, spleen,
pancreas, stomach) and 10 lesions inside the liver (so lesions overlap the liver label).

Measured for BINARY and LABELMAP:
* ours: `build_seg` from in-memory Findings + source headers, then encoding to a Part 10 file;
  the gate (`check_object`: encoding, read-back, dciodvfy, geometry self-check) and, apart,
  the expected per-segment statistics it compares with (`segment_stats`);
* peer: dcmqi `itkimage2segimage` (C++/DCMTK) on the same masks (two NRRD label images: organs,
  lesions), the same CT folder, the same segment codes; its wall time includes reading its
  inputs from disk, ours does not include making the in-memory inputs;
* `build_sr` (10 lesions, TID 1410 + 1411 per lesion) and its file size.
The ratio is ours / dcmqi (below 1: we are faster / smaller).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dicom_sr.gate import check_object, encode  # noqa: E402
from dicom_sr.seg import build_seg, plan_segments, segment_stats  # noqa: E402
from dicom_sr.sr import build_sr  # noqa: E402
from dicom_sr.types import AlgorithmInfo  # noqa: E402
from node.identity import config_digest, derive_result_uids  # noqa: E402
from pipeline.types import (  # noqa: E402
    BoundingBox,
    Findings,
    Label,
    Lesion,
    LesionType,
    ModelIdentity,
    PatientClass,
    Phase,
    VolumeGeometry,
)
from tests.support.ct_series import CTSeriesSpec, make_ct_series, write_series  # noqa: E402

MODEL = ModelIdentity("livernode-cascade", "bench", "00" * 32)


def _ellipsoid(shape, center, radii):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (((z - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2
            + ((x - center[2]) / radii[2]) ** 2) <= 1.0


def synthetic_findings(datasets, geometry: VolumeGeometry) -> Findings:
    """Seven organ classes and ten lesions of 5-15 voxel radius in the liver."""
    n_z, n_y, n_x = geometry.shape
    organs = np.zeros(geometry.shape, dtype=np.uint8)
    organs[_ellipsoid(geometry.shape, (n_z * 0.5, 230, 170), (n_z * 0.42, 120, 110))] = Label.LIVER
    organs[_ellipsoid(geometry.shape, (n_z * 0.5, 300, 370), (n_z * 0.3, 70, 55))] = Label.SPLEEN
    organs[_ellipsoid(geometry.shape, (n_z * 0.4, 190, 330), (n_z * 0.25, 60, 70))] = Label.STOMACH
    organs[_ellipsoid(geometry.shape, (n_z * 0.3, 300, 260), (n_z * 0.12, 25, 90))] = Label.PANCREAS
    organs[_ellipsoid(geometry.shape, (n_z * 0.3, 300, 150), (n_z * 0.1, 20, 20))] = Label.GALLBLADDER
    organs[_ellipsoid(geometry.shape, (n_z * 0.45, 260, 250), (n_z * 0.2, 8, 60))] = (
        Label.PORTAL_SPLENIC_VEIN
    )
    vessels = _ellipsoid(geometry.shape, (n_z * 0.55, 230, 170), (n_z * 0.3, 5, 80))
    organs[vessels & (organs == Label.LIVER)] = Label.HEPATIC_VESSELS
    rng = np.random.default_rng(7)
    lesions = []
    types = list(LesionType)
    for lesion_id in range(1, 11):
        r = int(rng.integers(5, 16))
        rz = max(1, int(round(r * geometry.spacing_mm[2] / geometry.spacing_mm[0])))
        cz = int(rng.integers(int(n_z * 0.2) + rz, int(n_z * 0.8) - rz))
        cy = int(rng.integers(180, 280))
        cx = int(rng.integers(100, 240))
        box = BoundingBox(cz - rz, cz + rz + 1, cy - r, cy + r + 1, cx - r, cx + r + 1)
        mask = _ellipsoid(box.shape, (rz, r, r), (max(rz, 0.5), r, r))
        count = int(mask.sum())
        centroid = geometry.index_to_patient(np.argwhere(mask).mean(axis=0) + [box.z0, box.y0, box.x0])[0]
        lesions.append(Lesion(lesion_id, types[lesion_id % 6], box, mask, count,
                              count * geometry.voxel_volume_ml, 2 * r * geometry.spacing_mm[2],
                              tuple(float(v) for v in centroid),
                              {Phase.NC: 40.0, Phase.AP: 90.0, Phase.VP: 70.0},
                              certain=bool(lesion_id % 2), reclassification_score_ml=1.0))
    return Findings(
        study_uid=str(datasets[0].StudyInstanceUID),
        reference_series_uid=str(datasets[0].SeriesInstanceUID),
        geometry=geometry, lesions=lesions, organ_labels=organs,
        class_base=PatientClass.HCC, class_high=PatientClass.HCC,
        livermax={t: 0.5 for t in LesionType}, model=MODEL,
    )


def _code_json(code) -> dict:
    return {"CodeValue": code.value, "CodingSchemeDesignator": code.scheme_designator,
            "CodeMeaning": code.meaning}


def dcmqi_inputs(findings: Findings, work: Path, seg_type: str) -> tuple[list[Path], Path]:
    """NRRD label images and dcmqi's metadata JSON, with the same codes as ours: for BINARY two
    images (organs; lesions, which overlap the liver), for LABELMAP our label map (lesions
    over organs)."""
    import SimpleITK as sitk

    geometry = findings.geometry
    specs = plan_segments(findings)
    organ_map = np.zeros(geometry.shape, dtype=np.uint8)
    lesion_map = np.zeros(geometry.shape, dtype=np.uint8)
    lesions = {lesion.lesion_id: lesion for lesion in findings.lesions}
    for spec in specs:
        if spec.organ_label is not None:
            organ_map[findings.organ_labels == spec.organ_label] = spec.number
        else:
            view = lesion_map[lesions[spec.lesion_id].bbox.slices]
            view[lesions[spec.lesion_id].mask] = spec.number
    if seg_type == "LABELMAP":
        merged = np.where(lesion_map != 0, lesion_map, organ_map)
        inputs = [("labelmap", merged, list(specs))]
    else:
        inputs = [("organs", organ_map, [s for s in specs if s.organ_label]),
                  ("lesions", lesion_map, [s for s in specs if s.lesion_id])]
    paths = []
    groups = []
    for name, array, chosen in inputs:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(tuple(float(v) for v in geometry.spacing_mm[::-1]))
        image.SetOrigin(geometry.origin_mm)
        image.SetDirection(geometry.direction)
        path = work / f"{seg_type}_{name}.nrrd"
        sitk.WriteImage(image, str(path), True)
        paths.append(path)
        groups.append([
            {
                "labelID": spec.number,
                "SegmentLabel": spec.label,
                "SegmentAlgorithmType": "AUTOMATIC",
                "SegmentAlgorithmName": "livernode-cascade",
                "SegmentedPropertyCategoryCodeSequence": _code_json(spec.coding.category),
                "SegmentedPropertyTypeCodeSequence": _code_json(spec.coding.type),
                "recommendedDisplayRGBValue": list(spec.coding.rgb),
            }
            for spec in chosen
        ])
    meta = {
        "ContentCreatorName": "livernode^bench",
        "ClinicalTrialSeriesID": "1",
        "ClinicalTrialTimePointID": "1",
        "SeriesDescription": "dcmqi peer",
        "SeriesNumber": "9901",
        "InstanceNumber": "1",
        "BodyPartExamined": "ABDOMEN",
        "segmentAttributes": groups,
        "ContentLabel": "DCMQI",
        "ContentDescription": "peer",
    }
    meta_path = work / f"{seg_type}_meta.json"
    meta_path.write_text(json.dumps(meta))
    return paths, meta_path


def run_dcmqi(images: list[Path], meta: Path, ct_dir: Path, out: Path, seg_type: str) -> float:
    tool = Path(sys.executable).parent / "itkimage2segimage"
    command = [str(tool), "--inputImageList", ",".join(str(p) for p in images),
               "--inputDICOMDirectory", str(ct_dir), "--inputMetadata", str(meta),
               "--outputDICOM", str(out), "--segmentationType", seg_type.lower()]
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"itkimage2segimage failed: {completed.stdout[-1500:]} {completed.stderr[-1500:]}")
    return elapsed


def best_of(repeat: int, function):
    best, result = None, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
    return best, result


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench(slices: int, repeat: int, work: Path) -> list[dict]:
    datasets, geometry = make_ct_series(
        CTSeriesSpec(rows=512, cols=512, slices=slices, spacing_mm=(5.0 if slices <= 60 else 1.0,
                                                                    0.7, 0.7),
                     origin_mm=(-180.0, -180.0, 0.0), seed=f"bench-{slices}")
    )
    findings = synthetic_findings(datasets, geometry)
    uids = derive_result_uids([findings.reference_series_uid], MODEL, config_digest({}),
                              [lesion.lesion_id for lesion in findings.lesions])
    algorithm = AlgorithmInfo.from_model(MODEL, (1.0, 4.0))
    ct_dir = work / f"ct{slices}"
    write_series(datasets, ct_dir)
    for ds in datasets:  # the node has headers in memory, not pixels
        del ds.PixelData
    rows = []
    n_segments = len(plan_segments(findings))
    for seg_type in ("BINARY", "LABELMAP"):
        build_s, seg = best_of(repeat, lambda t=seg_type: build_seg(findings, datasets, uids, algorithm, t))
        encode_s, data = best_of(repeat, lambda s=seg: encode(s))
        stats_s, expected = best_of(1, lambda t=seg_type: segment_stats(findings, t))
        gate_start = time.perf_counter()
        report = check_object(seg, expected, geometry)
        gate_s = time.perf_counter() - gate_start
        images, meta = dcmqi_inputs(findings, work, seg_type)
        peer_out = work / f"dcmqi_{slices}_{seg_type}.dcm"
        peer_s = min(run_dcmqi(images, meta, ct_dir, peer_out, seg_type) for _ in range(repeat))
        peer_bytes = peer_out.stat().st_size
        ours_s = build_s + encode_s
        rows.append({
            "object": f"SEG {seg_type}", "slices": slices, "segments": n_segments,
            "frames": int(seg.NumberOfFrames), "build_s": build_s, "encode_s": encode_s,
            "ours_s": ours_s, "gate_s": gate_s, "expected_stats_s": stats_s, "gate_ok": report.ok,
            "size_mb": len(data) / 1e6,
            "dcmqi_s": peer_s, "dcmqi_size_mb": peer_bytes / 1e6,
            "time_ratio": ours_s / peer_s, "size_ratio": len(data) / peer_bytes,
            "peak_rss_mb": peak_rss_mb(),
        })
        print(_row(rows[-1]), flush=True)
    seg = build_seg(findings, datasets, uids, algorithm)
    sr_s, sr = best_of(repeat, lambda: build_sr(findings, datasets, seg, uids, algorithm))
    sr_bytes = len(encode(sr))
    gate_start = time.perf_counter()
    ok = check_object(sr).ok
    rows.append({"object": "SR", "slices": slices, "segments": len(findings.lesions),
                 "build_s": sr_s, "size_mb": sr_bytes / 1e6, "gate_s": time.perf_counter() - gate_start,
                 "gate_ok": ok, "peak_rss_mb": peak_rss_mb()})
    print(_row(rows[-1]), flush=True)
    return rows


def _row(row: dict) -> str:
    if row["object"] == "SR":
        state = "ok" if row["gate_ok"] else "REJECTED"
        return (f"| SR (10 lesions) | {row['slices']} | {row['build_s']:.2f} s | - | "
                f"{row['size_mb']:.3f} MB | - | - | {row['gate_s']:.2f} s ({state}) |")
    return (f"| {row['object']} ({row['segments']} segments, {row['frames']} frames) | {row['slices']} | "
            f"{row['ours_s']:.2f} s (build {row['build_s']:.2f} + write {row['encode_s']:.2f}) | "
            f"{row['dcmqi_s']:.2f} s | {row['size_mb']:.1f} MB | {row['dcmqi_size_mb']:.1f} MB | "
            f"time x{row['time_ratio']:.2f}, size x{row['size_ratio']:.2f} | "
            f"{row['gate_s']:.2f} s + stats {row['expected_stats_s']:.2f} s "
            f"({'ok' if row['gate_ok'] else 'REJECTED'}) |")


def main() -> int:
    parser = argparse.ArgumentParser(description="SEG/SR build benchmark against dcmqi")
    parser.add_argument("--slices", type=int, nargs="+", default=[60, 300])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    print("| object | slices | ours (build + write) | dcmqi itkimage2segimage | our size | "
          "dcmqi size | ours / dcmqi | gate |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory(prefix="livernode-bench-") as scratch:
        for slices in args.slices:
            rows += bench(slices, args.repeat, Path(scratch))
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
