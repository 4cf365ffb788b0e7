"""Processor factories for the worker's unit tests (fault injection): each misbehaves one way."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import InputError


@dataclass
class Outcome:
    study_uid: str
    succeeded: bool
    result_files: list[Path]
    findings_path: Path | None
    message: str
    timings_s: dict[str, float] = field(default_factory=dict)


class Behaving:
    """Writes result.txt naming its pid and how many times it was built in this process."""

    builds = 0

    def __init__(self, settings: object) -> None:
        Behaving.builds += 1

    def process(self, input_dir: Path, output_dir: Path) -> Outcome:
        action = (Path(input_dir) / "action").read_text().strip() if (Path(input_dir) / "action").exists() else ""
        if action == "crash":
            os.abort()
        if action == "exit":
            os._exit(3)
        if action == "sleep":
            time.sleep(600)
        if action == "memory":
            hog = []
            while True:
                hog.append(bytearray(128 * 1024 * 1024))
        if action == "input":
            raise InputError("no venous phase")
        if action == "bug":
            raise KeyError("oops")
        out = Path(output_dir) / "result.txt"
        out.write_text(f"{os.getpid()} {Behaving.builds}")
        return Outcome("1.2.3", True, [out], None, "fine", {"stage": 0.01})


class FailsToBuild:
    def __init__(self, settings: object) -> None:
        raise RuntimeError("weights missing")


class WarmsUp(Behaving):
    """Counts its warm-ups (the worker calls ``warm_up`` once, before the first study)."""

    warm_ups = 0

    def warm_up(self) -> None:
        WarmsUp.warm_ups += 1

    def process(self, input_dir: Path, output_dir: Path) -> Outcome:
        outcome = super().process(input_dir, output_dir)
        outcome.result_files[0].write_text(f"{os.getpid()} {WarmsUp.warm_ups}")
        return outcome
