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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy import ndimage

from pipeline.backends import MissingPhasesError, SegmentationBackend
from pipeline.cascade import sensitivity_label_maps
from pipeline.config import CascadeConfig
from pipeline.inference import ModelInput
from pipeline.lesion_features import feature_count
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
from pipeline.typer_grid import FeatureGrid, StudyHU, to_feature_grid, typer_hu
from pipeline.types import BoundingBox, Label, Lesion, LesionType, Phase

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


@dataclass(frozen=True)
class TyperStudy:
    """One training study of the typer: on the working grid (truth labels, UNet_whole's input) and,
    for a typer that reads its HU from the study (``FeatureGrid.from_study``), its registered
    phases on their own grid."""

    case: TrainingCase
    study: StudyHU | None = None


def _outlined(lesion: Lesion, mask: np.ndarray) -> Lesion:
    """`lesion` with another outline (a full-volume mask)."""
    where = np.nonzero(mask)
    bbox = BoundingBox(*(int(v) for idx in where for v in (idx.min(), idx.max() + 1)))
    return replace(lesion, bbox=bbox, mask=mask[bbox.slices].copy(), voxel_count=int(mask.sum()))


def _rows_on(lesions: Sequence[Lesion], hu: dict, labels: np.ndarray, case: TrainingCase, grid: FeatureGrid | None,
             moved_hu: dict | None) -> np.ndarray:
    """Feature rows of `lesions` found in `labels` on the case's working grid, read on `grid` as
    the cascade reads them (``pipeline.lesion_typer.retype_lesions``)."""
    if grid is None or not grid.needs_moving(case.geometry):
        return feature_rows(lesions, hu, labels, case.geometry)
    moved = to_feature_grid(lesions, hu, labels, case.geometry, grid, moved_hu)
    return feature_rows(moved.lesions, moved.hu, moved.labels, moved.geometry)


