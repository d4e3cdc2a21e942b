"""Models: the logistic-regression classifier, registered as ``logistic``.

A model plugin is a callable ``build(input_shape, num_classes, **kwargs) -> nn.Module`` registered
under a name (see :mod:`fmnist_ignite.registry`); the model receives float images ``(B, C, H, W)``.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from .registry import MODELS


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: flatten, then one linear layer; trained with cross-entropy.

    Args:
        in_features: pixels per image (784 for Fashion-MNIST, 3072 for CIFAR-10).
        num_classes: number of classes.

    Example:
        >>> import torch
        >>> model = LogisticRegression(784, 10)
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.flatten(x))


@MODELS.register("logistic")
def build_logistic(input_shape: tuple[int, ...], num_classes: int) -> LogisticRegression:
    """Build :class:`LogisticRegression` for images of ``input_shape``."""
    return LogisticRegression(math.prod(input_shape), num_classes)
