"""data/datasets.py: ImageData's checks and properties, the built-in data sets, and the registry lookup."""

from __future__ import annotations

import json
import os
import pickle
import re
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import fmnist_ignite
from fmnist_ignite import ConfigError, DataError, load_config
from fmnist_ignite.data.datasets import (
    FASHION_CLASSES,
    ImageData,
    border_brightness,
    load_cifar10,
    load_data,
    load_fashion_mnist,
    load_image_folder,
    pixel_statistics,
)
from fmnist_ignite.registry import DATASETS

from .conftest import BASE, CLI, synthetic_images, write_cifar_archive, write_fashion_gz
from .helpers import data_config, write_fashion, write_image_folder


def image_data(**changes: Any) -> ImageData:
    fields: dict[str, Any] = {
        "train_images": torch.zeros(4, 1, 5, 5, dtype=torch.uint8),
        "train_labels": torch.tensor([0, 1, 2, 1]),
        "test_images": torch.zeros(2, 1, 5, 5, dtype=torch.uint8),
        "test_labels": torch.tensor([2, 0]),
        "classes": ("a", "b", "c"),
        "mean": 0.5,
        "std": 0.25,
    }
    return ImageData(**{**fields, **changes})


def tiny_dataset(config: Any) -> ImageData:
    """A data set plugin, named by its dotted path."""
    return image_data()


def not_a_dataset(config: Any) -> dict[str, int]:
    return {"images": 0}


# -- ImageData ----------------------------------------------------------------------------------------------------


def test_image_shape_and_immutability() -> None:
    data = image_data()
    assert data.image_shape == (1, 5, 5)
    assert image_data(
        train_images=torch.zeros(4, 3, 2, 7, dtype=torch.uint8), test_images=torch.zeros(2, 3, 2, 7, dtype=torch.uint8)
    ).image_shape == (3, 2, 7)
    with pytest.raises(AttributeError):
        data.mean = 0.1  # type: ignore[misc]
    assert fmnist_ignite.ImageData is ImageData


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"train_images": torch.zeros(4, 1, 5, 5)},
            "train images must be a uint8 tensor (N, C, H, W), got torch.float32 (4, 1, 5, 5)",
        ),
        (
            {"test_images": torch.zeros(2, 5, 5, dtype=torch.uint8)},
            "test images must be a uint8 tensor (N, C, H, W), got torch.uint8 (2, 5, 5)",
        ),
        ({"train_labels": torch.tensor([0, 1, 2])}, "train has 4 images but 3 labels"),
        ({"test_labels": torch.tensor([0, 3])}, "test labels must lie in 0..2"),
        ({"train_labels": torch.tensor([0, -1, 2, 1])}, "train labels must lie in 0..2"),
        (
            {"test_images": torch.zeros(2, 1, 6, 5, dtype=torch.uint8)},
            "train images have shape (C, H, W) (1, 5, 5) but test images (1, 6, 5); the model takes one shape: "
            "replace the files that differ",
        ),
    ],
)
def test_inconsistent_data_is_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError) as info:
        image_data(**changes)
    assert str(info.value) == message


def test_an_empty_test_split_is_allowed() -> None:
    data = image_data(test_images=torch.zeros(0, 1, 5, 5, dtype=torch.uint8), test_labels=torch.zeros(0).long())
    assert len(data.test_labels) == 0


def test_border_brightness_by_hand() -> None:
    image = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    image[..., 0, :] = 255  # the top row: 4 of the 12 border pixels
    image[..., 1:3, 1:3] = 255  # the inside does not count
    assert border_brightness(image) == pytest.approx(4 / 12)
    assert border_brightness(torch.full((3, 1, 5, 5), 51, dtype=torch.uint8)) == pytest.approx(0.2)
    assert border_brightness(torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("value", "expected"), [(0, "dark"), (63, "dark"), (128, None), (190, None), (192, "light"), (255, "light")]
)
def test_background(value: int, expected: str | None) -> None:
    images = torch.full((4, 1, 5, 5), value, dtype=torch.uint8)
    images[:, :, 2, 2] = 255 - value  # the middle does not count
    assert image_data(train_images=images).background == expected


