"""The cascade on a model's prediction: probabilities, HU and patch channels on the model's working
grid, with UNet_patch for reclassification and the patch size the model was trained with."""

from __future__ import annotations

from dataclasses import replace

from pipeline.backends import Prediction, SegmentationBackend
from pipeline.cascade import CascadeResult, run_cascade
from pipeline.config import CascadeConfig
from pipeline.inference import background_value
from pipeline.train_patch import patch_channels


def cascade_on_prediction(prediction: Prediction, backend: SegmentationBackend, config: CascadeConfig) -> CascadeResult:
    """Steps 2-9 of the cascade for one prediction of `backend`. The patch size comes from the
    model's preprocessing (UNet_patch only knows the size it was trained on); the model's lesion
    typer is used when it has one and ``config.lesion_typing`` is on, its features computed on the grid
    it was trained on (from the study's own HU, ``prediction.study``, when it reads them there)."""
    model_input = prediction.model_input
    prep = backend.preprocessing
    return run_cascade(
        prediction.probabilities,
        model_input.hu,
        model_input.geometry,
        backend.patch_model(model_input.present),
        replace(config, patch_size_voxels=prep.patch_size_voxels),
        patch_channels=patch_channels(model_input, prep),
        patch_fill_value=background_value(prep),
        lesion_typer=backend.lesion_typer() if config.lesion_typing else None,
        typer_grid=backend.typer_feature_grid(),
        typer_study=prediction.study,
    )
