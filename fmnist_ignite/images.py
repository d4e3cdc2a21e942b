"""Reading image files that come from anywhere (``predict``), with a bound on their size.

PIL decodes lazily: opening a file reads only its header, so the size an image claims can be
checked before a single pixel is decoded. A few bytes of PNG can claim 100000x100000 pixels.
"""

from __future__ import annotations

import os
import stat
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from .errors import DataError, first_line
from .preprocess import MAX_PIXELS  # one bound, shared with the preprocess.py that export ships

_PIL_LIMIT = threading.Lock()  # PIL's limit is one global: lifted by one opening at a time


def open_image(path: str | Path, mode: str | None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an untrusted image file, converted to ``mode`` (``"L"``, ``"RGB"``, ...).

    Args:
        path: the image file (any format PIL reads).
        mode: the PIL mode of the returned image; ``None``: the file's own.
        max_pixels: the largest width x height decoded; larger images are refused before decoding.

    Raises:
        DataError: one line naming the file: it is not a regular file (a FIFO, a device, a folder:
            refused without being opened for reading, which could block for ever), is not an
            image, is damaged, or is too large.
    """
    try:
        with _open_regular(path) as file, _header(file) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise DataError(f"{path}: {width}x{height} pixels is more than the {max_pixels:,} allowed")
            return image.convert(mode) if mode is not None else image.copy()
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file PIL can read") from None
    except DataError:
        raise
    except Exception as err:  # a damaged file fails inside PIL's decoders in many ways
        raise DataError(f"{path}: cannot be read as an image ({type(err).__name__}: {first_line(err)})") from None


@contextmanager
def _header(file: BinaryIO) -> Iterator[Image.Image]:
    """The image with only its header read, whatever size it claims: the bound is ``open_image``'s, not PIL's.

    PIL's own limit (``Image.MAX_IMAGE_PIXELS``, checked when a file is opened) would refuse what is
    over it before telling the size, and would overrule a larger ``max_pixels``; it is lifted for
    the opening alone, which decodes no pixel.
    """
    with _PIL_LIMIT:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(file)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with image:
        yield image


def _open_regular(path: str | Path) -> BinaryIO:
    """``path`` opened for reading if it is a regular file; a FIFO or a device is refused unopened.

    The file is looked at first (``stat``), then opened without blocking and looked at again, so a
    FIFO put in its place meanwhile is refused too rather than waited on.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise DataError(f"{path}: not a regular file (a FIFO, a device, a folder); only image files are read")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DataError(f"{path}: not a regular file (a FIFO, a device, a folder); only image files are read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
