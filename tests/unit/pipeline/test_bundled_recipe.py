"""The bundled recipe's defaults are the recipe that made the bundled weights, so `livernode train
bundled` reproduces them; the type-balanced recipe changes only its typing settings."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from node.cli import main
from pipeline.model import BUNDLED_MODEL_DIR, ModelLoadError, Preprocessing
from pipeline.train_bundled import BundledRecipe, started_whole, train_bundled, whole_stages

TYPING_FIELDS = {"patch_on_typing_studies", "patch_iterations", "patch_type_balance"}


def test_default_recipe_is_the_one_recorded_in_the_bundled_model_card() -> None:
    card = json.loads((BUNDLED_MODEL_DIR / "model_card.json").read_text(encoding="utf-8"))
    assert card["metrics"]["recipe"] == json.loads(json.dumps(asdict(BundledRecipe())))  # tuples as lists
    # the bundled folder is the fine-grid stage's: its UNet_whole works on that grid, anti-aliased
    assert card["preprocessing"]["target_spacing_mm"] == list(BundledRecipe().fine_grid_spacing_mm)
    assert card["preprocessing"]["anti_alias"] and card["whole"]["file"] == "unet_whole.pt"
    assert card["metrics"]["whole_training"]["seed"] == BundledRecipe().fine_grid_seed
    assert card["metrics"]["whole_training"]["iterations"] == BundledRecipe().fine_grid_iterations
    assert card["metrics"]["coarse_model"]["whole"] == "unet_whole_typed.pt"
    assert "NOT FOR CLINICAL USE" in card["training_data"] and "NOT FOR CLINICAL USE" in card["intended_use"]


def test_type_balanced_recipe_changes_only_the_typing_settings() -> None:
    base, typed = asdict(BundledRecipe()), asdict(BundledRecipe().type_balanced())
    changed = {key for key in base if base[key] != typed[key]}
    assert changed == TYPING_FIELDS
    assert typed["patch_on_typing_studies"] and typed["patch_type_balance"] > 1


def test_whole_stages_follow_the_recipe() -> None:
    _, _, prep = BundledRecipe().networks()
    bundled = whole_stages(BundledRecipe(), prep)
    assert [stage.weights_name for stage in bundled] == ["unet_whole.pt", "unet_whole_finetuned.pt",
                                                          "unet_whole_polished.pt", "unet_whole_typed.pt"]
    assert [stage.on_typing_studies for stage in bundled] == [False, False, False, True]
    assert bundled[3].config.iterations == 6500 and bundled[3].config.learning_rate == 1e-3
    assert whole_stages(BundledRecipe().type_balanced(), prep) == bundled
    without = whole_stages(BundledRecipe(whole_typing_iterations=0), prep)
    assert [stage.weights_name for stage in without] == [stage.weights_name for stage in bundled[:3]]


def test_heads_are_mined_with_a_stage_of_the_recipe(tmp_path: Path) -> None:
    card = json.loads((BUNDLED_MODEL_DIR / "model_card.json").read_text(encoding="utf-8"))
    assert BundledRecipe().heads_mined_with == "unet_whole_polished.pt"
    assert card["metrics"]["recipe"]["heads_mined_with"] == "unet_whole_polished.pt"
    polished = card["metrics"]["whole_polished_stage"]  # kept in the folder for --whole-from
    spec, _, _ = BundledRecipe().networks()
    assert started_whole(BUNDLED_MODEL_DIR / polished["file"], spec).sha256 == polished["sha256"]
    with pytest.raises(ValueError, match="heads_mined_with: 'unet_whole_best.pt'"):
        train_bundled(tmp_path / "m", tmp_path / "w", replace(BundledRecipe().small(), heads_mined_with="unet_whole_best.pt"))
    assert not (tmp_path / "w").exists() and not (tmp_path / "m").exists()  # refused before anything was written


def test_started_whole_checks_the_weights(tmp_path: Path) -> None:
    card = json.loads((BUNDLED_MODEL_DIR / "model_card.json").read_text(encoding="utf-8"))
    spec, patch_spec, _ = BundledRecipe().networks()
    started = started_whole(BUNDLED_MODEL_DIR / card["whole"]["file"], spec)
    assert started.sha256 == card["whole"]["sha256"] and started.iterations == 0
    with pytest.raises(ModelLoadError, match="unet_patch.pt"):  # weights of the other network
        started_whole(BUNDLED_MODEL_DIR / card["patch"]["file"], spec)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not weights")
    with pytest.raises(ModelLoadError, match="corrupt.pt"):
        started_whole(corrupt, spec)


def test_train_bundled_cli_refuses_a_missing_start_file(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nothing.pt"
    assert main(["train", "bundled", "--whole-from", str(missing), "--work", str(tmp_path / "w"),
                 "--out", str(tmp_path / "m")]) == 1
    assert "nothing.pt: no such weights file" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # refused before anything was written


@pytest.mark.parametrize("size", ["cpu", "gpu"])
def test_anti_alias_recipe_sets_the_preprocessing_it_records(size: str) -> None:
    _, _, plain = BundledRecipe(size=size).networks()
    _, _, smoothed = BundledRecipe(size=size, anti_alias=True).networks()
    assert not plain.anti_alias and smoothed.anti_alias
    assert Preprocessing.from_json(asdict(smoothed)).anti_alias  # as the card records it
    assert asdict(BundledRecipe(anti_alias=True))["anti_alias"] is True  # what the card's metrics.recipe holds


def test_train_bundled_cli_passes_anti_alias_to_the_recipe(tmp_path: Path, monkeypatch) -> None:
    import pipeline.train_bundled as train_bundled_module

    seen: list[BundledRecipe] = []

    def fake_train_bundled(out_dir: Path, work_dir: Path, recipe: BundledRecipe, **_: object) -> Path:
        seen.append(recipe)
        card = out_dir / "model_card.json"
        card.parent.mkdir(parents=True)
        card.write_text(json.dumps({"metrics": {"held_out_liver_dice_mean": 0.5}}), encoding="utf-8")
        return card

    monkeypatch.setattr(train_bundled_module, "train_bundled", fake_train_bundled)
    for flags, expected in (([], False), (["--anti-alias"], True)):
        out = tmp_path / f"m{len(seen)}"
        assert main(["train", "bundled", *flags, "--work", str(tmp_path / "w"), "--out", str(out)]) == 0
        assert seen[-1].anti_alias is expected
