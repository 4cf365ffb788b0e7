"""Phase identification: which series of a study is NC, AP, VP and DP (docs/ingest.md).

Each series gets a header label from, in order, its SeriesDescription (configurable regular
expressions in several languages) and its acquisition time relative to the contrast injection;
then the image itself (aorta and parenchyma HU, `pipeline.enhancement`) confirms it, fills it in
when the header says nothing, or overrules it when it clearly contradicts. When several series
claim one phase the one nearest the preferred slice thickness wins, then the one with more slices,
then the later series number. Every step is recorded as a `Decision` (stage "phase").
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pipeline.config import PhaseRulesConfig, SeriesConfig
from pipeline.enhancement import (
    CONTRAST_UNSPECIFIED,
    VENOUS_OR_DELAYED,
    EnhancementStats,
    ImagePhaseEstimate,
    classify_enhancement,
    measure_enhancement,
)
from pipeline.errors import InputError
from pipeline.series import SeriesInfo, sample_series_hu
from pipeline.types import PHASE_ORDER, Decision, Phase

log = logging.getLogger(__name__)

__all__ = ["PhaseAssignment", "PhaseLabel", "description_phase", "identify_phases", "normalise_description"]

StatsProvider = Callable[[SeriesInfo], "EnhancementStats | None"]

_CONTRAST_PHASES = (Phase.AP, Phase.VP, Phase.DP)


@dataclass
class PhaseLabel:
    """The phase one series was given, and why."""

    series: SeriesInfo
    phase: Phase | None
    rule: str
    confidence: float
    stats: EnhancementStats | None = None
    excluded: bool = False


@dataclass
class PhaseAssignment:
    """Chosen series per phase, the reference phase, and every decision taken on the way."""

    study_uid: str
    chosen: dict[Phase, SeriesInfo]
    reference_phase: Phase
    labels: list[PhaseLabel] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)

    @property
    def present(self) -> tuple[Phase, ...]:
        return tuple(p for p in PHASE_ORDER if p in self.chosen)


def normalise_description(text: str) -> str:
    """Lower case without accents ("Portalvenös" -> "portalvenos"), '_' read as a space."""
    decomposed = unicodedata.normalize("NFKD", text or "")
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.replace("ß", "ss").replace("_", " ").lower().split())


def description_phase(description: str, config: PhaseRulesConfig) -> tuple[Phase | None, str]:
    """The phase a SeriesDescription names, with the matching pattern(s); (None, why) if it names
    none or several that cannot be reconciled ("venous" + "delayed" reads as delayed)."""
    text = normalise_description(description)
    if not text:
        return None, "no SeriesDescription"
    matches: dict[Phase, str] = {}
    for phase, patterns in (
        (Phase.NC, config.nc_patterns),
        (Phase.AP, config.ap_patterns),
        (Phase.VP, config.vp_patterns),
        (Phase.DP, config.dp_patterns),
    ):
        for pattern in patterns:
            if re.search(pattern, text):
                matches[phase] = pattern
                break
    if not matches:
        return None, f"description '{description}' names no phase"
    if set(matches) == {Phase.VP, Phase.DP}:
        del matches[Phase.VP]
    if len(matches) > 1:
        names = ", ".join(p.value for p in matches)
        return None, f"description '{description}' names several phases ({names})"
    phase, pattern = next(iter(matches.items()))
    return phase, f"description '{description}' matches {phase.value} pattern {pattern!r}"


def _excluded(description: str, config: PhaseRulesConfig) -> str:
    text = normalise_description(description)
    for pattern in config.exclude_patterns:
        if re.search(pattern, text):
            return pattern
    return ""


def _time_phase(offset_s: float, config: PhaseRulesConfig) -> tuple[Phase, float]:
    """Phase for a time after the reference; inside a window 0.7, in a gap the nearest, 0.5."""
    windows = [
        (Phase.NC, -math.inf, config.nc_max_offset_s),
        (Phase.AP, *config.ap_window_s),
        (Phase.VP, *config.vp_window_s),
        (Phase.DP, config.dp_min_offset_s, math.inf),
    ]
    for phase, lo, hi in windows:
        if lo <= offset_s <= hi:
            return phase, 0.7
    distances = [(min(abs(offset_s - lo), abs(offset_s - hi)), phase) for phase, lo, hi in windows]
    return min(distances, key=lambda d: d[0])[1], 0.5


def default_stats_provider(series_config: SeriesConfig | None, slices: int) -> StatsProvider:
    """Measures enhancement on `slices` slices of the central part of each series."""

    def provide(info: SeriesInfo) -> EnhancementStats | None:
        try:
            hu, _ = sample_series_hu(info, slices, series_config)
        except InputError as exc:
            log.warning("image check skipped for %s: %s", info.key, exc)
            return None
        return measure_enhancement(hu, info.geometry)

    return provide


def identify_phases(
    series_list: Sequence[SeriesInfo],
    config: PhaseRulesConfig | None = None,
    *,
    series_config: SeriesConfig | None = None,
    stats_provider: StatsProvider | None = None,
) -> PhaseAssignment:
    """Label every series of one study and choose one per phase.

    Raises InputError when no portal venous series is found (unless
    `config.allow_reference_fallback`, where the latest contrast phase becomes the reference).
    `stats_provider` measures a series' enhancement (default: decode a few slices)."""
    config = config or PhaseRulesConfig()
    if not series_list:
        raise InputError("no CT volume in the study to identify phases from")
    study_uid = series_list[0].study_uid
    provider = stats_provider or default_stats_provider(series_config, config.image_check_slices)
    decisions: list[Decision] = []
    labels: list[PhaseLabel] = []

    candidates: list[PhaseLabel] = []
    for info in series_list:
        pattern = _excluded(info.description, config)
        if pattern:
            label = PhaseLabel(info, None, f"description '{info.description}' matches exclusion {pattern!r}", 1.0, excluded=True)
            labels.append(label)
            decisions.append(Decision("phase", info.key, "excluded", label.rule, 1.0))
            continue
        phase, rule = description_phase(info.description, config)
        label = PhaseLabel(info, phase, rule, 0.9 if phase else 0.0)
        if config.image_check:
            label.stats = provider(info)
        candidates.append(label)
        labels.append(label)

    _apply_time_rule(candidates, config)
    if config.image_check:
        _apply_image_check(candidates, config)
    _split_image_only_venous(candidates, config)

    for label in candidates:
        outcome = label.phase.value if label.phase else "unassigned"
        decisions.append(Decision("phase", label.series.key, outcome, label.rule, round(label.confidence, 2)))

    chosen = _choose(candidates, config, decisions)
    reference = _reference(chosen, config, decisions, labels, study_uid)
    for phase, info in chosen.items():
        log.info("study %s: %s is %s", study_uid, info.key, phase.value)
    return PhaseAssignment(study_uid, chosen, reference, labels, decisions)


