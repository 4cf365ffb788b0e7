"""How well the networks type lesions: reclassification (pipeline.reclassify) run on the true
lesions (>= 0.5 ml) of validation phantoms (seeds 20100+, the studies of cascade_variants.py; never
the held-out 30000+ set), so typing is judged apart from detection; optionally UNet_whole's own
type for the same lesions (the lesion class with the most probability inside the true mask) and
the type a model folder's lesion typer gives them (pipeline.lesion_typer).

Either scores existing weights, or first trains the bundled recipe's UNet_patch (without hard-case
mining) on cached training studies, with rare types given more patches (--type-balance) and
optionally on the type-balanced training studies (--balanced):

    .venv/bin/python docs/tools/patch_typing.py --weights pipeline/models/phantom-demo/unet_patch.pt \\
        --whole-model pipeline/models/phantom-demo --typer-model pipeline/models/phantom-demo --studies 48
    .venv/bin/python docs/tools/patch_typing.py --iterations 1500 --type-balance 1 --studies 48
    .venv/bin/python docs/tools/patch_typing.py --iterations 1500 --type-balance 4 --studies 48

Prints type confusions (rows truth, columns the type given, "drop" = UNet_patch scores it under
the keep threshold, UNet_whole labels under 10% of it as lesion, or the typer calls it "not a
lesion"), the share typed right, and the share with the right malignant/benign call.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.backends import CardBackend
from pipeline.config import CascadeConfig
from pipeline.inference import make_patch_model
from pipeline.lesion_typer import retype_lesions
from pipeline.model import load_native_network, select_device, use_bf16
from pipeline.reclassify import reclassify
from pipeline.seg2det import seg2det
from pipeline.shuffle import PatchSource
from pipeline.train import TrainConfig, TrainingCase, case_model_input
from pipeline.train_bundled import BundledRecipe
from pipeline.train_patch import patch_channels, patch_settings, train_patch_network
from pipeline.training_data import (
    TRAIN_SEED_BASE,
    make_cases,
    sample_case_spec,
    tuning_specs,
    type_balanced_training_specs,
)
from pipeline.types import LESION_LABELS, MALIGNANT_TYPES, Label, LesionType

Confusion = dict[LesionType, Counter]


def print_confusion(title: str, confusion: Confusion) -> None:
    """The confusion table and its two summary shares."""
    columns = [t.name for t in LesionType] + ["drop"]
    print(f"{title}\ntruth \\ given | " + " | ".join(columns))
    right = malignancy_right = total = 0
    for lesion_type, row in confusion.items():
        print(f"{lesion_type.name} | " + " | ".join(str(row[c]) for c in columns))
        total += sum(row.values())
        right += row[lesion_type.name]
        malignant = lesion_type in MALIGNANT_TYPES
        malignancy_right += sum(n for c, n in row.items()
                                if c != "drop" and (LesionType[c] in MALIGNANT_TYPES) == malignant)
    print(f"typed right {right}/{total}, malignant/benign right {malignancy_right}/{total}")


def whole_types(backend: CardBackend, case: TrainingCase, truth, confusion: Confusion) -> None:
    """UNet_whole's type of each true lesion into `confusion`."""
    probabilities = backend.predict_model_input(case_model_input(case, backend.preprocessing)).probabilities
    argmax = probabilities.argmax(axis=0)
    for lesion in truth:
        mask = lesion.full_mask(case.labels.shape)
        if np.isin(argmax[mask], LESION_LABELS).mean() < 0.1:
            confusion[lesion.lesion_type]["drop"] += 1
            continue
        sums = [float(probabilities[label][mask].astype(np.float32).sum()) for label in LESION_LABELS]
        confusion[lesion.lesion_type][LesionType(LESION_LABELS[int(np.argmax(sums))]).name] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="score these UNet_patch weights instead of training")
    parser.add_argument("--whole-model", type=Path, help="also score this model folder's UNet_whole")
    parser.add_argument("--typer-model", type=Path, help="also score this model folder's lesion typer")
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--type-balance", type=float, default=1.0)
    parser.add_argument("--train-studies", type=int, default=60)
    parser.add_argument("--balanced", action="store_true", help="train on type-balanced training studies")
    parser.add_argument("--studies", type=int, default=12, help="validation studies scored")
    parser.add_argument("--cache", type=Path, default=Path("livernode-data/train2/work/cases"))
    parser.add_argument("--work", type=Path, default=Path("livernode-data/patch-typing"))
    args = parser.parse_args()
    recipe = BundledRecipe()
    _, spec, prep = recipe.networks()
    cascade = replace(CascadeConfig(), patch_size_voxels=prep.patch_size_voxels)
    device = select_device("auto")
    started = time.perf_counter()
    weights = args.weights
    if weights is None:
        specs = (type_balanced_training_specs(args.train_studies) if args.balanced
                 else [sample_case_spec(TRAIN_SEED_BASE + i) for i in range(args.train_studies)])
        train = make_cases(specs, prep, 2, print, cache_dir=args.cache)
        config = TrainConfig(iterations=args.iterations, batch_size=recipe.patch_batch_size,
                             crop_size_voxels=prep.patch_size_voxels, positive_fraction=0.5,
                             lesion_class_weight=recipe.patch_lesion_weight,
                             lesion_union_weight=recipe.lesion_union_weight, validate_every=args.iterations + 1,
                             checkpoint_every=max(1, min(250, args.iterations)), seed=3)
        name = f"tb{args.type_balance:g}-it{args.iterations}" + ("-balanced" if args.balanced else "")
        result, count = train_patch_network(spec, train, prep, cascade, config, args.work / name, None, 0,
                                            resume=True, progress=print, type_balance=args.type_balance)
        weights = result.weights_path
        print(f"trained on {count} patches in {time.perf_counter() - started:.0f} s")
    network = load_native_network(weights, spec, device)
    backend = CardBackend(args.whole_model, device) if args.whole_model else None
    typer_backend = CardBackend(args.typer_model, device) if args.typer_model else None
    typer = typer_backend.lesion_typer() if typer_backend is not None else None
    grid = typer_backend.typer_feature_grid() if typer_backend is not None else None
    if grid is not None and grid.from_study:
        raise SystemExit(f"{args.typer_model}: its lesion typer reads the study's own HU; this tool reads working-grid "
                         "features only (docs/tools/cascade_variants.py runs the whole cascade)")
    if args.typer_model and typer is None:
        raise SystemExit(f"{args.typer_model}: the model card has no lesion typer")
    cases = make_cases(tuning_specs(args.studies), prep, 2, print, cache_dir=args.cache)
    patch_confusion: Confusion = {t: Counter() for t in LesionType}
    whole_confusion: Confusion = {t: Counter() for t in LesionType}
    typer_confusion: Confusion = {t: Counter() for t in LesionType}
    settings = patch_settings(cascade, prep)
    for case in cases:
        truth = [lesion for lesion in seg2det(case.labels, case.geometry) if lesion.volume_ml >= 0.5]
        if not truth:
            continue
        labels = case.labels.copy()
        labels[~np.isin(labels, (int(Label.LIVER),) + LESION_LABELS)] = 0
        source = PatchSource(patch_channels(case_model_input(case, prep), prep), labels)
        model = make_patch_model(network, case.present, prep, device, bf16=use_bf16(device))
        outcome = reclassify(truth, source, model, cascade, case.geometry.voxel_volume_ml, settings=settings)
        for item in outcome.outcomes:
            patch_confusion[item.original_type][item.new_type.name if item.kept else "drop"] += 1
        if backend is not None:
            whole_types(backend, case, truth, whole_confusion)
        if typer is not None:
            typed = retype_lesions(truth, case_model_input(case, prep).hu, case.labels, case.geometry, typer)
            given = {lesion.lesion_id: lesion.lesion_type.name for lesion in typed.kept}
            for lesion in truth:
                typer_confusion[lesion.lesion_type][given.get(lesion.lesion_id, "drop")] += 1
    print_confusion(f"UNet_patch {weights}:", patch_confusion)
    if backend is not None:
        print_confusion(f"UNet_whole of {args.whole_model}:", whole_confusion)
    if typer is not None:
        print_confusion(f"lesion typer of {args.typer_model}:", typer_confusion)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
