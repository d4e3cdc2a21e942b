"""The sweep's Optuna study: storage with a heartbeat, sampler and pruner by name, whose turn it is to start a trial.

Optuna keeps the books: the storage fails a trial whose heartbeat stopped (its process is gone) and
queues its values again; ``GridSampler`` hands out a grid's points. Ours are two rules Optuna has no
word for: a failed trial is tried again once per start (:func:`retry_failed`), and the sweep's
processes start trials one at a time (:class:`Turn`): this machine's through a lock in the sweep's
folder, all machines' through a lock in the study's PostgreSQL database (:func:`database_lock`).
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import threading
import warnings
import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, SweepError, first_line
from ..rundir import SweepDir
from .space import SweepPlan, grid_points, trial_name

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

logger = logging.getLogger(__name__)

# Seconds between a running trial's heartbeats (tests shorten it); one silent for three of them is taken for dead.
HEARTBEAT_VARIABLE = "FMNIST_IGNITE_SWEEP_HEARTBEAT"


def load_optuna() -> ModuleType:
    """Optuna, or a :class:`SweepError` saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise SweepError("sweeps need Optuna: pip install 'fmnist_ignite[sweep]' (or pip install optuna)") from None
    return optuna


def _quietly(call: Any, *args: Any, **kwargs: Any) -> Any:
    # Optuna calls its heartbeat and its retry callback experimental: they are what a sweep relies on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", load_optuna().exceptions.ExperimentalWarning)
        return call(*args, **kwargs)


def make(kind: str, name: str) -> Any:
    """A sampler (``kind`` ``sampler``) or pruner (``prune``) of Optuna's that needs no arguments, by short name.

    ``TPESampler`` is ``tpe``, ``MedianPruner`` is ``median``, ``NopPruner`` is ``none``.

    Raises:
        ConfigError: Optuna has none of that name (the message lists those it has), or it cannot be made.
    """
    module = load_optuna().samplers if kind == "sampler" else load_optuna().pruners
    suffix = "Sampler" if kind == "sampler" else "Pruner"
    known = {
        cls.__name__.removesuffix(suffix).lower().replace("nop", "none"): cls
        for cls in (getattr(module, n) for n in module.__all__)
        if inspect.isclass(cls) and cls.__name__.endswith(suffix) and not inspect.isabstract(cls)
        and all(p.default is not p.empty for p in inspect.signature(cls).parameters.values())
    }  # fmt: skip
    if name not in known:
        raise ConfigError(f"--{kind} {name!r}: choose one of {', '.join(sorted(known))}")
    try:
        return _quietly(known[name])
    except Exception as err:  # a package it needs is missing, or it needs settings after all
        raise ConfigError(f"--{kind} {name}: {first_line(err)}") from None


def _retry(study: optuna.Study, trial: FrozenTrial) -> None:
    logger.info("Trial %d sent no heartbeat for a while (its process is gone): it will be run again", trial.number)
    _quietly(load_optuna().storages.RetryHeartbeatStaleTrialCallback)(study, trial)


def _write_ahead(storage: Any) -> None:
    """SQLite's write-ahead log for the study's database: each of Optuna's many small commits (a trial's
    values, its reports each epoch, its end) writes the log once instead of the database and its journal.

    ``synchronous=NORMAL``: a commit survives its process being killed; only a power cut may lose the
    last ones (a trial then runs again). The log needs the processes on one machine, as SQLite does here.
    """
    from sqlalchemy import event

    def pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    engine = storage.engine
    event.listen(engine, "connect", pragmas)
    engine.dispose()  # the connection that made the tables goes; the next ones are made with the log
    # Closed when the storage goes (at the latest when the interpreter exits): the last connection to close
    # moves the log into the database and removes it, leaving study.db whole on its own.
    weakref.finalize(storage, engine.dispose)


def _grid_sampler(space: dict[str, list[Any]]) -> optuna.samplers.GridSampler:
    """Optuna's ``GridSampler`` over ``space``, without its check after each trial.

    After every trial ``GridSampler`` reads every trial of the study to see whether the grid is
    done, and stops ``study.optimize`` if so. The sweep needs neither: :class:`Turn` decides when no
    trial is left to start (and stops ``optimize``), and the reading is costly in a fused group,
    whose trials all run at once (a storage caches finished trials only): 16 trials told one after
    the other read 16 running trials each.
    """
    optuna = load_optuna()

    class Grid(optuna.samplers.GridSampler):  # type: ignore[name-defined]
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            """Nothing: see :func:`_grid_sampler`."""

    return Grid(space)


