"""Assembling an experiment from a config: data, model, optimizer, schedule, engines, handlers.

:func:`build_experiment` writes no file; :func:`~fmnist_ignite.resume.resume_experiment` builds a
run again from its own ``config.yaml``, with the changes a resume allows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from . import parallel
from .checkpoint import Checkpointer
from .config import Config, HandlerConfig
from .context import Context
from .data import ImageData, Loader, load_data, split_indices
from .data.loaders import Shard, TensorLoader
from .data.transforms import make_batch_transform
from .engine import compile_for_training, create_evaluator, create_trainer, make_prepare_batch, resolve_device
from .errors import CheckpointError, ConfigError, RunDirError
from .evaluation import build_model, load_weights
from .experiment import Experiment, RNGState
from .handlers import attach_handler
from .history import History
from .monitor import Monitor
from .optim import attach_scheduler, make_optimizer, step_after_validation
from .rundir import RunDir


def build_experiment(config: Config, data: ImageData | None = None) -> Experiment:
    """Build everything the config describes, without writing anything.

    Paths in the config are made absolute first (see :meth:`Config.with_absolute_paths`), so the
    run means the same files whatever the current folder is later. The run will go to
    ``output_dir/name``, or to the next free ``name-1``, ``name-2``, ... if that exists: building
    the same config twice gives two runs, and never touches an existing one. With ``init_from``,
    the model starts from that run's weights.

    Args:
        config: a validated config (see :func:`~fmnist_ignite.load_config`).
        data: the data set, if already loaded (else loaded from ``config.data``).

    Raises:
        ConfigError: a device, plugin or value that the config names cannot be used.
        DataError: the data set is missing or damaged.
        RunDirError, CheckpointError: ``init_from`` names no run, or weights it lacks or that do not fit.

    Example:
        Attach a handler in Python, then run::

            experiment = build_experiment(load_config("configs/base.yaml"))
            experiment.trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: print(e.state.epoch))
            metrics = experiment.run()
    """
    config = config.with_absolute_paths()
    requested = config.run_dir
    chosen = RunDir.next_free(requested).path if parallel.is_writer() else requested
    chosen = parallel.agree_on_run_dir(chosen)  # in a data-parallel run, rank 0's choice
    config = config.model_copy(update={"output_dir": str(chosen.parent), "name": chosen.name})
    return _build(config, RunDir(config.run_dir, requested), data, initialize=True)


def _build(config: Config, rundir: RunDir, data: ImageData | None, initialize: bool) -> Experiment:
    """Build the experiment of ``config`` writing to ``rundir``; ``initialize``: load ``init_from``'s weights."""
    device = resolve_device(config.device)
    processes = parallel.world_size()
    if processes > 1:
        parallel.check_batch(config.data.batch_size, processes)
        config = record_processes(config, initialize)
        if device.type == "cuda":
            device = torch.device("cuda", parallel.local_rank())
    if data is None:
        # Rank 0 first: it may download or extract the data set into data.root, which the others then read;
        # then the first process of each other machine, for its own data.root; then the rest.
        first = parallel.is_writer()
        first_here = not first and parallel.local_rank() == 0
        if not first:
            parallel.barrier()
        if not (first or first_here):
            parallel.barrier()
        data = load_data(config.data)
        if first:
            parallel.barrier()
        if first or first_here:
            parallel.barrier()
    if config.data.val_size >= len(data.train_labels):
        raise ConfigError(
            f"data.val_size={config.data.val_size} must be smaller than the {len(data.train_labels)} training images"
        )
    train_idx, val_idx = split_indices(len(data.train_labels), config.data.val_size, config.seed)
    if processes > 1:
        for key, size in (("data.val_size", config.data.val_size), ("the test split", len(data.test_labels))):
            if size < processes:
                raise ConfigError(
                    f"{key} has {size} image(s), fewer than the {processes} processes that share its evaluation; "
                    f"use at least {processes}, or fewer processes"
                )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config, data.image_shape, len(data.classes)).to(device)
    initial_weights = initialize_from(config, model) if initialize else None
    optimizer = make_optimizer(config.optimizer, model.parameters())
    prepare_batch = make_prepare_batch(data.mean, data.std, config.data.normalize)
    step_model = parallel.wrap_model(model, device)
    if config.trainer.compile:
        example, _ = prepare_batch((data.train_images[: config.data.batch_size], data.train_labels[:1]), device, False)
        step_model = compile_for_training(step_model, example)
    share = batch_share(len(train_idx), config.data.batch_size) if processes > 1 else None
    trainer = create_trainer(step_model, optimizer, device, prepare_batch, share, config.trainer.grad_clip_norm)
    evaluator = create_evaluator(model, device, prepare_batch)

    data = to_device(data, device)
    train_idx, val_idx = train_idx.to(device), val_idx.to(device)
    images, labels = data.train_images, data.train_labels
    loaders: dict[str, Loader] = {
        "train": make_loader(config, images, labels, train=True, indices=train_idx),
        "val": make_loader(config, images, labels, train=False, indices=val_idx),
        "test": make_loader(config, data.test_images, data.test_labels, train=False),
    }
    scheduler = attach_scheduler(config, optimizer, trainer, len(loaders["train"]))

    # In a data-parallel run, rank 0 alone writes; a fast_dev_run writes nothing.
    writer = parallel.is_writer() and not config.trainer.fast_dev_run
    history = History(rundir, trainer, evaluator, optimizer, write=writer)
    monitor = Monitor(model, config.monitor.metric, config.monitor.direction)
    # The run's steps at the end of each epoch, in the order they run; exact resume depends on it:
    #   1. the training step's epoch totals and NaN check (engine.EpochLoss, attached by create_trainer);
    #   2. the run's own steps (attach_run_steps): data order and clock as the epoch starts; then validation, the
    #      history record, the monitor's best, a schedule decided per epoch (plateau);
    #   3. the handlers, here: the built-ins (the epoch line first), then handlers: from YAML, then those
    #      added in Python (Experiment.add_handler);
    #   4. last, when Experiment.run starts: the processes' consensus, the training status, the
    #      checkpoint (holding every step's state for the epoch), a stop asked by a signal.
    validation = attach_run_steps(trainer, evaluator, loaders["train"], loaders["val"], history, monitor, scheduler)
    # What a checkpoint holds: these, then each stateful handler under its name (attach_handler), then
    # the training status (Experiment) and the checkpointer's own bookkeeping.
    core = {"model": model, "optimizer": optimizer, "trainer": trainer, "rng": RNGState(), "scheduler": scheduler}
    state = {name: part for name, part in {**core, "history": history, "monitor": monitor}.items() if part is not None}

    context = Context(
        config=config,
        rundir=rundir,
        device=device,
        model=model,
        optimizer=optimizer,
        trainer=trainer,
        evaluator=evaluator,
        classes=data.classes,
        prepare_batch=prepare_batch,
        history=history,
        monitor=monitor,
        state=state,
    )
    handlers: dict[str, Any] = {}
    builtins = builtin_handlers(config, writer)
    for name, spec in [*builtins, *((f"handlers[{i}]", s) for i, s in enumerate(config.handlers))]:
        handlers[name] = attach_handler(context, spec, name)
    checkpointer = Checkpointer(
        rundir,
        context.state,
        trainer,
        monitor,
        config.checkpoint.n_saved,
        write=writer,
        config=lambda: context.config.to_dict(),
    )
    experiment = Experiment(config, context, data, loaders, handlers, checkpointer)
    experiment.initial_weights = initial_weights
    experiment.validation = validation
    return experiment


