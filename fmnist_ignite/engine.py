"""Ignite engines: the trainer and the evaluator, and the pieces they share.

Nothing here synchronises with the host inside an epoch: batches are converted to float on the
device, the training step returns the loss as a tensor, and the epoch's losses stay on the
device until the epoch ends.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, cast

import ignite.distributed as idist
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events, create_supervised_evaluator
from ignite.metrics import Accuracy, ConfusionMatrix, Loss

from .errors import ConfigError, TrainingError, first_line
from .events import RunEvents

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


def compile_for_training(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """``torch.compile`` the model for the training step on CUDA; elsewhere, or where that fails, return it unchanged.

    On CUDA the compiled step uses CUDA graphs (``mode="reduce-overhead"``), which removes most
    of the per-step launch cost of a model this small. On a CPU, compiling this model costs
    about 20 s and makes its epochs slower, so training runs eagerly (with a log line saying so).
    The compiled module shares its parameters with ``model``; checkpoints keep using ``model``, so
    their keys do not change. Compilation is tried on ``example`` (one input batch) at once, so a
    machine where it cannot work (no compiler, an unsupported backend) falls back to eager
    execution with a warning, not an error in the middle of training.
    """
    if example.device.type != "cuda":
        logger.info("trainer.compile: compiling pays off on CUDA only; training on %s runs eagerly", example.device)
        return model
    try:
        compiled = torch.compile(model, mode="reduce-overhead")
        with torch.no_grad():
            compiled(example)
    except Exception as err:  # backends fail in many ways; eager execution always works
        logger.warning("trainer.compile: torch.compile failed here (%s); training runs eagerly", first_line(err))
        return model
    return cast(torch.nn.Module, compiled)


def pixel_scaling(mean: float, std: float, normalize: bool) -> tuple[float, float]:
    """``(scale, shift)`` such that ``pixels * scale - shift`` is the model's input for pixels 0-255.

    Standardised with the data set's ``mean`` and ``std`` (given on the [0, 1] scale) when
    ``normalize``, else scaled to [0, 1]. Training and exported models share this one formula.
    """
    if normalize:
        return 1.0 / (255.0 * std), mean / std
    return 1.0 / 255.0, 0.0


def make_prepare_batch(mean: float, std: float, normalize: bool) -> PrepareBatch:
    """Batch conversion done on the device: uint8 pixels to float, scaled to [0, 1] or standardised."""
    scale, shift = pixel_scaling(mean, std, normalize)

    def prepare_batch(batch: Any, device: Any = None, non_blocking: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        x = x.to(device=device, non_blocking=non_blocking)
        y = y.to(device=device, non_blocking=non_blocking)
        # uint8 times a float is float: converted and scaled in one pass into a new tensor (float pixels 0-255
        # too), so the caller's batch is never changed by the subtraction below.
        x = torch.mul(x if x.dtype == torch.uint8 else x.float(), scale)
        if shift:
            x = x.sub_(shift)
        return x, y

    return prepare_batch


def create_trainer(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    prepare_batch: PrepareBatch,
    batch_share: Callable[[Engine, int], float] | None = None,
    grad_clip_norm: float | None = None,
) -> Engine:
    """The training engine: one optimizer step per batch on cross-entropy.

    A plain Ignite :class:`~ignite.engine.Engine` whose step does only the step: the model is put
    in training mode once per epoch, not once per batch, and nothing leaves the device. The step's
    output (``trainer.state.output``) is the batch loss, a tensor on the device. After each epoch
    ``trainer.state.metrics`` holds ``train_loss`` (the mean of the batch losses) and
    ``train_accuracy`` (see :class:`EpochLoss`).

    In a data-parallel run, ``batch_share(engine, n)`` is the share of the whole batch that this
    process's ``n`` images are: the loss is weighted so that the gradients that
    ``DistributedDataParallel`` averages across the ``P`` processes add up to the whole batch's
    mean, even when its last batch does not split evenly (``P * share`` is 1 when it does, and the
    loss is left as it is).

    With ``grad_clip_norm``, the gradients' total 2-norm (over all parameters) is clipped to at
    most that value before each optimizer step. In a data-parallel run the clipping comes after
    ``DistributedDataParallel`` has averaged the gradients, so every process clips the same
    whole-batch gradient the same way, and the run stays the one-process run's.
    """
    step = TrainStep(model, optimizer, device, prepare_batch, EpochLoss(device), batch_share, grad_clip_norm)
    trainer = Engine(step)
    trainer.register_events(*RunEvents)
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda: model.train())
    step.stats.attach(trainer)
    return trainer


class TrainStep:
    """The trainer's process function: one optimizer step on a batch (see :func:`create_trainer`).

    An object rather than a closure so that a fused sweep (:mod:`fmnist_ignite.sweep.fused`) can read what
    the step of each of its trials is made of (model, optimizer, epoch totals, clipping) and take its place.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        prepare_batch: PrepareBatch,
        stats: EpochLoss,
        batch_share: Callable[[Engine, int], float] | None = None,
        grad_clip_norm: float | None = None,
    ) -> None:
        self.model, self.optimizer, self.device, self.prepare_batch = model, optimizer, device, prepare_batch
        self.stats, self.batch_share, self.grad_clip_norm = stats, batch_share, grad_clip_norm
        self.parameters = [p for p in model.parameters() if p.requires_grad]

    def __call__(self, engine: Engine, batch: Any) -> torch.Tensor:
        x, y = self.prepare_batch(batch, self.device, True)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        part, step_loss = loss, loss
        if self.batch_share is not None:  # a data-parallel run
            share = self.batch_share(engine, len(y))
            part = loss * share  # this process's part of the whole batch's mean loss
            scale = share * idist.get_world_size()
            if abs(scale - 1.0) > 1e-12:  # an uneven last batch
                step_loss = loss * scale
        self.optimizer.zero_grad()
        step_loss.backward()
        self.update()
        self.stats.record(part.detach(), logits.detach().argmax(1).eq_(y).sum(), len(y))
        return loss.detach()

    def update(self) -> None:
        """Clip the gradients (with ``grad_clip_norm``) and take the optimizer's step."""
        if self.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip_norm)
        self.optimizer.step()


