"""What a sweep leaves to look at: ``results.csv``, ``results.png``, the table and, over seeds, mean ± std.

Everything here is read from the study, so any machine that shares it writes the same table.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import _parse_yaml
from .fileio import atomic_write, atomic_write_text
from .rundir import SweepDir
from .sweep import Param, SweepPlan, points

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure

INTERRUPTED = "interrupted: run the sweep again to resume it"


def sweep_results(study: optuna.Study, plan: SweepPlan) -> dict[str, Any]:
    """One row per trial (a set of values, however often it was started), best first; and the files of the results.

    Writes ``results.csv`` and ``results.png`` in the sweep's folder.

    Returns:
        ``sweep_dir``, ``study``, ``storage``, ``monitor``, ``direction``, ``keys`` (the swept keys),
        ``rows`` (each: ``trial``, ``name``, one column per swept key, ``status``, ``epochs``,
        ``best_value``, ``test_accuracy``, ``error``), ``seeds`` (see :func:`seed_statistics`),
        ``failed`` (how many rows failed), ``csv`` and ``figure`` (their paths).
    """
    keys = [p.key for p in plan.params]
    rows = []
    for point in points(plan, study.get_trials(deepcopy=False)).values():
        trial = point.shown()
        attrs = trial.user_attrs
        status = trial.state.name
        rows.append(
            {
                "trial": trial.number,
                "name": point.name,
                **{p.key: p.text(point.values[p.key]) for p in plan.params},
                "status": status,
                "epochs": attrs.get("epochs"),
                "best_value": attrs.get("best_value"),
                "test_accuracy": attrs.get("test_accuracy"),
                "error": attrs.get("error", INTERRUPTED if status == "FAIL" else ""),
            }
        )
    sign = -1 if plan.direction == "maximize" else 1
    rows.sort(key=lambda r: (r["best_value"] is None, sign * (r["best_value"] or 0.0), r["trial"]))
    sweep = SweepDir(plan.sweep_dir)
    atomic_write_text(sweep.results_csv, results_csv(rows, keys))
    save_matplotlib_figure(sweep_figure(rows, plan.params, plan.monitor, plan.study), sweep.results_figure)
    return {
        "sweep_dir": str(sweep.path),
        "study": plan.study,
        "storage": plan.storage,
        "monitor": plan.monitor,
        "direction": plan.direction,
        "keys": keys,
        "rows": rows,
        "seeds": seed_statistics(rows, keys),
        "failed": sum(r["status"] == "FAIL" for r in rows),
        "csv": str(sweep.results_csv),
        "figure": str(sweep.results_figure),
    }


def results_csv(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
    """The rows as CSV: ``trial, name, <swept keys>, status, epochs, best_value, test_accuracy, error``."""
    out = io.StringIO()
    columns = ["trial", "name", *keys, "status", "epochs", "best_value", "test_accuracy", "error"]
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if r[k] is None else r[k] for k in columns} for r in rows)
    return out.getvalue()


def seed_statistics(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """When ``seed`` is swept: mean and standard deviation over the seeds of each setting of the other keys.

    Only complete trials count. Each entry holds ``values`` (the other keys), ``seeds`` (how many),
    and ``best_value`` and ``test_accuracy`` as ``(mean, std)`` (std 0 for a single seed).

    Example:
        >>> rows = [{"seed": "1", "status": "COMPLETE", "best_value": 0.8, "test_accuracy": 0.7},
        ...         {"seed": "2", "status": "COMPLETE", "best_value": 0.9, "test_accuracy": 0.7}]
        >>> seed_statistics(rows, ["seed"])[0]["best_value"]
        (0.8500000000000001, 0.07071067811865474)
    """
    if "seed" not in keys:
        return []
    others = [k for k in keys if k != "seed"]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "COMPLETE":
            groups.setdefault(tuple(row[k] for k in others), []).append(row)

    def spread(values: list[float]) -> tuple[float, float]:
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    return [
        {
            "values": dict(zip(others, group, strict=True)),
            "seeds": len(members),
            "best_value": spread([r["best_value"] for r in members]),
            "test_accuracy": spread([r["test_accuracy"] for r in members]),
        }
        for group, members in groups.items()
    ]


def _number(text: str) -> float | None:
    value = _parse_yaml(text)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


DPI = 100


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_matplotlib_figure(fig: Figure, path: Path) -> None:
    """Write a matplotlib figure as PNG atomically, then free it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    _pyplot().close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def sweep_figure(rows: Sequence[dict[str, Any]], params: Sequence[Param], monitor: str, title: str) -> Figure:
    """For each swept key, the monitored value of the best epoch (circles) and the test accuracy (squares) per trial.

    Numbers are placed on a number line (logarithmic for ``log(...)`` and for values spanning a
    factor of 100 or more); other values side by side. Pruned trials are drawn hollow.
    """
    plt = _pyplot()
    shown = [r for r in rows if r["best_value"] is not None]
    fig, axes = plt.subplots(1, len(params), figsize=(4.5 * len(params) + 1, 4.0), dpi=DPI, squeeze=False)
    for ax, param in zip(axes[0], params, strict=True):
        numbers = [_number(r[param.key]) for r in shown]
        if all(n is not None for n in numbers):
            xs: list[float] = [n for n in numbers if n is not None]
            spans = bool(xs) and min(xs) > 0 and max(xs) >= 100 * min(xs)
            if param.kind == "log" or spans:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(plt.NullFormatter())  # within a decade they overlap
        else:
            labels = list(param.values) or sorted({r[param.key] for r in shown})
            xs = [float(labels.index(r[param.key])) for r in shown]
            ax.set_xticks(range(len(labels)), labels=labels)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        for column, marker, color in (("best_value", "o", "tab:blue"), ("test_accuracy", "s", "tab:orange")):
            for pruned in (False, True):
                marks = [(x, r[column]) for x, r in zip(xs, shown, strict=True) if (r["status"] == "PRUNED") == pruned]
                if marks:
                    label = f"{monitor} (best epoch)" if column == "best_value" else "test accuracy"
                    ax.scatter(
                        *zip(*marks, strict=True),
                        marker=marker,
                        edgecolors=color,
                        facecolors="none" if pruned else color,
                        label=f"{label} (pruned)" if pruned else label,
                    )
        ax.set_xlabel(param.key)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"sweep {title}: one point per trial", fontsize=10)
    fig.tight_layout()
    return fig


def format_sweep(result: dict[str, Any]) -> str:
    """The table the ``sweep`` command prints, best first; then mean ± std over seeds, and the errors."""

    def show(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    monitor = result["monitor"]
    columns = ["trial", "name", "status", "epochs", monitor, "test_accuracy"]
    rows = [
        [show(r[k]) for k in ("trial", "name", "status", "epochs", "best_value", "test_accuracy")]
        for r in result["rows"]
    ]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)] if rows else []
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()] if rows else []
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for entry in result["seeds"]:
        setting = " ".join(f"{k}={v}" for k, v in entry["values"].items()) or "all trials"
        (bm, bs), (tm, ts) = entry["best_value"], entry["test_accuracy"]
        lines.append(
            f"{setting} over {entry['seeds']} seeds: {monitor} {bm:.4f} ± {bs:.4f}, test_accuracy {tm:.4f} ± {ts:.4f}"
        )
    lines += [f"trial {r['trial']} {r['name']} failed: {r['error']}" for r in result["rows"] if r["status"] == "FAIL"]
    lines.append(f"results: {result['csv']}, {result['figure']}; the runs: {result['sweep_dir']}/<name>")
    return "\n".join(lines)
