"""Model backends behind one interface: native (our network + weights + model card), TorchScript,
and an nnU-Net v2 trained-model folder (optional extra ``livernode[nnunet]``).

A backend is loaded once per process and then predicts any number of studies.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from pipeline.config import BackendConfig
from pipeline.errors import InputError
from pipeline.inference import ModelInput, WholePredictor, make_patch_model, prepare_input
from pipeline.lesion_typer import LesionTyper, load_typer, typer_callable
from pipeline.model import (
    MODEL_CARD_NAME,
    ModelCard,
    PATCH_NETWORK,
    WHOLE_NETWORK,
    ModelLoadError,
    Preprocessing,
    load_native_network,
    load_torchscript_network,
    read_model_card,
    select_device,
    sha256_of,
    use_bf16,
    verified_weights_path,
)
from pipeline.typer_grid import FeatureGrid, StudyHU
from pipeline.types import NUM_CLASSES, ModelIdentity, Phase, VolumeGeometry

log = logging.getLogger(__name__)

PatchModel = Callable[[np.ndarray], np.ndarray]


@dataclass
class Prediction:
    """UNet_whole's output for one study on the working grid."""

    probabilities: np.ndarray  # float16 (14, Z, Y, X) softmax
    model_input: ModelInput
    #: the registered phases on the study's own grid, for a lesion typer that reads its HU there
    #: (None when the prediction was made from a working-grid input)
    study: StudyHU | None = None


class SegmentationBackend(Protocol):
    """What the pipeline needs from a model, whatever its format."""

    identity: ModelIdentity
    preprocessing: Preprocessing

    def predict(self, hu_by_phase: dict[Phase, np.ndarray], geometry: VolumeGeometry) -> Prediction:
        """Softmax probabilities of the 14 classes for registered phases on `geometry`."""
        ...

    def patch_model(self, present: tuple[Phase, ...]) -> PatchModel | None:
        """UNet_patch as a callable for reclassification, or None when the model has none."""
        ...

    def lesion_typer(self) -> LesionTyper | None:
        """The lesion typer (enhancement features -> type probabilities), or None."""
        ...

    def typer_feature_grid(self) -> FeatureGrid | None:
        """The grid the lesion typer was trained on (its model card's working grid), or None."""
        ...


class CardBackend:
    """Native or TorchScript weights described by a livernode model card; `typer_dir` (another
    model folder's lesion typer) replaces the card's own typer."""

    def __init__(
        self,
        model_dir: Path,
        device: torch.device,
        overlap: float = 0.25,
        mirror_tta: bool = False,
        precision: str = "auto",
        typer_dir: Path | None = None,
    ) -> None:
        card = read_model_card(model_dir)
        self.bf16 = use_bf16(device, precision)
        self.card = card
        self.identity = card.identity()
        self.preprocessing = card.preprocessing
        self.device = device
        whole_path = verified_weights_path(model_dir, card.whole)
        if card.format == "torchscript":
            whole = load_torchscript_network(whole_path, device)
        else:
            whole = load_native_network(whole_path, card.whole.network or WHOLE_NETWORK, device)
        self._whole = WholePredictor(
            whole, card.preprocessing, device, overlap=overlap, mirror_tta=mirror_tta, bf16=self.bf16
        )
        self._patch: torch.nn.Module | None = None
        if card.patch is not None:
            patch_path = verified_weights_path(model_dir, card.patch)
            if card.format == "torchscript":
                self._patch = load_torchscript_network(patch_path, device)
            else:
                self._patch = load_native_network(patch_path, card.patch.network or PATCH_NETWORK, device)
        self._typer: torch.nn.Module | None = None
        self._typer_grid: FeatureGrid | None = None
        if typer_dir is not None:
            self._typer, self._typer_grid = load_typer_folder(typer_dir)
        elif card.typer is not None:
            self._typer = load_typer(verified_weights_path(model_dir, card.typer), card.typer.spec)
            self._typer_grid = typer_feature_grid(card, model_dir)
        log.info("loaded model %s %s (%s) on %s%s%s", card.name, card.version, card.format, device,
                 " with bfloat16 autocast" if self.bf16 else "",
                 f", the lesion typer of {typer_dir}" if typer_dir is not None else "")

    def predict(self, hu_by_phase: dict[Phase, np.ndarray], geometry: VolumeGeometry) -> Prediction:
        prediction = self.predict_model_input(prepare_input(hu_by_phase, geometry, self.preprocessing))
        return replace(prediction, study=StudyHU(dict(hu_by_phase), geometry))

    def predict_model_input(self, model_input: ModelInput) -> Prediction:
        """Softmax probabilities for input already on the working grid."""
        probabilities = self._whole.predict(model_input)
        if probabilities.shape[0] != NUM_CLASSES:
            raise ModelLoadError(f"model gives {probabilities.shape[0]} classes, expected {NUM_CLASSES}")
        return Prediction(probabilities, model_input)

    def patch_model(self, present: tuple[Phase, ...]) -> PatchModel | None:
        if self._patch is None:
            return None
        return make_patch_model(self._patch, present, self.preprocessing, self.device, bf16=self.bf16)

    def lesion_typer(self) -> LesionTyper | None:
        return typer_callable(self._typer) if self._typer is not None else None

    def typer_feature_grid(self) -> FeatureGrid | None:
        return self._typer_grid


