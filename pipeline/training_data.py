"""Phantom studies as training, validation and held-out evaluation cases on the model's working grid.

Seed ranges are fixed so that held-out figures never see a training study:
training seeds start at ``TRAIN_SEED_BASE``, validation at ``VALIDATION_SEED_BASE`` and held-out
evaluation at ``HELD_OUT_SEED_BASE`` (the unit tests use seeds below 10 000).
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pipeline.model import Preprocessing
from pipeline.phantom import _rng as phantom_stream  # the generator's own seeded streams
from pipeline.phantom import PhantomVolumes, make_phantom
from pipeline.phantom_lesions import sample_lesion_plan
from pipeline.train import TrainingCase, case_from_arrays
from pipeline.types import PHASE_ORDER, LesionType, Phase, VolumeGeometry

log = logging.getLogger(__name__)

TRAIN_SEED_BASE = 10_000
VALIDATION_SEED_BASE = 20_000
HELD_OUT_SEED_BASE = 30_000
#: validation studies for choosing settings (docs/tools/cascade_variants.py, patch_typing.py)
TUNING_SEED_BASE = VALIDATION_SEED_BASE + 100

#: Slice thicknesses (mm) drawn for training studies, with their weights.
_THICKNESSES_MM: tuple[tuple[float, float], ...] = ((1.0, 0.1), (1.5, 0.1), (2.0, 0.15), (3.0, 0.2), (5.0, 0.45))
#: In-plane matrices drawn for training studies (the field of view stays anatomical, so the pixel
#: size varies with the matrix): domain randomisation of resolution.
_MATRICES: tuple[tuple[int, float], ...] = ((256, 0.3), (384, 0.3), (512, 0.4))


@dataclass(frozen=True)
class PhantomCaseSpec:
    """How one phantom study is generated."""

    seed: int
    slices: int
    slice_thickness_mm: float
    matrix: int
    feet_first: bool
    phases: tuple[Phase, ...] = PHASE_ORDER
    lesions: bool = True

    @property
    def case_id(self) -> str:
        return f"phantom-{self.seed}"


def sample_case_spec(seed: int, phases: Sequence[Phase] = PHASE_ORDER, thickness_mm: float | None = None) -> PhantomCaseSpec:
    """A randomised but seed-deterministic study: slice thickness 1-5 mm, 170-300 mm of coverage,
    256-512 matrix, 20% feet-first, 10% without lesions."""
    rng = np.random.default_rng([seed, 7919])
    if thickness_mm is None:
        values, weights = zip(*_THICKNESSES_MM)
        thickness_mm = float(rng.choice(values, p=np.asarray(weights) / sum(weights)))
    else:
        rng.random()
    extent_mm = float(rng.uniform(170.0, 300.0))
    sizes, size_weights = zip(*_MATRICES)
    matrix = int(rng.choice(sizes, p=np.asarray(size_weights) / sum(size_weights)))
    return PhantomCaseSpec(
        seed=seed,
        slices=max(16, int(round(extent_mm / thickness_mm))),
        slice_thickness_mm=thickness_mm,
        matrix=matrix,
        feet_first=bool(rng.random() < 0.2),
        phases=tuple(phases),
        lesions=bool(rng.random() >= 0.1),
    )


def primary_lesion_type(spec: PhantomCaseSpec) -> LesionType | None:
    """The type of the first (primary) lesion that the phantom of `spec` will have, None for a
    study without lesions; read from the generator's lesion stream without rendering anything."""
    if not spec.lesions:
        return None
    plan = sample_lesion_plan(phantom_stream(spec.seed, "lesions"))
    return plan[0].lesion_type if plan else None


