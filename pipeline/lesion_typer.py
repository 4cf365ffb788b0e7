"""The lesion typer: a small network that judges a detected lesion from its enhancement features
(:mod:`pipeline.lesion_features`): "not a lesion" (class 0: UNet_whole's false positives, such as
focal fat or perfusion anomalies) or one of the six lesion types (classes 1-6, the lesion labels).
Trained with random phase dropout so one model serves every phase combination.

It follows UNet_patch in the cascade: reclassification keeps or drops lesions by the paper's
overlap score; the typer then drops those it calls "not a lesion" and gives the others their
type (docs/models.md, "Lesion typer").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.lesion_features import feature_count, feature_names, lesion_features, without_phases
from pipeline.model import ModelLoadError, sha256_of
from pipeline.typer_grid import FeatureGrid, to_feature_grid
from pipeline.types import LESION_LABELS, MALIGNANT_TYPES, Label, Lesion, LesionType, Phase, VolumeGeometry

#: (N, F) feature vectors -> (N, 7) probabilities: column 0 "not a lesion", columns 1-6 the lesion
#: types in label order.
LesionTyper = Callable[[np.ndarray], np.ndarray]
#: The typer's class for a detection that is not a lesion.
NOT_A_LESION = 0
TYPER_CLASSES = 1 + len(LESION_LABELS)

#: Phase combinations drawn while training (weights): UNet_whole's (pipeline.train), with VP alone
#: weighted up from 0.12 to 0.2 because a venous-only study is where typing is hardest.
TYPER_PHASE_COMBINATIONS: tuple[tuple[tuple[Phase, ...], float], ...] = (
    ((Phase.NC, Phase.AP, Phase.VP, Phase.DP), 0.3),
    ((Phase.NC, Phase.AP, Phase.VP), 0.15),
    ((Phase.AP, Phase.VP), 0.15),
    ((Phase.AP, Phase.VP, Phase.DP), 0.1),
    ((Phase.VP,), 0.2),
    ((Phase.NC, Phase.VP), 0.1),
)


@dataclass(frozen=True)
class TyperSpec:
    """Hyper-parameters of the typer network; enough to rebuild it before loading weights."""

    in_features: int
    hidden: tuple[int, ...] = (64, 64)
    classes: int = TYPER_CLASSES

    def build(self) -> torch.nn.Module:
        """A fresh network: fully connected layers with ReLU and dropout, logits out."""
        layers: list[torch.nn.Module] = []
        width = self.in_features
        for size in self.hidden:
            layers += [torch.nn.Linear(width, size), torch.nn.ReLU(), torch.nn.Dropout(0.1)]
            width = size
        layers.append(torch.nn.Linear(width, self.classes))
        return torch.nn.Sequential(*layers)

    def to_json(self) -> dict[str, Any]:
        """The spec as the model card stores it, with the feature names it was trained on."""
        return {"in_features": self.in_features, "hidden": list(self.hidden), "classes": self.classes,
                "features": list(feature_names())}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TyperSpec":
        return cls(in_features=int(data["in_features"]), hidden=tuple(int(v) for v in data["hidden"]),
                   classes=int(data["classes"]))


def default_typer_spec() -> TyperSpec:
    """The typer for the current feature layout."""
    return TyperSpec(in_features=feature_count())


@dataclass(frozen=True)
class TyperTraining:
    """Settings of one typer training run."""

    iterations: int = 3000
    batch_size: int = 128
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0


def _subset_sampler(rng: np.random.Generator) -> Callable[[], tuple[Phase, ...]]:
    combos = [c for c, _ in TYPER_PHASE_COMBINATIONS]
    weights = np.array([w for _, w in TYPER_PHASE_COMBINATIONS])
    weights = weights / weights.sum()
    return lambda: combos[int(rng.choice(len(combos), p=weights))]


def train_typer(
    features: np.ndarray,
    labels: np.ndarray,
    spec: TyperSpec,
    settings: TyperTraining = TyperTraining(),
    progress: Callable[[str], None] | None = None,
) -> torch.nn.Module:
    """Train a typer on feature vectors (N, F) and their classes (N,): 0 not a lesion, 1-6 the
    lesion labels. Batches are class-balanced; each row gets a random phase subset."""
    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if features.ndim != 2 or features.shape[1] != spec.in_features or len(features) != len(labels):
        raise ValueError(f"features {features.shape} and labels {labels.shape} do not fit {spec}")
    classes = np.unique(labels)
    if not set(classes.tolist()) <= set(range(spec.classes)):
        raise ValueError(f"labels must be 0 (not a lesion) or lesion labels {LESION_LABELS}, got {classes.tolist()}")
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    draw_subset = _subset_sampler(rng)
    by_class = {int(c): np.flatnonzero(labels == c) for c in classes}
    network = spec.build()
    optimiser = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, settings.learning_rate, total_steps=settings.iterations)
    network.train()
    for step in range(settings.iterations):
        chosen = np.concatenate([
            rng.choice(rows, size=max(1, settings.batch_size // len(by_class))) for rows in by_class.values()
        ])
        batch = np.stack([without_phases(features[i], draw_subset()) for i in chosen])
        target = torch.from_numpy(labels[chosen])
        loss = torch.nn.functional.cross_entropy(network(torch.from_numpy(batch)), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if progress is not None and (step + 1) % 500 == 0:
            progress(f"typer: step {step + 1}/{settings.iterations}, loss {loss.item():.3f}")
    network.eval()
    return network


def type_probabilities(network: torch.nn.Module, features: np.ndarray) -> np.ndarray:
    """(N, 7) probabilities: "not a lesion", then the lesion types in label order."""
    batch = torch.from_numpy(np.atleast_2d(np.asarray(features, dtype=np.float32)))
    with torch.no_grad():
        return torch.softmax(network(batch), dim=1).numpy()


def typer_callable(network: torch.nn.Module) -> LesionTyper:
    """The network as a :data:`LesionTyper`."""
    return lambda features: type_probabilities(network, features)


def feature_rows(
    lesions: Sequence[Lesion], hu_by_phase: Mapping[Phase, np.ndarray], labels: np.ndarray, geometry: VolumeGeometry
) -> np.ndarray:
    """(N, F) feature vectors of `lesions` found in the label map `labels` (liver = label 7)."""
    liver = labels == int(Label.LIVER)
    any_lesion = np.isin(labels, LESION_LABELS)
    rows = [lesion_features(hu_by_phase, lesion.full_mask(labels.shape), liver, geometry.spacing_mm, any_lesion)
            for lesion in lesions]
    return np.stack(rows) if rows else np.zeros((0, feature_count()), dtype=np.float32)


@dataclass
class TypingResult:
    """Lesions the typer kept (with its type) and those it called "not a lesion"."""

    kept: list[Lesion]
    dropped: list[Lesion]


def typer_probabilities(
    lesions: Sequence[Lesion],
    hu_by_phase: Mapping[Phase, np.ndarray],
    labels: np.ndarray,
    geometry: VolumeGeometry,
    typer: LesionTyper,
    feature_grid: FeatureGrid | None = None,
    moved_hu: Mapping[Phase, np.ndarray] | None = None,
) -> np.ndarray:
    """(N, 7) typer probabilities of `lesions` found in `labels` (column 0 "not a lesion", 1-6 the
    lesion types in label order); `feature_grid` and `moved_hu` as for :func:`retype_lesions`."""
    if not lesions:
        return np.zeros((0, TYPER_CLASSES), dtype=np.float32)
    if feature_grid is not None and feature_grid.needs_moving(geometry):
        moved = to_feature_grid(lesions, hu_by_phase, labels, geometry, feature_grid, moved_hu)
        rows = feature_rows(moved.lesions, moved.hu, moved.labels, moved.geometry)
    else:
        rows = feature_rows(lesions, hu_by_phase, labels, geometry)
    probabilities = np.asarray(typer(rows))
    if probabilities.shape != (len(lesions), TYPER_CLASSES):
        raise ValueError(f"lesion typer returned shape {probabilities.shape}, expected {(len(lesions), TYPER_CLASSES)}")
    return probabilities


def retype_lesions(
    lesions: Sequence[Lesion],
    hu_by_phase: Mapping[Phase, np.ndarray],
    labels: np.ndarray,
    geometry: VolumeGeometry,
    typer: LesionTyper,
    sensitivity: float = 1.0,
    feature_grid: FeatureGrid | None = None,
    moved_hu: Mapping[Phase, np.ndarray] | None = None,
) -> TypingResult:
    """Judge `lesions` with the typer, at a lesion sensitivity as the cascade's label maps are
    made (paper eq. 3): the lesion types' probabilities are scaled by `sensitivity` against
    "not a lesion" and the largest wins. "Not a lesion" drops the lesion; otherwise it takes the
    most probable type. At sensitivity 4 a lesion is dropped only when the typer gives "not a
    lesion" more than 4 times the probability of its likeliest type (0.8 against 0.2);
    ``math.inf`` never drops. With a `feature_grid` other than `geometry`'s (the typer was trained
    on another grid, or reads the study's own HU) the features are computed after moving everything
    onto it (:mod:`pipeline.typer_grid`); `moved_hu` is ``hu_on_grid(hu_by_phase, geometry,
    feature_grid)`` when the caller has it already, and for a grid that reads the study's HU it
    must be given: ``hu_on_grid(study HU, study geometry, feature_grid)``."""
    if sensitivity <= 0:
        raise ValueError(f"sensitivity must be > 0, got {sensitivity}")
    probabilities = typer_probabilities(lesions, hu_by_phase, labels, geometry, typer, feature_grid, moved_hu)
    result = TypingResult([], [])
    for lesion, row in zip(lesions, probabilities):
        best_type = int(np.argmax(row[1:])) + 1
        if row[NOT_A_LESION] > sensitivity * row[best_type]:
            result.dropped.append(lesion)
        else:
            result.kept.append(dataclasses.replace(lesion, lesion_type=LesionType(best_type)))
    return result


def malignant_probability(probabilities: np.ndarray) -> np.ndarray:
    """(N,) summed probability of the malignant types (HCC, ICC, metastasis) of (N, 7) typer rows."""
    columns = [int(t) for t in sorted(MALIGNANT_TYPES, key=int)]
    return np.asarray(probabilities)[:, columns].sum(axis=1) if len(probabilities) else np.zeros(0)


def lesions_to_rescue(dropped: Sequence[Lesion], probabilities: np.ndarray, min_probability: float) -> list[Lesion]:
    """The lesions of `dropped` (reclassification's, already limited to the rescue's volume) that
    the typer calls malignant with at least `min_probability` (HCC + ICC + metastasis, rows of
    :func:`typer_probabilities`): small lesions UNet_patch cannot judge (docs/cascade.md,
    "Malignant rescue")."""
    return [lesion for lesion, score in zip(dropped, malignant_probability(probabilities)) if score >= min_probability]


def save_typer(network: torch.nn.Module, path: Path) -> str:
    """Save the typer's state dict (float32: it is a few tens of kB); return its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, path)
    return sha256_of(path)


def load_typer(path: Path, spec_json: dict[str, Any]) -> torch.nn.Module:
    """Build the typer the card describes and load its weights; a feature layout other than this
    livernode's, or weights that do not fit, raise ModelLoadError naming the file."""
    try:
        spec = TyperSpec.from_json(spec_json)
        trained_on = tuple(str(v) for v in spec_json["features"])
    except (KeyError, TypeError, ValueError) as error:
        raise ModelLoadError(f"{path}: the model card's typer spec is invalid ({error})") from None
    if trained_on != feature_names():
        raise ModelLoadError(
            f"{path}: the typer was trained on {len(trained_on)} features that differ from the "
            f"{feature_count()} this livernode computes (pipeline/lesion_features.py); retrain it"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt file
        raise ModelLoadError(f"{path}: not a readable PyTorch weights file ({type(error).__name__}: {error})") from None
    network = spec.build()
    try:
        network.load_state_dict(state, strict=True)
    except (RuntimeError, AttributeError, TypeError) as error:
        raise ModelLoadError(f"{path}: weights do not fit the typer in the model card "
                             f"(hidden {list(spec.hidden)}): {str(error).splitlines()[0]}") from None
    return network.float().eval()
