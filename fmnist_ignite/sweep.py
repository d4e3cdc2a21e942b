"""Sweeps: many runs of one config, over a grid of values or values that Optuna samples, recorded in one study.

``python -m fmnist_ignite sweep CONFIG key=v1,v2 other=log(1e-4,1e-1) --trials 20``: a comma list is a grid
over that key; ``interval(low,high)``, ``log(low,high)`` and ``choice(a,b)`` are sampled. Each trial is an
ordinary run directory under ``output_dir/NAME``, named after its values; the Optuna study (SQLite in
``NAME/study.db`` unless ``--storage`` names another) records which trial ran where and how it ended.

Every process of a sweep, on this machine or another one sharing the storage, runs the same loop
(:func:`work`): pick the next trial while holding the sweep's lock, run it, tell the study. A trial
whose process died is failed (at once on this machine, after its heartbeat stops elsewhere) and
run again, from its checkpoint, by the next start of the sweep; a finished run directory is never
trained again. Optuna is imported only here, and only when a sweep runs.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import re
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from hashlib import sha1
from pathlib import Path
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any, Literal

import yaml
from ignite.engine import Engine, Events

from .build import build_experiment
from .config import NAME_PATTERN, Config, _parse_yaml, load_config
from .context import Context
from .data import ImageData, load_data
from .errors import ConfigError, FmnistIgniteError, SweepError, first_line
from .events import RunEvents
from .experiment import Experiment
from .fileio import atomic_write_json
from .interrupt import Interrupted
from .resume import resume_experiment
from .rundir import RunDir, SweepDir

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution
    from optuna.storages import RDBStorage
    from optuna.trial import FrozenTrial

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 30  # a trial whose heartbeat is older than this is failed: its process is gone
POLL_SECONDS = 2.0  # how often a process with nothing to do looks whether trials running elsewhere ended
MAX_NAME = 120
SAMPLED = re.compile(r"^(interval|log|choice)\((.*)\)$", re.DOTALL)
KEY = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
NOT_IN_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _optuna() -> ModuleType:
    try:
        import optuna
    except ImportError:
        raise SweepError("sweeps need Optuna: pip install 'fmnist_ignite[sweep]' (or pip install optuna)") from None
    return optuna


@contextmanager
def _heartbeat_warnings_off() -> Iterator[None]:
    # Optuna calls its heartbeat experimental and expects it from Study.optimize only; this module runs it itself.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _optuna().exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
        yield


def quiet_optuna() -> None:
    """Keep Optuna's own lines to warnings: the sweep reports each trial itself."""
    _optuna().logging.set_verbosity(logging.WARNING)


@dataclass(frozen=True)
class Param:
    """One swept key: its grid values, or what Optuna samples it from.

    Grid and choice values are kept as the YAML text they were given in; they are Optuna's
    categories, the text of the override and part of the trial's name.
    """

    key: str
    kind: Literal["grid", "choice", "interval", "log"]
    values: tuple[str, ...] = ()
    low: float = 0.0
    high: float = 0.0
    integer: bool = False

    def distribution(self) -> BaseDistribution:
        """Optuna's distribution of this key."""
        distributions = _optuna().distributions
        if self.kind in ("grid", "choice"):
            return distributions.CategoricalDistribution(self.values)
        if self.integer:
            return distributions.IntDistribution(int(self.low), int(self.high), log=self.kind == "log")
        return distributions.FloatDistribution(self.low, self.high, log=self.kind == "log")

    def text(self, value: Any) -> str:
        """A value of this key as YAML text (for the override and the trial's name)."""
        if self.kind in ("grid", "choice"):
            return str(value)
        return str(int(value)) if self.integer else repr(float(value))

    def describe(self) -> str:
        """The key's values as the command line gives them."""
        if self.kind == "grid":
            return ",".join(self.values)
        if self.kind == "choice":
            return f"choice({','.join(self.values)})"
        low, high = (int(self.low), int(self.high)) if self.integer else (self.low, self.high)
        return f"{self.kind}({low},{high})"


