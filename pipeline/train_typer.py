"""``livernode train typer``: train the lesion typer (:mod:`pipeline.lesion_typer`) on the true
lesions of labelled studies and add it to a model folder's card.

Each true lesion of at least ``min_volume_ml`` gives three training rows: its mask as labelled,
dilated by one voxel into the liver and eroded by one voxel (when something is left), because at
inference the typer sees UNet_whole's outline of the lesion, not the truth.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from pipeline.lesion_features import lesion_features
from pipeline.lesion_typer import TyperTraining, default_typer_spec, save_typer, train_typer
from pipeline.model import Preprocessing, TyperEntry, read_model_card, write_model_card
from pipeline.seg2det import seg2det
from pipeline.train import TrainingCase
from pipeline.types import LESION_LABELS, Label, LesionType, Phase

log = logging.getLogger(__name__)

TYPER_FILE = "lesion_typer.pt"
_MIN_ERODED_VOXELS = 4


def case_hu(case: TrainingCase, prep: Preprocessing) -> dict[Phase, np.ndarray]:
    """HU volumes of a case's present phases (recovered from the normalised phases)."""
    return {phase: case.phases[index].astype(np.float32) * prep.hu_scale + prep.hu_center
            for index, phase in enumerate(prep.phase_order) if phase in case.present}


def typer_rows(
    cases: Sequence[TrainingCase], prep: Preprocessing, min_volume_ml: float = 0.5, augment: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Feature vectors (N, F) and lesion labels (N,) of the true lesions of `cases`."""
    features: list[np.ndarray] = []
    labels: list[int] = []
    for case in cases:
        hu = case_hu(case, prep)
        liver = case.labels == int(Label.LIVER)
        any_lesion = np.isin(case.labels, LESION_LABELS)
        for lesion in seg2det(case.labels, case.geometry, min_volume_ml=min_volume_ml):
            mask = lesion.full_mask(case.labels.shape)
            masks = [mask]
            if augment:
                masks.append(ndimage.binary_dilation(mask) & (liver | mask))
                eroded = ndimage.binary_erosion(mask)
                if eroded.sum() >= _MIN_ERODED_VOXELS:
                    masks.append(eroded)
            for variant in masks:
                features.append(lesion_features(hu, variant, liver, case.geometry.spacing_mm, any_lesion))
                labels.append(int(lesion.lesion_type))
    if not features:
        raise ValueError(f"no lesion of {min_volume_ml} ml or more in {len(cases)} training cases: "
                         "the typer needs labelled lesions")
    return np.stack(features), np.asarray(labels, dtype=np.int64)


def fit_typer(
    model_dir: Path,
    cases: Sequence[TrainingCase],
    prep: Preprocessing,
    describe: str,
    settings: TyperTraining = TyperTraining(),
    progress: Callable[[str], None] | None = None,
) -> TyperEntry:
    """Train the typer on `cases` (described as `describe`), write its weights into `model_dir` and
    return the model card entry for them."""
    say = progress or log.info
    features, labels = typer_rows(cases, prep)
    counts = Counter(LesionType(int(v)).name for v in labels)
    missing = [t.name for t in LesionType if t.name not in counts]
    if missing:
        say(f"typer: no training lesion of type {', '.join(missing)}; it will never give those types")
    say(f"typer: {len(labels)} training rows from {len(cases)} studies ({dict(counts)})")
    spec = default_typer_spec()
    network = train_typer(features, labels, spec, settings, progress=say)
    sha256 = save_typer(network, model_dir / TYPER_FILE)
    return TyperEntry(file=TYPER_FILE, sha256=sha256, spec=spec.to_json(),
                      training={**asdict(settings), "training_data": describe, "studies": len(cases),
                                "rows_by_type": dict(counts)})


def train_typer_model(
    model_dir: Path,
    cases: Sequence[TrainingCase],
    describe: str,
    settings: TyperTraining = TyperTraining(),
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Train the typer on `cases` and add it to the model folder's card (replacing one it had).
    Returns the model card path."""
    card = read_model_card(model_dir)
    entry = fit_typer(model_dir, cases, card.preprocessing, describe, settings, progress)
    path = write_model_card(model_dir, replace(card, typer=entry))
    (progress or log.info)(f"lesion typer added to {model_dir}")
    return path
