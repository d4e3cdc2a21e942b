"""Early stopping on the run's monitored metric."""

from __future__ import annotations

import logging
from typing import Any

from ignite.engine import Engine
from ignite.handlers import EarlyStopping as IgniteEarlyStopping

from ..context import Context
from ..registry import HANDLERS

logger = logging.getLogger(__name__)


@HANDLERS.register("early_stopping")
class EarlyStopping(IgniteEarlyStopping):
    """Ignite's early stopping on the metric the run monitors (``monitor.metric`` / ``monitor.mode``).

    Runs when a training epoch completes, after validation and the history record. Training stops
    once the monitored metric has not improved by more than ``min_delta`` for ``patience``
    epochs. Which epoch was best, and which weights are restored at the end, is the run's
    :class:`~fmnist_ignite.monitor.Monitor`'s business, not this handler's: it only decides when
    to stop. Its counter and best score are in :meth:`state_dict`, so a resumed run stops exactly
    where an uninterrupted one would.

    Args:
        context: the experiment context.
        patience: epochs without improvement before stopping.
        min_delta: smallest change that counts as an improvement.
    """

    def __init__(self, context: Context, patience: int = 3, min_delta: float = 0.0) -> None:
        monitor, history = context.monitor, context.history
        super().__init__(
            patience,
            score_function=lambda _: monitor.value(history.records[-1]),
            trainer=context.trainer,
            threshold=min_delta,
            mode=monitor.mode,
        )
        self.monitor = monitor

    def attach(self, engine: Engine, event: Any) -> None:  # type: ignore[override]
        # Not Ignite's attach: it resets the state when the engine starts, which a resumed run must keep.
        engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        super().__call__(engine)
        if self.trainer.should_terminate:
            logger.info(
                "Early stopping after epoch %d: %s has not improved for %d epochs (best %.4f at epoch %d)",
                self.trainer.state.epoch,
                self.monitor.metric,
                self.patience,
                self.monitor.best_value,
                self.monitor.best_epoch,
            )
