"""The DICOM listener: C-ECHO and storage, thin over the spool.

Each C-STORE is checked (SOP class, complete encoding, UIDs agree with the command), written to
the spool as received (no decode/re-encode), fsynced, indexed, and only then answered with
success. Every refusal is a named status with an ErrorComment saying why.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, _config, evt
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.sop_class import (
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from node.dataset_check import MalformedDataset, check_encoding, is_valid_uid, read_identity
from node.metrics import Metrics
from node.node_config import DicomConfig
from node.records import InstanceMeta, StoreOutcome
from node.spool import OutOfSpace, Spool

log = logging.getLogger(__name__)

#: Storage SOP classes the pipeline processes.
CT_SOP_CLASSES = frozenset({str(CTImageStorage), str(EnhancedCTImageStorage),
                            str(LegacyConvertedEnhancedCTImageStorage)})


class StoreStatus(enum.IntEnum):
    """C-STORE response statuses this node answers with (PS3.4 B.2.3, C000-CFFF: cannot understand)."""

    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND_MALFORMED = 0xC210
    CANNOT_UNDERSTAND_INSTANCE_UID = 0xC211
    CANNOT_UNDERSTAND_STUDY_SERIES_UID = 0xC212
    CANNOT_UNDERSTAND_NO_PIXEL_DATA = 0xC213


@dataclass(frozen=True)
class StoreAnswer:
    """The status of one C-STORE and why (the ErrorComment, at most 64 characters)."""

    status: StoreStatus
    comment: str = ""

    def as_dataset(self) -> Dataset:
        """The response's status data set."""
        ds = Dataset()
        ds.Status = int(self.status)
        if self.comment:
            ds.ErrorComment = self.comment[:64]
        return ds


