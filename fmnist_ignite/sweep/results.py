"""What a sweep leaves, read from its study: ``results.csv``, ``results.png``, the table, mean ± std over seeds."""

from __future__ import annotations

import csv
import io
import socket
import statistics
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..config import parse_value
from ..fileio import atomic_write_text
from ..plots import COLORS, Canvas, Marks, scatter_panel
from ..reports import save_figure
from ..rundir import SweepDir, shown
from ..tables import format_table
from .space import Param, SweepPlan, grid_size, trial_name
from .study import points

if TYPE_CHECKING:
    import optuna

INTERRUPTED = "interrupted: run the sweep again to resume it"
COLUMNS = ("trial", "name", "status", "epochs", "best_value", "test_accuracy")


def sweep_results(study: optuna.Study, plan: SweepPlan) -> dict[str, Any]:
    """One row per set of values (however often it was started), best first; writes ``results.csv`` and ``results.png``.

    Every row comes from the study, whichever machine ran the trial: ``host`` and ``run_dir`` say where
    its run directory is.

    Returns:
        ``sweep_dir``, ``host`` (this machine's name), ``study``, ``storage``, ``monitor``, ``direction``,
        ``keys`` (the swept keys), ``rows`` (each: ``trial``, ``name``, one column per swept key, ``status``,
        ``epochs``, ``best_value``, ``test_accuracy``, ``error``, ``host``, ``run_dir``), ``seeds`` (see
        :func:`seed_statistics`), ``failed`` (how many rows failed), ``csv`` and ``figure`` (their paths).
    """
    keys, rows = [p.key for p in plan.params], []
    for name, trials in points(plan, study.get_trials(deepcopy=False)).items():
        order = {"COMPLETE": 0, "PRUNED": 0, "RUNNING": 1}  # the finished trial, else the running one, else the last
        trial = min(trials, key=lambda t: (order.get(t.state.name, 2), -t.number))
        attrs, status = trial.user_attrs, trial.state.name
        rows.append({
            "trial": trial.number, "name": name, **{p.key: p.text(trial.params[p.key]) for p in plan.params},
            "status": status, "epochs": attrs.get("epochs"), "best_value": attrs.get("best_value"),
            "test_accuracy": attrs.get("test_accuracy"), "error": attrs.get("error", INTERRUPTED * (status == "FAIL")),
            "host": attrs.get("host"), "run_dir": attrs.get("run_dir"),
        })  # fmt: skip
    sign = -1 if plan.direction == "maximize" else 1
    rows.sort(key=lambda r: (r["best_value"] is None, sign * (r["best_value"] or 0.0), r["trial"]))
    sweep = SweepDir(plan.sweep_dir)
    atomic_write_text(sweep.results_csv, results_csv(rows, keys))
    save_figure(sweep_figure(rows, plan.params, plan.monitor, plan.study), sweep.results_figure)
    return {
        "sweep_dir": str(sweep.path), "host": socket.gethostname(), "study": plan.study, "storage": plan.storage,
        "monitor": plan.monitor, "direction": plan.direction, "keys": keys, "rows": rows,
        "seeds": seed_statistics(rows, keys), "failed": sum(r["status"] == "FAIL" for r in rows),
        "csv": str(sweep.results_csv), "figure": str(sweep.results_figure),
    }  # fmt: skip


class FinishedTrials:
    """The trials of a sweep that end from now on, each said once in a line: what a sweep's main process shows
    while its worker processes run them (their runs' records stay in the run directories).

    A line reads ``trial 3/16 done: val_accuracy=0.8512 (optimizer.lr=0.01, seed=2) -> runs/sweep/lr-0.01_seed-2``
    (``pruned after epoch N`` or ``failed: <error>`` in place of ``done``); ``3`` counts the sets of values
    finished so far, earlier starts of the sweep included. A trial stopped by a signal is not a finished one:
    the next start of the sweep resumes it.
    """

    def __init__(self, plan: SweepPlan, study: optuna.Study) -> None:
        self.plan, self.study = plan, study
        self.total = grid_size(plan.params) if plan.trials is None else plan.trials
        self.said = {t.number for t in self._finished()}
        self.names = {trial_name(plan.params, t.params) for t in self._finished()}

    def _finished(self) -> list[optuna.trial.FrozenTrial]:
        trials = [t for trials in points(self.plan, self.study.get_trials(deepcopy=False)).values() for t in trials]
        ended = [t for t in trials if _ended(t)]
        return sorted(ended, key=lambda t: (t.datetime_complete or datetime.max, t.number))

    def new_lines(self) -> list[str]:
        """A line for each trial that ended since the last call."""
        return [line for trial in self._finished() if (line := self.line(trial))]

    def line(self, trial: optuna.trial.FrozenTrial) -> str | None:
        """The line of a trial that ended (as ``study.tell`` returns it), unless it was said already."""
        if trial.number in self.said or not _ended(trial):
            return None
        self.said.add(trial.number)
        name = trial_name(self.plan.params, trial.params)
        self.names.add(name)
        return self._line(trial, name, min(len(self.names), self.total))

    def _line(self, trial: optuna.trial.FrozenTrial, name: str, done: int) -> str:
        attrs = trial.user_attrs
        values = ", ".join(f"{p.key}={p.text(trial.params[p.key])}" for p in self.plan.params)
        where = shown(SweepDir(self.plan.sweep_dir).trial(name).path)
        if _failed(trial):
            return f"trial {done}/{self.total} failed: {attrs['error']} ({values}) -> {where}"
        ended = "done" if trial.state.name == "COMPLETE" else f"pruned after epoch {attrs.get('epochs', '?')}"
        value = attrs.get("best_value")
        score = f"{self.plan.monitor}={value:.4f}" if isinstance(value, float | int) else self.plan.monitor + "=-"
        return f"trial {done}/{self.total} {ended}: {score} ({values}) -> {where}"


