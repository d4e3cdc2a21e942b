"""Sweeps: grids and sampled values over one Optuna study (real SQLite storage), restarts, parallel processes."""

from __future__ import annotations

import csv
import json
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest

from fmnist_ignite import compare_runs, reports
from fmnist_ignite.app.cli import main
from fmnist_ignite.sweep.study import HEARTBEAT_VARIABLE

from .conftest import BASE, REPO, small_overrides
from .helpers import ONE_THREAD, sweep_command

# One thread per training process: these tiny runs gain nothing from two, and on a busy shared
# machine two threads per process make each step many times slower.
# A heartbeat every second: a killed trial is taken for dead 3 s after its last one, not 30 s.
QUICK_HEARTBEAT = {**ONE_THREAD, HEARTBEAT_VARIABLE: "1"}


pytestmark = pytest.mark.usefixtures("torch_one_thread")  # trials side by side in one process, as a sweep runs them


@pytest.fixture
def small(tmp_path: Path, system_dir: Path) -> list[str]:
    return [*small_overrides(tmp_path, system_dir), "trainer.max_epochs=2"]


@pytest.fixture
def no_run_pictures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip each trial's own pictures in the in-process tests: seconds per trial on two shared cores.

    The subprocess tests below keep them, and test_reports checks them.
    """

    def report_only(rundir: Any, records: Any, best_epoch: Any, test: dict, classes: Any, *args: Any) -> Any:
        return reports.Results(reports.classification_report(test["confusion"], classes), {})

    monkeypatch.setattr("fmnist_ignite.experiment.start_results", report_only)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def trials_of(sweep: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep / 'study.db'}").get_trials()


def start(*args: str, env: dict[str, str] = ONE_THREAD) -> subprocess.Popen[str]:
    """``python -m fmnist_ignite sweep ARGS`` in the background, with the repository importable."""
    return subprocess.Popen(
        sweep_command(*args), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["optimizer.lr=0.1"], "nothing to sweep: give key=v1,v2 (a grid) or key=interval(low,high) with --trials N"),
        (["optimizer.lrr=0.1,0.2"], "the overrides (key=value): unknown key 'optimizer.lrr'; did you mean 'lr'?"),
        (["optimizer.lr=0.1,,0.2"], "'optimizer.lr=0.1,,0.2': an empty value in the list; write key=v1,v2,..."),
        (["optimizer.lr=0.1,0.1"], "'optimizer.lr=0.1,0.1': two of the values are the same, or would name the same"),
        (
            ["optimizer.lr=interval(0.1)"],
            "'optimizer.lr=interval(0.1)': interval takes two numbers, interval(low,high)",
        ),
        (["optimizer.lr=log(0,1)", "--trials", "2"], "'optimizer.lr=log(0,1)': log needs a positive low end"),
        (
            ["optimizer.lr=log(0.01,0.1)"],
            "interval, log and choice are sampled: give the number of trials with --trials",
        ),
        (["optimizer.lr=0.1,0.2", "--trials", "3"], "--trials and --sampler are for sampled sweeps"),
        (["name=a,b"], "'name=a,b': a sweep names its trials and puts them in output_dir/NAME; sweep other keys"),
        (["seed=1,2", "--name", "../x"], "--name '../x': use letters, digits"),
        (["seed=1,2", "distributed.backend=gloo"], "a sweep trains each trial in one process: remove distributed.*"),
        (["distributed.nproc_per_node=1,2"], "a sweep trains each trial in one process: remove distributed.*"),
    ],
)
def test_bad_sweeps_stop_before_anything_runs(
    small: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["sweep", BASE, *small, *args]) == 2
    assert capsys.readouterr().err.startswith(f"error: {message}")
    assert not (tmp_path / "runs").exists()


def test_a_storage_that_cannot_be_opened_is_one_line(small: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", BASE, *small, "seed=1,2", "--storage", "nosuchdb://user:secret@host/db"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot open the study storage nosuchdb://user:***@host/db: ")
    assert len(err.splitlines()) == 1 and "secret" not in err


def test_grid_sweep_records_failures_retries_them_and_averages_over_seeds(
    small: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], no_run_pictures: None
) -> None:
    refuse = "handlers=[{target: 'tests.sweep_plugins:RefuseLr', event: EPOCH_STARTED, kwargs: {lr: 0.02}}]"
    args = ["sweep", BASE, *small, refuse, "optimizer.lr=0.01,0.02", "seed=1,2", "--name", "grid"]
    assert main(args) == 1
    out, err = capsys.readouterr()
    sweep = tmp_path / "runs" / "grid"
    names = ["lr-0.01_seed-1", "lr-0.01_seed-2", "lr-0.02_seed-1", "lr-0.02_seed-2"]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == names
    rows = read_csv(sweep / "results.csv")
    assert list(rows[0]) == [
        "trial", "name", "optimizer.lr", "seed", "status", "epochs", "best_value", "test_accuracy", "error", "host",
        "run_dir",
    ]  # fmt: skip
    assert {(r["host"], r["run_dir"]) for r in rows} == {(socket.gethostname(), str(sweep / n)) for n in names}
    done = [r for r in rows if r["status"] == "COMPLETE"]
    assert sorted(r["name"] for r in done) == names[:2]
    assert [float(r["best_value"]) for r in done] == sorted((float(r["best_value"]) for r in done), reverse=True)
    for row in done:
        metrics = json.loads((sweep / row["name"] / "metrics.json").read_text())
        assert (float(row["best_value"]), float(row["test_accuracy"])) == (
            metrics["best_value"],
            metrics["test_accuracy"],
        )
        assert row["epochs"] == "2" and row["optimizer.lr"] == "0.01"
    failed = [r for r in rows if r["status"] == "FAIL"]
    assert [r["name"] for r in failed] == names[2:]
    assert {r["error"] for r in failed} == {"RuntimeError: lr 0.02 is refused"}
    assert (sweep / "results.png").stat().st_size > 10_000

    table = out.splitlines()
    assert table[0].split() == ["trial", "name", "status", "epochs", "val_accuracy", "test_accuracy"]
    assert [line.split()[1] for line in table[1:5]] == [r["name"] for r in rows]
    values = [float(r["best_value"]) for r in done]
    mean, std = sum(values) / 2, abs(values[0] - values[1]) / 2**0.5
    assert f"optimizer.lr=0.01 over 2 seeds: val_accuracy {mean:.4f} ± {std:.4f}, test_accuracy " in out
    assert "error: 2 of 4 trials failed (see above)" in err
    assert "Trial 0 lr-0.01_seed-1 is not fused: its handler handlers[0] (RefuseLr) is not fusion-aware" in err

    assert len(compare_runs([sweep])["runs"]) == 4, "compare takes the sweep's folder for its trials"

    mtimes = {n: (sweep / n / "config.yaml").stat().st_mtime_ns for n in names[:2]}
    assert main(args) == 1, "the same command again tries the failed trials again, not the complete ones"
    again = {r["name"]: r for r in read_csv(sweep / "results.csv")}
    assert {n: again[n]["trial"] for n in names} == {
        **{r["name"]: r["trial"] for r in done},
        names[2]: "4",
        names[3]: "5",
    }
    assert {n: (sweep / n / "config.yaml").stat().st_mtime_ns for n in names[:2]} == mtimes
    assert [t.state.name for t in trials_of(sweep, "grid")].count("COMPLETE") == 2

    capsys.readouterr()
    assert main(["sweep", BASE, *small, refuse, "optimizer.lr=0.01,0.03", "seed=1,2", "--name", "grid"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: study 'grid' in sqlite:///"
        f"{sweep / 'study.db'} was started with other settings (optimizer.lr=0.01,0.02 seed=1,2, "
        "monitor val_accuracy (maximize), --prune none); run that command again, or choose another --name"
    )


def test_sampled_sweep_draws_values_in_their_ranges_and_can_be_extended(
    small: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], no_run_pictures: None
) -> None:
    space = ["optimizer.lr=log(0.001,0.1)", "optimizer.momentum=interval(0.5,0.9)", "optimizer.name=sgd,adam"]
    args = ["sweep", BASE, *small, *space, "--sampler", "random", "--name", "drawn"]
    assert main([*args, "--trials", "3"]) == 0
    sweep = tmp_path / "runs" / "drawn"
    rows = read_csv(sweep / "results.csv")
    assert len(rows) == 3 and {r["status"] for r in rows} == {"COMPLETE"}
    for row in rows:
        lr, momentum, name = float(row["optimizer.lr"]), float(row["optimizer.momentum"]), row["optimizer.name"]
        assert 0.001 <= lr <= 0.1 and 0.5 <= momentum <= 0.9 and name in ("sgd", "adam")
        assert row["name"] == f"lr-{row['optimizer.lr']}_momentum-{row['optimizer.momentum']}_name-{name}"
        saved = (sweep / row["name"] / "config.yaml").read_text()
        assert f"lr: {lr}\n" in saved and f"momentum: {momentum}\n" in saved and f"name: {name}\n" in saved
    first = {r["name"] for r in rows}

    assert main([*args, "--trials", "4"]) == 0
    rows = read_csv(sweep / "results.csv")
    assert len(rows) == 4 and first < {r["name"] for r in rows}
    assert len(trials_of(sweep, "drawn")) == 4, "the first three trials were not run again"
    assert capsys.readouterr().out.count("COMPLETE") == 7


def test_pruned_trials_are_marked_pruned_and_stop_early(
    small: list[str], tmp_path: Path, no_run_pictures: None
) -> None:
    # Optuna's median pruner judges from the sixth trial on; the sixth learns nothing at all. (In the
    # first epoch none of them is much better than chance yet.)
    lrs = "optimizer.lr=0.01,0.011,0.012,0.013,0.014,1e-9"
    # Unfused: the median pruner judges a trial by those that ended before it, which fused trials do not.
    args = [
        "sweep",
        BASE,
        *small,
        lrs,
        "trainer.max_epochs=3",
        "scheduler.name=none",
        "--prune",
        "median",
        "--fuse",
        "off",
    ]
    assert main([*args, "--name", "pruned"]) == 0
    sweep = tmp_path / "runs" / "pruned"
    rows = {r["optimizer.lr"]: r for r in read_csv(sweep / "results.csv")}
    metrics = json.loads((sweep / "lr-1e-9" / "metrics.json").read_text())
    assert metrics["pruned_epoch"] in (1, 2), "stopped before the last epoch"
    assert metrics["epochs_trained"] == metrics["pruned_epoch"], "a pruned run is tested and finished"
    assert rows["1e-9"]["status"] == "PRUNED" and rows["1e-9"]["epochs"] == str(metrics["pruned_epoch"])
    assert {rows[lr]["status"] for lr in ("0.01", "0.011", "0.012", "0.013", "0.014")} == {"COMPLETE"}
    trials = {t.params["optimizer.lr"]: t for t in trials_of(sweep, "pruned")}
    assert trials["1e-9"].state.name == "PRUNED"
    assert list(trials["1e-9"].intermediate_values) == list(range(1, metrics["pruned_epoch"] + 1))
    assert list(trials["0.01"].intermediate_values) == [1, 2, 3]


def wait_for(condition: Any, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the sweep ended early: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out: {process.communicate()}")
        time.sleep(0.05)


def test_a_sweep_killed_while_it_asks_for_a_fused_group_is_finished_by_the_same_command(
    small: list[str], tmp_path: Path
) -> None:
    marker = tmp_path / "killed"
    handler = f"handlers=[{{target: 'tests.sweep_plugins:KillOnce', kwargs: {{marker: '{marker}'}}}}]"
    args = [BASE, *small, handler, "optimizer.lr=0.01,0.02", "--name", "asking"]
    first = subprocess.run(sweep_command(*args), cwd=REPO, env=QUICK_HEARTBEAT, capture_output=True, text=True)
    assert first.returncode == -signal.SIGKILL and marker.exists()  # its first trial had values, no run yet
    sweep = tmp_path / "runs" / "asking"
    assert [(t.state.name, t.params) for t in trials_of(sweep, "asking")] == [("RUNNING", {"optimizer.lr": "0.01"})]

    again = subprocess.run(
        sweep_command(*args), cwd=REPO, env=QUICK_HEARTBEAT, capture_output=True, text=True, timeout=240
    )  # before, it waited for ever for the trial of the killed process, which had no heartbeat to go silent
    assert again.returncode == 0, again.stderr
    assert "Trial 0 sent no heartbeat for a while (its process is gone): it will be run again" in again.stderr
    assert [r["status"] for r in read_csv(sweep / "results.csv")] == ["COMPLETE", "COMPLETE"]


def test_a_killed_sweep_started_again_keeps_finished_trials_and_resumes_the_interrupted_one(
    small: list[str], tmp_path: Path
) -> None:
    trace = tmp_path / "trace.txt"
    handler = f"handlers=[{{target: 'tests.sweep_plugins:Trace', kwargs: {{path: '{trace}', seconds: 0.5}}}}]"
    args = [BASE, *small, handler, "optimizer.lr=0.01,0.02", "--name", "killed"]
    sweep = tmp_path / "runs" / "killed"
    first, second = sweep / "lr-0.01", sweep / "lr-0.02"
    process = start(*args, env=QUICK_HEARTBEAT)
    wait_for(
        lambda: (first / "metrics.json").exists() and (second / "checkpoints" / "checkpoint_1.pt").exists(), process
    )
    process.send_signal(signal.SIGKILL)
    process.communicate()
    finished = (first / "metrics.json").stat().st_mtime_ns, (first / "metrics.json").read_text()
    assert not (second / "metrics.json").exists()

    again = subprocess.run(sweep_command(*args), cwd=REPO, env=QUICK_HEARTBEAT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert re.search(r"Trial \d+ lr-0\.02: resuming from its last saved epoch", again.stderr)
    assert "Trial 1 sent no heartbeat for a while (its process is gone): it will be run again" in again.stderr
    assert ((first / "metrics.json").stat().st_mtime_ns, (first / "metrics.json").read_text()) == finished
    assert [r["epoch"] for r in json.loads((second / "history.json").read_text())] == [1, 2]
    assert Counter(line.split()[0] for line in trace.read_text().splitlines()) == {"lr-0.01": 1, "lr-0.02": 2}
    assert [r["status"] for r in read_csv(sweep / "results.csv")] == ["COMPLETE", "COMPLETE"]
    assert [t.state.name for t in trials_of(sweep, "killed")] == ["COMPLETE", "FAIL", "COMPLETE"]


def test_two_sweeps_on_one_storage_share_the_study_and_run_each_trial_once(small: list[str], tmp_path: Path) -> None:
    trace = tmp_path / "trace.txt"
    handler = f"handlers=[{{target: 'tests.sweep_plugins:Trace', kwargs: {{path: '{trace}', seconds: 0.3}}}}]"
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    args = [BASE, *small, handler, "optimizer.lr=0.01,0.02,0.03", "--name", "shared", "--storage", storage]
    processes = [start(*args, "--workers", "2"), start(*args)]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
        assert out.count("COMPLETE") == 3, "each process waits for the others and prints the whole table"
    names = ["lr-0.01", "lr-0.02", "lr-0.03"]
    assert Counter(line.split()[0] for line in trace.read_text().splitlines()) == dict.fromkeys(names, 1)
    # Which process trains which trial is up to the scheduler (on a busy machine one may take them all).
    trials = optuna.load_study(study_name="shared", storage=storage).get_trials()
    assert sorted(t.params["optimizer.lr"] for t in trials) == ["0.01", "0.02", "0.03"]
    assert {t.state.name for t in trials} == {"COMPLETE"}
    assert not (tmp_path / "runs" / "shared" / "study.db").exists()


def test_a_huge_grid_is_counted_not_built_and_refused_in_one_line(small: list[str], tmp_path: Path, cli: Any) -> None:
    ten = ",".join(str(i) for i in range(1, 11))
    keys = ["seed", "data.batch_size", "trainer.max_epochs", "model.kwargs.a", "model.kwargs.b"]
    keys += ["model.kwargs.c", "model.kwargs.d", "model.kwargs.e", "model.kwargs.f", "model.kwargs.g"]
    start = time.monotonic()
    code, _, err = cli("sweep", BASE, *small, *(f"{k}={ten}" for k in keys))
    assert time.monotonic() - start < 30
    assert code == 2
    assert (
        err == "error: the grid has 10,000,000,000 points (one trial each), more than 10,000: sweep fewer values, "
        "or sample them (key=choice(a,b,...) or interval(low,high) with --trials N)\n"
    )
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "storage",
    [
        "mysql://user:secret@localhost/db",
        "sqlite:////nonexistent/folder/x.db",
        "postgresql+psycopg://user:secret@127.0.0.1:1/db",  # no server there: its lock cannot be taken
    ],
)
def test_a_storage_that_cannot_be_opened_leaves_no_folder(
    small: list[str], tmp_path: Path, cli: Any, storage: str
) -> None:
    code, _, err = cli("sweep", BASE, *small, "seed=1,2", "--storage", storage)
    assert code == 1 and err.startswith("error: cannot open the study storage") and len(err.splitlines()) == 1
    assert "secret" not in err
    assert not (tmp_path / "runs").exists()
    (tmp_path / "runs" / "kept").mkdir(parents=True)
    (tmp_path / "runs" / "mine.txt").write_text("user file")
    assert cli("sweep", BASE, *small, "seed=1,2", "--storage", storage)[0] == 1
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["kept", "mine.txt"]


def machine(tmp_path: Path, small: list[str], name: str) -> list[str]:
    """The overrides of a machine of its own: its ``output_dir`` (no folder shared with another)."""
    return [*small, f"output_dir={tmp_path / name}"]


def test_two_machines_on_one_postgresql_study_split_the_trials_and_each_lists_them_all(
    small: list[str], tmp_path: Path, postgres: str
) -> None:
    # Each machine's first trial ends when both got there: they then ask for the last one at the same moment.
    trace, meet = tmp_path / "trace.txt", tmp_path / "meet"
    handlers = (
        f"handlers=[{{target: 'tests.sweep_plugins:Trace', kwargs: {{path: '{trace}'}}}}, "
        f"{{target: 'tests.sweep_plugins:Meet', kwargs: {{folder: '{meet}', parties: 2}}}}]"
    )
    sweep = ["optimizer.lr=0.01,0.02,0.03", "--name", "shared", "--storage", postgres]
    processes = [start(BASE, *machine(tmp_path, small, m), handlers, *sweep) for m in ("a", "b")]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
        assert out.count("COMPLETE") == 3, "each machine waits for the other's trials and prints the whole table"
    names = ["lr-0.01", "lr-0.02", "lr-0.03"]
    assert Counter(line.split()[0] for line in trace.read_text().splitlines()) == dict.fromkeys(names, 1)
    ran = {m: {n for n in names if (tmp_path / m / "shared" / n / "metrics.json").exists()} for m in ("a", "b")}
    assert ran["a"] | ran["b"] == set(names) and not ran["a"] & ran["b"], ran
    where = {n: str(tmp_path / m / "shared" / n) for m in ("a", "b") for n in ran[m]}
    for m in ("a", "b"):
        rows = read_csv(tmp_path / m / "shared" / "results.csv")
        assert {r["name"]: (r["status"], r["host"], r["run_dir"]) for r in rows} == {
            n: ("COMPLETE", socket.gethostname(), where[n]) for n in names
        }
        for row in rows:
            metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
            assert (float(row["best_value"]), float(row["test_accuracy"])) == (
                metrics["best_value"],
                metrics["test_accuracy"],
            )
    trials = optuna.load_study(study_name="shared", storage=postgres).get_trials()
    assert sorted(t.params["optimizer.lr"] for t in trials) == ["0.01", "0.02", "0.03"]
    assert {t.state.name for t in trials} == {"COMPLETE"}


def test_a_machine_killed_mid_trial_leaves_it_to_the_other_and_started_again_trains_nothing(
    small: list[str], tmp_path: Path, postgres: str
) -> None:
    trace = tmp_path / "trace.txt"
    handler = f"handlers=[{{target: 'tests.sweep_plugins:Trace', kwargs: {{path: '{trace}', seconds: 0.5}}}}]"
    sweep = ["optimizer.lr=0.01,0.02", "--name", "shared", "--storage", postgres]
    args = {m: [BASE, *machine(tmp_path, small, m), handler, *sweep] for m in ("a", "b")}
    first = start(*args["a"], env=QUICK_HEARTBEAT)
    wait_for(lambda: trace.exists(), first)
    killed = trace.read_text().split()[0]
    other = "lr-0.02" if killed == "lr-0.01" else "lr-0.01"
    second = start(*args["b"], env=QUICK_HEARTBEAT)
    wait_for(lambda: (tmp_path / "a" / "shared" / killed / "checkpoints" / "checkpoint_1.pt").exists(), first)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert "sent no heartbeat for a while (its process is gone): it will be run again" in err
    assert out.count("COMPLETE") == 2
    assert Counter(line.split()[0] for line in trace.read_text().splitlines()) == {killed: 2, other: 1}
    assert not (tmp_path / "a" / "shared" / killed / "metrics.json").exists()

    traced = trace.read_text()
    again = subprocess.run(sweep_command(*args["a"]), cwd=REPO, env=QUICK_HEARTBEAT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert trace.read_text() == traced, "nothing trained again"
    assert not re.search(r"Trial \d+ .*: (training|resuming)", again.stderr), again.stderr
    rows = {r["name"]: r for r in read_csv(tmp_path / "a" / "shared" / "results.csv")}
    assert {n: (r["status"], r["run_dir"]) for n, r in rows.items()} == {
        n: ("COMPLETE", str(tmp_path / "b" / "shared" / n)) for n in (killed, other)
    }
    assert f"{socket.gethostname()}:{tmp_path / 'b' / 'shared' / killed}" in again.stdout, "where each run is"
    trials = optuna.load_study(study_name="shared", storage=postgres).get_trials()
    assert sorted((t.params["optimizer.lr"], t.state.name) for t in trials) == sorted(
        [(killed[3:], "FAIL"), (killed[3:], "COMPLETE"), (other[3:], "COMPLETE")]
    )


def test_a_fused_sweep_gives_each_trial_the_results_and_files_of_the_same_sweep_unfused(
    small: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], cli: Any
) -> None:
    args = ["sweep", BASE, *small, "optimizer.lr=0.01,0.05", "optimizer.weight_decay=0,0.01"]
    assert main([*args, "--name", "fused"]) == 0
    err = capsys.readouterr().err
    assert "Trials 0, 1, 2, 3: fused, trained together as one model (4 trials)" in err
    assert main([*args, "--name", "alone", "--fuse", "off"]) == 0
    assert "trained together" not in capsys.readouterr().err
    fused, alone = tmp_path / "runs" / "fused", tmp_path / "runs" / "alone"
    rows = {r["name"]: r for r in read_csv(fused / "results.csv")}
    assert len(rows) == 4
    for row in read_csv(alone / "results.csv"):
        same = rows[row["name"]]
        assert (same["status"], same["epochs"]) == (row["status"], row["epochs"]) == ("COMPLETE", "2")
        assert float(same["best_value"]) == pytest.approx(float(row["best_value"]), abs=2e-3)
        assert float(same["test_accuracy"]) == pytest.approx(float(row["test_accuracy"]), abs=2e-3)
        ours, theirs = fused / row["name"], alone / row["name"]
        events = r"events\.out\.tfevents\..*"
        assert {re.sub(events, "", str(p.relative_to(ours))) for p in ours.rglob("*") if p.is_file()} == {
            re.sub(events, "", str(p.relative_to(theirs))) for p in theirs.rglob("*") if p.is_file()
        }
        history = [json.loads((run / "history.json").read_text()) for run in (ours, theirs)]
        for a, b in zip(*history, strict=True):
            assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)

    run = fused / "lr-0.05_weight_decay-0.01"
    code, out, err = cli("evaluate", str(run), "--json")
    assert code == 0, err
    assert json.loads(out)["accuracy"] == json.loads((run / "metrics.json").read_text())["test_accuracy"]
    from PIL import Image

    Image.new("L", (28, 28), 200).save(tmp_path / "grey.png")
    code, out, err = cli("predict", str(run), str(tmp_path / "grey.png"))
    assert code == 0 and out.startswith(f"{tmp_path / 'grey.png'}: "), err
    code, out, err = cli("export", str(run), "--format", "torchscript")
    assert (code, out) == (0, f"{run / 'model.ts'}\n"), err
    assert len(compare_runs([fused])["runs"]) == 4


def test_fuse_max_splits_the_trials_and_those_that_cannot_share_a_pass_train_alone(
    small: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], no_run_pictures: None
) -> None:
    args = ["sweep", BASE, *small, "optimizer.lr=0.01,0.02,0.03", "data.batch_size=16,32", "--fuse-max", "4"]
    assert main([*args, "--name", "split"]) == 0
    err = capsys.readouterr().err
    assert "Trials 0, 2: fused, trained together as one model (2 trials)" in err  # batch 16
    assert "Trials 1, 3: fused, trained together as one model (2 trials)" in err  # batch 32
    for number, name in ((4, "lr-0.03_batch_size-16"), (5, "lr-0.03_batch_size-32")):
        assert f"Trial {number} {name} is not fused: no other trial at hand shares its data pass" in err
    rows = read_csv(tmp_path / "runs" / "split" / "results.csv")
    assert [r["status"] for r in rows] == ["COMPLETE"] * 6


def test_a_killed_fused_sweep_started_again_trains_no_epoch_twice_and_ends_as_an_uninterrupted_one(
    small: list[str], tmp_path: Path
) -> None:
    trace = tmp_path / "trace.txt"
    handler = f"handlers=[{{target: 'tests.sweep_plugins:FusedTrace', kwargs: {{path: '{trace}', seconds: 0.3}}}}]"
    grid = [BASE, *small, "trainer.max_epochs=3", "optimizer.lr=0.01,0.02,0.03,0.04", "--fuse-max", "2"]
    sweep = tmp_path / "runs" / "killed"
    first, third = sweep / "lr-0.01", sweep / "lr-0.03"
    process = start(*grid, handler, "--name", "killed", env=QUICK_HEARTBEAT)
    wait_for(
        lambda: (first / "metrics.json").exists() and (third / "checkpoints" / "checkpoint_1.pt").exists(), process
    )
    process.send_signal(signal.SIGKILL)
    _, err = process.communicate()
    assert "Trials 0, 1: fused, trained together as one model (2 trials)" in err
    finished = (first / "metrics.json").stat().st_mtime_ns
    assert not (third / "metrics.json").exists()

    again = subprocess.run(
        sweep_command(*grid, handler, "--name", "killed"), cwd=REPO, env=QUICK_HEARTBEAT, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert re.search(r"Trial \d lr-0\.03: resuming from its last saved epoch", again.stderr)
    assert (first / "metrics.json").stat().st_mtime_ns == finished
    rows = {r["name"]: r for r in read_csv(sweep / "results.csv")}
    assert [r["status"] for r in rows.values()] == ["COMPLETE"] * 4
    for name in rows:
        assert [r["epoch"] for r in json.loads((sweep / name / "history.json").read_text())] == [1, 2, 3]
    started = Counter(line.split()[0] for line in trace.read_text().splitlines())
    assert started == {"lr-0.01": 1, "lr-0.02": 1, "lr-0.03": 2, "lr-0.04": 2}

    uninterrupted = subprocess.run(
        sweep_command(*grid, "--name", "whole"), cwd=REPO, env=ONE_THREAD, capture_output=True, text=True
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    for row in read_csv(tmp_path / "runs" / "whole" / "results.csv"):
        assert float(rows[row["name"]]["best_value"]) == float(row["best_value"])
        assert float(rows[row["name"]]["test_accuracy"]) == float(row["test_accuracy"])
