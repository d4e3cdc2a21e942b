"""Data-parallel training on :mod:`ignite.distributed`: starting the processes, and what each one needs to know.

With ``distributed.backend`` set, the command line runs the same command in
``distributed.nproc_per_node`` processes through :class:`ignite.distributed.Parallel` (or, under
``torchrun``, in the processes ``torchrun`` started). Each process builds the same experiment;
:mod:`fmnist_ignite.build` then wraps the model in ``DistributedDataParallel`` and gives each
process its share of every batch, Ignite's metrics reduce themselves across processes, and only
rank 0 writes the run directory and prints.

What each process must agree on, it agrees on at the end of every epoch (:class:`EpochConsensus`):
a stop asked by a handler on any rank (early stopping, ``trainer.terminate()``) or by a signal
ends training on every rank after the same epoch, so no process waits forever for the others.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from .errors import ConfigError

if TYPE_CHECKING:
    import torch
    from ignite.engine import Engine

    from .config import DistributedConfig
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


def processes_to_start(config: DistributedConfig) -> int:
    """``nproc_per_node``, or its default: one process per GPU with ``nccl``, 2 with ``gloo``."""
    if config.nproc_per_node is not None:
        return config.nproc_per_node
    if config.backend == "nccl":
        import torch

        return max(1, torch.cuda.device_count())
    return 2


def processes_here() -> int:
    """How many processes of the run this machine has (``torchrun``'s ``LOCAL_WORLD_SIZE``, else all of them)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))


def check_launch(config: DistributedConfig) -> None:
    """Refuse a backend this machine cannot run.

    Raises:
        ConfigError: ``nccl`` without CUDA, or more ``nccl`` processes than GPUs.
    """
    import torch

    if config.backend == "nccl":
        if not torch.cuda.is_available():
            raise ConfigError(
                "distributed.backend=nccl needs CUDA GPUs, which this machine lacks; use distributed.backend=gloo"
            )
        gpus = torch.cuda.device_count()
        if not launched_by_torchrun() and processes_to_start(config) > gpus:
            raise ConfigError(
                f"distributed.nproc_per_node={config.nproc_per_node} with nccl needs one GPU per process; "
                f"this machine has {gpus}"
            )


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


def run_in_processes(config: DistributedConfig, command: Callable[[Sequence[str]], int], argv: Sequence[str]) -> int:
    """Run ``command(argv)`` (the command line's ``main``) in every process of the data-parallel run.

    Started here, the processes come from :class:`ignite.distributed.Parallel` on a free local
    port; under ``torchrun`` this process is one of them. While they run, this process ignores
    Ctrl-C (the processes, in the same terminal, receive it themselves and stop together after the
    epoch) and passes SIGTERM on to them.

    Returns:
        rank 0's exit code; or, when rank 0 ended well but another process did not, that process's.
    """
    check_launch(config)  # again: run_in_processes may be called without the command line
    if launched_by_torchrun():
        result: dict[str, int] = {}
        with _quiet_launcher(backend=config.backend) as parallel:
            parallel.run(_run_here, command, list(argv), result)
        return result.get("code", 1)
    from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

    # Each process's exit code. They all return normally, even on errors: a process that exits with
    # an error makes torch.multiprocessing terminate the others at once, rank 0 perhaps mid-write.
    processes = processes_to_start(config)
    codes = multiprocessing.get_context("spawn").Array("i", [-1] * processes)
    with _signals_passed_on():
        try:
            with _quiet_launcher(
                backend=config.backend, nproc_per_node=processes, master_port=_free_port()
            ) as parallel:
                parallel.run(_run_spawned, command, list(argv), codes)
        except (ProcessExitedException, ProcessRaisedException) as err:  # killed, or crashed outside main()
            if codes[0] > 0:
                return int(codes[0])  # rank 0 said why; the others failed with it
            exit_code = getattr(err, "exit_code", 1)
            ended = f"exit code {exit_code}" if exit_code >= 0 else signal.Signals(-exit_code).name
            print(f"error: process {err.error_index} of the data-parallel run ended ({ended})", file=sys.stderr)
            return exit_code if exit_code > 0 else 128 - exit_code
    if codes[0] != 0:
        return int(codes[0])
    for index in range(len(codes)):
        code = int(codes[index])
        if code != 0:
            print(
                f"error: process {index} of the data-parallel run ended with exit code {code}; run with -v to see "
                "every process's errors",
                file=sys.stderr,
            )
            return int(code)
    return 0


def _quiet_launcher(**kwargs: Any) -> Any:
    """:class:`ignite.distributed.Parallel`, without its INFO lines (the run prints its own)."""
    import ignite.distributed as idist

    logging.disable(logging.INFO)
    try:
        parallel = idist.Parallel(**kwargs)
    finally:
        logging.disable(logging.NOTSET)
    logging.getLogger("ignite.distributed.launcher.Parallel").setLevel(logging.WARNING)
    return parallel


def _run_spawned(local_rank: int, command: Callable[[Sequence[str]], int], argv: list[str], codes: Any) -> None:
    codes[rank()] = _run_rank(command, argv)


def _run_here(local_rank: int, command: Callable[[Sequence[str]], int], argv: list[str], codes: dict) -> None:
    codes["code"] = _run_rank(command, argv)


def _run_rank(command: Callable[[Sequence[str]], int], argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the launcher ignores Ctrl-C; this process must not
    gc.disable()  # as the command line does: start-up's objects are frozen, not swept (see cli.main_entry)
    from .cli import RANK_VARIABLE

    os.environ[RANK_VARIABLE] = str(rank())
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        # The processes share this machine's cores (torchrun does the same with OMP_NUM_THREADS=1).
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // processes_here()))
    if rank() > 0:
        # Rank 0 prints and writes; the others only train (their warnings and errors still show).
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    try:
        return command(argv)
    except KeyboardInterrupt:
        return 130


@contextmanager
def _signals_passed_on() -> Iterator[None]:
    """While the processes run: Ctrl-C reaches them from the terminal; SIGTERM is passed on to them."""

    def pass_on(signum: int, frame: Any) -> None:
        for child in multiprocessing.active_children():
            if child.pid is not None:
                os.kill(child.pid, signum)

    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, pass_on)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def agree_on_name(name: str) -> str:
    """Rank 0's choice of run directory name, on every rank."""
    import ignite.distributed as idist

    if world_size() == 1:
        return name
    return str(idist.broadcast(name, src=0, safe_mode=True))


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