def open_study(plan: SweepPlan) -> optuna.Study:
    """The sweep's study, created if absent; it must have been started with the same definition (kept in it).

    Raises:
        ConfigError: the study was started with other swept values, another monitor or pruning.
        SweepError: the storage cannot be opened.
    """
    optuna = load_optuna()
    beat = int(os.environ.get(HEARTBEAT_VARIABLE) or 10)
    kwargs = {"connect_args": {"timeout": 60}} if plan.storage.startswith("sqlite") else {}
    with database_lock(plan.storage, None):  # machines opening a new database at once: its tables are made once
        try:
            storage = _quietly(
                optuna.storages.RDBStorage, plan.storage, kwargs, heartbeat_interval=beat, grace_period=3 * beat,
                heartbeat_stale_trial_callback=_retry,
            )  # fmt: skip
        except Exception as err:  # a bad URL, a missing driver, a server that does not answer
            raise SweepError(f"cannot open the study storage {_shown(plan.storage)}: {_driver_hint(err)}") from None
        if plan.storage.startswith("sqlite"):
            _write_ahead(storage)
    grid = None
    if plan.trials is None:
        grid = _grid_sampler({p.key: list(p.values) for p in plan.params})
        # In the order given, not shuffled: Optuna shuffles to make two processes less likely to pick the same point,
        # which Turn rules out; the median pruner judges a trial by those before it. (Values by sorted key.)
        grid._all_grids = [tuple(point[k] for k in sorted(point)) for point in grid_points(plan.params)]
    with database_lock(plan.storage, plan.study):  # the first machine to open the study writes its definition
        study = optuna.create_study(
            storage=storage, sampler=grid or make("sampler", plan.sampler), pruner=make("prune", plan.prune),
            study_name=plan.study, direction=plan.direction, load_if_exists=True,
        )  # fmt: skip
        saved = study.user_attrs.get("sweep")
        if saved is None:
            study.set_user_attr("sweep", plan.definition())
    if saved is not None and saved != plan.definition():
        space = " ".join(f"{k}={v}" for k, v in saved["space"].items())
        raise ConfigError(
            f"study {plan.study!r} in {_shown(plan.storage)} was started with other settings ({space}, "
            f"monitor {saved['monitor']}, --prune {saved['prune']}); run that command again, or choose another --name"
        )
    return study


