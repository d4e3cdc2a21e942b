"""A sweep's results from its rows, in this process: the CSV, mean ± std over seeds, the table and the picture."""

from __future__ import annotations

import csv
import io
from typing import Any

from fmnist_ignite.sweep.results import format_sweep, results_csv, seed_statistics, sweep_figure
from fmnist_ignite.sweep.space import parse_arguments


def row(trial: int, lr: str, seed: str, status: str, best: float | None, test: float | None, error: str = "") -> dict:
    name = f"lr-{lr}_seed-{seed}"
    return {
        "trial": trial, "name": name, "optimizer.lr": lr, "seed": seed, "status": status, "epochs": 2,
        "best_value": best, "test_accuracy": test, "error": error, "host": "here", "run_dir": f"/s/{name}",
    }  # fmt: skip


ROWS = [
    row(1, "0.1", "2", "COMPLETE", 0.9, 0.85),
    row(0, "0.1", "1", "COMPLETE", 0.8, 0.75),
    row(2, "1e-9", "1", "PRUNED", 0.1, 0.1),
    row(3, "1e-9", "2", "FAIL", None, None, "RuntimeError: no"),
]


def result(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ["optimizer.lr", "seed"]
    return {
        "monitor": "val_accuracy", "rows": rows, "seeds": seed_statistics(rows, keys), "csv": "/s/results.csv",
        "figure": "/s/results.png", "sweep_dir": "/s", "host": "here",
    }  # fmt: skip


def test_the_csv_has_a_column_per_swept_key_and_empty_cells_for_what_is_missing() -> None:
    rows = list(csv.DictReader(io.StringIO(results_csv(ROWS, ["optimizer.lr", "seed"]))))
    assert list(rows[0]) == [
        "trial", "name", "optimizer.lr", "seed", "status", "epochs", "best_value", "test_accuracy", "error", "host",
        "run_dir",
    ]  # fmt: skip
    assert rows[3] == {**rows[3], "best_value": "", "test_accuracy": "", "error": "RuntimeError: no"}
    assert (rows[0]["host"], rows[0]["run_dir"]) == ("here", "/s/lr-0.1_seed-2")


def test_seeds_are_averaged_over_complete_trials_only() -> None:
    (entry,) = seed_statistics(ROWS, ["optimizer.lr", "seed"])
    assert entry["values"] == {"optimizer.lr": "0.1"} and entry["seeds"] == 2
    assert round(entry["best_value"][0], 6) == 0.85 and round(entry["test_accuracy"][1], 6) == 0.070711
    assert seed_statistics(ROWS, ["optimizer.lr"]) == [], "only when seed is swept"


def test_the_table_lists_the_trials_then_the_seeds_and_the_errors() -> None:
    lines = format_sweep(result(ROWS)).splitlines()
    assert lines[0].split() == ["trial", "name", "status", "epochs", "val_accuracy", "test_accuracy"]
    assert lines[1].split() == ["1", "lr-0.1_seed-2", "COMPLETE", "2", "0.9000", "0.8500"]
    assert lines[4].split()[-2:] == ["-", "-"]
    assert lines[5] == "optimizer.lr=0.1 over 2 seeds: val_accuracy 0.8500 ± 0.0707, test_accuracy 0.8000 ± 0.0707"
    assert lines[6] == "trial 3 lr-1e-9_seed-2 failed: RuntimeError: no"
    assert lines[7] == "results: /s/results.csv, /s/results.png; the runs: /s/<name>"
    assert format_sweep(result([])).splitlines() == ["results: /s/results.csv, /s/results.png; the runs: /s/<name>"]


def test_the_table_says_where_each_run_is_when_some_ran_on_another_machine_or_folder() -> None:
    assert "run_dir" not in format_sweep(result([*ROWS, {**ROWS[0], "host": None, "run_dir": None}]))
    for other in ({"host": "there"}, {"run_dir": "/t/lr-0.1_seed-2"}):
        lines = format_sweep(result([{**ROWS[0], **other}, ROWS[1]])).splitlines()
        assert lines[0].split()[-1] == "run_dir"
        assert lines[1].split()[-1] == f"{other.get('host', 'here')}:{other.get('run_dir', '/s/lr-0.1_seed-2')}"
        assert lines[2].split()[-1] == "here:/s/lr-0.1_seed-1"


def test_the_picture_has_a_panel_per_swept_key_numbers_or_not() -> None:
    _, params = parse_arguments(["optimizer.lr=0.1,1e-9", "seed=1,2"])
    picture = sweep_figure(ROWS, params, "val_accuracy", "s")
    assert picture.size == (840, 364)
    assert len(picture.getcolors(maxcolors=100_000) or []) > 50, "drawn: points, text and grid"
    _, named = parse_arguments(["optimizer.name=sgd,adam"])
    assert sweep_figure([{**ROWS[0], "optimizer.name": "adam"}], named, "val_accuracy", "s").size == (420, 364)
    assert sweep_figure([], params, "val_accuracy", "s").size == (840, 364), "no trial finished yet"