# -- the built-in data sets ---------------------------------------------------------------------------------------


def test_fashion_mnist(tmp_path: Path) -> None:
    system = write_fashion_gz(tmp_path / "system", n_train=30, n_test=10)
    config = load_config({"data": {"root": str(tmp_path / "root"), "system_dir": str(system), "val_size": 5}}).data
    data = load_fashion_mnist(config)
    assert data.train_images.shape == (30, 1, 28, 28) and data.test_images.shape == (10, 1, 28, 28)
    assert data.train_labels.dtype == torch.int64 and data.test_labels.dtype == torch.int64
    assert data.classes == FASHION_CLASSES and len(FASHION_CLASSES) == 10 and FASHION_CLASSES[9] == "Ankle boot"
    assert (data.mean, data.std) == (0.2860, 0.3530)
    images, labels = synthetic_images(10, (28, 28), 2)
    assert torch.equal(data.test_images[:, 0], torch.from_numpy(images))
    assert data.test_labels.tolist() == labels.tolist()
    assert data.image_shape == (1, 28, 28)


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    root = tmp_path / "cifar"
    write_cifar_archive(root, per_batch=4, n_test=6)
    return root


def cifar_config(root: Path) -> Any:
    return load_config({"data": {"dataset": "cifar10", "root": str(root), "val_size": 2}}).data


def test_cifar10(cifar_root: Path) -> None:
    data = load_cifar10(cifar_config(cifar_root))
    assert data.train_images.shape == (20, 3, 32, 32) and data.test_images.shape == (6, 3, 32, 32)
    assert data.classes[:3] == ("airplane", "automobile", "bird") and len(data.classes) == 10
    assert (data.mean, data.std) == (0.4734, 0.2516)
    images, labels = synthetic_images(4, (3, 32, 32), 12)  # data_batch_3
    assert torch.equal(data.train_images[8:12], torch.from_numpy(images))
    assert data.train_labels[8:12].tolist() == labels.tolist()


class RunsCode:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.getcwd, ())


def rewrite_batch(root: Path, name: str, entry: Any) -> Path:
    load_cifar10(cifar_config(root))  # extracts the batches
    path = root / "cifar-10-batches-py" / name
    path.write_bytes(pickle.dumps(entry, protocol=2))
    return path


def test_a_batch_naming_other_globals_is_refused(cifar_root: Path) -> None:
    path = rewrite_batch(cifar_root, "data_batch_2", {"data": RunsCode(), "labels": []})
    with pytest.raises(DataError) as info:
        load_cifar10(cifar_config(cifar_root))
    assert str(info.value) == (
        f"{path} holds a Python object other than arrays, lists, strings and numbers (posix.getcwd); "
        "refused for safety: replace it with the original CIFAR-10 file"
    )


