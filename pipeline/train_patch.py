"""Training data of UNet_patch: lesion-shuffle patches (all four kinds) from training studies, plus
hard cases around UNet_whole's own false positives at high sensitivity (reference paper III-C).

Patches are cut from the normalised phases on the working grid with voxels outside the liver set
to the preprocessing's background value, exactly as the cascade cuts them at inference
(:func:`patch_channels`). Targets: 0 not lesion (liver or outside), 1-6 lesion type.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from pipeline.config import CascadeConfig
from pipeline.inference import ModelInput, WholePredictor, background_value
from pipeline.matching import overlap_pairs
from pipeline.model import NetworkSpec, Preprocessing
from pipeline.sensitivity import scaled_argmax
from pipeline.seg2det import seg2det
from pipeline.shuffle import Patch, PatchSource, ShuffleSettings, training_patches
from pipeline.train import TrainConfig, TrainingCase, TrainResult, case_model_input, train_network
from pipeline.types import LESION_LABELS, Label, Lesion, LesionType

log = logging.getLogger(__name__)

#: False positives of UNet_whole per training study turned into hard cases.
MAX_HARD_CASES_PER_STUDY = 12


def patches_per_lesion_by_type(
    cases: Sequence[TrainingCase], per_lesion: int, max_factor: float
) -> dict[LesionType, int]:
    """Patches per lesion of each type so that the types are about equally represented: a type
    with k lesions gets ``per_lesion x min(max_factor, most / k)`` (``most``: the commonest
    type's count). ``max_factor`` 1 gives every type ``per_lesion`` (no balancing)."""
    if max_factor < 1:
        raise ValueError(f"max_factor must be >= 1, got {max_factor}")
    counts = Counter(lesion.lesion_type for case in cases for lesion in seg2det(case.labels, case.geometry))
    most = max(counts.values(), default=0)
    return {
        lesion_type: int(round(per_lesion * min(max_factor, most / counts[lesion_type])))
        if counts[lesion_type] else per_lesion
        for lesion_type in LesionType
    }


def patch_channels(model_input: ModelInput, prep: Preprocessing) -> list[np.ndarray]:
    """The patch model's image channels: the normalised phases in the model's phase order (absent
    phases are zeros; the patch model gets presence channels separately)."""
    return [model_input.image[i] for i in range(len(prep.phase_order))]


def patch_settings(config: CascadeConfig, prep: Preprocessing) -> ShuffleSettings:
    """Patch geometry shared by training and inference."""
    return ShuffleSettings(patch_size_voxels=config.patch_size_voxels, fill_value=background_value(prep))


def _false_positives(case: TrainingCase, predictor: WholePredictor, factor: float, prep: Preprocessing):
    probabilities = predictor.predict(case_model_input(case, prep))
    labels = scaled_argmax(probabilities, (factor,), compute_livermax=False).label_maps[factor]
    detected = seg2det(labels, case.geometry)
    truth = seg2det(case.labels, case.geometry)
    hit = {pair.second_id for pair in overlap_pairs(truth, detected)}
    false_positives = [lesion for lesion in detected if lesion.lesion_id not in hit]
    # the largest first: they cost the most; a poorly trained model's hundreds of specks are capped
    return sorted(false_positives, key=lambda lesion: -lesion.voxel_count)[:MAX_HARD_CASES_PER_STUDY]


def patch_cases(
    cases: Sequence[TrainingCase],
    prep: Preprocessing,
    config: CascadeConfig,
    seed: int,
    predictor: WholePredictor | None = None,
    high_factor: float = 4.0,
    progress: Callable[[str], None] | None = None,
    per_lesion_by_type: Mapping[LesionType, int] | None = None,
) -> list[TrainingCase]:
    """Training patches of every case as small cases (one per patch) for ``train_network``.
    ``per_lesion_by_type`` overrides the configuration's patches per lesion type by type
    (:func:`patches_per_lesion_by_type`)."""
    say = progress or log.info
    settings = patch_settings(config, prep)
    rng = np.random.default_rng(seed)
    out: list[TrainingCase] = []
    hard = 0
    for index, case in enumerate(cases, 1):
        truth = seg2det(case.labels, case.geometry)
        false_positives = _false_positives(case, predictor, high_factor, prep) if predictor is not None else []
        hard += len(false_positives)
        if not truth and not false_positives:
            continue
        labels = case.labels.copy()
        labels[~np.isin(labels, (int(Label.LIVER),) + LESION_LABELS)] = 0
        source = PatchSource(patch_channels(case_model_input(case, prep), prep), labels)
        for number, patch in enumerate(_case_patches(source, truth, false_positives, config, settings, rng,
                                                     per_lesion_by_type)):
            target = patch.labels.copy()
            target[target == int(Label.LIVER)] = 0
            out.append(
                TrainingCase(
                    case_id=f"{case.case_id}/patch{number}",
                    phases=patch.image.astype(np.float16),
                    present=case.present,
                    labels=target.astype(np.uint8),
                    geometry=case.geometry,
                )
            )
        if index % 20 == 0 or index == len(cases):
            say(f"patches: {index}/{len(cases)} studies, {len(out)} patches ({hard} hard-case detections)")
    return out


def _case_patches(source: PatchSource, truth: Sequence[Lesion], false_positives: Sequence[Lesion],
                  config: CascadeConfig, settings: ShuffleSettings, rng: np.random.Generator,
                  per_lesion_by_type: Mapping[LesionType, int] | None) -> list[Patch]:
    per_lesion = config.training_patches_per_lesion
    if per_lesion_by_type is None:
        return training_patches(source, truth, per_lesion, settings, rng, false_positives=false_positives)
    patches: list[Patch] = []
    for lesion in truth:
        patches += training_patches(source, [lesion], per_lesion_by_type.get(lesion.lesion_type, per_lesion),
                                    settings, rng)
    return patches + training_patches(source, [], per_lesion, settings, rng, false_positives=false_positives)


def train_patch_network(
    spec: NetworkSpec,
    cases: Sequence[TrainingCase],
    prep: Preprocessing,
    cascade: CascadeConfig,
    config: TrainConfig,
    work_dir: Path,
    predictor: WholePredictor | None,
    hard_case_studies: int,
    resume: bool = False,
    progress: Callable[[str], None] | None = None,
    type_balance: float = 1.0,
) -> tuple[TrainResult, int]:
    """UNet_patch on lesion-shuffle patches of `cases`, with hard cases mined by `predictor` on the
    first `hard_case_studies` of them; returns the result and the number of patches. Rare lesion
    types get up to `type_balance` times more patches per lesion (1: none)."""
    mined = hard_case_studies if predictor is not None else 0
    by_type = None
    if type_balance > 1:
        by_type = patches_per_lesion_by_type(cases, cascade.training_patches_per_lesion, type_balance)
        (progress or log.info)("patches per lesion by type: " + ", ".join(f"{t.name} {n}" for t, n in by_type.items()))
    patches = patch_cases(cases[:mined], prep, cascade, seed=2, predictor=predictor, progress=progress,
                          per_lesion_by_type=by_type)
    patches += patch_cases(cases[mined:], prep, cascade, seed=4, progress=progress, per_lesion_by_type=by_type)
    if not patches:
        raise ValueError("no lesion in the training studies: UNet_patch needs lesions to learn from")
    result = train_network(spec, patches, [], prep, config, work_dir, "unet_patch.pt", resume=resume,
                           progress=progress)
    return result, len(patches)