def case_truth_rows(
    typer_study: TyperStudy, prep: Preprocessing, grid: FeatureGrid | None = None, min_volume_ml: float = 0.5,
    augment: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Feature vectors (N, F) and lesion labels (N,) of one study's true lesions: each as labelled,
    dilated by one voxel into the liver and eroded by one voxel (each outline set read as one label
    map, as the cascade reads a sensitivity's lesions), on `grid` (None: the working grid)."""
    case = typer_study.case
    hu = case_model_input(case, prep).hu
    liver = case.labels == int(Label.LIVER)
    truth = seg2det(case.labels, case.geometry, min_volume_ml=min_volume_ml)
    outlines: list[list[Lesion]] = [list(truth)]
    if augment:
        dilated, eroded = [], []
        for lesion in truth:
            mask = lesion.full_mask(case.labels.shape)
            dilated.append(_outlined(lesion, ndimage.binary_dilation(mask) & (liver | mask)))
            shrunk = ndimage.binary_erosion(mask)
            if shrunk.sum() >= _MIN_ERODED_VOXELS:
                eroded.append(_outlined(lesion, shrunk))
        outlines += [dilated, eroded]
    moved_hu = (typer_hu(grid, hu, case.geometry, typer_study.study, lesions=[lesion for group in outlines
                                                                              for lesion in group])
                if grid is not None and truth else None)
    features = [_rows_on(lesions, hu, case.labels, case, grid, moved_hu) for lesions in outlines if lesions]
    labels = [int(lesion.lesion_type) for lesions in outlines for lesion in lesions]
    if not features:
        return np.zeros((0, feature_count()), dtype=np.float32), np.zeros(0, dtype=np.int64)
    # rows lesion by lesion (as labelled, dilated, eroded), the order the typer's batches were drawn
    # from when the bundled typer was trained, so its weights are reproduced
    owners = [(lesion.lesion_id, kind) for kind, lesions in enumerate(outlines) for lesion in lesions]
    order = sorted(range(len(owners)), key=owners.__getitem__)
    return np.concatenate(features)[order], np.asarray(labels, dtype=np.int64)[order]


def typer_rows(
    cases: Sequence[TrainingCase], prep: Preprocessing, min_volume_ml: float = 0.5, augment: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Feature vectors (N, F) and lesion labels (N,) of the true lesions of `cases`, on the working
    grid (:func:`case_truth_rows`)."""
    parts = [case_truth_rows(TyperStudy(case), prep, None, min_volume_ml, augment) for case in cases]
    labels = np.concatenate([part[1] for part in parts]) if parts else np.zeros(0, dtype=np.int64)
    if not len(labels):
        raise ValueError(f"no lesion of {min_volume_ml} ml or more in {len(cases)} training cases: "
                         "the typer needs labelled lesions")
    return np.concatenate([part[0] for part in parts]), labels


def detection_classes(truth: Sequence[Lesion], detected: Sequence[Lesion]) -> list[int]:
    """For each detection, the type of the true lesion it shares most voxels with, or
    ``NOT_A_LESION`` when it touches none."""
    best: dict[int, tuple[int, int]] = {}  # detection id -> (shared voxels, true lesion id)
    for pair in overlap_pairs(truth, detected):
        best[pair.second_id] = max(best.get(pair.second_id, (0, 0)), (pair.overlap_voxels, pair.first_id))
    types = {lesion.lesion_id: int(lesion.lesion_type) for lesion in truth}
    return [types[best[lesion.lesion_id][1]] if lesion.lesion_id in best else NOT_A_LESION for lesion in detected]


def phase_subset(case: TrainingCase, index: int) -> tuple[Phase, ...]:
    """The phases study `index` is mined with: the index-th of the typer's fixed cycle of phase
    subsets (those of its phases the study has; all of them when it has none)."""
    combo = [combo for combo, _ in TYPER_PHASE_COMBINATIONS][index % len(TYPER_PHASE_COMBINATIONS)]
    return tuple(p for p in combo if p in case.present) or case.present


def case_detection_rows(
    typer_study: TyperStudy,
    prep: Preprocessing,
    predictor: CasePredictor,
    config: CascadeConfig = CascadeConfig(),
    subset: tuple[Phase, ...] | None = None,
    grid: FeatureGrid | None = None,
    min_volume_ml: float = 0.5,
    found_lesions: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Feature vectors (N, F) and classes (N,) of the predictor's detections in one study seen with
    the phases `subset` (default: all), at every sensitivity of `config`, read on `grid` (None:
    the working grid); see :func:`detection_rows`. A predictor refusing the study for a missing
    phase raises MissingPhasesError."""
    case = typer_study.case
    model_input = case_model_input(replace(case, present=subset or case.present), prep)
    probabilities = predictor.predict(model_input)
    maps = sensitivity_label_maps(probabilities, config, compute_livermax=False).label_maps
    truth = seg2det(case.labels, case.geometry)
    found: list[tuple[np.ndarray, list[tuple[Lesion, int]]]] = []
    for labels in maps.values():
        detected = seg2det(labels, case.geometry, min_volume_ml=min_volume_ml)
        pairs = [(lesion, true_class) for lesion, true_class in zip(detected, detection_classes(truth, detected))
                 if found_lesions or true_class == NOT_A_LESION]
        if pairs:
            found.append((labels, pairs))
    every = [lesion for _, pairs in found for lesion, _ in pairs]
    moved_hu = typer_hu(grid, model_input.hu, case.geometry, typer_study.study, lesions=every) \
        if grid is not None and every else None
    rows = [_rows_on([lesion for lesion, _ in pairs], model_input.hu, labels, case, grid, moved_hu)
            for labels, pairs in found]
    classes = [true_class for _, pairs in found for _, true_class in pairs]
    if not rows:
        return np.zeros((0, feature_count()), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows), np.asarray(classes, dtype=np.int64)


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
    `config` and on the cascade's own label maps (see the module docstring), on the working grid;
    study i is predicted with the i-th phase subset of a fixed cycle (:func:`phase_subset`;
    without `phase_subsets`: with all its phases; a study the predictor refuses for a missing
    phase is skipped). Detections that touch no true lesion are class 0 ("not a lesion"); with
    `found_lesions`, those that do are rows too, of the type of the true lesion they share most
    voxels with (the typer then also learns lesions as UNet_whole outlines them)."""
    say = progress or log.info
    rows: list[np.ndarray] = []
    classes: list[np.ndarray] = []
    skipped = 0
    for index, case in enumerate(cases):
        subset = phase_subset(case, index) if phase_subsets else None
        try:
            features, found = case_detection_rows(TyperStudy(case), prep, predictor, config, subset,
                                                  min_volume_ml=min_volume_ml, found_lesions=found_lesions)
        except MissingPhasesError as error:
            skipped += 1
            say(f"typer: study {index + 1} skipped: {error}")
            continue
        rows.append(features)
        classes.append(found)
        if (index + 1) % 20 == 0 or index + 1 == len(cases):
            total = np.concatenate(classes)
            true = int((total != NOT_A_LESION).sum())
            say(f"typer: detections in {index + 1}/{len(cases)} studies: {len(total) - true} false"
                + (f", {true} of true lesions" if found_lesions else "")
                + (f" ({skipped} studies skipped)" if skipped else ""))
    if not rows:
        return np.zeros((0, feature_count()), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows), np.concatenate(classes)


def fit_typer(
    model_dir: Path,
    studies: Iterable[TyperStudy],
    prep: Preprocessing,
    describe: str,
    settings: TyperTraining = TyperTraining(),
    progress: Callable[[str], None] | None = None,
    predictor: CasePredictor | None = None,
    cascade: CascadeConfig = CascadeConfig(),
    feature_grid: FeatureGrid | None = None,
) -> TyperEntry:
    """Train the typer on `studies` (described as `describe`; read one at a time, so a source may
    make them as they are asked for), with "not a lesion" rows mined by `predictor` (UNet_whole,
    or a :class:`BackendMiner`, which sees each study with all its phases) through `cascade`'s
    label maps when given, its features read on `feature_grid` (None: the working grid of `prep`,
    with its HU); write its weights into `model_dir` and return the model card entry for them."""
    say = progress or log.info
    with_subsets = predictor is not None and not isinstance(predictor, BackendMiner)
    truth: list[tuple[np.ndarray, np.ndarray]] = []
    mined: list[tuple[np.ndarray, np.ndarray]] = []
    count = skipped = 0
    for index, typer_study in enumerate(studies):
        count += 1
        truth.append(case_truth_rows(typer_study, prep, feature_grid))
        if predictor is not None:
            subset = phase_subset(typer_study.case, index) if with_subsets else None
            try:
                mined.append(case_detection_rows(typer_study, prep, predictor, cascade, subset, feature_grid))
            except MissingPhasesError as error:
                skipped += 1
                say(f"typer: study {index + 1} skipped: {error}")
        if count % 20 == 0:
            say(f"typer: {count} studies read, {sum(len(c) for _, c in truth)} lesion rows, "
                f"{sum(len(c) for _, c in mined)} false detections" + (f" ({skipped} skipped)" if skipped else ""))
    labels = np.concatenate([c for _, c in truth]) if truth else np.zeros(0, dtype=np.int64)
    if not len(labels):
        raise ValueError(f"no lesion of 0.5 ml or more in {count} training studies: the typer needs labelled lesions")
    features = np.concatenate([f for f, _ in truth])
    counts = Counter(LesionType(int(v)).name for v in labels)
    missing = [t.name for t in LesionType if t.name not in counts]
    if missing:
        say(f"typer: no training lesion of type {', '.join(missing)}; it will never give those types")
    if predictor is not None:
        negatives = np.concatenate([f for f, _ in mined]) if mined else np.zeros((0, feature_count()), np.float32)
        features = np.concatenate([features, negatives])
        labels = np.concatenate([labels, np.full(len(negatives), NOT_A_LESION, dtype=np.int64)])
        counts["not a lesion"] = len(negatives)
    say(f"typer: {len(labels)} training rows from {count} studies ({dict(counts)})"
        + (f", features on {feature_grid.describe()}" if feature_grid is not None else ""))
    spec = default_typer_spec()
    network = train_typer(features, labels, spec, settings, progress=say)
    sha256 = save_typer(network, model_dir / TYPER_FILE)
    source = {} if predictor is None else {
        "false_positives_from": predictor.describe() if isinstance(predictor, BackendMiner) else "the folder's UNet_whole"}
    return TyperEntry(file=TYPER_FILE, sha256=sha256, spec=spec.to_json(),
                      training={**asdict(settings), "training_data": describe, "studies": count,
                                "rows_by_type": dict(counts), **source},
                      feature_grid=feature_grid.to_json() if feature_grid is not None else None)


def train_typer_model(
    model_dir: Path,
    studies: Iterable[TyperStudy],
    describe: str,
    settings: TyperTraining = TyperTraining(),
    progress: Callable[[str], None] | None = None,
    predictor: CasePredictor | None = None,
    feature_grid: FeatureGrid | None = None,
) -> Path:
    """Train the typer on `studies` (with "not a lesion" rows mined by `predictor` when given, its
    features on `feature_grid`; see :func:`fit_typer`) and add it to the model folder's card
    (replacing one it had). Returns the model card path."""
    card = read_model_card(model_dir)
    entry = fit_typer(model_dir, studies, card.preprocessing, describe, settings, progress, predictor,
                      feature_grid=feature_grid)
    path = write_model_card(model_dir, replace(card, typer=entry))
    (progress or log.info)(f"lesion typer added to {model_dir}")
    return path
