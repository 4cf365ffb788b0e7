"""The lesion typer: enhancement features of a lesion, the small network that types it, its
weights in a model folder, and the errors a wrong file gives."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.backends import CardBackend
from pipeline.lesion_features import PHASE_FEATURES, feature_count, feature_names, lesion_features, without_phases
from pipeline.lesion_typer import (
    TyperSpec,
    TyperTraining,
    default_typer_spec,
    load_typer,
    retype_lesions,
    save_typer,
    train_typer,
    type_probabilities,
)
from pipeline.model import BUNDLED_MODEL_DIR, ModelLoadError, TyperEntry, read_model_card, write_model_card
from pipeline.seg2det import seg2det
from pipeline.types import LesionType, Phase, VolumeGeometry

SPACING = (2.0, 2.0, 2.0)


def rim_lesion_study() -> tuple[dict[Phase, np.ndarray], np.ndarray, np.ndarray]:
    """Liver at 100 HU (VP) and 80 HU (AP); a 10 mm sphere with a 150 HU rim and a 40 HU core."""
    z, y, x = np.mgrid[:24, :40, :40]
    radius = np.sqrt(((z - 12) * 2.0) ** 2 + ((y - 20) * 2.0) ** 2 + ((x - 20) * 2.0) ** 2)
    lesion = radius <= 10.0
    liver = ~lesion
    vp = np.full(lesion.shape, 100.0, np.float32)
    vp[lesion] = np.where(radius[lesion] > 6.0, 150.0, 40.0)
    ap = vp - 20.0
    return {Phase.AP: ap, Phase.VP: vp}, lesion, liver


def feature(vector: np.ndarray, phase: Phase, name: str) -> float:
    return float(vector[feature_names().index(f"{phase.value}_{name}")])


def test_features_read_a_rim_enhancing_lesion_against_its_liver() -> None:
    hu, lesion, liver = rim_lesion_study()
    vector = lesion_features(hu, lesion, liver, SPACING)
    assert vector.shape == (feature_count(),) and vector.dtype == np.float32
    assert feature(vector, Phase.VP, "rim") > 0.5 > feature(vector, Phase.VP, "core")  # 50 HU over the liver
    assert feature(vector, Phase.VP, "core") == pytest.approx((40.0 - 100.0) / 50.0)
    assert feature(vector, Phase.AP, "core") == pytest.approx((20.0 - 80.0) / 50.0)  # against the AP liver
    assert feature(vector, Phase.VP, "p90") == pytest.approx(1.0)
    assert all(feature(vector, Phase.NC, name) == 0.0 for name in PHASE_FEATURES)  # absent phase
    presence = vector[-4:]
    assert presence.tolist() == [0.0, 1.0, 1.0, 0.0]  # NC, AP, VP, DP
    volume_ml = lesion.sum() * 8.0 / 1000.0
    assert vector[feature_names().index("log_volume_ml")] == pytest.approx(np.log(volume_ml), rel=1e-5)


def test_features_refuse_an_empty_mask() -> None:
    hu, lesion, liver = rim_lesion_study()
    with pytest.raises(ValueError, match="empty lesion mask"):
        lesion_features(hu, np.zeros_like(lesion), liver, SPACING)


def test_without_phases_blanks_the_phases_not_acquired() -> None:
    hu, lesion, liver = rim_lesion_study()
    vector = lesion_features(hu, lesion, liver, SPACING)
    vp_only = without_phases(vector, (Phase.VP,))
    assert all(feature(vp_only, Phase.AP, name) == 0.0 for name in PHASE_FEATURES)
    assert feature(vp_only, Phase.VP, "rim") == feature(vector, Phase.VP, "rim")
    assert vp_only[-4:].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert feature(vector, Phase.AP, "rim") != 0.0  # the input is not changed


def separable_rows(rng: np.random.Generator, per_type: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows whose class (0 not a lesion, 1-6 types) shows in the VP mean (VP is in every
    training phase subset)."""
    column = feature_names().index("VP_mean")
    rows, labels = [], []
    for label in range(0, 7):
        block = rng.normal(0.0, 0.1, size=(per_type, feature_count())).astype(np.float32)
        block[:, column] = label - 3.5
        block[:, -4:] = 1.0
        rows.append(block)
        labels += [label] * per_type
    return np.concatenate(rows), np.array(labels)


def test_typer_learns_types_and_works_with_vp_alone() -> None:
    features, labels = separable_rows(np.random.default_rng(0))
    network = train_typer(features, labels, default_typer_spec(), TyperTraining(iterations=300))
    test, truth = separable_rows(np.random.default_rng(1), per_type=10)
    probabilities = type_probabilities(network, without_phases(test, (Phase.VP,)))
    assert probabilities.shape == (70, 7)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (probabilities.argmax(axis=1) == truth).mean() >= 0.9


