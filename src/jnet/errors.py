"""The errors jnet raises for bad input. Each message names the file or config field, what was
expected and what was found; the CLI prints it on one line and exits with code 2."""
from __future__ import annotations


class JnetError(Exception):
    """Base class of every error caused by user input (data, config, files)."""

    exit_code = 2


class ConfigError(JnetError, ValueError):
    """A config field has a bad value. Name the field, the rule and the nearest valid values."""


class DataError(JnetError):
    """A dataset file or folder is missing, corrupt or inconsistent. Name the path."""


class CheckpointError(JnetError):
    """A checkpoint is truncated, foreign, untrusted or does not match the model config."""


class ExportError(JnetError):
    """Export failed (parity, accuracy gate, metadata); nothing was written."""


class OutputError(JnetError):
    """An output could not be written (full or read-only disk, I/O error). Name the artefact."""

    reason = ""  # the cause alone (e.g. "No space left on device: ..."), for re-wording by callers
