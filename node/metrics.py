"""In-process counters and stage durations, rendered in the Prometheus text format.

One `Metrics` object per node process, passed to the parts that count (no module state).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Mapping


class Metrics:
    """Thread-safe counters and duration summaries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self._durations: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])  # count, sum, max

    def count(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add `amount` to counter `name` with `labels`."""
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] += amount

    def observe(self, stage: str, seconds: float) -> None:
        """Record one duration of `stage`."""
        with self._lock:
            entry = self._durations[stage]
            entry[0] += 1
            entry[1] += seconds
            entry[2] = max(entry[2], seconds)

    def counter(self, name: str, **labels: str) -> float:
        """Current value of a counter."""
        with self._lock:
            return self._counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self, study_states: Mapping[str, int], outbox_states: Mapping[str, int],
               gauges: Mapping[str, float]) -> str:
        """Prometheus exposition text: counters, study and outbox states, stage durations."""
        lines: list[str] = []
        with self._lock:
            counters = dict(self._counters)
            durations = {k: list(v) for k, v in self._durations.items()}
        seen: set[str] = set()
        for (name, labels), value in sorted(counters.items()):
            metric = f"livernode_{name}_total"
            if metric not in seen:
                lines.append(f"# TYPE {metric} counter")
                seen.add(metric)
            label_text = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{metric}{{{label_text}}} {value:g}" if label_text else f"{metric} {value:g}")
        lines.append("# TYPE livernode_studies gauge")
        for state, value in sorted(study_states.items()):
            lines.append(f'livernode_studies{{state="{state}"}} {value}')
        lines.append("# TYPE livernode_outbox_items gauge")
        for state, value in sorted(outbox_states.items()):
            lines.append(f'livernode_outbox_items{{state="{state}"}} {value}')
        for name, value in sorted(gauges.items()):
            lines.append(f"# TYPE livernode_{name} gauge")
            lines.append(f"livernode_{name} {value:g}")
        lines.append("# TYPE livernode_stage_duration_seconds summary")
        for stage, (count, total, longest) in sorted(durations.items()):
            lines.append(f'livernode_stage_duration_seconds_count{{stage="{stage}"}} {count:g}')
            lines.append(f'livernode_stage_duration_seconds_sum{{stage="{stage}"}} {total:.6f}')
            lines.append(f'livernode_stage_duration_seconds_max{{stage="{stage}"}} {longest:.6f}')
        return "\n".join(lines) + "\n"
