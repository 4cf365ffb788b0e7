"""The bundled recipe's defaults are the recipe that made the bundled weights, so `livernode train
bundled` reproduces them; the type-balanced recipe changes only its typing settings."""

from __future__ import annotations

import json
from dataclasses import asdict

from pipeline.model import BUNDLED_MODEL_DIR
from pipeline.train_bundled import BundledRecipe

TYPING_FIELDS = {"typing_studies", "whole_typing_iterations", "patch_iterations", "patch_type_balance"}


def test_default_recipe_is_the_one_recorded_in_the_bundled_model_card() -> None:
    card = json.loads((BUNDLED_MODEL_DIR / "model_card.json").read_text(encoding="utf-8"))
    assert card["metrics"]["recipe"] == asdict(BundledRecipe())


def test_type_balanced_recipe_changes_only_the_typing_settings() -> None:
    base, typed = asdict(BundledRecipe()), asdict(BundledRecipe().type_balanced())
    changed = {key for key in base if base[key] != typed[key]}
    assert changed == TYPING_FIELDS
    assert typed["typing_studies"] > 0 and typed["whole_typing_iterations"] > 0 and typed["patch_type_balance"] > 1
