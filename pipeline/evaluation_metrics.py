"""Metric arithmetic of the evaluation (DESIGN section 4): lesion counts with strata, patient-level
class and malignancy metrics, and the Mann-Whitney AUC. Pure functions over lesion lists; reading
folders and writing reports live in :mod:`pipeline.evaluate`.

Counting rules (see docs/cascade.md for the reasoning):

* matching uses every lesion; lesions under ``min_volume_ml`` (0.5 ml as in the paper) are then left
  out of the counts: a ground-truth lesion under it counts nowhere, a false positive under it is not
  counted. A prediction overlapping only such a small ground-truth lesion is therefore not an FP.
* per type: ground-truth outcomes (TP, FL, FN) count under the ground-truth lesion's type, FPs under
  the predicted lesion's type. "All" is the sum over types. "Malign" matches again with HCC, ICC and
  Meta merged into one class (an HCC found as Meta is a malignant TP), counting malignant
  ground-truth lesions and malignant FPs.
* strata use the ground-truth lesion's volume / longest axial diameter, and the predicted lesion's
  for FPs. Volume strata are lower-inclusive ``[lo, hi)`` ml; diameter strata upper-inclusive
  ``(lo, hi]`` cm, as their names (<=1, 1-3, 3-5, >5) read.
* precision = TP / (TP + FP), recall = TP / (TP + FN), rough recall = (TP + FL) / (TP + FL + FN);
  None (JSON null) when the denominator is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.matching import Outcome, malignancy_key, match
from pipeline.types import Lesion, LesionType, PatientClass

MODEL_BASE = "Base"
MODEL_BASE_RECLS = "Base+ReCls"
MODEL_HIGH_RECLS = "High+ReCls"
#: the joint model: Base+ReCls and High+ReCls, counted over the cases where they agree.
MODEL_JOINT = "Base+ReCls & High+ReCls"
#: lesion-level High+ReCls restricted to the joint model's consensus cases (the paper's Table V).
MODEL_HIGH_RECLS_CONSENSUS = "High+ReCls (consensus cases)"

#: lesion groups in table order: the six types, all lesions, the malignant group.
GROUP_ALL = "All"
GROUP_MALIGNANT = "Malign"
GROUPS: tuple[str, ...] = tuple(t.display_name for t in LesionType) + (GROUP_ALL, GROUP_MALIGNANT)

#: volume strata (ml), lower-inclusive; "<0.5" only fills when the volume filter is below 0.5 ml.
VOLUME_STRATA: tuple[tuple[str, float, float], ...] = (
    ("<0.5", 0.0, 0.5),
    ("0.5-2", 0.5, 2.0),
    ("2-4", 2.0, 4.0),
    ("4-8", 4.0, 8.0),
    ("8-16", 8.0, 16.0),
    ("16-64", 16.0, 64.0),
    (">64", 64.0, float("inf")),
)
#: diameter strata (cm), upper-inclusive.
DIAMETER_STRATA: tuple[tuple[str, float, float], ...] = (
    ("<=1", 0.0, 1.0),
    ("1-3", 1.0, 3.0),
    ("3-5", 3.0, 5.0),
    (">5", 5.0, float("inf")),
)


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator > 0 else None


@dataclass
class LesionCounts:
    """TP, FL, FP, FN of one lesion group and the rates derived from them."""

    tp: int = 0
    fl: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def rough_recall(self) -> float | None:
        return _ratio(self.tp + self.fl, self.tp + self.fl + self.fn)

    def add(self, outcome: Outcome) -> None:
        """Count one outcome."""
        setattr(self, outcome.value.lower(), getattr(self, outcome.value.lower()) + 1)

    def merge(self, other: LesionCounts) -> None:
        """Add another set of counts to this one."""
        self.tp += other.tp
        self.fl += other.fl
        self.fp += other.fp
        self.fn += other.fn

    def to_dict(self) -> dict[str, int | float | None]:
        return {
            "TP": self.tp, "FL": self.fl, "FP": self.fp, "FN": self.fn,
            "precision": self.precision, "recall": self.recall, "rough_recall": self.rough_recall,
        }  # fmt: skip


def volume_stratum(volume_ml: float) -> str:
    """Name of the volume stratum of ``volume_ml`` (lower-inclusive bins)."""
    for name, lo, hi in VOLUME_STRATA:
        if lo <= volume_ml < hi:
            return name
    raise ValueError(f"volume must be >= 0 ml, got {volume_ml}")


def diameter_stratum(diameter_mm: float) -> str:
    """Name of the diameter stratum of ``diameter_mm`` (upper-inclusive bins in cm)."""
    diameter_cm = diameter_mm / 10.0
    if diameter_cm < 0:
        raise ValueError(f"diameter must be >= 0 mm, got {diameter_mm}")
    for name, lo, hi in DIAMETER_STRATA:
        if diameter_cm <= hi:
            return name
    return DIAMETER_STRATA[-1][0]


@dataclass
class LesionTally:
    """Counts of one model: overall and per stratum, for every group."""

    overall: dict[str, LesionCounts] = field(default_factory=lambda: {g: LesionCounts() for g in GROUPS})
    by_volume: dict[str, dict[str, LesionCounts]] = field(
        default_factory=lambda: {s[0]: {g: LesionCounts() for g in GROUPS} for s in VOLUME_STRATA}
    )
    by_diameter: dict[str, dict[str, LesionCounts]] = field(
        default_factory=lambda: {s[0]: {g: LesionCounts() for g in GROUPS} for s in DIAMETER_STRATA}
    )

    def _count(self, groups: Sequence[str], lesion: Lesion, outcome: Outcome) -> None:
        volume = volume_stratum(lesion.volume_ml)
        diameter = diameter_stratum(lesion.longest_axial_diameter_mm)
        for group in groups:
            self.overall[group].add(outcome)
            self.by_volume[volume][group].add(outcome)
            self.by_diameter[diameter][group].add(outcome)

    def add_case(self, ground_truth: Sequence[Lesion], predicted: Sequence[Lesion], min_volume_ml: float) -> None:
        """Match one case and count its lesions (see the module docstring for the rules)."""
        by_type = match(ground_truth, predicted)
        for item in by_type.ground_truth:
            if item.lesion.volume_ml >= min_volume_ml:
                self._count((item.lesion.lesion_type.display_name, GROUP_ALL), item.lesion, item.outcome)
        for item in by_type.predicted:
            if item.outcome is Outcome.FP and item.lesion.volume_ml >= min_volume_ml:
                self._count((item.lesion.lesion_type.display_name, GROUP_ALL), item.lesion, Outcome.FP)
        grouped = match(ground_truth, predicted, type_key=malignancy_key)
        for item in grouped.ground_truth:
            if item.lesion.lesion_type.malignant and item.lesion.volume_ml >= min_volume_ml:
                self._count((GROUP_MALIGNANT,), item.lesion, item.outcome)
        for item in grouped.predicted:
            lesion = item.lesion
            if item.outcome is Outcome.FP and lesion.lesion_type.malignant and lesion.volume_ml >= min_volume_ml:
                self._count((GROUP_MALIGNANT,), lesion, Outcome.FP)

    def to_dict(self) -> dict:
        def groups(counts: dict[str, LesionCounts]) -> dict:
            return {g: c.to_dict() for g, c in counts.items()}

        return {
            "overall": groups(self.overall),
            "by_volume_ml": {s: groups(c) for s, c in self.by_volume.items()},
            "by_diameter_cm": {s: groups(c) for s, c in self.by_diameter.items()},
        }


@dataclass
class PatientMetrics:
    """Patient-level class accuracy and malignancy sensitivity/specificity of one model.

    For the joint model, ``cases`` counts only consensus cases and ``uncertain`` the others."""

    cases: int = 0
    correct: int = 0
    malignant_tp: int = 0
    malignant_fn: int = 0
    malignant_tn: int = 0
    malignant_fp: int = 0
    uncertain: int = 0

    def add(self, truth: PatientClass, predicted: PatientClass | None) -> None:
        """Count one case; ``predicted`` None means an uncertain joint verdict."""
        if predicted is None:
            self.uncertain += 1
            return
        self.cases += 1
        self.correct += int(truth == predicted)
        if truth.malignant:
            self.malignant_tp += int(predicted.malignant)
            self.malignant_fn += int(not predicted.malignant)
        else:
            self.malignant_fp += int(predicted.malignant)
            self.malignant_tn += int(not predicted.malignant)

    @property
    def accuracy(self) -> float | None:
        return _ratio(self.correct, self.cases)

    @property
    def sensitivity(self) -> float | None:
        return _ratio(self.malignant_tp, self.malignant_tp + self.malignant_fn)

    @property
    def specificity(self) -> float | None:
        return _ratio(self.malignant_tn, self.malignant_tn + self.malignant_fp)

    @property
    def uncertain_fraction(self) -> float | None:
        return _ratio(self.uncertain, self.cases + self.uncertain)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(
            accuracy=self.accuracy, sensitivity=self.sensitivity, specificity=self.specificity,
            uncertain_fraction=self.uncertain_fraction,
        )  # fmt: skip
        return out


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, ties sharing the mean of their ranks."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of positions start+1 .. end
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def mann_whitney_auc(positive_scores: Sequence[float], negative_scores: Sequence[float]) -> float | None:
    """AUC as the Mann-Whitney U statistic / (n_pos x n_neg), ties counting one half.

    None when either class is empty."""
    pos = np.asarray(positive_scores, dtype=np.float64)
    neg = np.asarray(negative_scores, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        return None
    ranks = average_ranks(np.concatenate([pos, neg]))
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


@dataclass
class AucResult:
    """AUC of one score with its class sizes (auc None without positives or negatives)."""

    auc: float | None
    positives: int
    negatives: int

    def to_dict(self) -> dict:
        return asdict(self)
