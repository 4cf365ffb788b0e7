"""A hand-made detector of faint liver lesions, on validation phantoms (seeds 20100+; never the
held-out set): how many true lesions a multi-phase contrast detector finds and how many false
regions it marks. Session 18, docs/models.md "Why small lesions are missed".

Per phase, on the working grid: the liver's local level at lesion scale (Gaussian of `--sigma` mm,
normalised over liver voxels) minus its level at 15 mm, divided by the robust SD of that
difference over the liver. The score is the root mean square of these over the phases present,
or with `--whiten` the Mahalanobis norm under their covariance across phases over the liver (the
liver's texture is one field in every phase, so it is correlated across phases; a lesion's
enhancement pattern is not). Voxels scoring over a threshold form regions (0.25 ml or more).

Default: with the *true* liver and vessel masks (an upper bound for any detector at inference),
per threshold, true lesions found (one voxel over it) and false regions (touching no true lesion).

`--typer-studies N`: a lesion typer (pipeline.lesion_typer) trained on the detector's regions in N
type-balanced training studies (true masks; a region on a true lesion takes its type, the others
"not a lesion"), then run on the regions of the validation studies found with UNet_whole's own
liver and vessels (high sensitivity): how many malignant lesions under 2 ml it calls malignant
against false regions it calls malignant, as its "not a lesion" class is weighted up.

    .venv/bin/python docs/tools/contrast_detector.py pipeline/models/phantom-demo --studies 24 --anti-alias
    .venv/bin/python docs/tools/contrast_detector.py pipeline/models/phantom-demo --studies 24 --anti-alias \\
        --whiten --threshold 1.7 --typer-studies 120
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
from missed_lesions import MALIGNANT
from scipy import ndimage

from pipeline.backends import CardBackend
from pipeline.cascade import sensitivity_label_maps
from pipeline.config import CascadeConfig
from pipeline.lesion_features import lesion_features
from pipeline.lesion_typer import NOT_A_LESION, TyperTraining, default_typer_spec, train_typer, type_probabilities
from pipeline.model import Preprocessing, read_model_card, select_device
from pipeline.train import TrainingCase, case_model_input
from pipeline.training_data import make_cases, tuning_specs, type_balanced_training_specs
from pipeline.types import LESION_LABELS, Label, Phase

BACKGROUND_SIGMA_MM = 15.0
VESSEL_LABELS = (int(Label.HEPATIC_VESSELS), int(Label.PORTAL_SPLENIC_VEIN))
MIN_REGION_ML = 0.25


def liver_level(hu: np.ndarray, mask: np.ndarray, sigma_mm: float, spacing_mm: tuple[float, ...]) -> np.ndarray:
    """Gaussian-weighted mean HU of the liver voxels around every voxel."""
    sigmas = tuple(sigma_mm / s for s in spacing_mm)
    weights = mask.astype(np.float32)
    return ndimage.gaussian_filter(hu * weights, sigmas) / np.maximum(ndimage.gaussian_filter(weights, sigmas), 1e-3)


def detector_score(hu: Mapping[Phase, np.ndarray], liver: np.ndarray, spacing_mm: tuple[float, ...], sigma_mm: float,
                   whiten: bool) -> np.ndarray:
    """The detector's score of every voxel (`liver`: the voxels it looks at)."""
    scores = []
    for volume in hu.values():
        difference = liver_level(volume, liver, sigma_mm, spacing_mm)
        difference -= liver_level(volume, liver, BACKGROUND_SIGMA_MM, spacing_mm)
        values = difference[liver]
        scores.append(difference / (1.4826 * np.median(np.abs(values - np.median(values)))))
    stack = np.stack(scores)
    if not whiten:
        return np.sqrt(np.mean(np.square(stack), axis=0))
    inverse = np.linalg.inv(np.atleast_2d(np.cov(stack[:, liver])))
    return np.sqrt(np.einsum("i...,ij,j...->...", stack, inverse, stack) / len(scores))


