"""A real Orthanc running livernode's Python plugin, for the plugin's tests and benchmark.

Orthanc (Debian packages ``orthanc``, ``orthanc-python``; ``orthanc-dicomweb`` when available) is
started on free loopback ports with HTTP authentication on, DICOM stores accepted only from the
registered modalities on 127.0.0.1, and ``deploy/orthanc/livernode_plugin.py`` as its Python
script, configured with a node YAML written from `peers.NodeConfig`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.peers import REPO, NodeConfig, Orthanc, _apt_install, wait_for

PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
PYTHON_PLUGIN = PLUGIN_DIR / "libOrthancPython.so"
DICOMWEB_PLUGIN = PLUGIN_DIR / "libOrthancDicomWeb.so"
PLUGIN_SCRIPT = REPO / "deploy" / "orthanc" / "livernode_plugin.py"
USER, PASSWORD = "livernode", "livernode-test-secret"
VIEWER, VIEWER_PASSWORD = "viewer", "viewer-test-secret"


def require_python_plugin() -> None:
    """Skip unless Orthanc's Python plugin is installed (installing it, and DICOMweb, when root)."""
    if not PYTHON_PLUGIN.exists() or not DICOMWEB_PLUGIN.exists():
        _apt_install(["orthanc-python", "orthanc-dicomweb"])
        subprocess.run(["service", "orthanc", "stop"], check=False, capture_output=True)
    if not PYTHON_PLUGIN.exists():
        pytest.skip("Orthanc's Python plugin is not installed; apt-get install orthanc-python")
    embedded = f"python{sys.version_info.major}.{sys.version_info.minor}"
    if not (Path(sys.prefix) / "lib" / embedded / "site-packages").is_dir():
        pytest.skip(f"the test venv does not use {embedded}")


