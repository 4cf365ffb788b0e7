"""Vessels of the phantom: aorta and its branches, IVC, the portal system (portal, splenic and
superior mesenteric veins) and the intrahepatic trees (portal branches with their hepatic
arteries, hepatic veins), grown as tapered tubes that stay inside the liver."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.phantom_shapes import DeformedEllipsoid, Tube
from pipeline.types import Label


@dataclass(frozen=True)
class Vessel:
    """One tube of a vessel tree with the tissue it is filled with and its ground-truth label."""

    tube: Tube
    tissue: str
    label: int
    generation: int = 0


@dataclass(frozen=True)
class VesselLandmarks:
    """Where the organs the vessels connect lie (body frame, mm)."""

    liver: DeformedEllipsoid
    liver_centroid: np.ndarray
    liver_top_mm: np.ndarray
    confluence: np.ndarray  # portal confluence behind the pancreatic neck
    splenic_vein_points: tuple[np.ndarray, ...]
    splenic_vein_radius_mm: float
    spleen_hilum: np.ndarray
    aorta: np.ndarray  # (x, y) of the abdominal aorta (z ignored)
    aorta_radius_mm: float
    ivc_xy: np.ndarray
    ivc_radius_mm: float
    heart_center: np.ndarray
    kidney_hila: tuple[np.ndarray, ...]  # right, left


@dataclass(frozen=True)
class VesselSystem:
    vessels: tuple[Vessel, ...]  # extrahepatic, then intrahepatic (label HEPATIC_VESSELS)
    ivc: tuple[Tube, ...]
    hilum_mm: tuple[float, float, float]


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _jitter(rng: np.random.Generator, p: np.ndarray, mm: float) -> np.ndarray:
    return p + rng.uniform(-mm, mm, size=3)


def polyline(points: list[np.ndarray], radii: list[float]) -> list[Tube]:
    """Tubes joining consecutive points, radius interpolated from point to point."""
    return [Tube(tuple(points[i]), tuple(points[i + 1]), radii[i], radii[i + 1]) for i in range(len(points) - 1)]


def inside_toward(shape: DeformedEllipsoid, start: np.ndarray, target: np.ndarray, depth_mm: float) -> np.ndarray:
    """The point on the segment start->target closest to target that is `depth_mm` inside."""
    ts = np.linspace(1.0, 0.0, 101)
    pts = start[None, :] + ts[:, None] * (target - start)[None, :]
    sdf = shape.sdf_points(pts)
    ok = np.nonzero(sdf < -depth_mm)[0]
    return pts[ok[0]] if ok.size else start


def _branch_tree(
    rng: np.random.Generator,
    liver: DeformedEllipsoid,
    start: np.ndarray,
    direction: np.ndarray,
    length_mm: float,
    radius_mm: float,
    depth: int,
    tissue: str,
    generation: int,
    out: list[Vessel],
) -> None:
    """Grow a vessel branch inside the liver and recurse into two children."""
    d = direction / np.linalg.norm(direction)
    for attempt in range(4):
        length = length_mm * (0.7**attempt)
        end = start + d * length
        mid = start + d * length * 0.5
        r_end = max(radius_mm * 0.8, 1.0)
        if liver.sdf_points(end[None])[0] < -(r_end + 2.0) and liver.sdf_points(mid[None])[0] < -1.0:
            break
    else:
        return
    out.append(Vessel(Tube(tuple(start), tuple(end), radius_mm, r_end), tissue, int(Label.HEPATIC_VESSELS), generation))
    if depth <= 0 or r_end < 1.3:
        return
    for sign in (-1.0, 1.0):
        axis = np.cross(d, rng.standard_normal(3))
        axis /= max(np.linalg.norm(axis), 1e-6)
        angle = np.radians(rng.uniform(22, 48)) * sign
        child = d * np.cos(angle) + np.cross(axis, d) * np.sin(angle) + axis * (axis @ d) * (1 - np.cos(angle))
        length_child = length_mm * _u(rng, 0.6, 0.85)
        radius_child = r_end * _u(rng, 0.68, 0.8)
        _branch_tree(rng, liver, end, child, length_child, radius_child, depth - 1, tissue, generation + 1, out)


def sample_vessels(rng: np.random.Generator, lm: VesselLandmarks) -> VesselSystem:
    """Draw the vessel trees of one patient."""
    # Hilum, portal vein and intrahepatic branches -------------------------------------------
    hilum = inside_toward(lm.liver, lm.liver_centroid, lm.confluence, 12.0)
    pv_r = _u(rng, 6.0, 8.0)
    vessels: list[Vessel] = []
    pvs = int(Label.PORTAL_SPLENIC_VEIN)
    for t in polyline([lm.confluence, hilum], [pv_r, pv_r]):
        vessels.append(Vessel(t, "portal", pvs))
    for t in polyline(
        list(lm.splenic_vein_points),
        [pv_r * 0.8, lm.splenic_vein_radius_mm, lm.splenic_vein_radius_mm, lm.splenic_vein_radius_mm * 0.9],
    ):
        vessels.append(Vessel(t, "portal", pvs))
    smv_end = lm.confluence + np.array([_u(rng, 0, 10), -_u(rng, 0, 10), -_u(rng, 140, 190)])
    for t in polyline(
        [lm.confluence, _jitter(rng, (lm.confluence + smv_end) / 2, 6.0), smv_end], [pv_r * 0.85, 5.5, 4.5]
    ):
        vessels.append(Vessel(t, "portal", pvs))

    intra: list[Vessel] = []
    right_dir = np.array([-1.0, _u(rng, 0.1, 0.5), _u(rng, -0.1, 0.3)])
    left_dir = np.array([1.0, -_u(rng, 0.5, 0.9), _u(rng, 0.0, 0.35)])
    _branch_tree(rng, lm.liver, hilum, right_dir, _u(rng, 30, 42), pv_r * 0.85, 3, "portal", 1, intra)
    _branch_tree(rng, lm.liver, hilum, left_dir, _u(rng, 35, 50), pv_r * 0.75, 3, "portal", 1, intra)
    portal_branches = list(intra)
    # Hepatic arteries beside the larger portal branches.
    for v in portal_branches:
        if v.generation > 2:
            continue
        p0, p1 = np.asarray(v.tube.p0_mm), np.asarray(v.tube.p1_mm)
        d = (p1 - p0) / max(np.linalg.norm(p1 - p0), 1e-6)
        off = np.cross(d, np.array([0.0, 0.0, 1.0]))
        off = off / max(np.linalg.norm(off), 1e-6) * (v.tube.r0_mm + 2.5)
        intra.append(
            Vessel(
                Tube(tuple(p0 + off), tuple(p1 + off), _u(rng, 1.6, 2.2), 1.2),
                "artery",
                int(Label.HEPATIC_VESSELS),
                v.generation,
            )
        )
    # Hepatic veins from the intrahepatic IVC.
    ivc_top_z = lm.liver_top_mm[2] - _u(rng, 18, 28)
    q = inside_toward(lm.liver, lm.liver_centroid, np.array([lm.ivc_xy[0], lm.ivc_xy[1], ivc_top_z]), 4.0)
    for d in (np.array([-0.9, 0.1, -0.45]), np.array([0.1, -0.9, -0.45]), np.array([0.7, -0.7, -0.25])):
        _branch_tree(
            rng,
            lm.liver,
            q,
            d + rng.uniform(-0.15, 0.15, 3),
            _u(rng, 45, 65),
            _u(rng, 4.5, 6.5),
            2,
            "hepatic_vein",
            1,
            intra,
        )

    # IVC path: infrarenal, behind the liver (through q's level), into the right atrium.
    ivc_pts = [
        np.array([lm.ivc_xy[0], lm.ivc_xy[1], -420.0]),
        np.array([lm.ivc_xy[0], lm.ivc_xy[1], -60.0]),
        np.array([q[0] * 0.3 + lm.ivc_xy[0] * 0.7, q[1] * 0.3 + lm.ivc_xy[1] * 0.7, ivc_top_z]),
        np.array([lm.heart_center[0] - 25.0, lm.heart_center[1] + 20.0, lm.heart_center[2] - 10.0]),
    ]
    ivc = tuple(polyline(ivc_pts, [lm.ivc_radius_mm, lm.ivc_radius_mm, lm.ivc_radius_mm * 1.1, lm.ivc_radius_mm * 1.1]))
    # Aorta: abdominal, then thoracic posterior-left; iliac bifurcation low.
    bif_z = _u(rng, -250, -215)
    ao_pts = [
        np.array([lm.aorta[0], lm.aorta[1], bif_z]),
        np.array([lm.aorta[0], lm.aorta[1], -40.0]),
        np.array([lm.aorta[0] + 8.0, lm.aorta[1] + 12.0, lm.liver_top_mm[2] + 40.0]),
        np.array([lm.aorta[0] + 10.0, lm.aorta[1] + 16.0, 420.0]),
    ]
    for t in polyline(
        ao_pts, [lm.aorta_radius_mm * 0.85, lm.aorta_radius_mm, lm.aorta_radius_mm * 1.05, lm.aorta_radius_mm * 1.1]
    ):
        vessels.append(Vessel(t, "aorta", 0))
    for s in (-1.0, 1.0):
        vessels.append(
            Vessel(
                Tube(
                    (lm.aorta[0], lm.aorta[1], bif_z + 5.0),
                    (s * 40.0, lm.aorta[1] + 10.0, -430.0),
                    lm.aorta_radius_mm * 0.6,
                    lm.aorta_radius_mm * 0.55,
                ),
                "aorta",
                0,
            )
        )
    # Celiac trunk, hepatic and splenic arteries, SMA.
    cel = np.array([lm.aorta[0], lm.aorta[1] - lm.aorta_radius_mm, lm.confluence[2] + _u(rng, 15, 25)])
    cel_end = cel + np.array([0.0, -14.0, 2.0])
    art = [(cel, cel_end, 3.5, 3.0)]
    cha = [
        cel_end,
        _jitter(rng, (cel_end + hilum) / 2 + np.array([0, -8, 0]), 6.0),
        hilum + np.array([4.0, -6.0, -3.0]),
    ]
    spa = [
        cel_end,
        _jitter(rng, cel_end * 0.6 + lm.spleen_hilum * 0.4, 10.0),
        _jitter(rng, cel_end * 0.25 + lm.spleen_hilum * 0.75, 10.0),
        lm.spleen_hilum + np.array([0, -4.0, 4.0]),
    ]
    sma = [
        np.array([lm.aorta[0], lm.aorta[1] - lm.aorta_radius_mm, lm.confluence[2] - 8.0]),
        lm.confluence + np.array([14.0, -4.0, -35.0]),
        lm.confluence + np.array([16.0, -8.0, -160.0]),
    ]
    tubes = [Tube(tuple(a), tuple(b), r0, r1) for a, b, r0, r1 in art]
    tubes += polyline(cha, [3.0, 2.6, 2.3]) + polyline(spa, [3.0, 2.8, 2.6, 2.4]) + polyline(sma, [4.0, 3.8, 3.0])
    vessels.extend(Vessel(t, "artery", 0) for t in tubes)
    # Renal veins and arteries.
    for hil, side in zip(lm.kidney_hila, (-1.0, 1.0)):
        vessels.append(
            Vessel(Tube(tuple(hil), (lm.ivc_xy[0] + side * 4.0, lm.ivc_xy[1] + 2.0, hil[2] + 8.0), 4.5, 5.5), "ivc", 0)
        )
        vessels.append(
            Vessel(
                Tube(tuple(hil + np.array([0, 4.0, 4.0])), (lm.aorta[0], lm.aorta[1] + 2.0, hil[2] + 14.0), 2.5, 3.0),
                "artery",
                0,
            )
        )

    return VesselSystem(tuple(vessels) + tuple(intra), ivc, tuple(float(v) for v in hilum))
