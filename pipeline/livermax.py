"""LiverMax (DESIGN step 9, from LIDIA): per lesion type, the maximum unscaled softmax probability
over the voxels inside the liver. The liver is the base argmax's liver label 7 together with its
lesion labels 1-6. A study with no liver voxel scores 0.0 for every type.

Computed slab-wise: :func:`pipeline.sensitivity.scaled_argmax` feeds the same accumulator while it
argmaxes, so the probabilities are read once; :func:`livermax` is the stand-alone form.
"""

from __future__ import annotations

import numpy as np

from pipeline.types import LESION_LABELS, NUM_CLASSES, Label, LesionType


def liver_region(label_map: np.ndarray) -> np.ndarray:
    """Boolean mask of the liver as the cascade uses it: label 7 (liver) or lesion labels 1-6."""
    return (label_map >= LESION_LABELS[0]) & (label_map <= int(Label.LIVER))


class LiverMaxAccumulator:
    """Running per-type maximum over liver voxels, fed one z-slab at a time."""

    def __init__(self) -> None:
        self._max = np.zeros(len(LESION_LABELS), dtype=np.float64)

    def update(self, probability_slab: np.ndarray, base_label_slab: np.ndarray) -> None:
        """Add one (14, z, y, x) probability slab and its (z, y, x) base label map."""
        if probability_slab.shape[0] != NUM_CLASSES or probability_slab.shape[1:] != base_label_slab.shape:
            raise ValueError(
                f"probability slab {probability_slab.shape} does not fit label slab {base_label_slab.shape}"
            )
        liver = liver_region(base_label_slab)
        if not liver.any():
            return
        for index, label in enumerate(LESION_LABELS):
            value = float(np.max(probability_slab[label][liver]))
            if value > self._max[index]:
                self._max[index] = value

    def result(self) -> dict[LesionType, float]:
        """The per-type maxima so far (0.0 where no liver voxel was seen)."""
        return {LesionType(label): float(self._max[i]) for i, label in enumerate(LESION_LABELS)}


def livermax(
    probabilities: np.ndarray, base_labels: np.ndarray, *, slab_slices: int = 32
) -> dict[LesionType, float]:
    """LiverMax of a (14, Z, Y, X) probability array given the base (f = 1) label map (Z, Y, X)."""
    if probabilities.ndim != 4 or probabilities.shape[0] != NUM_CLASSES:
        raise ValueError(f"probabilities must have shape ({NUM_CLASSES}, Z, Y, X), got {probabilities.shape}")
    if probabilities.shape[1:] != base_labels.shape:
        raise ValueError(f"base_labels shape {base_labels.shape} != probability grid {probabilities.shape[1:]}")
    if slab_slices < 1:
        raise ValueError(f"slab_slices must be >= 1, got {slab_slices}")
    accumulator = LiverMaxAccumulator()
    for z0 in range(0, base_labels.shape[0], slab_slices):
        zs = slice(z0, min(z0 + slab_slices, base_labels.shape[0]))
        accumulator.update(np.asarray(probabilities[:, zs]), np.asarray(base_labels[zs]))
    return accumulator.result()


def livermax_vector(scores: dict[LesionType, float]) -> np.ndarray:
    """LiverMax as float32[6] in label order (HCC .. Cyst), the evaluation file's layout."""
    return np.asarray([scores.get(LesionType(label), 0.0) for label in LESION_LABELS], dtype=np.float32)
