"""Lesion shuffle: liver patches for UNet_patch (paper eq. 9, section IV-B1; DESIGN step 5).

Four kinds of patch (default 16 x 128 x 128 voxels):

* **original positive**: a random crop containing the lesion (when the lesion is larger than the
  patch along an axis, a random window inside the lesion's extent on that axis);
* **original negative**: a random crop with no lesion voxel at all and at least
  ``min_liver_fraction`` liver, centred on a random lesion-free liver voxel;
* **shuffled positive**: the lesion transplanted into an original negative: its image voxels (every
  channel) and its label values are pasted at a random offset, preferring offsets where the whole
  lesion lands on liver;
* **shuffled negative**: an original positive whose lesion voxels are replaced by normal liver
  texture: copied from a lesion-free stretch of liver elsewhere in the volume (the lesion's shape
  shifted onto liver that has no lesion); voxels no donor covers take the value of the nearest
  lesion-free liver voxel of the patch. Their labels become liver (7).

Every patch is masked: voxels outside the liver (label 7 or lesion labels 1-6 of ``label_map``,
plus transplanted lesion voxels) and outside the volume (patches are padded at the borders) are set
to ``fill_value`` in the image and 0 in the labels. The label map is the ground truth when making
training data and the predicted map at inference. Everything random draws from the
``np.random.Generator`` passed in, so a seed fixes the patches.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.config import CascadeConfig
from pipeline.livermax import liver_region
from pipeline.seg2det import lesion_voxels
from pipeline.types import BoundingBox, Label, Lesion

logger = logging.getLogger(__name__)

Vec3 = tuple[int, int, int]


class PatchKind(str, enum.Enum):
    """How a patch was made."""

    ORIGINAL_POSITIVE = "original_positive"
    ORIGINAL_NEGATIVE = "original_negative"
    SHUFFLED_POSITIVE = "shuffled_positive"
    SHUFFLED_NEGATIVE = "shuffled_negative"


@dataclass
class Patch:
    """One patch.

    ``image`` float32 (C, pz, py, px); ``lesion_mask`` bool (pz, py, px), the subject lesion's voxels
    in the patch (empty for negatives); ``labels`` uint8 (pz, py, px), the training target (0 outside
    the liver, 7 liver, 1-6 lesions); ``origin`` is the (z, y, x) volume index of patch voxel
    (0, 0, 0), negative or past the end where the patch is padded; for a shuffled positive it is the
    origin of the negative patch the lesion was pasted into. ``lesion_id`` is the subject lesion
    (None for original negatives). ``hard_case`` marks patches made around a known false positive
    (its ``lesion_mask`` marks the false positive; its labels show no lesion there).
    """

    image: np.ndarray
    lesion_mask: np.ndarray
    labels: np.ndarray
    kind: PatchKind
    lesion_id: int | None
    origin: Vec3
    hard_case: bool = False


@dataclass(frozen=True)
class ShuffleSettings:
    """Patch geometry and sampling limits."""

    patch_size_voxels: Vec3 = (16, 128, 128)
    fill_value: float = 0.0
    min_liver_fraction: float = 0.2
    max_tries: int = 50

    def __post_init__(self) -> None:
        size = tuple(int(v) for v in self.patch_size_voxels)
        if len(size) != 3 or any(v < 1 for v in size):
            raise ValueError(f"patch_size_voxels must be three positive sizes, got {self.patch_size_voxels}")
        object.__setattr__(self, "patch_size_voxels", size)
        if not 0.0 <= self.min_liver_fraction <= 1.0:
            raise ValueError(f"min_liver_fraction must be in [0, 1], got {self.min_liver_fraction}")
        if self.max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {self.max_tries}")

    @classmethod
    def from_config(cls, config: CascadeConfig, fill_value: float = 0.0) -> ShuffleSettings:
        """Settings with the cascade's patch size."""
        return cls(patch_size_voxels=config.patch_size_voxels, fill_value=fill_value)


