"""Benchmark of the detection cascade on a synthetic 500-slice 512 x 512 study.

Run on demand (not collected by pytest); times are the best of 2-3 runs (1 for run_cascade and the
np.argmax peer):

    .venv/bin/python tests/benchmarks/bench_cascade.py [--slices 500] [--dtype float16] [--memmap DIR]

Synthetic UNet_whole output: a liver ellipsoid and ~20 spherical lesions of 0.03-110 ml, a third
of them weak (found only at f = 4), 14 probability channels; four HU phases. It reports, each next
to a peer measured in the same run:

* sensitivity scaling + argmax at f = 1 and 4 with LiverMax, slab-wise, vs one ``np.argmax`` of
  the whole array (f = 1 only);
* seg2det (components + all measurements incl. mean HU of 4 phases) vs ``scipy.ndimage.label``
  3D on the same lesion mask, and the paper-literal per-slice + union-find labelling;
* reclassification patch generation (N = 10 per lesion up to 64 ml, 4 channels) vs plain crops of
  the same number of patches, and a full reclassification pass with a no-op patch model;
* peak resident memory (``resource.getrusage``) after each stage.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.cascade import run_cascade  # noqa: E402
from pipeline.config import CascadeConfig  # noqa: E402
from pipeline.reclassify import reclassify  # noqa: E402
from pipeline.seg2det import label_lesions, label_lesions_by_slices, lesion_voxels, seg2det  # noqa: E402
from pipeline.sensitivity import iter_slabs, scaled_argmax  # noqa: E402
from pipeline.shuffle import PatchSource, ShuffleSettings, crop_padded, inference_patches  # noqa: E402
from pipeline.types import Phase, VolumeGeometry  # noqa: E402

SPACING_MM = (1.0, 0.7, 0.7)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is KiB on Linux


def timed(fn, *args, repeat: int = 1, **kwargs):
    """Result of ``fn`` and its best wall time over ``repeat`` runs."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t0)
    return out, best