def _apply_time_rule(candidates: list[PhaseLabel], config: PhaseRulesConfig) -> None:
    """Label series the description left open from their acquisition time."""
    if all(c.phase is not None for c in candidates):
        return
    bolus = [c.series.attributes.contrast_bolus_start_time_s for c in candidates]
    bolus = [t for t in bolus if t is not None]
    timed = [c for c in candidates if c.series.acquisition_time_s is not None]
    if bolus:
        reference, source = min(bolus), "ContrastBolusStartTime"
    elif timed:
        first = min(timed, key=lambda c: c.series.acquisition_time_s)
        enhanced = first.phase in _CONTRAST_PHASES or (
            first.stats is not None and classify_enhancement(first.stats, config).outcome not in ("", Phase.NC.value)
        )
        if enhanced:
            for c in candidates:
                if c.phase is None:
                    c.rule += "; no time reference (no ContrastBolusStartTime and the first series is enhanced)"
            return
        reference, source = first.series.acquisition_time_s, f"the first series ({first.series.label})"
    else:
        return
    for c in candidates:
        if c.phase is not None or c.series.acquisition_time_s is None:
            continue
        offset = c.series.acquisition_time_s - reference
        phase, confidence = _time_phase(offset, config)
        c.phase, c.confidence = phase, confidence
        c.rule += f"; acquisition {offset:+.0f} s after {source} falls in the {phase.value} window"