class PatchSource:
    """The volume patches are cut from: image channels, label map and the liver derived from it.

    ``image`` is (C, Z, Y, X) or a sequence of C (Z, Y, X) arrays (e.g. one HU volume per phase, so
    nothing is stacked); ``label_map`` is (Z, Y, X) with lesion labels 1-6 and liver 7.
    """

    def __init__(self, image: np.ndarray | Sequence[np.ndarray], label_map: np.ndarray) -> None:
        if label_map.ndim != 3:
            raise ValueError(f"label_map must be (Z, Y, X), got shape {label_map.shape}")
        if isinstance(image, np.ndarray):
            if image.ndim == 3:
                channels = [image]
            elif image.ndim == 4:
                channels = [image[c] for c in range(image.shape[0])]
            else:
                raise ValueError(f"image must be (C, Z, Y, X) or (Z, Y, X), got shape {image.shape}")
        else:
            channels = list(image)
        if not channels:
            raise ValueError("image has no channels")
        for c, channel in enumerate(channels):
            if tuple(channel.shape) != tuple(label_map.shape):
                raise ValueError(f"image channel {c} has shape {channel.shape}, label map {label_map.shape}")
        self.channels = channels
        self.label_map = label_map
        self.shape: Vec3 = tuple(int(v) for v in label_map.shape)  # type: ignore[assignment]
        self._liver_box: BoundingBox | None | bool = False  # False: not computed yet

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    def liver_box(self) -> BoundingBox | None:
        """Bounding box of the liver region (None when there is no liver), computed once."""
        if self._liver_box is False:
            liver = liver_region(self.label_map)
            zs = np.flatnonzero(liver.any(axis=(1, 2)))
            if zs.size == 0:
                self._liver_box = None
            else:
                ys = np.flatnonzero(liver.any(axis=(0, 2)))
                xs = np.flatnonzero(liver.any(axis=(0, 1)))
                self._liver_box = BoundingBox(
                    int(zs[0]), int(zs[-1]) + 1, int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
                )
        return self._liver_box  # type: ignore[return-value]


# ---------------------------------------------------------------- array helpers


def _window(origin: Vec3, size: Vec3, shape: Vec3) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """Source (volume) and destination (patch) slices of the part of the window inside the volume."""
    src, dst = [], []
    for o, s, n in zip(origin, size, shape):
        lo, hi = max(o, 0), min(o + s, n)
        if hi <= lo:
            return None
        src.append(slice(lo, hi))
        dst.append(slice(lo - o, hi - o))
    return tuple(src), tuple(dst)


def crop_padded(volume: np.ndarray, origin: Vec3, size: Vec3, fill: float | int, dtype: np.dtype) -> np.ndarray:
    """The window of ``volume`` at ``origin`` of ``size``, padded with ``fill`` outside the volume."""
    out = np.full(size, fill, dtype=dtype)
    window = _window(origin, size, tuple(volume.shape))
    if window is not None:
        src, dst = window
        out[dst] = volume[src]
    return out


def _lesion_mask_in(lesion: Lesion, origin: Vec3, size: Vec3) -> np.ndarray:
    out = np.zeros(size, dtype=bool)
    box = lesion.bbox
    window = _window((origin[0] - box.z0, origin[1] - box.y0, origin[2] - box.x0), size, box.shape)
    if window is not None:
        src, dst = window
        out[dst] = lesion.mask[src]
    return out


def _finish(image: np.ndarray, labels: np.ndarray, fill_value: float) -> None:
    """Mask the image outside the liver (labels 0 or organs other than liver) in place."""
    outside = ~liver_region(labels)
    image[:, outside] = fill_value
    labels[outside] = 0


def _cut(source: PatchSource, origin: Vec3, settings: ShuffleSettings) -> tuple[np.ndarray, np.ndarray]:
    size = settings.patch_size_voxels
    image = np.stack(
        [crop_padded(ch, origin, size, settings.fill_value, np.dtype(np.float32)) for ch in source.channels]
    )
    labels = crop_padded(source.label_map, origin, size, 0, np.dtype(np.uint8))
    return image, labels


