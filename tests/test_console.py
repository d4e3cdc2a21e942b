"""app/console.py: the program's lines where they go, in a pipe and on a terminal.

The pipe test is also the smoke test of ``python -m fmnist_ignite`` as a program; the terminal
test needs a real process on a pseudo-terminal.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from fmnist_ignite import load_config
from fmnist_ignite.app.console import logging_restored, setup_logging
from fmnist_ignite.data import load_data

from .conftest import BASE, CLI, REPO, run_cli, small_overrides


def test_piped_output_is_one_line_per_epoch_run_directory_first_results_last(
    tmp_path: Path, system_dir: Path, cli: Callable[..., CLI]
) -> None:
    # The one run of `python -m fmnist_ignite` as a program, its output going to pipes.
    small = small_overrides(tmp_path, system_dir)
    load_data(load_config(BASE, small).data)  # the data set is prepared: its note is not part of this run
    warning = "handlers=[{target: 'tests.plugins:warn', event: EPOCH_COMPLETED, once: 1}]"
    result = run_cli(BASE, *small, "trainer.max_epochs=2", "logging.progress_bar=auto", warning)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "small"
    assert "\r" not in result.stdout + result.stderr, "no progress bar when the output is not a terminal"
    lines = result.stdout.splitlines()
    assert lines[0] == f"Run directory {run}"
    history = json.loads((run / "history.json").read_text())
    assert [line for line in lines if line.startswith("Epoch")] == [
        f"Epoch [{r['epoch']}] train_loss {r['train_loss']:.4f} val_loss {r['val_loss']:.4f} "
        f"val_acc {r['val_accuracy']:.4f}"
        for r in history
    ]
    metrics = json.loads((run / "metrics.json").read_text())
    assert lines[-2] == (
        f"Test (best weights, epoch {metrics['best_epoch']}): "
        f"accuracy {metrics['test_accuracy']:.4f} loss {metrics['test_loss']:.4f}"
    )
    assert lines[-1] == (
        f"Results in {run}: metrics.json, report.json, model.pt, history.png, confusion_matrix.png, "
        f"predictions.png; tensorboard --logdir {run / 'tb'}"
    )
    assert result.stderr == "warning: a warning from a handler\n", "warnings on stderr, nothing else there"

    code, out, err = cli("-q", BASE, *small, "trainer.max_epochs=1")
    assert code == 0, err
    assert [line.split(":")[0] for line in out.splitlines()] == [
        "Test (best weights, epoch 1)",
        f"Results in {run}-1",
    ], "again: a new run directory; -q prints the outcome only"
    assert err == ""


def on_screen(line: str) -> str:
    """What a terminal shows of one line: each carriage return starts writing over it again."""
    screen: list[str] = []
    position = 0
    for char in line:
        if char == "\r":
            position = 0
            continue
        screen[position : position + 1] = [char]
        position += 1
    return "".join(screen).rstrip()


def test_on_a_terminal_the_bar_runs_and_no_line_is_glued_to_it(tmp_path: Path, system_dir: Path) -> None:
    import fcntl
    import pty
    import struct
    import subprocess
    import sys
    import termios

    small = small_overrides(tmp_path, system_dir)
    load_data(load_config(BASE, small).data)
    during_the_bar = "handlers=[{target: 'tests.plugins:warn', event: ITERATION_COMPLETED, once: 5}]"
    args = [BASE, *small, "trainer.max_epochs=2", "logging.progress_bar=auto", "early_stopping.patience=1"]
    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "fmnist_ignite", *args, during_the_bar],
        stdout=terminal,
        stderr=terminal,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal is gone: the process has ended
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert process.wait(timeout=60) == 0
    text = output.decode()
    assert "Epoch [1/2]: [8/16]" in text, "Ignite's progress bar, drawn on the terminal"
    shown = [on_screen(line) for line in text.rstrip().split("\n")]
    run = tmp_path / "runs" / "small"
    assert shown[:4] == [
        f"Run directory {run}",
        "warning: a warning from a handler",
        *(line for line in shown if line.startswith("Epoch [1] ")),
        *(line for line in shown if line.startswith("Epoch [2] ")),
    ], "each line whole, on its own line: the bar is cleared first and drawn again after"
    assert shown[-2].startswith("Test (") and shown[-1].startswith(f"Results in {run}: ")


def test_ignites_own_lines_about_an_error_or_a_stop_are_not_printed_beside_ours(
    small: list[str], cli: Callable[..., CLI], capsys: pytest.CaptureFixture[str]
) -> None:
    boom = "handlers=[{target: 'tests.plugins:Exploding', kwargs: {epoch: 1}}]"
    code, out, err = cli(BASE, *small, boom, "trainer.max_epochs=1")
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith("error: the run stopped on RuntimeError")
    assert "terminating" not in out + err
    engine = logging.getLogger("ignite.engine.engine.Engine")
    with logging_restored():
        setup_logging(1, "stderr")
        engine.error("Current run is terminating due to exception: boom")
        engine.info("Terminate signaled. Engine will stop after current iteration is finished.")
        engine.info("Engine run starting with max_epochs=1.")
    assert capsys.readouterr().err == "Engine run starting with max_epochs=1.\n"
