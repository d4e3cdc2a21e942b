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
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from ..config import NAME_PATTERN, load_config
from ..errors import ConfigError
from ..fileio import atomic_write_json
from ..handlers.mlflow import finish_sweep_run, open_sweep_run
from ..interrupt import Interrupted
from ..rundir import SweepDir
from .fused import FusedGroup, group_key, unfusable
from .results import sweep_results
from .space import MAX_GRID, SweepPlan, grid_size, parse_arguments, trial_name
from .study import Heartbeat, Turn, asking, database_lock, load_optuna, make, open_study, retry_failed
from .trial import Objective, PreparedTrial, TrialFailed

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


def work(
    plan: SweepPlan,
    parent: int | None = None,
    fuse_max: int = 0,
    ended: Callable[[Any], None] | None = None,
    study: Any = None,
) -> None:
    """One process's share of a sweep: run trials until none is left to start, then wait for those running elsewhere.

    ``study.optimize`` runs trials while one is left to start (see :class:`~.study.Turn`). A trial
    whose process died is queued again once its heartbeat is stale, and this process runs it. With
    ``fuse_max`` of 2 or more, this process takes up to that many trials at a time and trains those that
    can share a data pass together (:func:`train_group`).

    Args:
        plan: the sweep (see :func:`plan_sweep`).
        parent: a worker's main process; the worker takes no more trials once it is gone.
        fuse_max: the most trials trained together; 0 (or 1): each trial alone.
        ended: called with each trial of this process that has ended, as the study has it (``FrozenTrial``).
        study: the sweep's study, opened by :func:`~.study.open_study` in this process (default: opened here).

    Raises:
        Interrupted: SIGINT or SIGTERM stopped the trial (or trials) this process was running.
    """
    study = study if study is not None else open_study(plan)
    turn = Turn(plan, study)
    objective = Objective(plan, started=turn.release)

    def next_trial(study: Any, trial: Any) -> None:  # study.optimize's callback after each trial
        if ended is not None:
            ended(trial)
        if (parent is not None and os.getppid() != parent) or not turn.take():
            study.stop()

    def one_by_one() -> None:
        try:
            study.optimize(objective, catch=(TrialFailed,), callbacks=[next_trial])
        finally:
            turn.release()

    def fused() -> None:  # up to fuse_max trials asked under the turn, then trained as a group
        group: list[PreparedTrial] = []
        with Heartbeat(study) as beating:  # each trial's from the moment it has its values
            try:
                while True:
                    with asking(study):
                        trial = study.ask()
                    values = objective.values(trial)
                    beating.add(trial)
                    group.append(PreparedTrial(trial, trial_name(plan.params, values), values))
                    if len(group) == 1 and not _may_fuse(objective, group[0]):
                        break  # it trains alone: the trials left are for processes free to start them
                    if len(group) >= min(fuse_max, turn.left):  # (the turn is held: no other process starts one)
                        break
            except BaseException:
                for prepared in group:
                    tell(study, prepared.trial, state=load_optuna().trial.TrialState.FAIL)
                raise
            finally:
                turn.release()
            train_group(study, objective, group, ended)

    waiting = False
    while parent is None or os.getppid() == parent:
        if turn.take():
            waiting = False
            (fused if fuse_max > 1 else one_by_one)()
        elif not any(t.state.name == "RUNNING" and t.params for t in study.get_trials(deepcopy=False)):
            return  # (one without values was left by a process stopped while Optuna asked for it: never in the table)
        else:
            if not waiting:
                logger.info("Waiting for the trials that other processes are running")
            waiting = True
            time.sleep(POLL_SECONDS)
    logger.warning("The sweep's main process is gone: this worker takes no more trials")


