"""Studies that arrive through Orthanc: into the node's spool and job queue, without Orthanc code.

The Orthanc plugin (``deploy/orthanc/livernode_plugin.py``) decides *when* a study is worth
processing (Orthanc's STABLE_STUDY change) and fetches its files from Orthanc; everything it does
with them is here, so that it runs (and is tested) in plain Python too:

- `select_series`: does the study look like a multi-phase CT (CT series of many instances)?
- `spool_file`: one DICOM file (as Orthanc stores it) into the node's durable spool and index,
  with the same checks as a C-STORE to the node's listener.
- `mark_study_ready`: the study goes straight to READY (Orthanc already waited for it to be stable).
- `plugin_settings`: the node's settings plus the destinations the plugin implies (this Orthanc
  over REST, and Orthanc's DICOM modalities to forward to).
- `EmbeddedNode`: the node's scheduler, worker and outboxes without its DICOM listener, for
  running inside Orthanc's process.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.filereader import _read_file_meta_info, read_preamble

from node.database import Database
from node.records import StoreOutcome
from node.scp import evaluate_store
from node.service import NodeAddresses, NodeService
from node.worker import WorkerProcess
from node.settings import Settings, validate_settings
from node.spool import Spool

log = logging.getLogger(__name__)

#: Name of the destination that uploads results back into the Orthanc hosting the plugin.
SELF_DESTINATION = "this-orthanc"


# ------------------------------------------------------------------------------------------------
# which studies


@dataclass(frozen=True)
class IntakeCriteria:
    """What a study must look like to be processed."""

    modality: str = "CT"
    #: Series of `modality` with at least `min_instances_per_series` instances needed.
    min_series: int = 1
    min_instances_per_series: int = 8
    #: More qualifying series than this: not a liver study (e.g. a multi-reconstruction dump).
    max_series: int = 16


@dataclass(frozen=True)
class SeriesInfo:
    """One series of a study as Orthanc describes it (no patient data)."""

    orthanc_id: str
    modality: str
    instances: int


@dataclass(frozen=True)
class Selection:
    """The series to export, or why the study is skipped (`series` empty)."""

    series: tuple[str, ...]
    reason: str

    @property
    def accepted(self) -> bool:
        """Whether the study is taken."""
        return bool(self.series)


def select_series(series: Iterable[SeriesInfo], criteria: IntakeCriteria) -> Selection:
    """The study's qualifying series (modality and size), or a reason to skip it."""
    series = list(series)
    wanted = criteria.modality.upper()
    of_modality = [s for s in series if s.modality.upper() == wanted]
    big = [s for s in of_modality if s.instances >= criteria.min_instances_per_series]
    if not of_modality:
        found = sorted({s.modality or "?" for s in series})
        return Selection((), f"no {wanted} series (modalities: {', '.join(found) or 'none'})")
    if len(big) < criteria.min_series:
        return Selection((), f"{len(big)} {wanted} series of >= {criteria.min_instances_per_series} instances;"
                             f" {criteria.min_series} needed")
    if len(big) > criteria.max_series:
        return Selection((), f"{len(big)} {wanted} series; at most {criteria.max_series} expected")
    total = sum(s.instances for s in big)
    return Selection(tuple(s.orthanc_id for s in big), f"{len(big)} {wanted} series, {total} instances")


# ------------------------------------------------------------------------------------------------
# into the spool


class RefusedFile(ValueError):
    """A file the node's listener would refuse too (the message says why)."""


def spool_file(spool: Spool, data: bytes, other_sop_classes: str = "refuse") -> StoreOutcome:
    """Store one DICOM Part 10 file (preamble, file meta, data set) durably and index it.

    The file is checked like a C-STORE to the node (`node.scp.evaluate_store`), with the SOP
    class and instance from its file meta standing in for the command's. Raises RefusedFile, or
    node.spool.OutOfSpace when the spool's free-space reserve would be broken.
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        raise RefusedFile("not a DICOM Part 10 file (no DICM prefix)")
    stream = io.BytesIO(data)
    try:
        read_preamble(stream, False)
        # pydicom's public read_file_meta_info takes a path only; this is its body for a stream
        meta = _read_file_meta_info(stream)
    except Exception as error:  # pydicom raises several types for a broken file meta
        raise RefusedFile(f"unreadable file meta: {type(error).__name__}") from None
    # read_file_meta_info leaves the stream after the group-2 elements
    dataset = data[stream.tell():]
    refusal, instance = evaluate_store(
        str(meta.get("MediaStorageSOPClassUID", "")), str(meta.get("MediaStorageSOPInstanceUID", "")),
        str(meta.get("TransferSyntaxUID", "")), dataset, other_sop_classes,
    )
    if refusal is not None:
        raise RefusedFile(f"0x{int(refusal.status):04X} {refusal.status.name}: {refusal.comment}")
    if instance is None:
        raise RefusedFile("no instance identity")
    return spool.store(instance, (data,), dataset).outcome


def mark_study_ready(database: Database, study_uid: str, reason: str) -> bool:
    """RECEIVING -> READY for one study. False when it is not receiving (nothing new arrived:
    it is already queued, processed or being processed)."""
    for study in database.receiving_studies():
        if study.study_uid == study_uid:
            return database.mark_ready(study.study_id, study.generation, reason)
    return False


# ------------------------------------------------------------------------------------------------
# settings


def _modality_destination(name: str, entry: Any, calling_ae: str) -> dict:
    """A C-STORE destination from one entry of Orthanc's "DicomModalities"."""
    if isinstance(entry, list) and len(entry) >= 3:
        aet, host, port = entry[0], entry[1], entry[2]
    elif isinstance(entry, Mapping):
        aet, host, port = entry.get("AET"), entry.get("Host"), entry.get("Port", 104)
    else:
        raise ValueError(f"DicomModalities.{name}: not a [AET, host, port] list or an object")
    return {"kind": "cstore", "name": f"modality-{name}", "ae_title": str(aet), "host": str(host),
            "port": int(port), "calling_ae_title": calling_ae}


