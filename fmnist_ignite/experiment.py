"""Building an experiment from a config, running it, and resuming it.

:func:`build_experiment` assembles data, model, optimizer, schedule, engines and handlers without
touching the disk; :meth:`Experiment.run` creates the run directory, trains, then evaluates on the
test set and writes ``metrics.json`` and ``model.pt``; :func:`resume_experiment` rebuilds a run
from its own ``config.yaml`` and continues it from its newest readable checkpoint.
"""

from __future__ import annotations

import inspect
import logging
import os
import random
import signal
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, cast

import torch
from ignite.engine import Engine, Events
from ignite.handlers import CosineAnnealingScheduler, LRScheduler

from .config import Config, HandlerConfig
from .context import Context
from .data.datasets import ImageData, load_data
from .data.loaders import EpochDataLoader, TensorLoader
from .engine import compile_for_training, create_evaluator, create_trainer, make_prepare_batch, resolve_device
from .errors import ConfigError, RunDirError
from .fileio import atomic_torch_save, atomic_write_json, atomic_write_text, current_umask
from .handlers import Checkpointing, EarlyStopping, History, TensorBoard
from .inspect_runs import load_run_config
from .interrupt import Interrupted, StopRequest, stop_on_signals
from .registry import HANDLERS, MODELS
from .reports import (
    classification_report,
    confusion_figure,
    format_report,
    history_figure,
    predictions_figure,
    save_figure,
)

logger = logging.getLogger(__name__)

Loader = TensorLoader | EpochDataLoader


