"""Held-out evaluation of a model on phantom studies: the full cascade (both sensitivities,
reclassification, patient verdict) on every case, then the metrics of DESIGN section 4.

Cases are generated with phases aligned as registration leaves them (``motion="residual"``), so
this measures the models and the cascade; ingest and registration are measured in docs/ingest.md
and end to end by ``livernode process``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pipeline.backends import CardBackend
from pipeline.cascade import save_evaluation_npz
from pipeline.config import CascadeConfig
from pipeline.evaluate import evaluate_folders
from pipeline.evaluation_report import write_report
from pipeline.model_cascade import cascade_on_prediction
from pipeline.train import TrainingCase, case_model_input, dice_per_class
from pipeline.training_data import PhantomCaseSpec, make_cases
from pipeline.types import LESION_LABELS, Label

log = logging.getLogger(__name__)


@dataclass
class PhantomEvaluation:
    """Where the report went and the liver Dice (not part of the lesion report)."""

    report_json: Path
    report_markdown: Path
    liver_dice_mean: float
    liver_dice_by_case: dict[str, float]


def _liver_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    liver = (int(Label.LIVER),) + LESION_LABELS
    return dice_per_class(np.isin(prediction, liver).astype(np.uint8), np.isin(truth, liver).astype(np.uint8), [1])[1]


def evaluate_case(
    backend: CardBackend, case: TrainingCase, config: CascadeConfig, pred_dir: Path, truth_dir: Path
) -> float:
    """Run the cascade on one case, write its prediction and truth files; return its liver Dice."""
    prep = backend.preprocessing
    model_input = case_model_input(case, prep)
    prediction = backend.predict_model_input(model_input)
    result = cascade_on_prediction(prediction, backend, config)
    save_evaluation_npz(result, pred_dir / f"{case.case_id}.npz")
    truth_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        truth_dir / f"{case.case_id}.npz",
        labels=case.labels,
        spacing_mm=np.asarray(case.geometry.spacing_mm, dtype=np.float64),
    )
    return _liver_dice(result.base_labels, case.labels)


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
    (``evaluation.json``, ``evaluation.md``) and ``liver_dice.json`` to `out_dir`. `cache_dir`
    keeps the generated cases for the next evaluation."""
    say = progress or log.info
    pred_dir, truth_dir = out_dir / "predictions", out_dir / "truth"
    dice: dict[str, float] = {}
    cases = make_cases(specs, backend.preprocessing, processes, say, cache_dir=cache_dir)
    for index, (spec, case) in enumerate(zip(specs, cases), 1):
        dice[case.case_id] = evaluate_case(backend, case, config, pred_dir, truth_dir)
        phases = "+".join(p.value for p in spec.phases)
        say(f"evaluated {index}/{len(specs)}: {case.case_id} ({phases}, {spec.slice_thickness_mm:g} mm) "
            f"liver Dice {dice[case.case_id]:.3f}")
    report = evaluate_folders(pred_dir, truth_dir, min_lesion_volume_ml=0.5)
    json_path, md_path = write_report(report, out_dir)
    mean = float(np.mean(list(dice.values()))) if dice else float("nan")
    (out_dir / "liver_dice.json").write_text(
        json.dumps({"mean": mean, "cases": dice}, indent=2) + "\n", encoding="utf-8"
    )
    return PhantomEvaluation(json_path, md_path, mean, dice)
