"""`livernode process` wall time per stage and peak memory on a phantom study.

    .venv/bin/python tests/benchmarks/bench_process.py [--slices 60] [--phases NC,AP,VP,DP] [--matrix 512]

Writes the study, runs the real command in a child process (bundled model unless --config says
otherwise) and prints the stage timings from findings.json and the child's peak RSS."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.phantom import write_phantom_study
from pipeline.types import Phase


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=60)
    parser.add_argument("--thickness", type=float, default=5.0)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--phases", default="NC,AP,VP,DP")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--config", help="livernode configuration file")
    args = parser.parse_args()
    phases = [Phase(p.strip().upper()) for p in args.phases.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-process-") as tmp:
        root = Path(tmp)
        study = write_phantom_study(root / "study", seed=args.seed, phases=phases, slices=args.slices,
                                    slice_thickness_mm=args.thickness, rows=args.matrix, columns=args.matrix)
        command = [sys.executable, "-m", "node.cli", "process", str(study.out_dir / "dicom"), "--out", str(root / "out")]
        if args.config:
            command += ["--config", args.config]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        wall_s = time.perf_counter() - started
        if result.returncode not in (0, 3):
            print(result.stderr[-4000:], file=sys.stderr)
            return 1
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
        findings = json.loads((root / "out" / "findings.json").read_text())
    print(f"study: {'+'.join(p.value for p in phases)}, {args.matrix}x{args.matrix}x{args.slices} at {args.thickness:g} mm")
    print(f"livernode process wall time (model load included): {wall_s:.1f} s; peak RSS {peak_mb:.0f} MB")
    print("| stage | seconds |\n|---|---|")
    for stage, seconds in findings.get("timings_s", {}).items():
        print(f"| {stage} | {seconds:.2f} |")
    print(f"lesions reported: {len(findings.get('lesions', []))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
