"""MLflow tracking: one MLflow run per run directory, holding the config, every epoch, the test metrics and the files.

Ignite's ``MLflowLogger`` keeps the tracking URI and the active run in MLflow's process-wide state
and cannot reopen a run by its id, which a resumed run needs; so this handler talks to the store
through its own ``MlflowClient``, and two experiments in one process do not share anything.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ignite.engine import Engine, Events

from ..config import LoggingConfig, flatten
from ..context import Context
from ..errors import ConfigError, RunDirError, first_line
from ..events import RunEvents
from ..interrupt import Interrupted
from ..registry import HANDLERS
from ..runfiles import MlflowRun

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

NOT_METRICS = ("epoch", "seconds")  # history columns that are the step, or not a metric of the model
SERVERS = ("http", "https", "databricks")  # URI schemes whose server decides where the files go
BATCH = 100  # MLflow takes at most 100 parameters (1000 metrics) per request


# How long MLflow's HTTP client may try, where the user has not said (MLflow's own defaults retry a
# refused connection for minutes): reaching the store at start is one try; later requests a few.
# MLflow 3 refuses its file store (``file://``, a plain path) unless told: it still reads and writes it, and so do we.
FILE_STORE = {"MLFLOW_ALLOW_FILE_STORE": "true"}
AT_START = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", **FILE_STORE}
LATER = {
    **FILE_STORE,
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


@contextmanager
def bounded_requests(limits: Mapping[str, str]) -> Iterator[None]:
    """MLflow's retry and timeout settings (environment variables it reads at each request) bounded
    by ``limits`` while our client runs; a variable the user set is left as it is, and each is
    restored afterwards."""
    added = [name for name in limits if name not in os.environ]
    os.environ.update({name: limits[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def default_tracking_uri(output_dir: str | Path) -> str:
    """``sqlite:///<output_dir>/mlflow.db``: one database for every run in ``output_dir``."""
    return f"sqlite:///{Path(output_dir).absolute() / 'mlflow.db'}"


def flat_params(tree: Mapping[str, Any]) -> dict[str, str]:
    """``{"optimizer": {"lr": 0.01}}`` as ``{"optimizer.lr": "0.01"}`` (see :func:`~fmnist_ignite.config.flatten`);
    a value other than text as JSON."""
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in flatten(tree).items()}


