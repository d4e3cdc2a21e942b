"""TensorBoard logging through Ignite's ``TensorboardLogger``, into ``RUN_DIR/tb``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ignite.engine import Engine, Events

from ..context import Context
from ..events import RunEvents
from ..registry import HANDLERS

if TYPE_CHECKING:
    from ignite.handlers.tensorboard_logger import TensorboardLogger


@HANDLERS.register("tensorboard")
class TensorBoard:
    """Logs the train loss every ``log_every`` iterations, and validation loss, accuracy and learning rate per epoch.

    The writer is opened when training starts (not when the experiment is built) and closed when
    it ends. ``tensorboard --logdir runs`` then shows every run.

    Args:
        context: the experiment context.
        log_every: iterations between train-loss points (each point reads the loss from the device).
    """

    def __init__(self, context: Context, log_every: int = 50) -> None:
        self.context = context
        self.log_every = log_every
        self.logger: TensorboardLogger | None = None

    def attach(self, engine: Engine, event: Any) -> None:
        engine.add_event_handler(Events.STARTED, self._open)
        engine.add_event_handler(Events.COMPLETED, self.close)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._close_and_reraise)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.log_every), self._log_iteration)
        engine.add_event_handler(event, self)
        engine.add_event_handler(RunEvents.RUN_FINISHED, self._log_results)

    def _open(self) -> None:
        from ignite.handlers.tensorboard_logger import TensorboardLogger  # imports TensorBoard: only when used

        self.logger = TensorboardLogger(log_dir=str(self.context.rundir.tensorboard))

    def _log_iteration(self, engine: Engine) -> None:
        if self.logger is not None:
            loss = float(engine.state.output)  # type: ignore[arg-type]
            self.logger.writer.add_scalar("train/batch_loss", loss, engine.state.iteration)

    def __call__(self, engine: Engine) -> None:
        if self.logger is None:
            return
        epoch = engine.state.epoch
        writer = self.logger.writer
        writer.add_scalar("train/loss", float(engine.state.metrics["train_loss"]), epoch)
        for name, value in self.context.evaluator.state.metrics.items():
            writer.add_scalar(f"val/{name}", float(value), epoch)
        writer.add_scalar("lr", float(self.context.optimizer.param_groups[0]["lr"]), epoch)
        writer.flush()

    def _log_results(self, engine: Engine) -> None:
        """At the end of a run: the pictures, and the hyperparameters with the test metrics."""
        import numpy as np
        from PIL import Image
        from torch.utils.tensorboard import SummaryWriter

        results = engine.state.results  # type: ignore[attr-defined]
        config = self.context.config
        with SummaryWriter(log_dir=str(self.context.rundir.tensorboard)) as writer:
            for name, path in results["figures"].items():
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
                writer.add_image(f"results/{name}", pixels, dataformats="HWC")
            hparams = {
                "optimizer": config.optimizer.name,
                "lr": config.optimizer.lr,
                "batch_size": config.data.batch_size,
                "scheduler": config.scheduler.name,
                "seed": config.seed,
                "max_epochs": config.trainer.max_epochs,
            }
            metrics = results["metrics"]
            final = {f"hparam/{k}": v for k, v in metrics.items() if isinstance(v, int | float) and v is not None}
            writer.add_hparams(hparams, final, run_name="hparams")

    def _close_and_reraise(self, engine: Engine, error: BaseException) -> None:
        # Ignite stops propagating an exception once any EXCEPTION_RAISED handler exists.
        self.close()
        raise error

    def close(self, *_: Any) -> None:
        if self.logger is not None:
            self.logger.close()
            self.logger = None
