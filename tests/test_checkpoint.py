"""Checkpoints: save then rotate, state that must round-trip, and resume falling back past bad files."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from fmnist_ignite import CheckpointError, Config, ConfigError, build_experiment, resume_experiment
from fmnist_ignite.checkpoint import SaveThenRotate
from fmnist_ignite.fileio import safe_torch_load

from . import plugins
from .conftest import values
from .helpers import read_history


class Crash(BaseException):
    """Stands for a kill: nothing after it runs (not even ``except Exception``)."""


def _checkpointer(folder: Path, model: torch.nn.Module) -> tuple[Engine, Checkpoint]:
    engine = Engine(lambda e, b: None)
    checkpoint = Checkpoint({"model": model}, SaveThenRotate(folder), n_saved=1, filename_prefix="")
    engine.add_event_handler(Events.EPOCH_COMPLETED, checkpoint)
    return engine, checkpoint


def test_with_n_saved_1_a_crash_inside_the_write_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = torch.nn.Linear(3, 2)
    engine, _ = _checkpointer(tmp_path, model)
    engine.run([0], max_epochs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_1.pt"]
    real_save = torch.save

    def crashing_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[:20])
        raise Crash

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(Crash):
        engine.run([0], max_epochs=2)
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["model_1.pt"]
    assert set(safe_torch_load(tmp_path / "model_1.pt")) == {"weight", "bias"}


def test_the_old_file_goes_only_after_the_new_one_is_in_place(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    engine, _ = _checkpointer(tmp_path, model)
    engine.run([0], max_epochs=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_3.pt"]


def test_a_kill_inside_the_checkpoint_write_with_n_saved_1_resumes_from_the_last_epoch(
    make_config: Callable[..., Config],
) -> None:
    overrides = ("trainer.max_epochs=4", "early_stopping.enabled=false", "checkpoint.n_saved=1")
    full = build_experiment(make_config("name=full", *overrides))
    full.run()
    cut = build_experiment(make_config("name=cut", *overrides))
    real_save = torch.save

    def save_or_crash(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(obj, dict) and "checkpointer" in obj and cut.trainer.state.epoch == 3:
            raise Crash
        real_save(obj, f, *args, **kwargs)

    torch.save = save_or_crash
    try:
        with pytest.raises(Crash):
            cut.run()
    finally:
        torch.save = real_save
    assert [p.name for p in cut.rundir.checkpoint_files()] == ["checkpoint_2.pt"]
    resumed = resume_experiment(cut.run_dir)
    resumed.run()
    assert values(resumed.history) == values(full.history)


@pytest.mark.parametrize(
    ("kind", "shown"),
    [
        ("numpy", "numpy.float64"),
        ("datetime", "datetime.datetime"),
        ("deque", "collections.deque"),
        ("path", "pathlib.PosixPath"),
    ],
)
def test_state_that_cannot_be_resumed_is_refused_before_training(
    make_config: Callable[..., Config], kind: str, shown: str
) -> None:
    cfg = make_config(f"handlers=[{{target: 'tests.plugins:UnsafeState', kwargs: {{kind: {kind}}}}}]")
    experiment = build_experiment(cfg)
    with pytest.raises(ConfigError) as info:
        experiment.run()
    assert str(info.value) == (
        f"handlers[0]: its state_dict()['value'] holds a {shown}, which a checkpoint cannot restore safely; "
        "keep only tensors, numbers, strings, bools, None, lists, tuples and dicts in state_dict()"
    )
    assert not cfg.run_dir.exists(), "nothing is written"


def test_state_the_loader_refuses_is_refused_before_training_with_the_loaders_reason(
    make_config: Callable[..., Config],
) -> None:
    cfg = make_config("handlers=[{target: 'tests.plugins:UnsafeState', kwargs: {kind: tensor_subclass}}]")
    experiment = build_experiment(cfg)
    with pytest.raises(ConfigError) as info:  # a tensor to a walk through the state; a class the loader does not know
        experiment.run()
    assert str(info.value) == (
        "handlers[0]: its state_dict() holds what torch.load(weights_only=True) refuses (Unsupported global: GLOBAL "
        "tests.plugins.TaggedTensor was not an allowed global by default), which a checkpoint cannot restore "
        "safely; keep only tensors, numbers, strings, bools, None, lists, tuples and dicts in state_dict()"
    )
    assert not cfg.run_dir.exists(), "nothing is written"


def test_resume_falls_back_past_a_checkpoint_that_loads_but_does_not_fit(
    make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    overrides = ("trainer.max_epochs=4", "early_stopping.enabled=false")
    full = build_experiment(make_config("name=full", *overrides))
    full.run()
    cut = build_experiment(make_config("name=cut", *overrides))
    cut.add_handler("tests.plugins:StopAfter", event="EPOCH_STARTED", epoch=3)
    with pytest.raises(KeyboardInterrupt):
        cut.run()
    newest = cut.rundir.checkpoint(3)
    state = safe_torch_load(newest)
    state["model"] = {"linear.weight": torch.zeros(10, 5), "linear.bias": torch.zeros(10)}
    torch.save(state, newest)
    resumed = resume_experiment(cut.run_dir)
    with caplog.at_level(logging.WARNING):
        resumed.run()
    assert f"Skipping checkpoint: {newest} does not fit this run: " in caplog.text
    assert values(resumed.history) == values(full.history)


def test_resume_falls_back_past_a_checkpoint_of_another_configuration(
    make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    cut = build_experiment(make_config("trainer.max_epochs=4", "early_stopping.enabled=false"))
    cut.add_handler("tests.plugins:StopAfter", event="EPOCH_STARTED", epoch=3)
    with pytest.raises(KeyboardInterrupt):
        cut.run()
    newest = cut.rundir.checkpoint(3)
    state = safe_torch_load(newest)
    del state["history"]
    torch.save(state, newest)
    resumed = resume_experiment(cut.run_dir)
    with caplog.at_level(logging.WARNING):
        resumed.run()
    assert f"Skipping checkpoint: {newest} lacks the state of history" in caplog.text
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]


def interrupted_run(make_config: Callable[..., Config], after: int, *overrides: str) -> Path:
    experiment = build_experiment(make_config("early_stopping.enabled=false", *overrides))
    experiment.add_handler(plugins.StopAfter, event="EPOCH_STARTED", epoch=after)
    with pytest.raises(KeyboardInterrupt):
        experiment.run()
    return experiment.run_dir


def test_corrupt_newest_checkpoint_is_skipped_with_a_warning(
    make_config: Callable[..., Config], reference: list[tuple], caplog: pytest.LogCaptureFixture
) -> None:
    run = interrupted_run(make_config, 3)
    newest = run / "checkpoints" / "checkpoint_3.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    resumed = resume_experiment(run)
    resumed.run()
    assert f"Skipping checkpoint: {newest} cannot be loaded" in caplog.text
    assert values(resumed.history) == reference


def test_no_readable_checkpoint_is_an_error_and_nothing_is_deleted(make_config: Callable[..., Config]) -> None:
    run = interrupted_run(make_config, 3)
    files = sorted((run / "checkpoints").glob("checkpoint_*.pt"))
    for path in files:
        path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"none of the 2 checkpoint\(s\) in .* can be used .*nothing was deleted"):
        resume_experiment(run).run()
    assert sorted((run / "checkpoints").glob("checkpoint_*.pt")) == files


def test_pickle_payload_in_a_checkpoint_is_refused_not_run(
    tmp_path: Path, make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": plugins.Evil(marker)}, evil)
    with pytest.raises(CheckpointError, match="holds objects other than tensors and plain data, which are refused"):
        safe_torch_load(evil)
    run = interrupted_run(make_config, 2)
    torch.save({"model": plugins.Evil(marker)}, run / "checkpoints" / "checkpoint_9.pt")
    resumed = resume_experiment(run)
    resumed.run()
    assert "checkpoint_9.pt cannot be loaded: it holds objects other than tensors" in caplog.text
    assert not marker.exists()


def test_disk_full_mid_run_keeps_the_last_checkpoint_and_history(
    make_config: Callable[..., Config], reference: list[tuple], monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment = build_experiment(make_config("early_stopping.enabled=false"))
    real_save = torch.save

    def full_disk(obj: object, f: object, *args: object, **kwargs: object) -> None:
        if experiment.trainer.state.epoch == 3:
            raise OSError(28, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left") as info:
        experiment.run()
    run = experiment.run_dir
    written = {str(run / "checkpoints" / name) for name in ("best_model.pt", "checkpoint_3.pt")}
    assert info.value.filename in written, "the message can name the file"
    assert [r["epoch"] for r in read_history(run)] == [1, 2, 3]
    safe_torch_load(run / "checkpoints" / "checkpoint_2.pt")
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith("tmp")]
    monkeypatch.setattr(torch, "save", real_save)
    resumed = resume_experiment(run)
    resumed.run()
    assert values(resumed.history) == reference
