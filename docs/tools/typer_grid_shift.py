"""How much the lesion typer's verdicts depend on the grid its features are computed on
(validation phantoms, seeds 20100+; never the held-out set).

A model that answers on the study's own grid (an nnU-Net folder) hands the typer lesions, HU and
labels at scanner resolution, while the typer learnt its features on its model card's working
grid. This emulates such a model with the bundled UNet_whole: its base-sensitivity label map is
taken onto the study grid (nearest voxel), and the typer judges each detection of 0.5 ml or more
three ways: on the working grid (what it was trained on), on the study grid as is, and moved back
onto its grid by ``pipeline.typer_grid`` (what the cascade does now). A detection's truth is the
lesion type it mostly overlaps, or "not a lesion".

    .venv/bin/python docs/tools/typer_grid_shift.py pipeline/models/phantom-demo --studies 24
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.backends import CardBackend
from pipeline.config import CascadeConfig
from pipeline.inference import prepare_input, resample_volume
from pipeline.lesion_typer import feature_rows
from pipeline.model import select_device
from pipeline.phantom import make_phantom
from pipeline.seg2det import seg2det
from pipeline.cascade import sensitivity_label_maps
from pipeline.training_data import tuning_specs
from pipeline.typer_grid import to_feature_grid
from pipeline.types import LESION_LABELS, Lesion, LesionType

WAYS = ("working grid", "study grid as is", "moved to the typer grid")


def truth_class(lesion: Lesion, truth: np.ndarray) -> int:
    """The lesion label most of the detection's true-lesion voxels carry, or 0 (not a lesion)."""
    values = truth[lesion.bbox.slices][lesion.mask]
    values = values[np.isin(values, LESION_LABELS)]
    return int(np.bincount(values).argmax()) if values.size else 0


def verdicts(typer, rows: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The typer's class at sensitivity 1 (paper eq. 3 with f = 1: the most probable class)."""
    return np.asarray(typer(rows)).argmax(axis=1) if len(rows) else np.zeros(0, dtype=np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--studies", type=int, default=24)
    args = parser.parse_args()
    backend = CardBackend(args.model, select_device("auto"))
    typer, grid = backend.lesion_typer(), backend.typer_feature_grid()
    if typer is None or grid is None:
        raise SystemExit(f"{args.model}: the model card has no lesion typer")
    if grid is not None and grid.from_study:
        raise SystemExit(f"{args.model}: its lesion typer reads the study's own HU; this tool reads working-grid "
                         "features only (docs/tools/cascade_variants.py runs the whole cascade)")
    config = CascadeConfig()
    tally = {way: Counter() for way in WAYS}
    for spec in tuning_specs(args.studies):
        volumes = make_phantom(spec.seed, phases=spec.phases, slices=spec.slices,
                               slice_thickness_mm=spec.slice_thickness_mm, feet_first=spec.feet_first,
                               lesions=spec.lesions, rows=spec.matrix, columns=spec.matrix, workers=2,
                               motion="residual")
        model_input = prepare_input(volumes.hu, volumes.geometry, backend.preprocessing)
        probabilities = backend.predict_model_input(model_input).probabilities
        work_labels = sensitivity_label_maps(probabilities, config, compute_livermax=False).label_maps[
            config.sensitivity_factors[0]]
        study_labels = resample_volume(work_labels, volumes.geometry.shape, mode="nearest")
        work_truth = resample_volume(volumes.labels, model_input.geometry.shape, mode="nearest")
        on_work = seg2det(work_labels, model_input.geometry, min_volume_ml=0.5)
        on_study = seg2det(study_labels, volumes.geometry, min_volume_ml=0.5)
        moved = to_feature_grid(on_study, volumes.hu, study_labels, volumes.geometry, grid)
        runs = {
            WAYS[0]: (on_work, work_truth, feature_rows(on_work, model_input.hu, work_labels, model_input.geometry)),
            WAYS[1]: (on_study, volumes.labels, feature_rows(on_study, volumes.hu, study_labels, volumes.geometry)),
            WAYS[2]: (on_study, volumes.labels, feature_rows(moved.lesions, moved.hu, moved.labels, moved.geometry)),
        }
        for way, (lesions, truth, rows) in runs.items():
            for lesion, verdict in zip(lesions, verdicts(typer, rows)):
                true = truth_class(lesion, truth)
                counts = tally[way]
                counts["detections"] += 1
                counts["right"] += int(verdict == true)
                if true:
                    counts["true lesions"] += 1
                    counts["true lesions dropped"] += int(verdict == 0)
                    called_malignant = verdict != 0 and LesionType(int(verdict)).malignant
                    counts["malignant/benign wrong"] += int(verdict != 0 and called_malignant != LesionType(true).malignant)
                else:
                    counts["false detections"] += 1
                    counts["false detections kept"] += int(verdict != 0)
                    counts["false kept as malignant"] += int(verdict != 0 and LesionType(int(verdict)).malignant)
        print(f"{spec.case_id} ({'+'.join(p.value for p in spec.phases)}, {spec.slice_thickness_mm:g} mm): "
              f"{len(on_work)} detections on the working grid, {len(on_study)} on the study grid", flush=True)
    keys = ("detections", "right", "true lesions", "true lesions dropped", "malignant/benign wrong",
            "false detections", "false detections kept", "false kept as malignant")
    print("| typer features on | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for way in WAYS:
        print(f"| {way} | " + " | ".join(str(tally[way][k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
