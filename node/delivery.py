"""Senders: deliver result objects to one destination and report per object.

`CStoreSender` sends the files as they are (pynetdicom reads the file and sends the data set
without decoding it) over one association, negotiating each object's SOP class and transfer
syntax. `OrthancSender` posts the files to Orthanc's REST API with orthanc-api-client and can delete
superseded results. Each returns a `SendResult` per item: ok, or why not and whether a retry can help.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config

from node.node_config import CStoreDestination, OrthancDestination
from node.records import OutboxItem, SendResult

log = logging.getLogger(__name__)

#: C-STORE statuses after which a retry can help (out of resources).
_TRANSIENT_PREFIX = 0xA700
#: Statuses that mean stored (success and warnings, PS3.4 B.2.3).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class Sender(Protocol):
    """Delivers items to one destination."""

    name: str

    def send(self, items: Sequence[OutboxItem], data_dir: Path) -> list[SendResult]:
        """Try every item once; one result per item, in order."""
        ...


class CStoreSender:
    """C-STORE to a DICOM destination."""

    def __init__(self, destination: CStoreDestination, default_calling_ae: str) -> None:
        self.name = destination.name
        self.destination = destination
        self.calling_ae = destination.calling_ae_title or default_calling_ae
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        # Send result files as written (no decode/re-encode); pynetdicom keeps this as module state.
        _config.STORE_SEND_CHUNKED_DATASET = True

    def send(self, items: Sequence[OutboxItem], data_dir: Path) -> list[SendResult]:
        """Send every item over one association."""
        results: dict[int, SendResult] = {}
        syntaxes: dict[int, str] = {}
        for item in items:
            if item.action != "store":
                results[item.item_id] = SendResult(item.item_id, False, "a C-STORE destination cannot delete",
                                                   transient=False)
                continue
            try:
                syntaxes[item.item_id] = str(read_file_meta_info(data_dir / item.path).TransferSyntaxUID)
            except (OSError, ValueError, AttributeError) as error:
                results[item.item_id] = SendResult(item.item_id, False, f"result file unreadable: {error}",
                                                   transient=False)
        to_send = [i for i in items if i.item_id not in results]
        if not to_send:
            return [results[i.item_id] for i in items]
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = self.destination.timeout_s
        ae.dimse_timeout = self.destination.timeout_s
        ae.network_timeout = self.destination.timeout_s
        wanted = sorted({(i.sop_class_uid, syntaxes[i.item_id]) for i in to_send})
        by_class: dict[str, list[str]] = {}
        for sop_class, syntax in wanted:
            by_class.setdefault(sop_class, []).append(syntax)
        for sop_class, class_syntaxes in by_class.items():
            ae.add_requested_context(sop_class, class_syntaxes)
        d = self.destination
        try:
            assoc = ae.associate(d.host, d.port, ae_title=d.ae_title)
        except (OSError, RuntimeError) as error:
            status = f"cannot associate: {error}"
            return [results.get(i.item_id) or SendResult(i.item_id, False, status) for i in items]
        if not assoc.is_established:
            why = "association rejected" if assoc.is_rejected else "association failed (no answer)"
            return [results.get(i.item_id) or SendResult(i.item_id, False, why) for i in items]
        accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        try:
            for item in to_send:
                if (item.sop_class_uid, syntaxes[item.item_id]) not in accepted:
                    results[item.item_id] = SendResult(item.item_id, False,
                                                       "SOP class/transfer syntax not accepted by the destination",
                                                       transient=False)
                    continue
                if not assoc.is_established:
                    results[item.item_id] = SendResult(item.item_id, False, "association lost")
                    continue
                try:
                    status = assoc.send_c_store(str(data_dir / item.path))
                except (OSError, ValueError, RuntimeError) as error:
                    results[item.item_id] = SendResult(item.item_id, False, f"send failed: {error}")
                    continue
                results[item.item_id] = _from_status(item.item_id, status)
        finally:
            if assoc.is_established:
                assoc.release()
        return [results[i.item_id] for i in items]


def _from_status(item_id: int, status) -> SendResult:
    if status is None or "Status" not in status:
        return SendResult(item_id, False, "no response (connection lost or timed out)")
    code = int(status.Status)
    comment = str(status.get("ErrorComment", "") or "")
    text = f"0x{code:04X}" + (f" {comment}" if comment else "")
    if code in _STORED:
        return SendResult(item_id, True, text)
    return SendResult(item_id, False, f"refused {text}", transient=(code & 0xFF00) == _TRANSIENT_PREFIX)


class OrthancSender:
    """Upload to (and delete superseded results from) an Orthanc server over REST."""

    def __init__(self, destination: OrthancDestination) -> None:
        from orthanc_api_client import OrthancApiClient

        self.name = destination.name
        self.destination = destination
        self._client = OrthancApiClient(destination.url, user=destination.username or None,
                                        pwd=destination.password or None)

    def send(self, items: Sequence[OutboxItem], data_dir: Path) -> list[SendResult]:
        """Upload or delete each item; a connection failure stops this round."""
        from orthanc_api_client import exceptions as oe

        results: list[SendResult] = []
        unreachable = ""
        for item in items:
            if unreachable:
                results.append(SendResult(item.item_id, False, unreachable))
                continue
            try:
                if item.action == "delete":
                    results.append(self._delete(item))
                else:
                    data = (data_dir / item.path).read_bytes()
                    response = self._client.post("instances", data=data, timeout=self.destination.timeout_s)
                    body = response.json()
                    status = body.get("Status", "") if isinstance(body, dict) else ""
                    results.append(SendResult(item.item_id, True, f"HTTP {response.status_code} {status}".strip()))
            except (oe.ConnectionError, oe.TimeoutError) as error:
                unreachable = f"unreachable: {error.msg}"
                results.append(SendResult(item.item_id, False, unreachable))
            except oe.HttpError as error:
                code = error.http_status_code or 0
                transient = code >= 500 or code in (401, 403, 408, 429)
                results.append(SendResult(item.item_id, False, f"refused HTTP {code}", transient=transient))
            except OSError as error:
                results.append(SendResult(item.item_id, False, f"result file unreadable: {error}", transient=False))
        return results

    def _delete(self, item: OutboxItem) -> SendResult:
        orthanc_id = self._client.instances.lookup(item.sop_instance_uid)
        if orthanc_id is None:
            return SendResult(item.item_id, True, "already absent")
        self._client.delete(f"instances/{orthanc_id}", timeout=self.destination.timeout_s)
        return SendResult(item.item_id, True, "deleted")


def make_sender(destination: CStoreDestination | OrthancDestination, default_calling_ae: str) -> Sender:
    """The sender for one configured destination."""
    if isinstance(destination, CStoreDestination):
        return CStoreSender(destination, default_calling_ae)
    return OrthancSender(destination)
