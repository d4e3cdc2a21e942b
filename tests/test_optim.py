"""optim.py: the plateau schedule, warm-up before any schedule, and their exact resume."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from ignite.engine import Engine

from fmnist_ignite import Config, build_experiment, resume_experiment
from fmnist_ignite.optim import Plateau, Warmup, attach_scheduler

from .conftest import CLI, values
from .helpers import read_history


def rig(make_config: Callable[..., Config], *overrides: str) -> tuple[torch.optim.Optimizer, Engine, object]:
    config = make_config(*overrides)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.optimizer.lr)
    trainer = Engine(lambda engine, batch: None)
    return optimizer, trainer, attach_scheduler(config, optimizer, trainer, 4)


def test_plateau_lowers_the_rate_when_the_monitor_stops_improving(make_config: Callable[..., Config]) -> None:
    optimizer, _, scheduler = rig(
        make_config, "scheduler.name=plateau", "scheduler.patience=0", "scheduler.gamma=0.5", "optimizer.lr=0.08"
    )
    assert isinstance(scheduler, Plateau)
    rates = []
    for accuracy in (0.5, 0.4, 0.6, 0.6, 0.7):  # val_accuracy, maximised
        scheduler.epoch_completed({"val_accuracy": accuracy})
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([0.08, 0.04, 0.04, 0.02, 0.02])


def test_plateau_follows_the_monitor_and_its_direction(make_config: Callable[..., Config]) -> None:
    optimizer, _, scheduler = rig(
        make_config,
        "scheduler.name=plateau",
        "scheduler.patience=1",
        "monitor.metric=val_loss",
        "scheduler.min_lr=0.03",
        "optimizer.lr=0.1",
    )
    rates = []
    for loss in (1.0, 0.9, 0.95, 0.97, 0.99, 0.99, 0.99):  # minimised; two epochs without improvement lower it
        scheduler.epoch_completed({"val_loss": loss, "val_accuracy": 0.0})
        rates.append(optimizer.param_groups[0]["lr"])
    # 0.97 is the second epoch without improvement: 0.1 * 0.1, held at min_lr 0.03.
    assert rates == pytest.approx([0.1, 0.1, 0.1, 0.03, 0.03, 0.03, 0.03])


def test_warmup_rises_linearly_then_hands_over_to_the_schedule(make_config: Callable[..., Config]) -> None:
    optimizer, trainer, scheduler = rig(
        make_config, "scheduler.name=step", "scheduler.step_size=1", "scheduler.gamma=0.5", "scheduler.warmup_epochs=2"
    )
    assert isinstance(scheduler, Warmup)
    rates = []
    for _ in range(16):  # 4 epochs of 4 iterations
        scheduler(trainer)
        rates.append(optimizer.param_groups[0]["lr"])
    warm = [0.01 * i / 8 for i in range(1, 9)]
    assert rates == pytest.approx(warm + [0.01] * 4 + [0.005] * 4)


def test_warmup_with_cosine_and_plateau_in_the_history(make_config: Callable[..., Config]) -> None:
    experiment = build_experiment(
        make_config("early_stopping.enabled=false", "scheduler.warmup_epochs=2", "trainer.max_epochs=4")
    )
    experiment.run()
    steps = len(experiment.loaders["train"])
    lrs = [r["lr"] for r in read_history(experiment.run_dir)]
    # The last iteration of each epoch: the warm-up ends at optimizer.lr, then a cosine over the 2 remaining epochs.
    cosine = [0.01 / 2 * (1 + math.cos(math.pi * (k - 1) / (2 * steps))) for k in (steps, 2 * steps)]
    assert lrs == pytest.approx([0.005, 0.01, *cosine])


def test_plateau_with_warmup_resumes_exactly(make_config: Callable[..., Config]) -> None:
    settings = (
        "early_stopping.enabled=false",
        "scheduler.name=plateau",
        "scheduler.patience=0",
        "scheduler.gamma=0.5",
        "scheduler.warmup_epochs=1",
        "optimizer.lr=0.05",
    )
    whole = build_experiment(make_config(*settings, "trainer.max_epochs=5", "name=whole"))
    whole.run()
    history = whole.history
    lrs = [r["lr"] for r in history]
    # The warm-up ends at optimizer.lr with epoch 1; from then on the rate halves after every epoch whose
    # val_accuracy (the monitor) is no higher than the best so far: the schedule sees each epoch's record.
    expected, best = [0.05], -1.0
    for record in history[:-1]:
        expected.append(expected[-1] if record["val_accuracy"] > best else expected[-1] / 2)
        best = max(best, record["val_accuracy"])
    assert lrs == pytest.approx(expected) and min(lrs) < 0.05, "the schedule lowered the rate at least once"

    part = build_experiment(make_config(*settings, "trainer.max_epochs=2", "name=part"))
    part.run()
    resumed = resume_experiment(part.run_dir, overrides=["trainer.max_epochs=5"])
    resumed.run()
    assert values(read_history(part.run_dir)) == values(history)


def test_plateau_warmup_and_clipping_from_the_command_line(small: list[str], cli: Callable[..., CLI]) -> None:
    from .conftest import BASE

    code, _, err = cli(
        BASE,
        *small,
        "scheduler.name=plateau",
        "scheduler.warmup_epochs=1",
        "trainer.grad_clip_norm=0.5",
        "trainer.max_epochs=2",
    )
    assert code == 0, err