def synthetic_study(slices: int, dtype: np.dtype, out: np.ndarray | None, seed: int = 0):
    """(14, Z, 512, 512) probabilities, 4 HU phases, and the lesion list used."""
    shape = (slices, 512, 512)
    rng = np.random.default_rng(seed)
    centre = np.array([slices / 2, 256, 240])
    radii = np.array([slices * 0.3, 150, 170])
    spacing = np.asarray(SPACING_MM)
    lesions: list[tuple[np.ndarray, float, int, float]] = []
    for _ in range(10000):
        if len(lesions) == 20:
            break
        r_mm = float(np.exp(rng.uniform(np.log(2.0), np.log(30.0))))
        offset = rng.uniform(-0.6, 0.6, size=3) * radii
        c = centre + offset
        apart = all(np.linalg.norm((c - o) * spacing) > 1.2 * (r_mm + r) + 3.0 for o, r, _, _ in lesions)
        if np.sum((offset / radii) ** 2) > 0.5 or not apart:
            continue
        strong = len(lesions) % 3 != 0
        lesions.append((c, r_mm, int(rng.integers(1, 7)), 0.9 if strong else 0.3))
    probs = out if out is not None else np.empty((14,) + shape, dtype=dtype)
    zz = np.arange(shape[0])[:, None, None]
    yy = np.arange(512)[None, :, None]
    xx = np.arange(512)[None, None, :]
    for zs in iter_slabs(shape[0], 32):
        z = zz[zs]
        inside = ((z - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + (
            (xx - centre[2]) / radii[2]
        ) ** 2 <= 1.0
        slab = np.full((14, zs.stop - zs.start, 512, 512), 0.005, np.float32)
        slab[0] = np.where(inside, 0.05, 0.9)
        slab[7] = np.where(inside, 0.8, 0.02)
        for c, r_mm, label, peak in lesions:
            rz, ry, rx = (r_mm / s for s in SPACING_MM)
            z0, z1 = max(int(c[0] - rz), zs.start), min(int(c[0] + rz) + 1, zs.stop)
            if z0 >= z1:
                continue
            y0, y1 = max(int(c[1] - ry), 0), min(int(c[1] + ry) + 1, 512)
            x0, x1 = max(int(c[2] - rx), 0), min(int(c[2] + rx) + 1, 512)
            d2 = (
                ((np.arange(z0, z1)[:, None, None] - c[0]) / rz) ** 2
                + ((np.arange(y0, y1)[None, :, None] - c[1]) / ry) ** 2
                + ((np.arange(x0, x1)[None, None, :] - c[2]) / rx) ** 2
            )
            p = (peak * np.clip(1.2 - d2, 0.0, 1.0)).astype(np.float32)
            box = (slice(z0 - zs.start, z1 - zs.start), slice(y0, y1), slice(x0, x1))
            slab[label][box] = np.maximum(slab[label][box], p)
            slab[7][box] = np.where(p > 0, slab[7][box] * (1 - p), slab[7][box])
        probs[:, zs] = slab
    hu = {}
    for i, phase in enumerate((Phase.NC, Phase.AP, Phase.VP, Phase.DP)):
        hu[phase] = np.full(shape, 50.0 + 20 * i, np.float32)
    return probs, hu, lesions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--memmap", type=Path, default=None, help="put the probabilities in a .npy memmap here")
    args = parser.parse_args()
    config = CascadeConfig()
    shape = (args.slices, 512, 512)
    geometry = VolumeGeometry(shape, SPACING_MM, (0.0, 0.0, 0.0))

    out = None
    if args.memmap is not None:
        args.memmap.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(args.memmap / "prob.npy", mode="w+", dtype=args.dtype, shape=(14,) + shape)
    (probs, hu, truth), t_make = timed(synthetic_study, args.slices, np.dtype(args.dtype), out)
    if out is not None:
        out.flush()
        del probs, out
        probs = np.load(args.memmap / "prob.npy", mmap_mode="r")
    print(f"study: {shape}, probabilities {args.dtype} {probs.nbytes / 1e9:.2f} GB"
          f"{' (memmap)' if args.memmap else ''}, 4 HU phases {4 * hu[Phase.VP].nbytes / 1e9:.2f} GB; "
          f"made in {t_make:.1f} s; peak RSS {peak_rss_gb():.2f} GB")  # fmt: skip

    # ---- sensitivity scaling
    factors, slab = config.sensitivity_factors, config.slab_slices
    multi, t_scaled = timed(scaled_argmax, probs, factors, slab_slices=slab, repeat=2)
    print(f"\nsensitivity: f=1 and f=4 + LiverMax, slab {config.slab_slices}: {t_scaled:.2f} s "
          f"(peak RSS now {peak_rss_gb():.2f} GB)")  # fmt: skip

    # ---- seg2det
    high = multi.label_maps[4.0]
    lesions, t_seg = timed(seg2det, high, geometry, hu, min_volume_ml=0.0, sensitivities=(4.0,), repeat=3)
    base_lesions, t_seg_base = timed(seg2det, multi.label_maps[1.0], geometry, hu, repeat=3)
    mask = lesion_voxels(high)
    (_, n_scipy), t_scipy = timed(ndimage.label, mask, repeat=3)
    _, t_fast_label = timed(label_lesions, high, repeat=3)
    literal, t_literal = timed(label_lesions_by_slices, high, repeat=3)
    print(f"\nseg2det (f=4 map, {len(lesions)} lesions, {int(mask.sum())} lesion voxels, incl. measurements "
          f"and mean HU of 4 phases): {t_seg:.2f} s; f=1 map ({len(base_lesions)} lesions): {t_seg_base:.2f} s")
    print(f"  components only (one ndimage.label with the seg2det structure on the lesion box): {t_fast_label:.2f} s")
    print(f"  peer scipy.ndimage.label 3D (6-connectivity, whole volume, {n_scipy} components): {t_scipy:.2f} s "
          f"-> ratio seg2det/peer {t_seg / t_scipy:.2f}, components-only/peer {t_fast_label / t_scipy:.2f}")
    print(f"  paper-literal per-slice labels + union-find ({literal.count} lesions): {t_literal:.2f} s "
          f"-> ratio {t_literal / t_fast_label:.2f} x the single-call labelling")
    del mask, literal

    # ---- reclassification patches
    channels = [hu[p] for p in (Phase.NC, Phase.AP, Phase.VP, Phase.DP)]
    source = PatchSource(channels, high)
    settings = ShuffleSettings.from_config(config)
    eligible = [l for l in lesions if l.volume_ml <= config.reclassify_max_volume_ml]

    def make_patches():
        count = 0
        for lesion in eligible:
            rng = np.random.default_rng([config.seed, lesion.lesion_id])
            count += len(inference_patches(source, lesion, config.inference_patches_per_lesion, settings, rng))
        return count

    n_patches, t_patches = timed(make_patches, repeat=3)

    def plain_crops():
        for lesion in eligible:
            origin = (lesion.bbox.z0 - 4, lesion.bbox.y0 - 40, lesion.bbox.x0 - 40)
            for _ in range(config.inference_patches_per_lesion):
                size = settings.patch_size_voxels
                np.stack([crop_padded(c, origin, size, 0.0, np.dtype(np.float32)) for c in channels])

    _, t_crops = timed(plain_crops, repeat=3)

    def no_op_model(batch: np.ndarray) -> np.ndarray:
        return np.zeros((batch.shape[0],) + batch.shape[2:], np.uint8)

    _, t_recls = timed(reclassify, lesions, source, no_op_model, config, geometry.voxel_volume_ml)
    print(f"\nreclassification patches: {n_patches} patches (N={config.inference_patches_per_lesion}, "
          f"{len(eligible)} lesions <= {config.reclassify_max_volume_ml:g} ml, 4 x {settings.patch_size_voxels}): "
          f"{t_patches:.2f} s = {1e3 * t_patches / max(n_patches, 1):.1f} ms/patch")
    print(f"  peer: plain padded crops of as many patches: {t_crops:.2f} s -> ratio {t_patches / t_crops:.2f}")
    print(f"  full reclassify pass with a no-op patch model (batch 8): {t_recls:.2f} s")
    del source, multi, high
    rss_ours = peak_rss_gb()

    cascade, t_cascade = timed(run_cascade, probs, hu, geometry, no_op_model, config)
    print(f"\nrun_cascade end to end (no-op patch model, every lesion dropped): {t_cascade:.2f} s "
          f"{ {k: round(v, 2) for k, v in cascade.timings_s.items()} }")
    del cascade
    print(f"peak RSS of our stages (input data included): {rss_ours:.2f} GB; after run_cascade {peak_rss_gb():.2f} GB")

    plain, t_plain = timed(np.argmax, probs, axis=0)
    print(f"\npeer np.argmax(Prob, axis=0), f=1 only, int64 output: {t_plain:.2f} s "
          f"-> ratio scaled_argmax (two factors + LiverMax) / peer {t_scaled / t_plain:.2f}; "
          f"peak RSS after the peer {peak_rss_gb():.2f} GB")
    print(f"ground-truth lesions drawn: {len(truth)}")


if __name__ == "__main__":
    main()
