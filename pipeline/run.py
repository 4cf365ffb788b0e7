"""One study end to end inside the pipeline: DICOM files -> series -> phases -> registration onto
the venous phase -> UNet_whole -> cascade (two sensitivities, seg2det, reclassification, patient
verdict) -> :class:`Findings` on the reference series' own grid.

Nothing here encodes DICOM results or talks to the network: ``node.processing`` does that.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Iterable

from pipeline.backends import SegmentationBackend
from pipeline.cascade import CascadeResult
from pipeline.config import CascadeConfig, PhaseRulesConfig, RegistrationConfig, SeriesConfig
from pipeline.dicom_scan import SkippedItem
from pipeline.errors import InputError
from pipeline.phases import PhaseAssignment, identify_phases
from pipeline.reference_grid import labels_to_reference, lesions_to_reference
from pipeline.model_cascade import cascade_on_prediction
from pipeline.registration import RegisteredStudy, register_study
from pipeline.series import StudyScan, group_studies, load_series, scan_files
from pipeline.types import Decision, Findings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyConfig:
    """Everything that decides how one study is processed."""

    series: SeriesConfig = field(default_factory=SeriesConfig)
    phases: PhaseRulesConfig = field(default_factory=PhaseRulesConfig)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    cascade: CascadeConfig = field(default_factory=CascadeConfig)


@dataclass
class StudyRun:
    """The outcome of one study: findings on the reference grid plus what led to them."""

    findings: Findings
    cascade: CascadeResult
    assignment: PhaseAssignment
    registered: RegisteredStudy
    skipped: list[SkippedItem]


def scan_studies(paths: Iterable[str | os.PathLike[str]], config: SeriesConfig) -> list[StudyScan]:
    """Read the headers of every file under `paths` and group the CT volumes by study."""
    return group_studies(scan_files(paths, config))


def run_study(study: StudyScan, backend: SegmentationBackend, config: StudyConfig) -> StudyRun:
    """Process one study; raises InputError when it cannot be analysed (no CT volume, no venous
    phase, ...), with a message that says what is missing."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if not study.series:
        reasons = "; ".join(sorted({item.reason for item in study.skipped})) or "no files"
        raise InputError(f"no CT volume in the study ({reasons})")
    assignment = identify_phases(study.series, config.phases, series_config=config.series)
    volumes = {phase: load_series(info, config.series).to_phase_volume(phase) for phase, info in assignment.chosen.items()}
    timings["load_s"] = time.perf_counter() - started

    t0 = time.perf_counter()
    registered = register_study(volumes, config.registration, study_uid=study.study_uid,
                                reference_phase=assignment.reference_phase)
    timings["registration_s"] = time.perf_counter() - t0
    reference = registered.phases[registered.reference_phase]

    t0 = time.perf_counter()
    hu_by_phase = {phase: volume.hu for phase, volume in registered.phases.items()}
    prediction = backend.predict(hu_by_phase, reference.geometry)
    timings["segmentation_s"] = time.perf_counter() - t0

    model_input = prediction.model_input
    result = cascade_on_prediction(prediction, backend, config.cascade)
    timings.update({f"cascade_{k}": v for k, v in result.timings_s.items()})

    t0 = time.perf_counter()
    findings = result.to_findings(study.study_uid, reference.series_uid, backend.identity, model_input.present)
    findings.geometry = reference.geometry
    findings.lesions = lesions_to_reference(result.reported, model_input.geometry, reference.geometry, hu_by_phase)
    findings.organ_labels = labels_to_reference(result.organ_labels, reference.geometry)
    findings.decisions = [*skipped_decisions(study.skipped), *assignment.decisions, *registered.decisions,
                          *result.decisions]
    timings["to_reference_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - started
    findings.timings_s = timings
    log.info("study %s: %d lesion(s), class base %s / high %s (%s) in %.1f s", study.study_uid,
             len(findings.lesions), findings.class_base.name, findings.class_high.name,
             "certain" if findings.certain else "uncertain", timings["total_s"])
    return StudyRun(findings, result, assignment, registered, list(study.skipped))


def skipped_decisions(skipped: Iterable[SkippedItem]) -> list[Decision]:
    """Skipped files and series as decisions for the findings record."""
    return [Decision("ingest", item.what, "skipped", item.reason) for item in skipped]
