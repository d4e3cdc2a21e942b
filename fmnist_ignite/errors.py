"""The exceptions fmnist_ignite raises, each with a message a user can act on.

Library code raises these; only the command line turns them into one line on stderr and an
exit code (:attr:`FmnistIgniteError.exit_code`).
"""

from __future__ import annotations

import sys
from pathlib import Path


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none (for one-line errors)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def all_lines(error: BaseException, limit: int = 400) -> str:
    """An exception's message on one line, its lines joined by ``; `` (cut at ``limit`` characters).

    For errors whose first line is a heading: ``load_state_dict`` says what does not fit on the lines after it.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = "; ".join(lines) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def program_name() -> str:
    """The program as it was invoked, for the hints in messages: ``fmnist-ignite`` or ``python -m fmnist_ignite``."""
    return "fmnist-ignite" if sys.argv and Path(sys.argv[0]).name == "fmnist-ignite" else "python -m fmnist_ignite"


class FmnistIgniteError(Exception):
    """Base class: a problem the user can fix, described in one line."""

    exit_code = 1


class ConfigError(FmnistIgniteError):
    """The configuration or the command line is invalid (a usage error)."""

    exit_code = 2


class RunDirError(FmnistIgniteError):
    """The run directory cannot be used as asked (exists already, missing, locked, not writable)."""

    exit_code = 2


class DataError(FmnistIgniteError):
    """A data set is missing, truncated or malformed."""


class CheckpointError(FmnistIgniteError):
    """No usable checkpoint or model file could be loaded."""


class TrainingError(FmnistIgniteError):
    """Training cannot go on (for example, the loss became NaN)."""


class ExportError(FmnistIgniteError):
    """A trained model cannot be exported (the ``onnx`` package is missing, or the exporter refuses the model)."""


class SweepError(FmnistIgniteError):
    """A sweep cannot run: Optuna is missing, or its study's storage cannot be opened."""


class RunError(FmnistIgniteError):
    """An unexpected error inside a run (a bug, or a user handler's error), described in one line.

    The original exception is its ``__cause__`` (the command line shows its traceback with ``-v``).
    """
