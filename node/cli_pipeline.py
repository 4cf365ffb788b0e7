"""Offline subcommands: ``process`` (one study folder to results), ``evaluate`` (metrics of
predictions against ground truth) and ``train`` (UNet_whole / UNet_patch / lesion typer on a dataset folder or phantoms, or the bundled model)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from node.settings import SettingsError, load_settings, resolve_config_path

EXIT_OK = 0
EXIT_FAILURE = 1
#: The study could not be analysed; a "not analysed" SR was written.
EXIT_NOT_ANALYSED = 3


def _cmd_process(args: argparse.Namespace) -> int:
    from node.processing import StudyProcessor
    from pipeline.errors import PipelineError
    from pipeline.model import ModelLoadError

    settings = load_settings(resolve_config_path(args.config))
    started = time.perf_counter()
    try:
        processor = StudyProcessor(settings)
    except ModelLoadError as error:
        print(f"livernode process: cannot load the model: {error}", file=sys.stderr)
        return EXIT_FAILURE
    loaded_s = time.perf_counter() - started
    try:
        outcome = processor.process(Path(args.input_dir), Path(args.out_dir))
    except PipelineError as error:
        print(f"livernode process: {error}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"study {outcome.study_uid}: {outcome.message}")
    for path in outcome.result_files:
        print(f"  wrote {path}")
    if outcome.findings_path is not None:
        print(f"  wrote {outcome.findings_path}")
    print(f"model loaded in {loaded_s:.1f} s, study processed in {outcome.timings_s.get('total_s', 0.0):.1f} s")
    return EXIT_OK if outcome.succeeded else EXIT_NOT_ANALYSED


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline.evaluate import evaluate_folders
    from pipeline.evaluation_report import write_report

    if args.model_dir is not None or args.held_out is not None:
        return _evaluate_model_on_held_out(args)
    if args.predictions is None or args.ground_truth is None:
        print("livernode evaluate: give PREDICTIONS and GROUND_TRUTH folders, or --model MODEL --held-out N",
              file=sys.stderr)
        return EXIT_FAILURE
    try:
        report = evaluate_folders(Path(args.predictions), Path(args.ground_truth),
                                  min_lesion_volume_ml=args.min_volume_ml)
    except ValueError as error:
        print(f"livernode evaluate: {error}", file=sys.stderr)
        return EXIT_FAILURE
    json_path, md_path = write_report(report, Path(args.out_dir))
    print(md_path.read_text(encoding="utf-8"))
    print(f"wrote {json_path} and {md_path}")
    return EXIT_OK


def _evaluate_model_on_held_out(args: argparse.Namespace) -> int:
    """``evaluate --model MODEL --held-out N``: the model folder through the whole cascade on the
    first N held-out phantom studies (seeds from ``--first-seed``, default 30000), the figures of the
    bundled model card, with the cascade settings of ``--config`` (default: the built-in ones)."""
    from pipeline.backends import CardBackend
    from pipeline.model import ModelLoadError, select_device
    from pipeline.phantom_evaluation import evaluate_on_phantoms
    from pipeline.training_data import HELD_OUT_SEED_BASE, held_out_specs

    problem = None
    if args.predictions is not None or args.ground_truth is not None:
        problem = "--model evaluates on held-out phantoms; it takes no PREDICTIONS or GROUND_TRUTH folders"
    elif args.model_dir is None or args.held_out is None:
        problem = "--model MODEL and --held-out N go together"
    elif args.held_out < 1:
        problem = f"--held-out must be at least 1 study, got {args.held_out}"
    elif args.processes < 1:
        problem = f"--processes must be at least 1, got {args.processes}"
    elif args.first_seed < HELD_OUT_SEED_BASE:
        problem = (f"--first-seed must be at least {HELD_OUT_SEED_BASE}: seeds below it are training and "
                   f"validation studies, got {args.first_seed}")
    if problem is not None:
        print(f"livernode evaluate: {problem}", file=sys.stderr)
        return EXIT_FAILURE
    cascade = load_settings(resolve_config_path(args.config)).cascade
    try:
        backend = CardBackend(Path(args.model_dir), select_device(args.device),
                              typer_dir=Path(args.typer_dir) if args.typer_dir else None)
    except ModelLoadError as error:
        print(f"livernode evaluate: cannot load the model: {error}", file=sys.stderr)
        return EXIT_FAILURE
    cache = Path(args.cache_dir) if args.cache_dir else None
    specs = held_out_specs(args.held_out, first_seed=args.first_seed)
    evaluation = evaluate_on_phantoms(backend, specs, cascade, Path(args.out_dir),
                                      progress=print, processes=args.processes, cache_dir=cache)
    print(evaluation.report_markdown.read_text(encoding="utf-8"))
    print(f"liver Dice (mean of {args.held_out}): {evaluation.liver_dice_mean:.4f}")
    print(f"wrote {evaluation.report_json} and {evaluation.report_markdown}")
    return EXIT_OK


def _cmd_train(args: argparse.Namespace) -> int:
    from pipeline.errors import PipelineError
    from pipeline.model import ModelLoadError

    handlers = {"bundled": _train_bundled, "whole": _train_whole, "patch": _train_patch, "typer": _train_typer}
    try:
        if args.spacing and args.what != "whole":
            raise ValueError("--spacing applies to 'whole' only (patch and typer use their model folder's grid)")
        if args.organ_weight != 1.0 and args.what != "whole":
            raise ValueError("--organ-weight applies to 'whole' only")
        if args.blob_weight and args.what != "whole":
            raise ValueError("--blob-weight applies to 'whole' only")
        if args.small_lesion_studies and args.what == "bundled":
            raise ValueError("--small-lesion-studies applies to 'whole', 'patch' and 'typer' (bundled: the recipe's studies)")
        if args.seed is not None and args.what not in ("whole", "patch"):
            raise ValueError("--seed applies to 'whole' and 'patch' only (bundled: the recipe's seeds)")
        if args.miner_config and args.what != "typer":
            raise ValueError("--miner-config applies to 'typer' only")
        if args.typer_grid and args.what != "typer":
            raise ValueError("--typer-grid applies to 'typer' only")
        return handlers[args.what](args)
    except (PipelineError, ModelLoadError, SettingsError, ValueError) as error:
        print(f"livernode train {args.what}: {error}", file=sys.stderr)
        return EXIT_FAILURE


def _train_bundled(args: argparse.Namespace) -> int:
    from pipeline.train_bundled import BundledRecipe, train_bundled

    recipe = replace(BundledRecipe(), size=args.size, device=args.device, anti_alias=args.anti_alias)
    if args.type_balanced:
        recipe = recipe.type_balanced()
    if args.phantoms is not None:
        recipe = replace(recipe, train_studies=args.phantoms)
    if args.iterations is not None:
        recipe = replace(recipe, whole_iterations=args.iterations, patch_iterations=args.iterations)
    out_dir = Path(args.out_dir or "pipeline/models/phantom-demo")
    card = train_bundled(out_dir, Path(args.work_dir), recipe, resume=args.resume, progress=print,
                         whole_start=Path(args.whole_from) if args.whole_from else None)
    metrics = json.loads(card.read_text(encoding="utf-8")).get("metrics", {})
    print(f"wrote {card}; held-out liver Dice {metrics.get('held_out_liver_dice_mean', float('nan')):.3f}")
    return EXIT_OK


def _source(args: argparse.Namespace):
    from pipeline.train_models import TrainingSource

    if (args.data is None) == (args.phantoms is None):
        raise ValueError("give exactly one of --data DATASET_FOLDER and --phantoms N")
    if args.type_balanced and args.data is not None:
        raise ValueError("--type-balanced chooses phantom seeds; it does not apply to --data")
    if args.small_lesion_studies and args.data is not None:
        raise ValueError("--small-lesion-studies adds phantom studies; it does not apply to --data")
    if args.small_lesion_studies < 0:
        raise ValueError(f"--small-lesion-studies takes a count >= 0, not {args.small_lesion_studies}")
    return TrainingSource(dataset=Path(args.data) if args.data else None, phantoms=args.phantoms or 0,
                          validation_fraction=args.validation_fraction, type_balanced=args.type_balanced,
                          small_lesion_studies=args.small_lesion_studies)


def _spacing(text: str, option: str = "--spacing") -> tuple[float, ...]:
    """'4,2,2' (z, y, x in mm) -> (4.0, 2.0, 2.0); ``train_whole_model`` checks count and sign."""
    try:
        return tuple(float(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise ValueError(f"{option} takes three positive millimetre values Z,Y,X (e.g. 4,2,2), not {text!r}") from None


def _train_whole(args: argparse.Namespace) -> int:
    from pipeline.train import TrainConfig
    from pipeline.train_bundled import BundledRecipe
    from pipeline.train_models import ModelShape, train_whole_model

    if not args.out_dir:
        raise ValueError("--out MODEL_FOLDER is required")
    recipe = replace(BundledRecipe(), size=args.size)
    whole, patch, prep = recipe.networks()
    default_rate = 2e-3 if args.init is None else 1e-3  # a fine-tune starts at half the rate
    config = TrainConfig(iterations=args.iterations or 2000, batch_size=args.batch_size or 2,
                         lesion_class_weight=args.lesion_weight or recipe.whole_lesion_weight,
                         organ_class_weight=args.organ_weight,
                         lesion_union_weight=recipe.lesion_union_weight if args.union_weight is None else args.union_weight,
                         lesion_blob_weight=args.blob_weight,
                         device=args.device,
                         validate_every=max(1, (args.iterations or 2000) // 4),
                         seed=1 if args.seed is None else args.seed,
                         learning_rate=default_rate if args.learning_rate is None else args.learning_rate,
                         crop_centres=args.crop_centres)
    card = train_whole_model(Path(args.out_dir), Path(args.work_dir), _source(args), config,
                             ModelShape(whole, patch, prep), init_model=Path(args.init) if args.init else None,
                             name=args.name, resume=args.resume, progress=print,
                             anti_alias=True if args.anti_alias else None,
                             target_spacing_mm=_spacing(args.spacing) if args.spacing else None)
    print(f"wrote {card}")
    return EXIT_OK


def _train_patch(args: argparse.Namespace) -> int:
    from pipeline.train import TrainConfig
    from pipeline.train_bundled import BundledRecipe
    from pipeline.train_models import train_patch_model

    if not args.model_dir:
        raise ValueError("--model MODEL_FOLDER (with UNet_whole) is required")
    recipe = replace(BundledRecipe(), size=args.size)
    _, patch_spec, _ = recipe.networks()
    config = TrainConfig(iterations=args.iterations or 2000, batch_size=args.batch_size or 16,
                         positive_fraction=0.5, lesion_class_weight=args.lesion_weight or recipe.patch_lesion_weight,
                         lesion_union_weight=recipe.lesion_union_weight if args.union_weight is None else args.union_weight,
                         device=args.device, seed=3 if args.seed is None else args.seed)
    card = train_patch_model(Path(args.model_dir), Path(args.work_dir), _source(args), config, patch_spec,
                             hard_case_studies=args.hard_case_studies, resume=args.resume, progress=print,
                             type_balance=recipe.patch_type_balance if args.type_balance is None else args.type_balance)
    print(f"wrote {card}")
    return EXIT_OK


def _typer_grid(text: str | None, prep):
    """--typer-grid: None -> None (the working grid's own HU, as the bundled typer); 'study' -> the
    working grid with HU from the study, anti-aliased; 'Z,Y,X' -> that spacing, likewise."""
    from pipeline.typer_grid import FeatureGrid, study_feature_grid

    if text is None:
        return None
    if text == "study":
        return study_feature_grid(prep)
    spacing = _spacing(text, "--typer-grid")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"--typer-grid takes 'study' or three positive millimetre values Z,Y,X, not {text!r}")
    return FeatureGrid(spacing, anti_alias=True, from_study=True)  # type: ignore[arg-type]


def _train_typer(args: argparse.Namespace) -> int:
    from pipeline.lesion_typer import TyperTraining
    from pipeline.model import read_model_card
    from pipeline.train_models import whole_predictor
    from pipeline.train_typer import train_typer_model

    if not args.model_dir:
        raise ValueError("--model MODEL_FOLDER is required")
    model_dir = Path(args.model_dir)
    source = _source(args)
    prep = read_model_card(model_dir).preprocessing
    grid = _typer_grid(args.typer_grid, prep)
    if args.miner_config:  # load the model first: a wrong configuration fails before the phantoms are made
        from pipeline.backends import load_backend
        from pipeline.model import BUNDLED_MODEL_DIR
        from pipeline.train_typer import BackendMiner

        backend = load_backend(load_settings(Path(args.miner_config)).model, BUNDLED_MODEL_DIR)
        predictor = BackendMiner(backend, f"{backend.identity.name} ({args.miner_config})")
    else:
        predictor = whole_predictor(model_dir, args.device)
    studies = source.typer_studies(prep, Path(args.work_dir), print, with_study=grid is not None and grid.from_study)
    settings = TyperTraining(iterations=args.iterations or TyperTraining().iterations)
    card = train_typer_model(model_dir, studies, source.describe(), settings, progress=print, predictor=predictor,
                             feature_grid=grid)
    print(f"wrote {card}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add the offline subcommands to the ``livernode`` parser."""
    process = sub.add_parser("process", help="process one study folder into DICOM SEG, SR and findings.json")
    process.add_argument("input_dir", help="folder with the study's DICOM files (any layout)")
    process.add_argument("--out", dest="out_dir", required=True, help="output folder (created)")
    process.add_argument("--config", help="configuration file (default: $LIVERNODE_CONFIG, else built-in)")
    process.set_defaults(handler=_cmd_process)

    evaluate = sub.add_parser("evaluate", help="lesion- and patient-level metrics of predictions against ground truth")
    evaluate.add_argument("predictions", nargs="?", help="folder of <case>.npz prediction files")
    evaluate.add_argument("ground_truth", nargs="?", help="folder of <case>.npz or <case>/truth/labels.nii.gz")
    evaluate.add_argument("--out", dest="out_dir", required=True, help="report folder (evaluation.json, .md)")
    evaluate.add_argument("--min-volume-ml", type=float, default=0.5, help="ignore lesions below this (default 0.5)")
    evaluate.add_argument("--model", dest="model_dir",
                          help="instead of prediction folders: run this model folder through the cascade on "
                               "held-out phantom studies (with --held-out N)")
    evaluate.add_argument("--held-out", type=int,
                          help="the first N held-out phantom studies (seeds from 30000; 48: the bundled card's set)")
    evaluate.add_argument("--first-seed", type=int, default=30000,
                          help="with --model: seed of the first held-out study (default 30000, the bundled card's "
                               "set; 40000: a second set, never looked at while choosing settings)")
    evaluate.add_argument("--config",
                          help="with --model: configuration file whose cascade section is used "
                               "(default: $LIVERNODE_CONFIG, else built-in)")
    evaluate.add_argument("--typer-dir", help="with --model: another model folder's lesion typer (model.typer_dir)")
    evaluate.add_argument("--cache", dest="cache_dir",
                          help="with --model: keep the generated phantom studies here for the next run")
    evaluate.add_argument("--processes", type=int, default=2, help="with --model: phantom generation processes")
    evaluate.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                          help="with --model: inference device (default auto)")
    evaluate.set_defaults(handler=_cmd_evaluate)

    train = sub.add_parser(
        "train", help="train UNet_whole, UNet_patch or the lesion typer on a labelled dataset folder or phantoms",
        description="whole: UNet_whole into a new model folder (--out), from scratch or from --init; "
                    "patch: UNet_patch added to a model folder (--model), hard cases mined by its UNet_whole; "
                    "typer: the lesion typer (enhancement features -> type) added to a model folder (--model); "
                    "bundled: reproduce the bundled demo model from scratch (both networks, held-out "
                    "evaluation). Dataset folders: nnU-Net v2 raw layout, docs/models.md.")
    train.add_argument("what", choices=["whole", "patch", "typer", "bundled"])
    train.add_argument("--data", help="labelled dataset folder (dataset.json, imagesTr/, labelsTr/)")
    train.add_argument("--phantoms", type=int, help="train on N synthetic phantom studies instead")
    train.add_argument("--out", dest="out_dir", help="model folder to write (whole, bundled)")
    train.add_argument("--model", dest="model_dir", help="model folder to add UNet_patch or the lesion typer to (patch, typer)")
    train.add_argument("--init", help="model folder whose UNet_whole to start from (whole: fine-tuning)")
    train.add_argument("--work", dest="work_dir", default="livernode-data/train/work",
                       help="checkpoints and cached cases (default livernode-data/train/work)")
    train.add_argument("--size", choices=["cpu", "gpu"], default="cpu", help="network size recipe (default cpu)")
    train.add_argument("--iterations", type=int, help="iterations (default: 2000, bundled: the recipe's)")
    train.add_argument("--learning-rate", type=float,
                       help="whole: learning rate (default 2e-3 from scratch, 1e-3 with --init)")
    train.add_argument("--batch-size", type=int, help="batch size (default: whole 2, patch 16)")
    train.add_argument("--lesion-weight", type=float, help="loss weight of the lesion classes (whole 2, patch 3)")
    train.add_argument("--organ-weight", type=float, default=1.0,
                       help="whole: loss weight of the organs and vessels besides the liver (labels 8-13; default 1)")
    train.add_argument("--union-weight", type=float,
                       help="weight of the 'any lesion' Dice term of the loss (default 1; 0: per-class terms only)")
    train.add_argument("--blob-weight", type=float, default=0.0,
                       help="whole: weight of the per-lesion ('blob') Dice term, every lesion of a crop counting "
                            "alike however small (default 0: off)")
    train.add_argument("--validation-fraction", type=float, default=0.1, help="patients held out for validation")
    train.add_argument("--hard-case-studies", type=int, default=20, help="studies mined for hard cases (patch)")
    train.add_argument("--type-balance", type=float,
                       help="patch: rare lesion types get up to this many times more patches per lesion "
                            "(default 1: none; the type-balanced recipe uses 4)")
    train.add_argument("--type-balanced", action="store_true",
                       help="bundled: the recipe with type-balanced training data for lesion typing "
                            "(BundledRecipe.type_balanced; not what made the bundled weights); whole, patch, "
                            "typer with --phantoms: phantom seeds with every primary lesion type equally common")
    train.add_argument("--small-lesion-studies", type=int, default=0, metavar="N",
                       help="whole, patch, typer with --phantoms: N more phantom studies, each with an HCC, ICC "
                            "or metastasis of 2.5 ml or less (the three types equally often), on top of the "
                            "--phantoms studies (default 0)")
    train.add_argument("--whole-from", metavar="WEIGHTS",
                       help="bundled: UNet_whole weights of an earlier run's first three stages (e.g. "
                            "pipeline/models/phantom-demo/unet_whole_polished.pt, which the bundled heads were "
                            "mined with); only the type-balanced stage of UNet_whole runs, from them")
    train.add_argument("--crop-centres", choices=["voxels", "lesions"], default="voxels",
                       help="whole: centre lesion crops on random lesion voxels (default; large lesions "
                            "dominate) or on every lesion equally often")
    train.add_argument("--anti-alias", action="store_true",
                       help="whole, bundled: smooth the axes that are downsampled onto the working grid "
                            "before resampling (recorded in the model card's preprocessing; bundled: in the "
                            "recipe too, BundledRecipe.anti_alias)")
    train.add_argument("--spacing", metavar="Z,Y,X",
                       help="whole: working grid spacing in mm (recorded in the model card's preprocessing); "
                            "with --init a fine-tune onto this grid (default: the recipe's, or --init's)")
    train.add_argument("--miner-config", metavar="CONFIG",
                       help="typer: mine the 'not a lesion' rows with the model this livernode configuration "
                            "file's model section loads (e.g. the nnU-Net model that will use this typer through "
                            "model.typer_dir) instead of the folder's own UNet_whole")
    train.add_argument("--typer-grid", metavar="study|Z,Y,X",
                       help="typer: read its features from each study's own HU, anti-aliased onto the model "
                            "folder's working grid ('study') or onto a grid of Z,Y,X mm (default: the working "
                            "grid's own HU, as the bundled typer)")
    train.add_argument("--name", default="livernode-site-model", help="model name in the card (whole)")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    train.add_argument("--seed", type=int,
                       help="whole, patch: seed of the crop sampling, augmentation and phase dropout (default: "
                            "whole 1, patch 3); a further run from --init with another seed sees other crops")
    train.add_argument("--resume", action="store_true", help="continue from checkpoints in --work")
    train.set_defaults(handler=_cmd_train)