def attach_run_steps(
    trainer: Engine,
    evaluator: Engine,
    train: Loader,
    val: Loader,
    history: History,
    monitor: Monitor,
    scheduler: Any = None,
) -> Validation:
    """The run's own steps, before any handler: the epoch's data order and clock as it starts; when it
    completes, validation, the history record, the monitor's best, and a schedule that follows the
    epoch's result (``plateau``). Returns the validation step."""
    validation = Validation(evaluator, val)
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: train.set_epoch(e.state.epoch))
    trainer.add_event_handler(Events.EPOCH_STARTED, history.start_epoch)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, validation)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, history.complete_epoch)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda: monitor.update(history.records))
    if scheduler is not None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda: step_after_validation(scheduler, history.records[-1]))
    return validation


class Validation:
    """The validation step at each epoch's end: the evaluator runs on the validation split.

    A fused sweep (:mod:`fmnist_ignite.sweep.fused`) validates all its trials in one pass and hands each its
    metrics (:meth:`provide`) before the epoch completes: the evaluator's ``state.metrics`` then get them
    instead of a pass of its own.
    """

    def __init__(self, evaluator: Engine, loader: Loader) -> None:
        self.evaluator, self.loader = evaluator, loader
        self.provided: dict[str, Any] | None = None

    def provide(self, metrics: dict[str, Any]) -> None:
        """The metrics of the next validation, computed elsewhere on the same split and weights."""
        self.provided = metrics

    def __call__(self) -> None:
        if self.provided is None:
            self.evaluator.run(self.loader)
            return
        self.evaluator.state.metrics = self.provided
        self.provided = None


