"""The configuration: a validated, immutable tree built from YAML and ``key=value`` overrides.

The schema is the single source of truth: validation, defaults and the configuration reference
in the docs all come from the classes below. Every problem becomes a :class:`ConfigError` whose
message names the file, the key path and what is allowed.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from ignite.engine import Events
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError, did_you_mean
from .registry import DATASETS, MODELS, OPTIMIZERS, SCHEDULERS

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
FLOAT32_MAX = 3.4e38  # a learning rate at float32's limit (about 3.4028e38) overflows at once
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"
ENGINE_EVENTS = sorted(e.name for e in Events if not e.name.startswith(("GET_BATCH", "DATALOADER")))


MAX_IMAGE_SIDE = 4096
MAX_CONFIG_BYTES = 2**20
MAX_YAML_DEPTH = 100
MAX_YAML_VALUES = 100_000
MAX_YAML_INT_DIGITS = 100  # Python refuses to read more than 4,300 digits, with a traceback
MAX_NAME_BYTES = 200  # a folder name is at most 255 bytes; room for -k and the staging folder's name
MAX_YAML_EXPANDED_BYTES = 16 * 2**20  # text, aliases expanded: what printing or validating it would make
OVERRIDE_KEY = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")


class _Refused(yaml.MarkedYAMLError):
    """YAML that is valid but refused in a config (see :class:`_Loader`)."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python tags), reading ``1e-3`` as a float as YAML 1.2 does.

    It also refuses what only a mistake or an attack writes: a key twice in one mapping, nesting
    deeper than :data:`MAX_YAML_DEPTH` (PyYAML composes recursively) and more than
    :data:`MAX_YAML_VALUES` values, or :data:`MAX_YAML_EXPANDED_BYTES` of text, once aliases are
    expanded (a "billion laughs", or one long string aliased many times, would otherwise expand
    when the config is validated or printed).
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.expanded: dict[int, int] = {}  # id(node) -> values below it, aliases expanded
        self.expanded_bytes: dict[int, int] = {}  # id(node) -> characters of text below it, aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if self.depth >= MAX_YAML_DEPTH:
            raise _Refused(
                problem=f"values nested more than {MAX_YAML_DEPTH} levels deep", problem_mark=event.start_mark
            )
        anchored = self.anchors.get(event.anchor) if isinstance(event, yaml.AliasEvent) else None
        if anchored is not None and id(anchored) not in self.expanded:  # its anchor's node is still being composed
            raise _Refused(problem=f"the alias *{event.anchor} is inside its own value", problem_mark=event.start_mark)
        self.depth += 1
        node = super().compose_node(parent, index)
        self.depth -= 1
        if id(node) not in self.expanded:  # an alias returns its anchor's node, counted already
            children = node.value if isinstance(node, yaml.CollectionNode) else ()
            flat = [c for pair in children for c in pair] if isinstance(node, yaml.MappingNode) else children
            self.expanded[id(node)] = 1 + sum(self.expanded[id(child)] for child in flat)
            text = len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            self.expanded_bytes[id(node)] = 1 + text + sum(self.expanded_bytes[id(child)] for child in flat)
        if self.expanded[id(node)] > MAX_YAML_VALUES:
            raise _Refused(
                problem=f"more than {MAX_YAML_VALUES:,} values once YAML aliases (*name) are expanded; "
                "write the values out or use fewer aliases",
                problem_mark=node.start_mark,
            )
        if self.expanded_bytes[id(node)] > MAX_YAML_EXPANDED_BYTES:
            raise _Refused(
                problem=f"more than {MAX_YAML_EXPANDED_BYTES // 2**20} MiB of text once YAML aliases (*name) are "
                "expanded; write the values out or use fewer aliases",
                problem_mark=node.start_mark,
            )
        return node

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = sum(c.isalnum() for c in str(node.value))
        if digits > MAX_YAML_INT_DIGITS:
            raise _Refused(
                problem=f"an integer of {digits:,} digits; no setting takes more than {MAX_YAML_INT_DIGITS}",
                problem_mark=node.start_mark,
            )
        return int(super().construct_yaml_int(node))

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            if key in lines:
                raise _Refused(
                    problem=f"duplicate key {key!r} at lines {lines[key]} and {line}; keep one",
                    problem_mark=key_node.start_mark,
                )
            lines[key] = line
        return super().construct_mapping(node, deep)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader: Python tags are refused


