"""StudyProcessor.warm_up: itk's elastix modules load before the first study; a failure is logged,
not fatal (registration falls back per phase)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

import node.processing as processing
from node.processing import StudyProcessor
from node.settings import Settings

_REPO = Path(__file__).resolve().parents[3]


def test_warm_up_elastix_loads_the_elastix_module_in_a_fresh_process() -> None:
    script = (
        "import sys\n"
        "from pipeline.config import RegistrationConfig\n"
        "from pipeline.registration import warm_up_elastix\n"
        "before = 'itk.ElastixPython' in sys.modules\n"
        "seconds = warm_up_elastix(RegistrationConfig())\n"
        "print(before, 'itk.ElastixPython' in sys.modules, seconds > 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=_REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "True", "True"]


@pytest.fixture(scope="module")
def processor() -> StudyProcessor:
    return StudyProcessor(Settings())


def test_warm_up_runs_elastix_with_the_configured_registration(processor, monkeypatch, caplog) -> None:
    calls = []
    monkeypatch.setattr(processing, "warm_up_elastix", lambda config: calls.append(config) or 1.5)
    with caplog.at_level(logging.INFO, logger="node.processing"):
        processor.warm_up()
    assert calls == [processor.settings.registration]
    assert "registration libraries loaded in 1.5 s" in caplog.text


def test_a_failed_warm_up_is_a_warning_and_registration_disabled_skips_it(processor, monkeypatch, caplog) -> None:
    def broken(config):
        raise RuntimeError("no elastix here")

    monkeypatch.setattr(processing, "warm_up_elastix", broken)
    with caplog.at_level(logging.WARNING, logger="node.processing"):
        processor.warm_up()
    assert "registration warm-up failed (RuntimeError: no elastix here)" in caplog.text

    off = Settings.model_validate({"registration": {"enabled": False}})
    monkeypatch.setattr(processor, "settings", off)
    monkeypatch.setattr(processing, "warm_up_elastix", lambda config: pytest.fail("warm-up with registration off"))
    processor.warm_up()
