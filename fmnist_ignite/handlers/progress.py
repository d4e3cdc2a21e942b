"""Console output: a progress bar during each epoch, then one summary line per epoch."""

from __future__ import annotations

import logging
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar

from ..context import Context
from ..registry import HANDLERS

logger = logging.getLogger("fmnist_ignite")


def _every_5_percent(engine: Engine, iteration: int) -> bool:
    # Each redraw costs about half a millisecond, more than a training step of this model.
    length = engine.state.epoch_length or 1
    return iteration % max(1, length // 20) == 0 or iteration % length == 0


@HANDLERS.register("progress")
class Progress:
    """Shows Ignite's progress bar while an epoch trains, then logs the epoch's figures.

    Runs when an epoch completes, after validation, and logs (at INFO, logger ``fmnist_ignite``)
    a line in the spirit of the original notebook::

        Epoch [3] train_loss 0.5213 val_loss 0.4700 val_acc 0.8420

    The bar reads no metric, so it adds no host synchronisation to the training step, and it is
    redrawn every 5 % of the epoch, not at every step.

    Args:
        context: the experiment context.
        bar: show the progress bar (the summary line is logged either way).
    """

    def __init__(self, context: Context, bar: bool = True) -> None:
        self.context = context
        self.bar = ProgressBar(persist=False, desc="train") if bar else None

    def attach(self, engine: Engine, event: Any) -> None:
        if self.bar is not None:
            self.bar.attach(engine, event_name=Events.ITERATION_COMPLETED(event_filter=_every_5_percent))
        engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        val = self.context.evaluator.state.metrics
        logger.info(
            "Epoch [%d] train_loss %.4f val_loss %.4f val_acc %.4f",
            engine.state.epoch,
            engine.state.metrics["train_loss"],
            val["loss"],
            val["accuracy"],
        )
