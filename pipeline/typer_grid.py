"""Lesion features on the grid a lesion typer learnt them on.

Some of the typer's features are per-voxel statistics (10th and 90th percentile, standard
deviation, rim and core means) whose values depend on the voxel size: noise averages out in large
voxels and a 2 mm rim is a different share of a lesion on a 1 mm grid than on a 3 mm one. A typer
is trained on its model card's working grid (``Preprocessing.target_spacing_mm``, resampled with or
without anti-aliasing). A lesion found on another grid, as with an nnU-Net model (its
probabilities come back on the study's grid) or a typer lent from a folder with another grid
(``model.typer_dir``), is judged after moving the HU volumes, the label map and the lesion masks
onto the typer's grid, the way ``pipeline.inference.prepare_input`` moves a study onto a working
grid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.inference import resample_volume, resampled_geometry, working_shape
from pipeline.model import Preprocessing
from pipeline.types import BoundingBox, Lesion, Phase, VolumeGeometry

#: Relative difference of voxel size below which two grids count as the same (``working_shape``
#: rounds the voxel count, so a working grid's spacing is the target's only approximately).
SAME_GRID_TOLERANCE = 0.1


@dataclass(frozen=True)
class FeatureGrid:
    """The grid a lesion typer's features were computed on when it was trained."""

    spacing_mm: tuple[float, float, float]  # (z, y, x)
    anti_alias: bool = False

    @classmethod
    def of(cls, prep: Preprocessing) -> "FeatureGrid":
        """The working grid of a model card's preprocessing (where ``livernode train typer``
        computes its features)."""
        return cls(tuple(float(v) for v in prep.target_spacing_mm), prep.anti_alias)  # type: ignore[arg-type]

    def holds(self, geometry: VolumeGeometry) -> bool:
        """Whether `geometry` is (about) this grid, so features computed on it need no resampling."""
        return all(abs(s - t) <= SAME_GRID_TOLERANCE * t for s, t in zip(geometry.spacing_mm, self.spacing_mm))


@dataclass
class OnFeatureGrid:
    """Lesions, HU volumes and label map moved onto a typer's feature grid; ``lesions[i]`` is the
    i-th input lesion."""

    lesions: list[Lesion]
    hu: dict[Phase, np.ndarray]
    labels: np.ndarray
    geometry: VolumeGeometry


def _axis_weights(n: int, m: int) -> np.ndarray:
    """(m, n) weights that take n cells along an axis to m cells over the same extent. Coarser
    target cells average the source cells whose centres they hold; finer ones take the source
    cell that holds their centre."""
    weights = np.zeros((m, n), dtype=np.float32)
    if m > n:
        weights[np.arange(m), np.minimum(((np.arange(m) + 0.5) * n / m).astype(np.int64), n - 1)] = 1.0
    else:
        weights[np.minimum(((np.arange(n) + 0.5) * m / n).astype(np.int64), m - 1), np.arange(n)] = 1.0
        weights /= weights.sum(axis=1, keepdims=True)
    return weights


def lesion_on_grid(lesion: Lesion, source_shape: tuple[int, int, int], shape: tuple[int, int, int]) -> Lesion:
    """`lesion` (a mask on a grid of `source_shape`) on a grid of `shape` over the same extent:
    the target voxels that the lesion covers at least half (by the source voxels they average),
    or the most covered one when none is, so a lesion smaller than a target voxel is not lost."""
    coverage = lesion.mask.astype(np.float32)
    offset = []
    for axis, (n, m, start) in enumerate(zip(source_shape, shape, (lesion.bbox.z0, lesion.bbox.y0, lesion.bbox.x0))):
        weights = _axis_weights(n, m)[:, start:start + lesion.mask.shape[axis]]
        rows = np.flatnonzero(weights.any(axis=1))
        coverage = np.moveaxis(np.tensordot(weights[rows[0]:rows[-1] + 1], coverage, axes=([1], [axis])), 0, axis)
        offset.append(int(rows[0]))
    mask = coverage >= 0.5
    if not mask.any():
        mask = coverage == coverage.max()
    z0, y0, x0 = offset
    nz, ny, nx = mask.shape
    return dataclasses.replace(
        lesion,
        bbox=BoundingBox(z0, z0 + nz, y0, y0 + ny, x0, x0 + nx),
        mask=mask,
        voxel_count=int(mask.sum()),
    )


def hu_on_grid(hu_by_phase: Mapping[Phase, np.ndarray], geometry: VolumeGeometry, grid: FeatureGrid) -> dict[
        Phase, np.ndarray]:
    """HU volumes on `geometry` resampled onto `grid` as the typer's model resamples a study."""
    shape = working_shape(geometry, grid.spacing_mm)
    return {phase: resample_volume(np.asarray(volume, dtype=np.float32), shape, anti_alias=grid.anti_alias)
            for phase, volume in hu_by_phase.items()}


def to_feature_grid(
    lesions: Sequence[Lesion],
    hu_by_phase: Mapping[Phase, np.ndarray],
    labels: np.ndarray,
    geometry: VolumeGeometry,
    grid: FeatureGrid,
    moved_hu: Mapping[Phase, np.ndarray] | None = None,
) -> OnFeatureGrid:
    """Move lesions found in `labels` on `geometry`, with the HU volumes they were found in, onto
    `grid`: HU by :func:`hu_on_grid` (or `moved_hu`, its result for these volumes, when the caller
    moves several label maps of one study), the label map by nearest voxel, each lesion by
    :func:`lesion_on_grid` and written into the label map with its type, so the liver reference
    around it excludes it."""
    shape = working_shape(geometry, grid.spacing_mm)
    hu = dict(moved_hu) if moved_hu is not None else hu_on_grid(hu_by_phase, geometry, grid)
    moved_labels = resample_volume(np.asarray(labels, dtype=np.uint8), shape, mode="nearest")
    moved = [lesion_on_grid(lesion, geometry.shape, shape) for lesion in lesions]
    for lesion in moved:
        region = moved_labels[lesion.bbox.slices]
        region[lesion.mask] = int(lesion.lesion_type)
    return OnFeatureGrid(moved, hu, moved_labels, resampled_geometry(geometry, shape))


__all__ = ["FeatureGrid", "OnFeatureGrid", "SAME_GRID_TOLERANCE", "hu_on_grid", "lesion_on_grid", "to_feature_grid"]
