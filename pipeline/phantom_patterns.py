"""Textbook enhancement patterns of the phantom's lesion types: the HU of each lesion part per
phase (relative to the study's own liver and blood pool) and the HU inside a lesion from its local
coordinates.

========  ===========================================================================
HCC       hypo NC, arterial hyper-enhancement (mosaic), venous/delayed washout, capsule
          enhancing late; large ones with necrosis
ICC       irregular, arterial/venous rim enhancement, delayed central (fibrous) fill
Meta      hypo with an enhancing rim ("target"), often several
Hem       follows the blood pool: peripheral globular nodules filling centripetally
Other     FNH-like: bright homogeneous arterial, iso later, central scar (late bright)
Cyst      ~5 HU in every phase, no rim, sharp edge
========  ===========================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pipeline.phantom_shapes import ShapeSample, ramp_occupancy
from pipeline.phantom_tissues import TissueTable
from pipeline.types import LesionType

if TYPE_CHECKING:
    from pipeline.phantom_lesions import LesionSpec


def _blood_pool(table: TissueTable) -> np.ndarray:
    aorta, portal = table.row("aorta"), table.row("portal")
    return np.array([aorta[0], 0.85 * aorta[1], 0.5 * (aorta[2] + portal[2]), aorta[3]])


def _spread_directions(
    rng: np.random.Generator, n: int, min_angle_deg: float
) -> tuple[tuple[float, float, float], ...]:
    """Up to n random unit vectors at least min_angle apart (spread around a sphere)."""
    cos_min = np.cos(np.radians(min_angle_deg))
    dirs: list[np.ndarray] = []
    for _ in range(200):
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d)
        if all(d @ e < cos_min for e in dirs):
            dirs.append(d)
        if len(dirs) == n:
            break
    return tuple(tuple(float(v) for v in d) for d in dirs)


def lesion_appearance(rng: np.random.Generator, lesion_type: LesionType, volume_ml: float, table: TissueTable) -> dict:
    """HU of a lesion's parts per phase, relative to the study's liver and blood pool."""
    liver = table.row("liver")
    j = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    r_eq = (3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    out: dict = {}
    if lesion_type == LesionType.HCC:
        out["core_hu"] = liver + np.array([-j(8, 16), j(35, 60), -j(18, 32), -j(18, 30)])
        out["texture_hu"] = (3.0, j(10, 16), j(5, 8), j(4, 7))
        if rng.uniform() < 0.8:
            out["rim_hu"] = liver + np.array([-j(3, 8), j(-5, 5), j(22, 34), j(26, 40)])  # capsule
            out["rim_mm"] = j(1.6, 2.6)
        if volume_ml > 20 and rng.uniform() < 0.6:
            nec = j(20, 32)
            out["inner_hu"] = np.array([nec, nec + 1, nec + 2, nec + 2])
            out["inner_size"] = j(0.2, 0.35)
    elif lesion_type == LesionType.ICC:
        out["core_hu"] = liver + np.array([-j(12, 18), -j(15, 25), -j(22, 32), j(12, 22)])  # delayed central fill
        out["rim_hu"] = liver + np.array([-j(6, 12), j(28, 42), j(8, 16), j(2, 10)])
        out["rim_mm"] = max(2.0, r_eq * j(0.2, 0.32))
        out["texture_hu"] = (3.0, j(6, 10), j(6, 10), j(5, 8))
    elif lesion_type == LesionType.META:
        out["core_hu"] = liver + np.array([-j(15, 22), -j(20, 30), -j(45, 55), -j(35, 45)])
        out["rim_hu"] = liver + np.array([-j(8, 12), j(25, 40), j(0, 12), -j(0, 10)])
        out["rim_mm"] = max(1.8, r_eq * j(0.2, 0.3))
        out["texture_hu"] = (3.0, j(4, 7), j(4, 7), j(4, 7))
        if volume_ml > 15 and rng.uniform() < 0.5:
            nec = j(15, 28)
            out["inner_hu"] = np.array([nec] * 4)
            out["inner_size"] = j(0.2, 0.4)
    elif lesion_type == LesionType.HEM:
        unfilled = table.row("aorta")[0] + j(-4, 4)
        out["core_hu"] = np.array([unfilled, unfilled + 2, unfilled + 6, unfilled + 10])
        out["rim_hu"] = _blood_pool(table) * np.array([1.0, j(0.9, 1.0), j(0.93, 1.0), j(0.95, 1.02)])
        big = volume_ml > 10
        # Nodule radius (normalised units) per phase; the last entry also sets the fill of the
        # centripetal band: small lesions fill completely in the delayed phase, large ones keep
        # a central cleft.
        out["fill"] = (0.0, j(0.16, 0.24), j(0.36, 0.48), j(0.7, 0.85) if big else 1.3)
        out["directions"] = _spread_directions(rng, int(rng.integers(6, 10)), min_angle_deg=40.0)
        out["texture_hu"] = (2.0, 4.0, 4.0, 3.0)
    elif lesion_type == LesionType.OTHER:  # FNH-like: bright arterial, iso later, central scar
        out["core_hu"] = liver + np.array([-j(2, 8), j(45, 70), j(0, 8), j(-3, 4)])
        out["texture_hu"] = (2.0, j(3, 6), 3.0, 3.0)
        if volume_ml > 3 and rng.uniform() < 0.85:
            out["inner_hu"] = liver + np.array([-j(15, 25), -j(20, 35), -j(30, 45), j(8, 18)])
            out["inner_size"] = j(0.17, 0.26)
            n = int(rng.integers(3, 6))
            dirs = rng.standard_normal((n, 3))
            dirs[:, 2] *= 0.4  # spokes mostly in-plane, visible on axial slices
            out["directions"] = tuple(tuple(float(v) for v in d / np.linalg.norm(d)) for d in dirs)
    else:  # cyst
        hu = j(0, 12)
        out["core_hu"] = np.array([hu, hu, hu + 0.5, hu + 0.5])
        out["texture_hu"] = (0.5, 0.5, 0.5, 0.5)
    for key in ("core_hu", "rim_hu", "inner_hu"):
        if key in out:
            out[key] = tuple(float(v) for v in np.asarray(out[key]))
    out["texture_hu"] = tuple(float(v) for v in out["texture_hu"])
    return out


def _mix(base: np.ndarray, weight: np.ndarray, value: float | np.ndarray) -> np.ndarray:
    return base + weight * (np.float32(value) - base)


def lesion_hu(
    spec: LesionSpec, phase_i: int, sample: ShapeSample, x: np.ndarray, y: np.ndarray, z: np.ndarray
) -> np.ndarray:
    """HU inside a lesion in one phase, given its local coordinates (sample with local=True)."""
    rho, sdf = sample.rho, sample.sdf_mm
    tex = spec.texture.sample(x, y, z)
    hu = np.float32(spec.core_hu[phase_i]) + np.float32(spec.texture_hu[phase_i]) * tex
    r_mm = np.float32(spec.radius_mm)
    t = spec.lesion_type
    if t in (LesionType.HCC, LesionType.META) and spec.inner_hu is not None:
        nec = ramp_occupancy((rho - np.float32(spec.inner_size) + np.float32(0.08) * tex) * r_mm, 1.5)
        hu = _mix(hu, nec, spec.inner_hu[phase_i])
    if t in (LesionType.HCC, LesionType.ICC, LesionType.META) and spec.rim_hu is not None:
        rim = ramp_occupancy(-(sdf + np.float32(spec.rim_mm)), 1.2 if t == LesionType.HCC else 2.0)
        hu = _mix(hu, rim, spec.rim_hu[phase_i])
    elif t == LesionType.HEM and phase_i > 0:
        # Globular nodules at the periphery (blood-pool HU) that grow and merge centripetally.
        u1, u2, u3 = sample.u
        s1, s2, s3 = rho * u1, rho * u2, rho * u3
        radius = np.float32(spec.fill[phase_i])
        filled = np.zeros_like(rho)
        for d in spec.directions:
            c1, c2, c3 = (np.float32(0.88 * v) for v in d)
            dist = np.sqrt((s1 - c1) ** 2 + (s2 - c2) ** 2 + (s3 - c3) ** 2)
            filled = np.maximum(filled, ramp_occupancy((dist - radius) * r_mm, 1.5))
        if phase_i == 3:  # delayed: confluent fill from the periphery inwards
            band = ramp_occupancy((np.float32(1.0) - rho - radius) * r_mm, 1.5)
            filled = np.maximum(filled, band)
        hu = _mix(hu, filled, spec.rim_hu[phase_i])
    elif t == LesionType.OTHER and spec.inner_hu is not None:
        u1, u2, u3 = sample.u
        spoke = np.zeros_like(rho)
        for d in spec.directions:
            cos = u1 * np.float32(d[0]) + u2 * np.float32(d[1]) + u3 * np.float32(d[2])
            spoke = np.maximum(spoke, ramp_occupancy((np.float32(0.96) - cos) * r_mm, 1.5))
        scar = np.maximum(
            ramp_occupancy((rho - np.float32(spec.inner_size)) * r_mm, 1.2),
            spoke * ramp_occupancy((rho - np.float32(0.65)) * r_mm, 1.5),
        )
        hu = _mix(hu, scar, spec.inner_hu[phase_i])
    return hu
