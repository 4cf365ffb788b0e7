"""A site's own labelled multi-phase studies as training cases: an nnU-Net v2 raw dataset folder.

Layout (the one sites that trained nnU-Net on their data, as the reference paper did, already have)::

    DATASET/dataset.json          {"channel_names": {"0": "NC", "1": "AP", "2": "VP", "3": "DP"},
                                   "labels": {"background": 0, ...},   # livernode's 14 labels, 0-13
                                   "file_ending": ".nii.gz",
                                   "livernode_patients": {"case": "patient", ...}}   # optional
    DATASET/imagesTr/CASE_0000.nii.gz ...   one file per channel, HU, registered onto one grid
    DATASET/labelsTr/CASE.nii.gz            labels on the same grid

Unlike nnU-Net, a channel file may be missing: that phase is absent in that study (phase dropout
then trains on what is there). ``livernode_patients`` groups cases by patient for the validation
split; without it every case is its own patient.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from pipeline.errors import PipelineError
from pipeline.model import Preprocessing
from pipeline.sitk_geometry import geometry_of, to_sitk
from pipeline.train import TrainingCase, case_from_arrays
from pipeline.types import NUM_CLASSES, Phase, VolumeGeometry

log = logging.getLogger(__name__)


class DatasetError(PipelineError):
    """A training dataset folder that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class DatasetCase:
    """One labelled study of a dataset folder."""

    case_id: str
    patient_id: str
    channels: dict[Phase, Path]
    label_path: Path


@dataclass(frozen=True)
class LabelledDataset:
    """A dataset folder's cases, checked."""

    folder: Path
    file_ending: str
    cases: tuple[DatasetCase, ...]


def _channel_phases(dataset_json: Path, data: dict) -> dict[int, Phase]:
    try:
        names = {int(k): str(v).upper() for k, v in data["channel_names"].items()}
        return {index: Phase(name) for index, name in names.items()}
    except (KeyError, AttributeError, ValueError):
        raise DatasetError(
            f"{dataset_json}: channel_names must map channel numbers to phases (NC, AP, VP, DP), "
            f"found {data.get('channel_names')!r}"
        ) from None


def _check_labels(dataset_json: Path, data: dict) -> None:
    try:
        values = sorted(int(v) for v in data["labels"].values())
    except (KeyError, AttributeError, TypeError, ValueError):
        raise DatasetError(f"{dataset_json}: 'labels' must map names to label numbers") from None
    if values != list(range(NUM_CLASSES)):
        raise DatasetError(
            f"{dataset_json}: expected livernode's {NUM_CLASSES} labels numbered 0-{NUM_CLASSES - 1} "
            f"(docs/models.md), found {values}"
        )


