"""Training as the command line does it, for the command line and Python alike: :func:`train`.

One call trains a config in this process, or, with ``distributed.backend`` set, in
``distributed.nproc_per_node`` processes that this module starts (through
:class:`ignite.distributed.Parallel`) or that ``torchrun`` started. Each process builds the same
experiment from the same resolved config; rank 0 writes the run directory, and the call returns
what it wrote.
"""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import os
import signal
import socket
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, FmnistIgniteError, LostContact, RunError, first_line
from . import console

if TYPE_CHECKING:
    import pandas
    from PIL.Image import Image as PILImage

    from ..config import Config, DistributedConfig
    from ..experiment import Experiment


@dataclass(frozen=True)
class RunResult:
    """What a training call leaves: where the run is, its history, and its test metrics; and, for a notebook,
    the history as a ``DataFrame`` and the run's pictures as PIL images (Jupyter shows them inline).

    Attributes:
        dir: the run directory (``output_dir/name``, or ``name-k`` when that was taken).
        history: one dict per epoch, as in ``history.json``.
        metrics: the test metrics, as in ``metrics.json``.
        config: the run's resolved config, as in ``config.yaml``.
    """

    dir: Path
    history: list[dict[str, Any]] = field(repr=False)
    metrics: dict[str, Any] = field(repr=False)
    config: Config = field(repr=False)

    @classmethod
    def read(cls, run_dir: str | Path) -> RunResult:
        """The result of the finished run in ``run_dir``, from its files."""
        from ..rundir import RunDir

        rundir = RunDir(run_dir)
        return cls(
            rundir.path,
            json.loads(rundir.history_json.read_text()),
            json.loads(rundir.metrics.read_text()),
            rundir.load_config(),
        )

    def history_frame(self) -> pandas.DataFrame:
        """The history as a pandas ``DataFrame``: one row per epoch, indexed by ``epoch``.

        Raises:
            ImportError: pandas is not installed; the message says ``pip install pandas``.
        """
        try:
            import pandas
        except ImportError:
            raise ImportError("history_frame() needs pandas: pip install pandas") from None
        return pandas.DataFrame(self.history).set_index("epoch")

    def history_figure(self) -> PILImage:
        """Loss and accuracy against epoch, train and validation, the best epoch marked (as ``history.png``).

        A PIL image: Jupyter shows it where it is the cell's value; ``.save("history.png")`` writes it.
        """
        from ..reports import history_figure

        return history_figure(self.history, self.metrics.get("best_epoch") or None)

    def confusion_figure(self) -> PILImage:
        """The test confusion matrix (as ``confusion_matrix.png``), from the run's ``report.json``; a PIL image."""
        from ..reports import confusion_figure

        report = self.report()
        return confusion_figure(report["confusion"], list(report["per_class"]))

    def predictions_figure(self) -> PILImage:
        """The run's ``predictions.png``: test images with their predicted class, mistakes in red; a PIL image."""
        from PIL import Image

        from ..rundir import RunDir

        with Image.open(RunDir(self.dir).figure("predictions")) as picture:
            picture.load()
            return picture.copy()

    def report(self) -> dict[str, Any]:
        """The run's ``report.json``: precision, recall, F1 and support per class, the most confused pairs."""
        from ..rundir import RunDir

        return dict(json.loads(RunDir(self.dir).report.read_text()))


@dataclass(frozen=True)
class Request:
    """What every process of a run needs to train it (plain data: it goes to spawned processes)."""

    config: Config
    resume: str | None = None
    overrides: tuple[str, ...] = ()
    verbosity: int = 0


