"""Benchmark of the ingest stage on phantom studies (run on demand, not part of the test run).

    .venv/bin/python tests/benchmarks/bench_ingest.py [--seed 3] [--large] [--work DIR]

1. A 4-phase 512x512x60 phantom (5 mm): load time of every series, ours (`scan_files` +
   `load_series`) against SimpleITK's ImageSeriesReader (GDCM) as the peer (ratio, best of 3);
   phase identification time and result; registration time per phase; mean distance between
   corresponding liver and lesion centroids of each phase and the venous phase, before and after
   registration (phase ground-truth labels mapped onto the venous grid with the same transform).
2. With --large: a 2-phase 512x512x400 (1 mm) phantom, load time against the peer.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.config import RegistrationConfig  # noqa: E402
from pipeline.phantom import write_phantom_study  # noqa: E402
from pipeline.phases import identify_phases  # noqa: E402
from pipeline.registration import register_study, resample_to_reference_grid  # noqa: E402
from pipeline.series import load_series, scan_files  # noqa: E402
from pipeline.types import Label, Phase, VolumeGeometry  # noqa: E402

LESION_LABELS = tuple(range(1, 7))


def best_of(runs: int, func):
    best, result = float("inf"), None
    for _ in range(runs):
        started = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - started)
    return best, result


def ours(series_dir: Path):
    scan = scan_files([series_dir])
    return load_series(scan.series[0])


def peer(series_dir: Path):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series_dir)))
    return reader.Execute()


def compare_load(series_dirs: dict[Phase, Path], runs: int = 3) -> dict:
    rows = {}
    for phase, directory in series_dirs.items():
        ours_s, loaded = best_of(runs, lambda d=directory: ours(d))
        peer_s, image = best_of(runs, lambda d=directory: peer(d))
        same = np.array_equal(loaded.hu, sitk.GetArrayFromImage(image).astype(np.float32))
        rows[phase.value] = {"ours_s": ours_s, "simpleitk_s": peer_s, "ratio": ours_s / peer_s, "identical_hu": same}
        print(f"  load {phase.value}: ours {ours_s:.2f} s, SimpleITK {peer_s:.2f} s, ratio {ours_s / peer_s:.2f}, identical HU: {same}")
    return rows


def labels_on(path: Path, geometry: VolumeGeometry) -> np.ndarray:
    """A ground-truth NIfTI label map resampled (nearest) onto `geometry`."""
    image = sitk.ReadImage(str(path))
    reference = sitk.Image([int(v) for v in reversed(geometry.shape)], sitk.sitkUInt8)
    reference.SetSpacing(tuple(reversed(geometry.spacing_mm)))
    reference.SetOrigin(geometry.origin_mm)
    reference.SetDirection(geometry.direction)
    return sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0))


def centroid(mask: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    return geometry.index_to_patient(np.argwhere(mask).mean(axis=0))[0]


def lesion_centroids(labels: np.ndarray, geometry: VolumeGeometry) -> list[np.ndarray]:
    components, count = ndimage.label(np.isin(labels, LESION_LABELS))
    return [centroid(components == i, geometry) for i in range(1, count + 1) if (components == i).sum() >= 20]


def alignment(root: Path, study, geometry: VolumeGeometry, shifts: dict) -> dict:
    vp_labels = labels_on(root / "truth" / "phase_labels" / "VP.nii.gz", geometry)
    vp_liver = centroid(vp_labels == int(Label.LIVER), geometry)
    vp_lesions = lesion_centroids(vp_labels, geometry)
    out = {}
    for phase in study.phases:
        if phase is study.reference_phase:
            continue
        own = labels_on(root / "truth" / "phase_labels" / f"{phase.value}.nii.gz", study.mappings[phase].source_geometry)
        mapped = resample_to_reference_grid(own, study, phase)
        shift = np.asarray(shifts[phase.value])
        rows = {"liver": [], "lesions": []}
        for name, arr in (("before", own), ("after", mapped)):
            rows["liver"].append(float(np.linalg.norm(centroid(arr == int(Label.LIVER), geometry) - vp_liver)))
        before_c = lesion_centroids(own, geometry)
        after_c = lesion_centroids(mapped, geometry)
        lesion_rows = []
        for c in vp_lesions:
            if not before_c or not after_c:
                break
            b = min(before_c, key=lambda p: np.linalg.norm(p - (c + shift)))
            a = min(after_c, key=lambda p: np.linalg.norm(p - c))
            lesion_rows.append((float(np.linalg.norm(b - c)), float(np.linalg.norm(a - c))))
        out[phase.value] = {
            "liver_before_mm": rows["liver"][0],
            "liver_after_mm": rows["liver"][1],
            "lesion_before_mm": float(np.mean([r[0] for r in lesion_rows])) if lesion_rows else None,
            "lesion_after_mm": float(np.mean([r[1] for r in lesion_rows])) if lesion_rows else None,
            "lesions": len(lesion_rows),
        }
        print(
            f"  {phase.value}: liver centroid {rows['liver'][0]:.2f} -> {rows['liver'][1]:.2f} mm; "
            f"lesions ({len(lesion_rows)}) {out[phase.value]['lesion_before_mm']} -> {out[phase.value]['lesion_after_mm']} mm"
        )
    return out


def run_four_phase(work: Path, seed: int) -> dict:
    root = work / f"phantom4_seed{seed}"
    started = time.perf_counter()
    written = write_phantom_study(root, seed=seed)
    print(f"4-phase 512x512x60 phantom written in {time.perf_counter() - started:.1f} s")
    result: dict = {"load": compare_load(written.series_dirs)}
    started = time.perf_counter()
    scan = scan_files([root / "dicom"])
    assignment = identify_phases(scan.series)
    result["phase_identification_s"] = time.perf_counter() - started
    result["phases_correct"] = all(
        info.series_uid == written.series_uids[phase] for phase, info in assignment.chosen.items()
    ) and set(assignment.chosen) == set(written.series_uids)
    print(f"  phases identified in {result['phase_identification_s']:.2f} s, correct: {result['phases_correct']}")
    volumes = {phase: load_series(info).to_phase_volume(phase) for phase, info in assignment.chosen.items()}
    started = time.perf_counter()
    study = register_study(volumes, RegistrationConfig(), study_uid=written.study_uid)
    result["registration_total_s"] = time.perf_counter() - started
    result["registration"] = {
        q.phase.value: {"seconds": study.mappings[q.phase].seconds, "ncc_before": q.before, "ncc_after": q.after,
                        "used_registered": q.used_registered}
        for q in study.registration
    }
    for phase, row in result["registration"].items():
        print(f"  register {phase}: {row['seconds']:.1f} s, NCC {row['ncc_before']:.3f} -> {row['ncc_after']:.3f}")
    shifts = json.loads(written.lesions_path.read_text())["phase_shifts_mm"]
    result["alignment"] = alignment(root, study, volumes[Phase.VP].geometry, shifts)
    rows = result["alignment"].values()
    for key in ("liver_before_mm", "liver_after_mm", "lesion_before_mm", "lesion_after_mm"):
        values = [r[key] for r in rows if r[key] is not None]
        result[f"mean_{key}"] = float(np.mean(values)) if values else None
    print(
        f"  mean liver centroid distance {result['mean_liver_before_mm']:.2f} -> {result['mean_liver_after_mm']:.2f} mm, "
        f"lesions {result['mean_lesion_before_mm']} -> {result['mean_lesion_after_mm']} mm"
    )
    return result


def run_large(work: Path, seed: int) -> dict:
    root = work / f"phantom2_400_seed{seed}"
    started = time.perf_counter()
    written = write_phantom_study(root, seed=seed, phases=(Phase.AP, Phase.VP), slices=400, slice_thickness_mm=1.0)
    print(f"2-phase 512x512x400 phantom written in {time.perf_counter() - started:.1f} s")
    return {"load": compare_load(written.series_dirs, runs=2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--large", action="store_true", help="also the 2-phase 512x512x400 load")
    parser.add_argument("--work", type=Path, default=None, help="folder for the phantoms (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        figures = {"four_phase": run_four_phase(work, args.seed)}
        if args.large:
            figures["large"] = run_large(work, args.seed)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
