"""A sweep as the command line runs it: plan it, run :func:`fmnist_ignite.sweep.work` in this process or in
worker processes, return the table.

With worker processes, this process says one line as each trial ends (``trial 3/16 done: ...``, see
:class:`~fmnist_ignite.sweep.results.FinishedTrials`); the workers say only their warnings and errors, each
line prefixed ``worker N:`` (with ``-v``, their runs' records too). Each run's record (its epochs, report and
pictures) is in its run directory. Signals are passed on to the workers once."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ConfigError, SweepError
from ..interrupt import Interrupted
from . import console
from .defaults import FUSE_MAX
from .launch import cpu_count, signals_passed_on

logger = logging.getLogger(__name__)
POLL_SECONDS = 0.5  # how often the main process looks for trials that ended


def run_sweep(
    config: str | Path | None,
    arguments: Sequence[str],
    name: str | None = None,
    workers: int = 1,
    trials: int | None = None,
    sampler: str | None = None,
    prune: str = "none",
    storage: str | None = None,
    fuse_max: int = FUSE_MAX,
) -> dict[str, Any]:
    """Run a sweep to its end (or go on with one started before), then write its results.

    Args:
        config: the YAML config every trial starts from.
        arguments: ``key=value`` overrides and swept keys (see :func:`~fmnist_ignite.sweep.space.parse_arguments`).
        name: the sweep's folder under ``output_dir`` and its study's name (default: ``<name>-sweep``).
        workers: trials run at once, each in a process of its own.
        trials: how many trials a sampled sweep has in all (required there; not for a grid).
        sampler: a class of ``optuna.samplers`` by short name (``tpe``, the default; ``random``, ``qmc``, ...).
        prune: a class of ``optuna.pruners`` by short name (``median``, ``hyperband``, ...; ``none``).
        storage: an Optuna storage URL shared by several machines (default: SQLite in the sweep's folder).
        fuse_max: the most trials trained together as one batched model (see :mod:`fmnist_ignite.sweep.fused`);
            0: each trial alone (``--fuse off``).

    Returns:
        see :func:`fmnist_ignite.sweep.results.sweep_results`.

    Raises:
        ConfigError, SweepError: as :func:`~fmnist_ignite.sweep.plan_sweep`.
        Interrupted: SIGINT or SIGTERM stopped the sweep; its trials keep their saved epochs.
    """
    from ..sweep import plan_sweep, results, size, work

    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    if fuse_max < 0:
        raise ConfigError(f"fuse_max must be 0 or more (0 or 1: each trial alone), not {fuse_max}")
    _quiet_optuna()
    plan = plan_sweep(config, arguments, name, trials, sampler, prune, storage)
    workers = min(workers, size(plan))
    fuse_max = min(fuse_max, -(-size(plan) // workers))  # each worker its share of the trials
    study = None
    try:
        if workers == 1:
            from ..sweep.results import FinishedTrials
            from ..sweep.study import open_study

            study = open_study(plan)  # once: for the trials, their lines and the results
            finished = FinishedTrials(plan, study)
            with _runs_quiet():
                work(plan, fuse_max=fuse_max, ended=lambda trial: _say_line(finished.line(trial)), study=study)
        else:
            _run_workers(plan, workers, fuse_max)
    except Interrupted as err:
        raise Interrupted(
            f"{signal.Signals(err.signum).name} received: the sweep stopped and each trial it was running keeps "
            "its last saved epoch; run the same command again to go on",
            err.signum,
        ) from None
    return results(plan, study)


def _run_workers(plan: Any, workers: int, fuse_max: int = 0) -> None:
    """Run ``workers`` processes of :func:`~fmnist_ignite.sweep.work`; pass SIGINT and SIGTERM on to them, once each.

    Each worker is in a process group of its own: a Ctrl-C in the terminal reaches it once, from here, not
    twice (a second one stops its trial at once, without saving the epoch).
    """
    context = multiprocessing.get_context("spawn")
    verbosity = console.current_verbosity()
    threads = max(1, cpu_count() // workers)
    processes = [
        context.Process(target=_worker, args=(plan, verbosity, i + 1, threads, fuse_max), name=f"sweep worker {i + 1}")
        for i in range(workers)
    ]

    def alive() -> list[int]:
        return [p.pid for p in processes if p.pid is not None and p.is_alive()]

    from ..sweep.results import FinishedTrials
    from ..sweep.study import open_study

    finished = FinishedTrials(plan, open_study(plan))
    with signals_passed_on(alive, passed=(signal.SIGINT, signal.SIGTERM)) as received:
        for process in processes:
            process.start()
        for process in processes:
            while process.is_alive() and not received:
                process.join(POLL_SECONDS)
                _say(finished)
            process.join()
        if not received:
            _say(finished)
    if received:
        raise Interrupted(f"{signal.Signals(received[0]).name} received", received[0])
    for process in processes:
        if process.exitcode:
            logger.warning("%s stopped with exit code %s", process.name, process.exitcode)


@contextmanager
def _runs_quiet() -> Iterator[None]:
    """While trials run in this process: one line as each ends (:class:`~fmnist_ignite.sweep.results.FinishedTrials`),
    as with workers; not each run's record (epochs, reports: in its run directory), unless ``-v``."""
    quiet = console.current_verbosity() <= 0
    names = {"fmnist_ignite.run": logging.WARNING, "fmnist_ignite.run.outcome": logging.WARNING}
    saved = {name: logging.getLogger(name).level for name in names}
    if quiet:
        for name, level in names.items():
            logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _say_line(line: str | None) -> None:
    if line:
        logger.info("%s", line)


def _say(finished: Any) -> None:
    for line in finished.new_lines():
        _say_line(line)


def _worker(plan: Any, verbosity: int, number: int, threads: int, fuse_max: int = 0) -> None:
    """A worker process: its own process group (signals come from the main process, once), its lines prefixed."""
    from ..sweep import work

    if hasattr(os, "setpgid"):
        os.setpgid(0, 0)
    console.setup_logging(verbosity if verbosity > 0 else -1, lines="stderr")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(f"worker {number}: %(message)s"))
    _quiet_optuna()
    import torch

    torch.set_num_threads(threads)
    try:
        with _runs_quiet():  # the main process says how each trial ended; the run's record is in its run directory
            work(plan, parent=os.getppid(), fuse_max=fuse_max)
    except (Interrupted, KeyboardInterrupt):
        pass
    except SweepError as err:
        logger.error("error: %s", err)


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(logging.ERROR)  # the sweep says how each trial ended (a failed one with its error)
