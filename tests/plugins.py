"""Handlers, an optimizer and schedules that the tests name from YAML by dotted path (``tests.plugins:Name``)."""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import signal as signal_module
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import PiecewiseLinear

from fmnist_ignite import Config, Context


class RecordMetrics:
    """Appends the epoch and the validation metrics to ``RUN_DIR/<filename>`` each time it fires."""

    def __init__(self, context: Context, filename: str = "recorded.jsonl") -> None:
        self.context = context
        self.path = context.run_dir / filename

    def __call__(self, engine: Engine) -> None:
        row = {"epoch": engine.state.epoch, **{k: float(v) for k, v in self.context.evaluator.state.metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def log_epoch(context: Context, tag: str = "") -> None:
    """A plain function handler: called with the context and its kwargs at each event."""
    with (context.run_dir / "function_calls.txt").open("a") as f:
        f.write(f"{tag}{context.trainer.state.epoch}\n")


def record_gc(context: Context) -> None:
    """Appends whether the garbage collector is on, and how many objects it leaves out, to ``RUN_DIR/gc.txt``."""
    with (context.run_dir / "gc.txt").open("a") as f:
        f.write(f"{gc.isenabled()} {gc.get_freeze_count()}\n")


class CountingState:
    """A stateful handler: its count must survive a resume."""

    def __init__(self, context: Context) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = state["count"]


class StopAfter:
    """Simulates an interruption: attached to EPOCH_STARTED, raises KeyboardInterrupt once ``epoch`` is done."""

    def __init__(self, context: Context, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch == self.epoch + 1:
            raise KeyboardInterrupt


class StopOnce:
    """Like an interruption that happens once: raises KeyboardInterrupt when epoch ``epoch`` + 1 starts,
    unless ``RUN_DIR/stopped`` exists (so the resumed run goes on)."""

    def __init__(self, context: Context, epoch: int) -> None:
        self.epoch = epoch
        self.marker = context.run_dir / "stopped"

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch == self.epoch + 1 and not self.marker.exists():
            self.marker.touch()
            raise KeyboardInterrupt


class Sabotage:
    """From epoch ``start`` on, scrambles the weights so validation accuracy collapses."""

    def __init__(self, context: Context, start: int) -> None:
        self.context = context
        self.start = start

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch >= self.start:
            with torch.no_grad():
                for p in self.context.model.parameters():
                    p.copy_(torch.randn_like(p) * 10)


class Exploding:
    """Raises a user error at epoch ``epoch``."""

    def __init__(self, context: Context, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch == self.epoch:
            raise RuntimeError("boom from a user handler")


NOT_CALLABLE = 42


def freeze(marker: Path) -> None:
    """Tell the test where we are, then wait to be killed."""
    marker.touch()
    time.sleep(600)


class Stall:
    """Fault injection: the first time (until ``marker`` exists), freeze in epoch ``epoch`` at ``where``.

    ``train``: after the 3rd training iteration; ``validation``: after the 1st validation batch;
    ``checkpoint``: halfway through writing the checkpoint; ``history``: halfway through writing
    history.json. The test then kills the process with SIGKILL. With ``rank``, only that process of a
    data-parallel run freezes (the others go on to wait for it).
    """

    def __init__(self, context: Context, where: str, epoch: int, marker: str, rank: int | None = None) -> None:
        import ignite.distributed as idist

        self.context = context
        self.frozen_here = rank is None or idist.get_rank() == rank
        self.where = where
        self.epoch = epoch
        self.marker = Path(marker)
        if where == "checkpoint":
            real_save = torch.save

            def stalling_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
                if self._due() and hasattr(f, "write"):
                    buffer = io.BytesIO()
                    real_save(obj, buffer)
                    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                    f.flush()
                    freeze(self.marker)
                real_save(obj, f, *args, **kwargs)

            torch.save = stalling_save
        if where == "history":
            from fmnist_ignite import history

            real_write = history.atomic_write_json

            def stalling_write(path: Path, data: Any, **kwargs: Any) -> None:
                if self._due() and path.name == "history.json":
                    text = json.dumps(data)
                    (path.parent / f".{path.name}.stalled.tmp").write_text(text[: len(text) // 2])
                    freeze(self.marker)
                real_write(path, data, **kwargs)

            history.atomic_write_json = stalling_write

    def _due(self) -> bool:
        return self.frozen_here and self.context.trainer.state.epoch == self.epoch and not self.marker.exists()

    def attach(self, engine: Engine, event: Any) -> None:
        if self.where == "train":
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._maybe_freeze_in_training)
        if self.where == "validation":
            self.context.evaluator.add_event_handler(Events.ITERATION_COMPLETED, self._maybe_freeze)

    def _maybe_freeze_in_training(self, engine: Engine) -> None:
        if (engine.state.iteration - 1) % engine.state.epoch_length + 1 == 3:
            self._maybe_freeze()

    def _maybe_freeze(self) -> None:
        if self._due():
            freeze(self.marker)


class SignalSelf:
    """Sends ``signal`` to its own process ``times`` times, at iterations 3, 4, ... of epoch ``epoch``.

    Only once per run directory, so that the resumed run goes on.
    """

    def __init__(self, context: Context, signal: str, epoch: int, times: int = 1) -> None:
        self.context = context
        self.signum = getattr(signal_module, signal)
        self.epoch = epoch
        self.times = times
        self.marker = context.run_dir / "signalled"

    def __call__(self, engine: Engine) -> None:
        within = (engine.state.iteration - 1) % engine.state.epoch_length + 1
        if engine.state.epoch == self.epoch and 3 <= within < 3 + self.times and not self.marker.exists():
            if within == 2 + self.times:
                self.marker.touch()
            os.kill(os.getpid(), self.signum)


class Slow:
    """From epoch ``epoch`` on, sleeps ``seconds`` per iteration, and says so in ``marker``."""

    def __init__(self, context: Context, epoch: int, marker: str, seconds: float = 0.05) -> None:
        self.epoch = epoch
        self.marker = Path(marker)
        self.seconds = seconds

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch >= self.epoch:
            self.marker.touch()
            time.sleep(self.seconds)


class ExplodeOnce:
    """Raises a user error in epoch ``epoch``, the first time only (until ``RUN_DIR/exploded`` exists)."""

    def __init__(self, context: Context, epoch: int) -> None:
        self.epoch = epoch
        self.marker = context.run_dir / "exploded"

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch == self.epoch and not self.marker.exists():
            self.marker.touch()
            raise RuntimeError("boom from a user handler")


class Evil:
    """A pickle payload: unpickling it would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class EpochScore:
    """Adds a metric to the evaluator, ``epoch_score`` = -epoch, so the history gets ``val_epoch_score`` (best at 1)."""

    history_columns = ("val_epoch_score",)

    def __init__(self, context: Context) -> None:
        self.context = context

    def attach(self, engine: Engine, event: Any) -> None:
        self.context.evaluator.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        engine.state.metrics["epoch_score"] = -float(self.context.trainer.state.epoch)


class NumpyDraws:
    """Draws from NumPy's global generator each epoch; the draws must be the same after a resume."""

    def __init__(self, context: Context) -> None:
        self.draws: list[float] = []

    def __call__(self) -> None:
        import numpy as np

        self.draws.append(float(np.random.random()))

    def state_dict(self) -> dict[str, Any]:
        return {"draws": list(self.draws)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.draws = list(state["draws"])


class TaggedTensor(torch.Tensor):
    """A tensor subclass: plain data to a walk through a state, refused by a ``weights_only`` load."""


class UnsafeState:
    """A stateful handler whose state a ``weights_only`` load refuses (``kind`` picks the offending type)."""

    def __init__(self, context: Context, kind: str = "numpy") -> None:
        self.kind = kind

    def __call__(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        import collections
        import datetime

        import numpy as np

        value: Any = {
            "numpy": np.float64(0.5),
            "datetime": datetime.datetime(2026, 1, 1),
            "deque": collections.deque([1, 2]),
            "path": Path("x"),
            "tensor_subclass": torch.zeros(1).as_subclass(TaggedTensor),
        }.get(self.kind)
        return {"ok": 1, "value": value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def exit_in_epoch(context: Context, epoch: int, code: int = 0) -> None:
    """Calls ``sys.exit(code)`` in epoch ``epoch``, the first time only (until ``RUN_DIR/exited`` exists)."""
    import sys

    marker = context.run_dir / "exited"
    if context.trainer.state.epoch == epoch and not marker.exists():
        marker.touch()
        sys.exit(code)


def warn(context: Context, message: str = "a warning from a handler") -> None:
    """Logs a warning: the command line must print it on stderr, never on stdout."""
    logging.getLogger("tests.plugins").warning(message)


class TerminateOnRank:
    """Ends training after epoch ``epoch``, on the process of rank ``rank`` only (a data-parallel run)."""

    def __init__(self, context: Context, rank: int, epoch: int) -> None:
        self.context = context
        self.rank = rank
        self.epoch = epoch

    def __call__(self, engine: Engine) -> None:
        import ignite.distributed as idist

        if idist.get_rank() == self.rank and engine.state.epoch == self.epoch:
            engine.terminate()


class Lion(torch.optim.Optimizer):
    """A user's optimizer with state of its own (Lion, Chen et al. 2023: the sign of an interpolated momentum)."""

    def __init__(
        self, params: Iterable[Any], lr: float = 1e-4, betas: Iterable[float] = (0.9, 0.99), weight_decay: float = 0.0
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                exp_avg = state["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_((exp_avg * beta1 + p.grad * (1 - beta1)).sign(), alpha=-group["lr"])
                exp_avg.mul_(beta2).add_(p.grad, alpha=1 - beta2)
        return loss


def warmup(optimizer: torch.optim.Optimizer, config: Config, epoch_length: int, epochs: int = 1) -> PiecewiseLinear:
    """A user's schedule (an Ignite parameter scheduler): from a tenth of ``optimizer.lr`` up to it over ``epochs``."""
    peak = config.optimizer.lr
    return PiecewiseLinear(optimizer, "lr", [(0, peak / 10), (epochs * epoch_length, peak)])


def halve_every(
    optimizer: torch.optim.Optimizer, config: Config, epoch_length: int, epochs: int = 1
) -> torch.optim.lr_scheduler.LambdaLR:
    """A user's schedule (a torch one, stepped every iteration): the rate halved every ``epochs`` epochs."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda iteration: 0.5 ** (iteration // (epochs * epoch_length)))


def stateless_schedule(optimizer: torch.optim.Optimizer, config: Config, epoch_length: int) -> Callable[..., None]:
    """A schedule a resume could not continue: it keeps no state."""
    return lambda engine: None


class AbortAtExitOnRank:
    """On rank ``rank`` of a data-parallel run, aborts the process at interpreter exit, after the run: a crash on
    the way out, as gloo's teardown sometimes does ("terminate called without an active exception")."""

    def __init__(self, context: Context, rank: int = 1) -> None:
        import atexit
        import os

        import ignite.distributed as idist

        if idist.get_rank() == rank:
            atexit.register(os.abort)

    def __call__(self, engine: Engine) -> None:
        pass
