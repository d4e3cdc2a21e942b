"""Ignite engines: the trainer and the evaluator, and the pieces they share.

Nothing here synchronises with the host inside an epoch: batches are converted to float on the
device, the training step returns the loss as a tensor, and the epoch's train loss and the
non-finite-loss check accumulate on the device until the epoch ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events, create_supervised_evaluator, create_supervised_trainer
from ignite.metrics import Accuracy, Average, ConfusionMatrix, Loss

from .errors import ConfigError, TrainingError

logger = logging.getLogger(__name__)

PrepareBatch = Callable[[Any, Any, bool], tuple[torch.Tensor, torch.Tensor]]


def resolve_device(name: str) -> torch.device:
    """Turn ``device`` from the config into a torch device; refuse devices this machine lacks.

    Raises:
        ConfigError: CUDA or MPS asked for but not available, or a CUDA index out of range.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{name}': CUDA is not available on this machine; use device=cpu or device=auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device '{name}': this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"numbered from 0; use device=cuda:0"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device '{name}': MPS is not available on this machine; use device=cpu or device=auto")
    return device


def make_prepare_batch(mean: float, std: float, normalize: bool) -> PrepareBatch:
    """Batch conversion done on the device: uint8 pixels to float, scaled to [0, 1] or standardised."""
    scale = 1.0 / (255.0 * std) if normalize else 1.0 / 255.0
    shift = mean / std if normalize else 0.0

    def prepare_batch(batch: Any, device: Any = None, non_blocking: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        x = x.to(device=device, non_blocking=non_blocking)
        y = y.to(device=device, non_blocking=non_blocking)
        x = x.float().mul_(scale) if x.dtype == torch.uint8 else x.float()
        if shift:
            x = x.sub_(shift)
        return x, y

    return prepare_batch


def create_trainer(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    prepare_batch: PrepareBatch,
) -> Engine:
    """The training engine: one optimizer step per batch on cross-entropy.

    After each epoch ``trainer.state.metrics["train_loss"]`` holds the mean of the batch losses.
    A non-finite loss raises :class:`TrainingError` at the end of the epoch, naming the first
    iteration where it appeared, before any handler saves that epoch.
    """
    trainer = create_supervised_trainer(
        model,
        optimizer,
        F.cross_entropy,
        device=device,
        non_blocking=True,
        prepare_batch=prepare_batch,
        output_transform=lambda x, y, y_pred, loss: loss.detach(),
    )
    Average(device=device).attach(trainer, "train_loss")
    NonFiniteLossGuard(device).attach(trainer)
    return trainer


def create_evaluator(
    model: torch.nn.Module,
    device: torch.device,
    prepare_batch: PrepareBatch,
    num_classes: int | None = None,
) -> Engine:
    """An evaluation engine computing ``accuracy`` and ``loss`` (and ``confusion`` when ``num_classes`` is given)."""
    metrics: dict[str, Any] = {"accuracy": Accuracy(device=device), "loss": Loss(F.cross_entropy, device=device)}
    if num_classes is not None:
        metrics["confusion"] = ConfusionMatrix(num_classes, device=device)
    return create_supervised_evaluator(
        model, metrics=metrics, device=device, non_blocking=True, prepare_batch=prepare_batch
    )


class NonFiniteLossGuard:
    """Stops training at the end of an epoch in which the loss became NaN or infinite.

    Records the first bad iteration on the device (no host sync per step) and raises
    :class:`TrainingError` when the epoch completes, before validation and checkpointing, so the
    last good checkpoint stays the newest.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.first_bad = torch.tensor(-1, device=device)

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_STARTED, self.reset)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.check)

    def reset(self) -> None:
        self.first_bad = torch.tensor(-1, device=self.device)

    def update(self, engine: Engine) -> None:
        bad = ~torch.isfinite(engine.state.output)  # type: ignore[arg-type]
        self.first_bad = torch.where(bad & (self.first_bad < 0), engine.state.iteration, self.first_bad)

    def check(self, engine: Engine) -> None:
        first_bad = int(self.first_bad)
        if first_bad >= 0:
            epoch_length = engine.state.epoch_length or 1
            within = (first_bad - 1) % epoch_length + 1
            raise TrainingError(
                f"the training loss became NaN or infinite in epoch {engine.state.epoch} at iteration {within} "
                f"(global iteration {first_bad}); lower optimizer.lr and start a new run"
            )
