"""Study states: allowed transitions, new input, backoff, and the delivery state from the outbox."""

from __future__ import annotations

import pytest

from node.lifecycle import (
    OutboxState,
    StudyState,
    can_transition,
    retry_delay_s,
    state_after_failure,
    state_on_new_input,
    study_state_from_outbox,
)


def test_happy_path_is_allowed_and_shortcuts_are_not() -> None:
    path = [StudyState.RECEIVING, StudyState.READY, StudyState.PROCESSING, StudyState.DELIVERING,
            StudyState.DELIVERED]
    for a, b in zip(path, path[1:]):
        assert can_transition(a, b)
    assert not can_transition(StudyState.RECEIVING, StudyState.DELIVERED)
    assert not can_transition(StudyState.READY, StudyState.DELIVERED)


def test_new_input_starts_a_new_generation_only_after_processing_began() -> None:
    assert state_on_new_input(StudyState.RECEIVING) == (StudyState.RECEIVING, False)
    assert state_on_new_input(StudyState.READY) == (StudyState.RECEIVING, False)
    for state in (StudyState.PROCESSING, StudyState.DELIVERED, StudyState.QUARANTINED):
        assert state_on_new_input(state) == (StudyState.RECEIVING, True)


def test_backoff_grows_and_is_capped() -> None:
    assert [retry_delay_s(n, 10, 2, 35) for n in (1, 2, 3, 4)] == [10, 20, 35, 35]
    with pytest.raises(ValueError):
        retry_delay_s(0, 1, 2, 3)


def test_quarantine_after_the_last_attempt() -> None:
    assert state_after_failure(1, 3) == StudyState.FAILED
    assert state_after_failure(3, 3) == StudyState.QUARANTINED


def test_delivery_state_from_outbox() -> None:
    P, S, D, C = OutboxState.PENDING, OutboxState.SENT, OutboxState.DEAD, OutboxState.CANCELLED
    assert study_state_from_outbox([S, P]) == StudyState.DELIVERING
    assert study_state_from_outbox([S, D]) == StudyState.UNDELIVERABLE
    assert study_state_from_outbox([S, S, C]) == StudyState.DELIVERED
