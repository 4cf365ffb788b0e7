"""Model backends: load and predict on a tiny input, missing phases, corrupt weights fail clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.backends import BackendConfig, load_backend
from pipeline.config import ConfigError
from pipeline.lesion_features import feature_count
from pipeline.lesion_typer import TYPER_CLASSES
from pipeline.model import (
    BUNDLED_MODEL_DIR,
    ModelCard,
    ModelLoadError,
    NetworkSpec,
    Preprocessing,
    WeightsEntry,
    save_native_weights,
    sha256_of,
    write_model_card,
)
from pipeline.types import NUM_CLASSES, Phase, VolumeGeometry

TINY_WHOLE = NetworkSpec(in_channels=8, out_channels=NUM_CLASSES, filters=(4, 8, 8), strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)))
TINY_PATCH = NetworkSpec(in_channels=8, out_channels=7, filters=(4, 8, 8), strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)))
PREP = Preprocessing(target_spacing_mm=(4.0, 4.0, 4.0), roi_size_voxels=(8, 16, 16), patch_size_voxels=(8, 16, 16))
GEOMETRY = VolumeGeometry(shape=(12, 40, 40), spacing_mm=(3.0, 2.0, 2.0), origin_mm=(0.0, 0.0, 0.0))


def _write_model(model_dir: Path, fmt: str = "native") -> Path:
    torch.manual_seed(0)
    whole, patch = TINY_WHOLE.build().eval(), TINY_PATCH.build().eval()
    model_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        whole_file, patch_file = "whole.ts", "patch.ts"
        torch.jit.trace(whole, torch.zeros(1, 8, 8, 16, 16)).save(str(model_dir / whole_file))
        torch.jit.trace(patch, torch.zeros(1, 8, 8, 16, 16)).save(str(model_dir / patch_file))
        whole_sha, patch_sha = sha256_of(model_dir / whole_file), sha256_of(model_dir / patch_file)
    else:
        whole_file, patch_file = "whole.pt", "patch.pt"
        whole_sha = save_native_weights(whole, model_dir / whole_file)
        patch_sha = save_native_weights(patch, model_dir / patch_file)
    card = ModelCard(
        name="tiny", version="0.0.1", format=fmt, preprocessing=PREP,
        whole=WeightsEntry(whole_file, whole_sha, TINY_WHOLE if fmt == "native" else None),
        patch=WeightsEntry(patch_file, patch_sha, TINY_PATCH if fmt == "native" else None),
        training_data="none (test)",
    )
    write_model_card(model_dir, card)
    return model_dir


def _volumes(phases: tuple[Phase, ...]) -> dict[Phase, np.ndarray]:
    rng = np.random.default_rng(1)
    return {p: rng.normal(60, 20, GEOMETRY.shape).astype(np.float32) for p in phases}


@pytest.mark.parametrize("fmt", ["native", "torchscript"])
def test_backend_loads_and_predicts_probabilities(tmp_path: Path, fmt: str) -> None:
    model_dir = _write_model(tmp_path / "model", fmt)
    backend = load_backend(BackendConfig(kind=fmt, model_dir=str(model_dir), device="cpu"), tmp_path)
    prediction = backend.predict(_volumes((Phase.NC, Phase.AP, Phase.VP, Phase.DP)), GEOMETRY)
    probs = prediction.probabilities
    assert probs.shape == (NUM_CLASSES, 9, 20, 20)  # working grid at 4 mm
    assert np.allclose(probs.astype(np.float32).sum(axis=0), 1.0, atol=1e-2)
    assert prediction.model_input.geometry.spacing_mm == pytest.approx((4.0, 4.0, 4.0))
    patch_model = backend.patch_model((Phase.VP,))
    labels = patch_model(np.zeros((3, 4, 8, 16, 16), dtype=np.float32))
    assert labels.shape == (3, 8, 16, 16) and labels.dtype == np.uint8 and labels.max() <= 6
    assert backend.identity.version == "0.0.1"


def test_missing_phases_work(tmp_path: Path) -> None:
    backend = load_backend(BackendConfig(model_dir=str(_write_model(tmp_path / "m")), device="cpu"), tmp_path)
    only_venous = backend.predict(_volumes((Phase.VP,)), GEOMETRY)
    assert only_venous.model_input.present == (Phase.VP,)
    image = only_venous.model_input.image
    assert np.all(image[4:] [[0, 1, 3]] == 0) and np.all(image[4 + 2] == 1)  # presence channels
    assert np.isfinite(only_venous.probabilities.astype(np.float32)).all()


def test_corrupt_weights_fail_naming_the_file(tmp_path: Path) -> None:
    model_dir = _write_model(tmp_path / "m")
    weights = model_dir / "whole.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError) as caught:
        load_backend(BackendConfig(model_dir=str(model_dir), device="cpu"), tmp_path)
    assert str(weights) in str(caught.value) and "sha256" in str(caught.value)


def test_garbage_weights_with_matching_hash_fail_clearly(tmp_path: Path) -> None:
    model_dir = _write_model(tmp_path / "m")
    weights = model_dir / "whole.pt"
    weights.write_bytes(b"this is not a weights file")
    card = (model_dir / "model_card.json").read_text().replace(
        _card_sha(model_dir), sha256_of(weights))
    (model_dir / "model_card.json").write_text(card)
    with pytest.raises(ModelLoadError, match="not a readable PyTorch weights file"):
        load_backend(BackendConfig(model_dir=str(model_dir), device="cpu"), tmp_path)


def test_weights_of_another_network_fail_clearly(tmp_path: Path) -> None:
    model_dir = _write_model(tmp_path / "m")
    other = NetworkSpec(in_channels=8, out_channels=NUM_CLASSES, filters=(6, 8, 8), strides=TINY_WHOLE.strides)
    sha = save_native_weights(other.build(), model_dir / "whole.pt")
    card = (model_dir / "model_card.json").read_text().replace(_card_sha(model_dir), sha)
    (model_dir / "model_card.json").write_text(card)
    with pytest.raises(ModelLoadError, match="do not fit the network"):
        load_backend(BackendConfig(model_dir=str(model_dir), device="cpu"), tmp_path)


def test_missing_card_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model folder not found"):
        load_backend(BackendConfig(model_dir=str(tmp_path / "absent"), device="cpu"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="model_card.json"):
        load_backend(BackendConfig(model_dir=str(tmp_path / "empty"), device="cpu"), tmp_path)


def test_nnunet_backend_without_the_extra_says_how_to_install(tmp_path: Path) -> None:
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        with pytest.raises(ModelLoadError, match=r"livernode\[nnunet\]"):
            load_backend(BackendConfig(kind="nnunet", model_dir=str(tmp_path), device="cpu"), tmp_path)
    else:
        with pytest.raises(ModelLoadError, match="dataset.json"):
            load_backend(BackendConfig(kind="nnunet", model_dir=str(tmp_path), device="cpu"), tmp_path)


def test_typer_dir_replaces_the_cards_lesion_typer(tmp_path: Path) -> None:
    model_dir = _write_model(tmp_path / "m")  # a card without a typer
    assert load_backend(BackendConfig(model_dir=str(model_dir), device="cpu"), tmp_path).lesion_typer() is None
    config = BackendConfig(model_dir=str(model_dir), device="cpu", typer_dir=str(BUNDLED_MODEL_DIR))
    typer = load_backend(config, tmp_path).lesion_typer()
    assert typer is not None and typer(np.zeros((1, feature_count()), dtype=np.float32)).shape == (1, TYPER_CLASSES)
    with pytest.raises(ModelLoadError, match=r"m/model_card\.json: no 'typer' entry"):
        load_backend(BackendConfig(model_dir=str(model_dir), device="cpu", typer_dir=str(model_dir)), tmp_path)


def test_backend_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="typer_dir: must name a model folder"):
        BackendConfig(typer_dir="pipeline/models/phantom-demo/lesion_typer.pt")
    with pytest.raises(ConfigError, match="nnunet_folds"):
        BackendConfig(kind="nnunet", nnunet_folds=())
    with pytest.raises(ConfigError, match="nnunet_checkpoint"):
        BackendConfig(kind="nnunet", nnunet_checkpoint="")


def _card_sha(model_dir: Path) -> str:
    import json

    return json.loads((model_dir / "model_card.json").read_text())["whole"]["sha256"]
