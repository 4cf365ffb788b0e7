"""Lesion features on the typer's own grid: lesions, HU and labels found on another grid (an
nnU-Net model's study grid, a typer lent from a folder with another working grid) are moved onto
the grid the typer was trained on before it judges them."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.backends import CardBackend, load_typer_folder
from pipeline.inference import resample_volume, resampled_geometry, working_shape
from pipeline.lesion_features import feature_names
from pipeline.lesion_typer import feature_rows, retype_lesions
from pipeline.model import BUNDLED_MODEL_DIR, ModelLoadError, Preprocessing, read_model_card
from pipeline.seg2det import seg2det
from pipeline.typer_grid import FeatureGrid, StudyHU, hu_on_grid, lesion_on_grid, to_feature_grid, typer_hu
from pipeline.types import BoundingBox, Label, Lesion, LesionType, Phase, VolumeGeometry

FINE = (1.0, 1.0, 1.0)
COARSE = (4.0, 3.0, 3.0)


def lesion_of(mask: np.ndarray) -> Lesion:
    where = np.nonzero(mask)
    z0, y0, x0 = (int(i.min()) for i in where)
    z1, y1, x1 = (int(i.max()) + 1 for i in where)
    box = BoundingBox(z0, z1, y0, y1, x0, x1)
    return Lesion(1, LesionType.META, box, mask[box.slices].copy(), int(mask.sum()), float(mask.sum()) / 1000.0,
                  0.0, (0.0, 0.0, 0.0))


def test_a_lesion_moves_onto_a_coarser_grid_by_the_voxels_it_half_covers() -> None:
    mask = np.zeros((16, 16, 16), bool)
    mask[4:8, 4:8, 2:7] = True  # x: cells 1 and 2 whole, cell 3 (x 6-7) half covered
    moved = lesion_on_grid(lesion_of(mask), mask.shape, (8, 8, 8))
    full = moved.full_mask((8, 8, 8))
    expected = np.zeros((8, 8, 8), bool)
    expected[2:4, 2:4, 1:4] = True
    np.testing.assert_array_equal(full, expected)
    assert moved.voxel_count == 12 and moved.lesion_type is LesionType.META


def test_a_lesion_smaller_than_a_coarse_voxel_keeps_its_most_covered_voxel() -> None:
    mask = np.zeros((16, 16, 16), bool)
    mask[5, 9, 9] = True
    full = lesion_on_grid(lesion_of(mask), mask.shape, (4, 4, 4)).full_mask((4, 4, 4))
    assert np.argwhere(full).tolist() == [[1, 2, 2]]


def test_a_lesion_moves_onto_a_grid_finer_along_one_axis_and_coarser_along_the_others() -> None:
    mask = np.zeros((10, 12, 12), bool)
    mask[3:6, 3:9, 3:9] = True  # 3 slices of 5 mm -> 12.5 of 4 mm; 6 of 12 in-plane cells -> 2 of 4
    moved = lesion_on_grid(lesion_of(mask), mask.shape, (12, 4, 4)).full_mask((12, 4, 4))
    target_centres_mm = (np.arange(12) + 0.5) * 50.0 / 12
    expected_z = (target_centres_mm >= 15.0) & (target_centres_mm < 30.0)  # source slices 3-5
    np.testing.assert_array_equal(moved.any(axis=(1, 2)), expected_z)
    assert moved[expected_z].sum() == expected_z.sum() * 4  # in-plane cells 1 and 2, each way


def noisy_study(seed: int = 0) -> tuple[dict[Phase, np.ndarray], np.ndarray, VolumeGeometry]:
    """A fine (1 mm) liver at 100 HU (VP) with 30 HU of voxel noise and a 7 mm sphere at 70 HU."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:48, :60, :60]
    radius = np.sqrt((z - 24.0) ** 2 + (y - 30.0) ** 2 + (x - 30.0) ** 2)
    lesion = radius <= 7.0
    vp = np.where(lesion, 70.0, 100.0) + rng.normal(0.0, 30.0, lesion.shape)
    labels = np.where(lesion, int(Label.META), int(Label.LIVER)).astype(np.uint8)
    return {Phase.VP: vp.astype(np.float32)}, labels, VolumeGeometry(lesion.shape, FINE, (0.0, 0.0, 0.0))


def value(rows: np.ndarray, name: str) -> float:
    return float(rows[0, feature_names().index(name)])


