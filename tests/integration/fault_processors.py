"""Study processors for fault injection in the node's integration tests.

`ReportProcessor` stands in for the model (so node tests do not depend on trained weights): it
reads the received files, and writes one real DICOM object, a Basic Text SR in the source study
whose UIDs are derived deterministically from the input series (node.identity), like the real
results. What it does besides is chosen by the input's StudyDescription:

    "CRASH"   the worker process aborts (SIGABRT)          "SLEEP"  sleeps past any timeout
    "MEMORY"  allocates until memory runs out              "SLOW"   sleeps 4 s, then reports
    "INPUT"   raises pipeline.errors.InputError

Every run appends a line to $LIVERNODE_TEST_RUNLOG (if set), so a test can count runs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from node.identity import derive_uid
from pipeline.errors import InputError

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


@dataclass
class FaultOutcome:
    """Same fields as node.processing.ProcessOutcome."""

    study_uid: str
    succeeded: bool
    result_files: list[Path]
    findings_path: Path | None
    message: str
    timings_s: dict[str, float] = field(default_factory=dict)


class ReportProcessor:
    """Writes one SR per study; misbehaves on request (see module docstring)."""

    def __init__(self, settings: object) -> None:
        self.settings = settings
        self.created_at = time.time()
        self.pid = os.getpid()

    def process(self, input_dir: Path, output_dir: Path) -> FaultOutcome:
        started = time.perf_counter()
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(Path(input_dir).rglob("*.dcm"))]
        if not headers:
            raise InputError("no files")
        first = headers[0]
        marker = str(first.get("StudyDescription", "")).upper()
        log_path = os.environ.get("LIVERNODE_TEST_RUNLOG")
        if log_path:
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(f"{first.StudyInstanceUID} {marker} pid={self.pid} files={len(headers)}\n")
        if "CRASH" in marker:
            os.abort()
        if "SLEEP" in marker:
            time.sleep(3600)
        if "MEMORY" in marker:
            hog = []
            while True:
                hog.append(bytearray(256 * 1024 * 1024))
        if "INPUT" in marker:
            raise InputError("no venous phase in this study (injected)")
        if "SLOW" in marker:
            time.sleep(4)
        series = sorted({str(h.SeriesInstanceUID) for h in headers})
        basis = ["series:" + ",".join(series), "fault-processor"]
        path = Path(output_dir) / "report.dcm"
        _write_sr(first, derive_uid("test-sr-series", basis), derive_uid("test-sr-instance", basis),
                  f"{len(headers)} instances in {len(series)} series", path)
        return FaultOutcome(str(first.StudyInstanceUID), True, [path], None,
                            f"test report over {len(series)} series",
                            {"report": time.perf_counter() - started})


def _write_sr(source: Dataset, series_uid: str, instance_uid: str, text: str, path: Path) -> None:
    ds = Dataset()
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = instance_uid
    ds.StudyInstanceUID = source.StudyInstanceUID
    ds.SeriesInstanceUID = series_uid
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        ds.__setattr__(keyword, source.get(keyword, ""))
    ds.Modality = "SR"
    ds.SeriesNumber = 990
    ds.InstanceNumber = 1
    ds.SeriesDescription = "livernode test report (research use only)"
    ds.Manufacturer = "livernode-test"
    ds.ContentDate = source.get("StudyDate", "20240101")
    ds.ContentTime = "000000"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "121070", "DCM", "Findings"
    ds.ConceptNameCodeSequence = [concept]
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = [concept]
    item.TextValue = text
    ds.ContentSequence = [item]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
