"""Data-parallel training on :mod:`ignite.distributed`: what each process of the run needs to know.

With ``distributed.backend`` set, :func:`fmnist_ignite.train` (and the command line) runs the
same training in ``distributed.nproc_per_node`` processes (see :mod:`fmnist_ignite.app.launch`,
which starts them), or in the processes ``torchrun`` started. Each process builds the same experiment;
:mod:`fmnist_ignite.build` then wraps the model in ``DistributedDataParallel`` and gives each
process its share of every batch, Ignite's metrics reduce themselves across processes, and only
rank 0 writes the run directory and prints.

What each process must agree on, it agrees on at the end of every epoch (:class:`EpochConsensus`):
a stop asked by a handler on any rank (early stopping, ``trainer.terminate()``) or by a signal
ends training on every rank after the same epoch, so no process waits forever for the others.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

from .errors import ConfigError

if TYPE_CHECKING:
    import torch
    from ignite.engine import Engine

    from .interrupt import StopRequest

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def rank() -> int:
    """This process's rank (0 without data-parallel training)."""
    import ignite.distributed as idist

    return int(idist.get_rank())


def world_size() -> int:
    """How many processes train together (1 without data-parallel training)."""
    import ignite.distributed as idist

    return int(idist.get_world_size())


def is_writer() -> bool:
    """Whether this process writes the run's files and prints: rank 0, or the only process."""
    return rank() == 0


def in_parallel_context() -> bool:
    """Whether this process is one of a data-parallel run's processes (its process group is set up)."""
    import ignite.distributed as idist

    return idist.model_name() != "serial"


def launched_by_torchrun() -> bool:
    """Whether ``torchrun`` (or another launcher setting its variables) started this process."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def processes_here() -> int:
    """How many processes of the run this machine has (``torchrun``'s ``LOCAL_WORLD_SIZE``, else all of them)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))


def machines() -> int:
    """How many machines the run trains on (``torchrun --nnodes``; 1 without ``torchrun``)."""
    return max(1, world_size() // processes_here())


def check_batch(batch_size: int, processes: int) -> None:
    """The effective batch must split evenly between the processes.

    Raises:
        ConfigError: naming both values and the nearest batch sizes that split.
    """
    if batch_size % processes:
        lower = batch_size - batch_size % processes
        higher = lower + processes
        options = f"{lower} or {higher}" if lower else f"{higher}"
        raise ConfigError(
            f"data.batch_size={batch_size} does not split evenly between {processes} processes "
            f"(it is the effective batch, shared by all of them); use data.batch_size={options}"
        )


def agree_on_run_dir(path: Path) -> Path:
    """Rank 0's run directory, on every rank.

    Rank 0 chooses the name (the next free one), and its path is the run's on every machine, where
    the other processes name it in their messages (they write nothing there; on another machine,
    with another current folder, their own ``output_dir`` may be another folder or none).
    """
    import ignite.distributed as idist

    if world_size() == 1:
        return path
    return Path(str(idist.broadcast(str(path.absolute()), src=0, safe_mode=True)))


def lost_contact(error: BaseException) -> str | None:
    """Why the processes of a data-parallel run lost contact, if ``error`` says they did (else ``None``).

    ``torch.distributed``'s network and store errors, and gloo's words for a closed connection,
    raised from a collective operation (the gradients' all-reduce inside the backward pass reaches
    the run as a plain ``RuntimeError``) when another process or its machine went away.
    """
    if world_size() == 1:
        return None
    import torch.distributed as dist

    text = " ".join(str(error).split())
    peer_gone = any(sign in text for sign in LOST_CONTACT_SIGNS)
    if not (isinstance(error, (dist.DistNetworkError, dist.DistStoreError)) or peer_gone):
        return None
    # gloo's lines start with its source file ("[.../pair.cc:561] ") and end with advice for its own bugs.
    return re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0]


LOST_CONTACT_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Socket Timeout")


def barrier() -> None:
    """Wait for every process (nothing without data-parallel training)."""
    import ignite.distributed as idist

    if world_size() > 1:
        idist.barrier()


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model for the training step: ``DistributedDataParallel`` around ``model`` when training in processes.

    This is what :func:`ignite.distributed.auto_model` does for the native backends, done here on
    the device the config chose (``auto_model`` would pick ``idist.device()``). Checkpoints,
    validation and the best weights keep using ``model`` itself, so their keys do not change.
    """
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return DistributedDataParallel(model, device_ids=device_ids)


class EpochConsensus:
    """The processes of a data-parallel run agree when to stop, and why, so that none waits for ever.

    With more than one process, :meth:`attach` makes ``trainer.terminate()`` a request: whoever
    calls it (early stopping, a handler of yours, on any rank, at any event), training ends on
    every rank at the next point where they all agree: when training starts, and at the end of
    each epoch, after the handlers and before the checkpoint. A stop signal received by any rank
    is agreed on the same way; :class:`~fmnist_ignite.interrupt.StopRequest` then acts on the
    agreed signal alone (after the checkpoint), and each rank stops with the same exit code. One
    small all-reduce at each of these points; nothing at all in a single process.
    """

    def __init__(self, request: StopRequest) -> None:
        self.request = request
        self.pending = False
        self._terminate: Callable[[], None] | None = None

    def attach(self, trainer: Engine) -> None:
        """Last at ``STARTED``; at ``EPOCH_COMPLETED`` where :class:`Experiment` puts it (before the checkpoint)."""
        from ignite.engine import Events

        if world_size() == 1:
            return
        self._terminate = trainer.terminate
        trainer.terminate = self._ask  # type: ignore[method-assign,assignment]
        self.request.terminate = self._terminate
        trainer.add_event_handler(Events.STARTED, self)

    def _ask(self) -> None:
        self.pending = True

    def __call__(self, trainer: Engine) -> None:
        import ignite.distributed as idist
        import torch

        if self._terminate is None:
            return
        signum = self.request.signum or 0
        mine = torch.tensor([float(self.pending), float(signum)], dtype=torch.float64)
        agreed = cast(torch.Tensor, idist.all_reduce(mine, op="MAX")).tolist()
        if agreed[0] > 0:
            self._terminate()
        if agreed[1] > 0:
            self.request.agreed = int(agreed[1])
            if self.request.signum is None:
                self.request.signum = int(agreed[1])


def local_rank() -> int:
    """This process's rank on this machine (its GPU's index with ``nccl``)."""
    import ignite.distributed as idist

    return int(idist.get_local_rank())
