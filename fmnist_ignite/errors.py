"""The exceptions fmnist_ignite raises, each with a message a user can act on.

Library code raises these; only the command line turns them into one line on stderr and an
exit code (:attr:`FmnistIgniteError.exit_code`).
"""

from __future__ import annotations

import difflib
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
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
    """The program as it was invoked, as a command that works when pasted into a shell.

    ``fmnist-ignite`` under the console script; else ``PYTHON -m fmnist_ignite``, where ``PYTHON``
    is ``python`` when that is what the shell finds on ``PATH`` (the same path as the running
    interpreter's, links not followed: a virtual environment's ``python`` links to the system's),
    else the running interpreter's path, relative to the current folder when it lies inside it
    (``.venv/bin/python``), shell-quoted.
    """
    if sys.argv and Path(sys.argv[0]).name == "fmnist-ignite":
        return "fmnist-ignite"
    return f"{python_command()} -m fmnist_ignite"


def python_command() -> str:
    """The running interpreter as a shell command: ``python``, ``.venv/bin/python`` or its quoted absolute path."""
    if not sys.executable:  # an embedded interpreter that does not know its own path
        return "python"
    executable = os.path.abspath(sys.executable)
    found = shutil.which("python")
    if found is not None and os.path.abspath(found) == executable:
        return "python"
    here = os.getcwd()
    inside = executable.startswith(here.rstrip(os.sep) + os.sep)
    return shlex.quote(os.path.relpath(executable, here) if inside else executable)


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


class LostContact(RunError):
    """The processes of a data-parallel run lost contact with one another: a process or a machine of the run
    stopped, or the network between them failed.

    Every process that is left says it, not rank 0 alone: rank 0 may be the one that stopped.
    """


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'CHOICE'?)``, the choice closest to ``name``, for a one-line error; ``""`` if none is."""
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
