"""The history store: one record per epoch, in memory and on disk."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine, Events

from ..context import Context
from ..fileio import atomic_write_json, atomic_write_text
from ..registry import HANDLERS

FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")


@HANDLERS.register("history")
class History:
    """Keeps ``{epoch, train_loss, train_accuracy, val_loss, val_accuracy, lr, seconds}`` for every epoch.

    Runs when an epoch completes, after validation: appends the epoch's record to
    :attr:`records` and rewrites ``RUN_DIR/history.json`` and ``RUN_DIR/history.csv`` atomically,
    so that the files always hold whole records. Its records are part of every checkpoint, so a
    resumed run continues the same list: no epoch lost or repeated.

    ``train_loss`` and ``train_accuracy`` are over the epoch's batches as the weights changed;
    ``seconds`` is the wall time of the epoch, training and validation together.

    Args:
        context: the experiment context.
        write: write the files (the records are kept in memory either way).
    """

    def __init__(self, context: Context, write: bool = True) -> None:
        self.context = context
        self.write = write
        self.records: list[dict[str, Any]] = []
        self._started = time.perf_counter()

    def attach(self, engine: Engine, event: Any) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(event, self)

    def _start(self) -> None:
        self._started = time.perf_counter()

    def __call__(self, engine: Engine) -> None:
        val = self.context.evaluator.state.metrics
        self.records.append(
            {
                "epoch": engine.state.epoch,
                "train_loss": float(engine.state.metrics["train_loss"]),
                "train_accuracy": float(engine.state.metrics["train_accuracy"]),
                "val_loss": float(val["loss"]),
                "val_accuracy": float(val["accuracy"]),
                "lr": float(self.context.optimizer.param_groups[0]["lr"]),
                "seconds": round(time.perf_counter() - self._started, 4),
            }
        )
        if self.write:
            self.save()

    def save(self) -> None:
        """Write ``history.json`` and ``history.csv`` into the run directory."""
        # Rewritten every epoch and restored from the checkpoint on resume: no fsync needed.
        atomic_write_json(self.context.run_dir / "history.json", self.records, durable=False)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.records)
        atomic_write_text(self.context.run_dir / "history.csv", out.getvalue(), durable=False)

    def state_dict(self) -> dict[str, Any]:
        return {"records": [dict(r) for r in self.records]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.records = [dict(r) for r in state["records"]]
        if self.write:
            self.save()
