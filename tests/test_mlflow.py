"""MLflow tracking, read back from a real SQLite store with MLflow's own client."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from ignite.engine import Engine
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from fmnist_ignite import Config, Context, build_experiment, resume_experiment
from fmnist_ignite.app.cli import main

from . import plugins
from .conftest import BASE, small_overrides
from .helpers import start_cli, wait_for

MLFLOW = ("logging.mlflow=true", "early_stopping.enabled=false")
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")
FILES = {
    "config.yaml",
    "history.json",
    "report.json",
    "metrics.json",
    "model.pt",
    "history.png",
    "confusion_matrix.png",
    "predictions.png",
}


@pytest.fixture(autouse=True)
def fresh_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """The database opened for each request, as a new process would: MLflow keeps a process's connections."""
    monkeypatch.setenv("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with its tables (creating them takes seconds), for each test to copy."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path: Path, empty_store: Path) -> MlflowClient:
    """A client of the runs' default store, ``sqlite:///<output_dir>/mlflow.db``."""
    (tmp_path / "runs").mkdir()
    shutil.copy(empty_store, tmp_path / "runs" / "mlflow.db")
    return MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")


def only_run(client: MlflowClient) -> Run:
    experiment = client.get_experiment_by_name("fmnist_ignite")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return runs[0]