def looked_at(liver_and_lesions: np.ndarray, vessels: np.ndarray) -> np.ndarray:
    """The liver without its edge and the vessels in it."""
    return ndimage.binary_erosion(liver_and_lesions) & ~ndimage.binary_dilation(vessels)


def regions_over(score: np.ndarray, liver: np.ndarray, threshold: float, voxel_ml: float) -> list[np.ndarray]:
    """Masks of the connected regions of at least MIN_REGION_ML scoring over `threshold`."""
    regions, _ = ndimage.label((score > threshold) & liver)
    sizes_ml = np.bincount(regions.ravel()) * voxel_ml
    return [regions == index for index in range(1, len(sizes_ml)) if sizes_ml[index] >= MIN_REGION_ML]


def truth_masks(case: TrainingCase) -> tuple[np.ndarray, np.ndarray]:
    """Liver with its lesions, and the vessels, from the case's labels."""
    return np.isin(case.labels, (int(Label.LIVER),) + tuple(LESION_LABELS)), np.isin(case.labels, VESSEL_LABELS)


def region_rows(case: TrainingCase, hu: Mapping[Phase, np.ndarray], liver_and_lesions: np.ndarray,
                regions: list[np.ndarray]) -> tuple[list[np.ndarray], list[int], list[float]]:
    """Typer features of `regions`, the true type each overlaps most (0: none) and that lesion's ml."""
    truth = np.isin(case.labels, LESION_LABELS)
    components, _ = ndimage.label(truth)
    features, kinds, sizes = [], [], []
    for mask in regions:
        features.append(lesion_features(hu, mask, liver_and_lesions & ~mask, case.geometry.spacing_mm, mask))
        overlap = mask & truth
        if overlap.any():
            kinds.append(int(np.bincount(case.labels[overlap]).argmax()))
            component = int(np.bincount(components[overlap]).argmax())
            sizes.append(float((components == component).sum()) * case.geometry.voxel_volume_ml)
        else:
            kinds.append(0)
            sizes.append(0.0)
    return features, kinds, sizes


def report_detection(args: argparse.Namespace, prep: Preprocessing) -> None:
    found = {t: 0 for t in args.threshold}
    found_faint = {t: 0 for t in args.threshold}
    false_regions = {t: 0 for t in args.threshold}
    lesions = faint = 0
    for case in make_cases(tuning_specs(args.studies), prep, 2, print, cache_dir=args.cache):
        model_input = case_model_input(case, prep)
        liver = looked_at(*truth_masks(case))
        score = detector_score(model_input.hu, liver, case.geometry.spacing_mm, args.sigma, args.whiten)
        truth = np.isin(case.labels, LESION_LABELS)
        near_truth = ndimage.binary_dilation(truth)
        components, count = ndimage.label(truth)
        voxel_ml = case.geometry.voxel_volume_ml
        for threshold in args.threshold:
            regions = regions_over(score, liver, threshold, voxel_ml)
            false_regions[threshold] += sum(1 for mask in regions if not (mask & near_truth).any())
        for index in range(1, count + 1):
            mask = components == index
            if mask.sum() * voxel_ml < 0.5:
                continue
            is_faint = mask.sum() * voxel_ml < 2.0 and int(np.bincount(case.labels[mask]).argmax()) in MALIGNANT
            lesions += 1
            faint += is_faint
            for threshold in args.threshold:
                hit = bool((score[mask & liver] > threshold).any())
                found[threshold] += hit
                found_faint[threshold] += hit and is_faint
    for threshold in args.threshold:
        print(f"score > {threshold:g}: lesions found {found[threshold]}/{lesions}, malignant under 2 ml "
              f"{found_faint[threshold]}/{faint}; false regions >= {MIN_REGION_ML} ml {false_regions[threshold]} "
              f"({false_regions[threshold] / args.studies:.1f} per study)")