@pytest.mark.parametrize(
    ("name", "entry", "message"),
    [
        ("test_batch", [1, 2], "holds a list, not a CIFAR-10 dictionary; replace the file"),
        (
            "test_batch",
            {"data": np.zeros((2, 100), dtype=np.uint8), "labels": [0, 1]},
            "'data' must be a uint8 array of shape (N, 3072), got uint8 (2, 100); replace the file",
        ),
        (
            "data_batch_1",
            {"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [0, 10]},
            "'labels' must be 2 integers from 0 to 9, one per image; replace the file",
        ),
        (
            "data_batch_1",
            {"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [0]},
            "'labels' must be 2 integers from 0 to 9, one per image; replace the file",
        ),
        (
            "batches.meta",
            {"label_names": ["a", "b"]},
            "'label_names' must be a list of 10 class names; replace the file",
        ),
    ],
)
def test_malformed_batches_are_refused(cifar_root: Path, name: str, entry: Any, message: str) -> None:
    path = rewrite_batch(cifar_root, name, entry)
    with pytest.raises(DataError) as info:
        load_cifar10(cifar_config(cifar_root))
    assert str(info.value).startswith(str(path)) and str(info.value).endswith(message)


def test_a_corrupt_batch_says_which_folder_to_delete(cifar_root: Path) -> None:
    load_cifar10(cifar_config(cifar_root))
    folder = cifar_root / "cifar-10-batches-py"
    (folder / "data_batch_4").write_bytes(b"\x80\x02}q\x00(")  # a pickle cut short
    with pytest.raises(DataError) as info:
        load_cifar10(cifar_config(cifar_root))
    message = str(info.value)
    assert message.startswith(f"CIFAR-10 batches under {folder} are corrupt (data_batch_4: ")
    assert message.endswith("delete that folder to prepare it again")


# -- image_folder ---------------------------------------------------------------------------------------------------


def folder_config(root: Path, *overrides: str) -> Any:
    return load_config({"data": {"dataset": "image_folder", "root": str(root), "val_size": 3}}, overrides).data


def test_image_folder_with_a_test_folder(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", color=True)
    data = load_image_folder(folder_config(root))
    assert data.classes == ("bag", "coat", "shirt") and data.image_shape == (3, 10, 12)
    assert data.train_images.shape == (12, 3, 10, 12) and data.test_images.shape == (6, 3, 10, 12)
    assert data.test_labels.tolist() == [0, 0, 1, 1, 2, 2] and data.train_labels.dtype == torch.int64
    pixels = data.train_images.double() / 255
    assert data.mean == pytest.approx(float(pixels.mean())) and data.std == pytest.approx(float(pixels.std()), 1e-2)
    small = load_image_folder(folder_config(root, "data.image_size=6", "data.channels=1"))
    assert small.image_shape == (1, 6, 6) and small.test_images.shape == (6, 1, 6, 6)


def test_image_folder_without_a_test_folder_holds_out_the_same_test_images_for_every_seed(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", per_class=(6, 0), test=False)
    data = load_image_folder(folder_config(root))
    assert len(data.train_labels) == 15 and len(data.test_labels) == 3
    whole = torch.cat([data.train_images, data.test_images]).flatten(1)
    assert len({tuple(row.tolist()) for row in whole}) == 18, "each image once, in one split or the other"
    again = load_image_folder(folder_config(root))
    assert torch.equal(again.test_images, data.test_images) and torch.equal(again.test_labels, data.test_labels)
    with pytest.raises(ConfigError) as info:
        load_image_folder(folder_config(root, "data.val_size=9"))
    assert str(info.value) == (
        f"{root} has no test/ folder, so data.val_size=9 of its 18 training images would be held out for testing and "
        "as many for validation; add a test/ folder or lower data.val_size"
    )


def test_pixel_statistics_of_uint8_images() -> None:
    images = torch.tensor([0, 255, 0, 255], dtype=torch.uint8).reshape(4, 1, 1, 1)
    assert pixel_statistics(images, chunk=3) == (0.5, 0.5)
    assert pixel_statistics(torch.full((2, 1, 2, 2), 51, dtype=torch.uint8)) == (0.2, 1 / 255), "std at least 1/255"


def test_a_run_on_your_own_images_trains_tests_evaluates_predicts_and_exports(
    tmp_path: Path, cli: Callable[..., CLI]
) -> None:
    root = write_image_folder(tmp_path / "images", per_class=(12, 4))
    runs = tmp_path / "runs"
    settings = [
        "data.dataset=image_folder",
        f"data.root={root}",
        "data.val_size=6",
        "data.batch_size=6",
        "trainer.max_epochs=3",
        "optimizer.lr=0.05",
        f"output_dir={runs}",
        "name=mine",
        "logging.progress_bar=false",
        "data.transforms=[{RandomCrop: {size: [10, 12], padding: 1}}]",
    ]
    code, out, err = cli(BASE, *settings)
    assert code == 0, err
    run = runs / "mine"
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_accuracy"] == 1.0, "three classes of distinct brightness"
    assert set(metrics["per_class_accuracy"]) == {"bag", "coat", "shirt"}
    described = json.loads((run / "data.json").read_text())
    assert described["dataset"] == "image_folder" and described["classes"] == ["bag", "coat", "shirt"]
    assert described["image_shape"] == [1, 10, 12] and 0 < described["mean"] < 1 and described["std"] > 0
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["transforms"] == [
        {"RandomCrop": {"size": [10, 12], "padding": 1}}
    ]

    code, out, err = cli("evaluate", str(run), "--json")
    assert code == 0, err
    assert json.loads(out)["accuracy"] == metrics["test_accuracy"]
    code, out, err = cli("predict", str(run), str(root / "test" / "shirt" / "0.png"))
    assert code == 0, err
    assert out.startswith(f"{root / 'test' / 'shirt' / '0.png'}: shirt")
    code, out, err = cli("export", str(run), "--format", "torchscript")
    assert code == 0, err
    assert out == f"{run / 'model.ts'}\n"
    scripted = torch.jit.load(str(run / "model.ts"))
    dark = torch.full((1, 1, 10, 12), 40, dtype=torch.uint8)
    assert int(scripted(dark).argmax()) == 0, "bag, the darkest class"


def test_a_folder_without_test_says_what_it_tests_on_and_evaluate_json_stays_json(
    tmp_path: Path, cli: Callable[..., CLI]
) -> None:
    root = write_image_folder(tmp_path / "images", per_class=(6, 0), test=False)
    run = tmp_path / "runs" / "mine"
    settings = [f"data.root={root}", "data.val_size=3", f"output_dir={run.parent}", "name=mine"]
    code, out, err = cli(BASE, "data.dataset=image_folder", "trainer.max_epochs=1", *settings)
    assert code == 0, err
    assert f"image_folder: {root} has no test/ folder; 3 of the 18 training images are held out as the test set" in out
    (root / ".fmnist_ignite").rename(tmp_path / "cache")  # evaluate decodes again, and says so
    code, out, err = cli("evaluate", str(run), "--json")
    assert code == 0, err
    assert json.loads(out)["accuracy"] == json.loads((run / "metrics.json").read_text())["test_accuracy"]
    assert "image_folder: decoding 18 images" in err and "has no test/ folder" in err


def test_a_bad_image_folder_stops_the_command_line_with_exit_2_and_writes_nothing(
    tmp_path: Path, cli: Callable[..., CLI]
) -> None:
    root = write_image_folder(tmp_path / "images")
    (root / "train" / "bag" / "notes.txt").write_text("x")
    code, out, err = cli(BASE, "data.dataset=image_folder", f"data.root={root}", f"output_dir={tmp_path / 'runs'}")
    assert out == ""
    assert code == 2
    assert f"{root / 'train' / 'bag' / 'notes.txt'}: not a PNG or JPEG image" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


# -- the registry ---------------------------------------------------------------------------------------------------


def test_built_ins_are_registered() -> None:
    assert DATASETS.get("fashion_mnist") is load_fashion_mnist
    assert DATASETS.get("cifar10") is load_cifar10
    assert DATASETS.get("image_folder") is load_image_folder


def test_load_data_uses_the_named_plugin(tmp_path: Path) -> None:
    config = load_config({"data": {"dataset": f"{__name__}:tiny_dataset", "val_size": 1}}).data
    data = load_data(config)
    assert isinstance(data, ImageData) and data.classes == ("a", "b", "c") and len(data.train_labels) == 4


def test_a_plugin_must_return_image_data() -> None:
    config = load_config({"data": {"dataset": f"{__name__}:not_a_dataset", "val_size": 1}}).data
    with pytest.raises(ConfigError) as info:
        load_data(config)
    assert str(info.value) == f"data.dataset '{__name__}:not_a_dataset' returned dict, not ImageData"


def test_an_unknown_data_set() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'fashion_mnits'"):  # the config refuses it first
        load_config({"data": {"dataset": "fashion_mnits"}})
    config = load_config({}).data.model_copy(update={"dataset": "fashion_mnits"})
    with pytest.raises(ConfigError, match="unknown dataset 'fashion_mnits' \\(did you mean 'fashion_mnist'\\?\\)"):
        load_data(config)


def test_labels_of_the_wrong_shape_are_reported_as_such() -> None:
    with pytest.raises(DataError) as info:
        image_data(train_labels=torch.zeros(4, 1).long())
    assert str(info.value) == "train labels must be one class number per image, shape (N,); got (4, 1)"


class Payload:
    """Unpickling this runs a shell command, as a crafted batch file would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def cifar_folder(root: Path) -> Path:
    with tarfile.open(write_cifar_archive(root), "r:gz") as tar:
        tar.extractall(root, filter="data")
    return root / "cifar-10-batches-py"


@pytest.mark.parametrize("where", ["data_batch_1", "test_batch", "batches.meta"])
def test_pickle_payload_in_a_cifar_batch_is_refused_not_run(tmp_path: Path, where: str) -> None:
    folder = cifar_folder(tmp_path / "data")
    marker = tmp_path / "MARKER"
    if where == "batches.meta":  # hidden inside the dictionary, where torchvision reads the class names
        payload = {"label_names": ["a"] * 9 + [Payload(marker)], "num_cases_per_batch": 20}
    else:
        payload = Payload(marker)
    (folder / where).write_bytes(pickle.dumps(payload))
    with pytest.raises(DataError) as info:
        load_data(data_config(tmp_path / "data", dataset="cifar10"))
    assert not marker.exists(), "the payload ran"
    assert str(info.value) == (
        f"{folder / where} holds a Python object other than arrays, lists, strings and numbers "
        f"({os.system.__module__}.system); refused for safety: replace it with the original CIFAR-10 file"
    )


def cifar_batch(n: int, protocol: int = 4, byte_keys: bool = False) -> bytes:
    images, labels = synthetic_images(n, (3, 32, 32), 7)
    batch = {"batch_label": "b", "labels": labels.tolist(), "data": images.reshape(n, -1), "filenames": []}
    if byte_keys:
        batch = {key.encode(): value for key, value in batch.items()}
    return pickle.dumps(batch, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_batches_of_other_pickle_protocols_and_byte_keys_load(tmp_path: Path, protocol: int) -> None:
    folder = cifar_folder(tmp_path / "data")
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(cifar_batch(4, protocol, byte_keys=True))
    names = [n.encode() for n in ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=protocol))
    data = load_data(data_config(tmp_path / "data", dataset="cifar10"))
    images, labels = synthetic_images(4, (3, 32, 32), 7)
    assert data.train_images.shape == (20, 3, 32, 32) and data.test_images.shape == (4, 3, 32, 32)
    assert data.test_images.numpy().tobytes() == images.tobytes()
    assert data.test_labels.tolist() == labels.tolist()
    assert data.classes[1] == "car"


class NewArray:
    """Pickles as a call of ``numpy.ndarray(shape, uint8)``: an array the file does not hold."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def __reduce__(self):
        return (np.ndarray, (self.shape, np.dtype(np.uint8)))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "data_batch_2",
            {"data": np.zeros((4, 3000), np.uint8), "labels": [0] * 4},
            "'data' must be a uint8 array of shape (N, 3072), got uint8 (4, 3000); replace the file",
        ),
        (
            "data_batch_2",
            {"data": np.zeros((4, 3072), np.float32), "labels": [0] * 4},
            "'data' must be a uint8 array of shape (N, 3072), got float32 (4, 3072); replace the file",
        ),
        (
            "test_batch",
            {"data": np.zeros((4, 3072), np.uint8), "labels": [0] * 3},
            "'labels' must be 4 integers from 0 to 9, one per image; replace the file",
        ),
        (
            "test_batch",
            {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]},
            "'labels' must be 2 integers from 0 to 9, one per image; replace the file",
        ),
        (
            "data_batch_3",
            {"data": NewArray((100_000, 3072)), "labels": []},
            "claims an array of 307200000 bytes in a file of",
        ),
        (
            "batches.meta",
            {"label_names": ["a"] * 9},
            "'label_names' must be a list of 10 class names; replace the file",
        ),
        ("batches.meta", [1, 2], "holds a list, not a CIFAR-10 dictionary; replace the file"),
    ],
    ids=["data-3000-wide", "data-float", "labels-short", "labels-10", "array-not-in-file", "names-9", "not-a-dict"],
)
def test_cifar_batches_of_the_wrong_shape_are_refused(tmp_path: Path, name: str, content, message: str) -> None:
    folder = cifar_folder(tmp_path / "data")
    (folder / name).write_bytes(pickle.dumps(content))
    with pytest.raises(DataError, match=f"^{re.escape(str(folder / name))}:? .*{re.escape(message)}"):
        load_data(data_config(tmp_path / "data", dataset="cifar10"))


