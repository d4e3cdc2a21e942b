"""Loading a trained model from a run directory, and what it refuses to read."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fmnist_ignite import Config, RunDirError, build_experiment, load_trained_model, predict_images
from fmnist_ignite.fileio import safe_torch_load


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, system_dir: Path) -> Path:
    from fmnist_ignite import load_config

    from .conftest import BASE, small_overrides

    tmp = tmp_path_factory.mktemp("evaluation")
    config = load_config(BASE, [*small_overrides(tmp, system_dir), "trainer.max_epochs=2"])
    build_experiment(config).run()
    return config.run_dir


def test_load_trained_model_gives_the_run_model_and_how_to_feed_it(finished: Path) -> None:
    trained = load_trained_model(finished)
    assert trained.weights == finished / "model.pt"
    assert trained.classes[0] == "T-shirt/top" and trained.image_shape == (1, 28, 28)
    saved = safe_torch_load(finished / "model.pt")
    assert all(torch.equal(trained.model.state_dict()[k], v) for k, v in saved.items())
    assert not trained.model.training
    assert load_trained_model(str(finished), "best").weights == finished / "checkpoints" / "best_model.pt"
    assert load_trained_model(finished, "last").weights.name == "checkpoint_2.pt"


def test_the_data_set_comes_from_data_json_else_from_the_config(finished: Path, tmp_path: Path) -> None:
    """It chooses how predict converts a picture; a run whose data.json predates it has its config."""
    import json
    import shutil

    assert json.loads((finished / "data.json").read_text())["dataset"] == "fashion_mnist"
    assert load_trained_model(finished).dataset == "fashion_mnist"
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    data = json.loads((copy / "data.json").read_text())
    (copy / "data.json").write_text(json.dumps({**data, "dataset": "cifar10"}))
    assert load_trained_model(copy).dataset == "cifar10"
    del data["dataset"]
    (copy / "data.json").write_text(json.dumps(data))
    assert load_trained_model(copy).dataset == "fashion_mnist"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{}", "'image_shape' must be [channels, height, width] of positive integers"),
        ("1", "expected a JSON object, got int"),
        ("not json", "data.json: not valid JSON"),
        (
            '{"image_shape": [1, 28, 28], "classes": ["a"], "mean": 0.3, "std": 0, "normalize": true}',
            "'std' must be greater than 0",
        ),
        (
            '{"image_shape": [1, 28, 28], "classes": [], "mean": 0.3, "std": 0.3, "normalize": true}',
            "'classes' must be a non-empty list of names",
        ),
        (
            '{"image_shape": [1, 28, 1e9], "classes": ["a"], "mean": 0.3, "std": 0.3, "normalize": true}',
            "'image_shape' must be",
        ),
    ],
)
def test_a_damaged_data_json_is_one_line_naming_the_file(
    finished: Path, tmp_path: Path, content: str, message: str
) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    (copy / "data.json").write_text(content)
    with pytest.raises(RunDirError) as info:
        predict_images(copy, [])
    assert str(info.value).startswith(f"{copy / 'data.json'}")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_evaluate_needs_nothing_but_the_run(finished: Path, make_config: Callable[..., Config]) -> None:
    from fmnist_ignite import evaluate_run

    result = evaluate_run(finished, "val")
    history = json.loads((finished / "history.json").read_text())
    metrics = json.loads((finished / "metrics.json").read_text())
    best = history[metrics["best_epoch"] - 1]
    assert result["accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-12)
    assert result["loss"] == pytest.approx(best["val_loss"], rel=1e-5)


def test_evaluate_refuses_weights_that_are_not_finite_or_do_not_fit_naming_the_file(
    finished: Path, tmp_path: Path, cli: Callable
) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    weights = safe_torch_load(copy / "model.pt")
    name = next(k for k, v in weights.items() if v.is_floating_point())
    torch.save({**weights, name: torch.full_like(weights[name], float("nan"))}, copy / "model.pt")
    code, out, err = cli("evaluate", copy)
    assert code != 0 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"error: {copy / 'model.pt'}: '{name}' holds values that are not finite (nan or inf)")

    torch.save({**weights, name: weights[name][:3]}, copy / "model.pt")
    code, out, err = cli("evaluate", copy)
    assert code != 0 and len(err.splitlines()) == 1
    assert err.startswith(f"error: {copy / 'model.pt'} does not hold weights for this run's model: Error(s) in loading")
    assert f"size mismatch for {name}: copying a param with shape torch.Size([3" in err
