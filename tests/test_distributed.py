"""Data-parallel training: two processes on CPU with gloo, started by the command line itself.

Real processes throughout (the launcher, its spawned processes, torchrun), except the refusals
made before any process starts, which run in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from fmnist_ignite import train
from fmnist_ignite.errors import program_name

from .conftest import BASE, CLI, REPO, run_cli, small_overrides, values
from .helpers import handler_entry, read_history, wait_for

GLOO = ["distributed.backend=gloo", "distributed.nproc_per_node=2"]
# 501 training images in batches of 32: the last batch, 21 images, splits unevenly (11 + 10).
UNEVEN = ["early_stopping.enabled=false", "data.val_size=99"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, system_dir: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    """The small config (4 epochs, early stopping off) trained in one process (this one) and in two."""
    tmp = tmp_path_factory.mktemp("parallel")
    small = [*small_overrides(tmp, system_dir), *UNEVEN]
    train(BASE, *small, "name=one", verbose=-1)
    return {
        "two": run_cli(BASE, *small, *GLOO, "name=two"),
        "root": tmp,  # type: ignore[dict-item]
    }


def test_two_processes_train_as_one_would_and_rank_0_alone_writes_and_prints(
    runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    two = runs["two"]
    assert two.returncode == 0, two.stderr
    run = Path(str(runs["root"])) / "runs" / "two"
    lines = two.stdout.splitlines()
    assert lines[0] == f"Run directory {run}; data-parallel in 2 processes (gloo)"
    assert [line.split()[1] for line in lines if line.startswith("Epoch [")] == ["[1]", "[2]", "[3]", "[4]"]
    assert sum(line.startswith("Test (") for line in lines) == 1
    assert two.stderr == "", "the other process prints nothing, and the launcher says nothing"

    # Each process takes its part of every batch of the one seeded order, and the gradients add
    # up to the batch's mean, the uneven last batch included: the run is the single-process run,
    # up to the order of floating-point sums.
    single = read_history(run.parent / "one")
    double = read_history(run)
    for a, b in zip(single, double, strict=True):
        assert a["epoch"] == b["epoch"] and a["val_accuracy"] == b["val_accuracy"]
        for key in ("train_loss", "train_accuracy", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4)
    metrics = json.loads((run / "metrics.json").read_text())
    single_metrics = json.loads((run.parent / "one" / "metrics.json").read_text())
    assert metrics["test_accuracy"] == single_metrics["test_accuracy"]
    assert metrics["epochs_trained"] == 4
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == ["best_model.pt", "checkpoint_3.pt", "checkpoint_4.pt"]
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1, "one TensorBoard writer"
    assert sorted(p.name for p in run.parent.iterdir()) == ["one", "two"], "one run directory, no other"


def test_kill_9_of_every_process_then_resume_gives_the_uninterrupted_history(
    tmp_path: Path, system_dir: Path, runs: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    small = [*small_overrides(tmp_path, system_dir), *UNEVEN, "name=two"]
    marker = tmp_path / "frozen"
    stall = handler_entry("Stall", "EPOCH_COMPLETED", f"where: train, epoch: 2, marker: '{marker}'")
    process = subprocess.Popen(
        [sys.executable, "-m", "fmnist_ignite", BASE, *small, *GLOO, stall],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the launcher and both processes
    )
    wait_for(marker, process)
    os.killpg(process.pid, signal.SIGKILL)  # the machine goes away
    process.communicate()
    run = tmp_path / "runs" / "two"
    assert [r["epoch"] for r in read_history(run)] == [1]

    resumed = run_cli("--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith(
        f"Resuming {run} from checkpoint_1.pt (epoch 1); data-parallel in 2 processes (gloo)\n"
    )
    reference = Path(str(runs["root"])) / "runs" / "two"
    assert values(read_history(run)) == values(read_history(reference))


@pytest.mark.parametrize("event", ["EPOCH_COMPLETED", "ITERATION_COMPLETED"])
def test_a_stop_on_one_process_stops_them_all_after_the_same_epoch(
    tmp_path: Path, system_dir: Path, event: str
) -> None:
    # A handler that ends training on rank 1 only (as early stopping would on a metric of its own),
    # at the end of an epoch or in the middle of one: rank 0 must not go on alone and wait for
    # rank 1 for ever, and rank 1 must not skip the epoch's end that rank 0 reaches.
    stop = handler_entry("TerminateOnRank", event, "rank: 1, epoch: 2")
    result = run_cli(BASE, *small_overrides(tmp_path, system_dir), *GLOO, stop, timeout=120)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "small"
    assert [r["epoch"] for r in read_history(run)] == [1, 2]
    assert json.loads((run / "metrics.json").read_text())["epochs_trained"] == 2


def test_a_signal_to_one_process_stops_them_all_with_its_exit_code(tmp_path: Path, system_dir: Path) -> None:
    signaller = handler_entry("SignalSelf", "ITERATION_COMPLETED", "signal: SIGTERM, epoch: 2")
    result = run_cli(BASE, *small_overrides(tmp_path, system_dir), *GLOO, signaller, timeout=120)
    run = tmp_path / "runs" / "small"
    assert result.returncode == 143, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"error: SIGTERM received: stopped after epoch 2, which is saved; resume with '{program_name()} --resume {run}'"
    )
    assert [r["epoch"] for r in read_history(run)] == [1, 2]
    assert not (run / "metrics.json").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data.batch_size=33"],
            "error: data.batch_size=33 does not split evenly between 2 processes (it is the effective batch, "
            "shared by all of them); use data.batch_size=32 or 34",
        ),
        (
            ["distributed.backend=nccl"],
            "error: distributed.backend=nccl needs CUDA GPUs, which this machine lacks; use distributed.backend=gloo",
        ),
    ],
)
def test_settings_no_process_can_run_are_refused_before_any_starts_exit_2_and_write_nothing(
    tmp_path: Path, small: list[str], cli: Callable[..., CLI], overrides: list[str], message: str
) -> None:
    if "nccl" in overrides[0]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    code, _, err = cli(BASE, *small, *GLOO, *overrides)
    assert code == 2
    assert err.strip() == message
    assert not (tmp_path / "runs").exists()


def test_a_validation_split_smaller_than_the_processes_exits_2_and_writes_nothing(
    tmp_path: Path, small: list[str]
) -> None:
    # A real process: the processes start, and each refuses the split it would evaluate.
    result = run_cli(BASE, *small, *GLOO, "data.val_size=1")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: data.val_size has 1 image(s), fewer than the 2 processes that share its evaluation; "
        "use at least 2, or fewer processes"
    )
    assert not (tmp_path / "runs").exists()


def test_resuming_a_finished_run_is_refused_before_any_process_starts(
    runs: dict[str, subprocess.CompletedProcess[str]], cli: Callable[..., CLI]
) -> None:
    run = Path(str(runs["root"])) / "runs" / "two"
    code, _, err = cli("--resume", str(run))
    assert code == 2
    assert err.startswith(f"error: the run in {run} has finished (metrics.json exists); ")


def test_under_torchrun_the_processes_are_torchruns(
    tmp_path: Path, system_dir: Path, runs: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    small = [*small_overrides(tmp_path, system_dir), *UNEVEN, "name=two"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    result = subprocess.run(
        [*torchrun, "-m", "fmnist_ignite", BASE, *small, "distributed.backend=gloo"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "two"
    assert result.stdout.splitlines()[0] == f"Run directory {run}; data-parallel in 2 processes (gloo)"
    reference = Path(str(runs["root"])) / "runs" / "two"
    assert values(read_history(run)) == values(read_history(reference))
    saved = yaml.safe_load((run / "config.yaml").read_text())["distributed"]
    assert saved == {"backend": "gloo", "nproc_per_node": 2}, "torchrun's number of processes is recorded"


def test_a_nan_loss_stops_every_process_with_one_message(tmp_path: Path, system_dir: Path) -> None:
    result = run_cli(BASE, *small_overrides(tmp_path, system_dir), *GLOO, "optimizer.lr=1e36", timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: the training loss became NaN or infinite in epoch 1 at iteration 2 (global iteration 2); "
        "lower optimizer.lr and start a new run"
    ]


def test_grad_clipping_plateau_and_warmup_in_two_processes_train_as_one_would(tmp_path: Path, system_dir: Path) -> None:
    # The clipping comes after the processes' gradients are averaged: every process clips the whole batch's
    # gradient, as the single process does (a limit far below the gradients' norm, so every step is clipped).
    knobs = ["trainer.grad_clip_norm=0.01", "scheduler.name=plateau", "scheduler.warmup_epochs=1"]
    small = [*small_overrides(tmp_path, system_dir), *UNEVEN, *knobs, "trainer.max_epochs=3"]
    one = train(BASE, *small, "name=one", verbose=-1)
    two = run_cli(BASE, *small, *GLOO, "name=two")
    assert two.returncode == 0, two.stderr
    double = read_history(tmp_path / "runs" / "two")
    for a, b in zip(one.history, double, strict=True):
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-6) and a["val_accuracy"] == b["val_accuracy"]
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    unclipped = train(BASE, *[s for s in small if not s.startswith("trainer.grad_clip")], "name=free", verbose=-1)
    assert [r["train_loss"] for r in unclipped.history] != pytest.approx([r["train_loss"] for r in one.history])
