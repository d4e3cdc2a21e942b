"""MLflow tracking: one MLflow run per run directory, holding the config, every epoch, the test metrics, the files
and the trained model in MLflow's own format.

Ignite's ``MLflowLogger`` keeps the tracking URI and the active run in MLflow's process-wide state
and cannot reopen a run by its id, which a resumed run needs; so this handler talks to the store
through its own ``MlflowClient``, and two experiments in one process do not share anything.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from ignite.engine import Engine, Events

from ..config import Config, LoggingConfig, flatten
from ..context import Context
from ..errors import ConfigError, ExportError, RunDirError, first_line, program_name
from ..evaluation import load_trained_model
from ..events import RunEvents
from ..interrupt import Interrupted
from ..registry import HANDLERS
from ..runfiles import MlflowRun
from ..serving import ExportableClassifier, describe, onnx_model

if TYPE_CHECKING:
    import optuna
    from mlflow.entities import LoggedModel, Run
    from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

NOT_METRICS = ("epoch", "seconds")  # history columns that are the step, or not a metric of the model
SERVERS = ("http", "https", "databricks")  # URI schemes whose server decides where the files go
BATCH = 100  # MLflow takes at most 100 parameters (1000 metrics) per request
MODEL = "model"  # the MLflow model's name in its run: runs:/<run_id>/model
INSTALL_HINT = "pip install 'fmnist_ignite[mlflow]'"
SWEEP_RUN = "mlflow_run"  # the Optuna study's user attribute holding the sweep's MLflow run


# How long MLflow's HTTP client may try, where the user has not said (MLflow's own defaults retry a
# refused connection for minutes): reaching the store at start is one try; later requests a few.
# MLflow 3 refuses its file store (``file://``, a plain path) unless told: it still reads and writes it, and so do we.
# The run's output is ours: no progress bars of MLflow's downloads, no links printed on stdout when a run ends.
ALWAYS = {
    "MLFLOW_ALLOW_FILE_STORE": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
AT_START = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", **ALWAYS}
LATER = {
    **ALWAYS,
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


@contextmanager
def bounded_requests(limits: Mapping[str, str]) -> Iterator[None]:
    """MLflow's settings (environment variables it reads at each request: retries, timeouts, its output)
    as ``limits`` says while our client runs; a variable the user set is left as it is, and each is
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


def git_commit() -> str | None:
    """The commit checked out where the code runs from (this package's folder, else the current one); ``None``
    outside a git checkout, or without git."""
    try:
        import git  # GitPython, which MLflow installs; it fails to import where git itself is missing
    except ImportError:
        return None
    for folder in (Path(__file__).resolve().parent, Path.cwd()):
        try:
            return str(git.Repo(folder, search_parent_directories=True).head.commit.hexsha)
        except Exception:  # not a checkout, no commit yet, a damaged repository: nothing to record
            continue
    return None


def source_tags() -> dict[str, str]:
    """Where a run comes from: the command line, the git commit (in a checkout) and the versions of the packages."""
    import ignite

    tags = {
        "mlflow.source.name": program_name(),
        "mlflow.source.type": "LOCAL",
        "command": " ".join([program_name(), *map(shlex.quote, sys.argv[1:])]),
        "version.torch": torch.__version__,
        "version.ignite": ignite.__version__,
    }
    with suppress(PackageNotFoundError):  # not when run from a folder on PYTHONPATH, never installed
        tags["version.fmnist_ignite"] = package_version("fmnist_ignite")
    commit = git_commit()
    if commit is not None:
        tags["mlflow.source.git.commit"] = commit
    return tags


def flat_params(tree: Mapping[str, Any]) -> dict[str, str]:
    """``{"optimizer": {"lr": 0.01}}`` as ``{"optimizer.lr": "0.01"}`` (see :func:`~fmnist_ignite.config.flatten`);
    a value other than text as JSON."""
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in flatten(tree).items()}