def train_group(
    study: Any, objective: Objective, group: list[PreparedTrial], ended: Callable[[Any], None] | None = None
) -> None:
    """Train trials the study gave this process together: those that can share a data pass as fused groups
    (:class:`~.fused.FusedGroup`), the others alone; tell the study each one's end as it comes.

    The first lines say which trials are fused and why the others are not. The caller keeps the trials'
    heartbeat (:class:`~.study.Heartbeat`) meanwhile.

    Raises:
        Interrupted: SIGINT or SIGTERM stopped the trials (each keeps its last saved epoch; told as failed, so
            that the next start of the sweep runs them again from there).
    """
    optuna = load_optuna()
    told: set[int] = set()

    def told_of(prepared: PreparedTrial, metrics: dict[str, Any] | None, error: BaseException | None) -> None:
        prepared.metrics = metrics
        try:
            if error is not None:
                raise objective.failed(prepared, error)
            value = objective.conclude(prepared)
        except optuna.TrialPruned:
            frozen = tell(study, prepared.trial, state=optuna.trial.TrialState.PRUNED)
        except TrialFailed:
            frozen = tell(study, prepared.trial, state=optuna.trial.TrialState.FAIL)
        else:
            frozen = tell(study, prepared.trial, value)
        told.add(prepared.trial.number)
        if ended is not None:
            ended(frozen)

    try:
        fusable: dict[Any, list[PreparedTrial]] = {}
        alone: list[PreparedTrial] = []
        for prepared in group:
            _prepare(objective, prepared)
            if prepared.error is not None:
                told_of(prepared, None, prepared.error)
                continue
            if prepared.experiment is None:
                told_of(prepared, prepared.metrics, None)
                continue
            reason = unfusable(prepared.experiment)
            if reason is None:
                fusable.setdefault(group_key(prepared.experiment), []).append(prepared)
            else:
                logger.info("Trial %d %s is not fused: %s", prepared.trial.number, prepared.name, reason)
                alone.append(prepared)
        groups = []
        for members in fusable.values():
            if len(members) == 1:
                prepared = members[0]
                logger.info(
                    "Trial %d %s is not fused: no other trial at hand shares its data pass",
                    prepared.trial.number, prepared.name,
                )  # fmt: skip
                alone.append(prepared)
                continue
            numbers = ", ".join(str(p.trial.number) for p in members)
            logger.info("Trials %s: fused, trained together as one model (%d trials)", numbers, len(members))
            groups.append(members)
        for members in groups:
            experiments = [p.experiment for p in members if p.experiment is not None]
            FusedGroup(experiments).run(partial(_told_of_member, told_of, members))
        for prepared in alone:
            try:
                metrics = prepared.experiment.run()  # type: ignore[union-attr]
            except (Interrupted, KeyboardInterrupt):
                raise
            except Exception as err:
                told_of(prepared, None, err)
            else:
                told_of(prepared, metrics, None)
    except BaseException:
        for prepared in group:  # stopped: each is run again (from its last saved epoch) by the next start
            if prepared.trial.number not in told:
                tell(study, prepared.trial, state=optuna.trial.TrialState.FAIL)
        raise


def _prepare(objective: Objective, prepared: PreparedTrial) -> None:
    """``objective.prepare`` once; an error is kept in ``prepared.error``, for the study to be told."""
    if not prepared.ready:
        prepared.ready = True
        try:
            objective.prepare(prepared)
        except Exception as err:
            prepared.error = err


def _may_fuse(objective: Objective, prepared: PreparedTrial) -> bool:
    """Whether the first trial of a group can train fused (else the group is that trial alone)."""
    _prepare(objective, prepared)
    return prepared.experiment is not None and unfusable(prepared.experiment) is None


def _told_of_member(told_of: Callable[..., None], members: list[PreparedTrial], k: int, *outcome: Any) -> None:
    told_of(members[k], *outcome)


def tell(study: Any, trial: Any, value: float | None = None, state: Any = None) -> Any:
    """``study.tell`` of a trial this process asked for (see :func:`~.study.asking`); the trial as the study has it."""
    with asking(study):
        return study.tell(trial, value, state=state)


def results(plan: SweepPlan, study: Any = None) -> dict[str, Any]:
    """Write ``results.csv`` and ``results.png`` from the study; the rows (see :func:`.results.sweep_results`).

    The sweep's MLflow run, if it has one, is marked finished. ``study``: the sweep's study, opened in this
    process (default: opened here).
    """
    study = study if study is not None else open_study(plan)
    finish_sweep_run(study)
    return sweep_results(study, plan)
