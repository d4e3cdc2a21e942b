"""Reading image files that come from anywhere (``predict``), with a bound on their size.

PIL decodes lazily: opening a file reads only its header, so the size an image claims can be
checked before a single pixel is decoded. A few bytes of PNG can claim 100000x100000 pixels.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from .errors import DataError, first_line

MAX_PIXELS = 50_000_000


def open_image(path: str | Path, mode: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an untrusted image file, converted to ``mode`` (``"L"``, ``"RGB"``, ...).

    Args:
        path: the image file (any format PIL reads).
        mode: the PIL mode of the returned image.
        max_pixels: the largest width x height decoded; larger images are refused before decoding.

    Raises:
        DataError: one line naming the file: it is not a regular file (a FIFO, a device, a folder:
            refused without being opened for reading, which could block for ever), is not an
            image, is damaged, or is too large.
    """
    try:
        with warnings.catch_warnings():
            # PIL warns above its own limit (Image.MAX_IMAGE_PIXELS); the bound here is checked instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open_regular(path) as file, Image.open(file) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise DataError(f"{path}: {width}x{height} pixels is more than the {max_pixels:,} allowed")
                return image.convert(mode)
    except Image.DecompressionBombError:
        # PIL refuses, before telling the size, what is over twice its own limit, which is above max_pixels.
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise DataError(f"{path}: more than {limit:,} pixels, which is more than the {max_pixels:,} allowed") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file PIL can read") from None
    except DataError:
        raise
    except Exception as err:  # a damaged file fails inside PIL's decoders in many ways
        raise DataError(f"{path}: cannot be read as an image ({type(err).__name__}: {first_line(err)})") from None


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
