"""Finding, fetching and verifying data set files, so that nothing truncated is ever trained on.

Fashion-MNIST is looked for in this order: the uncompressed files under
``root/FashionMNIST/raw/``; the ``*.gz`` files in that folder (what torchvision's download leaves)
or in a system folder (Debian's ``dataset-fashion-mnist`` package); a download, if allowed.
CIFAR-10 is looked for as ``root/cifar-10-batches-py/``, then as the archive
``root/cifar-10-python.tar.gz``, then downloaded if allowed. Every file is checked before use and
prepared files appear atomically (written aside, verified, then renamed).
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tarfile
import tempfile
import zlib
from pathlib import Path

from ..errors import DataError

FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")

FASHION_HELP = (
    "install Debian's package with 'apt-get install dataset-fashion-mnist', copy the four *-ubyte.gz files "
    "into {raw}, or set data.download=true to download them"
)


def verify_idx(path: Path) -> int:
    """Check an IDX file (MNIST's format) against its own header; return the number of items.

    Raises:
        DataError: bad magic number, wrong dimensions, or a size that does not match the header
            (a truncated or padded file).
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise DataError(f"{path} is truncated ({size} bytes); delete it so that it is prepared again")
    magic, count = struct.unpack(">II", head[:8])
    if magic == IMAGES_MAGIC:
        if len(head) < 16:
            raise DataError(f"{path} is truncated ({size} bytes); delete it so that it is prepared again")
        rows, cols = struct.unpack(">II", head[8:16])
        expected = 16 + count * rows * cols
    elif magic == LABELS_MAGIC:
        expected = 8 + count
    else:
        raise DataError(
            f"{path} is not an IDX image or label file (magic number {magic}, expected {IMAGES_MAGIC} or "
            f"{LABELS_MAGIC}); replace it with the original file"
        )
    if size != expected:
        raise DataError(
            f"{path} has {size} bytes but its header promises {expected} ({count} items): the file is "
            "truncated or corrupt; delete it so that it is prepared again"
        )
    return count


def prepare_fashion_mnist(root: Path, system_dir: Path | None, download: bool) -> Path:
    """Make sure the four verified Fashion-MNIST files exist under ``root/FashionMNIST/raw``.

    Returns:
        the folder torchvision's ``FashionMNIST(root)`` reads.
    """
    raw = root / "FashionMNIST" / "raw"
    missing = [name for name in FASHION_FILES if not (raw / name).exists()]
    if missing:
        sources = [raw] + ([system_dir] if system_dir is not None else [])
        source = next((s for s in sources if all((s / f"{n}.gz").is_file() for n in missing)), None)
        if source is not None:
            for name in missing:
                _gunzip_verified(source / f"{name}.gz", raw / name)
        elif download:
            _download_fashion_mnist(root)
        else:
            looked = " and ".join(str(s) for s in sources)
            raise DataError(f"Fashion-MNIST not found (looked in {looked}); " + FASHION_HELP.format(raw=raw))
    for name in FASHION_FILES:
        verify_idx(raw / name)
    return raw


def _gunzip_verified(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(source, "rb") as f:
            shutil.copyfileobj(f, out)
        verify_idx(tmp)
    except (OSError, EOFError, zlib.error) as err:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"{source} is not a valid gzip file ({err}); replace it with the original, e.g. by reinstalling "
            "dataset-fashion-mnist or deleting it and setting data.download=true"
        ) from None
    except DataError as err:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{source} decompresses to a bad file: {err}".replace(str(tmp), target.name)) from None
    os.replace(tmp, target)


def _download_fashion_mnist(root: Path) -> None:
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as err:  # network errors come in many types
        raise DataError(f"downloading Fashion-MNIST into {root} failed: {err}") from None


def prepare_cifar10(root: Path, download: bool) -> Path:
    """Make sure the CIFAR-10 python-format batches exist under ``root/cifar-10-batches-py``."""
    folder = root / CIFAR_FOLDER
    if not all((folder / name).is_file() for name in CIFAR_FILES):
        archive = root / CIFAR_ARCHIVE
        if archive.is_file():
            _extract_cifar(archive, root)
        elif download:
            from torchvision.datasets import CIFAR10

            try:
                CIFAR10(str(root), train=True, download=True)
            except Exception as err:  # network errors come in many types
                raise DataError(f"downloading CIFAR-10 into {root} failed: {err}") from None
        else:
            raise DataError(
                f"CIFAR-10 not found (looked for {folder} and {archive}); put {CIFAR_ARCHIVE} in {root} "
                "or set data.download=true"
            )
    missing = [name for name in CIFAR_FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)}; delete the folder so that it is prepared again")
    return folder


def _extract_cifar(archive: Path, root: Path) -> None:
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".cifar-extract-"))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(staging, filter="data")
        extracted = staging / CIFAR_FOLDER
        missing = [name for name in CIFAR_FILES if not (extracted / name).is_file()]
        if missing:
            raise DataError(f"{archive} lacks {CIFAR_FOLDER}/{missing[0]}; replace it with the original archive")
        os.replace(extracted, root / CIFAR_FOLDER)
    except (OSError, EOFError, tarfile.TarError, zlib.error) as err:
        raise DataError(f"{archive} cannot be extracted ({err}); replace it with the original archive") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