class MissingPhasesError(InputError, ModelLoadError):
    """The study lacks phases the model was trained on: the study cannot be analysed with this model
    (an InputError, so it is reported as not analysed), and it is the model's limit (ModelLoadError)."""


#: What an nnU-Net v2 checkpoint holds (nnUNetTrainer.save_checkpoint) that inference reads.
NNUNET_CHECKPOINT_KEYS = ("network_weights", "init_args", "trainer_name")


def _nnunet_predictor_class(model_dir: Path) -> type:
    try:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    except ImportError:
        raise ModelLoadError(
            f"{model_dir}: the nnU-Net backend needs the optional extra: pip install 'livernode[nnunet]'"
        ) from None
    return nnUNetPredictor


def _nnunet_channel_phases(model_dir: Path) -> tuple[Phase, ...]:
    """The phases of ``dataset.json``'s channels, after checking its labels are livernode's."""
    dataset_path = model_dir / "dataset.json"
    if not dataset_path.is_file():
        raise ModelLoadError(f"{model_dir}: no dataset.json (expected an nnU-Net v2 trained-model folder)")
    try:
        dataset = json.loads(dataset_path.read_text(encoding="utf-8"))
        channels = dataset["channel_names"]
        names = [str(channels[k]).upper() for k in sorted(channels, key=int)]
        labels = {str(k): int(v) for k, v in dataset["labels"].items()}
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"{dataset_path}: not valid JSON ({error})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ModelLoadError(f"{dataset_path}: missing or invalid 'channel_names' or 'labels' ({error!r})") from None
    try:
        phases = tuple(Phase(n) for n in names)
    except ValueError:
        raise ModelLoadError(f"{dataset_path}: channel_names must be phases (NC, AP, VP, DP), found {names}") from None
    if len(labels) != NUM_CLASSES or sorted(labels.values()) != list(range(NUM_CLASSES)):
        raise ModelLoadError(f"{dataset_path}: expected {NUM_CLASSES} labels numbered 0-13 as in livernode")
    return phases


