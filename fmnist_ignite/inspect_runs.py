"""Asking a finished (or stopped) run questions: evaluate it, predict with it, compare it with others.

These read a run directory and never write into it; none of them builds the training side of
an experiment (handlers, optimizer), so training plugins need not be installed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from .config import flatten
from .data import load_data, split_indices
from .data.loaders import TensorLoader
from .errors import ConfigError, DataError, FmnistIgniteError, RunDirError, first_line
from .evaluation import evaluate, load_trained_model
from .plots import COLORS, Canvas, Curve, line_panel
from .preprocess import convert, negates
from .reports import HISTORY_SIZE, classification_report
from .rundir import RunDir, SweepDir, write_output

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage


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


INVERT = ("auto", "yes", "no")


def predict_images(
    run_dir: str | Path,
    images: Sequence[str | Path | PILImage | torch.Tensor],
    checkpoint: str | None = None,
    top_k: int = 3,
    invert: str = "auto",
) -> list[dict[str, Any]]:
    """Class and top-``top_k`` probabilities for each image; an image that cannot be read gets an ``error``.

    Each image is converted into what the model was trained on by
    :func:`fmnist_ignite.preprocess.convert`, chosen by the run's data set (``data.json``). For
    Fashion-MNIST that is the data set's own conversion of product photos: the border trimmed,
    the garment fitted into the 28x28 square keeping its aspect and centred, grayscale, and negated
    when its background is light (``invert="auto"``; ``"yes"`` and ``"no"`` decide for every
    image); an image already 28x28 is taken as it is. Any other data set: the run's channels and
    size. ``export`` ships the same conversion with the model.

    Args:
        run_dir: the run directory.
        images: file paths, PIL images, or tensors ``(H, W)`` / ``(C, H, W)``, uint8 (0-255) or float (0-1).
        checkpoint: which weights (see :func:`~fmnist_ignite.load_trained_model`).
        top_k: how many classes to list, best first.
        invert: ``auto``, ``yes`` or ``no``.

    Returns:
        one answer per image, in order: ``{"file", "prediction", "top": [{"class", "probability"}], "inverted"}``,
        or ``{"file", "error"}`` (``file`` is ``None`` for an image given in memory).

    Raises:
        ConfigError: ``top_k`` below 1, or ``invert`` not one of ``auto``, ``yes``, ``no``.
    """
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    if invert not in INVERT:
        raise ConfigError(f"invert must be one of {', '.join(INVERT)}, got {invert!r}")
    trained = load_trained_model(run_dir, checkpoint)
    classes = trained.classes
    answers: list[dict[str, Any]] = []
    for index, image in enumerate(images):
        file = str(image) if isinstance(image, str | Path) else None
        try:
            picture = _picture(image, index)
            inverted = invert == "yes" or (invert == "auto" and negates(picture, trained.dataset, trained.background))
            pixels = convert(picture, trained.dataset, trained.image_shape, trained.background, inverted)
        except DataError as err:
            answers.append({"file": file, "error": str(err)})
            continue
        except (TypeError, ValueError) as err:  # a picture in a mode PIL cannot convert
            answers.append({"file": file, "error": f"{file or f'image {index}'}: {first_line(err)}"})
            continue
        x = torch.from_numpy(pixels)
        inputs, _ = trained.prepare_batch((x.unsqueeze(0), torch.zeros(1, dtype=torch.long)), "cpu", False)
        with torch.no_grad():
            probabilities = trained.model(inputs).softmax(1)[0]
        best = probabilities.topk(min(top_k, len(classes)))
        answers.append(
            {
                "file": file,
                "prediction": classes[int(best.indices[0])],
                "top": [
                    {"class": classes[int(i)], "probability": float(p)}
                    for p, i in zip(best.values, best.indices, strict=True)
                ],
                "inverted": inverted,
            }
        )
    return answers


def _picture(image: str | Path | PILImage | torch.Tensor, index: int) -> PILImage:
    """The image as a PIL image: a file read with its size bounded, a tensor made into a picture.

    Raises:
        DataError: one line naming the file (or ``image <index>``): it cannot be read as an image.
    """
    from torchvision.transforms.functional import to_pil_image

    from .images import open_image

    if isinstance(image, str | Path):
        return open_image(image, None)  # as preprocess.read_image gives it, for the same answers
    if isinstance(image, Image.Image):
        return image
    try:
        return to_pil_image(image)
    except (TypeError, ValueError) as err:
        raise DataError(f"image {index}: {first_line(err)}") from None


# Settings that change what is shown, not what is trained: never a difference between runs.
DISPLAY_ONLY = ("logging.",)


def _readable(value: Any) -> str:
    """A setting as a short scalar: handler entries by their targets (and kwargs), lists joined."""
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(_readable(item) for item in value) or "[]"
    if isinstance(value, dict) and "target" in value:
        kwargs = ", ".join(f"{k}={_readable(v)}" for k, v in value.get("kwargs", {}).items())
        return f"{value['target']}({kwargs})" if kwargs else str(value["target"])
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True) if value else "{}"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def compare_runs(run_dirs: Sequence[str | Path]) -> dict[str, Any]:
    """Final metrics of each run, the settings that differ between them, and their histories.

    Settings are compared whole and shown as short scalars (``handlers`` by their targets);
    display-only settings (``logging.*``) and where a run lives (``name``, ``output_dir``) are left out.
    A sweep's folder stands for the run directories of its trials.

    Returns:
        ``{"runs": [one row per run], "differing": [setting names], "histories": {run: history}}``.
    """
    expanded = [t.path for d in run_dirs for t in (SweepDir(d).trials() if SweepDir(d).exists() else [RunDir(d)])]
    runs: list[dict[str, Any]] = []
    errors: list[str] = []
    for run_dir in expanded:
        rundir = RunDir(run_dir)
        try:
            config = rundir.load_config()
            metrics = rundir.read_metrics() if rundir.metrics.is_file() else {}
            history = rundir.read_history() if rundir.history_json.is_file() else []
        except FmnistIgniteError as err:
            errors.append(str(err))
            continue
        runs.append({"run": str(run_dir), "config": config, "metrics": metrics, "history": history})
    if not runs:
        raise RunDirError(errors[0] if len(errors) == 1 else f"none of the {len(errors)} runs can be read: {errors[0]}")
    settings = [flatten(r["config"].to_dict()) for r in runs]
    keys = sorted({k for s in settings for k in s} - {"name", "output_dir"})
    keys = [k for k in keys if not k.startswith(DISPLAY_ONLY)]
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
                "settings": {k: _readable(s.get(k)) for k in differing},
            }
        )
    return {
        "runs": rows,
        "differing": differing,
        "histories": {r["run"]: r["history"] for r in runs},
        "errors": errors,
    }


def run_labels(runs: Sequence[str]) -> dict[str, str]:
    """A legend label for each run: its folder's name, or the path as given where two runs share a name."""
    names = [Path(run).name for run in runs]
    return {run: name if names.count(name) == 1 else run for run, name in zip(runs, names, strict=True)}


