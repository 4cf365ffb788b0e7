"""Receive throughput of `livernode serve` against DCMTK storescp, and end-to-end latency.

    .venv/bin/python tests/benchmarks/bench_node.py [--size 512] [--slices 60] [--repeats 3]
        [--processor node.processing:StudyProcessor]

Both receivers are fed by the same DCMTK storescu with the same files on loopback, once over one
association and once over four concurrent associations (the files split in four). storescp writes
every file to disk (no fsync); the node writes, fsyncs, renames and indexes each one before
answering. TCP_NODELAY=1 is set for the DCMTK tools (Nagle's algorithm otherwise adds ~40 ms per
instance to both). Then one study goes end to end: the time from the last instance acknowledged to
the last result object acknowledged by the destination (a storescp), split into the completeness
wait (stable_s), processing and delivery.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.integration.peers import (  # noqa: E402
    NodeConfig,
    NodeProcess,
    StoreSCP,
    dcmtk_env,
    wait_for,
)


def _send(port: int, groups: list[list[Path]], called_ae: str) -> float:
    """Run one storescu per group concurrently; wall time until all have finished."""
    started = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aet", "STORESCU", "-aec", called_ae, "127.0.0.1", str(port),
                               *map(str, g)], env=dcmtk_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for g in groups]
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.perf_counter() - started
    for proc, err in zip(procs, errors):
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {err[-500:]}")
    return elapsed


def _split(files: list[Path], parts: int) -> list[list[Path]]:
    return [files[i::parts] for i in range(parts)]


def _storescp_run(folder: Path, groups: list[list[Path]]) -> float:
    shutil.rmtree(folder, ignore_errors=True)
    peer = StoreSCP(folder, ae_title="STORESCP").start()
    try:
        return _send(peer.port, groups, "STORESCP")
    finally:
        peer.stop()


def _node_run(folder: Path, groups: list[list[Path]]) -> float:
    shutil.rmtree(folder, ignore_errors=True)
    config = NodeConfig(data_dir=folder / "data", destinations=[], stable_s=3600.0,
                        allowed_calling_aes=("STORESCU",))
    node = NodeProcess(config, folder).start()
    try:
        elapsed = _send(node.dicom_port, groups, "LIVERNODE")
        db = node.database()
        count = len(db.instance_uids())
        db.close()
        expected = sum(len(g) for g in groups)
        if count != expected:
            raise RuntimeError(f"node indexed {count} of {expected}")
        return elapsed
    finally:
        node.stop()


def _end_to_end(work: Path, files: list[Path], processor: str, stable_s: float) -> dict[str, float]:
    pacs = StoreSCP(work / "e2e-pacs", ae_title="PACS").start()
    config = NodeConfig(data_dir=work / "e2e" / "data", stable_s=stable_s, processor_factory=processor,
                        timeout_s=1800, allowed_calling_aes=("STORESCU",),
                        destinations=[{"kind": "cstore", "name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                       "port": pacs.port}])
    node = NodeProcess(config, work / "e2e").start()
    try:
        time.sleep(5)  # let the worker load its model, as a running node would have
        _send(node.dicom_port, [files], "LIVERNODE")
        last_ack = time.time()
        import pydicom

        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        wait_for(lambda: node.study_state(study_uid) in ("delivered", "quarantined", "undeliverable"), 1800,
                 "the study to finish", interval_s=0.05)
        db = node.database()
        times = db.study_times(study_uid)
        state = db.study_state(study_uid).value
        db.close()
        return {
            "state": state,
            "completeness_wait_s": times["ready"] - times["last_received"],
            "processing_s": times["processed"] - times["ready"],
            "delivery_s": (times["delivered"] or float("nan")) - times["processed"],
            "last_ack_to_delivered_s": (times["delivered"] or float("nan")) - last_ack,
            "results_received": len(list(pacs.folder.iterdir())),
        }
    finally:
        node.stop()
        pacs.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="rows = columns of each slice (default 512)")
    parser.add_argument("--slices", type=int, default=60, help="slices per phase (4 phases; default 60)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processor", default="node.processing:StudyProcessor",
                        help="processor factory for the end-to-end run ('' to skip it)")
    parser.add_argument("--stable-s", type=float, default=2.0, help="completeness quiet time for end to end")
    parser.add_argument("--e2e-size", type=int, default=256)
    parser.add_argument("--e2e-slices", type=int, default=40)
    args = parser.parse_args()

    from pipeline.phantom import write_phantom_study

    work = Path(tempfile.mkdtemp(prefix="bench-node-"))
    try:
        write_phantom_study(work / "study", seed=7, slices=args.slices, rows=args.size, columns=args.size)
        files = sorted((work / "study" / "dicom").rglob("*.dcm"))
        total_mb = sum(f.stat().st_size for f in files) / 1e6
        print(f"{len(files)} files, {total_mb:.1f} MB ({args.size}x{args.size}, 4 phases x {args.slices})")
        rows = []
        for associations in (1, 4):
            groups = _split(files, associations)
            ref = [_storescp_run(work / "storescp", groups) for _ in range(args.repeats)]
            ours = [_node_run(work / "node", groups) for _ in range(args.repeats)]
            ref_s, ours_s = statistics.median(ref), statistics.median(ours)
            rows.append({
                "associations": associations,
                "storescp_s": ref_s, "storescp_inst_per_s": len(files) / ref_s, "storescp_mb_per_s": total_mb / ref_s,
                "node_s": ours_s, "node_inst_per_s": len(files) / ours_s, "node_mb_per_s": total_mb / ours_s,
                "node_time_over_storescp": ours_s / ref_s,
            })
        print(f"{'assoc':>5} {'storescp s':>10} {'inst/s':>8} {'MB/s':>7} | {'node s':>7} {'inst/s':>8} "
              f"{'MB/s':>7} | node/storescp time")
        for r in rows:
            print(f"{r['associations']:>5} {r['storescp_s']:>10.2f} {r['storescp_inst_per_s']:>8.0f} "
                  f"{r['storescp_mb_per_s']:>7.1f} | {r['node_s']:>7.2f} {r['node_inst_per_s']:>8.0f} "
                  f"{r['node_mb_per_s']:>7.1f} | {r['node_time_over_storescp']:.2f}x")
        report = {"files": len(files), "megabytes": total_mb, "receive": rows}
        if args.processor:
            write_phantom_study(work / "e2e-study", seed=8, slices=args.e2e_slices, rows=args.e2e_size,
                                columns=args.e2e_size)
            e2e_files = sorted((work / "e2e-study" / "dicom").rglob("*.dcm"))
            e2e = _end_to_end(work, e2e_files, args.processor, args.stable_s)
            report["end_to_end"] = {"processor": args.processor, "files": len(e2e_files), **e2e}
            print(f"end to end ({args.processor}, {len(e2e_files)} files {args.e2e_size}x{args.e2e_size}): "
                  f"state {e2e['state']}; completeness wait {e2e['completeness_wait_s']:.2f} s, processing "
                  f"{e2e['processing_s']:.2f} s, delivery {e2e['delivery_s']:.2f} s; last ack -> delivered "
                  f"{e2e['last_ack_to_delivered_s']:.2f} s")
        print(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
