"""Training study selection: the primary lesion type read ahead, type-balanced training seeds,
studies with small malignant lesions."""

from __future__ import annotations

from collections import Counter

import pytest

from pipeline.phantom import _rng as phantom_stream
from pipeline.phantom import make_phantom
from pipeline.phantom_lesions import sample_lesion_plan
from pipeline.train_models import TrainingSource
from pipeline.training_data import (
    TRAIN_SEED_BASE,
    HELD_OUT_COMBINATIONS,
    SMALL_LESION_ML,
    SMALL_LESION_TUNING_SEEDS,
    VALIDATION_SEED_BASE,
    primary_lesion_type,
    sample_case_spec,
    small_lesion_training_specs,
    small_lesion_tuning_specs,
    tuning_specs,
    type_balanced_training_specs,
)
from pipeline.types import LesionType, Phase


def test_primary_type_is_the_rendered_phantoms_first_lesion() -> None:
    checked = 0
    for seed in range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + 12):
        spec = sample_case_spec(seed)
        primary = primary_lesion_type(spec)
        if primary is None:
            continue
        volumes = make_phantom(seed, phases=[Phase.VP], rows=64, columns=64, slices=20, slice_thickness_mm=10.0,
                               lesions=spec.lesions)
        assert volumes.model.lesions[0].lesion_type == primary
        checked += 1
        if checked == 3:
            break
    assert checked == 3


def test_type_balanced_specs_fill_every_type_equally() -> None:
    specs = type_balanced_training_specs(40)
    assert len(specs) == 40
    seeds = [spec.seed for spec in specs]
    assert seeds == sorted(seeds) and TRAIN_SEED_BASE <= seeds[0] and seeds[-1] < VALIDATION_SEED_BASE
    counts = Counter(primary_lesion_type(spec) for spec in specs)
    assert counts[None] == 4  # 10 % without lesions
    assert all(counts[t] == 6 for t in LesionType)  # (40 - 4) / 6
    # the natural mix from the same seeds is not balanced: the balanced set had to skip seeds
    natural = Counter(primary_lesion_type(sample_case_spec(TRAIN_SEED_BASE + i)) for i in range(40))
    assert max(natural[t] for t in LesionType) > 6 or min(natural[t] for t in LesionType) < 6
    with pytest.raises(ValueError, match="count"):
        type_balanced_training_specs(0)


def _first_small(spec, types) -> LesionType | None:
    for request in sample_lesion_plan(phantom_stream(spec.seed, "lesions")):
        if request.lesion_type in types and request.volume_ml <= SMALL_LESION_ML:
            return request.lesion_type
    return None


def test_small_lesion_specs_hold_a_small_malignant_lesion_of_every_type_equally() -> None:
    malignant = (LesionType.HCC, LesionType.ICC, LesionType.META)
    specs = small_lesion_training_specs(12)
    assert len(specs) == 12 and len({spec.seed for spec in specs}) == 12
    assert all(TRAIN_SEED_BASE <= spec.seed < VALIDATION_SEED_BASE and spec.lesions for spec in specs)
    assert Counter(_first_small(spec, malignant) for spec in specs) == {t: 4 for t in malignant}
    # the natural mix holds far fewer small ICCs than a third of its studies
    natural = [sample_case_spec(TRAIN_SEED_BASE + i) for i in range(60)]
    assert sum(_first_small(spec, (LesionType.ICC,)) is not None for spec in natural if spec.lesions) < 20
    # the rendered phantom has the small lesion the plan promised
    icc = next(spec for spec in specs if _first_small(spec, (LesionType.ICC,)) is not None)
    volumes = make_phantom(icc.seed, phases=[Phase.VP], rows=64, columns=64, slices=20, slice_thickness_mm=10.0)
    assert any(lesion.lesion_type == LesionType.ICC and lesion.nominal_volume_ml <= SMALL_LESION_ML
               for lesion in volumes.model.lesions)


def test_small_lesion_specs_skip_excluded_seeds_and_refuse_bad_counts() -> None:
    first = small_lesion_training_specs(6, types=(LesionType.ICC,))
    again = small_lesion_training_specs(6, types=(LesionType.ICC,), exclude=first[:3])
    assert not {spec.seed for spec in again} & {spec.seed for spec in first[:3]}
    assert [spec.seed for spec in again[:3]] == [spec.seed for spec in first[3:]]
    with pytest.raises(ValueError, match="count"):
        small_lesion_training_specs(0)
    with pytest.raises(ValueError, match="lesion type"):
        small_lesion_training_specs(3, types=())


def test_training_source_adds_small_lesion_studies_to_the_phantoms() -> None:
    base = TrainingSource(phantoms=10, type_balanced=True)
    source = TrainingSource(phantoms=10, type_balanced=True, small_lesion_studies=6)
    base_specs, specs = base._phantom_specs(), source._phantom_specs()
    assert specs[:10] == base_specs and len(specs) == 16
    assert len({spec.seed for spec in specs}) == 16  # no study twice
    assert "plus 6 with a small malignant lesion" in source.describe()


def test_small_lesion_tuning_specs_are_validation_studies_with_the_held_out_cycle() -> None:
    specs = small_lesion_tuning_specs(8)
    assert all(spec.seed in SMALL_LESION_TUNING_SEEDS for spec in specs)
    assert not {spec.seed for spec in specs} & {spec.seed for spec in tuning_specs(48)}
    assert [spec.phases for spec in specs[:4]] == list(HELD_OUT_COMBINATIONS)
    assert [spec.slice_thickness_mm for spec in specs[::4]] == [5.0, 2.0]
    malignant = (LesionType.HCC, LesionType.ICC, LesionType.META)
    assert all(_first_small(spec, malignant) is not None for spec in specs)