def transform_names() -> list[str]:
    """The transforms ``data.transforms`` may name: the classes of ``torchvision.transforms.v2``."""
    from torchvision.transforms import v2

    return sorted(n for n, obj in vars(v2).items() if isinstance(obj, type) and issubclass(obj, v2.Transform))


def make_transform(name: str, kwargs: Mapping[str, Any], where: str = "data.transforms") -> Any:
    """The ``torchvision.transforms.v2`` transform ``name`` built with ``kwargs``.

    Raises:
        ValueError: naming ``where``: no such transform (with the closest name), or keyword arguments it refuses.
    """
    from torchvision.transforms import v2

    names = transform_names()
    if name not in names:
        raise ValueError(
            f"{where}: unknown transform {name!r}{did_you_mean(name, names)}; "
            "give the name of a torchvision.transforms.v2 class, e.g. RandomCrop or RandomHorizontalFlip"
        )
    try:
        return getattr(v2, name)(**kwargs)
    except Exception as err:  # a constructor refuses its arguments in many ways
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{where} ({name}): {message}; see torchvision's documentation of {name}") from None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @classmethod
    def default(cls, key: str) -> Any:
        """The schema's default for ``key``: what a handler's keyword argument of that setting defaults to.

        Example:
            >>> EarlyStoppingConfig.default("patience")
            3
        """
        return cls.model_fields[key].get_default(call_default_factory=True)


class DataConfig(_Section):
    """Where the images come from and how they are batched."""

    dataset: str = Field(
        "fashion_mnist",
        description="Data set: `fashion_mnist`, `cifar10`, `image_folder` (your own images under `root`: "
        "`root/train/<class>/*`, and `root/test/<class>/*` if present) or a registered plugin.",
    )
    root: str = Field(
        "data",
        description="Folder holding (or receiving) the data set files; for `image_folder`, the folder that holds "
        "`train/` (and `test/`).",
    )
    system_dir: str | None = Field(
        "/usr/share/datasets/fashion-mnist",
        description="Folder with a system copy of the Fashion-MNIST `*-ubyte.gz` files, used when `root` lacks them.",
    )
    download: bool = Field(False, description="Download the data set when no local or system copy is found.")
    val_size: int = Field(
        10000, ge=1, description="Training images held out, by a seeded random split, for validation."
    )
    batch_size: int = Field(
        128,
        ge=1,
        description="Training batch size; in a data-parallel run the effective batch, split evenly between the "
        "processes.",
    )
    eval_batch_size: int = Field(1000, ge=1, description="Batch size for validation and test evaluation.")
    normalize: bool = Field(
        True, description="Standardise pixels with the data set's mean and std (else scale to [0, 1])."
    )
    image_size: int | None = Field(
        None,
        ge=1,
        le=MAX_IMAGE_SIDE,
        description="`image_folder`: the side of the square images the files are converted to (each file's "
        "centre, cropped to a square, resized); `null`: the files' own size, which they must then share.",
    )
    channels: Literal[1, 3] | None = Field(
        None,
        description="`image_folder`: `1` (grayscale) or `3` (RGB); `null`: 1 when every image is gray, else 3.",
    )
    transforms: list[dict[str, dict[str, Any] | None]] = Field(
        default_factory=list,
        description="Training-time transforms: `torchvision.transforms.v2` classes by name with their keyword "
        "arguments, applied in order to each training image (uint8, before normalisation), e.g. "
        "`[{RandomCrop: {size: 28, padding: 2}}, {RandomHorizontalFlip: {}}]`; each image draws its own "
        "random parameters, from the seed, the epoch and the batch alone (a resumed run draws what the "
        "uninterrupted one did). Validation, test and `predict` see the images untransformed.",
    )

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        return DATASETS.check(value)

    @field_validator("transforms")
    @classmethod
    def _known_transforms(cls, value: list[dict[str, dict[str, Any] | None]]) -> list[dict[str, dict[str, Any]]]:
        entries = []
        for index, entry in enumerate(value):
            if len(entry) != 1:
                raise ValueError(
                    f"item {index} must name one transform with its keyword arguments, e.g. "
                    "{RandomHorizontalFlip: {}}; got " + (", ".join(map(repr, entry)) or "an empty mapping")
                )
            ((name, kwargs),) = entry.items()
            kwargs = kwargs or {}
            make_transform(name, kwargs, f"item {index}")
            entries.append({name: kwargs})
        return entries


