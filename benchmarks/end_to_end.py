"""Whole processes, side by side: ``python -m fmnist_ignite configs/base.yaml`` against the same job written by hand.

Each round runs both as fresh processes, one after the other, in alternating order (so that
neither always runs on a warmer or quieter machine): fmnist_ignite with ``configs/base.yaml``
(progress bar off; everything it writes included: history, checkpoints, report, pictures,
model) and ``benchmarks/reference_script.py`` (plain PyTorch: reads the ``.gz`` files, trains the
same model for the same 10 epochs with validation, tests, saves the weights). Both start in an
empty folder, so both read the system copy of Fashion-MNIST (``data.system_dir``).

Reported per process, as medians over the rounds: wall time, CPU time, peak resident memory
(``os.wait4``'s rusage of that child alone), and the phases each logs (``timing: ...`` lines:
fmnist_ignite's at ``-v``): data, the epochs, the end of the run (test evaluation and the files
written after training), and start-up and exit (the rest: interpreter, imports, config, set-up,
teardown). The ratio of wall times is the median of the rounds' own ratios, which a machine that
slows down for a while moves less than a ratio of medians.

Run it with ``make bench`` or ``.venv/bin/python benchmarks/end_to_end.py [--rounds N] [--threads N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMING = re.compile(r"^timing: ([a-z ]+?) ([0-9.]+) s", re.MULTILINE)
PHASES = ("start-up and exit", "data", "training", "end of run")


@dataclass
class Run:
    """One whole process: wall and CPU seconds, peak memory in MB, its logged phases and test accuracy."""

    wall: float
    cpu: float
    peak_mb: float
    phases: dict[str, float]
    accuracy: float


@dataclass
class Runs:
    runs: list[Run] = field(default_factory=list)

    def median(self, key: str) -> float:
        if key in PHASES:
            return statistics.median(r.phases[key] for r in self.runs)
        if key == "fixed cost":
            return statistics.median(r.wall - r.phases["training"] for r in self.runs)
        return statistics.median(getattr(r, key) for r in self.runs)


def timed(command: list[str], cwd: Path, threads: int | None) -> tuple[Run, str]:
    """Start ``command``, wait for it with ``os.wait4`` (its rusage alone), return its figures and stdout."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed (exit code {process.returncode}):\n{stderr[-3000:]}")
    phases = {name: float(seconds) for name, seconds in TIMING.findall(stdout + stderr)}  # -v's lines
    missing = [p for p in PHASES[1:] if p not in phases]
    if missing:
        raise SystemExit(f"{' '.join(command)} logged no timing for {', '.join(missing)}:\n{stderr[-3000:]}")
    phases["start-up and exit"] = wall - sum(phases[p] for p in PHASES[1:])
    run = Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, phases, 0.0)
    return run, stdout


def package_run(work: Path, name: str, threads: int | None) -> Run:
    out = work / "runs"
    command = [sys.executable, "-m", "fmnist_ignite", "-v", str(REPO / "configs" / "base.yaml")]
    command += ["logging.progress_bar=false", f"name={name}", f"output_dir={out}"]
    run, _ = timed(command, work, threads)
    run.accuracy = json.loads((out / name / "metrics.json").read_text())["test_accuracy"]
    return run


def reference_run(work: Path, name: str, threads: int | None) -> Run:
    script = REPO / "benchmarks" / "reference_script.py"
    run, stdout = timed([sys.executable, str(script), "--out", str(work / "reference" / name)], work, threads)
    run.accuracy = json.loads(stdout.splitlines()[-1])["test_accuracy"]
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (each runs both once)")
    parser.add_argument(
        "--threads", type=int, help="torch threads of both processes (OMP_NUM_THREADS; default: torch's, one per core)"
    )
    args = parser.parse_args()
    import torch

    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, "
        f"Python {platform.python_version()}; torch threads: {args.threads or 'default'}; "
        f"load average {load[0]:.1f} at the start"
    )
    package, reference = Runs(), Runs()
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="fmnist-e2e-") as tmp:
        work = Path(tmp)
        for round_ in range(args.rounds):
            if round_ % 2 == 0:
                ours = package_run(work, f"e2e-{round_}", args.threads)
                theirs = reference_run(work, f"e2e-{round_}", args.threads)
            else:
                theirs = reference_run(work, f"e2e-{round_}", args.threads)
                ours = package_run(work, f"e2e-{round_}", args.threads)
            package.runs.append(ours)
            reference.runs.append(theirs)
            ratios.append(ours.wall / theirs.wall)
            print(
                f"  round {round_ + 1}/{args.rounds}: fmnist_ignite {ours.wall:5.2f} s, "
                f"reference {theirs.wall:5.2f} s, ratio {ratios[-1]:.2f}",
                flush=True,
            )
    load = os.getloadavg()

    print(f"\nWhole process, medians of {args.rounds} alternating rounds (ratio: fmnist_ignite / reference)")
    print(f"{'':<34} {'fmnist_ignite':>14} {'reference':>12} {'ratio':>8}")
    rows = [
        ("start-up and exit", "start-up and exit", "s"),
        ("data", "data", "s"),
        ("10 epochs (train + validation)", "training", "s"),
        ("end of run", "end of run", "s"),
        ("fixed cost (all but the epochs)", "fixed cost", "s"),
        ("whole process, wall", "wall", "s"),
        ("whole process, CPU (user + sys)", "cpu", "s"),
        ("peak resident memory", "peak_mb", "MB"),
        ("test accuracy", "accuracy", ""),
    ]
    for label, key, unit in rows:
        ours, theirs = package.median(key), reference.median(key)
        ratio = statistics.median(ratios) if key == "wall" else ours / theirs
        digits = 4 if key == "accuracy" else 0 if key == "peak_mb" else 2
        print(f"{label:<34} {f'{ours:.{digits}f} {unit}':>14} {f'{theirs:.{digits}f} {unit}':>12} {ratio:>7.2f}x")
    print(
        f"\nwhole process: fmnist_ignite takes {statistics.median(ratios):.2f}x the reference's wall time "
        f"(median of the rounds' ratios, range {min(ratios):.2f}-{max(ratios):.2f}; target <= 1.0x, stretch 0.8x)"
    )
    print(f"fixed cost (start-up, data, end of run): {package.median('fixed cost'):.2f} s (target < 2 s)")
    print(f"load average {load[0]:.1f} at the end, on {os.cpu_count()} cores (more than the cores: a busy machine)")


if __name__ == "__main__":
    main()
