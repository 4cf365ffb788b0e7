"""``livernode train whole`` and ``livernode train patch``: train UNet_whole or UNet_patch on a
site's labelled dataset folder (``pipeline.training_dataset``) or on synthetic phantoms, from
scratch or starting from an existing model folder's weights (fine-tuning the bundled model on a
site's data), and write a loadable model folder (weights + model card).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from pipeline.config import CascadeConfig
from pipeline.inference import WholePredictor
from pipeline.model import (
    WHOLE_NETWORK,
    ModelCard,
    NetworkSpec,
    Preprocessing,
    WeightsEntry,
    load_native_network,
    load_torchscript_network,
    read_model_card,
    select_device,
    use_bf16,
    verified_weights_path,
    write_model_card,
)
from pipeline.train import TrainConfig, TrainingCase, train_network
from pipeline.train_patch import train_patch_network
from pipeline.training_data import (
    TRAIN_SEED_BASE,
    VALIDATION_SEED_BASE,
    PhantomCaseSpec,
    make_cases,
    sample_case_spec,
    small_lesion_training_specs,
    type_balanced_training_specs,
)
from pipeline.training_dataset import DatasetCase, load_cases, read_dataset, split_by_patient
from pipeline.train_typer import TyperStudy
from pipeline.typer_studies import dataset_typer_studies, phantom_typer_studies
from pipeline.types import LESION_LABELS, Label

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingSource:
    """Where training studies come from: a dataset folder, else `phantoms` synthetic studies."""

    dataset: Path | None = None
    phantoms: int = 0
    validation_fraction: float = 0.1
    processes: int = 2
    #: phantoms: seeds chosen so every primary lesion type is equally common
    #: (pipeline.training_data.type_balanced_training_specs) instead of the first N seeds
    type_balanced: bool = False
    #: phantoms: this many more studies, each holding a small (<= 2.5 ml) HCC, ICC or metastasis
    #: (pipeline.training_data.small_lesion_training_specs), on top of the `phantoms` studies
    small_lesion_studies: int = 0

    def describe(self) -> str:
        if self.dataset is not None:
            return f"labelled dataset folder {self.dataset.name}"
        kind = "type-balanced " if self.type_balanced else ""
        extra = (f" plus {self.small_lesion_studies} with a small malignant lesion"
                 if self.small_lesion_studies else "")
        return (f"{self.phantoms} {kind}synthetic phantoms{extra} (pipeline.phantom, seeds from {TRAIN_SEED_BASE}); "
                "NOT FOR CLINICAL USE")

    def load(self, prep: Preprocessing, work_dir: Path, say: Callable[[str], None]) -> tuple[
            list[TrainingCase], list[TrainingCase]]:
        """Training and validation cases on the working grid (validation split by patient)."""
        if self.dataset is not None:
            train, validation = self._dataset_split()
            say(f"{self.dataset}: {len(train)} training and {len(validation)} validation cases")
            return load_cases(train, prep, say), load_cases(validation, prep, say)
        specs = self._phantom_specs()
        validation_count = max(1, int(round(self.phantoms * self.validation_fraction))) \
            if self.validation_fraction > 0 else 0
        cache = work_dir / "cases"
        train = make_cases(specs, prep, self.processes, say, cache_dir=cache)
        validation = make_cases([sample_case_spec(VALIDATION_SEED_BASE + i) for i in range(validation_count)], prep,
                                self.processes, say, cache_dir=cache)
        return train, validation

    def _dataset_split(self) -> tuple[list[DatasetCase], list[DatasetCase]]:
        assert self.dataset is not None
        return split_by_patient(read_dataset(self.dataset), self.validation_fraction)

    def _phantom_specs(self) -> list[PhantomCaseSpec]:
        if self.phantoms < 1:
            raise ValueError("give a dataset folder or a number of phantom studies")
        specs = (type_balanced_training_specs(self.phantoms) if self.type_balanced
                 else [sample_case_spec(TRAIN_SEED_BASE + i) for i in range(self.phantoms)])
        if self.small_lesion_studies > 0:
            specs += small_lesion_training_specs(self.small_lesion_studies, exclude=specs)
        return specs

    def typer_studies(self, prep: Preprocessing, work_dir: Path, say: Callable[[str], None],
                      with_study: bool) -> Iterator[TyperStudy]:
        """The training studies (not the validation ones) for the lesion typer, one at a time; with
        `with_study`, with their own volumes (``pipeline.typer_studies``)."""
        if self.dataset is not None:
            train, _ = self._dataset_split()
            say(f"{self.dataset}: {len(train)} training cases for the lesion typer")
            return dataset_typer_studies(train, prep, with_study)
        return phantom_typer_studies(self._phantom_specs(), prep, with_study, self.processes, say,
                                     cache_dir=work_dir / "cases")


@dataclass(frozen=True)
class ModelShape:
    """Networks and preprocessing of a new model (``train_bundled.BundledRecipe.networks``)."""

    whole: NetworkSpec
    patch: NetworkSpec
    prep: Preprocessing


def _card_for(base: ModelCard | None, shape: ModelShape, name: str, training_data: str,
              intended_use: str) -> ModelCard:
    if base is not None:
        return replace(base, name=name, training_data=training_data, intended_use=intended_use, metrics={})
    placeholder = WeightsEntry(file="", sha256="", network=shape.whole)
    return ModelCard(name=name, version="1", format="native", preprocessing=shape.prep, whole=placeholder,
                     patch=None, labels={str(int(label)): label.name for label in Label},
                     training_data=training_data, intended_use=intended_use)


def intended_use_for(source: TrainingSource) -> str:
    """The model card's intended-use line for a model trained on `source`."""
    if source.dataset is None:
        return "Demonstration and testing only. NOT FOR CLINICAL USE: trained on synthetic phantoms."
    return ("Trained by the site on its own labelled studies; validate it on the site's data before any "
            "clinical use.")


