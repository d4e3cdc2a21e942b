"""MLflow tracking, read back with MLflow's own client from a real SQLite store and from a real ``mlflow server``;
the MLflow model loaded and served by MLflow."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from ignite.engine import Engine
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

import fmnist_ignite
from fmnist_ignite import Config, Context, build_experiment, resume_experiment
from fmnist_ignite.app.cli import main
from fmnist_ignite.events import RunEvents

from . import plugins
from .conftest import BASE, N_TEST, REPO, small_overrides, synthetic_images
from .helpers import start_cli, wait_for

MLFLOW = ("logging.mlflow=true", "early_stopping.enabled=false")
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")
FILES = {
    "config.yaml",
    "data.json",
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


def test_an_unreachable_server_is_one_line_with_mlflow_told_to_try_once(
    tmp_path: Path, system_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's own defaults retry a refused connection for minutes (7 times, growing waits); ours try once."""
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT
    from mlflow.utils import rest_utils

    for name in ("MAX_RETRIES", "TIMEOUT", "BACKOFF_FACTOR"):
        monkeypatch.delenv(f"MLFLOW_HTTP_REQUEST_{name}", raising=False)
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")
    asked: list[tuple[int, int]] = []
    request = rest_utils.http_request

    def noted(*args: Any, **kwargs: Any) -> Any:  # MLflow's own request, with the limits it runs under noted
        asked.append((MLFLOW_HTTP_REQUEST_MAX_RETRIES.get(), MLFLOW_HTTP_REQUEST_TIMEOUT.get()))
        return request(*args, **kwargs)

    monkeypatch.setattr(rest_utils, "http_request", noted)
    uri = "http://127.0.0.1:9"  # the discard port: nothing listens there

    code = main([BASE, *small_overrides(tmp_path, system_dir), *MLFLOW, f"logging.mlflow_uri={uri}"])

    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(
        f"error: logging.mlflow_uri={uri}: cannot reach the MLflow tracking store (API request to "
        f"{uri}/api/2.0/mlflow/experiments/get-by-name failed"
    )
    assert "Connection refused" in err
    assert err.endswith(
        "); nothing was written: start the tracking server, or correct logging.mlflow_uri, and run again\n"
    )
    assert not (tmp_path / "runs").exists()
    assert asked == [(0, 10)], "one request, no retry, 10 s at most"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ, "set only while our client runs"


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


# A real tracking server: `mlflow server` with its SQLite store and its files in a temporary folder,
# on a free port of 127.0.0.1, started once for the tests of a process (it takes seconds to start).


def free_port() -> int:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return int(free.getsockname()[1])


def with_venv_path() -> dict[str, str]:
    """This environment, with the interpreter's folder first on PATH (``mlflow models serve`` runs ``uvicorn``)."""
    return {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}


@contextmanager
def started(command: list[str], url: str, log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    """``command`` running in a process group of its own until the block ends; ``url`` answers 200 first."""
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{command[:4]} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the server and the workers it started; their files are thrown away
        process.wait()


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URI of a real ``mlflow server`` (SQLite store, files in ``--artifacts-destination``)."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    command += ["--artifacts-destination", str(folder / "artifacts")]
    with started(command, f"http://127.0.0.1:{port}/health", folder / "server.log"):
        yield f"http://127.0.0.1:{port}"


TEST_IMAGES, TEST_LABELS = synthetic_images(N_TEST, (28, 28), 2)  # the test set of the session's data (conftest)


@pytest.fixture(scope="session")
def server_run(tracking_server: str, tmp_path_factory: pytest.TempPathFactory, system_dir: Path) -> dict[str, Any]:
    """A run tracked to the server from the command line, registered as ``served``: stopped after epoch 2
    (Ctrl-C), then resumed to its end."""
    tmp = tmp_path_factory.mktemp("server-run")
    stop = "handlers=[{target: 'tests.plugins:StopOnce', event: EPOCH_STARTED, kwargs: {epoch: 2}}]"
    tracked = (*MLFLOW, f"logging.mlflow_uri={tracking_server}", "logging.mlflow_experiment=served")
    args = [BASE, *small_overrides(tmp, system_dir), *tracked, "logging.mlflow_register=served", stop]
    run_dir = tmp / "runs" / "small"
    with mock.patch.object(sys, "argv", ["fmnist-ignite", *args]):
        stopped = main(args)
        client = MlflowClient(tracking_server)
        killed = client.get_run(saved_run_id(run_dir))
        killed_epochs = [step for step, _ in series(client, killed, "val_accuracy")]
        resumed = main(["--resume", str(run_dir)])
    assert (stopped, resumed) == (130, 0)
    return {"run_dir": run_dir, "run_id": saved_run_id(run_dir), "killed": (killed, killed_epochs), "args": args}


def test_a_run_tracked_to_a_server_resumes_the_same_run_and_logs_its_files(
    tracking_server: str, server_run: dict[str, Any], tmp_path: Path
) -> None:
    client = MlflowClient(tracking_server)
    run_dir, (killed, killed_epochs) = server_run["run_dir"], server_run["killed"]
    run = client.get_run(server_run["run_id"])
    assert (killed.info.status, run.info.status) == ("KILLED", "FINISHED")
    assert killed_epochs == [1, 2]
    assert_epochs_logged_once(client, run, run_dir)
    assert run.info.artifact_uri == f"mlflow-artifacts:/{run.info.experiment_id}/{run.info.run_id}/artifacts"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == FILES
    copies = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path)))
    assert (copies / "data.json").read_bytes() == (run_dir / "data.json").read_bytes()
    assert (copies / "model.pt").read_bytes() == (run_dir / "model.pt").read_bytes()


