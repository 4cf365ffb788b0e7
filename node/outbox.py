"""The outboxes: pending result objects per destination, tried with exponential backoff.

Each round takes the due items of every destination, hands them to that destination's sender and
records the per-object outcome. After `max_attempts` (or at once for a refusal a retry cannot fix)
an item is dead-lettered: the result stays on disk and `livernode resend STUDY` queues it again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

from node.database import Database
from node.delivery import Sender
from node.metrics import Metrics
from node.node_config import DeliveryConfig

log = logging.getLogger(__name__)


class Outbox:
    """Delivers due outbox items, one destination at a time."""

    def __init__(self, database: Database, senders: Mapping[str, Sender], data_dir: Path,
                 config: DeliveryConfig, metrics: Metrics) -> None:
        self.database = database
        self.senders = dict(senders)
        self.data_dir = data_dir
        self.config = config
        self.metrics = metrics

    def deliver_due(self, now: float | None = None) -> int:
        """One round over every destination. Returns the number of items tried."""
        tried = 0
        backoff = (self.config.backoff_s, self.config.backoff_factor, self.config.backoff_max_s)
        for name, sender in self.senders.items():
            items = self.database.due_outbox(name, now)
            if not items:
                continue
            started = time.perf_counter()
            results = sender.send(items, self.data_dir)
            self.metrics.observe(f"deliver_{name}", time.perf_counter() - started)
            delivered = self.database.record_sends(results, self.config.max_attempts, backoff)
            tried += len(items)
            for item, result in zip(items, results):
                outcome = "sent" if result.ok else ("retry" if result.transient else "refused")
                self.metrics.count("objects_delivered" if result.ok else "delivery_failures",
                                   destination=name)
                level = logging.INFO if result.ok else logging.WARNING
                log.log(level, "%s %s of %s to %s: %s", outcome, item.action, item.sop_instance_uid, name,
                        result.status, extra={"study_uid": item.study_uid})
            for study_id in delivered:
                self.metrics.count("studies_delivered")
                log.info("study %d delivered to every destination", study_id)
        return tried