def evaluate_store(
    command_sop_class: str,
    command_sop_instance: str,
    transfer_syntax_uid: str,
    stream: bytes,
    other_sop_classes: str,
) -> tuple[StoreAnswer | None, InstanceMeta | None]:
    """Check one received data set. Returns (a refusal, None) or (None, what to index)."""
    processable = command_sop_class in CT_SOP_CLASSES
    if not processable and other_sop_classes == "refuse":
        return StoreAnswer(StoreStatus.SOP_CLASS_NOT_SUPPORTED, "only CT storage is accepted"), None
    try:
        has_pixels = check_encoding(stream, transfer_syntax_uid)
        ident = read_identity(stream, transfer_syntax_uid)
    except MalformedDataset as error:
        return StoreAnswer(StoreStatus.CANNOT_UNDERSTAND_MALFORMED, str(error)), None
    if not ident.sop_class_uid:
        return StoreAnswer(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOPClassUID missing"), None
    if ident.sop_class_uid != command_sop_class:
        return StoreAnswer(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                           "SOPClassUID differs from the command"), None
    if not ident.sop_instance_uid or not is_valid_uid(ident.sop_instance_uid):
        return StoreAnswer(StoreStatus.CANNOT_UNDERSTAND_INSTANCE_UID, "SOPInstanceUID missing or invalid"), None
    if ident.sop_instance_uid != command_sop_instance:
        return StoreAnswer(StoreStatus.CANNOT_UNDERSTAND_INSTANCE_UID,
                           "SOPInstanceUID differs from the command"), None
    if not is_valid_uid(ident.study_uid) or not is_valid_uid(ident.series_uid):
        return StoreAnswer(StoreStatus.CANNOT_UNDERSTAND_STUDY_SERIES_UID,
                           "Study/SeriesInstanceUID missing or invalid"), None
    if processable and not has_pixels:
        return StoreAnswer(StoreStatus.CANNOT_UNDERSTAND_NO_PIXEL_DATA, "image without pixel data"), None
    meta = InstanceMeta(
        study_uid=ident.study_uid,
        series_uid=ident.series_uid,
        sop_instance_uid=ident.sop_instance_uid,
        sop_class_uid=ident.sop_class_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        modality=ident.modality,
        series_description=ident.series_description,
        acquisition_time_s=ident.acquisition_time_s,
        bolus_start_time_s=ident.bolus_start_time_s,
        processable=processable,
    )
    return None, meta


def peer_allowed(address: str, allowed: tuple[str, ...]) -> bool:
    """Whether `address` is in the allow-list (addresses or networks such as 10.0.0.0/8)."""
    if not allowed:
        return True
    try:
        peer = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in allowed:
        try:
            if peer in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


class StorageSCP:
    """The listener: owns the pynetdicom AE and its server thread."""

    def __init__(self, config: DicomConfig, spool: Spool, metrics: Metrics,
                 on_stored: Callable[[InstanceMeta], None] | None = None) -> None:
        self.config = config
        self.spool = spool
        self.metrics = metrics
        self.on_stored = on_stored
        self._server: ThreadedAssociationServer | None = None
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        ae.acse_timeout = self.config.acse_timeout_s
        ae.dimse_timeout = self.config.dimse_timeout_s
        ae.network_timeout = self.config.network_timeout_s
        ae.maximum_pdu_size = self.config.max_pdu_bytes
        ae.require_called_aet = self.config.check_called_ae
        ae.require_calling_aet = list(self.config.allowed_calling_aes)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for context in StoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        for sop_class in CT_SOP_CLASSES:
            if sop_class not in {c.abstract_syntax for c in ae.supported_contexts}:
                ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        return ae

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.config.tls
        if not tls.enabled:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.certificate_path, tls.private_key_path)
        if tls.ca_path:
            context.load_verify_locations(cafile=tls.ca_path)
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_NONE
        return context

    def start(self) -> int:
        """Start listening (non-blocking). Returns the port actually bound."""
        ae = self._make_ae()
        handlers = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_REQUESTED, self._handle_requested),
            (evt.EVT_REJECTED, self._handle_rejected),
            (evt.EVT_CONN_OPEN, self._handle_conn_open),
        ]
        self._server = ae.start_server(
            (self.config.host, self.config.port), block=False, evt_handlers=handlers,
            ssl_context=self._ssl_context(),
        )
        port = self._server.server_address[1]
        log.info("listening as %s on %s:%d", self.config.ae_title, self.config.host, port)
        return port

    def stop(self) -> None:
        """Stop listening and close open associations."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _handle_conn_open(self, event: evt.Event) -> None:
        # Small responses must not wait for Nagle's algorithm (40 ms per instance on loopback).
        sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _handle_requested(self, event: evt.Event) -> None:
        address = event.assoc.requestor.address
        if not peer_allowed(address, self.config.allowed_peer_addresses):
            log.warning("association from %s refused: address not allowed", address)
            self.metrics.count("associations_rejected", reason="address")
            event.assoc.acse.send_reject(0x01, 0x01, 0x01)

    def _handle_rejected(self, event: evt.Event) -> None:
        primitive = event.assoc.requestor.primitive
        calling = getattr(primitive, "calling_ae_title", "") if primitive is not None else ""
        log.warning("association from %s (calling AE %r) rejected", event.assoc.requestor.address, calling)
        self.metrics.count("associations_rejected", reason="negotiation")

    def _handle_echo(self, event: evt.Event) -> int:
        self.metrics.count("echo_requests")
        return 0x0000

    def _handle_store(self, event: evt.Event) -> Dataset:
        started = time.perf_counter()
        request = event.request
        sop_class = str(request.AffectedSOPClassUID)
        sop_instance = str(request.AffectedSOPInstanceUID)
        transfer_syntax = str(event.context.transfer_syntax)
        stream = event.encoded_dataset(include_meta=False)
        refusal, meta = evaluate_store(sop_class, sop_instance, transfer_syntax, stream,
                                       self.config.other_sop_classes)
        if refusal is not None:
            return self._refuse(refusal, sop_instance)
        if meta is None:  # evaluate_store returns a refusal or a meta, never neither
            raise RuntimeError("evaluate_store returned neither a refusal nor an instance")
        header = b"".join((b"\x00" * 128, b"DICM", encode_file_meta(event.file_meta)))
        try:
            stored = self.spool.store(meta, (header, stream), stream)
        except OutOfSpace as error:
            return self._refuse(StoreAnswer(StoreStatus.OUT_OF_RESOURCES, str(error)), sop_instance)
        except Exception as error:  # an I/O or database failure: the instance was not stored
            log.exception("instance %s could not be stored", sop_instance)
            return self._refuse(StoreAnswer(StoreStatus.PROCESSING_FAILURE,
                                            f"not stored: {type(error).__name__}"), sop_instance)
        self.metrics.count("instances_received", outcome=stored.outcome.value)
        self.metrics.count("bytes_received", float(len(stream)))
        self.metrics.observe("receive", time.perf_counter() - started)
        if stored.outcome == StoreOutcome.CONFLICT:
            log.warning("instance %s received again with other bytes: first copy kept, conflict recorded",
                        sop_instance, extra={"study_uid": meta.study_uid, "series_uid": meta.series_uid})
        else:
            log.debug("stored %s instance %s", stored.outcome.value, sop_instance,
                      extra={"study_uid": meta.study_uid, "series_uid": meta.series_uid})
        if self.on_stored is not None and stored.outcome == StoreOutcome.STORED:
            self.on_stored(meta)
        return StoreAnswer(StoreStatus.SUCCESS).as_dataset()

    def _refuse(self, answer: StoreAnswer, sop_instance: str) -> Dataset:
        self.metrics.count("instances_refused", status=f"0x{int(answer.status):04X}")
        log.warning("C-STORE of %s refused: 0x%04X %s (%s)", sop_instance[:64], int(answer.status),
                    answer.status.name, answer.comment)
        return answer.as_dataset()
