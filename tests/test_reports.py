"""reports.py: the pictures and the per-class report of a finished run, and its TensorBoard files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fmnist_ignite.data import FASHION_CLASSES
from fmnist_ignite.reports import classification_report, predictions_figure, samples_figure


@pytest.mark.parametrize(
    ("name", "size"),
    [("history.png", (1000, 400)), ("confusion_matrix.png", (900, 800)), ("predictions.png", (1200, 700))],
)
def test_pictures_are_written_and_decode(finished: dict, name: str, size: tuple[int, int]) -> None:
    with Image.open(finished["run"] / name) as image:
        image.load()
        assert image.format == "PNG" and image.size == size
        assert sum(1 for count in image.convert("L").histogram() if count) > 10, "not a blank picture"


@pytest.mark.parametrize("wrong", [(), (3,), (9, 30)])
def test_predictions_picture_shows_every_image_large_and_mistakes_in_red(wrong: tuple[int, ...]) -> None:
    images = torch.full((32, 1, 28, 28), 128, dtype=torch.uint8)
    labels = [k % 10 for k in range(32)]
    predictions = [(label + 1) % 10 if k in wrong else label for k, label in enumerate(labels)]
    picture = predictions_figure(images, labels, predictions, FASHION_CLASSES)
    assert picture.size == (1200, 700) and picture.mode == "RGB"
    pixels = np.asarray(picture).astype(int)
    grey = (pixels == 128).all(axis=2)
    assert grey.sum() >= 32 * 120 * 120, "each 28x28 image is shown at least 120 pixels wide"
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 100) & (pixels[..., 2] < 100)
    columns = sorted({int(x) // 150 for x in np.nonzero(red)[1]})
    assert columns == sorted({k % 8 for k in wrong}), "captions are red exactly in the columns of the mistakes"


def test_report_matches_a_direct_computation(finished: dict) -> None:
    report = json.loads((finished["run"] / "report.json").read_text())
    labels, predicted = finished["data"].test_labels, finished["predicted"]
    classes = finished["data"].classes
    for k, name in enumerate(classes):
        true_k, predicted_k = labels == k, predicted == k
        hits = int((true_k & predicted_k).sum())
        row = report["per_class"][name]
        assert row["support"] == int(true_k.sum())
        assert row["recall"] == pytest.approx(hits / max(1, int(true_k.sum())))
        assert row["precision"] == pytest.approx(hits / max(1, int(predicted_k.sum())) if predicted_k.any() else 0.0)
    assert report["accuracy"] == pytest.approx(float((labels == predicted).float().mean()))
    assert report["accuracy"] == pytest.approx(finished["metrics"]["test_accuracy"])
    confusion = torch.zeros(10, 10, dtype=torch.long)
    for t, p in zip(labels.tolist(), predicted.tolist(), strict=True):
        confusion[t, p] += 1
    assert report["confusion"] == confusion.tolist()
    off = confusion.clone().fill_diagonal_(0)
    top = report["confused_pairs"][0]
    assert top["count"] == int(off.max())
    assert off[classes.index(top["true"]), classes.index(top["predicted"])] == top["count"]


def test_classification_report_by_hand() -> None:
    report = classification_report([[5, 0, 0], [2, 3, 0], [0, 4, 0]], ["a", "b", "c"], top=2)
    assert report["per_class"]["a"] == {
        "precision": 5 / 7,
        "recall": 1.0,
        "f1": pytest.approx(2 * (5 / 7) / (5 / 7 + 1)),
        "support": 5,
    }
    assert report["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 4}
    assert report["confused_pairs"] == [
        {"true": "c", "predicted": "b", "count": 4},
        {"true": "b", "predicted": "a", "count": 2},
    ]
    assert report["accuracy"] == pytest.approx(8 / 14)


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda n: st.lists(st.lists(st.integers(0, 10**6), min_size=n, max_size=n), min_size=n, max_size=n)
    )
)
def test_classification_report_is_the_matrix_arithmetic_in_float64(rows: list[list[int]]) -> None:
    classes = [f"c{i}" for i in range(len(rows))]
    matrix = torch.tensor(rows, dtype=torch.float64)
    hits, true, predicted = matrix.diag(), matrix.sum(1), matrix.sum(0)
    for report in (classification_report(rows, classes), classification_report(torch.tensor(rows), classes)):
        for i, name in enumerate(classes):
            row = report["per_class"][name]
            assert row["precision"] == (float(hits[i] / predicted[i]) if predicted[i] else 0.0)
            assert row["recall"] == (float(hits[i] / true[i]) if true[i] else 0.0)
            assert row["support"] == int(true[i]) and type(row["support"]) is int
        assert report["accuracy"] == (float(hits.sum() / matrix.sum()) if matrix.sum() else 0.0)
        assert report["confusion"] == rows and all(type(v) is int for r in report["confusion"] for v in r)


def test_tensorboard_has_train_and_validation_runs_figures_and_hparams(finished: dict) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def events(run: str) -> EventAccumulator:
        accumulator = EventAccumulator(str(finished["run"] / "tb" / run), size_guidance={"images": 0, "scalars": 0})
        return accumulator.Reload()

    train, validation, results = events("train"), events("validation"), events("")
    history = json.loads((finished["run"] / "history.json").read_text())
    steps = [e.step for e in train.Scalars("epoch")]
    assert [e.value for e in train.Scalars("epoch")] == [r["epoch"] for r in history]
    for accumulator, prefix in ((train, "train"), (validation, "val")):
        assert [e.step for e in accumulator.Scalars("epoch_accuracy")] == steps, "the runs share steps and tags"
        assert [e.value for e in accumulator.Scalars("epoch_accuracy")] == pytest.approx(
            [r[f"{prefix}_accuracy"] for r in history]
        )
    assert len(train.Scalars("batch_loss")) >= 1 and len(train.Scalars("epoch_learning_rate")) == len(history)
    assert {"confusion_matrix", "predictions", "history"} <= set(results.Tags()["images"])
    assert results.PluginTagToContent("hparams"), "the hyperparameters, with the test metrics beside them"
    assert results.Scalars("test_accuracy")[-1].value == pytest.approx(finished["metrics"]["test_accuracy"])
    assert sorted(p.name for p in (finished["run"] / "tb").iterdir() if p.is_dir()) == ["train", "validation"]


def test_samples_picture_shows_each_image_large_under_its_class_name_in_black() -> None:
    images = torch.full((32, 1, 28, 28), 128, dtype=torch.uint8)
    labels = torch.arange(32) % 10
    picture = samples_figure(images, labels, FASHION_CLASSES)
    assert picture.size == (1200, 700) and picture.mode == "RGB"
    pixels = np.asarray(picture).astype(int)
    assert (pixels == 128).all(axis=2).sum() >= 32 * 120 * 120, "each 28x28 image is shown at least 120 pixels wide"
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 100) & (pixels[..., 2] < 100)
    assert not red.any(), "a class name, not a mistake"
    dark = (pixels.max(axis=2) < 80).sum()
    assert dark > 32 * 40, "every image has its caption"
    assert picture.tobytes() != samples_figure(images, (labels + 1) % 10, FASHION_CLASSES).tobytes(), "names differ"
