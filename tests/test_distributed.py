"""Data-parallel training: two processes on CPU with gloo, started by the command line itself.

Real processes throughout (the launcher, its spawned processes, torchrun), except the refusals
made before any process starts, which run in this process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
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
    assert saved == {"backend": "gloo", "nproc_per_node": 2, "nnodes": 1}, "torchrun's number of processes is recorded"


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


# A run across two machines: two torchrun commands, each of one process, in folders of their own (as two
# machines would have), sharing only the data's system folder, with relative output_dir and data.root.
MACHINE = ["output_dir=runs", "data.root=data", "name=nodes"]
TORCHRUN_ONE_EACH = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]


def torchrun_machine(node: int, cwd: Path, port: int, c10d: bool, *args: str) -> subprocess.Popen[str]:
    """One machine's ``torchrun --nnodes 2 --nproc-per-node 1 -m fmnist_ignite ARGS``, in ``cwd``, in a session
    of its own."""
    if c10d:  # the machines join as they come; rank 0 is whichever the rendezvous makes it
        rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "nodes"]
    else:
        rendezvous = ["--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port)]
    return subprocess.Popen(
        [*TORCHRUN_ONE_EACH, *rendezvous, "-m", "fmnist_ignite", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (torchrun starts its process in a session of its own)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += process_tree(int(child))
    return found


def kill_machine(process: subprocess.Popen[str]) -> None:
    """The machine goes away: its torchrun and the process it started, at once."""
    for pid in reversed(process_tree(process.pid)):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextmanager
def two_machines(root: Path, *args: str, c10d: bool = False) -> Iterator[list[subprocess.Popen[str]]]:
    """Both machines of the run, started in ``root/machine0`` and ``root/machine1``; whatever is left of them is
    killed at the end."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    machines = []
    try:
        for node in (0, 1):
            (root / f"machine{node}").mkdir(exist_ok=True)
            machines.append(torchrun_machine(node, root / f"machine{node}", port, c10d, *args))
        yield machines
    finally:
        for machine in machines:
            kill_machine(machine)
            machine.communicate()


def ended(machines: list[subprocess.Popen[str]], timeout: float = 120) -> list[tuple[int, str, str]]:
    """Each machine's exit code, output and errors; a machine still running after ``timeout`` fails the test."""
    results = []
    for machine in machines:
        try:
            out, err = machine.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"a machine of the run was still running after {timeout} s (a hang)")
        results.append((machine.returncode, out, err))
    return results


@pytest.fixture(scope="module")
def across_machines(
    tmp_path_factory: pytest.TempPathFactory, system_dir: Path, runs: dict[str, subprocess.CompletedProcess[str]]
) -> tuple[Path, list[tuple[int, str, str]]]:
    """The small config of ``runs`` trained on two machines (static rendezvous); its root and what each said."""
    root = tmp_path_factory.mktemp("machines")
    small = [*small_overrides(root, system_dir), *UNEVEN, *MACHINE, "distributed.backend=gloo"]
    with two_machines(root, BASE, *small) as machines:
        return root, ended(machines)


