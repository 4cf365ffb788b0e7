"""Every new UID of livernode's results, derived deterministically.

A UID is a hash (pydicom `generate_uid` with `entropy_srcs`) of: what it names (its role),
the input series UIDs (sorted, so their order does not matter), the model name, version and
weights digest, and a digest of the configuration. Reprocessing the same input with the same
model and configuration therefore gives the same UIDs (an idempotent resend replaces, never
duplicates); a new model version or configuration gives new ones.

UIDs use the "2.25." root (a name-based UUID, ISO/IEC 9834-8) unless a prefix is passed (an
organisation root ending in "."). Pure functions; no global state. (pydicom's generate_uid
ignores its entropy sources when prefix is None, so the 2.25 form is built here.)
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from pydicom.uid import generate_uid

from dicom_sr.types import ResultUIDs, SeriesInstanceUIDs
from pipeline.types import ORGAN_LABELS, ModelIdentity, Phase

#: Bump when the derivation below changes meaning (changes every UID).
DERIVATION_VERSION = "livernode-uid-v1"
#: Namespace of livernode's name-based UUIDs (itself a name-based UUID; a constant).
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:livernode:results")


def config_digest(config: Any) -> str:
    """SHA-256 (hex) of a configuration: a dataclass, a mapping, or anything JSON-encodable.

    Keys are sorted, so equal configurations give equal digests whatever their key order.
    """
    plain = _to_plain(config)
    text = json.dumps(plain, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_to_plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    return value


def _check_prefix(prefix: str | None) -> None:
    if prefix is None:
        return
    if not prefix.endswith(".") or not all(part.isdigit() for part in prefix[:-1].split(".")):
        raise ValueError(f"prefix: {prefix!r} is not a UID root ending in '.'")
    if len(prefix) > 30:
        raise ValueError(f"prefix: {prefix!r} is longer than 30 characters")


def derive_uid(role: str, basis: Sequence[str], prefix: str | None = None) -> str:
    """One UID for `role` (e.g. "sr-series") from `basis` (the shared entropy sources).

    Without a prefix: "2.25." + a name-based (SHA-1, version 5) UUID of the sources (ISO/IEC
    9834-8). With a prefix: pydicom's hash-based UID under that root. The sources are joined
    unambiguously (JSON), so ("ab", "c") and ("a", "bc") differ.
    """
    _check_prefix(prefix)
    name = json.dumps([DERIVATION_VERSION, role, *basis], separators=(",", ":"))
    if prefix is None:
        return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"
    return str(generate_uid(prefix=prefix, entropy_srcs=[name]))


def uid_basis(
    input_series_uids: Iterable[str], model: ModelIdentity, config_sha256: str
) -> list[str]:
    """The entropy sources shared by every UID of one result set."""
    series = sorted(set(input_series_uids))
    if not series:
        raise ValueError("input_series_uids: at least one input series UID is needed")
    return ["series:" + ",".join(series), model.name, model.version, model.weights_sha256,
            "config:" + config_sha256]


def device_uid(model: ModelIdentity, prefix: str | None = None) -> str:
    """Device UID of the algorithm: tied to the model name, version and weights only."""
    return derive_uid("device", [model.name, model.version, model.weights_sha256], prefix)


def derive_result_uids(
    input_series_uids: Iterable[str],
    model: ModelIdentity,
    config_sha256: str,
    lesion_ids: Iterable[int],
    phases: Iterable[Phase] = (Phase.VP,),
    organ_labels: Iterable[int] = ORGAN_LABELS,
    prefix: str | None = None,
    failure_reason: str | None = None,
) -> ResultUIDs:
    """All UIDs of one study's results.

    input_series_uids: the series the results were computed from (all phases used).
    config_sha256: `config_digest(...)` of the pipeline and results configuration.
    lesion_ids: ids of the reported lesions (each gets a Tracking UID).
    phases: phases that get a SEG (the reference phase VP always does).
    failure_reason: for a "not analysed" report; its SR gets UIDs of its own (derived from the
        reason too), so a failure report never shares a UID with a result report or with a
        failure report of another reason.
    """
    basis = uid_basis(input_series_uids, model, config_sha256)
    seg_phases = sorted(set(phases) | {Phase.VP}, key=lambda p: p.value)
    seg = {
        phase: SeriesInstanceUIDs(
            series_uid=derive_uid(f"seg-series:{phase.value}", basis, prefix),
            instance_uid=derive_uid(f"seg-instance:{phase.value}", basis, prefix),
        )
        for phase in seg_phases
    }
    sr_role = "sr"
    if failure_reason is not None:
        reason_sha256 = hashlib.sha256(failure_reason.encode("utf-8")).hexdigest()
        sr_role = f"sr-failure:{reason_sha256}"
    sr = SeriesInstanceUIDs(
        series_uid=derive_uid(f"{sr_role}-series", basis, prefix),
        instance_uid=derive_uid(f"{sr_role}-instance", basis, prefix),
    )
    lesion_tracking = {
        int(lesion_id): derive_uid(f"lesion:{int(lesion_id)}", basis, prefix)
        for lesion_id in lesion_ids
    }
    organ_tracking = {
        int(label): derive_uid(f"organ:{int(label)}", basis, prefix) for label in organ_labels
    }
    return ResultUIDs(
        seg=seg,
        sr=sr,
        lesion_tracking=lesion_tracking,
        organ_tracking=organ_tracking,
        patient_tracking_uid=derive_uid("patient-findings", basis, prefix),
        device_uid=device_uid(model, prefix),
    )
