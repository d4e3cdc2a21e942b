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


@dataclass
class Context:
    """What handlers receive: the engines, the model and its optimizer, where to write, the config.

    Attributes:
        config: the validated config of the run.
        run_dir: the run directory (created when the run starts, not before).
        device: the training device.
        model: the model being trained.
        optimizer: its optimizer.
        trainer: the Ignite engine that trains; ``trainer.state.metrics["train_loss"]`` after each epoch.
        evaluator: the Ignite engine that validates after every training epoch;
            ``evaluator.state.metrics`` holds ``accuracy`` and ``loss``.
        classes: the class names, indexed by label.
        prepare_batch: turns a loader's ``(uint8 images, labels)`` into model inputs on the device.
        state: every object whose ``state_dict()`` goes into a checkpoint, by name. A handler with
            ``state_dict``/``load_state_dict`` is added here when attached, and resumes with the rest.
    """

    config: Config
    run_dir: Path
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    trainer: Engine
    evaluator: Engine
    classes: tuple[str, ...]
    prepare_batch: Callable[..., Any]
    state: dict[str, Any] = field(default_factory=dict)
