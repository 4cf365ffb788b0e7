"""UNet_patch training data: type-balanced patches per lesion."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import CascadeConfig
from pipeline.model import Preprocessing
from pipeline.train import TrainingCase
from pipeline.train_patch import patch_cases, patches_per_lesion_by_type
from pipeline.types import PHASE_ORDER, Label, LesionType, VolumeGeometry

PREP = Preprocessing(target_spacing_mm=(4.0, 3.0, 3.0), patch_size_voxels=(8, 16, 16))
CONFIG = CascadeConfig(patch_size_voxels=(8, 16, 16), training_patches_per_lesion=4)


def _case(case_id: str, lesion_types: list[LesionType]) -> TrainingCase:
    """A 24 x 64 x 64 liver block with one 4 x 6 x 6 cube lesion per entry, side by side."""
    labels = np.zeros((24, 64, 64), dtype=np.uint8)
    labels[2:22, 4:60, 4:60] = int(Label.LIVER)
    for index, lesion_type in enumerate(lesion_types):
        y = 8 + 12 * (index % 4)
        z = 4 + 8 * (index // 4)
        labels[z : z + 4, y : y + 6, 20:26] = int(lesion_type)
    rng = np.random.default_rng(0)
    phases = rng.normal(size=(len(PHASE_ORDER),) + labels.shape).astype(np.float16)
    geometry = VolumeGeometry(shape=labels.shape, spacing_mm=(4.0, 3.0, 3.0), origin_mm=(0.0, 0.0, 0.0))
    return TrainingCase(case_id, phases, tuple(PHASE_ORDER), labels, geometry)


def test_rare_types_get_more_patches_up_to_the_cap() -> None:
    cases = [_case("a", [LesionType.META] * 4), _case("b", [LesionType.META] * 2 + [LesionType.ICC])]
    balanced = patches_per_lesion_by_type(cases, 4, max_factor=3.0)
    assert balanced[LesionType.META] == 4  # the commonest type: 6 lesions
    assert balanced[LesionType.ICC] == 12  # 6 / 1 = 6, capped at 3 x 4
    assert balanced[LesionType.HEM] == 4  # absent: unchanged
    assert set(patches_per_lesion_by_type(cases, 4, max_factor=1.0).values()) == {4}
    with pytest.raises(ValueError, match="max_factor"):
        patches_per_lesion_by_type(cases, 4, max_factor=0.5)


def test_patch_cases_follow_the_per_type_counts() -> None:
    case = _case("c", [LesionType.META, LesionType.META, LesionType.ICC])

    def patches_showing(patches, lesion_type: LesionType) -> int:
        return sum(bool((p.labels == int(lesion_type)).any()) for p in patches)

    plain = patch_cases([case], PREP, CONFIG, seed=1)
    by_type = {LesionType.META: 4, LesionType.ICC: 12}
    balanced = patch_cases([case], PREP, CONFIG, seed=1, per_lesion_by_type=by_type)
    assert len(balanced) > len(plain)
    assert patches_showing(balanced, LesionType.ICC) > patches_showing(plain, LesionType.ICC)
    # patch targets: 0 outside lesions (liver included), lesion types kept
    assert set(np.unique(np.concatenate([p.labels.ravel() for p in balanced]))) <= {0, 2, 3}
