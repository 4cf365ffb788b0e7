"""``livernode train typer``: train the lesion typer (:mod:`pipeline.lesion_typer`) on labelled
studies and add it to a model folder's card.

* Lesion rows: each true lesion of at least ``min_volume_ml`` gives three rows, its mask as
  labelled, dilated by one voxel into the liver and eroded by one voxel (when something is left),
  because at inference the typer sees UNet_whole's outline of the lesion, not the truth.
* "Not a lesion" rows: the model's own false positives. UNet_whole runs on every training study
  with a phase subset drawn as at training (so the look-alikes of a venous-only study are seen
  too), at the cascade's sensitivities and with its liver outline steps
  (``pipeline.cascade.sensitivity_label_maps``); detections that touch no true lesion become rows
  of class 0, with UNet_whole's own liver and lesion maps, exactly as the cascade computes
  features at inference.
* The false positives can come from another model than the folder's UNet_whole: any configured
  backend (:class:`BackendMiner`, ``livernode train typer --miner-config``), e.g. the nnU-Net model
  a site runs with ``model.typer_dir`` pointing at this folder, so the typer learns that model's
  look-alikes. It sees each study with all its phases (such a model may need a fixed set; studies
  without it are skipped).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy import ndimage

from pipeline.backends import MissingPhasesError, SegmentationBackend
from pipeline.cascade import sensitivity_label_maps
from pipeline.config import CascadeConfig
from pipeline.inference import ModelInput
from pipeline.lesion_features import feature_count, lesion_features
from pipeline.lesion_typer import (
    NOT_A_LESION,
    TYPER_PHASE_COMBINATIONS,
    TyperTraining,
    default_typer_spec,
    feature_rows,
    save_typer,
    train_typer,
)
from pipeline.matching import overlap_pairs
from pipeline.model import Preprocessing, TyperEntry, read_model_card, write_model_card
from pipeline.seg2det import seg2det
from pipeline.train import TrainingCase, case_model_input
from pipeline.types import LESION_LABELS, Label, Lesion, LesionType

log = logging.getLogger(__name__)

TYPER_FILE = "lesion_typer.pt"
_MIN_ERODED_VOXELS = 4


class CasePredictor(Protocol):
    """What mines the typer's "not a lesion" rows (UNet_whole's ``WholePredictor``, or a
    :class:`BackendMiner`)."""

    def predict(self, model_input: ModelInput) -> np.ndarray:
        """Softmax probabilities (14, Z, Y, X) on `model_input`'s grid."""
        ...


@dataclass(frozen=True)
class BackendMiner:
    """A configured segmentation backend (native, TorchScript or nnU-Net) as the model whose false
    positives the typer learns. It answers on the grid of the study it is given, as the cascade's
    label maps need."""

    backend: SegmentationBackend
    #: what the model card records as the source of the false positives (default: the model's name)
    name: str = ""

    def describe(self) -> str:
        return self.name or self.backend.identity.name

    def predict(self, model_input: ModelInput) -> np.ndarray:
        probabilities = self.backend.predict(dict(model_input.hu), model_input.geometry).probabilities
        if probabilities.shape[1:] != model_input.geometry.shape:
            raise ValueError(f"{self.backend.identity.name} answered on a grid of {probabilities.shape[1:]}, not on "
                             f"the typer's working grid {model_input.geometry.shape}; use a model folder with "
                             "the same target spacing, or an nnU-Net model (it answers on the grid it is given)")
        return probabilities