def parse_arguments(items: Sequence[str]) -> tuple[list[str], list[Param]]:
    """Split ``key=value`` arguments into plain overrides (the same for every trial) and swept keys.

    ``key=v1,v2,v3`` is a grid over ``key``; ``key=interval(low,high)``, ``key=log(low,high)`` and
    ``key=choice(a,b)`` are sampled. Values are read as YAML; a comma inside brackets or quotes
    does not split (``key=[1,2],[3,4]`` is a grid of two lists).

    Raises:
        ConfigError: an argument that is none of these, or a key swept twice.

    Example:
        >>> from fmnist_ignite.sweep import parse_arguments
        >>> plain, params = parse_arguments(["optimizer.lr=0.01,0.1", "seed=3", "optimizer.name=choice(sgd,adam)"])
        >>> plain, [p.describe() for p in params]
        (['seed=3'], ['0.01,0.1', 'choice(sgd,adam)'])
    """
    plain: list[str] = []
    params: dict[str, Param] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not KEY.fullmatch(key):
            raise ConfigError(f"{item!r} must look like key=value, key=v1,v2 or key=interval(low,high)")
        match = SAMPLED.match(text.strip())
        if match:
            param = _sampled(key, match.group(1), _split(match.group(2), item), item)
        else:
            values = _split(text, item)
            if len(values) == 1:
                plain.append(item)
                continue
            param = Param(key, "grid", tuple(values))
        if key in params:
            raise ConfigError(f"{key} is swept twice; give its values in one argument: {key}=v1,v2")
        if key in ("name", "output_dir"):
            raise ConfigError(f"{item!r}: a sweep names its trials and puts them in output_dir/NAME; sweep other keys")
        for value in param.values:
            _check_yaml(value, item)
        names = {_safe(v): v for v in param.values}
        if len(names) < len(param.values):
            raise ConfigError(f"{item!r}: two of the values are the same, or would name the same trial folder")
        params[key] = param
    return plain, list(params.values())


def _split(text: str, item: str) -> list[str]:
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    if len(parts) > 1 and not all(parts):
        raise ConfigError(f"{item!r}: an empty value in the list; write key=v1,v2,...")
    return parts


def _check_yaml(text: str, item: str) -> Any:
    try:
        return _parse_yaml(text)
    except yaml.YAMLError:
        raise ConfigError(f"{item!r}: the value {text!r} is not valid YAML; quote it") from None


def _sampled(key: str, function: str, args: list[str], item: str) -> Param:
    if function == "choice":
        if not all(args):
            raise ConfigError(f"{item!r}: choice needs its values, choice(a,b,...)")
        return Param(key, "choice", tuple(args))
    bounds = [_check_yaml(a, item) for a in args]
    if len(bounds) != 2 or not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds):
        raise ConfigError(f"{item!r}: {function} takes two numbers, {function}(low,high)")
    low, high = bounds
    if not low < high:
        raise ConfigError(f"{item!r}: the low end must be below the high end")
    if function == "log" and low <= 0:
        raise ConfigError(f"{item!r}: log needs a positive low end")
    integer = isinstance(low, int) and isinstance(high, int)
    return Param(key, "interval" if function == "interval" else "log", (), float(low), float(high), integer)


def _safe(text: str) -> str:
    return NOT_IN_NAME.sub("_", text).strip("_") or "_"


def trial_name(params: Sequence[Param], values: Mapping[str, Any]) -> str:
    """The name of the trial with these values: ``<key>-<value>`` for each swept key, joined by ``_``.

    A key is shortened to its last part (``optimizer.lr`` to ``lr``) unless two swept keys share it.

    Example:
        >>> from fmnist_ignite.sweep import parse_arguments, trial_name
        >>> _, params = parse_arguments(["optimizer.lr=0.01,0.1", "seed=1,2"])
        >>> trial_name(params, {"optimizer.lr": "0.1", "seed": "2"})
        'lr-0.1_seed-2'
    """
    lasts = [p.key.rsplit(".", 1)[-1] for p in params]
    parts = [
        f"{last if lasts.count(last) == 1 else p.key}-{_safe(p.text(values[p.key]))}"
        for p, last in zip(params, lasts, strict=True)
    ]
    name = "_".join(parts)
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 9]}-{sha1(name.encode()).hexdigest()[:8]}"
    return name


