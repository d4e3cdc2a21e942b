from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
import torch
from ignite.engine import Events

from fmnist_ignite import Config, ConfigError, RunDirError, build_experiment, resume_experiment
from fmnist_ignite.fileio import safe_torch_load

from . import plugins
from .conftest import BASE, CLI, values


def test_run_writes_history_checkpoints_metrics_and_model(make_config: Callable[..., Config]) -> None:
    cfg = make_config("trainer.max_epochs=3", "early_stopping.enabled=false")
    experiment = build_experiment(cfg)
    assert not cfg.run_dir.exists(), "building must not write anything"
    metrics = experiment.run()
    run = cfg.run_dir
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history == experiment.history
    assert set(history[0]) == {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"}
    csv_lines = (run / "history.csv").read_text().splitlines()
    assert csv_lines[0] == "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,seconds" and len(csv_lines) == 4
    assert history[-1]["val_accuracy"] > 0.7, "the synthetic data set can be learnt"
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[0]["lr"] < 0.01 and history[-1]["lr"] < history[0]["lr"], "cosine schedule"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best_model.pt",
        "checkpoint_2.pt",
        "checkpoint_3.pt",
    ]
    best = max(history, key=lambda r: r["val_accuracy"])
    best_file = safe_torch_load(run / "checkpoints" / "best_model.pt")
    assert (best_file["epoch"], best_file["metric"], best_file["value"]) == (
        best["epoch"],
        "val_accuracy",
        best["val_accuracy"],
    )
    saved = json.loads((run / "metrics.json").read_text())
    assert saved == metrics
    assert set(saved) >= {"test_accuracy", "test_loss", "best_epoch", "best_value", "monitor", "per_class_accuracy"}
    assert (saved["monitor"], saved["mode"], saved["best_epoch"]) == ("val_accuracy", "max", best["epoch"])
    assert next(iter(saved["per_class_accuracy"])) == "T-shirt/top"
    assert saved["weights"] == "best" and saved["weights_epoch"] == best["epoch"]
    weights = safe_torch_load(run / "model.pt")
    assert set(weights) == {"linear.weight", "linear.bias"} and weights["linear.weight"].shape == (10, 784)
    assert torch.equal(weights["linear.weight"], best_file["model"]["linear.weight"])
    assert (run / "config.yaml").read_text() == cfg.to_yaml()


def test_test_metrics_match_a_direct_computation(make_config: Callable[..., Config]) -> None:
    experiment = build_experiment(make_config("trainer.max_epochs=2"))
    metrics = experiment.run()
    data = experiment.data
    x = (data.test_images.float() / 255 - data.mean) / data.std
    with torch.no_grad():
        logits = experiment.model(x)
    assert metrics["test_accuracy"] == pytest.approx((logits.argmax(1) == data.test_labels).float().mean().item())
    assert metrics["test_loss"] == pytest.approx(
        torch.nn.functional.cross_entropy(logits, data.test_labels).item(), rel=1e-5
    )
    shirt = data.test_labels == 6
    assert metrics["per_class_accuracy"]["Shirt"] == pytest.approx((logits[shirt].argmax(1) == 6).float().mean().item())


def test_same_config_and_seed_give_identical_history(make_config: Callable[..., Config]) -> None:
    a = build_experiment(make_config("name=a"))
    b = build_experiment(make_config("name=b"))
    a.run()
    b.run()
    assert values(a.history) == values(b.history)
    c = build_experiment(make_config("name=c", "seed=5"))
    c.run()
    assert values(c.history) != values(a.history)


def test_resume_ends_with_the_same_history_as_an_uninterrupted_run(make_config: Callable[..., Config]) -> None:
    overrides = (
        "trainer.max_epochs=5",
        "early_stopping.patience=5",
        "handlers=[{target: 'tests.plugins:CountingState'}]",
    )
    full = build_experiment(make_config("name=full", *overrides))
    full.add_handler(plugins.CountingState)
    full.run()

    cut = build_experiment(make_config("name=cut", *overrides))
    cut.add_handler(plugins.CountingState)
    cut.add_handler(plugins.StopAfter, event="EPOCH_STARTED", epoch=2)
    with pytest.raises(KeyboardInterrupt):
        cut.run()
    assert [r["epoch"] for r in json.loads((cut.run_dir / "history.json").read_text())] == [1, 2]

    resumed = resume_experiment(cut.run_dir)
    resumed.add_handler(plugins.CountingState)
    metrics = resumed.run()
    assert values(resumed.history) == values(full.history)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4, 5]
    assert json.loads((cut.run_dir / "history.json").read_text())[2:] == resumed.history[2:]
    assert resumed.handlers["handlers[0]"].count == full.handlers["handlers[0]"].count == 5, "from YAML"
    assert resumed.handlers["handlers[1]"].count == full.handlers["handlers[1]"].count == 5, "from Python"
    full_metrics = json.loads((full.run_dir / "metrics.json").read_text())
    assert metrics == full_metrics
    for key, tensor in safe_torch_load(full.run_dir / "model.pt").items():
        assert torch.equal(tensor, safe_torch_load(cut.run_dir / "model.pt")[key])