def _apply_image_check(candidates: list[PhaseLabel], config: PhaseRulesConfig) -> None:
    """Fill in or overrule header labels from the enhancement seen in the image."""
    header_phases = [c.phase for c in candidates]
    for index, c in enumerate(candidates):
        if c.stats is None:
            if c.phase is None:
                c.rule += "; image check unavailable"
            continue
        estimate = classify_enhancement(c.stats, config)
        header = c.phase
        agent = c.series.attributes.contrast_bolus_agent
        if header is None:
            phase = _phase_from_image(estimate)
            if phase is None:
                c.rule += f"; image: {estimate.reason}"
                continue
            c.phase = phase
            c.confidence = estimate.confidence * (0.8 if phase is Phase.NC or agent else 0.7)
            c.rule += f"; from the image: {estimate.reason}" + (f" (ContrastBolusAgent '{agent}')" if agent else "")
            continue
        others = {p for i, p in enumerate(header_phases) if i != index and p is not None}
        relabel = _contradiction(header, estimate, others)
        if relabel is Phase.NC and agent and math.isnan(c.stats.aorta_hu if c.stats else math.nan):
            # "no enhanced aorta found" is absence of evidence; a contrast label that the
            # ContrastBolusAgent attribute backs up is kept (the aorta finder misses some
            # arterial phases: small or crowded aortas, heavy noise)
            c.rule += f"; image: {estimate.reason}, header kept (ContrastBolusAgent '{agent}')"
            continue
        if relabel is None:
            c.rule += f"; image agrees ({estimate.reason})"
            continue
        c.phase = relabel
        c.confidence = estimate.confidence
        c.rule = f"relabelled {header.value} -> {relabel.value}: image shows {estimate.reason} (header said: {c.rule})"
        log.warning("series %s relabelled %s -> %s: %s", c.series.key, header.value, relabel.value, estimate.reason)


def _phase_from_image(estimate: ImagePhaseEstimate) -> Phase | None:
    if estimate.outcome == Phase.NC.value:
        return Phase.NC
    if estimate.outcome == Phase.AP.value:
        return Phase.AP
    if estimate.outcome in (VENOUS_OR_DELAYED, CONTRAST_UNSPECIFIED):
        return Phase.VP
    return None


def _contradiction(header: Phase, estimate: ImagePhaseEstimate, other_headers: set[Phase]) -> Phase | None:
    """The phase to use instead of `header` when the image clearly contradicts it, else None.

    Contrast versus no contrast is clear. Arterial versus venous is not (a late arterial phase
    can show a moderately enhanced aorta, an early portal phase a bright one): the header is
    overruled only when no other series of the study claims the phase the image suggests."""
    outcome = estimate.outcome
    if header in _CONTRAST_PHASES and outcome == Phase.NC.value:
        return Phase.NC
    if header is Phase.NC and outcome == Phase.AP.value:
        return Phase.AP
    if header is Phase.NC and outcome in (VENOUS_OR_DELAYED, CONTRAST_UNSPECIFIED):
        return Phase.VP
    if header is Phase.AP and outcome == VENOUS_OR_DELAYED and Phase.VP not in other_headers:
        return Phase.VP
    if header in (Phase.VP, Phase.DP) and outcome == Phase.AP.value and Phase.AP not in other_headers:
        return Phase.AP
    return None


