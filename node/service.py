"""`livernode serve`: the listener, the completeness scheduler, the worker and the outboxes.

Threads of the node process: pynetdicom's (one per association), "completeness" (receiving ->
ready), "processing" (ready -> worker -> results and outboxes), "delivery" (outboxes) and the
HTTP endpoint. The pipeline runs in the worker's own process. Every state lives in SQLite, so a
restart resumes where the node stopped.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom

from node.completeness import assess
from node.database import Database
from node.delivery import make_sender
from node.health import HealthServer
from node.lifecycle import StudyState
from node.metrics import Metrics
from node.node_config import OrthancDestination
from node.outbox import Outbox
from node.records import Job, ResultFile
from node.scp import StorageSCP
from node.settings import Settings
from node.spool import Spool, uid_key
from node.worker import WorkerProcess, WorkRequest, WorkResult

log = logging.getLogger(__name__)

DATABASE_NAME = "index.sqlite3"
WORK_DIR = "work"


def database_path(settings: Settings) -> Path:
    """Where the node's SQLite index is."""
    return Path(settings.data_dir_path) / DATABASE_NAME


@dataclass(frozen=True)
class NodeAddresses:
    """Ports actually bound (useful when the configuration asks for port 0)."""

    dicom_port: int
    http_port: int | None


