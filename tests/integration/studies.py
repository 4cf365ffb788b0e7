"""Phantom studies for the node's integration tests (files on disk, as a modality would send)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom

from pipeline.phantom import write_phantom_study


@dataclass(frozen=True)
class Study:
    """A study on disk: its files in sending order, and its UIDs."""

    study_uid: str
    files: tuple[Path, ...]
    sop_instance_uids: tuple[str, ...]
    patient_name: str
    patient_id: str


def make_study(folder: Path, seed: int, marker: str = "", slices: int = 12, size: int = 128) -> Study:
    """A 4-phase phantom study; `marker` goes into StudyDescription (read by the fault processors)."""
    write_phantom_study(folder, seed=seed, slices=slices, rows=size, columns=size)
    files = sorted((folder / "dicom").rglob("*.dcm"))
    uids = []
    first = None
    for path in files:
        ds = pydicom.dcmread(path)
        if marker:
            ds.StudyDescription = marker
            ds.save_as(path, enforce_file_format=True)
        uids.append(str(ds.SOPInstanceUID))
        first = first or ds
    return Study(str(first.StudyInstanceUID), tuple(files), tuple(uids), str(first.PatientName),
                 str(first.PatientID))
