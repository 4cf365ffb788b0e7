"""Segmentation networks, their model card, and loading weights with clear errors.

A *model folder* holds ``model_card.json`` and the weights files it names. The card records what
the weights need to be used correctly: architecture, preprocessing (target spacing, HU window and
normalisation per phase), labels, version, training data, metrics and a sha256 per weights file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import DynUNet

from pipeline.errors import PipelineError
from pipeline.types import NUM_CLASSES, PHASE_ORDER, ModelIdentity, Phase

MODEL_CARD_NAME = "model_card.json"
#: The bundled demo model (trained on synthetic phantoms only).
BUNDLED_MODEL_DIR = Path(__file__).resolve().parent / "models" / "phantom-demo"


class ModelLoadError(PipelineError):
    """A model folder, card or weights file is missing, corrupt or of the wrong kind."""


@dataclass(frozen=True)
class NetworkSpec:
    """DynUNet hyper-parameters; enough to rebuild the network before loading its weights."""

    in_channels: int
    out_channels: int
    filters: tuple[int, ...]
    strides: tuple[tuple[int, int, int], ...]
    kernel_size: int = 3
    norm_name: str = "instance"

    def build(self) -> torch.nn.Module:
        """A fresh network with these hyper-parameters."""
        return DynUNet(
            spatial_dims=3,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            kernel_size=[self.kernel_size] * len(self.strides),
            strides=[list(s) for s in self.strides],
            upsample_kernel_size=[list(s) for s in self.strides[1:]],
            filters=list(self.filters),
            norm_name=self.norm_name,
            res_block=False,
        )

    @property
    def divisor(self) -> tuple[int, int, int]:
        """Input sizes must be multiples of this (the product of the strides per axis)."""
        out = [1, 1, 1]
        for stride in self.strides:
            out = [o * s for o, s in zip(out, stride)]
        return (out[0], out[1], out[2])

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "NetworkSpec":
        return cls(
            in_channels=int(data["in_channels"]),
            out_channels=int(data["out_channels"]),
            filters=tuple(int(f) for f in data["filters"]),
            strides=tuple(tuple(int(v) for v in s) for s in data["strides"]),  # type: ignore[misc]
            kernel_size=int(data.get("kernel_size", 3)),
            norm_name=str(data.get("norm_name", "instance")),
        )


WHOLE_NETWORK = NetworkSpec(
    in_channels=2 * len(PHASE_ORDER),  # one image channel and one presence channel per phase
    out_channels=NUM_CLASSES,
    filters=(16, 32, 64, 96, 128),
    strides=((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)),
)
PATCH_NETWORK = NetworkSpec(
    in_channels=2 * len(PHASE_ORDER),
    out_channels=7,  # background + six lesion types
    filters=(16, 32, 64, 96),
    strides=((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)),
)


@dataclass(frozen=True)
class Preprocessing:
    """How HU volumes become network input. Recorded with the weights; never guessed."""

    target_spacing_mm: tuple[float, float, float] = (3.0, 2.0, 2.0)  # (z, y, x)
    hu_min: float = -150.0
    hu_max: float = 350.0
    hu_center: float = 100.0
    hu_scale: float = 100.0
    phases: tuple[str, ...] = tuple(p.value for p in PHASE_ORDER)
    roi_size_voxels: tuple[int, int, int] = (48, 160, 160)
    patch_size_voxels: tuple[int, int, int] = (16, 64, 64)
    #: smooth each axis that is sampled more coarsely before resampling (pipeline.inference
    #: .resample_volume), so a working voxel carries the mean of the scan voxels it covers and not
    #: the noise of the one or two nearest; off for cards written before this setting existed.
    anti_alias: bool = False

    @property
    def phase_order(self) -> tuple[Phase, ...]:
        return tuple(Phase(p) for p in self.phases)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Preprocessing":
        return cls(
            target_spacing_mm=tuple(float(v) for v in data["target_spacing_mm"]),  # type: ignore[arg-type]
            hu_min=float(data["hu_min"]),
            hu_max=float(data["hu_max"]),
            hu_center=float(data["hu_center"]),
            hu_scale=float(data["hu_scale"]),
            phases=tuple(str(p) for p in data["phases"]),
            roi_size_voxels=tuple(int(v) for v in data["roi_size_voxels"]),  # type: ignore[arg-type]
            patch_size_voxels=tuple(int(v) for v in data["patch_size_voxels"]),  # type: ignore[arg-type]
            anti_alias=bool(data.get("anti_alias", False)),
        )


@dataclass
class WeightsEntry:
    """One weights file named by the card."""

    file: str
    sha256: str
    network: NetworkSpec | None = None


@dataclass
class TyperEntry:
    """The lesion typer's weights file and its spec (``pipeline.lesion_typer.TyperSpec.to_json``)."""

    file: str
    sha256: str
    spec: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    #: the grid its features are read on (``pipeline.typer_grid.FeatureGrid.to_json``); None: the
    #: card's working grid, with the working grid's HU (every typer before session 23)
    feature_grid: dict[str, Any] | None = None


