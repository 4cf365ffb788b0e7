"""Multi-sensitivity segmentation: ``Prob[1:7] *= f`` then argmax (paper eq. 2-3, DESIGN step 2).

All label maps come from one set of probability maps (no second inference). The work is done per
z-slab so that only ``slab_slices`` slices of the 14 channels are ever held in working memory on
top of the caller's array (which may be a ``np.memmap``); float16 input is never converted as a
whole: the running maxima compare the values' bit patterns as unsigned integers (exact for
non-negative floats; a negative or NaN probability raises ValueError), and only the two per-voxel
maxima of a slab are turned into float32.

How the scaled argmax is computed without materialising a scaled copy: scaling every lesion
channel by the same positive factor cannot change their order, so per voxel we need only

* the best lesion channel ``l`` (argmax over channels 1-6) and its value ``pl``,
* the best other channel ``o`` (argmax over channels 0 and 7-13) and its value ``po``,

and the label at factor ``f`` is ``l`` when ``pl * f > po``, else ``o``.

Tie rule (documented and tested): as ``np.argmax``, the lowest channel index wins a tie.
Between lesion channels that is the more severe type (HCC before ICC ...). When the scaled lesion
value equals the best other value, background (channel 0) wins over a lesion, and a lesion wins
over an organ (channels 7-13). With ``f == 1`` the result is exactly ``np.argmax(Prob, axis=0)``;
for any power-of-two factor (the default 4 included) it is exactly ``np.argmax`` of the float32
array scaled in place, because such products are exact. For other factors the lesion/other
comparison uses the float32 product, and the lesion type is the unscaled argmax (the exact-arithmetic
answer; a float rounding tie cannot reorder two lesion channels).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from pipeline.livermax import LiverMaxAccumulator
from pipeline.types import NUM_CLASSES, LesionType

logger = logging.getLogger(__name__)

#: channels 1-6 are lesions; the others (background and organs) compete with them.
LESION_CHANNELS = slice(1, 7)
LESION_CHANNEL_INDICES: tuple[int, ...] = tuple(range(1, 7))
OTHER_CHANNELS: tuple[int, ...] = (0,) + tuple(range(7, NUM_CLASSES))


@dataclass
class MultiSensitivityResult:
    """Label maps at each sensitivity factor plus the fused LiverMax scores.

    ``label_maps`` maps each factor to a uint8 (z, y, x) label map; ``livermax`` holds the
    unscaled per-type maximum probability inside the liver of the map of ``base_factor``.
    """

    label_maps: dict[float, np.ndarray]
    base_factor: float
    livermax: dict[LesionType, float] = field(default_factory=dict)


def validate_probabilities(probabilities: np.ndarray) -> None:
    """Raise ValueError unless ``probabilities`` is a (14, Z, Y, X) float16/float32 array."""
    if not isinstance(probabilities, np.ndarray):
        raise ValueError(f"probabilities must be a numpy array (or memmap), got {type(probabilities).__name__}")
    if probabilities.ndim != 4 or probabilities.shape[0] != NUM_CLASSES:
        raise ValueError(
            f"probabilities must have shape ({NUM_CLASSES}, Z, Y, X), got {tuple(probabilities.shape)}"
        )
    if probabilities.dtype not in (np.float16, np.float32):
        raise ValueError(f"probabilities must be float16 or float32, got {probabilities.dtype}")


def _validate_factors(factors: Iterable[float]) -> tuple[float, ...]:
    out = tuple(float(f) for f in factors)
    if not out:
        raise ValueError("give at least one sensitivity factor")
    if any(not np.isfinite(f) or f <= 0 for f in out):
        raise ValueError(f"sensitivity factors must be finite and > 0, got {out}")
    return out


def iter_slabs(num_slices: int, slab_slices: int) -> Iterator[slice]:
    """Yield consecutive z-slices covering ``range(num_slices)`` in chunks of ``slab_slices``."""
    if slab_slices < 1:
        raise ValueError(f"slab_slices must be >= 1, got {slab_slices}")
    for z0 in range(0, num_slices, slab_slices):
        yield slice(z0, min(z0 + slab_slices, num_slices))


_BITS = {np.dtype(np.float16): (np.uint16, 0x7C00), np.dtype(np.float32): (np.uint32, 0x7F800000)}


def _running_argmax(bits: np.ndarray, channels: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Argmax label (uint8) and maximum over ``channels`` of a (14, z, y, x) slab of float bit
    patterns viewed as unsigned integers.

    For non-negative floats the unsigned bit pattern orders exactly like the value, so the running
    maximum runs on integers (much faster than float16 arithmetic, and exact). Channels are visited
    in increasing order and only a strictly greater value takes over: the lowest channel wins a tie,
    as in ``np.argmax``. The label update is uint8 modular arithmetic ``arg += better * (c - arg)``,
    several times faster than a masked copy."""
    value = bits[channels[0]].copy()
    arg = np.full(value.shape, channels[0], dtype=np.uint8)
    better = np.empty(value.shape, dtype=bool)
    step = np.empty(value.shape, dtype=np.uint8)
    for channel in channels[1:]:
        candidate = bits[channel]
        np.greater(candidate, value, out=better)
        np.maximum(value, candidate, out=value)
        np.subtract(np.uint8(channel), arg, out=step)
        np.multiply(step, better, out=step)
        np.add(arg, step, out=arg)
    return arg, value


