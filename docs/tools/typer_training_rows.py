"""What the lesion typer learns from more or other training rows, judged on validation detections
(validation phantoms, seeds 20100+; never the held-out set).

Rows (``pipeline.train_typer``): the true lesions of type-balanced training studies (as labelled,
dilated and eroded), and UNet_whole's detections on them at both sensitivities: false positives
("not a lesion"; the bundled recipe) and, for the ``found`` variants, true lesions as UNet_whole
outlines them, with their true type. ``--extra-studies K`` adds, in a second set of variants, the first K
type-balanced studies of ``type_balanced_training_specs(--pool)`` that are not among the
``--train-studies`` (which are ``type_balanced_training_specs(--train-studies)``, the bundled
typer's).
Each variant is trained with ``--seeds`` seeds (the recipe's 3000 steps) and judged on the
detections of UNet_whole at sensitivities 1 and 4 in ``--validation`` tuning studies, with all
their phases: true lesions typed right, dropped as "not a lesion", called malignant when benign
or the reverse; false detections kept, and kept as malignant. Rows are cached in ``--work``.
``--blank NAME,NAME`` (repeatable) adds the recipe with those per-phase features
(``pipeline.lesion_features.PHASE_FEATURES``) set to zero in every phase of training and
validation rows: an ablation with one mining run, the seeds drawing the same batches. With
``docs/experiments/typer-blood-pool-features.patch`` applied, ``--blank
blood,p90_blood,blood_found,core_absolute`` is the typer as it is without it (docs/models.md,
"Session 22"). ``--recipe-only`` leaves out the ``found`` variants.

    .venv/bin/python docs/tools/typer_training_rows.py pipeline/models/phantom-demo \\
        --train-studies 120 --extra-studies 240 --validation 48 --seeds 3
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from pipeline.cascade import sensitivity_label_maps
from pipeline.config import CascadeConfig
from pipeline.inference import WholePredictor
from pipeline.lesion_features import PHASE_FEATURES, feature_names
from pipeline.lesion_typer import (NOT_A_LESION, TyperTraining, default_typer_spec, feature_rows, train_typer,
                                   type_probabilities)
from pipeline.model import Preprocessing, read_model_card
from pipeline.seg2det import seg2det
from pipeline.train import case_model_input
from pipeline.train_models import whole_predictor
from pipeline.train_typer import detection_classes, detection_rows, typer_rows
from pipeline.training_data import PhantomCaseSpec, make_cases, tuning_specs, type_balanced_training_specs
from pipeline.types import PHASE_ORDER, LesionType

CHUNK = 60  # studies per cached row file (a multiple of the typer's 6 phase subsets)


def layout_tag() -> str:
    """A short tag of the feature layout, so cached rows of another layout are not read back."""
    return hashlib.sha256(",".join(feature_names()).encode()).hexdigest()[:8]


def training_rows(prep: Preprocessing, predictor: WholePredictor, specs: list[PhantomCaseSpec], name: str,
                  work: Path) -> dict[str, np.ndarray]:
    """Truth rows and detection rows (found lesions included) of `specs`, cached as one file."""
    path = work / f"{name}-{layout_tag()}.npz"
    if not path.is_file():
        parts: dict[str, list[np.ndarray]] = {"truth_f": [], "truth_c": [], "det_f": [], "det_c": []}
        for start in range(0, len(specs), CHUNK):  # CHUNK studies in memory at a time
            cases = make_cases(specs[start:start + CHUNK], prep, 2, print, cache_dir=work / "cases")
            for key, value in zip(("truth_f", "truth_c"), typer_rows(cases, prep)):
                parts[key].append(value)
            for key, value in zip(("det_f", "det_c"), detection_rows(cases, prep, predictor, CascadeConfig(),
                                                                     found_lesions=True, progress=print)):
                parts[key].append(value)
        np.savez(path, **{key: np.concatenate(values) for key, values in parts.items()})
    with np.load(path) as rows:
        return {key: rows[key] for key in rows.files}


def validation_rows(prep: Preprocessing, predictor: WholePredictor, count: int, work: Path) -> dict[str, np.ndarray]:
    """Features, true class and sensitivity of UNet_whole's detections in `count` tuning studies."""
    path = work / f"validation-{count}-{layout_tag()}.npz"
    if not path.is_file():
        config = CascadeConfig()
        features, classes, sensitivities = [], [], []
        for case in make_cases(tuning_specs(count), prep, 2, print, cache_dir=work / "cases"):
            model_input = case_model_input(case, prep)
            maps = sensitivity_label_maps(predictor.predict(model_input), config,
                                          compute_livermax=False).label_maps
            truth = seg2det(case.labels, case.geometry)
            for factor, labels in maps.items():
                detected = seg2det(labels, case.geometry, min_volume_ml=0.5)
                if detected:
                    features.append(feature_rows(detected, model_input.hu, labels, case.geometry))
                    classes += detection_classes(truth, detected)
                    sensitivities += [factor] * len(detected)
        np.savez(path, features=np.concatenate(features), classes=np.asarray(classes),
                 sensitivities=np.asarray(sensitivities))
    with np.load(path) as rows:
        return {key: rows[key] for key in rows.files}