@dataclass
class ModelCard:
    """The model card: identity, preprocessing, networks and provenance."""

    name: str
    version: str
    format: str  # "native" or "torchscript"
    preprocessing: Preprocessing
    whole: WeightsEntry
    patch: WeightsEntry | None
    labels: dict[str, str] = field(default_factory=dict)
    training_data: str = ""
    intended_use: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    typer: TyperEntry | None = None

    def identity(self) -> ModelIdentity:
        return ModelIdentity(
            name=self.name, version=self.version, weights_sha256=self.whole.sha256, trained_on=self.training_data
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return data


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _weights_entry(data: Any, where: str, path: Path) -> WeightsEntry:
    if not isinstance(data, dict) or "file" not in data or "sha256" not in data:
        raise ModelLoadError(f"{path}: '{where}' must give 'file' and 'sha256'")
    network = NetworkSpec.from_json(data["network"]) if data.get("network") else None
    return WeightsEntry(file=str(data["file"]), sha256=str(data["sha256"]), network=network)


def _typer_entry(data: Any, path: Path) -> TyperEntry:
    if not isinstance(data, dict) or not {"file", "sha256", "spec"} <= set(data):
        raise ModelLoadError(f"{path}: 'typer' must give 'file', 'sha256' and 'spec'")
    return TyperEntry(file=str(data["file"]), sha256=str(data["sha256"]), spec=dict(data["spec"]),
                      training=dict(data.get("training", {})),
                      feature_grid=dict(data["feature_grid"]) if data.get("feature_grid") else None)


def read_model_card(model_dir: Path) -> ModelCard:
    """Read and check ``model_card.json`` in `model_dir`."""
    path = model_dir / MODEL_CARD_NAME
    if not path.is_file():
        raise ModelLoadError(f"{model_dir}: no {MODEL_CARD_NAME} (expected a livernode model folder)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        card = ModelCard(
            name=str(data["name"]),
            version=str(data["version"]),
            format=str(data.get("format", "native")),
            preprocessing=Preprocessing.from_json(data["preprocessing"]),
            whole=_weights_entry(data["whole"], "whole", path),
            patch=_weights_entry(data["patch"], "patch", path) if data.get("patch") else None,
            labels={str(k): str(v) for k, v in data.get("labels", {}).items()},
            training_data=str(data.get("training_data", "")),
            intended_use=str(data.get("intended_use", "")),
            metrics=dict(data.get("metrics", {})),
            typer=_typer_entry(data["typer"], path) if data.get("typer") else None,
        )
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"{path}: not valid JSON ({error})") from None
    except (KeyError, TypeError, ValueError) as error:
        raise ModelLoadError(f"{path}: missing or invalid field {error}") from None
    if card.format not in ("native", "torchscript"):
        raise ModelLoadError(f"{path}: unknown format {card.format!r} (expected 'native' or 'torchscript')")
    return card


def verified_weights_path(model_dir: Path, entry: WeightsEntry | TyperEntry) -> Path:
    """The weights file of `entry`, after checking that it exists and its sha256 matches."""
    path = model_dir / entry.file
    if not path.is_file():
        raise ModelLoadError(f"{path}: weights file missing (named by {model_dir / MODEL_CARD_NAME})")
    actual = sha256_of(path)
    if actual != entry.sha256:
        raise ModelLoadError(
            f"{path}: sha256 {actual[:16]}... does not match the model card's {entry.sha256[:16]}... "
            "(file corrupt or replaced)"
        )
    return path


def load_native_network(path: Path, spec: NetworkSpec, device: torch.device) -> torch.nn.Module:
    """Build `spec` and load a state-dict weights file into it, in eval mode on `device`."""
    if not Path(path).is_file():
        raise ModelLoadError(f"{path}: no such weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt file
        raise ModelLoadError(f"{path}: not a readable PyTorch weights file ({type(error).__name__}: {error})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    network = spec.build()
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise ModelLoadError(
            f"{path}: weights do not fit the network in the model card "
            f"(in={spec.in_channels}, out={spec.out_channels}, filters={list(spec.filters)}): {first_line}"
        ) from None
    return network.to(device).eval()


def load_torchscript_network(path: Path, device: torch.device) -> torch.nn.Module:
    """Load a TorchScript module in eval mode on `device`."""
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as error:
        raise ModelLoadError(f"{path}: not a readable TorchScript file ({type(error).__name__}: {error})") from None
    return module.eval()


def save_native_weights(network: torch.nn.Module, path: Path, half: bool = True) -> str:
    """Save a network's state dict (float16 by default, to keep the repository small); return its sha256."""
    state = {k: (v.half() if half and v.is_floating_point() else v).cpu() for k, v in network.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return sha256_of(path)


def write_model_card(model_dir: Path, card: ModelCard) -> Path:
    """Write `card` as ``model_card.json`` in `model_dir`."""
    path = model_dir / MODEL_CARD_NAME
    path.write_text(json.dumps(card.to_json(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def bf16_supported(device: torch.device) -> bool:
    """Whether bfloat16 autocast is fast on `device`: a CUDA GPU with bf16, or a CPU whose oneDNN
    has bf16 kernels (AVX512-BF16 / AMX; 3.6x faster training of UNet_whole on this project's CPU)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def use_bf16(device: torch.device, precision: str = "auto") -> bool:
    """Whether to run under bfloat16 autocast: precision 'auto' (where supported), 'float32' (never)
    or 'bfloat16' (always)."""
    if precision == "float32":
        return False
    if precision == "bfloat16":
        return True
    return bf16_supported(device)


def select_device(preference: str = "auto") -> torch.device:
    """'auto' takes the GPU when one exists, else the CPU; 'cpu' and 'cuda' force one."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise PipelineError("device 'cuda' requested but no GPU is available")
    return torch.device(preference)