def report_typer(args: argparse.Namespace, prep: Preprocessing) -> None:
    threshold = args.threshold[0]
    features: list[np.ndarray] = []
    kinds: list[int] = []
    for case in make_cases(type_balanced_training_specs(args.typer_studies), prep, 2, print, cache_dir=args.cache):
        hu = case_model_input(case, prep).hu
        liver_and_lesions, vessels = truth_masks(case)
        liver = looked_at(liver_and_lesions, vessels)
        score = detector_score(hu, liver, case.geometry.spacing_mm, args.sigma, args.whiten)
        rows, row_kinds, _ = region_rows(case, hu, liver_and_lesions,
                                         regions_over(score, liver, threshold, case.geometry.voxel_volume_ml))
        features += rows
        kinds += row_kinds
    print(f"typer rows by class (0 = not a lesion): {np.bincount(kinds, minlength=7).tolist()}")
    typer = train_typer(np.stack(features), np.array(kinds), default_typer_spec(), TyperTraining())

    backend = CardBackend(args.model, select_device("auto"))
    model_prep, config = backend.preprocessing, CascadeConfig()
    judged: list[tuple[str, int, float, np.ndarray]] = []
    specs = tuning_specs(args.studies)
    for case, model_case in zip(make_cases(specs, prep, 2, print, cache_dir=args.cache),
                                make_cases(specs, model_prep, 2, print, cache_dir=args.cache)):
        probabilities = backend.predict_model_input(case_model_input(model_case, model_prep)).probabilities
        high = sensitivity_label_maps(np.asarray(probabilities, dtype=np.float32), config,
                                      compute_livermax=False).label_maps[config.sensitivity_factors[-1]]
        liver_and_lesions = np.isin(high, (int(Label.LIVER),) + tuple(LESION_LABELS))
        liver = looked_at(liver_and_lesions, np.isin(high, VESSEL_LABELS))
        hu = case_model_input(case, prep).hu
        score = detector_score(hu, liver, case.geometry.spacing_mm, args.sigma, args.whiten)
        rows, row_kinds, sizes = region_rows(case, hu, liver_and_lesions,
                                             regions_over(score, liver, threshold, case.geometry.voxel_volume_ml))
        if rows:
            for row, kind, size in zip(type_probabilities(typer, np.stack(rows)), row_kinds, sizes):
                judged.append((case.case_id, kind, size, row))
    for weight in (1, 4, 16, 64):
        faint, false_malignant, studies = set(), 0, set()
        for case_id, kind, size, row in judged:
            typed = int(np.argmax(row[1:])) + 1
            if weight * row[NOT_A_LESION] > row[typed] or typed not in MALIGNANT:
                continue
            if kind in MALIGNANT and size < 2.0:
                faint.add((case_id, round(size, 2)))
            elif kind == 0:
                false_malignant += 1
                studies.add(case_id)
        print(f"'not a lesion' weighted {weight}x: malignant lesions under 2 ml called malignant {len(faint)} "
              f"{sorted(faint)}; false regions called malignant {false_malignant}, in {len(studies)} of "
              f"{args.studies} studies")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="model folder (its preprocessing gives the working grid)")
    parser.add_argument("--studies", type=int, default=24)
    parser.add_argument("--sigma", type=float, default=4.0, help="lesion scale in mm")
    parser.add_argument("--threshold", type=float, nargs="+", default=[3.0, 2.5, 2.0])
    parser.add_argument("--whiten", action="store_true", help="Mahalanobis norm across phases")
    parser.add_argument("--anti-alias", action="store_true", help="anti-aliased resampling onto the working grid")
    parser.add_argument("--typer-studies", type=int, default=0, help="train and judge a typer on the regions")
    parser.add_argument("--cache", type=Path, default=Path("livernode-data/cases"))
    args = parser.parse_args()
    prep = replace(read_model_card(args.model).preprocessing, anti_alias=args.anti_alias)
    if args.typer_studies:
        report_typer(args, prep)
    else:
        report_detection(args, prep)


if __name__ == "__main__":
    main()
