"""Ground truth of a phantom: per-lesion measurements from the rendered label maps, and the files
(label and instance maps as NIfTI, lesions.json) written next to the DICOM series."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.types import LesionType, Phase, VolumeGeometry


@dataclass
class PhantomLesion:
    """Truth of one lesion, measured on the venous (reference) grid."""

    lesion_id: int
    lesion_type: LesionType
    voxel_count: int
    volume_ml: float  # voxel_count x voxel volume
    nominal_volume_ml: float  # volume of the analytic shape
    centroid_mm: tuple[float, float, float]  # patient LPS of the labelled voxels, VP frame
    center_mm: tuple[float, float, float]  # analytic centre, patient LPS, VP frame
    longest_axial_diameter_mm: float
    truncated: bool  # touches the first or last slice
    mean_hu: dict[Phase, float] = field(default_factory=dict)  # noise-free, in each phase's own frame

    @property
    def label(self) -> int:
        return int(self.lesion_type)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.lesion_id,
            "type": self.lesion_type.display_name,
            "label": self.label,
            "volume_ml": round(self.volume_ml, 4),
            "nominal_volume_ml": round(self.nominal_volume_ml, 4),
            "voxel_count": self.voxel_count,
            "centroid_mm": [round(v, 3) for v in self.centroid_mm],
            "center_mm": [round(v, 3) for v in self.center_mm],
            "longest_axial_diameter_mm": round(self.longest_axial_diameter_mm, 2),
            "truncated": self.truncated,
            "mean_hu": {p.value: round(v, 2) for p, v in self.mean_hu.items()},
        }


def longest_axial_diameter_mm(mask: np.ndarray, pixel_mm: tuple[float, float]) -> float:
    """Largest in-plane extent (max Feret diameter, pixel centres plus one pixel) over slices."""
    best = 0.0
    for sl in mask:
        if not sl.any():
            continue
        edge = sl & ~ndimage.binary_erosion(sl)
        pts = np.argwhere(edge).astype(np.float64) * np.asarray(pixel_mm)
        if len(pts) > 800:
            pts = pts[:: int(np.ceil(len(pts) / 800))]
        d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).max() if len(pts) > 1 else 0.0
        best = max(best, float(d) + float(np.mean(pixel_mm)))
    return best


def measure_lesions(
    instances: np.ndarray,
    geometry: VolumeGeometry,
    ids_types: dict[int, tuple[LesionType, float, tuple[float, float, float]]],
) -> list[PhantomLesion]:
    """Lesions present in an instance map; ids_types maps id -> (type, nominal ml, centre mm)."""
    out = []
    objects = ndimage.find_objects(instances.astype(np.int32), max_label=max(ids_types, default=0))
    for lesion_id, (ltype, nominal, center) in sorted(ids_types.items()):
        box = objects[lesion_id - 1] if lesion_id - 1 < len(objects) else None
        if box is None:
            continue
        mask = instances[box] == lesion_id
        count = int(mask.sum())
        idx = np.argwhere(mask).astype(np.float64) + np.array([s.start for s in box])
        centroid = geometry.index_to_patient(idx.mean(axis=0, keepdims=True))[0]
        out.append(
            PhantomLesion(
                lesion_id=lesion_id,
                lesion_type=ltype,
                voxel_count=count,
                volume_ml=count * geometry.voxel_volume_ml,
                nominal_volume_ml=nominal,
                centroid_mm=tuple(float(v) for v in centroid),
                center_mm=center,
                longest_axial_diameter_mm=longest_axial_diameter_mm(
                    mask, (geometry.spacing_mm[1], geometry.spacing_mm[2])
                ),
                truncated=box[0].start == 0 or box[0].stop == instances.shape[0],
            )
        )
    return out


def mean_hu_by_instance(hu: np.ndarray, instances: np.ndarray, count: int) -> dict[int, float]:
    """Mean HU of each instance id 1..count present in the map."""
    flat = instances.ravel().astype(np.int64)
    sums = np.bincount(flat, weights=hu.ravel().astype(np.float64), minlength=count + 1)
    counts = np.bincount(flat, minlength=count + 1)
    return {i: float(sums[i] / counts[i]) for i in range(1, count + 1) if counts[i] > 0}


def write_nifti(path: Path, array: np.ndarray, geometry: VolumeGeometry) -> None:
    """Write a (z, y, x) array with the geometry of the grid (spacing, origin, direction)."""
    import SimpleITK as sitk  # here, so in-memory phantoms (training) need no SimpleITK

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(v) for v in geometry.spacing_mm[::-1]))
    image.SetOrigin(tuple(float(v) for v in geometry.origin_mm))
    image.SetDirection(tuple(float(v) for v in geometry.direction))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def write_lesions_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
