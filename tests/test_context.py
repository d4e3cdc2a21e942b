"""context.py: the one object handlers receive, as an experiment fills it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

import fmnist_ignite
from fmnist_ignite import Config, Context, RunDir, build_experiment
from fmnist_ignite.data import FASHION_CLASSES
from fmnist_ignite.history import History
from fmnist_ignite.monitor import Monitor

from .helpers import make_rig


def test_fields_in_the_documented_order() -> None:
    names = [f.name for f in dataclasses.fields(Context)]
    assert names == [
        "config",
        "rundir",
        "device",
        "model",
        "optimizer",
        "trainer",
        "evaluator",
        "classes",
        "prepare_batch",
        "history",
        "monitor",
        "state",
    ]
    assert fmnist_ignite.Context is Context


def test_run_dir_follows_the_run_directory(tmp_path: Path) -> None:
    context = make_rig(tmp_path).context
    assert context.run_dir == tmp_path / "run" == context.rundir.path
    context.rundir.path = tmp_path / "run-1"  # as a new run does when its name was taken meanwhile
    assert context.run_dir == tmp_path / "run-1"


def test_each_context_has_its_own_state(tmp_path: Path) -> None:
    a, b = make_rig(tmp_path / "a").context, make_rig(tmp_path / "b").context
    a.state["mine"] = 1
    assert b.state == {}


def test_an_experiment_s_context(make_config: Callable[..., Config]) -> None:
    experiment = build_experiment(make_config("device=cpu", "logging.tensorboard=false"))
    context = experiment.context
    assert context.config is experiment.config
    assert isinstance(context.rundir, RunDir) and context.run_dir == experiment.run_dir
    assert context.run_dir == Path(context.config.output_dir) / "small"
    assert not context.run_dir.exists()  # created when the run starts, not before
    assert context.device == torch.device("cpu")
    assert context.model is experiment.model and context.trainer is experiment.trainer
    assert context.evaluator is experiment.evaluator
    assert list(context.optimizer.param_groups[0]["params"]) == list(context.model.parameters())
    assert context.classes == FASHION_CLASSES
    assert isinstance(context.history, History) and context.history.records == []
    assert isinstance(context.monitor, Monitor) and context.monitor.metric == "val_accuracy"
    assert context.state["model"] is context.model and context.state["optimizer"] is context.optimizer
    assert context.state["trainer"] is context.trainer
    assert context.state["history"] is context.history and context.state["monitor"] is context.monitor
    assert context.state["early_stopping"] is experiment.handlers["early_stopping"]
    assert {"rng", "scheduler", "status"} <= set(context.state)
    images = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    x, y = context.prepare_batch((images, torch.tensor([1, 2])), context.device, False)
    assert x.dtype == torch.float32 and torch.equal(y, torch.tensor([1, 2]))


def test_handlers_receive_the_context_and_see_the_epoch_just_completed(make_config: Callable[..., Config]) -> None:
    experiment = build_experiment(make_config("device=cpu", "logging.tensorboard=false", "trainer.max_epochs=2"))
    seen: list[tuple[int, int, float]] = []

    def handler(context: Context) -> None:
        latest = context.history.records[-1]
        seen.append((latest["epoch"], context.trainer.state.epoch, context.evaluator.state.metrics["accuracy"]))
        assert latest["val_accuracy"] == context.evaluator.state.metrics["accuracy"]

    experiment.add_handler(handler)
    experiment.run()
    assert [(a, b) for a, b, _ in seen] == [(1, 1), (2, 2)]
