"""The node's subcommands: ``serve``, ``status``, ``requeue STUDY``, ``resend STUDY``.

`register(subparsers)` adds them to the ``livernode`` parser (node/cli.py). STUDY is a Study
Instance UID or the study's number from ``livernode status``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from types import FrameType

from node.settings import Settings, load_settings, resolve_config_path

EXIT_OK = 0
EXIT_FAILURE = 1


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(resolve_config_path(getattr(args, "config", None)))


def _open_database(settings: Settings):
    from node.database import Database
    from node.service import database_path

    path = database_path(settings)
    if not path.is_file():
        print(f"no node database at {path} (has the node run with this configuration?)", file=sys.stderr)
        return None
    return Database(path)


def _cmd_serve(args: argparse.Namespace) -> int:
    from node.logging_setup import configure_logging
    from node.service import NodeService

    settings = _settings(args)
    configure_logging("DEBUG" if getattr(args, "verbose", False) else settings.log_level)
    service = NodeService(settings)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    addresses = service.start()
    print(json.dumps({"event": "listening", "dicom_port": addresses.dicom_port, "http_port": addresses.http_port}),
          flush=True)
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        service.stop()
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    database = _open_database(_settings(args))
    if database is None:
        return EXIT_FAILURE
    rows = database.study_rows()
    if args.json:
        print(json.dumps([row.__dict__ for row in rows], indent=1))
        return EXIT_OK
    print(f"{'#':>4}  {'state':<13} {'gen':>3} {'try':>3} {'inst':>5} {'ser':>3}  {'outbox':<22} study UID / reason")
    for row in rows:
        outbox = ",".join(f"{k}:{v}" for k, v in sorted(row.outbox.items())) or "-"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.updated_at))
        print(f"{row.study_id:>4}  {row.state:<13} {row.generation:>3} {row.attempts:>3} {row.instances:>5} "
              f"{row.series:>3}  {outbox:<22} {row.study_uid}")
        if row.reason:
            print(f"{'':>36}{when}  {row.reason}")
    return EXIT_OK


def _cmd_requeue(args: argparse.Namespace) -> int:
    from node.database import StudyNotFound

    database = _open_database(_settings(args))
    if database is None:
        return EXIT_FAILURE
    try:
        uid = database.requeue(args.study)
    except (StudyNotFound, ValueError) as error:
        print(str(error), file=sys.stderr)
        return EXIT_FAILURE
    print(f"study {uid} queued for processing")
    return EXIT_OK


def _cmd_resend(args: argparse.Namespace) -> int:
    from node.database import StudyNotFound

    database = _open_database(_settings(args))
    if database is None:
        return EXIT_FAILURE
    try:
        uid, count = database.resend(args.study)
    except (StudyNotFound, ValueError) as error:
        print(str(error), file=sys.stderr)
        return EXIT_FAILURE
    print(f"study {uid}: {count} object(s) queued for delivery again")
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add serve, status, requeue and resend to the ``livernode`` parser."""
    serve = subparsers.add_parser("serve", help="run the DICOM node (listener, worker, delivery)")
    serve.add_argument("--config", help="YAML configuration file")
    serve.set_defaults(handler=_cmd_serve)

    status = subparsers.add_parser("status", help="list received studies and their states")
    status.add_argument("--config", help="YAML configuration file")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_cmd_status)

    requeue = subparsers.add_parser("requeue", help="process a study again (attempts reset)")
    requeue.add_argument("study", help="Study Instance UID or the number from `livernode status`")
    requeue.add_argument("--config", help="YAML configuration file")
    requeue.set_defaults(handler=_cmd_requeue)

    resend = subparsers.add_parser("resend", help="send a study's results to every destination again")
    resend.add_argument("study", help="Study Instance UID or the number from `livernode status`")
    resend.add_argument("--config", help="YAML configuration file")
    resend.set_defaults(handler=_cmd_resend)
