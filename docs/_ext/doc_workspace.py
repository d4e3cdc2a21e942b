"""A throw-away copy of the repository's layout, with a tiny synthetic Fashion-MNIST, for the doctests.

The examples in the docs are written as a reader runs them, from the repository root
(``load_config("configs/base.yaml")``). The doctests run them in a temporary folder that holds
``configs/`` (copied from the repository, with the validation split shrunk to fit the tiny data)
and ``data/FashionMNIST/raw/`` (the four ``*-ubyte.gz`` files in Fashion-MNIST's IDX format, a
few hundred images), so the docs build needs neither the real data set nor the network and
trains in a fraction of a second.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
N_TRAIN, N_TEST, VAL_SIZE = 600, 200, 200


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 images: a fixed random prototype per class plus noise."""
    prototypes = np.random.default_rng(0).integers(40, 220, size=(10, 28, 28))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    noise = rng.normal(0, 50, size=(n, 28, 28))
    return np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_fashion_gz(folder: Path) -> None:
    """The four Fashion-MNIST ``*-ubyte.gz`` files, with ``N_TRAIN`` training and ``N_TEST`` test images."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", N_TRAIN, 1), ("t10k", N_TEST, 2)):
        images, labels = _images(n, seed)
        header = struct.pack(">IIII", 2051, n, 28, 28)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes(), 1))
        label_header = struct.pack(">II", 2049, n)
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(label_header + labels.tobytes(), 1))


_previous: list[tuple[Path, Path]] = []


def enter_workspace() -> Path:
    """Create the workspace, make it the current directory, and return it."""
    root = Path(tempfile.mkdtemp(prefix="fmnist-docs-"))
    _previous.append((Path.cwd(), root))
    shutil.copytree(REPO / "configs", root / "configs")
    for config in (root / "configs").glob("*.yaml"):
        text = config.read_text(encoding="utf-8")
        text = text.replace("val_size: 10000", f"val_size: {VAL_SIZE}")
        text = text.replace("progress_bar: true", "progress_bar: false")
        config.write_text(text, encoding="utf-8")
    write_fashion_gz(root / "data" / "FashionMNIST" / "raw")
    os.chdir(root)
    return root


def leave_workspace() -> None:
    """Go back to the folder the doctests started in and delete the workspace."""
    cwd, root = _previous.pop()
    os.chdir(cwd)
    shutil.rmtree(root, ignore_errors=True)