def type_balanced_training_specs(count: int, lesion_free_share: float = 0.1) -> list[PhantomCaseSpec]:
    """`count` training studies from seeds ``TRAIN_SEED_BASE`` upward in which every primary lesion
    type is about equally common: a seed is taken while its primary type (or "no lesion") is under
    its quota (`lesion_free_share` of the studies without lesions, the rest split evenly between
    the six types). The natural mix has 2-3 times fewer ICC and FNH-like patients than HCC ones."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    free_quota = int(round(lesion_free_share * count))
    type_quota = -(-(count - free_quota) // len(LesionType))
    taken: dict[LesionType | None, int] = {}
    specs: list[PhantomCaseSpec] = []
    for seed in range(TRAIN_SEED_BASE, VALIDATION_SEED_BASE):
        spec = sample_case_spec(seed)
        primary = primary_lesion_type(spec)
        if taken.get(primary, 0) < (free_quota if primary is None else type_quota):
            taken[primary] = taken.get(primary, 0) + 1
            specs.append(spec)
            if len(specs) == count:
                return specs
    raise ValueError(f"the training seed range holds fewer than {count} type-balanced studies")


#: lesions at or under this volume count as small for :func:`small_lesion_training_specs`
SMALL_LESION_ML = 2.5


def small_lesion_training_specs(
    count: int,
    types: Sequence[LesionType] = (LesionType.HCC, LesionType.ICC, LesionType.META),
    max_volume_ml: float = SMALL_LESION_ML,
    exclude: Sequence[PhantomCaseSpec] = (),
    seeds: range = range(TRAIN_SEED_BASE, VALIDATION_SEED_BASE),
) -> list[PhantomCaseSpec]:
    """`count` studies from `seeds` (default: the training seeds) whose lesion plan holds a
    lesion of one of `types` of at most `max_volume_ml`, every type in `types` about equally often
    (a seed counts for the first small lesion of a wanted type in its plan); seeds in `exclude` are
    skipped. Read from the generator's lesion stream without rendering anything. In the natural
    mix about 3 % of studies hold an ICC under 2.5 ml, 8 % an HCC and 13 % a metastasis: a network
    trained on 120 studies sees a handful of small ICCs."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not types:
        raise ValueError("give at least one lesion type")
    quota = -(-count // len(types))
    taken: dict[LesionType, int] = {}
    skip = {spec.seed for spec in exclude}
    specs: list[PhantomCaseSpec] = []
    for seed in seeds:
        if seed in skip:
            continue
        spec = sample_case_spec(seed)
        if not spec.lesions:
            continue
        small = [r.lesion_type for r in sample_lesion_plan(phantom_stream(seed, "lesions"))
                 if r.lesion_type in types and r.volume_ml is not None and r.volume_ml <= max_volume_ml]
        if small and taken.get(small[0], 0) < quota:
            taken[small[0]] = taken.get(small[0], 0) + 1
            specs.append(spec)
            if len(specs) == count:
                return specs
    raise ValueError(f"seeds {seeds.start}-{seeds.stop - 1} hold fewer than {count} studies with small "
                     f"{'/'.join(t.name for t in types)} lesions")


@dataclass
class EvaluationCase:
    """A held-out case: the working-grid case and its phase subset."""

    case: TrainingCase
    spec: PhantomCaseSpec


def phantom_case(spec: PhantomCaseSpec, prep: Preprocessing) -> TrainingCase:
    """Generate the phantom in memory, phases aligned as registration leaves them (residual motion
    of up to about 2 mm), and resample it onto the working grid."""
    volumes = phantom_volumes(spec)
    return case_from_arrays(spec.case_id, volumes.hu, volumes.labels, volumes.geometry, prep)


def phantom_volumes(spec: PhantomCaseSpec, workers: int = 1) -> PhantomVolumes:
    """The phantom of `spec` on its own (study) grid, phases aligned as registration leaves them
    (residual motion of up to about 2 mm)."""
    return make_phantom(
        spec.seed,
        phases=spec.phases,
        slices=spec.slices,
        slice_thickness_mm=spec.slice_thickness_mm,
        feet_first=spec.feet_first,
        lesions=spec.lesions,
        rows=spec.matrix,
        columns=spec.matrix,
        workers=workers,
        motion="residual",
    )


def _phantom_case_job(args: tuple[PhantomCaseSpec, Preprocessing]) -> TrainingCase:
    import torch

    torch.set_num_threads(1)
    return phantom_case(*args)


#: Modules named phantom*.py that do not make phantoms (an evaluation, a figure): editing them
#: must not throw away every cached case.
NOT_GENERATOR_MODULES = ("phantom_evaluation.py", "phantom_figure.py")


def generator_sources() -> list[Path]:
    """The phantom generator's source files, whose bytes key the case cache."""
    return [path for path in sorted(Path(__file__).parent.glob("phantom*.py")) if path.name not in NOT_GENERATOR_MODULES]


#: the preprocessing settings a working-grid case depends on (grid, HU normalisation, phase
#: order, anti-aliasing); the network's ROI and UNet_patch's patch size do not change a case, so
#: models that differ only in those share their cached cases.
CASE_PREPROCESSING_FIELDS = ("target_spacing_mm", "hu_min", "hu_max", "hu_center", "hu_scale", "phases", "anti_alias")


def case_cache_key(spec: PhantomCaseSpec, prep: Preprocessing) -> str:
    """A key that changes with the spec, the preprocessing settings a case depends on
    (:data:`CASE_PREPROCESSING_FIELDS`) and the phantom generator's source code, so a cached case
    is never stale."""
    case_prep = tuple((name, getattr(prep, name)) for name in CASE_PREPROCESSING_FIELDS)
    digest = hashlib.sha256(repr((spec, case_prep)).encode())
    for source in generator_sources():
        digest.update(source.read_bytes())
    return f"{spec.case_id}-{digest.hexdigest()[:16]}"


def save_case(case: TrainingCase, path: Path) -> None:
    """Write a case as a compressed .npz (atomically: a partial file is never read back)."""
    partial = path.with_name(path.name + ".partial.npz")
    g = case.geometry
    np.savez_compressed(
        partial, phases=case.phases, labels=case.labels, present=np.array([p.value for p in case.present]),
        shape=np.array(g.shape), spacing=np.array(g.spacing_mm), origin=np.array(g.origin_mm),
        direction=np.array(g.direction, dtype=np.float64), case_id=np.array(case.case_id),
    )
    partial.replace(path)


def load_case(path: Path) -> TrainingCase:
    """Read a case written by :func:`save_case`."""
    with np.load(path, allow_pickle=False) as data:
        geometry = VolumeGeometry(
            shape=tuple(int(v) for v in data["shape"]),  # type: ignore[arg-type]
            spacing_mm=tuple(float(v) for v in data["spacing"]),  # type: ignore[arg-type]
            origin_mm=tuple(float(v) for v in data["origin"]),  # type: ignore[arg-type]
            direction=tuple(float(v) for v in data["direction"].ravel()),  # type: ignore[arg-type]
        )
        return TrainingCase(
            case_id=str(data["case_id"]),
            phases=data["phases"],
            present=tuple(Phase(str(v)) for v in data["present"]),
            labels=data["labels"],
            geometry=geometry,
        )


def make_cases(
    specs: Sequence[PhantomCaseSpec],
    prep: Preprocessing,
    processes: int = 1,
    progress: Callable[[str], None] | None = None,
    cache_dir: Path | None = None,
) -> list[TrainingCase]:
    """Generate cases for `specs` (in `processes` worker processes), in the order given. With
    `cache_dir`, cases generated before are read back instead of generated again."""
    say = progress or log.info
    cached: dict[int, TrainingCase] = {}
    paths: dict[int, Path] = {}
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for index, spec in enumerate(specs):
            paths[index] = cache_dir / f"{case_cache_key(spec, prep)}.npz"
            if paths[index].is_file():
                cached[index] = load_case(paths[index])
        if cached:
            say(f"phantom cases: {len(cached)}/{len(specs)} read from the cache {cache_dir}")
    todo = [index for index in range(len(specs)) if index not in cached]
    if processes <= 1 or len(todo) <= 1:
        processes = 1
        made = map(lambda i: phantom_case(specs[i], prep), todo)
    else:
        pool = ProcessPoolExecutor(max_workers=processes)
        made = pool.map(_phantom_case_job, [(specs[i], prep) for i in todo])
    try:
        for count, (index, case) in enumerate(zip(todo, made), 1):
            cached[index] = case
            if index in paths:
                save_case(case, paths[index])
            if processes <= 1 or count % 10 == 0 or count == len(todo):
                say(f"phantom cases: {count}/{len(todo)} generated")
    finally:
        if processes > 1:
            pool.shutdown()
    return [cached[index] for index in range(len(specs))]


#: Phase subsets of the held-out set, each evaluated at thin and thick slices.
HELD_OUT_COMBINATIONS: tuple[tuple[Phase, ...], ...] = (
    (Phase.NC, Phase.AP, Phase.VP, Phase.DP),
    (Phase.NC, Phase.AP, Phase.VP),
    (Phase.AP, Phase.VP),
    (Phase.VP,),
)


def tuning_specs(count: int) -> list[PhantomCaseSpec]:
    """`count` validation studies for choosing settings (seeds from ``TUNING_SEED_BASE``, apart from
    the 2 validation studies watched during training), with the held-out set's phase combinations
    and slice thicknesses; never the held-out studies themselves."""
    return _evaluation_specs(count, TUNING_SEED_BASE)


#: seeds of :func:`small_lesion_tuning_specs`, far above those :func:`tuning_specs` takes
SMALL_LESION_TUNING_SEEDS = range(TUNING_SEED_BASE + 1000, HELD_OUT_SEED_BASE)


def small_lesion_tuning_specs(count: int) -> list[PhantomCaseSpec]:
    """`count` validation studies for choosing settings that each hold an HCC, ICC or metastasis of
    2.5 ml or less (:func:`small_lesion_training_specs` on ``SMALL_LESION_TUNING_SEEDS``), with the
    held-out set's cycle of phase combinations and slice thicknesses; never a training, tuning or
    held-out study. The 48 :func:`tuning_specs` studies hold 16 malignant lesions of 0.5-2.5 ml, in
    13 of them; each of these holds one at least."""
    seeds = [spec.seed for spec in small_lesion_training_specs(count, seeds=SMALL_LESION_TUNING_SEEDS)]
    return _evaluation_specs(count, seeds)


def _evaluation_specs(count: int, seed_base: int | Sequence[int]) -> list[PhantomCaseSpec]:
    thicknesses = (5.0, 2.0, 5.0, 1.5)
    seeds = range(seed_base, seed_base + count) if isinstance(seed_base, int) else list(seed_base)
    specs = []
    for index in range(count):
        phases = HELD_OUT_COMBINATIONS[index % len(HELD_OUT_COMBINATIONS)]
        thickness = thicknesses[(index // len(HELD_OUT_COMBINATIONS)) % len(thicknesses)]
        specs.append(sample_case_spec(seeds[index], phases, thickness_mm=thickness))
    return specs


def held_out_specs(count: int, first_seed: int = HELD_OUT_SEED_BASE) -> list[PhantomCaseSpec]:
    """`count` held-out studies cycling through every phase combination and through 5 mm, 2 mm and
    1.5 mm slices, seeds from `first_seed` (at least ``HELD_OUT_SEED_BASE``: below it are training
    and validation seeds)."""
    if first_seed < HELD_OUT_SEED_BASE:
        raise ValueError(f"held-out seeds start at {HELD_OUT_SEED_BASE}, got {first_seed}")
    return _evaluation_specs(count, first_seed)
