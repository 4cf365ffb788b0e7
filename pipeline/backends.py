"""Model backends behind one interface: native (our network + weights + model card), TorchScript,
and an nnU-Net v2 trained-model folder (optional extra ``livernode[nnunet]``).

A backend is loaded once per process and then predicts any number of studies.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from pipeline.config import BackendConfig
from pipeline.inference import ModelInput, WholePredictor, make_patch_model, prepare_input
from pipeline.lesion_typer import LesionTyper, load_typer, typer_callable
from pipeline.model import (
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
from pipeline.types import NUM_CLASSES, ModelIdentity, Phase, VolumeGeometry

log = logging.getLogger(__name__)

PatchModel = Callable[[np.ndarray], np.ndarray]


@dataclass
class Prediction:
    """UNet_whole's output for one study on the working grid."""

    probabilities: np.ndarray  # float16 (14, Z, Y, X) softmax
    model_input: ModelInput


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


class CardBackend:
    """Native or TorchScript weights described by a livernode model card."""

    def __init__(
        self,
        model_dir: Path,
        device: torch.device,
        overlap: float = 0.25,
        mirror_tta: bool = False,
        precision: str = "auto",
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
        if card.typer is not None:
            self._typer = load_typer(verified_weights_path(model_dir, card.typer), card.typer.spec)
        log.info("loaded model %s %s (%s) on %s%s", card.name, card.version, card.format, device,
                 " with bfloat16 autocast" if self.bf16 else "")

    def predict(self, hu_by_phase: dict[Phase, np.ndarray], geometry: VolumeGeometry) -> Prediction:
        return self.predict_model_input(prepare_input(hu_by_phase, geometry, self.preprocessing))

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


class NnUNetBackend:
    """An nnU-Net v2 trained-model folder whose labels follow livernode's 14-label numbering and
    whose channels are named after the phases (NC, AP, VP, DP) in ``dataset.json``."""

    def __init__(self, model_dir: Path, device: torch.device, folds: tuple[int, ...], checkpoint: str) -> None:
        try:
            from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        except ImportError:
            raise ModelLoadError(
                f"{model_dir}: the nnU-Net backend needs the optional extra: pip install 'livernode[nnunet]'"
            ) from None
        dataset_path = model_dir / "dataset.json"
        if not dataset_path.is_file():
            raise ModelLoadError(f"{model_dir}: no dataset.json (expected an nnU-Net v2 trained-model folder)")
        dataset = json.loads(dataset_path.read_text(encoding="utf-8"))
        names = [str(dataset["channel_names"][k]).upper() for k in sorted(dataset["channel_names"], key=int)]
        try:
            self.channel_phases = tuple(Phase(n) for n in names)
        except ValueError:
            raise ModelLoadError(
                f"{dataset_path}: channel_names must be phases (NC, AP, VP, DP), found {names}"
            ) from None
        labels = {str(k): int(v) for k, v in dataset["labels"].items()}
        if len(labels) != NUM_CLASSES or sorted(labels.values()) != list(range(NUM_CLASSES)):
            raise ModelLoadError(f"{dataset_path}: expected {NUM_CLASSES} labels numbered 0-13 as in livernode")
        self._predictor = nnUNetPredictor(device=device, perform_everything_on_device=device.type == "cuda")
        self._predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=folds, checkpoint_name=checkpoint)
        checkpoint_path = model_dir / f"fold_{folds[0]}" / checkpoint
        self.identity = ModelIdentity(
            name=f"nnU-Net {model_dir.name}",
            version=sha256_of(checkpoint_path)[:12] if checkpoint_path.is_file() else "unknown",
            weights_sha256=sha256_of(checkpoint_path) if checkpoint_path.is_file() else "",
            trained_on="site-provided nnU-Net v2 model",
        )
        # nnU-Net resamples internally; we hand it the study at its own spacing.
        self.preprocessing = Preprocessing(phases=tuple(p.value for p in self.channel_phases))

    def predict(self, hu_by_phase: dict[Phase, np.ndarray], geometry: VolumeGeometry) -> Prediction:
        missing = [p.value for p in self.channel_phases if p not in hu_by_phase]
        if missing:
            raise ModelLoadError(f"the nnU-Net model needs the phases {[p.value for p in self.channel_phases]}; "
                                 f"missing {missing}")
        image = np.stack([hu_by_phase[p].astype(np.float32) for p in self.channel_phases])
        _, probabilities = self._predictor.predict_single_npy_array(
            image, {"spacing": list(geometry.spacing_mm)}, None, None, True
        )
        model_input = ModelInput(
            image=image, hu={p: hu_by_phase[p] for p in self.channel_phases}, geometry=geometry,
            present=self.channel_phases,
        )
        return Prediction(np.asarray(probabilities, dtype=np.float16), model_input)

    def patch_model(self, present: tuple[Phase, ...]) -> PatchModel | None:
        return None

    def lesion_typer(self) -> LesionTyper | None:
        return None


def load_backend(config: BackendConfig, bundled_dir: Path) -> SegmentationBackend:
    """Load the configured model once; raise ModelLoadError naming the file and what was expected."""
    model_dir = Path(config.model_dir) if config.model_dir else bundled_dir
    if not model_dir.is_dir():
        raise ModelLoadError(f"{model_dir}: model folder not found")
    device = select_device(config.device)
    if config.kind == "nnunet":
        return NnUNetBackend(model_dir, device, config.nnunet_folds, config.nnunet_checkpoint)
    backend = CardBackend(model_dir, device, overlap=config.overlap, mirror_tta=config.mirror_tta,
                          precision=config.precision)
    if config.kind != backend.card.format:
        raise ModelLoadError(
            f"{model_dir}: configured kind {config.kind!r} but the model card says {backend.card.format!r}"
        )
    return backend


__all__ = ["BackendConfig", "CardBackend", "NnUNetBackend", "Prediction", "SegmentationBackend", "load_backend"]
