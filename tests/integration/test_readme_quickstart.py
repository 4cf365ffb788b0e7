"""The README, followed as a new user would on a fresh clone: the first command sets up a new venv
and runs the node on its embedded defaults; then "Send a study" with `livernode phantom` and
DCMTK `storescu`; `livernode status` shows the study delivered. Also `quickstart.sh --check`.

Slow (a new virtual environment is installed): about 5-10 minutes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.peer


def _run(command: list[str], cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "LIVERNODE_CONFIG")}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout to clone")
    if shutil.which("storescu") is None or shutil.which("echoscu") is None:
        pytest.skip("needs DCMTK (deploy/setup.sh --test installs it)")
    target = tmp_path_factory.mktemp("fresh") / "livernode"
    result = _run(["git", "clone", "--quiet", str(REPO), str(target)], cwd=target.parent, timeout=300)
    assert result.returncode == 0, result.stderr
    return target


def test_quickstart_check_processes_a_phantom(clone: Path) -> None:
    result = _run(["bash", "deploy/quickstart.sh", "--check"], cwd=clone)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    results = clone / "livernode-data" / "demo" / "results"
    assert (results / "sr.dcm").is_file() and (results / "seg-VP.dcm").is_file()
    assert (results / "findings.json").is_file()


def test_first_command_serves_and_a_sent_study_is_processed(clone: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "LIVERNODE_CONFIG")}
    log = (clone.parent / "serve.log").open("w")
    node = subprocess.Popen(["bash", "deploy/quickstart.sh"], cwd=clone, stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while subprocess.run(["echoscu", "-aec", "LIVERNODE", "127.0.0.1", "11112"],
                             capture_output=True).returncode != 0:
            assert node.poll() is None, (clone.parent / "serve.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "the node did not answer C-ECHO"
            time.sleep(1)
        livernode = clone / ".venv" / "bin" / "livernode"
        study = clone.parent / "study"
        made = _run([str(livernode), "phantom", str(study), "--seed", "1", "--slices", "30"], cwd=clone)
        assert made.returncode == 0, made.stderr[-2000:]
        sent = _run(["storescu", "-aec", "LIVERNODE", "+sd", "+r", "127.0.0.1", "11112", str(study / "dicom")],
                    cwd=clone, timeout=300)
        assert sent.returncode == 0, sent.stderr[-2000:]
        deadline = time.monotonic() + 600
        while True:
            status = _run([str(livernode), "status"], cwd=clone, timeout=60).stdout
            if "delivered" in status or "quarantined" in status:
                break
            assert time.monotonic() < deadline, status
            time.sleep(3)
        assert "delivered" in status, status
        results = list((clone / "livernode-data" / "work" / "results").rglob("*.dcm"))
        assert any(p.name == "sr.dcm" for p in results), results
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(timeout=60)
        log.close()
