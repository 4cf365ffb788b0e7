"""Evaluation of predictions against ground truth (DESIGN section 4; the paper's tables II, IV, V).

Input (docs/cascade.md has the full description):

* a predictions folder with ``<case>.npz`` holding ``base``, ``base_recls``, ``high_recls`` (uint8
  label maps (z, y, x); lesion labels 1-6 count, organ labels are ignored), ``livermax``
  (float32[6], HCC..Cyst) and ``spacing_mm`` ((z, y, x) mm) - what
  :func:`pipeline.cascade.save_evaluation_npz` writes;
* a ground-truth folder with ``<case>.npz`` (``labels`` uint8 (z, y, x), ``spacing_mm``) or the
  phantom generator's ``<case>/truth/labels.nii.gz`` (read with SimpleITK).

:func:`evaluate_folders` returns an :class:`EvaluationReport`; :func:`write_report` writes
``evaluation.json`` and ``evaluation.md``. Every label map goes through seg2det, so lesions are
defined the same way for ground truth and predictions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.classify import classify_patient
from pipeline.evaluation_metrics import (
    MODEL_BASE,
    MODEL_BASE_RECLS,
    MODEL_HIGH_RECLS,
    MODEL_HIGH_RECLS_CONSENSUS,
    MODEL_JOINT,
    AucResult,
    LesionTally,
    PatientMetrics,
    mann_whitney_auc,
)
from pipeline.evaluation_report import render_markdown, write_report
from pipeline.seg2det import seg2det
from pipeline.types import LESION_LABELS, Lesion, LesionType, PatientClass, VolumeGeometry

logger = logging.getLogger(__name__)

#: prediction keys of the evaluation file, per model.
PREDICTION_KEYS: dict[str, str] = {MODEL_BASE: "base", MODEL_BASE_RECLS: "base_recls", MODEL_HIGH_RECLS: "high_recls"}
AUC_MALIGNANT = "Malign"

__all__ = [
    "CaseEvaluation", "EvaluationReport", "evaluate_cases", "evaluate_folders", "load_ground_truth",
    "load_prediction", "render_markdown", "write_report",
]  # fmt: skip


@dataclass
class CasePrediction:
    """One case's prediction file, loaded."""

    label_maps: dict[str, np.ndarray]  # model name -> label map
    livermax: np.ndarray  # float32[6]
    spacing_mm: tuple[float, float, float]


@dataclass
class CaseEvaluation:
    """Patient-level view of one case."""

    case: str
    truth: PatientClass
    predicted: dict[str, PatientClass]  # Base, Base+ReCls, High+ReCls
    joint: str  # the agreed class value or "uncertain"
    ground_truth_lesions: int  # at or above the volume filter
    livermax: dict[str, float]

    def to_dict(self) -> dict:
        return {
            "case": self.case,
            "truth": self.truth.value,
            "predicted": {m: c.value for m, c in self.predicted.items()},
            "joint": self.joint,
            "ground_truth_lesions": self.ground_truth_lesions,
            "livermax": self.livermax,
        }


@dataclass
class EvaluationReport:
    """All metrics of one evaluation run."""

    min_lesion_volume_ml: float
    cases: list[CaseEvaluation] = field(default_factory=list)
    lesion_level: dict[str, LesionTally] = field(default_factory=dict)
    patient_level: dict[str, PatientMetrics] = field(default_factory=dict)
    auc: dict[str, AucResult] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "min_lesion_volume_ml": self.min_lesion_volume_ml,
            "num_cases": len(self.cases),
            "lesion_level": {m: t.to_dict() for m, t in self.lesion_level.items()},
            "patient_level": {m: p.to_dict() for m, p in self.patient_level.items()},
            "auc_livermax": {k: a.to_dict() for k, a in self.auc.items()},
            "cases": [c.to_dict() for c in self.cases],
        }


# ---------------------------------------------------------------- reading


def _label_array(array: np.ndarray, where: str) -> np.ndarray:
    if array.ndim != 3:
        raise ValueError(f"{where}: label map must be 3D (z, y, x), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{where}: label map must be an integer array, got {array.dtype}")
    return array.astype(np.uint8, copy=False)