def test_features_moved_onto_the_typer_grid_match_those_of_a_study_prepared_on_it() -> None:
    hu, labels, geometry = noisy_study()
    lesions = seg2det(labels, geometry)
    grid = FeatureGrid(COARSE, anti_alias=True)
    moved = to_feature_grid(lesions, hu, labels, geometry, grid)
    on_grid = feature_rows(moved.lesions, moved.hu, moved.labels, moved.geometry)
    # the study as a model with this grid sees it (pipeline.inference.prepare_input), lesions found there
    shape = working_shape(geometry, COARSE)
    prepared = {Phase.VP: resample_volume(hu[Phase.VP], shape, anti_alias=True)}
    prepared_labels = resample_volume(labels, shape, mode="nearest")
    prepared_geometry = resampled_geometry(geometry, shape)
    reference = feature_rows(seg2det(prepared_labels, prepared_geometry), prepared, prepared_labels, prepared_geometry)
    on_study_grid = feature_rows(lesions, hu, labels, geometry)
    assert moved.geometry == prepared_geometry and moved.hu[Phase.VP].shape == shape
    for name in ("VP_std", "VP_p10", "VP_p90"):  # voxel statistics: the study grid's are far off
        assert abs(value(on_grid, name) - value(reference, name)) < 0.1
        assert abs(value(on_study_grid, name) - value(reference, name)) > 0.2
    assert abs(value(on_grid, "VP_mean") - value(reference, "VP_mean")) < 0.1
    assert value(on_grid, "log_volume_ml") == pytest.approx(value(reference, "log_volume_ml"), abs=0.2)


def test_retype_lesions_judges_features_on_the_typer_grid() -> None:
    hu, labels, geometry = noisy_study()
    lesions = seg2det(labels, geometry)
    seen: list[np.ndarray] = []

    def typer(rows: np.ndarray) -> np.ndarray:
        seen.append(rows)
        out = np.zeros((len(rows), 7), np.float32)
        out[:, int(LesionType.HCC)] = 1.0
        return out

    typed = retype_lesions(lesions, hu, labels, geometry, typer, feature_grid=FeatureGrid(COARSE, anti_alias=True))
    moved = to_feature_grid(lesions, hu, labels, geometry, FeatureGrid(COARSE, anti_alias=True))
    np.testing.assert_array_equal(seen[-1], feature_rows(moved.lesions, moved.hu, moved.labels, moved.geometry))
    assert [lesion.lesion_type for lesion in typed.kept] == [LesionType.HCC]
    assert typed.kept[0].mask.shape == lesions[0].mask.shape  # the lesion itself stays on its own grid
    grid = FeatureGrid(COARSE, anti_alias=True)
    retype_lesions(lesions, hu, labels, geometry, typer, feature_grid=grid,
                   moved_hu=hu_on_grid(hu, geometry, grid))  # HU moved once by the caller: the same rows
    np.testing.assert_array_equal(seen[-1], seen[-2])
    retype_lesions(lesions, hu, labels, geometry, typer, feature_grid=FeatureGrid((1.05, 0.95, 1.0)))
    np.testing.assert_array_equal(seen[-1], feature_rows(lesions, hu, labels, geometry))  # same grid: as is


def test_backends_name_the_grid_their_typer_was_trained_on(tmp_path: Path) -> None:
    bundled = read_model_card(BUNDLED_MODEL_DIR).preprocessing
    assert FeatureGrid.of(bundled) == FeatureGrid(tuple(bundled.target_spacing_mm), bundled.anti_alias)
    backend = CardBackend(BUNDLED_MODEL_DIR, torch.device("cpu"))
    assert backend.typer_feature_grid() == FeatureGrid.of(bundled)
    _, grid = load_typer_folder(BUNDLED_MODEL_DIR)
    assert grid == FeatureGrid.of(bundled)
    assert FeatureGrid.of(Preprocessing(target_spacing_mm=(3.0, 2.0, 2.0), anti_alias=True)) == FeatureGrid(
        (3.0, 2.0, 2.0), True)


STUDY_GRID = FeatureGrid((2.0, 1.5, 1.5), anti_alias=True, from_study=True)


def working_copy(hu: dict[Phase, np.ndarray], labels: np.ndarray, geometry: VolumeGeometry):
    """The study as the cascade sees it on a 4 x 3 x 3 mm working grid (no anti-aliasing)."""
    shape = working_shape(geometry, COARSE)
    return ({p: resample_volume(v, shape) for p, v in hu.items()}, resample_volume(labels, shape, mode="nearest"),
            resampled_geometry(geometry, shape))


def test_a_typer_that_reads_the_study_takes_its_hu_from_the_study_not_from_the_working_grid() -> None:
    hu, labels, geometry = noisy_study()
    work_hu, work_labels, work_geometry = working_copy(hu, labels, geometry)
    lesions = seg2det(work_labels, work_geometry)
    study = StudyHU(hu, geometry)
    moved_hu = typer_hu(STUDY_GRID, work_hu, work_geometry, study)
    assert moved_hu is not None and moved_hu[Phase.VP].shape == working_shape(geometry, STUDY_GRID.spacing_mm)
    seen: list[np.ndarray] = []

    def typer(rows: np.ndarray) -> np.ndarray:
        seen.append(rows)
        return np.eye(7, dtype=np.float32)[[int(LesionType.CYST)] * len(rows)]

    retype_lesions(lesions, work_hu, work_labels, work_geometry, typer, feature_grid=STUDY_GRID, moved_hu=moved_hu)
    moved = to_feature_grid(lesions, work_hu, work_labels, work_geometry, STUDY_GRID,
                            moved_hu=hu_on_grid(hu, geometry, STUDY_GRID))
    np.testing.assert_array_equal(seen[-1], feature_rows(moved.lesions, moved.hu, moved.labels, moved.geometry))
    # the working grid's HU are not read at all: blanking them changes nothing
    blank = {Phase.VP: np.zeros_like(work_hu[Phase.VP])}
    retype_lesions(lesions, blank, work_labels, work_geometry, typer, feature_grid=STUDY_GRID,
                   moved_hu=typer_hu(STUDY_GRID, blank, work_geometry, study))
    np.testing.assert_array_equal(seen[-1], seen[-2])
    # the lesion's contrast (70 against 100 HU: -0.6), read on the smoothed study HU inside the
    # working grid's blocky outline (partial volume at the edge)
    assert -0.65 < value(seen[-1], "VP_mean") < -0.4
    # the study grid's own spacing, even when it equals the working grid, still reads the study
    same = FeatureGrid(COARSE, anti_alias=True, from_study=True)
    assert same.holds(work_geometry) and same.needs_moving(work_geometry)


