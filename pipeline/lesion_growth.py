"""Lesion extent by hysteresis: a lesion found at sensitivity f takes the outline it has at f x g.

UNet_whole sometimes marks a real lesion with only a few confident voxels: at f = 1 a 4 ml HCC
comes out as a fragment of under 0.5 ml, which reclassification then drops as too small (its
score cannot exceed its volume). The rest of the lesion is there in the probabilities, only
below the argmax. Hysteresis (as in Canny's edge linking) keeps the *seeds* of factor f and takes
their *extent* from the map at a higher factor f x g: a connected lesion region of the f x g map
is added when it touches a lesion voxel of the f map (seg2det's connectivity), with the labels
that map gives it. Regions
of the f x g map that touch no seed are left out, so growth adds no new lesions; it only lets
fragments grow into the lesion they belong to.

``cascade.lesion_growth_factor`` (g; 0 turns it off) sets it for every sensitivity factor.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline.seg2det import lesion_voxels, structure


def grow_lesions(seeds: np.ndarray, extent: np.ndarray, connectivity_2d: int = 8) -> np.ndarray:
    """`seeds` (a label map at factor f) with every lesion region of `extent` (the map of the same
    probabilities at a higher factor) that touches a seed lesion voxel added, labels from `extent`.

    Both are uint8 (Z, Y, X) maps of one grid; `extent`'s lesions must contain `seeds`' (a higher
    factor only adds lesion voxels). Regions are connected by seg2det's rule (`connectivity_2d`
    in-plane, straight across slices), so what grows from a seed is one lesion to seg2det too.
    Returns `seeds` itself when nothing grows."""
    if seeds.shape != extent.shape:
        raise ValueError(f"seed map {seeds.shape} and extent map {extent.shape} differ in shape")
    seed_lesion = lesion_voxels(seeds)
    if not seed_lesion.any():
        return seeds
    extent_lesion = lesion_voxels(extent)
    if (seed_lesion & ~extent_lesion).any():
        raise ValueError("the extent map must contain every seed lesion voxel (a higher sensitivity factor)")
    regions, _ = ndimage.label(extent_lesion, structure=structure(connectivity_2d))
    touched = np.unique(regions[seed_lesion])
    grown = np.isin(regions, touched[touched > 0]) & ~seed_lesion
    if not grown.any():
        return seeds
    out = seeds.copy()
    out[grown] = extent[grown]
    return out