class ModelConfig(_Section):
    """The model to train."""

    name: str = Field("logistic", description="Model: `logistic` or a registered plugin.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the model's constructor.")

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return MODELS.check(value)


class OptimizerConfig(_Section):
    """The optimizer and its hyperparameters."""

    name: str = Field(
        "sgd",
        description="`sgd`, `adam`, `adamw`, a registered plugin, or `package.module:Name`: a `torch.optim.Optimizer` "
        "subclass, called as `Name(params, lr=lr, weight_decay=weight_decay, **kwargs)`, or a function "
        "`make(params, section)`.",
    )
    lr: float = Field(
        0.02,
        gt=0,
        allow_inf_nan=False,
        description="Learning rate (the peak rate when a schedule is set).",
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum of `sgd` (other optimizers ignore it).")
    nesterov: bool = Field(
        True, description="Nesterov momentum, for `sgd` with momentum > 0 (other optimizers ignore it)."
    )
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False, description="L2 penalty (decoupled for adamw).")
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="More keyword arguments for the optimizer, e.g. `{betas: [0.9, 0.99]}` for `adam`.",
    )

    @field_validator("name")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        return OPTIMIZERS.check(value)

    @field_validator("lr")
    @classmethod
    def _float32(cls, value: float) -> float:
        if value >= FLOAT32_MAX:
            raise ValueError("must be below 3.4e38, the largest float32 the model computes with")
        return value


class SchedulerConfig(_Section):
    """How the learning rate changes during training (every iteration; checkpointed, so a resume continues it)."""

    name: str = Field(
        "cosine",
        description="`none`, `cosine` (anneal from `optimizer.lr` to `min_lr` over the run), `step` (multiply by "
        "`gamma` every `step_size` epochs), `plateau` (multiply by `gamma` when the monitor, `monitor.metric` in "
        "`monitor.mode`'s direction, has not improved for `patience` epochs; decided once per epoch after "
        "validation), a registered plugin, or `package.module:Name`: a function "
        "`make(optimizer, config, epoch_length, **kwargs)` returning an Ignite parameter scheduler, a torch "
        "`LRScheduler` (stepped every iteration) or `null`.",
    )
    min_lr: float = Field(
        0.0, ge=0, description="Final learning rate of the cosine schedule; the floor of the plateau schedule."
    )
    step_size: int = Field(5, ge=1, description="Epochs between decays of the step schedule.")
    gamma: float = Field(
        0.1, gt=0, le=1, description="Factor applied at each decay of the step schedule and of the plateau schedule."
    )
    patience: int = Field(
        1,
        ge=0,
        description="Epochs without improvement of the monitor before the plateau schedule lowers the rate "
        "(`0`: after every epoch that does not improve).",
    )
    warmup_epochs: int = Field(
        0,
        ge=0,
        description="Epochs of linear warm-up, with any schedule: the rate rises every iteration from "
        "`optimizer.lr` / (warm-up iterations) to `optimizer.lr`, then the schedule starts, over the remaining "
        "`trainer.max_epochs - warmup_epochs` epochs (`0`: no warm-up).",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for a plugin's schedule (the built-ins take none)."
    )

    @field_validator("name")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        return SCHEDULERS.check(value)


class TrainerConfig(_Section):
    """The training loop."""

    max_epochs: int = Field(10, ge=1, description="Number of epochs to train (early stopping may end sooner).")
    grad_clip_norm: float | None = Field(
        None,
        gt=0,
        description="Clip the gradients' total norm (over all parameters, the 2-norm) to at most this value in "
        "every training step, after the processes' gradients are averaged (`null`: no clipping).",
    )
    fast_dev_run: bool = Field(
        False,
        description="A smoke test of the config: one batch of training, one of validation and one of test, "
        "with the run's handlers; writes no run directory (and no TensorBoard or MLflow logs) and exits 0.",
    )
    compile: bool = Field(
        False,
        description="Compile the model for the training step with `torch.compile` (CUDA graphs on GPU); "
        "falls back to eager execution, with a warning, where compiling fails.",
    )