def reach(uri: str, experiment: str, output_dir: str | Path) -> tuple[MlflowClient, str]:
    """A client of the tracking store at ``uri``, and the id of ``experiment`` there (created if missing: its
    files go to ``<output_dir>/mlartifacts`` unless the store is a server).

    Raises:
        ConfigError: the store cannot be reached, or the experiment is deleted.
    """
    from mlflow.tracking import MlflowClient

    # MLflow's own default is ./mlruns in whatever folder the process runs from.
    server = uri.split(":", 1)[0] in SERVERS
    location = None if server else str(Path(output_dir).absolute() / "mlartifacts")
    try:
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = client.create_experiment(experiment, location) if found is None else found.experiment_id
    except Exception as err:  # MLflow's, SQLAlchemy's or the network's, whatever the store
        advice = ": start the tracking server, or correct logging.mlflow_uri, and run again" if server else ""
        raise ConfigError(
            f"logging.mlflow_uri={uri}: cannot reach the MLflow tracking store ({first_line(err)}); "
            f"nothing was written{advice}"
        ) from None
    if found is not None and found.lifecycle_stage == "deleted":
        raise ConfigError(
            f"logging.mlflow_experiment={experiment}: this MLflow experiment is deleted; restore it "
            f"('mlflow experiments restore --experiment-id {found.experiment_id}') or name another"
        )
    return client, experiment_id


def open_sweep_run(study: optuna.Study, config: Config, sweep_dir: str | Path) -> None:
    """Give a sweep an MLflow run of its own, named after its study, whose child runs its trials are.

    Its id is kept in the study (a user attribute), so every process and machine of the sweep finds
    it; a sweep started again keeps it. The store is the one the trials log to (``config``'s, with
    ``output_dir`` the sweep's folder).

    Raises:
        ConfigError: the store cannot be reached, or the experiment is deleted.
    """
    from mlflow.exceptions import MlflowException

    logging_ = config.with_absolute_paths().logging
    uri = logging_.mlflow_uri or default_tracking_uri(sweep_dir)
    with bounded_requests(AT_START):
        client, experiment_id = reach(uri, logging_.mlflow_experiment, sweep_dir)
    with bounded_requests(LATER):
        saved = study.user_attrs.get(SWEEP_RUN)
        if saved is not None:
            try:
                if client.get_run(saved["run_id"]).info.lifecycle_stage != "deleted":
                    client.update_run(saved["run_id"], status="RUNNING")  # until the sweep writes its results
                    return
            except MlflowException:  # the store lost it: the sweep gets a new one
                pass
        tags = {"sweep_dir": str(sweep_dir), "study": study.study_name, **source_tags()}
        run = client.create_run(experiment_id, run_name=study.study_name, tags=tags)
    study.set_user_attr(SWEEP_RUN, {"run_id": run.info.run_id, "tracking_uri": uri})
    logger.info("MLflow: sweep run %s", run.info.run_id)


def sweep_run_id(study: optuna.Study) -> str | None:
    """The id of the sweep's MLflow run (see :func:`open_sweep_run`); ``None`` if it has none."""
    saved = study.user_attrs.get(SWEEP_RUN)
    return None if saved is None else str(saved["run_id"])


