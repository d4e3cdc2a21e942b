"""Data: finding files, loading data sets as uint8 tensors, and batching them."""

from .datasets import FASHION_CLASSES, ImageData, border_brightness, load_cifar10, load_data, load_fashion_mnist
from .loaders import Loader, Shard, TensorLoader, epoch_permutation, split_indices

__all__ = [
    "FASHION_CLASSES",
    "ImageData",
    "Loader",
    "Shard",
    "TensorLoader",
    "border_brightness",
    "epoch_permutation",
    "load_cifar10",
    "load_data",
    "load_fashion_mnist",
    "split_indices",
]
