"""Dataclasses that cross the node's modules (no behaviour)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class InstanceMeta:
    """What the index keeps about one received instance (no patient identifiers)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str
    series_description: str
    acquisition_time_s: float | None
    bolus_start_time_s: float | None
    processable: bool  # CT storage; False: stored and ignored


class StoreOutcome(str, enum.Enum):
    """What happened to a received instance in the spool."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class SeriesSnapshot:
    """One series of a study, as completeness sees it."""

    series_uid: str
    description: str
    acquisition_time_s: float | None
    bolus_start_time_s: float | None
    instances: int
    processable: bool


@dataclass(frozen=True)
class StudySnapshot:
    """A study waiting in RECEIVING, with its series."""

    study_id: int
    study_uid: str
    generation: int
    first_received_at: float
    last_received_at: float
    series: tuple[SeriesSnapshot, ...]


@dataclass(frozen=True)
class Job:
    """One processing attempt of one generation of one study."""

    study_id: int
    study_uid: str
    generation: int
    attempt: int
    attempt_id: int
    input_paths: tuple[Path, ...]


@dataclass(frozen=True)
class ResultFile:
    """One result object to deliver."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str


@dataclass(frozen=True)
class OutboxItem:
    """One result object to send to one destination."""

    item_id: int
    study_id: int
    study_uid: str
    destination: str
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    attempts: int
    action: str = "store"  # "store", or "delete" (remove a superseded result from an Orthanc)


@dataclass(frozen=True)
class SendResult:
    """Per-object outcome of one delivery try."""

    item_id: int
    ok: bool
    status: str  # e.g. "0x0000", "HTTP 200", "connection refused"
    transient: bool = True  # a failure worth retrying


@dataclass
class StudyRow:
    """One line of `livernode status` (no patient names)."""

    study_id: int
    study_uid: str
    state: str
    generation: int
    attempts: int
    instances: int
    series: int
    reason: str
    updated_at: float
    outbox: dict[str, int] = field(default_factory=dict)
