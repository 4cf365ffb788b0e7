"""match: pair two lesion sets by shared voxels (paper eq. 6-7, DESIGN step 4).

Two lesions are a pair when their masks share at least one voxel. Against ground truth:

* a ground-truth lesion overlapping a predicted lesion of the same type is **TP**;
* one overlapping predicted lesions of other types only is **FL** (false label);
* one overlapping no predicted lesion is **FN**;
* a predicted lesion overlapping no ground-truth lesion is **FP**. A predicted lesion that overlaps
  ground truth is reported as TP (some overlapped ground-truth lesion has its type) or FL.

"Same type" goes through ``type_key``: the default compares lesion types; :func:`malignancy_key`
merges HCC, ICC and Meta into one class, which is how the paper's "Malig" row counts (an HCC
predicted as Meta is a malignant TP, not an FL).

Between two sensitivities: a high-sensitivity lesion overlapping any base lesion is *same*
(reliable), the rest are *diff* (suspicious, for human review).

Overlap is computed on bounding-box intersections of the cropped masks, so no full-size volume is
painted and the cost depends on the lesions, not on the study size.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.types import Lesion, LesionType


class Outcome(str, enum.Enum):
    """Outcome of one lesion in a ground-truth match."""

    TP = "TP"
    FL = "FL"
    FN = "FN"
    FP = "FP"


TypeKey = Callable[[LesionType], Hashable]


def identity_key(lesion_type: LesionType) -> Hashable:
    """Compare lesion types as they are."""
    return lesion_type


def malignancy_key(lesion_type: LesionType) -> Hashable:
    """Merge the malignant types (HCC, ICC, Meta) into one class; benign types stay apart."""
    return "malignant" if lesion_type.malignant else lesion_type


@dataclass(frozen=True)
class LesionPair:
    """Lesion ``first_id`` of the first set and ``second_id`` of the second share voxels."""

    first_id: int
    second_id: int
    overlap_voxels: int


@dataclass
class LesionOutcome:
    """One lesion's outcome, with the ids of the lesions of the other set it overlaps."""

    lesion: Lesion
    outcome: Outcome
    matched_ids: tuple[int, ...] = ()


@dataclass
class MatchResult:
    """Per-lesion outcomes of ground truth (TP/FL/FN) and predictions (TP/FL/FP), and all pairs."""

    ground_truth: list[LesionOutcome]
    predicted: list[LesionOutcome]
    pairs: list[LesionPair] = field(default_factory=list)

    def counts(self) -> dict[Outcome, int]:
        """TP, FL and FN over ground-truth lesions; FP over predicted lesions."""
        out = {o: 0 for o in Outcome}
        for item in self.ground_truth:
            out[item.outcome] += 1
        out[Outcome.FP] = sum(1 for item in self.predicted if item.outcome is Outcome.FP)
        return out


@dataclass
class SensitivityMatch:
    """High-sensitivity lesions split into *same* (overlapping a base lesion) and *diff*."""

    same: list[Lesion]
    diff: list[Lesion]
    pairs: list[LesionPair] = field(default_factory=list)

    @property
    def same_ids(self) -> tuple[int, ...]:
        return tuple(lesion.lesion_id for lesion in self.same)

    @property
    def diff_ids(self) -> tuple[int, ...]:
        return tuple(lesion.lesion_id for lesion in self.diff)


def overlap_voxels(a: Lesion, b: Lesion) -> int:
    """Number of voxels the two lesions share (0 when their boxes do not intersect)."""
    lo = (max(a.bbox.z0, b.bbox.z0), max(a.bbox.y0, b.bbox.y0), max(a.bbox.x0, b.bbox.x0))
    hi = (min(a.bbox.z1, b.bbox.z1), min(a.bbox.y1, b.bbox.y1), min(a.bbox.x1, b.bbox.x1))
    if any(h <= l for l, h in zip(lo, hi)):
        return 0
    a_origin = (a.bbox.z0, a.bbox.y0, a.bbox.x0)
    b_origin = (b.bbox.z0, b.bbox.y0, b.bbox.x0)
    a_part = a.mask[tuple(slice(l - o, h - o) for l, h, o in zip(lo, hi, a_origin))]
    b_part = b.mask[tuple(slice(l - o, h - o) for l, h, o in zip(lo, hi, b_origin))]
    return int(np.count_nonzero(a_part & b_part))


