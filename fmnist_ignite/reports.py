"""What a person looks at after a run: the per-class report and the pictures.

``history.png`` (loss and accuracy against epoch), ``confusion_matrix.png`` (counts, shaded by
row), ``predictions.png`` (test images with predicted and true labels) and ``report.json``
(precision, recall, F1 and support per class, and the most confused pairs). The pictures are
drawn with Pillow (:mod:`fmnist_ignite.plots`), in milliseconds each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .fileio import atomic_write, atomic_write_json
from .plots import COLORS, Canvas, Curve, blues, line_panel, png_bytes
from .rundir import RunDir

HISTORY_SIZE = (1000, 400)
CONFUSION_SIZE = (900, 800)
PREDICTIONS_SIZE = (1200, 700)


def classification_report(confusion: Sequence[Sequence[int]], classes: Sequence[str], top: int = 5) -> dict[str, Any]:
    """Precision, recall, F1 and support per class, accuracy, and the ``top`` most confused pairs.

    ``confusion[i][j]`` counts images of true class ``i`` predicted as ``j``.

    Example:
        >>> report = classification_report([[8, 2], [1, 9]], ["cat", "dog"])
        >>> report["per_class"]["cat"]["precision"], report["per_class"]["cat"]["recall"]
        (0.8888888888888888, 0.8)
        >>> report["confused_pairs"][0]
        {'true': 'cat', 'predicted': 'dog', 'count': 2}
    """
    counts = [[int(v) for v in row] for row in torch.as_tensor(confusion).tolist()]  # plain numbers: no tensor indexing
    n = len(classes)
    true_counts = [sum(row) for row in counts]
    predicted_counts = [sum(row[j] for row in counts) for j in range(n)]
    hits = [counts[i][i] for i in range(n)]
    per_class = {}
    for i, name in enumerate(classes):
        precision = hits[i] / predicted_counts[i] if predicted_counts[i] else 0.0
        recall = hits[i] / true_counts[i] if true_counts[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": true_counts[i]}
    off_diagonal = [(counts[i][j], i, j) for i in range(n) for j in range(n) if i != j and counts[i][j]]
    pairs = [
        {"true": classes[i], "predicted": classes[j], "count": count}
        for count, i, j in sorted(off_diagonal, key=lambda t: (-t[0], t[1], t[2]))[:top]
    ]
    total = sum(true_counts)
    return {
        "accuracy": sum(hits) / total if total else 0.0,
        "macro_f1": sum(c["f1"] for c in per_class.values()) / max(1, len(per_class)),
        "per_class": per_class,
        "confused_pairs": pairs,
        "confusion": counts,
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a table for the terminal."""
    width = max(len(name) for name in report["per_class"])
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for name, row in report["per_class"].items():
        lines.append(
            f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}  {row['support']:7d}"
        )
    lines.append(f"{'accuracy':<{width}}  {report['accuracy']:25.3f}")
    lines.append(
        "Most confused (true -> predicted): "
        + ", ".join(f"{p['true']} -> {p['predicted']}: {p['count']}" for p in report["confused_pairs"])
    )
    return "\n".join(lines)


def history_figure(records: Sequence[dict[str, Any]], best_epoch: int | None = None) -> Image.Image:
    """Loss and accuracy against epoch, train and validation, with the best epoch marked."""
    canvas = Canvas(*HISTORY_SIZE)
    epochs = [r["epoch"] for r in records]
    marker = (best_epoch, f"best epoch ({best_epoch})") if best_epoch else None
    for k, key in enumerate(("loss", "accuracy")):
        curves = [
            Curve("train", epochs, [r[f"train_{key}"] for r in records], COLORS[0]),
            Curve("validation", epochs, [r[f"val_{key}"] for r in records], COLORS[1]),
        ]
        width = HISTORY_SIZE[0] / 2
        line_panel(canvas, (k * width, 0, (k + 1) * width, HISTORY_SIZE[1]), key, curves, marker=marker)
    return canvas.image()


def confusion_figure(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> Image.Image:
    """The confusion matrix with class names and counts, each row shaded by its share of that class."""
    matrix = torch.as_tensor(confusion, dtype=torch.float64)
    shares = (matrix / matrix.sum(1, keepdim=True).clamp(min=1)).tolist()
    n = len(classes)
    canvas = Canvas(*CONFUSION_SIZE)
    left, top, side = 120.0, 62.0, 610.0
    cell = side / max(n, 1)
    canvas.text((left + side / 2, top - 16), "confusion matrix", size=14)
    for i in range(n):
        for j in range(n):
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell, top + (i + 1) * cell)
            canvas.rectangle(box, fill=blues(shares[i][j]))
            color = "white" if shares[i][j] > 0.5 else "black"
            canvas.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), str(int(matrix[i, j])), size=10, fill=color)
    canvas.rectangle((left, top, left + side, top + side), outline="black")
    for k, name in enumerate(classes):
        middle = left + (k + 0.5) * cell
        canvas.line([(left - 4, top + (k + 0.5) * cell), (left, top + (k + 0.5) * cell)])
        canvas.text((left - 7, top + (k + 0.5) * cell), name, size=11, anchor="rm")
        canvas.line([(middle, top + side), (middle, top + side + 4)])
        canvas.rotated_text((middle + 3, top + side + 10), name, 45, size=11)
    canvas.text((left + side / 2, top + side + 88), "predicted", size=11)
    canvas.rotated_text((28, top + side / 2), "true", 90, size=11, end=False)
    _colour_bar(canvas, (770.0, 20.0, 790.0, 720.0), "share of the true class")
    return canvas.image()


