"""models.py: logistic regression, and its registration as the ``logistic`` model."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn

import fmnist_ignite
from fmnist_ignite import MODELS, models
from fmnist_ignite.models import LogisticRegression, build_logistic


@pytest.mark.parametrize(
    ("shape", "classes", "parameters"),
    [((1, 28, 28), 10, 7850), ((3, 32, 32), 10, 30730), ((1, 4, 4), 3, 51)],
)
def test_output_shape_and_parameter_count(shape: tuple[int, ...], classes: int, parameters: int) -> None:
    model = build_logistic(shape, classes)
    assert isinstance(model, LogisticRegression)
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert model(torch.zeros(5, *shape)).shape == (5, classes)


def test_it_is_one_linear_layer_on_the_flattened_image() -> None:
    torch.manual_seed(0)
    model = LogisticRegression(784, 10)
    linear = model.linear
    assert isinstance(linear, nn.Linear) and (linear.in_features, linear.out_features) == (784, 10)
    x = torch.rand(4, 1, 28, 28)
    expected = x.reshape(4, 784) @ linear.weight.T + linear.bias
    assert torch.allclose(model(x), expected, atol=1e-6)
    assert [name for name, _ in model.named_parameters()] == ["linear.weight", "linear.bias"]


def test_zero_weights_give_uniform_probabilities() -> None:
    model = LogisticRegression(784, 10)
    nn.init.zeros_(model.linear.weight)
    nn.init.zeros_(model.linear.bias)
    probabilities = model(torch.rand(3, 1, 28, 28)).softmax(1)
    assert torch.allclose(probabilities, torch.full((3, 10), 0.1))


def test_registered_as_logistic() -> None:
    assert MODELS.get("logistic") is build_logistic
    assert "logistic" in MODELS.names()
    assert fmnist_ignite.LogisticRegression is LogisticRegression


def test_a_wrong_image_size_fails_in_the_linear_layer() -> None:
    model = build_logistic((1, 28, 28), 10)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        model(torch.zeros(2, 3, 32, 32))


def test_docstring_example() -> None:
    result = doctest.testmod(models, verbose=False)
    assert result.attempted >= 3 and result.failed == 0