def series(client: MlflowClient, run: Run, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def assert_epochs_logged_once(client: MlflowClient, run: Run, run_dir: Path) -> None:
    history = json.loads((run_dir / "history.json").read_text())
    for key in EPOCH_METRICS:
        assert series(client, run, key) == [(r["epoch"], r[key]) for r in history], key


def saved_run_id(run_dir: Path) -> str:
    return json.loads((run_dir / "mlflow.json").read_text())["run_id"]


def test_a_run_logs_its_config_epochs_test_metrics_and_files(
    make_config: Callable[..., Config], store: MlflowClient, tmp_path: Path
) -> None:
    experiment = build_experiment(make_config(*MLFLOW))
    metrics = experiment.run()
    run_dir = experiment.run_dir

    run = only_run(store)
    assert run.info.run_id == saved_run_id(run_dir)
    assert (run.info.run_name, run.info.status) == ("small", "FINISHED")
    assert run.data.tags["run_dir"] == str(run_dir)
    params = run.data.params
    assert (params["optimizer.lr"], params["trainer.max_epochs"], params["data.batch_size"]) == ("0.01", "4", "32")
    assert (params["optimizer.name"], params["logging.mlflow"], params["handlers"]) == ("sgd", "true", "[]")
    assert params["output_dir"] == str(tmp_path / "runs")

    assert_epochs_logged_once(store, run, run_dir)
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written == metrics
    numbers = {k: v for k, v in written.items() if isinstance(v, int | float)}
    assert set(numbers) == {"test_accuracy", "test_loss", "best_epoch", "best_value", "epochs_trained", "weights_epoch"}
    assert {k: run.data.metrics[k] for k in numbers} == numbers
    assert set(run.data.metrics) == {*numbers, *EPOCH_METRICS}
    assert series(store, run, "test_accuracy") == [(4, written["test_accuracy"])]

    assert {a.path for a in store.list_artifacts(run.info.run_id)} == FILES
    assert run.info.artifact_uri.startswith(str(tmp_path / "runs" / "mlartifacts"))
    copies = Path(store.download_artifacts(run.info.run_id, "", str(tmp_path / "downloaded")))
    assert json.loads((copies / "metrics.json").read_text()) == written
    for name in FILES - {"metrics.json"}:
        assert (copies / name).read_bytes() == (run_dir / name).read_bytes(), name


class FreezeBeforeCheckpoint:
    """The first time (until ``marker`` exists), freezes at the end of epoch ``epoch``, before its checkpoint.

    Attached after the built-in handlers, so MLflow has the epoch and the run directory does not.
    """

    def __init__(self, context: Context, epoch: int, marker: str) -> None:
        self.epoch = epoch
        self.marker = Path(marker)

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch == self.epoch and not self.marker.exists():
            plugins.freeze(self.marker)


def test_kill_9_then_resume_continues_the_same_run_with_one_point_per_epoch(
    tmp_path: Path, system_dir: Path, store: MlflowClient
) -> None:
    marker = tmp_path / "frozen"
    target = "tests.test_mlflow:FreezeBeforeCheckpoint"
    freeze = f"handlers=[{{target: '{target}', kwargs: {{epoch: 2, marker: '{marker}'}}}}]"
    process = start_cli(BASE, *small_overrides(tmp_path, system_dir), *MLFLOW, freeze)
    wait_for(marker, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_dir = tmp_path / "runs" / "small"

    killed = only_run(store)
    assert killed.info.status == "RUNNING"
    assert series(store, killed, "val_accuracy")[-1][0] == 2
    assert [p.name for p in (run_dir / "checkpoints").glob("checkpoint_*.pt")] == ["checkpoint_1.pt"]

    resume_experiment(run_dir).run()
    run = only_run(store)
    assert (run.info.run_id, run.info.status) == (killed.info.run_id, "FINISHED")
    assert [step for step, _ in series(store, run, "val_accuracy")] == [1, 2, 3, 4]
    assert_epochs_logged_once(store, run, run_dir)


def test_an_unreachable_server_is_one_error_before_anything_is_written(
    tmp_path: Path, system_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"

    code = main([BASE, *small_overrides(tmp_path, system_dir), *MLFLOW, f"logging.mlflow_uri={uri}"])

    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: logging.mlflow_uri={uri}: cannot reach the MLflow tracking store (")
    assert "Connection refused" in error
    assert error.endswith("); nothing was written")
    assert not (tmp_path / "runs" / "small").exists()


def test_interrupted_run_is_killed_then_resumes_the_same_run_once_the_store_is_back(
    make_config: Callable[..., Config],
    store: MlflowClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")
    experiment = build_experiment(make_config(*MLFLOW))
    experiment.add_handler(plugins.StopAfter, event="EPOCH_STARTED", epoch=2)
    with pytest.raises(KeyboardInterrupt):
        experiment.run()
    run_dir = experiment.run_dir
    killed = only_run(store)
    assert killed.info.status == "KILLED"
    assert [step for step, _ in series(store, killed, "val_accuracy")] == [1, 2]

    # The store is lost: the resume stops with one line and leaves every local file as it was.
    db = tmp_path / "runs" / "mlflow.db"
    db.rename(db.with_suffix(".away"))
    db.write_bytes(b"not a database" * 100)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert main(["--resume", str(run_dir)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: logging.mlflow_uri=sqlite:///{db}: cannot reach the MLflow tracking store "
        "((sqlite3.DatabaseError) file is not a database); nothing was written"
    )
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before

    db.with_suffix(".away").rename(db)
    resume_experiment(run_dir).run()
    run = only_run(store)
    assert (run.info.run_id, run.info.status) == (killed.info.run_id, "FINISHED")
    assert_epochs_logged_once(store, run, run_dir)


class StoreAway:
    """Takes MLflow's metrics table away while epoch ``epoch`` runs, and puts it back when the next one starts."""

    def __init__(self, context: Context, db: str, epoch: int) -> None:
        self.db = db
        self.epoch = epoch

    def __call__(self, engine: Engine) -> None:
        renames = {self.epoch: ("metrics", "metrics_away"), self.epoch + 1: ("metrics_away", "metrics")}
        if engine.state.epoch in renames:
            with sqlite3.connect(self.db) as connection:
                connection.execute("ALTER TABLE {} RENAME TO {}".format(*renames[engine.state.epoch]))


def test_a_store_failure_mid_run_is_a_warning_and_the_epoch_is_logged_later(
    make_config: Callable[..., Config], store: MlflowClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    experiment = build_experiment(make_config(*MLFLOW))
    experiment.add_handler(StoreAway, event="EPOCH_STARTED", db=str(tmp_path / "runs" / "mlflow.db"), epoch=2)
    experiment.run()
    assert "MLflow: cannot log epoch 2 (" in caplog.text
    assert "it will be logged with a later epoch or at the end" in caplog.text
    run = only_run(store)
    assert run.info.status == "FINISHED"
    assert_epochs_logged_once(store, run, experiment.run_dir)


def test_an_error_in_training_marks_the_run_failed(make_config: Callable[..., Config], store: MlflowClient) -> None:
    experiment = build_experiment(make_config(*MLFLOW, "trainer.max_epochs=2"))
    experiment.add_handler(plugins.Exploding, epoch=2)
    with pytest.raises(RuntimeError, match="boom from a user handler"):
        experiment.run()
    run = only_run(store)
    assert run.info.status == "FAILED"
    assert [step for step, _ in series(store, run, "val_accuracy")] == [1, 2]


def test_a_relative_sqlite_uri_is_made_absolute(make_config: Callable[..., Config]) -> None:
    config = make_config("logging.mlflow_uri=sqlite:///stores/mlflow.db").with_absolute_paths()
    assert config.logging.mlflow_uri == f"sqlite:///{Path.cwd() / 'stores' / 'mlflow.db'}"
    server = make_config("logging.mlflow_uri=http://127.0.0.1:5000").with_absolute_paths()
    assert server.logging.mlflow_uri == "http://127.0.0.1:5000"


def test_a_server_refusing_connections_is_one_line_within_seconds_whatever_mlflow_defaults_to(
    tmp_path: Path, system_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Class 4 of issue 19: MLflow's own defaults retry a refused connection for minutes; ours try once."""
    import os
    import time

    for name in (
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    code = main([BASE, *small_overrides(tmp_path, system_dir), *MLFLOW, f"logging.mlflow_uri={uri}"])
    assert time.monotonic() - start < 30
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: logging.mlflow_uri={uri}: cannot reach the MLflow tracking store (")
    assert not (tmp_path / "runs" / "small").exists()
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ, "set only while our client runs"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{broken", "mlflow.json: not valid JSON"),
        ('{"run_id": ""}', "mlflow.json: 'run_id' must be the MLflow run's id (text)"),
        ('{"run_id": "../../etc"}', "mlflow.json: its MLflow run '../../etc' cannot be read from sqlite:///"),
    ],
)
def test_a_damaged_mlflow_json_is_named_and_a_finished_run_loses_nothing(
    make_config: Callable[..., Config],
    store: MlflowClient,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    content: str,
    problem: str,
) -> None:
    """Class 5 of issue 19: the file is read before the resume removes or rewrites anything."""
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")
    experiment = build_experiment(make_config(*MLFLOW, "trainer.max_epochs=1"))
    experiment.run()
    run = experiment.run_dir
    (run / "mlflow.json").write_text(content)
    files = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    capsys.readouterr()

    code = main(["--resume", str(run), "trainer.max_epochs=2"])

    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {run}/{problem}")
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == files, "metrics.json and config.yaml are as they were: the run is still finished"


def test_a_file_store_is_accepted(
    small: list[str], tmp_path: Path, cli: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = f"file://{tmp_path / 'mlruns'}"
    code, _, err = cli(BASE, *small, *MLFLOW, "trainer.max_epochs=1", f"logging.mlflow_uri={uri}")
    assert code == 0, err
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # to read it back with MLflow's own client
    run = only_run(MlflowClient(uri))
    assert run.info.status == "FINISHED"
    assert [step for step, _ in series(MlflowClient(uri), run, "val_accuracy")] == [1]