def _random_lesion_voxel(lesion: Lesion, rng: np.random.Generator) -> Vec3:
    local = np.argwhere(lesion.mask)
    if len(local) == 0:
        raise ValueError(f"lesion {lesion.lesion_id} has an empty mask")
    z, y, x = local[int(rng.integers(len(local)))]
    return (int(z) + lesion.bbox.z0, int(y) + lesion.bbox.y0, int(x) + lesion.bbox.x0)


def _random_origin_around(lesion: Lesion, size: Vec3, rng: np.random.Generator) -> Vec3:
    """Origin of a patch containing the lesion's extent on every axis where it fits, and on the
    other axes a window inside the extent that contains a random voxel of the lesion."""
    box = lesion.bbox
    extents = ((box.z0, box.z1), (box.y0, box.y1), (box.x0, box.x1))
    voxel = _random_lesion_voxel(lesion, rng) if any(hi - lo > s for (lo, hi), s in zip(extents, size)) else None
    origin = []
    for axis, ((lo, hi), s) in enumerate(zip(extents, size)):
        if hi - lo <= s:
            origin.append(int(rng.integers(hi - s, lo + 1)))
        else:
            v = voxel[axis]  # type: ignore[index]
            origin.append(int(rng.integers(max(lo, v - s + 1), min(v, hi - s) + 1)))
    return tuple(origin)  # type: ignore[return-value]


# ---------------------------------------------------------------- the four kinds


def original_positive(
    source: PatchSource, lesion: Lesion, settings: ShuffleSettings, rng: np.random.Generator
) -> Patch:
    """A random crop containing ``lesion`` (or a window inside it when it is larger than the patch)."""
    origin = _random_origin_around(lesion, settings.patch_size_voxels, rng)
    image, labels = _cut(source, origin, settings)
    _finish(image, labels, settings.fill_value)
    mask = _lesion_mask_in(lesion, origin, settings.patch_size_voxels)
    return Patch(image, mask, labels, PatchKind.ORIGINAL_POSITIVE, lesion.lesion_id, origin)


def _random_free_liver_voxel(source: PatchSource, rng: np.random.Generator, tries: int) -> Vec3 | None:
    box = source.liver_box()
    if box is None:
        return None
    for _ in range(tries):
        voxel = (
            int(rng.integers(box.z0, box.z1)),
            int(rng.integers(box.y0, box.y1)),
            int(rng.integers(box.x0, box.x1)),
        )
        if int(source.label_map[voxel]) == int(Label.LIVER):
            return voxel
    return None


