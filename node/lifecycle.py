"""Study states and the transitions allowed between them (pure; no I/O).

receiving -> ready -> processing -> delivering -> delivered
                          |                \\-> undeliverable (an object dead-lettered; resendable)
                          \\-> failed -> (backoff) -> processing ... -> quarantined after K attempts
New input for a study that has started processing starts a new generation: back to receiving.
"""

from __future__ import annotations

import enum


class StudyState(str, enum.Enum):
    """Where a study is in its life."""

    RECEIVING = "receiving"
    READY = "ready"
    PROCESSING = "processing"
    FAILED = "failed"
    QUARANTINED = "quarantined"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    UNDELIVERABLE = "undeliverable"
    IGNORED = "ignored"


class OutboxState(str, enum.Enum):
    """State of one result object for one destination."""

    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"
    CANCELLED = "cancelled"


_ALLOWED: dict[StudyState, frozenset[StudyState]] = {
    StudyState.RECEIVING: frozenset({StudyState.READY, StudyState.IGNORED}),
    StudyState.READY: frozenset({StudyState.PROCESSING, StudyState.RECEIVING}),
    StudyState.PROCESSING: frozenset(
        {StudyState.DELIVERING, StudyState.DELIVERED, StudyState.FAILED, StudyState.QUARANTINED,
         StudyState.READY, StudyState.RECEIVING}
    ),
    StudyState.FAILED: frozenset({StudyState.PROCESSING, StudyState.RECEIVING, StudyState.READY,
                                  StudyState.QUARANTINED}),
    StudyState.QUARANTINED: frozenset({StudyState.READY, StudyState.RECEIVING}),
    StudyState.DELIVERING: frozenset({StudyState.DELIVERED, StudyState.UNDELIVERABLE, StudyState.RECEIVING,
                                      StudyState.READY}),
    StudyState.DELIVERED: frozenset({StudyState.DELIVERING, StudyState.RECEIVING, StudyState.READY}),
    StudyState.UNDELIVERABLE: frozenset({StudyState.DELIVERING, StudyState.RECEIVING, StudyState.READY}),
    StudyState.IGNORED: frozenset({StudyState.RECEIVING, StudyState.READY}),
}

#: States in which new input starts a new generation (processing has begun or ended).
REPROCESS_ON_NEW_INPUT = frozenset(
    {StudyState.PROCESSING, StudyState.FAILED, StudyState.QUARANTINED, StudyState.DELIVERING,
     StudyState.DELIVERED, StudyState.UNDELIVERABLE, StudyState.IGNORED}
)


def can_transition(current: StudyState, target: StudyState) -> bool:
    """Whether a study may go from `current` to `target` (staying put is always allowed)."""
    return current == target or target in _ALLOWED[current]


def state_on_new_input(current: StudyState) -> tuple[StudyState, bool]:
    """The state after a new (not duplicate) instance arrives, and whether a new generation starts."""
    if current in REPROCESS_ON_NEW_INPUT:
        return StudyState.RECEIVING, True
    return StudyState.RECEIVING, False


def retry_delay_s(attempt: int, base_s: float, factor: float, max_s: float) -> float:
    """Exponential backoff after failed attempt number `attempt` (1-based)."""
    if attempt < 1:
        raise ValueError("attempt: must be >= 1")
    return min(max_s, base_s * factor ** (attempt - 1))


def state_after_failure(attempts: int, max_attempts: int) -> StudyState:
    """FAILED (retried later) or QUARANTINED once `attempts` reached `max_attempts`."""
    return StudyState.QUARANTINED if attempts >= max_attempts else StudyState.FAILED


def study_state_from_outbox(states: list[OutboxState]) -> StudyState:
    """The study's delivery state from its live outbox items."""
    live = [s for s in states if s != OutboxState.CANCELLED]
    if any(s == OutboxState.PENDING for s in live):
        return StudyState.DELIVERING
    if any(s == OutboxState.DEAD for s in live):
        return StudyState.UNDELIVERABLE
    return StudyState.DELIVERED
