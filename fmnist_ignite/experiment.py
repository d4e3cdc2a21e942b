"""Running an experiment: create (or resume) the run directory, train, then test and write the results.

:class:`Experiment` owns the run's life; it knows its handlers only through Ignite's events and
their ``state_dict()``, never by name. Building one is :mod:`fmnist_ignite.build`'s job.
"""

from __future__ import annotations

import logging
import random
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from ignite.engine import Engine, Events

from . import parallel
from .checkpoint import Checkpointer
from .config import Config, HandlerConfig
from .context import Context
from .data import ImageData, Loader
from .errors import ConfigError, RunDirError, TrainingError, did_you_mean
from .evaluation import evaluate
from .events import RunEvents
from .fileio import atomic_torch_save
from .handlers import attach_handler
from .interrupt import Interrupted, StopRequest, stop_on_signals
from .reports import format_report, start_results
from .rundir import RunDir, shown
from .runfiles import InputDescription

logger = logging.getLogger(__name__)
# The run's record, as a person reads it: the run directory first, the epochs, the test, where the
# results are; the command line prints it on stdout. The outcome (the last two) shows even with -q.
record = logging.getLogger("fmnist_ignite.run")
outcome = logging.getLogger("fmnist_ignite.run.outcome")
SAMPLES = 32  # the test images predictions.png shows, with their predicted classes


class RNGState:
    """The global random generators (torch, CUDA, Python, NumPy) as one stateful object for checkpoints.

    The data order does not depend on them (it is seeded per epoch), but user code may.
    """

    def state_dict(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, gauss = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": {
                "name": name,
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "gauss": float(gauss),
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["torch"].cpu())
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        saved = state["numpy"]
        keys = saved["keys"].cpu().numpy().astype(np.uint32)
        np.random.set_state((saved["name"], keys, saved["pos"], saved["has_gauss"], saved["gauss"]))


class TrainingStatus:
    """Whether training has ended before ``max_epochs`` (a handler such as early stopping ended it).

    Runs last before the checkpoint at each epoch, so a resumed run knows that training is over. A
    stop asked for by a signal is not an end: it comes after the checkpoint.
    """

    def __init__(self, trainer: Engine) -> None:
        self.trainer = trainer
        self.ended = False

    def __call__(self) -> None:
        self.ended = bool(self.trainer.should_terminate)

    def state_dict(self) -> dict[str, Any]:
        return {"ended": self.ended}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ended = bool(state["ended"])


