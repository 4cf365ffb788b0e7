"""livernode inside Orthanc: a script for Orthanc's Python plugin (Debian package ``orthanc-python``).

What it does:

- When Orthanc reports a study stable (the STABLE_STUDY change, ``StableAge`` seconds after its last
  instance) and the study looks like a multi-phase CT (``Livernode.Modality`` series, at least
  ``MinSeries`` of them with ``MinInstancesPerSeries`` instances or more), a background thread
  copies the study's instances from Orthanc into the node's durable spool and index (the same
  checks as a C-STORE to ``livernode serve``) and marks the study READY in the node's job queue.
  Orthanc's callback itself only wakes that thread: no work and no REST call happens in it.
- The thread follows Orthanc's change log (``/changes``) with a cursor kept as an Orthanc global
  property, so a stable study that Orthanc reported while the plugin was stopped is still taken.
- ``RunNode: true`` (default): the node's scheduler, worker process and outboxes run inside
  Orthanc's process (``node.orthanc_intake.EmbeddedNode``; the pipeline runs in its own child
  process). Results are uploaded back into this Orthanc over its REST API (the node's ``orthanc``
  destination kind) and, when ``ForwardToModalities`` names entries of ``DicomModalities``, sent
  there by C-STORE from the node's durable outbox.
  ``RunNode: false``: only the intake runs here; ``livernode serve`` with the same configuration
  (same data directory) processes and delivers.
- ``GET /livernode/studies`` (JSON): every study the node knows, its state, attempts and outbox,
  and the plugin's recent intake decisions. No patient names or IDs. ``GET /livernode/health``:
  the node's health. ``POST /livernode/studies/{orthanc-id}/process``: take a study that is
  already in Orthanc (e.g. stored before the plugin was installed).

Orthanc configuration (see deploy/orthanc/orthanc.json and docs/orthanc.md)::

    "Plugins": ["/usr/share/orthanc/plugins/libOrthancPython.so"],
    "PythonScript": "/opt/livernode/deploy/orthanc/livernode_plugin.py",
    "Livernode": {"Venv": "/opt/livernode/.venv", "ConfigPath": "/etc/livernode/livernode.yaml",
                  "OrthancUser": "livernode"}

The venv's site-packages are put first on ``sys.path`` (``Livernode.Venv``, else ``$LIVERNODE_VENV``);
its Python must have the same major.minor version as Orthanc's embedded Python (3.11 on Debian 12).
This file must not be called ``orthanc.py`` (it would shadow the plugin's ``orthanc`` module).
"""

from __future__ import annotations

import collections
import json
import logging
import multiprocessing
import os
import site
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orthanc  # the module Orthanc's Python plugin provides

PLUGIN_SECTION = "Livernode"
#: Orthanc global property (ids >= 1024 are free for plugins) holding the last handled change.
CURSOR_PROPERTY = 5431
INTAKE_RETRIES = 3


def _orthanc_config() -> tuple[dict, dict]:
    """Orthanc's whole configuration and its "Livernode" section."""
    full = json.loads(orthanc.GetConfiguration())
    return full, dict(full.get(PLUGIN_SECTION) or {})


def _worker_python(plugin_config: dict, venv_path: Path) -> str:
    """The interpreter for the node's worker process. A spawned child gets the parent's sys.path,
    which here holds the standard library of Orthanc's embedded Python: so by default the child is
    that same Python (``<sys.base_prefix>/bin/pythonX.Y``, e.g. Debian's /usr/bin/python3.11), not
    the venv's own interpreter (which may be another build, e.g. from pyenv)."""
    configured = plugin_config.get("WorkerPython")
    if configured:
        return str(configured)
    same = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return str(same) if same.is_file() else str(venv_path / "bin" / "python")


def _use_venv(plugin_config: dict) -> None:
    """Put the livernode virtual environment first on sys.path and make multiprocessing start
    children with its Python (in Orthanc, sys.executable is the Orthanc binary)."""
    venv = plugin_config.get("Venv") or os.environ.get("LIVERNODE_VENV", "")
    if not venv:
        raise RuntimeError("Livernode.Venv (or $LIVERNODE_VENV) must name the livernode virtual environment")
    venv_path = Path(venv)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site_packages = venv_path / "lib" / version / "site-packages"
    if not site_packages.is_dir():
        raise RuntimeError(f"{site_packages} does not exist: the venv must use {version}, like Orthanc's Python")
    before = list(sys.path)
    site.addsitedir(str(site_packages))  # also runs its .pth files (the editable install's finder)
    added = [p for p in sys.path if p not in before]
    extra = [str(p) for p in plugin_config.get("PythonPath") or []]
    sys.path[:] = extra + added + [p for p in before if p not in extra]
    # An editable install finds its packages through an import hook that a .pth file installs;
    # the worker (spawned with this sys.path but without running .pth files) needs them on sys.path.
    import node

    project_root = str(Path(node.__file__).resolve().parent.parent)
    if project_root not in sys.path:
        sys.path.append(project_root)
    multiprocessing.set_executable(_worker_python(plugin_config, venv_path))
    if not getattr(sys, "argv", None) or not sys.argv[0]:
        sys.argv = ["orthanc-livernode"]


