"""Dice of every label of UNet_whole's plain argmax (no sensitivity scaling, no cascade) on
validation phantoms (tuning seeds 20100+; never the held-out set): which of the 13 labels the
model predicts at all, and how well.

    .venv/bin/python docs/tools/label_dice.py pipeline/models/phantom-demo --studies 24

Prints a markdown table: per label the true and predicted voxels summed over the studies on the
working grid, the Dice of those sums, and the mean of the per-study Dice over the studies where the
label is present.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pipeline.model import read_model_card
from pipeline.train import case_model_input
from pipeline.train_models import whole_predictor
from pipeline.training_data import make_cases, tuning_specs
from pipeline.types import Label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--studies", type=int, default=24)
    parser.add_argument("--cases", type=Path, default=Path("livernode-data/typer/cases"), help="phantom case cache")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    prep = read_model_card(args.model).preprocessing
    predictor = whole_predictor(args.model, args.device)
    labels = [label for label in Label if label is not Label.BACKGROUND]
    shared = {label: 0 for label in labels}
    predicted = {label: 0 for label in labels}
    true = {label: 0 for label in labels}
    per_study: dict[Label, list[float]] = {label: [] for label in labels}
    for case in make_cases(tuning_specs(args.studies), prep, 1, print, cache_dir=args.cases):
        answer = predictor.predict(case_model_input(case, prep)).argmax(axis=0)
        for label in labels:
            guess, truth = answer == int(label), case.labels == int(label)
            both, guessed, real = int((guess & truth).sum()), int(guess.sum()), int(truth.sum())
            shared[label] += both
            predicted[label] += guessed
            true[label] += real
            if real:
                per_study[label].append(2.0 * both / (guessed + real))
    print("| label | true voxels | predicted voxels | Dice of the sums | mean Dice per study (studies) |")
    print("|---|---|---|---|---|")
    for label in labels:
        total = predicted[label] + true[label]
        pooled = f"{2.0 * shared[label] / total:.3f}" if total else "n/a"
        mean = f"{np.mean(per_study[label]):.3f} ({len(per_study[label])})" if per_study[label] else "n/a (0)"
        print(f"| {label.name} | {true[label]} | {predicted[label]} | {pooled} | {mean} |")


if __name__ == "__main__":
    main()
