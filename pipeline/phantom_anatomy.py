"""Random abdominal anatomy of one phantom patient, in body-frame millimetres.

``sample_anatomy`` draws sizes, positions and shapes of the body wall, spine, thorax base, the
abdominal organs, the bowel and the vessel trees. The result is pure geometry; what each part
looks like in each phase is decided by ``phantom_render``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.phantom_grid import NoiseField
from pipeline.phantom_shapes import (
    DeformedEllipsoid,
    Harmonic,
    Profile,
    Tube,
    ZEllipse,
    rotation_matrix,
)
from pipeline.phantom_vessels import Vessel, VesselLandmarks, polyline, sample_vessels


@dataclass(frozen=True)
class HollowTube:
    """A tube of the gut: wall, then contents (``fluid``, ``air``, ``stool``, ``food`` or
    ``collapsed``) with an air-fluid level at body y = ``level_y_mm`` where relevant."""

    tube: Tube
    wall_mm: float
    contents: str
    level_y_mm: float = 0.0


@dataclass(frozen=True)
class Kidney:
    outer: DeformedEllipsoid
    medulla: DeformedEllipsoid
    sinus: DeformedEllipsoid
    pelvis: DeformedEllipsoid


@dataclass(frozen=True)
class Domes:
    """The diaphragm: two paraboloid domes, z_d(x, y) = max over domes of peak - k * r^2."""

    peaks_mm: tuple[tuple[float, float, float], ...]
    curvature_per_mm: tuple[float, ...]

    def height(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = None
        for (px, py, pz), k in zip(self.peaks_mm, self.curvature_per_mm):
            dx, dy = x - np.float32(px), y - np.float32(py)
            h = np.float32(pz) - np.float32(k) * (dx * dx + dy * dy)
            out = h if out is None else np.maximum(out, h)
        return out


@dataclass(frozen=True)
class Spine:
    vertebral_body: ZEllipse
    cancellous: ZEllipse
    posterior_arch: ZEllipse
    canal: ZEllipse
    spinous: ZEllipse
    transverse: tuple[ZEllipse, ZEllipse]
    paraspinal: tuple[ZEllipse, ZEllipse]
    psoas: tuple[ZEllipse, ZEllipse]
    period_mm: float
    phase_mm: float
    disc_mm: float


@dataclass(frozen=True)
class Anatomy:
    """All geometry of one phantom patient (body frame, mm)."""

    body: ZEllipse
    muscle_outer: ZEllipse
    cavity: ZEllipse
    retro_guard: ZEllipse  # spine, crura and aorta: no liver, spleen or lesion inside
    rib_period_mm: float
    rib_width_mm: float
    rib_slope_mm: float
    rib_phase_mm: float
    costal_z_mm: float
    table_top_y_mm: float
    spine: Spine
    domes: Domes
    heart: DeformedEllipsoid
    liver: DeformedEllipsoid
    liver_top_mm: tuple[float, float, float]
    liver_bottom_z_mm: float
    hilum_mm: tuple[float, float, float]
    spleen: DeformedEllipsoid
    gallbladder: DeformedEllipsoid | None
    kidneys: tuple[Kidney, Kidney]
    stomach: tuple[HollowTube, ...]
    duodenum: tuple[HollowTube, ...]
    colon: tuple[HollowTube, ...]
    small_bowel: tuple[HollowTube, ...]
    pancreas: tuple[Tube, ...]
    vessels: tuple[Vessel, ...]  # extrahepatic then intrahepatic
    ivc: tuple[Tube, ...]
    textures: dict[str, NoiseField] = field(default_factory=dict)

    def body_extent_mm(self) -> tuple[float, float]:
        """Half width and half depth of the body at the liver level."""
        return float(self.body.a(np.float32(0.0))), float(max(self.body.b_ant.values))


# ---------------------------------------------------------------------------------------------


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _profile(rng: np.random.Generator, value: float, spread: float) -> Profile:
    zs = (-350.0, -175.0, 0.0, 175.0, 350.0)
    return Profile(zs, tuple(value * _u(rng, 1 - spread, 1 + spread) for _ in zs))


def _harmonics(rng: np.random.Generator, n: int, amp: tuple[float, float], max_freq: int) -> tuple[Harmonic, ...]:
    out = []
    for _ in range(n):
        f = rng.integers(-max_freq, max_freq + 1, size=3)
        if not f.any():
            f[int(rng.integers(0, 3))] = 1
        out.append(Harmonic(tuple(float(v) for v in f), _u(rng, *amp), _u(rng, 0, 2 * np.pi)))
    return tuple(out)


def _rot(yaw_deg: float, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> tuple[float, ...]:
    return tuple(float(v) for v in rotation_matrix(*np.radians([yaw_deg, pitch_deg, roll_deg])).ravel())


def shape_extent(shape: DeformedEllipsoid, step_mm: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Inside points of a shape sampled on a coarse grid: (points (N, 3), their sdf)."""
    lo, hi = shape.bounds_mm()
    axes = [np.arange(lo[i], hi[i] + step_mm, step_mm) for i in range(3)]
    gx, gy, gz = np.meshgrid(*axes, indexing="ij")
    pts = np.stack([gx.ravel(), gy.ravel(), gz.ravel()], axis=1)
    sdf = shape.sdf_points(pts)
    return pts[sdf < 0], sdf[sdf < 0]


