"""Carry the cascade's results from the model's working grid back onto the reference (venous)
series' own grid, where the DICOM SEG is drawn and every measurement is reported.

Lesions keep their id, type, type fractions, sensitivities, reclassification score and verdict;
their mask is the nearest-neighbour upsampling of the working-grid mask, and volume, longest axial
diameter, centroid and mean HU per phase are measured again on the reference grid.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from pipeline.inference import resample_volume
from pipeline.seg2det import _axial_diameters_mm
from pipeline.types import BoundingBox, Lesion, Phase, VolumeGeometry


def _instance_map(lesions: Sequence[Lesion], shape: tuple[int, int, int]) -> np.ndarray:
    out = np.zeros(shape, dtype=np.int32)
    for lesion in lesions:
        region = out[lesion.bbox.slices]
        region[lesion.mask] = lesion.lesion_id
    return out


def _nearest_index(geometry: VolumeGeometry, point_mm: tuple[float, float, float]) -> tuple[int, int, int]:
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    spacing_xyz = np.asarray(geometry.spacing_mm[::-1], dtype=np.float64)
    offset = np.asarray(point_mm, dtype=np.float64) - np.asarray(geometry.origin_mm, dtype=np.float64)
    ijk = np.linalg.solve(direction * spacing_xyz[None, :], offset)  # (x, y, z) index
    zyx = np.rint(ijk[::-1]).astype(int)
    return tuple(int(np.clip(v, 0, n - 1)) for v, n in zip(zyx, geometry.shape))  # type: ignore[return-value]


def _measure(
    lesion: Lesion,
    voxels: tuple[np.ndarray, np.ndarray, np.ndarray],
    geometry: VolumeGeometry,
    hu_by_phase: Mapping[Phase, np.ndarray],
) -> Lesion:
    zc, yc, xc = voxels  # raster order
    box = BoundingBox(int(zc.min()), int(zc.max()) + 1, int(yc.min()), int(yc.max()) + 1,
                      int(xc.min()), int(xc.max()) + 1)  # fmt: skip
    count = int(zc.size)
    centroid = geometry.index_to_patient(np.array([[zc.mean(), yc.mean(), xc.mean()]]))[0]
    ids = np.ones(count, dtype=np.intp)
    diameter = _axial_diameters_mm(ids, zc, yc, xc, 1, (geometry.spacing_mm[1], geometry.spacing_mm[2]))[1]
    mask = np.zeros(box.shape, dtype=bool)
    mask[zc - box.z0, yc - box.y0, xc - box.x0] = True
    return replace(
        lesion,
        bbox=box,
        mask=mask,
        voxel_count=count,
        volume_ml=count * geometry.voxel_volume_ml,
        longest_axial_diameter_mm=float(diameter),
        centroid_mm=tuple(float(v) for v in centroid),  # type: ignore[arg-type]
        mean_hu={phase: float(np.mean(hu[zc, yc, xc])) for phase, hu in hu_by_phase.items()},
    )


def lesions_to_reference(
    lesions: Sequence[Lesion],
    working: VolumeGeometry,
    reference: VolumeGeometry,
    hu_by_phase: Mapping[Phase, np.ndarray],
) -> list[Lesion]:
    """The lesions (on `working`) re-expressed and re-measured on `reference` (same extent).
    A lesion too thin to survive the resampling keeps the reference voxel at its centroid."""
    if not lesions:
        return []
    upsampled = resample_volume(_instance_map(lesions, working.shape), reference.shape, mode="nearest")
    boxes = ndimage.find_objects(upsampled)
    out = []
    for lesion in lesions:
        box = boxes[lesion.lesion_id - 1] if lesion.lesion_id <= len(boxes) else None
        if box is None:
            voxels = tuple(np.array([v]) for v in _nearest_index(reference, lesion.centroid_mm))
        else:
            local = np.nonzero(upsampled[box] == lesion.lesion_id)
            voxels = tuple(v + s.start for v, s in zip(local, box))
        out.append(_measure(lesion, voxels, reference, hu_by_phase))  # type: ignore[arg-type]
    return out


def labels_to_reference(labels: np.ndarray, reference: VolumeGeometry) -> np.ndarray:
    """A uint8 label map on the working grid, nearest-neighbour onto `reference`."""
    return resample_volume(labels.astype(np.uint8), reference.shape, mode="nearest").astype(np.uint8)
