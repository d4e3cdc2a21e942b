"""Evaluating a model, and the one way to load a trained model from a run directory.

The end of training, ``evaluate`` and ``predict`` all use these; none of them constructs
handlers or an optimizer, so a run can be evaluated where its training plugins are not installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import Config
from .engine import PrepareBatch, create_evaluator, make_prepare_batch
from .errors import CheckpointError, ConfigError, all_lines
from .fileio import safe_torch_load
from .registry import MODELS
from .rundir import RunDir


def evaluate(
    model: torch.nn.Module, loader: Any, device: torch.device, prepare_batch: PrepareBatch, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, loss, confusion matrix and per-class accuracy of ``model`` on ``loader``."""
    evaluator = create_evaluator(model, device, prepare_batch, len(classes))
    metrics = evaluator.run(loader).metrics
    return evaluation_results(float(metrics["accuracy"]), float(metrics["loss"]), metrics["confusion"], classes)


def evaluation_results(accuracy: float, loss: float, confusion: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """The test's results as a run writes them: accuracy, loss, the confusion matrix and per-class accuracy."""
    matrix = confusion.cpu().double()
    per_class = (matrix.diag() / matrix.sum(1).clamp(min=1)).tolist()
    return {
        "accuracy": accuracy,
        "loss": loss,
        "confusion": matrix.long().tolist(),
        "per_class_accuracy": dict(zip(classes, per_class, strict=True)),
    }


def build_model(config: Config, image_shape: Sequence[int], num_classes: int) -> torch.nn.Module:
    """The model that ``config.model`` names, for images of ``image_shape`` and ``num_classes`` classes.

    Raises:
        ConfigError: the model cannot be built from ``model.kwargs``, or is not a ``torch.nn.Module``.
    """
    build = MODELS.get(config.model.name)
    c, h, w = image_shape
    try:
        model = build((c, h, w), num_classes, **config.model.kwargs)
    except TypeError as err:
        raise ConfigError(f"model.kwargs: {config.model.name} cannot be built: {err}") from None
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model.name: '{config.model.name}' returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load ``model.pt``, ``best_model.pt`` or a full checkpoint (its ``model`` entry) into ``model``.

    Raises:
        CheckpointError: the file cannot be read safely, or does not fit the model.
    """
    state = safe_torch_load(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError, ValueError) as err:  # what does not fit is after line one
        raise CheckpointError(f"{path} does not hold weights for this run's model: {all_lines(err)}") from None
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{path}: '{name}' holds values that are not finite (nan or inf): the training diverged before "
                "these weights were saved; use an earlier checkpoint, or train again with a lower learning rate"
            )
    model.eval()


@dataclass(frozen=True)
class TrainedModel:
    """A model loaded from a run directory, with what is needed to feed it.

    Attributes:
        model: the model, in evaluation mode, on the CPU.
        config: the run's config.
        weights: the file the weights came from.
        classes: the class names, indexed by output.
        image_shape: ``(C, H, W)`` of an input image.
        prepare_batch: turns uint8 images into the model's inputs, as in training.
        background: ``dark`` or ``light`` when the training images share one, else ``None``
            (also for runs made before it was recorded).
        dataset: the data set trained on (``data.json``, else the config's ``data.dataset``); it
            chooses how a picture is converted (:func:`fmnist_ignite.preprocess.convert`).
    """

    model: torch.nn.Module
    config: Config
    weights: Path
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]
    prepare_batch: PrepareBatch
    background: str | None = None
    dataset: str = "fashion_mnist"


def load_trained_model(run_dir: str | Path, which: str | Path | None = None) -> TrainedModel:
    """Load a run's model: ``which`` is ``best``, ``last``, a path, or ``None`` (``model.pt``, else best).

    Reads ``config.yaml`` and ``data.json`` of the run; builds the model alone (no data, handlers
    or optimizer).

    Raises:
        RunDirError: not a run directory, or its ``data.json`` is missing or damaged.
        CheckpointError: no such weights, or they do not fit the model.
    """
    rundir = RunDir(run_dir)
    config = rundir.load_config()
    info = rundir.read_input()
    model = build_model(config, info.image_shape, len(info.classes))
    path = rundir.weights(which)
    load_weights(model, path)
    return TrainedModel(
        model=model,
        config=config,
        weights=path,
        classes=tuple(info.classes),
        image_shape=info.image_shape,
        prepare_batch=make_prepare_batch(info.mean, info.std, info.normalize),
        background=info.background,
        dataset=info.dataset or config.data.dataset,
    )