def test_two_machines_under_torchrun_train_as_one_process_and_rank_0s_machine_alone_holds_the_run(
    across_machines: tuple[Path, list[tuple[int, str, str]]], runs: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    root, [(code0, out0, err0), (code1, out1, err1)] = across_machines
    assert code0 == 0, err0
    assert code1 == 0, err1
    lines = out0.splitlines()
    assert lines[0] == "Run directory runs/nodes; data-parallel in 2 processes (gloo)"
    assert [line.split()[1] for line in lines if line.startswith("Epoch [")] == ["[1]", "[2]", "[3]", "[4]"]
    assert (out1, err1) == ("", ""), "the other machine prints nothing"
    assert list((root / "machine1").iterdir()) == [], "the other machine writes nothing, not even its data.root"

    run = root / "machine0" / "runs" / "nodes"
    single = Path(str(runs["root"])) / "runs" / "one"
    for a, b in zip(read_history(single), read_history(run), strict=True):
        assert a["epoch"] == b["epoch"] and a["val_accuracy"] == b["val_accuracy"]
        for key in ("train_loss", "train_accuracy", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_accuracy"] == json.loads((single / "metrics.json").read_text())["test_accuracy"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["distributed"] == {"backend": "gloo", "nproc_per_node": 1, "nnodes": 2}
    assert saved["output_dir"] == str(root / "machine0" / "runs"), "rank 0's folder"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best_model.pt",
        "checkpoint_3.pt",
        "checkpoint_4.pt",
    ]


def test_a_machine_killed_stops_the_other_with_the_resume_line_and_the_run_resumes_under_c10d(
    tmp_path: Path, system_dir: Path, across_machines: tuple[Path, list[tuple[int, str, str]]]
) -> None:
    marker = tmp_path / "frozen"
    stall = handler_entry("Stall", "EPOCH_COMPLETED", f"where: train, epoch: 2, marker: '{marker}', rank: 1")
    small = [*small_overrides(tmp_path, system_dir), *UNEVEN, *MACHINE, "distributed.backend=gloo"]
    with two_machines(tmp_path, BASE, *small, stall) as machines:
        wait_for(marker, machines[1])  # rank 1 freezes in epoch 2; rank 0 waits for it in the next step
        kill_machine(machines[1])
        [(code, out, err), (gone, _, _)] = ended(machines)
    run = tmp_path / "machine0" / "runs" / "nodes"
    assert code != 0 and gone == -signal.SIGKILL
    assert out.splitlines()[-1].startswith("Epoch [1]")
    error = next(line for line in err.splitlines() if line.startswith("error: "))
    # gloo's words for it: "Connection closed by peer [ADDRESS]" or "Read error [ADDRESS]: Connection reset by peer"
    assert error.startswith("error: the processes of the data-parallel run lost contact during epoch 2 (")
    assert "Connection" in error.split("(")[1]
    assert error.endswith(
        "a process or machine of the run stopped, or the network between them failed; the last checkpoint is kept "
        "on rank 0's machine: resume with the torchrun command that started the run, on each machine, ending in "
        f"'-m fmnist_ignite --resume {run}' (run with -v for the traceback)"
    )
    assert [r["epoch"] for r in read_history(run)] == [1]
    assert not (tmp_path / "machine1" / "runs").exists()

    with two_machines(tmp_path, "--resume", str(run), c10d=True) as machines:
        results = ended(machines)
    assert [code for code, _, _ in results] == [0, 0], results
    said = [out for _, out, _ in results if out]  # rank 0's machine, whichever the rendezvous made it
    assert len(said) == 1
    assert said[0].splitlines()[0].endswith(" from checkpoint_1.pt (epoch 1); data-parallel in 2 processes (gloo)")
    reference = across_machines[0] / "machine0" / "runs" / "nodes"
    assert values(read_history(run)) == values(read_history(reference))


def test_when_rank_0s_machine_goes_the_other_says_how_to_resume_and_fails(tmp_path: Path, system_dir: Path) -> None:
    marker = tmp_path / "frozen"
    stall = handler_entry("Stall", "EPOCH_COMPLETED", f"where: train, epoch: 2, marker: '{marker}', rank: 0")
    small = [*small_overrides(tmp_path, system_dir), *UNEVEN, *MACHINE, "distributed.backend=gloo"]
    with two_machines(tmp_path, BASE, *small, stall) as machines:
        wait_for(marker, machines[0])
        kill_machine(machines[0])
        [_, (code, out, err)] = ended(machines)
    run = tmp_path / "machine0" / "runs" / "nodes"
    assert code != 0 and out == ""
    error = next(line for line in err.splitlines() if "error: " in line)
    assert error.startswith("rank 1: error: the processes of the data-parallel run lost contact during epoch 2 (")
    assert error.endswith(f"ending in '-m fmnist_ignite --resume {run}' (run with -v for the traceback)")


def test_sigterm_to_one_machine_stops_both_after_the_same_epoch_with_the_resume_line(
    tmp_path: Path, system_dir: Path
) -> None:
    marker = tmp_path / "slow"
    slow = handler_entry("Slow", "ITERATION_COMPLETED", f"epoch: 2, marker: '{marker}'")
    small = [*small_overrides(tmp_path, system_dir), *UNEVEN, *MACHINE, "distributed.backend=gloo"]
    with two_machines(tmp_path, BASE, *small, slow) as machines:
        wait_for(marker, machines[1])
        machines[1].send_signal(signal.SIGTERM)  # torchrun passes it on to its process
        [(code0, _, err0), (code1, _, _)] = ended(machines)
    run = tmp_path / "machine0" / "runs" / "nodes"
    assert code0 != 0 and code1 != 0
    epochs = [r["epoch"] for r in read_history(run)]
    assert (
        f"error: SIGTERM received: stopped after epoch {epochs[-1]}, which is saved; resume with the torchrun command "
        f"that started the run, on each machine, ending in '-m fmnist_ignite --resume {run}'"
    ) in err0.splitlines()
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) < 4
    assert not (run / "metrics.json").exists()


def test_a_run_across_machines_resumes_only_under_torchrun(
    across_machines: tuple[Path, list[tuple[int, str, str]]], small: list[str], cli: Callable[..., CLI]
) -> None:
    run = across_machines[0] / "machine0" / "runs" / "nodes"
    code, _, err = cli("--resume", str(run), "trainer.max_epochs=5")
    assert code == 2
    assert err.strip() == (
        "error: distributed.nnodes=2: the run trains on 2 machines, which only torchrun starts; run on each machine "
        "'torchrun --nnodes 2 --nproc_per_node 1 --rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id ID "
        f"-m fmnist_ignite --resume {run}' (HOST: the first machine's address)"
    )
    code, _, err = cli(BASE, *small, "distributed.backend=gloo", "distributed.nnodes=2")
    assert code == 2 and "'torchrun --nnodes 2 --nproc_per_node N " in err and "-m fmnist_ignite CONFIG ...'" in err
    assert len(read_history(run)) == 4