def test_resume_keeps_early_stopping_and_the_best_epoch(make_config: Callable[..., Config]) -> None:
    overrides = (
        "trainer.max_epochs=8",
        "early_stopping.patience=2",
        "handlers=[{target: 'tests.plugins:Sabotage', kwargs: {start: 3}}]",
    )
    full = build_experiment(make_config("name=full", *overrides))
    full.run()
    cut = build_experiment(make_config("name=cut", *overrides))
    cut.add_handler(plugins.StopAfter, event="EPOCH_STARTED", epoch=4)
    with pytest.raises(KeyboardInterrupt):
        cut.run()
    resumed = resume_experiment(cut.run_dir)
    resumed.run()
    assert values(resumed.history) == values(full.history)
    stopper = resumed.handlers["early_stopping"]
    assert stopper.counter == full.handlers["early_stopping"].counter == 2
    assert resumed.context.monitor.best_epoch == full.context.monitor.best_epoch == 3
    names = sorted(p.name for p in (cut.run_dir / "checkpoints").iterdir())
    assert names == sorted(p.name for p in (full.run_dir / "checkpoints").iterdir())
    assert safe_torch_load(cut.run_dir / "checkpoints" / "best_model.pt")["epoch"] == 3


def test_early_stopping_restores_the_best_weights(make_config: Callable[..., Config]) -> None:
    cfg = make_config(
        "trainer.max_epochs=10",
        "early_stopping.patience=2",
        "handlers=[{target: 'tests.plugins:Sabotage', kwargs: {start: 3}}]",
    )
    experiment = build_experiment(cfg)
    metrics = experiment.run()
    history = experiment.history
    assert len(history) == 5, "stops after 2 epochs without improvement on epoch 3"
    best = max(history, key=lambda r: r["val_accuracy"])
    assert metrics["best_epoch"] == best["epoch"] == 3 and metrics["weights"] == "best"
    assert metrics["best_value"] == best["val_accuracy"]
    assert history[-1]["val_accuracy"] < best["val_accuracy"] - 0.2
    assert metrics["test_accuracy"] > 0.8, "the test uses the restored weights, not the sabotaged ones"
    model = safe_torch_load(cfg.run_dir / "model.pt")
    for key, tensor in safe_torch_load(cfg.run_dir / "checkpoints" / "best_model.pt")["model"].items():
        assert torch.equal(model[key], tensor)


def test_early_stopping_on_val_loss(make_config: Callable[..., Config]) -> None:
    cfg = make_config(
        "trainer.max_epochs=10",
        "early_stopping.patience=1",
        "monitor.metric=val_loss",
        "handlers=[{target: 'tests.plugins:Sabotage', kwargs: {start: 2}}]",
    )
    metrics = build_experiment(cfg).run()
    assert metrics["best_epoch"] == 2 and metrics["epochs_trained"] == 3


