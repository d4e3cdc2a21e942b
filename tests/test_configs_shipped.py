from __future__ import annotations

from pathlib import Path

import pytest

from fmnist_ignite import build_experiment, load_config

from .helpers import write_image_folder

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    config = load_config(path)
    assert config.name == path.stem


def test_the_image_folder_example_trains_on_a_folder_of_class_subfolders(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", per_class=(10, 2), size=(40, 30), color=True)
    overrides = [f"data.root={root}", "data.val_size=6", f"output_dir={tmp_path / 'runs'}", "trainer.max_epochs=1"]
    experiment = build_experiment(load_config(REPO / "configs" / "image_folder.yaml", overrides))
    assert experiment.data.image_shape == (3, 28, 28) and experiment.data.classes == ("bag", "coat", "shirt")
    metrics = experiment.run()
    assert 0 <= metrics["test_accuracy"] <= 1 and len(experiment.history) == 1