class Heartbeat:
    """The storage's heartbeat for the trials :meth:`add` gives it, while in the ``with`` block, as
    ``study.optimize`` keeps one for its trial: a trial whose process is killed is then taken for dead and
    queued again.

    A trial's first beat is recorded when it is added (a fused sweep adds each trial as soon as it has its
    values: a process killed while it asks for the rest of its group leaves no trial that could never be
    taken for dead); then one thread beats for every trial added, once an interval (``optimize`` starts a
    thread per trial). A beat that fails (a locked database, a lost connection) is logged, and the next
    ones are tried as usual.
    """

    def __init__(self, study: optuna.Study) -> None:
        storage: Any = study._storage if isinstance(study._storage, _heartbeat_base()) else None
        self.storage = storage
        self.interval: int | None = None if storage is None else storage.get_heartbeat_interval()
        self.numbers: dict[int, int] = {}  # trial id: trial number
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.thread: threading.Thread | None = None

    def add(self, trial: optuna.Trial) -> None:
        """Beat for ``trial`` from now on; its first beat now."""
        if self.interval is not None:
            with self.lock:
                self.numbers[trial._trial_id] = trial.number
            self._beat(trial._trial_id, trial.number)

    def _beat(self, trial_id: int, number: int) -> None:
        try:
            self.storage.record_heartbeat(trial_id)
        except Exception as err:  # the storage's own failure, whatever its form
            logger.warning(
                "Trial %d: its heartbeat could not be recorded (%s); trying again in %d s",
                number, first_line(err), self.interval,
            )  # fmt: skip

    def _run(self) -> None:
        assert self.interval is not None
        while not self.stop.wait(self.interval):
            with self.lock:
                trials = list(self.numbers.items())
            for trial_id, number in trials:
                self._beat(trial_id, number)

    def __enter__(self) -> Heartbeat:
        if self.interval is not None:
            self.thread = threading.Thread(target=self._run, name="fmnist-ignite-heartbeat", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


def _heartbeat_base() -> type:
    from optuna.storages._heartbeat import BaseHeartbeat  # no public name: the storages that keep heartbeats

    return BaseHeartbeat


@contextmanager
def asking(study: optuna.Study) -> Iterator[None]:
    """Ask and tell in the ``with`` block as ``study.optimize`` does (a fused sweep asks for several trials at once).

    Optuna marks its optimize loop in a thread-local flag: outside it, ``ask`` warns that the storage's
    heartbeat is meant for ``optimize``, and ``GridSampler``'s ``study.stop()`` after the grid's last
    point raises. The fused sweep keeps the heartbeat itself (:class:`Heartbeat`), as ``optimize`` does.
    """
    local = study._thread_local
    before = local.in_optimize_loop
    local.in_optimize_loop = True
    try:
        yield
    finally:
        local.in_optimize_loop = before


def _shown(url: str) -> str:
    """The storage URL without its password."""
    return re.sub(r"(//[^/:@]*:)[^/@]*@", r"\1***@", url)


def _driver_hint(err: Exception) -> str:
    """The error's first line; for a missing PostgreSQL driver, with what to install."""
    if isinstance(err, ImportError) and "psyco" in str(err):
        return f"{first_line(err)} (pip install 'fmnist_ignite[postgres]' and write postgresql+psycopg://...)"
    return first_line(err)


@contextmanager
def database_lock(storage: str, study: str | None) -> Iterator[None]:
    """Hold a lock in the storage's database while the block runs: ``study``'s, or (None) the whole database's.

    On PostgreSQL, which machines share, it is an advisory lock (``pg_advisory_xact_lock``) named after
    the study, taken in a transaction of a connection of its own: the end of the block, or of the
    process (a kill: the server drops its connection), lets it go; a machine lost while it holds the
    lock is dropped after 25 s of silence (TCP keepalives), not the system's hours. Other storages
    take none: SQLite lives in one machine's folder, where the sweep folder's lock does this.

    Raises:
        SweepError: the database cannot be reached (or its driver is missing).
    """
    if not re.match(r"postgresql(\+\w+)?://", storage):
        yield
        return
    import sqlalchemy  # Optuna's storage is built on it

    with ExitStack() as held:
        try:
            engine = sqlalchemy.create_engine(storage, poolclass=sqlalchemy.NullPool)
            held.callback(engine.dispose)
            connection = held.enter_context(engine.connect())
            name = "fmnist_ignite sweeps" if study is None else f"fmnist_ignite sweep {study}"
            keepalive = ", ".join(
                f"set_config('tcp_keepalives_{key}', '{value}', true)"
                for key, value in (("idle", 10), ("interval", 5), ("count", 3))
            )
            connection.execute(sqlalchemy.text(f"SELECT {keepalive}"))
            connection.execute(
                sqlalchemy.text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))"), {"name": name}
            )
        except Exception as err:  # a server that does not answer, a missing driver
            raise SweepError(f"cannot open the study storage {_shown(storage)}: {_driver_hint(err)}") from None
        yield


def points(plan: SweepPlan, trials: list[FrozenTrial]) -> dict[str, list[FrozenTrial]]:
    """The study's trials by the name of their values (their run directory), in order (queued ones left out)."""
    found: dict[str, list[FrozenTrial]] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.state.name != "WAITING" and set(trial.params) == {p.key for p in plan.params}:
            found.setdefault(trial_name(plan.params, trial.params), []).append(trial)
    return found


def retry_failed(study: optuna.Study, plan: SweepPlan) -> None:
    """Queue the values of each trial that failed (and has not run since) again: once per start of the sweep.

    Optuna would not: its grid counts a failed point as done, and a sampler does not draw the same values twice.
    """
    trials = study.get_trials(deepcopy=False)
    queued = _queued_points(plan, trials)
    for name, tried in points(plan, trials).items():
        if name not in queued and {t.state.name for t in tried} == {"FAIL"}:
            study.enqueue_trial(tried[-1].params, user_attrs={"again": tried[-1].number})


