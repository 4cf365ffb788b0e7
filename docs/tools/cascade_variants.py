"""Compare cascade settings on validation phantoms (seeds 20100+; never the held-out 30000+ set).

UNet_whole runs once per study; every variant then runs the rest of the cascade on the same
prediction. Prints, per variant and model (Base, Base+ReCls, High+ReCls, joint): malignant lesions
of 2 ml and more called malignant, false positives, and patient malignancy sensitivity/specificity.

    .venv/bin/python docs/tools/cascade_variants.py pipeline/models/phantom-demo --studies 12 \\
        --variant paper: --variant small-only:reclassify_max_volume_ml=8
    .venv/bin/python docs/tools/cascade_variants.py MODEL_WITH_TYPER --variant typer: \
        --variant patch-vote:lesion_typing=false
    .venv/bin/python docs/tools/cascade_variants.py MODEL --typer-dir pipeline/models/phantom-demo --variant default:

A variant is NAME:key=value,key=value with keys of the `cascade:` configuration section. With
more than 48 studies the joint figures are also printed per block of 48 seeds.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from pipeline.backends import CardBackend
from pipeline.cascade import save_evaluation_npz
from pipeline.config import CascadeConfig
from pipeline.evaluate import evaluate_folders
from pipeline.evaluation_metrics import PatientMetrics
from pipeline.evaluation_report import write_report
from pipeline.model import select_device
from pipeline.model_cascade import cascade_on_prediction
from pipeline.train import case_model_input, dice_per_class
from pipeline.phantom_evaluation import evaluation_studies
from pipeline.training_data import tuning_specs
from pipeline.types import LESION_LABELS, Label, PatientClass

SMALL_STRATA = ("<0.5", "0.5-2")


def parse_variant(text: str) -> tuple[str, CascadeConfig]:
    """NAME:key=value,... -> (name, config)."""
    name, _, assignments = text.partition(":")
    types = {f.name: f.type for f in fields(CascadeConfig)}
    changes = {}
    for item in filter(None, assignments.split(",")):
        key, _, value = item.partition("=")
        if key not in types:
            raise SystemExit(f"unknown cascade setting {key!r}")
        default = getattr(CascadeConfig(), key)
        changes[key] = value.lower() in ("1", "true", "yes", "on") if isinstance(default, bool) else type(default)(value)
    return name, replace(CascadeConfig(), **changes)


def summary(report_json: Path) -> list[str]:
    """One line per model of an evaluation report."""
    report = json.loads(report_json.read_text(encoding="utf-8"))
    lines = []
    for model, tally in report["lesion_level"].items():
        tp = n = 0
        for stratum, groups in tally["by_volume_ml"].items():
            if stratum not in SMALL_STRATA:
                counts = groups["Malign"]
                tp += counts["TP"]
                n += counts["TP"] + counts["FL"] + counts["FN"]
        small = tally["by_volume_ml"].get("0.5-2", {}).get("Malign", {"TP": 0, "FL": 0, "FN": 0})
        small_n = small["TP"] + small["FL"] + small["FN"]
        patient = report["patient_level"].get(model) or {}
        lines.append(f"  {model}: malignant >= 2 ml {tp}/{n}, malignant 0.5-2 ml found {small['TP'] + small['FL']}/"
                     f"{small_n} ({small['TP']} called malignant), FP {tally['overall']['All']['FP']}, "
                     f"patient sensitivity {patient.get('sensitivity')}, specificity {patient.get('specificity')}")
    joint = [k for k in report["patient_level"] if "&" in k]
    for model in joint:
        patient = report["patient_level"][model]
        lines.append(f"  {model}: sensitivity {patient['sensitivity']}, specificity {patient['specificity']}, "
                     f"uncertain {patient['uncertain']}")
    return lines


def joint_by_block(report_json: Path, block: int = 48) -> list[str]:
    """The joint model's figures per block of `block` consecutive validation seeds (20100-20147,
    20148-20195, ...): one block of 48 moves a figure by 0.05 per patient, so a second block is
    the check of a choice made on the first (docs/models.md, "Session 32")."""
    cases = json.loads(report_json.read_text(encoding="utf-8"))["cases"]
    seeds = {case["case"]: int(case["case"].rsplit("-", 1)[1]) for case in cases}
    first = min(seeds.values(), default=0)
    blocks: dict[int, PatientMetrics] = {}
    for case in cases:
        joint = None if case["joint"] == "uncertain" else PatientClass(case["joint"])
        metrics = blocks.setdefault((seeds[case["case"]] - first) // block, PatientMetrics())
        metrics.add(PatientClass(case["truth"]), joint)

    def figure(ratio: float | None, hits: int, total: int) -> str:
        return f"{ratio:.2f} ({hits}/{total})" if ratio is not None else "n/a"

    lines = []
    for index, m in sorted(blocks.items()):
        start = first + index * block
        lines.append(f"  joint, seeds {start}-{start + block - 1}: sensitivity "
                     f"{figure(m.sensitivity, m.malignant_tp, m.malignant_tp + m.malignant_fn)}, specificity "
                     f"{figure(m.specificity, m.malignant_tn, m.malignant_tn + m.malignant_fp)}, "
                     f"uncertain {m.uncertain}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--studies", type=int, default=12)
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--work", type=Path, default=Path("livernode-data/cascade-variants"))
    parser.add_argument("--typer-dir", type=Path, default=None,
                        help="another model folder whose lesion typer to use (model.typer_dir)")
    args = parser.parse_args()
    variants = dict(parse_variant(v) for v in (args.variant or ["paper:"]))
    specs = tuning_specs(args.studies)
    backend = CardBackend(args.model, select_device("auto"), typer_dir=args.typer_dir)
    typing = any(config.lesion_typing for config in variants.values())  # then a typer may need the volumes
    studies = evaluation_studies(backend, specs, replace(CascadeConfig(), lesion_typing=typing), 2, print,
                                 cache_dir=args.work / "cases")
    truth_dir = args.work / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    liver_dice = []
    cascade_liver_dice: dict[str, list[float]] = {name: [] for name in variants}
    for study in studies:
        case = study.case
        np.savez_compressed(truth_dir / f"{case.case_id}.npz", labels=case.labels,
                            spacing_mm=np.asarray(case.geometry.spacing_mm, dtype=np.float64))
        prediction = replace(backend.predict_model_input(case_model_input(case, backend.preprocessing)),
                             study=study.study)
        liver = (int(Label.LIVER),) + LESION_LABELS
        predicted_liver = np.isin(prediction.probabilities.argmax(axis=0), liver).astype(np.uint8)
        liver_dice.append(dice_per_class(predicted_liver, np.isin(case.labels, liver).astype(np.uint8), [1])[1])
        for name, config in variants.items():
            result = cascade_on_prediction(prediction, backend, config)
            cascade_liver_dice[name].append(dice_per_class(np.isin(result.base_labels, liver).astype(np.uint8),
                                                           np.isin(case.labels, liver).astype(np.uint8), [1])[1])
            save_evaluation_npz(result, args.work / name / "predictions" / f"{case.case_id}.npz")
        print(f"{case.case_id} done", flush=True)
    print(f"liver Dice (argmax of UNet_whole): mean {np.mean(liver_dice):.3f}, min {np.min(liver_dice):.3f}")
    for name in variants:
        report = evaluate_folders(args.work / name / "predictions", truth_dir, min_lesion_volume_ml=0.5)
        json_path, _ = write_report(report, args.work / name)
        print(f"{name}: liver Dice of the cascade's base map {np.mean(cascade_liver_dice[name]):.4f}")
        print("\n".join(summary(json_path)), flush=True)
        if args.studies > 48:
            print("\n".join(joint_by_block(json_path)), flush=True)


if __name__ == "__main__":
    main()
