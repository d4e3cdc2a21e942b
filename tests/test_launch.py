"""``fmnist_ignite.train``: the Python door does what the command line does, in one process or several."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import fmnist_ignite
from fmnist_ignite import Config, ConfigError, RunDirError, build_experiment
from fmnist_ignite.app.launch import RunResult, resolve
from fmnist_ignite.errors import program_name

from .conftest import BASE, CLI, values
from .helpers import read_history

TWO = "trainer.max_epochs=2"


def test_train_returns_the_run_and_a_second_call_makes_a_new_directory(
    small: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = fmnist_ignite.train(BASE, *small, TWO)
    second = fmnist_ignite.train(BASE, *small, TWO)
    assert first.dir == tmp_path / "runs" / "small" and second.dir == tmp_path / "runs" / "small-1"
    assert [r["epoch"] for r in first.history] == [1, 2]
    assert values(first.history) == values(second.history)
    assert first.metrics == RunResult.read(first.dir).metrics
    assert first.history == RunResult.read(first.dir).history
    assert first.config.name == "small" and second.config.name == "small-1"
    out = capsys.readouterr().out
    assert out.count("Epoch [2]") == 2 and "Run directory" in out and "Results in" in out


def test_train_takes_a_mapping_or_a_config_and_overrides_apply_last(small: list[str], tmp_path: Path) -> None:
    config = fmnist_ignite.load_config(BASE, [*small, TWO])
    from_dict = fmnist_ignite.train(config.to_dict(), "name=as_dict", verbose=-1)
    from_config = fmnist_ignite.train(config, "name=as_config", "trainer.max_epochs=1", verbose=-1)
    assert from_dict.dir.name == "as_dict" and len(from_dict.history) == 2
    assert from_config.dir.name == "as_config" and len(from_config.history) == 1


def test_verbose_chooses_what_is_printed_and_logging_is_left_as_it_was(
    small: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], logging.getLogger("fmnist_ignite").level
    fmnist_ignite.train(BASE, *small, TWO, verbose=-1)
    out = capsys.readouterr().out
    assert "Epoch [" not in out and "Test (best weights" in out
    assert root.handlers == handlers and logging.getLogger("fmnist_ignite").level == level
    fmnist_ignite.train(BASE, *small, TWO, verbose=None)  # the caller's logging: nothing set up here
    assert capsys.readouterr().out == ""


def test_resume_and_init_from_as_the_command_line(small: list[str]) -> None:
    run = fmnist_ignite.train(BASE, *small, TWO, verbose=-1)
    longer = fmnist_ignite.train("trainer.max_epochs=3", resume=run.dir, verbose=-1)
    assert longer.dir == run.dir and [r["epoch"] for r in longer.history] == [1, 2, 3]
    forked = fmnist_ignite.train(BASE, *small, TWO, "name=fork", init_from=f"{run.dir}:best", verbose=-1)
    assert forked.config.init_from == f"{run.dir}:best"
    with pytest.raises(ConfigError, match="does not go with resume"):
        resolve(None, (), resume=run.dir, init_from=str(run.dir))
    with pytest.raises(RunDirError, match="has finished"):
        fmnist_ignite.train(resume=longer.dir, verbose=-1)
    with pytest.raises(ConfigError, match="resume continues a run with its own config.yaml"):
        fmnist_ignite.train(BASE, resume=run.dir, verbose=-1)


def test_an_error_inside_the_run_is_one_line_with_its_cause(small: list[str]) -> None:
    handler = "handlers=[{target: 'tests.plugins:Exploding', kwargs: {epoch: 2}}]"
    with pytest.raises(
        fmnist_ignite.RunError,
        match=r"stopped on RuntimeError: boom from a user handler \(.*plugins.py:\d+\); its last checkpoint is kept",
    ) as err:
        fmnist_ignite.train(BASE, *small, TWO, handler, verbose=-1)
    assert isinstance(err.value.__cause__, RuntimeError)


def test_an_experiment_runs_once(make_config: Callable[..., Config]) -> None:
    experiment = build_experiment(make_config("trainer.max_epochs=1"))
    experiment.run()
    files = sorted(p.name for p in experiment.run_dir.parent.iterdir())
    with pytest.raises(RunDirError, match=r"this experiment has run already \(in .*small\); build a new one"):
        experiment.run()
    assert sorted(p.name for p in experiment.run_dir.parent.iterdir()) == files  # no phantom run


def test_a_data_parallel_config_is_not_trained_in_one_process_by_experiment_run(
    make_config: Callable[..., Config],
) -> None:
    experiment = build_experiment(make_config("distributed.backend=gloo"))
    with pytest.raises(ConfigError, match=r"distributed.backend=gloo trains in several processes.*fmnist_ignite.train"):
        experiment.run()
    assert not experiment.run_dir.parent.exists() or not any(experiment.run_dir.parent.iterdir())


def test_train_runs_a_data_parallel_config_in_two_processes(small: list[str], tmp_path: Path) -> None:
    alone = fmnist_ignite.train(BASE, *small, TWO, "name=alone", verbose=-1)
    together = fmnist_ignite.train(
        BASE, *small, TWO, "name=together", "distributed.backend=gloo", "distributed.nproc_per_node=2", verbose=-1
    )
    assert together.dir == tmp_path / "runs" / "together"
    assert together.config.distributed.nproc_per_node == 2
    assert [r["epoch"] for r in together.history] == [1, 2]
    for a, b in zip(alone.history, together.history, strict=True):
        assert b["val_accuracy"] == a["val_accuracy"]
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
    assert together.metrics["test_accuracy"] == pytest.approx(alone.metrics["test_accuracy"], abs=1e-9)
    again = fmnist_ignite.train(
        BASE, *small, TWO, "name=together", "distributed.backend=gloo", "distributed.nproc_per_node=2", verbose=-1
    )
    assert again.dir == tmp_path / "runs" / "together-1"


def test_user_handler_error_is_one_line_and_the_run_resumes(
    tmp_path: Path, small: list[str], reference: list[tuple], cli: Callable[..., CLI]
) -> None:
    explode = "handlers=[{target: 'tests.plugins:ExplodeOnce', kwargs: {epoch: 3}}]"
    code, _, err = cli(BASE, *small, "early_stopping.enabled=false", explode)
    run = tmp_path / "runs" / "small"
    assert code == 1
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("error: the run stopped on RuntimeError: boom from a user handler (tests/plugins.py:")
    assert last.endswith(
        f"; its last checkpoint is kept: resume with '{program_name()} --resume {run}' (run with -v for the traceback)"
    )
    assert (run / "checkpoints" / "checkpoint_2.pt").is_file()
    code, _, err = cli("--resume", str(run))
    assert code == 0, err
    assert values(read_history(run)) == reference


def test_a_process_that_crashes_on_its_way_out_after_the_run_does_not_fail_it(
    small: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handler = "handlers=[{target: 'tests.plugins:AbortAtExitOnRank', kwargs: {rank: 1}}]"
    run = fmnist_ignite.train(
        BASE, *small, "name=crash", "distributed.backend=gloo", "distributed.nproc_per_node=2", handler, verbose=None
    )
    assert run.dir == tmp_path / "runs" / "crash" and (run.dir / "metrics.json").is_file()
    assert len(run.history) == run.metrics["epochs_trained"] and run.metrics["test_accuracy"] > 0.5
    assert "process 1 of the data-parallel run crashed while exiting, after the run was complete" in caplog.text


def _pixels(picture: Any) -> bytes:
    return bytes(picture.convert("RGB").tobytes())


def test_a_run_result_gives_a_notebook_its_history_as_a_frame_and_its_pictures_as_images(finished: dict) -> None:
    from PIL import Image

    result = RunResult.read(finished["run"])
    frame = result.history_frame()
    assert list(frame.index) == [1, 2, 3, 4] and frame.index.name == "epoch"
    assert frame["val_accuracy"].tolist() == [r["val_accuracy"] for r in result.history]
    for method, file in (
        (result.history_figure, "history.png"),
        (result.confusion_figure, "confusion_matrix.png"),
        (result.predictions_figure, "predictions.png"),
    ):
        picture = method()
        assert isinstance(picture, Image.Image) and hasattr(picture, "_repr_png_"), "Jupyter shows it inline"
        with Image.open(finished["run"] / file) as written:
            assert picture.size == written.size and _pixels(picture) == _pixels(written), file
    report = result.report()
    assert report["accuracy"] == pytest.approx(finished["metrics"]["test_accuracy"])
    assert list(report["per_class"]) == list(finished["data"].classes)


def test_history_frame_without_pandas_says_what_to_install(finished: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"^history_frame\(\) needs pandas: pip install pandas$"):
        RunResult.read(finished["run"]).history_frame()
