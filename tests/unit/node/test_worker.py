"""The worker process: the processor is built once per process; crashes, timeouts, out-of-memory
and exceptions fail the attempt without harming the caller, and the next study runs in a fresh
process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from node.settings import Settings
from node.worker import WorkerProcess, WorkRequest

_REPO = Path(__file__).resolve().parents[3]
FACTORY = "tests.unit.node.fault_factories:"


@pytest.fixture
def worker(monkeypatch):
    monkeypatch.syspath_prepend(str(_REPO))
    made: list[WorkerProcess] = []

    def make(name: str = "Behaving", timeout_s: float = 20.0, memory_limit_mb: int = 0) -> WorkerProcess:
        w = WorkerProcess(FACTORY + name, Settings().model_dump_json(), timeout_s, 60.0, memory_limit_mb)
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop()


def _request(tmp_path: Path, name: str, action: str = "") -> WorkRequest:
    input_dir, output_dir = tmp_path / f"{name}-in", tmp_path / f"{name}-out"
    input_dir.mkdir()
    output_dir.mkdir()
    if action:
        (input_dir / "action").write_text(action)
    return WorkRequest("1.2.3", input_dir, output_dir)


def test_processor_is_built_once_and_reused(worker, tmp_path: Path) -> None:
    w = worker()
    first = w.run(_request(tmp_path, "a"))
    second = w.run(_request(tmp_path, "b"))
    assert first.ok and second.ok and first.succeeded
    pid1, builds1 = first.result_files[0].read_text().split()
    pid2, builds2 = second.result_files[0].read_text().split()
    assert pid1 == pid2 and builds1 == builds2 == "1"
    assert str(w.pid) == pid1 and pid1 != str(__import__("os").getpid())
    assert first.stage_durations_s == {"stage": 0.01}


@pytest.mark.parametrize("action, kind, words", [
    ("crash", "crash", "SIGABRT"),
    ("exit", "crash", "exit code 3"),
    ("input", "input", "InputError: no venous phase"),
    ("bug", "exception", "KeyError"),
])
def test_faults_fail_the_attempt_and_the_next_study_runs(worker, tmp_path: Path, action, kind, words) -> None:
    w = worker()
    bad = w.run(_request(tmp_path, "bad", action))
    assert not bad.ok and bad.error_kind == kind and words in bad.error
    good = w.run(_request(tmp_path, "good"))
    assert good.ok


def test_timeout_kills_the_worker(worker, tmp_path: Path) -> None:
    w = worker(timeout_s=1.0)
    pid_before = None
    assert w.ensure_started() == ""
    pid_before = w.pid
    result = w.run(_request(tmp_path, "slow", "sleep"))
    assert not result.ok and result.error_kind == "timeout" and 1.0 <= result.duration_s < 10
    assert not w.alive
    good = w.run(_request(tmp_path, "good"))
    assert good.ok and w.pid != pid_before


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS behaves this way on Linux")
def test_memory_limit_turns_runaway_allocation_into_a_failed_attempt(worker, tmp_path: Path) -> None:
    w = worker(memory_limit_mb=1200)
    result = w.run(_request(tmp_path, "hog", "memory"))
    assert not result.ok and "out of memory" in result.error
    assert w.run(_request(tmp_path, "good")).ok


def test_a_processor_that_cannot_be_built_is_reported(worker, tmp_path: Path) -> None:
    w = worker("FailsToBuild")
    result = w.run(_request(tmp_path, "a"))
    assert not result.ok and result.error_kind == "start" and "weights missing" in result.error


def test_the_worker_warms_the_processor_up_once_before_the_first_study(worker, tmp_path: Path) -> None:
    w = worker("WarmsUp")
    first = w.run(_request(tmp_path, "a"))
    second = w.run(_request(tmp_path, "b"))
    assert first.ok and second.ok
    assert first.result_files[0].read_text().split()[1] == second.result_files[0].read_text().split()[1] == "1"