def train_step_of(trainer: Engine) -> TrainStep | None:
    """The :class:`TrainStep` a trainer made by :func:`create_trainer` runs (``None`` for any other engine)."""
    step = trainer._process_function
    return step if isinstance(step, TrainStep) else None


def create_evaluator(
    model: torch.nn.Module,
    device: torch.device,
    prepare_batch: PrepareBatch,
    num_classes: int | None = None,
) -> Engine:
    """An evaluation engine computing ``accuracy`` and ``loss`` (and ``confusion`` when ``num_classes`` is given)."""
    metrics: dict[str, Any] = {"loss": Loss(F.cross_entropy, device=device), "accuracy": Accuracy(device=device)}
    if num_classes is not None:
        metrics["confusion"] = ConfusionMatrix(num_classes, device=device)
    return create_supervised_evaluator(
        model, metrics=metrics, device=device, non_blocking=True, prepare_batch=prepare_batch
    )


class EpochLoss:
    """The epoch's train loss and accuracy, and a stop when the loss becomes NaN or infinite.

    The training step records each batch's loss (in a data-parallel run, its share of the whole
    batch's mean loss, summed across the processes here) and count of correct predictions, as tensors
    left on the device: no host synchronisation and no per-step event handler. When the epoch
    completes, before validation or any handler, ``trainer.state.metrics`` gets ``train_loss``
    (the mean batch loss) and ``train_accuracy``, over every process of a data-parallel run; if a
    loss is not finite (in any process),
    :class:`TrainingError` names the epoch and the first bad iteration, so nothing of that epoch
    is saved and the last good checkpoint stays the newest.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.losses: list[torch.Tensor] = []
        self.correct: list[torch.Tensor] = []
        self.samples = 0

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_STARTED, self.reset)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.complete)

    def reset(self) -> None:
        self.losses, self.correct, self.samples = [], [], 0

    def record(self, loss: torch.Tensor, correct: torch.Tensor, size: int) -> None:
        """Keep one step's loss and correct count, as tensors on the device (called by the training step)."""
        self.losses.append(loss)
        self.correct.append(correct)
        self.samples += size

    def record_steps(self, losses: torch.Tensor, correct: torch.Tensor, samples: int) -> None:
        """Keep several steps' losses and correct counts at once (``(steps,)`` tensors; ``samples`` in all)."""
        self.losses.extend(losses.unbind())
        self.correct.extend(correct.unbind())
        self.samples += samples

    def complete(self, engine: Engine) -> None:
        losses = torch.stack(self.losses) if self.losses else torch.empty(0, device=self.device)
        correct = torch.stack(self.correct) if self.correct else torch.empty(0, dtype=torch.long, device=self.device)
        totals = torch.stack(
            [
                losses.double().sum(),
                correct.double().sum(),
                torch.tensor(float(self.samples), dtype=torch.float64, device=losses.device),
            ]
        )
        if idist.get_world_size() > 1:
            totals = cast(torch.Tensor, idist.all_reduce(totals))  # every process then decides the same
        loss_sum, right, samples = totals.tolist()
        batches = float(len(losses))  # as many in every process
        if not math.isfinite(loss_sum):
            finite = torch.isfinite(losses)
            if bool(finite.all()):  # another process saw it first
                where = ""
            else:
                within = int((~finite).nonzero()[0]) + 1
                first = (engine.state.epoch - 1) * (engine.state.epoch_length or 0) + within
                where = f" at iteration {within} (global iteration {first})"
            raise TrainingError(
                f"the training loss became NaN or infinite in epoch {engine.state.epoch}{where}; "
                "lower optimizer.lr and start a new run"
            )
        engine.state.metrics["train_loss"] = loss_sum / max(1.0, batches)
        engine.state.metrics["train_accuracy"] = right / max(1.0, samples)
