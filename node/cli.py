"""The ``livernode`` command line. Each subcommand is a thin wrapper over a library function."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from node.settings import Settings, SettingsError, load_settings, resolve_config_path

log = logging.getLogger("livernode")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _settings_from_args(args: argparse.Namespace) -> Settings:
    return load_settings(resolve_config_path(getattr(args, "config", None)))


def _cmd_check_config(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        load_settings(path)
    except SettingsError as error:
        for problem in error.problems:
            print(f"{problem}", file=sys.stderr)
        print(f"{path}: {len(error.problems)} problem(s)", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{path}: OK")
    return EXIT_OK


def _parse_phases(text: str) -> list:
    from pipeline.types import Phase

    phases = []
    for part in text.split(","):
        name = part.strip().upper()
        try:
            phases.append(Phase(name))
        except ValueError:
            raise argparse.ArgumentTypeError(f"unknown phase {part!r}: use NC, AP, VP, DP") from None
    if len(set(phases)) != len(phases):
        raise argparse.ArgumentTypeError("a phase is listed twice")
    return phases


def _cmd_phantom(args: argparse.Namespace) -> int:
    from pipeline.phantom import write_phantom_study

    started = time.perf_counter()
    study = write_phantom_study(
        Path(args.out_dir),
        seed=args.seed,
        phases=args.phases,
        slices=args.slices,
        slice_thickness_mm=args.thickness,
        feet_first=args.ffs,
        lesions=not args.no_lesions,
    )
    elapsed_s = time.perf_counter() - started
    print(f"wrote phantom study (seed {args.seed}) to {study.out_dir} in {elapsed_s:.1f} s")
    for phase, series_uid in study.series_uids.items():
        print(f"  {getattr(phase, 'value', phase)}: series {series_uid}")
    print(f"  {len(study.lesions)} lesion(s); ground truth in {study.label_path.parent}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every implemented subcommand."""
    parser = argparse.ArgumentParser(
        prog="livernode",
        description="Liver lesion detection node for multi-phase abdominal CT (research use only).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", help="YAML configuration file")
    check.set_defaults(handler=_cmd_check_config)

    phantom = sub.add_parser("phantom", help="write a synthetic multi-phase CT study with ground truth")
    phantom.add_argument("out_dir", help="output folder (created)")
    phantom.add_argument("--seed", type=int, required=True, help="random seed; same seed, same study")
    phantom.add_argument("--phases", type=_parse_phases, default=_parse_phases("NC,AP,VP,DP"),
                         help="comma-separated phases (default NC,AP,VP,DP)")
    phantom.add_argument("--slices", type=int, default=60, help="slices per series (default 60)")
    phantom.add_argument("--thickness", type=float, default=5.0, help="slice thickness in mm (default 5)")
    phantom.add_argument("--ffs", action="store_true", help="feet-first supine instead of head-first")
    phantom.add_argument("--no-lesions", action="store_true", help="a lesion-free liver")
    phantom.set_defaults(handler=_cmd_phantom)

    from node.cli_node import register as register_node_commands
    from node.cli_pipeline import register as register_pipeline_commands

    register_pipeline_commands(sub)
    register_node_commands(sub)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``livernode`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except SettingsError as error:
        for problem in error.problems:
            print(f"{error.source}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
