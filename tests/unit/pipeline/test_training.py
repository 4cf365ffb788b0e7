"""Training: the phantom case cache, the labelled dataset folder, `livernode train whole|patch|typer`
(with resume and fine-tuning), bfloat16 precision selection. Networks and grids are tiny so a run
takes seconds; the bundled recipe itself is exercised by `livernode train bundled` (docs/models.md)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from node.cli import main
from pipeline.backends import CardBackend
from pipeline.config import BackendConfig, CascadeConfig, ConfigError
from pipeline.model import (BUNDLED_MODEL_DIR, NetworkSpec, Preprocessing, read_model_card, select_device, use_bf16,
                            write_model_card)
from pipeline.model_cascade import cascade_on_prediction
from pipeline.phantom import make_phantom
from pipeline.train import TrainConfig
from pipeline.train_models import ModelShape, TrainingSource, train_patch_model, train_whole_model
from pipeline.training_data import (CASE_PREPROCESSING_FIELDS, PhantomCaseSpec, case_cache_key, generator_sources,
                                    make_cases)
from pipeline.typer_grid import FeatureGrid, study_feature_grid
from pipeline.training_dataset import (
    DatasetError,
    load_cases,
    read_dataset,
    split_by_patient,
    write_dataset_case,
    write_dataset_json,
)
from pipeline.types import LESION_LABELS, NUM_CLASSES, Phase

STRIDES = ((1, 1, 1), (1, 2, 2), (2, 2, 2))
TINY_PREP = Preprocessing(target_spacing_mm=(6.0, 8.0, 8.0), roi_size_voxels=(8, 32, 32), patch_size_voxels=(8, 16, 16))
TINY_SHAPE = ModelShape(
    whole=NetworkSpec(in_channels=8, out_channels=NUM_CLASSES, filters=(4, 8, 16), strides=STRIDES),
    patch=NetworkSpec(in_channels=8, out_channels=len(LESION_LABELS) + 1, filters=(4, 8, 16), strides=STRIDES),
    prep=TINY_PREP,
)


def _tiny_phantom(seed: int, phases=(Phase.NC, Phase.AP, Phase.VP, Phase.DP)):
    return make_phantom(seed, phases=phases, slices=12, slice_thickness_mm=5.0, rows=96, columns=96, workers=1,
                        motion="residual")


@pytest.fixture(scope="module")
def dataset_folder(tmp_path_factory) -> Path:
    """Four studies of three patients; the last one lacks NC and DP."""
    folder = tmp_path_factory.mktemp("dataset")
    combos = [(Phase.NC, Phase.AP, Phase.VP, Phase.DP)] * 3 + [(Phase.AP, Phase.VP)]
    for index, phases in enumerate(combos):
        volumes = _tiny_phantom(500 + index, phases)
        write_dataset_case(folder, f"case{index}", volumes.hu, volumes.labels, volumes.geometry)
    write_dataset_json(folder, patients={"case0": "p0", "case1": "p0", "case2": "p1", "case3": "p2"})
    return folder


def test_case_cache_reads_back_the_same_case(tmp_path: Path) -> None:
    spec = PhantomCaseSpec(seed=601, slices=12, slice_thickness_mm=5.0, matrix=96, feet_first=False)
    made = make_cases([spec], TINY_PREP, cache_dir=tmp_path)[0]
    assert len(list(tmp_path.glob("*.npz"))) == 1
    messages: list[str] = []
    cached = make_cases([spec], TINY_PREP, progress=messages.append, cache_dir=tmp_path)[0]
    assert any("read from the cache" in m for m in messages)
    assert not any("generated" in m for m in messages)
    np.testing.assert_array_equal(made.phases, cached.phases)
    np.testing.assert_array_equal(made.labels, cached.labels)
    assert made.present == cached.present and made.geometry == cached.geometry and made.case_id == cached.case_id
    # another preprocessing is another key: no stale case
    other = make_cases([spec], Preprocessing(target_spacing_mm=(6.0, 6.0, 6.0)), cache_dir=tmp_path)[0]
    assert other.labels.shape != made.labels.shape
    assert len(list(tmp_path.glob("*.npz"))) == 2
    # the ROI and the patch size do not change a case: the cached one is read back
    messages.clear()
    same = make_cases([spec], replace(TINY_PREP, patch_size_voxels=(8, 24, 24), roi_size_voxels=(16, 48, 48)),
                      progress=messages.append, cache_dir=tmp_path)[0]
    assert any("read from the cache" in m for m in messages)
    np.testing.assert_array_equal(same.phases, made.phases)
    assert len(list(tmp_path.glob("*.npz"))) == 2
    # every field a case depends on exists, and a change of the HU normalisation is a new key
    assert all(hasattr(TINY_PREP, name) for name in CASE_PREPROCESSING_FIELDS)
    assert case_cache_key(spec, replace(TINY_PREP, hu_scale=50.0)) != case_cache_key(spec, TINY_PREP)
    # the key follows the generator's sources, not the phantom evaluation or figure modules
    names = {path.name for path in generator_sources()}
    assert {"phantom.py", "phantom_lesions.py", "phantom_render.py"} <= names
    assert not names & {"phantom_evaluation.py", "phantom_figure.py"}


def test_dataset_folder_reads_cases_with_missing_phases(dataset_folder: Path) -> None:
    dataset = read_dataset(dataset_folder)
    assert [c.case_id for c in dataset.cases] == ["case0", "case1", "case2", "case3"]
    assert set(dataset.cases[3].channels) == {Phase.AP, Phase.VP}
    cases = load_cases(dataset.cases, TINY_PREP)
    assert cases[3].present == (Phase.AP, Phase.VP)
    assert not cases[3].phases[0].any() and cases[3].phases[2].any()
    assert set(np.unique(cases[0].labels)) <= set(range(NUM_CLASSES))
    assert (cases[0].labels == 7).any()  # liver survives resampling


def test_validation_split_keeps_patients_together(dataset_folder: Path) -> None:
    dataset = read_dataset(dataset_folder)
    for seed in range(6):
        train, validation = split_by_patient(dataset, 0.34, seed=seed)
        assert train and validation
        assert not {c.patient_id for c in train} & {c.patient_id for c in validation}
        assert len(train) + len(validation) == 4
    assert split_by_patient(dataset, 0.0)[1] == []


def test_dataset_errors_name_file_and_problem(tmp_path: Path, dataset_folder: Path) -> None:
    with pytest.raises(DatasetError, match="no dataset.json"):
        read_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1"}, "labels": {}}))
    with pytest.raises(DatasetError, match="channel_names must map"):
        read_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "VP"}, "labels": {"bg": 0, "x": 1}}))
    with pytest.raises(DatasetError, match="expected livernode's 14 labels"):
        read_dataset(tmp_path)
    data = json.loads((dataset_folder / "dataset.json").read_text())
    (tmp_path / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="no label files"):
        read_dataset(tmp_path)
    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr" / "broken.nii.gz").write_bytes(b"not an image")
    (tmp_path / "imagesTr" / "broken_0002.nii.gz").write_bytes(b"not an image")
    case = read_dataset(tmp_path).cases[0]
    with pytest.raises(DatasetError, match="broken.nii.gz: not a readable image"):
        load_cases([case], TINY_PREP)


def test_train_whole_then_patch_gives_a_loadable_model_and_resumes(tmp_path: Path, dataset_folder: Path) -> None:
    source = TrainingSource(dataset=dataset_folder, validation_fraction=0.34)
    model_dir, work = tmp_path / "model", tmp_path / "work"
    config = TrainConfig(iterations=3, batch_size=1, checkpoint_every=2, validate_every=3, seed=1)
    messages: list[str] = []
    train_whole_model(model_dir, work, source, config, TINY_SHAPE, progress=messages.append)
    card = read_model_card(model_dir)
    assert card.patch is None and card.metrics["whole_iterations"] == 3
    assert card.metrics["whole_training"]["lesion_union_weight"] == config.lesion_union_weight  # how it was made
    assert card.metrics["training_cases"] + card.metrics["validation_cases"] == 4
    assert "validate it on the site's data" in card.intended_use
    assert any("validation at 3" in m for m in messages)

    # resume: a longer run continues from the checkpoint instead of starting again
    messages.clear()
    train_whole_model(model_dir, work, source, TrainConfig(iterations=5, batch_size=1, seed=1), TINY_SHAPE,
                      resume=True, progress=messages.append)
    assert any("resumed from" in m and "at iteration 3" in m for m in messages)
    assert read_model_card(model_dir).metrics["whole_iterations"] == 5
    weights_sha = read_model_card(model_dir).whole.sha256

    # resuming a finished run trains nothing more and still reports its validation
    messages.clear()
    train_whole_model(model_dir, work, source, TrainConfig(iterations=5, batch_size=1, seed=1), TINY_SHAPE,
                      resume=True, progress=messages.append)
    card = read_model_card(model_dir)
    assert card.whole.sha256 == weights_sha and set(card.metrics["validation"]) == {"liver_dice", "lesion_dice", "organ_dice"}
    assert any("validation at 5" in m for m in messages)

    patch_config = TrainConfig(iterations=2, batch_size=4, seed=3)
    train_patch_model(model_dir, work, source, patch_config, TINY_SHAPE.patch, hard_case_studies=1, type_balance=2.0)
    card = read_model_card(model_dir)
    assert card.patch is not None and card.metrics["patch_training_patches"] > 0
    assert card.metrics["patch_training"]["iterations"] == 2
    assert card.metrics["patch_type_balance"] == 2.0

    backend = CardBackend(model_dir, select_device("cpu"))
    volumes = _tiny_phantom(650, (Phase.VP,))
    prediction = backend.predict(volumes.hu, volumes.geometry)
    assert prediction.probabilities.shape[0] == NUM_CLASSES
    np.testing.assert_allclose(prediction.probabilities.astype(np.float32).sum(axis=0), 1.0, atol=2e-2)
    assert backend.patch_model((Phase.VP,)) is not None
    assert backend.lesion_typer() is None

    # the lesion typer, added by the CLI, is loaded and used by the cascade
    assert main(["train", "typer", "--model", str(model_dir), "--data", str(dataset_folder),
                 "--validation-fraction", "0", "--iterations", "30", "--work", str(work)]) == 0
    card = read_model_card(model_dir)
    assert card.typer is not None and card.patch is not None  # UNet_patch kept
    assert card.typer.training["iterations"] == 30 and sum(card.typer.training["rows_by_type"].values()) > 0
    assert card.typer.feature_grid is None  # the working grid's own HU, as the bundled typer
    backend = CardBackend(model_dir, select_device("cpu"))
    assert backend.lesion_typer() is not None and backend.typer_feature_grid() == FeatureGrid.of(card.preprocessing)
    result = cascade_on_prediction(backend.predict(volumes.hu, volumes.geometry), backend, CascadeConfig())
    assert any(d.stage == "lesion typing" for d in result.decisions)
    result = cascade_on_prediction(backend.predict(volumes.hu, volumes.geometry), backend,
                                   CascadeConfig(lesion_typing=False))
    assert not any(d.stage == "lesion typing" for d in result.decisions)
    # --typer-grid study: its features from each study's own volumes, anti-aliased onto the working grid
    assert main(["train", "typer", "--model", str(model_dir), "--data", str(dataset_folder), "--typer-grid",
                 "study", "--validation-fraction", "0", "--iterations", "30", "--work", str(work)]) == 0
    grid = study_feature_grid(card.preprocessing)
    assert read_model_card(model_dir).typer.feature_grid == grid.to_json() and grid.from_study and grid.anti_alias
    backend = CardBackend(model_dir, select_device("cpu"))
    assert backend.typer_feature_grid() == grid
    result = cascade_on_prediction(backend.predict(volumes.hu, volumes.geometry), backend, CascadeConfig())
    assert any(d.stage == "lesion typing" for d in result.decisions)


def test_fine_tuning_starts_from_the_given_model(tmp_path: Path, dataset_folder: Path) -> None:
    source = TrainingSource(dataset=dataset_folder, validation_fraction=0.0)
    base = tmp_path / "base"
    train_whole_model(base, tmp_path / "w1", source, TrainConfig(iterations=1, batch_size=1), TINY_SHAPE)
    # the init model's lesion typer (mined on its own network's false positives) is not carried
    # over: the new folder names no typer and loads without one
    bundled_card = read_model_card(BUNDLED_MODEL_DIR)
    (base / bundled_card.typer.file).write_bytes((BUNDLED_MODEL_DIR / bundled_card.typer.file).read_bytes())
    write_model_card(base, replace(read_model_card(base), typer=bundled_card.typer))
    assert CardBackend(base, torch.device("cpu")).lesion_typer() is not None
    tuned = tmp_path / "tuned"
    # the init model's preprocessing wins over the shape passed in
    other_shape = ModelShape(TINY_SHAPE.whole, TINY_SHAPE.patch, Preprocessing())
    train_whole_model(tuned, tmp_path / "w2", source, TrainConfig(iterations=1, batch_size=1, learning_rate=0.0),
                      other_shape, init_model=base)
    assert read_model_card(tuned).preprocessing == TINY_PREP
    assert read_model_card(tuned).typer is None and not (tuned / bundled_card.typer.file).exists()
    assert CardBackend(tuned, torch.device("cpu")).lesion_typer() is None
    # --anti-alias on a fine-tuned model changes only that setting of the init model's preprocessing
    # (trained with the per-lesion "blob" loss term, which the card records)
    smoothed = tmp_path / "smoothed"
    train_whole_model(smoothed, tmp_path / "w3", source, TrainConfig(iterations=2, batch_size=1, lesion_blob_weight=1.0),
                      other_shape, init_model=base, anti_alias=True)
    assert read_model_card(smoothed).preprocessing == replace(TINY_PREP, anti_alias=True)
    card = json.loads((smoothed / "model_card.json").read_text(encoding="utf-8"))
    assert card["metrics"]["whole_training"]["lesion_blob_weight"] == 1.0
    # a fine-tune onto another working grid changes only the spacing
    finer = tmp_path / "finer"
    train_whole_model(finer, tmp_path / "w4", source, TrainConfig(iterations=1, batch_size=1), other_shape,
                      init_model=base, target_spacing_mm=(4.0, 2.0, 2.0))
    assert read_model_card(finer).preprocessing == replace(TINY_PREP, target_spacing_mm=(4.0, 2.0, 2.0))
    with pytest.raises(ValueError, match="three positive"):
        train_whole_model(tmp_path / "bad", tmp_path / "w5", source, TrainConfig(iterations=1, batch_size=1),
                          other_shape, init_model=base, target_spacing_mm=(4.0, 0.0, 2.0))
    first = torch.load(base / "unet_whole.pt")
    second = torch.load(tuned / "unet_whole.pt")
    # learning rate 0: the fine-tuned weights are the initial ones
    for key in first:
        if first[key].is_floating_point():
            torch.testing.assert_close(first[key], second[key])


def test_train_cli_reports_bad_arguments_clearly(tmp_path: Path, capsys) -> None:
    assert main(["train", "whole", "--out", str(tmp_path / "m")]) == 1
    assert "exactly one of --data" in capsys.readouterr().err
    assert main(["train", "whole", "--data", str(tmp_path), "--out", str(tmp_path / "m")]) == 1
    assert "no dataset.json" in capsys.readouterr().err
    assert main(["train", "patch", "--phantoms", "2", "--model", str(tmp_path)]) == 1
    assert "no model_card.json" in capsys.readouterr().err
    assert main(["train", "typer", "--phantoms", "2"]) == 1
    assert "--model MODEL_FOLDER is required" in capsys.readouterr().err
    assert main(["train", "typer", "--data", str(tmp_path), "--type-balanced", "--model", str(tmp_path)]) == 1
    assert "does not apply to --data" in capsys.readouterr().err
    assert main(["train", "whole", "--phantoms", "2", "--out", str(tmp_path / "m"), "--spacing", "4,0,2"]) == 1
    assert "three positive millimetre values" in capsys.readouterr().err
    assert main(["train", "whole", "--phantoms", "2", "--out", str(tmp_path / "m"), "--spacing", "4,a,2"]) == 1
    assert "--spacing takes three positive millimetre values" in capsys.readouterr().err
    assert main(["train", "patch", "--phantoms", "2", "--model", str(tmp_path), "--spacing", "4,2,2"]) == 1
    assert "--spacing applies to 'whole' only" in capsys.readouterr().err
    assert main(["train", "whole", "--phantoms", "2", "--out", str(tmp_path / "m"), "--miner-config", "x.yaml"]) == 1
    assert "--miner-config applies to 'typer' only" in capsys.readouterr().err
    assert main(["train", "patch", "--phantoms", "2", "--model", str(tmp_path), "--organ-weight", "4"]) == 1
    assert "--organ-weight applies to 'whole' only" in capsys.readouterr().err
    assert main(["train", "typer", "--phantoms", "2", "--model", str(tmp_path), "--blob-weight", "1"]) == 1
    assert "--blob-weight applies to 'whole' only" in capsys.readouterr().err
    assert main(["train", "typer", "--phantoms", "2", "--model", str(tmp_path), "--seed", "4"]) == 1
    assert "--seed applies to 'whole' and 'patch' only" in capsys.readouterr().err
    assert main(["train", "whole", "--data", str(tmp_path), "--out", str(tmp_path / "m"),
                 "--small-lesion-studies", "4"]) == 1
    assert "--small-lesion-studies adds phantom studies" in capsys.readouterr().err
    assert main(["train", "whole", "--phantoms", "2", "--out", str(tmp_path / "m"), "--small-lesion-studies", "-1"]) == 1
    assert "--small-lesion-studies takes a count >= 0" in capsys.readouterr().err
    assert main(["train", "bundled", "--small-lesion-studies", "4", "--out", str(tmp_path / "m")]) == 1
    assert "--small-lesion-studies applies to 'whole', 'patch' and 'typer'" in capsys.readouterr().err
    typer = ["train", "typer", "--phantoms", "2", "--model", str(BUNDLED_MODEL_DIR), "--work", str(tmp_path / "w")]
    assert main(typer + ["--typer-grid", "2,0,1.5"]) == 1
    assert "--typer-grid takes 'study' or three positive millimetre values Z,Y,X" in capsys.readouterr().err
    assert main(["train", "whole", "--phantoms", "2", "--out", str(tmp_path / "m"), "--typer-grid", "study"]) == 1
    assert "--typer-grid applies to 'typer' only" in capsys.readouterr().err
    assert main(typer + ["--miner-config", str(tmp_path / "absent.yaml")]) == 1
    assert "absent.yaml" in capsys.readouterr().err
    config = tmp_path / "nnunet.yaml"
    config.write_text(f"model:\n  kind: nnunet\n  model_dir: {tmp_path / 'no-model'}\n", encoding="utf-8")
    assert main(typer + ["--miner-config", str(config)]) == 1  # fails before any phantom is made
    assert "no-model" in capsys.readouterr().err and not (tmp_path / "w").exists()


def test_precision_selection() -> None:
    cpu = torch.device("cpu")
    assert use_bf16(cpu, "float32") is False
    assert use_bf16(cpu, "bfloat16") is True
    assert use_bf16(cpu, "auto") == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    with pytest.raises(ConfigError, match="precision"):
        BackendConfig(precision="half")


def test_lesion_centred_crops_mark_one_voxel_per_lesion_inside_it() -> None:
    from pipeline.train import TrainingCase, _sample_dict, lesion_centres
    from pipeline.types import VolumeGeometry

    lesion = np.zeros((12, 24, 24), dtype=bool)
    lesion[2:8, 2:8, 2:8] = True  # a large lesion
    lesion[10, 20, 20] = True  # a one-voxel lesion
    centres = lesion_centres(lesion)
    assert centres.sum() == 2
    assert centres[10, 20, 20] and (centres & lesion).sum() == 2
    z, y, x = np.argwhere(centres & (np.arange(12)[:, None, None] < 9))[0]
    assert all(4 <= v <= 5 for v in (z, y, x))  # the deepest voxel, not an edge
    labels = np.where(lesion, 2, 7).astype(np.uint8)
    geometry = VolumeGeometry(shape=labels.shape, spacing_mm=(4.0, 3.0, 3.0), origin_mm=(0.0, 0.0, 0.0))
    case = TrainingCase("c", np.zeros((4,) + labels.shape, dtype=np.float16), (Phase.VP,), labels, geometry)
    assert _sample_dict(case)["lesion"].sum() == lesion.sum()
    assert _sample_dict(case, "lesions")["lesion"].sum() == 2
    with pytest.raises(ValueError, match="crop_centres"):
        TrainConfig(crop_centres="studies")


def test_anti_aliased_resampling_averages_noise_only_along_downsampled_axes() -> None:
    from pipeline.inference import anti_alias_sigmas, resample_volume

    assert anti_alias_sigmas((40, 256, 256), (50, 128, 64)) == (0.0, 0.5, 1.5)
    noise = np.random.default_rng(0).normal(100.0, 30.0, (40, 256, 256)).astype(np.float32)
    plain = resample_volume(noise, (40, 64, 64))
    smooth = resample_volume(noise, (40, 64, 64), anti_alias=True)
    assert abs(smooth.mean() - 100.0) < 0.5 and abs(plain.mean() - 100.0) < 0.5
    assert smooth.std() < 0.5 * plain.std()  # about the mean of the 16 scan voxels a working voxel covers
    # nothing is smoothed when no axis is downsampled, and label maps are never smoothed
    np.testing.assert_array_equal(resample_volume(noise[:4, :8, :8], (8, 16, 16), anti_alias=True),
                                  resample_volume(noise[:4, :8, :8], (8, 16, 16)))
    labels = (noise > 100).astype(np.uint8)
    np.testing.assert_array_equal(resample_volume(labels, (40, 64, 64), mode="nearest", anti_alias=True),
                                  resample_volume(labels, (40, 64, 64), mode="nearest"))


@pytest.mark.parametrize("source_shape, shape", [((37, 90, 70), (9, 40, 70)), ((2, 12, 50, 61), (20, 17, 13))])
def test_anti_aliased_resampling_is_gaussian_filter_then_trilinear(
    source_shape: tuple[int, ...], shape: tuple[int, int, int]
) -> None:
    """The axis-by-axis matrix products give what smoothing the whole volume, then interpolating, gives."""
    import torch
    import torch.nn.functional as F
    from scipy import ndimage

    from pipeline.inference import anti_alias_sigmas, resample_volume

    volume = np.random.default_rng(1).normal(80.0, 40.0, source_shape).astype(np.float32)
    sigmas = (0.0,) * (volume.ndim - 3) + anti_alias_sigmas(volume.shape, shape)
    smoothed = torch.from_numpy(ndimage.gaussian_filter(volume, sigmas, mode="nearest"))
    batch = smoothed[None, None] if volume.ndim == 3 else smoothed[None]
    expected = F.interpolate(batch, size=shape, mode="trilinear", align_corners=False)[0]
    expected = (expected[0] if volume.ndim == 3 else expected).numpy()
    got = resample_volume(volume, shape, anti_alias=True)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_model_cards_without_anti_alias_read_as_before(tmp_path: Path) -> None:
    data = json.loads((BUNDLED_MODEL_DIR / "model_card.json").read_text(encoding="utf-8"))["preprocessing"]
    assert data["anti_alias"] is True  # the bundled fine-grid model (0.2.0) is anti-aliased
    data.pop("anti_alias")  # a card written before the setting existed
    assert Preprocessing.from_json(data).anti_alias is False
    assert Preprocessing.from_json({**data, "anti_alias": True}).anti_alias is True


def test_train_whole_cli_records_anti_aliasing_and_trains_on_lesion_centred_crops(
        tmp_path: Path, dataset_folder: Path, capsys) -> None:
    out = tmp_path / "m"
    assert main(["train", "whole", "--data", str(dataset_folder), "--out", str(out), "--work", str(tmp_path / "w"),
                 "--iterations", "1", "--batch-size", "1", "--validation-fraction", "0",
                 "--crop-centres", "lesions", "--anti-alias", "--spacing", "3.5,2.5,2.5",
                 "--learning-rate", "5e-4", "--seed", "11"]) == 0
    card = read_model_card(out)
    assert card.preprocessing.anti_alias is True
    assert card.preprocessing.target_spacing_mm == (3.5, 2.5, 2.5)
    assert card.metrics["whole_training"]["crop_centres"] == "lesions"
    assert card.metrics["whole_training"]["learning_rate"] == 5e-4
    assert card.metrics["whole_training"]["seed"] == 11


class _AnswerPredictor:
    """Stands in for UNet_whole in `validate`: answers a fixed label map as one-hot probabilities."""

    def __init__(self, answer: np.ndarray) -> None:
        self.answer = answer
        self.prep = read_model_card(BUNDLED_MODEL_DIR).preprocessing

    def predict(self, model_input) -> np.ndarray:
        return np.eye(NUM_CLASSES, dtype=np.float32)[self.answer].transpose(3, 0, 1, 2)


def test_validation_scores_the_organs_and_vessels_too() -> None:
    from pipeline.train import TrainingCase, validate
    from pipeline.types import Label, VolumeGeometry

    labels = np.full((6, 16, 16), int(Label.LIVER), dtype=np.uint8)
    labels[:, :4, :8] = Label.SPLEEN
    labels[:, 12:, :8] = Label.PANCREAS
    labels[2:4, 6:9, 6:9] = Label.META
    geometry = VolumeGeometry(shape=labels.shape, spacing_mm=(4.0, 3.0, 3.0), origin_mm=(0.0, 0.0, 0.0))
    case = TrainingCase("c", np.zeros((4,) + labels.shape, dtype=np.float16), (Phase.VP,), labels, geometry)
    assert validate(_AnswerPredictor(labels), [case]) == {"liver_dice": 1.0, "lesion_dice": 1.0, "organ_dice": 1.0}
    no_pancreas = np.where(labels == Label.PANCREAS, int(Label.LIVER), labels).astype(np.uint8)
    scores = validate(_AnswerPredictor(no_pancreas), [case])
    assert scores["organ_dice"] == pytest.approx(0.5)  # spleen 1, pancreas 0
    assert scores["lesion_dice"] == 1.0
