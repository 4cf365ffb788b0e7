"""Contrast enhancement measured from the image, to confirm the phase a header claims.

Per sampled axial slice: the body (largest region above -300 HU), the parenchyma level (median of
body soft tissue, -20..250 HU) and the aorta: the brightest uniform, round structure of 1.5-12 cm2
above max(100 HU, parenchyma + 40 HU), anterior to the spine when a spine is found. An unenhanced
aorta (about 40 HU) does not stand out, so "no enhanced round vessel on most slices" reads as
non-contrast. `classify_enhancement` turns the figures into NC / AP / venous-or-delayed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.config import PhaseRulesConfig
from pipeline.types import Phase, VolumeGeometry

_MIN_BODY_AREA_MM2 = 5000.0
_VESSEL_AREA_MM2 = (150.0, 1200.0)
_MIN_ROUNDNESS = 0.5
_MAX_VESSEL_STD_HU = 60.0
_MAX_VESSEL_HU = 650.0
_SPINE_MIN_AREA_MM2 = 300.0
_SPINE_MIN_HU = 200.0
_MIN_FOUND_FRACTION = 0.25

#: image-based outcome for contrast that is not arterial (venous and delayed look alike).
VENOUS_OR_DELAYED = "VP/DP"
CONTRAST_UNSPECIFIED = "contrast"


@dataclass(frozen=True)
class EnhancementStats:
    """Figures measured on a few slices of one series."""

    aorta_hu: float  # NaN when no enhanced round vessel was found on enough slices
    parenchyma_hu: float
    vessel_found_fraction: float
    slices_used: int

    def describe(self) -> str:
        aorta = "no enhanced aorta" if math.isnan(self.aorta_hu) else f"aorta {self.aorta_hu:.0f} HU"
        return (
            f"{aorta} (found on {self.vessel_found_fraction:.0%} of {self.slices_used} slices), "
            f"parenchyma {self.parenchyma_hu:.0f} HU"
        )


@dataclass(frozen=True)
class ImagePhaseEstimate:
    """What the image says: "NC", "AP", "VP/DP", "contrast" (enhanced, phase unclear) or ""."""

    outcome: str
    confidence: float
    reason: str


def measure_enhancement(hu: np.ndarray, geometry: VolumeGeometry) -> EnhancementStats:
    """Measure aorta and parenchyma HU on the axial slices of `hu` (k, y, x); `geometry` gives
    the pixel spacing and which image direction is anterior."""
    spacing_y, spacing_x = geometry.spacing_mm[1], geometry.spacing_mm[2]
    direction = geometry.direction_matrix
    # posterior (patient +y) component, in mm, of one step along the image rows / columns
    posterior_step = np.array([direction[1, 1] * spacing_y, direction[1, 0] * spacing_x])
    aortas: list[float] = []
    parenchymas: list[float] = []
    used = 0
    for image in hu:
        result = _measure_slice(np.asarray(image, dtype=np.float32), spacing_y, spacing_x, posterior_step)
        if result is None:
            continue
        used += 1
        parenchymas.append(result[1])
        if not math.isnan(result[0]):
            aortas.append(result[0])
    found = len(aortas) / used if used else 0.0
    return EnhancementStats(
        aorta_hu=float(np.median(aortas)) if aortas and found >= _MIN_FOUND_FRACTION else math.nan,
        parenchyma_hu=float(np.median(parenchymas)) if parenchymas else math.nan,
        vessel_found_fraction=found,
        slices_used=used,
    )


def _measure_slice(
    image: np.ndarray, spacing_y: float, spacing_x: float, posterior_step: np.ndarray
) -> tuple[float, float] | None:
    pixel_area = spacing_y * spacing_x
    sigma = (min(1.5, 1.5 / spacing_y), min(1.5, 1.5 / spacing_x))
    smooth = ndimage.gaussian_filter(image, sigma=sigma)
    labels, count = ndimage.label(smooth > -300.0)
    if count == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    body = ndimage.binary_fill_holes(labels == int(np.argmax(sizes)) + 1)
    if body.sum() * pixel_area < _MIN_BODY_AREA_MM2:
        return None
    soft = smooth[body & (smooth > -20.0) & (smooth < 250.0)]
    if soft.size == 0:
        return None
    parenchyma = float(np.median(soft))

    spine_centroid = _find_spine(smooth, body, pixel_area)
    threshold = max(100.0, parenchyma + 40.0)
    radius_px = (max(1, round(2.0 / spacing_y)), max(1, round(2.0 / spacing_x)))
    structure = _ellipse(radius_px)
    bright = ndimage.binary_opening((smooth > threshold) & body, structure=structure)
    labels, count = ndimage.label(bright)
    best = math.nan
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is None:
            continue
        mask = labels[region] == index
        area = mask.sum() * pixel_area
        if not (_VESSEL_AREA_MM2[0] <= area <= _VESSEL_AREA_MM2[1]):
            continue
        yy, xx = np.nonzero(mask)
        cy, cx = yy.mean(), xx.mean()
        r_max = math.sqrt(float(np.max(((yy - cy) * spacing_y) ** 2 + ((xx - cx) * spacing_x) ** 2))) + 0.5 * spacing_x
        if area / (math.pi * r_max**2) < _MIN_ROUNDNESS:
            continue
        depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=(spacing_y, spacing_x))[1:-1, 1:-1]
        values = smooth[region][mask & (depth >= 0.5 * depth.max())]  # the core, free of partial volume
        mean, std = float(values.mean()), float(smooth[region][mask].std())
        if std > _MAX_VESSEL_STD_HU or mean > _MAX_VESSEL_HU:
            continue
        if spine_centroid is not None:
            offset = np.array([cy + region[0].start - spine_centroid[0], cx + region[1].start - spine_centroid[1]])
            if float(offset @ posterior_step) >= 0.0:  # not anterior to the spine
                continue
        if math.isnan(best) or mean > best:
            best = mean
    return best, parenchyma


def _find_spine(smooth: np.ndarray, body: np.ndarray, pixel_area: float) -> tuple[float, float] | None:
    """Centroid (row, column) of the largest non-uniform bony region, or None."""
    labels, count = ndimage.label((smooth > _SPINE_MIN_HU) & body)
    best, best_area = None, _SPINE_MIN_AREA_MM2
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is None:
            continue
        mask = labels[region] == index
        area = mask.sum() * pixel_area
        values = smooth[region][mask]
        if area < best_area or (values.std() <= _MAX_VESSEL_STD_HU and values.mean() <= _MAX_VESSEL_HU):
            continue  # too small, or uniform like an enhanced vessel
        yy, xx = np.nonzero(mask)
        best, best_area = (yy.mean() + region[0].start, xx.mean() + region[1].start), area
    return best


def _ellipse(radius_px: tuple[int, int]) -> np.ndarray:
    ry, rx = radius_px
    y, x = np.ogrid[-ry : ry + 1, -rx : rx + 1]
    return (y / max(ry, 1)) ** 2 + (x / max(rx, 1)) ** 2 <= 1.0


def classify_enhancement(stats: EnhancementStats, config: PhaseRulesConfig) -> ImagePhaseEstimate:
    """NC / AP / venous-or-delayed from the figures, with a confidence and the reason in words."""
    what = stats.describe()
    if stats.slices_used == 0:
        return ImagePhaseEstimate("", 0.0, "no body found on the sampled slices")
    aorta = stats.aorta_hu
    if math.isnan(aorta) or aorta < config.unenhanced_max_aorta_hu:
        return ImagePhaseEstimate(Phase.NC.value, 0.8, f"unenhanced: {what}")
    if aorta >= config.arterial_min_aorta_hu and aorta - stats.parenchyma_hu >= config.arterial_min_aorta_to_parenchyma_hu:
        return ImagePhaseEstimate(Phase.AP.value, 0.8, f"arterial pattern: {what}")
    if aorta <= config.venous_max_aorta_hu:
        return ImagePhaseEstimate(VENOUS_OR_DELAYED, 0.7, f"venous/delayed pattern: {what}")
    return ImagePhaseEstimate(CONTRAST_UNSPECIFIED, 0.5, f"enhanced, phase unclear: {what}")
