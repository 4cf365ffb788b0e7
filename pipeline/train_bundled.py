"""Reproduce the bundled demo model from scratch: phantom training studies, UNet_whole, hard-case
mining, UNet_patch, the lesion typer, held-out evaluation, model card. ``livernode train bundled`` runs it.

Everything is deterministic by seed up to GPU non-determinism. The recipe (counts, iterations) is
recorded in the model card so the card says exactly how its weights were made.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from pipeline.backends import CardBackend
from pipeline.config import CascadeConfig
from pipeline.inference import WholePredictor
from pipeline.lesion_typer import TyperTraining
from pipeline.model import (
    PATCH_NETWORK,
    WHOLE_NETWORK,
    ModelCard,
    NetworkSpec,
    Preprocessing,
    TyperEntry,
    load_native_network,
    read_model_card,
    select_device,
    sha256_of,
    use_bf16,
    write_model_card,
)
from pipeline.types import LESION_LABELS, NUM_CLASSES
from pipeline.phantom_evaluation import PhantomEvaluation, evaluate_on_phantoms
from pipeline.train import TrainConfig, TrainResult, train_network, write_card
from pipeline.train_models import (
    ModelShape,
    TrainingSource,
    intended_use_for,
    train_patch_model,
    train_whole_model,
    whole_predictor,
)
from pipeline.train_patch import train_patch_network
from pipeline.train_typer import fit_typer, train_typer_model
from pipeline.typer_grid import study_feature_grid
from pipeline.typer_studies import phantom_typer_studies
from pipeline.training_data import (
    TRAIN_SEED_BASE,
    VALIDATION_SEED_BASE,
    held_out_specs,
    make_cases,
    sample_case_spec,
    type_balanced_training_specs,
)

log = logging.getLogger(__name__)

MODEL_NAME = "livernode-phantom-demo"


@dataclass(frozen=True)
class BundledRecipe:
    """Sizes of the bundled model's training run."""

    train_studies: int = 60
    validation_studies: int = 2
    held_out_studies: int = 48
    whole_iterations: int = 2000
    #: lesion class weight of the first UNet_whole stage
    whole_lesion_weight: float = 2.0
    #: weight of the "any lesion" Dice term (pipeline.training_loss) in every stage
    lesion_union_weight: float = 1.0
    #: a second UNet_whole stage from the first one's weights with the lesion classes weighted up
    #: (0 iterations: none).
    whole_finetune_iterations: int = 800
    whole_finetune_lesion_weight: float = 4.0
    whole_finetune_positive_fraction: float = 0.9
    #: a third stage at a low learning rate and a milder lesion weight (fewer lesions called where
    #: there are none, a cleaner liver outline; 0 iterations: none)
    whole_polish_iterations: int = 1000
    whole_polish_learning_rate: float = 5e-4
    whole_polish_lesion_weight: float = 1.5
    #: type-balanced training studies (pipeline.training_data.type_balanced_training_specs; they
    #: include the first `train_studies` seeds where the quotas allow): the data of the fourth
    #: UNet_whole stage, and of UNet_patch with `patch_on_typing_studies` (0: every stage uses the
    #: first `train_studies` studies).
    typing_studies: int = 120
    #: a fourth, long stage on the type-balanced studies (0 iterations: none). Added in session 25:
    #: 3800 iterations had left UNet_whole under-trained (four organs never learnt, 0.6 ml cysts at
    #: -80 HU called liver); docs/models.md, "Session 25".
    whole_typing_iterations: int = 6500
    whole_typing_learning_rate: float = 1e-3
    #: UNet_patch trains on the type-balanced studies (else on the first `train_studies`)
    patch_on_typing_studies: bool = False
    #: the UNet_whole stage whose detections give UNet_patch's hard cases and the lesion typer's
    #: "not a lesion" rows ("": the last stage), in a recipe without a fine-grid stage (with one,
    #: the coarse stages train UNet_whole only and the fine grid's heads are mined with its own).
    #: The 0.1.0 heads were mined with the polished (third) stage and kept when the fourth stage
    #: was added: retrained on the fourth stage's detections the typer left more patients
    #: uncertain on validation (7 against 3).
    heads_mined_with: str = "unet_whole_polished.pt"
    whole_batch_size: int = 2
    patch_iterations: int = 2500
    patch_batch_size: int = 16
    #: weight of the lesion classes in UNet_patch's loss: a lesion is a few hundred of a patch's
    #: 37 000 voxels, and an unweighted patch model learns to call everything background.
    patch_lesion_weight: float = 3.0
    #: rare lesion types get up to this many times more UNet_patch training patches per lesion
    #: (pipeline.train_patch.patches_per_lesion_by_type; 1: as many as the common types)
    patch_type_balance: float = 1.0
    hard_case_studies: int = 20
    #: the lesion typer (pipeline.lesion_typer): trained on the true lesions of this many
    #: type-balanced studies (0: no typer; reclassification's UNet_patch vote gives the type)
    typer_studies: int = 120
    typer_iterations: int = 3000
    #: the typer reads its features from the study's own HU, anti-aliased onto the working grid
    #: (``pipeline.typer_grid.study_feature_grid``), instead of the working grid's HU (the bundled
    #: typer's): not better on the 48 held-out studies (docs/models.md, "Session 23")
    typer_reads_study: bool = False
    processes: int = 2
    loader_workers: int = 0
    device: str = "auto"
    version: str = "0.2.0"
    #: "gpu": the full-size networks of pipeline.model at 3 x 2 x 2 mm; "cpu": narrower networks at
    #: 4 x 3 x 3 mm that train in about an hour on two CPU cores (the bundled weights).
    size: str = "cpu"
    #: Gaussian-smooth the axes that are downsampled onto the working grid before resampling
    #: (``Preprocessing.anti_alias``, recorded in the card); the coarse stages were trained without.
    anti_alias: bool = False
    #: a last UNet_whole stage on a finer working grid (`fine_grid_spacing_mm`, z, y, x, anti-aliased),
    #: from the coarse stages' weights, on the type-balanced studies plus
    #: `fine_grid_small_lesion_studies` with a small malignant lesion; UNet_patch and the lesion typer
    #: are then trained again for it on that grid, as ``livernode train patch`` and ``train typer``
    #: do. The coarse model (all stages above, with its own heads) stays in the work folder. 0
    #: iterations: none, the coarse model is the result. Added in session 30 (docs/models.md,
    #: "Session 30"): on 96 held-out studies it finds more malignant patients than the coarse model.
    fine_grid_iterations: int = 4000
    fine_grid_spacing_mm: tuple[float, float, float] = (4.0, 2.0, 2.0)
    fine_grid_learning_rate: float = 1e-3
    fine_grid_lesion_weight: float = 2.0
    fine_grid_small_lesion_studies: int = 60
    fine_grid_seed: int = 28

    def networks(self) -> tuple[NetworkSpec, NetworkSpec, Preprocessing]:
        """UNet_whole, UNet_patch and the preprocessing of this recipe's size."""
        if self.size == "gpu":
            return WHOLE_NETWORK, PATCH_NETWORK, Preprocessing(anti_alias=self.anti_alias)
        strides = ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2))
        whole = NetworkSpec(in_channels=8, out_channels=NUM_CLASSES, filters=(12, 24, 48, 96), strides=strides)
        patch = NetworkSpec(in_channels=8, out_channels=len(LESION_LABELS) + 1, filters=(8, 16, 32, 64),
                            strides=strides)
        prep = Preprocessing(target_spacing_mm=(4.0, 3.0, 3.0), roi_size_voxels=(32, 96, 96),
                             patch_size_voxels=(16, 48, 48), anti_alias=self.anti_alias)
        return whole, patch, prep

    def type_balanced(self) -> "BundledRecipe":
        """The bundled recipe with UNet_patch trained on the type-balanced studies too (docs/models.md,
        "Lesion typing"): a longer UNet_patch run with rare types' patches up to 4x. Not yet run to
        the end."""
        return replace(self, patch_on_typing_studies=True, patch_iterations=5000, patch_type_balance=4.0)

    def small(self) -> "BundledRecipe":
        """A recipe that runs in minutes on a CPU (smoke runs and tests; not the bundled weights)."""
        return replace(self, train_studies=3, validation_studies=0, held_out_studies=1, whole_iterations=4,
                       whole_finetune_iterations=2, whole_polish_iterations=2, typing_studies=4,
                       whole_typing_iterations=2, typer_studies=4, typer_iterations=20,
                       fine_grid_iterations=2, fine_grid_small_lesion_studies=1,
                       whole_batch_size=1, patch_iterations=4, patch_batch_size=4, hard_case_studies=2,
                       processes=1, loader_workers=0)


