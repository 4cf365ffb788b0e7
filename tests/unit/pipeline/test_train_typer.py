"""Typer training rows mined from UNet_whole's detections: false positives as "not a lesion" and,
when asked, true lesions as UNet_whole outlines them, with the type of the true lesion."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import CascadeConfig
from pipeline.inference import ModelInput
from pipeline.lesion_typer import NOT_A_LESION, TyperTraining, feature_rows
from pipeline.model import Preprocessing
from pipeline.seg2det import seg2det
from pipeline.train import TrainingCase, case_model_input
from pipeline.train_typer import TyperStudy, case_detection_rows, case_truth_rows, detection_rows, fit_typer
from pipeline.typer_grid import FeatureGrid, StudyHU, hu_on_grid, to_feature_grid
from pipeline.types import NUM_CLASSES, Label, LesionType, Phase, PHASE_ORDER, VolumeGeometry

PREP = Preprocessing(target_spacing_mm=(4.0, 3.0, 3.0))
GEOMETRY = VolumeGeometry((16, 32, 32), (4.0, 3.0, 3.0), (0.0, 0.0, 0.0))


def two_lesion_case() -> tuple[TrainingCase, np.ndarray]:
    """A liver with a true metastasis and a true cyst; the 'prediction' finds the metastasis a
    voxel smaller all round, misses the cyst and adds a false lesion."""
    labels = np.zeros(GEOMETRY.shape, np.uint8)
    labels[2:14, 4:28, 4:28] = Label.LIVER
    labels[4:9, 6:13, 6:13] = Label.META
    labels[10:13, 20:25, 20:25] = Label.CYST
    predicted = np.where(labels > 0, int(Label.LIVER), 0).astype(np.uint8)
    predicted[5:8, 7:12, 7:12] = Label.HCC  # the metastasis, mistyped and smaller
    predicted[10:13, 8:13, 18:23] = Label.META  # nothing there
    phases = np.zeros((len(PHASE_ORDER),) + GEOMETRY.shape, np.float16)
    rng = np.random.default_rng(0)
    phases[PHASE_ORDER.index(Phase.VP)] = rng.normal(0.0, 0.1, GEOMETRY.shape)
    return TrainingCase("case", phases, (Phase.VP,), labels, GEOMETRY), predicted


class LabelPredictor:
    """Stands in for UNet_whole: softmax-like probabilities that put a label map's class first."""

    def __init__(self, predicted: np.ndarray) -> None:
        self.predicted = predicted

    def predict(self, model_input: ModelInput) -> np.ndarray:
        probabilities = np.full((NUM_CLASSES,) + self.predicted.shape, 0.01, np.float32)
        np.put_along_axis(probabilities, self.predicted[None].astype(np.int64), 0.87, axis=0)
        return probabilities.astype(np.float16)


def test_detection_rows_give_false_positives_and_on_request_found_lesions_with_their_true_type() -> None:
    case, predicted = two_lesion_case()
    config = CascadeConfig(min_lesion_volume_ml=0.1, keep_largest_liver_region=False)
    sensitivities = len(config.sensitivity_factors)
    features, classes = detection_rows([case], PREP, LabelPredictor(predicted), config)
    assert classes.tolist() == [NOT_A_LESION] * sensitivities  # the false lesion, once per sensitivity
    assert features.shape[0] == sensitivities
    features, classes = detection_rows([case], PREP, LabelPredictor(predicted), config, found_lesions=True)
    assert sorted(classes.tolist()) == sorted([NOT_A_LESION, int(LesionType.META)] * sensitivities)
    assert features.shape == (2 * sensitivities, features.shape[1])  # the missed cyst gives no row


STUDY_GRID = FeatureGrid((2.0, 1.5, 1.5), anti_alias=True, from_study=True)


def with_study(case: TrainingCase, seed: int = 1) -> TyperStudy:
    """The case with 'its own' volumes: the same extent at 2 x 1.5 x 1.5 mm, VP HU of its own."""
    geometry = VolumeGeometry((32, 64, 64), (2.0, 1.5, 1.5), (0.0, 0.0, 0.0))
    vp = np.random.default_rng(seed).normal(100.0, 20.0, geometry.shape).astype(np.float32)
    return TyperStudy(case, StudyHU({Phase.VP: vp}, geometry))


def test_a_study_grid_typer_learns_from_rows_read_on_the_study_as_the_cascade_reads_them(tmp_path) -> None:
    case, predicted = two_lesion_case()
    study = with_study(case)
    features, labels = case_truth_rows(study, PREP, STUDY_GRID)
    truth = seg2det(case.labels, case.geometry, min_volume_ml=0.5)
    assert sorted(set(labels.tolist())) == sorted({int(lesion.lesion_type) for lesion in truth})
    work_hu = case_model_input(case, PREP).hu
    moved = to_feature_grid(truth, work_hu, case.labels, case.geometry, STUDY_GRID,
                            moved_hu=hu_on_grid(study.study.hu, study.study.geometry, STUDY_GRID))
    # each lesion's first row is the lesion as labelled, read on the study's HU moved onto the grid
    expected = feature_rows(moved.lesions, moved.hu, moved.labels, moved.geometry)
    assert all(any(np.array_equal(row, got) for got in features) for row in expected)
    other, _ = case_truth_rows(with_study(case, seed=2), PREP, STUDY_GRID)
    assert not np.array_equal(features, other)  # other study HU, other rows: the working grid's are not read
    with pytest.raises(ValueError, match="study's own volumes were not given"):
        case_truth_rows(TyperStudy(case), PREP, STUDY_GRID)
    config = CascadeConfig(min_lesion_volume_ml=0.1, keep_largest_liver_region=False)
    rows, classes = case_detection_rows(study, PREP, LabelPredictor(predicted), config, grid=STUDY_GRID)
    assert classes.tolist() == [NOT_A_LESION] * len(config.sensitivity_factors)
    assert rows.shape == (len(classes), features.shape[1])
    entry = fit_typer(tmp_path, [study, with_study(case, seed=3)], PREP, "two studies", TyperTraining(iterations=5),
                      predictor=LabelPredictor(predicted), cascade=config, feature_grid=STUDY_GRID)
    assert entry.feature_grid == STUDY_GRID.to_json() and entry.training["studies"] == 2
    assert entry.training["rows_by_type"]["not a lesion"] == 2 * len(config.sensitivity_factors)
