"""Fault injection: every promise in the docs' fault table, broken for real and checked."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmnist_ignite import CheckpointError, Config, TrainingError, build_experiment, resume_experiment
from fmnist_ignite.app.cli import main
from fmnist_ignite.fileio import safe_torch_load

from . import plugins
from .conftest import BASE, REPO, run_cli, small_overrides, values


def read_history(run: Path) -> list[dict]:
    return json.loads((run / "history.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, system_dir: Path) -> list[tuple]:
    """The history of an uninterrupted run of the small config (early stopping off, 4 epochs)."""
    tmp = tmp_path_factory.mktemp("reference")
    result = run_cli(BASE, *small_overrides(tmp, system_dir), "early_stopping.enabled=false")
    assert result.returncode == 0, result.stderr
    return values(read_history(tmp / "runs" / "small"))


@pytest.fixture
def small(tmp_path: Path, system_dir: Path) -> list[str]:
    return [*small_overrides(tmp_path, system_dir), "early_stopping.enabled=false"]


def handler_entry(name: str, event: str, kwargs: str) -> str:
    """A ``handlers=[...]`` override naming one test plugin."""
    return f"handlers=[{{target: 'tests.plugins:{name}', event: {event}, kwargs: {{{kwargs}}}}}]"


def start_cli(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "fmnist_ignite", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"process ended before reaching the fault point: {process.communicate()[1]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the fault point was not reached in time")
        time.sleep(0.05)


@pytest.mark.parametrize("where", ["train", "validation", "checkpoint", "history"])
def test_kill_9_anywhere_then_resume_gives_the_uninterrupted_history(
    tmp_path: Path, small: list[str], reference: list[tuple], where: str
) -> None:
    marker = tmp_path / "frozen"
    stall = handler_entry("Stall", "EPOCH_COMPLETED", f"where: {where}, epoch: 2, marker: '{marker}'")
    process = start_cli(BASE, *small, stall)
    wait_for(marker, process)
    run = tmp_path / "runs" / "small"

    if where == "train":  # while it holds the run, a second process is refused
        second = run_cli("--resume", str(run))
        assert second.returncode == 2
        assert f"{run} is in use by another training process" in second.stderr

    process.send_signal(signal.SIGKILL)
    process.wait()
    assert [r["epoch"] for r in read_history(run)] == ([1, 2] if where == "checkpoint" else [1])
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("checkpoint_"))
    assert checkpoints == ["checkpoint_1.pt"], "no partial file under a checkpoint's name"

    resumed = run_cli("--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith(f"Resuming {run} from checkpoint_1.pt (epoch 1)\n")
    assert values(read_history(run)) == reference
    leftovers = [p.name for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if "tmp" in p.name]
    assert leftovers == []


@pytest.mark.parametrize(("name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_first_signal_saves_the_epoch_and_prints_how_to_resume(
    tmp_path: Path, small: list[str], reference: list[tuple], name: str, code: int
) -> None:
    signaller = handler_entry("SignalSelf", "ITERATION_COMPLETED", f"signal: {name}, epoch: 2")
    result = run_cli(BASE, *small, signaller)
    run = tmp_path / "runs" / "small"
    assert result.returncode == code, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"error: {name} received: stopped after epoch 2, which is saved; "
        f"resume with 'python -m fmnist_ignite --resume {run}'"
    )
    assert [r["epoch"] for r in read_history(run)] == [1, 2]
    assert (run / "checkpoints" / "checkpoint_2.pt").is_file()
    assert not (run / "metrics.json").exists()
    resumed = run_cli("--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert values(read_history(run)) == reference


def test_second_sigint_stops_at_once_without_damage(tmp_path: Path, small: list[str], reference: list[tuple]) -> None:
    signaller = handler_entry("SignalSelf", "ITERATION_COMPLETED", "signal: SIGINT, epoch: 2, times: 2")
    result = run_cli(BASE, *small, signaller)
    run = tmp_path / "runs" / "small"
    assert result.returncode == 130
    assert "error: stopped at once by a second SIGINT during epoch 2; resume with" in result.stderr
    assert [r["epoch"] for r in read_history(run)] == [1]
    safe_torch_load(run / "checkpoints" / "checkpoint_1.pt")
    resumed = run_cli("--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert values(read_history(run)) == reference


def test_sigterm_from_outside_finishes_the_epoch(tmp_path: Path, small: list[str]) -> None:
    marker = tmp_path / "slow"
    slow = handler_entry("Slow", "ITERATION_COMPLETED", f"epoch: 2, marker: '{marker}'")
    process = start_cli(BASE, *small, slow)
    wait_for(marker, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143
    assert "SIGTERM received: stopped after epoch 2, which is saved" in stderr
    assert [r["epoch"] for r in read_history(tmp_path / "runs" / "small")] == [1, 2]


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


def test_unwritable_output_location_fails_before_training(tmp_path: Path, small: list[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli(BASE, *small, f"output_dir={blocker / 'runs'}")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: cannot create run directory {blocker / 'runs' / 'small'}: ")
    assert "choose a writable output_dir" in result.stderr
    assert "Epoch [" not in result.stdout + result.stderr


def test_nan_loss_stops_with_epoch_and_iteration(tmp_path: Path, small: list[str]) -> None:
    result = run_cli(BASE, *small, "optimizer.lr=1e36")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: the training loss became NaN or infinite in epoch 1 at iteration 2 (global iteration 2); "
        "lower optimizer.lr and start a new run"
    )


def test_nan_loss_keeps_history_and_the_last_good_checkpoint(make_config: Callable[..., Config]) -> None:
    experiment = build_experiment(
        make_config("early_stopping.enabled=false", "trainer.max_epochs=5", "scheduler.name=none")
    )

    def blow_up() -> None:
        if experiment.trainer.state.epoch == 2:
            experiment.context.optimizer.param_groups[0]["lr"] = 1e36

    experiment.trainer.add_event_handler(plugins.Events.EPOCH_COMPLETED, blow_up)
    with pytest.raises(TrainingError, match=r"in epoch 3 at iteration \d+ \(global iteration \d+\)"):
        experiment.run()
    run = experiment.run_dir
    assert [r["epoch"] for r in read_history(run)] == [1, 2]
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint_*")) == ["checkpoint_1.pt", "checkpoint_2.pt"]
    state = safe_torch_load(run / "checkpoints" / "checkpoint_2.pt")
    assert torch.isfinite(state["model"]["linear.weight"]).all()


def test_user_handler_error_is_one_line_and_the_run_resumes(
    tmp_path: Path, small: list[str], reference: list[tuple]
) -> None:
    result = run_cli(BASE, *small, "handlers=[{target: 'tests.plugins:ExplodeOnce', kwargs: {epoch: 3}}]")
    run = tmp_path / "runs" / "small"
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: the run stopped on RuntimeError: boom from a user handler (tests/plugins.py:")
    assert last.endswith(
        f"; its last checkpoint is kept: resume with 'python -m fmnist_ignite --resume {run}' "
        "(run with -v for the traceback)"
    )
    assert (run / "checkpoints" / "checkpoint_2.pt").is_file()
    resumed = run_cli("--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert values(read_history(run)) == reference


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(override=st.text(max_size=30))
def test_any_command_line_gives_exit_0_or_a_one_line_exit_2(tmp_path: Path, small: list[str], override: str) -> None:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([BASE, *small, override, "--print-config"])
        except SystemExit as exit_:  # argparse refusing an option-like argument
            code = exit_.code
    assert code in (0, 2)
    if code == 2:
        assert stderr.getvalue().count("\n") == 1, stderr.getvalue()
    assert not (tmp_path / "runs").exists()


def test_error_messages_use_the_first_line_or_the_type_name() -> None:
    from fmnist_ignite.errors import first_line

    assert first_line(RuntimeError("size mismatch\n\tdetails")) == "size mismatch"
    assert first_line(RuntimeError()) == "RuntimeError"
    assert first_line(KeyError("")) == "''"
