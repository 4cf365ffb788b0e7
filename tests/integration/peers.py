"""Real peers for the node's integration tests: the node itself, DCMTK storescp, and Orthanc.

Each peer is a real process on loopback ports chosen at run time. Helpers poll with a deadline
(`wait_for`) instead of sleeping fixed times.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port that is free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def _apt_install(packages: Sequence[str]) -> None:
    if os.geteuid() != 0:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=False, env=env, capture_output=True)


def require_dcmtk() -> None:
    """Skip unless DCMTK's command line tools are installed (installing them when root)."""
    if shutil.which("storescu") is None:
        _apt_install(["dcmtk"])
    if shutil.which("storescu") is None:
        pytest.skip("DCMTK (storescu/storescp/echoscu) is not installed; apt-get install dcmtk")


def require_orthanc() -> str:
    """The Orthanc binary (installed with apt-get when root and missing); skip if unavailable."""
    exe = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    if exe is None:
        _apt_install(["orthanc", "orthanc-python"])
        exe = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
        # The Debian package may start its own service on 8042/4242: ours uses other ports, but stop it.
        subprocess.run(["service", "orthanc", "stop"], check=False, capture_output=True)
    if exe is None:
        pytest.skip("Orthanc is not installed; apt-get install orthanc orthanc-python")
    return exe


def dcmtk_env() -> dict[str, str]:
    """Environment for DCMTK tools: Nagle off (else every message waits for a delayed ACK)."""
    return {**os.environ, "TCP_NODELAY": "1"}


# ------------------------------------------------------------------------------------------------
# storescp


class StoreSCP:
    """DCMTK storescp writing every received object to a folder."""

    def __init__(self, folder: Path, ae_title: str = "PACS", port: int | None = None) -> None:
        require_dcmtk()
        self.folder = folder
        self.ae_title = ae_title
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> "StoreSCP":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["storescp", "--aetitle", self.ae_title, "--output-directory", str(self.folder),
             "--accept-all", "--unique-filenames", str(self.port)],
            env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: _port_open(self.port), 10, "storescp to listen")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def received_sop_instance_uids(self) -> list[str]:
        import pydicom

        out = []
        for path in sorted(self.folder.iterdir()):
            if path.is_file():
                out.append(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
        return out


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# ------------------------------------------------------------------------------------------------
# Orthanc


class Orthanc:
    """A real Orthanc with its own storage, on loopback test ports, no plugins."""

    def __init__(self, folder: Path) -> None:
        self.exe = require_orthanc()
        self.folder = folder
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> "Orthanc":
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "livernode-test-pacs",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "HttpCompressionEnabled": False,
            "StableAge": 1,
        }
        config_path = self.folder / "orthanc.json"
        config_path.write_text(json.dumps(config))
        self.log = open(self.folder / "orthanc.log", "wb")
        self.process = subprocess.Popen([self.exe, str(config_path)], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self.alive, 30, "Orthanc to answer")
        return self

    def client(self):
        from orthanc_api_client import OrthancApiClient

        return OrthancApiClient(self.url)

    def alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"Orthanc exited with {self.process.returncode}; see {self.folder}/orthanc.log")
        return self.client().is_alive()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None
            self.log.close()

    def instances_of_study(self, study_uid: str) -> list[dict]:
        """Main tags of every instance of the study in Orthanc (empty if absent)."""
        client = self.client()
        study_id = client.studies.lookup(study_uid)
        if study_id is None:
            return []
        return client.get_json(f"studies/{study_id}/instances")

    def result_sop_instance_uids(self, study_uid: str, modalities: Sequence[str] = ("SEG", "SR")) -> list[str]:
        """SOP Instance UIDs of the study's instances whose series modality is in `modalities`."""
        client = self.client()
        study_id = client.studies.lookup(study_uid)
        if study_id is None:
            return []
        out = []
        for series_id in client.get_json(f"studies/{study_id}")["Series"]:
            series = client.get_json(f"series/{series_id}")
            if series["MainDicomTags"].get("Modality") in modalities:
                for instance_id in series["Instances"]:
                    out.append(client.get_json(f"instances/{instance_id}")["MainDicomTags"]["SOPInstanceUID"])
        return out


# ------------------------------------------------------------------------------------------------
# the node