def _nnunet_checkpoints(model_dir: Path, folds: tuple[int, ...], checkpoint: str) -> list[Path]:
    """Each fold's checkpoint, checked to be a whole PyTorch archive (a truncated or corrupt file
    would otherwise fail deep inside torch with an error that names no file)."""
    if not (model_dir / "plans.json").is_file():
        raise ModelLoadError(f"{model_dir}: no plans.json (expected an nnU-Net v2 trained-model folder)")
    paths = [model_dir / f"fold_{fold}" / checkpoint for fold in folds]
    for path in paths:
        if not path.is_file():
            raise ModelLoadError(f"{path}: checkpoint missing (model.nnunet_folds {list(folds)}, "
                                 f"model.nnunet_checkpoint {checkpoint!r})")
        try:
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
            damaged = f"{type(error).__name__}: {error}"
        if damaged is not None:
            raise ModelLoadError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt ({damaged}); "
                                 f"expected nnU-Net v2's checkpoint holding {', '.join(NNUNET_CHECKPOINT_KEYS)}")
    return paths


class NnUNetBackend:
    """An nnU-Net v2 trained-model folder whose labels follow livernode's 14-label numbering and
    whose channels are named after the phases (NC, AP, VP, DP) in ``dataset.json``.

    Volumes go to nnU-Net as (channel, z, y, x) arrays with spacing (z, y, x): the axis order
    nnU-Net's readers give for the NIfTI files of a raw dataset (``livernode train``'s dataset
    folders included); nnU-Net transposes, resamples and normalises as its plans say."""

    def __init__(
        self,
        model_dir: Path,
        device: torch.device,
        folds: tuple[int, ...],
        checkpoint: str,
        mirror_tta: bool = False,
        typer_dir: Path | None = None,
    ) -> None:
        predictor_class = _nnunet_predictor_class(model_dir)
        self.channel_phases = _nnunet_channel_phases(model_dir)
        checkpoints = _nnunet_checkpoints(model_dir, folds, checkpoint)
        with contextlib.redirect_stdout(io.StringIO()) as printed:  # nnU-Net prints its device notes
            self._predictor = predictor_class(device=device, perform_everything_on_device=device.type == "cuda",
                                              use_mirroring=mirror_tta, allow_tqdm=False)
        if printed.getvalue().strip():
            log.debug("nnU-Net: %s", printed.getvalue().strip())
        try:
            self._predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=folds,
                                                                 checkpoint_name=checkpoint)
        except Exception as error:  # nnU-Net raises KeyError, RuntimeError, ... for a folder it cannot use
            first_line = (str(error).splitlines() or [""])[0]
            raise ModelLoadError(
                f"{model_dir}: nnU-Net could not build the model from plans.json and "
                f"{', '.join(str(p.relative_to(model_dir)) for p in checkpoints)} ({type(error).__name__}: "
                f"{first_line}); expected checkpoints written by nnU-Net v2 for these plans"
            ) from None
        weights_sha256 = sha256_of(checkpoints[0])
        self.identity = ModelIdentity(
            name=f"nnU-Net {model_dir.name}",
            version=weights_sha256[:12],
            weights_sha256=weights_sha256,
            trained_on="site-provided nnU-Net v2 model",
        )
        # nnU-Net resamples internally; we hand it the study at its own spacing.
        self.preprocessing = Preprocessing(phases=tuple(p.value for p in self.channel_phases))
        self._typer, self._typer_grid = load_typer_folder(typer_dir) if typer_dir is not None else (None, None)
        log.info("loaded nnU-Net model %s (folds %s, %s) on %s%s", model_dir.name, list(folds), checkpoint, device,
                 f" with the lesion typer of {typer_dir}" if typer_dir is not None else "")

    def predict(self, hu_by_phase: dict[Phase, np.ndarray], geometry: VolumeGeometry) -> Prediction:
        missing = [p.value for p in self.channel_phases if p not in hu_by_phase]
        if missing:
            raise MissingPhasesError(f"the nnU-Net model needs the phases {[p.value for p in self.channel_phases]}; "
                                     f"missing {missing}")
        image = np.stack([hu_by_phase[p].astype(np.float32) for p in self.channel_phases])
        _, probabilities = self._predictor.predict_single_npy_array(
            image, {"spacing": [float(s) for s in geometry.spacing_mm]}, None, None, True
        )
        probabilities = np.asarray(probabilities, dtype=np.float16)
        expected = (NUM_CLASSES, *geometry.shape)
        if probabilities.shape != expected:
            raise ModelLoadError(f"the nnU-Net model gave probabilities of shape {probabilities.shape}, "
                                 f"expected {expected}")
        model_input = ModelInput(
            image=image, hu={p: hu_by_phase[p] for p in self.channel_phases}, geometry=geometry,
            present=self.channel_phases,
        )
        return Prediction(probabilities, model_input, StudyHU(dict(hu_by_phase), geometry))

    def patch_model(self, present: tuple[Phase, ...]) -> PatchModel | None:
        return None

    def lesion_typer(self) -> LesionTyper | None:
        return typer_callable(self._typer) if self._typer is not None else None

    def typer_feature_grid(self) -> FeatureGrid | None:
        return self._typer_grid