class RNGState:
    """The global random generators (torch, CUDA, Python) as one stateful object for checkpoints.

    The data order does not depend on them (it is seeded per epoch), but user code may.
    """

    def state_dict(self) -> dict[str, Any]:
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["torch"].cpu())
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))


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
    ) -> None:
        self.config = config
        self.context = context
        self.data = data
        self.loaders = loaders
        self.handlers = handlers
        self.resuming = False
        self.stop_request = StopRequest()
        self._checkpointing_attached = False
        self._user_handlers = len(config.handlers)

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
    def run_dir(self) -> Path:
        """Where the run writes its files."""
        return self.context.run_dir

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per completed epoch (see :class:`~fmnist_ignite.handlers.History`)."""
        history: History = self.handlers["history"]
        return history.records

    def add_handler(
        self,
        target: str | Callable[..., Any],
        event: str = "EPOCH_COMPLETED",
        engine: Literal["trainer", "evaluator"] = "trainer",
        **kwargs: Any,
    ) -> Any:
        """Attach a handler as a config entry would (a registered name, a dotted path, or the object itself).

        Returns:
            the handler instance for a class, or the function.
        """
        name = f"handlers[{self._user_handlers}]"
        spec = HandlerConfig(target=target if isinstance(target, str) else "<python>", event=event, engine=engine)
        handler = attach_handler(self.context, spec, name, target=None if isinstance(target, str) else target, **kwargs)
        self._user_handlers += 1
        self.handlers[name] = handler
        return handler

    def run(self) -> dict[str, Any]:
        """Train (or continue training), evaluate on the test set, and write the run's files.

        Returns:
            the test metrics, as written to ``metrics.json``.

        Raises:
            RunDirError: a new run's directory exists already, or a resumed run's is locked.
            Interrupted: SIGINT or SIGTERM stopped training (after saving the epoch, or at once on
                a second signal); the message says how to resume.
        """
        if not self.resuming:
            create_run_dir(self.run_dir, self.config)
            atomic_write_json(self.run_dir / "data.json", self.input_description())
            seed_everything(self.config.seed)
        self._attach_checkpointing()
        with run_lock(self.run_dir), stop_on_signals(self.trainer, self.stop_request):
            if self.resuming:
                self._load_newest_checkpoint()
            if not self.training_done():
                try:
                    self.trainer.run(self.loaders["train"], max_epochs=self.config.trainer.max_epochs)
                except Interrupted as err:
                    message = f"{err} during epoch {self.trainer.state.epoch}; {self.resume_hint()}"
                    raise Interrupted(message, err.signum) from None
            signum = self.stop_request.signum
            if signum is not None and not self.training_done():
                raise Interrupted(
                    f"{signal.Signals(signum).name} received: stopped after epoch {self.trainer.state.epoch}, "
                    f"which is saved; {self.resume_hint()}",
                    signum,
                )
            return self.finish()

    def _attach_checkpointing(self) -> None:
        # Last at EPOCH_COMPLETED, so the checkpoint holds every handler's update for the epoch,
        # including handlers attached in Python after build_experiment.
        if not self._checkpointing_attached:
            self.trainer.add_event_handler(Events.EPOCH_COMPLETED, self.handlers["checkpoint"])
            self.trainer.add_event_handler(Events.EPOCH_COMPLETED, self.stop_request.stop_if_asked)
            self._checkpointing_attached = True

    def _load_newest_checkpoint(self) -> None:
        remove_temporary_files(self.run_dir)
        checkpointing: Checkpointing = self.handlers["checkpoint"]
        if not checkpointing.candidates():
            logger.info("Resuming %s: no epoch was saved yet, so training starts from epoch 1", self.run_dir)
            seed_everything(self.config.seed)
            return
        path = checkpointing.load_latest()
        logger.info("Resuming %s from %s (epoch %d)", self.run_dir, path.name, self.trainer.state.epoch)

    def resume_hint(self) -> str:
        """How to continue this run from its newest checkpoint."""
        return f"resume with 'python -m fmnist_ignite --resume {self.run_dir}'"

    def input_description(self) -> dict[str, Any]:
        """What the model expects as input and what its outputs mean (``data.json``; used by ``predict``)."""
        return {
            "classes": list(self.data.classes),
            "image_shape": list(self.data.image_shape),
            "mean": self.data.mean,
            "std": self.data.std,
            "normalize": self.config.data.normalize,
        }

    def training_done(self) -> bool:
        """Whether the trainer reached ``max_epochs`` or early stopping ended it."""
        stopper: EarlyStopping | None = self.handlers.get("early_stopping")
        return self.trainer.state.epoch >= self.config.trainer.max_epochs or bool(stopper and stopper.stopped)

    def finish(self) -> dict[str, Any]:
        """Restore the best weights if asked, evaluate on the test set, write the results.

        Writes ``model.pt``, ``report.json``, ``history.png``, ``confusion_matrix.png``,
        ``predictions.png`` and, last (it marks the run as finished), ``metrics.json``; logs the
        per-class report; and, with TensorBoard on, adds the figures and the hyperparameters.
        """
        stopper: EarlyStopping | None = self.handlers.get("early_stopping")
        records = self.history
        if stopper is not None and stopper.restore_best_weights:
            stopper.restore_best()
            best_epoch, weights = stopper.best_epoch, "best"
        else:
            best = max(records, key=lambda r: r["val_accuracy"], default={"epoch": 0})
            best_epoch, weights = best["epoch"], "last"
        test = evaluate(self.model, self.loaders["test"], self.context, len(self.data.classes))
        best_record = next((r for r in records if r["epoch"] == best_epoch), None)
        metrics = {
            "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            "best_epoch": best_epoch,
            "best_val_accuracy": best_record["val_accuracy"] if best_record else None,
            "epochs_trained": len(records),
            "weights": weights,
            "per_class_accuracy": test["per_class_accuracy"],
        }
        atomic_torch_save(self.run_dir / "model.pt", self.model.state_dict())
        report = classification_report(test["confusion"], self.data.classes)
        atomic_write_json(self.run_dir / "report.json", {"split": "test", "weights": weights, **report})
        figures = {
            "history": history_figure(records, best_epoch if weights == "best" else None),
            "confusion_matrix": confusion_figure(test["confusion"], self.data.classes),
            "predictions": self._predictions_figure(),
        }
        tensorboard: TensorBoard | None = self.handlers.get("tensorboard")
        if tensorboard is not None:
            tensorboard.log_results(figures, self.config, metrics)
        for name, figure in figures.items():
            save_figure(figure, self.run_dir / f"{name}.png")
        atomic_write_json(self.run_dir / "metrics.json", metrics)
        logger.info("%s", format_report(report))
        logger.info(
            "Test (%s weights, epoch %d): accuracy %.4f loss %.4f",
            weights,
            best_epoch,
            metrics["test_accuracy"],
            metrics["test_loss"],
        )
        return metrics

    def _predictions_figure(self, count: int = 32) -> Any:
        images, labels = self.data.test_images[:count], self.data.test_labels[:count]
        x, _ = self.context.prepare_batch((images, labels), self.context.device, False)
        self.model.eval()
        with torch.no_grad():
            predicted = self.model(x).argmax(1).tolist()
        return predictions_figure(images, labels.tolist(), predicted, self.data.classes)


def evaluate(model: torch.nn.Module, loader: Loader, context: Context, num_classes: int) -> dict[str, Any]:
    """Accuracy, loss, confusion matrix and per-class accuracy of ``model`` on ``loader``."""
    evaluator = create_evaluator(model, context.device, context.prepare_batch, num_classes)
    metrics = evaluator.run(loader).metrics
    confusion = metrics["confusion"].cpu().double()
    per_class = (confusion.diag() / confusion.sum(1).clamp(min=1)).tolist()
    return {
        "accuracy": float(metrics["accuracy"]),
        "loss": float(metrics["loss"]),
        "confusion": confusion.long().tolist(),
        "per_class_accuracy": dict(zip(context.classes, per_class, strict=True)),
    }


def create_run_dir(run_dir: Path, config: Config) -> None:
    """Create ``run_dir`` with its ``config.yaml``, all at once: it appears whole or not at all.

    Raises:
        RunDirError: it exists already, or the output folder cannot be written.
    """
    if run_dir.exists():
        raise RunDirError(
            f"run directory {run_dir} exists already; continue it with 'python -m fmnist_ignite --resume {run_dir}' "
            f"or start another run with name=<new-name>"
        )
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}.partial-"))
        os.chmod(staging, 0o777 & ~current_umask())
        atomic_write_text(staging / "config.yaml", config.to_yaml())
        os.rename(staging, run_dir)
    except OSError as err:
        raise RunDirError(
            f"cannot create run directory {run_dir}: {err.strerror or err}; choose a writable output_dir"
        ) from None


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` while training; the OS releases it if the process dies."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        yield
        return
    with open(run_dir / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(f"{run_dir} is in use by another training process; wait for it or stop it") from None
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_temporary_files(run_dir: Path) -> None:
    """Delete what a killed process may have left half-written: never a file a run reads."""
    leftovers = [*run_dir.glob(".*.tmp"), *run_dir.glob("checkpoints/tmp*")]
    for path in leftovers:
        logger.info("Removing %s, left half-written by an interrupted process", path)
        path.unlink(missing_ok=True)


def seed_everything(seed: int) -> None:
    """Seed the global generators (torch, CUDA, Python, NumPy) that user code may draw from.

    The split, the initial weights and the data order use their own seeded generators; this is for
    everything else. A resumed run restores the generators' states from its checkpoint instead.
    """
    import numpy as np

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The seeded random split of ``range(n)``: ``(train, validation)`` indices, validation ``val_size`` long.

    The loaders read the images through these indices, so the images are held once.
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[val_size:], order[:val_size]


def to_device(data: ImageData, device: torch.device) -> ImageData:
    """The data set's tensors on ``device`` (the uint8 images are small enough for any GPU)."""
    return replace(
        data,
        train_images=data.train_images.to(device),
        train_labels=data.train_labels.to(device),
        test_images=data.test_images.to(device),
        test_labels=data.test_labels.to(device),
    )


