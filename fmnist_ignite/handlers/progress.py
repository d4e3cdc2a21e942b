"""Console output: a progress bar during each epoch on a terminal, and one line per epoch."""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar

from ..context import Context
from ..registry import HANDLERS

record = logging.getLogger("fmnist_ignite.run")  # the run's record (see Experiment)


def _every_5_percent(engine: Engine, iteration: int) -> bool:
    # Each redraw costs about half a millisecond, more than a training step of this model.
    length = engine.state.epoch_length or 1
    return iteration % max(1, length // 20) == 0 or iteration % length == 0


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel, where Ignite's bar is tqdm's notebook widget."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def show_bar(bar: bool | Literal["auto"]) -> bool:
    """Whether to draw the bar: ``auto`` means on a terminal (stderr, where it is drawn) or in a Jupyter
    notebook, when the epoch lines are shown (not with ``--quiet``, nor from Python without logging set up)."""
    if bar != "auto":
        return bool(bar)
    return (sys.stderr.isatty() or in_notebook()) and record.isEnabledFor(logging.INFO)


@HANDLERS.register("progress")
class Progress:
    """Shows Ignite's progress bar while an epoch trains, then logs the epoch's figures.

    Runs when an epoch completes, after validation, and logs (at INFO, logger ``fmnist_ignite.run``)
    a line in the spirit of the original notebook::

        Epoch [3] train_loss 0.5213 val_loss 0.4700 val_acc 0.8420

    The bar (``Epoch [3/10]: [120/391] 31%|...`` on stderr) is only drawn on a terminal by
    default: redirected to a file or a pipe, the output is the epoch lines alone. It reads no
    metric, so it adds no host synchronisation to the training step, and it is redrawn every 5 %
    of the epoch, not at every step. It is cleared before the epoch's line is written; the
    command line writes any other line around it (``tqdm.write``), so none is glued into it.

    Args:
        context: the experiment context.
        bar: ``auto`` (a terminal, see :func:`show_bar`), ``True`` or ``False``; the epoch line is logged either way.
    """

    fusion_aware = True  # driven by its trainer's events alone: a fused sweep may train it (sweep.fused)

    def __init__(self, context: Context, bar: bool | Literal["auto"] = "auto") -> None:
        self.context = context
        self.bar = ProgressBar(persist=False) if show_bar(bar) else None

    def attach(self, engine: Engine, event: Any) -> None:
        if self.bar is not None:
            self.bar.attach(engine, event_name=Events.ITERATION_COMPLETED(event_filter=_every_5_percent))
        engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        val = self.context.evaluator.state.metrics
        record.info(
            "Epoch [%d] train_loss %.4f val_loss %.4f val_acc %.4f",
            engine.state.epoch,
            engine.state.metrics["train_loss"],
            val["loss"],
            val["accuracy"],
        )
