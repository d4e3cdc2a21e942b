"""Sweep speed: a fused sweep against one run and against the same sweep unfused; ``--workers``: 1 against 2 workers.

Each measurement is one whole command, timed from start to exit as a user sees it: the process
start, opening the study, each trial (build, train, test, pictures, checkpoints) and the results.
On Fashion-MNIST when ``data/`` or the system copy has it, else on synthetic images of the same
size and format. Rounds alternate the order of the settings, so that a busy spell of a shared
machine does not favour one of them; the load average is printed with the figures.

By default it measures, side by side: one run of ``configs/base.yaml`` (``--epochs`` epochs); the
16-trial grid ``optimizer.lr=0.005,0.01,0.02,0.05 optimizer.weight_decay=0,0.0001,0.001,0.01`` fused
(``--fuse auto``); the same grid ``--fuse off``. It prints the wall times, the fused sweep's time
over the one run's, and the cost per trial beyond that one run (the sweep's time minus the run's,
over 16) unfused over fused.

Run it with ``.venv/bin/python benchmarks/sweep_speed.py [--epochs 3] [--rounds 1]``, or
``--workers [--trials 6] [--epochs 2]`` for the comparison of ``--workers 1`` and ``--workers 2``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fmnist_ignite import DataError, load_config  # noqa: E402
from fmnist_ignite.data import load_data  # noqa: E402


def data_overrides(folder: Path) -> tuple[list[str], str]:
    """Overrides that point at real Fashion-MNIST if it can be found, else at synthetic files of its size."""
    base = load_config(REPO / "configs" / "base.yaml", [f"data.root={REPO / 'data'}"])
    try:
        load_data(base.data)
        return [f"data.root={REPO / 'data'}"], "Fashion-MNIST"
    except DataError:
        from tests.conftest import write_fashion_gz

        synthetic = write_fashion_gz(folder / "fashion-mnist", n_train=60000, n_test=10000)
        return [f"data.root={folder / 'data'}", f"data.system_dir={synthetic}"], "synthetic images (60000 + 10000)"


GRID = ["optimizer.lr=0.005,0.01,0.02,0.05", "optimizer.weight_decay=0,0.0001,0.001,0.01"]


def timed(arguments: list[str], overrides: list[str], out: Path, epochs: int) -> float:
    """Seconds that one whole ``python -m fmnist_ignite ARGUMENTS`` command takes (a run or a sweep)."""
    command = [
        sys.executable,
        "-m",
        "fmnist_ignite",
        *arguments,
        *overrides,
        f"output_dir={out}",
        f"trainer.max_epochs={epochs}",
        "logging.progress_bar=false",
        "-q",
    ]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(arguments[:2])} failed:\n{result.stderr}")
    return seconds


def run_sweep(workers: int, trials: int, epochs: int, overrides: list[str], out: Path, name: str) -> float:
    """Seconds that one whole ``sweep`` command over ``trials`` learning rates takes."""
    lrs = ",".join(f"{0.01 + 0.005 * i:g}" for i in range(trials))
    config = str(REPO / "configs" / "base.yaml")
    return timed(
        ["sweep", config, f"optimizer.lr={lrs}", "--workers", str(workers), "--name", name], overrides, out, epochs
    )


def compare_fusion(epochs: int, rounds: int, overrides: list[str], out: Path) -> None:
    """One run, the 16-trial grid fused, the same grid unfused: the wall times and the two ratios."""
    config = str(REPO / "configs" / "base.yaml")
    commands = {
        "one run": lambda r: [config, f"name=one-r{r}"],
        "16 trials fused": lambda r: ["sweep", config, *GRID, "--name", f"fused-r{r}"],
        "16 trials --fuse off": lambda r: ["sweep", config, *GRID, "--fuse", "off", "--name", f"off-r{r}"],
    }
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(rounds):
        order = list(commands) if round_ % 2 == 0 else list(reversed(commands))
        for name in order:
            seconds[name].append(timed(commands[name](round_), overrides, out, epochs))
            print(f"  round {round_ + 1}: {name} {seconds[name][-1]:.1f} s", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    middle = {name: statistics.median(times) for name, times in seconds.items()}
    one, fused, off = middle["one run"], middle["16 trials fused"], middle["16 trials --fuse off"]
    for name, value in middle.items():
        print(f"{name:>22}  {value:6.1f} s  {value / one:5.2f}x one run")
    fused_each, off_each = (fused - one) / 16, (off - one) / 16
    ratio = off_each / fused_each
    print(
        f"cost per trial beyond one run: fused {fused_each:.3f} s, unfused {off_each:.3f} s ({ratio:.1f}x lower fused)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", action="store_true", help="compare --workers 1 and 2 instead")
    parser.add_argument("--trials", type=int, default=6, help="with --workers: trials per sweep (a grid over the lr)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (default: 3; with --workers: 2)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, each running every setting")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="fmnist-sweep-bench-"))
    overrides, data = data_overrides(out)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load_before = os.getloadavg()[0]
    if not args.workers:
        epochs = args.epochs or 3
        print(
            f"{cores} cores; one run and a 16-trial grid of {epochs} epochs on {data}; load average {load_before:.1f}"
        )
        compare_fusion(epochs, args.rounds, overrides, out)
        return
    args.epochs = args.epochs or 2
    print(f"{cores} cores; {args.trials} trials of {args.epochs} epochs on {data}; load average {load_before:.1f}")
    seconds: dict[int, list[float]] = {1: [], 2: []}
    for round_ in range(args.rounds):
        for workers in (1, 2) if round_ % 2 == 0 else (2, 1):
            seconds[workers].append(
                run_sweep(workers, args.trials, args.epochs, overrides, out, f"w{workers}-r{round_}")
            )
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(f"{'workers':>7}  {'seconds per sweep':>17}  {'trials per minute':>17}  {'against 1 worker':>16}")
    one = statistics.median(seconds[1])
    for workers, times in seconds.items():
        middle = statistics.median(times)
        print(f"{workers:>7}  {middle:17.1f}  {args.trials * 60 / middle:17.2f}  {one / middle:15.2f}x")


if __name__ == "__main__":
    main()
