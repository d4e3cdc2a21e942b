"""Early stopping that remembers the best weights and can put them back."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

import torch
from ignite.engine import Engine
from ignite.handlers import EarlyStopping as IgniteEarlyStopping

from ..context import Context
from ..registry import HANDLERS

logger = logging.getLogger(__name__)

METRICS = {"val_accuracy": "accuracy", "val_loss": "loss"}


@HANDLERS.register("early_stopping")
class EarlyStopping(IgniteEarlyStopping):
    """Ignite's early stopping, plus the best epoch's weights (as Keras' ``restore_best_weights``).

    Runs when a training epoch completes, after validation. Training stops once ``metric`` has not
    improved by more than ``min_delta`` for ``patience`` epochs. Independently of ``min_delta``, it
    keeps a copy of the weights of the epoch with the best ``metric`` (the earliest on ties);
    :meth:`restore_best` loads them into the model, which the experiment does at the end when
    ``restore_best`` is true. The counter, the best score, the best epoch and its weights are all in
    :meth:`state_dict`, so a resumed run stops exactly where an uninterrupted one would.

    Args:
        context: the experiment context.
        patience: epochs without improvement before stopping.
        min_delta: smallest change that counts as an improvement.
        metric: ``val_accuracy`` or ``val_loss``.
        mode: ``max``, ``min`` or ``auto`` (max for accuracy, min for loss).
        restore_best: whether the experiment should load the best weights at the end.
    """

    def __init__(
        self,
        context: Context,
        patience: int = 3,
        min_delta: float = 0.0,
        metric: Literal["val_accuracy", "val_loss"] = "val_accuracy",
        mode: Literal["auto", "max", "min"] = "auto",
        restore_best: bool = True,
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got '{metric}'")
        key = METRICS[metric]
        resolved: Literal["max", "min"] = ("max" if metric == "val_accuracy" else "min") if mode == "auto" else mode
        evaluator = context.evaluator
        super().__init__(
            patience,
            score_function=lambda _: float(evaluator.state.metrics[key]),
            trainer=context.trainer,
            threshold=min_delta,
            mode=resolved,
        )
        self.model = context.model
        self.metric = metric
        self.restore_best_weights = restore_best
        self.best_value: float | None = None
        self.best_epoch = 0
        self.best_weights: dict[str, torch.Tensor] = {}

    def attach(self, engine: Engine, event: Any) -> None:  # type: ignore[override]
        engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        value = self.score_function(engine)
        if self.best_value is None or (value > self.best_value if self.mode == "max" else value < self.best_value):
            self.best_value = value
            self.best_epoch = self.trainer.state.epoch
            self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        super().__call__(engine)
        if self.trainer.should_terminate:
            logger.info(
                "Early stopping after epoch %d: %s has not improved for %d epochs (best %.4f at epoch %d)",
                self.trainer.state.epoch,
                self.metric,
                self.patience,
                self.best_value,
                self.best_epoch,
            )

    @property
    def stopped(self) -> bool:
        """Whether the patience ran out (training is over)."""
        return self.counter >= self.patience

    def restore_best(self) -> None:
        """Load the best epoch's weights into the model."""
        if self.best_weights:
            self.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {
            **super().state_dict(),
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "best_weights": self.best_weights,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_value = state_dict["best_value"]
        self.best_epoch = state_dict["best_epoch"]
        self.best_weights = dict(state_dict["best_weights"])