def _ended(trial: optuna.trial.FrozenTrial) -> bool:
    """Complete, pruned or failed with an error (not stopped by a signal: the next start resumes it)."""
    return trial.state.name in ("COMPLETE", "PRUNED") or _failed(trial)


def _failed(trial: optuna.trial.FrozenTrial) -> bool:
    """Failed with an error (one stopped by a signal failed without one: it is resumed, not finished)."""
    return trial.state.name == "FAIL" and "error" in trial.user_attrs


def results_csv(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
    """The rows as CSV: ``trial, name, <swept keys>, status, epochs, best_value, test_accuracy, error, host,
    run_dir``."""
    out = io.StringIO()
    columns = ["trial", "name", *keys, *COLUMNS[2:], "error", "host", "run_dir"]
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if r[k] is None else r[k] for k in columns} for r in rows)
    return out.getvalue()


def seed_statistics(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """When ``seed`` is swept: mean and standard deviation over the seeds of each setting of the other keys.

    Only complete trials count. Each entry holds ``values`` (the other keys), ``seeds`` (how many),
    and ``best_value`` and ``test_accuracy`` as ``(mean, std)`` (std 0 for a single seed).

    Example:
        >>> from fmnist_ignite.sweep.results import seed_statistics
        >>> rows = [{"seed": "1", "status": "COMPLETE", "best_value": 0.8, "test_accuracy": 0.7},
        ...         {"seed": "2", "status": "COMPLETE", "best_value": 0.9, "test_accuracy": 0.7}]
        >>> seed_statistics(rows, ["seed"])[0]["best_value"]
        (0.8500000000000001, 0.07071067811865474)
    """
    others = [k for k in keys if k != "seed"]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows if "seed" in keys else []:
        if row["status"] == "COMPLETE":
            groups.setdefault(tuple(row[k] for k in others), []).append(row)

    def spread(members: list[dict[str, Any]], key: str) -> tuple[float, float]:
        values = [r[key] for r in members]
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    return [
        {"values": dict(zip(others, group, strict=True)), "seeds": len(members)}
        | {key: spread(members, key) for key in ("best_value", "test_accuracy")}
        for group, members in groups.items()
    ]


def sweep_figure(rows: Sequence[dict[str, Any]], params: Sequence[Param], monitor: str, title: str) -> Image.Image:
    """For each swept key, the monitored value of the best epoch (circles) and the test accuracy (squares) per trial.

    Numbers are placed on a number line (logarithmic for ``log(...)`` and for values spanning a
    factor of 100 or more), other values side by side; pruned trials are drawn hollow.
    """
    rows = [r for r in rows if r["best_value"] is not None]
    canvas = Canvas(420 * len(params), 364)
    canvas.text((210 * len(params), 12), f"sweep {title}: one point per trial", size=12)
    for k, param in enumerate(params):
        texts = [r[param.key] for r in rows]
        numbers = [parse_value(t, param.key) for t in texts]
        labels = None
        if not all(isinstance(n, int | float) and not isinstance(n, bool) for n in numbers):
            labels = list(param.values) or sorted(set(texts))
            numbers = [labels.index(t) for t in texts]
        marks = []
        for column, label, color, shape in (
            ("best_value", f"{monitor} (best epoch)", COLORS[0], "circle"),
            ("test_accuracy", "test accuracy", COLORS[1], "square"),
        ):
            for pruned in (False, True):
                chosen = [
                    (x, r[column]) for x, r in zip(numbers, rows, strict=True) if pruned == (r["status"] == "PRUNED")
                ]
                if chosen:
                    xs, ys = zip(*chosen, strict=True)
                    marks.append(Marks(label + " (pruned)" * pruned, xs, ys, color, shape, hollow=pruned))
        box = (k * 420, 24, (k + 1) * 420, 364)
        scatter_panel(canvas, box, param.key, marks, labels, log=not labels and param.kind == "log")
    return canvas.image()


def format_sweep(result: dict[str, Any]) -> str:
    """The table the ``sweep`` command prints, best first; then mean ± std over seeds, and the errors.

    When some trial ran on another machine or under another folder, a last column says where each
    run directory is (``host:path``).
    """
    monitor = result["monitor"]
    header = ["trial", "name", "status", "epochs", monitor, "test_accuracy"]
    rows = [[r[k] for k in COLUMNS] for r in result["rows"]]
    where = [f"{r['host']}:{r['run_dir']}" if r["run_dir"] else None for r in result["rows"]]
    here = f"{result['host']}:{result['sweep_dir']}/"
    if any(w not in (None, here + r["name"]) for w, r in zip(where, result["rows"], strict=True)):
        header.append("run_dir")
        rows = [[*row, w] for row, w in zip(rows, where, strict=True)]
    lines = format_table(header, rows) if rows else []
    for entry in result["seeds"]:
        setting = " ".join(f"{k}={v}" for k, v in entry["values"].items()) or "all trials"
        (bm, bs), (tm, ts) = entry["best_value"], entry["test_accuracy"]
        lines.append(
            f"{setting} over {entry['seeds']} seeds: {monitor} {bm:.4f} ± {bs:.4f}, test_accuracy {tm:.4f} ± {ts:.4f}"
        )
    lines += [f"trial {r['trial']} {r['name']} failed: {r['error']}" for r in result["rows"] if r["status"] == "FAIL"]
    lines.append(f"results: {result['csv']}, {result['figure']}; the runs: {result['sweep_dir']}/<name>")
    return "\n".join(lines)
