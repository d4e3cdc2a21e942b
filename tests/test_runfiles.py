"""The run's JSON files: one definition each, read and written through RunDir, damaged ones in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmnist_ignite.errors import RunDirError
from fmnist_ignite.rundir import RunDir
from fmnist_ignite.runfiles import InputDescription, MlflowRun

GOOD = InputDescription(image_shape=(1, 28, 28), classes=["a", "b"], mean=0.28, std=0.35, normalize=True)


def test_each_file_round_trips_through_the_run_directory(tmp_path: Path) -> None:
    rundir = RunDir(tmp_path)
    rundir.write_input(GOOD)
    assert rundir.read_input() == GOOD
    metrics = {"test_accuracy": 0.8, "best_value": 0.81, "best_epoch": 3, "pruned_epoch": 2, "extra": "kept"}
    rundir.write_metrics(metrics)
    assert rundir.read_metrics() == metrics
    assert rundir.read_mlflow_run() is None
    rundir.write_mlflow_run(MlflowRun(run_id="abc", experiment_id="1", tracking_uri="sqlite:///x.db"))
    assert rundir.read_mlflow_run() == MlflowRun(run_id="abc", experiment_id="1", tracking_uri="sqlite:///x.db")


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        (
            "data.json",
            '{"image_shape": [1, 28, 28], "classes": ["a"], "mean": "0.3", "std": 1, "normalize": true}',
            "'mean' must be a finite number",
        ),
        (
            "data.json",
            '{"image_shape": [1, 28, 28], "classes": ["a"], "mean": 0.3, "std": 1, "normalize": 1}',
            "'normalize' must be true or false",
        ),
        (
            "data.json",
            '{"image_shape": [1, 28, 28], "classes": ["a"], "mean": 0.3, "std": 1, "normalize": true, '
            '"background": "grey"}',
            "'background' must be dark, light or null",
        ),
        (
            "data.json",
            '{"image_shape": [1, 28, 28], "classes": ["a"], "mean": 0.3, "std": 1, "normalize": true, "dataset": 3}',
            "'dataset' must be the data set's name (text) or null",
        ),
        (
            "data.json",
            '{"image_shape": [1, 28, 28], "classes": ["a"], "mean": 0.3, "std": 1, "normalize": true, "extra": 1}',
            "'extra' is not a field of this file",
        ),
        ("metrics.json", '{"best_value": true}', "'best_value' must be a number"),
        ("mlflow.json", '{"run_id": 5}', "'run_id' must be the MLflow run's id (text)"),
        ("mlflow.json", "[]", "expected a JSON object, got list"),
        (
            "history.json",
            '[{"epoch": 1, "val_accuracy": "0.5", "val_loss": 1}]',
            "record 0 (epoch 1) lacks the number 'val_accuracy'",
        ),
    ],
)
def test_a_damaged_file_is_one_line_naming_it_and_its_field(
    tmp_path: Path, name: str, content: str, problem: str
) -> None:
    rundir = RunDir(tmp_path)
    (tmp_path / name).write_text(content)
    read = {
        "data.json": rundir.read_input,
        "metrics.json": rundir.read_metrics,
        "mlflow.json": rundir.read_mlflow_run,
        "history.json": rundir.read_history,
    }[name]
    with pytest.raises(RunDirError) as info:
        read()
    assert str(info.value) == f"{tmp_path / name}: {problem}"


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match=r"data.json is missing; the run writes it"):
        RunDir(tmp_path).read_input()


def test_metrics_that_break_the_definition_are_never_written(tmp_path: Path) -> None:
    rundir = RunDir(tmp_path)
    with pytest.raises(RunDirError, match="'test_accuracy' must be a number"):
        rundir.write_metrics({"test_accuracy": "high"})
    assert not rundir.metrics.exists()
