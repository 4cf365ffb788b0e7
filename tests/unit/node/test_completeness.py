"""Completeness: required phases from headers, quiet time, deadline."""

from __future__ import annotations

from node.completeness import assess, header_phases
from node.node_config import CompletenessConfig
from node.records import SeriesSnapshot, StudySnapshot
from pipeline.config import PhaseRulesConfig

RULES = PhaseRulesConfig()
CONFIG = CompletenessConfig(stable_s=30, deadline_s=600)


def _study(*series: SeriesSnapshot, first: float = 0.0, last: float = 100.0) -> StudySnapshot:
    return StudySnapshot(1, "1.2.3", 1, first, last, tuple(series))


def _series(description: str, acq: float | None = None, bolus: float | None = None, ct: bool = True) -> SeriesSnapshot:
    return SeriesSnapshot(f"1.2.{abs(hash(description)) % 1000}", description, acq, bolus, 10, ct)


def test_phases_from_descriptions() -> None:
    study = _study(_series("Abdomen nativ 5mm"), _series("Portal venous 5mm"), _series("Bolus tracking"))
    assert header_phases(study, RULES) == ("NC", "VP")


def test_phases_from_times_after_the_bolus_when_descriptions_say_nothing() -> None:
    study = _study(_series("Serie 1", acq=1000.0), _series("Serie 2", acq=1030.0, bolus=1002.0),
                   _series("Serie 3", acq=1077.0, bolus=1002.0), _series("Serie 4", acq=1190.0, bolus=1002.0))
    assert header_phases(study, RULES) == ("NC", "AP", "VP", "DP")


def test_non_ct_series_do_not_count() -> None:
    assert header_phases(_study(_series("portal venous", ct=False)), RULES) == ()


def test_ready_when_venous_present_and_quiet() -> None:
    study = _study(_series("Portal venous"), last=100.0)
    assert not assess(study, CONFIG, RULES, now=120.0).ready
    decision = assess(study, CONFIG, RULES, now=131.0)
    assert decision.ready and "VP" in decision.reason


def test_waits_for_venous_until_the_deadline() -> None:
    study = _study(_series("Arterial"), first=0.0, last=100.0)
    waiting = assess(study, CONFIG, RULES, now=200.0)
    assert not waiting.ready and "waiting for VP" in waiting.reason
    late = assess(study, CONFIG, RULES, now=601.0)
    assert late.ready and "deadline" in late.reason


def test_no_ct_at_the_deadline_is_ignored() -> None:
    study = _study(_series("portal venous", ct=False), first=0.0, last=10.0)
    assert not assess(study, CONFIG, RULES, now=100.0).ignore
    assert assess(study, CONFIG, RULES, now=700.0).ignore
