"""Your own images: a folder of class subfolders read once into uint8 tensors, and kept as a cache.

The layout is torchvision's ``ImageFolder``'s, split in two::

    root/train/<class>/*.png|*.jpg|*.jpeg
    root/test/<class>/*        (optional; the same classes)

Class names are the folder names, sorted; files and folders whose names start with a dot are
left out. Each file is decoded with :func:`~fmnist_ignite.images.open_image` (bounded, never
blocking on a FIFO). The decoded tensors go to ``root/.fmnist_ignite/`` in one ``.npz`` file whose
name is a hash of every file's path, size and modification time and of the conversion settings:
a second run with the same files reads that file instead of decoding again; a changed, added or
removed file makes a new one (and the old one is removed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..fileio import atomic_write
from ..images import open_image
from ..preprocess import fit

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CACHE_FOLDER = ".fmnist_ignite"
CACHE_VERSION = 1
MAX_CLASS_NAME = 100


@dataclass(frozen=True)
class FolderImages:
    """The decoded images of a folder: ``train`` and ``test`` as ``(images (N, C, H, W) uint8, labels (N,) int64)``.

    ``test`` is ``None`` when the folder has no ``test/``.
    """

    classes: tuple[str, ...]
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray] | None


def read_image_folder(root: Path, image_size: int | None, channels: int | None) -> FolderImages:
    """The images under ``root/train`` (and ``root/test``), from the cache when the files have not changed.

    Args:
        root: the folder holding ``train/`` and, optionally, ``test/``.
        image_size: the side of the square every image is converted to (its centre cropped to a
            square, then resized); ``None``: the files' own size, which they must share.
        channels: 1 or 3; ``None``: 1 when every image is gray (its red, green and blue are
            equal everywhere), else 3.

    Raises:
        ConfigError: one line naming the folder or file and what to do: no ``train/`` folder, no
            class folders, a class folder without images, a file that is not a PNG or JPEG
            image, test classes other than the training classes, images of different sizes
            without ``data.image_size``.
        DataError: an image file that cannot be decoded (see :func:`~fmnist_ignite.images.open_image`).
    """
    train = _list_split(root, "train")
    classes = tuple(sorted(train))
    test = _list_split(root, "test") if (root / "test").is_dir() else None
    if test is not None and set(test) != set(classes):
        extra, missing = sorted(set(test) - set(classes)), sorted(set(classes) - set(test))
        what = "; ".join(
            part
            for part in (
                f"test/ has {', '.join(extra)} that train/ lacks" if extra else "",
                f"test/ lacks {', '.join(missing)}" if missing else "",
            )
            if part
        )
        raise ConfigError(f"{root}: the class folders of test/ must be those of train/ ({what}); make them the same")
    files = {"train": train, **({"test": test} if test is not None else {})}
    key = _cache_key(root, files, image_size, channels)
    cache = root / CACHE_FOLDER / f"image_folder-{key}.npz"
    cached = _read_cache(cache, classes)
    if cached is not None:
        logger.debug("image_folder: %s read from its cache %s", root, cache)
        return cached
    count = sum(len(paths) for split in files.values() for paths in split.values())
    logger.info("image_folder: decoding %d images under %s (once; cached in %s)", count, root, cache.parent)
    decoded = {name: _decode_split(split, classes, image_size) for name, split in files.items()}
    _check_sizes(decoded)
    gray = channels == 1 or (channels is None and all(_is_gray(images) for images, _ in decoded.values()))
    arrays = {name: (_channels(images, gray), labels) for name, (images, labels) in decoded.items()}
    result = FolderImages(classes, arrays["train"], arrays.get("test"))
    _write_cache(cache, result)
    return result


def _list_split(root: Path, split: str) -> dict[str, list[Path]]:
    """The image files of ``root/split`` by class folder, each list sorted."""
    folder = root / split
    if not folder.is_dir():
        what = "does not exist" if not root.exists() else f"has no {split}/ folder"
        raise ConfigError(
            f"data.root {root} {what}; put your images in {root}/train/<class>/ (PNG or JPEG, one folder per class)"
        )
    found: dict[str, list[Path]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            raise ConfigError(
                f"{entry}: {split}/ holds class folders only; move the file into a folder named after its class"
            )
        _check_class_name(entry)
        images = []
        for path in sorted(entry.iterdir()):
            if path.name.startswith("."):
                continue
            if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                raise ConfigError(
                    f"{path}: not a PNG or JPEG image (*.png, *.jpg, *.jpeg); remove it from {folder} or convert it"
                )
            images.append(path)
        if not images:
            raise ConfigError(f"{entry}: a class folder with no images; add PNG or JPEG files to it, or remove it")
        found[entry.name] = images
    if not found:
        raise ConfigError(
            f"{folder} holds no class folders; put your images in {folder}/<class>/ (one folder per class)"
        )
    return found


def _check_class_name(folder: Path) -> None:
    """Class names reach the terminal, reports and pictures: printable, at most 100 characters."""
    name = folder.name
    if len(name) > MAX_CLASS_NAME or not name.isprintable():
        raise ConfigError(
            f"{folder}: a class folder's name must be 1 to {MAX_CLASS_NAME} printable characters; rename it"
        )


def _cache_key(root: Path, files: dict[str, dict[str, list[Path]]], size: int | None, channels: int | None) -> str:
    listing = [
        [split, cls, str(path.relative_to(root)), (stat := path.stat()).st_size, stat.st_mtime_ns]
        for split, classes in files.items()
        for cls, paths in classes.items()
        for path in paths
    ]
    text = json.dumps({"version": CACHE_VERSION, "size": size, "channels": channels, "files": listing})
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _read_cache(path: Path, classes: tuple[str, ...]) -> FolderImages | None:
    """The cached arrays, or ``None`` (with a warning when the file is there but unreadable: it is made again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files}
        if tuple(arrays["classes"].tolist()) != classes:
            raise ValueError("its classes differ from the folders'")
        train = (arrays["train_images"], arrays["train_labels"])
        test = (arrays["test_images"], arrays["test_labels"]) if "test_images" in arrays else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        logger.warning("image_folder: the cache %s cannot be read (%s); decoding the images again", path, err)
        return None
    return FolderImages(classes, train, test)


