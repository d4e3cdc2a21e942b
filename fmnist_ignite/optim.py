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
(``cosine``) is rebuilt over the new total, then given the saved state.
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
    try:
        scheduler = make(optimizer, config, epoch_length, **config.scheduler.kwargs)
    except FmnistIgniteError:
        raise
    except Exception as err:  # the schedule's own check of its arguments
        raise ConfigError(f"scheduler: {name} cannot be created: {type(err).__name__}: {first_line(err)}") from None
    if scheduler is None:
        return None
    if isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        scheduler = LRScheduler(scheduler)
    if not callable(scheduler) or not all(hasattr(scheduler, a) for a in ("state_dict", "load_state_dict")):
        raise ConfigError(
            f"scheduler.name: '{name}' returned {_kind(scheduler)}, which is not called with the trainer or has no "
            "state_dict/load_state_dict; return an Ignite parameter scheduler or a torch LRScheduler"
        )
    trainer.add_event_handler(Events.ITERATION_STARTED, scheduler)
    return scheduler


def _kind(obj: Any) -> str:
    """``the class Foo`` or ``a int``: what a plugin name turned out to be, for messages."""
    return f"the class {obj.__qualname__}" if inspect.isclass(obj) else f"a {type(obj).__name__}"
