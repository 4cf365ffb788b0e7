"""Scan geometry and breathing motion of a phantom study: where the table range and the field of
view lie relative to the body, the voxel grid of the series, and the per-phase warp."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.phantom_anatomy import Anatomy
from pipeline.phantom_grid import Fourier1D, Fourier2D, PhaseWarp
from pipeline.types import VolumeGeometry


def sample_warp(rng: np.random.Generator) -> PhaseWarp:
    tz = float(rng.uniform(5.0, 13.0) * rng.choice([-1.0, 1.0]))
    tx, ty = (float(v) for v in rng.uniform(-3.0, 3.0, 2))

    def f1() -> Fourier1D:
        return Fourier1D(
            tuple(float(v) for v in rng.uniform(0.4, 1.2, 2)),
            tuple(float(v) for v in rng.uniform(180, 450, 2)),
            tuple(float(v) for v in rng.uniform(0, 2 * np.pi, 2)),
        )

    k = 2 * np.pi / rng.uniform(160, 400, 2)
    theta = rng.uniform(0, 2 * np.pi, 2)
    gz = Fourier2D(
        tuple(float(v) for v in rng.uniform(0.5, 1.8, 2)),
        tuple(float(v) for v in k * np.cos(theta)),
        tuple(float(v) for v in k * np.sin(theta)),
        tuple(float(v) for v in rng.uniform(0, 2 * np.pi, 2)),
    )
    return PhaseWarp((tx, ty, tz), f1(), f1(), f1(), gz)


@dataclass(frozen=True)
class ScanPlan:
    geometry: VolumeGeometry
    axes_body: tuple[np.ndarray, np.ndarray, np.ndarray]  # x, y, z of array indices, body frame
    offset_mm: tuple[float, float, float]
    instance_order: tuple[int, ...]
    row_direction: tuple[float, float, float]
    fov_mm: float
    fov_mask: np.ndarray  # (rows, columns) inside the reconstruction circle


def plan_scan(
    anatomy: Anatomy,
    slices: int,
    slice_thickness_mm: float,
    rows: int,
    columns: int,
    feet_first: bool,
    rng: np.random.Generator,
) -> ScanPlan:
    """The scan range, field of view and the grid as a reader sorts it (HFS: z ascending,
    rows to the left; FFS: z descending, rows to the right). Instance 1 is the most cranial."""
    a = anatomy
    half_w, _ = a.body_extent_mm()
    fov = float(np.clip(np.round(2 * half_w + rng.uniform(30, 80)), 320, 500))
    ps = fov / columns
    off = (
        round(float(rng.uniform(-8, 8)), 1),
        round(float(rng.uniform(-25, 25)), 1),
        round(float(rng.uniform(-650, 50)), 1),
    )
    top, bottom = a.liver_top_mm[2], a.liver_bottom_z_mm
    coverage = slices * slice_thickness_mm
    spare = coverage - (top - bottom)
    if spare >= 30.0:
        z_top = top + float(rng.uniform(10.0, min(40.0, spare - 15.0)))
    else:
        z_top = 0.5 * (top + bottom) + 0.5 * coverage
    z_top_patient = round(z_top + off[2], 2)
    n, t = slices, slice_thickness_mm
    cols = np.arange(columns) * ps - fov / 2 + ps / 2
    y_pat = np.arange(rows) * ps - rows * ps / 2 + ps / 2
    if feet_first:
        x_pat = -cols
        z_pat = z_top_patient - np.arange(n) * t
        instance_order = tuple(range(n))
        direction = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
        row_dir = (-1.0, 0.0, 0.0)
    else:
        x_pat = cols
        z_pat = z_top_patient - (n - 1) * t + np.arange(n) * t
        instance_order = tuple(range(n - 1, -1, -1))
        direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        row_dir = (1.0, 0.0, 0.0)
    geometry = VolumeGeometry(
        shape=(n, rows, columns),
        spacing_mm=(float(t), float(ps), float(ps)),
        origin_mm=(float(x_pat[0]), float(y_pat[0]), float(z_pat[0])),
        direction=direction,
    )
    fov_mask = (y_pat[:, None] ** 2 + x_pat[None, :] ** 2) <= (fov / 2) ** 2
    axes = (x_pat - off[0], y_pat - off[1], z_pat - off[2])
    return ScanPlan(geometry, axes, off, instance_order, row_dir, fov, fov_mask)
