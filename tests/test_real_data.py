"""One real training: configs/base.yaml on the real Fashion-MNIST (Debian's dataset-fashion-mnist)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmnist_ignite import predict_images
from fmnist_ignite.export import export_run

from .conftest import REPO, run_cli
from .helpers import onnx_route_classes, product_photo

SYSTEM = Path("/usr/share/datasets/fashion-mnist")


def require_real_data() -> None:
    if not (SYSTEM / "train-images-idx3-ubyte.gz").is_file():
        message = f"the real Fashion-MNIST is not installed in {SYSTEM} (apt-get install dataset-fashion-mnist)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run this test")
        pytest.skip(message)


def train_base(tmp_path: Path, *overrides: str) -> Path:
    result = run_cli(
        str(REPO / "configs" / "base.yaml"),
        f"output_dir={tmp_path}",
        f"data.root={tmp_path / 'data'}",
        "logging.progress_bar=false",
        *overrides,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return tmp_path / "base"


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``configs/base.yaml`` trained in one process."""
    require_real_data()
    return train_base(tmp_path_factory.mktemp("real"))


@pytest.mark.slow
def test_base_config_reaches_the_target_accuracy_on_real_fashion_mnist(single: Path) -> None:
    history = json.loads((single / "history.json").read_text())
    metrics = json.loads((single / "metrics.json").read_text())
    assert 1 <= len(history) <= 10
    assert [r["epoch"] for r in history] == list(range(1, len(history) + 1))
    assert metrics["monitor"] == "val_accuracy"
    assert metrics["best_value"] == max(r["val_accuracy"] for r in history)
    assert metrics["best_value"] >= 0.85
    assert metrics["test_accuracy"] >= 0.84
    assert len(metrics["per_class_accuracy"]) == 10
    assert metrics["per_class_accuracy"]["Trouser"] > metrics["per_class_accuracy"]["Shirt"]


@pytest.mark.slow
def test_two_gloo_processes_reach_the_accuracy_of_one(single: Path, tmp_path: Path) -> None:
    # Same config, same effective batch (data.batch_size is shared between the processes).
    run = train_base(tmp_path, "distributed.backend=gloo", "distributed.nproc_per_node=2")
    one = json.loads((single / "metrics.json").read_text())
    two = json.loads((run / "metrics.json").read_text())
    assert abs(two["best_value"] - one["best_value"]) <= 0.01
    assert abs(two["test_accuracy"] - one["test_accuracy"]) <= 0.01
    assert two["test_accuracy"] >= 0.84


N_PHOTOS = 200


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning")
def test_predict_on_product_photos_agrees_with_the_originals_and_the_onnx_route(single: Path, tmp_path: Path) -> None:
    """Photos of test images the model gets right at 28x28: dark garments on a light background, RGB JPEGs of
    a few hundred pixels, off-centre with uneven margins. ``predict`` converts them by the data set's own
    conversion and should mostly give the originals' class; the exported model with its ``preprocess.py``
    gives ``predict``'s class on every photo."""
    raw = gzip.decompress((SYSTEM / "t10k-images-idx3-ubyte.gz").read_bytes())
    images = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:N_PHOTOS]
    labels = np.frombuffer(gzip.decompress((SYSTEM / "t10k-labels-idx1-ubyte.gz").read_bytes()), np.uint8, offset=8)
    originals = []
    for i, pixels in enumerate(images):
        originals.append(tmp_path / f"original{i}.png")
        Image.fromarray(pixels).save(originals[-1])
    classes = json.loads((single / "data.json").read_text())["classes"]
    at_28 = [answer["prediction"] for answer in predict_images(single, originals)]
    right = [i for i in range(N_PHOTOS) if at_28[i] == classes[labels[i]]]
    assert len(right) >= 0.8 * N_PHOTOS
    rng = np.random.default_rng(0)
    photos = []
    for i in right:
        photos.append(tmp_path / f"photo{i}.jpg")
        product_photo(images[i], rng).save(photos[-1], quality=90)
    with Image.open(photos[0]) as first:
        assert first.mode == "RGB" and min(first.size) > 224 and max(first.size) < 700
    answers = predict_images(single, photos)
    assert all(answer["inverted"] for answer in answers)
    predicted = [answer["prediction"] for answer in answers]
    agreement = sum(predicted[k] == at_28[i] for k, i in enumerate(right)) / len(right)
    assert agreement >= 0.9, f"predict agrees with the 28x28 originals on {agreement:.1%} of the photos"
    model = export_run(single, output=tmp_path / "export" / "model.onnx")
    assert onnx_route_classes(model, photos) == predicted
