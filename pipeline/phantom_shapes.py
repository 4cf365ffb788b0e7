"""Shapes of the phantom (deformed ellipsoids, tapered tubes, extruded ellipses) evaluated on
blocks of the output grid.

A shape returns a soft occupancy in [0, 1]: the fraction of a voxel it fills, estimated from an
approximate signed distance and the voxel's footprint along the surface normal. Thick slices thus
get partial volume along z, thin ones do not, from one continuous description of the body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipeline.phantom_grid import Block

_EPS = np.float32(1e-6)


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------


@dataclass
class ShapeSample:
    """A shape evaluated on a block: occupancy and, where asked for, local coordinates."""

    occ: np.ndarray  # float32 in [0, 1]
    sdf_mm: np.ndarray | None = None  # approximate signed distance, negative inside
    rho: np.ndarray | None = None  # normalised radius (0 centre, 1 surface) of ellipsoids
    u: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # local unit direction
    t: np.ndarray | None = None  # position along a tube, 0..1


class Shape(Protocol):
    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]: ...

    def evaluate(self, block: Block, local: bool = False) -> ShapeSample: ...


def ramp_occupancy(sdf_mm: np.ndarray, width_mm: np.ndarray | float) -> np.ndarray:
    """Fraction of a voxel inside a surface at signed distance sdf, for a footprint of width."""
    occ = np.float32(0.5) - sdf_mm / width_mm
    np.clip(occ, 0.0, 1.0, out=occ)
    return occ.astype(np.float32, copy=False)


def _footprint(nz: np.ndarray, block: Block, extra_mm: float) -> np.ndarray:
    """Width of a voxel along a surface normal whose z component is nz (square pixels), with the
    in-plane blur and any extra softness added in quadrature."""
    vx, _, vz = block.voxel_mm
    anz = np.abs(nz)
    inplane = np.sqrt(np.maximum(np.float32(1.0) - anz * anz, 0.0)) * np.float32(1.15 * vx)
    w = inplane + anz * np.float32(vz)
    soft2 = np.float32(block.psf_mm**2 + extra_mm**2)
    return np.sqrt(w * w + soft2)


@dataclass(frozen=True)
class Harmonic:
    """A lobe of a deformed ellipsoid: ``amplitude * cos(pi * freq . u + phase)`` in direction space."""

    freq: tuple[float, float, float]
    amplitude: float
    phase: float


def rotation_matrix(yaw_rad: float, pitch_rad: float = 0.0, roll_rad: float = 0.0) -> np.ndarray:
    """Rotation about z (yaw), then y (pitch), then x (roll); columns are the rotated axes."""
    cz, sz = np.cos(yaw_rad), np.sin(yaw_rad)
    cy, sy = np.cos(pitch_rad), np.sin(pitch_rad)
    cx, sx = np.cos(roll_rad), np.sin(roll_rad)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3D rotation."""
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


