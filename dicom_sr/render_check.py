"""Independent read-back of our SEGs by a third-party reader (dcmqi), and a picture of it.

dcmqi's `segimage2itkimage` converts a DICOM SEG to NRRD label volumes (one per group of
non-overlapping segments) plus a meta.json with each segment's label number, name and display
colour as dcmqi understood them. `readback_on_grid` maps those voxels back onto our grid by
their patient coordinates, so a test can compare them voxel for voxel with our masks, and
`render_overlay` draws them over a CT slice as a PNG.

Command line (docs/tools/seg_readback_demo.py runs it on a synthetic study to make
docs/img/seg_readback.png):

    python -m dicom_sr.render_check --ct CT_DIR --seg SEG_FILE --out PNG [--slice K]

Needs dcmqi (`pip install dcmqi`), SimpleITK and Pillow; none of them is used by the node.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from scipy import ndimage

from dicom_sr.geometry import geometry_from_datasets, patient_to_index
from pipeline.types import VolumeGeometry

logger = logging.getLogger(__name__)


class ReaderMissingError(RuntimeError):
    """dcmqi (segimage2itkimage) is not installed."""


@dataclass
class ReadbackSegment:
    """One segment as dcmqi read it: its number, label, RGB colour and voxels in patient mm."""

    number: int
    label: str
    rgb: tuple[int, int, int]
    points_mm: np.ndarray  # (N, 3) patient LPS coordinates of the segment's voxel centres


def find_segimage2itkimage() -> Path:
    """dcmqi's converter next to this Python, else on PATH; ReaderMissingError if absent."""
    local = Path(sys.executable).parent / "segimage2itkimage"
    if local.is_file():
        return local
    found = shutil.which("segimage2itkimage")
    if found:
        return Path(found)
    raise ReaderMissingError("segimage2itkimage not found: pip install dcmqi")


