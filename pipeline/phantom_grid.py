"""The phantom's sampling machinery: smooth random fields, the breathing warp of a phase, and the
blocks of the output grid (with the body-frame coordinates of the tissue each voxel shows) on
which shapes are evaluated.

Body frame: LPS millimetres (x to the patient's left, y posterior, z cranial) with the origin at
the midline, the body centre and the level of the liver centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

# ---------------------------------------------------------------------------------------------
# Smooth random fields
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fourier1D:
    """Sum of sines of one variable: ``sum a_k sin(2 pi t / wavelength_k + phase_k)`` (mm in, mm out)."""

    amplitudes_mm: tuple[float, ...] = ()
    wavelengths_mm: tuple[float, ...] = ()
    phases: tuple[float, ...] = ()

    def __call__(self, t: np.ndarray) -> np.ndarray:
        out = np.zeros(np.shape(t), dtype=np.float32)
        for amp, lam, phase in zip(self.amplitudes_mm, self.wavelengths_mm, self.phases):
            out += np.float32(amp) * np.sin(np.float32(2 * np.pi / lam) * t + np.float32(phase))
        return out

    @property
    def bound_mm(self) -> float:
        return float(sum(abs(a) for a in self.amplitudes_mm))


@dataclass(frozen=True)
class Fourier2D:
    """Sum of plane waves in (x, y): ``sum a_k sin(kx_k x + ky_k y + phase_k)``; k in rad/mm."""

    amplitudes_mm: tuple[float, ...] = ()
    kx: tuple[float, ...] = ()
    ky: tuple[float, ...] = ()
    phases: tuple[float, ...] = ()

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        shape = np.broadcast_shapes(np.shape(x), np.shape(y))
        out = np.zeros(shape, dtype=np.float32)
        for amp, kx, ky, phase in zip(self.amplitudes_mm, self.kx, self.ky, self.phases):
            out += np.float32(amp) * np.sin(np.float32(kx) * x + np.float32(ky) * y + np.float32(phase))
        return out

    @property
    def bound_mm(self) -> float:
        return float(sum(abs(a) for a in self.amplitudes_mm))


@dataclass(frozen=True, eq=False)
class NoiseField:
    """Band-limited random texture on a lattice in the body frame (unit variance), sampled with
    trilinear interpolation, so a texture moves with the tissue it belongs to."""

    lo_mm: tuple[float, float, float]  # body (x, y, z) of lattice node (0, 0, 0)
    spacing_mm: float
    values: np.ndarray  # float32 (z, y, x)

    @classmethod
    def random(cls, rng: np.random.Generator, lo_mm: np.ndarray, hi_mm: np.ndarray, spacing_mm: float) -> "NoiseField":
        """Unit-variance smooth noise covering the box [lo_mm, hi_mm] (x, y, z)."""
        lo = np.asarray(lo_mm, dtype=np.float64) - 2 * spacing_mm
        hi = np.asarray(hi_mm, dtype=np.float64) + 2 * spacing_mm
        n_xyz = np.maximum(np.ceil((hi - lo) / spacing_mm).astype(int) + 1, 4)
        raw = rng.standard_normal((n_xyz[2], n_xyz[1], n_xyz[0])).astype(np.float32)
        smooth = gaussian_filter(raw, sigma=1.0, mode="wrap")
        smooth -= smooth.mean()
        smooth /= max(float(smooth.std()), 1e-6)
        return cls(tuple(float(v) for v in lo), float(spacing_mm), smooth.astype(np.float32))

    def sample(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Texture values at body coordinates (broadcastable arrays)."""
        shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
        inv = np.float32(1.0 / self.spacing_mm)
        coords = np.empty((3,) + shape, dtype=np.float32)
        coords[0] = (z - np.float32(self.lo_mm[2])) * inv
        coords[1] = (y - np.float32(self.lo_mm[1])) * inv
        coords[2] = (x - np.float32(self.lo_mm[0])) * inv
        return map_coordinates(self.values, coords, order=1, mode="nearest", output=np.float32)


# ---------------------------------------------------------------------------------------------
# Warp of one phase and blocks of its output grid
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseWarp:
    """Breathing misalignment of one phase relative to the venous reference.

    The voxel at body-frame position p of this phase shows the tissue at
    ``(x - tx - fx(z), y - ty - fy(z), z - tz - fz(z) - gz(x, y))``: a rigid shift t plus a smooth
    deformation of a few millimetres. The identity warp is the reference phase.
    """

    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    fx: Fourier1D = Fourier1D()
    fy: Fourier1D = Fourier1D()
    fz: Fourier1D = Fourier1D()
    gz: Fourier2D = Fourier2D()

    @property
    def deformation_bound_mm(self) -> float:
        return self.fx.bound_mm + self.fy.bound_mm + self.fz.bound_mm + self.gz.bound_mm

    def tissue_position(self, p_mm: np.ndarray) -> np.ndarray:
        """Body point shown at body-frame position(s) p (N, 3) in this phase."""
        p = np.atleast_2d(np.asarray(p_mm, dtype=np.float32))
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        tx, ty, tz = (np.float32(v) for v in self.shift_mm)
        return np.stack([x - tx - self.fx(z), y - ty - self.fy(z), z - tz - self.fz(z) - self.gz(x, y)], axis=1)

    def image_position(self, tissue_mm: np.ndarray, iterations: int = 8) -> np.ndarray:
        """Where body point(s) (N, 3) appear in this phase (inverse of tissue_position)."""
        q = np.atleast_2d(np.asarray(tissue_mm, dtype=np.float64))
        p = q + np.asarray(self.shift_mm)
        for _ in range(iterations):
            p = p + (q - self.tissue_position(p).astype(np.float64))
        return p


