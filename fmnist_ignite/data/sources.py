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
import logging
import os
import shutil
import struct
import tarfile
import tempfile
import zlib
from pathlib import Path

from ..errors import DataError

logger = logging.getLogger(__name__)

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
MAX_IMAGE_SIDE = 4096
MAX_IDX_BYTES = 2**31
COPY_CHUNK = 2**20
MAX_CIFAR_FILE = 2**27  # each of the real batches is 30 MiB

FASHION_HELP = (
    "install Debian's package with 'apt-get install dataset-fashion-mnist', copy the four *-ubyte.gz files "
    "into {raw}, or set data.download=true to download them"
)


def idx_size(head: bytes, name: str | Path, expected_magic: int | None = None) -> tuple[int, int]:
    """The number of items and the file size in bytes that an IDX header (the first 16 bytes) promises.

    Args:
        head: the file's first 16 bytes (fewer if it is shorter).
        name: the file, for messages.
        expected_magic: :data:`IMAGES_MAGIC` or :data:`LABELS_MAGIC` where the file must be that kind.

    Raises:
        DataError: naming ``name``: too short for a header, a bad magic number, no items, image
            sides outside 1..4096, or a promised size over 2 GiB (no honest Fashion-MNIST file comes
            near it).
    """
    magic, count = struct.unpack(">II", head[:8]) if len(head) >= 8 else (0, 0)
    if len(head) < 8 or (magic == IMAGES_MAGIC and len(head) < 16):
        raise DataError(f"{name} is truncated ({len(head)} bytes); delete it so that it is prepared again")
    if expected_magic is not None and magic in (IMAGES_MAGIC, LABELS_MAGIC) and magic != expected_magic:
        kind = "image" if expected_magic == IMAGES_MAGIC else "label"
        raise DataError(
            f"{name} is not an IDX {kind} file (magic number {magic}, expected {expected_magic}); "
            "replace it with the original file"
        )
    if magic in (IMAGES_MAGIC, LABELS_MAGIC) and count == 0:
        raise DataError(f"{name} declares no items; replace it with the original file")
    if magic == IMAGES_MAGIC:
        rows, cols = struct.unpack(">II", head[8:16])
        if not (1 <= rows <= MAX_IMAGE_SIDE and 1 <= cols <= MAX_IMAGE_SIDE):
            raise DataError(
                f"{name} declares {rows}x{cols} images; sides must be 1 to {MAX_IMAGE_SIDE}: "
                "replace it with the original file"
            )
        expected = 16 + count * rows * cols
    elif magic == LABELS_MAGIC:
        expected = 8 + count
    else:
        raise DataError(
            f"{name} is not an IDX image or label file (magic number {magic}, expected {IMAGES_MAGIC} or "
            f"{LABELS_MAGIC}); replace it with the original file"
        )
    if expected > MAX_IDX_BYTES:
        raise DataError(
            f"{name} declares {count} items ({expected} bytes), more than the {MAX_IDX_BYTES} bytes allowed; "
            "replace it with the original file"
        )
    return count, expected


def verify_idx(path: Path, expected_magic: int | None = None) -> int:
    """Check an IDX file (MNIST's format) against its own header; return the number of items.

    Raises:
        DataError: bad magic number (or not ``expected_magic``), wrong dimensions, or a size that does
            not match the header (a truncated or padded file).
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(16)
    count, expected = idx_size(head, path, expected_magic)
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
            logger.info("Fashion-MNIST: unpacking %s into %s (once; data.root)", source, raw)
            for name in missing:
                _gunzip_verified(source / f"{name}.gz", raw / name)
        elif download:
            logger.info("Fashion-MNIST: downloading into %s (once; data.root)", root)
            _download_fashion_mnist(root)
        else:
            looked = " and ".join(str(s) for s in sources)
            raise DataError(f"Fashion-MNIST not found (looked in {looked}); " + FASHION_HELP.format(raw=raw))
    for name in FASHION_FILES:
        verify_idx(raw / name, _idx_magic(name))
    return raw


def _idx_magic(name: str) -> int:
    return IMAGES_MAGIC if "-images-" in name else LABELS_MAGIC


def _gunzip_verified(source: Path, target: Path) -> None:
    """Decompress ``source`` into ``target``, never writing more than its IDX header promises."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(source, "rb") as f:
            head = f.read(16)
            _, expected = idx_size(head, target.name, _idx_magic(target.name))
            out.write(head[:expected])
            left = expected - len(head)
            while left > 0 and (chunk := f.read(min(left, COPY_CHUNK))):
                out.write(chunk)
                left -= len(chunk)
            if left < 0 or f.read(1):
                raise DataError(
                    f"{target.name} holds more than the {expected} bytes its header promises (padded, or a "
                    "decompression bomb); replace it with the original file"
                )
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
        if not archive.is_file() and not download:
            raise DataError(
                f"CIFAR-10 not found (looked for {folder} and {archive}); put {CIFAR_ARCHIVE} in {root} "
                "or set data.download=true"
            )
        if not archive.is_file():
            logger.info("CIFAR-10: downloading into %s (once; data.root)", root)
            _download_cifar(archive)
        logger.info("CIFAR-10: extracting %s into %s (once; data.root)", archive, root)
        _extract_cifar(archive, root)
    missing = [name for name in CIFAR_FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)}; delete the folder so that it is prepared again")
    return folder


def _download_cifar(archive: Path) -> None:
    """The archive alone, checked against its md5 (torchvision's CIFAR10 would also unpickle the batches)."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_url

    try:
        download_url(CIFAR10.url, str(archive.parent), filename=archive.name, md5=CIFAR10.tgz_md5)
    except Exception as err:  # network errors come in many types
        raise DataError(f"downloading CIFAR-10 into {archive.parent} failed: {err}") from None


def _extract_cifar(archive: Path, root: Path) -> None:
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".cifar-extract-"))
    try:
        wanted = {f"{CIFAR_FOLDER}/{name}" for name in CIFAR_FILES}
        with tarfile.open(archive, "r:gz") as tar:
            # One member at a time, and only the batches, each checked against the size its header declares
            # before any byte of it is written: a small archive can decompress to far more than the disk holds.
            for member in tar:
                name = os.path.normpath(member.name)
                if name not in wanted:
                    continue
                if not member.isfile() or member.size > MAX_CIFAR_FILE:
                    raise DataError(
                        f"{archive}: {name} is not a file of at most {MAX_CIFAR_FILE} bytes ({member.size} bytes); "
                        "replace it with the original archive"
                    )
                tar.extract(member, staging, filter="data")
                wanted.discard(name)
                if not wanted:
                    break
        extracted = staging / CIFAR_FOLDER
        missing = [name for name in CIFAR_FILES if not (extracted / name).is_file()]
        if missing:
            raise DataError(f"{archive} lacks {CIFAR_FOLDER}/{missing[0]}; replace it with the original archive")
        os.replace(extracted, root / CIFAR_FOLDER)
    except (OSError, EOFError, tarfile.TarError, zlib.error) as err:
        raise DataError(f"{archive} cannot be extracted ({err}); replace it with the original archive") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