@HANDLERS.register("mlflow")
class MLflow:
    """Logs the run to MLflow: the config as parameters, every epoch's metrics, the test metrics and the files.

    A run directory is one MLflow run, whose id is kept in ``RUN_DIR/mlflow.json``; a resumed run
    continues it. What happens when:

    - **the run starts** (:attr:`~fmnist_ignite.events.RunEvents.RUN_STARTED`), before anything is
      written: reach the tracking store and find the experiment, or create it (its files go to
      ``<output_dir>/mlartifacts`` unless the store is a server). A store that cannot be reached
      is a :class:`~fmnist_ignite.ConfigError` and the run does not start.
    - **training starts**: create the MLflow run, or reopen this run directory's (marked
      ``RUNNING`` again), and log the parameters it lacks: the resolved config, flattened
      (``optimizer.lr``).
    - **an epoch completes**: log each history column (``train_loss``, ``val_accuracy``, ``lr``,
      ...) with the epoch as step, for every epoch the MLflow run lacks. A step the run has already
      is never logged again, so after a kill and a resume each epoch has one point (the resumed
      run repeats the unsaved epoch exactly). If the store fails here, a warning is logged and
      training goes on; the epoch is logged with the next one.
    - **the run finishes** (:attr:`~fmnist_ignite.events.RunEvents.RUN_FINISHED`): log the numbers
      of ``metrics.json`` as metrics (step: the epochs trained), upload ``config.yaml``,
      ``history.json``, ``report.json``, ``metrics.json``, the pictures and ``model.pt``, and mark
      the MLflow run ``FINISHED``. If the store fails here, the run stays unfinished and resumable.
    - **the run stops unfinished** (:attr:`~fmnist_ignite.events.RunEvents.RUN_STOPPED`): mark it
      ``KILLED`` after a stop signal or Ctrl-C, ``FAILED`` after an error. A process killed outright
      leaves it ``RUNNING``.

    MLflow is imported when the run starts, not when this module is.

    Args:
        context: the experiment context.
        uri: the tracking URI (``logging.mlflow_uri``); ``None`` for ``sqlite:///<output_dir>/mlflow.db``.
        experiment: the name of the MLflow experiment (``logging.mlflow_experiment``).
    """

    fusion_aware = True  # driven by its trainer's events alone: a fused sweep may train it (sweep.fused)

    def __init__(
        self,
        context: Context,
        uri: str | None = LoggingConfig.default("mlflow_uri"),
        experiment: str = LoggingConfig.default("mlflow_experiment"),
    ) -> None:
        if importlib.util.find_spec("mlflow") is None:
            raise ConfigError(
                "logging.mlflow: the mlflow package is not installed; pip install 'fmnist_ignite[mlflow]' installs it"
            )
        self.context = context
        self.uri = uri or default_tracking_uri(context.config.output_dir)
        self.experiment = experiment
        self.experiment_id = ""
        self.run_id: str | None = None
        self.client: MlflowClient | None = None
        self.saved: Run | None = None  # the MLflow run of mlflow.json, looked up when the run starts
        self.logged: dict[str, int] = {}  # metric -> the last step the MLflow run has

    def attach(self, engine: Engine, event: Any) -> None:
        engine.add_event_handler(RunEvents.RUN_STARTED, self._bounded(lambda _: self.connect(), AT_START))
        engine.add_event_handler(Events.STARTED, self._bounded(lambda _: self.open(), LATER))
        engine.add_event_handler(event, self._bounded(self, LATER))
        engine.add_event_handler(RunEvents.RUN_FINISHED, self._bounded(self.log_results, LATER))
        engine.add_event_handler(RunEvents.RUN_STOPPED, self._bounded(self.mark_stopped, LATER))

    @staticmethod
    def _bounded(step: Callable[[Engine], None], limits: Mapping[str, str]) -> Callable[[Engine], None]:
        """``step`` run with MLflow's requests bounded (:func:`bounded_requests`)."""

        def run(engine: Engine) -> None:
            with bounded_requests(limits):
                step(engine)

        return run

    def connect(self) -> None:
        """Reach the tracking store, find (or create) the experiment, and look up the run of ``mlflow.json``.

        All of it before the run writes or removes anything, so that a damaged ``mlflow.json``
        stops a resume while the run directory is still as it was.

        Raises:
            ConfigError: the store cannot be reached, or the experiment is deleted.
            RunDirError: ``mlflow.json`` is damaged, or names a run the store cannot give.
        """
        from mlflow.tracking import MlflowClient

        logger.info("MLflow: experiment '%s' in %s", self.experiment, self.uri)
        try:
            if self.uri.startswith("sqlite:///"):
                Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            client = MlflowClient(self.uri)
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                self.experiment_id = client.create_experiment(self.experiment, self._artifact_location())
            else:
                self.experiment_id = found.experiment_id
        except Exception as err:  # MLflow's, SQLAlchemy's or the network's, whatever the store
            raise ConfigError(
                f"logging.mlflow_uri={self.uri}: cannot reach the MLflow tracking store ({first_line(err)}); "
                "nothing was written"
            ) from None
        if found is not None and found.lifecycle_stage == "deleted":
            raise ConfigError(
                f"logging.mlflow_experiment={self.experiment}: this MLflow experiment is deleted; restore it "
                f"('mlflow experiments restore --experiment-id {found.experiment_id}') or name another"
            )
        self.client = client
        self.saved = self._saved_run(client)

    def open(self) -> None:
        """Create the MLflow run, or reopen this run directory's; log the parameters it lacks."""
        if self.run_id is not None:
            return
        client = self._client()
        run = self.saved
        if run is None:
            run = client.create_run(
                self.experiment_id, run_name=self.context.config.name, tags={"run_dir": str(self.context.run_dir)}
            )
            saved = MlflowRun(run_id=run.info.run_id, experiment_id=self.experiment_id, tracking_uri=self.uri)
            self.context.rundir.write_mlflow_run(saved)
            logger.info("MLflow: run %s", run.info.run_id)
        elif run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
        run_id = self.run_id = run.info.run_id
        self.logged = {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in run.data.metrics}
        from mlflow.entities import Param

        config = flat_params(self.context.config.to_dict())
        params = [Param(k, v) for k, v in config.items() if k not in run.data.params]
        for start in range(0, len(params), BATCH):
            client.log_batch(run_id, params=params[start : start + BATCH])

    def __call__(self, engine: Engine) -> None:
        """After an epoch: log the epochs the MLflow run lacks; if the store fails, warn and go on."""
        try:
            self._log_history()
        except Exception as err:  # the store's failure, whatever its form: training goes on
            logger.warning(
                "MLflow: cannot log epoch %d (%s); it will be logged with a later epoch or at the end",
                engine.state.epoch,
                first_line(err),
            )

    def log_results(self, engine: Engine) -> None:
        """At the end: the test metrics, the run's files, and the MLflow run marked ``FINISHED``."""
        self.open()
        self._log_history()
        results = engine.state.results  # type: ignore[attr-defined]
        metrics = results["metrics"]
        step = metrics["epochs_trained"]
        numbers = [(k, v, step) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)]
        self._log_metrics(numbers)
        client, run_id, rundir = self._client(), str(self.run_id), self.context.rundir
        for path in (rundir.config, rundir.history_json, rundir.report, rundir.model, *results["figures"].values()):
            client.log_artifact(run_id, str(path))
        client.log_dict(run_id, metrics, rundir.metrics.name)
        client.set_terminated(run_id, "FINISHED")
        logger.info("MLflow: run %s finished, in %s", run_id, self.uri)

    def mark_stopped(self, engine: Engine) -> None:
        """When the run stops unfinished: the MLflow run marked ``KILLED`` (a signal) or ``FAILED`` (an error)."""
        if self.run_id is None:
            return
        error = engine.state.stop_error  # type: ignore[attr-defined]
        status = "KILLED" if isinstance(error, Interrupted | KeyboardInterrupt) else "FAILED"
        try:
            self._client().set_terminated(self.run_id, status)
        except Exception as err:  # the stop's own error matters more
            logger.warning("MLflow: cannot mark run %s as %s (%s)", self.run_id, status, first_line(err))

    def _client(self) -> MlflowClient:
        if self.client is None:
            self.connect()
        assert self.client is not None
        return self.client

    def _artifact_location(self) -> str | None:
        # MLflow's own default is ./mlruns in whatever folder the process runs from.
        if self.uri.split(":", 1)[0] in SERVERS:
            return None
        return str(Path(self.context.config.output_dir).absolute() / "mlartifacts")

    def _saved_run(self, client: MlflowClient) -> Run | None:
        """The MLflow run named in ``RUN_DIR/mlflow.json``; ``None`` for a new run, or if the store lost it."""
        from mlflow.exceptions import MlflowException

        path = self.context.rundir.mlflow_run
        saved = self.context.rundir.read_mlflow_run()
        if saved is None:
            return None
        run_id = saved.run_id
        try:
            run = client.get_run(run_id)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise RunDirError(
                    f"{path}: its MLflow run {run_id!r} cannot be read from {self.uri} ({first_line(err)}); "
                    "put the file back as the run wrote it, or remove it to log to a new MLflow run"
                ) from None
        else:
            if run.info.lifecycle_stage != "deleted":
                return run
        logger.warning("MLflow: run %s (%s) is not in %s, or is deleted; logging to a new run", run_id, path, self.uri)
        return None

    def _log_history(self) -> None:
        records = self.context.history.records
        self._log_metrics((k, v, r["epoch"]) for r in records for k, v in r.items() if k not in NOT_METRICS)

    def _log_metrics(self, points: Iterable[tuple[str, float, int]]) -> None:
        """Log each ``(key, value, step)`` whose step is past the last one the MLflow run has for that key."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        new = [Metric(k, float(v), now, step) for k, v, step in points if step > self.logged.get(k, -1)]
        for start in range(0, len(new), BATCH):
            batch = new[start : start + BATCH]
            self._client().log_batch(str(self.run_id), metrics=batch)
            for metric in batch:
                self.logged[metric.key] = max(metric.step, self.logged.get(metric.key, -1))
