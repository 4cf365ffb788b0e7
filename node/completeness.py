"""When is a received study complete enough to process? (pure functions)

A study is ready when the required phases (default: venous) are present among its CT series and
no instance arrived for `stable_s`; after `deadline_s` from its first instance it proceeds with
what it has, once quiet. Phases are judged from headers only (no pixels are read here): the
SeriesDescription patterns of `pipeline.phases`, else the acquisition time after the contrast
bolus start (or after the study's first series) in the configured windows. The pipeline decides
the final phases itself from headers and images.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from node.node_config import CompletenessConfig
from node.records import StudySnapshot
from pipeline.config import PhaseRulesConfig
from pipeline.phases import description_phase, normalise_description
from pipeline.types import Phase


@dataclass(frozen=True)
class Readiness:
    """The decision for one study."""

    ready: bool
    ignore: bool  # nothing processable arrived by the deadline
    reason: str
    phases_present: tuple[str, ...]


def _excluded(description: str, rules: PhaseRulesConfig) -> bool:
    text = normalise_description(description)
    return any(re.search(pattern, text) for pattern in rules.exclude_patterns)


def _time_phase(offset_s: float, rules: PhaseRulesConfig) -> Phase:
    windows = [
        (Phase.NC, float("-inf"), rules.nc_max_offset_s),
        (Phase.AP, *rules.ap_window_s),
        (Phase.VP, *rules.vp_window_s),
        (Phase.DP, rules.dp_min_offset_s, float("inf")),
    ]
    for phase, lo, hi in windows:
        if lo <= offset_s <= hi:
            return phase
    return min(windows, key=lambda w: min(abs(offset_s - w[1]), abs(offset_s - w[2])))[0]


def header_phases(study: StudySnapshot, rules: PhaseRulesConfig) -> tuple[str, ...]:
    """Phases that the study's CT series name in their headers (sorted NC, AP, VP, DP)."""
    series = [s for s in study.series if s.processable]
    bolus = [s.bolus_start_time_s for s in series if s.bolus_start_time_s is not None]
    times = [s.acquisition_time_s for s in series if s.acquisition_time_s is not None]
    reference = min(bolus) if bolus else (min(times) if times else None)
    found: set[Phase] = set()
    for s in series:
        if _excluded(s.description, rules):
            continue
        phase, _ = description_phase(s.description, rules)
        if phase is None and reference is not None and s.acquisition_time_s is not None:
            offset = s.acquisition_time_s - reference
            if offset < -43200:  # acquired after midnight relative to the reference
                offset += 86400
            phase = _time_phase(offset, rules)
        if phase is not None:
            found.add(phase)
    order = [Phase.NC, Phase.AP, Phase.VP, Phase.DP]
    return tuple(p.value for p in order if p in found)


def assess(study: StudySnapshot, config: CompletenessConfig, rules: PhaseRulesConfig, now: float) -> Readiness:
    """Whether `study` is ready to process at time `now` (seconds, same clock as the snapshot)."""
    present = header_phases(study, rules)
    quiet_s = now - study.last_received_at
    age_s = now - study.first_received_at
    missing = [p for p in config.required_phases if p not in present]
    has_ct = any(s.processable for s in study.series)
    if quiet_s < config.stable_s:
        return Readiness(False, False, f"receiving (quiet for {quiet_s:.1f} s)", present)
    if not has_ct:
        if age_s >= config.deadline_s:
            return Readiness(False, True, "no CT series arrived before the deadline", present)
        return Readiness(False, False, "no CT series yet", present)
    if not missing:
        return Readiness(True, False, f"phases {','.join(present)} present, quiet for {quiet_s:.0f} s", present)
    if age_s >= config.deadline_s:
        return Readiness(True, False, f"deadline reached without {','.join(missing)}; proceeding with "
                                      f"{','.join(present) or 'no named phase'}", present)
    return Readiness(False, False, f"waiting for {','.join(missing)}", present)