def dcmqi_readback(seg_path: Path, work_dir: Path) -> list[ReadbackSegment]:
    """Convert a SEG with dcmqi and return every segment's voxels in patient coordinates."""
    import SimpleITK as sitk  # dev-only dependency of this tool

    tool = find_segimage2itkimage()
    work_dir.mkdir(parents=True, exist_ok=True)
    completed = subprocess.run(
        [str(tool), "--inputDICOM", str(seg_path), "--outputDirectory", str(work_dir),
         "-t", "nrrd"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"segimage2itkimage failed: {completed.stderr[-2000:]}")
    meta = json.loads((work_dir / "meta.json").read_text())
    segments: list[ReadbackSegment] = []
    for file_index, group in enumerate(meta["segmentAttributes"], start=1):
        image = sitk.ReadImage(str(work_dir / f"{file_index}.nrrd"))
        labels = sitk.GetArrayFromImage(image)  # (z, y, x)
        origin = np.asarray(image.GetOrigin())
        spacing = np.asarray(image.GetSpacing())  # x, y, z
        direction = np.asarray(image.GetDirection()).reshape(3, 3)
        for attributes in group:
            value = int(attributes["labelID"])
            zyx = np.argwhere(labels == value).astype(np.float64)
            ijk = zyx[:, ::-1] * spacing
            points = origin + ijk @ direction.T
            rgb = tuple(int(v) for v in attributes.get("recommendedDisplayRGBValue", (255, 0, 0)))
            segments.append(
                ReadbackSegment(value, str(attributes.get("SegmentLabel", value)), rgb, points)  # type: ignore[arg-type]
            )
    return segments


def readback_on_grid(
    segments: Sequence[ReadbackSegment], geometry: VolumeGeometry, tolerance_voxel: float = 0.01
) -> dict[int, np.ndarray]:
    """Each read-back segment as a bool mask on our grid (voxels matched by position).

    Raises ValueError if a voxel does not fall on a voxel centre of the grid."""
    masks = {}
    for segment in segments:
        mask = np.zeros(geometry.shape, dtype=bool)
        if len(segment.points_mm):
            index = patient_to_index(geometry, segment.points_mm)
            rounded = np.round(index).astype(int)
            if np.abs(index - rounded).max() > tolerance_voxel:
                raise ValueError(f"segment {segment.number}: voxels off the grid")
            inside = np.all((rounded >= 0) & (rounded < np.asarray(geometry.shape)), axis=1)
            if not inside.all():
                raise ValueError(f"segment {segment.number}: voxels outside the grid")
            mask[tuple(rounded.T)] = True
        masks[segment.number] = mask
    return masks


def _window(hu: np.ndarray, center: float = 80.0, width: float = 300.0) -> np.ndarray:
    low = center - width / 2.0
    return (np.clip((hu - low) / width, 0.0, 1.0) * 255.0).astype(np.uint8)


def render_overlay(
    ct: Sequence[Dataset],
    segments: Sequence[ReadbackSegment],
    slice_index: int | None,
    out_png: Path,
    scale: int = 2,
    title: str = "dcmqi read-back of livernode SEG",
) -> Path:
    """Draw the read-back segments over one CT slice (slices in the given order) as a PNG."""
    from PIL import Image, ImageDraw  # dev-only dependency of this tool

    geometry = geometry_from_datasets(ct)
    masks = readback_on_grid(segments, geometry)
    if slice_index is None:  # the slice with most lesion voxels, else most voxels
        lesion_numbers = [s.number for s in segments if not _is_organ(s.label)] or list(masks)
        per_slice = sum(masks[n].sum(axis=(1, 2)) for n in lesion_numbers)
        slice_index = int(np.argmax(per_slice))
    ds = ct[slice_index]
    hu = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0)
    )
    gray = _window(hu)
    base = np.stack([gray] * 3, axis=-1).astype(np.float32)
    rgb = base.copy()
    organs_first = sorted(segments, key=lambda s: (not _is_organ(s.label), s.number))
    for segment in organs_first:
        plane = masks[segment.number][slice_index]
        colour = np.asarray(segment.rgb, dtype=np.float32)
        if _is_organ(segment.label):  # light tint, so the CT stays readable
            rgb[plane] = 0.75 * rgb[plane] + 0.25 * colour
        edge = plane & ~ndimage.binary_erosion(plane)
        rgb[edge] = colour
    size = (gray.shape[1] * scale, gray.shape[0] * scale)
    left = Image.fromarray(base.astype(np.uint8)).resize(size, Image.NEAREST)
    right = Image.fromarray(rgb.astype(np.uint8)).resize(size, Image.NEAREST)
    legend_height = 16 * (len(segments) + 2)
    canvas = Image.new("RGB", (2 * size[0] + 8, size[1] + legend_height), (0, 0, 0))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (size[0] + 8, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, size[1] + 2), f"{title}: CT slice {slice_index} (left), the labels dcmqi read "
              "from our SEG drawn over it (right; lesions outlined, organs tinted)",
              fill=(255, 255, 255))
    for row, segment in enumerate(segments, start=1):
        y = size[1] + 2 + 16 * row
        draw.rectangle((4, y + 2, 14, y + 12), fill=segment.rgb)
        voxels = int(masks[segment.number][slice_index].sum())
        draw.text((20, y), f"{segment.number}: {segment.label} ({voxels} px on this slice)",
                  fill=(255, 255, 255))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_png)
    return out_png


_ORGAN_LABELS = {"liver", "hepatic vessels", "portal and splenic vein", "gallbladder", "spleen",
                 "pancreas", "stomach"}


def _is_organ(label: str) -> bool:
    return label.lower() in _ORGAN_LABELS


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ct", type=Path, required=True,
                        help="folder of the CT series the SEG references")
    parser.add_argument("--seg", type=Path, required=True, help="the SEG file")
    parser.add_argument("--slice", type=int, default=None, help="z index (default: most lesion)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="livernode-render-") as scratch:
        work = Path(scratch)
        ct = [pydicom.dcmread(p) for p in sorted(args.ct.iterdir()) if p.is_file()]
        seg_path = args.seg
        seg_ds = pydicom.dcmread(seg_path, stop_before_pixels=True)
        referenced = {
            item.ReferencedSOPInstanceUID
            for series in seg_ds.ReferencedSeriesSequence
            for item in series.ReferencedInstanceSequence
        }
        ct = [ds for ds in ct if ds.SOPInstanceUID in referenced] or list(ct)
        normal = np.cross(*np.asarray(ct[0].ImageOrientationPatient, dtype=float).reshape(2, 3))
        ct.sort(key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))))
        segments = dcmqi_readback(seg_path, work / "dcmqi")
        out = render_overlay(ct, segments, args.slice, args.out)
    logger.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
