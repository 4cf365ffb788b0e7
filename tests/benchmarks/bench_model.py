"""Inference time and peak memory of UNet_whole (one pass) and of the reclassification of 10
lesions, against a plain MONAI ``sliding_window_inference`` of the same network on the same input.

    .venv/bin/python tests/benchmarks/bench_model.py [--sizes 60x5,300x1] [--repeats 3]

For each study size (4 phases, 512 x 512, slices x thickness mm) the parent generates a phantom,
prepares the network input on the model's working grid once (timed: `prepare_input`) and saves it;
every measurement then runs in its own child process so that its peak RSS is its own:

* ``ours``: livernode's ``WholePredictor`` (body crop, Gaussian sliding window, bfloat16 autocast
  where the CPU has AMX/AVX512-BF16, float16 probabilities), as ``livernode process`` runs it;
* ``ours-fp32``: the same with ``precision: float32``;
* ``monai``: ``sliding_window_inference(image, roi, 1, network, overlap=0.25, mode="gaussian")`` on
  the whole working-grid volume in float32, then softmax: the plain peer;
* ``recls``/``recls-monai``: reclassification of 10 lesions (the study's true lesions, repeated
  to 10) with ``pipeline.reclassify`` and the bundled UNet_patch, against the same patches run one
  by one through ``sliding_window_inference``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

BUNDLED = Path(__file__).resolve().parents[2] / "pipeline" / "models" / "phantom-demo"
KINDS = ("ours", "ours-fp32", "monai", "recls", "recls-monai")


def _prepare(slices: int, thickness: float, seed: int, out: Path) -> dict:
    from pipeline.inference import prepare_input, resample_volume
    from pipeline.model import read_model_card
    from pipeline.phantom import make_phantom
    from pipeline.types import PHASE_ORDER

    prep = read_model_card(BUNDLED).preprocessing
    volumes = make_phantom(seed, phases=PHASE_ORDER, slices=slices, slice_thickness_mm=thickness, rows=512,
                           columns=512, motion="residual")
    started = time.perf_counter()
    model_input = prepare_input(volumes.hu, volumes.geometry, prep)
    prepare_s = time.perf_counter() - started
    labels = resample_volume(volumes.labels.astype(np.uint8), model_input.geometry.shape, mode="nearest")
    g = model_input.geometry
    np.savez(out, image=model_input.image, labels=labels, shape=np.array(g.shape), spacing=np.array(g.spacing_mm),
             origin=np.array(g.origin_mm), direction=np.array(g.direction))
    return {"prepare_s": prepare_s, "working_shape": list(g.shape)}


def _load(path: Path):
    from pipeline.inference import ModelInput
    from pipeline.types import PHASE_ORDER, VolumeGeometry

    data = np.load(path)
    geometry = VolumeGeometry(tuple(int(v) for v in data["shape"]), tuple(float(v) for v in data["spacing"]),
                              tuple(float(v) for v in data["origin"]), tuple(float(v) for v in data["direction"]))
    image = data["image"]
    hu = {p: image[i] * 100.0 + 100.0 for i, p in enumerate(PHASE_ORDER)}
    return ModelInput(image=image, hu=hu, geometry=geometry, present=PHASE_ORDER), data["labels"]


def _ten_lesions(labels: np.ndarray, geometry):
    from pipeline.seg2det import seg2det

    truth = seg2det(labels, geometry)
    if not truth:
        raise SystemExit("the phantom has no lesion; pick another --seed")
    return [replace(truth[i % len(truth)], lesion_id=i + 1) for i in range(10)]


def _peak_rss_mb() -> float:
    """This process's peak RSS since its exec (VmHWM; ru_maxrss would carry the parent's peak over
    fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _child(kind: str, data_path: Path, repeats: int) -> dict:
    import torch
    from monai.inferers import sliding_window_inference

    from pipeline.backends import CardBackend
    from pipeline.config import CascadeConfig
    from pipeline.inference import background_value
    from pipeline.reclassify import reclassify
    from pipeline.shuffle import PatchSource, ShuffleSettings, inference_patches
    from pipeline.train_patch import patch_channels
    from pipeline.types import LESION_LABELS, Label

    device = torch.device("cpu")
    backend = CardBackend(BUNDLED, device, precision="float32" if kind in ("ours-fp32", "monai", "recls-monai")
                          else "auto")
    prep = backend.preprocessing
    model_input, labels = _load(data_path)
    whole = backend._whole.network
    patch_net = backend._patch
    config = replace(CascadeConfig(), patch_size_voxels=prep.patch_size_voxels)
    lesions = _ten_lesions(labels, model_input.geometry) if kind.startswith("recls") else []
    source_labels = labels.copy()
    source_labels[~np.isin(source_labels, (int(Label.LIVER),) + LESION_LABELS)] = 0
    source = PatchSource(patch_channels(model_input, prep), source_labels)
    settings = ShuffleSettings(patch_size_voxels=config.patch_size_voxels, fill_value=background_value(prep))
    voxel_ml = float(np.prod(model_input.geometry.spacing_mm)) / 1000.0
    presence = torch.ones((1, len(prep.phase_order)) + tuple(prep.patch_size_voxels))

    @torch.no_grad()
    def run() -> None:
        if kind in ("ours", "ours-fp32"):
            backend.predict_model_input(model_input)
        elif kind == "monai":
            image = torch.from_numpy(model_input.image)[None]
            logits = sliding_window_inference(image, prep.roi_size_voxels, 1, whole, overlap=0.25, mode="gaussian")
            torch.softmax(logits[0], dim=0).numpy()
        elif kind == "recls":
            reclassify(lesions, source, backend.patch_model(model_input.present), config, voxel_ml, settings=settings)
        else:
            for lesion in lesions:
                rng = np.random.default_rng([config.seed, lesion.lesion_id])
                for patch in inference_patches(source, lesion, config.inference_patches_per_lesion, settings, rng):
                    image = torch.cat([torch.from_numpy(np.ascontiguousarray(patch.image, dtype=np.float32))[None],
                                       presence], dim=1)
                    logits = sliding_window_inference(image, prep.patch_size_voxels, 1, patch_net)
                    logits.argmax(dim=1)

    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return {"kind": kind, "seconds": seconds, "median_s": statistics.median(seconds), "peak_rss_mb": _peak_rss_mb(),
            "bf16": bool(backend.bf16), "patches_per_lesion": config.inference_patches_per_lesion}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="60x5,300x1", help="slices x thickness mm, comma separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, Path(args.data), args.repeats)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        for size in args.sizes.split(","):
            slices, thickness = size.split("x")
            data = Path(tmp) / f"{size}.npz"
            info = _prepare(int(slices), float(thickness), args.seed, data)
            results = {}
            for kind in KINDS:
                out = subprocess.run([sys.executable, __file__, "--child", kind, "--data", str(data),
                                      "--repeats", str(args.repeats)], capture_output=True, text=True)
                if out.returncode != 0:
                    print(out.stderr[-3000:], file=sys.stderr)
                    return 1
                results[kind] = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((size, info, results))
    print(f"bundled model {BUNDLED.name}; {args.repeats} repeats, median; CPU threads: "
          f"{__import__('torch').get_num_threads()}")
    print("| study (512x512, 4 phases) | working grid | prepare_input s | UNet_whole ours s | ours fp32 s | "
          "MONAI sliding window s | ratio MONAI/ours | peak MB ours / MONAI | 10 lesions ReCls ours s | "
          "one-by-one MONAI s | ratio | peak MB ours / MONAI |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size, info, r in rows:
        slices, thickness = size.split("x")
        print(f"| {slices} slices at {thickness} mm | {'x'.join(map(str, info['working_shape']))} | "
              f"{info['prepare_s']:.2f} | {r['ours']['median_s']:.2f} | {r['ours-fp32']['median_s']:.2f} | "
              f"{r['monai']['median_s']:.2f} | {r['monai']['median_s'] / r['ours']['median_s']:.2f} | "
              f"{r['ours']['peak_rss_mb']:.0f} / {r['monai']['peak_rss_mb']:.0f} | "
              f"{r['recls']['median_s']:.2f} | {r['recls-monai']['median_s']:.2f} | "
              f"{r['recls-monai']['median_s'] / r['recls']['median_s']:.2f} | "
              f"{r['recls']['peak_rss_mb']:.0f} / {r['recls-monai']['peak_rss_mb']:.0f} |")
    print(f"bfloat16 autocast used by 'ours': {rows[0][2]['ours']['bf16']}; patches per lesion: "
          f"{rows[0][2]['recls']['patches_per_lesion']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
