"""The pictures, the per-class report, TensorBoard, and the evaluate / predict / compare commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fmnist_ignite import build_experiment, load_config
from fmnist_ignite.data import FASHION_CLASSES
from fmnist_ignite.reports import classification_report, predictions_figure

from .conftest import REPO, run_cli, small_overrides


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, system_dir: Path) -> dict:
    """A finished small run (TensorBoard is on by default), and what the test needs to check it."""
    tmp = tmp_path_factory.mktemp("finished")
    config = load_config(REPO / "configs" / "base.yaml", small_overrides(tmp, system_dir))
    experiment = build_experiment(config)
    metrics = experiment.run()
    data = experiment.data
    x, _ = experiment.context.prepare_batch((data.test_images, data.test_labels), "cpu", False)
    with torch.no_grad():
        predicted = experiment.model(x).argmax(1)
    return {"run": config.run_dir, "metrics": metrics, "data": data, "predicted": predicted, "tmp": tmp}


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


def test_evaluate_command_on_both_splits(finished: dict) -> None:
    run = finished["run"]
    test = run_cli("evaluate", str(run), "--json")
    assert test.returncode == 0, test.stderr
    result = json.loads(test.stdout)
    assert result["split"] == "test" and result["weights"].endswith("model.pt")
    assert result["accuracy"] == pytest.approx(finished["metrics"]["test_accuracy"])
    val = run_cli("evaluate", str(run), "--split", "val", "--checkpoint", "best")
    assert val.returncode == 0, val.stderr
    first = val.stdout.splitlines()[0]
    assert "val split" in first and "checkpoints/best_model.pt" in first
    assert finished["metrics"]["monitor"] == "val_accuracy"
    assert f"accuracy {finished['metrics']['best_value']:.4f}" in first
    assert "Most confused (true -> predicted):" in val.stdout
    last = run_cli("evaluate", str(run), "--checkpoint", "last", "--json")
    assert json.loads(last.stdout)["weights"].endswith(f"checkpoint_{finished['metrics']['epochs_trained']}.pt")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["evaluate", "NOWHERE"], 2, "run directory NOWHERE does not exist"),
        (["evaluate", "RUN", "--split", "train"], 2, "argument --split: invalid choice: 'train'"),
        (["evaluate", "RUN", "--checkpoint", "nope.pt"], 2, "--checkpoint nope.pt: no such file; use best, last"),
        (["predict", "RUN"], 2, "the following arguments are required: IMAGE"),
        (["compare", "NOWHERE"], 2, "run directory NOWHERE does not exist"),
    ],
)
def test_commands_refuse_bad_input_in_one_line(finished: dict, args: list[str], code: int, message: str) -> None:
    args = [str(finished["run"]) if a == "RUN" else a for a in args]
    result = run_cli(*args)
    assert result.returncode == code
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_predict_converts_images_like_the_training_data(finished: dict, tmp_path: Path) -> None:
    data, predicted = finished["data"], finished["predicted"]
    exact = tmp_path / "test0.png"
    Image.fromarray(data.test_images[0, 0].numpy()).save(exact)
    large = tmp_path / "large.jpg"
    Image.fromarray(data.test_images[1, 0].numpy()).resize((200, 200)).convert("RGB").save(large, quality=95)
    broken = tmp_path / "notes.png"
    broken.write_text("not a picture")
    result = run_cli("predict", str(finished["run"]), str(exact), str(broken), str(large), "--json")
    assert result.returncode == 1, "one file could not be read"
    answers = json.loads(result.stdout)
    assert [a["file"] for a in answers] == [str(exact), str(broken), str(large)]
    assert answers[0]["prediction"] == data.classes[int(predicted[0])]
    assert len(answers[0]["top"]) == 3 and answers[0]["top"][0]["class"] == answers[0]["prediction"]
    assert sum(t["probability"] for t in answers[0]["top"]) <= 1.0 + 1e-6
    assert answers[1] == {"file": str(broken), "error": f"{broken}: not an image file PIL can read"}
    assert "prediction" in answers[2]
    assert result.stderr.strip() == f"error: {broken}: not an image file PIL can read"
    text = run_cli("predict", str(finished["run"]), str(exact))
    assert text.returncode == 0 and text.stdout.startswith(f"{exact}: {answers[0]['prediction']} (")


def test_compare_shows_metrics_and_differing_settings(finished: dict, system_dir: Path) -> None:
    tmp = finished["tmp"]
    other = load_config(
        REPO / "configs" / "base.yaml", [*small_overrides(tmp, system_dir), "name=other", "optimizer.lr=0.05"]
    )
    build_experiment(other).run()
    output = tmp / "cmp.png"
    result = run_cli("compare", str(finished["run"]), str(other.run_dir), "--output", str(output))
    assert result.returncode == 0, result.stderr
    header, first, second = result.stdout.splitlines()[:3]
    assert header.split() == [
        "run",
        "test_accuracy",
        "monitor",
        "best_value",
        "best_epoch",
        "epochs",
        "optimizer.lr",
    ]
    assert (
        first.split()[0] == str(finished["run"]) and first.split()[1] == f"{finished['metrics']['test_accuracy']:.4f}"
    )
    assert second.split()[-1] == "0.05"
    with Image.open(output) as image:
        assert image.size == (1000, 400)
