"""What a person looks at after a run: the per-class report and the pictures.

``history.png`` (loss and accuracy against epoch), ``confusion_matrix.png`` (counts, shaded by
row), ``predictions.png`` (test images with predicted and true labels) and ``report.json``
(precision, recall, F1 and support per class, and the most confused pairs).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .fileio import atomic_write, atomic_write_json
from .rundir import RunDir

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HISTORY_SIZE = (10.0, 4.0)
CONFUSION_SIZE = (9.0, 8.0)
PREDICTIONS_SIZE = (12.0, 7.0)
DPI = 100


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
    matrix = torch.tensor(confusion, dtype=torch.float64)
    true_counts, predicted_counts, hits = matrix.sum(1), matrix.sum(0), matrix.diag()
    per_class = {}
    for i, name in enumerate(classes):
        precision = float(hits[i] / predicted_counts[i]) if predicted_counts[i] else 0.0
        recall = float(hits[i] / true_counts[i]) if true_counts[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(true_counts[i])}
    off_diagonal = [
        (int(matrix[i, j]), i, j) for i in range(len(classes)) for j in range(len(classes)) if i != j and matrix[i, j]
    ]
    pairs = [
        {"true": classes[i], "predicted": classes[j], "count": count}
        for count, i, j in sorted(off_diagonal, key=lambda t: (-t[0], t[1], t[2]))[:top]
    ]
    total = float(matrix.sum())
    return {
        "accuracy": float(hits.sum() / total) if total else 0.0,
        "macro_f1": sum(c["f1"] for c in per_class.values()) / max(1, len(per_class)),
        "per_class": per_class,
        "confused_pairs": pairs,
        "confusion": [[int(v) for v in row] for row in confusion],
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


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def history_figure(records: Sequence[dict[str, Any]], best_epoch: int | None = None) -> Figure:
    """Loss and accuracy against epoch, train and validation, with the best epoch marked."""
    plt = _pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=HISTORY_SIZE, dpi=DPI)
    epochs = [r["epoch"] for r in records]
    for ax, key in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in records], "-o", markersize=3, label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in records], "-o", markersize=3, label="validation")
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best epoch ({best_epoch})")
        epoch_axes(ax, key)
    fig.tight_layout()
    return fig


def epoch_axes(ax: Any, title: str) -> None:
    """Label, grid and legend of a plot against epoch."""
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()


def confusion_figure(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> Figure:
    """The confusion matrix with class names and counts, each row shaded by its share of that class."""
    plt = _pyplot()
    matrix = torch.tensor(confusion, dtype=torch.float64)
    shares = matrix / matrix.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=CONFUSION_SIZE, dpi=DPI)
    image = ax.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    n = len(classes)
    ax.set_xticks(range(n), labels=classes, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            color = "white" if shares[i, j] > 0.5 else "black"
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color=color, fontsize=8)
    fig.colorbar(image, ax=ax, label="share of the true class")
    ax.set_title("confusion matrix")
    fig.tight_layout()
    return fig


def predictions_figure(
    images: torch.Tensor, labels: Sequence[int], predictions: Sequence[int], classes: Sequence[str], columns: int = 8
) -> Figure:
    """A grid of images titled ``predicted / true``; mistakes in red."""
    plt = _pyplot()
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=PREDICTIONS_SIZE, dpi=DPI, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= len(images):
            continue
        image = images[k].cpu()
        shown = image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()
        ax.imshow(shown, cmap="gray" if image.shape[0] == 1 else None)
        right = predictions[k] == labels[k]
        ax.set_title(
            f"{classes[predictions[k]]}\n({classes[labels[k]]})" if not right else classes[predictions[k]],
            color="black" if right else "red",
            fontsize=8,
        )
    fig.suptitle("test predictions (red: wrong, true class in brackets)")
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    """Write a figure as PNG atomically, then free it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    _pyplot().close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def write_results(
    rundir: RunDir,
    records: Sequence[dict[str, Any]],
    best_epoch: int,
    test: dict[str, Any],
    classes: Sequence[str],
    weights: str,
    samples: tuple[torch.Tensor, Sequence[int], Sequence[int]],
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Write ``report.json`` and the pictures of a finished run.

    Args:
        rundir: the run directory.
        records: the history.
        best_epoch: the monitor's best epoch, marked on the history picture.
        test: the test evaluation (see :func:`~fmnist_ignite.evaluation.evaluate`).
        classes: the class names.
        weights: ``best`` or ``last``: which weights were tested.
        samples: ``(images, labels, predictions)`` for the predictions grid.

    Returns:
        the report, and the path of each picture by name.
    """
    report = classification_report(test["confusion"], classes)
    atomic_write_json(rundir.report, {"split": "test", "weights": weights, **report})
    figures = {
        "history": history_figure(records, best_epoch or None),
        "confusion_matrix": confusion_figure(test["confusion"], classes),
        "predictions": predictions_figure(samples[0], samples[1], samples[2], classes),
    }
    paths = {}
    for name, figure in figures.items():
        paths[name] = rundir.figure(name)
        save_figure(figure, paths[name])
    return report, paths
