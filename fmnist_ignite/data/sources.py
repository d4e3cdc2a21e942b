"""Finding, fetching and verifying data set files, so that nothing truncated is ever trained on.

Fashion-MNIST is looked for, file by file, in this order: uncompressed under
``root/FashionMNIST/raw/`` (what torchvision's download leaves); as ``*.gz`` in that folder or in a
system folder (Debian's ``dataset-fashion-mnist`` package); a download, if allowed. The files are
read straight into memory, compressed ones decompressed on the way, and no copy is written.
CIFAR-10 is looked for as ``root/cifar-10-batches-py/``, then as the archive
``root/cifar-10-python.tar.gz``, then downloaded if allowed; its batches are extracted atomically
(written aside, verified, then renamed). Every file is checked before use.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import shutil
import struct
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np

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


def read_fashion_mnist(root: Path, system_dir: Path | None, download: bool) -> dict[str, np.ndarray]:
    """The four Fashion-MNIST files as uint8 arrays, each checked against its own header.

    Each file is taken from the first place that has it: uncompressed in ``root/FashionMNIST/raw/``
    (what torchvision's download leaves), compressed (``.gz``) in that folder, compressed in
    ``system_dir``. Compressed files are decompressed in memory, never past the size their header
    promises, and no copy is written anywhere. Files found nowhere are downloaded into
    ``root/FashionMNIST/raw/`` if ``download`` allows.

    Returns:
        the arrays by file name (:data:`FASHION_FILES`): images ``(N, H, W)``, labels ``(N,)``.

    Raises:
        DataError: a file is missing (the message says where it was looked for and how to get
            it), is not valid gzip, or does not match its header.
    """
    raw = root / "FashionMNIST" / "raw"
    folders = [raw] + ([system_dir] if system_dir is not None else [])
    found = _find_fashion_files(folders)
    if len(found) < len(FASHION_FILES) and download:
        logger.info("Fashion-MNIST: downloading into %s (once; data.root)", raw)
        _download_fashion_mnist(root)
        found = _find_fashion_files(folders)
    if len(found) < len(FASHION_FILES):
        looked = " and ".join(str(s) for s in folders)
        raise DataError(f"Fashion-MNIST not found (looked in {looked}); " + FASHION_HELP.format(raw=raw))
    return {name: _read_idx_gz(path) if path.suffix == ".gz" else _read_idx(path) for name, path in found.items()}


def _find_fashion_files(folders: list[Path]) -> dict[str, Path]:
    """Where each file is, for the files found: ``raw/name``, else the first ``folder/name.gz``."""
    found = {}
    for name in FASHION_FILES:
        candidates = [folders[0] / name, *(folder / f"{name}.gz" for folder in folders)]
        path = next((c for c in candidates if c.is_file()), None)
        if path is not None:
            found[name] = path
    return found


def _idx_magic(name: str) -> int:
    return IMAGES_MAGIC if "-images-" in name else LABELS_MAGIC


def _idx_layout(head: bytes) -> tuple[int, tuple[int, ...]]:
    """The header's length and the array's shape, for a header :func:`idx_size` accepted."""
    magic, count = struct.unpack(">II", head[:8])
    if magic == IMAGES_MAGIC:
        rows, cols = struct.unpack(">II", head[8:16])
        return 16, (count, rows, cols)
    return 8, (count,)


def _read_idx(path: Path) -> np.ndarray:
    """An uncompressed IDX file, checked against its header (see :func:`verify_idx`)."""
    verify_idx(path, _idx_magic(path.name))
    with path.open("rb") as f:
        offset, shape = _idx_layout(f.read(16))
        f.seek(offset)
        body = np.fromfile(f, dtype=np.uint8, count=math.prod(shape))
    if body.size != math.prod(shape):  # shortened since it was checked
        raise DataError(f"{path} is truncated; delete it so that it is prepared again")
    return body.reshape(shape)


def _read_idx_gz(source: Path) -> np.ndarray:
    """A gzip-compressed IDX file, decompressed in memory, never past the size its header promises."""
    name = source.name.removesuffix(".gz")
    try:
        with gzip.open(source, "rb") as f:
            head = f.read(16)
            count, expected = idx_size(head, name, _idx_magic(name))
            offset, shape = _idx_layout(head)
            # np.empty reserves the promised size without touching it: memory is used as data arrives.
            body = np.empty(expected - offset, dtype=np.uint8)
            filled = min(len(head) - offset, body.size)
            body[:filled] = np.frombuffer(head, dtype=np.uint8, count=filled, offset=offset)
            view = body.data
            while filled < body.size and (n := f.readinto(view[filled : filled + COPY_CHUNK])):
                filled += n
            if filled < body.size:
                raise DataError(
                    f"{name} has {offset + filled} bytes but its header promises {expected} ({count} items): the "
                    "file is truncated or corrupt; replace it with the original file"
                )
            if len(head) - offset > body.size or f.read(1):
                raise DataError(
                    f"{name} holds more than the {expected} bytes its header promises (padded, or a "
                    "decompression bomb); replace it with the original file"
                )
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"{source} is not a valid gzip file ({err}); replace it with the original, e.g. by reinstalling "
            "dataset-fashion-mnist or deleting it and setting data.download=true"
        ) from None
    except MemoryError:
        raise DataError(f"{source} promises {expected} bytes, more than this machine can hold") from None
    except DataError as err:
        raise DataError(f"{source} decompresses to a bad file: {err}") from None
    return body.reshape(shape)


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
        seen: set[str] = set()
        with tarfile.open(archive, "r:gz") as tar:
            # One member at a time, and only the batches, each checked against the size its header declares
            # before any byte of it is written: a small archive can decompress to far more than the disk holds.
            for member in tar:  # to the end: a batch held twice is refused, whichever copy would win
                name = os.path.normpath(member.name)
                if name in seen:
                    raise DataError(
                        f"{archive} holds {name} twice (which one is the batch?); replace it with the original archive"
                    )
                if name not in wanted:
                    continue
                seen.add(name)
                if not member.isfile() or member.size > MAX_CIFAR_FILE:
                    raise DataError(
                        f"{archive}: {name} is not a file of at most {MAX_CIFAR_FILE} bytes ({member.size} bytes); "
                        "replace it with the original archive"
                    )
                tar.extract(member, staging, filter="data")
        extracted = staging / CIFAR_FOLDER
        missing = [name for name in CIFAR_FILES if not (extracted / name).is_file()]
        if missing:
            raise DataError(f"{archive} lacks {CIFAR_FOLDER}/{missing[0]}; replace it with the original archive")
        os.replace(extracted, root / CIFAR_FOLDER)
    except (OSError, EOFError, tarfile.TarError, zlib.error) as err:
        raise DataError(f"{archive} cannot be extracted ({err}); replace it with the original archive") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