def _split_image_only_venous(candidates: list[PhaseLabel], config: PhaseRulesConfig) -> None:
    """Image-only venous-looking series acquired clearly later than the earliest one are DP."""
    image_only = [
        c for c in candidates
        if c.phase is Phase.VP and "from the image" in c.rule and c.series.acquisition_time_s is not None
    ]
    if len(image_only) < 2:
        return
    earliest = min(c.series.acquisition_time_s for c in image_only)
    gap = config.dp_min_offset_s - config.vp_window_s[1]
    for c in image_only:
        delay = c.series.acquisition_time_s - earliest
        if delay > gap:
            c.phase = Phase.DP
            c.confidence = min(c.confidence, 0.5)
            c.rule += f"; {delay:.0f} s after the earliest venous-looking series, so delayed"


def _preference_key(info: SeriesInfo, config: PhaseRulesConfig) -> tuple:
    thickness = info.slice_thickness_mm
    distance = abs(thickness - config.preferred_slice_thickness_mm) if thickness else math.inf
    return (round(distance, 3), -info.num_slices, -(info.series_number or 0), info.key)


def _why_preferred(winner: SeriesInfo, loser: SeriesInfo, config: PhaseRulesConfig) -> str:
    w, l = _preference_key(winner, config), _preference_key(loser, config)
    if w[0] != l[0]:
        return (
            f"slice thickness {_mm(winner.slice_thickness_mm)} is nearer the preferred "
            f"{config.preferred_slice_thickness_mm:g} mm than {_mm(loser.slice_thickness_mm)}"
        )
    if w[1] != l[1]:
        return f"same slice thickness, more slices ({winner.num_slices} vs {loser.num_slices})"
    if w[2] != l[2]:
        return f"same thickness and slice count, later series number ({winner.series_number} vs {loser.series_number})"
    return "same thickness, slice count and series number; first by UID"


def _mm(value: float | None) -> str:
    return "unknown" if value is None else f"{value:g} mm"


def _choose(candidates: list[PhaseLabel], config: PhaseRulesConfig, decisions: list[Decision]) -> dict[Phase, SeriesInfo]:
    chosen: dict[Phase, SeriesInfo] = {}
    for phase in PHASE_ORDER:
        competing = [c for c in candidates if c.phase is phase]
        if not competing:
            continue
        competing.sort(key=lambda c: _preference_key(c.series, config))
        winner = competing[0]
        chosen[phase] = winner.series
        for loser in competing[1:]:
            reason = _why_preferred(winner.series, loser.series, config)
            decisions.append(
                Decision(
                    "phase",
                    loser.series.key,
                    f"not used ({phase.value})",
                    f"{phase.value} also claimed by {winner.series.label}, which was chosen: {reason}",
                    round(loser.confidence, 2),
                )
            )
        if len(competing) > 1:
            others = ", ".join(c.series.label for c in competing[1:])
            decisions.append(
                Decision(
                    "phase",
                    winner.series.key,
                    f"chosen ({phase.value})",
                    f"chosen for {phase.value} over {others}: {_why_preferred(winner.series, competing[1].series, config)}",
                    round(winner.confidence, 2),
                )
            )
    return chosen


def _reference(
    chosen: dict[Phase, SeriesInfo],
    config: PhaseRulesConfig,
    decisions: list[Decision],
    labels: list[PhaseLabel],
    study_uid: str,
) -> Phase:
    if Phase.VP in chosen:
        return Phase.VP
    fallback = next((p for p in (Phase.DP, Phase.AP) if p in chosen), None)
    if config.allow_reference_fallback and fallback is not None:
        decisions.append(
            Decision(
                "phase",
                chosen[fallback].key,
                f"reference ({fallback.value})",
                f"no portal venous series; the latest contrast phase {fallback.value} is the reference "
                "(allow_reference_fallback)",
                0.5,
            )
        )
        log.warning("study %s: no venous series, %s used as reference", study_uid, fallback.value)
        return fallback
    seen = "; ".join(
        f"{label.series.label}: {label.phase.value if label.phase else ('excluded' if label.excluded else 'unassigned')}"
        for label in labels
    ) or "none"
    raise InputError(
        f"study {study_uid}: no portal venous (VP) series found, and the venous phase is the "
        f"reference the detector needs. Series seen: {seen}"
    )
