"""A trial is a run directory named after its values: a new run, one resumed from its checkpoint, a finished one reused.

:class:`Objective` is what ``study.optimize`` calls. :class:`ReportToTrial` is Optuna's pruning
pattern for Ignite (``optuna_integration.PyTorchIgnitePruningHandler``) plus what a run directory
needs: the earlier epochs replayed on resume, and ``pruned_epoch`` in ``metrics.json``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ignite.engine import Engine, Events

from ..build import build_experiment
from ..config import Config, differences, load_config
from ..context import Context
from ..data import ImageData, load_data
from ..errors import ConfigError, FmnistIgniteError, SweepError, first_line
from ..events import RunEvents
from ..experiment import Experiment
from ..handlers.mlflow import sweep_run_id
from ..interrupt import Interrupted
from ..resume import resume_experiment
from ..rundir import RunDir, SweepDir
from .space import Param, SweepPlan, trial_name
from .study import load_optuna

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)


class TrialFailed(Exception):
    """The trial's run failed; the error is its ``error`` attribute (``study.optimize`` records it and goes on)."""


class ReportToTrial:
    """Reports the monitored value to an Optuna trial after each epoch; ends training when the trial should be pruned.

    It runs when an epoch completes, after the monitor and before the checkpoint: a pruned run
    stops as early stopping stops it, is tested and finished as usual, and its ``metrics.json``
    says when (``pruned_epoch``); the objective then raises ``optuna.TrialPruned``. The last epoch
    is never pruned. A resumed run first reports the epochs it trained before.
    """

    fusion_aware = True  # driven by its trainer's events alone: a fused sweep may train it (sweep.fused)

    def __init__(self, context: Context, trial: optuna.Trial) -> None:
        self.context, self.trial, self.pruned_epoch = context, trial, 0

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


def suggest(trial: optuna.Trial, param: Param) -> Any:
    """The trial's value of ``param``: the sampler's (a grid point, a drawn value), or the one queued with the trial."""
    if param.values:
        return trial.suggest_categorical(param.key, param.values)
    if param.integer:
        return trial.suggest_int(param.key, int(param.low), int(param.high), log=param.kind == "log")
    return trial.suggest_float(param.key, param.low, param.high, log=param.kind == "log")


