"""What a person sees: the library's log lines on a terminal, a pipe or a notebook, and errors as one line.

The library logs (the run's record on logger ``fmnist_ignite.run``, the outcome on
``fmnist_ignite.run.outcome``, warnings anywhere under ``fmnist_ignite``) and raises
:class:`~fmnist_ignite.errors.FmnistIgniteError`; this module decides where those lines go and
turns errors into ``error: ...`` and an exit code.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

from ..errors import FmnistIgniteError, LostContact, RunError

# The loggers whose levels the console sets (and puts back when it is done).
LOGGERS = ("fmnist_ignite", "fmnist_ignite.run.outcome", "fmnist_ignite.interrupt", "ignite")
INTERRUPTED = "interrupted (Ctrl-C)"
# Ignite's Engine lines that say again what the run says (an error, a stop on a signal or early stopping).
IGNITE_SAYS_TWICE = (
    "Engine run is terminating due to exception",
    "Current run is terminating due to exception",
    "Terminate signaled",
)


class Console(logging.Handler):
    """Where the program's lines go: what a run says to stdout, warnings and errors to stderr.

    What a run says is its record (logger ``fmnist_ignite.run``: its directory, one line per epoch,
    the report, and from ``fmnist_ignite.run.outcome`` the test line and where the results are)
    and the notes around it (where a data set was downloaded or extracted). Warnings are
    prefixed ``warning:``. Each line is written as ``tqdm.write`` writes, which clears a progress bar
    (drawn on stderr) first and draws it again after, so no line is ever glued into the bar.

    Args:
        lines: where what a run says goes: ``stdout``, or ``stderr`` where stdout holds another
            command's results (a sweep's table).
    """

    def __init__(self, lines: Literal["stdout", "stderr"] = "stdout") -> None:
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            results = record.levelno < logging.WARNING and self.lines == "stdout"
            stream = sys.stdout if results else sys.stderr
            if logging.WARNING <= record.levelno < logging.ERROR:
                text = f"warning: {text}"
            from tqdm import tqdm

            # As tqdm.write, but each line in one write: the lines of a sweep's workers, which share the
            # stream, are never glued together.
            with tqdm.external_write_mode(file=stream):
                stream.write(text + "\n")
                stream.flush()
        except Exception:
            self.handleError(record)


def process_rank() -> int:
    """This process's rank in a run that ``torchrun`` started (0 otherwise; spawned processes are told theirs)."""
    from ..parallel import launched_by_torchrun

    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def setup_logging(verbosity: int, lines: Literal["stdout", "stderr"] = "stdout", rank: int | None = None) -> None:
    """Print the library's lines (see :class:`Console`); ``-1`` keeps the outcome only, ``1`` adds detail.

    In a data-parallel run the processes other than rank 0 print their warnings and errors only,
    each line starting with ``rank N:``.
    """
    rank = process_rank() if rank is None else rank
    console = Console(lines)
    console.setFormatter(logging.Formatter(rank_prefix(rank).replace("%", "%%") + "%(message)s"))
    logging.basicConfig(handlers=[console], level=logging.WARNING, force=True)
    level = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}[max(-1, min(1, verbosity))]
    outcome = min(level, logging.INFO)
    if rank > 0:
        level = outcome = logging.WARNING
        logging.getLogger("fmnist_ignite.interrupt").setLevel(logging.ERROR)  # rank 0 says it
    logging.getLogger("fmnist_ignite").setLevel(level)
    logging.getLogger("fmnist_ignite.run.outcome").setLevel(outcome)
    logging.getLogger("ignite").setLevel(logging.INFO if verbosity > 0 and level < logging.WARNING else logging.WARNING)
    # MLflow configures its own loggers when imported (with logging.mlflow), from this variable.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbosity > 0 else "WARNING")
    # Errors and stops are reported here, once; Ignite's log lines about them would say it twice.
    logging.getLogger("ignite.engine.engine.Engine").addFilter(
        lambda record: not record.getMessage().startswith(IGNITE_SAYS_TWICE)
    )
    threading.excepthook = functools.partial(_thread_error, threading.excepthook)


def _thread_error(previous: Callable[[threading.ExceptHookArgs], Any], args: threading.ExceptHookArgs) -> None:
    """TensorBoard's writer thread hands its error (a full disk) to the writer's next call, which reports it:
    its own traceback goes to ``-v``. Other threads' errors are printed as Python prints them."""
    if args.thread is not None and type(args.thread).__module__.startswith("tensorboard."):
        error = args.exc_value or args.exc_type()
        logging.getLogger(__name__).debug("TensorBoard's writer thread stopped", exc_info=error)
        return
    previous(args)


@contextmanager
def logging_restored() -> Iterator[None]:
    """Undo :func:`setup_logging` on the way out.

    The program may run inside a notebook, a test or another program: its console and levels
    must not go on printing that program's log lines after the command has ended.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    named = [logging.getLogger(name) for name in LOGGERS]
    levels = [logger.level for logger in named]
    engine = logging.getLogger("ignite.engine.engine.Engine")
    filters = engine.filters[:]
    mlflow_level = os.environ.get("MLFLOW_LOGGING_LEVEL")
    thread_hook = threading.excepthook
    try:
        yield
    finally:
        threading.excepthook = thread_hook
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        for logger, saved in zip(named, levels, strict=True):
            logger.setLevel(saved)
        engine.filters[:] = filters
        if mlflow_level is None:
            os.environ.pop("MLFLOW_LOGGING_LEVEL", None)


def current_verbosity() -> int:
    """The verbosity the package's logging stands at (``-1`` warnings and the outcome, ``0`` the run's record,
    ``1`` detail), for processes started to do part of the work."""
    level = logging.getLogger("fmnist_ignite").getEffectiveLevel()
    return 1 if level <= logging.DEBUG else 0 if level <= logging.INFO else -1


def rank_prefix(rank: int) -> str:
    """``rank N: `` before the lines of a data-parallel run's other processes."""
    return f"rank {rank}: " if rank > 0 else ""


def one_line(error: BaseException) -> str:
    """An error's message on one line."""
    return " ".join(str(error).split("\n"))


def reported(command: Callable[[], int], verbosity: int, rank: int = 0) -> int:
    """Run ``command``; an error of the package becomes one ``error:`` line on stderr and its exit code.

    With ``verbosity`` 1 the traceback of the error's cause comes first. In a data-parallel run,
    rank 0 says what went wrong; the other processes only with ``-v``, or when they lost contact with
    the others (rank 0 may be gone). Ctrl-C is exit code 130.
    """
    quiet = rank > 0 and verbosity <= 0
    try:
        return int(command())
    except FmnistIgniteError as err:
        if getattr(err, "reported", False):
            return err.exit_code  # a process of the run said it already
        quiet = quiet and not isinstance(err, LostContact)
        if verbosity > 0 and err.__cause__ is not None:
            traceback.print_exception(err.__cause__)
        elif isinstance(err, RunError):
            err.args = (f"{err} (run with -v for the traceback)",)
        if not quiet:
            print(f"{rank_prefix(rank)}error: {one_line(err)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        if not quiet:
            print(f"{rank_prefix(rank)}error: {INTERRUPTED}", file=sys.stderr)
        return 130
