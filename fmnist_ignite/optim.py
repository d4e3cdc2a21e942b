"""Optimizers and learning-rate schedules: the built-ins, registered by name, and how any of them is made.

``optimizer.name`` and ``scheduler.name`` are resolved like every other plugin (see
:mod:`fmnist_ignite.registry`): a built-in short name, an installed plugin's name, or
``package.module:Name``. The built-ins go through exactly the same calls as a user's plugin.

An optimizer is either

- a :class:`torch.optim.Optimizer` subclass, called as
  ``cls(params, lr=optimizer.lr, weight_decay=optimizer.weight_decay, **optimizer.kwargs)``
  (``adam``, ``adamw``, or ``mypkg.opt:Lion``); or
- a function ``make(params, section) -> Optimizer`` that reads what it needs from the
  ``optimizer`` section (:class:`~fmnist_ignite.config.OptimizerConfig`), as ``sgd`` does for
  ``momentum`` and ``nesterov``.

A learning-rate schedule is a function
``make(optimizer, config, epoch_length, **scheduler.kwargs)`` that returns what the trainer
calls as each iteration starts, or ``None`` for no schedule (``none``). What it returns is an
Ignite parameter scheduler (anything called with the trainer that has ``state_dict`` and
``load_state_dict``), or a :class:`torch.optim.lr_scheduler.LRScheduler`, which is wrapped in
Ignite's :class:`~ignite.handlers.LRScheduler` and so stepped once per iteration (give its
periods in iterations: ``epoch_length`` is the number of iterations in an epoch). Its state goes
into every checkpoint, so a resumed run continues the schedule exactly. It is built from the
config of the run as it resumes: with a new ``trainer.max_epochs``, a schedule over the whole run
(``cosine``) is rebuilt over the new total, then given the saved state. So extending a *finished*
cosine run (``--resume RUN trainer.max_epochs=20``) does not restart the cosine at
``optimizer.lr``: the curve is stretched over the new total and continues from the same
iteration, so the rate jumps *up* from the run's final (near ``min_lr``) value to where the
longer curve is at that point, then anneals again to ``min_lr`` by the new last epoch.

A schedule that is decided by the validation result rather than the iteration (``plateau``)
also has a method ``epoch_completed(record)``: it is called once per epoch, after validation,
with the epoch's history record (``{"epoch", "val_accuracy", ...}``).

With ``scheduler.warmup_epochs: N`` any schedule is preceded by a linear warm-up (see
:class:`Warmup`): the schedule is then made for a run of ``trainer.max_epochs - N`` epochs and
starts when the warm-up ends.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import CosineAnnealingScheduler, LRScheduler

from .errors import ConfigError, FmnistIgniteError, first_line
from .registry import OPTIMIZERS, SCHEDULERS

if TYPE_CHECKING:
    from .config import Config, OptimizerConfig

OPTIMIZERS.register("adam")(torch.optim.Adam)
OPTIMIZERS.register("adamw")(torch.optim.AdamW)


@OPTIMIZERS.register("sgd")
def sgd(params: Iterable[Any], section: OptimizerConfig) -> torch.optim.SGD:
    """Torch's SGD with the section's ``momentum`` and ``nesterov`` (Nesterov only where momentum > 0)."""
    return torch.optim.SGD(
        params,
        lr=section.lr,
        momentum=section.momentum,
        nesterov=section.nesterov and section.momentum > 0,
        weight_decay=section.weight_decay,
        **section.kwargs,
    )


@SCHEDULERS.register("none")
def no_schedule(optimizer: torch.optim.Optimizer, config: Config, epoch_length: int) -> None:
    """The learning rate stays ``optimizer.lr``."""
    return None


@SCHEDULERS.register("cosine")
def cosine(optimizer: torch.optim.Optimizer, config: Config, epoch_length: int) -> CosineOverRun:
    """Cosine annealing from ``optimizer.lr`` to ``scheduler.min_lr`` over the whole run (``trainer.max_epochs``)."""
    total = max(2, epoch_length * config.trainer.max_epochs)
    return CosineOverRun(
        optimizer, "lr", start_value=config.optimizer.lr, end_value=config.scheduler.min_lr, cycle_size=total
    )


@SCHEDULERS.register("step")
def step(optimizer: torch.optim.Optimizer, config: Config, epoch_length: int) -> torch.optim.lr_scheduler.StepLR:
    """The rate multiplied by ``scheduler.gamma`` every ``scheduler.step_size`` epochs."""
    section = config.scheduler
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=section.step_size * epoch_length, gamma=section.gamma)


@SCHEDULERS.register("plateau")
def plateau(optimizer: torch.optim.Optimizer, config: Config, epoch_length: int) -> Plateau:
    """The rate times ``scheduler.gamma`` when the monitor has not improved for ``scheduler.patience`` epochs."""
    section = config.scheduler
    return Plateau(
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=config.monitor.direction,
            factor=section.gamma,
            patience=section.patience,
            threshold=0.0,
            threshold_mode="abs",
            min_lr=section.min_lr,
        ),
        config.monitor.metric,
    )


class Plateau:
    """Torch's :class:`~torch.optim.lr_scheduler.ReduceLROnPlateau` on the monitored metric, stepped once per epoch.

    Called with the trainer at every iteration (it changes nothing there); ``epoch_completed``
    gives it the epoch's value of ``metric`` after validation. Its state (the best value, the
    epochs without improvement) goes into the checkpoints.
    """

    def __init__(self, scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau, metric: str) -> None:
        self.scheduler = scheduler
        self.metric = metric

    def __call__(self, engine: Engine) -> None:
        """Nothing: the rate changes only when an epoch completes."""

    def epoch_completed(self, record: Mapping[str, Any]) -> None:
        """Step the schedule with the epoch's value of the monitored metric."""
        self.scheduler.step(float(record[self.metric]))

    def state_dict(self) -> dict[str, Any]:
        return dict(self.scheduler.state_dict())

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.scheduler.load_state_dict(dict(state_dict))