def test_the_run_records_its_command_git_commit_and_package_versions(
    tracking_server: str, server_run: dict[str, Any]
) -> None:
    import ignite
    import torch

    tags = MlflowClient(tracking_server).get_run(server_run["run_id"]).data.tags
    assert tags["command"] == shlex.join(["fmnist-ignite", *server_run["args"]])
    assert tags["mlflow.source.name"] == "fmnist-ignite"
    assert (tags["version.torch"], tags["version.ignite"]) == (torch.__version__, ignite.__version__)
    assert tags["version.fmnist_ignite"] == fmnist_ignite.__version__
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if os.environ.get("CI") or head.returncode == 0:  # CI tests a clone
        assert tags["mlflow.source.git.commit"] == head.stdout.strip()
    else:
        assert "mlflow.source.git.commit" not in tags


def test_the_mlflow_model_takes_raw_pixels_and_predicts_the_test_set_at_its_accuracy(
    tracking_server: str, server_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    model = mlflow.pyfunc.load_model(f"runs:/{server_run['run_id']}/model")
    signature = model.metadata.signature
    assert signature.inputs.to_dict() == [
        {"type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": (-1, 1, 28, 28)}, "name": "pixels"}
    ]
    assert signature.outputs.to_dict() == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 10)}, "name": "probabilities"}
    ]
    probabilities = model.predict(TEST_IMAGES[:, None])["probabilities"]
    assert probabilities.shape == (N_TEST, 10)
    assert np.allclose(probabilities.sum(1), 1, atol=1e-5)
    metrics = json.loads((server_run["run_dir"] / "metrics.json").read_text())
    assert float((probabilities.argmax(1) == TEST_LABELS).mean()) == pytest.approx(metrics["test_accuracy"])

    files = Path(mlflow.artifacts.download_artifacts(f"runs:/{server_run['run_id']}/model"))
    assert (files / "extra_files" / "data.json").read_bytes() == (server_run["run_dir"] / "data.json").read_bytes()
    example = json.loads((files / "input_example.json").read_text())
    assert np.asarray(example).shape == (1, 1, 28, 28)
    assert "onnxruntime" in (files / "requirements.txt").read_text()