def compare_figure(histories: Mapping[str, list[dict[str, Any]]]) -> Any:
    """Validation accuracy and loss of several runs against epoch, overlaid; labelled by :func:`run_labels`."""
    canvas = Canvas(*HISTORY_SIZE)
    width, height = HISTORY_SIZE[0] / 2, HISTORY_SIZE[1]
    labels = run_labels(list(histories))
    for k, (key, title) in enumerate((("val_accuracy", "validation accuracy"), ("val_loss", "validation loss"))):
        curves = [
            Curve(labels[run], [h["epoch"] for h in history], [h[key] for h in history], COLORS[i % len(COLORS)])
            for i, (run, history) in enumerate(histories.items())
        ]
        line_panel(canvas, (k * width, 0, (k + 1) * width, height), title, curves)
    return canvas.image()


def save_compare_figure(result: Mapping[str, Any], output: str | Path, force: bool = False) -> Path:
    """Write :func:`compare_figure` of a :func:`compare_runs` result to ``output``, a ``.png`` file or a folder.

    A folder (one that exists, or a path ending in ``/``) gets ``compare.png``. The file is
    written by :func:`~fmnist_ignite.rundir.write_output`: an existing one is replaced only with
    ``force``, and never a special file, a link or a file of a run.

    Returns:
        the file written.

    Raises:
        ConfigError: the name is not a ``.png``, or the file is refused or cannot be written.
    """
    import io

    path = Path(output)
    if path.is_dir() or str(output).endswith(("/", os.sep)):
        path = path / "compare.png"
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--output {output}: the figure is a PNG; name a .png file or a folder")
    buffer = io.BytesIO()
    compare_figure(result["histories"]).save(buffer, format="PNG", compress_level=1)
    return write_output(path, lambda f: f.write(buffer.getvalue()), force=force)
