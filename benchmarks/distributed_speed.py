"""Data-parallel epoch time: ``configs/base.yaml`` in one process, and in 1 and 2 processes with gloo (or NCCL).

Each measurement is one whole training command; the epoch time is the median of the
``seconds`` column of its ``history.json`` (training and validation of one epoch, as every
process does it), the start-up is the rest of the wall time. The data set is Fashion-MNIST when
``data/`` or the system copy has it, else synthetic images of the same size and format. Rounds
alternate the order of the settings, so that a busy spell of a shared machine does not favour one
of them; the load average is printed with the figures.

Run it with ``.venv/bin/python benchmarks/distributed_speed.py [--epochs 5] [--rounds 2]
[--backend gloo|nccl] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.sweep_speed import data_overrides  # noqa: E402


def train(settings: list[str], epochs: int, overrides: list[str], out: Path, name: str) -> tuple[float, float, float]:
    """(median epoch seconds, whole wall seconds, validation accuracy) of one training command."""
    command = [
        sys.executable,
        "-m",
        "fmnist_ignite",
        "-q",
        str(REPO / "configs" / "base.yaml"),
        *overrides,
        *settings,
        f"output_dir={out}",
        f"name={name}",
        f"trainer.max_epochs={epochs}",
        "early_stopping.enabled=false",
        "logging.progress_bar=false",
    ]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"the run failed:\n{result.stderr}")
    history = json.loads((out / name / "history.json").read_text())
    return statistics.median(r["seconds"] for r in history), wall, history[-1]["val_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, each running every setting")
    parser.add_argument("--backend", default="gloo", choices=("gloo", "nccl"))
    parser.add_argument("--device", default="cpu", help="device of every run (cpu, cuda)")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="fmnist-dp-bench-"))
    overrides, data = data_overrides(out)
    overrides.append(f"device={args.device}")
    settings = {
        "1 process (no distributed)": [],
        f"1 process ({args.backend})": [f"distributed.backend={args.backend}", "distributed.nproc_per_node=1"],
        f"2 processes ({args.backend})": [f"distributed.backend={args.backend}", "distributed.nproc_per_node=2"],
    }
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{cores} cores, device {args.device}; {args.epochs} epochs of {data}; load average {os.getloadavg()[0]:.1f}")
    measured: dict[str, list[tuple[float, float, float]]] = {label: [] for label in settings}
    labels = list(settings)
    for round_ in range(args.rounds):
        for i, label in enumerate(labels if round_ % 2 == 0 else labels[::-1]):
            measured[label].append(train(settings[label], args.epochs, overrides, out, f"r{round_}-{i}"))
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(f"{'setting':<28} {'epoch (s)':>10} {'whole run (s)':>14} {'epoch vs 1 process':>19} {'val acc':>8}")
    reference = statistics.median(m[0] for m in measured[labels[0]])
    for label, runs in measured.items():
        epoch = statistics.median(m[0] for m in runs)
        wall = statistics.median(m[1] for m in runs)
        accuracy = statistics.median(m[2] for m in runs)
        print(f"{label:<28} {epoch:10.3f} {wall:14.1f} {epoch / reference:18.2f}x {accuracy:8.4f}")


if __name__ == "__main__":
    main()
