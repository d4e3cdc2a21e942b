"""Reading image files that come from anywhere (``predict``), with a bound on their size.

PIL decodes lazily: opening a file reads only its header, so the size an image claims can be
checked before a single pixel is decoded. A few bytes of PNG can claim 100000x100000 pixels.
"""

from __future__ import annotations

import warnings
from pathlib import Path

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
        DataError: one line naming the file: it is not an image, is damaged, or is too large.
    """
    try:
        with warnings.catch_warnings():
            # PIL warns above its own limit (Image.MAX_IMAGE_PIXELS); the bound here is checked instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
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
