"""handlers/early_stopping.py: patience counted on the monitored metric, and a state that resumes exactly."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fmnist_ignite.config import HandlerConfig
from fmnist_ignite.handlers import EarlyStopping, attach_handler
from fmnist_ignite.registry import HANDLERS

from .helpers import Rig, make_rig


def complete_epoch(rig: Rig, handler: EarlyStopping, value: float) -> int:
    """What the run does when an epoch completes: its record, the monitor, then the handler; returns the counter."""
    context = rig.context
    epoch = len(context.history.records) + 1
    context.trainer.state.epoch = epoch
    context.history.records.append({"epoch": epoch, context.monitor.metric: value})
    context.monitor.update(context.history.records)
    handler(context.trainer)
    return handler.counter


@pytest.mark.parametrize(
    ("metric", "mode", "values", "counters", "stops"),
    [
        ("val_accuracy", "max", [0.5, 0.6, 0.6, 0.55], [0, 0, 1, 2], 4),
        ("val_accuracy", "max", [0.5, 0.4, 0.7, 0.6, 0.7], [0, 1, 0, 1, 2], 5),
        ("val_loss", "min", [1.0, 0.9, 0.95, 0.8, 0.85, 0.81], [0, 0, 1, 0, 1, 2], 6),
        ("val_loss", "min", [1.0, 0.9, 0.8, 0.7], [0, 0, 0, 0], None),
    ],
)
def test_patience_counting(
    tmp_path: Path, metric: str, mode: str, values: list[float], counters: list[int], stops: int | None
) -> None:
    rig = make_rig(tmp_path, metric=metric, mode=mode, write=False)
    handler = EarlyStopping(rig.context, patience=2)
    seen, stopped_at = [], None
    for value in values:
        seen.append(complete_epoch(rig, handler, value))
        if rig.context.trainer.should_terminate and stopped_at is None:
            stopped_at = rig.context.trainer.state.epoch
    assert seen == counters
    assert stopped_at == stops


def test_min_delta_is_the_least_change_that_counts(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, write=False)
    handler = EarlyStopping(rig.context, patience=3, min_delta=0.05)
    assert [complete_epoch(rig, handler, v) for v in (0.50, 0.54, 0.60, 0.64, 0.70)] == [0, 1, 0, 1, 0]
    assert handler.best_score == pytest.approx(0.70)


def test_the_run_s_line_and_ignite_s_own_at_debug(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rig = make_rig(tmp_path, write=False)
    handler = EarlyStopping(rig.context, patience=1)
    with caplog.at_level(logging.INFO):
        complete_epoch(rig, handler, 0.8)
        complete_epoch(rig, handler, 0.7)
    lines = [(r.name, r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("fmnist_ignite")]
    assert lines == [
        (
            "fmnist_ignite.run",
            logging.INFO,
            "Early stopping after epoch 2: val_accuracy has not improved for 1 epochs (best 0.8000 at epoch 1)",
        )
    ]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="fmnist_ignite.handlers.early_stopping"):
        complete_epoch(rig, handler, 0.6)
    assert ("fmnist_ignite.handlers.early_stopping", logging.DEBUG, "EarlyStopping: Stop training") in [
        (r.name, r.levelno, r.getMessage()) for r in caplog.records
    ]


def test_state_dict_round_trip_resumes_the_count(tmp_path: Path) -> None:
    first = make_rig(tmp_path / "a", write=False)
    handler = EarlyStopping(first.context, patience=3)
    for value in (0.5, 0.7, 0.6):
        complete_epoch(first, handler, value)
    state = handler.state_dict()
    assert (state["counter"], state["best_score"]) == (1, 0.7)

    second = make_rig(tmp_path / "b", write=False)
    second.context.history.load_state_dict(first.context.history.state_dict())
    second.context.monitor.load_state_dict(first.context.monitor.state_dict())
    resumed = EarlyStopping(second.context, patience=3)
    resumed.load_state_dict(state)
    assert (resumed.counter, resumed.best_score) == (1, 0.7)
    assert complete_epoch(second, resumed, 0.65) == 2
    assert not second.context.trainer.should_terminate
    assert complete_epoch(second, resumed, 0.69) == 3
    assert second.context.trainer.should_terminate


def test_a_restored_counter_at_patience_stops_before_any_epoch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig(tmp_path, write=False)
    rig.context.monitor.best_value, rig.context.monitor.best_epoch = 0.75, 2
    handler = attach_handler(
        rig.context, HandlerConfig(target="early_stopping", kwargs={"patience": 2}), "early_stopping"
    )
    handler.load_state_dict({"counter": 2, "best_score": 0.75, "threshold_mode": "abs"})
    with caplog.at_level(logging.INFO, logger="fmnist_ignite.run"):
        rig.run(5)
    assert rig.context.history.records == []
    assert caplog.messages == [
        "Early stopping: val_accuracy has not improved for 2 epochs (patience 2; best 0.7500 at epoch 2)"
    ]


def test_a_larger_patience_on_resume_trains_on(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, write=False)
    handler = attach_handler(
        rig.context, HandlerConfig(target="early_stopping", kwargs={"patience": 3}), "early_stopping"
    )
    handler.load_state_dict({"counter": 2, "best_score": 2.0, "threshold_mode": "abs"})  # unbeatable accuracy
    rig.run(5)
    assert len(rig.context.history.records) == 1  # one more epoch without improvement: the third
    assert handler.counter == 3


def test_in_a_real_run_it_stops_where_the_history_says(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, write=False, metric="val_loss", mode="min")
    handler = attach_handler(
        rig.context, HandlerConfig(target="early_stopping", kwargs={"patience": 1}), "early_stopping"
    )
    assert rig.context.state["early_stopping"] is handler and HANDLERS.get("early_stopping") is EarlyStopping
    rig.run(12)
    losses = [r["val_loss"] for r in rig.context.history.records]
    best, expected = losses[0], 12
    for epoch, loss in enumerate(losses[1:], start=2):
        if loss >= best:
            expected = epoch
            break
        best = loss
    assert len(losses) == expected
    assert (rig.context.trainer.state.epoch < 12) == (handler.counter == 1)