class Block:
    """The output-grid voxels of an axis-aligned sub-box, with the body-frame coordinates of the
    tissue they show in one phase. ``x`` is (Z,1,X), ``y`` (Z,Y,1), ``z`` (Z,Y,X) (computed on
    first use); ``z_slice`` (Z,1,1) ignores the in-plane part of the deformation."""

    def __init__(
        self,
        index: tuple[slice, slice, slice],
        x: np.ndarray,
        y: np.ndarray,
        z_slice: np.ndarray,
        gz: np.ndarray,
        x_fixed: np.ndarray,
        y_fixed: np.ndarray,
        voxel_mm: tuple[float, float, float],
        psf_mm: float,
    ) -> None:
        self.index = index
        self.x = x
        self.y = y
        self.z_slice = z_slice
        self._gz = gz
        self._z: np.ndarray | None = None
        self.x_fixed = x_fixed
        self.y_fixed = y_fixed
        self.voxel_mm = voxel_mm
        self.psf_mm = psf_mm

    @property
    def z(self) -> np.ndarray:
        if self._z is None:
            self._z = self.z_slice - self._gz
        return self._z

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.z_slice.shape[0], self.y.shape[1], self.x.shape[2])

    @property
    def empty(self) -> bool:
        return 0 in self.shape


class PhaseSampler:
    """Maps body-frame boxes to blocks of one phase's output grid.

    The output grid is given by 1D anatomy-frame coordinates of its columns, rows and slices
    (monotonic, any direction). ``psf_mm`` is the in-plane blur of the reconstruction.
    """

    def __init__(
        self,
        x_axis_mm: np.ndarray,
        y_axis_mm: np.ndarray,
        z_axis_mm: np.ndarray,
        warp: PhaseWarp,
        voxel_mm: tuple[float, float, float],
        psf_mm: float,
    ) -> None:
        self.x_axis = np.asarray(x_axis_mm, dtype=np.float32)
        self.y_axis = np.asarray(y_axis_mm, dtype=np.float32)
        self.z_axis = np.asarray(z_axis_mm, dtype=np.float32)
        self.warp = warp
        self.voxel_mm = voxel_mm
        self.psf_mm = psf_mm
        tx, ty, tz = (np.float32(v) for v in warp.shift_mm)
        zc = self.z_axis
        self._xw = (self.x_axis[None, None, :] - tx - warp.fx(zc)[:, None, None]).astype(np.float32)
        self._yw = (self.y_axis[None, :, None] - ty - warp.fy(zc)[:, None, None]).astype(np.float32)
        self._zs = (zc - tz - warp.fz(zc)).astype(np.float32)[:, None, None]
        self._gz = warp.gz(self.x_axis[None, None, :], self.y_axis[None, :, None]).astype(np.float32)
        self._margin = warp.deformation_bound_mm + 1.0

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.z_axis.size, self.y_axis.size, self.x_axis.size)

    @staticmethod
    def _range(axis: np.ndarray, lo: float, hi: float) -> slice:
        inside = np.nonzero((axis >= lo) & (axis <= hi))[0]
        if inside.size == 0:
            return slice(0, 0)
        return slice(int(inside[0]), int(inside[-1]) + 1)

    def slab(self, z0: int, z1: int) -> Block:
        """The block of whole slices z0..z1-1."""
        return self._make(slice(z0, z1), slice(None), slice(None))

    def block(self, lo_mm: np.ndarray | None = None, hi_mm: np.ndarray | None = None) -> Block:
        """The block whose voxels may show tissue inside the body box [lo, hi] (None: everything)."""
        if lo_mm is None or hi_mm is None:
            zs, ys, xs = slice(None), slice(None), slice(None)
        else:
            t = np.asarray(self.warp.shift_mm)
            m = self._margin
            pad = np.asarray(self.voxel_mm) + m
            xs = self._range(self.x_axis, lo_mm[0] + t[0] - pad[0], hi_mm[0] + t[0] + pad[0])
            ys = self._range(self.y_axis, lo_mm[1] + t[1] - pad[1], hi_mm[1] + t[1] + pad[1])
            zs = self._range(self.z_axis, lo_mm[2] + t[2] - pad[2] - m, hi_mm[2] + t[2] + pad[2] + m)
        return self._make(zs, ys, xs)

    def split(self, block: Block, max_voxels: int = 1 << 20) -> list[Block]:
        """The block cut along z into slabs of at most about max_voxels (cache-sized work)."""
        zs, ys, xs = block.index
        z0, z1, _ = zs.indices(self.shape[0])
        per_slice = max(1, block.shape[1] * block.shape[2])
        step = max(1, max_voxels // per_slice)
        if z1 - z0 <= step:
            return [block]
        return [self._make(slice(z, min(z1, z + step)), ys, xs) for z in range(z0, z1, step)]

    def _make(self, zs: slice, ys: slice, xs: slice) -> Block:
        return Block(
            index=(zs, ys, xs),
            x=self._xw[zs, :, xs],
            y=self._yw[zs, ys, :],
            z_slice=self._zs[zs],
            gz=self._gz[:, ys, xs],
            x_fixed=self.x_axis[None, None, xs],
            y_fixed=self.y_axis[None, ys, None],
            voxel_mm=self.voxel_mm,
            psf_mm=self.psf_mm,
        )
