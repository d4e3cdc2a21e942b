"""The history: one record per epoch, in memory and in ``history.json`` / ``history.csv``."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from ignite.engine import Engine

from .fileio import atomic_write_json, atomic_write_text
from .rundir import RunDir


class History:
    """Keeps ``{epoch, train_loss, train_accuracy, val_loss, val_accuracy, ..., lr, seconds}`` for every epoch.

    Updated when an epoch completes, right after validation: every scalar in the trainer's
    ``state.metrics`` becomes a ``train_<name>`` column and every scalar in the evaluator's
    ``state.metrics`` a ``val_<name>`` column, so a metric a handler attaches to the evaluator
    (an Ignite ``Precision``, say) gets its own column, which ``monitor.metric`` may name.
    ``history.json`` and ``history.csv`` are rewritten atomically each epoch. The records are part
    of every checkpoint, so a resumed run continues the same list: no epoch lost or repeated.

    ``train_loss`` and ``train_accuracy`` are over the epoch's batches as the weights changed;
    ``seconds`` is the wall time of the epoch, training and validation together.

    Args:
        rundir: where to write the files.
        trainer: the training engine.
        evaluator: the validation engine.
        optimizer: whose first parameter group's learning rate is recorded.
        write: write the files (the records are kept in memory either way).
    """

    def __init__(
        self,
        rundir: RunDir,
        trainer: Engine,
        evaluator: Engine,
        optimizer: torch.optim.Optimizer,
        write: bool = True,
    ) -> None:
        self.rundir = rundir
        self.trainer = trainer
        self.evaluator = evaluator
        self.optimizer = optimizer
        self.write = write
        self.records: list[dict[str, Any]] = []
        self._started = time.perf_counter()

    def start_epoch(self) -> None:
        """Start the epoch's clock (the trainer calls this as each epoch starts)."""
        self._started = time.perf_counter()

    def complete_epoch(self) -> None:
        """Append the epoch's record and rewrite the files."""
        record: dict[str, Any] = {"epoch": self.trainer.state.epoch}
        for prefix, metrics in (("train_", self.trainer.state.metrics), ("val_", self.evaluator.state.metrics)):
            for name, value in metrics.items():
                scalar = _scalar(value)
                if scalar is not None:
                    record[name if name.startswith(prefix) else prefix + name] = scalar
        record["lr"] = float(self.optimizer.param_groups[0]["lr"])
        record["seconds"] = round(time.perf_counter() - self._started, 4)
        self.records.append(record)
        if self.write:
            self.save()

    def columns(self, declared: Iterable[str] = ()) -> list[str]:
        """The columns the records will have, known before the first epoch (``epoch`` and ``seconds`` aside).

        They come from the metrics attached to the engines (the training step's ``train_loss`` and
        ``train_accuracy``, Ignite metrics such as the evaluator's ``loss`` and ``accuracy``), ``lr``,
        and ``declared``: what handlers that write ``state.metrics`` themselves name in their
        ``history_columns``. A metric that turns out not to be a scalar gets no column.
        """
        names = ["train_loss", "train_accuracy"]
        for prefix, engine in (("train_", self.trainer), ("val_", self.evaluator)):
            names += [name if name.startswith(prefix) else prefix + name for name in attached_metrics(engine)]
        return list(dict.fromkeys([*names, "lr", *declared]))

    def save(self) -> None:
        """Write ``history.json`` and ``history.csv``."""
        # Rewritten every epoch and restored from the checkpoint on resume: no fsync needed.
        atomic_write_json(self.rundir.history_json, self.records, durable=False)
        columns = list(dict.fromkeys(k for r in self.records for k in r))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.records)
        atomic_write_text(self.rundir.history_csv, out.getvalue(), durable=False)

    def state_dict(self) -> dict[str, Any]:
        return {"records": [dict(r) for r in self.records]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.records = [dict(r) for r in state["records"]]
        if self.write:
            self.save()


def attached_metrics(engine: Engine) -> list[str]:
    """The names of the Ignite metrics attached to ``engine``, in the order they were attached.

    Ignite keeps no public list of them: each ``Metric.attach`` registers the metric's bound
    ``completed`` method with the metric's name as its argument (after the engine), which is what
    is read here.
    """
    from ignite.metrics import Metric

    return [
        name
        for handlers in engine._event_handlers.values()
        for handler, args, _ in handlers
        if isinstance(getattr(handler, "__self__", None), Metric) and handler.__name__ == "completed"
        for name in args
        if isinstance(name, str)
    ]


def _scalar(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    return None
