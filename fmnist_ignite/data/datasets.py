"""Data sets as uint8 tensors: the built-ins ``fashion_mnist``, ``cifar10`` and ``image_folder``.

A data set plugin is a function ``load(config: DataConfig) -> ImageData``, registered under a
name (see :mod:`fmnist_ignite.registry`).
"""

from __future__ import annotations

import codecs
import io
import logging
import pickle
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import ConfigError, DataError, FmnistIgniteError, first_line
from ..registry import DATASETS
from .folders import read_image_folder
from .loaders import split_indices
from .sources import prepare_cifar10, read_fashion_mnist

if TYPE_CHECKING:
    from ..config import DataConfig

logger = logging.getLogger(__name__)

TEST_SPLIT_SEED = 20_240_601  # image_folder without test/: one held-out test set, whatever the run's seed

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

    @property
    def background(self) -> str | None:
        """``dark`` or ``light`` when the training images share one (Fashion-MNIST: dark), else ``None``.

        Judged from the border pixels of up to 1,000 training images; ``predict --invert auto`` uses it.
        """
        brightness = border_brightness(self.train_images[:1000])
        return "dark" if brightness < 0.25 else "light" if brightness > 0.75 else None

    def __post_init__(self) -> None:
        for name in ("train", "test"):
            images, labels = getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise DataError(
                    f"{name} images must be a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
                )
            if labels.dim() != 1:
                raise DataError(
                    f"{name} labels must be one class number per image, shape (N,); got {tuple(labels.shape)}"
                )
            if labels.shape != (images.shape[0],):
                raise DataError(f"{name} has {images.shape[0]} images but {labels.shape[0]} labels")
            if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < len(self.classes):
                raise DataError(f"{name} labels must lie in 0..{len(self.classes) - 1}")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise DataError(
                f"train images have shape (C, H, W) {tuple(self.train_images.shape[1:])} but test images "
                f"{tuple(self.test_images.shape[1:])}; the model takes one shape: replace the files that differ"
            )


def border_brightness(images: torch.Tensor) -> float:
    """Mean brightness, from 0 (black) to 1 (white), of the outermost pixels of uint8 images ``(..., H, W)``."""
    rows = torch.cat([images[..., 0, :], images[..., -1, :]], -1)
    columns = torch.cat([images[..., 1:-1, 0], images[..., 1:-1, -1]], -1)
    return float(torch.cat([rows.flatten(), columns.flatten()]).double().mean()) / 255


@DATASETS.register("fashion_mnist")
def load_fashion_mnist(config: DataConfig) -> ImageData:
    """Fashion-MNIST from local, system or downloaded files (see :func:`~.sources.read_fashion_mnist`)."""
    system_dir = Path(config.system_dir) if config.system_dir else None
    arrays = read_fashion_mnist(Path(config.root), system_dir, config.download)
    return ImageData(
        train_images=torch.from_numpy(arrays["train-images-idx3-ubyte"]).unsqueeze(1),
        train_labels=torch.from_numpy(arrays["train-labels-idx1-ubyte"]).long(),
        test_images=torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).unsqueeze(1),
        test_labels=torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long(),
        classes=FASHION_CLASSES,
        mean=0.2860,
        std=0.3530,
    )


@DATASETS.register("cifar10")
def load_cifar10(config: DataConfig) -> ImageData:
    """CIFAR-10 from its python-format batches, read without running code from them."""
    folder = prepare_cifar10(Path(config.root), config.download)
    train_images, train_labels = _cifar_split(folder, [f"data_batch_{i}" for i in range(1, 6)])
    test_images, test_labels = _cifar_split(folder, ["test_batch"])
    return ImageData(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        classes=_cifar_classes(folder / "batches.meta"),
        mean=0.4734,
        std=0.2516,
    )


@DATASETS.register("image_folder")
def load_image_folder(config: DataConfig) -> ImageData:
    """Your own images: ``root/train/<class>/*`` and ``root/test/<class>/*`` (see :mod:`~.folders`).

    The images are converted to ``data.image_size`` and ``data.channels`` (by default the files' own
    size, and gray when every image is); the mean and std come from the training images. Without
    ``test/``, a fixed random ``data.val_size`` of the training images (the same for every seed)
    is held out as the test set, so that test accuracy is still measured on images never trained
    or validated on.
    """
    root = Path(config.root)
    folder = read_image_folder(root, config.image_size, config.channels)
    images, labels = (torch.from_numpy(a) for a in folder.train)
    if folder.test is not None:
        test_images, test_labels = (torch.from_numpy(a) for a in folder.test)
    else:
        if config.val_size * 2 >= len(labels):
            raise ConfigError(
                f"{root} has no test/ folder, so data.val_size={config.val_size} of its {len(labels)} training images "
                "would be held out for testing and as many for validation; add a test/ folder or lower data.val_size"
            )
        keep, held = split_indices(len(labels), config.val_size, TEST_SPLIT_SEED)
        logger.info(
            "image_folder: %s has no test/ folder; %d of the %d training images are held out as the test set",
            root,
            len(held),
            len(labels),
        )
        images, labels, test_images, test_labels = images[keep], labels[keep], images[held], labels[held]
    mean, std = pixel_statistics(images)
    return ImageData(
        train_images=images,
        train_labels=labels,
        test_images=test_images,
        test_labels=test_labels,
        classes=folder.classes,
        mean=mean,
        std=std,
    )


