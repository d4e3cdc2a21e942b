"""One real training: configs/base.yaml on the real Fashion-MNIST (Debian's dataset-fashion-mnist)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import REPO, run_cli

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