def test_mlflow_models_serve_answers_with_the_same_classes(
    tracking_server: str, server_run: dict[str, Any], tmp_path: Path
) -> None:
    port = free_port()
    uri = f"runs:/{server_run['run_id']}/model"
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", str(port)]
    env = {**with_venv_path(), "MLFLOW_TRACKING_URI": tracking_server}
    images = TEST_IMAGES[:50, None]
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps({"inputs": images.tolist()}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with (
        started(command, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", env),
        urllib.request.urlopen(request, timeout=60) as answer,
    ):
        served = np.asarray(json.loads(answer.read())["predictions"]["probabilities"])
    import mlflow.pyfunc

    with mock.patch.dict(os.environ, {"MLFLOW_TRACKING_URI": tracking_server}):
        loaded = mlflow.pyfunc.load_model(uri).predict(images)["probabilities"]
    assert served.shape == (50, 10)
    assert served.argmax(1).tolist() == loaded.argmax(1).tolist()
    assert np.allclose(served, loaded, atol=1e-6)


def test_a_sweep_is_a_parent_run_with_a_child_run_per_trial_each_a_registered_version(
    tracking_server: str,
    server_run: dict[str, Any],
    small: list[str],
    tmp_path: Path,
    cli: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mlflow.pyfunc

    client = MlflowClient(tracking_server)
    first = client.get_model_version("served", "1")
    assert first.run_id == server_run["run_id"]
    assert first.source.startswith(f"mlflow-artifacts:/{first.source.split('/')[1]}/models/m-")  # the model's files

    tracked = (*MLFLOW, f"logging.mlflow_uri={tracking_server}", "logging.mlflow_experiment=swept")
    register = "logging.mlflow_register=swept"
    sweep = ("sweep", BASE, *small, *tracked, register, "trainer.max_epochs=1", "seed=1,2", "--name", "sw")
    code, _, err = cli(*sweep)
    assert code == 0, err
    code, _, err = cli(*sweep)  # started again (or on another machine): the same parent, no trial run twice
    assert code == 0, err
    experiment = client.get_experiment_by_name("swept")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [(r.info.run_name, r.info.status) for r in parents] == [("sw", "FINISHED")]
    assert parents[0].data.tags["sweep_dir"] == str(tmp_path / "runs" / "sw")
    children = sorted((r for r in runs if r not in parents), key=lambda r: r.info.start_time)
    assert [r.info.run_name for r in children] == ["seed-1", "seed-2"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.info.status for r in children} == {"FINISHED"}
    versions = sorted(client.search_model_versions("name = 'swept'"), key=lambda v: int(v.version))
    assert [(v.version, v.run_id) for v in versions] == [("1", children[0].info.run_id), ("2", children[1].info.run_id)]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    assert mlflow.pyfunc.load_model("models:/swept/2").metadata.run_id == children[1].info.run_id


@pytest.mark.parametrize("package", ["mlflow", "onnx"])
def test_a_missing_package_is_one_line_before_anything_is_written(
    small: list[str], tmp_path: Path, cli: Callable, monkeypatch: pytest.MonkeyPatch, package: str
) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else find_spec(name, *a))
    code, _, err = cli(BASE, *small, *MLFLOW)
    assert (code, err) == (
        2,
        f"error: logging.mlflow: the {package} package is not installed; "
        "pip install 'fmnist_ignite[mlflow]' installs it\n",
    )
    assert not (tmp_path / "runs").exists()


class FailAtTheEndOnce:
    """Fails the run after MLflow logged its end, the first time (until ``marker`` exists): the run is not finished."""

    def __init__(self, context: Context, marker: str) -> None:
        self.marker = Path(marker)

    def attach(self, engine: Engine, event: Any) -> None:
        engine.add_event_handler(RunEvents.RUN_FINISHED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.marker.exists():
            self.marker.touch()
            raise RuntimeError("disk full")


def test_a_run_resumed_after_its_model_was_logged_keeps_one_model_and_one_version(
    make_config: Callable[..., Config], store: MlflowClient, tmp_path: Path
) -> None:
    experiment = build_experiment(make_config(*MLFLOW, "trainer.max_epochs=1", "logging.mlflow_register=once"))
    experiment.add_handler(FailAtTheEndOnce, marker=str(tmp_path / "failed"))
    with pytest.raises(RuntimeError, match="disk full"):
        experiment.run()
    assert not (experiment.run_dir / "metrics.json").exists()
    resumed = resume_experiment(experiment.run_dir)
    resumed.add_handler(FailAtTheEndOnce, marker=str(tmp_path / "failed"))
    resumed.run()

    run = only_run(store)
    assert run.info.status == "FINISHED"
    models = store.search_logged_models([run.info.experiment_id])
    assert [(m.name, m.source_run_id, m.status.to_int()) for m in models] == [
        ("model", run.info.run_id, models[0].status.READY.to_int())
    ]
    versions = store.search_model_versions("name = 'once'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", run.info.run_id)]
