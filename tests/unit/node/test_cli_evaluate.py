"""``livernode evaluate --model MODEL --held-out N``: a model folder through the whole cascade on
held-out phantom studies, with the same report as the bundled model card's held-out figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.cli import main
from pipeline.backends import CardBackend
from pipeline.config import CascadeConfig
from pipeline.model import BUNDLED_MODEL_DIR, select_device
from pipeline.phantom_evaluation import evaluate_on_phantoms
from pipeline.training_data import held_out_specs


def test_held_out_evaluation_of_a_model_folder_matches_the_library_run(tmp_path: Path, capsys) -> None:
    cache = tmp_path / "cases"
    out = tmp_path / "cli"
    assert main(["evaluate", "--model", str(BUNDLED_MODEL_DIR), "--held-out", "1", "--out", str(out),
                 "--cache", str(cache), "--processes", "1"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert report["num_cases"] == 1 and [case["case"] for case in report["cases"]] == ["phantom-30000"]
    liver = json.loads((out / "liver_dice.json").read_text(encoding="utf-8"))
    assert liver["mean"] > 0.85  # the bundled model's liver on this study: 0.95 (docs/models.md)
    assert f"liver Dice (mean of 1): {liver['mean']:.4f}" in printed
    assert (out / "organ_dice.json").is_file() and list(cache.glob("*.npz"))

    # the same study through the library call the bundled recipe uses gives the same report
    library = evaluate_on_phantoms(CardBackend(BUNDLED_MODEL_DIR, select_device("cpu")), held_out_specs(1),
                                   CascadeConfig(), tmp_path / "library", cache_dir=cache)
    expected = json.loads(library.report_json.read_text(encoding="utf-8"))
    assert report["patient_level"] == expected["patient_level"]
    assert report["cases"] == expected["cases"]
    assert library.liver_dice_mean == pytest.approx(liver["mean"])


@pytest.mark.parametrize("extra, message", [
    (["--held-out", "2"], "--model MODEL and --held-out N go together"),
    (["--model", "MODEL"], "--model MODEL and --held-out N go together"),
    (["--model", "MODEL", "--held-out", "0"], "--held-out must be at least 1 study, got 0"),
    (["--model", "MODEL", "--held-out", "1", "--processes", "0"], "--processes must be at least 1, got 0"),
    (["preds", "truth", "--model", "MODEL", "--held-out", "1"], "it takes no PREDICTIONS or GROUND_TRUTH"),
    (["--model", "MODEL", "--held-out", "1", "--first-seed", "29999"], "--first-seed must be at least 30000"),
    ([], "give PREDICTIONS and GROUND_TRUTH folders, or --model MODEL --held-out N"),
])
def test_evaluate_refuses_mixed_or_incomplete_arguments(tmp_path: Path, capsys, extra: list[str],
                                                       message: str) -> None:
    argv = [str(BUNDLED_MODEL_DIR) if item == "MODEL" else item for item in extra]
    assert main(["evaluate", *argv, "--out", str(tmp_path / "out")]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_evaluate_names_a_model_folder_it_cannot_load(tmp_path: Path, capsys) -> None:
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "model_card.json").write_text("{not json", encoding="utf-8")
    assert main(["evaluate", "--model", str(broken), "--held-out", "1", "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert "cannot load the model" in error and "model_card.json" in error
    assert not (tmp_path / "out").exists()


def test_a_second_held_out_set_with_the_cascade_settings_of_a_config_file(tmp_path: Path, capsys,
                                                                          monkeypatch) -> None:
    import pipeline.phantom_evaluation as phantom_evaluation

    used = []
    real = phantom_evaluation.evaluate_on_phantoms

    def recording(backend, specs, config, *args, **kwargs):
        used.append((specs, config))
        return real(backend, specs, config, *args, **kwargs)

    monkeypatch.setattr(phantom_evaluation, "evaluate_on_phantoms", recording)
    config = tmp_path / "site.yaml"
    config.write_text("cascade:\n  rescue_malignant_probability: 0.8\n  rescue_max_volume_ml: 3.0\n",
                      encoding="utf-8")
    out = tmp_path / "out"
    assert main(["evaluate", "--model", str(BUNDLED_MODEL_DIR), "--held-out", "1", "--first-seed", "40000",
                 "--config", str(config), "--out", str(out), "--processes", "1"]) == 0
    report = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert [case["case"] for case in report["cases"]] == ["phantom-40000"]
    ((specs, cascade),) = used
    assert [spec.seed for spec in specs] == [40000]
    assert cascade == CascadeConfig(rescue_malignant_probability=0.8, rescue_max_volume_ml=3.0)
    assert "liver Dice (mean of 1)" in capsys.readouterr().out


def test_evaluate_refuses_a_config_file_with_a_bad_cascade_setting(tmp_path: Path, capsys) -> None:
    config = tmp_path / "site.yaml"
    config.write_text("cascade:\n  rescue_malignant_probability: 2.0\n", encoding="utf-8")
    assert main(["evaluate", "--model", str(BUNDLED_MODEL_DIR), "--held-out", "1", "--config", str(config),
                 "--out", str(tmp_path / "out")]) == 2
    assert "rescue_malignant_probability" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_held_out_seeds_start_above_the_training_and_validation_seeds() -> None:
    assert [spec.seed for spec in held_out_specs(2, first_seed=40000)] == [40000, 40001]
    with pytest.raises(ValueError, match="held-out seeds start at 30000"):
        held_out_specs(1, first_seed=20000)