def _boxes(lesions: Sequence[Lesion]) -> np.ndarray:
    return np.array(
        [[l.bbox.z0, l.bbox.y0, l.bbox.x0, l.bbox.z1, l.bbox.y1, l.bbox.x1] for l in lesions], dtype=np.int64
    ).reshape(-1, 6)


def overlap_pairs(first: Sequence[Lesion], second: Sequence[Lesion]) -> list[LesionPair]:
    """Every (first, second) pair of lesions sharing at least one voxel, with the shared count."""
    if not first or not second:
        return []
    a, b = _boxes(first), _boxes(second)
    intersects = np.all(
        (np.maximum(a[:, None, :3], b[None, :, :3]) < np.minimum(a[:, None, 3:], b[None, :, 3:])), axis=-1
    )
    pairs = []
    for i, j in zip(*np.nonzero(intersects)):
        shared = overlap_voxels(first[i], second[j])
        if shared > 0:
            pairs.append(LesionPair(first[i].lesion_id, second[j].lesion_id, shared))
    return pairs


def _check_unique_ids(lesions: Sequence[Lesion], name: str) -> None:
    ids = [lesion.lesion_id for lesion in lesions]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{name} lesions must have unique lesion_id values")


def match(
    ground_truth: Sequence[Lesion], predicted: Sequence[Lesion], *, type_key: TypeKey = identity_key
) -> MatchResult:
    """TP / FL / FN for each ground-truth lesion and TP / FL / FP for each predicted lesion."""
    _check_unique_ids(ground_truth, "ground-truth")
    _check_unique_ids(predicted, "predicted")
    pairs = overlap_pairs(ground_truth, predicted)
    gt_by_id = {lesion.lesion_id: lesion for lesion in ground_truth}
    pred_by_id = {lesion.lesion_id: lesion for lesion in predicted}
    preds_of: dict[int, list[int]] = {i: [] for i in gt_by_id}
    gts_of: dict[int, list[int]] = {i: [] for i in pred_by_id}
    for pair in pairs:
        preds_of[pair.first_id].append(pair.second_id)
        gts_of[pair.second_id].append(pair.first_id)

    def outcome(lesion: Lesion, others: list[int], others_by_id: dict[int, Lesion], none: Outcome) -> Outcome:
        if not others:
            return none
        key = type_key(lesion.lesion_type)
        if any(type_key(others_by_id[i].lesion_type) == key for i in others):
            return Outcome.TP
        return Outcome.FL

    gt_outcomes = [
        LesionOutcome(g, outcome(g, preds_of[g.lesion_id], pred_by_id, Outcome.FN), tuple(preds_of[g.lesion_id]))
        for g in ground_truth
    ]
    pred_outcomes = [
        LesionOutcome(p, outcome(p, gts_of[p.lesion_id], gt_by_id, Outcome.FP), tuple(gts_of[p.lesion_id]))
        for p in predicted
    ]
    return MatchResult(gt_outcomes, pred_outcomes, pairs)


def match_sensitivities(base: Sequence[Lesion], high: Sequence[Lesion]) -> SensitivityMatch:
    """Split ``high`` into lesions overlapping some ``base`` lesion (*same*) and the rest (*diff*)."""
    pairs = overlap_pairs(high, base)
    overlapping = {pair.first_id for pair in pairs}
    same = [lesion for lesion in high if lesion.lesion_id in overlapping]
    diff = [lesion for lesion in high if lesion.lesion_id not in overlapping]
    return SensitivityMatch(same, diff, pairs)