def test_yaml_handler_is_called_every_epoch_with_the_metrics(make_config: Callable[..., Config]) -> None:
    cfg = make_config(
        "trainer.max_epochs=3",
        "handlers=[{target: 'tests.plugins:RecordMetrics'}, "
        "{target: 'tests.plugins:log_epoch', event: EPOCH_COMPLETED, every: 2, kwargs: {tag: e}}]",
    )
    experiment = build_experiment(cfg)
    experiment.run()
    rows = [json.loads(line) for line in (cfg.run_dir / "recorded.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for row, record in zip(rows, experiment.history, strict=True):
        assert row["accuracy"] == record["val_accuracy"] and row["loss"] == record["val_loss"]
    assert (cfg.run_dir / "function_calls.txt").read_text() == "e2\n"


def test_python_api_attaches_a_handler_in_three_lines(make_config: Callable[..., Config]) -> None:
    seen: list[float] = []
    experiment = build_experiment(make_config("trainer.max_epochs=2"))
    experiment.trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda: seen.append(experiment.evaluator.state.metrics["accuracy"])
    )
    experiment.run()
    assert seen == [r["val_accuracy"] for r in experiment.history]


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        ("{target: 'tests.nope:X'}", "handlers[0].target: cannot import module 'tests.nope'"),
        ("{target: 'tests.plugins:Missing'}", "handlers[0].target: module 'tests.plugins' has no attribute 'Missing'"),
        ("{target: 'tests.plugins:NOT_CALLABLE'}", "handlers[0].target: 'tests.plugins:NOT_CALLABLE' is a int"),
        (
            "{target: 'tests.plugins:RecordMetrics', kwargs: {colour: red}}",
            "handlers[0].kwargs: tests.plugins:RecordMetrics got an unexpected keyword argument 'colour'",
        ),
        (
            "{target: 'tests.plugins:StopAfter'}",
            "handlers[0].kwargs: tests.plugins:StopAfter missing a required argument: 'epoch'",
        ),
        ("{target: nonesuch}", "handlers[0].target: unknown handler 'nonesuch'"),
    ],
)
def test_bad_handler_entries_fail_at_build_time(
    make_config: Callable[..., Config], handler: str, expected: str
) -> None:
    cfg = make_config(f"handlers=[{handler}]")
    with pytest.raises(ConfigError) as info:
        build_experiment(cfg)
    assert expected in str(info.value)
    assert not cfg.run_dir.exists()


def test_existing_run_directory_is_never_overwritten(make_config: Callable[..., Config]) -> None:
    cfg = make_config("trainer.max_epochs=1")
    build_experiment(cfg).run()
    before = (cfg.run_dir / "metrics.json").read_bytes()
    again = build_experiment(cfg)
    again.run()
    assert again.run_dir == cfg.run_dir.with_name("small-1"), "running again makes a new run directory"
    assert (cfg.run_dir / "metrics.json").read_bytes() == before
    with pytest.raises(RunDirError, match="has finished"):
        resume_experiment(cfg.run_dir)


def test_val_size_must_leave_training_images(make_config: Callable[..., Config]) -> None:
    with pytest.raises(ConfigError, match="data.val_size=600 must be smaller than the 600 training images"):
        build_experiment(make_config("data.val_size=600"))


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_other_optimizers_and_schedules_train(make_config: Callable[..., Config], optimizer: str) -> None:
    cfg = make_config(
        f"optimizer.name={optimizer}",
        "optimizer.lr=0.01",
        "scheduler.name=step",
        "scheduler.step_size=1",
        "scheduler.gamma=0.5",
        "trainer.max_epochs=3",
    )
    experiment = build_experiment(cfg)
    experiment.run()
    assert [r["lr"] for r in experiment.history] == pytest.approx([0.01, 0.005, 0.0025])
    assert experiment.history[-1]["val_accuracy"] > 0.7


def test_cifar10_trains_with_3072_features(tmp_path: Path, make_config: Callable[..., Config]) -> None:
    from .conftest import write_cifar_archive

    write_cifar_archive(tmp_path / "cifar")
    cfg = make_config(
        "data.dataset=cifar10", f"data.root={tmp_path / 'cifar'}", "data.val_size=20", "trainer.max_epochs=2"
    )
    experiment = build_experiment(cfg)
    experiment.run()
    assert experiment.model.linear.in_features == 3072
    metrics = json.loads((cfg.run_dir / "metrics.json").read_text())
    assert list(metrics["per_class_accuracy"]) == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]


def test_device_that_the_machine_lacks_is_refused(make_config: Callable[..., Config]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="device 'cuda': CUDA is not available on this machine; use device=cpu"):
        build_experiment(make_config("device=cuda"))


