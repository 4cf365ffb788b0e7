"""Reclassify (paper eq. 8, 10, 11; DESIGN step 6): UNet_patch re-judges each detected lesion.

Each lesion of at most ``reclassify_max_volume_ml`` gets N patches (original and shuffled
positives, :func:`pipeline.shuffle.inference_patches`). The patch model segments them; per patch the
overlap is the volume (ml) of voxels that the model labels as any lesion (1-6) and that lie in the
lesion's own mask in that patch. The score is the mean over the N patches.

* score < ``reclassify_threshold_ml``: dropped. A score exactly at the threshold is kept (the
  comparison allows 1e-9 ml of floating-point rounding).
* with ``reclassify_relative_threshold`` r > 0, also dropped when score < r x lesion volume.
* kept lesions take the type of the patch model's volume vote inside the lesion mask, summed over
  the N patches (tie: the lower label, i.e. the more severe type; no lesion vote: type unchanged).
* lesions over the maximum volume skip all this: kept, type unchanged, score None.

The patch model is any callable ``(B, C, Z, Y, X) float32 -> (B, Z, Y, X)`` integer labels, so
tests use a fake whose answer is known. Patches are batched (``batch_size``) and made lesion by
lesion from a generator seeded with ``(config.seed, lesion_id)``, so one lesion's patches do not
depend on which other lesions were detected.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.config import CascadeConfig
from pipeline.shuffle import Patch, PatchSource, ShuffleSettings, inference_patches
from pipeline.types import LESION_LABELS, Lesion, LesionType

logger = logging.getLogger(__name__)

#: (B, C, Z, Y, X) float32 patches -> (B, Z, Y, X) integer labels (lesions 1-6).
PatchModel = Callable[[np.ndarray], np.ndarray]

_SCORE_TOLERANCE_ML = 1e-9


@dataclass
class ReclassifyOutcome:
    """What reclassification decided for one lesion."""

    lesion_id: int
    volume_ml: float
    original_type: LesionType
    new_type: LesionType
    score_ml: float | None  # None: skipped (too large)
    kept: bool
    skipped: bool
    votes: dict[LesionType, int] = field(default_factory=dict)


@dataclass
class ReclassifyResult:
    """Kept lesions (re-typed, score set), dropped lesions and one outcome per input lesion."""

    kept: list[Lesion]
    dropped: list[Lesion]
    outcomes: list[ReclassifyOutcome]


@dataclass
class _Tally:
    overlap_voxels: int = 0
    patches: int = 0
    votes: np.ndarray = field(default_factory=lambda: np.zeros(len(LESION_LABELS), dtype=np.int64))


def passes_threshold(score_ml: float, volume_ml: float, config: CascadeConfig) -> bool:
    """The keep rule: absolute threshold, and the relative one when it is enabled."""
    if score_ml < config.reclassify_threshold_ml - _SCORE_TOLERANCE_ML:
        return False
    relative = config.reclassify_relative_threshold * volume_ml
    return not (config.reclassify_relative_threshold > 0 and score_ml < relative - _SCORE_TOLERANCE_ML)


def _run_batch(
    patch_model: PatchModel, batch: list[tuple[int, Patch]], tallies: dict[int, _Tally]
) -> None:
    images = np.ascontiguousarray(np.stack([patch.image for _, patch in batch]), dtype=np.float32)
    predicted = np.asarray(patch_model(images))
    expected = (images.shape[0],) + images.shape[2:]
    if predicted.shape != expected:
        raise ValueError(f"patch model returned shape {predicted.shape}, expected {expected}")
    if not np.issubdtype(predicted.dtype, np.integer):
        raise ValueError(f"patch model must return integer labels, got {predicted.dtype}")
    for (lesion_id, patch), labels in zip(batch, predicted):
        inside = labels[patch.lesion_mask]
        lesion_labels = inside[(inside >= LESION_LABELS[0]) & (inside <= LESION_LABELS[-1])].astype(np.intp)
        tally = tallies[lesion_id]
        tally.overlap_voxels += int(lesion_labels.size)
        tally.patches += 1
        tally.votes += np.bincount(lesion_labels - LESION_LABELS[0], minlength=len(LESION_LABELS))


def reclassify(
    lesions: Sequence[Lesion],
    source: PatchSource,
    patch_model: PatchModel,
    config: CascadeConfig,
    voxel_volume_ml: float,
    *,
    settings: ShuffleSettings | None = None,
    batch_size: int = 8,
) -> ReclassifyResult:
    """Score, filter and re-type ``lesions`` with ``patch_model`` (see the module docstring).

    ``source`` holds the image channels the patch model expects and the label map the lesions came
    from; ``voxel_volume_ml`` converts overlap voxels to ml.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if voxel_volume_ml <= 0:
        raise ValueError(f"voxel_volume_ml must be > 0, got {voxel_volume_ml}")
    settings = settings or ShuffleSettings.from_config(config)
    tallies: dict[int, _Tally] = {}
    batch: list[tuple[int, Patch]] = []
    for lesion in lesions:
        if lesion.volume_ml > config.reclassify_max_volume_ml:
            continue
        if lesion.lesion_id in tallies:
            raise ValueError(f"duplicate lesion_id {lesion.lesion_id}")
        tallies[lesion.lesion_id] = _Tally()
        rng = np.random.default_rng([config.seed, lesion.lesion_id])
        for patch in inference_patches(source, lesion, config.inference_patches_per_lesion, settings, rng):
            batch.append((lesion.lesion_id, patch))
            if len(batch) == batch_size:
                _run_batch(patch_model, batch, tallies)
                batch = []
    if batch:
        _run_batch(patch_model, batch, tallies)

    kept: list[Lesion] = []
    dropped: list[Lesion] = []
    outcomes: list[ReclassifyOutcome] = []
    for lesion in lesions:
        tally = tallies.get(lesion.lesion_id)
        if tally is None:
            kept.append(lesion)
            outcomes.append(
                ReclassifyOutcome(lesion.lesion_id, lesion.volume_ml, lesion.lesion_type, lesion.lesion_type,
                                  None, kept=True, skipped=True)
            )  # fmt: skip
            continue
        score_ml = tally.overlap_voxels / max(tally.patches, 1) * voxel_volume_ml
        votes = {LesionType(label): int(n) for label, n in zip(LESION_LABELS, tally.votes) if n > 0}
        new_type = (
            LesionType(int(np.argmax(tally.votes)) + LESION_LABELS[0]) if tally.votes.any() else lesion.lesion_type
        )
        keep = passes_threshold(score_ml, lesion.volume_ml, config)
        if keep:
            kept.append(dataclasses.replace(lesion, lesion_type=new_type, reclassification_score_ml=score_ml))
        else:
            dropped.append(dataclasses.replace(lesion, reclassification_score_ml=score_ml))
        outcomes.append(
            ReclassifyOutcome(lesion.lesion_id, lesion.volume_ml, lesion.lesion_type,
                              new_type if keep else lesion.lesion_type, score_ml, kept=keep, skipped=False,
                              votes=votes)
        )  # fmt: skip
    logger.info(
        "reclassify: %d lesions, %d skipped (> %.1f ml), %d dropped",
        len(lesions), sum(o.skipped for o in outcomes), config.reclassify_max_volume_ml, len(dropped),
    )  # fmt: skip
    return ReclassifyResult(kept, dropped, outcomes)
