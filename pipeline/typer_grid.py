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

A typer can also read its HU from the study itself (``FeatureGrid.from_study``): the registered
phases at the study's own resolution, resampled (anti-aliased) onto the feature grid, rather than
the working grid's HU. The lesions are still found on the working grid and only their masks are
moved; what the finer HU adds is the detail the working grid averages away or skips (a
haemangioma's nodules, a capsule, a thin rim). The model card's ``typer.feature_grid`` records
which (:meth:`FeatureGrid.to_json`); a card without it means the card's working grid, from the
working grid's HU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.inference import anti_alias_sigmas, resample_volume, resampled_geometry, working_shape
from pipeline.lesion_features import SHELL_MM
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
    #: the HU come from the study's registered phases on their own grid, not from the working grid
    from_study: bool = False

    def to_json(self) -> dict[str, Any]:
        """The grid as the model card's ``typer.feature_grid`` records it."""
        return {"spacing_mm": list(self.spacing_mm), "anti_alias": self.anti_alias,
                "hu_from": "study" if self.from_study else "working grid"}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "FeatureGrid":
        """The grid of a model card's ``typer.feature_grid`` (ValueError when malformed)."""
        spacing = tuple(float(v) for v in data["spacing_mm"])
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"feature_grid.spacing_mm must be three positive millimetre values, not {spacing}")
        source = data.get("hu_from", "working grid")
        if source not in ("study", "working grid"):
            raise ValueError(f"feature_grid.hu_from must be 'study' or 'working grid', not {source!r}")
        return cls(spacing, bool(data.get("anti_alias", False)), source == "study")  # type: ignore[arg-type]

    def describe(self) -> str:
        """E.g. '2 x 1.5 x 1.5 mm, anti-aliased, HU from the study'."""
        size = " x ".join(f"{v:g}" for v in self.spacing_mm)
        return (f"{size} mm{', anti-aliased' if self.anti_alias else ''}, "
                f"HU from the {'study' if self.from_study else 'working grid'}")

    @classmethod
    def of(cls, prep: Preprocessing) -> "FeatureGrid":
        """The working grid of a model card's preprocessing (where ``livernode train typer``
        computes its features)."""
        return cls(tuple(float(v) for v in prep.target_spacing_mm), prep.anti_alias)  # type: ignore[arg-type]

    def holds(self, geometry: VolumeGeometry) -> bool:
        """Whether `geometry` is (about) this grid, so features computed on it need no resampling."""
        return all(abs(s - t) <= SAME_GRID_TOLERANCE * t for s, t in zip(geometry.spacing_mm, self.spacing_mm))

    def needs_moving(self, geometry: VolumeGeometry) -> bool:
        """Whether lesions found on `geometry` must be moved onto this grid before their features
        are read: the grid differs, or the HU must come from the study rather than `geometry`."""
        return self.from_study or not self.holds(geometry)


def study_feature_grid(prep: Preprocessing) -> FeatureGrid:
    """The model's working grid with HU from the study, anti-aliased onto it (``livernode train
    typer --typer-grid study``): on validation phantoms it types a few more lesions right than the
    working grid's own HU, on the 48 held-out studies it is not better (docs/models.md, "Session
    23")."""
    return dataclasses.replace(FeatureGrid.of(prep), anti_alias=True, from_study=True)


@dataclass(frozen=True)
class StudyHU:
    """A study's registered phases on its own grid (the reference phase's), for a typer that reads
    its HU from the study (:attr:`FeatureGrid.from_study`)."""

    hu: Mapping[Phase, np.ndarray]
    geometry: VolumeGeometry


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


def hu_on_grid(
    hu_by_phase: Mapping[Phase, np.ndarray], geometry: VolumeGeometry, grid: FeatureGrid,
    region: BoundingBox | None = None,
) -> dict[Phase, np.ndarray]:
    """HU volumes on `geometry` resampled onto `grid` as the typer's model resamples a study. With
    an anti-aliased grid and a `region` (voxels of `grid`), only the source voxels that region
    reads are smoothed first: inside it the values are those of smoothing the whole volume (the
    Gaussian's reach is cropped with it), outside it they are plain trilinear samples; smoothing a
    whole thin-slice four-phase study takes seconds, a region around its lesions a fraction."""
    shape = working_shape(geometry, grid.spacing_mm)
    out = {}
    for phase, volume in hu_by_phase.items():
        volume = np.asarray(volume, dtype=np.float32)
        if grid.anti_alias and region is not None:
            out[phase] = resample_volume(_smoothed_for(volume, shape, region), shape)
        else:
            out[phase] = resample_volume(volume, shape, anti_alias=grid.anti_alias)
    return out