class Objective:
    """``study.optimize``'s objective: run the trial's values; the best monitored value, else ``optuna.TrialPruned``
    or :class:`TrialFailed`. ``started`` is called once the trial has its values (another process may then look).
    The trial records where its run directory is (user attributes ``host`` and ``run_dir``) and, at its end,
    ``epochs``, ``best_value`` and ``test_accuracy`` (or ``error``): the results table is read from the study.

    It keeps the data set it loaded last: trials with the same ``data`` settings load it once. A fused
    sweep (:func:`fmnist_ignite.sweep.work`) calls its parts: :meth:`values`, :meth:`prepare`, :meth:`conclude`.
    """

    def __init__(self, plan: SweepPlan, started: Callable[[], None]) -> None:
        self.plan, self.started, self.sweep = plan, started, SweepDir(plan.sweep_dir)
        self._data: tuple[Any, ImageData] | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            values = self.values(trial)
        finally:
            self.started()
        prepared = PreparedTrial(trial, trial_name(self.plan.params, values), values)
        try:
            self.prepare(prepared)
            if prepared.experiment is not None:
                prepared.metrics = prepared.experiment.run()
        except (Interrupted, KeyboardInterrupt):
            raise  # failed without an error: the next start of the sweep resumes it
        except Exception as err:
            raise self.failed(prepared, err) from err
        return self.conclude(prepared)

    def values(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's values of the swept keys (the sampler's, or those queued with it)."""
        return {p.key: suggest(trial, p) for p in self.plan.params}

    def prepare(self, prepared: PreparedTrial) -> None:
        """The results of a trial finished before (``metrics``), else its run to train (``experiment``), new or resumed.

        Raises:
            FmnistIgniteError: the trial's config or run directory is wrong.
        """
        rundir = self.sweep.trial(prepared.name)
        # Where the run directory is: machines that share the study need not share a folder.
        prepared.trial.set_user_attr("host", socket.gethostname())
        prepared.trial.set_user_attr("run_dir", str(rundir.path))
        swept = [f"{p.key}={p.text(prepared.values[p.key])}" for p in self.plan.params]
        config = load_config(
            self.plan.config, [*self.plan.overrides, *swept, f"output_dir={self.sweep}", f"name={prepared.name}"]
        )
        if rundir.exists():
            _check_same_config(rundir, config)
        number = prepared.trial.number
        if rundir.finished:
            logger.info("Trial %d %s: finished before; its results are kept", number, prepared.name)
            prepared.metrics = rundir.read_metrics()
        else:
            prepared.experiment = self._experiment(rundir, config, prepared.trial)
            if prepared.experiment.resuming:  # (each trial's end is one line: sweep.results.FinishedTrials)
                logger.info("Trial %d %s: resuming from its last saved epoch", number, prepared.name)
            else:
                logger.debug("Trial %d %s: training", number, prepared.name)

    def failed(self, prepared: PreparedTrial, err: BaseException) -> TrialFailed:
        """Record the trial's error (and the epochs it trained) in the study; the :class:`TrialFailed` to raise."""
        trial = prepared.trial
        error = first_line(err)
        error = error if isinstance(err, FmnistIgniteError) else f"{type(err).__name__}: {error}"
        trial.set_user_attr("error", error)
        if prepared.experiment is not None:
            trial.set_user_attr("epochs", len(prepared.experiment.history))
        logger.debug("Trial %d %s failed: %s", trial.number, prepared.name, error)  # FinishedTrials says it
        return TrialFailed(error)

    def conclude(self, prepared: PreparedTrial) -> float:
        """Record a trained trial's results in the study; its best monitored value.

        Raises:
            TrialFailed: the run has no best epoch.
            optuna.TrialPruned: the trial was pruned.
        """
        trial, metrics = prepared.trial, prepared.metrics or {}
        if metrics.get("best_value") is None:
            raise self.failed(prepared, SweepError("the run has no best epoch (no epoch was trained)"))
        for key in ("best_value", "test_accuracy"):
            trial.set_user_attr(key, metrics[key])
        trial.set_user_attr("epochs", metrics["epochs_trained"])
        logger.debug(  # FinishedTrials says it
            "Trial %d %s: %s, %s %.4f, test accuracy %.4f", trial.number, prepared.name,
            "pruned" if metrics.get("pruned_epoch") else "complete",
            self.plan.monitor, metrics["best_value"], metrics["test_accuracy"],
        )  # fmt: skip
        if metrics.get("pruned_epoch"):
            raise load_optuna().TrialPruned(f"pruned after epoch {metrics['pruned_epoch']}")
        return float(metrics["best_value"])

    def _experiment(self, rundir: RunDir, config: Config, trial: optuna.Trial) -> Experiment:
        key = config.with_absolute_paths().data
        if self._data is None or self._data[0] != key:
            self._data = (key, load_data(key))
        if rundir.exists():
            experiment = resume_experiment(rundir.path, self._data[1])
        else:
            experiment = build_experiment(config, self._data[1])
        if "mlflow" in experiment.handlers:  # the trial's MLflow run is a child of the sweep's
            experiment.handlers["mlflow"].parent_run_id = sweep_run_id(trial.study)
        if self.plan.prune != "none":
            experiment.add_handler(ReportToTrial, trial=trial)
        return experiment


@dataclass
class PreparedTrial:
    """A trial with its values: its run to train (``experiment``) or the results it had (``metrics``)."""

    trial: optuna.Trial
    name: str
    values: dict[str, Any]
    experiment: Experiment | None = None
    metrics: dict[str, Any] | None = None
    ready: bool = False  # prepared (see Objective.prepare)
    error: BaseException | None = None  # preparing it failed


def _check_same_config(rundir: RunDir, config: Config) -> None:
    differing = list(differences(rundir.load_config().to_dict(), config.with_absolute_paths().to_dict()))
    if differing:
        raise ConfigError(
            f"{rundir} was made with other settings ({', '.join(differing[:3])}); "
            "sweep under another --name, or remove that folder"
        )