def _queued_points(plan: SweepPlan, trials: list[FrozenTrial]) -> set[str]:
    """The names of the values of the study's queued trials."""
    waiting = [t.params or t.system_attrs.get("fixed_params", {}) for t in trials if t.state.name == "WAITING"]
    return {trial_name(plan.params, values) for values in waiting if values}


def requeue_valueless(study: optuna.Study, plan: SweepPlan) -> None:
    """Fail each trial of a grid that a stopped process left between Optuna's ``ask`` and its values, and queue
    its grid point again.

    Such a trial has its grid point (``GridSampler`` counts it as running) but no values and no
    heartbeat: nothing would ever end it, and its point would be handed out to no trial again while
    others are handed out twice. Called while the turn is held (:meth:`Turn.take`): no process is
    between asking and its values then.
    """
    if plan.trials is not None:
        return
    points = grid_points(plan.params)  # in the order open_study gave the sampler
    for trial in study.get_trials(deepcopy=False, states=(load_optuna().trial.TrialState.RUNNING,)):
        grid_id = trial.system_attrs.get("grid_id")
        if trial.params or grid_id is None or not 0 <= grid_id < len(points):
            continue
        with asking(study):
            study.tell(trial.number, state=load_optuna().trial.TrialState.FAIL)
        study.enqueue_trial(points[grid_id], user_attrs={"again": trial.number})
        logger.info(
            "Trial %d was left without its values by a process that stopped: they are queued again", trial.number
        )


def startable(study: optuna.Study, plan: SweepPlan) -> bool:
    """Whether a trial is left to start: one queued, a grid point never started, or a sampled one within ``trials``."""
    return to_start(study, plan) > 0


def to_start(study: optuna.Study, plan: SweepPlan) -> int:
    """How many trials are left to start: those queued, and the grid's points never started or the sampled trials
    that ``trials`` has room for.

    Trials that run earlier ones again (queued by :func:`retry_failed` or the heartbeat) do not count
    against ``trials``.
    """
    _quietly(load_optuna().storages.fail_stale_trials, study)  # a dead process's trial is queued again
    trials = study.get_trials(deepcopy=False)
    queued = sum(t.state.name == "WAITING" for t in trials)
    if plan.trials is None:
        started = set(points(plan, trials)) | _queued_points(plan, trials)  # one queued again: counted as queued
        return queued + sum(trial_name(plan.params, values) not in started for values in grid_points(plan.params))
    counted = sum("again" not in t.user_attrs and "failed_trial" not in t.system_attrs for t in trials)
    return queued + max(0, plan.trials - counted)


class Turn:
    """The sweep's locks, held from "is a trial left to start?" (:meth:`take`) until the trial that Optuna then
    asks for has its values (:meth:`release`): the sweep's processes start trials one at a time.

    Optuna cannot promise this by itself: ``study.optimize`` asks for a trial as soon as the last
    one ends, so two processes asking at once when one grid point is left get the same point
    (``GridSampler`` hands out running points again once all are started), and a sampled sweep
    gets more than ``trials`` (``MaxTrialsCallback`` counts after a trial, not before the next).
    The lock in the sweep's folder covers this machine's processes; :func:`database_lock` those of
    every machine on a PostgreSQL storage (each with an ``output_dir`` of its own).
    """

    def __init__(self, plan: SweepPlan, study: optuna.Study) -> None:
        self.plan, self.study, self.sweep = plan, study, SweepDir(plan.sweep_dir)
        self.held = ExitStack()
        self.left = 0

    def take(self) -> bool:
        """Whether a trial is left to start; if so the locks stay held for it (an error lets them go), and
        :attr:`left` says how many may be started under them (no other process starts one meanwhile)."""
        self.release()  # never twice: a second flock of this process would wait for the first
        with ExitStack() as held:
            held.enter_context(self.sweep.lock())
            held.enter_context(database_lock(self.plan.storage, self.plan.study))
            requeue_valueless(self.study, self.plan)
            self.left = to_start(self.study, self.plan)
            if not self.left:
                return False
            self.held = held.pop_all()
        return True

    def release(self) -> None:
        """Let the next process look: the trial this one started has its values in the study."""
        self.held.close()