class NodeService:
    """The whole node in one object: start(), then stop()."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = Path(settings.data_dir_path).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = Metrics()
        self.database = Database(self.data_dir / DATABASE_NAME)
        self.spool = Spool(self.data_dir, self.database, settings.spool.free_space_reserve_mb, settings.spool.fsync)
        self.scp = StorageSCP(settings.dicom, self.spool, self.metrics)
        self.worker = WorkerProcess(
            settings.worker.processor_factory, settings.model_dump_json(), settings.worker.timeout_s,
            settings.worker.start_timeout_s, settings.worker.memory_limit_mb,
        )
        senders = {d.name: make_sender(d, settings.dicom.ae_title) for d in settings.destinations}
        self.outbox = Outbox(self.database, senders, self.data_dir, settings.delivery, self.metrics)
        self._delete_superseded = tuple(
            d.name for d in settings.destinations if isinstance(d, OrthancDestination) and d.delete_superseded
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._health: HealthServer | None = None
        self._current_job: Job | None = None
        self._started_at = time.time()

    # ----------------------------------------------------------------------------------------
    # life

    def start(self, listen: bool = True) -> NodeAddresses:
        """Recover from any interruption, then start every part. Returns the bound ports (DICOM port
        0 with `listen=False`: inside Orthanc, which receives, the plugin spools)."""
        self.spool.remove_partial_files()
        for uid in self.database.recover_interrupted(self.settings.worker.max_attempts):
            log.warning("study %s was being processed when the node stopped; queued again", uid,
                        extra={"study_uid": uid})
        shutil.rmtree(self.data_dir / WORK_DIR / "input", ignore_errors=True)
        port = self.scp.start() if listen else 0
        for name, target in (("completeness", self._completeness_loop), ("processing", self._processing_loop),
                             ("delivery", self._delivery_loop)):
            thread = threading.Thread(target=self._guard(target), name=f"livernode-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        http_port = None
        if self.settings.http.enabled:
            self._health = HealthServer(self.settings.http.host, self.settings.http.port, self.health,
                                        self.render_metrics)
            self._health.start()
            http_port = self._health.port
        log.info("node started: DICOM port %s, HTTP port %s", port if listen else "none", http_port)
        return NodeAddresses(port, http_port)

    def stop(self) -> None:
        """Stop listening, let the loops end, stop the worker."""
        self._stop.set()
        self.scp.stop()
        if self._health is not None:
            self._health.stop()
        self.worker.stop()
        for thread in self._threads:
            thread.join(timeout=10)
        self.database.close()
        log.info("node stopped")

    def wait(self) -> None:
        """Block until stop() is called from another thread or a signal handler."""
        while not self._stop.wait(0.5):
            pass

    def _guard(self, loop):
        def run() -> None:
            while not self._stop.is_set():
                try:
                    loop()
                    return
                except Exception:  # keep the node alive; the failure is logged and the loop restarts
                    log.exception("%s failed; restarting it in 1 s", threading.current_thread().name)
                    self._stop.wait(1.0)
        return run

    # ----------------------------------------------------------------------------------------
    # loops

    def _completeness_loop(self) -> None:
        config = self.settings.completeness
        while not self._stop.wait(config.poll_s):
            self.check_completeness()

    def check_completeness(self, now: float | None = None) -> None:
        """Move every receiving study that is complete to READY."""
        now = time.time() if now is None else now
        for study in self.database.receiving_studies():
            decision = assess(study, self.settings.completeness, self.settings.phases, now)
            if decision.ready and self.database.mark_ready(study.study_id, study.generation, decision.reason, now):
                self.metrics.observe("completeness_wait", now - study.last_received_at)
                log.info("study ready: %s", decision.reason, extra={"study_uid": study.study_uid})
            elif decision.ignore and self.database.mark_ignored(study.study_id, study.generation, decision.reason):
                log.info("study ignored: %s", decision.reason, extra={"study_uid": study.study_uid})

    def _processing_loop(self) -> None:
        problem = self.worker.ensure_started()  # load the model before the first study arrives
        if problem:
            log.error("worker not started: %s (will retry with the first study)", problem)
        while not self._stop.is_set():
            if not self.process_next():
                self._stop.wait(self.settings.completeness.poll_s)

    def process_next(self) -> bool:
        """Run the next due study, if any. Returns whether one ran."""
        job = self.database.start_next_job(self.data_dir)
        if job is None:
            return False
        self._current_job = job
        try:
            self._run_job(job)
        finally:
            self._current_job = None
        return True

    def _job_dirs(self, job: Job) -> tuple[Path, Path]:
        key = f"{uid_key(job.study_uid)}-g{job.generation}-a{job.attempt}"
        return self.data_dir / WORK_DIR / "input" / key, self.data_dir / WORK_DIR / "results" / key

    def _run_job(self, job: Job) -> None:
        extra = {"study_uid": job.study_uid, "attempt": job.attempt}
        log.info("processing attempt %d of generation %d (%d instances)", job.attempt, job.generation,
                 len(job.input_paths), extra=extra)
        input_dir, output_dir = self._job_dirs(job)
        shutil.rmtree(input_dir, ignore_errors=True)
        shutil.rmtree(output_dir, ignore_errors=True)
        input_dir.mkdir(parents=True)
        output_dir.mkdir(parents=True)
        for index, path in enumerate(job.input_paths):
            os.link(path, input_dir / f"{index:06d}.dcm")
        started = time.perf_counter()
        result = self.worker.run(WorkRequest(job.study_uid, input_dir, output_dir))
        self.metrics.observe("process", time.perf_counter() - started)
        for stage, seconds in result.stage_durations_s.items():
            self.metrics.observe(f"pipeline_{stage}", seconds)
        shutil.rmtree(input_dir, ignore_errors=True)
        if result.ok:
            self._record_success(job, result, output_dir)
        else:
            self._record_failure(job, result)
            shutil.rmtree(output_dir, ignore_errors=True)

    def _record_success(self, job: Job, result: WorkResult, output_dir: Path) -> None:
        extra = {"study_uid": job.study_uid, "attempt": job.attempt}
        try:
            files = [_describe_result(p, output_dir) for p in result.result_files]
        except (OSError, ValueError) as error:
            self._record_failure(job, WorkResult(ok=False, error=f"unusable result: {error}", error_kind="exception"))
            return
        destinations = [d.name for d in self.settings.destinations]
        current = self.database.finish_success(job, files, destinations, self.data_dir, result.message,
                                               self._delete_superseded)
        if current:
            self.metrics.count("studies_processed", outcome="analysed" if result.succeeded else "failure_report")
            log.info("processed in %.1f s: %s; %d object(s) queued for %d destination(s)", result.duration_s,
                     result.message, len(files), len(destinations), extra=extra)
        else:
            log.info("results superseded by newer input before delivery; reprocessing", extra=extra)

    def _record_failure(self, job: Job, result: WorkResult) -> None:
        if self._stop.is_set():
            # the node is shutting down and killed the run: not the study's fault; the attempt
            # stays open and is marked interrupted when the node starts again
            log.info("run of study %s interrupted by shutdown", job.study_uid)
            return
        backoff = (self.settings.worker.backoff_s, self.settings.worker.backoff_factor,
                   self.settings.worker.backoff_max_s)
        state = self.database.finish_failure(job, f"{result.error_kind}: {result.error}",
                                             self.settings.worker.max_attempts, backoff)
        self.metrics.count("processing_failures", kind=result.error_kind or "unknown")
        extra = {"study_uid": job.study_uid, "attempt": job.attempt}
        if state == StudyState.QUARANTINED:
            self.metrics.count("studies_quarantined")
            log.error("quarantined after %d attempts: %s", job.attempt, result.error, extra=extra)
        else:
            log.warning("attempt %d failed (%s): %s", job.attempt, result.error_kind, result.error, extra=extra)

    def _delivery_loop(self) -> None:
        while not self._stop.is_set():
            tried = self.outbox.deliver_due()
            if not tried:
                self._stop.wait(self.settings.delivery.poll_s)

    # ----------------------------------------------------------------------------------------
    # health

    def health(self) -> dict:
        """What /health reports."""
        try:
            counts = self.database.state_counts()
            db_ok = True
        except Exception:  # the report must answer even when the database does not
            counts, db_ok = {}, False
        threads_ok = all(t.is_alive() for t in self._threads)
        job = self._current_job
        return {
            "status": "ok" if db_ok and threads_ok else "degraded",
            "database": db_ok,
            "threads": threads_ok,
            "worker_alive": self.worker.alive,
            "worker_starts": self.worker.starts,
            "processing": job.study_uid if job else None,
            "studies": counts,
            "uptime_s": round(time.time() - self._started_at, 1),
        }

    def render_metrics(self) -> str:
        """What /metrics reports."""
        usage = shutil.disk_usage(self.data_dir)
        gauges = {"spool_free_bytes": float(usage.free), "worker_alive": float(self.worker.alive),
                  "conflicts": float(self.database.conflict_count())}
        return self.metrics.render(self.database.state_counts(), self.database.outbox_counts(), gauges)


def _describe_result(path: Path, output_dir: Path) -> ResultFile:
    path = Path(path).resolve()
    if output_dir.resolve() not in path.parents:
        raise ValueError(f"result {path.name} is not under the output folder")
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID",
                                                                       "SeriesInstanceUID"])
    return ResultFile(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID))
