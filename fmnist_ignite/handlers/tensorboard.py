"""TensorBoard logs in ``RUN_DIR/tb``, laid out as Keras and Lightning lay them out."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ignite.engine import Engine, Events

from ..config import LoggingConfig, flatten
from ..context import Context
from ..events import RunEvents
from ..registry import HANDLERS

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

HPARAMS = (
    "model.name",
    "optimizer.name",
    "optimizer.lr",
    "optimizer.momentum",
    "optimizer.weight_decay",
    "scheduler.name",
    "data.batch_size",
    "trainer.max_epochs",
    "seed",
    "init_from",
)
RESULTS = ("test_accuracy", "test_loss", "best_value", "best_epoch", "epochs_trained")
F = TypeVar("F", bound=Callable[..., Any])


def _naming_the_folder(method: F) -> F:
    """An ``OSError`` of TensorBoard's writers (disk full) names the folder they write to.

    The writers write from a thread of their own and hand its error to their next call, without
    a file name: the run's one line would not say where.
    """

    @functools.wraps(method)
    def wrapper(self: TensorBoard, *args: Any) -> Any:
        try:
            return method(self, *args)
        except OSError as err:
            if err.filename:
                raise
            folder = self.context.rundir.tensorboard
            raise OSError(err.errno, f"{err.strerror or err} (TensorBoard logs)", str(folder)) from err

    return wrapper  # type: ignore[return-value]


@functools.cache
def fast_checksums() -> bool:
    """TensorBoard's event records with their CRC-32C computed by ``google-crc32c``'s C code; whether it is.

    Without TensorFlow, TensorBoard's writer computes each record's checksum in Python, a byte at a
    time (about 0.3 s per MB from its writing thread, holding the interpreter's lock): the run's three
    pictures (0.2 MB) cost a run 50 ms and a 16-trial sweep 0.8 s. The records are the same bytes
    either way (the test compares the two checksums). Without the C code (a platform without a
    wheel), TensorBoard's own is kept.
    """
    try:
        import google_crc32c
    except ImportError:
        return False
    if google_crc32c.implementation != "c":
        return False
    from tensorboard.summary.writer import record_writer

    def masked_crc32c(data: bytes) -> int:  # TensorBoard's masking of the checksum, on google-crc32c's value
        crc = google_crc32c.value(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    record_writer.masked_crc32c = masked_crc32c
    return True


@HANDLERS.register("tensorboard")
class TensorBoard:
    """Writes TensorBoard logs: training and validation as two runs sharing their tags, then the results.

    ``tb/train``
        ``batch_loss`` every ``log_every`` iterations; at each epoch's end ``epoch_loss``,
        ``epoch_accuracy`` (the history's ``train_*`` columns), ``epoch_learning_rate`` and ``epoch``.
    ``tb/validation``
        ``epoch_loss``, ``epoch_accuracy`` (and ``epoch_<name>`` for a metric a handler adds): the
        same tags as training, so TensorBoard overlays the two curves.
    ``tb`` itself
        at the end of the run, the pictures, and the hyperparameters with the test metrics
        (``test_accuracy``, ``test_loss``, ``best_value``, ...) in the same run: the HPARAMS tab.

    Every point's step is the training iteration (Lightning's global step), so points logged per
    batch and per epoch share one axis. The writers are opened when training starts with
    ``purge_step`` set just after the resumed iteration: what an interrupted process logged after
    its last checkpoint is dropped, and no step appears twice. ``tensorboard --logdir runs``
    shows every run.

    Args:
        context: the experiment context.
        log_every: iterations between ``batch_loss`` points (each point reads the loss from the device);
            ``logging.log_every``.
    """

    fusion_aware = True  # driven by its trainer's events alone: a fused sweep may train it (sweep.fused)

    def __init__(self, context: Context, log_every: int = LoggingConfig.default("log_every")) -> None:
        self.context = context
        self.log_every = log_every
        self.writers: dict[str, SummaryWriter] = {}

    def attach(self, engine: Engine, event: Any) -> None:
        engine.add_event_handler(Events.STARTED, self._open)
        engine.add_event_handler(Events.COMPLETED, self.close)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._close_and_reraise)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.log_every), self._log_iteration)
        engine.add_event_handler(event, self)
        engine.add_event_handler(RunEvents.RUN_FINISHED, self._log_results)

    @_naming_the_folder
    def _open(self, engine: Engine) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports TensorBoard: only when used

        fast_checksums()
        self.close()
        rundir, purge_step = self.context.rundir, engine.state.iteration + 1
        self.writers = {
            name: SummaryWriter(log_dir=str(rundir.tensorboard_run(name)), purge_step=purge_step)
            for name in ("train", "validation")
        }

    @_naming_the_folder
    def _log_iteration(self, engine: Engine) -> None:
        if self.writers:
            loss = float(engine.state.output)  # type: ignore[arg-type]
            self.writers["train"].add_scalar("batch_loss", loss, engine.state.iteration)

    @_naming_the_folder
    def __call__(self, engine: Engine) -> None:
        if not self.writers:
            return
        step, latest = engine.state.iteration, self.context.history.records[-1]
        train, validation = self.writers["train"], self.writers["validation"]
        for column, value in latest.items():
            for prefix, writer in (("train_", train), ("val_", validation)):
                if column.startswith(prefix):
                    writer.add_scalar(f"epoch_{column.removeprefix(prefix)}", value, step)
        train.add_scalar("epoch_learning_rate", latest["lr"], step)
        train.add_scalar("epoch", engine.state.epoch, step)
        for writer in self.writers.values():
            writer.flush()

    @_naming_the_folder
    def _log_results(self, engine: Engine) -> None:
        """At the end of a run: the pictures, and the hyperparameters with the test metrics, in ``tb`` itself.

        The pictures go in as the PNG files the run wrote, byte for byte (not decoded and encoded again).
        """
        from PIL import Image
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        fast_checksums()
        results = engine.state.results  # type: ignore[attr-defined]
        settings = flatten(self.context.config.to_dict())
        values = {key: "" if settings[key] is None else settings[key] for key in HPARAMS}
        metrics = {key: float(results["metrics"][key] or 0) for key in RESULTS}
        step = engine.state.iteration
        # purge_step: a run that was stopped while writing these, then resumed, writes them once.
        with SummaryWriter(log_dir=str(self.context.rundir.tensorboard), purge_step=step) as writer:
            assert writer.file_writer is not None
            for name, path in results["figures"].items():
                with Image.open(path) as image:  # reads the header only
                    (width, height), channels = image.size, len(image.getbands())
                picture = Summary.Image(
                    height=height, width=width, colorspace=channels, encoded_image_string=path.read_bytes()
                )
                writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=name, image=picture)]), step)
            for summary in hparams(values, metrics):
                writer.file_writer.add_summary(summary, step)
            for key, value in metrics.items():
                writer.add_scalar(key, value, step)

    def _close_and_reraise(self, engine: Engine, error: BaseException) -> None:
        # Ignite stops propagating an exception once any EXCEPTION_RAISED handler exists.
        with contextlib.suppress(OSError):  # the disk that failed a write fails the last flush too: report the first
            self.close()
        raise error

    @_naming_the_folder
    def close(self, *_: Any) -> None:
        writers, self.writers = list(self.writers.values()), {}
        failed: OSError | None = None
        for writer in writers:  # each one is closed, even after another failed
            try:
                writer.close()
            except OSError as err:
                failed = failed or err
        if failed is not None:
            raise failed
