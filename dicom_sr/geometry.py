"""Grid geometry shared by the SEG, the SR and the gate: matching source slices to the voxel
grid, mapping patient coordinates to indices, mask statistics, and a lesion's long axis."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from scipy.spatial import ConvexHull, QhullError

from dicom_sr.types import ResultsError, SegmentStats
from pipeline.types import Lesion, VolumeGeometry

POSITION_TOLERANCE_VOXEL = 0.05
ORIENTATION_TOLERANCE = 1e-4


def step_matrix(geometry: VolumeGeometry) -> np.ndarray:
    """Columns: patient-space step (mm) of one voxel along the x, y and z index axes."""
    dz, dy, dx = geometry.spacing_mm
    return geometry.direction_matrix @ np.diag([dx, dy, dz])


def patient_to_index(geometry: VolumeGeometry, points_mm: np.ndarray) -> np.ndarray:
    """Map (N, 3) patient (x, y, z) mm to (N, 3) continuous (z, y, x) indices."""
    points = np.atleast_2d(np.asarray(points_mm, dtype=np.float64))
    ijk = np.linalg.solve(step_matrix(geometry), (points - np.asarray(geometry.origin_mm)).T).T
    return ijk[:, ::-1]


def order_sources(datasets: Sequence[Dataset], geometry: VolumeGeometry) -> list[Dataset]:
    """The source slices in the z order of `geometry`, checked against it.

    Each slice must lie exactly on one z plane of the grid, with the grid's orientation,
    pixel spacing, rows and columns; every plane must have exactly one slice.
    """
    n_z, n_y, n_x = geometry.shape
    if len(datasets) != n_z:
        raise ResultsError(f"source_datasets: {len(datasets)} slices for a grid of {n_z}")
    direction = geometry.direction_matrix
    _, dy, dx = geometry.spacing_mm
    ordered: list[Dataset | None] = [None] * n_z
    for ds in datasets:
        uid = str(ds.get("SOPInstanceUID", "?"))
        if (int(ds.Rows), int(ds.Columns)) != (n_y, n_x):
            raise ResultsError(f"source {uid}: {ds.Rows}x{ds.Columns} pixels, grid {n_y}x{n_x}")
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        if not (
            np.allclose(iop[:3], direction[:, 0], atol=ORIENTATION_TOLERANCE)
            and np.allclose(iop[3:], direction[:, 1], atol=ORIENTATION_TOLERANCE)
        ):
            raise ResultsError(f"source {uid}: orientation {iop.tolist()} differs from the grid")
        spacing = [float(v) for v in ds.PixelSpacing]
        if not np.allclose(spacing, [dy, dx], rtol=1e-4, atol=1e-5):
            raise ResultsError(f"source {uid}: pixel spacing {spacing} differs from ({dy}, {dx})")
        position = np.asarray([float(v) for v in ds.ImagePositionPatient])
        zyx = patient_to_index(geometry, position)[0]
        k = int(round(zyx[0]))
        off_plane = abs(zyx[0] - k) > POSITION_TOLERANCE_VOXEL
        off_corner = max(abs(zyx[1]), abs(zyx[2])) > POSITION_TOLERANCE_VOXEL
        if off_plane or off_corner or not 0 <= k < n_z:
            raise ResultsError(f"source {uid}: position is not on a plane of the grid ({zyx})")
        if ordered[k] is not None:
            raise ResultsError(f"source {uid}: a second slice on plane {k}")
        ordered[k] = ds
    return [ds for ds in ordered if ds is not None]


def geometry_from_datasets(datasets: Sequence[Dataset]) -> VolumeGeometry:
    """The grid spanned by single-frame slices in the order given (slice i = z index i).

    The slices must be parallel, evenly spaced and not sheared (no gantry tilt).
    """
    if not datasets:
        raise ResultsError("source_datasets: no slices")
    first = datasets[0]
    iop = np.asarray([float(v) for v in first.ImageOrientationPatient])
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    for ds in datasets:
        other = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        if not np.allclose(other, iop, atol=ORIENTATION_TOLERANCE):
            raise ResultsError("source_datasets: slices with different orientations")
    positions = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    dy, dx = (float(v) for v in first.PixelSpacing)
    if len(datasets) == 1:
        step = normal * float(first.get("SliceThickness", 1.0) or 1.0)
    else:
        steps = np.diff(positions, axis=0)
        step = steps.mean(axis=0)
        if np.abs(steps - step).max() > 0.01 * max(float(np.linalg.norm(step)), 1e-6) + 1e-4:
            raise ResultsError("source_datasets: slices are not evenly spaced in the given order")
    dz = float(np.linalg.norm(step))
    if dz == 0.0:
        raise ResultsError("source_datasets: two slices at the same position")
    z_dir = step / dz
    if abs(abs(float(np.dot(z_dir, normal))) - 1.0) > 1e-3:
        raise ResultsError("source_datasets: slices are sheared (gantry tilt is not supported)")
    direction = np.stack([row, col, z_dir], axis=1)
    return VolumeGeometry(
        shape=(len(datasets), int(first.Rows), int(first.Columns)),
        spacing_mm=(dz, dy, dx),
        origin_mm=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in direction.ravel()),
    )


def mask_stats(mask: np.ndarray, geometry: VolumeGeometry) -> SegmentStats:
    """Voxel count and patient-space centroid of a full-grid bool mask."""
    indices = np.nonzero(mask)
    count = int(indices[0].size)
    planes = tuple(int(v) for v in np.bincount(indices[0], minlength=geometry.shape[0]))
    if count == 0:
        return SegmentStats(0, None, planes)
    center = np.array([float(axis.mean()) for axis in indices])
    return SegmentStats(count, _as_point(geometry.index_to_patient(center)[0]), planes)


def lesion_stats(lesion: Lesion, geometry: VolumeGeometry) -> SegmentStats:
    """Voxel count and patient-space centroid of a lesion (from its cropped mask)."""
    indices = np.nonzero(lesion.mask)
    count = int(indices[0].size)
    planes = np.zeros(geometry.shape[0], dtype=np.int64)
    planes[lesion.bbox.z0 : lesion.bbox.z1] = lesion.mask.sum(axis=(1, 2))
    plane_counts = tuple(int(v) for v in planes)
    if count == 0:
        return SegmentStats(0, None, plane_counts)
    offset = np.array([lesion.bbox.z0, lesion.bbox.y0, lesion.bbox.x0], dtype=np.float64)
    center = np.array([float(axis.mean()) for axis in indices]) + offset
    return SegmentStats(count, _as_point(geometry.index_to_patient(center)[0]), plane_counts)


def _as_point(values: np.ndarray) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


def centroid_offset_voxels(
    geometry: VolumeGeometry, a_mm: Sequence[float], b_mm: Sequence[float]
) -> np.ndarray:
    """|a - b| along the z, y and x index axes, in voxels."""
    delta = np.asarray(a_mm, dtype=np.float64) - np.asarray(b_mm, dtype=np.float64)
    ijk = np.linalg.solve(step_matrix(geometry), delta)
    return np.abs(ijk[::-1])


@dataclass(frozen=True)
class LongAxis:
    """The longest in-plane diameter of a lesion on its key slice.

    z_index: the key slice (grid z index); points_colrow: the two end points as SCOORD pixel
    coordinates (column, row; the top left corner of the image is (0, 0), so a pixel centre
    is at +0.5); length_mm: distance between them.
    """

    z_index: int
    points_colrow: tuple[tuple[float, float], tuple[float, float]]
    length_mm: float


def _farthest_pair(points_rc: np.ndarray, dy: float, dx: float) -> tuple[int, int, float]:
    scaled = points_rc * np.array([dy, dx])
    candidates = np.arange(len(points_rc))
    if len(points_rc) > 3:
        try:
            candidates = ConvexHull(scaled).vertices
        except QhullError:  # collinear points: every point is a candidate
            candidates = np.arange(len(points_rc))
    hull = scaled[candidates]
    distances = np.sqrt(((hull[:, None, :] - hull[None, :, :]) ** 2).sum(axis=-1))
    i, j = np.unravel_index(int(np.argmax(distances)), distances.shape)
    return int(candidates[i]), int(candidates[j]), float(distances[i, j])


def long_axis_on_key_slice(lesion: Lesion, geometry: VolumeGeometry) -> LongAxis:
    """The slice where the lesion's in-plane diameter (between pixel centres) is longest, and
    that diameter; a lesion one pixel wide gets a one-pixel line across its pixel."""
    _, dy, dx = geometry.spacing_mm
    best: tuple[float, int, np.ndarray, np.ndarray] | None = None
    for local_z in range(lesion.mask.shape[0]):
        points = np.argwhere(lesion.mask[local_z])
        if len(points) == 0:
            continue
        i, j, length = _farthest_pair(points.astype(np.float64), dy, dx)
        if best is None or length > best[0]:
            best = (length, local_z, points[i], points[j])
    if best is None:
        raise ResultsError(f"lesion {lesion.lesion_id}: empty mask")
    length, local_z, first, second = best
    row0, col0 = lesion.bbox.y0, lesion.bbox.x0
    r1, c1 = float(first[0] + row0) + 0.5, float(first[1] + col0) + 0.5
    r2, c2 = float(second[0] + row0) + 0.5, float(second[1] + col0) + 0.5
    if length == 0.0:
        c1, c2 = c1 - 0.5, c1 + 0.5
        length = dx
    return LongAxis(
        z_index=lesion.bbox.z0 + local_z,
        points_colrow=((c1, r1), (c2, r2)),
        length_mm=length,
    )
