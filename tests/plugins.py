"""Handlers that the tests name from YAML by dotted path (``tests.plugins:Name``)."""

from __future__ import annotations

import json
from typing import Any

import torch
from ignite.engine import Engine

from fmnist_ignite import Context


class RecordMetrics:
    """Appends the epoch and the validation metrics to ``RUN_DIR/<filename>`` each time it fires."""

    def __init__(self, context: Context, filename: str = "recorded.jsonl") -> None:
        self.context = context
        self.path = context.run_dir / filename

    def __call__(self, engine: Engine) -> None:
        row = {"epoch": engine.state.epoch, **{k: float(v) for k, v in self.context.evaluator.state.metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def log_epoch(context: Context, tag: str = "") -> None:
    """A plain function handler: called with the context and its kwargs at each event."""
    with (context.run_dir / "function_calls.txt").open("a") as f:
        f.write(f"{tag}{context.trainer.state.epoch}\n")


class CountingState:
    """A stateful handler: its count must survive a resume."""

    def __init__(self, context: Context) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = state["count"]


class StopAfter:
    """Simulates an interruption: attached to EPOCH_STARTED, raises KeyboardInterrupt once ``epoch`` is done."""

    def __init__(self, context: Context, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch == self.epoch + 1:
            raise KeyboardInterrupt


class StopOnce:
    """Like an interruption that happens once: raises KeyboardInterrupt when epoch ``epoch`` + 1 starts,
    unless ``RUN_DIR/stopped`` exists (so the resumed run goes on)."""

    def __init__(self, context: Context, epoch: int) -> None:
        self.epoch = epoch
        self.marker = context.run_dir / "stopped"

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch == self.epoch + 1 and not self.marker.exists():
            self.marker.touch()
            raise KeyboardInterrupt


class Sabotage:
    """From epoch ``start`` on, scrambles the weights so validation accuracy collapses."""

    def __init__(self, context: Context, start: int) -> None:
        self.context = context
        self.start = start

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch >= self.start:
            with torch.no_grad():
                for p in self.context.model.parameters():
                    p.copy_(torch.randn_like(p) * 10)


class Exploding:
    """Raises a user error at epoch ``epoch``."""

    def __init__(self, context: Context, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch == self.epoch:
            raise RuntimeError("boom from a user handler")


NOT_CALLABLE = 42
