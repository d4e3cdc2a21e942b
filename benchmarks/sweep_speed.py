"""Sweep throughput: trials per minute of ``python -m fmnist_ignite sweep`` with ``--workers 1`` and ``--workers 2``.

Each measurement is one whole ``sweep`` command, timed from start to exit as a user sees it:
the process start, opening the study, each trial (build, train, test, pictures, checkpoints) and
the results. The trials are a grid over the learning rate of ``configs/base.yaml``, a few epochs
each, on Fashion-MNIST when ``data/`` or the system copy has it, else on synthetic images of the
same size and format. Rounds alternate the order of the two settings, so that a busy spell of a
shared machine does not favour one of them; the load average is printed with the figures.

Run it with ``.venv/bin/python benchmarks/sweep_speed.py [--trials 6] [--epochs 2] [--rounds 1]``.
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


def run_sweep(workers: int, trials: int, epochs: int, overrides: list[str], out: Path, name: str) -> float:
    """Seconds that one whole ``sweep`` command takes."""
    lrs = ",".join(f"{0.01 + 0.005 * i:g}" for i in range(trials))
    command = [
        sys.executable,
        "-m",
        "fmnist_ignite",
        "sweep",
        "-q",
        str(REPO / "configs" / "base.yaml"),
        *overrides,
        f"output_dir={out}",
        f"trainer.max_epochs={epochs}",
        "logging.progress_bar=false",
        f"optimizer.lr={lrs}",
        "--workers",
        str(workers),
        "--name",
        name,
    ]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"the sweep failed:\n{result.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6, help="trials per sweep (a grid over the learning rate)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per trial")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, each running both settings")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="fmnist-sweep-bench-"))
    overrides, data = data_overrides(out)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load_before = os.getloadavg()[0]
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