# ---------------------------------------------------------------------------------------------


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's anatomy."""
    # Body wall ---------------------------------------------------------------------------
    half_w = _u(rng, 140, 182)
    b_ant = _u(rng, 95, 128)
    b_post = b_ant * _u(rng, 0.85, 0.95)
    fat_lat = _u(rng, 10, 45)
    fat_ant = fat_lat * _u(rng, 0.7, 1.2)
    fat_post = _u(rng, 8, 25)
    muscle = _u(rng, 8, 15)
    zero = Profile.constant(0.0)
    body = ZEllipse(zero, zero, _profile(rng, half_w, 0.04), _profile(rng, b_ant, 0.05), _profile(rng, b_post, 0.03))
    mo = ZEllipse(
        zero,
        zero,
        _profile(rng, half_w - fat_lat, 0.03),
        _profile(rng, b_ant - fat_ant, 0.04),
        _profile(rng, b_post - fat_post, 0.02),
    )
    cav_a, cav_ba, cav_bp = half_w - fat_lat - muscle, b_ant - fat_ant - muscle, b_post - fat_post - _u(rng, 8, 12)
    cavity = ZEllipse(zero, zero, _profile(rng, cav_a, 0.02), _profile(rng, cav_ba, 0.03), _profile(rng, cav_bp, 0.02))

    # Spine ---------------------------------------------------------------------------------
    vb_a, vb_b = _u(rng, 18, 23), _u(rng, 14, 18)
    y_v = b_post - fat_post - _u(rng, 50, 62)
    canal_r = _u(rng, 7.5, 9.5)
    y_canal = y_v + vb_b + canal_r + 2.0
    c = Profile.constant
    spine = Spine(
        vertebral_body=ZEllipse(c(0.0), c(y_v), c(vb_a), c(vb_b), c(vb_b)),
        cancellous=ZEllipse(c(0.0), c(y_v), c(vb_a - 2.0), c(vb_b - 2.0), c(vb_b - 2.0)),
        posterior_arch=ZEllipse(c(0.0), c(y_canal + 1.0), c(canal_r + 8.0), c(canal_r + 5.0), c(canal_r + 8.0)),
        canal=ZEllipse(c(0.0), c(y_canal), c(canal_r), c(canal_r), c(canal_r)),
        spinous=ZEllipse(c(0.0), c(y_canal + canal_r + 20.0), c(4.5), c(16.0), c(16.0)),
        transverse=(
            ZEllipse(c(-(canal_r + 20.0)), c(y_canal - 3.0), c(15.0), c(5.0), c(5.0)),
            ZEllipse(c(canal_r + 20.0), c(y_canal - 3.0), c(15.0), c(5.0), c(5.0)),
        ),
        paraspinal=tuple(
            ZEllipse(
                c(s * _u(rng, 28, 36)),
                c(y_canal + _u(rng, 8, 14)),
                c(_u(rng, 22, 30)),
                c(_u(rng, 20, 26)),
                c(_u(rng, 20, 26)),
            )
            for s in (-1.0, 1.0)
        ),
        psoas=tuple(
            ZEllipse(
                Profile((-260.0, -60.0), (s * (vb_a + 22.0), s * (vb_a + 10.0))),
                c(y_v + 2.0),
                Profile((-260.0, -60.0), (_u(rng, 20, 26), 6.0)),
                Profile((-260.0, -60.0), (_u(rng, 17, 22), 6.0)),
                Profile((-260.0, -60.0), (_u(rng, 17, 22), 6.0)),
                z_hi_mm=-55.0,
            )
            for s in (-1.0, 1.0)
        ),
        period_mm=_u(rng, 30, 36),
        phase_mm=_u(rng, 0, 36),
        disc_mm=_u(rng, 7, 10),
    )

    # Liver ---------------------------------------------------------------------------------
    la, lb, lc = _u(rng, 88, 112), _u(rng, 68, 88), _u(rng, 70, 88)
    liver_x = -cav_a + la * _u(rng, 0.92, 1.0)
    liver = DeformedEllipsoid(
        center_mm=(liver_x, _u(rng, -15, 0), 0.0),
        semi_axes_mm=(la, lb, lc),
        rotation=_rot(_u(rng, -34, -16), _u(rng, -14, -4), _u(rng, -6, 6)),
        harmonics=_harmonics(rng, 4, (0.02, 0.05), 2) + _harmonics(rng, 3, (0.008, 0.02), 4),
        taper=_u(rng, 0.45, 0.68),
    )
    pts, _ = shape_extent(liver, 4.0)
    top = pts[np.argmax(pts[:, 2])]
    liver_top = (float(top[0]), float(top[1]), float(top[2]))
    liver_bottom = float(pts[:, 2].min())
    centroid = pts.mean(axis=0)

    # Diaphragm, lungs, heart ------------------------------------------------------------------
    dome_k = 1.0 / (2.0 * _u(rng, 95, 130))
    left_peak = (_u(rng, 45, 75), _u(rng, -10, 15), liver_top[2] - _u(rng, 5, 25))
    domes = Domes(((liver_top[0], liver_top[1], liver_top[2] + 3.0), left_peak), (dome_k, dome_k * _u(rng, 0.9, 1.2)))
    hx, hy = _u(rng, 15, 35), -cav_ba * _u(rng, 0.25, 0.4)
    hc = _u(rng, 45, 55)
    hz = float(domes.height(np.float32(hx), np.float32(hy))) + hc + 4.0
    heart = DeformedEllipsoid(
        (hx, hy, hz),
        (_u(rng, 55, 68), _u(rng, 45, 55), hc),
        _rot(_u(rng, 20, 40), _u(rng, -10, 10)),
        _harmonics(rng, 2, (0.02, 0.04), 2),
    )

    # Aorta, IVC ----------------------------------------------------------------------------
    r_ao = _u(rng, 9.5, 13.0)
    ao = np.array([_u(rng, 10, 20), y_v - vb_b - r_ao - _u(rng, 1, 4), 0.0])
    r_ivc = _u(rng, 9.0, 12.0)
    ivc_xy = np.array([-_u(rng, 20, 30), y_v - vb_b - _u(rng, 8, 14)])

    # Spleen ---------------------------------------------------------------------------------
    s_thick, s_long, s_si = _u(rng, 17, 27), _u(rng, 45, 65), _u(rng, 42, 60)
    spleen_yaw = _u(rng, 28, 48)
    ax1 = np.array([np.cos(np.radians(spleen_yaw)), np.sin(np.radians(spleen_yaw)), 0.0])
    spleen_c = np.array([cav_a - s_thick * 1.1, cav_bp * _u(rng, 0.2, 0.45), _u(rng, 0, 30)])
    spleen = DeformedEllipsoid(
        tuple(spleen_c),
        (s_thick, s_long, s_si),
        _rot(spleen_yaw, _u(rng, -12, 12)),
        _harmonics(rng, 3, (0.02, 0.05), 2),
        bend=-_u(rng, 0.25, 0.45),
    )
    spleen_hilum = spleen_c - ax1 * (s_thick + 8.0) + np.array([0.0, 0.0, -5.0])

    # Kidneys ------------------------------------------------------------------------------------
    kidneys = []
    for side, zc in ((-1.0, _u(rng, -90, -62)), (1.0, _u(rng, -72, -45))):
        ka, kb, kc = _u(rng, 24, 30), _u(rng, 19, 24), _u(rng, 45, 58)
        kc_mm = np.array([side * _u(rng, 58, 75), y_v + _u(rng, 2, 16), zc])
        yaw = side * _u(rng, 20, 38)
        rot = _rot(yaw, side * _u(rng, -8, -2))
        rmat = np.asarray(rot).reshape(3, 3)
        medial = -side * rmat[:, 0] * 0.2 + np.array([0, -0.1, 0])
        outer = DeformedEllipsoid(tuple(kc_mm), (ka, kb, kc), rot, _harmonics(rng, 2, (0.01, 0.03), 2))
        med = DeformedEllipsoid(
            tuple(kc_mm), (ka * 0.72, kb * 0.72, kc * 0.8), rot, _harmonics(rng, 3, (0.05, 0.09), 4)
        )
        hil = kc_mm - side * rmat[:, 0] * ka * 0.55
        sinus = DeformedEllipsoid(tuple(hil), (ka * 0.4, kb * 0.45, kc * 0.5), rot)
        pelvis = DeformedEllipsoid(tuple(hil - side * rmat[:, 0] * 3 + medial), (7.0, 6.0, 11.0), rot)
        kidneys.append(Kidney(outer, med, sinus, pelvis))

    # Portal confluence, pancreas, splenic vein ---------------------------------------------
    conf = np.array([_u(rng, -15, 0), y_v - vb_b - _u(rng, 30, 38), _u(rng, -68, -50)])
    y_front_ao = ao[1] - r_ao
    head = conf + np.array([-_u(rng, 25, 35), _u(rng, 0, 10), -_u(rng, 20, 32)])
    neck = conf + np.array([5.0, -_u(rng, 13, 17), 3.0])
    body_p = np.array([conf[0] + _u(rng, 40, 55), min(y_front_ao - 16.0, conf[1] - 8.0), conf[2] + _u(rng, 8, 16)])
    tail = spleen_hilum + np.array([-14.0, -10.0, -_u(rng, 8, 20)])
    r_head, r_neck, r_body, r_tail = _u(rng, 14, 19), _u(rng, 8, 11), _u(rng, 9, 12), _u(rng, 7, 10)
    pancreas = tuple(polyline([head, neck, body_p, tail], [r_head, r_neck, r_body, r_tail]))
    sv_r = _u(rng, 4.0, 5.5)
    sv_pts = [
        conf,
        body_p + np.array([0, r_body + sv_r + 2, -2]),
        tail + np.array([0, r_tail + sv_r + 2, 0]),
        spleen_hilum,
    ]

    system = sample_vessels(
        rng,
        VesselLandmarks(
            liver=liver,
            liver_centroid=centroid,
            liver_top_mm=np.asarray(liver_top),
            confluence=conf,
            splenic_vein_points=tuple(sv_pts),
            splenic_vein_radius_mm=sv_r,
            spleen_hilum=spleen_hilum,
            aorta=ao,
            aorta_radius_mm=r_ao,
            ivc_xy=ivc_xy,
            ivc_radius_mm=r_ivc,
            heart_center=np.array([hx, hy, hz]),
            kidney_hila=tuple(np.asarray(k.sinus.center_mm) for k in kidneys),
        ),
    )
    hilum = np.asarray(system.hilum_mm)

    # Gallbladder ---------------------------------------------------------------------------------
    gallbladder = None
    if rng.uniform() > 0.08:
        gb_c = np.array([hilum[0] - _u(rng, 0, 20), hilum[1] - _u(rng, 30, 45), hilum[2] - _u(rng, 10, 25)])
        gallbladder = DeformedEllipsoid(
            tuple(gb_c),
            (_u(rng, 12, 19), _u(rng, 12, 19), _u(rng, 28, 42)),
            _rot(_u(rng, -30, 30), _u(rng, 15, 35), _u(rng, -35, -15)),
            _harmonics(rng, 2, (0.02, 0.05), 2),
        )

    # Stomach, duodenum, bowel ---------------------------------------------------------------
    fundus = np.array([_u(rng, 40, 70), _u(rng, -5, 20), left_peak[2] - _u(rng, 30, 45)])
    body_s = np.array([_u(rng, 45, 75), -cav_ba * _u(rng, 0.3, 0.5), _u(rng, -30, -5)])
    antrum = np.array([_u(rng, 0, 30), -cav_ba * _u(rng, 0.5, 0.7), _u(rng, -58, -40)])
    pylorus = np.array([-_u(rng, 15, 30), -cav_ba * _u(rng, 0.35, 0.5), _u(rng, -62, -45)])
    stomach_contents = str(rng.choice(["fluid", "fluid", "food", "air"]))
    level = _u(rng, -60, 10)
    s_radii = [_u(rng, 26, 40), _u(rng, 22, 33), _u(rng, 14, 20), _u(rng, 8, 11)]
    stomach = tuple(
        HollowTube(t, _u(rng, 3, 5), stomach_contents, level)
        for t in polyline([fundus, body_s, antrum, pylorus], s_radii)
    )
    d_r = _u(rng, 9, 13)
    d_pts = [
        pylorus,
        head + np.array([-(r_head + d_r + 3), 0.0, 12.0]),
        head + np.array([-(r_head + d_r + 3), 4.0, -40.0]),
        np.array([ao[0] + 25.0, (ao[1] - r_ao + conf[1]) / 2.0 + 4.0, head[2] - 55.0]),
    ]
    duodenum = tuple(
        HollowTube(t, 2.5, str(rng.choice(["fluid", "collapsed", "air"])), level) for t in polyline(d_pts, [d_r] * 4)
    )
    cr = _u(rng, 17, 26)
    flex_r = np.array([-(cav_a - cr - 8), _u(rng, -10, 25), liver_bottom - _u(rng, 0, 25)])
    flex_l = np.array([cav_a - cr - 10, _u(rng, -10, 20), spleen_c[2] - _u(rng, 40, 60)])
    transverse = np.array([_u(rng, -20, 20), -(cav_ba - cr - 12), min(flex_r[2], flex_l[2]) - _u(rng, 30, 90)])
    colon_pts = [
        np.array([flex_r[0], flex_r[1] + 10, -440.0]),
        flex_r,
        (flex_r + transverse) / 2 + np.array([0, -10, 10]),
        transverse,
        (transverse + flex_l) / 2 + np.array([0, -10, 10]),
        flex_l,
        np.array([flex_l[0] + 2, flex_l[1] + 15, -440.0]),
    ]
    colon = tuple(
        HollowTube(t, 2.5, str(rng.choice(["stool", "stool", "air"])), level)
        for t in polyline(colon_pts, [cr] * len(colon_pts))
    )
    sb: list[HollowTube] = []
    p = np.array([_u(rng, -40, 40), _u(rng, -50, 0), _u(rng, -170, -120)])
    for _ in range(int(rng.integers(14, 22))):
        nxt = p + rng.normal(0, 30, 3)
        nxt[0] = np.clip(nxt[0], -cav_a * 0.55, cav_a * 0.55)
        nxt[1] = np.clip(nxt[1], -cav_ba * 0.75, y_v - 35)
        nxt[2] = np.clip(nxt[2], -420, conf[2] - 70)
        r = _u(rng, 9, 14)
        sb.append(
            HollowTube(
                Tube(tuple(p), tuple(nxt), r, r), 2.5, str(rng.choice(["fluid", "fluid", "collapsed", "air"])), level
            )
        )
        p = nxt

    # Textures (body frame) --------------------------------------------------------------------
    lo, hi = liver.bounds_mm()
    textures = {
        "liver_coarse": NoiseField.random(rng, lo, hi, 14.0),
        "liver_fine": NoiseField.random(rng, lo, hi, 3.5),
    }
    lo, hi = spleen.bounds_mm()
    textures["spleen"] = NoiseField.random(rng, lo, hi, 5.0)
    lo = np.minimum(head, tail) - 25
    hi = np.maximum(head, tail) + 25
    textures["pancreas"] = NoiseField.random(rng, lo, hi, 3.0)
    textures["gut"] = NoiseField.random(rng, np.array([-cav_a, -cav_ba, -450.0]), np.array([cav_a, cav_bp, 150.0]), 6.0)
    textures["lung"] = NoiseField.random(
        rng, np.array([-cav_a, -cav_ba, liver_bottom]), np.array([cav_a, cav_bp, liver_top[2] + 260.0]), 6.0
    )

    return Anatomy(
        body=body,
        muscle_outer=mo,
        cavity=cavity,
        retro_guard=ZEllipse(
            c(ao[0] * 0.4), c(y_v + 5.0), c(vb_a + _u(rng, 14, 20)), c(vb_b + 2 * r_ao + 4.0), c(80.0)
        ),
        rib_period_mm=_u(rng, 34, 42),
        rib_width_mm=_u(rng, 10, 13),
        rib_slope_mm=_u(rng, 110, 160),
        rib_phase_mm=_u(rng, 0, 40),
        costal_z_mm=liver_bottom + _u(rng, -10, 25),
        table_top_y_mm=float(max(body.b_post.values)) + 1.5,
        spine=spine,
        domes=domes,
        heart=heart,
        liver=liver,
        liver_top_mm=liver_top,
        liver_bottom_z_mm=liver_bottom,
        hilum_mm=tuple(float(v) for v in hilum),
        spleen=spleen,
        gallbladder=gallbladder,
        kidneys=(kidneys[0], kidneys[1]),
        stomach=stomach,
        duodenum=duodenum,
        colon=colon,
        small_bowel=tuple(sb),
        pancreas=pancreas,
        vessels=system.vessels,
        ivc=system.ivc,
        textures=textures,
    )
