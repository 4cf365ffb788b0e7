"""The nnU-Net v2 backend against a real nnunetv2 install: a tiny trained-model folder written as
nnU-Net writes one (tests/support/nnunet_folder.py) is loaded and predicts, its input matches what
nnU-Net reads from a dataset's NIfTI files, broken folders fail naming the file, and the cascade
runs on its prediction, with and without a lesion typer from ``model.typer_dir``; the typer can be
trained on its own false positives (``livernode train typer --miner-config``)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("nnunetv2")

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO  # noqa: E402
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: E402

from pipeline.backends import BackendConfig, MissingPhasesError, NnUNetBackend, load_backend  # noqa: E402
from pipeline.config import CascadeConfig  # noqa: E402
from pipeline.errors import InputError  # noqa: E402
from pipeline.lesion_features import feature_count  # noqa: E402
from pipeline.lesion_typer import TYPER_CLASSES  # noqa: E402
from pipeline.model import BUNDLED_MODEL_DIR, ModelLoadError, read_model_card, sha256_of  # noqa: E402
from pipeline.model_cascade import cascade_on_prediction  # noqa: E402
from pipeline.phantom import make_phantom  # noqa: E402
from pipeline.sitk_geometry import to_sitk  # noqa: E402
from pipeline.train import TrainingCase  # noqa: E402
from pipeline.typer_grid import FeatureGrid  # noqa: E402
from pipeline.types import NUM_CLASSES, PHASE_ORDER, LesionType, Phase, VolumeGeometry  # noqa: E402
from tests.support.nnunet_folder import TinyNnUNet, write_nnunet_folder  # noqa: E402

# anisotropic and off the plans' spacing (3, 2, 2), so nnU-Net resamples both ways
GEOMETRY = VolumeGeometry(shape=(12, 40, 40), spacing_mm=(2.5, 1.0, 1.0), origin_mm=(-20.0, -20.0, 100.0))
CHECKPOINT = Path("fold_0") / "checkpoint_final.pth"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Channels AP and VP, livernode's 14 labels, folds 0 and 1."""
    return write_nnunet_folder(tmp_path_factory.mktemp("nnunet") / "nnUNetTrainer__nnUNetPlans__3d_fullres",
                               folds=(0, 1))


