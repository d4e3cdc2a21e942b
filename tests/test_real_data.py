"""One real training: configs/base.yaml on the real Fashion-MNIST (Debian's dataset-fashion-mnist)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import REPO, run_cli

SYSTEM = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
def test_base_config_reaches_the_target_accuracy_on_real_fashion_mnist(tmp_path: Path) -> None:
    if not (SYSTEM / "train-images-idx3-ubyte.gz").is_file():
        message = f"the real Fashion-MNIST is not installed in {SYSTEM} (apt-get install dataset-fashion-mnist)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run this test")
        pytest.skip(message)
    result = run_cli(
        str(REPO / "configs" / "base.yaml"),
        f"output_dir={tmp_path}",
        f"data.root={tmp_path / 'data'}",
        "logging.progress_bar=false",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    run = tmp_path / "base"
    history = json.loads((run / "history.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert 1 <= len(history) <= 10
    assert [r["epoch"] for r in history] == list(range(1, len(history) + 1))
    assert metrics["monitor"] == "val_accuracy"
    assert metrics["best_value"] == max(r["val_accuracy"] for r in history)
    assert metrics["best_value"] >= 0.85
    assert metrics["test_accuracy"] >= 0.84
    assert len(metrics["per_class_accuracy"]) == 10
    assert metrics["per_class_accuracy"]["Trouser"] > metrics["per_class_accuracy"]["Shirt"]
