"""Does Orthanc's REST API stay responsive while the livernode plugin takes and processes a study?

    .venv/bin/python tests/benchmarks/bench_orthanc_plugin.py [--processor SPEC] [--busy-s 20]
        [--slices 24] [--size 128] [--idle-s 10] [--interval-s 0.05] [--worker-nice 10]

A real Orthanc (Debian packages, loopback, authentication on) runs the plugin with the node inside
it. One client thread times ``GET /system`` every `interval` seconds, first with Orthanc idle, then
while storescu sends a 4-phase phantom study, Orthanc waits for it to be stable, the plugin copies
it into the node's spool, the worker process processes it, and the result is uploaded back. Every
sample is tagged with the study's state at that moment (polled from ``/livernode/studies`` every
0.5 s in another thread). Reported per phase: samples, median, p95, p99 and max in ms, and the
ratio of the processing phase's median and p95 to idle's.

The default processor (`BusyReportProcessor`) keeps every core busy for `--busy-s` seconds in the
worker process, then writes the test SR: the model's CPU load without its weights. Pass
``--processor node.processing:StudyProcessor`` for the real pipeline (needs the bundled model).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipeline.phantom import write_phantom_study  # noqa: E402
from tests.integration.orthanc_plugin_peer import (  # noqa: E402
    BUSY_PROCESSOR,
    VIEWER,
    VIEWER_PASSWORD,
    PluginOrthanc,
)
from tests.integration.peers import NodeConfig, dcmtk_env  # noqa: E402


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class Prober(threading.Thread):
    """Times GET /system every interval; tags each sample with the current phase."""

    def __init__(self, url: str, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.interval_s = interval_s
        self.phase = "idle"
        self.samples: list[tuple[str, float]] = []
        self.stop = threading.Event()
        self.session = requests.Session()
        self.session.auth = (VIEWER, VIEWER_PASSWORD)

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            response = self.session.get(self.url + "/system", timeout=30)
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            self.samples.append((self.phase, elapsed * 1000))
            self.stop.wait(max(0.0, self.interval_s - elapsed))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processor", default=BUSY_PROCESSOR)
    parser.add_argument("--busy-s", type=float, default=20.0)
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--interval-s", type=float, default=0.05)
    parser.add_argument("--worker-nice", type=int, default=10, help="Livernode.WorkerNice (0: Orthanc's priority)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-orthanc-plugin-") as tmp:
        root = Path(tmp)
        write_phantom_study(root / "study", seed=31, phases=["NC", "AP", "VP", "DP"], slices=args.slices,
                            rows=args.size, columns=args.size)
        files = sorted((root / "study" / "dicom").rglob("*.dcm"))
        node = NodeConfig(data_dir=root / "data", destinations=[], processor_factory=args.processor,
                          timeout_s=1800, extra={"http": {"enabled": False}})
        orthanc = PluginOrthanc(root / "orthanc", node, plugin={"WorkerNice": args.worker_nice},
                                env={"LIVERNODE_TEST_BUSY_S": str(args.busy_s)})
        orthanc.start()
        try:
            prober = Prober(orthanc.url, args.interval_s)
            prober.start()
            time.sleep(args.idle_s)
            prober.phase = "receiving"
            sent = subprocess.run(["storescu", "-aet", "STORESCU", "-aec", "ORTHANC", "127.0.0.1",
                                   str(orthanc.dicom_port), *map(str, files)], env=dcmtk_env(),
                                  capture_output=True, text=True, timeout=600)
            if sent.returncode != 0:
                raise RuntimeError(sent.stderr[-1000:])
            prober.phase = "waiting-stable"
            study_uid = None
            started = time.time()
            poll = requests.Session()
            poll.auth = (VIEWER, VIEWER_PASSWORD)
            while time.time() - started < 1800:
                report = poll.get(orthanc.url + "/livernode/studies", timeout=30).json()
                states = {s["study_uid"]: s["state"] for s in report["studies"]}
                if states:
                    study_uid, state = next(iter(states.items()))
                    prober.phase = {"ready": "intake", "receiving": "intake"}.get(state, state)
                    if state in ("delivered", "quarantined", "undeliverable"):
                        break
                time.sleep(0.5)
            prober.phase = "after"
            time.sleep(2)
            prober.stop.set()
            prober.join(10)
            final = orthanc.node_state(study_uid) if study_uid else None
        finally:
            orthanc.stop()

    phases: dict[str, list[float]] = {}
    for phase, ms in prober.samples:
        phases.setdefault(phase, []).append(ms)
    summary = {}
    print(f"files: {len(files)} ({args.size}x{args.size}, 4 phases x {args.slices}); processor: {args.processor};"
          f" worker nice +{args.worker_nice};"
          f" final state: {final}; CPU cores: {os.cpu_count()}")
    print(f"{'phase':<16}{'n':>6}{'median ms':>11}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for phase in ("idle", "receiving", "waiting-stable", "intake", "processing", "delivering", "delivered", "after"):
        values = phases.get(phase)
        if not values:
            continue
        row = {"n": len(values), "median": statistics.median(values), "p95": _percentile(values, 95),
               "p99": _percentile(values, 99), "max": max(values)}
        summary[phase] = row
        print(f"{phase:<16}{row['n']:>6}{row['median']:>11.2f}{row['p95']:>9.2f}{row['p99']:>9.2f}{row['max']:>9.2f}")
    if "idle" in summary and "processing" in summary:
        ratio_median = summary["processing"]["median"] / summary["idle"]["median"]
        ratio_p95 = summary["processing"]["p95"] / summary["idle"]["p95"]
        print(f"processing / idle: median x{ratio_median:.2f}, p95 x{ratio_p95:.2f}")
        summary["ratio"] = {"median": ratio_median, "p95": ratio_p95}
    print(json.dumps(summary))
    return 0 if final == "delivered" else 1


if __name__ == "__main__":
    sys.exit(main())
