"""`livernode process` end to end on phantom studies: real DICOM in, gated SEG/SR files out.

The model is the bundled one when present, else a network with fixed untrained weights of the
same architecture: these tests check the whole path (ingest, phases, registration, model,
cascade, results, output gate), not accuracy (see docs/models.md for that)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import torch

from pipeline.model import BUNDLED_MODEL_DIR, save_native_weights
from pipeline.phantom import write_phantom_study
from pipeline.train import TrainResult, write_card
from pipeline.train_bundled import BundledRecipe
from pipeline.types import Phase

LIVERNODE = [sys.executable, "-m", "node.cli"]
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if (BUNDLED_MODEL_DIR / "model_card.json").is_file():
        return BUNDLED_MODEL_DIR
    out = tmp_path_factory.mktemp("model")
    whole_spec, patch_spec, prep = BundledRecipe().networks()
    torch.manual_seed(0)
    whole = save_native_weights(whole_spec.build(), out / "unet_whole.pt")
    patch = save_native_weights(patch_spec.build(), out / "unet_patch.pt")
    write_card(out, prep, TrainResult(out / "unet_whole.pt", whole, 0), TrainResult(out / "unet_patch.pt", patch, 0),
               patch_spec, "untrained-test", "0", "untrained weights for tests", whole_spec=whole_spec)
    return out


def _config(tmp: Path, model_dir: Path) -> Path:
    path = tmp / "livernode.yaml"
    path.write_text(
        f"model:\n  model_dir: {model_dir}\n"
        "registration:\n  deformable: false\n  affine_iterations: 60\n  resolutions: 2\n"
        "cascade:\n  min_lesion_volume_ml: 1.0\n",
        encoding="utf-8",
    )
    return path


def _process(study: Path, out: Path, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*LIVERNODE, "process", str(study), "--out", str(out), "--config", str(config)],
                          capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parents[2])


def test_process_writes_gated_seg_per_phase_and_sr(tmp_path: Path, model_dir: Path) -> None:
    study = write_phantom_study(tmp_path / "study", seed=11, phases=[Phase.AP, Phase.VP], slices=20,
                                rows=192, columns=192)
    config = _config(tmp_path, model_dir)
    result = _process(study.out_dir / "dicom", tmp_path / "out", config)
    assert result.returncode == 0, result.stderr[-3000:]

    files = sorted((tmp_path / "out").glob("*.dcm"))
    classes = {f.name: pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID for f in files}
    assert classes == {"seg-AP.dcm": SEG_CLASS, "seg-VP.dcm": SEG_CLASS, "sr.dcm": SR_CLASS}
    for phase in (Phase.AP, Phase.VP):  # each SEG is drawn on (and references) its own phase's series
        seg = pydicom.dcmread(tmp_path / "out" / f"seg-{phase.value}.dcm", stop_before_pixels=True)
        assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [study.series_uids[phase]]
    seg_vp = pydicom.dcmread(tmp_path / "out" / "seg-VP.dcm", stop_before_pixels=True)
    assert seg_vp.StudyInstanceUID == pydicom.dcmread(next((study.out_dir / "dicom" / "VP").glob("*.dcm"))).StudyInstanceUID
    findings = json.loads((tmp_path / "out" / "findings.json").read_text())
    assert findings["analysed"] is True
    assert set(findings["phases"]) == {"AP", "VP"}
    assert findings["patient_class"]["base"] and "lesions" in findings

    # deterministic result identity: processing again gives the same UIDs
    again = _process(study.out_dir / "dicom", tmp_path / "out2", config)
    assert again.returncode == 0, again.stderr[-3000:]
    for name in classes:
        first = pydicom.dcmread(tmp_path / "out" / name, stop_before_pixels=True)
        second = pydicom.dcmread(tmp_path / "out2" / name, stop_before_pixels=True)
        assert first.SOPInstanceUID == second.SOPInstanceUID


def test_study_without_venous_phase_gets_a_not_analysed_report(tmp_path: Path, model_dir: Path) -> None:
    study = write_phantom_study(tmp_path / "study", seed=12, phases=[Phase.NC, Phase.AP], slices=12,
                                rows=96, columns=96)
    result = _process(study.out_dir / "dicom", tmp_path / "out", _config(tmp_path, model_dir))
    assert result.returncode == 3, result.stderr[-3000:]
    assert "not analysed" in result.stdout and "venous" in result.stdout
    report = pydicom.dcmread(tmp_path / "out" / "sr-not-analysed.dcm")
    assert report.SOPClassUID == SR_CLASS
    findings = json.loads((tmp_path / "out" / "findings.json").read_text())
    assert findings["analysed"] is False and "venous" in findings["reason"]


def test_corrupt_weights_give_a_clear_error(tmp_path: Path, model_dir: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for item in model_dir.iterdir():
        if item.is_file():
            (broken / item.name).write_bytes(item.read_bytes())
    card = json.loads((broken / "model_card.json").read_text())
    weights = broken / card["whole"]["file"]
    weights.write_bytes(weights.read_bytes()[:1000])
    study = write_phantom_study(tmp_path / "study", seed=13, phases=[Phase.VP], slices=10, rows=64, columns=64)
    result = _process(study.out_dir / "dicom", tmp_path / "out", _config(tmp_path, broken))
    assert result.returncode == 1
    assert weights.name in result.stderr and "sha256" in result.stderr