def make_optimizer(config: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer named in ``config.optimizer``."""
    opt = config.optimizer
    if opt.name == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=opt.lr,
            momentum=opt.momentum,
            nesterov=opt.nesterov and opt.momentum > 0,
            weight_decay=opt.weight_decay,
        )
    optimizer_class = torch.optim.Adam if opt.name == "adam" else torch.optim.AdamW
    return optimizer_class(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)


def attach_scheduler(config: Config, optimizer: torch.optim.Optimizer, trainer: Engine, epoch_length: int) -> Any:
    """Attach the learning-rate schedule (updated every iteration); ``None`` for ``scheduler.name: none``."""
    sched = config.scheduler
    if sched.name == "none":
        return None
    if sched.name == "cosine":
        total = max(2, epoch_length * config.trainer.max_epochs)
        scheduler: Any = CosineAnnealingScheduler(
            optimizer, "lr", start_value=config.optimizer.lr, end_value=sched.min_lr, cycle_size=total
        )
    else:
        step = torch.optim.lr_scheduler.StepLR(optimizer, step_size=sched.step_size * epoch_length, gamma=sched.gamma)
        scheduler = LRScheduler(step)
    trainer.add_event_handler(Events.ITERATION_STARTED, scheduler)
    return scheduler


def make_loader(
    config: Config, images: torch.Tensor, labels: torch.Tensor, train: bool, indices: torch.Tensor | None = None
) -> Loader:
    """A loader of the configured kind over ``images[indices]`` (all images when ``indices`` is None)."""
    data = config.data
    batch_size = data.batch_size if train else data.eval_batch_size
    if data.loader == "dataloader":
        return EpochDataLoader(
            images, labels, batch_size, train, seed=config.seed, num_workers=data.num_workers, indices=indices
        )
    return TensorLoader(images, labels, batch_size, shuffle=train, seed=config.seed, indices=indices)


def builtin_handlers(config: Config) -> list[HandlerConfig]:
    """The built-in handlers a config asks for, as the same entries a user writes under ``handlers:``."""
    specs = [HandlerConfig(target="history")]
    es = config.early_stopping
    if es.enabled:
        kwargs = {k: getattr(es, k) for k in ("patience", "min_delta", "metric", "mode", "restore_best")}
        specs.append(HandlerConfig(target="early_stopping", kwargs=kwargs))
    specs.append(HandlerConfig(target="best_model"))
    specs.append(HandlerConfig(target="progress", kwargs={"bar": config.logging.progress_bar}))
    if config.logging.tensorboard:
        specs.append(HandlerConfig(target="tensorboard", kwargs={"log_every": config.logging.log_every}))
    return specs


def attach_handler(
    context: Context, spec: HandlerConfig, where: str, target: Callable[..., Any] | None = None, **extra: Any
) -> Any:
    """Resolve, check and attach one handler entry; errors name the entry (``handlers[2].kwargs``).

    A class is instantiated once with ``(context, **kwargs)``; the instance is attached with its own
    ``attach(engine, event)`` if it has one, else called with the engine at each event. A function
    is called at each event with ``(context, **kwargs)``. An instance with ``state_dict`` and
    ``load_state_dict`` joins the checkpoints.
    """
    if target is None:
        try:
            target = HANDLERS.get(spec.target)
        except ConfigError as err:
            raise ConfigError(f"{where}.target: {err}") from None
    kwargs = {**spec.kwargs, **extra}
    if not callable(target):
        raise ConfigError(f"{where}.target: '{spec.target}' is a {type(target).__name__}, not a class or function")
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(context, **kwargs)
        except TypeError as err:
            raise ConfigError(f"{where}.kwargs: {spec.target} {err} (it takes {signature})") from None
    engine = context.trainer if spec.engine == "trainer" else context.evaluator
    event = spec.ignite_event()
    if inspect.isclass(target):
        try:
            handler: Any = cast(Any, target)(context, **kwargs)
        except Exception as err:  # the handler's own check of its arguments
            raise ConfigError(f"{where}: {spec.target} cannot be created: {type(err).__name__}: {err}") from None
        if hasattr(handler, "attach"):
            handler.attach(engine, event)
        else:
            engine.add_event_handler(event, handler)
        if hasattr(handler, "state_dict") and hasattr(handler, "load_state_dict"):
            context.state[where] = handler
        return handler
    function = target
    engine.add_event_handler(event, lambda: function(context, **kwargs))
    return function


def build_experiment(config: Config, data: ImageData | None = None) -> Experiment:
    """Build everything the config describes, without writing anything.

    Args:
        config: a validated config (see :func:`~fmnist_ignite.load_config`).
        data: the data set, if already loaded (else loaded from ``config.data``).

    Raises:
        ConfigError: a device, plugin or value that the config names cannot be used.
        DataError: the data set is missing or damaged.

    Example:
        Attach a handler in Python, then run::

            experiment = build_experiment(load_config("configs/base.yaml"))
            experiment.trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: print(e.state.epoch))
            metrics = experiment.run()
    """
    device = resolve_device(config.device)
    data = data if data is not None else load_data(config.data)
    if config.data.val_size >= len(data.train_labels):
        raise ConfigError(
            f"data.val_size={config.data.val_size} must be smaller than the {len(data.train_labels)} training images"
        )
    train_idx, val_idx = split_indices(len(data.train_labels), config.data.val_size, config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = _build_model(config, data).to(device)
    optimizer = make_optimizer(config, model)
    prepare_batch = make_prepare_batch(data.mean, data.std, config.data.normalize)
    step_model = model
    if config.trainer.compile:
        example, _ = prepare_batch((data.train_images[: config.data.batch_size], data.train_labels[:1]), device, False)
        step_model = compile_for_training(model, example)
    trainer = create_trainer(step_model, optimizer, device, prepare_batch)
    evaluator = create_evaluator(model, device, prepare_batch)

    if config.data.loader == "tensor":
        data = to_device(data, device)
        train_idx, val_idx = train_idx.to(device), val_idx.to(device)
    images, labels = data.train_images, data.train_labels
    loaders: dict[str, Loader] = {
        "train": make_loader(config, images, labels, train=True, indices=train_idx),
        "val": make_loader(config, images, labels, train=False, indices=val_idx),
        "test": make_loader(config, data.test_images, data.test_labels, train=False),
    }
    scheduler = attach_scheduler(config, optimizer, trainer, len(loaders["train"]))
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: loaders["train"].set_epoch(e.state.epoch))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda: evaluator.run(loaders["val"]))

    context = Context(
        config=config,
        run_dir=config.run_dir,
        device=device,
        model=model,
        optimizer=optimizer,
        trainer=trainer,
        evaluator=evaluator,
        classes=data.classes,
        prepare_batch=prepare_batch,
    )
    context.state.update(model=model, optimizer=optimizer, trainer=trainer, rng=RNGState())
    if scheduler is not None:
        context.state["scheduler"] = scheduler
    handlers: dict[str, Any] = {}
    for spec in builtin_handlers(config):
        handlers[spec.target] = attach_handler(context, spec, spec.target)
    for i, spec in enumerate(config.handlers):
        handlers[f"handlers[{i}]"] = attach_handler(context, spec, f"handlers[{i}]")
    # Created now (resume needs it), attached when the run starts: last, after any handler added in Python.
    handlers["checkpoint"] = HANDLERS.get("checkpoint")(context, n_saved=config.checkpoint.n_saved)
    return Experiment(config, context, data, loaders, handlers)


def resume_experiment(run_dir: str | Path, data: ImageData | None = None) -> Experiment:
    """Rebuild a run from ``RUN_DIR/config.yaml``; its :meth:`~Experiment.run` continues from the newest checkpoint.

    Raises:
        RunDirError: ``run_dir`` is not a run directory, or the run has finished.
    """
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    if (run_dir / "metrics.json").exists():
        raise RunDirError(f"the run in {run_dir} has finished (metrics.json exists); nothing to resume")
    experiment = build_experiment(config, data)
    experiment.resuming = True
    return experiment


def _build_model(config: Config, data: ImageData) -> torch.nn.Module:
    build = MODELS.get(config.model.name)
    try:
        model = build(data.image_shape, len(data.classes), **config.model.kwargs)
    except TypeError as err:
        raise ConfigError(f"model.kwargs: {config.model.name} cannot be built: {err}") from None
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model.name: '{config.model.name}' returned {type(model).__name__}, not a torch.nn.Module")
    return model