_FULL_CONFIG, _PLUGIN_CONFIG = _orthanc_config()
_use_venv(_PLUGIN_CONFIG)

from node.database import Database  # noqa: E402  (needs the venv on sys.path)
from node.logging_setup import JsonFormatter  # noqa: E402
from node.orthanc_intake import (  # noqa: E402
    EmbeddedNode,
    IntakeCriteria,
    RefusedFile,
    SeriesInfo,
    mark_study_ready,
    plugin_settings,
    select_series,
    spool_file,
)
from node.records import StoreOutcome  # noqa: E402
from node.service import DATABASE_NAME  # noqa: E402
from node.settings import Settings, load_settings  # noqa: E402
from node.spool import OutOfSpace, Spool  # noqa: E402

log = logging.getLogger("livernode.orthanc")


class OrthancLogHandler(logging.Handler):
    """Python log records into Orthanc's own log (JSON lines, like `livernode serve`)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = "livernode " + self.format(record)
            if record.levelno >= logging.ERROR:
                orthanc.LogError(text)
            elif record.levelno >= logging.WARNING:
                orthanc.LogWarning(text)
            else:
                orthanc.LogInfo(text)
        except Exception:  # logging must never break the caller
            self.handleError(record)


def _configure_logging(level: str) -> None:
    handler = OrthancLogHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def _get_json(uri: str) -> Any:
    """Orthanc's REST API from inside Orthanc (no HTTP); only ever called off Orthanc's callbacks."""
    return json.loads(orthanc.RestApiGet(uri))


class LivernodePlugin:
    """The plugin's state: the node (or only its database and spool), the intake thread."""

    def __init__(self, orthanc_config: dict, plugin_config: dict) -> None:
        self.orthanc_config = orthanc_config
        self.config = plugin_config
        self.run_node = bool(plugin_config.get("RunNode", True))
        self.criteria = IntakeCriteria(
            modality=str(plugin_config.get("Modality", "CT")),
            min_series=int(plugin_config.get("MinSeries", 1)),
            min_instances_per_series=int(plugin_config.get("MinInstancesPerSeries", 8)),
            max_series=int(plugin_config.get("MaxSeries", 16)),
        )
        self.poll_s = float(plugin_config.get("IntakePollSeconds", 5.0))
        self.engine: EmbeddedNode | None = None
        self.database: Database | None = None
        self.spool: Spool | None = None
        self.settings: Settings | None = None
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.manual: collections.deque[str] = collections.deque()
        self.intake: collections.deque[dict] = collections.deque(maxlen=500)
        self.problem = ""
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------
    # life

    def start(self) -> None:
        """Start in the background (called on ORTHANC_STARTED; returns at once)."""
        self._thread = threading.Thread(target=self._run, name="livernode-intake", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        config_path = self.config.get("ConfigPath") or os.environ.get("LIVERNODE_CONFIG", "")
        base = load_settings(Path(config_path) if config_path else None)
        _configure_logging(base.log_level)
        if self.run_node:
            settings = plugin_settings(base, self.orthanc_config, self.config)
            engine = EmbeddedNode(settings, worker_nice=int(self.config.get("WorkerNice", 10)))
            engine.start()
            self.engine, self.database, self.spool = engine, engine.database, engine.spool
        else:
            settings = base
            data_dir = Path(settings.data_dir_path).resolve()
            self.database = Database(data_dir / DATABASE_NAME)
            self.spool = Spool(data_dir, self.database, settings.spool.free_space_reserve_mb, settings.spool.fsync)
        self.settings = settings
        log.info("plugin ready (%s); data directory %s; destinations: %s",
                 "node runs inside Orthanc" if self.run_node else "intake only; `livernode serve` processes",
                 Path(settings.data_dir_path).resolve(), ", ".join(d.name for d in settings.destinations) or "none")

    def _run(self) -> None:
        try:
            self._open()
        except Exception as error:  # a bad configuration: report it through /livernode/health
            self.problem = f"{type(error).__name__}: {error}"
            orthanc.LogError(f"livernode plugin not started: {self.problem}")
            return
        while not self.stopping.is_set():
            try:
                self._intake_round()
            except InterruptedError:
                return
            except Exception:
                log.exception("intake round failed; retrying")
                self.stopping.wait(2.0)
            self.wake.wait(self.poll_s)
            self.wake.clear()

    def stop(self) -> None:
        """Stop the intake thread and the node (called on ORTHANC_STOPPED)."""
        self.stopping.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(60)
        if self.engine is not None:
            self.engine.stop()
        elif self.database is not None:
            self.database.close()

    # ------------------------------------------------------------------------------------------
    # intake

    def _cursor(self) -> int:
        value = orthanc.GetGlobalProperty(CURSOR_PROPERTY, "")
        if value:
            return int(value)
        if str(self.config.get("StartFrom", "Now")).lower() == "beginning":
            start = 0
        else:  # only studies that become stable from now on; older ones: POST .../process
            start = int(_get_json("/changes?last").get("Last", 0))
        orthanc.SetGlobalProperty(CURSOR_PROPERTY, str(start))
        return start

    def _intake_round(self) -> None:
        while self.manual and not self.stopping.is_set():
            self._take_study(self.manual[0], "requested through the REST API")
            self.manual.popleft()
        cursor = self._cursor()
        while not self.stopping.is_set():
            page = _get_json(f"/changes?since={cursor}&limit=100")
            for change in page.get("Changes", []):
                if self.stopping.is_set():
                    return
                if change.get("ChangeType") == "StableStudy":
                    self._take_study(change["ID"], "stable in Orthanc")
                cursor = int(change["Seq"])
                orthanc.SetGlobalProperty(CURSOR_PROPERTY, str(cursor))
            last = int(page.get("Last", cursor))
            if last > cursor:
                cursor = last
                orthanc.SetGlobalProperty(CURSOR_PROPERTY, str(cursor))
            if page.get("Done", True):
                return

    def _take_study(self, orthanc_id: str, why: str) -> None:
        """Export one study (retried a few times; a study that keeps failing is recorded and left)."""
        for attempt in range(1, INTAKE_RETRIES + 1):
            if self.stopping.is_set():
                raise InterruptedError("stopping")  # the cursor stays: taken again after a restart
            try:
                self._record(orthanc_id, **self._export(orthanc_id, why))
                return
            except InterruptedError:
                raise
            except orthanc.OrthancException as error:
                if "Inexistent" in str(error) or "unknown" in str(error).lower():
                    self._record(orthanc_id, "", "gone", "deleted from Orthanc before it was taken")
                    return
                problem = f"Orthanc: {error}"
            except OutOfSpace as error:
                problem = f"spool full: {error}"
            except Exception as error:
                problem = f"{type(error).__name__}: {error}"
            log.warning("intake of Orthanc study %s failed (try %d of %d): %s", orthanc_id, attempt,
                        INTAKE_RETRIES, problem)
            self.stopping.wait(2.0 * attempt)
        self._record(orthanc_id, "", "failed", problem)

    def _export(self, orthanc_id: str, why: str) -> dict:
        assert self.database is not None and self.spool is not None and self.settings is not None
        study = _get_json(f"/studies/{orthanc_id}")
        study_uid = study["MainDicomTags"].get("StudyInstanceUID", "")
        series = _get_json(f"/studies/{orthanc_id}/series")
        infos = [SeriesInfo(s["ID"], s["MainDicomTags"].get("Modality", ""), len(s.get("Instances", [])))
                 for s in series]
        selection = select_series(infos, self.criteria)
        if not selection.accepted:
            log.info("Orthanc study %s skipped: %s", orthanc_id, selection.reason, extra={"study_uid": study_uid})
            return {"study_uid": study_uid, "decision": "skipped", "reason": selection.reason}
        counts = {o.value: 0 for o in StoreOutcome} | {"refused": 0, "already": 0}
        other = self.settings.dicom.other_sop_classes
        for series_id in selection.series:
            for instance in _get_json(f"/series/{series_id}/instances"):
                if self.stopping.is_set():
                    raise InterruptedError("stopping")
                sop_uid = instance["MainDicomTags"].get("SOPInstanceUID", "")
                if sop_uid and self.database.find_instance(sop_uid) is not None:
                    counts["already"] += 1  # indexed before (an earlier stable event); not read again
                    continue
                try:
                    counts[spool_file(self.spool, orthanc.GetDicomForInstance(instance["ID"]), other).value] += 1
                except RefusedFile as error:
                    counts["refused"] += 1
                    log.warning("instance %s not taken: %s", instance["ID"], error, extra={"study_uid": study_uid})
        detail = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        if mark_study_ready(self.database, study_uid, f"{why}: {selection.reason}"):
            log.info("Orthanc study %s queued (%s)", orthanc_id, detail, extra={"study_uid": study_uid})
            return {"study_uid": study_uid, "decision": "queued", "reason": detail}
        log.info("Orthanc study %s: nothing new to process (%s)", orthanc_id, detail, extra={"study_uid": study_uid})
        return {"study_uid": study_uid, "decision": "unchanged", "reason": f"no new CT instances ({detail})"}

    def _record(self, orthanc_id: str, study_uid: str, decision: str, reason: str) -> None:
        with self._lock:
            self.intake.append({"orthanc_id": orthanc_id, "study_uid": study_uid, "decision": decision,
                                "reason": reason, "at": round(time.time(), 3)})

    # ------------------------------------------------------------------------------------------
    # REST

    def studies_report(self) -> dict:
        """What GET /livernode/studies answers (no patient data: UIDs, states, counts)."""
        with self._lock:
            intake = list(self.intake)
        orthanc_ids = {r["study_uid"]: r["orthanc_id"] for r in intake if r["study_uid"]}
        studies = []
        if self.database is not None:
            for row in self.database.study_rows():
                entry = dict(row.__dict__)
                entry["orthanc_id"] = orthanc_ids.get(row.study_uid)
                studies.append(entry)
        return {"mode": "embedded" if self.run_node else "intake-only", "problem": self.problem,
                "studies": studies, "intake": intake[::-1]}

    def health_report(self) -> tuple[int, dict]:
        """What GET /livernode/health answers, and its HTTP status."""
        if self.problem:
            return 503, {"status": "down", "problem": self.problem}
        if self.engine is not None:
            report = self.engine.health()
        elif self.database is not None:
            report = {"status": "ok", "studies": self.database.state_counts()}
        else:
            return 503, {"status": "starting"}
        alive = self._thread is not None and self._thread.is_alive()
        report["intake_thread"] = alive
        if not alive:
            report["status"] = "degraded"
        return (200 if report["status"] == "ok" else 503), report


PLUGIN = LivernodePlugin(_FULL_CONFIG, _PLUGIN_CONFIG)


def _answer_json(output: Any, status: int, body: dict) -> None:
    text = json.dumps(body, indent=1)
    if status == 200:
        output.AnswerBuffer(text, "application/json")
    else:
        output.SendHttpStatus(status, text, len(text))


def on_studies(output: Any, uri: str, **request: Any) -> None:
    """GET /livernode/studies."""
    if request.get("method") != "GET":
        output.SendMethodNotAllowed("GET")
        return
    _answer_json(output, 200, PLUGIN.studies_report())


def on_health(output: Any, uri: str, **request: Any) -> None:
    """GET /livernode/health."""
    if request.get("method") != "GET":
        output.SendMethodNotAllowed("GET")
        return
    status, body = PLUGIN.health_report()
    _answer_json(output, status, body)


def on_process(output: Any, uri: str, **request: Any) -> None:
    """POST /livernode/studies/{orthanc-id}/process: take a study already stored in Orthanc."""
    if request.get("method") != "POST":
        output.SendMethodNotAllowed("POST")
        return
    orthanc_id = request["groups"][0]
    PLUGIN.manual.append(orthanc_id)
    PLUGIN.wake.set()
    _answer_json(output, 200, {"queued_for_intake": orthanc_id})


def on_change(change_type: int, level: int, resource_id: str) -> None:
    """Orthanc's change callback: only signals; the work happens in the plugin's threads."""
    if change_type == orthanc.ChangeType.STABLE_STUDY:
        PLUGIN.wake.set()
    elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
        PLUGIN.start()
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        PLUGIN.stop()


orthanc.RegisterOnChangeCallback(on_change)
orthanc.RegisterRestCallback("/livernode/studies", on_studies)
orthanc.RegisterRestCallback("/livernode/health", on_health)
orthanc.RegisterRestCallback("/livernode/studies/([^/]+)/process", on_process)
