"""The program's side of a sweep: the front door, and worker processes that a signal stops once, cleanly."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import fmnist_ignite
from fmnist_ignite import ConfigError
from fmnist_ignite.app import workers

from .conftest import BASE, REPO, small_overrides
from .helpers import ONE_THREAD, sweep_command


def test_run_sweep_is_the_programs_and_refuses_no_workers(tmp_path: Path) -> None:
    assert fmnist_ignite.run_sweep is workers.run_sweep
    with pytest.raises(ConfigError, match="^--workers must be at least 1$"):
        workers.run_sweep(BASE, ["seed=1,2"], workers=0)
    with pytest.raises(ConfigError, match=r"^fuse_max must be 0 or more \(0 or 1: each trial alone\), not -1$"):
        workers.run_sweep(BASE, ["seed=1,2"], fuse_max=-1)


def test_ctrl_c_stops_every_worker_after_its_epoch_and_the_same_command_resumes_them(
    tmp_path: Path, system_dir: Path
) -> None:
    trace = tmp_path / "trace.txt"
    handler = f"handlers=[{{target: 'tests.sweep_plugins:Trace', kwargs: {{path: '{trace}', seconds: 0.5}}}}]"
    args = [BASE, *small_overrides(tmp_path, system_dir), "trainer.max_epochs=4", handler, "seed=1,2", "--workers", "2"]
    runs = [tmp_path / "runs" / "small-sweep" / f"seed-{seed}" for seed in (1, 2)]
    process = subprocess.Popen(
        sweep_command(*args), cwd=REPO, env=ONE_THREAD, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 180
    while not all((run / "checkpoints" / "checkpoint_1.pt").exists() for run in runs):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # as a Ctrl-C: to the main process, which passes it on once
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "error: SIGINT received: the sweep stopped and each trial it was running keeps its last saved epoch" in err
    assert sorted(line for line in err.splitlines() if "worker" in line) == [
        f"warning: worker {k}: SIGINT received: stopping after this epoch is saved (send it again to stop at once)"
        for k in (1, 2)
    ], "the workers say they stop, and nothing of their runs"
    assert not any((run / "metrics.json").exists() for run in runs), "stopped after an epoch, not at the end"

    again = subprocess.run(sweep_command(*args), cwd=REPO, env=ONE_THREAD, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert sorted(again.stderr.splitlines()) == [
        f"trial {k}/2 done: val_accuracy={_best(run)} (seed={run.name[-1]}) -> {run}"
        for k, run in zip((1, 2), sorted(runs, key=_finished_at), strict=True)
    ], again.stderr
    for run in runs:
        assert [r["epoch"] for r in json.loads((run / "history.json").read_text())] == [1, 2, 3, 4]
    assert Counter(line.split()[0] for line in trace.read_text().splitlines()) == {"seed-1": 2, "seed-2": 2}


def _best(run: Path) -> str:
    return f"{json.loads((run / 'metrics.json').read_text())['best_value']:.4f}"


def _finished_at(run: Path) -> int:
    return (run / "metrics.json").stat().st_mtime_ns


def test_workers_on_a_terminal_say_one_line_per_trial_and_leave_each_runs_record_in_its_directory(
    tmp_path: Path, system_dir: Path
) -> None:
    refuse = "handlers=[{target: 'tests.sweep_plugins:RefuseLr', event: EPOCH_STARTED, kwargs: {lr: 0.02}}]"
    args = [BASE, *small_overrides(tmp_path, system_dir), "trainer.max_epochs=2", "logging.progress_bar=auto"]
    args += [refuse, "optimizer.lr=0.01,0.02,0.03", "--workers", "2"]
    master, terminal = pty.openpty()  # stderr a terminal: where the runs would draw their progress bars
    process = subprocess.Popen(
        sweep_command(*args), cwd=tmp_path, env=ONE_THREAD, stdout=subprocess.PIPE, stderr=terminal, text=True
    )
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # every process that had the terminal has ended
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    out = process.communicate(timeout=60)[0]
    err = shown.decode().replace("\r\n", "\n")
    assert process.returncode == 1, err
    sweep = Path("runs") / "small-sweep"
    lines = err.splitlines()
    assert lines[-1] == "error: 1 of 3 trials failed (see above)"
    assert [line.split(" ", 2)[:2] for line in lines[:-1]] == [["trial", "1/3"], ["trial", "2/3"], ["trial", "3/3"]]
    assert sorted(line.split(" ", 2)[2] for line in lines[:-1]) == [
        f"done: val_accuracy={_best(tmp_path / sweep / 'lr-0.01')} (optimizer.lr=0.01) -> {sweep / 'lr-0.01'}",
        f"done: val_accuracy={_best(tmp_path / sweep / 'lr-0.03')} (optimizer.lr=0.03) -> {sweep / 'lr-0.03'}",
        f"failed: RuntimeError: lr 0.02 is refused (optimizer.lr=0.02) -> {sweep / 'lr-0.02'}",
    ]
    assert "FAIL" in out and out.count("COMPLETE") == 2
    for name in ("lr-0.01", "lr-0.03"):
        run = tmp_path / sweep / name
        assert [r["epoch"] for r in json.loads((run / "history.json").read_text())] == [1, 2]
        assert json.loads((run / "report.json").read_text())["per_class"].keys() >= {"T-shirt/top", "Ankle boot"}
        assert {"history.csv", "confusion_matrix.png", "predictions.png", "metrics.json"} <= {
            p.name for p in run.iterdir()
        }


def test_a_sweep_in_this_process_says_a_line_as_each_trial_ends_and_keeps_the_runs_records_in_their_folders(
    cli: Any, tmp_path: Path, system_dir: Path
) -> None:
    args = ["sweep", BASE, *small_overrides(tmp_path, system_dir), "trainer.max_epochs=1", "optimizer.lr=0.01,0.02"]
    code, out, err = cli(*args)
    assert code == 0, err
    sweep = tmp_path / "runs" / "small-sweep"
    said = err.splitlines()  # the lines of the sweep itself; the table is the output
    assert said[0] == "Trials 0, 1: fused, trained together as one model (2 trials)"
    assert [re.sub(r"=0\.\d{4} ", "=X ", line) for line in said[1:]] == [
        f"trial 1/2 done: val_accuracy=X (optimizer.lr=0.01) -> {sweep / 'lr-0.01'}",
        f"trial 2/2 done: val_accuracy=X (optimizer.lr=0.02) -> {sweep / 'lr-0.02'}",
    ]
    assert "Epoch [" not in out + err and "Test (" not in out + err  # in each run's folder
    assert (sweep / "lr-0.01" / "history.csv").exists() and (sweep / "lr-0.02" / "report.json").exists()

    code, out, err = cli(*args, "--name", "loud", "-v")
    assert code == 0, err
    assert (out + err).count("Epoch [1]") == 2  # -v: each run's record as well