def test_typer_refuses_labels_that_are_not_lesion_types() -> None:
    features, labels = separable_rows(np.random.default_rng(0), per_type=2)
    with pytest.raises(ValueError, match="lesion labels"):
        train_typer(features, np.where(labels == 6, 7, labels), default_typer_spec(), TyperTraining(iterations=1))
    only_lesions = labels > 0  # a typer without "not a lesion" rows trains too
    train_typer(features[only_lesions], labels[only_lesions], default_typer_spec(), TyperTraining(iterations=1))
    with pytest.raises(ValueError, match="do not fit"):
        train_typer(features[:, :5], labels, default_typer_spec(), TyperTraining(iterations=1))


def small_typer() -> torch.nn.Module:
    torch.manual_seed(0)
    return default_typer_spec().build().eval()


def test_saved_typer_loads_back_and_wrong_files_fail_clearly(tmp_path: Path) -> None:
    network = small_typer()
    path = tmp_path / "lesion_typer.pt"
    save_typer(network, path)
    spec = default_typer_spec().to_json()
    loaded = load_typer(path, spec)
    rows = np.random.default_rng(0).normal(size=(3, feature_count())).astype(np.float32)
    assert np.allclose(type_probabilities(loaded, rows), type_probabilities(network, rows), atol=1e-6)
    with pytest.raises(ModelLoadError, match="features that differ"):
        load_typer(path, {**spec, "features": spec["features"][:-1]})
    with pytest.raises(ModelLoadError, match="do not fit the typer"):
        load_typer(path, {**spec, "hidden": [32, 32]})
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a weights file")
    with pytest.raises(ModelLoadError, match="corrupt.pt: not a readable PyTorch weights file"):
        load_typer(corrupt, spec)
    with pytest.raises(ModelLoadError, match="typer spec is invalid"):
        load_typer(path, {"hidden": [64, 64]})


def test_retype_lesions_takes_the_most_probable_class() -> None:
    hu, lesion, liver = rim_lesion_study()
    labels = np.where(lesion, LesionType.META, 7).astype(np.uint8)
    geometry = VolumeGeometry(lesion.shape, SPACING, (0.0, 0.0, 0.0))
    lesions = seg2det(labels, geometry)
    hem = np.zeros((1, 7), np.float32)
    hem[0, LesionType.HEM], hem[0, 0] = 0.6, 0.4
    typed = retype_lesions(lesions, hu, labels, geometry, lambda rows: hem)
    (retyped,) = typed.kept
    assert typed.dropped == [] and retyped.lesion_type is LesionType.HEM
    assert lesions[0].lesion_type is LesionType.META and retyped.volume_ml == lesions[0].volume_ml
    not_lesion = np.zeros((1, 7), np.float32)
    not_lesion[0, 0], not_lesion[0, LesionType.HEM] = 0.7, 0.3
    typed = retype_lesions(lesions, hu, labels, geometry, lambda rows: not_lesion)
    assert typed.kept == [] and typed.dropped == lesions
    assert retype_lesions(lesions, hu, labels, geometry, lambda rows: not_lesion, sensitivity=2.0).dropped == lesions
    kept = retype_lesions(lesions, hu, labels, geometry, lambda rows: not_lesion, sensitivity=4.0).kept
    assert [lesion.lesion_type for lesion in kept] == [LesionType.HEM]  # 0.7 < 4 x 0.3
    assert retype_lesions(lesions, hu, labels, geometry, lambda rows: not_lesion, sensitivity=math.inf).kept
    empty = retype_lesions([], hu, labels, geometry, lambda rows: hem)
    assert empty.kept == [] and empty.dropped == []
    with pytest.raises(ValueError, match="expected"):
        retype_lesions(lesions, hu, labels, geometry, lambda rows: np.zeros((1, 6)))


def model_with_typer(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(BUNDLED_MODEL_DIR, folder)
    card = read_model_card(folder)
    sha256 = save_typer(small_typer(), folder / "typer_test.pt")
    write_model_card(folder, replace(card, typer=TyperEntry("typer_test.pt", sha256, default_typer_spec().to_json())))
    return folder


def test_card_backend_loads_the_typer_and_checks_its_sha256(tmp_path: Path) -> None:
    folder = model_with_typer(tmp_path)
    backend = CardBackend(folder, torch.device("cpu"))
    typer = backend.lesion_typer()
    assert typer is not None
    assert typer(np.zeros((2, feature_count()), np.float32)).shape == (2, 7)
    data = json.loads((folder / "model_card.json").read_text())
    data["typer"]["sha256"] = "0" * 64
    (folder / "model_card.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="typer_test.pt: sha256"):
        CardBackend(folder, torch.device("cpu"))
    data["typer"] = {"file": "typer_test.pt"}
    (folder / "model_card.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="'typer' must give"):
        read_model_card(folder)


def test_typer_spec_round_trips_through_json() -> None:
    spec = TyperSpec(in_features=feature_count(), hidden=(16,))
    data = json.loads(json.dumps(spec.to_json()))
    assert TyperSpec.from_json(data) == spec and data["features"] == list(feature_names())