def typer_rows(
    cases: Sequence[TrainingCase], prep: Preprocessing, min_volume_ml: float = 0.5, augment: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Feature vectors (N, F) and lesion labels (N,) of the true lesions of `cases`."""
    features: list[np.ndarray] = []
    labels: list[int] = []
    for case in cases:
        hu = case_model_input(case, prep).hu
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


def detection_classes(truth: Sequence[Lesion], detected: Sequence[Lesion]) -> list[int]:
    """For each detection, the type of the true lesion it shares most voxels with, or
    ``NOT_A_LESION`` when it touches none."""
    best: dict[int, tuple[int, int]] = {}  # detection id -> (shared voxels, true lesion id)
    for pair in overlap_pairs(truth, detected):
        best[pair.second_id] = max(best.get(pair.second_id, (0, 0)), (pair.overlap_voxels, pair.first_id))
    types = {lesion.lesion_id: int(lesion.lesion_type) for lesion in truth}
    return [types[best[lesion.lesion_id][1]] if lesion.lesion_id in best else NOT_A_LESION for lesion in detected]


def detection_rows(
    cases: Sequence[TrainingCase],
    prep: Preprocessing,
    predictor: CasePredictor,
    config: CascadeConfig = CascadeConfig(),
    min_volume_ml: float = 0.5,
    found_lesions: bool = False,
    progress: Callable[[str], None] | None = None,
    phase_subsets: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Feature vectors (N, F) and classes (N,) of UNet_whole's detections, at every sensitivity of
    `config` and on the cascade's own label maps (see the module docstring); study i is predicted
    with the i-th phase subset of a fixed cycle (without `phase_subsets`: with all its phases; a
    study the predictor refuses for a missing phase is skipped). Detections that touch no true
    lesion are class 0 ("not a lesion"); with `found_lesions`, those that do are rows too, of the
    type of the true lesion they share most voxels with (the typer then also learns lesions as
    UNet_whole outlines them)."""
    say = progress or log.info
    combos = [combo for combo, _ in TYPER_PHASE_COMBINATIONS]
    rows: list[np.ndarray] = []
    classes: list[int] = []
    skipped = 0
    for index, case in enumerate(cases):
        subset = case.present
        if phase_subsets:
            subset = tuple(p for p in combos[index % len(combos)] if p in case.present) or case.present
        model_input = case_model_input(replace(case, present=subset), prep)
        try:
            probabilities = predictor.predict(model_input)
        except MissingPhasesError as error:
            skipped += 1
            say(f"typer: study {index + 1} skipped: {error}")
            continue
        maps = sensitivity_label_maps(probabilities, config, compute_livermax=False).label_maps
        truth = seg2det(case.labels, case.geometry)
        for labels in maps.values():
            detected = seg2det(labels, case.geometry, min_volume_ml=min_volume_ml)
            pairs = [(lesion, true_class) for lesion, true_class in zip(detected, detection_classes(truth, detected))
                     if found_lesions or true_class == NOT_A_LESION]
            if pairs:
                rows.append(feature_rows([lesion for lesion, _ in pairs], model_input.hu, labels, case.geometry))
                classes += [true_class for _, true_class in pairs]
        if (index + 1) % 20 == 0 or index + 1 == len(cases):
            found = sum(1 for c in classes if c != NOT_A_LESION)
            say(f"typer: detections in {index + 1}/{len(cases)} studies: "
                f"{len(classes) - found} false" + (f", {found} of true lesions" if found_lesions else "")
                + (f" ({skipped} studies skipped)" if skipped else ""))
    if not rows:
        return np.zeros((0, feature_count()), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows), np.asarray(classes, dtype=np.int64)


def fit_typer(
    model_dir: Path,
    cases: Sequence[TrainingCase],
    prep: Preprocessing,
    describe: str,
    settings: TyperTraining = TyperTraining(),
    progress: Callable[[str], None] | None = None,
    predictor: CasePredictor | None = None,
    cascade: CascadeConfig = CascadeConfig(),
) -> TyperEntry:
    """Train the typer on `cases` (described as `describe`), with "not a lesion" rows mined by
    `predictor` (UNet_whole, or a :class:`BackendMiner`, which sees each study with all its phases)
    through `cascade`'s label maps when given, write its weights into `model_dir` and return the
    model card entry for them."""
    say = progress or log.info
    features, labels = typer_rows(cases, prep)
    counts = Counter(LesionType(int(v)).name for v in labels)
    missing = [t.name for t in LesionType if t.name not in counts]
    if missing:
        say(f"typer: no training lesion of type {', '.join(missing)}; it will never give those types")
    if predictor is not None:
        negatives, classes = detection_rows(cases, prep, predictor, cascade, progress=say,
                                            phase_subsets=not isinstance(predictor, BackendMiner))
        features = np.concatenate([features, negatives])
        labels = np.concatenate([labels, classes])
        counts["not a lesion"] = len(negatives)
    say(f"typer: {len(labels)} training rows from {len(cases)} studies ({dict(counts)})")
    spec = default_typer_spec()
    network = train_typer(features, labels, spec, settings, progress=say)
    sha256 = save_typer(network, model_dir / TYPER_FILE)
    mined = {} if predictor is None else {
        "false_positives_from": predictor.describe() if isinstance(predictor, BackendMiner) else "the folder's UNet_whole"}
    return TyperEntry(file=TYPER_FILE, sha256=sha256, spec=spec.to_json(),
                      training={**asdict(settings), "training_data": describe, "studies": len(cases),
                                "rows_by_type": dict(counts), **mined})


def train_typer_model(
    model_dir: Path,
    cases: Sequence[TrainingCase],
    describe: str,
    settings: TyperTraining = TyperTraining(),
    progress: Callable[[str], None] | None = None,
    predictor: CasePredictor | None = None,
) -> Path:
    """Train the typer on `cases` (with "not a lesion" rows mined by `predictor` when given; see
    :func:`fit_typer`) and add it to the model folder's card (replacing one it had). Returns the
    model card path."""
    card = read_model_card(model_dir)
    entry = fit_typer(model_dir, cases, card.preprocessing, describe, settings, progress, predictor)
    path = write_model_card(model_dir, replace(card, typer=entry))
    (progress or log.info)(f"lesion typer added to {model_dir}")
    return path
