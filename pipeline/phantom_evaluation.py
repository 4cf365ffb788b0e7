"""Held-out evaluation of a model on phantom studies: the full cascade (both sensitivities,
reclassification, patient verdict) on every case, then the metrics of DESIGN section 4.

Cases are generated with phases aligned as registration leaves them (``motion="residual"``), so
this measures the models and the cascade; ingest and registration are measured in docs/ingest.md
and end to end by ``livernode process``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from pipeline.backends import CardBackend
from pipeline.cascade import save_evaluation_npz
from pipeline.config import CascadeConfig
from pipeline.evaluate import evaluate_folders
from pipeline.evaluation_report import write_report
from pipeline.model_cascade import cascade_on_prediction
from pipeline.train import TrainingCase, case_model_input, dice_per_class, organ_dice
from pipeline.training_data import PhantomCaseSpec
from pipeline.typer_grid import StudyHU
from pipeline.train_typer import TyperStudy
from pipeline.typer_studies import phantom_typer_studies
from pipeline.types import LESION_LABELS, OTHER_ORGAN_LABELS, Label

log = logging.getLogger(__name__)


@dataclass
class PhantomEvaluation:
    """Where the report went, and the liver and organ Dice (not part of the lesion report)."""

    report_json: Path
    report_markdown: Path
    liver_dice_mean: float
    liver_dice_by_case: dict[str, float]
    #: label name -> mean Dice over the studies where the label is in the truth or the prediction
    organ_dice_mean: dict[str, float]


@dataclass(frozen=True)
class CaseDice:
    """Dice of one evaluated case: the liver (lesions included) and the other organs present."""

    liver: float
    organs: dict[str, float]


def _liver_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    liver = (int(Label.LIVER),) + LESION_LABELS
    return dice_per_class(np.isin(prediction, liver).astype(np.uint8), np.isin(truth, liver).astype(np.uint8), [1])[1]


def mean_organ_dice(by_case: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Per organ, the mean of its Dice over the cases that score it, in label order."""
    return {label.name: float(np.mean(values)) for label in OTHER_ORGAN_LABELS
            if (values := [scores[label.name] for scores in by_case.values() if label.name in scores])}


def organ_markdown(liver_mean: float, organ_mean: Mapping[str, float], cases: int) -> str:
    """The liver and organ Dice as a markdown section for the evaluation report."""
    lines = ["", f"## Organs and vessels ({cases} studies)", "",
             "Dice of the cascade's base-sensitivity label map against the truth, mean over the studies "
             "where the label is in either; an organ the model does not label scores 0.", "",
             "| label | mean Dice |", "|---|---|", f"| LIVER (lesions included) | {liver_mean:.4f} |"]
    lines += [f"| {name} | {value:.4f} |" for name, value in organ_mean.items()]
    return "\n".join(lines) + "\n"


def evaluate_case(
    backend: CardBackend, case: TrainingCase, config: CascadeConfig, pred_dir: Path, truth_dir: Path,
    study: StudyHU | None = None,
) -> CaseDice:
    """Run the cascade on one case (with the study's own volumes, for a lesion typer that reads
    them), write its prediction and truth files; return its Dice."""
    prep = backend.preprocessing
    model_input = case_model_input(case, prep)
    prediction = replace(backend.predict_model_input(model_input), study=study)
    result = cascade_on_prediction(prediction, backend, config)
    save_evaluation_npz(result, pred_dir / f"{case.case_id}.npz")
    truth_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        truth_dir / f"{case.case_id}.npz",
        labels=case.labels,
        spacing_mm=np.asarray(case.geometry.spacing_mm, dtype=np.float64),
    )
    return CaseDice(_liver_dice(result.base_labels, case.labels), organ_dice(result.base_labels, case.labels))


def evaluation_studies(
    backend: CardBackend,
    specs: Sequence[PhantomCaseSpec],
    config: CascadeConfig,
    processes: int,
    say: Callable[[str], None],
    cache_dir: Path | None = None,
) -> Iterator[TyperStudy]:
    """The phantom studies of `specs` as `backend` and the cascade `config` need them: working-grid
    cases (cached in `cache_dir`), with the studies' own volumes when the model's lesion typer reads
    its HU from the study (then every study is generated again)."""
    grid = backend.typer_feature_grid()
    with_study = config.lesion_typing and grid is not None and grid.from_study
    if with_study:
        say(f"the lesion typer reads the study's own HU ({grid.describe()}): every study is generated again")
    return phantom_typer_studies(specs, backend.preprocessing, with_study, processes, say, cache_dir=cache_dir)


def evaluate_on_phantoms(
    backend: CardBackend,
    specs: Sequence[PhantomCaseSpec],
    config: CascadeConfig,
    out_dir: Path,
    progress: Callable[[str], None] | None = None,
    processes: int = 1,
    cache_dir: Path | None = None,
) -> PhantomEvaluation:
    """Evaluate `backend` with the cascade on the phantom studies `specs`; write the report
    (``evaluation.json``, ``evaluation.md`` with the organ Dice appended), ``liver_dice.json`` and
    ``organ_dice.json`` to `out_dir`. `cache_dir`
    keeps the generated cases for the next evaluation; for a lesion typer that reads the study's
    own HU every study is generated again (its own volumes are not cached)."""
    say = progress or log.info
    pred_dir, truth_dir = out_dir / "predictions", out_dir / "truth"
    dice: dict[str, float] = {}
    organs: dict[str, dict[str, float]] = {}
    studies = evaluation_studies(backend, specs, config, processes, say, cache_dir)
    for index, (spec, study) in enumerate(zip(specs, studies), 1):
        case = study.case
        scores = evaluate_case(backend, case, config, pred_dir, truth_dir, study.study)
        dice[case.case_id], organs[case.case_id] = scores.liver, scores.organs
        phases = "+".join(p.value for p in spec.phases)
        say(f"evaluated {index}/{len(specs)}: {case.case_id} ({phases}, {spec.slice_thickness_mm:g} mm) "
            f"liver Dice {dice[case.case_id]:.3f}")
    report = evaluate_folders(pred_dir, truth_dir, min_lesion_volume_ml=0.5)
    json_path, md_path = write_report(report, out_dir)
    mean = float(np.mean(list(dice.values()))) if dice else float("nan")
    (out_dir / "liver_dice.json").write_text(
        json.dumps({"mean": mean, "cases": dice}, indent=2) + "\n", encoding="utf-8"
    )
    organ_mean = mean_organ_dice(organs)
    (out_dir / "organ_dice.json").write_text(
        json.dumps({"mean": organ_mean, "cases": organs}, indent=2) + "\n", encoding="utf-8"
    )
    with md_path.open("a", encoding="utf-8") as report_md:
        report_md.write(organ_markdown(mean, organ_mean, len(dice)))
    return PhantomEvaluation(json_path, md_path, mean, dice, organ_mean)