def original_negative(
    source: PatchSource, settings: ShuffleSettings, rng: np.random.Generator
) -> Patch | None:
    """A random lesion-free liver crop, or None when ``max_tries`` draws found none."""
    size = settings.patch_size_voxels
    min_liver = settings.min_liver_fraction * float(np.prod(size))
    for _ in range(settings.max_tries):
        centre = _random_free_liver_voxel(source, rng, settings.max_tries)
        if centre is None:
            return None
        origin: Vec3 = tuple(c - s // 2 for c, s in zip(centre, size))  # type: ignore[assignment]
        labels = crop_padded(source.label_map, origin, size, 0, np.dtype(np.uint8))
        if lesion_voxels(labels).any() or np.count_nonzero(liver_region(labels)) < min_liver:
            continue
        image, labels = _cut(source, origin, settings)
        _finish(image, labels, settings.fill_value)
        return Patch(image, np.zeros(size, dtype=bool), labels, PatchKind.ORIGINAL_NEGATIVE, None, origin)
    logger.debug("no lesion-free liver patch found in %d tries", settings.max_tries)
    return None


def _lesion_source_window(lesion: Lesion, size: Vec3, rng: np.random.Generator) -> BoundingBox:
    """The part of the lesion box to transplant: all of it on axes where it fits the patch, else a
    patch-sized window inside it that contains a random lesion voxel."""
    origin = _random_origin_around(lesion, size, rng)
    box = lesion.bbox
    bounds = []
    for o, s, lo, hi in zip(origin, size, (box.z0, box.y0, box.x0), (box.z1, box.y1, box.x1)):
        bounds.extend((lo, hi) if hi - lo <= s else (o, o + s))
    return BoundingBox(*bounds)


def shuffled_positive(
    source: PatchSource, lesion: Lesion, settings: ShuffleSettings, rng: np.random.Generator
) -> Patch | None:
    """``lesion`` transplanted into an original negative; None when no negative was found."""
    negative = original_negative(source, settings, rng)
    if negative is None:
        return None
    size = settings.patch_size_voxels
    window = _lesion_source_window(lesion, size, rng)
    box = lesion.bbox
    mask = lesion.mask[
        window.z0 - box.z0 : window.z1 - box.z0,
        window.y0 - box.y0 : window.y1 - box.y0,
        window.x0 - box.x0 : window.x1 - box.x0,
    ]
    liver = liver_region(negative.labels)
    best_offset, best_cover = None, -1
    for _ in range(settings.max_tries):
        offset = tuple(int(rng.integers(0, s - w + 1)) for s, w in zip(size, window.shape))
        region = tuple(slice(o, o + w) for o, w in zip(offset, window.shape))
        cover = int(np.count_nonzero(liver[region][mask]))
        if cover > best_cover:
            best_offset, best_cover = offset, cover
        if cover == int(np.count_nonzero(mask)):
            break
    region = tuple(slice(o, o + w) for o, w in zip(best_offset, window.shape))  # type: ignore[arg-type]
    for c, channel in enumerate(source.channels):
        values = np.asarray(channel[window.slices], dtype=np.float32)
        negative.image[c][region][mask] = values[mask]
    pasted = np.asarray(source.label_map[window.slices])[mask]
    pasted[~liver_region(pasted)] = int(Label.LIVER)  # transplanted tissue is liver at least
    negative.labels[region][mask] = pasted
    lesion_mask = np.zeros(size, dtype=bool)
    lesion_mask[region] = mask
    return Patch(negative.image, lesion_mask, negative.labels, PatchKind.SHUFFLED_POSITIVE, lesion.lesion_id,
                 negative.origin)  # fmt: skip


def _donor_values(
    source: PatchSource, coords: np.ndarray, rng: np.random.Generator, tries: int
) -> tuple[np.ndarray, np.ndarray]:
    """Values of a lesion-free liver region of the lesion's shape (coords (N, 3) in the volume).

    Returns (values (C, N), covered (N,) bool): the best of ``tries`` random shifts."""
    shape = np.asarray(source.shape)
    centre = np.round(coords.mean(axis=0)).astype(np.int64)
    best_shift, best_ok = None, None
    for _ in range(tries):
        target = _random_free_liver_voxel(source, rng, tries)
        if target is None:
            break
        shifted = coords + (np.asarray(target) - centre)
        inside = np.all((shifted >= 0) & (shifted < shape), axis=1)
        ok = inside.copy()
        ok[inside] = source.label_map[tuple(shifted[inside].T)] == int(Label.LIVER)
        if best_ok is None or ok.sum() > best_ok.sum():
            best_shift, best_ok = shifted, ok
        if ok.all():
            break
    values = np.zeros((source.num_channels, len(coords)), dtype=np.float32)
    if best_ok is None:
        return values, np.zeros(len(coords), dtype=bool)
    taken = best_shift[best_ok]
    for c, channel in enumerate(source.channels):
        values[c, best_ok] = np.asarray(channel[tuple(taken.T)], dtype=np.float32)
    return values, best_ok


def shuffled_negative(
    source: PatchSource, lesion: Lesion, settings: ShuffleSettings, rng: np.random.Generator
) -> Patch:
    """An original positive of ``lesion`` with the lesion replaced by normal liver texture."""
    positive = original_positive(source, lesion, settings, rng)
    mask = positive.lesion_mask
    if mask.any():
        local = np.argwhere(mask)
        coords = local + np.asarray(positive.origin)
        values, covered = _donor_values(source, coords, rng, settings.max_tries)
        image, labels = positive.image, positive.labels
        for c in range(image.shape[0]):
            image[c][tuple(local[covered].T)] = values[c, covered]
        if not covered.all():
            normal = labels == int(Label.LIVER)
            normal[mask] = False
            rest = local[~covered]
            if normal.any():
                # nearest lesion-free liver voxel of the patch for what no donor covered
                _, nearest = ndimage.distance_transform_edt(~normal, return_indices=True)
                src = tuple(nearest[axis][tuple(rest.T)] for axis in range(3))
                for c in range(image.shape[0]):
                    image[c][tuple(rest.T)] = image[c][src]
            else:
                logger.debug("lesion %d: no normal liver to fill from; using fill value", lesion.lesion_id)
                image[:, mask] = settings.fill_value
        labels[mask] = int(Label.LIVER)
    return Patch(positive.image, np.zeros_like(mask), positive.labels, PatchKind.SHUFFLED_NEGATIVE,
                 lesion.lesion_id, positive.origin)  # fmt: skip


# ---------------------------------------------------------------- sets of patches


def inference_patches(
    source: PatchSource, lesion: Lesion, count: int, settings: ShuffleSettings, rng: np.random.Generator
) -> list[Patch]:
    """``count`` positives for reclassification: original and shuffled positives alternating,
    starting with an original; a shuffled positive that cannot be made becomes an original."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    patches = []
    for i in range(count):
        patch = shuffled_positive(source, lesion, settings, rng) if i % 2 == 1 else None
        patches.append(patch if patch is not None else original_positive(source, lesion, settings, rng))
    return patches


_TRAINING_ORDER = (
    PatchKind.ORIGINAL_POSITIVE,
    PatchKind.ORIGINAL_NEGATIVE,
    PatchKind.SHUFFLED_POSITIVE,
    PatchKind.SHUFFLED_NEGATIVE,
)


def training_patches(
    source: PatchSource,
    lesions: Sequence[Lesion],
    per_lesion: int,
    settings: ShuffleSettings,
    rng: np.random.Generator,
    *,
    false_positives: Sequence[Lesion] = (),
) -> list[Patch]:
    """About ``per_lesion`` patches for each lesion, the four kinds in turn.

    A negative that cannot be found is skipped; a shuffled positive that cannot be made becomes an
    original positive. ``false_positives`` (UNet_whole detections that are not lesions in
    ``label_map``) add hard cases: crops around them and transplants of them, ``hard_case=True``.
    """
    if per_lesion < 1:
        raise ValueError(f"per_lesion must be >= 1, got {per_lesion}")
    patches: list[Patch] = []
    makers = {
        PatchKind.ORIGINAL_POSITIVE: lambda lesion: original_positive(source, lesion, settings, rng),
        PatchKind.ORIGINAL_NEGATIVE: lambda lesion: original_negative(source, settings, rng),
        PatchKind.SHUFFLED_POSITIVE: lambda lesion: shuffled_positive(source, lesion, settings, rng)
        or original_positive(source, lesion, settings, rng),
        PatchKind.SHUFFLED_NEGATIVE: lambda lesion: shuffled_negative(source, lesion, settings, rng),
    }
    for lesion in lesions:
        for i in range(per_lesion):
            patch = makers[_TRAINING_ORDER[i % 4]](lesion)
            if patch is not None:
                patches.append(patch)
    for lesion in false_positives:
        for patch in inference_patches(source, lesion, per_lesion, settings, rng):
            patch.hard_case = True
            patches.append(patch)
    return patches
