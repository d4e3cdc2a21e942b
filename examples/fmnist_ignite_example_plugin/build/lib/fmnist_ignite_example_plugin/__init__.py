"""An example plugin package for fmnist_ignite.

Installing it (``pip install examples/fmnist_ignite_example_plugin``) makes three names
available to any config, with no import in the config's own code:

- ``handlers: [{target: epoch_log}]``: :class:`EpochLog`, a stateful handler;
- ``model: {name: mlp, kwargs: {hidden: 64}}``: :func:`build_mlp`;
- ``data: {dataset: prototypes}``: :func:`load_prototypes`, a small synthetic data set.
"""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine
from torch import nn

from fmnist_ignite import Context, ImageData


class EpochLog:
    """Appends ``epoch <n> val_accuracy <a> (call <k>)`` to ``RUN_DIR/<filename>`` after each epoch.

    ``k`` counts the calls over the whole run, resumes included: the count is in ``state_dict``.
    """

    def __init__(self, context: Context, filename: str = "epoch_log.txt") -> None:
        self.context = context
        self.path = context.run_dir / filename
        self.calls = 0

    def __call__(self, engine: Engine) -> None:
        self.calls += 1
        accuracy = self.context.evaluator.state.metrics["accuracy"]
        with self.path.open("a") as f:
            f.write(f"epoch {engine.state.epoch} val_accuracy {accuracy:.4f} (call {self.calls})\n")

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = state["calls"]


def build_mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 64) -> nn.Module:
    """A one-hidden-layer perceptron, to compare against logistic regression."""
    features = 1
    for size in input_shape:
        features *= size
    return nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def load_prototypes(config: Any, n_train: int = 2000, n_test: int = 500) -> ImageData:
    """A synthetic Fashion-MNIST-shaped data set: one noisy prototype per class (no files needed)."""
    generator = torch.Generator().manual_seed(0)
    prototypes = torch.randint(0, 256, (10, 1, 28, 28), generator=generator).float()

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 10, (n,), generator=generator)
        noise = torch.randn(n, 1, 28, 28, generator=generator) * 80
        return (prototypes[labels] + noise).clamp(0, 255).to(torch.uint8), labels

    train_images, train_labels = draw(n_train)
    test_images, test_labels = draw(n_test)
    classes = tuple(f"prototype {i}" for i in range(10))
    return ImageData(train_images, train_labels, test_images, test_labels, classes, mean=0.5, std=0.3)