def _smoothed_for(volume: np.ndarray, shape: tuple[int, int, int], region: BoundingBox) -> np.ndarray:
    """`volume` with the source voxels that trilinear sampling of `region` (on a grid of `shape`)
    reads replaced by their anti-aliased values, computed on a crop that holds the Gaussian's
    whole reach (``ndimage.gaussian_filter``: truncate 4 sigma)."""
    sigmas = anti_alias_sigmas(volume.shape, shape)
    if not any(sigmas):
        return volume
    inner, padded = [], []
    for n, m, (a, b), sigma in zip(volume.shape, shape, ((region.z0, region.z1), (region.y0, region.y1),
                                                         (region.x0, region.x1)), sigmas):
        lo = max(int(np.floor((a + 0.5) * n / m - 0.5)), 0)
        hi = min(int(np.floor((b - 0.5) * n / m - 0.5)) + 2, n)
        reach = int(4.0 * sigma + 0.5) + 1
        inner.append((lo, hi))
        padded.append((max(lo - reach, 0), min(hi + reach, n)))
    crop = tuple(slice(lo, hi) for lo, hi in padded)
    smoothed = ndimage.gaussian_filter(volume[crop], sigmas, mode="nearest")
    out = volume.copy()
    out[tuple(slice(lo, hi) for lo, hi in inner)] = smoothed[tuple(
        slice(lo - plo, hi - plo) for (lo, hi), (plo, _) in zip(inner, padded))]
    return out


def lesions_region(lesions: Sequence[Lesion], source_shape: tuple[int, int, int], shape: tuple[int, int, int],
                   spacing_mm: tuple[float, float, float]) -> BoundingBox | None:
    """The voxels of a grid of `shape` whose HU the typer reads for `lesions` (found on a grid of
    `source_shape` over the same extent): their boxes, widened by the liver shell around a lesion
    (``lesion_features.SHELL_MM``), its crop margin and a voxel of outline change; None without
    lesions."""
    if not lesions:
        return None
    bounds = []
    for axis, (n, m, s) in enumerate(zip(source_shape, shape, spacing_mm)):
        lo = min((lesion.bbox.z0, lesion.bbox.y0, lesion.bbox.x0)[axis] for lesion in lesions)
        hi = max((lesion.bbox.z1, lesion.bbox.y1, lesion.bbox.x1)[axis] for lesion in lesions)
        margin = int(np.ceil(SHELL_MM / s)) + 3
        bounds.append((max(int(np.floor(lo * m / n)) - margin, 0), min(int(np.ceil(hi * m / n)) + margin, m)))
    (z0, z1), (y0, y1), (x0, x1) = bounds
    return BoundingBox(z0, z1, y0, y1, x0, x1)


def typer_hu(
    grid: FeatureGrid,
    hu_by_phase: Mapping[Phase, np.ndarray],
    geometry: VolumeGeometry,
    study: StudyHU | None = None,
    lesions: Sequence[Lesion] | None = None,
) -> dict[Phase, np.ndarray] | None:
    """The HU a typer with features on `grid` reads for lesions found on `geometry` (working grid
    HU `hu_by_phase`): ``None`` when it reads them as they are, else the study's own HU (for a grid
    :attr:`~FeatureGrid.from_study`; the phases of `hu_by_phase` only) or the working grid's, moved
    onto `grid`. Given the `lesions` to be typed, only the region around them is anti-aliased
    (:func:`hu_on_grid`); their features are the same."""
    if not grid.needs_moving(geometry):
        return None
    shape = working_shape(geometry, grid.spacing_mm)
    region = (lesions_region(lesions, geometry.shape, shape, resampled_geometry(geometry, shape).spacing_mm)
              if lesions is not None else None)
    if not grid.from_study:
        return hu_on_grid(hu_by_phase, geometry, grid, region)
    if study is None:
        raise ValueError(f"the lesion typer reads its HU from the study ({grid.describe()}), but the study's "
                         "own volumes were not given")
    return hu_on_grid({p: v for p, v in study.hu.items() if p in hu_by_phase}, study.geometry, grid, region)


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
    if moved_hu is None and grid.from_study:
        raise ValueError("this lesion typer reads its HU from the study's own volumes: give them moved onto "
                         "its grid (moved_hu = hu_on_grid(study HU, study geometry, grid))")
    hu = dict(moved_hu) if moved_hu is not None else hu_on_grid(hu_by_phase, geometry, grid)
    for phase, volume in hu.items():
        if volume.shape != shape:
            raise ValueError(f"{phase.value} HU on the feature grid have shape {volume.shape}, but the lesions "
                             f"of a {geometry.shape} grid move onto {shape}: not the same study extent")
    moved_labels = resample_volume(np.asarray(labels, dtype=np.uint8), shape, mode="nearest")
    moved = [lesion_on_grid(lesion, geometry.shape, shape) for lesion in lesions]
    for lesion in moved:
        region = moved_labels[lesion.bbox.slices]
        region[lesion.mask] = int(lesion.lesion_type)
    return OnFeatureGrid(moved, hu, moved_labels, resampled_geometry(geometry, shape))


__all__ = ["FeatureGrid", "OnFeatureGrid", "SAME_GRID_TOLERANCE", "StudyHU", "hu_on_grid", "lesion_on_grid",
           "study_feature_grid", "to_feature_grid", "typer_hu"]