@dataclass
class NodeConfig:
    """The parts of the node's configuration the tests vary."""

    data_dir: Path
    destinations: list[dict]
    processor_factory: str = "tests.integration.fault_processors:ReportProcessor"
    stable_s: float = 1.0
    timeout_s: float = 60.0
    max_attempts: int = 3
    backoff_s: float = 0.2
    delivery_backoff_s: float = 0.3
    delivery_max_attempts: int = 8
    free_space_reserve_mb: float = 0.0
    allowed_calling_aes: tuple[str, ...] = ("STORESCU", "ECHOSCU", "TESTSCU")
    other_sop_classes: str = "refuse"
    extra: dict | None = None

    def as_yaml(self, dicom_port: int, http_port: int) -> str:
        raw: dict[str, Any] = {
            "data_dir_path": str(self.data_dir),
            "log_level": "INFO",
            "dicom": {"ae_title": "LIVERNODE", "host": "127.0.0.1", "port": dicom_port,
                      "allowed_calling_aes": list(self.allowed_calling_aes),
                      "other_sop_classes": self.other_sop_classes,
                      "acse_timeout_s": 10, "dimse_timeout_s": 20, "network_timeout_s": 20},
            "spool": {"free_space_reserve_mb": self.free_space_reserve_mb},
            "completeness": {"stable_s": self.stable_s, "deadline_s": 120, "poll_s": 0.2},
            "worker": {"processor_factory": self.processor_factory, "timeout_s": self.timeout_s,
                       "max_attempts": self.max_attempts, "backoff_s": self.backoff_s, "backoff_max_s": 2.0,
                       "start_timeout_s": 120},
            "destinations": self.destinations,
            "delivery": {"backoff_s": self.delivery_backoff_s, "backoff_max_s": 1.0,
                         "max_attempts": self.delivery_max_attempts, "poll_s": 0.2},
            "http": {"enabled": True, "host": "127.0.0.1", "port": http_port},
        }
        for section, values in (self.extra or {}).items():
            if isinstance(values, dict):
                raw.setdefault(section, {}).update(values)
            else:
                raw[section] = values
        return yaml.safe_dump(raw)


class NodeProcess:
    """`livernode serve` as a child process (so that it can be killed with SIGKILL)."""

    def __init__(self, config: NodeConfig, folder: Path) -> None:
        self.config = config
        self.folder = folder
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.config_path = folder / "node.yaml"
        self.log_path = folder / "node.log"
        self.process: subprocess.Popen | None = None
        self.env = {**os.environ, "PYTHONPATH": str(REPO)}

    def write_config(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config.as_yaml(self.dicom_port, self.http_port))

    def start(self) -> "NodeProcess":
        self.write_config()
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "serve", "--config", str(self.config_path)],
            cwd=str(REPO), env=self.env, stdout=subprocess.PIPE, stderr=log,
        )
        log.close()
        line = self.process.stdout.readline().decode()
        if not line:
            self.process.wait(10)
            raise AssertionError(f"the node did not start:\n{self.log_path.read_text()[-3000:]}")
        info = json.loads(line)
        assert info["dicom_port"] == self.dicom_port
        return self

    def kill(self) -> None:
        """SIGKILL, as a power cut would."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "node.cli", *args, "--config", str(self.config_path)],
                              cwd=str(REPO), env=self.env, capture_output=True, text=True, timeout=60)

    def database(self):
        from node.database import Database

        return Database(self.config.data_dir / "index.sqlite3")

    def study_state(self, study_uid: str) -> str | None:
        from node.database import StudyNotFound

        db = self.database()
        try:
            return db.study_state(study_uid).value
        except StudyNotFound:
            return None
        finally:
            db.close()

    def http_get(self, path: str) -> tuple[int, str]:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()


def storescu(port: int, files: Sequence[Path], calling_ae: str = "STORESCU", called_ae: str = "LIVERNODE",
             timeout_s: float = 120, extra: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Send `files` with DCMTK storescu in one association (verbose, so responses are logged)."""
    require_dcmtk()
    return subprocess.run(
        ["storescu", "-v", "-aet", calling_ae, "-aec", called_ae, *extra, "127.0.0.1", str(port),
         *[str(f) for f in files]],
        env=dcmtk_env(), capture_output=True, text=True, timeout=timeout_s,
    )


def acknowledged_count(output: str) -> int:
    """How many store requests storescu saw answered with success."""
    return output.count("Received Store Response (Success)")


def check_spool_integrity(data_dir: Path, acknowledged_uids: Sequence[str]) -> None:
    """Every acknowledged instance is indexed and on disk with its recorded bytes; nothing is
    half-written (no partial file in the spool, every indexed file complete)."""
    import hashlib

    from node.database import Database

    db = Database(data_dir / "index.sqlite3")
    try:
        indexed = db.instance_uids()
        missing = [uid for uid in acknowledged_uids if uid not in indexed]
        assert not missing, f"{len(missing)} acknowledged instance(s) not in the index"
        for rel_path, sha256 in db.indexed_paths():
            data = (data_dir / rel_path).read_bytes()
            assert data[128:132] == b"DICM", f"{rel_path} lacks its file meta"
            import io

            from pydicom.filereader import _read_file_meta_info

            stream = io.BytesIO(data)
            stream.seek(132)
            _read_file_meta_info(stream)
            body = data[stream.tell():]
            assert hashlib.sha256(body).hexdigest() == sha256, f"{rel_path} differs from what was indexed"
    finally:
        db.close()
    leftovers = list((data_dir / "spool" / "tmp").iterdir())
    assert not leftovers, f"partial files left in the spool: {leftovers}"
