"""Enhancement features of one lesion: what a radiologist reads off a multi-phase CT.

Per phase (NC, AP, VP, DP): the lesion's HU against the liver around it (mean, core, rim, 10th and
90th percentile), its heterogeneity (standard deviation) and its absolute mean HU; then the lesion's
size and which phases are present. HU differences are divided by ``HU_SCALE`` so the numbers are
of order one. An absent phase gives zeros and a zero presence flag (as the networks' presence
channels do), so one vector layout serves every phase combination.

*Core* and *rim* split the lesion by the distance to its edge (core: at least half the largest
distance; rim: the rest), which separates rim enhancement (metastasis, ICC), peripheral nodules
(haemangioma) and central scars (FNH) from homogeneous lesions. The liver reference is the median
HU of liver voxels in a shell of ``SHELL_MM`` around the lesion (other lesions excluded), or of
the whole liver when the shell holds too few.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from pipeline.types import PHASE_ORDER, Phase

HU_SCALE = 50.0
SHELL_MM = 10.0
_MIN_REFERENCE_VOXELS = 20
#: Per-phase feature names, in vector order.
PHASE_FEATURES: tuple[str, ...] = ("mean", "core", "rim", "p10", "p90", "std", "absolute")
#: Features shared by all phases, after the per-phase ones.
SHARED_FEATURES: tuple[str, ...] = ("log_volume_ml",) + tuple(f"present_{p.value}" for p in PHASE_ORDER)


def feature_names() -> tuple[str, ...]:
    """Names of the vector's entries, in order."""
    return tuple(f"{p.value}_{name}" for p in PHASE_ORDER for name in PHASE_FEATURES) + SHARED_FEATURES


def feature_count() -> int:
    """Length of a feature vector."""
    return len(PHASE_ORDER) * len(PHASE_FEATURES) + len(SHARED_FEATURES)


def _crop_around(mask: np.ndarray, margin: tuple[int, int, int]) -> tuple[slice, ...]:
    where = np.nonzero(mask)
    return tuple(
        slice(max(int(idx.min()) - m, 0), min(int(idx.max()) + m + 1, size))
        for idx, m, size in zip(where, margin, mask.shape)
    )


def lesion_features(
    hu: Mapping[Phase, np.ndarray],
    lesion_mask: np.ndarray,
    liver_mask: np.ndarray,
    spacing_mm: tuple[float, float, float],
    other_lesions: np.ndarray | None = None,
) -> np.ndarray:
    """The feature vector (float32, :func:`feature_count` long) of one lesion.

    ``hu`` maps the present phases to HU volumes on one grid; ``lesion_mask`` and ``liver_mask``
    are boolean volumes on that grid (liver without lesions); ``other_lesions`` marks voxels of
    any lesion, kept out of the liver reference.
    """
    if not lesion_mask.any():
        raise ValueError("lesion_features: empty lesion mask")
    margin = tuple(int(np.ceil(SHELL_MM / s)) + 1 for s in spacing_mm)
    box = _crop_around(lesion_mask, margin)  # type: ignore[arg-type]
    lesion = lesion_mask[box]
    distance = ndimage.distance_transform_edt(lesion, sampling=spacing_mm)
    inside = distance[lesion]
    core = lesion & (distance >= 0.5 * inside.max())
    rim = lesion & ~core
    if not rim.any():
        rim = lesion
    outside = ndimage.distance_transform_edt(~lesion, sampling=spacing_mm)
    shell = (outside > 0) & (outside <= SHELL_MM) & liver_mask[box]
    if other_lesions is not None:
        shell &= ~other_lesions[box]
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    values: list[float] = []
    for phase in PHASE_ORDER:
        volume = hu.get(phase)
        if volume is None:
            values += [0.0] * len(PHASE_FEATURES)
            continue
        crop = volume[box].astype(np.float32)
        reference_voxels = crop[shell]
        if reference_voxels.size < _MIN_REFERENCE_VOXELS and liver_mask.any():
            reference_voxels = volume[liver_mask]
        reference = float(np.median(reference_voxels)) if reference_voxels.size else float(np.median(crop[~lesion]))
        inner = crop[lesion]
        p10, p90 = np.percentile(inner, (10, 90))
        values += [
            (float(inner.mean()) - reference) / HU_SCALE,
            (float(crop[core].mean()) - reference) / HU_SCALE,
            (float(crop[rim].mean()) - reference) / HU_SCALE,
            (float(p10) - reference) / HU_SCALE,
            (float(p90) - reference) / HU_SCALE,
            float(inner.std()) / HU_SCALE,
            float(inner.mean()) / (2.0 * HU_SCALE),
        ]
    values.append(float(np.log(max(lesion.sum() * voxel_ml, 1e-3))))
    values += [1.0 if p in hu else 0.0 for p in PHASE_ORDER]
    return np.asarray(values, dtype=np.float32)


def without_phases(features: np.ndarray, present: tuple[Phase, ...]) -> np.ndarray:
    """A copy of feature vectors (..., F) as if only `present` phases had been acquired."""
    out = np.array(features, dtype=np.float32, copy=True)
    per_phase = len(PHASE_FEATURES)
    shared = len(PHASE_ORDER) * per_phase
    for index, phase in enumerate(PHASE_ORDER):
        if phase not in present:
            out[..., index * per_phase:(index + 1) * per_phase] = 0.0
            out[..., shared + 1 + index] = 0.0
    return out
