"""Asking a finished (or stopped) run questions: evaluate it, predict with it, compare it with others.

These read a run directory and never write into it; none of them builds the training side of
an experiment (handlers, optimizer), so training plugins need not be installed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .data import load_data, split_indices
from .data.loaders import TensorLoader
from .errors import DataError
from .evaluation import evaluate, load_trained_model
from .plots import COLORS, Canvas, Curve, line_panel
from .reports import HISTORY_SIZE, classification_report
from .rundir import RunDir


def evaluate_run(run_dir: str | Path, split: str = "test", checkpoint: str | None = None) -> dict[str, Any]:
    """Metrics and the per-class report of a saved model on the validation or test split, without training."""
    trained = load_trained_model(run_dir, checkpoint)
    config = trained.config
    data = load_data(config.data)
    if split == "val":
        _, indices = split_indices(len(data.train_labels), config.data.val_size, config.seed)
        loader = TensorLoader(data.train_images, data.train_labels, config.data.eval_batch_size, False, indices=indices)
    else:
        loader = TensorLoader(data.test_images, data.test_labels, config.data.eval_batch_size, False)
    device = torch.device("cpu")
    result = evaluate(trained.model, loader, device, trained.prepare_batch, trained.classes)
    report = classification_report(result["confusion"], trained.classes)
    return {"run": str(run_dir), "split": split, "weights": str(trained.weights), "loss": result["loss"], **report}


def predict_images(
    run_dir: str | Path, images: Sequence[str | Path], checkpoint: str | None = None, top: int = 3
) -> list[dict[str, Any]]:
    """Class and top-``top`` probabilities for each image file; a file that is not an image gets an ``error``.

    Each image is converted the way the training data was: to the run's channels (grayscale for
    Fashion-MNIST, RGB for CIFAR-10) and resized to its size (28x28, 32x32).
    """
    from PIL import Image

    from .images import open_image

    trained = load_trained_model(run_dir, checkpoint)
    channels, height, width = trained.image_shape
    classes = trained.classes
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
        inputs, _ = trained.prepare_batch((x, torch.zeros(1, dtype=torch.long)), "cpu", False)
        with torch.no_grad():
            probabilities = trained.model(inputs).softmax(1)[0]
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


def compare_runs(run_dirs: Sequence[str | Path]) -> dict[str, Any]:
    """Final metrics of each run, the settings that differ between them, and their histories."""
    runs: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        rundir = RunDir(run_dir)
        config = rundir.load_config()
        metrics = json.loads(rundir.metrics.read_text()) if rundir.metrics.is_file() else {}
        history = json.loads(rundir.history_json.read_text()) if rundir.history_json.is_file() else []
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
                "monitor": m.get("monitor", r["config"].monitor.metric),
                "best_value": m.get("best_value"),
                "best_epoch": m.get("best_epoch"),
                "epochs": len(r["history"]),
                "finished": bool(m),
                "settings": {k: s.get(k) for k in differing},
            }
        )
    return {"runs": rows, "differing": differing, "histories": {r["run"]: r["history"] for r in runs}}


def compare_figure(histories: dict[str, list[dict[str, Any]]]) -> Image.Image:
    """Validation accuracy and loss of several runs against epoch, overlaid."""
    canvas = Canvas(*HISTORY_SIZE)
    width, height = HISTORY_SIZE[0] / 2, HISTORY_SIZE[1]
    for k, (key, title) in enumerate((("val_accuracy", "validation accuracy"), ("val_loss", "validation loss"))):
        curves = [
            Curve(Path(run).name, [h["epoch"] for h in history], [h[key] for h in history], COLORS[i % len(COLORS)])
            for i, (run, history) in enumerate(histories.items())
        ]
        line_panel(canvas, (k * width, 0, (k + 1) * width, height), title, curves)
    return canvas.image()