def record_processes(config: Config, new_run: bool) -> Config:
    """A new data-parallel run records how many machines it has and how many processes on each (``torchrun``'s or
    its own); a resumed one must have as many as it had.

    Raises:
        ConfigError: a resume with other numbers (it would not continue exactly).
    """
    here, machines = parallel.processes_here(), parallel.machines()
    saved = config.distributed
    if (saved.nproc_per_node, saved.nnodes) == (here, machines):
        return config
    if not new_run:
        raise ConfigError(
            f"this run trained on {layout(saved.nproc_per_node, saved.nnodes)} and is resumed on "
            f"{layout(here, machines)}: it would not continue exactly; resume it in as many "
            f"(torchrun --nnodes {saved.nnodes} --nproc_per_node {saved.nproc_per_node})"
        )
    return config.model_copy(
        update={"distributed": saved.model_copy(update={"nproc_per_node": here, "nnodes": machines})}
    )


def layout(processes: int | None, machines: int) -> str:
    """``1 machine × 2 processes``, ``2 machines × 1 process``."""
    return f"{machines} machine{'s' if machines != 1 else ''} × {processes} process{'es' if processes != 1 else ''}"


def batch_share(n_train: int, batch_size: int) -> Callable[[Engine, int], float]:
    """For a data-parallel run: the share of the whole batch that a process's ``n`` images are, at this iteration.

    Every batch has ``batch_size`` images but the last of an epoch, which has the remainder.
    """
    full, rest = divmod(n_train, batch_size)

    def share(engine: Engine, n: int) -> float:
        within = (engine.state.iteration - 1) % (engine.state.epoch_length or 1)
        return n / (batch_size if within < full else rest)

    return share


def initialize_from(config: Config, model: torch.nn.Module) -> Path | None:
    """Load the weights ``config.init_from`` names into ``model``; returns their file (``None`` without it).

    Raises:
        RunDirError: ``init_from`` is not a run directory.
        CheckpointError: that run has no such weights, or they do not fit this model.
    """
    if config.init_weights is None:
        return None
    run, which = config.init_weights
    source = RunDir(run)
    try:
        source.require()
        path = source.weights(which)
    except (RunDirError, CheckpointError) as err:
        raise type(err)(f"init_from: {err}") from None
    load_weights(model, path)
    return path


def builtin_handlers(config: Config, writer: bool = True) -> list[tuple[str, HandlerConfig]]:
    """The built-in handlers a config asks for, as the same entries a user writes under ``handlers:``.

    The epoch's line comes first, so that early stopping's line follows the epoch it speaks of.
    A process that does not write (rank 1 and above in a data-parallel run) draws no progress bar
    and logs to neither TensorBoard nor MLflow.
    """
    bar = config.logging.progress_bar if writer else False
    specs = [("progress", HandlerConfig(target="progress", kwargs={"bar": bar}))]
    if config.early_stopping.enabled:  # the section's other keys are the handler's keyword arguments
        kwargs = config.early_stopping.model_dump(exclude={"enabled"})
        specs.append(("early_stopping", HandlerConfig(target="early_stopping", kwargs=kwargs)))
    if config.logging.tensorboard and writer:
        specs.append(
            ("tensorboard", HandlerConfig(target="tensorboard", kwargs={"log_every": config.logging.log_every}))
        )
    if config.logging.mlflow and writer:
        kwargs = {
            "uri": config.logging.mlflow_uri,
            "experiment": config.logging.mlflow_experiment,
            "register": config.logging.mlflow_register,
        }
        specs.append(("mlflow", HandlerConfig(target="mlflow", kwargs=kwargs)))
    return specs


def to_device(data: ImageData, device: torch.device) -> ImageData:
    """The data set's tensors on ``device`` (the uint8 images are small enough for any GPU)."""
    if all(t.device == device for t in (data.train_images, data.train_labels, data.test_images, data.test_labels)):
        return data  # as it is: a copy would check every label again (a sweep builds many runs on one data set)
    return replace(
        data,
        train_images=data.train_images.to(device),
        train_labels=data.train_labels.to(device),
        test_images=data.test_images.to(device),
        test_labels=data.test_labels.to(device),
    )


def make_loader(
    config: Config, images: torch.Tensor, labels: torch.Tensor, train: bool, indices: torch.Tensor | None = None
) -> Loader:
    """A loader over ``images[indices]`` (all images when ``indices`` is None), shuffled each epoch for training.

    In a data-parallel run each process's loader gives its share (see :class:`~fmnist_ignite.data.loaders.Shard`);
    with ``trainer.fast_dev_run``, each loader gives its first batch only.
    The training loader applies ``data.transforms`` to its batches (checked first on one of ``images``).

    Raises:
        ConfigError: the transforms fail on the images or change their shape or type.
    """
    batch_size = config.data.batch_size if train else config.data.eval_batch_size
    shard = Shard(parallel.rank(), parallel.world_size())
    limit = 1 if config.trainer.fast_dev_run else None
    transform = make_batch_transform(config.data.transforms, config.seed) if train else None
    if transform is not None and len(images):
        transform.check(images[0])
    return TensorLoader(
        images,
        labels,
        batch_size,
        shuffle=train,
        seed=config.seed,
        indices=indices,
        shard=shard,
        limit=limit,
        transform=transform,
    )