def _colour_bar(canvas: Canvas, box: tuple[float, float, float, float], label: str) -> None:
    left, top, right, bottom = box
    steps = 140
    for k in range(steps):
        y0 = bottom - (k + 1) * (bottom - top) / steps
        canvas.rectangle((left, y0, right, y0 + (bottom - top) / steps + 0.5), fill=blues((k + 0.5) / steps))
    canvas.rectangle(box, outline="black")
    for k in range(6):
        y = bottom - k / 5 * (bottom - top)
        canvas.line([(right, y), (right + 4, y)])
        canvas.text((right + 7, y), f"{k / 5:.1f}", size=11, anchor="lm")
    canvas.rotated_text((right + 45, (top + bottom) / 2), label, 90, size=11, end=False)


def predictions_figure(
    images: torch.Tensor, labels: Sequence[int], predictions: Sequence[int], classes: Sequence[str], columns: int = 8
) -> Image.Image:
    """A grid of images titled ``predicted`` (or, in red, ``predicted (true)``): one picture, not a plot per image."""
    title = "test predictions (red: wrong, true class in brackets)"
    return _image_grid(images, labels, predictions, classes, columns, title)


def samples_figure(
    images: torch.Tensor, labels: Sequence[int], classes: Sequence[str], columns: int = 8, title: str = "samples"
) -> Image.Image:
    """A grid of images, each titled with its class name: a first look at a data set.

    Args:
        images: uint8 ``(N, C, H, W)``, as :class:`~fmnist_ignite.data.ImageData` holds them (32 fill the picture).
        labels: the class of each image.
        classes: the class names, indexed by label.
        columns: images per row.
        title: above the grid.

    Example:
        >>> import torch
        >>> from fmnist_ignite import samples_figure
        >>> picture = samples_figure(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), [0, 1, 0, 1], ["cat", "dog"])
        >>> picture.size, picture.mode
        ((1200, 700), 'RGB')
    """
    return _image_grid(images, labels, labels, classes, columns, title)


def _image_grid(
    images: torch.Tensor,
    labels: Sequence[int],
    predictions: Sequence[int],
    classes: Sequence[str],
    columns: int,
    title: str,
) -> Image.Image:
    rows = max(1, -(-len(images) // columns))
    canvas = Canvas(*PREDICTIONS_SIZE)
    canvas.text((PREDICTIONS_SIZE[0] / 2, 20), title, size=14)
    cell_width, cell_height = PREDICTIONS_SIZE[0] / columns, (PREDICTIONS_SIZE[1] - 38) / rows
    caption = 30.0
    side = int(min(cell_width - 16, cell_height - caption - 6))
    for k in range(len(images)):
        image = images[k].cpu()
        pixels = image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).contiguous().numpy()
        picture = Image.fromarray(pixels).resize((side, side), Image.Resampling.NEAREST)
        x = (k % columns) * cell_width + (cell_width - side) / 2
        y = 38 + (k // columns) * cell_height
        right = int(predictions[k]) == int(labels[k])
        middle = x + side / 2
        if right:
            canvas.text((middle, y + caption - 9), classes[int(predictions[k])], size=11)
        else:
            canvas.text((middle, y + caption - 22), classes[int(predictions[k])], size=11, fill="red")
            canvas.text((middle, y + caption - 9), f"({classes[int(labels[k])]})", size=11, fill="red")
        canvas.paste(picture, (x, y + caption))
    return canvas.image()


def save_figure(figure: Image.Image, path: Path) -> None:
    """Write a picture as PNG atomically (see :func:`~fmnist_ignite.plots.png_bytes`)."""
    data = png_bytes(figure)
    atomic_write(path, lambda f: f.write(data))


@dataclass
class Results:
    """What :func:`start_results` started: the report (written), the pictures' paths, and their writing."""

    report: dict[str, Any]
    figures: dict[str, Path]
    writing: list[Future[None]] = field(default_factory=list)

    def wait(self) -> None:
        """Return once every picture is written (raises the first picture's error, if any)."""
        for future in self.writing:
            future.result()


def start_results(
    rundir: RunDir,
    records: Sequence[dict[str, Any]],
    best_epoch: int,
    test: dict[str, Any],
    classes: Sequence[str],
    weights: str,
    samples: tuple[torch.Tensor, Sequence[int], Sequence[int]],
    pool: Executor,
) -> Results:
    """Write ``report.json`` now; draw and write the pictures of a finished run in ``pool``.

    The caller goes on while they are drawn (:meth:`Results.wait` returns once they are written):
    with a pool of two or three threads, the three pictures are drawn and written side by side
    (Pillow lets go of the interpreter's lock while it reduces, pastes and encodes), and a fused
    sweep draws its trials' pictures while it finishes the others.

    Args:
        rundir: the run directory.
        records: the history.
        best_epoch: the monitor's best epoch, marked on the history picture.
        test: the test evaluation (see :func:`~fmnist_ignite.evaluation.evaluate`).
        classes: the class names.
        weights: ``best`` or ``last``: which weights were tested.
        samples: ``(images, labels, predictions)`` for the predictions grid.
        pool: where the pictures are drawn and written.
    """
    report = classification_report(test["confusion"], classes)
    atomic_write_json(rundir.report, {"split": "test", "weights": weights, **report})
    figures: dict[str, Callable[[], Image.Image]] = {
        "history": lambda: history_figure(records, best_epoch or None),
        "confusion_matrix": lambda: confusion_figure(test["confusion"], classes),
        "predictions": lambda: predictions_figure(samples[0], samples[1], samples[2], classes),
    }
    paths = {name: rundir.figure(name) for name in figures}
    writing = [pool.submit(lambda d, p: save_figure(d(), p), draw, paths[name]) for name, draw in figures.items()]
    return Results(report, paths, writing)
