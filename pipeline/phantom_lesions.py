"""Liver lesions and look-alikes of the phantom: how many, which types, what size, where, and
their textbook enhancement patterns across the phases.

Lesion HU are set relative to the study's own liver (or blood pool) in each phase, so a lesion
keeps its pattern (e.g. HCC arterial hyper-enhancement and venous washout) whatever the study's
contrast timing. Look-alikes (arterial perfusion anomalies, focal fat) are painted into the liver
but keep the liver label: they are the hard negatives.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from pipeline.phantom_anatomy import Anatomy, shape_extent
from pipeline.phantom_grid import NoiseField
from pipeline.phantom_patterns import lesion_appearance
from pipeline.phantom_shapes import (
    DeformedEllipsoid,
    Harmonic,
    random_rotation,
    sphere_points,
)
from pipeline.phantom_tissues import TissueTable
from pipeline.types import Label, LesionType

log = logging.getLogger(__name__)

#: Probability of each primary lesion type in a patient with lesions.
TYPE_WEIGHTS: dict[LesionType, float] = {
    LesionType.HCC: 0.22,
    LesionType.ICC: 0.12,
    LesionType.META: 0.22,
    LesionType.HEM: 0.16,
    LesionType.OTHER: 0.12,
    LesionType.CYST: 0.16,
}
#: Volume strata (ml) and their probabilities; log-uniform within a stratum.
VOLUME_STRATA: tuple[tuple[float, float, float], ...] = (
    (0.5, 2.0, 0.28),
    (2.0, 4.0, 0.14),
    (4.0, 8.0, 0.13),
    (8.0, 16.0, 0.13),
    (16.0, 64.0, 0.20),
    (64.0, 180.0, 0.12),
)
LESION_FREE_PROBABILITY = 0.10
MAX_LESIONS = 6


@dataclass(frozen=True)
class LesionRequest:
    """Ask for one lesion of a given type (and optionally volume) instead of random sampling."""

    lesion_type: LesionType
    volume_ml: float | None = None


@dataclass(frozen=True, eq=False)
class LesionSpec:
    """One lesion: shape, and the HU of its parts in each phase (NC, AP, VP, DP)."""

    lesion_id: int
    lesion_type: LesionType
    shape: DeformedEllipsoid
    nominal_volume_ml: float
    core_hu: tuple[float, ...]
    texture: NoiseField
    texture_hu: tuple[float, ...]  # standard deviation of the internal texture per phase
    rim_hu: tuple[float, ...] | None = None  # rim / capsule / filled blood pool, by type
    rim_mm: float = 0.0
    inner_hu: tuple[float, ...] | None = None  # necrosis or scar
    inner_size: float = 0.0  # normalised radius of necrosis / scar core
    directions: tuple[tuple[float, float, float], ...] = ()  # scar spokes / hemangioma nodules
    fill: tuple[float, ...] = ()  # hemangioma centripetal fill per phase

    @property
    def label(self) -> int:
        return int(self.lesion_type)

    @property
    def radius_mm(self) -> float:
        return float((3.0 * self.nominal_volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0))


@dataclass(frozen=True, eq=False)
class LookalikeSpec:
    """A non-lesion focal liver finding: ``perfusion_anomaly`` or ``focal_fat``."""

    kind: str
    shape: DeformedEllipsoid
    delta_hu: tuple[float, ...]  # added to the liver, per phase


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def sample_volume_ml(rng: np.random.Generator, lesion_type: LesionType) -> float:
    """A lesion volume from the strata, about 28 % of them 0.5-2 ml."""
    weights = np.array([w for _, _, w in VOLUME_STRATA])
    if lesion_type == LesionType.META:
        weights[-1] *= 0.5
    if lesion_type == LesionType.CYST:
        weights[-1] *= 0.6
    weights /= weights.sum()
    lo, hi, _ = VOLUME_STRATA[int(rng.choice(len(VOLUME_STRATA), p=weights))]
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def sample_lesion_plan(rng: np.random.Generator) -> list[LesionRequest]:
    """Types and volumes of a random patient's lesions (possibly none)."""
    if rng.uniform() < LESION_FREE_PROBABILITY:
        return []
    types = list(TYPE_WEIGHTS)
    primary = types[int(rng.choice(len(types), p=np.array(list(TYPE_WEIGHTS.values()))))]
    count = {
        LesionType.HCC: lambda: int(rng.choice([1, 2, 3], p=[0.6, 0.25, 0.15])),
        LesionType.ICC: lambda: int(rng.choice([1, 2], p=[0.8, 0.2])),
        LesionType.META: lambda: int(rng.choice([1, 2, 3, 4, 5, 6], p=[0.12, 0.2, 0.22, 0.2, 0.14, 0.12])),
        LesionType.HEM: lambda: int(rng.choice([1, 2, 3], p=[0.65, 0.25, 0.1])),
        LesionType.OTHER: lambda: int(rng.choice([1, 2], p=[0.8, 0.2])),
        LesionType.CYST: lambda: int(rng.choice([1, 2, 3, 4], p=[0.45, 0.3, 0.15, 0.1])),
    }[primary]()
    plan = [primary] * count
    if rng.uniform() < 0.35:
        plan += [LesionType.CYST if rng.uniform() < 0.65 else LesionType.HEM] * int(rng.integers(1, 3))
    plan = plan[:MAX_LESIONS]
    return [LesionRequest(t, sample_volume_ml(rng, t)) for t in plan]


