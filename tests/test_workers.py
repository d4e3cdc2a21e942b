"""The program's side of a sweep: the front door, and worker processes that a signal stops once, cleanly."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

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
    assert re.search(r"^worker [12]: Trial \d seed-\d: training$", err, re.MULTILINE), err
    assert not any((run / "metrics.json").exists() for run in runs), "stopped after an epoch, not at the end"

    again = subprocess.run(sweep_command(*args), cwd=REPO, env=ONE_THREAD, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("from checkpoint_") == 2, again.stderr
    for run in runs:
        assert [r["epoch"] for r in json.loads((run / "history.json").read_text())] == [1, 2, 3, 4]
    assert Counter(line.split()[0] for line in trace.read_text().splitlines()) == {"seed-1": 2, "seed-2": 2}
