"""Writing an evaluation: ``evaluation.json`` (everything) and ``evaluation.md`` (the paper's tables).

Markdown tables: lesion level per model and type in the layout of the paper's Table II (FN, FP,
precision, recall per model), a Table V style detail per model (FN, FP, FL, TP, precision, recall,
rough recall), strata by volume and diameter (all lesion types), the patient level as Table IV
(accuracy, malignancy sensitivity and specificity; the joint model over consensus cases with the
uncertain count), and the LiverMax AUC per type.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.evaluation_metrics import (
    DIAMETER_STRATA,
    GROUP_ALL,
    GROUP_MALIGNANT,
    GROUPS,
    MODEL_BASE,
    MODEL_BASE_RECLS,
    MODEL_HIGH_RECLS,
    MODEL_JOINT,
    VOLUME_STRATA,
    LesionCounts,
)

if TYPE_CHECKING:
    from pipeline.evaluate import EvaluationReport


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f}%"


def _auc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def _table_ii(report: EvaluationReport) -> list[str]:
    models = [m for m in (MODEL_BASE, MODEL_BASE_RECLS, MODEL_HIGH_RECLS) if m in report.lesion_level]
    header = ["Type \\ Model"] + [f"{m} {col}" for m in models for col in ("FN", "FP", "Precision", "Recall")]
    rows = []
    for group in GROUPS:
        row = [f"**{group}**" if group in (GROUP_ALL, GROUP_MALIGNANT) else group]
        for model in models:
            c = report.lesion_level[model].overall[group]
            row += [str(c.fn), str(c.fp), _pct(c.precision), _pct(c.recall)]
        rows.append(row)
    return _table(header, rows)


def _detail(counts: LesionCounts, label: str) -> list[str]:
    return [label, str(counts.fn), str(counts.fp), str(counts.fl), str(counts.tp),
            _pct(counts.precision), _pct(counts.recall), _pct(counts.rough_recall)]  # fmt: skip


_DETAIL_HEADER = ["FN", "FP", "FL", "TP", "Precision", "Recall", "Recall-rough"]


def _table_v(report: EvaluationReport, model: str) -> list[str]:
    tally = report.lesion_level[model]
    return _table(["Type"] + _DETAIL_HEADER, [_detail(tally.overall[g], g) for g in GROUPS])


def _strata(report: EvaluationReport, model: str) -> list[str]:
    tally = report.lesion_level[model]
    rows = [_detail(tally.by_volume[name][GROUP_ALL], f"{name} ml") for name, _, _ in VOLUME_STRATA
            if name != "<0.5" or report.min_lesion_volume_ml < 0.5]  # fmt: skip
    rows += [_detail(tally.by_diameter[name][GROUP_ALL], f"{name} cm") for name, _, _ in DIAMETER_STRATA]
    return _table(["Stratum (all types)"] + _DETAIL_HEADER, rows)


def _table_iv(report: EvaluationReport) -> list[str]:
    rows = []
    for model, metrics in report.patient_level.items():
        uncertain = f"{metrics.uncertain} ({_pct(metrics.uncertain_fraction)})" if model == MODEL_JOINT else "-"
        rows.append([model, str(metrics.cases), _pct(metrics.accuracy), _pct(metrics.sensitivity),
                     _pct(metrics.specificity), uncertain])  # fmt: skip
    return _table(["Model", "Cases", "Class accuracy", "Malign sensitivity", "Malign specificity", "Uncertain"], rows)


def render_markdown(report: EvaluationReport) -> str:
    """The Markdown report of an evaluation."""
    lines = [
        "# Evaluation",
        "",
        f"{len(report.cases)} cases. Lesions under {report.min_lesion_volume_ml:g} ml are left out of lesion counts "
        "and patient classes. Precision = TP/(TP+FP), recall = TP/(TP+FN), "
        "rough recall = (TP+FL)/(TP+FL+FN); n/a where the denominator is 0.",
        "",
        "## Lesion level (Table II layout)",
        "",
    ]
    lines += _table_ii(report)
    for model in report.lesion_level:
        lines += [f"### {model}: detail (Table V layout)", ""] + _table_v(report, model)
        lines += [f"#### {model}: by volume and longest axial diameter", ""] + _strata(report, model)
    lines += ["## Patient level (Table IV layout)", ""]
    lines += _table_iv(report)
    lines += ["The joint model counts only cases where Base+ReCls and High+ReCls agree on the patient class; "
              "the others are uncertain (flagged for a radiologist).", ""]  # fmt: skip
    lines += ["## LiverMax AUC", ""]
    lines += _table(
        ["Type", "AUC", "Positive cases", "Negative cases"],
        [[name, _auc(a.auc), str(a.positives), str(a.negatives)] for name, a in report.auc.items()],
    )
    return "\n".join(lines)


def write_report(report: EvaluationReport, out_dir: Path | str) -> tuple[Path, Path]:
    """Write ``evaluation.json`` and ``evaluation.md`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "evaluation.json"
    md_path = out_dir / "evaluation.md"
    json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(report), encoding="utf-8")
    return json_path, md_path
