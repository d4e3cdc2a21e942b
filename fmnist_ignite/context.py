"""The experiment context: everything a handler may need, in one object."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from ignite.engine import Engine

if TYPE_CHECKING:
    from .config import Config
    from .history import History
    from .monitor import Monitor
    from .rundir import RunDir


@dataclass
class Context:
    """What handlers receive: the engines, the model and its optimizer, the run's files, history and monitor.

    Attributes:
        config: the validated config of the run.
        rundir: the run directory's paths (created when the run starts, not before).
        device: the training device.
        model: the model being trained.
        optimizer: its optimizer.
        trainer: the Ignite engine that trains; ``trainer.state.metrics["train_loss"]`` after each epoch.
        evaluator: the Ignite engine that validates after every training epoch;
            ``evaluator.state.metrics`` holds ``accuracy`` and ``loss``.
        classes: the class names, indexed by label.
        prepare_batch: turns a loader's ``(uint8 images, labels)`` into model inputs on the device.
        history: the epoch records; ``history.records[-1]`` is the epoch that just completed.
        monitor: the one definition of the best epoch (``monitor.best_epoch``, ``monitor.improved``).
        state: every object whose ``state_dict()`` goes into a checkpoint, by name. A handler with
            ``state_dict``/``load_state_dict`` is added here when attached, and resumes with the rest.
    """

    config: Config
    rundir: RunDir
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    trainer: Engine
    evaluator: Engine
    classes: tuple[str, ...]
    prepare_batch: Callable[..., Any]
    history: History
    monitor: Monitor
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        """The run directory's path (``rundir.path``)."""
        return self.rundir.path
