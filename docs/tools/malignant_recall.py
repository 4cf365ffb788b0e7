"""Recall of malignant lesions of 2 ml and more (issue 4's lesion-level target) from an evaluation
report written by `livernode evaluate` or the held-out evaluation of `livernode train bundled`.

    python docs/tools/malignant_recall.py livernode-data/train/work/held-out/evaluation.json

"Called malignant" counts a lesion matched by a prediction of a malignant type (TP of the
malignancy grouping); "found" also counts one matched by a benign-typed prediction (FL)."""

from __future__ import annotations

import json
import sys

SMALL_STRATA = ("<0.5", "0.5-2")


def main(path: str) -> None:
    report = json.load(open(path, encoding="utf-8"))
    print("| model | malignant lesions >= 2 ml | called malignant (TP) | found, benign type (FL) | missed (FN) | "
          "recall, called malignant | recall, found |")
    print("|---|---|---|---|---|---|---|")
    for model, tally in report["lesion_level"].items():
        tp = fl = fn = 0
        for stratum, groups in tally["by_volume_ml"].items():
            if stratum in SMALL_STRATA:
                continue
            counts = groups["Malign"]
            tp, fl, fn = tp + counts["TP"], fl + counts["FL"], fn + counts["FN"]
        n = tp + fl + fn
        ratio = (lambda k: f"{k / n:.2f}" if n else "n/a")
        print(f"| {model} | {n} | {tp} | {fl} | {fn} | {ratio(tp)} | {ratio(tp + fl)} |")


if __name__ == "__main__":
    main(sys.argv[1])