@dataclass(frozen=True)
class WholeStage:
    """One UNet_whole training stage; each starts from the previous stage's weights."""

    weights_name: str
    config: TrainConfig
    #: trained on the type-balanced studies (else on the first `train_studies`)
    on_typing_studies: bool = False


def whole_stages(recipe: BundledRecipe, prep: Preprocessing) -> list[WholeStage]:
    """The recipe's UNet_whole stages in order, those with 0 iterations left out."""
    first = TrainConfig(
        iterations=recipe.whole_iterations,
        batch_size=recipe.whole_batch_size,
        crop_size_voxels=prep.roi_size_voxels,
        lesion_class_weight=recipe.whole_lesion_weight,
        lesion_union_weight=recipe.lesion_union_weight,
        validate_every=max(1, recipe.whole_iterations // 4),
        checkpoint_every=max(1, min(250, recipe.whole_iterations)),
        num_workers=recipe.loader_workers,
        device=recipe.device,
        seed=1,
    )
    stages = [
        WholeStage("unet_whole.pt", first),
        WholeStage("unet_whole_finetuned.pt", replace(
            first, iterations=recipe.whole_finetune_iterations, learning_rate=first.learning_rate / 2,
            lesion_class_weight=recipe.whole_finetune_lesion_weight,
            positive_fraction=recipe.whole_finetune_positive_fraction,
            validate_every=max(1, recipe.whole_finetune_iterations // 2), seed=5)),
        WholeStage("unet_whole_polished.pt", replace(
            first, iterations=recipe.whole_polish_iterations, learning_rate=recipe.whole_polish_learning_rate,
            lesion_class_weight=recipe.whole_polish_lesion_weight,
            validate_every=max(1, recipe.whole_polish_iterations // 2), seed=7)),
        WholeStage("unet_whole_typed.pt", replace(
            first, iterations=recipe.whole_typing_iterations, learning_rate=recipe.whole_typing_learning_rate,
            validate_every=max(1, recipe.whole_typing_iterations // 2), seed=9), on_typing_studies=True),
    ]
    return [stage for stage in stages if stage.config.iterations > 0]


def started_whole(weights: Path, spec: NetworkSpec) -> TrainResult:
    """UNet_whole weights of an earlier run taken as the result of the natural-mix stages; a file
    that is not `spec`'s weights fails here with the file named."""
    load_native_network(weights, spec, select_device("cpu"))
    return TrainResult(weights, sha256_of(weights), 0)


def train_bundled(
    out_dir: Path,
    work_dir: Path,
    recipe: BundledRecipe = BundledRecipe(),
    cascade: CascadeConfig = CascadeConfig(),
    resume: bool = False,
    progress: Callable[[str], None] | None = None,
    whole_start: Path | None = None,
) -> Path:
    """Train both networks and write weights plus model card to `out_dir`; returns the card path.
    `work_dir` holds checkpoints, the coarse model (when the recipe has a fine-grid stage) and the
    held-out evaluation. `whole_start`: UNet_whole weights made by the natural-mix stages of an
    earlier run (the bundled model's): only the later stages of UNet_whole run, from them."""
    say = progress or log.info
    started = time.perf_counter()
    if recipe.fine_grid_iterations <= 0:
        return _train_coarse(out_dir, work_dir, recipe, cascade, resume, say, whole_start, started, complete=True)[0]
    coarse_dir = work_dir / "coarse-model"
    _, polished = _train_coarse(coarse_dir, work_dir, recipe, cascade, resume, say, whole_start, started,
                                complete=False)
    return _train_fine_grid(coarse_dir, polished, out_dir, work_dir / "fine-grid", recipe, cascade, resume, say,
                            started)


def _train_coarse(
    out_dir: Path,
    work_dir: Path,
    recipe: BundledRecipe,
    cascade: CascadeConfig,
    resume: bool,
    say: Callable[[str], None],
    whole_start: Path | None,
    started: float,
    complete: bool,
) -> tuple[Path, Path | None]:
    """The coarse-grid stages of the recipe into `out_dir`; returns the card path and the weights of
    the polished (third) stage, if any. `complete`: a whole model, with UNet_patch, the lesion typer
    and the held-out evaluation; else UNet_whole alone, the start of the fine-grid stage, which
    trains its own heads (coarse ones would be mined on another network's false positives and
    thrown away: about 35 minutes of a full run here)."""
    whole_spec, patch_spec, prep = recipe.networks()
    stages = whole_stages(recipe, prep)
    stage_names = [stage.weights_name for stage in stages]
    natural_names = [stage.weights_name for stage in stages if not stage.on_typing_studies]
    if recipe.heads_mined_with and recipe.heads_mined_with not in stage_names:
        raise ValueError(f"heads_mined_with: {recipe.heads_mined_with!r} is not one of the recipe's UNet_whole "
                         f"stages {stage_names} (or '' for the last)")
    whole: TrainResult | None = None
    start_note: dict = {}
    if whole_start is not None:  # checked before anything is written
        whole = started_whole(whole_start, whole_spec)
        start_note = {"whole_started_from": {"file": whole_start.name, "sha256": whole.sha256}}
        stages = [stage for stage in stages if stage.on_typing_studies]
        say(f"UNet_whole: starting from {whole_start} (sha256 {whole.sha256[:12]}); its natural-mix stages "
            "are not re-run")
    work_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    cascade = replace(cascade, patch_size_voxels=prep.patch_size_voxels)

    train_specs = [sample_case_spec(TRAIN_SEED_BASE + i) for i in range(recipe.train_studies)]
    typing_specs = type_balanced_training_specs(recipe.typing_studies) if recipe.typing_studies else train_specs
    val_specs = [sample_case_spec(VALIDATION_SEED_BASE + i) for i in range(recipe.validation_studies)]
    need_train_cases = (any(not stage.on_typing_studies for stage in stages)
                        or (complete and not recipe.patch_on_typing_studies))
    say(f"generating {len(train_specs)} training ({len(typing_specs)} type-balanced) and {len(val_specs)} "
        "validation phantom studies")
    cache_dir = work_dir / "cases"
    typing_cases = make_cases(typing_specs, prep, recipe.processes, say, cache_dir=cache_dir)
    if typing_specs is train_specs:
        train_cases = typing_cases
    elif need_train_cases:
        train_cases = make_cases(train_specs, prep, recipe.processes, say, cache_dir=cache_dir)
    else:
        train_cases = []
    val_cases = make_cases(val_specs, prep, recipe.processes, say, cache_dir=cache_dir)
    generation_s = time.perf_counter() - started

    # the started weights (if any) stand for the natural-mix stages
    by_stage: dict[str, Path] = dict.fromkeys(natural_names, whole.weights_path) if whole is not None else {}
    for stage in stages:
        cases = typing_cases if stage.on_typing_studies else train_cases
        result = train_network(whole_spec, cases, val_cases, prep, stage.config, work_dir, stage.weights_name,
                               resume=resume, progress=say, init_weights=whole.weights_path if whole else None)
        by_stage[stage.weights_name] = result.weights_path
        whole = result if whole is None else replace(result, iterations=whole.iterations + result.iterations,
                                                     seconds=whole.seconds + result.seconds)
    if whole is None:
        raise ValueError(f"whole_iterations must be >= 1, got {recipe.whole_iterations}")

    polished = by_stage.get("unet_whole_polished.pt")
    if not complete:
        _copy_into(out_dir, whole)
        card_path = _write(out_dir, prep, whole, None, recipe, train_specs, typing_specs, 0, generation_s,
                           start_note, None)
        return card_path, polished
    device = select_device(recipe.device)
    miner_weights = by_stage[recipe.heads_mined_with] if recipe.heads_mined_with else whole.weights_path
    say(f"UNet_patch's hard cases and the typer's false positives: mined with {miner_weights.name}")
    network = load_native_network(miner_weights, whole_spec, device)
    predictor = WholePredictor(network, prep, device, bf16=use_bf16(device))
    patch_config = TrainConfig(
        iterations=recipe.patch_iterations,
        batch_size=recipe.patch_batch_size,
        crop_size_voxels=prep.patch_size_voxels,
        positive_fraction=0.5,
        lesion_class_weight=recipe.patch_lesion_weight,
        lesion_union_weight=recipe.lesion_union_weight,
        validate_every=recipe.patch_iterations + 1,
        checkpoint_every=max(1, min(250, recipe.patch_iterations)),
        num_workers=recipe.loader_workers,
        device=recipe.device,
        seed=3,
    )
    patch_cases = typing_cases if recipe.patch_on_typing_studies else train_cases
    patch, patch_count = train_patch_network(patch_spec, patch_cases, prep, cascade, patch_config, work_dir,
                                              predictor, recipe.hard_case_studies, resume=resume, progress=say,
                                              type_balance=recipe.patch_type_balance)

    _copy_into(out_dir, whole, patch)
    typer = None
    if recipe.typer_studies:
        typer_specs = type_balanced_training_specs(recipe.typer_studies)
        grid = study_feature_grid(prep) if recipe.typer_reads_study else None
        typer_studies = phantom_typer_studies(typer_specs, prep, recipe.typer_reads_study,
                                              recipe.processes, say, cache_dir=cache_dir)
        typer = fit_typer(out_dir, typer_studies, prep,
                          f"true lesions of {len(typer_specs)} type-balanced synthetic phantoms (seeds "
                          f"{typer_specs[0].seed}-{typer_specs[-1].seed}); NOT FOR CLINICAL USE",
                          TyperTraining(iterations=recipe.typer_iterations), say, predictor, cascade,
                          feature_grid=grid)
    _write(out_dir, prep, whole, patch, recipe, train_specs, typing_specs, patch_count, generation_s, start_note, typer)
    evaluation_dir = work_dir / "held-out"
    backend = CardBackend(out_dir, device)
    evaluation = evaluate_on_phantoms(backend, held_out_specs(recipe.held_out_studies), cascade, evaluation_dir, say,
                                      processes=recipe.processes, cache_dir=cache_dir)
    report = json.loads(evaluation.report_json.read_text(encoding="utf-8"))
    metrics = {
        **start_note,
        "validation": whole.validation,
        "held_out_liver_dice_mean": evaluation.liver_dice_mean,
        "held_out_organ_dice_mean": evaluation.organ_dice_mean,
        "held_out_report": report,
        "held_out_studies": recipe.held_out_studies,
    }
    shutil.copy2(evaluation.report_markdown, out_dir / "held_out_evaluation.md")
    card_path = _write(out_dir, prep, whole, patch, recipe, train_specs, typing_specs, patch_count, generation_s, metrics,
                       typer)
    say(f"bundled model written to {out_dir} in {(time.perf_counter() - started) / 60:.1f} min")
    return card_path, polished


def _copy_into(out_dir: Path, *results: TrainResult) -> None:
    """Copy trained weights into the model folder (unless they were written there)."""
    for result in results:
        target = out_dir / result.weights_path.name
        if not target.exists() or not target.samefile(result.weights_path):
            shutil.copy2(result.weights_path, target)


def _plain(description: str) -> str:
    """A training-data description without its closing not-for-clinical-use sentence (the card
    says it once, at the end)."""
    for ending in ("No patient data. Synthetic phantoms only: NOT FOR CLINICAL USE.", "; NOT FOR CLINICAL USE"):
        description = description.strip().removesuffix(ending).strip()
    return description.rstrip(".;, ")


def _fine_whole_source(recipe: BundledRecipe) -> TrainingSource:
    """The studies of the fine-grid UNet_whole stage."""
    return TrainingSource(phantoms=recipe.typing_studies, type_balanced=True,
                          small_lesion_studies=recipe.fine_grid_small_lesion_studies, processes=recipe.processes)


def _fine_patch_source(recipe: BundledRecipe) -> TrainingSource:
    """The studies of the fine-grid UNet_patch."""
    return TrainingSource(phantoms=recipe.typing_studies if recipe.patch_on_typing_studies else recipe.train_studies,
                          type_balanced=recipe.patch_on_typing_studies, processes=recipe.processes)


def write_fine_grid_card(
    out_dir: Path,
    coarse: ModelCard,
    polished: Path | None,
    recipe: BundledRecipe,
    evaluation: PhantomEvaluation,
    seconds: dict[str, float],
    notes: dict[str, str] | None = None,
) -> Path:
    """The bundled card of a fine-grid model folder `out_dir` (UNet_whole, UNet_patch and typer
    written by the fine-grid stage): the recipe, the coarse model it started from (`coarse`), the
    polished coarse stage kept beside it for ``--whole-from`` (copied into `out_dir`), the held-out
    `evaluation` (copied as ``held_out_evaluation.md``), training `seconds` and free-text `notes`."""
    metrics: dict = {}
    if polished is not None:
        kept = out_dir / polished.name
        if not kept.exists() or not kept.samefile(polished):
            shutil.copy2(polished, kept)
        metrics["whole_polished_stage"] = {
            "file": polished.name, "sha256": sha256_of(kept),
            "note": "UNet_whole after the recipe's first three (coarse) stages; `livernode train bundled "
                    "--whole-from` this file runs the later stages and the rest of the recipe"}
    metrics["coarse_model"] = {"whole": coarse.whole.file, "whole_sha256": coarse.whole.sha256,
                               "preprocessing": asdict(coarse.preprocessing),
                               "validation": coarse.metrics.get("validation"),
                               "note": "UNet_whole of the recipe's coarse stages (1-4), from which the fine-grid "
                                       "stage started; kept in the work folder"}
    shutil.copy2(evaluation.report_markdown, out_dir / "held_out_evaluation.md")
    card = read_model_card(out_dir)
    metrics = {**card.metrics, **metrics, "recipe": asdict(recipe),
               "held_out_liver_dice_mean": evaluation.liver_dice_mean,
               "held_out_organ_dice_mean": evaluation.organ_dice_mean,
               "held_out_report": json.loads(evaluation.report_json.read_text(encoding="utf-8")),
               "held_out_studies": recipe.held_out_studies,
               "training_seconds": {**coarse.metrics.get("training_seconds", {}), **seconds},
               **(notes or {})}
    typer_part = (f"; the lesion typer on {_plain(card.typer.training.get('training_data', ''))}, its \"not a "
                  "lesion\" rows this UNet_whole's false positives" if card.typer is not None else "")
    training_data = (
        f"Coarse stages: {_plain(coarse.training_data)}. Fine-grid stage "
        f"({'x'.join(f'{v:g}' for v in recipe.fine_grid_spacing_mm)} mm, anti-aliased): UNet_whole on "
        f"{_plain(_fine_whole_source(recipe).describe())}; UNet_patch on {_plain(_fine_patch_source(recipe).describe())}"
        f"{typer_part}. No patient data. Synthetic phantoms only: NOT FOR CLINICAL USE.")
    card = replace(card, name=MODEL_NAME, version=recipe.version, training_data=training_data,
                   intended_use=intended_use_for(_fine_whole_source(recipe)), metrics=metrics)
    return write_model_card(out_dir, card)


def _train_fine_grid(
    coarse_dir: Path,
    polished: Path | None,
    out_dir: Path,
    work_dir: Path,
    recipe: BundledRecipe,
    cascade: CascadeConfig,
    resume: bool,
    say: Callable[[str], None],
    started: float,
) -> Path:
    """The fine-grid stage: UNet_whole of the coarse model in `coarse_dir` trained on
    `recipe.fine_grid_spacing_mm`, then its own UNet_patch and lesion typer (what ``livernode train
    whole --init``, ``train patch`` and ``train typer`` do), the held-out evaluation and the card, in
    `out_dir`. `polished` (the third coarse stage) is kept beside them for ``--whole-from``."""
    whole_spec, patch_spec, coarse_prep = recipe.networks()
    shape = ModelShape(whole_spec, patch_spec, coarse_prep)
    fine_started = time.perf_counter()
    whole_config = TrainConfig(
        iterations=recipe.fine_grid_iterations, batch_size=recipe.whole_batch_size,
        learning_rate=recipe.fine_grid_learning_rate, lesion_class_weight=recipe.fine_grid_lesion_weight,
        lesion_union_weight=recipe.lesion_union_weight, validate_every=max(1, recipe.fine_grid_iterations // 4),
        num_workers=recipe.loader_workers, device=recipe.device, seed=recipe.fine_grid_seed,
    )
    whole_source = _fine_whole_source(recipe)
    say(f"fine-grid stage: UNet_whole from {coarse_dir} onto {recipe.fine_grid_spacing_mm} mm, anti-aliased")
    train_whole_model(out_dir, work_dir, whole_source, whole_config, shape, init_model=coarse_dir, name=MODEL_NAME,
                      resume=resume, progress=say, anti_alias=True, target_spacing_mm=recipe.fine_grid_spacing_mm)
    patch_config = TrainConfig(
        iterations=recipe.patch_iterations, batch_size=recipe.patch_batch_size, positive_fraction=0.5,
        lesion_class_weight=recipe.patch_lesion_weight, lesion_union_weight=recipe.lesion_union_weight,
        num_workers=recipe.loader_workers, device=recipe.device, seed=3,
    )
    patch_source = _fine_patch_source(recipe)
    train_patch_model(out_dir, work_dir, patch_source, patch_config, patch_spec, cascade,
                      hard_case_studies=recipe.hard_case_studies, resume=resume, progress=say,
                      type_balance=recipe.patch_type_balance)
    fine_prep = read_model_card(out_dir).preprocessing
    if recipe.typer_studies:
        typer_source = TrainingSource(phantoms=recipe.typer_studies, type_balanced=True, validation_fraction=0.0,
                                      processes=recipe.processes)
        grid = study_feature_grid(fine_prep) if recipe.typer_reads_study else None
        studies = typer_source.typer_studies(fine_prep, work_dir, say, with_study=grid is not None)
        train_typer_model(out_dir, studies, typer_source.describe(), TyperTraining(iterations=recipe.typer_iterations),
                          progress=say, predictor=whole_predictor(out_dir, recipe.device), feature_grid=grid)
    fine_s = time.perf_counter() - fine_started
    device = select_device(recipe.device)
    evaluation = evaluate_on_phantoms(CardBackend(out_dir, device), held_out_specs(recipe.held_out_studies), cascade,
                                      work_dir / "held-out", say, processes=recipe.processes,
                                      cache_dir=work_dir / "cases")
    path = write_fine_grid_card(out_dir, read_model_card(coarse_dir), polished, recipe, evaluation,
                                {"fine_grid": fine_s})
    say(f"bundled model written to {out_dir} in {(time.perf_counter() - started) / 60:.1f} min")
    return path


def _write(out_dir: Path, prep: Preprocessing, whole: TrainResult, patch: TrainResult | None, recipe: BundledRecipe,
           train_specs, typing_specs, patch_count: int, generation_s: float, metrics: dict,
           typer: TyperEntry | None) -> Path:
    """The card of a coarse model folder; `patch` None: UNet_whole alone (the fine-grid stage's start)."""
    seeds = sorted({spec.seed for spec in (*train_specs, *typing_specs)})
    if recipe.typing_studies:
        first_use, last_use = ("UNet_whole's first stages", "its last stage and UNet_patch") \
            if recipe.patch_on_typing_studies else ("UNet_whole's first stages and UNet_patch", "its last stage")
        if patch is None:
            first_use, last_use = "UNet_whole's first stages", "its last stage"
        use = (f"the first {len(train_specs)} for {first_use}, {len(typing_specs)} chosen so every primary "
               f"lesion type is equally common for {last_use}")
    else:
        use = "natural lesion-type mix, for both networks" if patch is not None else "natural lesion-type mix"
    patch_part = f", {patch_count} lesion-shuffle patches for UNet_patch" if patch is not None else \
        " (UNet_whole only)"
    typer_part = (f"; the lesion typer on the true lesions and UNet_whole's false positives of "
                  f"{typer.training.get('studies')} type-balanced phantoms (seeds from {TRAIN_SEED_BASE})"
                  if typer is not None else "")
    training_data = (
        f"{len(seeds)} synthetic multi-phase CT phantoms made by livernode's own generator "
        f"(pipeline.phantom, seeds {seeds[0]}-{seeds[-1]}: {use}; validation seeds from {VALIDATION_SEED_BASE})"
        f"{patch_part}{typer_part}. No patient data. Synthetic phantoms only: NOT FOR CLINICAL USE."
    )
    metrics = dict(metrics)
    metrics["recipe"] = asdict(recipe)
    metrics["training_seconds"] = {"generation": generation_s, "whole": whole.seconds,
                                   **({"patch": patch.seconds} if patch is not None else {})}
    whole_spec, patch_spec, _ = recipe.networks()
    return write_card(out_dir, prep, whole, patch, patch_spec, MODEL_NAME, recipe.version, training_data, metrics,
                      whole_spec=whole_spec, typer=typer)