class EarlyStoppingConfig(_Section):
    """Stop when the monitored metric (see `monitor`) stops improving."""

    enabled: bool = Field(True, description="Turn early stopping on.")
    patience: int = Field(3, ge=1, description="Epochs without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as an improvement.")


class MonitorConfig(_Section):
    """The one definition of the best epoch.

    Early stopping, the best-model file (`checkpoints/best_model.pt`), `model.pt`, the test
    metrics, `metrics.json` (`best_epoch`, `best_value`) and `evaluate --checkpoint best` all use it.
    """

    metric: str = Field(
        "val_accuracy",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="A column of the history: `val_accuracy`, `val_loss`, `train_loss`, `train_accuracy`, "
        "or `val_<name>` for a metric a handler attaches to the evaluator.",
    )
    mode: Literal["auto", "max", "min"] = Field(
        "auto", description="`max` or `min`; `auto` means `min` for a metric whose name ends in `loss`, else `max`."
    )
    restore_best: bool = Field(
        True,
        description="At the end, put back the best epoch's weights: `model.pt` and the test metrics use them "
        "(else the last epoch's).",
    )

    @property
    def direction(self) -> Literal["max", "min"]:
        """``max`` or ``min``, with ``auto`` resolved."""
        if self.mode != "auto":
            return self.mode
        return "min" if self.metric.endswith("loss") else "max"


class DistributedConfig(_Section):
    """Data-parallel training on `ignite.distributed` (off by default); see the docs' "Data-parallel training".

    The same experiment runs in several processes: each trains on its share of every batch, the
    gradients are averaged across processes (`DistributedDataParallel`), and the metrics are
    reduced across them. `data.batch_size` stays the *effective* batch (it is split between the
    processes, so it must split evenly), and the learning rate that suits one process suits any
    number of them. The first process (rank 0) alone writes the run directory and prints.
    """

    backend: Literal["gloo", "nccl"] | None = Field(
        None,
        description="`gloo` (CPUs, any machine) or `nccl` (CUDA GPUs); `null` (the default) trains in this process.",
    )
    nproc_per_node: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Processes to start on this machine; `null`: one per GPU with `nccl`, 2 with `gloo`. "
        "Needs `backend`. Under `torchrun`, `torchrun`'s `--nproc_per_node` decides, and the run records it here.",
    )
    nnodes: int = Field(
        1,
        ge=1,
        description="Machines the run trains on, `nproc_per_node` processes on each. More than 1 only under "
        "`torchrun` (`--nnodes`), which decides, and the run records it here; a resume must have as many.",
    )

    @model_validator(mode="after")
    def _needs_a_backend(self) -> DistributedConfig:
        if self.nproc_per_node is not None and self.backend is None:
            raise ValueError(
                f"nproc_per_node={self.nproc_per_node} needs a backend: "
                "set distributed.backend=gloo (CPUs) or nccl (GPUs)"
            )
        if self.nnodes > 1 and self.backend is None:
            raise ValueError(
                f"nnodes={self.nnodes} needs a backend: set distributed.backend=gloo (CPUs) or nccl (GPUs)"
            )
        return self


class CheckpointConfig(_Section):
    """Full training states saved under `RUN_DIR/checkpoints/`."""

    n_saved: int = Field(2, ge=1, description="How many of the newest training states to keep.")