def test_compile_runs_eagerly_on_cpu_with_the_same_history(
    make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fmnist_ignite")
    eager = build_experiment(make_config("name=eager", "trainer.max_epochs=2"))
    eager.run()
    compiled = build_experiment(make_config("name=compiled", "trainer.max_epochs=2", "trainer.compile=true"))
    compiled.run()
    assert "trainer.compile: compiling pays off on CUDA only; training on cpu runs eagerly" in caplog.text
    assert values(compiled.history) == values(eager.history)


def test_compile_failure_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from fmnist_ignite.engine import compile_for_training

    class CudaBatch:  # stands for a batch on a GPU; torch.compile fails before using it
        device = torch.device("cuda")

    model = torch.nn.Linear(4, 2)
    example = cast(torch.Tensor, CudaBatch())

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no backend here")

    monkeypatch.setattr(torch, "compile", broken)
    assert compile_for_training(model, example) is model
    assert "trainer.compile: torch.compile failed here (no backend here); training runs eagerly" in caplog.text


def test_compiled_module_is_the_training_step_and_checkpoints_keep_plain_keys(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fmnist_ignite.build as build_module

    calls: list[int] = []

    class Wrapped(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(len(x))
            return self._orig_mod(x)

    monkeypatch.setattr(build_module, "compile_for_training", lambda model, example: Wrapped(model))
    experiment = build_experiment(make_config("trainer.max_epochs=1", "trainer.compile=true"))
    experiment.run()
    assert calls and calls[0] == 32, "the training step goes through the compiled module"
    assert set(safe_torch_load(experiment.run_dir / "model.pt")) == {"linear.weight", "linear.bias"}


def test_numpy_draws_continue_the_same_after_a_resume(make_config: Callable[..., Config]) -> None:
    overrides = (
        "trainer.max_epochs=4",
        "early_stopping.enabled=false",
        "handlers=[{target: 'tests.plugins:NumpyDraws'}]",
    )
    full = build_experiment(make_config("name=full", *overrides))
    full.run()
    cut = build_experiment(make_config("name=cut", *overrides))
    cut.add_handler(plugins.StopAfter, event="EPOCH_STARTED", epoch=2)
    with pytest.raises(KeyboardInterrupt):
        cut.run()
    import numpy as np

    np.random.seed(12345)  # what another program in this process might do meanwhile
    resumed = resume_experiment(cut.run_dir)
    resumed.run()
    assert len(full.handlers["handlers[0]"].draws) == 4
    assert resumed.handlers["handlers[0]"].draws == full.handlers["handlers[0]"].draws


def test_add_handler_takes_the_same_filters_as_yaml(make_config: Callable[..., Config]) -> None:
    experiment = build_experiment(make_config("trainer.max_epochs=4", "early_stopping.enabled=false"))
    every = experiment.add_handler(plugins.log_epoch, every=2, tag="every")
    assert every is plugins.log_epoch
    experiment.add_handler("tests.plugins:log_epoch", once=3, tag="once")
    experiment.add_handler(plugins.log_epoch, event="EPOCH_STARTED", after=2, before=4, tag="between")
    experiment.run()
    lines = (experiment.run_dir / "function_calls.txt").read_text().split()
    assert lines == ["every2", "between3", "once3", "every4"]


def test_early_stopping_listed_under_handlers_works_like_the_section(make_config: Callable[..., Config]) -> None:
    section = build_experiment(
        make_config(
            "name=section",
            "trainer.max_epochs=10",
            "early_stopping.patience=2",
            "handlers=[{target: 'tests.plugins:Sabotage', kwargs: {start: 3}}]",
        )
    )
    section.run()
    listed = build_experiment(
        make_config(
            "name=listed",
            "trainer.max_epochs=10",
            "early_stopping.enabled=false",
            "handlers=[{target: 'tests.plugins:Sabotage', kwargs: {start: 3}}, "
            "{target: early_stopping, kwargs: {patience: 2}}]",
        )
    )
    metrics = listed.run()
    assert values(listed.history) == values(section.history) and len(listed.history) == 5
    assert (metrics["best_epoch"], metrics["weights"]) == (3, "best")
    assert metrics["test_accuracy"] > 0.8, "the best weights are restored at the end"
    assert json.loads((listed.run_dir / "metrics.json").read_text()) == json.loads(
        (section.run_dir / "metrics.json").read_text()
    )


def test_fast_dev_run_trains_validates_and_tests_one_batch_and_writes_nothing(
    tmp_path: Path, small: list[str], cli: Callable[..., CLI]
) -> None:
    code, out, err = cli(BASE, *small, "trainer.fast_dev_run=true", "logging.tensorboard=true")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "fast_dev_run: one batch of training, validation and test; no run directory is written"
    assert lines[-1].startswith("fast_dev_run passed: train loss ") and lines[-1].endswith("; nothing was written")
    assert sum(line.startswith("Epoch [") for line in lines) == 1
    assert not (tmp_path / "runs").exists(), "no run directory, no output folder"


def test_fast_dev_run_runs_one_batch_of_each(make_config: Callable[..., Config]) -> None:
    experiment = build_experiment(make_config("trainer.fast_dev_run=true"))
    seen = {"train": 0, "val": 0}
    experiment.trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda: seen.__setitem__("train", seen["train"] + 1)
    )
    experiment.evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda: seen.__setitem__("val", seen["val"] + 1))
    metrics = experiment.run()
    assert seen == {"train": 1, "val": 1}
    assert [r["epoch"] for r in experiment.history] == [1]
    assert len(experiment.loaders["test"]) == 1 and metrics["epochs_trained"] == 1
    assert not experiment.run_dir.exists()
