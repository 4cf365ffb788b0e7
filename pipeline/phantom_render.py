"""Rendering of one contrast phase of the phantom: a painter's algorithm over soft occupancies
(partial volume), textures, the exterior body wall, spine and table, then CT noise.

The layers are painted in anatomical order (gut, kidneys, thorax, stomach, pancreas, spleen,
liver, gallbladder, look-alikes, vessels, lesions, then the body wall and spine on top), so that a
later structure covers an earlier one. A voxel takes the label of the last structure that fills at
least half of it; lesion voxels therefore carry their lesion label, never liver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from pipeline.phantom_anatomy import Anatomy, HollowTube
from pipeline.phantom_grid import Block, PhaseSampler
from pipeline.phantom_lesions import LesionSpec, LookalikeSpec
from pipeline.phantom_patterns import lesion_hu
from pipeline.phantom_shapes import (
    DeformedEllipsoid,
    Shape,
    ShapeSample,
    ZEllipse,
    ramp_occupancy,
)
from pipeline.phantom_tissues import ContrastParams, TissueTable
from pipeline.types import Label

HuFn = Callable[[Block, ShapeSample], "np.ndarray | float"]


@dataclass(frozen=True)
class PhantomModel:
    """Everything that defines one phantom patient, independent of the scan grid."""

    anatomy: Anatomy
    tissues: TissueTable
    lesions: tuple[LesionSpec, ...]
    lookalikes: tuple[LookalikeSpec, ...]
    contrast: ContrastParams


@dataclass
class Canvas:
    """The volumes one phase is painted into."""

    hu: np.ndarray  # float32 (z, y, x)
    labels: np.ndarray  # uint8
    instances: np.ndarray  # int16, lesion id or 0

    @classmethod
    def empty(cls, shape: tuple[int, int, int], fill_hu: float) -> "Canvas":
        return cls(np.full(shape, fill_hu, dtype=np.float32), np.zeros(shape, np.uint8), np.zeros(shape, np.int16))


class _Painter:
    def __init__(self, canvas: Canvas, sampler: PhaseSampler, tissues: TissueTable, phase_i: int) -> None:
        self.canvas = canvas
        self.sampler = sampler
        self.tissues = tissues
        self.p = phase_i

    def hu(self, tissue: str) -> float:
        return self.tissues.hu(tissue, self.p)

    def put(
        self, block: Block, occ: np.ndarray, hu: "np.ndarray | float", label: int | None, instance: int = 0
    ) -> None:
        view = self.canvas.hu[block.index]
        view += occ * (np.float32(hu) - view) if np.isscalar(hu) else occ * (hu - view)
        if label is not None:
            m = occ >= 0.5
            self.canvas.labels[block.index][m] = label
            self.canvas.instances[block.index][m] = instance

    def layer(
        self,
        shape: Shape,
        hu: "HuFn | float | str",
        label: int | None,
        instance: int = 0,
        local: bool = False,
        clip: Shape | None = None,
    ) -> None:
        lo, hi = shape.bounds_mm()
        block = self.sampler.block(lo, hi)
        if block.empty:
            return
        for sub in self.sampler.split(block):
            self._layer_block(sub, shape, hu, label, instance, local, clip)

    def _layer_block(
        self,
        block: Block,
        shape: Shape,
        hu: "HuFn | float | str",
        label: int | None,
        instance: int,
        local: bool,
        clip: Shape | None,
    ) -> None:
        sample = shape.evaluate(block, local)
        occ = sample.occ
        if clip is not None:
            occ = occ * clip.evaluate(block).occ
        if not occ.any():
            return
        if isinstance(hu, str):
            value: "np.ndarray | float" = self.hu(hu)
        elif callable(hu):
            value = hu(block, sample)
        else:
            value = hu
        self.put(block, occ, value, label, instance)


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outside:
    """The complement of an extruded ellipse (used as a clip)."""

    region: ZEllipse

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        return np.full(3, -1e4), np.full(3, 1e4)

    def evaluate(self, block: Block, local: bool = False) -> ShapeSample:
        return ShapeSample(occ=np.float32(1.0) - self.region.evaluate(block).occ)


def _scaled(shape: DeformedEllipsoid, factor: float) -> DeformedEllipsoid:
    return DeformedEllipsoid(
        shape.center_mm,
        tuple(v * factor for v in shape.semi_axes_mm),
        shape.rotation,
        shape.harmonics,
        shape.taper,
        shape.bend,
        shape.blur_mm,
    )


def _textured(painter: _Painter, tissue: str, fields: Sequence[tuple[str, Sequence[float]]], anatomy: Anatomy) -> HuFn:
    base = painter.hu(tissue)

    def fn(block: Block, _sample: ShapeSample) -> np.ndarray:
        out = np.full(block.shape, base, dtype=np.float32)
        for name, amps in fields:
            amp = np.float32(amps[painter.p])
            if amp:
                out += amp * anatomy.textures[name].sample(block.x, block.y, block.z)
        return out

    return fn


def _paint_gut(pt: _Painter, tubes: Sequence[HollowTube], anatomy: Anatomy, label: int) -> None:
    tex = anatomy.textures["gut"]
    for g in tubes:
        pt.layer(g.tube, "gi_wall", label)
    for g in tubes:
        inner = g.tube.shrunk(g.wall_mm)

        def contents(block: Block, _s: ShapeSample, g: HollowTube = g) -> np.ndarray | float:
            air, fluid = pt.hu("air"), pt.hu("gi_fluid")
            if g.contents == "collapsed":
                return pt.hu("gi_wall") - 15.0
            if g.contents == "stool":
                t = tex.sample(block.x, block.y, block.z)
                stool = np.float32(pt.hu("stool")) + np.float32(110.0) * t
                return np.where(t > 1.3, np.float32(air * 0.9), stool)
            if g.contents == "food":
                return np.float32(30.0) + np.float32(25.0) * tex.sample(block.x, block.y, block.z)
            level = g.level_y_mm + (25.0 if g.contents == "air" else 0.0)
            below = ramp_occupancy(np.float32(level) - block.y, 1.2)  # posterior of the level: fluid
            return np.float32(air) + below * np.float32(fluid - air)

        pt.layer(inner, contents, label)


def _paint_kidneys(pt: _Painter, anatomy: Anatomy) -> None:
    for k in anatomy.kidneys:
        pt.layer(k.outer, "kidney_cortex", 0)
        pt.layer(k.medulla, "kidney_medulla", 0, clip=k.outer)
        pt.layer(k.sinus, "fat", 0, clip=k.outer)
        pt.layer(k.pelvis, "urine", 0)


def _paint_thorax(pt: _Painter, anatomy: Anatomy) -> None:
    cav = anatomy.cavity
    lo, hi = cav.bounds_mm()
    lo[2] = anatomy.liver_bottom_z_mm - 40.0
    hi[2] = 1e4
    whole = pt.sampler.block(lo, hi)
    for block in [] if whole.empty else pt.sampler.split(whole):
        occ_cav = cav.evaluate(block).occ
        dome = anatomy.domes.height(block.x, block.y)
        dz = block.z - dome
        vz = float(block.voxel_mm[2])
        lung = occ_cav * ramp_occupancy(np.float32(3.0) - dz, vz)
        if lung.any():
            hu = np.float32(pt.hu("lung")) + np.float32(30.0) * anatomy.textures["lung"].sample(
                block.x, block.y, block.z
            )
            pt.put(block, lung, hu, 0)
            sheet = occ_cav * ramp_occupancy(np.abs(dz) - np.float32(2.5), vz)
            pt.put(block, sheet, pt.hu("muscle"), 0)
    heart = anatomy.heart
    pt.layer(_scaled(heart, 1.08), "fat", 0)
    pt.layer(heart, "myocardium", 0)
    pt.layer(_scaled(heart, 0.78), "heart_blood", 0)


def _paint_liver_and_organs(pt: _Painter, model: PhantomModel) -> None:
    a = model.anatomy
    _paint_gut(pt, a.stomach, a, int(Label.STOMACH))
    tex = a.textures["pancreas"]
    base = pt.hu("pancreas")

    def pancreas(block: Block, _s: ShapeSample) -> np.ndarray:
        t = tex.sample(block.x, block.y, block.z)
        hu = np.float32(base) + np.float32(6.0) * t
        fatty = ramp_occupancy((np.float32(-1.1) - t) * np.float32(4.0), 1.0)  # fatty lobulation
        return hu + fatty * (np.float32(pt.hu("visceral_fat")) - hu) * np.float32(0.8)

    for t in a.pancreas:
        pt.layer(t, pancreas, int(Label.PANCREAS))
    guard = _Outside(a.retro_guard)
    pt.layer(a.spleen, _textured(pt, "spleen", [("spleen", (2.0, 22.0, 4.0, 3.0))], a), int(Label.SPLEEN), clip=guard)
    liver_fn = _textured(pt, "liver", [("liver_coarse", (3.0, 5.0, 5.0, 4.0)), ("liver_fine", (2.5, 4.0, 3.0, 3.0))], a)
    pt.layer(a.liver, liver_fn, int(Label.LIVER), clip=guard)
    if a.gallbladder is not None:
        pt.layer(a.gallbladder, "gb_wall", int(Label.GALLBLADDER))
        inner = _scaled(a.gallbladder, 1.0)
        inner = DeformedEllipsoid(
            inner.center_mm, tuple(v - 2.0 for v in inner.semi_axes_mm), inner.rotation, inner.harmonics
        )
        pt.layer(inner, "bile", int(Label.GALLBLADDER))
    for la in model.lookalikes:
        lo, hi = la.shape.bounds_mm()
        whole = pt.sampler.block(lo, hi)
        for block in [] if whole.empty else pt.sampler.split(whole):
            occ = la.shape.evaluate(block).occ * a.liver.evaluate(block).occ * guard.evaluate(block).occ
            pt.canvas.hu[block.index] += occ * np.float32(la.delta_hu[pt.p])


def _paint_vessels(pt: _Painter, model: PhantomModel) -> None:
    a = model.anatomy
    gut = a.textures["gut"]

    def ivc(block: Block, _s: ShapeSample) -> np.ndarray | float:
        if pt.p != 1:
            return pt.hu("ivc")
        # Arterial phase: mixing of opacified renal/hepatic return with unopacified blood.
        return np.float32(pt.hu("ivc")) + np.float32(35.0) * gut.sample(block.x, block.y, block.z)

    intra = [v for v in a.vessels if v.label == int(Label.HEPATIC_VESSELS)]
    extra = [v for v in a.vessels if v.label != int(Label.HEPATIC_VESSELS)]
    for v in intra:
        pt.layer(v.tube, v.tissue, v.label)
    for t in a.ivc:
        pt.layer(t, ivc, 0)
    for v in extra:
        pt.layer(v.tube, v.tissue, v.label)


def _paint_lesions(pt: _Painter, lesions: Sequence[LesionSpec]) -> None:
    for spec in lesions:

        def fn(block: Block, s: ShapeSample, spec: LesionSpec = spec) -> np.ndarray:
            return lesion_hu(spec, pt.p, s, block.x, block.y, block.z)

        pt.layer(spec.shape, fn, spec.label, instance=spec.lesion_id, local=True)


def _paint_exterior(pt: _Painter, anatomy: Anatomy, slab_slices: int = 4) -> None:
    """Subcutaneous fat, muscle wall, ribs and skin outside the cavity; air and table outside the
    body. Covers whatever organ pokes out of the cavity. Works in slabs of a few slices so the
    temporaries stay in cache."""
    n = pt.sampler.shape[0]
    for z0 in range(0, n, slab_slices):
        _paint_exterior_slab(pt, anatomy, pt.sampler.slab(z0, min(n, z0 + slab_slices)))


def _paint_exterior_slab(pt: _Painter, anatomy: Anatomy, block: Block) -> None:
    sdf_body = anatomy.body.sdf(block)
    w = float(np.hypot(1.15 * block.voxel_mm[0], block.psf_mm))
    occ_body = ramp_occupancy(sdf_body, w)
    occ_skin = occ_body - ramp_occupancy(sdf_body + np.float32(2.0), w)
    occ_mo = anatomy.muscle_outer.evaluate(block).occ
    occ_cav = anatomy.cavity.evaluate(block).occ
    # Ribs: oblique bands within the muscle ring, descending anteriorly (z falls with the angle
    # from the posterior midline), only in the upper abdomen and not at the midlines.
    zs = block.z_slice
    theta = np.abs(np.arctan2(block.x_fixed, block.y_fixed)) / np.float32(np.pi)  # 0 posterior, 1 anterior
    phase = zs + np.float32(anatomy.rib_slope_mm) * theta - np.float32(anatomy.rib_phase_mm)
    period = np.float32(anatomy.rib_period_mm)
    cyc = np.abs(np.mod(phase, period) - period / 2)  # P/2 at a rib centre
    rib_z = ramp_occupancy((period / 2 - cyc) - np.float32(anatomy.rib_width_mm / 2), float(block.voxel_mm[2]))
    costal = ramp_occupancy(np.float32(anatomy.costal_z_mm) + np.float32(90.0) * theta - zs, 4.0)
    midlines = ramp_occupancy(theta - np.float32(0.14), 0.02) + ramp_occupancy(np.float32(0.85) - theta, 0.02)
    costal = costal * (np.float32(1.0) - np.clip(midlines, 0, 1))
    ring = np.clip(occ_mo - occ_cav, 0.0, 1.0)
    ribs = ring * (rib_z * costal)
    fat, muscle = pt.hu("fat"), pt.hu("muscle")
    ext = np.float32(fat) + occ_mo * np.float32(muscle - fat)
    ext += ribs * (np.float32(pt.hu("rib")) - ext)
    ext += occ_skin * (np.float32(pt.hu("skin")) - ext)
    view = pt.canvas.hu[block.index]
    outside = np.float32(1.0) - occ_cav
    view += outside * (ext - view)
    view += (np.float32(1.0) - occ_body) * (np.float32(pt.hu("air")) - view)
    keep = occ_cav >= 0.5
    pt.canvas.labels[block.index] *= keep
    pt.canvas.instances[block.index] *= keep
    # Table: fixed in the scanner, curved carbon shell with foam core, only where the body is not.
    x, y = block.x_fixed, block.y_fixed
    top = np.float32(anatomy.table_top_y_mm) + x * x / np.float32(1800.0)
    d = y - top
    vy = float(block.voxel_mm[1])
    board = ramp_occupancy(-d, vy) * ramp_occupancy(d - np.float32(45.0), vy) * ramp_occupancy(np.abs(x) - 230.0, vy)
    shell = board * (ramp_occupancy(d - np.float32(2.5), vy) + ramp_occupancy(np.float32(42.5) - d, vy))
    table_hu = np.float32(pt.hu("table_foam")) + np.clip(shell, 0, 1) * np.float32(
        pt.hu("table_shell") - pt.hu("table_foam")
    )
    occ_table = board * (np.float32(1.0) - occ_body)
    view += occ_table * (table_hu - view)


def _paint_spine(pt: _Painter, anatomy: Anatomy) -> None:
    s = anatomy.spine
    for m in s.paraspinal + s.psoas:
        pt.layer(m, "muscle", 0)

    def disc_weight(block: Block) -> np.ndarray:
        zs = block.z_slice
        cyc = np.abs(np.mod(zs - np.float32(s.phase_mm), np.float32(s.period_mm)) - np.float32(s.period_mm / 2))
        return ramp_occupancy(cyc - np.float32(s.disc_mm / 2), float(block.voxel_mm[2]))  # 1 inside a disc

    def body_hu(tissue: str) -> HuFn:
        def fn(block: Block, _s: ShapeSample) -> np.ndarray:
            w = disc_weight(block)
            return np.float32(pt.hu(tissue)) + w * np.float32(pt.hu("disc") - pt.hu(tissue))

        return fn

    pt.layer(s.vertebral_body, body_hu("bone_cortical"), 0)
    pt.layer(s.cancellous, body_hu("bone_cancellous"), 0)

    def mid_band(block: Block, half_mm: float) -> np.ndarray:
        """1 within half_mm of the mid-level of a vertebra (z-periodic)."""
        zs = block.z_slice
        cyc = np.abs(np.mod(zs - np.float32(s.phase_mm), np.float32(s.period_mm)) - np.float32(s.period_mm / 2))
        return ramp_occupancy(np.float32(s.period_mm / 2) - cyc - np.float32(half_mm), float(block.voxel_mm[2]))

    parts = [(s.posterior_arch, None), (s.spinous, 9.0)] + [(t, 5.0) for t in s.transverse]
    for part, half in parts:
        lo, hi = part.bounds_mm()
        block = pt.sampler.block(lo, hi)
        if block.empty:
            continue
        weight = np.float32(1.0) - disc_weight(block) if half is None else mid_band(block, half)
        pt.put(block, part.evaluate(block).occ * weight, pt.hu("bone_posterior"), 0)
    pt.layer(s.canal, "csf", 0)


def render_phase(model: PhantomModel, sampler: PhaseSampler, phase_i: int) -> Canvas:
    """Noise-free HU, labels and lesion instances of one phase on the sampler's grid."""
    canvas = Canvas.empty(sampler.shape, model.tissues.hu("visceral_fat", phase_i))
    pt = _Painter(canvas, sampler, model.tissues, phase_i)
    a = model.anatomy
    _paint_gut(pt, a.colon + a.small_bowel + a.duodenum, a, 0)
    _paint_kidneys(pt, a)
    _paint_thorax(pt, a)
    _paint_liver_and_organs(pt, model)
    _paint_vessels(pt, model)
    _paint_lesions(pt, model.lesions)
    _paint_exterior(pt, a)
    _paint_spine(pt, a)
    return canvas


def add_ct_noise(hu: np.ndarray, sigma_hu: float, rng: np.random.Generator) -> None:
    """Add spatially correlated (2x2 in-plane box filtered) Gaussian noise of std sigma, in place."""
    z, y, x = hu.shape
    for k in range(z):
        w = rng.standard_normal((y + 1, x + 1), dtype=np.float32)
        n = w[:-1, :-1] + w[1:, :-1]
        n += w[:-1, 1:]
        n += w[1:, 1:]
        hu[k] += n * np.float32(0.5 * sigma_hu)