def train_whole_model(
    out_dir: Path,
    work_dir: Path,
    source: TrainingSource,
    config: TrainConfig,
    shape: ModelShape,
    init_model: Path | None = None,
    name: str = "livernode-site-model",
    resume: bool = False,
    progress: Callable[[str], None] | None = None,
    anti_alias: bool | None = None,
    target_spacing_mm: tuple[float, float, float] | None = None,
) -> Path:
    """Train UNet_whole and write a model folder with it (and no UNet_patch or lesion typer: the
    cascade then runs without reclassification until ``train_patch_model`` adds one; an init
    model's typer was mined on its own network's false positives and is not carried over).
    `init_model` fine-tunes that folder's UNet_whole and keeps its preprocessing, except `anti_alias` and the working grid's
    `target_spacing_mm` (z, y, x) when given: a fine-tune onto another grid. Returns the model
    card path."""
    say = progress or log.info
    base = read_model_card(init_model) if init_model is not None else None
    prep = base.preprocessing if base is not None else shape.prep
    if anti_alias is not None:
        prep = replace(prep, anti_alias=anti_alias)
    if target_spacing_mm is not None:
        if len(target_spacing_mm) != 3 or any(not v > 0 for v in target_spacing_mm):
            raise ValueError(f"target spacing must be three positive millimetre values (z, y, x), "
                             f"got {target_spacing_mm}")
        prep = replace(prep, target_spacing_mm=tuple(float(v) for v in target_spacing_mm))
    whole_spec = (base.whole.network if base is not None and base.whole.network else shape.whole)
    init_weights = verified_weights_path(init_model, base.whole) if base is not None and init_model else None
    train, validation = source.load(prep, work_dir, say)
    config = replace(config, crop_size_voxels=prep.roi_size_voxels,
                     validate_every=min(config.validate_every, config.iterations))
    result = train_network(whole_spec, train, validation, prep, config, work_dir, "unet_whole.pt", resume=resume,
                           progress=say, init_weights=init_weights)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(result.weights_path, out_dir / result.weights_path.name)
    card = _card_for(base, shape, name, source.describe(), intended_use_for(source))
    card = replace(card, preprocessing=prep, whole=WeightsEntry(file=result.weights_path.name, sha256=result.sha256, network=whole_spec),
                   patch=None, typer=None, metrics={"validation": result.validation, "whole_iterations": result.iterations,
                                        "training_cases": len(train), "validation_cases": len(validation),
                                        "whole_training": asdict(config)})
    path = write_model_card(out_dir, card)
    say(f"UNet_whole written to {out_dir} (validation: {result.validation})")
    return path


def whole_predictor(model_dir: Path, device: str = "auto", precision: str = "auto") -> WholePredictor:
    """UNet_whole of a model folder (native or TorchScript, sha256 checked) as a predictor, for
    mining hard cases and false positives on training studies."""
    card = read_model_card(model_dir)
    torch_device = select_device(device)
    path = verified_weights_path(model_dir, card.whole)
    network = (load_torchscript_network(path, torch_device) if card.format == "torchscript"
               else load_native_network(path, card.whole.network or WHOLE_NETWORK, torch_device))
    return WholePredictor(network, card.preprocessing, torch_device, bf16=use_bf16(torch_device, precision))


def train_patch_model(
    model_dir: Path,
    work_dir: Path,
    source: TrainingSource,
    config: TrainConfig,
    patch_spec: NetworkSpec,
    cascade: CascadeConfig = CascadeConfig(),
    hard_case_studies: int = 20,
    resume: bool = False,
    progress: Callable[[str], None] | None = None,
    type_balance: float = 1.0,
) -> Path:
    """Train UNet_patch for the model folder `model_dir` (its UNet_whole mines the hard cases) and
    add it to the folder's model card; rare lesion types get up to `type_balance` times more
    patches per lesion. Returns the model card path."""
    say = progress or log.info
    card = read_model_card(model_dir)
    if card.format != "native":
        raise ValueError(f"{model_dir}: UNet_patch can only be added to a native model folder")
    if patch_spec.out_channels != len(LESION_LABELS) + 1:
        raise ValueError(f"UNet_patch must give {len(LESION_LABELS) + 1} classes")
    prep = card.preprocessing
    if card.whole.network is None:
        raise ValueError(f"{model_dir}: the model card does not describe UNet_whole's network")
    predictor = whole_predictor(model_dir, config.device, config.precision)
    train, _ = source.load(prep, work_dir, say)
    cascade = replace(cascade, patch_size_voxels=prep.patch_size_voxels)
    config = replace(config, crop_size_voxels=prep.patch_size_voxels, validate_every=config.iterations + 1)
    result, count = train_patch_network(patch_spec, train, prep, cascade, config, work_dir, predictor,
                                        hard_case_studies, resume=resume, progress=say, type_balance=type_balance)
    shutil.copy2(result.weights_path, model_dir / result.weights_path.name)
    metrics = dict(card.metrics)
    metrics.update({"patch_iterations": result.iterations, "patch_training_patches": count,
                    "patch_training": asdict(config),
                    "patch_type_balance": type_balance})
    card = replace(card, patch=WeightsEntry(file=result.weights_path.name, sha256=result.sha256, network=patch_spec),
                   metrics=metrics)
    path = write_model_card(model_dir, card)
    say(f"UNet_patch added to {model_dir} ({count} training patches)")
    return path


__all__ = ["ModelShape", "TrainingSource", "intended_use_for", "train_patch_model", "train_whole_model",
           "whole_predictor"]
