"""Early stopping on the run's monitored metric."""

from __future__ import annotations

import logging
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers import EarlyStopping as IgniteEarlyStopping

from ..config import EarlyStoppingConfig
from ..context import Context
from ..registry import HANDLERS

record = logging.getLogger("fmnist_ignite.run")  # the run's record (see Experiment)


class _AsDebug(logging.LoggerAdapter):
    """Ignite's own lines ("EarlyStopping: Stop training") at DEBUG: this handler says it in the run's words."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG, msg, *args, **kwargs)


@HANDLERS.register("early_stopping")
class EarlyStopping(IgniteEarlyStopping):
    """Ignite's early stopping on the metric the run monitors (``monitor.metric`` / ``monitor.mode``).

    Runs when a training epoch completes, after validation and the history record. Training stops
    once the monitored metric has not improved by more than ``min_delta`` for ``patience``
    epochs. Which epoch was best, and which weights are restored at the end, is the run's
    :class:`~fmnist_ignite.monitor.Monitor`'s business, not this handler's: it only decides when
    to stop. Its counter and best score are in :meth:`state_dict`, so a resumed run stops exactly
    where an uninterrupted one would. When training starts (or resumes, perhaps with a new
    ``patience`` or ``max_epochs``) it stops at once if the counter has already reached
    ``patience``: exactly what a run with these settings from the start would have done.

    The keyword arguments are the ``early_stopping`` section's keys, with its defaults
    (:class:`~fmnist_ignite.config.EarlyStoppingConfig`).

    Args:
        context: the experiment context.
        patience: epochs without improvement before stopping.
        min_delta: smallest change that counts as an improvement.
    """

    fusion_aware = True  # driven by its trainer's events alone: a fused sweep may train it (sweep.fused)

    def __init__(
        self,
        context: Context,
        patience: int = EarlyStoppingConfig.default("patience"),
        min_delta: float = EarlyStoppingConfig.default("min_delta"),
    ) -> None:
        monitor, history = context.monitor, context.history
        super().__init__(
            patience,
            score_function=lambda _: monitor.value(history.records[-1]),
            trainer=context.trainer,
            threshold=min_delta,
            mode=monitor.mode,
        )
        self.monitor = monitor
        self.logger = _AsDebug(logging.getLogger(__name__), {})  # type: ignore[assignment]

    def attach(self, engine: Engine, event: Any) -> None:  # type: ignore[override]
        # Not Ignite's attach: it resets the state when the engine starts, which a resumed run must keep.
        engine.add_event_handler(Events.STARTED, self._stop_if_out_of_patience)
        engine.add_event_handler(event, self)

    def _stop_if_out_of_patience(self) -> None:
        if self.counter >= self.patience:
            record.info(
                "Early stopping: %s has not improved for %d epochs (patience %d; best %.4f at epoch %d)",
                self.monitor.metric,
                self.counter,
                self.patience,
                self.monitor.best_value,
                self.monitor.best_epoch,
            )
            self.trainer.terminate()

    def __call__(self, engine: Engine) -> None:
        super().__call__(engine)
        if self.counter >= self.patience:  # it asked the trainer to stop (at once, or with the other processes)
            record.info(
                "Early stopping after epoch %d: %s has not improved for %d epochs (best %.4f at epoch %d)",
                self.trainer.state.epoch,
                self.monitor.metric,
                self.patience,
                self.monitor.best_value,
                self.monitor.best_epoch,
            )