def finish_sweep_run(study: optuna.Study) -> None:
    """Mark the sweep's MLflow run ``FINISHED``, if it has one; a store that fails is a warning."""
    saved = study.user_attrs.get(SWEEP_RUN)
    if saved is None:
        return  # before importing MLflow, which takes a second
    from mlflow.tracking import MlflowClient

    with bounded_requests(LATER):
        try:
            MlflowClient(saved["tracking_uri"]).set_terminated(saved["run_id"], "FINISHED")
        except Exception as err:  # the sweep's results matter more
            logger.warning("MLflow: cannot mark the sweep's run %s finished (%s)", saved["run_id"], first_line(err))


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
        register: the name in MLflow's Model Registry the model is registered under (``logging.mlflow_register``);
            ``None``: not registered.
        parent_run_id: the MLflow run this one is a child of (a sweep's run, for its trials); ``None``: none.
    """

    fusion_aware = True  # driven by its trainer's events alone: a fused sweep may train it (sweep.fused)

    def __init__(
        self,
        context: Context,
        uri: str | None = LoggingConfig.default("mlflow_uri"),
        experiment: str = LoggingConfig.default("mlflow_experiment"),
        register: str | None = LoggingConfig.default("mlflow_register"),
        parent_run_id: str | None = None,
    ) -> None:
        for package in ("mlflow", "onnx"):
            if importlib.util.find_spec(package) is None:
                raise ConfigError(f"logging.mlflow: the {package} package is not installed; {INSTALL_HINT} installs it")
        self.context = context
        self.uri = uri or default_tracking_uri(context.config.output_dir)
        self.experiment = experiment
        self.register = register
        self.parent_run_id = parent_run_id
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
        logger.info("MLflow: experiment '%s' in %s", self.experiment, self.uri)
        client, self.experiment_id = reach(self.uri, self.experiment, self.context.config.output_dir)
        self.client = client
        self.saved = self._saved_run(client)

    def open(self) -> None:
        """Create the MLflow run, or reopen this run directory's; log the parameters it lacks."""
        if self.run_id is not None:
            return
        client = self._client()
        run = self.saved
        if run is None:
            tags = {"run_dir": str(self.context.run_dir), **source_tags()}
            if self.parent_run_id is not None:
                tags["mlflow.parentRunId"] = self.parent_run_id
            run = client.create_run(self.experiment_id, run_name=self.context.config.name, tags=tags)
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
        exported = [path for path in (rundir.exported("onnx"), rundir.exported("torchscript")) if path.is_file()]
        files = (rundir.config, rundir.data, rundir.history_json, rundir.report, rundir.model, *exported)
        for path in (*files, *results["figures"].values()):
            client.log_artifact(run_id, str(path))
        logged = self.log_model(step)
        if logged is not None and self.register is not None:
            self.register_model(logged)
        client.log_dict(run_id, metrics, rundir.metrics.name)
        client.set_terminated(run_id, "FINISHED")
        logger.info("MLflow: run %s finished, in %s", run_id, self.uri)

    def log_model(self, step: int) -> LoggedModel | None:
        """Log ``model.pt`` as the MLflow model ``model`` of the run (MLflow's ONNX flavor); returns it.

        The model takes raw pixels, uint8 ``[N, C, H, W]`` as the run's images, and returns class
        probabilities ``[N, classes]`` (:class:`~fmnist_ignite.serving.ExportableClassifier`), so
        serving it needs MLflow and ONNX Runtime but neither torch nor this package. ``data.json``
        goes with it. A model already logged (by a run that stopped before its end) is kept; one that a
        stopped run left half-logged is replaced. A model that cannot be exported to ONNX is a
        warning, and the run goes on without an MLflow model (``model.pt`` is among its files).
        """
        import mlflow.onnx
        import numpy as np
        from mlflow.entities import LoggedModelOutput
        from mlflow.models import Model, ModelSignature
        from mlflow.types import Schema, TensorSpec

        client, run_id, rundir = self._client(), str(self.run_id), self.context.rundir
        found = client.search_logged_models(
            [self.experiment_id], filter_string=f"name = '{MODEL}' AND source_run_id = '{run_id}'"
        )
        for model in found:
            if model.status.to_int() == model.status.READY.to_int():
                return model
            client.delete_logged_model(model.model_id)
        info = rundir.read_input()
        trained = load_trained_model(rundir.path)
        classifier = ExportableClassifier(trained.model, info.mean, info.std, info.normalize).eval()
        example = torch.zeros((1, *info.image_shape), dtype=torch.uint8)
        try:
            proto = onnx_model(classifier, example, {**describe(info, "uint8"), "weights": "model.pt"}, INSTALL_HINT)
        except ExportError as err:
            logger.warning("MLflow: the run has no MLflow model (%s); model.pt is among its files", err)
            return None
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *info.image_shape), "pixels")]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(info.classes)), "probabilities")]),
        )
        logged = client.create_logged_model(self.experiment_id, name=MODEL, source_run_id=run_id)
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step)])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / MODEL
            mlflow.onnx.save_model(
                proto,
                str(path),
                mlflow_model=Model(run_id=run_id, model_id=logged.model_id, model_uuid=logged.model_id),
                signature=signature,
                input_example=example.numpy(),
                extra_files=[str(rundir.data)],
                metadata={"classes": info.classes},
                save_as_external_data=False,
                # Said, not inferred: inferring loads the model in a new Python process (seconds).
                pip_requirements=[f"mlflow=={mlflow.__version__}", *mlflow.onnx.get_default_pip_requirements()],
            )
            client.log_model_artifacts(logged.model_id, str(path))
        logger.info("MLflow: model runs:/%s/%s (%s)", run_id, MODEL, logged.model_id)
        return client.finalize_logged_model(logged.model_id, "READY")

    def register_model(self, logged: LoggedModel) -> None:
        """Add the run's model to the Model Registry as a version of ``register`` (created if missing), once."""
        from mlflow.exceptions import MlflowException

        client, name = self._client(), str(self.register)
        if client.search_model_versions(f"name = '{name}' AND run_id = '{self.run_id}'"):
            return
        try:
            client.create_registered_model(name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        # The model's own files as the source: a database store would look a ``models:/`` source up
        # through MLflow's process-wide tracking URI, not this client's.
        version = client.create_model_version(
            name, logged.artifact_location, run_id=self.run_id, model_id=logged.model_id
        )
        logger.info("MLflow: registered model '%s' version %s", name, version.version)

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
