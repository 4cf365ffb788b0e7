"""Offline subcommands: ``process`` (one study folder to results), ``evaluate`` (metrics of
predictions against ground truth) and ``train`` (models on phantoms)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from node.settings import load_settings, resolve_config_path

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


def _cmd_train(args: argparse.Namespace) -> int:
    from pipeline.train_bundled import BundledRecipe, train_bundled

    recipe = replace(BundledRecipe(), size=args.size)
    if args.studies is not None:
        recipe = replace(recipe, train_studies=args.studies)
    if args.iterations is not None:
        recipe = replace(recipe, whole_iterations=args.iterations, patch_iterations=args.iterations)
    card = train_bundled(Path(args.out_dir), Path(args.work_dir), recipe, resume=args.resume, progress=print)
    metrics = json.loads(card.read_text(encoding="utf-8")).get("metrics", {})
    print(f"wrote {card}; held-out liver Dice {metrics.get('held_out_liver_dice_mean', float('nan')):.3f}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add the offline subcommands to the ``livernode`` parser."""
    process = sub.add_parser("process", help="process one study folder into DICOM SEG, SR and findings.json")
    process.add_argument("input_dir", help="folder with the study's DICOM files (any layout)")
    process.add_argument("--out", dest="out_dir", required=True, help="output folder (created)")
    process.add_argument("--config", help="configuration file (default: $LIVERNODE_CONFIG, else built-in)")
    process.set_defaults(handler=_cmd_process)

    evaluate = sub.add_parser("evaluate", help="lesion- and patient-level metrics of predictions against ground truth")
    evaluate.add_argument("predictions", help="folder of <case>.npz prediction files")
    evaluate.add_argument("ground_truth", help="folder of <case>.npz or <case>/truth/labels.nii.gz")
    evaluate.add_argument("--out", dest="out_dir", required=True, help="report folder (evaluation.json, .md)")
    evaluate.add_argument("--min-volume-ml", type=float, default=0.5, help="ignore lesions below this (default 0.5)")
    evaluate.set_defaults(handler=_cmd_evaluate)

    train = sub.add_parser("train", help="train the models on synthetic phantoms")
    train.add_argument("what", choices=["bundled"],
                       help="bundled: reproduce the bundled demo model (UNet_whole, hard cases, UNet_patch, "
                            "held-out evaluation)")
    train.add_argument("--out", dest="out_dir", default="pipeline/models/phantom-demo", help="model folder")
    train.add_argument("--work", dest="work_dir", default="livernode-data/train/work", help="checkpoints")
    train.add_argument("--size", choices=["cpu", "gpu"], default="cpu", help="network size recipe")
    train.add_argument("--studies", type=int, help="training studies (default: the recipe's)")
    train.add_argument("--iterations", type=int, help="iterations per network (default: the recipe's)")
    train.add_argument("--resume", action="store_true", help="continue from checkpoints in --work")
    train.set_defaults(handler=_cmd_train)
