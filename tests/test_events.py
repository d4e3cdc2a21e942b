"""events.py: RunEvents, registered on the trainer and fired by an Experiment at the documented moments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from ignite.engine import Engine, EventEnum, Events

import fmnist_ignite
from fmnist_ignite import Config, TrainingError, build_experiment
from fmnist_ignite.engine import create_trainer, make_prepare_batch
from fmnist_ignite.events import RunEvents


def test_the_three_events_and_their_names() -> None:
    assert issubclass(RunEvents, EventEnum)
    assert [(e.name, e.value) for e in RunEvents] == [
        ("RUN_STARTED", "run_started"),
        ("RUN_FINISHED", "run_finished"),
        ("RUN_STOPPED", "run_stopped"),
    ]
    assert fmnist_ignite.RunEvents is RunEvents


def test_a_plain_engine_does_not_know_them_and_the_trainer_does() -> None:
    plain = Engine(lambda e, b: None)
    with pytest.raises(ValueError):
        plain.add_event_handler(RunEvents.RUN_STARTED, lambda: None)

    model = torch.nn.Linear(4, 2)
    trainer = create_trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"), make_prepare_batch(0, 1, False)
    )
    fired: list[tuple[str, int]] = []
    for event in RunEvents:
        trainer.add_event_handler(event, lambda engine, name=event.value: fired.append((name, engine.state.epoch)))
    for event in RunEvents:
        trainer.fire_event(event)
    assert fired == [("run_started", 0), ("run_finished", 0), ("run_stopped", 0)]


def test_run_events_on_a_whole_run(make_config: Callable[..., Config]) -> None:
    experiment = build_experiment(make_config("trainer.max_epochs=2", "logging.tensorboard=false", "device=cpu"))
    seen: list[tuple[str, Any]] = []
    rundir = experiment.rundir

    def started() -> None:
        seen.append(("started", rundir.path.exists()))

    def finished(engine: Engine) -> None:
        results = engine.state.results
        seen.append(("finished", (rundir.model.is_file(), rundir.report.is_file(), rundir.metrics.exists())))
        assert set(results) == {"metrics", "report", "figures"}
        assert results["metrics"]["epochs_trained"] == 2
        assert all(path.is_file() for path in results["figures"].values()) and results["figures"]

    experiment.trainer.add_event_handler(RunEvents.RUN_STARTED, started)
    experiment.trainer.add_event_handler(RunEvents.RUN_FINISHED, finished)
    experiment.trainer.add_event_handler(RunEvents.RUN_STOPPED, lambda: seen.append(("stopped", None)))
    metrics = experiment.run()
    assert seen == [("started", False), ("finished", (True, True, False))]
    assert rundir.metrics.is_file() and metrics["epochs_trained"] == 2


def test_run_stopped_holds_the_error_that_then_propagates(make_config: Callable[..., Config]) -> None:
    experiment = build_experiment(make_config("trainer.max_epochs=3", "logging.tensorboard=false", "device=cpu"))
    stopped: list[BaseException] = []

    def fail(engine: Engine) -> None:
        raise RuntimeError(f"handler failed in epoch {engine.state.epoch}")

    experiment.trainer.add_event_handler(Events.EPOCH_COMPLETED(once=2), fail)
    experiment.trainer.add_event_handler(RunEvents.RUN_STOPPED, lambda e: stopped.append(e.state.stop_error))
    experiment.trainer.add_event_handler(RunEvents.RUN_FINISHED, lambda: stopped.append(TrainingError("finished")))
    with pytest.raises(RuntimeError, match="handler failed in epoch 2") as info:
        experiment.run()
    assert stopped == [info.value]
    assert not experiment.rundir.metrics.exists()