@dataclass(frozen=True)
class DeformedEllipsoid:
    """An ellipsoid with smooth lobes, optional taper of its 2nd/3rd axes towards +axis 1, and an
    optional bend (crescent) of axis 1 along axis 2. ``rotation`` is row-major 3x3; its columns are
    the local axes in the body frame."""

    center_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    rotation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    harmonics: tuple[Harmonic, ...] = ()
    taper: float = 0.0
    bend: float = 0.0
    blur_mm: float = 0.0

    @property
    def rotation_matrix(self) -> np.ndarray:
        return np.asarray(self.rotation, dtype=np.float64).reshape(3, 3)

    @property
    def lobe_bound(self) -> float:
        return float(sum(abs(h.amplitude) for h in self.harmonics))

    @property
    def bounding_radius_mm(self) -> float:
        return max(self.semi_axes_mm) * (1.0 + self.lobe_bound) + abs(self.bend) * self.semi_axes_mm[0]

    @property
    def nominal_volume_ml(self) -> float:
        a, b, c = self.semi_axes_mm
        return 4.0 / 3.0 * np.pi * a * b * c / 1000.0

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        rot = self.rotation_matrix
        scale = (1.0 + self.lobe_bound) * np.asarray(self.semi_axes_mm)
        half = np.sqrt(((rot * scale[None, :]) ** 2).sum(axis=1))
        half += abs(self.bend) * self.semi_axes_mm[0] + 2 * self.blur_mm
        c = np.asarray(self.center_mm)
        return c - half, c + half

    def _local(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> dict[str, np.ndarray]:
        rot = self.rotation_matrix.astype(np.float32)
        cx, cy, cz = (np.float32(v) for v in self.center_mm)
        a, b, c = (np.float32(v) for v in self.semi_axes_mm)
        dx, dy, dz = x - cx, y - cy, z - cz
        q1 = rot[0, 0] * dx + rot[1, 0] * dy + rot[2, 0] * dz
        q2 = rot[0, 1] * dx + rot[1, 1] * dy + rot[2, 1] * dz
        q3 = rot[0, 2] * dx + rot[1, 2] * dy + rot[2, 2] * dz
        if self.bend:
            q1 = q1 - np.float32(self.bend) * a * (q2 / b) ** 2
        s1 = q1 / a
        if self.taper:
            sm = np.clip((s1 + np.float32(1.0)) * np.float32(0.5), 0.0, 1.0)
            w = np.float32(1.0) - np.float32(self.taper) * sm * sm * (np.float32(3.0) - 2 * sm)
            bw, cw = b * w, c * w
        else:
            bw, cw = b, c
        s2 = q2 / bw
        s3 = q3 / cw
        r = np.sqrt(s1 * s1 + s2 * s2 + s3 * s3) + _EPS
        u1, u2, u3 = s1 / r, s2 / r, s3 / r
        radius = np.ones_like(r)
        for h in self.harmonics:
            f1, f2, f3 = (np.float32(np.pi * v) for v in h.freq)
            radius += np.float32(h.amplitude) * np.cos(f1 * u1 + f2 * u2 + f3 * u3 + np.float32(h.phase))
        n1, n2, n3 = u1 / a, u2 / bw, u3 / cw
        g = np.sqrt(n1 * n1 + n2 * n2 + n3 * n3) + _EPS
        sdf = (r - radius) / g
        nz = (rot[2, 0] * n1 + rot[2, 1] * n2 + rot[2, 2] * n3) / g
        return {"rho": r / radius, "sdf": sdf, "nz": nz, "u": (u1, u2, u3)}

    def evaluate(self, block: Block, local: bool = False) -> ShapeSample:
        loc = self._local(block.x, block.y, block.z)
        occ = ramp_occupancy(loc["sdf"], _footprint(loc["nz"], block, self.blur_mm))
        if not local:
            return ShapeSample(occ=occ)
        return ShapeSample(occ=occ, sdf_mm=loc["sdf"], rho=loc["rho"], u=loc["u"])

    def sdf_points(self, points_mm: np.ndarray) -> np.ndarray:
        """Approximate signed distance (mm) at body points (N, 3)."""
        p = np.atleast_2d(np.asarray(points_mm, dtype=np.float32))
        return self._local(p[:, 0], p[:, 1], p[:, 2])["sdf"]

    def contains_sphere(self, center_mm: np.ndarray, radius_mm: float, margin_mm: float) -> bool:
        """Whether a sphere lies inside with at least `margin_mm` to spare (checked at 27 points)."""
        return bool(np.all(self.sdf_points(sphere_points(center_mm, radius_mm)) < -margin_mm))


def sphere_points(center_mm: np.ndarray, radius_mm: float) -> np.ndarray:
    """The centre and 26 points on a sphere (cube corners, edges and faces, normalised)."""
    g = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=float)
    norms = np.linalg.norm(g, axis=1)
    g[norms > 0] /= norms[norms > 0, None]
    return np.asarray(center_mm, dtype=float)[None, :] + radius_mm * g