def _write_cache(path: Path, images: FolderImages) -> None:
    """Write the cache and remove the folder's older ones; a folder that cannot be written is only warned of."""
    arrays: dict[str, Any] = {
        "classes": np.array(images.classes),
        "train_images": images.train[0],
        "train_labels": images.train[1],
    }
    if images.test is not None:
        arrays |= {"test_images": images.test[0], "test_labels": images.test[1]}
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays), durable=False)
        for old in path.parent.glob("image_folder-*.npz"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as err:
        logger.warning("image_folder: cannot write the cache %s (%s); the images will be decoded again", path, err)


def _decode_split(
    split: dict[str, list[Path]], classes: tuple[str, ...], size: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """RGB images ``(N, H, W, 3)`` and labels of one split, in class order then file order."""
    images, labels = [], []
    for label, cls in enumerate(classes):
        for path in split[cls]:
            image = open_image(path, "RGB")
            if size is not None:
                image = fit(image, (size, size))  # as predict converts a photo for this run
            images.append((path, np.asarray(image)))
            labels.append(label)
    first_path, first = images[0]
    for path, array in images:
        if array.shape != first.shape:
            raise ConfigError(
                f"{path} is {array.shape[1]}x{array.shape[0]} pixels but {first_path} is "
                f"{first.shape[1]}x{first.shape[0]}; set data.image_size to convert every image to one size"
            )
    return np.stack([a for _, a in images]), np.array(labels, dtype=np.int64)


def _check_sizes(decoded: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    shapes = {name: images.shape[1:3] for name, (images, _) in decoded.items()}
    if len(set(shapes.values())) > 1:
        (h, w), (th, tw) = shapes["train"], shapes["test"]
        raise ConfigError(
            f"the train/ images are {w}x{h} pixels but the test/ images {tw}x{th}; set data.image_size to convert "
            "every image to one size"
        )


def _is_gray(images: np.ndarray) -> bool:
    return bool((images[..., 0] == images[..., 1]).all() and (images[..., 1] == images[..., 2]).all())


def _channels(images: np.ndarray, gray: bool) -> np.ndarray:
    """``(N, H, W, 3)`` RGB as ``(N, C, H, W)``: one channel (ITU-R 601 luma, PIL's ``L``) when ``gray``, else three."""
    if gray:
        luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.ascontiguousarray(np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, None])
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