def plugin_settings(base: Settings, orthanc_config: Mapping[str, Any], plugin_config: Mapping[str, Any]) -> Settings:
    """`base` plus the destinations the plugin adds when it runs the node inside Orthanc.

    - this Orthanc over REST (``http://127.0.0.1:<HttpPort>``, the user named by
      ``Livernode.OrthancUser`` with its password from ``RegisteredUsers``), unless the node's
      configuration already has a destination named ``this-orthanc``;
    - one C-STORE destination per name in ``Livernode.ForwardToModalities`` (looked up in
      Orthanc's ``DicomModalities``; calling AE title: Orthanc's ``DicomAet``).
    """
    raw = base.model_dump(mode="json")
    destinations = list(raw.get("destinations") or [])
    names = {d["name"] for d in destinations}
    if SELF_DESTINATION not in names:
        user = str(plugin_config.get("OrthancUser", "") or "")
        users = orthanc_config.get("RegisteredUsers") or {}
        if user and user not in users:
            raise ValueError(f"Livernode.OrthancUser {user!r} is not in RegisteredUsers")
        port = int(orthanc_config.get("HttpPort", 8042))
        scheme = "https" if orthanc_config.get("SslEnabled") else "http"
        destinations.append({
            "kind": "orthanc", "name": SELF_DESTINATION, "url": f"{scheme}://127.0.0.1:{port}",
            "username": user, "password": str(users.get(user, "")) if user else "",
            "delete_superseded": bool(plugin_config.get("DeleteSuperseded", True)),
        })
    modalities = orthanc_config.get("DicomModalities") or {}
    calling_ae = str(orthanc_config.get("DicomAet", "ORTHANC"))
    for name in plugin_config.get("ForwardToModalities") or []:
        if name not in modalities:
            raise ValueError(f"Livernode.ForwardToModalities: {name!r} is not in DicomModalities")
        if f"modality-{name}" not in names:
            destinations.append(_modality_destination(name, modalities[name], calling_ae))
    raw["destinations"] = destinations
    return validate_settings(raw, "Orthanc plugin settings")


# ------------------------------------------------------------------------------------------------
# the node inside Orthanc


class NicedWorkerProcess(WorkerProcess):
    """The node's worker process, started with a lower CPU priority (`nice` added to ours), so
    that the pipeline's compute yields the CPU to Orthanc's HTTP and DICOM threads."""

    def __init__(self, *args, nice: int = 10, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nice = nice

    def _start(self) -> str:
        problem = super()._start()
        if not problem and self.nice and self.pid is not None:
            try:
                os.setpriority(os.PRIO_PROCESS, self.pid, os.getpriority(os.PRIO_PROCESS, 0) + self.nice)
            except OSError as error:
                log.warning("could not lower the worker's priority: %s", error)
        return problem


class EmbeddedNode(NodeService):
    """`NodeService` without its DICOM listener: Orthanc receives, the plugin spools.

    Runs the completeness, processing and delivery threads (and the optional health endpoint) in
    the calling process; the pipeline still runs in the node's separate worker process, started
    with `worker_nice` added to its CPU niceness (0: same priority as Orthanc).
    """

    def __init__(self, settings: Settings, worker_nice: int = 10) -> None:
        super().__init__(settings)
        w = settings.worker
        self.worker = NicedWorkerProcess(w.processor_factory, settings.model_dump_json(), w.timeout_s,
                                         w.start_timeout_s, w.memory_limit_mb, nice=worker_nice)

    def start(self, listen: bool = False) -> NodeAddresses:
        """Recover from any interruption, then start the loops. No DICOM port is bound (0)."""
        return super().start(listen=False)