class LoggingConfig(_Section):
    """What is shown and logged while training."""

    progress_bar: bool | Literal["auto"] = Field(
        "auto",
        description="Show a progress bar during each epoch: `auto` on a terminal or in a Jupyter notebook (not "
        "when the output goes to a file, a pipe or CI, nor with `--quiet`), `true` always, `false` never. One "
        "line per epoch is printed either way.",
    )
    tensorboard: bool = Field(
        True,
        description="Write TensorBoard logs to `RUN_DIR/tb/`: runs `train` and `validation` with the same tags, "
        "and the pictures and hyperparameters with the test metrics in `tb/` itself.",
    )
    log_every: int = Field(50, ge=1, description="Iterations between `batch_loss` points in TensorBoard.")
    mlflow: bool = Field(
        False,
        description="Log the run to MLflow: the config as parameters, every epoch's metrics, the test metrics and "
        "the run's files (needs `pip install 'fmnist_ignite[mlflow]'`).",
    )
    mlflow_uri: str | None = Field(
        None,
        min_length=1,
        description="MLflow tracking URI: a database (`sqlite:///runs/mlflow.db`, `postgresql://...`) or a server "
        "(`http://host:5000`); `null` means `sqlite:///<output_dir>/mlflow.db`. A relative SQLite path is made "
        "absolute.",
    )
    mlflow_experiment: str = Field(
        "fmnist_ignite", min_length=1, description="MLflow experiment the run is logged in (created if missing)."
    )
    mlflow_register: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="Register the run's MLflow model under this name in MLflow's Model Registry: each run adds a "
        "version (1, 2, ...); `null`: not registered. Letters, digits, `.`, `_` and `-`.",
    )


class HandlerConfig(_Section):
    """A handler to attach: a registered name or `package.module:Name`, an event and keyword arguments."""

    target: str = Field(description="Registered handler name or `package.module:Name`.")
    event: str = Field("EPOCH_COMPLETED", description="Ignite event name, e.g. `EPOCH_COMPLETED`.")
    engine: Literal["trainer", "evaluator"] = Field("trainer", description="Engine whose event fires the handler.")
    every: int | None = Field(None, ge=1, description="Fire on every n-th event only.")
    once: int | None = Field(None, ge=1, description="Fire once, on the n-th event.")
    before: int | None = Field(None, ge=0, description="Fire only before the n-th event.")
    after: int | None = Field(None, ge=0, description="Fire only after the n-th event.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the handler.")

    @field_validator("event")
    @classmethod
    def _known_event(cls, value: str) -> str:
        if value not in ENGINE_EVENTS:
            suggestion = did_you_mean(value.upper(), ENGINE_EVENTS)
            raise ValueError(f"unknown event {value!r}{suggestion}; choose one of {', '.join(ENGINE_EVENTS)}")
        return value

    @model_validator(mode="after")
    def _filters_combine(self) -> HandlerConfig:
        try:
            self.ignite_event()
        except ValueError as err:
            raise ValueError(f"event filters do not combine: {err}") from None
        return self

    def ignite_event(self) -> Any:
        """The Ignite event, with this entry's ``every``/``once``/``before``/``after`` filter applied."""
        event: Any = Events[self.event]
        filters = {"every": self.every, "once": self.once, "before": self.before, "after": self.after}
        if all(v is None for v in filters.values()):
            return event
        return event(**{k: v for k, v in filters.items() if v is not None})