def _split_slab(slab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Best lesion label/value and best other label/value (values float32) of one slab."""
    uint, limit = _BITS[slab.dtype]
    bits = slab.view(uint)
    lesion_arg, lesion_bits = _running_argmax(bits, LESION_CHANNEL_INDICES)
    other_arg, other_bits = _running_argmax(bits, OTHER_CHANNELS)
    # a negative value or NaN has a bit pattern above +inf's, so it would show up in a maximum
    if (lesion_bits > limit).any() or (other_bits > limit).any():
        raise ValueError("probabilities must be non-negative and not NaN (softmax output)")
    lesion_val = lesion_bits.view(slab.dtype).astype(np.float32, copy=False)
    other_val = other_bits.view(slab.dtype).astype(np.float32, copy=False)
    return lesion_arg, lesion_val, other_arg, other_val


def _label_at_factor(
    factor: float,
    lesion_arg: np.ndarray,
    lesion_val: np.ndarray,
    other_arg: np.ndarray,
    other_val: np.ndarray,
) -> np.ndarray:
    scaled = lesion_val if factor == 1.0 else lesion_val * np.float32(factor)
    # tie: the lower channel index wins; background (0) beats a lesion, a lesion beats an organ.
    lesion_wins = (scaled > other_val) | ((scaled == other_val) & (other_arg > lesion_arg))
    return np.where(lesion_wins, lesion_arg, other_arg)


def scaled_argmax(
    probabilities: np.ndarray,
    factors: Iterable[float] = (1.0, 4.0),
    *,
    slab_slices: int = 32,
    compute_livermax: bool = True,
) -> MultiSensitivityResult:
    """Label maps for every factor in ``factors`` from one (14, Z, Y, X) probability array.

    ``probabilities`` may be float16 or float32, in memory or a ``np.memmap``; it is read one
    z-slab at a time and never modified. Returns uint8 (Z, Y, X) maps keyed by factor. When
    ``compute_livermax`` is set, LiverMax (DESIGN step 9) is computed in the same pass, over the
    liver of the first factor's map (liver label 7 or lesion labels 1-6), from unscaled values.
    """
    validate_probabilities(probabilities)
    factor_tuple = _validate_factors(factors)
    unique_factors = tuple(dict.fromkeys(factor_tuple))
    _, nz, ny, nx = probabilities.shape
    maps = {f: np.empty((nz, ny, nx), dtype=np.uint8) for f in unique_factors}
    base = factor_tuple[0]
    accumulator = LiverMaxAccumulator() if compute_livermax else None
    for zs in iter_slabs(nz, slab_slices):
        slab = np.asarray(probabilities[:, zs])
        parts = _split_slab(slab)
        for factor in unique_factors:
            maps[factor][zs] = _label_at_factor(factor, *parts)
        if accumulator is not None:
            accumulator.update(slab, maps[base][zs])
    livermax = accumulator.result() if accumulator is not None else {}
    logger.debug("scaled argmax done for factors %s over %d slices", unique_factors, nz)
    return MultiSensitivityResult(label_maps=maps, base_factor=base, livermax=livermax)


def scaled_argmax_reference(probabilities: np.ndarray, factor: float) -> np.ndarray:
    """The plain definition, for tests: float32 copy, ``[1:7] *= factor``, ``np.argmax``."""
    scaled = np.array(probabilities, dtype=np.float32, copy=True)
    scaled[LESION_CHANNELS] *= np.float32(factor)
    return np.argmax(scaled, axis=0).astype(np.uint8)