def _spacing(value: np.ndarray, where: str) -> tuple[float, float, float]:
    spacing = np.asarray(value, dtype=np.float64).ravel()
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise ValueError(f"{where}: spacing_mm must be three positive numbers (z, y, x), got {spacing}")
    return (float(spacing[0]), float(spacing[1]), float(spacing[2]))


def load_prediction(path: Path) -> CasePrediction:
    """Read one predictions ``<case>.npz``; ValueError naming the file when it is malformed."""
    with np.load(path) as data:
        missing = [k for k in (*PREDICTION_KEYS.values(), "livermax", "spacing_mm") if k not in data.files]
        if missing:
            raise ValueError(f"{path}: missing keys {missing}")
        maps = {m: _label_array(data[k], f"{path}[{k}]") for m, k in PREDICTION_KEYS.items()}
        livermax = np.asarray(data["livermax"], dtype=np.float32).ravel()
        spacing = _spacing(data["spacing_mm"], str(path))
    if livermax.shape != (len(LESION_LABELS),):
        raise ValueError(f"{path}: livermax must hold {len(LESION_LABELS)} values, got {livermax.shape}")
    shapes = {m.shape for m in maps.values()}
    if len(shapes) != 1:
        raise ValueError(f"{path}: label maps differ in shape: {sorted(shapes)}")
    return CasePrediction(maps, livermax, spacing)


