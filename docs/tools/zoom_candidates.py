"""What a zoomed second UNet_whole pass would add, on validation phantoms (seeds 20100+; never the
held-out set): its lesion regions that the normal pass does not have, and the lesion typer's verdict
on each (session 18, docs/models.md "Why small lesions are missed").

A candidate is a connected region of 0.5 ml or more where the zoomed pass's lesion probabilities
sum to over 0.5, inside the liver of the normal pass's high-sensitivity label map and not touching
its lesions. Per candidate: the true lesion it overlaps (if any) and the typer's probabilities;
the typer "keeps" a candidate as the cascade does at base sensitivity (its likeliest type at least
as probable as "not a lesion").

    .venv/bin/python docs/tools/zoom_candidates.py pipeline/models/phantom-demo --studies 12 --zoom 1.6
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from missed_lesions import MALIGNANT, zoomed_probabilities
from scipy import ndimage

from pipeline.backends import CardBackend
from pipeline.cascade import sensitivity_label_maps
from pipeline.config import CascadeConfig
from pipeline.lesion_features import lesion_features
from pipeline.lesion_typer import NOT_A_LESION
from pipeline.model import select_device
from pipeline.sensitivity import LESION_CHANNELS
from pipeline.train import case_model_input
from pipeline.training_data import make_cases, tuning_specs
from pipeline.types import LESION_LABELS, Label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--studies", type=int, default=12)
    parser.add_argument("--zoom", type=float, default=1.6)
    parser.add_argument("--cache", type=Path, default=Path("livernode-data/cases"))
    args = parser.parse_args()
    backend = CardBackend(args.model, select_device("auto"))
    typer = backend.lesion_typer()
    if typer is None:
        parser.error(f"{args.model} has no lesion typer")
    if backend.typer_feature_grid() is not None and backend.typer_feature_grid().from_study:
        raise SystemExit(f"{args.model}: its lesion typer reads the study's own HU; this tool reads working-grid "
                         "features only (docs/tools/cascade_variants.py runs the whole cascade)")
    prep, config = backend.preprocessing, CascadeConfig()
    true_hits: list[tuple[str, int, int]] = []
    false_kept: list[tuple[str, int]] = []
    false_count = 0
    for case in make_cases(tuning_specs(args.studies), prep, 2, print, cache_dir=args.cache):
        model_input = case_model_input(case, prep)
        normal = np.asarray(backend.predict_model_input(model_input).probabilities, dtype=np.float32)
        zoomed = zoomed_probabilities(backend, model_input, args.zoom)
        high = sensitivity_label_maps(normal, config, compute_livermax=False).label_maps[config.sensitivity_factors[-1]]
        liver = np.isin(high, (int(Label.LIVER),) + tuple(LESION_LABELS))
        found = np.isin(high, LESION_LABELS)
        candidates = (zoomed[LESION_CHANNELS].sum(axis=0) > 0.5) & liver & ~ndimage.binary_dilation(found)
        regions, count = ndimage.label(candidates)
        truth = np.isin(case.labels, LESION_LABELS)
        voxel_ml = model_input.geometry.voxel_volume_ml
        for index in range(1, count + 1):
            mask = regions == index
            if mask.sum() * voxel_ml < 0.5:
                continue
            features = lesion_features(model_input.hu, mask, liver & ~found & ~mask, model_input.geometry.spacing_mm,
                                       found | mask)  # fmt: skip
            row = np.asarray(typer(features[None]))[0]
            typed = int(np.argmax(row[1:])) + 1
            if (mask & truth).any():
                true_hits.append((case.case_id, int(np.bincount(case.labels[mask & truth]).argmax()), typed))
            else:
                false_count += 1
                if row[NOT_A_LESION] <= row[typed]:
                    false_kept.append((case.case_id, typed))
        print(f"{case.case_id}: {len(true_hits)} true, {false_count} false candidates so far", flush=True)
    print(f"candidates on true lesions: {len(true_hits)} (case, true type, typed): {true_hits}")
    malignant = [(case_id, typed) for case_id, typed in false_kept if typed in MALIGNANT]
    print(f"false candidates: {false_count}; kept by the typer at base sensitivity: {len(false_kept)}, typed "
          f"malignant: {len(malignant)}, in {len({case_id for case_id, _ in malignant})} of {args.studies} studies")


if __name__ == "__main__":
    main()