def train(
    config: str | Path | Mapping[str, Any] | Config | None = None,
    *overrides: str,
    resume: str | Path | None = None,
    init_from: str | None = None,
    verbose: int | None = 0,
) -> RunResult:
    """Train as ``python -m fmnist_ignite CONFIG key=value ...`` does, and return what the run wrote.

    Every call of a config makes a new run directory (``NAME``, then ``NAME-1``, ...). With
    ``distributed.backend`` set, the run trains in that many processes (started here, or the ones
    ``torchrun`` started), as the command line's does.

    Args:
        config: a YAML file, a mapping or a :class:`~fmnist_ignite.config.Config`.
        overrides: ``key.sub=value`` strings, read as YAML (with ``resume``: the changes a resume allows,
            the first of them perhaps in ``config``'s place).
        resume: continue the run in this directory from its newest checkpoint instead.
        init_from: ``RUN_DIR[:best|last]``: start from another run's weights.
        verbose: ``0`` prints what the command line prints (a progress bar on a terminal or in
            Jupyter, one line per epoch, the test), ``-1`` only the outcome, ``1`` more;
            ``None`` leaves logging as the caller set it up.

    Returns:
        the run's directory, history and test metrics.

    Raises:
        ConfigError, RunDirError, DataError, CheckpointError, TrainingError: as their messages say.
        Interrupted: a signal stopped training after saving the epoch; the message says how to resume.
        RunError: anything else that stopped the run (its cause attached).

    Example:
        ::

            import fmnist_ignite

            run = fmnist_ignite.train("configs/base.yaml", "optimizer.lr=0.05")
            run.dir, run.history[-1]["val_accuracy"], run.metrics["test_accuracy"]
    """
    with console.logging_restored() if verbose is not None else nullcontext():
        if verbose is not None:
            console.setup_logging(verbose)
        verbosity = verbose if verbose is not None else console.current_verbosity()
        with start_up():
            request, launch = _prepare(config, overrides, resume, init_from, verbosity)
            experiment = None if launch else _build(request)
        if launch:
            return run_in_processes(request)
        assert experiment is not None
        return _run(experiment)


def resolve(
    config: str | Path | Mapping[str, Any] | Config | None,
    overrides: tuple[str, ...] | list[str] = (),
    resume: str | Path | None = None,
    init_from: str | None = None,
) -> tuple[Config, dict[str, Any]]:
    """The config a :func:`train` call would train, and what a resume changes in it."""
    from ..config import Config, load_config
    from ..resume import resume_config

    if resume is not None:
        if init_from:
            raise ConfigError("init_from starts a new run from a run's weights; it does not go with resume")
        if isinstance(config, str) and "=" in config:  # train("trainer.max_epochs=20", resume=RUN)
            overrides = [config, *overrides]
        elif config is not None:
            raise ConfigError(
                "resume continues a run with its own config.yaml: give only key=value changes "
                "(e.g. trainer.max_epochs=20), not a config"
            )
        return resume_config(resume, overrides)
    if isinstance(config, Config):
        config = config.to_dict()
    extra = [f"init_from={json.dumps(init_from)}"] if init_from else []
    return load_config(config, [*overrides, *extra]), {}


def _prepare(
    config: Any, overrides: tuple[str, ...], resume: str | Path | None, init_from: str | None, verbosity: int
) -> tuple[Request, bool]:
    """The request every process trains, and whether processes must be started for it."""
    from ..parallel import check_batch, in_parallel_context, launched_by_torchrun
    from ..resume import refuse_if_finished
    from ..rundir import RunDir

    resolved, changes = resolve(config, overrides, resume, init_from)
    changed = [f"{key}={json.dumps(value)}" for key, value in changes.items()]
    request = Request(resolved, None if resume is None else str(resume), tuple(changed), verbosity)
    launch = resolved.distributed.backend is not None and not in_parallel_context()
    if launch:
        check_launch(resolved.distributed, resume)
        if not launched_by_torchrun():
            check_batch(resolved.data.batch_size, processes_to_start(resolved.distributed))
        if resume is not None:
            refuse_if_finished(RunDir(resume), resolved, changes)  # before starting the processes
    elif launched_by_torchrun() and resolved.distributed.backend is None and int(os.environ["WORLD_SIZE"]) > 1:
        raise ConfigError(
            f"torchrun started {os.environ['WORLD_SIZE']} processes, but distributed.backend is null, so each "
            "would train a run of its own; set distributed.backend=gloo (or nccl)"
        )
    return request, launch


def _build(request: Request) -> Experiment:
    from ..build import build_experiment
    from ..resume import resume_experiment

    if request.resume is not None:
        return resume_experiment(request.resume, overrides=request.overrides)
    return build_experiment(request.config)


def _run(experiment: Experiment) -> RunResult:
    """Run a built experiment; an error that is not the package's becomes a one-line :class:`RunError`."""
    from ..parallel import lost_contact

    try:
        metrics = experiment.run()
    except (FmnistIgniteError, KeyboardInterrupt):
        raise
    except OSError as err:
        where = f" {err.filename}" if err.filename else ""
        raise RunError(
            f"cannot write{where}: {err.strerror or err}; the files already written are whole: "
            f"free space or fix the folder, then {experiment.resume_hint()}"
        ) from err
    except Exception as err:
        reason = lost_contact(err)
        if reason is not None:
            raise LostContact(
                f"the processes of the data-parallel run lost contact during epoch {experiment.trainer.state.epoch} "
                f"({reason}): a process or machine of the run stopped, or the network between them failed; "
                f"the last checkpoint is kept on rank 0's machine: {experiment.resume_hint()}"
            ) from err
        # A bug or a user handler's error: one line saying where, then how to go on.
        kept = experiment.rundir.exists() and not experiment.rundir.finished
        then = f"; its last checkpoint is kept: {experiment.resume_hint()}" if kept else ""
        raise RunError(f"the run stopped on {type(err).__name__}: {first_line(err)} ({_origin(err)}){then}") from err
    return RunResult(experiment.run_dir, list(experiment.history), metrics, experiment.config)


