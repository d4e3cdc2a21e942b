"""Data sets as uint8 tensors: the built-ins ``fashion_mnist`` and ``cifar10``.

A data set plugin is a function ``load(config: DataConfig) -> ImageData``, registered under a
name (see :mod:`fmnist_ignite.registry`).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError, DataError
from ..registry import DATASETS
from .sources import prepare_cifar10, prepare_fashion_mnist

if TYPE_CHECKING:
    from ..config import DataConfig

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclass(frozen=True)
class ImageData:
    """A whole data set in memory.

    Attributes:
        train_images: uint8 tensor ``(N, C, H, W)``, validation split not yet taken out.
        train_labels: int64 tensor ``(N,)``.
        test_images: uint8 tensor ``(M, C, H, W)``.
        test_labels: int64 tensor ``(M,)``.
        classes: class names, indexed by label.
        mean: pixel mean on the [0, 1] scale, used to standardise inputs.
        std: pixel standard deviation on the [0, 1] scale.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    mean: float
    std: float

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.train_images.shape[1:]
        return (c, h, w)

    def __post_init__(self) -> None:
        for name in ("train", "test"):
            images, labels = getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise DataError(
                    f"{name} images must be a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
                )
            if labels.shape != (images.shape[0],):
                raise DataError(f"{name} has {images.shape[0]} images but {labels.shape[0]} labels")
            if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < len(self.classes):
                raise DataError(f"{name} labels must lie in 0..{len(self.classes) - 1}")


@DATASETS.register("fashion_mnist")
def load_fashion_mnist(config: DataConfig) -> ImageData:
    """Fashion-MNIST through ``torchvision.datasets.FashionMNIST``, from local, system or downloaded files."""
    from torchvision.datasets import FashionMNIST

    root = Path(config.root)
    system_dir = Path(config.system_dir) if config.system_dir else None
    prepare_fashion_mnist(root, system_dir, config.download)
    train = FashionMNIST(str(root), train=True, download=False)
    test = FashionMNIST(str(root), train=False, download=False)
    return ImageData(
        train_images=train.data.unsqueeze(1),
        train_labels=train.targets.long(),
        test_images=test.data.unsqueeze(1),
        test_labels=test.targets.long(),
        classes=FASHION_CLASSES,
        mean=0.2860,
        std=0.3530,
    )


@DATASETS.register("cifar10")
def load_cifar10(config: DataConfig) -> ImageData:
    """CIFAR-10 through ``torchvision.datasets.CIFAR10``, from its python-format batches."""
    root = Path(config.root)
    prepare_cifar10(root, config.download)
    train, test = _cifar(root, True), _cifar(root, False)
    return ImageData(
        train_images=torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous(),
        train_labels=torch.tensor(train.targets, dtype=torch.long),
        test_images=torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous(),
        test_labels=torch.tensor(test.targets, dtype=torch.long),
        classes=tuple(train.classes),
        mean=0.4734,
        std=0.2516,
    )


def _cifar(root: Path, train: bool) -> Any:
    from torchvision.datasets import CIFAR10

    class LocalCIFAR10(CIFAR10):
        # The files were checked by prepare_cifar10; torchvision's md5 checks would refuse small test archives.
        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:
            with (Path(self.root) / self.base_folder / self.meta["filename"]).open("rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    try:
        dataset = LocalCIFAR10(str(root), train=train, download=False)
    except Exception as err:  # a corrupt pickle fails in many ways
        raise DataError(
            f"CIFAR-10 batches under {root / 'cifar-10-batches-py'} are corrupt ({type(err).__name__}: {err}); "
            "delete that folder to prepare it again"
        ) from None
    if dataset.data.ndim != 4 or dataset.data.shape[1:] != (32, 32, 3) or len(dataset.targets) != len(dataset.data):
        raise DataError(f"CIFAR-10 batches under {root} have an unexpected shape {dataset.data.shape}")
    return dataset


def load_data(config: DataConfig) -> ImageData:
    """Load the configured data set through the registry."""
    loader = DATASETS.get(config.dataset)
    data = loader(config)
    if not isinstance(data, ImageData):
        raise ConfigError(f"data.dataset '{config.dataset}' returned {type(data).__name__}, not ImageData")
    return data
