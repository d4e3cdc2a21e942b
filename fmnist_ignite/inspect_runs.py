"""Asking a finished (or stopped) run questions: evaluate it, predict with it, compare it with others.

These read a run directory and never write into it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .config import Config, read_yaml, validate_config
from .engine import make_prepare_batch
from .errors import CheckpointError, DataError, RunDirError, first_line
from .fileio import safe_torch_load
from .handlers.checkpoint import BEST_MODEL_RE, CHECKPOINT_RE, saved_files
from .registry import MODELS
from .reports import classification_report


def load_run_config(run_dir: Path) -> Config:
    """The run's own ``config.yaml``, with ``output_dir`` and ``name`` pointing at where the run is now."""
    config_path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    if not config_path.is_file():
        raise RunDirError(f"{run_dir} is not a run directory (no config.yaml); pass the folder a run created")
    data = read_yaml(config_path)
    data.update(output_dir=str(run_dir.parent), name=run_dir.name)
    return validate_config(data, str(config_path))


def weights_file(run_dir: Path, checkpoint: str | None = None) -> Path:
    """Which weights to use: ``None`` (``model.pt``, else the best model), ``best``, ``last`` or a path."""

    def newest(pattern: re.Pattern[str]) -> Path | None:
        return next(iter(saved_files(run_dir / "checkpoints", pattern)), None)

    if checkpoint is None:
        path = run_dir / "model.pt" if (run_dir / "model.pt").is_file() else newest(BEST_MODEL_RE)
    elif checkpoint == "best":
        path = newest(BEST_MODEL_RE)
    elif checkpoint == "last":
        path = newest(CHECKPOINT_RE)
    else:
        path = Path(checkpoint)
        if not path.is_file():
            raise RunDirError(f"--checkpoint {checkpoint}: no such file; use best, last or the path of a .pt file")
    if path is None:
        raise CheckpointError(f"{run_dir} has no saved weights ({checkpoint or 'model.pt or a best model'})")
    return path


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a ``model.pt``, a best-model file or a full checkpoint (its ``model`` entry) into ``model``."""
    state = safe_torch_load(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and "trainer" in state:
        state = state["model"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path} does not hold weights for this run's model: {first_line(err)}") from None
    model.eval()


def evaluate_run(run_dir: Path, split: str = "test", checkpoint: str | None = None) -> dict[str, Any]:
    """Metrics and the per-class report of a saved model on the validation or test split, without training."""
    from .experiment import build_experiment, evaluate

    config = load_run_config(run_dir)
    path = weights_file(run_dir, checkpoint)
    experiment = build_experiment(config)
    load_weights(experiment.model, path)
    result = evaluate(experiment.model, experiment.loaders[split], experiment.context, len(experiment.data.classes))
    report = classification_report(result["confusion"], experiment.data.classes)
    return {"run": str(run_dir), "split": split, "weights": str(path), "loss": result["loss"], **report}


def _input_description(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "data.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        raise RunDirError(f"{path} is missing or unreadable; it is written when a run starts") from None


def predict_images(
    run_dir: Path, images: Sequence[str | Path], checkpoint: str | None = None, top: int = 3
) -> list[dict[str, Any]]:
    """Class and top-``top`` probabilities for each image file; a file that is not an image gets an ``error``.

    Each image is converted the way the training data was: to the run's channels (grayscale for
    Fashion-MNIST, RGB for CIFAR-10) and resized to its size (28x28, 32x32).
    """
    from PIL import Image

    from .images import open_image

    config = load_run_config(run_dir)
    info = _input_description(run_dir)
    channels, height, width = info["image_shape"]
    classes = info["classes"]
    model = MODELS.get(config.model.name)(tuple(info["image_shape"]), len(classes), **config.model.kwargs)
    load_weights(model, weights_file(run_dir, checkpoint))
    prepare = make_prepare_batch(info["mean"], info["std"], info["normalize"])
    answers: list[dict[str, Any]] = []
    for name in images:
        try:
            image = open_image(name, "L" if channels == 1 else "RGB")
        except DataError as err:
            answers.append({"file": str(name), "error": str(err)})
            continue
        converted = image.resize((width, height), Image.Resampling.BILINEAR)
        pixels = torch.frombuffer(bytearray(converted.tobytes()), dtype=torch.uint8)
        x = pixels.view(height, width, channels).permute(2, 0, 1).unsqueeze(0)
        inputs, _ = prepare((x, torch.zeros(1, dtype=torch.long)), "cpu", False)
        with torch.no_grad():
            probabilities = model(inputs).softmax(1)[0]
        best = probabilities.topk(min(top, len(classes)))
        answers.append(
            {
                "file": str(name),
                "prediction": classes[int(best.indices[0])],
                "top": [
                    {"class": classes[int(i)], "probability": float(p)}
                    for p, i in zip(best.values, best.indices, strict=True)
                ],
            }
        )
    return answers


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): json.dumps(tree) if isinstance(tree, list) else tree}


def compare_runs(run_dirs: Sequence[Path]) -> dict[str, Any]:
    """Final metrics of each run, the settings that differ between them, and their histories."""
    runs: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        config = load_run_config(run_dir)
        metrics_path, history_path = run_dir / "metrics.json", run_dir / "history.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        history = json.loads(history_path.read_text()) if history_path.is_file() else []
        runs.append({"run": str(run_dir), "config": config, "metrics": metrics, "history": history})
    settings = [_flatten(r["config"].to_dict()) for r in runs]
    keys = sorted({k for s in settings for k in s} - {"name", "output_dir"})
    differing = [k for k in keys if len({json.dumps(s.get(k), sort_keys=True) for s in settings}) > 1]
    rows = []
    for r, s in zip(runs, settings, strict=True):
        m = r["metrics"]
        rows.append(
            {
                "run": r["run"],
                "test_accuracy": m.get("test_accuracy"),
                "best_val_accuracy": m.get("best_val_accuracy")
                if m
                else max((h["val_accuracy"] for h in r["history"]), default=None),
                "best_epoch": m.get("best_epoch"),
                "epochs": len(r["history"]),
                "finished": bool(m),
                "settings": {k: s.get(k) for k in differing},
            }
        )
    return {"runs": rows, "differing": differing, "histories": {r["run"]: r["history"] for r in runs}}


def compare_figure(histories: dict[str, list[dict[str, Any]]]) -> Any:
    """Validation accuracy and loss of several runs against epoch, overlaid."""
    from .reports import DPI, HISTORY_SIZE, _pyplot, epoch_axes

    plt = _pyplot()
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=HISTORY_SIZE, dpi=DPI)
    for run, history in histories.items():
        epochs = [h["epoch"] for h in history]
        label = Path(run).name
        acc_ax.plot(epochs, [h["val_accuracy"] for h in history], "-o", markersize=3, label=label)
        loss_ax.plot(epochs, [h["val_loss"] for h in history], "-o", markersize=3, label=label)
    epoch_axes(acc_ax, "validation accuracy")
    epoch_axes(loss_ax, "validation loss")
    fig.tight_layout()
    return fig
