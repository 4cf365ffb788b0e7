"""Figure of the phantom's lesion enhancement patterns: one row per lesion type, one column per
phase (NC, AP, VP, DP), cropped around the lesion where it lies in each phase, plus the venous
image with the ground-truth outline. Pillow only.

    python -m pipeline.phantom_figure docs/img/phantom_phases.png [--seed N]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from pipeline.phantom import LesionRequest, PhantomVolumes, make_phantom
from pipeline.types import PHASE_ORDER, LesionType, Phase, VolumeGeometry

log = logging.getLogger(__name__)

DEFAULT_SEED = 2
WINDOW_CENTER_HU = 50.0
WINDOW_WIDTH_HU = 400.0
CELL_PX = 200
LABEL_PX = 150
HEADER_PX = 34
FOOTER_PX = 30
#: Volumes of the figure's lesions, large enough to show their internal pattern.
FIGURE_VOLUMES_ML: dict[LesionType, float] = {
    LesionType.HCC: 30.0,
    LesionType.ICC: 26.0,
    LesionType.META: 14.0,
    LesionType.HEM: 24.0,
    LesionType.OTHER: 16.0,
    LesionType.CYST: 8.0,
}
_TYPE_NOTES: dict[LesionType, str] = {
    LesionType.HCC: "washout, capsule",
    LesionType.ICC: "rim, delayed fill",
    LesionType.META: "target rim",
    LesionType.HEM: "nodular, centripetal",
    LesionType.OTHER: "FNH: bright AP, scar",
    LesionType.CYST: "~5 HU in all phases",
}


def patient_to_index(geometry: VolumeGeometry, point_mm: np.ndarray) -> np.ndarray:
    """Continuous (z, y, x) index of a patient point (inverse of ``index_to_patient``)."""
    ijk = geometry.direction_matrix.T @ (np.asarray(point_mm, dtype=np.float64) - np.asarray(geometry.origin_mm))
    return (ijk / np.asarray(geometry.spacing_mm[::-1]))[::-1]


def _window(hu: np.ndarray) -> np.ndarray:
    lo = WINDOW_CENTER_HU - WINDOW_WIDTH_HU / 2
    return (np.clip((hu - lo) / WINDOW_WIDTH_HU, 0.0, 1.0) * 255.0).astype(np.uint8)


def _crop(image: np.ndarray, cy: float, cx: float, half_px: int) -> np.ndarray:
    padded = np.pad(image, half_px, mode="edge")
    y0, x0 = int(round(cy)), int(round(cx))
    return padded[y0 : y0 + 2 * half_px, x0 : x0 + 2 * half_px]


def _cell(vol: PhantomVolumes, phase: Phase, center_mm: np.ndarray, half_mm: float) -> np.ndarray:
    """Windowed axial crop of one phase around where the VP point `center_mm` lies in it."""
    g = vol.geometry
    point = vol.phase_position_mm(phase, center_mm)
    z, y, x = patient_to_index(g, point)
    k = int(np.clip(round(z), 0, g.shape[0] - 1))
    half_px = int(round(half_mm / g.spacing_mm[1]))
    # Arrays may run right-to-left (feet first): show the patient's right on the image's left.
    image = vol.hu[phase][k]
    if g.direction_matrix[0, 0] < 0:
        image, x = image[:, ::-1], image.shape[1] - 1 - x
    return _window(_crop(image, y, x, half_px))


def _outline(vol: PhantomVolumes, lesion_id: int, center_mm: np.ndarray, half_mm: float) -> np.ndarray:
    g = vol.geometry
    z, y, x = patient_to_index(g, center_mm)
    k = int(np.clip(round(z), 0, g.shape[0] - 1))
    mask = vol.instances[k] == lesion_id
    if g.direction_matrix[0, 0] < 0:
        mask, x = mask[:, ::-1], mask.shape[1] - 1 - x
    edge = mask & ~ndimage.binary_erosion(mask)
    return _crop(edge.astype(np.uint8), y, x, int(round(half_mm / g.spacing_mm[1]))).astype(bool)


def figure_phantom(seed: int = DEFAULT_SEED) -> PhantomVolumes:
    """A phantom with one lesion of every type (HCC, ICC, Meta, Hem, Other, Cyst)."""
    requests = [LesionRequest(t, FIGURE_VOLUMES_ML[t]) for t in LesionType]
    return make_phantom(seed, lesion_requests=requests, slices=60, slice_thickness_mm=5.0)


def render_phase_figure(out_png: Path, seed: int = DEFAULT_SEED) -> Path:
    """Write the lesion-type x phase figure as a PNG and return its path."""
    vol = figure_phantom(seed)
    font = ImageFont.load_default(size=17)
    small = ImageFont.load_default(size=13)
    rows = [les for t in LesionType for les in vol.lesions if les.lesion_type == t][: len(LesionType)]
    columns = [p.value for p in PHASE_ORDER] + ["VP + truth"]
    width = LABEL_PX + CELL_PX * len(columns)
    height = HEADER_PX + CELL_PX * len(rows) + FOOTER_PX
    canvas = Image.new("RGB", (width, height), (16, 16, 16))
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(columns):
        draw.text(
            (LABEL_PX + j * CELL_PX + CELL_PX // 2, HEADER_PX // 2), name, fill=(235, 235, 235), font=font, anchor="mm"
        )
    for i, les in enumerate(rows):
        top = HEADER_PX + i * CELL_PX
        center = np.asarray(les.centroid_mm)
        half_mm = max(28.0, 1.25 * les.longest_axial_diameter_mm)
        draw.text((10, top + CELL_PX // 2 - 30), les.lesion_type.display_name, fill=(255, 220, 120), font=font)
        draw.text((10, top + CELL_PX // 2 - 6), f"{les.volume_ml:.1f} ml", fill=(200, 200, 200), font=small)
        draw.text((10, top + CELL_PX // 2 + 12), _TYPE_NOTES[les.lesion_type], fill=(170, 170, 170), font=small)
        for j, phase in enumerate(PHASE_ORDER):
            tile = Image.fromarray(_cell(vol, phase, center, half_mm)).resize(
                (CELL_PX, CELL_PX), Image.Resampling.BICUBIC
            )
            canvas.paste(tile.convert("RGB"), (LABEL_PX + j * CELL_PX, top))
            mean = les.mean_hu.get(phase)
            if mean is not None:
                draw.text(
                    (LABEL_PX + j * CELL_PX + 6, top + CELL_PX - 20), f"{mean:.0f} HU", fill=(120, 220, 255), font=small
                )
        vp = np.asarray(
            Image.fromarray(_cell(vol, Phase.VP, center, half_mm)).resize((CELL_PX, CELL_PX), Image.Resampling.BICUBIC)
        )
        edge = (
            np.asarray(
                Image.fromarray(_outline(vol, les.lesion_id, center, half_mm).astype(np.uint8) * 255).resize(
                    (CELL_PX, CELL_PX), Image.Resampling.NEAREST
                )
            )
            > 0
        )
        rgb = np.stack([vp, vp, vp], axis=-1)
        rgb[edge] = (255, 60, 60)
        canvas.paste(Image.fromarray(rgb), (LABEL_PX + len(PHASE_ORDER) * CELL_PX, top))
    draw.text(
        (10, height - FOOTER_PX + 8),
        f"seed {seed}, {vol.scanner.vendor.manufacturer}, window W{WINDOW_WIDTH_HU:.0f}/L{WINDOW_CENTER_HU:.0f}, "
        f"mean noise-free lesion HU per phase; crops follow each phase's breathing shift",
        fill=(170, 170, 170),
        font=small,
    )
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    # A 256-colour palette keeps the file small; the tiles are grey, the labels a few colours.
    canvas.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out_png, optimize=True)
    log.info("phantom figure written to %s", out_png)
    return out_png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the phantom lesion x phase figure (PNG).")
    parser.add_argument("out_png", type=Path)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    render_phase_figure(args.out_png, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
