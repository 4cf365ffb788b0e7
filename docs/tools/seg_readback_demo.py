"""Make docs/img/seg_readback.png: our SEG of a synthetic study, read back by dcmqi and drawn
over the CT.

    .venv/bin/python docs/tools/seg_readback_demo.py [--out docs/img/seg_readback.png]

The CT is drawn from the same label map as the findings (liver, vessels, spleen, stomach and
four lesions with their own densities), so a correct SEG lies exactly on the structures seen
in the image: hypodense HCC and cyst, bright hemangioma, metastasis with a rim. The SEG is
written to disk, converted by dcmqi's `segimage2itkimage` (a third-party reader), and the
labels it returns are painted over the CT slice (`python -m dicom_sr.render_check`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dicom_sr.render_check import main as render_main  # noqa: E402
from dicom_sr.seg import build_seg  # noqa: E402
from dicom_sr.types import AlgorithmInfo  # noqa: E402
from node.identity import config_digest, derive_result_uids  # noqa: E402
from pipeline.types import (  # noqa: E402
    BoundingBox,
    Findings,
    Label,
    Lesion,
    LesionType,
    ModelIdentity,
    PatientClass,
    Phase,
)
from tests.support.ct_series import (  # noqa: E402
    CTSeriesSpec,
    make_ct_series,
    series_geometry,
    write_series,
)

MODEL = ModelIdentity("livernode-cascade", "demo")
SHAPE = (24, 192, 192)


def _ellipse(center, radii):
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return (((z - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2
            + ((x - center[2]) / radii[2]) ** 2) <= 1.0


def _scene():
    organs = np.zeros(SHAPE, dtype=np.uint8)
    body = _ellipse((12, 96, 96), (40, 80, 90))
    organs[_ellipse((12, 85, 62), (14, 48, 44))] = Label.LIVER
    organs[_ellipse((12, 78, 142), (10, 26, 18))] = Label.SPLEEN
    organs[_ellipse((12, 55, 112), (6, 16, 22))] = Label.STOMACH
    vessel = _ellipse((12, 100, 70), (14, 3, 26)) & (organs == Label.LIVER)
    organs[vessel] = Label.HEPATIC_VESSELS
    lesion_specs = [
        (1, LesionType.HCC, (12, 70, 45), (3, 11, 11), 60.0),
        (2, LesionType.META, (12, 108, 52), (2, 7, 7), 50.0),
        (3, LesionType.HEM, (11, 62, 80), (2, 6, 6), 170.0),
        (4, LesionType.CYST, (13, 110, 88), (2, 5, 5), 5.0),
    ]
    hu = np.where(body, 40.0, -1000.0).astype(np.float32)
    hu[_ellipse((12, 150, 96), (40, 10, 10))] = 400.0  # spine
    for label, value in ((Label.LIVER, 105.0), (Label.SPLEEN, 120.0), (Label.STOMACH, 20.0),
                         (Label.HEPATIC_VESSELS, 170.0)):
        hu[organs == label] = value
    return organs, lesion_specs, hu


def demo_findings(datasets, geometry, organs, lesion_specs, hu) -> Findings:
    lesions = []
    for lesion_id, lesion_type, center, radii, value in lesion_specs:
        cz, cy, cx = center
        rz, ry, rx = radii
        box = BoundingBox(cz - rz, cz + rz + 1, cy - ry, cy + ry + 1, cx - rx, cx + rx + 1)
        full = _ellipse(center, radii)
        mask = full[box.slices]
        hu[full] = value
        if lesion_type == LesionType.META:  # bright rim ("target")
            inner = _ellipse(center, (rz, ry - 2, rx - 2))
            hu[full & ~inner] = 130.0
        count = int(mask.sum())
        centroid = geometry.index_to_patient(np.argwhere(full).mean(axis=0))[0]
        lesions.append(Lesion(lesion_id, lesion_type, box, mask, count,
                              count * geometry.voxel_volume_ml, 2.0 * rx * geometry.spacing_mm[2],
                              tuple(float(v) for v in centroid), {Phase.VP: value}))
    return Findings(
        study_uid=str(datasets[0].StudyInstanceUID),
        reference_series_uid=str(datasets[0].SeriesInstanceUID),
        geometry=geometry, lesions=lesions, organ_labels=organs,
        class_base=PatientClass.HCC, class_high=PatientClass.HCC,
        livermax={t: 0.5 for t in LesionType}, model=MODEL,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "seg_readback.png")
    args = parser.parse_args()
    spec = CTSeriesSpec(rows=SHAPE[1], cols=SHAPE[2], slices=SHAPE[0], spacing_mm=(2.5, 1.5, 1.5),
                        origin_mm=(-144.0, -144.0, 0.0), seed="demo")
    organs, lesion_specs, hu = _scene()
    geometry = series_geometry(spec)
    placeholder, _ = make_ct_series(spec, hu=hu)
    findings = demo_findings(placeholder, geometry, organs, lesion_specs, hu)  # paints lesion HU
    datasets, _ = make_ct_series(spec, hu=hu)
    uids = derive_result_uids([findings.reference_series_uid], MODEL, config_digest({}),
                              [lesion.lesion_id for lesion in findings.lesions])
    seg = build_seg(findings, datasets, uids, AlgorithmInfo.from_model(MODEL, (1.0, 4.0)))
    with tempfile.TemporaryDirectory(prefix="livernode-demo-") as scratch:
        work = Path(scratch)
        write_series(datasets, work / "ct")
        seg_path = work / "seg.dcm"
        seg.save_as(seg_path, enforce_file_format=True)
        return render_main(["--ct", str(work / "ct"), "--seg", str(seg_path), "--out",
                            str(args.out), "--slice", "12"])


if __name__ == "__main__":
    raise SystemExit(main())