def read_dataset(folder: Path) -> LabelledDataset:
    """Read and check a dataset folder's layout (not yet the images)."""
    dataset_json = folder / "dataset.json"
    if not dataset_json.is_file():
        raise DatasetError(f"{folder}: no dataset.json (expected an nnU-Net v2 raw dataset folder)")
    try:
        data = json.loads(dataset_json.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{dataset_json}: not valid JSON ({error})") from None
    phases = _channel_phases(dataset_json, data)
    _check_labels(dataset_json, data)
    ending = str(data.get("file_ending", ".nii.gz"))
    patients = {str(k): str(v) for k, v in data.get("livernode_patients", {}).items()}
    labels_dir, images_dir = folder / "labelsTr", folder / "imagesTr"
    label_paths = sorted(labels_dir.glob(f"*{ending}")) if labels_dir.is_dir() else []
    if not label_paths:
        raise DatasetError(f"{labels_dir}: no label files ending in {ending}")
    cases = []
    for label_path in label_paths:
        case_id = label_path.name[: -len(ending)]
        channels = {
            phase: images_dir / f"{case_id}_{index:04d}{ending}"
            for index, phase in phases.items()
            if (images_dir / f"{case_id}_{index:04d}{ending}").is_file()
        }
        if not channels:
            raise DatasetError(f"{images_dir}: no image files {case_id}_XXXX{ending} for {label_path.name}")
        cases.append(DatasetCase(case_id, patients.get(case_id, case_id), channels, label_path))
    return LabelledDataset(folder, ending, tuple(cases))


def _read(path: Path) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise DatasetError(f"{path}: not a readable image ({str(error).strip().splitlines()[-1]})") from None


def load_case(case: DatasetCase, prep: Preprocessing) -> TrainingCase:
    """Read one case and resample it onto the model's working grid."""
    hu, labels, geometry = read_case_arrays(case)
    return case_from_arrays(case.case_id, hu, labels, geometry, prep)


def read_case_arrays(case: DatasetCase) -> tuple[dict[Phase, np.ndarray], np.ndarray, VolumeGeometry]:
    """One case's phases (HU) and labels on its own grid, after checking that they share it."""
    label_image = _read(case.label_path)
    geometry = geometry_of(label_image)
    labels = sitk.GetArrayFromImage(label_image)
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DatasetError(f"{case.label_path}: label values must be 0-{NUM_CLASSES - 1}, found "
                           f"{int(labels.min())}-{int(labels.max())}")
    hu: dict[Phase, np.ndarray] = {}
    for phase, path in case.channels.items():
        image = _read(path)
        other = geometry_of(image)
        if other.shape != geometry.shape or not np.allclose(other.spacing_mm, geometry.spacing_mm, atol=1e-3) \
                or not np.allclose(other.origin_mm, geometry.origin_mm, atol=1e-2):
            raise DatasetError(f"{path}: not on the grid of {case.label_path.name} (register the phases first)")
        hu[phase] = sitk.GetArrayFromImage(image).astype(np.float32)
    return hu, labels.astype(np.uint8), geometry


def load_cases(
    cases: Sequence[DatasetCase], prep: Preprocessing, progress: Callable[[str], None] | None = None
) -> list[TrainingCase]:
    """Load `cases` onto the working grid, in order."""
    say = progress or log.info
    out = []
    for index, case in enumerate(cases, 1):
        out.append(load_case(case, prep))
        if index % 10 == 0 or index == len(cases):
            say(f"dataset cases: {index}/{len(cases)} loaded")
    return out


def split_by_patient(
    dataset: LabelledDataset, validation_fraction: float, seed: int = 0
) -> tuple[list[DatasetCase], list[DatasetCase]]:
    """Training and validation cases, never one patient on both sides."""
    patients = sorted({case.patient_id for case in dataset.cases})
    count = int(round(len(patients) * validation_fraction))
    if validation_fraction > 0 and len(patients) > 1:
        count = min(max(count, 1), len(patients) - 1)
    else:
        count = 0
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(patients)[:count].tolist())
    train = [case for case in dataset.cases if case.patient_id not in held]
    validation = [case for case in dataset.cases if case.patient_id in held]
    return train, validation


def write_dataset_case(
    folder: Path, case_id: str, hu_by_phase: dict[Phase, np.ndarray], labels: np.ndarray, geometry: VolumeGeometry
) -> None:
    """Write one study into a dataset folder in the layout above (channel numbers follow NC, AP,
    VP, DP); ``write_dataset_json`` writes the folder's dataset.json."""
    order = (Phase.NC, Phase.AP, Phase.VP, Phase.DP)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)

    for index, phase in enumerate(order):
        if phase in hu_by_phase:
            sitk.WriteImage(to_sitk(hu_by_phase[phase].astype(np.int16), geometry), str(folder / "imagesTr" / f"{case_id}_{index:04d}.nii.gz"))
    sitk.WriteImage(to_sitk(labels.astype(np.uint8), geometry), str(folder / "labelsTr" / f"{case_id}.nii.gz"))


def write_dataset_json(folder: Path, patients: dict[str, str] | None = None) -> Path:
    """Write dataset.json for a folder filled by ``write_dataset_case``."""
    from pipeline.types import Label

    data = {
        "channel_names": {"0": "NC", "1": "AP", "2": "VP", "3": "DP"},
        "labels": {label.name.lower(): int(label) for label in Label},
        "file_ending": ".nii.gz",
        "numTraining": len(list((folder / "labelsTr").glob("*.nii.gz"))),
    }
    if patients:
        data["livernode_patients"] = patients
    path = folder / "dataset.json"
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path