def pixel_statistics(images: torch.Tensor, chunk: int = 1024) -> tuple[float, float]:
    """Mean and standard deviation of uint8 ``images`` on the [0, 1] scale, a chunk of images at a time.

    The std is at least 1/255, so that a folder of blank images still gives finite inputs.
    """
    total = squares = 0.0
    for part in images.split(chunk):
        values = part.double()
        total += float(values.sum())
        squares += float(values.square().sum())
    count = images.numel()
    mean = total / count
    std = max(squares / count - mean * mean, 0.0) ** 0.5
    return mean / 255, max(std, 1.0) / 255


def _array_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR-10 batch may name: what numpy's own pickles of arrays and scalars name.

    The rebuilders are taken from numpy's ``__reduce__`` so that the table holds under numpy 1
    (``numpy.core``) and 2 (``numpy._core``); pickles written by either name either module.
    """
    array = np.zeros(1, dtype=np.uint8)
    rebuilders: tuple[Any, ...] = (array.__reduce__()[0], array.__reduce_ex__(5)[0], np.uint8(0).__reduce__()[0])
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles written by Python 3
    }
    for rebuild in rebuilders:
        submodule = rebuild.__module__.rpartition(".")[2]
        for package in ("numpy.core", "numpy._core"):
            table[(f"{package}.{submodule}", rebuild.__name__)] = rebuild
    return table


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 batch, refusing every global that does not rebuild a numpy array.

    A pickle may name any importable callable and call it (``os.system``, say); the batches hold
    only dicts, lists, strings, numbers and arrays, so nothing else may be named.
    """

    GLOBALS = _array_globals()

    def __init__(self, data: bytes, path: Path) -> None:
        # latin1, as torchvision reads them: the original batches are Python 2 pickles of byte strings.
        super().__init__(io.BytesIO(data), encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        found = self.GLOBALS.get((module, name))
        if found is None:
            raise DataError(
                f"{self.path} holds a Python object other than arrays, lists, strings and numbers "
                f"({module}.{name}); refused for safety: replace it with the original CIFAR-10 file"
            )
        return found


def _unpickle_cifar(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
        entry = _ArraysOnlyUnpickler(raw, path).load()
    except DataError:
        raise
    except Exception as err:  # a corrupt pickle fails in many ways
        raise DataError(
            f"CIFAR-10 batches under {path.parent} are corrupt ({path.name}: {type(err).__name__}: "
            f"{first_line(err)}); delete that folder to prepare it again"
        ) from None
    if not isinstance(entry, dict):
        raise DataError(f"{path} holds a {type(entry).__name__}, not a CIFAR-10 dictionary; replace the file")
    data = entry.get("data", entry.get(b"data"))
    if isinstance(data, np.ndarray) and data.nbytes > len(raw):
        # An array the file cannot hold was built by a crafted pickle; refuse it before it is touched.
        raise DataError(f"{path} claims an array of {data.nbytes} bytes in a file of {len(raw)}; replace the file")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in entry.items()}


def _cifar_split(folder: Path, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 3, 32, 32)`` and labels ``(N,)`` of the named batches, checked against each other."""
    images, labels = [], []
    for name in names:
        path = folder / name
        entry = _unpickle_cifar(path)
        data, targets = entry.get("data"), entry.get("labels")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            shown = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {shown}; replace the file")
        if isinstance(targets, list) and all(isinstance(t, int | np.integer) and 0 <= t < 10 for t in targets):
            targets = np.array(targets, dtype=np.int64)
        if not isinstance(targets, np.ndarray) or targets.dtype.kind not in "iu" or targets.shape != (len(data),):
            raise DataError(
                f"{path}: 'labels' must be {len(data)} integers from 0 to 9, one per image; replace the file"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(targets.astype(np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _cifar_classes(path: Path) -> tuple[str, ...]:
    names = _unpickle_cifar(path).get("label_names")
    if isinstance(names, list):
        names = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
    if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: 'label_names' must be a list of 10 class names; replace the file")
    for index, name in enumerate(names):  # they reach the terminal, reports and pictures
        if not name.strip() or len(name) > 100 or any(unicodedata.category(c).startswith("C") for c in name):
            raise DataError(
                f"{path}: class {index} of 'label_names' ({name[:100]!r}) must be 1 to 100 printable characters, "
                "without control characters or escapes; replace the file"
            )
    return tuple(names)


def load_data(config: DataConfig) -> ImageData:
    """Load the configured data set through the registry.

    Raises:
        DataError: the data set's files are damaged or missing (from the built-in loaders), or a
            plugin's loader raised anything else: one line naming ``data.dataset`` and the error.
        ConfigError: the loader returned something other than :class:`ImageData`.
    """
    start = time.perf_counter()
    loader = DATASETS.get(config.dataset)
    try:
        data = loader(config)
    except (FmnistIgniteError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as err:  # a plugin's own failure, whatever its form
        raise DataError(
            f"data.dataset '{config.dataset}': its loader failed ({type(err).__name__}: {first_line(err)})"
        ) from err
    if not isinstance(data, ImageData):
        raise ConfigError(f"data.dataset '{config.dataset}' returned {type(data).__name__}, not ImageData")
    logger.debug("timing: data %.3f s (%s)", time.perf_counter() - start, config.dataset)
    return data