def _origin(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "no traceback"
    frame = frames[-1]
    return f"{os.path.relpath(frame.filename) if not frame.filename.startswith('<') else frame.filename}:{frame.lineno}"


@contextmanager
def start_up() -> Iterator[None]:
    """Loading the libraries and building the experiment: a Ctrl-C is held till it ends, then the collector is back.

    A KeyboardInterrupt raised while torch loads its compiled parts can abort the process or
    leave a module half-imported that fails later, so the first Ctrl-C here is held and acted on
    when start-up ends (one line, exit code 130); a second one stops at once. The garbage
    collector, off since :func:`fmnist_ignite.app.cli.main_entry`, is turned back on for
    training, with everything start-up made frozen (left out of its sweeps).
    """
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, hold) if in_main_thread else None
    try:
        yield
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def processes_to_start(config: DistributedConfig) -> int:
    """``nproc_per_node``, or its default: one process per GPU with ``nccl``, 2 with ``gloo``."""
    if config.nproc_per_node is not None:
        return config.nproc_per_node
    if config.backend == "nccl":
        import torch

        return max(1, torch.cuda.device_count())
    return 2


def check_launch(config: DistributedConfig, resume: str | Path | None = None) -> None:
    """Refuse a backend this machine cannot run, and a run across machines that ``torchrun`` did not start.

    Raises:
        ConfigError: ``nccl`` without CUDA, more ``nccl`` processes than GPUs, or ``nnodes`` above 1
            without ``torchrun`` (the message says the command to run on each machine).
    """
    import torch

    from ..parallel import launched_by_torchrun
    from ..rundir import shell_quote

    if config.nnodes > 1 and not launched_by_torchrun():
        arguments = f"--resume {shell_quote(str(Path(resume).absolute()))}" if resume is not None else "CONFIG ..."
        raise ConfigError(
            f"distributed.nnodes={config.nnodes}: the run trains on {config.nnodes} machines, which only torchrun "
            f"starts; run on each machine 'torchrun --nnodes {config.nnodes} --nproc_per_node "
            f"{config.nproc_per_node or 'N'} --rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id ID "
            f"-m fmnist_ignite {arguments}' (HOST: the first machine's address)"
        )
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


class ProcessesFailed(FmnistIgniteError):
    """A process of a data-parallel run ended with an error; ``reported`` when that process printed it."""

    def __init__(self, message: str, exit_code: int, reported: bool = False) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.reported = reported


MESSAGE_BYTES = 4096


def run_in_processes(request: Request) -> RunResult:
    """Train ``request`` in every process of its data-parallel run; rank 0's result.

    Started here, the processes come from :class:`ignite.distributed.Parallel` on a free local
    port; under ``torchrun`` this process is one of them. While they run, this process ignores
    Ctrl-C (the processes, in the same terminal, receive it themselves and stop together after the
    epoch) and passes SIGTERM on to them.

    Raises:
        ProcessesFailed: a process ended with an error (rank 0's, else the first other one's).
    """
    from ..parallel import launched_by_torchrun

    backend = request.config.distributed.backend
    check_launch(request.config.distributed)  # again: this may be called without train()
    if launched_by_torchrun():
        result: dict[str, Any] = {}
        with _quiet_launcher(backend=backend) as parallel:
            parallel.run(_run_here, request, result)
        if "error" in result:
            raise result["error"]
        return result["run"]
    from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

    # Each process's exit code, and rank 0's run directory or error line. The processes all return
    # normally, even on errors: one that exits with an error makes torch.multiprocessing terminate
    # the others at once, rank 0 perhaps mid-write.
    processes = processes_to_start(request.config.distributed)
    context = multiprocessing.get_context("spawn")
    codes = context.Array("i", [-1] * processes)
    said = context.Array("c", MESSAGE_BYTES)
    with signals_passed_on(_children, passed=(signal.SIGTERM,), ignored=(signal.SIGINT,)):
        try:
            with _quiet_launcher(backend=backend, nproc_per_node=processes, master_port=_free_port()) as parallel:
                parallel.run(_run_spawned, request, codes, said)
        except (ProcessExitedException, ProcessRaisedException) as err:  # killed, or crashed outside the run
            if all(codes[i] == 0 for i in range(len(codes))):
                # Every process had finished its part (rank 0 had written the whole run) when one of them died
                # on its way out, in the C++ teardown of its process group: the run is complete.
                logging.getLogger(__name__).warning(
                    "process %d of the data-parallel run crashed while exiting, after the run was complete",
                    err.error_index,
                )
                return RunResult.read(_said(said))
            if codes[0] > 0:
                raise ProcessesFailed(_said(said), int(codes[0]), reported=True) from None
            exit_code = getattr(err, "exit_code", 1)
            ended = f"exit code {exit_code}" if exit_code >= 0 else signal.Signals(-exit_code).name
            code = exit_code if exit_code > 0 else 128 - exit_code
            raise ProcessesFailed(f"process {err.error_index} of the data-parallel run ended ({ended})", code) from None
    if codes[0] != 0:
        raise ProcessesFailed(_said(said), int(codes[0]), reported=True)
    for index in range(len(codes)):
        if codes[index] != 0:
            raise ProcessesFailed(
                f"process {index} of the data-parallel run ended with exit code {codes[index]}; run with -v to see "
                "every process's errors",
                int(codes[index]),
            )
    return RunResult.read(_said(said))


