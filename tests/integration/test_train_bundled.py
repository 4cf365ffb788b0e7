"""`train_bundled` end to end on the small recipe, continuing from the bundled UNet_whole
(`--whole-from`): only the type-balanced coarse stage, then the fine-grid UNet_whole, UNet_patch and
the lesion typer train, the held-out
evaluation runs (with the typer), and the card says where UNet_whole started. Takes a few minutes (phantom generation)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from pipeline.model import BUNDLED_MODEL_DIR, read_model_card
from pipeline.train_bundled import BundledRecipe, train_bundled
from pipeline.typer_grid import FeatureGrid, study_feature_grid


def test_train_bundled_continues_from_the_bundled_whole_weights(tmp_path: Path) -> None:
    bundled = json.loads((BUNDLED_MODEL_DIR / "model_card.json").read_text(encoding="utf-8"))
    start = BUNDLED_MODEL_DIR / bundled["metrics"]["whole_polished_stage"]["file"]  # stages 1-3, as --whole-from takes
    messages: list[str] = []
    # with a typer reading the studies' own HU (not the bundled recipe's default), to run that path end to end
    recipe = replace(BundledRecipe().type_balanced().small(), typer_reads_study=True)
    card_path = train_bundled(tmp_path / "model", tmp_path / "work", recipe, progress=messages.append,
                              whole_start=start)
    card = read_model_card(card_path.parent)
    # the result is the fine-grid stage's, started from the coarse model the work folder keeps
    assert card.whole.file == "unet_whole.pt" and card.patch.file == "unet_patch.pt"
    assert card.preprocessing.target_spacing_mm == recipe.fine_grid_spacing_mm and card.preprocessing.anti_alias
    coarse = read_model_card(tmp_path / "work" / "coarse-model")
    assert coarse.whole.file == "unet_whole_typed.pt" and not coarse.preprocessing.anti_alias
    assert card.metrics["coarse_model"]["whole_sha256"] == coarse.whole.sha256 != card.whole.sha256
    polished_sha = bundled["metrics"]["whole_polished_stage"]["sha256"]
    assert coarse.whole.sha256 != polished_sha  # the type-balanced stage changed it
    assert coarse.metrics["whole_started_from"] == {"file": start.name, "sha256": polished_sha}
    assert card.metrics["whole_polished_stage"]["sha256"] == polished_sha  # kept for --whole-from
    assert (tmp_path / "model" / start.name).is_file()
    assert card.metrics["recipe"]["typing_studies"] == recipe.typing_studies
    assert "held_out_report" in card.metrics
    assert {"SPLEEN", "STOMACH"} <= set(card.metrics["held_out_organ_dice_mean"])
    assert card.typer is not None and card.typer.training["studies"] == recipe.typer_studies
    assert (tmp_path / "model" / card.typer.file).is_file() and "lesion typer" in card.training_data
    # the typer reads the study's own HU; so did the held-out evaluation, generating each study again
    assert FeatureGrid.from_json(card.typer.feature_grid) == study_feature_grid(card.preprocessing)
    assert any("the lesion typer reads the study's own HU" in m for m in messages)
    assert (tmp_path / "model" / "held_out_evaluation.md").is_file()
    # only the type-balanced stage of UNet_whole ran on the coarse grid; the natural-mix studies were never made
    fine = next(i for i, m in enumerate(messages) if m.startswith("fine-grid stage"))
    coarse_messages, fine_messages = messages[:fine], messages[fine:]
    assert not any(name in m for m in coarse_messages for name in ("unet_whole.pt:", "unet_whole_polished.pt:"))
    assert any("unet_whole_typed.pt: iteration" in m for m in coarse_messages)
    assert any("unet_whole.pt: iteration" in m for m in fine_messages)
    # the coarse stages train UNet_whole only: the fine-grid stage trains and mines its own heads
    assert coarse.patch is None and coarse.typer is None and "UNet_whole only" in coarse.training_data
    assert not any("false positives: mined with" in m for m in coarse_messages)
    assert not (tmp_path / "work" / "coarse-model" / "unet_patch.pt").exists()
    assert not (tmp_path / "work" / "unet_whole.checkpoint.pt").exists()


def test_train_bundled_without_a_fine_grid_stage_trains_the_coarse_heads(tmp_path: Path) -> None:
    """A recipe without the fine-grid stage (the 0.1.0 recipe) ends in a whole coarse model: its
    UNet_patch and lesion typer mined with the stage `heads_mined_with` names, and the held-out run."""
    bundled = json.loads((BUNDLED_MODEL_DIR / "model_card.json").read_text(encoding="utf-8"))
    start = BUNDLED_MODEL_DIR / bundled["metrics"]["whole_polished_stage"]["file"]
    messages: list[str] = []
    recipe = replace(BundledRecipe().small(), fine_grid_iterations=0)
    card_path = train_bundled(tmp_path / "model", tmp_path / "work", recipe, progress=messages.append,
                              whole_start=start)
    card = read_model_card(card_path.parent)
    assert card.whole.file == "unet_whole_typed.pt" and card.patch is not None and card.typer is not None
    assert card.preprocessing.target_spacing_mm == (4.0, 3.0, 3.0) and not card.preprocessing.anti_alias
    assert "lesion-shuffle patches for UNet_patch" in card.training_data
    assert set(card.metrics["training_seconds"]) == {"generation", "whole", "patch"}
    # the heads are mined with the polished stage, which the started weights stand for
    assert any(f"false positives: mined with {start.name}" in m for m in messages)
    assert "held_out_report" in card.metrics and (tmp_path / "model" / "held_out_evaluation.md").is_file()
    assert not (tmp_path / "work" / "coarse-model").exists()
    assert not any(m.startswith("fine-grid stage") for m in messages)
