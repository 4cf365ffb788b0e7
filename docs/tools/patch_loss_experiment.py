"""Short UNet_patch training runs to compare loss settings (docs/models.md, "The loss").

Trains the bundled recipe's UNet_patch for a few hundred iterations on the lesion-shuffle patches
of phantom training studies 0-19 and scores it on the patches of training studies 40-44 (not used
by the run): lesion Dice (any type) and the share of lesion voxels given the right type.

    .venv/bin/python docs/tools/patch_loss_experiment.py --iterations 400 --union-weight 0
    .venv/bin/python docs/tools/patch_loss_experiment.py --iterations 400 --union-weight 1

Phantom cases are cached in --work/cases (a `livernode train bundled` work folder's cache is reused).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.config import CascadeConfig
from pipeline.inference import make_patch_model
from pipeline.model import load_native_network, select_device, use_bf16
from pipeline.train import TrainConfig, train_network
from pipeline.train_bundled import BundledRecipe
from pipeline.train_patch import patch_cases
from pipeline.training_data import TRAIN_SEED_BASE, make_cases, sample_case_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--lesion-weight", type=float, default=3.0)
    parser.add_argument("--union-weight", type=float, default=1.0)
    parser.add_argument("--work", type=Path, default=Path("livernode-data/patch-loss"))
    args = parser.parse_args()
    _, spec, prep = BundledRecipe().networks()
    cascade = replace(CascadeConfig(), patch_size_voxels=prep.patch_size_voxels)
    cache = args.work / "cases"
    train = make_cases([sample_case_spec(TRAIN_SEED_BASE + i) for i in range(20)], prep, 2, print, cache_dir=cache)
    test = make_cases([sample_case_spec(TRAIN_SEED_BASE + i) for i in range(40, 45)], prep, 2, print,
                      cache_dir=cache)
    train_patches = patch_cases(train, prep, cascade, seed=4)
    test_patches = patch_cases(test, prep, cascade, seed=5)
    config = TrainConfig(iterations=args.iterations, batch_size=16, crop_size_voxels=prep.patch_size_voxels,
                         positive_fraction=0.5, lesion_class_weight=args.lesion_weight,
                         lesion_union_weight=args.union_weight, validate_every=args.iterations + 1,
                         checkpoint_every=args.iterations, seed=3)
    run_dir = args.work / f"lw{args.lesion_weight:g}-uw{args.union_weight:g}-it{args.iterations}"
    started = time.perf_counter()
    result = train_network(spec, train_patches, [], prep, config, run_dir, "unet_patch.pt", progress=print)
    device = select_device("auto")
    network = load_native_network(result.weights_path, spec, device)
    tp = fp = fn = typed = lesion_voxels = 0
    for patch in test_patches:
        model = make_patch_model(network, patch.present, prep, device, bf16=use_bf16(device))
        predicted = model(patch.phases[None].astype(np.float32))[0]
        truth = patch.labels > 0
        found = predicted > 0
        tp += int((truth & found).sum())
        fp += int((~truth & found).sum())
        fn += int((truth & ~found).sum())
        typed += int(((patch.labels == predicted) & truth).sum())
        lesion_voxels += int(truth.sum())
    print(f"lesion weight {args.lesion_weight:g}, union weight {args.union_weight:g}, {args.iterations} iterations: "
          f"lesion Dice {2 * tp / max(2 * tp + fp + fn, 1):.3f}, type accuracy {typed / max(lesion_voxels, 1):.3f} "
          f"on {len(test_patches)} patches ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