def _lesion_shape(
    rng: np.random.Generator, lesion_type: LesionType, center: np.ndarray, volume_ml: float
) -> DeformedEllipsoid:
    r = (3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    aspect = rng.uniform(0.82, 1.22, 3)
    aspect /= np.prod(aspect) ** (1.0 / 3.0)
    # (number of lobes, amplitude range at |freq| = 1, highest frequency); amplitude falls as 1/|f|
    # so contours stay smooth (lobulated, not star-shaped).
    n, a0, a1, fmax = {
        LesionType.CYST: (2, 0.0, 0.02, 1),
        LesionType.HCC: (3, 0.02, 0.05, 2),
        LesionType.META: (3, 0.02, 0.06, 2),
        LesionType.HEM: (4, 0.03, 0.07, 2),
        LesionType.OTHER: (4, 0.03, 0.07, 2),
        LesionType.ICC: (5, 0.05, 0.1, 2),
    }[lesion_type]
    harmonics = []
    for _ in range(n):
        f = rng.integers(-fmax, fmax + 1, size=3)
        if not f.any():
            f[0] = 1
        amp = float(rng.uniform(a0, a1)) / float(np.linalg.norm(f))
        harmonics.append(Harmonic(tuple(float(v) for v in f), amp, float(rng.uniform(0, 2 * np.pi))))
    return DeformedEllipsoid(
        tuple(float(v) for v in center),
        tuple(float(v) for v in r * aspect),
        tuple(float(v) for v in random_rotation(rng).ravel()),
        tuple(harmonics),
    )


class _Placer:
    """Finds free places inside the liver, away from the IVC, gallbladder and each other."""

    def __init__(self, anatomy: Anatomy) -> None:
        self.anatomy = anatomy
        pts, sdf = shape_extent(anatomy.liver, 4.0)
        self.points, self.sdf = pts, sdf
        self.taken: list[DeformedEllipsoid] = []
        self.obstacles = list(anatomy.ivc) + [
            v.tube for v in anatomy.vessels if v.label == int(Label.PORTAL_SPLENIC_VEIN)
        ]

    def _in_cavity(self, pts: np.ndarray, margin_mm: float) -> bool:
        cav = self.anatomy.cavity
        z = pts[:, 2].astype(np.float32)
        a = cav.a(z) - margin_mm
        b = np.where(pts[:, 1] < 0, cav.b_ant(z), cav.b_post(z)) - margin_mm
        return bool(np.all((pts[:, 0] / a) ** 2 + (pts[:, 1] / b) ** 2 < 1.0))

    def ok(self, center: np.ndarray, radius_mm: float, gap_mm: float) -> bool:
        sphere = sphere_points(center, radius_mm)
        if not self.anatomy.liver.contains_sphere(center, radius_mm, 3.0):
            return False
        if not self._in_cavity(sphere, 4.0):
            return False
        for tube in self.obstacles:
            if np.any(tube.distance_points(sphere) < 3.0):
                return False
        spine = self.anatomy.spine
        for region in (self.anatomy.retro_guard,) + spine.paraspinal + spine.psoas:
            if np.any(region.sdf_points(sphere) < 6.0):
                return False
        gb = self.anatomy.gallbladder
        if gb is not None and np.any(gb.sdf_points(sphere) < 4.0):
            return False
        # Other lesions: their exact (approximate-sdf) surface must stay gap_mm from this sphere.
        return all(np.all(shape.sdf_points(sphere) > gap_mm) for shape in self.taken)

    def find(self, rng: np.random.Generator, radius_mm: float, gap_mm: float, tries: int = 400) -> np.ndarray | None:
        candidates = self.points[self.sdf < -(radius_mm + 3.0)]
        if candidates.size == 0:
            return None
        for _ in range(tries):
            c = candidates[int(rng.integers(0, len(candidates)))] + rng.uniform(-2.0, 2.0, 3)
            if self.ok(c, radius_mm, gap_mm):
                return c
        return None


def place_lesions(
    rng: np.random.Generator, anatomy: Anatomy, table: TissueTable, plan: Sequence[LesionRequest]
) -> list[LesionSpec]:
    """Place the planned lesions inside the liver without overlap, largest first."""
    placer = _Placer(anatomy)
    order = sorted(range(len(plan)), key=lambda i: -(plan[i].volume_ml or 0.0))
    placed: dict[int, LesionSpec] = {}
    for i in order:
        req = plan[i]
        volume = req.volume_ml if req.volume_ml is not None else sample_volume_ml(rng, req.lesion_type)
        for _ in range(10):
            probe = _lesion_shape(rng, req.lesion_type, np.zeros(3), volume)
            radius = probe.bounding_radius_mm
            center = placer.find(rng, radius, 4.0)
            if center is not None:
                break
            volume *= 0.8
        else:
            log.info("lesion %d (%s) did not fit in the liver; left out", i + 1, req.lesion_type.display_name)
            continue
        shape = DeformedEllipsoid(tuple(float(v) for v in center), probe.semi_axes_mm, probe.rotation, probe.harmonics)
        placer.taken.append(shape)
        lo, hi = shape.bounds_mm()
        app = lesion_appearance(rng, req.lesion_type, volume, table)
        texture = NoiseField.random(rng, lo, hi, float(np.clip(radius / 4.0, 1.5, 5.0)))
        placed[i] = LesionSpec(0, req.lesion_type, shape, shape.nominal_volume_ml, texture=texture, **app)
    specs = [placed[i] for i in range(len(plan)) if i in placed]
    return [replace(s, lesion_id=k + 1) for k, s in enumerate(specs)]


def _frame_from(axis1: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    a1 = axis1 / np.linalg.norm(axis1)
    a2 = np.cross(a1, rng.standard_normal(3))
    a2 /= np.linalg.norm(a2)
    return np.stack([a1, a2, np.cross(a1, a2)], axis=1)


def place_lookalikes(rng: np.random.Generator, anatomy: Anatomy, lesions: Sequence[LesionSpec]) -> list[LookalikeSpec]:
    """Arterial perfusion anomalies (wedge, subcapsular, arterial only) and focal fat."""
    pts, sdf = shape_extent(anatomy.liver, 4.0)
    centroid = pts.mean(axis=0)
    taken = [(np.asarray(s.shape.center_mm), s.shape.bounding_radius_mm) for s in lesions]
    out: list[LookalikeSpec] = []

    def free(c: np.ndarray, r: float) -> bool:
        return all(np.linalg.norm(c - c2) > r + r2 + 5.0 for c2, r2 in taken)

    n_thad = int(rng.choice([0, 1, 2], p=[0.5, 0.35, 0.15]))
    near_surface = pts[(sdf > -7.0) & (sdf < -2.0)]
    for _ in range(n_thad):
        for _try in range(50):
            p = near_surface[int(rng.integers(0, len(near_surface)))]
            inward = centroid - p
            length = rng.uniform(14.0, 26.0)
            width = rng.uniform(7.0, 13.0)
            c = p + inward / np.linalg.norm(inward) * length * 0.45
            if free(c, length):
                break
        else:
            continue
        rot = _frame_from(inward, rng)
        shape = DeformedEllipsoid(
            tuple(float(v) for v in c),
            (length, width, width * rng.uniform(0.6, 1.0)),
            tuple(float(v) for v in rot.ravel()),
            taper=float(rng.uniform(0.55, 0.8)),
            blur_mm=float(rng.uniform(2.0, 4.0)),
        )
        boost = rng.uniform(30.0, 55.0)
        out.append(LookalikeSpec("perfusion_anomaly", shape, (0.0, float(boost), float(rng.uniform(0, 5)), 0.0)))
        taken.append((c, length))

    n_fat = int(rng.choice([0, 1, 2], p=[0.6, 0.3, 0.1]))
    anchor = (
        np.asarray(anatomy.gallbladder.center_mm) if anatomy.gallbladder is not None else np.asarray(anatomy.hilum_mm)
    )
    for k in range(n_fat):
        r = rng.uniform(7.0, 14.0)
        interior = pts[sdf < -(r + 2.0)]
        for _try in range(50):
            if k == 0 and rng.uniform() < 0.7:  # typical sites: gallbladder fossa, falciform ligament
                d = np.linalg.norm(interior - anchor, axis=1)
                pool = interior[np.argsort(d)[:200]]
            else:
                pool = interior
            c = pool[int(rng.integers(0, len(pool)))]
            if free(c, r) and (anatomy.gallbladder is None or anatomy.gallbladder.sdf_points(c[None])[0] > r + 3):
                break
        else:
            continue
        harm = tuple(
            Harmonic(
                tuple(float(v) for v in rng.integers(-3, 4, 3)),
                float(rng.uniform(0.06, 0.14)),
                float(rng.uniform(0, 2 * np.pi)),
            )
            for _ in range(4)
        )
        shape = DeformedEllipsoid(
            tuple(float(v) for v in c),
            (r, r * rng.uniform(0.5, 0.9), r * rng.uniform(0.6, 1.0)),
            tuple(float(v) for v in random_rotation(rng).ravel()),
            harm,
            blur_mm=float(rng.uniform(1.5, 3.0)),
        )
        delta = -rng.uniform(22.0, 45.0)
        out.append(LookalikeSpec("focal_fat", shape, tuple(float(delta * f) for f in (1.0, 1.05, 1.1, 1.1))))
        taken.append((c, r))
    return out