def load_typer_folder(typer_dir: Path) -> tuple[torch.nn.Module, FeatureGrid]:
    """The lesion typer of a livernode model folder (its model card's ``typer`` entry), for
    ``model.typer_dir``, and the grid its features were computed on (the folder's working grid);
    a folder without one, or a wrong or corrupt file, raises ModelLoadError."""
    if not typer_dir.is_dir():
        raise ModelLoadError(f"{typer_dir}: typer folder not found (model.typer_dir)")
    card = read_model_card(typer_dir)
    if card.typer is None:
        raise ModelLoadError(f"{typer_dir / MODEL_CARD_NAME}: no 'typer' entry; model.typer_dir must name a "
                             "livernode model folder with a lesion typer (livernode train typer adds one)")
    return load_typer(verified_weights_path(typer_dir, card.typer), card.typer.spec), typer_feature_grid(card, typer_dir)


def typer_feature_grid(card: ModelCard, model_dir: Path) -> FeatureGrid:
    """The grid a card's lesion typer reads its features on: its ``typer.feature_grid``, else the
    card's working grid (typers written before the entry existed); a malformed entry raises
    ModelLoadError."""
    assert card.typer is not None
    if card.typer.feature_grid is None:
        return FeatureGrid.of(card.preprocessing)
    try:
        return FeatureGrid.from_json(card.typer.feature_grid)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelLoadError(f"{model_dir / MODEL_CARD_NAME}: typer.feature_grid is invalid ({error})") from None


def load_backend(config: BackendConfig, bundled_dir: Path) -> SegmentationBackend:
    """Load the configured model once; raise ModelLoadError naming the file and what was expected.
    ``config.typer_dir``, when set, gives the lesion typer for every kind (an nnU-Net folder has
    none of its own; a card's own typer is replaced)."""
    model_dir = Path(config.model_dir) if config.model_dir else bundled_dir
    if not model_dir.is_dir():
        raise ModelLoadError(f"{model_dir}: model folder not found")
    device = select_device(config.device)
    typer_dir = Path(config.typer_dir) if config.typer_dir else None
    if config.kind == "nnunet":
        return NnUNetBackend(model_dir, device, config.nnunet_folds, config.nnunet_checkpoint,
                             mirror_tta=config.mirror_tta, typer_dir=typer_dir)
    backend = CardBackend(model_dir, device, overlap=config.overlap, mirror_tta=config.mirror_tta,
                          precision=config.precision, typer_dir=typer_dir)
    if config.kind != backend.card.format:
        raise ModelLoadError(
            f"{model_dir}: configured kind {config.kind!r} but the model card says {backend.card.format!r}"
        )
    return backend


__all__ = [
    "BackendConfig",
    "CardBackend",
    "MissingPhasesError",
    "NnUNetBackend",
    "Prediction",
    "SegmentationBackend",
    "load_backend",
    "load_typer_folder",
]
