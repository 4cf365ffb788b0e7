"""Settings of the result objects the node writes (``results`` section)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator


class ResultsConfig(BaseModel):
    """What goes back to PACS for an analysed study."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: a SEG on every phase received (viewers show a SEG over the series it references), not
    #: only on the venous reference phase.
    phase_segs: bool = True
    #: BINARY (Segmentation Storage, widest reader support) or LABELMAP.
    segmentation_type: Literal["BINARY", "LABELMAP"] = "BINARY"
    #: UID root of the site (ending in "."); empty: 2.25 UUID-derived UIDs.
    uid_prefix: str | None = None

    @field_validator("uid_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.endswith(".") or not all(part.isdigit() for part in value[:-1].split(".")) or len(value) > 30:
            raise ValueError("must be a UID root of digits and dots, ending in '.', at most 30 characters")
        return value