def test_a_typer_that_reads_the_study_refuses_to_run_without_it() -> None:
    hu, labels, geometry = noisy_study()
    work_hu, work_labels, work_geometry = working_copy(hu, labels, geometry)
    lesions = seg2det(work_labels, work_geometry)
    with pytest.raises(ValueError, match="study's own volumes were not given"):
        typer_hu(STUDY_GRID, work_hu, work_geometry, None)
    with pytest.raises(ValueError, match="reads its HU from the study's own volumes"):
        retype_lesions(lesions, work_hu, work_labels, work_geometry, lambda rows: np.ones((len(rows), 7)),
                       feature_grid=STUDY_GRID)
    cut = StudyHU({Phase.VP: hu[Phase.VP][:-8]}, replace(geometry, shape=(40, 60, 60)))  # another extent
    with pytest.raises(ValueError, match="not the same study extent"):
        retype_lesions(lesions, work_hu, work_labels, work_geometry, lambda rows: np.ones((len(rows), 7)),
                       feature_grid=STUDY_GRID, moved_hu=typer_hu(STUDY_GRID, work_hu, work_geometry, cut))


def test_the_feature_grid_is_recorded_in_the_model_card_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    assert FeatureGrid.from_json(STUDY_GRID.to_json()) == STUDY_GRID
    assert FeatureGrid.from_json({"spacing_mm": [4, 3, 3]}) == FeatureGrid(COARSE)
    for bad in ({"spacing_mm": [2, 1.5]}, {"spacing_mm": [2, 0, 1]}, {"spacing_mm": [2, 1, 1], "hu_from": "atlas"}):
        with pytest.raises(ValueError):
            FeatureGrid.from_json(bad)
    folder = tmp_path / "model"
    shutil.copytree(BUNDLED_MODEL_DIR, folder)
    card = json.loads((folder / "model_card.json").read_text())
    card["typer"]["feature_grid"] = {"spacing_mm": [2, 1.5]}
    (folder / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="typer.feature_grid is invalid"):
        CardBackend(folder, torch.device("cpu"))
    card["typer"]["feature_grid"] = STUDY_GRID.to_json()
    (folder / "model_card.json").write_text(json.dumps(card))
    assert CardBackend(folder, torch.device("cpu")).typer_feature_grid() == STUDY_GRID
    assert load_typer_folder(folder)[1] == STUDY_GRID


def test_smoothing_only_around_the_lesions_gives_the_features_of_smoothing_the_whole_study() -> None:
    # a study finer than the grid along every axis (each axis is smoothed), the lesion in a corner
    rng = np.random.default_rng(3)
    z, y, x = np.mgrid[:64, :160, :160]
    lesion = np.sqrt((z - 20.0) ** 2 + (y - 40.0) ** 2 + (x - 40.0) ** 2) <= 9.0
    hu = {Phase.VP: (np.where(lesion, 70.0, 100.0) + rng.normal(0.0, 30.0, lesion.shape)).astype(np.float32)}
    labels = np.where(lesion, int(Label.META), int(Label.LIVER)).astype(np.uint8)
    fine = VolumeGeometry(lesion.shape, (0.5, 0.75, 0.75), (0.0, 0.0, 0.0))
    grid = FeatureGrid((2.0, 3.0, 3.0), anti_alias=True, from_study=True)
    work_hu, work_labels, work_geometry = working_copy(hu, labels, fine)
    lesions = seg2det(work_labels, work_geometry)
    study = StudyHU(hu, fine)
    whole = typer_hu(grid, work_hu, work_geometry, study)
    around = typer_hu(grid, work_hu, work_geometry, study, lesions=lesions)
    assert not np.array_equal(whole[Phase.VP], around[Phase.VP])  # the far corners are not smoothed
    seen: list[np.ndarray] = []

    def typer(rows: np.ndarray) -> np.ndarray:
        seen.append(rows)
        return np.eye(7, dtype=np.float32)[[int(LesionType.CYST)] * len(rows)]

    for moved in (whole, around):
        retype_lesions(lesions, work_hu, work_labels, work_geometry, typer, feature_grid=grid, moved_hu=moved)
    np.testing.assert_allclose(seen[0], seen[1], rtol=0, atol=1e-6)
