"""Whether the lesion typer types better with its features read on a finer grid than UNet_whole's
working grid, judged on validation detections (validation phantoms, seeds 20100+; never the
held-out set).

Every study is generated at its own (study) resolution, as registration leaves it. UNet_whole
finds lesions on its working grid as in the cascade; the lesion masks and label map are moved onto
each compared feature grid by nearest voxel (``pipeline.typer_grid``) and the HU come from the
study's own volumes resampled onto that grid (``hu_on_grid``, anti-aliased where named so), not
from the working grid's. The "work" grid is today's: the working grid's own HU (the bundled
typer's rows). Rows are those of ``docs/tools/typer_training_rows.py`` (the recipe: true lesions
as labelled, dilated and eroded, plus UNet_whole's false positives, phase subsets cycled) for
``type_balanced_training_specs(--train-studies)``, and UNet_whole's detections at sensitivities 1
and 4 in ``--validation`` tuning studies, with all their phases. Each grid's typer is trained with
``--seeds`` seeds and judged as in that tool.

    .venv/bin/python docs/tools/typer_feature_grid.py pipeline/models/phantom-demo \\
        --train-studies 120 --validation 48 --seeds 3
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from pipeline.cascade import sensitivity_label_maps
from pipeline.config import CascadeConfig
from pipeline.inference import resample_volume, working_shape
from pipeline.lesion_features import lesion_features
from pipeline.lesion_typer import NOT_A_LESION, TYPER_PHASE_COMBINATIONS
from pipeline.phantom import make_phantom
from pipeline.seg2det import seg2det
from pipeline.train import case_from_arrays, case_model_input
from pipeline.train_models import whole_predictor
from pipeline.train_typer import detection_classes
from pipeline.training_data import PhantomCaseSpec, tuning_specs, type_balanced_training_specs
from pipeline.typer_grid import FeatureGrid, hu_on_grid
from pipeline.types import LESION_LABELS, Label
from typer_training_rows import report_seeds  # noqa: E402  (the sibling tool in docs/tools)

GRIDS: dict[str, FeatureGrid | None] = {
    "work": None,
    "work-aa": FeatureGrid((4.0, 3.0, 3.0), anti_alias=True),
    "2x1.5-aa": FeatureGrid((2.0, 1.5, 1.5), anti_alias=True),
    "2x1-aa": FeatureGrid((2.0, 1.0, 1.0), anti_alias=True),
}
_WORKER: dict = {}


def _init(model: Path) -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER["predictor"] = whole_predictor(model, "cpu")


def _rows_on(hu, labels: np.ndarray, masks: list[np.ndarray], spacing) -> np.ndarray:
    liver = labels == int(Label.LIVER)
    any_lesion = np.isin(labels, LESION_LABELS)
    return np.stack([lesion_features(hu, mask, liver, spacing, any_lesion) for mask in masks])


def study_rows(job: tuple[PhantomCaseSpec, int, bool]) -> dict[str, np.ndarray]:
    """Rows of one study on every grid: truth rows (training only) and detection rows."""
    spec, index, training = job
    predictor = _WORKER["predictor"]
    prep = predictor.prep
    volumes = make_phantom(spec.seed, phases=spec.phases, slices=spec.slices, slice_thickness_mm=spec.slice_thickness_mm,
                           feet_first=spec.feet_first, lesions=spec.lesions, rows=spec.matrix, columns=spec.matrix,
                           workers=1, motion="residual")
    case = case_from_arrays(spec.case_id, volumes.hu, volumes.labels, volumes.geometry, prep)
    subset = case.present
    if training:
        combos = [combo for combo, _ in TYPER_PHASE_COMBINATIONS]
        subset = tuple(p for p in combos[index % len(combos)] if p in case.present) or case.present
    model_input = case_model_input(replace(case, present=subset), prep)
    maps = sensitivity_label_maps(predictor.predict(model_input), CascadeConfig(), compute_livermax=False).label_maps
    truth = seg2det(case.labels, case.geometry)
    # (label map, masks, classes, sensitivity) groups, all on the working grid
    groups: list[tuple[np.ndarray, list[np.ndarray], list[int], float]] = []
    if training:
        liver = case.labels == int(Label.LIVER)
        masks, classes = [], []
        for lesion in seg2det(case.labels, case.geometry, min_volume_ml=0.5):
            mask = lesion.full_mask(case.labels.shape)
            masks.append(mask)
            masks.append(ndimage.binary_dilation(mask) & (liver | mask))
            eroded = ndimage.binary_erosion(mask)
            if eroded.sum() >= 4:
                masks.append(eroded)
            classes += [int(lesion.lesion_type)] * (len(masks) - len(classes))
        if masks:
            groups.append((case.labels, masks, classes, 0.0))
    for factor, labels in maps.items():
        detected = seg2det(labels, case.geometry, min_volume_ml=0.5)
        classes = detection_classes(truth, detected)
        keep = [(lesion, c) for lesion, c in zip(detected, classes) if not training or c == NOT_A_LESION]
        if keep:
            groups.append((labels, [lesion.full_mask(labels.shape) for lesion, _ in keep], [c for _, c in keep],
                           float(factor)))
    out: dict[str, np.ndarray] = {
        "classes": np.asarray([c for g in groups for c in g[2]], dtype=np.int64),
        "sensitivities": np.asarray([g[3] for g in groups for _ in g[2]], dtype=np.float32),
    }
    native = {p: volumes.hu[p].astype(np.float32) for p in subset}
    for name, grid in GRIDS.items():
        rows = []
        if grid is None:
            for labels, masks, _, _ in groups:
                rows.append(_rows_on(model_input.hu, labels, masks, case.geometry.spacing_mm))
        else:
            shape = working_shape(volumes.geometry, grid.spacing_mm)
            hu = hu_on_grid(native, volumes.geometry, grid)
            spacing = tuple(n * s / m for n, s, m in zip(volumes.geometry.shape, volumes.geometry.spacing_mm, shape))
            for labels, masks, _, _ in groups:
                moved_labels = resample_volume(labels.astype(np.uint8), shape, mode="nearest")
                moved = [resample_volume(m.astype(np.uint8), shape, mode="nearest").astype(bool) for m in masks]
                moved = [m if m.any() else None for m in moved]
                rows.append(_rows_on(hu, moved_labels, [m for m in moved if m is not None], spacing)
                            if all(m is not None for m in moved) else None)
        out[name] = np.concatenate(rows) if rows and all(r is not None for r in rows) else np.zeros((0, 33))
    return out


def collect(model: Path, specs: list[PhantomCaseSpec], training: bool, path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        parts: list[dict[str, np.ndarray]] = []
        with ProcessPoolExecutor(2, initializer=_init, initargs=(model,)) as pool:
            for count, rows in enumerate(pool.map(study_rows, [(s, i, training) for i, s in enumerate(specs)]), 1):
                parts.append(rows)
                if count % 10 == 0 or count == len(specs):
                    print(f"{path.name}: {count}/{len(specs)} studies", flush=True)
        parts = [p for p in parts if all(len(p[name]) == len(p["classes"]) for name in GRIDS)]
        np.savez(path, **{key: np.concatenate([p[key] for p in parts]) for key in parts[0]})
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--train-studies", type=int, default=120)
    parser.add_argument("--validation", type=int, default=48)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("livernode-data/typer-grid"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    train = collect(args.model, type_balanced_training_specs(args.train_studies), True,
                    args.work / f"train{args.train_studies}.npz")
    valid = collect(args.model, tuning_specs(args.validation), False, args.work / f"validation{args.validation}.npz")
    print(f"training rows {len(train['classes'])} per class {np.bincount(train['classes'], minlength=7).tolist()}; "
          f"validation detections {len(valid['classes'])}")
    for name in GRIDS:
        print(f"feature grid {name}")
        report_seeds(train[name], train["classes"], valid[name], valid, args.seeds)

if __name__ == "__main__":
    main()
