"""Structured (JSON lines) logging for the node. Logs name studies and series by UID only.

Callers pass identifiers with ``extra={"study_uid": ..., "series_uid": ...}``; nothing in the node
logs patient names, IDs or birth dates, and pynetdicom's identifier logging is turned off.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

_EXTRA_FIELDS = ("study_uid", "series_uid", "destination", "attempt", "state")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any known extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in _EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, stream: TextIO | None = None) -> None:
    """Send every log record to `stream` (default stderr) as JSON lines at `level`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # pynetdicom logs every DIMSE message at INFO and data sets at DEBUG: keep it to warnings.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
