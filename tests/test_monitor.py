"""One definition of the best epoch: the monitor, and everything that agrees with it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fmnist_ignite import Config, ConfigError, Monitor, build_experiment, evaluate_run, load_config
from fmnist_ignite.fileio import safe_torch_load

from .conftest import BASE, CLI


def _monitor(mode: str = "max") -> Monitor:
    return Monitor(torch.nn.Linear(2, 2), "val_accuracy", mode)  # type: ignore[arg-type]


def test_the_monitor_keeps_the_earliest_best_epoch_and_its_weights() -> None:
    monitor = _monitor()
    records = []
    for epoch, value in enumerate([0.5, 0.7, 0.7, 0.6], start=1):
        records.append({"epoch": epoch, "val_accuracy": value})
        with torch.no_grad():
            monitor.model.weight.fill_(epoch)
        monitor.update(records)
        assert monitor.improved == (epoch in (1, 2))
    assert (monitor.best_epoch, monitor.best_value) == (2, 0.7)
    assert torch.equal(monitor.best_state["weight"], torch.full((2, 2), 2.0))
    restored = _monitor()
    restored.load_state_dict(monitor.state_dict())
    assert (restored.best_epoch, restored.best_value) == (2, 0.7)


def test_min_mode_prefers_lower_values() -> None:
    monitor = _monitor("min")
    records = [{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.4}]
    monitor.update(records[:1])
    monitor.update(records)
    assert monitor.best_epoch == 2


def test_a_missing_column_names_the_columns_there_are() -> None:
    with pytest.raises(ConfigError, match="monitor.metric: the history has no column 'val_accuracy'; choose one of"):
        _monitor().update([{"epoch": 1, "val_loss": 0.3, "seconds": 1.0}])


def test_a_checkpoint_by_another_monitor_does_not_apply() -> None:
    state = _monitor("min").state_dict()
    with pytest.raises(ValueError, match="by val_accuracy \\(min\\), this run's by val_accuracy \\(max\\)"):
        _monitor().load_state_dict(state)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["monitor.mode=up"], "'monitor.mode': Input should be 'auto', 'max' or 'min'"),
        (["monitor.metric=val-loss"], "'monitor.metric': String should match pattern"),
    ],
)
def test_bad_settings_are_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(BASE, overrides)


def test_auto_mode_is_min_for_a_loss() -> None:
    assert load_config(BASE, ["monitor.metric=val_loss"]).monitor.direction == "min"
    assert load_config(BASE, ["monitor.metric=val_accuracy"]).monitor.direction == "max"


def _agreement(cfg: Config, metrics: dict, history: list[dict], expected_epoch: int) -> None:
    run = cfg.run_dir
    saved = json.loads((run / "metrics.json").read_text())
    assert saved == metrics
    assert (saved["best_epoch"], saved["weights"], saved["weights_epoch"]) == (expected_epoch, "best", expected_epoch)
    assert saved["best_value"] == history[expected_epoch - 1][cfg.monitor.metric]
    best = safe_torch_load(run / "checkpoints" / "best_model.pt")
    assert (best["epoch"], best["metric"], best["value"]) == (expected_epoch, cfg.monitor.metric, saved["best_value"])
    model = safe_torch_load(run / "model.pt")
    assert all(torch.equal(model[k], v) for k, v in best["model"].items()), "model.pt holds the best epoch's weights"
    evaluated = evaluate_run(run, "test", "best")
    assert evaluated["weights"] == str(run / "checkpoints" / "best_model.pt")
    assert evaluated["accuracy"] == pytest.approx(saved["test_accuracy"], abs=1e-12)


def test_best_by_val_loss_is_the_same_epoch_everywhere(make_config: Callable[..., Config]) -> None:
    cfg = make_config(
        "monitor.metric=val_loss",
        "trainer.max_epochs=6",
        "early_stopping.patience=2",
        "handlers=[{target: 'tests.plugins:Sabotage', kwargs: {start: 3}}]",
    )
    experiment = build_experiment(cfg)
    metrics = experiment.run()
    history = experiment.history
    expected = min(history, key=lambda r: r["val_loss"])["epoch"]
    assert expected == 3 and metrics["monitor"] == "val_loss" and metrics["mode"] == "min"
    assert len(history) == 5, "early stopping counts from the same best epoch"
    _agreement(cfg, metrics, history, expected)


def test_a_column_a_handler_adds_can_be_monitored(make_config: Callable[..., Config]) -> None:
    cfg = make_config(
        "monitor.metric=val_epoch_score",
        "trainer.max_epochs=3",
        "early_stopping.enabled=false",
        "handlers=[{target: 'tests.plugins:EpochScore'}]",
    )
    experiment = build_experiment(cfg)
    metrics = experiment.run()
    history = experiment.history
    assert [r["val_epoch_score"] for r in history] == [-1.0, -2.0, -3.0]
    assert max(history, key=lambda r: r["val_accuracy"])["epoch"] != 1, "accuracy alone would pick another epoch"
    assert "val_epoch_score" in (cfg.run_dir / "history.csv").read_text().splitlines()[0].split(",")
    _agreement(cfg, metrics, history, 1)


def test_without_restore_best_the_last_weights_are_tested(make_config: Callable[..., Config]) -> None:
    cfg = make_config(
        "monitor.restore_best=false",
        "trainer.max_epochs=4",
        "early_stopping.enabled=false",
        "handlers=[{target: 'tests.plugins:Sabotage', kwargs: {start: 2}}]",
    )
    metrics = build_experiment(cfg).run()
    assert (metrics["weights"], metrics["weights_epoch"], metrics["best_epoch"]) == ("last", 4, 2)


def test_a_monitored_column_that_never_appears_is_one_line(small: list[str], cli: Callable[..., CLI]) -> None:
    code, _, err = cli(BASE, *small, "monitor.metric=val_f1")
    assert code == 2
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            "error: monitor.metric: the history has no column 'val_f1'; choose one of train_loss, train_accuracy, "
            "val_loss, val_accuracy, lr"
        )
    )


def test_an_unknown_monitored_column_is_refused_before_anything_is_written(
    small: list[str], tmp_path: Path, cli: Callable[..., CLI]
) -> None:
    code, out, err = cli(BASE, *small, "monitor.metric=val_acc")
    assert (code, out) == (2, "")
    assert err == (
        "error: monitor.metric: the history has no column 'val_acc' (did you mean 'val_accuracy'?); choose one of "
        "train_loss, train_accuracy, val_loss, val_accuracy, lr (a handler that writes a metric itself names its "
        "column in history_columns)\n"
    )
    assert not (tmp_path / "runs").exists()


def test_an_ignite_metric_attached_in_python_can_be_monitored(make_config: Callable[..., Config]) -> None:
    from ignite.metrics import Precision

    experiment = build_experiment(make_config("monitor.metric=val_precision_mean", "trainer.max_epochs=2"))
    Precision(average=True, device=experiment.context.device).attach(experiment.evaluator, "precision_mean")
    assert "val_precision_mean" in experiment.context.history.columns()
    experiment.run()
    assert experiment.context.monitor.best_epoch in (1, 2)
    assert all(0 <= r["val_precision_mean"] <= 1 for r in experiment.history)