@dataclass(frozen=True)
class Tube:
    """A segment with linearly varying radius and round caps (a tapered capsule)."""

    p0_mm: tuple[float, float, float]
    p1_mm: tuple[float, float, float]
    r0_mm: float
    r1_mm: float

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        p0, p1 = np.asarray(self.p0_mm), np.asarray(self.p1_mm)
        r = max(self.r0_mm, self.r1_mm)
        return np.minimum(p0, p1) - r, np.maximum(p0, p1) + r

    def shrunk(self, by_mm: float) -> "Tube":
        return Tube(self.p0_mm, self.p1_mm, max(self.r0_mm - by_mm, 0.3), max(self.r1_mm - by_mm, 0.3))

    def _distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, ...]:
        p0 = np.asarray(self.p0_mm, dtype=np.float32)
        d = np.asarray(self.p1_mm, dtype=np.float32) - p0
        inv_len2 = np.float32(1.0 / max(float(d @ d), 1e-6))
        ex, ey, ez = x - p0[0], y - p0[1], z - p0[2]
        t = (ex * d[0] + ey * d[1] + ez * d[2]) * inv_len2
        np.clip(t, 0.0, 1.0, out=t)
        rx, ry, rz = ex - t * d[0], ey - t * d[1], ez - t * d[2]
        dist = np.sqrt(rx * rx + ry * ry + rz * rz) + _EPS
        radius = np.float32(self.r0_mm) + t * np.float32(self.r1_mm - self.r0_mm)
        return dist - radius, rz / dist, t

    def evaluate(self, block: Block, local: bool = False) -> ShapeSample:
        sdf, nz, t = self._distance(block.x, block.y, block.z)
        occ = ramp_occupancy(sdf, _footprint(nz, block, 0.0))
        return ShapeSample(occ=occ, sdf_mm=sdf if local else None, t=t if local else None)

    def distance_points(self, points_mm: np.ndarray) -> np.ndarray:
        """Signed distance (mm) from the tube surface at body points (N, 3)."""
        p = np.atleast_2d(np.asarray(points_mm, dtype=np.float32))
        return self._distance(p[:, 0], p[:, 1], p[:, 2])[0]


@dataclass(frozen=True)
class Profile:
    """A piecewise-linear function of body z (mm), constant beyond its ends."""

    z_mm: tuple[float, ...]
    values: tuple[float, ...]

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return np.interp(z, self.z_mm, self.values).astype(np.float32)

    @classmethod
    def constant(cls, value: float) -> "Profile":
        return cls((0.0,), (value,))


@dataclass(frozen=True)
class ZEllipse:
    """A cross-section ellipse extruded along z, its centre and semi-axes varying slowly with z;
    anterior (y < centre) and posterior halves may have different depths. Optionally limited to
    the z range [z_lo, z_hi] with soft ends."""

    cx: Profile
    cy: Profile
    a: Profile  # half width along x
    b_ant: Profile
    b_post: Profile
    z_lo_mm: float = -1e4
    z_hi_mm: float = 1e4

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        def ext(p: Profile) -> tuple[float, float]:
            return min(p.values), max(p.values)

        cx0, cx1 = ext(self.cx)
        cy0, cy1 = ext(self.cy)
        a = max(self.a.values)
        bb = max(max(self.b_ant.values), max(self.b_post.values))
        return (np.array([cx0 - a, cy0 - bb, self.z_lo_mm]), np.array([cx1 + a, cy1 + bb, self.z_hi_mm]))

    def sdf(self, block: Block) -> np.ndarray:
        """Approximate in-plane signed distance (mm) to the ellipse of each slice."""
        return self._sdf(block.x, block.y, block.z_slice)

    def sdf_points(self, points_mm: np.ndarray) -> np.ndarray:
        """Approximate in-plane signed distance (mm) at body points (N, 3)."""
        p = np.atleast_2d(np.asarray(points_mm, dtype=np.float32))
        return self._sdf(p[:, 0], p[:, 1], p[:, 2])

    def _sdf(self, x: np.ndarray, y: np.ndarray, zs: np.ndarray) -> np.ndarray:
        dx = x - self.cx(zs)
        dy = y - self.cy(zs)
        a = self.a(zs)
        b = np.where(dy < 0, self.b_ant(zs), self.b_post(zs))
        fx, fy = dx / a, dy / b
        gx, gy = fx / a, fy / b
        f = fx * fx + fy * fy
        grad = np.float32(2.0) * np.sqrt(gx * gx + gy * gy) + _EPS
        return (f - np.float32(1.0)) / grad

    def evaluate(self, block: Block, local: bool = False) -> ShapeSample:
        sdf = self.sdf(block)
        width = float(np.hypot(1.15 * block.voxel_mm[0], block.psf_mm))
        occ = ramp_occupancy(sdf, width)
        if self.z_lo_mm > -1e3 or self.z_hi_mm < 1e3:
            zs = block.z_slice
            dz = np.maximum(np.float32(self.z_lo_mm) - zs, zs - np.float32(self.z_hi_mm))
            occ = occ * ramp_occupancy(dz, float(block.voxel_mm[2]))
        return ShapeSample(occ=occ, sdf_mm=sdf if local else None)
