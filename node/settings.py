"""The node's configuration: one YAML file validated with pydantic.

Every section nests the frozen dataclass that the lower package defines for itself, so a value is
checked once, where it is used. Unknown keys are errors (``extra="forbid"``). A file only needs the
keys it changes: everything else takes the defaults documented in ``config/default.yaml``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.config import BackendConfig, CascadeConfig, PhaseRulesConfig, RegistrationConfig, SeriesConfig
from node.results_config import ResultsConfig
from node.node_config import (
    CompletenessConfig,
    DeliveryConfig,
    Destinations,
    DicomConfig,
    HttpConfig,
    SpoolConfig,
    WorkerConfig,
)

#: Environment variable naming the configuration file when ``--config`` is not given.
CONFIG_ENV_VAR = "LIVERNODE_CONFIG"


class Settings(BaseModel):
    """Root of the configuration tree."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir_path: Path = Field(
        default=Path("livernode-data"),
        description="where the node keeps received instances, its database and results",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    series: SeriesConfig = Field(default_factory=SeriesConfig)
    phases: PhaseRulesConfig = Field(default_factory=PhaseRulesConfig)
    registration: RegistrationConfig = Field(default_factory=RegistrationConfig)
    model: BackendConfig = Field(default_factory=BackendConfig)
    results: ResultsConfig = Field(default_factory=ResultsConfig)
    # The DICOM node (node/node_config.py, docs/node.md).
    dicom: DicomConfig = Field(default_factory=DicomConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    completeness: CompletenessConfig = Field(default_factory=CompletenessConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    destinations: Destinations = ()
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)


@dataclass(frozen=True)
class ConfigProblem:
    """One invalid value: where it is (dotted path) and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SettingsError(Exception):
    """The configuration cannot be used; holds every problem found."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(str(p) for p in problems))


def _problems_from_validation(error: ValidationError) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    for item in error.errors():
        location = [str(part) for part in item["loc"]]
        message = str(item["msg"])
        original = (item.get("ctx") or {}).get("error")
        if original is not None:
            # Dataclass checks raise "field: message"; fold the field into the path.
            text = str(original)
            field_name, sep, rest = text.partition(": ")
            if sep and field_name.isidentifier():
                location.append(field_name)
                message = rest
            else:
                message = text
        elif item["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            message = "unknown setting"
        problems.append(ConfigProblem(".".join(location) or "(root)", message))
    return problems


def validate_settings(raw: Any, source: str = "<config>") -> Settings:
    """Validate an already parsed mapping; raise SettingsError listing every problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SettingsError(source, [ConfigProblem("(root)", "the file must hold a mapping of settings")])
    try:
        return Settings.model_validate(raw)
    except ValidationError as error:
        raise SettingsError(source, _problems_from_validation(error)) from None


def load_settings(path: Path | None) -> Settings:
    """Load settings from `path`; with None, the defaults."""
    if path is None:
        return Settings()
    source = str(path)
    if not path.is_file():
        raise SettingsError(source, [ConfigProblem("(file)", "no such file")])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(file)"
        raise SettingsError(source, [ConfigProblem(where, f"not valid YAML: {getattr(error, 'problem', error)}")])
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(source, [ConfigProblem("(file)", f"cannot be read: {error}")]) from None
    return validate_settings(raw, source)


def resolve_config_path(cli_value: str | None, environ: dict[str, str] | None = None) -> Path | None:
    """The configuration file to use: ``--config`` first, then ``$LIVERNODE_CONFIG``, else none."""
    if cli_value:
        return Path(cli_value)
    env = os.environ if environ is None else environ
    value = env.get(CONFIG_ENV_VAR, "").strip()
    return Path(value) if value else None