class Config(_Section):
    """A whole experiment. Load one with :func:`load_config`."""

    name: str = Field(
        "base",
        pattern=NAME_PATTERN,
        description="Run name; the run directory is `output_dir/name`, or the next free `name-1`, `name-2`, ... "
        "when that exists (a run never touches another's folder).",
    )
    output_dir: str = Field("runs", min_length=1, description="Folder that holds the run directories.")
    seed: int = Field(
        0, ge=0, lt=2**32, description="Seed for the split, the initial weights and the shuffling (below 2^32)."
    )
    device: str = Field(
        "auto",
        pattern=DEVICE_PATTERN,
        description="`auto` (CUDA, then MPS, then CPU), `cpu`, `cuda`, `cuda:N` or `mps`.",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    handlers: list[HandlerConfig] = Field(default_factory=list, description="Extra handlers to attach, in order.")
    init_from: str | None = Field(
        None,
        min_length=1,
        description="Start from another run's weights: `RUN_DIR` (its `model.pt`, else its best model), "
        "`RUN_DIR:best` or `RUN_DIR:last` (its newest checkpoint). The optimizer and the schedule start afresh "
        "(fine-tuning, a second phase with another `optimizer.lr`). `--init-from` on the command line sets it.",
    )

    @field_validator("name")
    @classmethod
    def _fits_a_folder_name(cls, value: str) -> str:
        size = len(value.encode("utf-8"))
        if size > MAX_NAME_BYTES:
            raise ValueError(
                f"a run's name becomes its folder's, which file systems limit: at most {MAX_NAME_BYTES} bytes, "
                f"not {size}"
            )
        return value

    @property
    def run_dir(self) -> Path:
        """The run directory, ``output_dir/name``."""
        return Path(self.output_dir) / self.name

    @property
    def init_weights(self) -> tuple[Path, str | None] | None:
        """``init_from`` split into the run directory and ``best``, ``last`` or ``None``; ``None`` without it."""
        if self.init_from is None:
            return None
        head, sep, which = self.init_from.rpartition(":")
        return (Path(head), which) if sep and which in ("best", "last") else (Path(self.init_from), None)

    def with_absolute_paths(self) -> Config:
        """The same config with its paths made absolute: ``output_dir``, ``data.root``, ``data.system_dir``,
        ``init_from``, and the file of a SQLite ``logging.mlflow_uri``.

        A run stores its config this way, so it means the same data and place from any folder.
        """
        data = self.data.model_copy(
            update={
                "root": str(Path(self.data.root).expanduser().absolute()),
                "system_dir": str(Path(self.data.system_dir).expanduser().absolute()) if self.data.system_dir else None,
            }
        )
        logging = self.logging.model_copy(update={"mlflow_uri": _absolute_sqlite_uri(self.logging.mlflow_uri)})
        output_dir = str(Path(self.output_dir).expanduser().absolute())
        update: dict[str, Any] = {"output_dir": output_dir, "data": data, "logging": logging}
        if self.init_weights is not None:
            run, which = self.init_weights
            update["init_from"] = str(run.expanduser().absolute()) + (f":{which}" if which else "")
        return self.model_copy(update=update)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (what ``config.yaml`` holds)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """The config as YAML text; loading it gives an equal config."""
        # libyaml's emitter where PyYAML has it, in a fifth of the time: loaded, its text gives an equal config
        return yaml.dump(self.to_dict(), Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)


def _absolute_sqlite_uri(uri: str | None) -> str | None:
    """``sqlite:///runs/mlflow.db`` as ``sqlite:////abs/runs/mlflow.db``; any other URI as it is."""
    prefix = "sqlite:///"
    if uri is None or not uri.startswith(prefix) or uri.startswith(prefix + "/"):
        return uri
    return prefix + str(Path(uri.removeprefix(prefix)).expanduser().absolute())


def load_config(source: str | Path | Mapping[str, Any] | None = None, overrides: Iterable[str] = ()) -> Config:
    """Load and validate a config.

    Args:
        source: a YAML file, a mapping, or None for the defaults.
        overrides: ``key.sub=value`` strings applied in order; values are read as YAML.

    Raises:
        ConfigError: with a one-line message naming the file, key and what is allowed.

    Example:
        >>> cfg = load_config({"name": "demo"}, ["optimizer.lr=0.1", "trainer.max_epochs=3"])
        >>> cfg.optimizer.lr, cfg.trainer.max_epochs
        (0.1, 3)
    """
    if source is None:
        data: dict[str, Any] = {}
        where = "config"
    elif isinstance(source, Mapping):
        data = _copy_tree(source)
        where = "config"
    else:
        where = str(source)
        data = read_yaml(Path(source))
    overridden = []
    for item in overrides:
        _apply_override(data, item)
        overridden.append(item.partition("=")[0].strip())
    return validate_config(data, where, overridden if where != "config" else ())


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A config's plain data as ``{"section.key": value}``; lists are leaves.

    Example:
        >>> flatten({"optimizer": {"lr": 0.1}, "handlers": []})
        {'optimizer.lr': 0.1, 'handlers': []}
    """
    if isinstance(tree, Mapping) and tree:
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): tree}


def differences(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """The settings (flattened keys, see :func:`flatten`) whose values differ, with ``after``'s value.

    Example:
        >>> differences({"optimizer": {"lr": 0.1, "momentum": 0.9}}, {"optimizer": {"lr": 0.2, "momentum": 0.9}})
        {'optimizer.lr': 0.2}
    """
    a, b = flatten(before), flatten(after)
    return {k: b.get(k) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def validate_config(data: Mapping[str, Any], where: str = "config", overridden: Iterable[str] = ()) -> Config:
    """Validate plain data against the schema, turning every problem into one :class:`ConfigError`.

    ``where`` names the source (a file); when every problem is in a key that ``overridden`` names
    (``key=value`` overrides), the message blames the overrides instead of the file.
    """
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        errors = err.errors()
        keys = tuple(overridden)
        if keys and all(_from_overrides(_error_path(e), keys) for e in errors):
            where = "the overrides (key=value)"
        raise ConfigError(f"{where}: " + "; ".join(_describe(e) for e in errors)) from None


def _from_overrides(path: str, keys: tuple[str, ...]) -> bool:
    """Whether a problem at ``path`` is in (or around) a key the overrides set."""
    return bool(path) and any(path.startswith(key) or key.startswith(path + ".") for key in keys)


def _error_path(error: Any) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping safely (no Python tags); errors name the file, line and column."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # /dev/zero or a huge file is not read without end
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"config file '{path}' is larger than {MAX_CONFIG_BYTES // 2**20} MiB; a config is a short YAML mapping"
            )
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist; pass the path of a YAML config") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file '{path}' cannot be read: {err}") from None
    try:
        data = _parse_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}{at}: YAML error: {problem}") from None
    if data is None:
        raise ConfigError(f"{path}: the config file is empty; it must be a YAML mapping such as 'name: my-run'")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a YAML mapping of keys to values, not a {type(data).__name__}")
    return data


def _copy_tree(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy_tree(v) for v in value]
    return value


def split_override(item: str) -> tuple[str, str]:
    """The key and the value's text of a ``key.sub=value`` override (the grammar of the command line and sweeps).

    Raises:
        ConfigError: the item is not ``key.sub=value``, or its key is nested too deep.

    Example:
        >>> split_override("optimizer.lr=0.1,0.2")
        ('optimizer.lr', '0.1,0.2')
    """
    key, sep, text = item.partition("=")
    if not sep or not key or not OVERRIDE_KEY.fullmatch(key):
        raise ConfigError(f"override {item!r} must look like key.sub=value (e.g. optimizer.lr=0.1)")
    if key.count(".") >= MAX_YAML_DEPTH:
        raise ConfigError(f"override of {key[:40]!r}...: keys nested more than {MAX_YAML_DEPTH} levels deep")
    return key, text


def parse_value(text: str, item: str) -> Any:
    """An override's value: its text read as YAML (empty text is null), within the loader's limits.

    Raises:
        ConfigError: naming the override ``item``, when the text is not valid YAML or too large.
    """
    try:
        return _parse_yaml(text) if text else None
    except _Refused as err:
        raise ConfigError(f"override of {item.partition('=')[0]!r}: {err.problem}") from None
    except yaml.YAMLError:
        raise ConfigError(f"override {item!r}: the value {text!r} is not valid YAML; quote it") from None


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, text = split_override(item)
    parts = key.split(".")
    value = parse_value(text, item)
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        node = _child(node, part, ".".join(parts[: depth + 1]), item)
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, key, item)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override {item!r}: '{'.'.join(parts[:-1])}' is not a section")


def _child(node: Any, part: str, path: str, item: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, path, item)]
    if not isinstance(node, dict):
        raise ConfigError(f"override {item!r}: '{path.rpartition('.')[0]}' is not a section")
    child = node.get(part)
    if child is None:
        child = node[part] = {}
    return child


def _index(node: list[Any], part: str, path: str, item: str) -> int:
    if not node:
        parent = path.rpartition(".")[0]
        raise ConfigError(
            f"override {item!r}: '{parent}' is an empty list, with no item to change; set it whole: {parent}=[...]"
        )
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override {item!r}: '{path}' needs an index from 0 to {len(node) - 1}")
    return int(part)


def _describe(error: Any) -> str:
    loc = error["loc"]
    path = _error_path(error) or "config"
    if error["type"] == "extra_forbidden":
        known = _fields_at(loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
        return f"unknown key {path!r}{suggestion} (allowed here: {', '.join(known)})"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{path!r} is required"
    shown = error.get("input")
    if isinstance(shown, dict | list):
        return f"{path!r}: {message}"
    return f"{path!r}: {message} (got {shown!r})"


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        model = next((a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)
