"""Configuration sections of the DICOM node: listener, spool, completeness, worker, delivery, HTTP.

Each section is a frozen pydantic model with ``extra="forbid"``; `node.settings.Settings` nests
them. Names carry units (``_s``, ``_mb``). Defaults are listed with comments in
``config/default.yaml``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII but backslash, 1-16 chars


def _check_ae(value: str) -> str:
    if not _AE_RE.match(value) or not value.strip():
        raise ValueError(f"{value!r} is not an AE title (1-16 printable characters, no backslash)")
    return value.strip()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Section):
    """Optional TLS on the listener. Off unless ``enabled``."""

    enabled: bool = False
    certificate_path: str = ""
    private_key_path: str = ""
    ca_path: str = ""
    require_client_certificate: bool = False

    @model_validator(mode="after")
    def _paths_when_enabled(self) -> "TlsConfig":
        if self.enabled and not (self.certificate_path and self.private_key_path):
            raise ValueError("certificate_path and private_key_path are needed when TLS is enabled")
        if self.require_client_certificate and not self.ca_path:
            raise ValueError("ca_path is needed to verify client certificates")
        return self


class DicomConfig(_Section):
    """The DICOM listener (storage SCP and verification)."""

    ae_title: str = "LIVERNODE"
    host: str = "0.0.0.0"
    port: int = Field(default=11112, ge=0, le=65535)
    #: Calling AE titles allowed to associate; empty: any.
    allowed_calling_aes: tuple[str, ...] = ()
    #: Peer IP addresses allowed to associate; empty: any.
    allowed_peer_addresses: tuple[str, ...] = ()
    #: Refuse associations whose called AE title is not ``ae_title``.
    check_called_ae: bool = True
    max_associations: int = Field(default=8, ge=1)
    acse_timeout_s: float = Field(default=30.0, gt=0)
    dimse_timeout_s: float = Field(default=60.0, gt=0)
    network_timeout_s: float = Field(default=60.0, gt=0)
    #: Largest PDU we accept (bytes); 0: unlimited.
    max_pdu_bytes: int = Field(default=262144, ge=0)
    #: Storage SOP classes that are not CT: "refuse" (status 0x0122) or "ignore" (stored, not processed).
    other_sop_classes: Literal["refuse", "ignore"] = "refuse"
    tls: TlsConfig = Field(default_factory=TlsConfig)

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return _check_ae(value)

    @field_validator("allowed_calling_aes")
    @classmethod
    def _aes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_ae(v) for v in value)


class SpoolConfig(_Section):
    """Where received instances are kept, and the disk space always left free."""

    #: Refuse instances (0xA700) when less than this would stay free on the spool's filesystem.
    free_space_reserve_mb: float = Field(default=1024.0, ge=0)
    #: fsync every file and its folder before answering success (off only for experiments).
    fsync: bool = True


class CompletenessConfig(_Section):
    """When a study is complete enough to process."""

    #: Phases that must be present (from the series' headers) before a study is processed.
    required_phases: tuple[Literal["NC", "AP", "VP", "DP"], ...] = ("VP",)
    #: A study is ready once no instance arrived for this long (and the phases are present).
    stable_s: float = Field(default=30.0, gt=0)
    #: From the first instance: after this the study proceeds without the required phases
    #: (still after being quiet for stable_s).
    deadline_s: float = Field(default=600.0, gt=0)
    #: How often the scheduler looks at the studies.
    poll_s: float = Field(default=0.5, gt=0)


class WorkerConfig(_Section):
    """The processing worker and the job queue."""

    #: "module:attribute" of the class (or callable) making the study processor, once per worker.
    processor_factory: str = "node.processing:StudyProcessor"
    #: Wall-clock limit of one study; past it the worker is killed and the attempt fails.
    timeout_s: float = Field(default=1800.0, gt=0)
    #: Attempts before a study is quarantined.
    max_attempts: int = Field(default=3, ge=1)
    #: Wait before retry n is backoff_s * backoff_factor ** (n - 1), at most backoff_max_s.
    backoff_s: float = Field(default=30.0, ge=0)
    backoff_factor: float = Field(default=2.0, ge=1)
    backoff_max_s: float = Field(default=900.0, ge=0)
    #: Address-space limit of the worker process in MB (0: none); beyond it allocation fails.
    memory_limit_mb: int = Field(default=0, ge=0)
    #: Longest wait for the worker to load its model.
    start_timeout_s: float = Field(default=300.0, gt=0)

    @field_validator("processor_factory")
    @classmethod
    def _factory(cls, value: str) -> str:
        module, sep, attr = value.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"{value!r} must be 'module:attribute'")
        return value


class CStoreDestination(_Section):
    """A DICOM C-STORE destination (a PACS)."""

    kind: Literal["cstore"] = "cstore"
    name: str
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    #: Our AE title when calling it; empty: dicom.ae_title.
    calling_ae_title: str = ""
    timeout_s: float = Field(default=60.0, gt=0)

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return _check_ae(value)


class OrthancDestination(_Section):
    """An Orthanc server, through its REST API."""

    kind: Literal["orthanc"] = "orthanc"
    name: str
    url: str
    username: str = ""
    password: str = ""
    timeout_s: float = Field(default=60.0, gt=0)
    #: After a reprocess, delete the results it superseded from this Orthanc.
    delete_superseded: bool = True


Destination = Annotated[CStoreDestination | OrthancDestination, Field(discriminator="kind")]


class DeliveryConfig(_Section):
    """Retries of the outboxes."""

    max_attempts: int = Field(default=8, ge=1)
    backoff_s: float = Field(default=5.0, ge=0)
    backoff_factor: float = Field(default=2.0, ge=1)
    backoff_max_s: float = Field(default=600.0, ge=0)
    poll_s: float = Field(default=0.5, gt=0)


class HttpConfig(_Section):
    """Health and Prometheus metrics endpoint (loopback by default)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8089, ge=0, le=65535)


def check_destination_names(destinations: tuple) -> tuple:
    """Destination names must be unique (they key the outboxes)."""
    names = [d.name for d in destinations]
    if len(set(names)) != len(names):
        raise ValueError("destination names must be unique")
    for name in names:
        if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", name):
            raise ValueError(f"destination name {name!r}: use letters, digits, '_', '.', '-'")
    return destinations


#: The configured destinations: a tuple with unique names.
Destinations = Annotated[tuple[Destination, ...], AfterValidator(check_destination_names)]
