"""Process one received study into DICOM results: the pipeline (`pipeline.run`), then DICOM SEG per
phase and a TID 1500 SR (`dicom_sr`), each checked by the output gate, written as Part 10 files
ready to send, plus ``findings.json``.

A study that cannot be analysed (no CT volume, no venous phase, ...) gets a "not analysed" SR that
says why: silence never reads as "normal". The model is loaded once per :class:`StudyProcessor`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from dicom_sr.gate import GateItem, gate_all
from dicom_sr.seg import build_phase_segs, segment_stats
from dicom_sr.sr import build_failure_sr, build_sr
from dicom_sr.types import AlgorithmInfo, GateReport, StudyInfo
from node.findings_report import findings_document
from node.identity import config_digest, derive_result_uids
from node.settings import Settings
from pipeline.backends import SegmentationBackend, load_backend
from pipeline.errors import InputError
from pipeline.model import BUNDLED_MODEL_DIR
from pipeline.registration import phase_grid_resampler, warm_up_elastix
from pipeline.run import StudyConfig, StudyRun, run_study, scan_studies
from pipeline.series import StudyScan
from pipeline.types import Phase

log = logging.getLogger(__name__)

SOFTWARE_VERSION = "0.1.0"


@dataclass
class ProcessOutcome:
    """What processing one study produced. ``succeeded`` is False when a "not analysed" SR was
    written instead of results."""

    study_uid: str
    succeeded: bool
    result_files: list[Path]
    findings_path: Path | None
    message: str
    gate: list[GateReport] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)


class ResultsRejectedError(RuntimeError):
    """The output gate rejected a result object; nothing of the study is sent."""


class StudyProcessor:
    """Loads the model once, then turns study folders into result files."""

    def __init__(self, settings: Settings, backend: SegmentationBackend | None = None) -> None:
        self.settings = settings
        self.config = StudyConfig(settings.series, settings.phases, settings.registration, settings.cascade)
        self.backend = backend or load_backend(settings.model, BUNDLED_MODEL_DIR)
        self.config_sha256 = config_digest(
            {"series": settings.series, "phases": settings.phases, "registration": settings.registration,
             "cascade": settings.cascade, "model": settings.model, "results": settings.results}
        )
        self.algorithm = AlgorithmInfo.from_model(
            self.backend.identity,
            (settings.cascade.sensitivity_factors[0], settings.cascade.sensitivity_factors[-1]),
            SOFTWARE_VERSION,
        )

    def warm_up(self) -> None:
        """Load what the first study would otherwise load lazily: itk's elastix modules (10-15 s).

        A failure is only logged: registration falls back to patient coordinates per phase, with
        its reason, when elastix cannot run."""
        if not self.settings.registration.enabled:
            return
        try:
            seconds = warm_up_elastix(self.settings.registration)
        except Exception as error:  # noqa: BLE001 - the studies' own registration reports it again
            log.warning("registration warm-up failed (%s: %s); studies will register without it",
                        type(error).__name__, error)
        else:
            log.info("registration libraries loaded in %.1f s", seconds)

    def process(self, input_dir: Path, output_dir: Path) -> ProcessOutcome:
        """Process the one study whose files are under `input_dir`; write results to `output_dir`."""
        started = time.perf_counter()
        studies = scan_studies([input_dir], self.settings.series)
        if not studies:
            raise InputError(f"{input_dir}: no DICOM instance of any study was found")
        if len(studies) > 1:
            raise InputError(f"{input_dir}: holds {len(studies)} studies; give one study per folder")
        study = studies[0]
        output_dir.mkdir(parents=True, exist_ok=True)
        try:
            run = run_study(study, self.backend, self.config)
        except InputError as error:
            log.warning("study %s not analysed: %s", study.study_uid, error)
            return self._failure(study, str(error), output_dir, started)
        return self._results(study, run, output_dir, started)

    # ------------------------------------------------------------------------------------------

    def _results(self, study: StudyScan, run: StudyRun, output_dir: Path, started: float) -> ProcessOutcome:
        findings = run.findings
        chosen = run.assignment.chosen
        phase_segs_wanted = self.settings.results.phase_segs
        seg_phases = [p for p in chosen if phase_segs_wanted or p is Phase.VP]
        uids = derive_result_uids(
            [info.series_uid for info in chosen.values()], findings.model, self.config_sha256,
            [lesion.lesion_id for lesion in findings.lesions], phases=seg_phases,
            prefix=self.settings.results.uid_prefix,
        )
        sources = {phase: _read_headers(chosen[phase].slices) for phase in seg_phases}
        resamplers = {phase: phase_grid_resampler(run.registered, phase) for phase in seg_phases if phase is not Phase.VP}
        segs = build_phase_segs(findings, sources, resamplers, uids, self.algorithm,
                                self.settings.results.segmentation_type)
        reference_seg = segs[Phase.VP].segmentation
        sr = build_sr(findings, sources[Phase.VP], reference_seg, uids, self.algorithm)
        order = [Phase.VP, *(phase for phase in segs if phase is not Phase.VP)]
        items = [
            GateItem(segs[Phase.VP].segmentation,
                     segment_stats(findings, self.settings.results.segmentation_type), findings.geometry),
            *(GateItem(segs[phase].segmentation, segs[phase].expected, segs[phase].geometry) for phase in order[1:]),
        ]
        reports = gate_all([*items, sr])
        names = [f"seg-{phase.value}.dcm" for phase in order] + ["sr.dcm"]
        files = _write_gated(reports, names, output_dir)
        findings_path = output_dir / "findings.json"
        document = findings_document(findings, run.assignment, run.registered)
        document["timings_s"]["total_with_results_s"] = time.perf_counter() - started
        _write_atomic(findings_path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
        message = (f"{len(findings.lesions)} lesion(s); class {findings.class_base.name} at base, "
                   f"{findings.class_high.name} at high sensitivity ({'certain' if findings.certain else 'uncertain'})")
        return ProcessOutcome(study.study_uid, True, files, findings_path, message, reports,
                              {"total_s": time.perf_counter() - started})

    def _failure(self, study: StudyScan, reason: str, output_dir: Path, started: float) -> ProcessOutcome:
        series_uids = sorted({info.series_uid for info in study.series} | {s.series_uid for s in study.skipped if s.series_uid})
        uids = derive_result_uids(series_uids or [study.study_uid], self.backend.identity, self.config_sha256, [],
                                  prefix=self.settings.results.uid_prefix, failure_reason=reason)
        evidence = _evidence(study)
        sr = build_failure_sr(evidence, reason, uids, self.algorithm)
        reports = gate_all([sr])
        files = _write_gated(reports, ["sr-not-analysed.dcm"], output_dir)
        findings_path = output_dir / "findings.json"
        document = {"study_uid": study.study_uid, "analysed": False, "reason": reason,
                    "skipped": [{"what": s.what, "reason": s.reason, "files": s.file_count} for s in study.skipped]}
        _write_atomic(findings_path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
        return ProcessOutcome(study.study_uid, False, files, findings_path, f"not analysed: {reason}", reports,
                              {"total_s": time.perf_counter() - started})


def _read_headers(slices) -> list[Dataset]:
    return [pydicom.dcmread(header.path, stop_before_pixels=True) for header in slices]


def _evidence(study: StudyScan) -> list[Dataset] | StudyInfo:
    """The CT instances received for a failure report, or the study attributes of any file."""
    datasets = [pydicom.dcmread(h.path, stop_before_pixels=True) for info in study.series for h in info.slices]
    if datasets:
        return datasets
    for item in study.skipped:  # no CT volume: take the patient and study attributes of any file
        path = Path(item.what)
        if path.is_file():
            try:
                return StudyInfo.from_dataset(pydicom.dcmread(path, stop_before_pixels=True))
            except Exception:  # noqa: BLE001 - a malformed file: try the next one
                continue
    return StudyInfo(study_uid=study.study_uid)


def _write_gated(reports: list[GateReport], names: list[str], output_dir: Path) -> list[Path]:
    rejected = [r for r in reports if not r.ok]
    if rejected:
        raise ResultsRejectedError("output gate rejected: " + "; ".join(r.summary() for r in rejected))
    files = []
    for report, name in zip(reports, names):
        assert report.encoded is not None
        path = output_dir / name
        _write_atomic(path, report.encoded)
        files.append(path)
    return files


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