def blanked(features: np.ndarray, names: str) -> np.ndarray:
    """A copy of `features` with the comma-separated per-phase features `names` zero in every phase."""
    out = np.array(features, copy=True)
    wanted = [name for name in names.split(",") if name]
    unknown = set(wanted) - set(PHASE_FEATURES)
    if unknown:
        raise SystemExit(f"--blank: {sorted(unknown)} are not per-phase features {PHASE_FEATURES}")
    all_names = feature_names()
    out[:, [all_names.index(f"{phase.value}_{name}") for phase in PHASE_ORDER for name in wanted]] = 0.0
    return out


def judge(probabilities: np.ndarray, classes: np.ndarray) -> str:
    """One line of counts for the typer's verdicts (the most probable class) on detections."""
    verdict = probabilities.argmax(axis=1)
    true = classes != NOT_A_LESION

    def malignant(value: int) -> bool:
        return LesionType(int(value)).malignant

    swapped = sum(1 for v, c in zip(verdict[true], classes[true]) if v != NOT_A_LESION and malignant(v) != malignant(c))
    kept = verdict[~true] != NOT_A_LESION
    return (f"right {int((verdict == classes)[true].sum())}/{int(true.sum())}, dropped "
            f"{int((verdict[true] == NOT_A_LESION).sum())}, malignant/benign wrong {swapped}; false kept "
            f"{int(kept.sum())}/{int((~true).sum())}, as malignant "
            f"{sum(1 for v in verdict[~true] if v != NOT_A_LESION and malignant(v))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--train-studies", type=int, default=120)
    parser.add_argument("--extra-studies", type=int, default=0)
    parser.add_argument("--pool", type=int, default=400, help="type-balanced studies the extra ones come from")
    parser.add_argument("--validation", type=int, default=48)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("livernode-data/typer-rows"))
    parser.add_argument("--blank", action="append", default=[],
                        help="also the recipe with these per-phase features (comma-separated) set to zero")
    parser.add_argument("--recipe-only", action="store_true", help="leave out the found-lesions variants")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    prep, predictor = read_model_card(args.model).preprocessing, whole_predictor(args.model, "auto")
    base_specs = type_balanced_training_specs(args.train_studies)
    sets = {"recipe": training_rows(prep, predictor, base_specs, f"train{args.train_studies}", args.work)}
    if args.extra_studies:
        seen = {spec.seed for spec in base_specs}
        extra = [spec for spec in type_balanced_training_specs(args.pool) if spec.seed not in seen][:args.extra_studies]
        if len(extra) < args.extra_studies:
            raise SystemExit(f"--pool {args.pool} holds only {len(extra)} studies besides the training ones")
        more = training_rows(prep, predictor, extra, f"extra{args.extra_studies}", args.work)
        sets["with extra"] = {key: np.concatenate([sets["recipe"][key], more[key]]) for key in more}
    validation = validation_rows(prep, predictor, args.validation, args.work)
    for set_name, rows in sets.items():
        negatives = rows["det_c"] == NOT_A_LESION
        recipe = (np.concatenate([rows["truth_f"], rows["det_f"][negatives]]),
                  np.concatenate([rows["truth_c"], rows["det_c"][negatives]]))
        variants = {f"{set_name}: truth + false positives": (*recipe, "")}
        for blank in args.blank:
            variants[f"{set_name}: truth + false positives, without {blank}"] = (*recipe, blank)
        if not args.recipe_only:
            variants[f"{set_name}: + found lesions"] = (np.concatenate([rows["truth_f"], rows["det_f"]]),
                                                        np.concatenate([rows["truth_c"], rows["det_c"]]), "")
        for name, (features, classes, blank) in variants.items():
            judged = blanked(validation["features"], blank)
            features = blanked(features, blank)
            print(f"{name} ({len(classes)} rows, per class {np.bincount(classes, minlength=7).tolist()})")
            report_seeds(features, classes, judged, validation, args.seeds)


def report_seeds(features: np.ndarray, classes: np.ndarray, judged: np.ndarray, validation: dict[str, np.ndarray],
                 seeds: int) -> None:
    """Train the typer on the rows with each seed and print its verdicts on the validation rows
    `judged` (features of ``validation``'s detections) at each sensitivity, then those of the
    seeds' mean probabilities."""
    total: dict[float, np.ndarray] = {}
    for seed in range(seeds):
        network = train_typer(features, classes, default_typer_spec(), TyperTraining(seed=seed))
        lines = []
        for factor in sorted(set(validation["sensitivities"].tolist())):
            at = validation["sensitivities"] == factor
            probabilities = type_probabilities(network, judged[at])
            total[factor] = total.get(factor, 0) + probabilities
            lines.append(f"f={factor:g}: {judge(probabilities, validation['classes'][at])}")
        print(f"  seed {seed}: " + " | ".join(lines), flush=True)
    print("  mean of the seeds' probabilities: " + " | ".join(
        f"f={factor:g}: {judge(total[factor], validation['classes'][validation['sensitivities'] == factor])}"
        for factor in sorted(total)), flush=True)


if __name__ == "__main__":
    main()
