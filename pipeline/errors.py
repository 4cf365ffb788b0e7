"""Errors raised by the pipeline. Each carries a message a user can act on."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class ConfigError(PipelineError, ValueError):
    """A configuration value is invalid; the message starts with the field name."""


class InputError(PipelineError):
    """The input data cannot be processed (not CT, no venous phase, missing slices, ...)."""
