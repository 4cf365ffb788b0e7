"""Configuration loading and validation: every problem is reported as `dotted.path: message`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from node.settings import (
    CONFIG_ENV_VAR,
    Settings,
    SettingsError,
    load_settings,
    resolve_config_path,
    validate_settings,
)

REPO = Path(__file__).resolve().parents[3]
DEFAULT_YAML = REPO / "config" / "default.yaml"


def _problems(raw: object) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        validate_settings(raw, "test.yaml")
    return [str(p) for p in caught.value.problems]


def test_default_yaml_is_valid_and_equals_the_code_defaults() -> None:
    assert load_settings(DEFAULT_YAML) == Settings()


def test_default_yaml_lists_every_setting() -> None:
    """The documented file names every key the code knows, so nothing is hidden."""
    documented = yaml.safe_load(DEFAULT_YAML.read_text())
    dumped = Settings().model_dump()

    def keys(tree: dict, prefix: str = "") -> set[str]:
        out: set[str] = set()
        for key, value in tree.items():
            out.add(prefix + key)
            if isinstance(value, dict):
                out |= keys(value, prefix + key + ".")
        return out

    assert keys(documented) == keys(dumped)


def test_unknown_key_is_named_with_its_path() -> None:
    assert _problems({"cascade": {"slab_slize": 4}}) == ["cascade.slab_slize: unknown setting"]
    assert _problems({"colour": "red"}) == ["colour: unknown setting"]


def test_bad_value_is_named_with_its_path_and_reason() -> None:
    assert _problems({"cascade": {"slab_slices": 0}}) == ["cascade.slab_slices: must be >= 1"]
    problems = _problems({"log_level": "LOUD"})
    assert len(problems) == 1 and problems[0].startswith("log_level: ")
    problems = _problems({"cascade": {"reclassify_threshold_ml": "half"}})
    assert problems[0].startswith("cascade.reclassify_threshold_ml: ")


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("cascade:\n  sensitivity_factors: [1, 3]\n")
    settings = load_settings(path)
    assert settings.cascade.sensitivity_factors == (1.0, 3.0)
    assert settings.cascade.inference_patches_per_lesion == 10


def test_missing_file_and_broken_yaml(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(tmp_path / "absent.yaml")
    assert str(caught.value.problems[0]) == "(file): no such file"
    broken = tmp_path / "broken.yaml"
    broken.write_text("cascade: [1, 2\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(broken)
    assert "not valid YAML" in str(caught.value.problems[0])
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(SettingsError):
        load_settings(not_mapping)


def test_config_path_from_flag_then_environment() -> None:
    assert resolve_config_path("a.yaml", {CONFIG_ENV_VAR: "b.yaml"}) == Path("a.yaml")
    assert resolve_config_path(None, {CONFIG_ENV_VAR: "b.yaml"}) == Path("b.yaml")
    assert resolve_config_path(None, {}) is None


def test_check_config_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cascade:\n  seed: -x\n  nonsense: 1\nlog_level: INFO\n")
    result = subprocess.run(
        [sys.executable, "-m", "node.cli", "check-config", str(bad)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode != 0
    assert "cascade.nonsense: unknown setting" in result.stderr
    good = subprocess.run(
        [sys.executable, "-m", "node.cli", "check-config", str(DEFAULT_YAML)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert good.returncode == 0, good.stderr


def test_default_yaml_values_equal_the_embedded_defaults() -> None:
    from pathlib import Path

    from node.settings import Settings, load_settings

    repo = Path(__file__).resolve().parents[3]
    assert load_settings(repo / "config" / "default.yaml") == Settings()
