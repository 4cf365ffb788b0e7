"""Why UNet_whole misses lesions, on validation phantoms (seeds 20100+; never the held-out set).

For every true lesion of 0.5 ml or more: the sensitivity factor f it would need to be labelled
(the smallest ratio, over its voxels, of the best non-lesion probability to the best lesion
probability: the lesion wins the scaled argmax where f exceeds it), and its contrast against the
liver around it per phase next to the voxel SD of the liver's interior (2 voxels in from its outline,
away from lesions) and the lesion's signal-to-noise ratio (`lesion_snr`), on the working grid. Then, per
factor, how many true lesions are found and how many false lesion regions of 0.5 ml or more appear
in the liver away from true lesions.

    .venv/bin/python docs/tools/missed_lesions.py pipeline/models/phantom-demo --studies 48

``--small-lesions`` takes the validation studies of
``pipeline.training_data.small_lesion_tuning_specs`` instead, each with an HCC, ICC or metastasis
of 2.5 ml or less (other seeds than the 48 above, and never a training or held-out study).

``--zoom Z`` runs UNet_whole on the working grid upsampled Z times (trilinear), so that lesions
look Z times larger in voxels, and resamples its probabilities back (an experiment of session 18,
docs/models.md; not a cascade setting).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from pipeline.backends import CardBackend
from pipeline.config import CascadeConfig
from pipeline.inference import ModelInput, resample_volume
from pipeline.model import select_device
from pipeline.sensitivity import LESION_CHANNELS, OTHER_CHANNELS
from pipeline.train import case_model_input
from pipeline.training_data import make_cases, small_lesion_tuning_specs, tuning_specs
from pipeline.types import LESION_LABELS, Label

FACTORS = (1.0, 4.0, 16.0, 64.0, 256.0, 1024.0)
MALIGNANT = (1, 2, 3)  # HCC, ICC, metastasis


def zoomed_probabilities(backend: CardBackend, model_input: ModelInput, zoom: float) -> np.ndarray:
    """UNet_whole's probabilities on the working grid; with `zoom` > 1 predicted on the grid
    upsampled `zoom` times and resampled back (anti-aliased)."""
    if zoom == 1.0:
        return np.asarray(backend.predict_model_input(model_input).probabilities, dtype=np.float32)
    shape = model_input.image.shape[1:]
    big = tuple(int(round(n * zoom)) for n in shape)
    spacing = tuple(s / zoom for s in model_input.geometry.spacing_mm)
    geometry = replace(model_input.geometry, shape=big, spacing_mm=spacing)
    zoomed = replace(model_input, image=resample_volume(model_input.image, big), geometry=geometry,
                     hu={phase: resample_volume(hu, big) for phase, hu in model_input.hu.items()})
    probabilities = np.asarray(backend.predict_model_input(zoomed).probabilities, dtype=np.float32)
    return resample_volume(probabilities, shape, anti_alias=True)


def lesion_snr(hu: np.ndarray, mask: np.ndarray, shell: np.ndarray, interior: np.ndarray) -> float:
    """The lesion's mean contrast against its liver shell in units of the standard error of a mean
    of as many independent liver voxels (the signal-to-noise ratio of a detector that knows the
    lesion's outline, with white noise of the liver interior's SD; texture and noise correlated
    between voxels make the real figure lower)."""
    contrast = float(hu[mask].mean() - np.median(hu[shell]))
    return contrast / (float(hu[interior].std()) / np.sqrt(float(mask.sum())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--studies", type=int, default=24)
    parser.add_argument("--cache", type=Path, default=Path("livernode-data/cases"))
    parser.add_argument("--zoom", type=float, default=1.0, help="predict on the working grid upsampled this much")
    parser.add_argument("--small-lesions", action="store_true",
                        help="validation studies that each hold a small (<= 2.5 ml) malignant lesion")
    parser.add_argument("--mirror-tta", action="store_true", help="mirrored test-time augmentation (model.mirror_tta)")
    args = parser.parse_args()
    backend = CardBackend(args.model, select_device("auto"), mirror_tta=args.mirror_tta)
    prep = backend.preprocessing
    lesions: list[tuple[str, int, float, float, str]] = []
    false_regions = {f: 0 for f in FACTORS}
    specs = small_lesion_tuning_specs(args.studies) if args.small_lesions else tuning_specs(args.studies)
    for case in make_cases(specs, prep, 2, print, cache_dir=args.cache):
        model_input = case_model_input(case, prep)
        probabilities = zoomed_probabilities(backend, model_input, args.zoom)
        lesion_best = probabilities[LESION_CHANNELS].max(axis=0)
        other_best = probabilities[list(OTHER_CHANNELS)].max(axis=0)
        needed = other_best / np.maximum(lesion_best, 1e-12)
        voxel_ml = float(np.prod(case.geometry.spacing_mm)) / 1000.0
        truth = np.isin(case.labels, LESION_LABELS)
        liver = case.labels == int(Label.LIVER)
        # the liver's own voxel noise and texture: away from its outline (partial volume with fat
        # and organs) and from lesions (sessions 16-24 took the SD over the whole liver label,
        # outline included, which roughly doubles it)
        interior = ndimage.binary_erosion(liver, iterations=2) & ~ndimage.binary_dilation(truth, iterations=3)
        components, count = ndimage.label(truth)
        for index in range(1, count + 1):
            mask = components == index
            if mask.sum() * voxel_ml < 0.5:
                continue
            shell = ndimage.binary_dilation(mask, iterations=3) & ~ndimage.binary_dilation(mask, iterations=1) & liver
            contrast = " ".join(
                f"{phase.value} {hu[mask].mean() - np.median(hu[shell]):+.0f}/{hu[interior].std():.0f}"
                f" ({lesion_snr(hu, mask, shell, interior):+.1f})"
                for phase, hu in model_input.hu.items())
            kind = int(np.bincount(case.labels[mask]).argmax())
            lesions.append((case.case_id, kind, mask.sum() * voxel_ml, float(needed[mask].min()), contrast))
        # the cascade's liver outline (pipeline.liver_region.threshold_liver)
        predicted_liver = (probabilities[int(Label.LIVER)] + probabilities[LESION_CHANNELS].sum(axis=0)
                           > CascadeConfig().liver_probability_threshold)
        away = predicted_liver & ~ndimage.binary_dilation(truth, iterations=3)
        for factor in FACTORS:
            regions, _ = ndimage.label(away & (needed < factor))
            sizes_ml = np.bincount(regions.ravel())[1:] * voxel_ml
            false_regions[factor] += int((sizes_ml >= 0.5).sum())
    print("missed at f = 4 (case, type, ml, factor needed, per phase: contrast/noise HU (lesion SNR)):")
    for case_id, kind, ml, need, contrast in lesions:
        if need >= 4.0:
            print(f"  {case_id} type {kind} {ml:.2f} ml f {need:.3g}  {contrast}")
    for factor in FACTORS:
        found = [lesion for lesion in lesions if lesion[3] < factor]
        small = [lesion for lesion in lesions if lesion[2] < 2.0]
        malignant = [lesion for lesion in lesions if lesion[1] in MALIGNANT]
        print(f"f = {factor:g}: lesions {len(found)}/{len(lesions)}, under 2 ml "
              f"{sum(lesion[3] < factor for lesion in small)}/{len(small)}, malignant "
              f"{sum(lesion[3] < factor for lesion in malignant)}/{len(malignant)}; false regions >= 0.5 ml "
              f"{false_regions[factor]}")


if __name__ == "__main__":
    main()