def grid_points(params: Sequence[Param]) -> list[dict[str, str]]:
    """Every combination of a grid sweep's values, the first key varying slowest."""
    keys = [p.key for p in params]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(p.values for p in params))]


@dataclass(frozen=True)
class SweepPlan:
    """What every process of a sweep needs to run its trials (plain data: it goes to worker processes).

    ``trials`` is None for a grid sweep. ``since`` is the number of trials the study held when this
    start of the sweep began: a trial that failed before it is run again, one that failed since is not.
    """

    config: str | None
    overrides: tuple[str, ...]
    params: tuple[Param, ...]
    sweep_dir: str
    storage: str
    study: str
    monitor: str
    direction: Literal["maximize", "minimize"]
    trials: int | None = None
    sampler: Literal["random", "tpe"] = "tpe"
    prune: Literal["median", "none"] = "none"
    since: int = 0
    threads: int = 0

    def definition(self) -> dict[str, Any]:
        """What must be the same for every process and every start of the sweep (kept in the study)."""
        return {
            "kind": "grid" if self.trials is None else "sampled",
            "space": {p.key: p.describe() for p in self.params},
            "monitor": f"{self.monitor} ({self.direction})",
            "prune": self.prune,
        }


def run_sweep(
    config: str | Path | None,
    arguments: Sequence[str],
    name: str | None = None,
    workers: int = 1,
    trials: int | None = None,
    sampler: Literal["random", "tpe"] | None = None,
    prune: Literal["median", "none"] = "none",
    storage: str | None = None,
) -> dict[str, Any]:
    """Run a sweep to its end (or go on with one started before), then write its results.

    Args:
        config: the YAML config every trial starts from.
        arguments: ``key=value`` overrides and swept keys (see :func:`parse_arguments`).
        name: the sweep's folder under ``output_dir`` and its study's name (default: ``<name>-sweep``).
        workers: trials run at once, each in a process of its own.
        trials: how many trials a sampled sweep has in all (required there; not for a grid).
        sampler: ``tpe`` (default) or ``random``, for a sampled sweep.
        prune: ``median``: stop a trial whose monitored value is below the median of the trials
            before it at the same epoch (Optuna's ``MedianPruner``); ``none``.
        storage: an Optuna storage URL shared by several machines (default: SQLite in the sweep's folder).

    Returns:
        see :func:`sweep_results`.

    Raises:
        ConfigError: the arguments, the config or the sweep's keys are wrong, or the study was
            started with other swept values.
        SweepError: Optuna is missing or the storage cannot be opened.
        Interrupted: SIGINT or SIGTERM stopped the sweep; its trials keep their saved epochs.
    """
    plain, params = parse_arguments(arguments)
    if not params:
        raise ConfigError("nothing to sweep: give key=v1,v2 (a grid) or key=interval(low,high) with --trials N")
    sampled = any(p.kind != "grid" for p in params)
    if sampled and trials is None:
        raise ConfigError("interval, log and choice are sampled: give the number of trials with --trials N")
    if not sampled and (trials is not None or sampler is not None):
        raise ConfigError("--trials and --sampler are for sampled sweeps (interval, log, choice); a grid runs all")
    if sampled:  # a comma list among sampled keys is a choice
        params = [replace(p, kind="choice") if p.kind == "grid" else p for p in params]
    if workers < 1 or (trials is not None and trials < 1):
        raise ConfigError("--workers and --trials must be at least 1")
    base = load_config(config, plain)
    if base.distributed.backend is not None or any(p.key.startswith("distributed.") for p in params):
        raise ConfigError(
            "a sweep trains each trial in one process: remove distributed.* from the config and the swept keys "
            "(for trials in parallel, use --workers N)"
        )
    for param in params:
        _check_key(base, param.key)
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
    with sweep.lock():
        study, opened = open_study(plan, create=True)
        release_abandoned(study)
        plan = replace(plan, since=len(study.get_trials(deepcopy=False)))
        atomic_write_json(sweep.definition, {**plan.definition(), "config": plan.config, "overrides": list(plain)})
    size = len(grid_points(params)) if trials is None else trials
    workers = min(workers, size)
    try:
        if workers == 1:
            work(plan, (study, opened))
        else:
            _run_workers(replace(plan, threads=max(1, _cores() // workers)), workers)
    except Interrupted as err:
        raise Interrupted(
            f"{signal.Signals(err.signum).name} received: the sweep stopped and each trial it was running keeps "
            "its last saved epoch; run the same command again to go on",
            err.signum,
        ) from None
    with sweep.lock():
        release_abandoned(study)  # a worker that died leaves its trial running
    from .sweep_results import sweep_results

    return sweep_results(study, plan)


def _check_key(config: Config, key: str) -> None:
    node: Any = config.to_dict()
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        elif depth and parts[depth - 1] == "kwargs":
            return  # keyword arguments of a model or handler: any name
        else:
            where = ".".join(parts[:depth]) or "the config"
            raise ConfigError(f"{key}: {where} has no key {part!r}; sweep a key that --print-config shows")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def open_study(plan: SweepPlan, create: bool = False) -> tuple[optuna.Study, RDBStorage]:
    """The sweep's study and its storage; the study is created if asked and absent.

    The study must have been started with the same swept values (they are kept in it).

    Raises:
        ConfigError: the study was started with other swept values, another monitor or pruning.
        SweepError: the storage cannot be opened.
    """
    optuna = _optuna()
    kwargs = {"connect_args": {"timeout": 60}} if plan.storage.startswith("sqlite") else {}
    try:
        with _heartbeat_warnings_off():
            storage = optuna.storages.RDBStorage(
                plan.storage, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS
            )
    except Exception as err:  # a bad URL, a missing driver, a server that does not answer
        raise SweepError(f"cannot open the study storage {_shown(plan.storage)}: {first_line(err)}") from None
    sampler = optuna.samplers.RandomSampler() if plan.sampler == "random" else optuna.samplers.TPESampler()
    pruner = optuna.pruners.MedianPruner() if plan.prune == "median" else optuna.pruners.NopPruner()
    options = {"storage": storage, "study_name": plan.study, "sampler": sampler, "pruner": pruner}
    if create:
        study = optuna.create_study(**options, direction=plan.direction, load_if_exists=True)
    else:
        study = optuna.load_study(**options)
    saved = study.user_attrs.get("sweep")
    if saved is None:
        study.set_user_attr("sweep", plan.definition())
    elif saved != plan.definition():
        raise ConfigError(
            f"study {plan.study!r} in {_shown(plan.storage)} was started with other settings "
            f"({_describe_definition(saved)}); run that command again, or choose another --name"
        )
    return study, storage


def _shown(url: str) -> str:
    """The storage URL without its password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _describe_definition(definition: Mapping[str, Any]) -> str:
    space = " ".join(f"{k}={v}" for k, v in definition["space"].items())
    return f"{space}, monitor {definition['monitor']}, --prune {definition['prune']}"


def _this_host() -> str:
    boot = Path("/proc/sys/kernel/random/boot_id")  # tells apart machines that share a host name
    return f"{socket.gethostname()}/{boot.read_text().strip()}" if boot.is_file() else socket.gethostname()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_abandoned(study: optuna.Study) -> None:
    """Fail the running trials whose process is gone, so that they can be run again.

    On this machine a trial's process is known by its id; elsewhere, a trial whose heartbeat is
    older than ``GRACE_SECONDS`` is taken for dead (Optuna's ``fail_stale_trials``).
    """
    optuna = _optuna()
    with _heartbeat_warnings_off():
        optuna.storages.fail_stale_trials(study)
    host, now = _this_host(), datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = trial.user_attrs.get("owner")
        if owner is None:  # its process died between creating it and naming itself
            gone = trial.datetime_start is None or now - trial.datetime_start > timedelta(seconds=GRACE_SECONDS)
        else:
            gone = owner["host"] == host and not _alive(owner["pid"])
        if gone:
            logger.info("Trial %d was left running by a process that is gone: it will be run again", trial.number)
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)


@dataclass
class Point:
    """The trials of one set of values (one run directory): normally one, more when it was run again."""

    name: str
    values: dict[str, Any]
    trials: list[FrozenTrial]

    def status(self, since: int) -> Literal["done", "running", "failed", "todo"]:
        """``done`` (complete or pruned), ``running``, ``failed`` since ``since``, or ``todo``."""
        states = {t.state.name for t in self.trials}
        if states & {"COMPLETE", "PRUNED"}:
            return "done"
        if "RUNNING" in states:
            return "running"
        if any(t.state.name == "FAIL" and t.number >= since for t in self.trials):
            return "failed"
        return "todo"

    def shown(self) -> FrozenTrial:
        """The trial that speaks for the point: the finished one, else the running one, else the last."""
        order = {"COMPLETE": 0, "PRUNED": 0, "RUNNING": 1}
        return min(self.trials, key=lambda t: (order.get(t.state.name, 2), -t.number))


def points(plan: SweepPlan, trials: Sequence[FrozenTrial]) -> dict[str, Point]:
    """The study's trials grouped by their values, in the order of their first trial."""
    keys = {p.key for p in plan.params}
    found: dict[str, Point] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.state.name == "WAITING" or set(trial.params) != keys:
            continue
        name = trial_name(plan.params, trial.params)
        found.setdefault(name, Point(name, dict(trial.params), [])).trials.append(trial)
    return found


def work(plan: SweepPlan, opened: tuple[optuna.Study, RDBStorage] | None = None, parent: int | None = None) -> None:
    """Run trials of the plan's study until none is left: the loop of every process of a sweep.

    When nothing is left to start but trials run in other processes, it waits for them: one whose
    process dies is then run again here, if it was started before this start of the sweep.

    Args:
        plan: the sweep.
        opened: the study and its storage, if this process has them open already.
        parent: a worker's main process; the worker stops taking trials when it is gone.
    """
    sweep = SweepDir(plan.sweep_dir)
    study, storage = opened or open_study(plan)
    runner = TrialRunner(plan, study, storage)
    waiting = False
    while parent is None or os.getppid() == parent:
        with sweep.lock():
            claim = claim_trial(plan, study)
        if claim is None:
            return
        if isinstance(claim, str):
            if not waiting:
                logger.info("Waiting for the trials that other processes are running")
            waiting = True
            time.sleep(POLL_SECONDS)
            continue
        waiting = False
        runner.run(claim)
    logger.warning("The sweep's main process is gone: this worker takes no more trials")


def claim_trial(plan: SweepPlan, study: optuna.Study) -> optuna.Trial | Literal["wait"] | None:
    """The next trial for this process, marked as its own; ``wait`` while only others' trials remain; or None.

    Call it holding the sweep's lock, so that two processes of this machine never take the same values.
    """
    release_abandoned(study)
    trials = study.get_trials(deepcopy=False)
    found = points(plan, trials)
    if plan.trials is None:
        for values in grid_points(plan.params):
            point = found.get(trial_name(plan.params, values))
            if point is None or point.status(plan.since) == "todo":
                return _ask(plan, study, values, point)
    else:
        for point in found.values():
            if point.status(plan.since) == "todo":
                return _ask(plan, study, point.values, point)
        taken = [t for t in trials if t.state.name != "WAITING" and "again" not in t.user_attrs]
        if len(taken) < plan.trials:
            return _ask(plan, study, None, None)
    return "wait" if any(p.status(plan.since) == "running" for p in found.values()) else None


def _ask(plan: SweepPlan, study: optuna.Study, values: dict[str, Any] | None, point: Point | None) -> optuna.Trial:
    if values is not None:
        again = {"again": point.trials[-1].number} if point is not None else {}
        study.enqueue_trial(values, user_attrs=again)
    with _heartbeat_warnings_off():
        trial = study.ask({p.key: p.distribution() for p in plan.params})
    trial.set_user_attr("owner", {"host": _this_host(), "pid": os.getpid()})
    return trial


@contextmanager
def heartbeat(storage: RDBStorage, study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat every ``HEARTBEAT_SECONDS`` while it runs (from a thread)."""
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), trial.number
    )
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(HEARTBEAT_SECONDS):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat of trial {trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class ReportToTrial:
    """Reports the monitored value to an Optuna trial after every epoch; ends training when the trial is pruned.

    Runs when an epoch completes, after the monitor and before the checkpoint: a pruned run stops
    as early stopping stops it (its last checkpoint says training has ended), is tested and
    finished as usual, and its ``metrics.json`` says when it was pruned (``pruned_epoch``). The
    last epoch is reported but never pruned: that trial is complete. A resumed run first reports
    the epochs it trained before, so that the new trial has them all.

    Args:
        context: the experiment's context.
        trial: the Optuna trial.
    """

    def __init__(self, context: Context, trial: optuna.Trial) -> None:
        self.context = context
        self.trial = trial
        self.pruned_epoch = 0

    def attach(self, engine: Engine, event: Any) -> None:
        engine.add_event_handler(Events.STARTED, self.report_history)
        engine.add_event_handler(event, self)
        engine.add_event_handler(RunEvents.RUN_FINISHED, self.mark_pruned)

    def report_history(self) -> None:
        """Report every epoch trained so far (before a resume)."""
        for record in self.context.history.records:
            self.trial.report(self.context.monitor.value(record), record["epoch"])

    def __call__(self, engine: Engine) -> None:
        record = self.context.history.records[-1]
        self.trial.report(self.context.monitor.value(record), record["epoch"])
        if record["epoch"] < (engine.state.max_epochs or 0) and self.trial.should_prune():
            logger.info("Trial %d pruned after epoch %d", self.trial.number, record["epoch"])
            self.pruned_epoch = record["epoch"]
            engine.terminate()

    def mark_pruned(self, engine: Engine) -> None:
        """Add ``pruned_epoch`` to the run's ``metrics.json``."""
        if self.pruned_epoch:
            engine.state.results["metrics"]["pruned_epoch"] = self.pruned_epoch  # type: ignore[attr-defined]

    def state_dict(self) -> dict[str, Any]:
        return {"pruned_epoch": self.pruned_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.pruned_epoch = int(state["pruned_epoch"])


class TrialRunner:
    """Runs the trials a process takes: a new run, a resumed one, or a finished one whose results are reused.

    It keeps the last data set it loaded, so trials that share ``data`` settings load it once.
    """

    def __init__(self, plan: SweepPlan, study: optuna.Study, storage: RDBStorage) -> None:
        self.plan = plan
        self.study = study
        self.storage = storage
        self.sweep = SweepDir(plan.sweep_dir)
        self._data: tuple[Any, ImageData] | None = None

    def run(self, trial: optuna.Trial) -> None:
        """Run the trial and tell the study how it ended: complete, pruned or failed (with its error)."""
        state = _optuna().trial.TrialState
        name = trial_name(self.plan.params, trial.params)
        rundir = self.sweep.trial(name)
        experiment: Experiment | None = None
        with heartbeat(self.storage, self.study, trial):
            try:
                config = load_config(self.plan.config, self._overrides(trial.params, name))
                if rundir.finished:
                    _check_same_config(rundir, config)
                    logger.info("Trial %d %s: finished before; its results are kept", trial.number, name)
                    metrics = json.loads(rundir.metrics.read_text())
                else:
                    experiment = self._experiment(rundir, config, trial)
                    logger.info(
                        "Trial %d %s: %s", trial.number, name, "resuming" if experiment.resuming else "training"
                    )
                    metrics = experiment.run()
                if metrics.get("best_value") is None:
                    raise SweepError("the run has no best epoch (no epoch was trained)")
            except (Interrupted, KeyboardInterrupt):
                self.study.tell(trial, state=state.FAIL)  # no error: the next start of the sweep resumes it
                raise
            except Exception as err:
                error = _describe(err)
                trial.set_user_attr("error", error)
                if experiment is not None:
                    trial.set_user_attr("epochs", len(experiment.history))
                self.study.tell(trial, state=state.FAIL)
                logger.warning("Trial %d %s failed: %s", trial.number, name, error)
                return
        for key in ("best_value", "test_accuracy"):
            trial.set_user_attr(key, metrics[key])
        trial.set_user_attr("epochs", metrics["epochs_trained"])
        if metrics.get("pruned_epoch"):
            self.study.tell(trial, state=state.PRUNED)
        else:
            self.study.tell(trial, metrics["best_value"])
        logger.info(
            "Trial %d %s: %s, %s %.4f, test accuracy %.4f",
            trial.number,
            name,
            "pruned" if metrics.get("pruned_epoch") else "complete",
            self.plan.monitor,
            metrics["best_value"],
            metrics["test_accuracy"],
        )

    def _overrides(self, values: Mapping[str, Any], name: str) -> list[str]:
        swept = [f"{p.key}={p.text(values[p.key])}" for p in self.plan.params]
        return [*self.plan.overrides, *swept, f"output_dir={self.plan.sweep_dir}", f"name={name}"]

    def _experiment(self, rundir: RunDir, config: Config, trial: optuna.Trial) -> Experiment:
        if rundir.exists():
            _check_same_config(rundir, config)
            experiment = resume_experiment(rundir.path, self._load_data(config))
        else:
            experiment = build_experiment(config, self._load_data(config))
        if self.plan.prune != "none":
            experiment.add_handler(ReportToTrial, trial=trial)
        return experiment

    def _load_data(self, config: Config) -> ImageData:
        key = config.with_absolute_paths().data
        if self._data is None or self._data[0] != key:
            self._data = (key, load_data(key))
        return self._data[1]


def _describe(error: BaseException) -> str:
    text = first_line(error)
    return text if isinstance(error, FmnistIgniteError) else f"{type(error).__name__}: {text}"


def _check_same_config(rundir: RunDir, config: Config) -> None:
    differing = _differences(rundir.load_config().to_dict(), config.with_absolute_paths().to_dict())
    if differing:
        raise ConfigError(
            f"{rundir} was made with other settings ({', '.join(differing[:3])}); "
            "sweep under another --name, or remove that folder"
        )


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(a.keys() | b.keys()) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if a != b else []


def _run_workers(plan: SweepPlan, workers: int) -> None:
    """Run ``workers`` processes of :func:`work`; forward SIGINT and SIGTERM to them, once each."""
    context = multiprocessing.get_context("spawn")
    level = logging.getLogger("fmnist_ignite").getEffectiveLevel()
    processes = [
        context.Process(target=_worker_main, args=(plan, level, f"worker {i + 1}"), name=f"sweep worker {i + 1}")
        for i in range(workers)
    ]
    received: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)} if in_main_thread else {}
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.join()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        raise Interrupted(f"{signal.Signals(received[0]).name} received", received[0])
    for process in processes:
        if process.exitcode:
            logger.warning("%s stopped with exit code %s", process.name, process.exitcode)


def _worker_main(plan: SweepPlan, level: int, label: str) -> None:
    """A worker process: its own process group (signals come from the main process, once), its lines prefixed."""
    if hasattr(os, "setpgid"):
        os.setpgid(0, 0)
    logging.basicConfig(stream=sys.stderr, format=f"{label}: %(message)s", level=logging.WARNING, force=True)
    logging.getLogger("fmnist_ignite").setLevel(level)
    logging.getLogger("ignite").setLevel(logging.CRITICAL)  # a trial's error is reported by the sweep, once
    quiet_optuna()
    if plan.threads:
        import torch

        torch.set_num_threads(plan.threads)
    try:
        work(plan, parent=os.getppid())
    except (Interrupted, KeyboardInterrupt):
        pass
    except SweepError as err:
        logger.error("error: %s", err)