def _said(said: Any) -> str:
    return bytes(said.value).decode(errors="replace")


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


def _run_spawned(local_rank: int, request: Request, codes: Any, said: Any) -> None:
    """A process this module started: its exit code, and rank 0's run directory or error line, for the parent."""
    from ..parallel import rank

    signal.signal(signal.SIGINT, signal.default_int_handler)  # the launcher ignores Ctrl-C; this process must not
    gc.disable()  # as the command line does: start-up's objects are frozen, not swept (see cli.main_entry)
    outcome: dict[str, Any] = {}
    code = _train_in_process(request, outcome)
    if rank() == 0:  # said before the code: a code of 0 means the run directory can be read
        text = str(outcome["run"].dir) if "run" in outcome else console.one_line(outcome.get("error", ""))
        said.value = text.encode()[: MESSAGE_BYTES - 1]
    codes[rank()] = code


def _run_here(local_rank: int, request: Request, result: dict[str, Any]) -> None:
    """A process torchrun started: the error itself is raised again by :func:`run_in_processes`."""
    outcome: dict[str, Any] = {}
    code = _train_in_process(request, outcome)
    if "run" in outcome:
        result["run"] = outcome["run"]
    else:
        result["error"] = ProcessesFailed(console.one_line(outcome.get("error", "")), code, reported=True)


def _train_in_process(request: Request, outcome: dict[str, Any]) -> int:
    """Train in this process of a data-parallel run, printing as rank N does; its exit code."""
    from ..parallel import processes_here, rank

    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        # The processes share this machine's cores (torchrun does the same with OMP_NUM_THREADS=1).
        torch.set_num_threads(max(1, cpu_count() // processes_here()))
    if rank() > 0:
        # Rank 0 prints and writes; the others only train (their warnings and errors still show).
        import sys

        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process

    def run() -> int:
        try:
            with start_up():
                experiment = _build(request)
            outcome["run"] = _run(experiment)
        except BaseException as err:
            outcome["error"] = err
            raise
        return 0

    with console.logging_restored():
        console.setup_logging(request.verbosity, rank=rank())
        return console.reported(run, request.verbosity, rank())


def cpu_count() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextmanager
def signals_passed_on(
    children: Callable[[], list[int]], passed: tuple[int, ...], ignored: tuple[int, ...] = ()
) -> Iterator[list[int]]:
    """While child processes run: the ``passed`` signals go on to each of ``children()``, the ``ignored`` do not
    stop this process; yields the signals received, in order.

    A data-parallel run's processes share the terminal, so a Ctrl-C reaches them without help and is
    ignored here; a sweep's workers each have a process group of their own, so it is passed on, once.
    """
    received: list[int] = []

    def pass_on(signum: int, frame: Any) -> None:
        received.append(signum)
        for pid in children():
            os.kill(pid, signum)

    handlers: dict[int, Any] = {**dict.fromkeys(ignored, signal.SIG_IGN), **dict.fromkeys(passed, pass_on)}
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = (
        {signum: signal.signal(signum, handler) for signum, handler in handlers.items()} if in_main_thread else {}
    )
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _children() -> list[int]:
    return [child.pid for child in multiprocessing.active_children() if child.pid is not None]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