@pytest.fixture
def own_copy(model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the folder that a test may break."""
    return Path(shutil.copytree(model_dir, tmp_path / model_dir.name))


def _load(model_dir: Path, **settings) -> NnUNetBackend:
    backend = load_backend(BackendConfig(kind="nnunet", model_dir=str(model_dir), device="cpu", **settings),
                           model_dir)
    assert isinstance(backend, NnUNetBackend)
    return backend


def _hu(phases: tuple[Phase, ...], geometry: VolumeGeometry = GEOMETRY) -> dict[Phase, np.ndarray]:
    """Integer HU (liver-like tissue in air) so a NIfTI round trip is exact."""
    rng = np.random.default_rng(3)
    volumes = {}
    for offset, phase in enumerate(phases):
        hu = np.full(geometry.shape, -1000.0, dtype=np.float32)
        hu[2:-2, 5:-5, 8:-3] = np.round(rng.normal(60 + 40 * offset, 25, hu[2:-2, 5:-5, 8:-3].shape))
        volumes[phase] = hu
    return volumes


def test_loads_and_predicts_probabilities_on_the_study_grid(model_dir: Path) -> None:
    backend = _load(model_dir)
    assert backend.channel_phases == (Phase.AP, Phase.VP)
    prediction = backend.predict(_hu((Phase.AP, Phase.VP)), GEOMETRY)
    probabilities = prediction.probabilities
    assert probabilities.shape == (NUM_CLASSES, *GEOMETRY.shape) and probabilities.dtype == np.float16
    np.testing.assert_allclose(probabilities.astype(np.float32).sum(axis=0), 1.0, atol=2e-3)
    assert prediction.model_input.geometry == GEOMETRY and prediction.model_input.present == (Phase.AP, Phase.VP)
    assert backend.identity.weights_sha256 == sha256_of(model_dir / CHECKPOINT)
    assert backend.identity.version == backend.identity.weights_sha256[:12]
    assert backend.patch_model((Phase.AP, Phase.VP)) is None and backend.lesion_typer() is None
    assert backend.typer_feature_grid() is None


def test_extra_phases_are_ignored_and_folds_are_ensembled(model_dir: Path) -> None:
    both = _load(model_dir, nnunet_folds=(0, 1))
    only_first = _load(model_dir)
    hu = _hu((Phase.NC, Phase.AP, Phase.VP, Phase.DP))
    ensemble = both.predict(hu, GEOMETRY)
    assert ensemble.model_input.present == (Phase.AP, Phase.VP)
    assert both.identity == only_first.identity  # the first fold's checkpoint names the model
    assert not np.allclose(ensemble.probabilities, only_first.predict(hu, GEOMETRY).probabilities, atol=1e-3)


def test_input_is_what_nnunet_reads_from_the_dataset_files(model_dir: Path, tmp_path: Path) -> None:
    """Arrays (z, y, x) with spacing (z, y, x): the same image and spacing nnU-Net's SimpleITK
    reader gives for NIfTI files of the study (as ``livernode train``'s dataset folders hold), so
    the prediction equals nnU-Net's own on those files."""
    hu = _hu((Phase.AP, Phase.VP))
    files = []
    for channel, phase in enumerate((Phase.AP, Phase.VP)):
        files.append(str(tmp_path / f"case_{channel:04d}.nii.gz"))
        sitk.WriteImage(to_sitk(hu[phase], GEOMETRY), files[-1])
    image, properties = SimpleITKIO().read_images(files)
    assert list(properties["spacing"]) == pytest.approx(list(GEOMETRY.spacing_mm))
    np.testing.assert_array_equal(image, np.stack([hu[Phase.AP], hu[Phase.VP]]))

    reference = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
    reference.initialize_from_trained_model_folder(str(model_dir), use_folds=(0,))
    _, expected = reference.predict_single_npy_array(image, {"spacing": properties["spacing"]}, None, None, True)
    ours = _load(model_dir).predict(hu, GEOMETRY).probabilities
    np.testing.assert_allclose(ours.astype(np.float32), expected, atol=2e-3)


def test_a_missing_phase_names_the_phases_the_model_needs(model_dir: Path) -> None:
    with pytest.raises(MissingPhasesError) as caught:
        _load(model_dir).predict(_hu((Phase.VP,)), GEOMETRY)
    message = str(caught.value)
    assert "['AP', 'VP']" in message and "missing ['AP']" in message
    # the study is reported as not analysed; callers that catch ModelLoadError still do
    assert isinstance(caught.value, InputError) and isinstance(caught.value, ModelLoadError)


def test_a_truncated_checkpoint_is_named(own_copy: Path) -> None:
    checkpoint = own_copy / CHECKPOINT
    checkpoint.write_bytes(checkpoint.read_bytes()[:4000])
    with pytest.raises(ModelLoadError, match="truncated or corrupt") as caught:
        _load(own_copy)
    assert str(checkpoint) in str(caught.value) and "network_weights" in str(caught.value)


def test_a_checkpoint_that_is_not_nnunets_is_named(own_copy: Path) -> None:
    checkpoint = own_copy / CHECKPOINT
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    torch.save(state, checkpoint)  # a bare state dict: the weights without nnU-Net's keys
    with pytest.raises(ModelLoadError, match=r"fold_0/checkpoint_final\.pth \(KeyError"):
        _load(own_copy)


def test_missing_files_are_named(own_copy: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"fold_2/checkpoint_final\.pth: checkpoint missing"):
        _load(own_copy, nnunet_folds=(0, 2))
    (own_copy / "plans.json").unlink()
    with pytest.raises(ModelLoadError, match="no plans.json"):
        _load(own_copy)
    (own_copy / "dataset.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="dataset.json: not valid JSON"):
        _load(own_copy)


def test_weights_for_other_plans_are_named(own_copy: Path, tmp_path: Path) -> None:
    other = write_nnunet_folder(tmp_path / "other", replace(TinyNnUNet(), features=(4, 8, 8)))
    shutil.copy(other / CHECKPOINT, own_copy / CHECKPOINT)
    with pytest.raises(ModelLoadError, match=r"could not build the model from plans\.json and fold_0"):
        _load(own_copy)


def test_channels_must_be_phases_and_labels_livernodes(own_copy: Path) -> None:
    dataset_path = own_copy / "dataset.json"
    dataset = json.loads(dataset_path.read_text())
    dataset_path.write_text(json.dumps({**dataset, "channel_names": {"0": "CT", "1": "VP"}}))
    with pytest.raises(ModelLoadError, match=r"channel_names must be phases .* \['CT', 'VP'\]"):
        _load(own_copy)
    labels = {name: value for name, value in dataset["labels"].items() if value != 13}
    dataset_path.write_text(json.dumps({**dataset, "labels": labels}))
    with pytest.raises(ModelLoadError, match="expected 14 labels numbered 0-13"):
        _load(own_copy)


@pytest.fixture(scope="module")
def phantom_prediction(tmp_path_factory: pytest.TempPathFactory):
    """A small arterial + venous phantom study with lesions, and the prediction of a model whose
    plans are at about the phantom's spacing (so the sliding window stays short)."""
    phantom = make_phantom(651, phases=(Phase.AP, Phase.VP), slices=12, slice_thickness_mm=5.0, rows=96,
                           columns=96, workers=1, motion="residual")
    model_dir = write_nnunet_folder(tmp_path_factory.mktemp("coarse") / "model", TinyNnUNet(spacing_mm=(5.0, 6.0, 6.0)))
    prediction = _load(model_dir).predict(phantom.hu, phantom.geometry)
    return model_dir, phantom, prediction


def test_the_cascade_runs_on_its_prediction(phantom_prediction) -> None:
    model_dir, phantom, prediction = phantom_prediction
    backend = _load(model_dir)
    result = cascade_on_prediction(prediction, backend, CascadeConfig())
    assert result.base_labels.shape == phantom.geometry.shape
    assert result.base, "an untrained network still labels some lesion voxels"
    assert any(d.stage == "reclassify" and d.outcome == "skipped" for d in result.decisions)  # no UNet_patch
    assert not any(d.stage == "lesion typing" for d in result.decisions)
    findings = result.to_findings("1.2.3", "1.2.3.4", backend.identity, prediction.model_input.present)
    assert findings.model == backend.identity and findings.phases_present == (Phase.AP, Phase.VP)


def test_typer_dir_gives_the_nnunet_backend_a_lesion_typer(phantom_prediction) -> None:
    model_dir, _, prediction = phantom_prediction
    backend = _load(model_dir, typer_dir=str(BUNDLED_MODEL_DIR))
    typer = backend.lesion_typer()
    assert typer is not None
    # its features are computed on the bundled working grid, not on the study grid nnU-Net answers on
    assert backend.typer_feature_grid() == FeatureGrid.of(read_model_card(BUNDLED_MODEL_DIR).preprocessing)
    assert not backend.typer_feature_grid().holds(prediction.model_input.geometry)
    probabilities = typer(np.zeros((2, feature_count()), dtype=np.float32))
    assert probabilities.shape == (2, TYPER_CLASSES)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    result = cascade_on_prediction(prediction, backend, CascadeConfig())
    typing = [d for d in result.decisions if d.stage == "lesion typing"]
    assert [d.subject for d in typing] == ["base sensitivity", "high sensitivity"]
    assert typing[0].outcome.startswith(f"typed {len(result.base_recls)}, dropped ")
    assert all(isinstance(lesion.lesion_type, LesionType) for lesion in result.base_recls)
    off = cascade_on_prediction(prediction, backend, CascadeConfig(lesion_typing=False))
    assert not any(d.stage == "lesion typing" for d in off.decisions)


def test_typer_dir_problems_are_named(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="typer folder not found"):
        _load(model_dir, typer_dir=str(tmp_path / "absent"))
    card = json.loads((BUNDLED_MODEL_DIR / "model_card.json").read_text())
    no_typer = tmp_path / "no-typer"
    no_typer.mkdir()
    (no_typer / "model_card.json").write_text(json.dumps({k: v for k, v in card.items() if k != "typer"}))
    with pytest.raises(ModelLoadError, match=r"no-typer/model_card\.json: no 'typer' entry"):
        _load(model_dir, typer_dir=str(no_typer))
    corrupt = Path(shutil.copytree(BUNDLED_MODEL_DIR, tmp_path / "corrupt",
                                   ignore=shutil.ignore_patterns("unet_*", "*.md")))
    typer_file = corrupt / card["typer"]["file"]
    typer_file.write_bytes(typer_file.read_bytes()[:300])
    with pytest.raises(ModelLoadError, match="sha256") as caught:
        _load(model_dir, typer_dir=str(corrupt))
    assert str(typer_file) in str(caught.value)
    typer_file.write_bytes(b"not a typer")
    card["typer"]["sha256"] = sha256_of(typer_file)
    (corrupt / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="not a readable PyTorch weights file") as caught:
        _load(model_dir, typer_dir=str(corrupt))
    assert str(typer_file) in str(caught.value)


def _training_case(phantom, present: tuple[Phase, ...], prep) -> TrainingCase:
    """The phantom as a typer training case on its own grid (phases normalised as prepared input is)."""
    phases = np.zeros((len(PHASE_ORDER),) + phantom.geometry.shape, np.float16)
    for phase in present:
        clipped = np.clip(phantom.hu[phase], prep.hu_min, prep.hu_max)
        phases[PHASE_ORDER.index(phase)] = (clipped - prep.hu_center) / prep.hu_scale
    return TrainingCase(f"phantom-{'+'.join(p.value for p in present)}", phases, present, phantom.labels,
                        phantom.geometry)


def test_train_typer_mines_the_nnunet_models_own_false_positives(phantom_prediction, tmp_path: Path) -> None:
    from pipeline.lesion_typer import TyperTraining
    from pipeline.model import Preprocessing
    from pipeline.train_typer import BackendMiner, TyperStudy, fit_typer

    model_dir, phantom, _ = phantom_prediction
    prep = Preprocessing(target_spacing_mm=phantom.geometry.spacing_mm)
    cases = [TyperStudy(_training_case(phantom, (Phase.AP, Phase.VP), prep)),
             TyperStudy(_training_case(phantom, (Phase.VP,), prep))]
    messages: list[str] = []
    entry = fit_typer(tmp_path, cases, prep, "one phantom", TyperTraining(iterations=20), messages.append,
                      BackendMiner(_load(model_dir), "nnU-Net test model"), CascadeConfig())
    # the untrained network's lesion voxels away from the true lesions are its false positives
    assert entry.training["rows_by_type"]["not a lesion"] > 0
    assert entry.training["false_positives_from"] == "nnU-Net test model"
    assert any("study 2 skipped" in m and "missing ['AP']" in m for m in messages)  # VP alone: not this model's input
    assert (tmp_path / entry.file).is_file()


def test_a_backend_that_answers_on_another_grid_cannot_mine(phantom_prediction) -> None:
    from pipeline.inference import ModelInput
    from pipeline.train_typer import BackendMiner

    model_dir, phantom, prediction = phantom_prediction

    class CoarseBackend:
        identity = _load(model_dir).identity

        def predict(self, hu_by_phase, geometry):
            return replace(prediction, probabilities=prediction.probabilities[:, ::2])

    model_input = ModelInput(image=np.zeros((1,) + phantom.geometry.shape, np.float32), hu=phantom.hu,
                             geometry=phantom.geometry, present=(Phase.AP, Phase.VP))
    with pytest.raises(ValueError, match="not on the typer's working grid"):
        BackendMiner(CoarseBackend()).predict(model_input)
