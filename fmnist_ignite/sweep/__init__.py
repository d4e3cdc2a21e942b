"""Sweeps: many runs of one config, over a grid or over values Optuna samples, recorded in one Optuna study.

Each trial is a run directory under ``output_dir/NAME`` named after its values (:mod:`.trial`).
:func:`plan_sweep` checks a sweep and opens its study; :func:`work` is one process's share of the
trials (every process of a sweep, here or on a machine sharing the storage, runs it);
:func:`results` writes the table. Starting processes is the program's: :mod:`fmnist_ignite.app.workers`.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import NAME_PATTERN, load_config
from ..errors import ConfigError
from ..fileio import atomic_write_json
from ..handlers.mlflow import finish_sweep_run, open_sweep_run
from ..rundir import SweepDir
from .results import sweep_results
from .space import MAX_GRID, SweepPlan, grid_size, parse_arguments
from .study import Turn, database_lock, make, open_study, retry_failed
from .trial import Objective, TrialFailed

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # how often a process with no trial to start looks whether those running elsewhere ended


def plan_sweep(
    config: str | Path | None,
    arguments: Sequence[str],
    name: str | None = None,
    trials: int | None = None,
    sampler: str | None = None,
    prune: str = "none",
    storage: str | None = None,
) -> SweepPlan:
    """Check a sweep (arguments, config, every swept value), open or create its study, queue its failed trials again.

    The arguments are :func:`fmnist_ignite.app.workers.run_sweep`'s.

    Raises:
        ConfigError: the arguments or the config are wrong, or the study was started with other swept values.
        SweepError: Optuna is missing or the storage cannot be opened.
    """
    plain, params = parse_arguments(arguments)
    if not params:
        raise ConfigError("nothing to sweep: give key=v1,v2 (a grid) or key=interval(low,high) with --trials N")
    sampled = any(p.kind != "grid" for p in params)
    if sampled and trials is None:
        raise ConfigError("interval, log and choice are sampled: give the number of trials with --trials N")
    if not sampled and (trials is not None or sampler is not None):
        raise ConfigError("--trials and --sampler are for sampled sweeps (interval, log, choice); a grid runs all")
    if trials is not None and trials < 1:
        raise ConfigError("--trials must be at least 1")
    points = 0 if sampled else grid_size(params)  # counted: Optuna's grid sampler would build every point
    if points > MAX_GRID:
        raise ConfigError(
            f"the grid has {points:,} points (one trial each), more than {MAX_GRID:,}: sweep fewer values, "
            "or sample them (key=choice(a,b,...) or interval(low,high) with --trials N)"
        )
    params = [replace(p, kind="choice") if sampled and p.kind == "grid" else p for p in params]
    make("sampler", sampler or "tpe")  # an unknown name stops the sweep here, before the config is read
    make("prune", prune)
    base = load_config(config, plain)
    if base.distributed.backend is not None or any(p.key.startswith("distributed.") for p in params):
        raise ConfigError(
            "a sweep trains each trial in one process: remove distributed.* from the config and the swept keys "
            "(for trials in parallel, use --workers N)"
        )
    for param in params:  # every swept value makes a valid config: a typo stops the sweep before anything runs
        for value in param.values or (param.text(param.low), param.text(param.high)):
            load_config(config, [*plain, f"{param.key}={value}"])
    name = name or f"{base.name}-sweep"
    if not re.fullmatch(NAME_PATTERN, name):
        raise ConfigError(f"--name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit")
    sweep = SweepDir(Path(base.output_dir).expanduser().absolute() / name)
    plan = SweepPlan(
        config=str(Path(config).absolute()) if config is not None else None,
        overrides=tuple(plain),
        params=tuple(params),
        sweep_dir=str(sweep.path),
        storage=storage or f"sqlite:///{sweep.study_db}",
        study=name,
        monitor=base.monitor.metric,
        direction="maximize" if base.monitor.direction == "max" else "minimize",
        trials=trials,
        sampler=sampler or "tpe",
        prune=prune,
    )
    with sweep.made(), sweep.lock():  # a storage that cannot be opened leaves no folder behind
        study = open_study(plan)
        with database_lock(plan.storage, plan.study):  # machines starting at once queue a failed trial once
            retry_failed(study, plan)
            if base.logging.mlflow:  # the trials are child runs of the sweep's (one, however many machines start)
                open_sweep_run(study, base, sweep.path)
        atomic_write_json(sweep.definition, {**plan.definition(), "config": plan.config, "overrides": list(plain)})
    return plan


def size(plan: SweepPlan) -> int:
    """How many trials the sweep has: its grid's points, or ``trials``."""
    return grid_size(plan.params) if plan.trials is None else plan.trials


def work(plan: SweepPlan, parent: int | None = None) -> None:
    """One process's share of a sweep: run trials until none is left to start, then wait for those running elsewhere.

    ``study.optimize`` runs trials while one is left to start (see :class:`~.study.Turn`). A trial
    whose process died is queued again once its heartbeat is stale, and this process runs it.

    Args:
        plan: the sweep (see :func:`plan_sweep`).
        parent: a worker's main process; the worker takes no more trials once it is gone.

    Raises:
        Interrupted: SIGINT or SIGTERM stopped the trial this process was running.
    """
    study = open_study(plan)
    turn = Turn(plan, study)
    objective = Objective(plan, started=turn.release)

    def next_trial(study: Any, trial: Any) -> None:  # study.optimize's callback after each trial
        if (parent is not None and os.getppid() != parent) or not turn.take():
            study.stop()

    waiting = False
    while parent is None or os.getppid() == parent:
        if turn.take():
            waiting = False
            try:
                study.optimize(objective, catch=(TrialFailed,), callbacks=[next_trial])
            finally:
                turn.release()
        elif not any(t.state.name == "RUNNING" and t.params for t in study.get_trials(deepcopy=False)):
            return  # (one without values was left by a process stopped while Optuna asked for it: never in the table)
        else:
            if not waiting:
                logger.info("Waiting for the trials that other processes are running")
            waiting = True
            time.sleep(POLL_SECONDS)
    logger.warning("The sweep's main process is gone: this worker takes no more trials")


def results(plan: SweepPlan) -> dict[str, Any]:
    """Write ``results.csv`` and ``results.png`` from the study; the rows (see :func:`.results.sweep_results`).

    The sweep's MLflow run, if it has one, is marked finished.
    """
    study = open_study(plan)
    finish_sweep_run(study)
    return sweep_results(study, plan)
