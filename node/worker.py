"""The processing worker: the pipeline in its own process, the processor made once per process.

`WorkerProcess` (in the node) starts a child process that builds the processor with the configured
factory ("module:attribute"), calls its optional ``warm_up()`` (the study processor loads itk's
elastix modules there, so the first study does not wait for them), then runs one study at a time
on request. The parent waits with a wall-clock limit; a timeout kills the child, a crash or
out-of-memory ends it: each is a failed attempt, and a fresh child is started for the next study.
The listener never shares a process with the pipeline.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkRequest:
    """One study to process: its files (any layout) and where results go."""

    study_uid: str
    input_dir: Path
    output_dir: Path


@dataclass(frozen=True)
class WorkResult:
    """What one run gave. `ok` False: `error` says why (crash, timeout, exception)."""

    ok: bool
    succeeded: bool = False  # the processor analysed the study (False: a failure report)
    result_files: tuple[Path, ...] = ()
    findings_path: Path | None = None
    message: str = ""
    error: str = ""
    error_kind: str = ""  # "input" (PipelineError), "crash", "timeout", "exception", "start"
    duration_s: float = 0.0
    stage_durations_s: dict[str, float] = field(default_factory=dict)


def load_factory(spec: str) -> Any:
    """The object named "module:attribute"."""
    module_name, _, attribute = spec.partition(":")
    module = importlib.import_module(module_name)
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def _set_parent_death_signal() -> None:
    """Ask Linux to kill this process when its parent dies (best effort elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:
        pass


def _outcome_to_result(outcome: Any, duration_s: float) -> WorkResult:
    files = tuple(Path(p) for p in getattr(outcome, "result_files", ()) or ())
    findings = getattr(outcome, "findings_path", None)
    timings = getattr(outcome, "timings_s", None) or {}
    return WorkResult(
        ok=True,
        succeeded=bool(getattr(outcome, "succeeded", False)),
        result_files=files,
        findings_path=Path(findings) if findings else None,
        message=str(getattr(outcome, "message", ""))[:500],
        duration_s=duration_s,
        stage_durations_s={str(k): float(v) for k, v in dict(timings).items()},
    )


def _child_main(connection: multiprocessing.connection.Connection, factory_spec: str, settings_json: str,
                memory_limit_mb: int) -> None:
    """Body of the worker process: build the processor once, then serve requests until EOF."""
    _set_parent_death_signal()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_limit_mb:
        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from node.settings import Settings
    from pipeline.errors import PipelineError

    try:
        settings = Settings.model_validate_json(settings_json)
        processor = load_factory(factory_spec)(settings)
        warm_up = getattr(processor, "warm_up", None)
        if callable(warm_up):  # optional: load lazily loaded libraries before reporting ready
            warm_up()
    except BaseException as error:  # report why the worker cannot start, then stop
        connection.send(("start-failed", f"{type(error).__name__}: {error}"))
        return
    connection.send(("ready", os.getpid()))
    while True:
        try:
            request: WorkRequest = connection.recv()
        except (EOFError, OSError):
            return
        started = time.perf_counter()
        try:
            outcome = processor.process(request.input_dir, request.output_dir)
            result = _outcome_to_result(outcome, time.perf_counter() - started)
        except PipelineError as error:
            result = WorkResult(ok=False, error=f"{type(error).__name__}: {error}"[:500], error_kind="input",
                                duration_s=time.perf_counter() - started)
        except MemoryError:
            result = WorkResult(ok=False, error="out of memory", error_kind="crash",
                                duration_s=time.perf_counter() - started)
        except Exception as error:
            last = traceback.extract_tb(error.__traceback__)[-1:]
            where = f" at {Path(last[0].filename).name}:{last[0].lineno}" if last else ""
            result = WorkResult(ok=False, error=f"{type(error).__name__}: {error}{where}"[:500],
                                error_kind="exception", duration_s=time.perf_counter() - started)
        try:
            connection.send(result)
        except (BrokenPipeError, OSError):
            return


class WorkerProcess:
    """The parent's handle on the worker child process."""

    def __init__(self, factory_spec: str, settings_json: str, timeout_s: float, start_timeout_s: float,
                 memory_limit_mb: int = 0) -> None:
        self.factory_spec = factory_spec
        self.settings_json = settings_json
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self.memory_limit_mb = memory_limit_mb
        self._context = multiprocessing.get_context("spawn")
        self._process: multiprocessing.process.BaseProcess | None = None
        self._connection: multiprocessing.connection.Connection | None = None
        self.starts = 0

    @property
    def alive(self) -> bool:
        """Whether a child is running."""
        return self._process is not None and self._process.is_alive()

    @property
    def pid(self) -> int | None:
        """Process id of the child, if any."""
        return self._process.pid if self._process is not None else None

    def _start(self) -> str:
        """Start a child and wait until its processor is built. Returns "" or why it failed."""
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(
            target=_child_main, args=(child_end, self.factory_spec, self.settings_json, self.memory_limit_mb),
            name="livernode-worker", daemon=True,
        )
        process.start()
        child_end.close()
        self._process, self._connection = process, parent_end
        self.starts += 1
        if not parent_end.poll(self.start_timeout_s):
            self.stop()
            return f"the worker did not start within {self.start_timeout_s:g} s"
        try:
            kind, detail = parent_end.recv()
        except (EOFError, OSError):
            code = process.exitcode
            self.stop()
            return f"the worker died while starting (exit code {code})"
        if kind != "ready":
            self.stop()
            return f"the processor could not be made: {detail}"
        log.info("worker process %d ready", detail)
        return ""

    def ensure_started(self) -> str:
        """Start the child (and build its processor) now unless it runs. Returns "" or why not."""
        if self.alive:
            return ""
        self.stop()
        return self._start()

    def run(self, request: WorkRequest) -> WorkResult:
        """Run one study in the child, within the wall-clock limit. Never raises for the child's faults."""
        started = time.perf_counter()
        if not self.alive:
            self.stop()
            problem = self._start()
            if problem:
                return WorkResult(ok=False, error=problem, error_kind="start",
                                  duration_s=time.perf_counter() - started)
        connection = self._connection
        process = self._process
        if connection is None or process is None:
            return WorkResult(ok=False, error="no worker process", error_kind="start")
        run_started = time.perf_counter()
        try:
            connection.send(request)
        except (BrokenPipeError, OSError):
            self.stop()
            return WorkResult(ok=False, error="the worker died before the study was sent", error_kind="crash")
        if not connection.poll(self.timeout_s):
            self.stop()
            return WorkResult(ok=False, error=f"timed out after {self.timeout_s:g} s; worker killed",
                              error_kind="timeout", duration_s=time.perf_counter() - run_started)
        try:
            result: WorkResult = connection.recv()
        except (EOFError, OSError):
            process.join(5)
            code = process.exitcode
            self.stop()
            why = _describe_exit(code)
            return WorkResult(ok=False, error=f"the worker crashed ({why})", error_kind="crash",
                              duration_s=time.perf_counter() - run_started)
        return result

    def stop(self) -> None:
        """Stop the child (kill if it does not exit at once)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(10)
            self._process = None


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