def test_corrupt_cifar_batch_keeps_its_message(tmp_path: Path) -> None:
    folder = cifar_folder(tmp_path / "data")
    (folder / "data_batch_4").write_bytes(cifar_batch(4)[:-50])
    with pytest.raises(DataError) as info:
        load_data(data_config(tmp_path / "data", dataset="cifar10"))
    assert str(info.value).startswith(f"CIFAR-10 batches under {folder} are corrupt (data_batch_4: UnpicklingError: ")
    assert str(info.value).endswith("; delete that folder to prepare it again")
    assert "\n" not in str(info.value)


def test_test_images_of_another_shape_are_refused_before_training(tmp_path: Path) -> None:
    system = write_fashion(tmp_path / "system", train_side=(28, 28), test_side=(27, 29))
    with pytest.raises(DataError) as info:
        load_data(data_config(tmp_path / "data", system))
    assert str(info.value) == (
        "train images have shape (C, H, W) (1, 28, 28) but test images (1, 27, 29); the model takes one shape: "
        "replace the files that differ"
    )


def a_failing_dataset(config: Any) -> ImageData:
    raise KeyError("labels")


def test_a_plugin_that_raises_is_one_line_naming_the_data_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Class 6 of issue 19: a data set plugin's own exception is one line, not a traceback."""
    from fmnist_ignite.app.cli import main

    target = f"{__name__}:a_failing_dataset"
    config = load_config({"data": {"dataset": target, "val_size": 1}}).data
    with pytest.raises(DataError) as info:
        load_data(config)
    assert str(info.value) == f"data.dataset '{target}': its loader failed (KeyError: 'labels')"
    code = main([str(BASE), f"data.dataset={target}", f"output_dir={tmp_path / 'runs'}"])
    captured = capsys.readouterr()
    assert (code, captured.out) == (1, "")
    assert captured.err == f"error: data.dataset '{target}': its loader failed (KeyError: 'labels')\n"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "bad", ["cat\x1b[31mRED\x1b[0m", "two\nlines", "bell\x07", "zero\u200bwidth", "   ", "x" * 101]
)
def test_cifar_class_names_with_control_characters_are_refused(cifar_root: Path, bad: str) -> None:
    names = ["plane", "car", "bird", bad, "deer", "dog", "frog", "horse", "ship", "truck"]
    path = rewrite_batch(cifar_root, "batches.meta", {"label_names": names})
    with pytest.raises(DataError) as info:
        load_cifar10(cifar_config(cifar_root))
    message = str(info.value)
    assert message.startswith(f"{path}: class 3 of 'label_names' (")
    assert message.endswith(
        "must be 1 to 100 printable characters, without control characters or escapes; replace the file"
    )
    assert "\n" not in message and "\x1b" not in message and "\x07" not in message
