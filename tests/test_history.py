"""history.py: one record per epoch, written to history.json and history.csv, and restored from a state dict."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine

from fmnist_ignite import history as history_module
from fmnist_ignite.history import History
from fmnist_ignite.rundir import RunDir

from .helpers import make_rig


def engines() -> tuple[Engine, Engine, torch.optim.Optimizer]:
    trainer, evaluator = Engine(lambda e, b: None), Engine(lambda e, b: None)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.25)
    return trainer, evaluator, optimizer


def clock(monkeypatch: pytest.MonkeyPatch, *times: float) -> None:
    ticks = iter(times)
    monkeypatch.setattr(history_module, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))


def test_a_record_from_the_engines_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer, evaluator, optimizer = engines()
    clock(monkeypatch, 0.0, 10.0, 12.34567)
    history = History(RunDir(tmp_path / "run"), trainer, evaluator, optimizer)
    trainer.state.epoch = 3
    trainer.state.metrics = {"train_loss": 0.5, "train_accuracy": 0.75, "grad_norm": torch.tensor(2.0)}
    evaluator.state.metrics = {
        "loss": torch.tensor(0.25),
        "accuracy": 0.875,
        "precision": torch.tensor([0.1, 0.2]),  # not a scalar: no column
        "confusion": torch.eye(3),
        "flag": True,  # a bool is not a metric
        "val_f1": 0.5,  # already prefixed
        "note": "text",
    }
    history.start_epoch()
    history.complete_epoch()
    assert history.records == [
        {
            "epoch": 3,
            "train_loss": 0.5,
            "train_accuracy": 0.75,
            "train_grad_norm": 2.0,
            "val_loss": 0.25,
            "val_accuracy": 0.875,
            "val_f1": 0.5,
            "lr": 0.25,
            "seconds": 2.3457,
        }
    ]
    assert all(type(v) in (int, float) for v in history.records[0].values())


def test_files_are_written_each_epoch_and_read_back(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.run(2)
    history = rig.context.history
    rundir = rig.context.rundir
    assert [r["epoch"] for r in history.records] == [1, 2]
    assert list(history.records[0]) == [
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
        "seconds",
    ]
    assert json.loads(rundir.history_json.read_text()) == history.records
    with rundir.history_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [{k: float(v) for k, v in row.items()} for row in rows] == history.records
    assert rundir.history_csv.read_text().splitlines()[0] == (
        "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,seconds"
    )
    assert history.records[-1]["val_accuracy"] == rig.context.evaluator.state.metrics["accuracy"]
    assert history.records[-1]["train_loss"] == rig.context.trainer.state.metrics["train_loss"]
    assert sorted(p.name for p in rundir.path.iterdir()) == ["history.csv", "history.json"]  # no temporary file


def test_a_column_that_appears_later_gets_its_own_csv_column(tmp_path: Path) -> None:
    trainer, evaluator, optimizer = engines()
    rundir = RunDir(tmp_path / "run")
    history = History(rundir, trainer, evaluator, optimizer)
    trainer.state.epoch, trainer.state.metrics, evaluator.state.metrics = 1, {"train_loss": 1.0}, {"loss": 2.0}
    history.complete_epoch()
    trainer.state.epoch, evaluator.state.metrics = 2, {"loss": 1.5, "precision": 0.5}
    history.complete_epoch()
    with rundir.history_csv.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "train_loss", "val_loss", "lr", "seconds", "val_precision"]
    assert rows[1][-1] == "" and rows[2][-1] == "0.5"
    assert [r.get("val_precision") for r in json.loads(rundir.history_json.read_text())] == [None, 0.5]


def test_write_false_keeps_records_in_memory_only(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, write=False)
    rig.run(1)
    assert len(rig.context.history.records) == 1
    assert not rig.context.rundir.path.exists()
    rig.context.history.load_state_dict(rig.context.history.state_dict())
    assert not rig.context.rundir.path.exists()


def test_state_dict_round_trip_continues_the_same_list(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.run(2)
    saved = rig.context.history.state_dict()
    assert saved == {"records": rig.context.history.records}
    saved_copy = json.loads(json.dumps(saved))
    rig.context.history.records[0]["epoch"] = 99  # the state dict holds copies
    assert saved == saved_copy

    trainer, evaluator, optimizer = engines()
    rundir = RunDir(tmp_path / "resumed")
    restored = History(rundir, trainer, evaluator, optimizer)
    restored.load_state_dict(saved)
    assert restored.records == saved_copy["records"]
    assert json.loads(rundir.history_json.read_text()) == saved_copy["records"]  # files rewritten at once
    saved["records"][0]["epoch"] = -1
    assert restored.records[0]["epoch"] == 1  # and the restored list is its own

    trainer.state.epoch, trainer.state.metrics, evaluator.state.metrics = 3, {"train_loss": 0.1}, {"loss": 0.2}
    restored.complete_epoch()
    assert [r["epoch"] for r in restored.records] == [1, 2, 3]
    assert [r["epoch"] for r in json.loads(rundir.history_json.read_text())] == [1, 2, 3]


def test_lr_is_the_first_group_s_current_rate(tmp_path: Path) -> None:
    trainer, evaluator, optimizer = engines()
    history = History(RunDir(tmp_path), trainer, evaluator, optimizer, write=False)
    for epoch, lr in ((1, 0.25), (2, 0.125)):
        optimizer.param_groups[0]["lr"] = lr
        trainer.state.epoch = epoch
        history.complete_epoch()
    assert [r["lr"] for r in history.records] == [0.25, 0.125]