class Experiment:
    """A built experiment: engines, model, loaders and handlers, ready to run.

    Attach more handlers before :meth:`run`, either on the engines directly
    (``experiment.trainer.add_event_handler(...)``) or with :meth:`add_handler`, which also puts a
    stateful handler into the checkpoints. Either way they run before the checkpoint of the
    epoch is written, which :meth:`run` attaches last.
    """

    def __init__(
        self,
        config: Config,
        context: Context,
        data: ImageData,
        loaders: dict[str, Loader],
        handlers: dict[str, Any],
        checkpointer: Checkpointer,
    ) -> None:
        self.config = config
        self.context = context
        self.data = data
        self.loaders = loaders
        self.handlers = handlers
        self.checkpointer = checkpointer
        self.resuming = False
        self.changes: dict[str, Any] = {}
        self.initial_weights: Path | None = None
        self.stop_request = StopRequest()
        self.status = TrainingStatus(context.trainer)
        context.state["status"] = self.status
        self._last_steps_attached = False
        self._ran = False
        self._user_handlers = len(config.handlers)
        self.validation: Any = None  # the validation step (build.Validation), set by build_experiment

    @property
    def trainer(self) -> Engine:
        """The training engine."""
        return self.context.trainer

    @property
    def evaluator(self) -> Engine:
        """The validation engine, run after every training epoch."""
        return self.context.evaluator

    @property
    def model(self) -> torch.nn.Module:
        """The model."""
        return self.context.model

    @property
    def rundir(self) -> RunDir:
        """The run directory's files."""
        return self.context.rundir

    @property
    def run_dir(self) -> Path:
        """Where the run writes its files."""
        return self.context.rundir.path

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per completed epoch (see :class:`~fmnist_ignite.history.History`)."""
        return self.context.history.records

    def add_handler(
        self,
        target: str | Callable[..., Any],
        event: str = "EPOCH_COMPLETED",
        engine: Literal["trainer", "evaluator"] = "trainer",
        every: int | None = None,
        once: int | None = None,
        before: int | None = None,
        after: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """Attach a handler as a ``handlers:`` entry would: a registered name, a dotted path, or the object itself.

        ``event``, ``engine`` and the filters ``every``, ``once``, ``before`` and ``after`` mean
        what they mean in the config; ``kwargs`` go to the handler.

        Returns:
            the handler instance for a class, or the function.
        """
        name = f"handlers[{self._user_handlers}]"
        spec = HandlerConfig(
            target=target if isinstance(target, str) else "<python>",
            event=event,
            engine=engine,
            every=every,
            once=once,
            before=before,
            after=after,
        )
        handler = attach_handler(self.context, spec, name, target=None if isinstance(target, str) else target, **kwargs)
        self._user_handlers += 1
        self.handlers[name] = handler
        return handler

    def run(self) -> dict[str, Any]:
        """Train (or continue training), evaluate on the test set, and write the run's files.

        Returns:
            the test metrics, as written to ``metrics.json``.

        A new run takes the directory ``output_dir/name``, or the next free ``name-1``, ``name-2``, ...
        if it is taken (an existing run is never touched); the first line logged names it. Fires
        :attr:`~fmnist_ignite.events.RunEvents.RUN_STARTED` before anything is written, and
        :attr:`~fmnist_ignite.events.RunEvents.RUN_STOPPED` if the run stops without finishing.

        Raises:
            ConfigError: a handler's state could not be restored from a checkpoint, or a handler
                could not reach an outside service (checked before anything is written).
            RunDirError: a new run's directory cannot be created, or a resumed run's is locked.
            Interrupted: SIGINT or SIGTERM stopped training (after saving the epoch, or at once on
                a second signal); the message says how to resume.
            TrainingError: the loss became NaN, or a handler called ``sys.exit``.
        """
        if self.config.trainer.fast_dev_run:
            self._refuse_a_second_run()
            self._check_monitor()
            return self._fast_dev_run()
        with self.session():
            if not self.training_done():
                self._train()
            self.check_stop()
            return self.finish()

    @contextmanager
    def session(self, signals: bool = True) -> Iterator[None]:
        """Everything :meth:`run` does around training and :meth:`finish`: the checks, the new run directory or
        the restored checkpoint, the lock, the signals (:meth:`check_stop` says whether one stopped training).

        A fused sweep (:mod:`fmnist_ignite.sweep.fused`) holds the sessions of its trials and trains them together
        (``signals=False``: it installs one stop request for them all).
        """
        self._refuse_a_second_run()
        self._check_monitor()
        self.checkpointer.check_resumable()
        self.trainer.fire_event(RunEvents.RUN_STARTED)
        if not self.resuming:
            self._create()
            seed_everything(self.config.seed)
            self._log_start()
        self._attach_last_steps()
        lock = self.rundir.lock() if self.writer else nullcontext()
        signalled = stop_on_signals(self.trainer, self.stop_request) if signals else nullcontext()
        with lock, signalled:
            try:
                if self.resuming:
                    self._restore()
                yield
            except BaseException as err:
                self.trainer.state.stop_error = err  # type: ignore[attr-defined]
                self.trainer.fire_event(RunEvents.RUN_STOPPED)
                raise

    def check_stop(self) -> None:
        """Raise :class:`Interrupted` if a signal stopped training before its end (the epoch is saved)."""
        signum = self.stop_request.signum
        if signum is not None and not self.training_done():
            raise Interrupted(
                f"{signal.Signals(signum).name} received: stopped after epoch {self.trainer.state.epoch}, "
                f"which is saved; {self.rundir.resume_hint()}",
                signum,
            )

    def _fast_dev_run(self) -> dict[str, Any]:
        """``trainer.fast_dev_run``: one batch of training, validation and test (the loaders give one); no files."""
        record.info("fast_dev_run: one batch of training, validation and test; no run directory is written")
        self.trainer.fire_event(RunEvents.RUN_STARTED)
        seed_everything(self.config.seed)
        self._attach_last_steps()
        try:
            self.trainer.run(self.loaders["train"], max_epochs=1)
            metrics = self.finish()
        except BaseException as err:
            self.trainer.state.stop_error = err  # type: ignore[attr-defined]
            self.trainer.fire_event(RunEvents.RUN_STOPPED)
            raise
        outcome.info(
            "fast_dev_run passed: train loss %.4f, val accuracy %.4f, test accuracy %.4f; nothing was written",
            self.history[-1]["train_loss"],
            self.history[-1]["val_accuracy"],
            metrics["test_accuracy"],
        )
        return metrics

    def _check_monitor(self) -> None:
        """``monitor.metric`` names a column the history will have: checked before anything is written."""
        declared = [c for h in self.handlers.values() for c in getattr(h, "history_columns", ())]
        columns = self.context.history.columns(declared)
        metric = self.config.monitor.metric
        if metric not in columns:
            raise ConfigError(
                f"monitor.metric: the history has no column '{metric}'{did_you_mean(metric, columns)}; "
                f"choose one of {', '.join(columns)} "
                "(a handler that writes a metric itself names its column in history_columns)"
            )

    def _refuse_a_second_run(self) -> None:
        """An experiment runs once; a data-parallel config runs in the processes made for it."""
        if self._ran:
            raise RunDirError(
                f"this experiment has run already (in {shown(self.run_dir)}); build a new one for a new run "
                "(build_experiment(config), or fmnist_ignite.train(config)), or resume_experiment(RUN_DIR) to go on"
            )
        backend = self.config.distributed.backend
        if backend is not None and not parallel.in_parallel_context():
            raise ConfigError(
                f"distributed.backend={backend} trains in several processes, which Experiment.run() does not start: "
                "use fmnist_ignite.train(config) (or the command line), or set distributed.backend=null"
            )
        self._ran = True

    @property
    def writer(self) -> bool:
        """Whether this process writes the run's files: rank 0 in a data-parallel run, else always."""
        return self.checkpointer.write

    def _create(self) -> None:
        """Create the run directory (rank 0; the other processes of a data-parallel run learn its name)."""
        if self.writer:
            self.config = self.context.config = self.rundir.create(self.config)
            self.rundir.write_input(self.input_description())
        path = parallel.agree_on_run_dir(self.config.run_dir)  # waits for rank 0 in a data-parallel run
        if path != self.config.run_dir:
            self.rundir.path = path
            update = {"output_dir": str(path.parent), "name": path.name}
            self.config = self.context.config = self.config.model_copy(update=update)

    def _train(self) -> None:
        start, first = time.perf_counter(), self.trainer.state.epoch
        try:
            self.trainer.run(self.loaders["train"], max_epochs=self.config.trainer.max_epochs)
        except Interrupted as err:
            message = f"{err} during epoch {self.trainer.state.epoch}; {self.rundir.resume_hint()}"
            raise Interrupted(message, err.signum) from None
        except SystemExit as err:
            raise TrainingError(
                f"a handler called sys.exit({err.code!r}) during epoch {self.trainer.state.epoch}; "
                f"the run stopped there and its last checkpoint is kept: {self.rundir.resume_hint()}"
            ) from None
        epochs = self.trainer.state.epoch - first
        logger.debug("timing: training %.3f s (%d epochs)", time.perf_counter() - start, epochs)

    def _attach_last_steps(self) -> None:
        # Last at EPOCH_COMPLETED, so the checkpoint holds every handler's update for the epoch,
        # including handlers attached in Python after build_experiment.
        if not self._last_steps_attached:
            consensus = parallel.EpochConsensus(self.stop_request)
            consensus.attach(self.trainer)
            self.trainer.add_event_handler(Events.EPOCH_COMPLETED, consensus)
            self.trainer.add_event_handler(Events.EPOCH_COMPLETED, self.status)
            self.trainer.add_event_handler(Events.EPOCH_COMPLETED, self.checkpointer)
            self.trainer.add_event_handler(Events.EPOCH_COMPLETED, self.stop_request.stop_if_asked)
            self._last_steps_attached = True

    def _log_start(self) -> None:
        taken = f" ({shown(self.rundir.requested)} exists already)" if self.rundir.path != self.rundir.requested else ""
        start = f"; initial weights from {shown(self.initial_weights)}" if self.initial_weights else ""
        record.info("Run directory %s%s%s%s", shown(self.run_dir), taken, start, self._parallel())

    def _parallel(self) -> str:
        processes = parallel.world_size()
        if processes == 1:
            return ""
        return f"; data-parallel in {processes} processes ({self.config.distributed.backend})"

    def _restore(self) -> None:
        path = self.checkpointer.load_newest(self.context.device)
        epoch = self.trainer.state.epoch if path is not None else 0
        if epoch > self.config.trainer.max_epochs:
            raise ConfigError(
                f"trainer.max_epochs={self.config.trainer.max_epochs} is below the {epoch} epochs {self.rundir} "
                "has trained; give a larger value"
            )
        changed = "".join(f", with {key}={value}" for key, value in self.changes.items())
        if path is None:
            record.info(
                "Resuming %s%s: no epoch was saved yet, so training starts from epoch 1", shown(self.run_dir), changed
            )
            seed_everything(self.config.seed)
        else:
            record.info(
                "Resuming %s from %s (epoch %d)%s%s", shown(self.run_dir), path.name, epoch, changed, self._parallel()
            )
        if self.writer:
            self.rundir.remove_temporary_files()  # after the line that names the run: they are never read
        if self.changes and self.writer:
            self.rundir.update_config(self.config)
        if self.changes:
            # Training may go on where a handler (early stopping) ended it; it decides again, from
            # its restored state and the new settings, when training starts.
            self.status.ended = False

    def resume_hint(self) -> str:
        """How to continue this run from its newest checkpoint."""
        return self.rundir.resume_hint()

    def input_description(self) -> InputDescription:
        """What the model expects as input and what its outputs mean (``data.json``; used by ``predict``)."""
        return InputDescription(
            classes=list(self.data.classes),
            image_shape=self.data.image_shape,
            mean=self.data.mean,
            std=self.data.std,
            normalize=self.config.data.normalize,
            background=self.data.background,
            dataset=self.config.data.dataset,
        )

    def training_done(self) -> bool:
        """Whether the trainer reached ``max_epochs`` or a handler (early stopping) ended training."""
        return self.trainer.state.epoch >= self.config.trainer.max_epochs or self.status.ended

    def finish(self, test: dict[str, Any] | None = None) -> dict[str, Any]:
        """Restore the best weights if asked, evaluate on the test set, write the results.

        Writes ``model.pt``, ``report.json`` and the pictures, fires
        :attr:`~fmnist_ignite.events.RunEvents.RUN_FINISHED`, then writes ``metrics.json`` (last:
        it marks the run as finished) and logs the per-class report. ``test``: the test evaluation (see
        :func:`~fmnist_ignite.evaluation.evaluate`) of the weights :meth:`final_weights` chose, if made elsewhere
        (a fused sweep tests its trials in one pass).
        """
        with ThreadPoolExecutor(3, thread_name_prefix="fmnist-ignite-figures") as pool:
            return self.finishing(test, pool)()

    def finishing(
        self, test: dict[str, Any] | None, pool: Executor, predicted: list[int] | None = None
    ) -> Callable[[], dict[str, Any]]:
        """:meth:`finish` in two steps: up to the pictures now, which are drawn and written in ``pool``; the rest
        (``RUN_FINISHED``, ``metrics.json``) when the returned function is called, once they are written.

        A fused sweep starts every trial's end this way, then completes each: the pictures of the ones
        after are drawn while it completes the ones before. ``predicted``: the classes the tested weights
        give the first :data:`SAMPLES` test images (``predictions.png``), if found elsewhere.
        """
        start = time.perf_counter()
        monitor, records = self.context.monitor, self.history
        weights, epoch = self.final_weights()
        if test is None:
            test = evaluate(
                self.model, self.loaders["test"], self.context.device, self.context.prepare_batch, self.data.classes
            )
        metrics = {
            "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            **monitor.describe(),
            "epochs_trained": len(records),
            "weights": weights,
            "weights_epoch": epoch,
            "per_class_accuracy": test["per_class_accuracy"],
        }
        if not self.writer:  # a data-parallel run's other processes: rank 0 writes and reports

            def told() -> dict[str, Any]:
                self.trainer.state.results = {"metrics": metrics, "report": {}, "figures": {}}  # type: ignore[attr-defined]
                self.trainer.fire_event(RunEvents.RUN_FINISHED)
                return metrics

            return told
        atomic_torch_save(self.rundir.model, self.model.state_dict())
        samples = self._sample_predictions(predicted)
        results = start_results(
            self.rundir, records, monitor.best_epoch, test, self.data.classes, weights, samples, pool
        )

        def complete() -> dict[str, Any]:
            results.wait()
            self.trainer.state.results = {"metrics": metrics, "report": results.report, "figures": results.figures}  # type: ignore[attr-defined]
            self.trainer.fire_event(RunEvents.RUN_FINISHED)
            self.rundir.write_metrics(metrics)
            record.info("%s", format_report(results.report))
            outcome.info(
                "Test (%s weights, epoch %d): accuracy %.4f loss %.4f",
                weights,
                epoch,
                metrics["test_accuracy"],
                metrics["test_loss"],
            )
            logger.debug("timing: end of run %.3f s (test, model.pt, report, pictures)", time.perf_counter() - start)
            outcome.info("%s", self._where_the_results_are(results.figures))
            return metrics

        return complete

    def final_weights(self) -> tuple[str, int]:
        """Put the weights the run is tested with into the model: the best epoch's if ``monitor.restore_best``
        (and there is one), else the last; returns ``("best"|"last", epoch)``."""
        monitor, records = self.context.monitor, self.history
        if self.config.monitor.restore_best and monitor.best_epoch:
            self.model.load_state_dict(monitor.best_state)
            return "best", monitor.best_epoch
        return "last", (records[-1]["epoch"] if records else 0)

    def _where_the_results_are(self, figures: Mapping[str, Path]) -> str:
        files = [self.rundir.metrics, self.rundir.report, self.rundir.model, *figures.values()]
        where = f"Results in {shown(self.run_dir)}: {', '.join(p.name for p in files)}"
        if self.rundir.tensorboard.is_dir():
            where += f"; tensorboard --logdir {shown(self.rundir.tensorboard)}"
        return where

    def _sample_predictions(self, predicted: list[int] | None = None) -> tuple[torch.Tensor, list[int], list[int]]:
        images, labels = self.data.test_images[:SAMPLES], self.data.test_labels[:SAMPLES]
        if predicted is None:
            x, _ = self.context.prepare_batch((images, labels), self.context.device, False)
            self.model.eval()
            with torch.no_grad():
                predicted = self.model(x).argmax(1).tolist()
        return images, labels.tolist(), predicted


def seed_everything(seed: int) -> None:
    """Seed the global generators (torch, CUDA, Python, NumPy) that user code may draw from.

    The split, the initial weights and the data order use their own seeded generators; this is for
    everything else. A resumed run restores the generators' states from its checkpoint instead.
    """
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
