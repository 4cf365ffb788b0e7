"""Typer training rows mined from UNet_whole's detections: false positives as "not a lesion" and,
when asked, true lesions as UNet_whole outlines them, with the type of the true lesion."""

from __future__ import annotations

import numpy as np

from pipeline.config import CascadeConfig
from pipeline.inference import ModelInput
from pipeline.lesion_typer import NOT_A_LESION
from pipeline.model import Preprocessing
from pipeline.train import TrainingCase
from pipeline.train_typer import detection_rows
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
