"""Data: finding files, loading data sets as uint8 tensors, and batching them."""

from .datasets import FASHION_CLASSES, ImageData, load_cifar10, load_data, load_fashion_mnist
from .loaders import EpochDataLoader, TensorLoader, epoch_permutation

__all__ = [
    "FASHION_CLASSES",
    "EpochDataLoader",
    "ImageData",
    "TensorLoader",
    "epoch_permutation",
    "load_cifar10",
    "load_data",
    "load_fashion_mnist",
]