class PluginOrthanc(Orthanc):
    """Orthanc with the livernode plugin; `restart()` keeps ports, storage and node data."""

    def __init__(self, folder: Path, node: NodeConfig, plugin: dict[str, Any] | None = None,
                 modalities: dict[str, list] | None = None, stable_age_s: int = 2,
                 env: dict[str, str] | None = None) -> None:
        require_python_plugin()
        super().__init__(folder)
        self.node = node
        self.plugin = dict(plugin or {})
        self.modalities = {"storescu": ["STORESCU", "127.0.0.1", 104], **(modalities or {})}
        self.stable_age_s = stable_age_s
        self.env = {**os.environ, **(env or {})}
        self.config_path = folder / "orthanc.json"
        self.node_config_path = folder / "node.yaml"
        self.log_path = folder / "orthanc.log"

    def orthanc_config(self) -> dict[str, Any]:
        """The Orthanc configuration this peer runs with (loopback, authentication, plugin)."""
        plugins = [str(PYTHON_PLUGIN)] + ([str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [])
        return {
            "Name": "livernode-plugin-test",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD, VIEWER: VIEWER_PASSWORD},
            "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": self.modalities,
            "StableAge": self.stable_age_s,
            "HttpCompressionEnabled": False,
            "Plugins": plugins,
            "PythonScript": str(PLUGIN_SCRIPT),
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado"},
            "Livernode": {
                "Venv": sys.prefix,
                "ConfigPath": str(self.node_config_path),
                "OrthancUser": USER,
                "PythonPath": [str(REPO)],
                "IntakePollSeconds": 1,
                **self.plugin,
            },
        }

    def start(self) -> "PluginOrthanc":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.node_config_path.write_text(self.node.as_yaml(0, 0))
        self.config_path.write_text(json.dumps(self.orthanc_config(), indent=1))
        self.log = open(self.log_path, "ab")
        # --verbose: the plugin's INFO lines reach the log (the tests read them)
        self.process = subprocess.Popen([self.exe, "--verbose", str(self.config_path)], stdout=self.log,
                                        stderr=subprocess.STDOUT, env=self.env)
        wait_for(self.alive, 60, "Orthanc to answer")
        wait_for(lambda: self.get("/livernode/health", ok_only=False)[0] == 200, 120,
                 "the livernode plugin to be ready")
        return self

    def kill(self) -> None:
        """SIGKILL, as a power cut would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(20)
            self.process = None
            self.log.close()

    def restart(self) -> "PluginOrthanc":
        """Stop (SIGTERM) and start again with the same ports, storage and node data."""
        self.stop()
        return self.start()

    def client(self):
        from orthanc_api_client import OrthancApiClient

        return OrthancApiClient(self.url, user=VIEWER, pwd=VIEWER_PASSWORD)

    def get(self, path: str, ok_only: bool = True, auth: tuple[str, str] | None = (VIEWER, VIEWER_PASSWORD),
            timeout_s: float = 10) -> tuple[int, Any]:
        """(HTTP status, parsed JSON or text) of a GET on this Orthanc."""
        response = requests.get(self.url + path, auth=auth, timeout=timeout_s)
        if ok_only:
            response.raise_for_status()
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text

    def livernode_studies(self) -> dict:
        """GET /livernode/studies."""
        return self.get("/livernode/studies")[1]

    def node_state(self, study_uid: str) -> str | None:
        """The node's state of one study, from the plugin's REST route."""
        for study in self.livernode_studies()["studies"]:
            if study["study_uid"] == study_uid:
                return study["state"]
        return None

    def plugin_log_lines(self) -> list[str]:
        """The plugin's own lines in Orthanc's log."""
        text = self.log_path.read_text(errors="replace")
        return [line for line in text.splitlines() if "livernode {" in line]


def have_python_plugin() -> bool:
    """Whether Orthanc and its Python plugin are installed here (no installation attempted)."""
    return PYTHON_PLUGIN.exists() and (shutil.which("Orthanc") is not None or Path("/usr/sbin/Orthanc").exists())


class PacedReportProcessor:
    """`fault_processors.ReportProcessor`, but a study marked "SLOW" takes longer: first
    $LIVERNODE_TEST_SLOW_S seconds (default 8), then ReportProcessor's own 4 s. Long enough to send
    a second study, or to restart Orthanc, while it runs. Every run that starts appends a line to
    $LIVERNODE_TEST_STARTLOG (ReportProcessor's $LIVERNODE_TEST_RUNLOG line comes after the wait)."""

    def __init__(self, settings: object) -> None:
        from tests.integration.fault_processors import ReportProcessor

        self.inner = ReportProcessor(settings)

    def process(self, input_dir: Path, output_dir: Path):
        import time

        import pydicom

        first = next(iter(sorted(Path(input_dir).rglob("*.dcm"))), None)
        header = pydicom.dcmread(first, stop_before_pixels=True) if first is not None else None
        start_log = os.environ.get("LIVERNODE_TEST_STARTLOG")
        if start_log and header is not None:
            with open(start_log, "a", encoding="utf-8") as handle:
                handle.write(f"{header.StudyInstanceUID} pid={os.getpid()}\n")
        if header is not None and "SLOW" in str(header.get("StudyDescription", "")).upper():
            time.sleep(float(os.environ.get("LIVERNODE_TEST_SLOW_S", "8")))
        return self.inner.process(input_dir, output_dir)


PACED_PROCESSOR = "tests.integration.orthanc_plugin_peer:PacedReportProcessor"


class BusyReportProcessor(PacedReportProcessor):
    """`ReportProcessor` after $LIVERNODE_TEST_BUSY_S seconds (default 20) of full CPU load in the
    worker process (numpy matrix products on every core), standing in for the model's compute in
    the benchmark when the bundled weights are not there."""

    def process(self, input_dir: Path, output_dir: Path):
        import time

        import numpy as np

        until = time.monotonic() + float(os.environ.get("LIVERNODE_TEST_BUSY_S", "20"))
        a = np.random.default_rng(0).random((768, 768))
        while time.monotonic() < until:
            a = np.tanh(a @ a)
        return self.inner.process(input_dir, output_dir)


BUSY_PROCESSOR = "tests.integration.orthanc_plugin_peer:BusyReportProcessor"