class Warmup:
    """A linear warm-up of ``iterations`` steps, then ``schedule`` (``None``: the rate stays ``lr``).

    At the ``i``-th iteration of the warm-up (from 1) the rate is ``lr * i / iterations``, so the
    last one trains at ``lr``; the schedule is called from the next iteration on, as if the run
    started there. ``epoch_completed`` reaches the schedule only once the warm-up is over.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, lr: float, iterations: int, schedule: Any) -> None:
        self.optimizer = optimizer
        self.lr = lr
        self.iterations = iterations
        self.schedule = schedule
        self.done = 0  # warm-up iterations started

    def __call__(self, engine: Engine) -> None:
        if self.done < self.iterations:
            self.done += 1
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr * self.done / self.iterations
        elif self.schedule is not None:
            self.schedule(engine)

    def epoch_completed(self, record: Mapping[str, Any]) -> None:
        step = getattr(self.schedule, "epoch_completed", None)
        if self.done >= self.iterations and step is not None:
            step(record)

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done, "schedule": self.schedule.state_dict() if self.schedule is not None else None}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.done = int(state_dict["done"])
        if self.schedule is not None:
            self.schedule.load_state_dict(state_dict["schedule"])


class CosineOverRun(CosineAnnealingScheduler):
    """Ignite's cosine annealing over the whole run, whose checkpoint restores its position, not its length.

    The length comes from the config (``trainer.max_epochs`` iterations of an epoch): a resume
    that raises ``max_epochs`` rebuilds the curve over the new total instead of starting a second
    cycle at ``optimizer.lr``.
    """

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        length = self.cycle_size, self.total_cycle_size
        super().load_state_dict(state_dict)
        self.cycle_size, self.total_cycle_size = length


def make_optimizer(section: OptimizerConfig, params: Iterable[Any]) -> torch.optim.Optimizer:
    """The optimizer ``section.name`` names, over ``params`` (see the module's text for the two forms).

    Raises:
        ConfigError: the name is unknown, is neither form, or its optimizer cannot be created
            (an unknown keyword in ``optimizer.kwargs``, a value it refuses).
    """
    name = section.name
    try:
        target = OPTIMIZERS.get(name)
    except ConfigError as err:
        raise ConfigError(f"optimizer.name: {err}") from None
    if inspect.isclass(target) and issubclass(target, torch.optim.Optimizer):
        kwargs = {"lr": section.lr, "weight_decay": section.weight_decay, **section.kwargs}

        def make() -> Any:
            return target(params, **kwargs)
    elif callable(target) and not inspect.isclass(target):

        def make() -> Any:
            return target(params, section)
    else:
        raise ConfigError(
            f"optimizer.name: '{name}' is {_kind(target)}, not a torch.optim.Optimizer subclass or a function "
            "make(params, section)"
        )
    try:
        optimizer = make()
    except FmnistIgniteError:  # already says what is wrong and what to do
        raise
    except Exception as err:  # the optimizer's own check of its arguments
        raise ConfigError(f"optimizer: {name} cannot be created: {type(err).__name__}: {first_line(err)}") from None
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"optimizer.name: '{name}' returned {_kind(optimizer)}, not a torch.optim.Optimizer")
    return optimizer


def attach_scheduler(config: Config, optimizer: torch.optim.Optimizer, trainer: Engine, epoch_length: int) -> Any:
    """Make the schedule ``config.scheduler.name`` names and attach it to every iteration's start.

    Returns:
        the scheduler, whose state the checkpoints keep; ``None`` without a schedule.

    Raises:
        ConfigError: the name is unknown, the schedule cannot be made, or what it makes cannot be
            called with the trainer or lacks ``state_dict``/``load_state_dict`` (a resumed run
            could not continue it exactly).
    """
    name = config.scheduler.name
    try:
        make = SCHEDULERS.get(name)
    except ConfigError as err:
        raise ConfigError(f"scheduler.name: {err}") from None
    if not callable(make):
        raise ConfigError(f"scheduler.name: '{name}' is {_kind(make)}, not a function")
    warmup = config.scheduler.warmup_epochs
    if warmup:  # the schedule runs over the epochs after the warm-up
        rest = config.trainer.model_copy(update={"max_epochs": max(1, config.trainer.max_epochs - warmup)})
        config = config.model_copy(update={"trainer": rest})
    try:
        scheduler = make(optimizer, config, epoch_length, **config.scheduler.kwargs)
    except FmnistIgniteError:
        raise
    except Exception as err:  # the schedule's own check of its arguments
        raise ConfigError(f"scheduler: {name} cannot be created: {type(err).__name__}: {first_line(err)}") from None
    if isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        scheduler = LRScheduler(scheduler)
    if scheduler is not None and (
        not callable(scheduler) or not all(hasattr(scheduler, a) for a in ("state_dict", "load_state_dict"))
    ):
        raise ConfigError(
            f"scheduler.name: '{name}' returned {_kind(scheduler)}, which is not called with the trainer or has no "
            "state_dict/load_state_dict; return an Ignite parameter scheduler or a torch LRScheduler"
        )
    if warmup:
        scheduler = Warmup(optimizer, config.optimizer.lr, warmup * epoch_length, scheduler)
    if scheduler is None:
        return None
    trainer.add_event_handler(Events.ITERATION_STARTED, scheduler)
    return scheduler


def step_after_validation(scheduler: Any, record: Mapping[str, Any]) -> None:
    """Give a schedule decided per epoch (``plateau``) the epoch's history record; others ignore it."""
    step = getattr(scheduler, "epoch_completed", None)
    if step is not None:
        step(record)


def _kind(obj: Any) -> str:
    """``the class Foo`` or ``a int``: what a plugin name turned out to be, for messages."""
    return f"the class {obj.__qualname__}" if inspect.isclass(obj) else f"a {type(obj).__name__}"
