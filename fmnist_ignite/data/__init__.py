"""Data: finding files, loading data sets as uint8 tensors, and batching them."""

from .datasets import (
    FASHION_CLASSES,
    ImageData,
    border_brightness,
    load_cifar10,
    load_data,
    load_fashion_mnist,
    load_image_folder,
)
from .loaders import Loader, Shard, TensorLoader, epoch_permutation, split_indices
from .transforms import BatchTransform

__all__ = [
    "FASHION_CLASSES",
    "BatchTransform",
    "ImageData",
    "Loader",
    "Shard",
    "TensorLoader",
    "border_brightness",
    "epoch_permutation",
    "load_cifar10",
    "load_data",
    "load_fashion_mnist",
    "load_image_folder",
    "split_indices",
]