def load_ground_truth(gt_dir: Path, case: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Ground-truth labels and (z, y, x) spacing of ``case`` from ``<case>.npz`` or
    ``<case>/truth/labels.nii.gz``."""
    npz = gt_dir / f"{case}.npz"
    nifti = gt_dir / case / "truth" / "labels.nii.gz"
    if npz.is_file():
        with np.load(npz) as data:
            if "labels" not in data.files or "spacing_mm" not in data.files:
                raise ValueError(f"{npz}: needs keys 'labels' and 'spacing_mm', has {data.files}")
            return _label_array(data["labels"], str(npz)), _spacing(data["spacing_mm"], str(npz))
    if nifti.is_file():
        import SimpleITK as sitk  # here: evaluation of .npz truth needs no SimpleITK

        image = sitk.ReadImage(str(nifti))
        spacing_zyx = np.asarray(image.GetSpacing()[::-1])
        return _label_array(sitk.GetArrayFromImage(image), str(nifti)), _spacing(spacing_zyx, str(nifti))
    raise ValueError(f"no ground truth for case {case!r}: expected {npz} or {nifti}")


# ---------------------------------------------------------------- evaluating


def _lesions(labels: np.ndarray, spacing_mm: tuple[float, float, float], connectivity_2d: int) -> list[Lesion]:
    geometry = VolumeGeometry(shape=tuple(labels.shape), spacing_mm=spacing_mm, origin_mm=(0.0, 0.0, 0.0))
    return seg2det(labels, geometry, connectivity_2d=connectivity_2d)


def evaluate_cases(
    cases: Iterable[tuple[str, CasePrediction, np.ndarray, tuple[float, float, float]]],
    *,
    min_lesion_volume_ml: float = 0.5,
    connectivity_2d: int = 8,
) -> EvaluationReport:
    """Evaluate loaded cases: (name, prediction, ground-truth labels, ground-truth spacing)."""
    if min_lesion_volume_ml < 0:
        raise ValueError(f"min_lesion_volume_ml must be >= 0, got {min_lesion_volume_ml}")
    report = EvaluationReport(min_lesion_volume_ml=min_lesion_volume_ml)
    for model in (*PREDICTION_KEYS, MODEL_HIGH_RECLS_CONSENSUS):
        report.lesion_level[model] = LesionTally()
    for model in (*PREDICTION_KEYS, MODEL_JOINT):
        report.patient_level[model] = PatientMetrics()
    scores: list[np.ndarray] = []
    truth_types: list[set[LesionType]] = []

    for name, prediction, gt_labels, gt_spacing in cases:
        shape = next(iter(prediction.label_maps.values())).shape
        if gt_labels.shape != shape:
            raise ValueError(f"case {name}: ground truth shape {gt_labels.shape} != prediction shape {shape}")
        if not np.allclose(gt_spacing, prediction.spacing_mm, rtol=1e-3, atol=1e-4):
            raise ValueError(f"case {name}: ground truth spacing {gt_spacing} != prediction {prediction.spacing_mm}")
        truth = _lesions(gt_labels, gt_spacing, connectivity_2d)
        predicted = {m: _lesions(lm, prediction.spacing_mm, connectivity_2d) for m, lm in prediction.label_maps.items()}
        for model, lesions in predicted.items():
            report.lesion_level[model].add_case(truth, lesions, min_lesion_volume_ml)

        truth_class = classify_patient(truth, min_volume_ml=min_lesion_volume_ml)
        classes = {m: classify_patient(ls, min_volume_ml=min_lesion_volume_ml) for m, ls in predicted.items()}
        for model, cls in classes.items():
            report.patient_level[model].add(truth_class, cls)
        consensus = classes[MODEL_BASE_RECLS] == classes[MODEL_HIGH_RECLS]
        report.patient_level[MODEL_JOINT].add(truth_class, classes[MODEL_HIGH_RECLS] if consensus else None)
        if consensus:
            report.lesion_level[MODEL_HIGH_RECLS_CONSENSUS].add_case(
                truth, predicted[MODEL_HIGH_RECLS], min_lesion_volume_ml
            )

        kept_truth = [t for t in truth if t.volume_ml >= min_lesion_volume_ml]
        truth_types.append({t.lesion_type for t in kept_truth})
        scores.append(prediction.livermax)
        report.cases.append(
            CaseEvaluation(
                case=name,
                truth=truth_class,
                predicted=classes,
                joint=classes[MODEL_HIGH_RECLS].value if consensus else "uncertain",
                ground_truth_lesions=len(kept_truth),
                livermax={LesionType(l).display_name: float(v) for l, v in zip(LESION_LABELS, prediction.livermax)},
            )
        )
        logger.debug("evaluated case %s: truth %s, classes %s", name, truth_class.value, classes)

    report.auc = _livermax_auc(scores, truth_types)
    return report


def _livermax_auc(scores: list[np.ndarray], truth_types: list[set[LesionType]]) -> dict[str, AucResult]:
    out: dict[str, AucResult] = {}
    matrix = np.asarray(scores, dtype=np.float64).reshape(len(scores), len(LESION_LABELS))
    for index, label in enumerate(LESION_LABELS):
        lesion_type = LesionType(label)
        positive = np.array([lesion_type in types for types in truth_types], dtype=bool)
        out[lesion_type.display_name] = AucResult(
            mann_whitney_auc(matrix[positive, index], matrix[~positive, index]), int(positive.sum()),
            int((~positive).sum()),
        )  # fmt: skip
    malignant_columns = [i for i, label in enumerate(LESION_LABELS) if LesionType(label).malignant]
    malignant_score = matrix[:, malignant_columns].max(axis=1) if len(scores) else np.zeros(0)
    positive = np.array([any(t.malignant for t in types) for types in truth_types], dtype=bool)
    out[AUC_MALIGNANT] = AucResult(
        mann_whitney_auc(malignant_score[positive], malignant_score[~positive]), int(positive.sum()),
        int((~positive).sum()),
    )  # fmt: skip
    return out


def evaluate_folders(
    pred_dir: Path | str,
    gt_dir: Path | str,
    *,
    min_lesion_volume_ml: float = 0.5,
    connectivity_2d: int = 8,
) -> EvaluationReport:
    """Evaluate every ``<case>.npz`` of ``pred_dir`` against its ground truth in ``gt_dir``.

    Cases are processed one at a time (only one case's arrays are in memory)."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if not pred_dir.is_dir():
        raise ValueError(f"predictions folder {pred_dir} does not exist")
    if not gt_dir.is_dir():
        raise ValueError(f"ground-truth folder {gt_dir} does not exist")
    files = sorted(pred_dir.glob("*.npz"))
    if not files:
        raise ValueError(f"no <case>.npz prediction files in {pred_dir}")

    def cases() -> Iterator[tuple[str, CasePrediction, np.ndarray, tuple[float, float, float]]]:
        for path in files:
            labels, spacing = load_ground_truth(gt_dir, path.stem)
            yield path.stem, load_prediction(path), labels, spacing

    report = evaluate_cases(cases(), min_lesion_volume_ml=min_lesion_volume_ml, connectivity_2d=connectivity_2d)
    logger.info("evaluated %d cases from %s against %s", len(report.cases), pred_dir, gt_dir)
    return report
