"""Any picture made into the input a run was trained on, with numpy and Pillow alone (no torch).

``predict`` converts every image with :func:`convert`, and ``export`` writes this very file next
to the exported model as ``preprocess.py``: a program that serves the model without this package
converts pictures the same way, and gets the same classes. So the file imports nothing but the
standard library, numpy and Pillow.

Fashion-MNIST was made from product photos (a garment on a light background) by Zalando's
documented conversion (https://github.com/zalandoresearch/fashion-mnist#get-the-data): trim the
edges close to the colour of the corners, resize the longest side to 28 keeping the aspect,
centre on the 28x28 square, negate, grayscale. A photo needs exactly these steps to look like the
training images, and :func:`fashion_mnist` takes them. Every other data set (CIFAR-10, a folder of
images) is converted by :func:`plain`: the run's channels, its centre cropped to the run's aspect
and resized to its size.

Example:
    >>> import numpy as np
    >>> from PIL import Image
    >>> from fmnist_ignite.preprocess import convert
    >>> photo = Image.new("RGB", (300, 200), (250, 248, 240))  # a light background ...
    >>> photo.paste((20, 30, 40), (60, 20, 160, 180))  # ... and a dark garment, 100x160, off-centre
    >>> pixels = convert(photo, "fashion_mnist", (1, 28, 28), background="dark")
    >>> pixels.shape, pixels.dtype, int(pixels[0, 14, 14]), int(pixels[0, 14, 0])
    ((1, 28, 28), dtype('uint8'), 227, 7)
    >>> np.nonzero(pixels[0, 14] > 100)[0][[0, -1]].tolist()  # 18 columns wide, centred
    [5, 22]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageOps

FASHION_MNIST = "fashion_mnist"
# Zalando's trimming: a pixel belongs to the border when it is within 5% of the maximum intensity
# of the border's colour (in every channel here: a JPEG's noise stays well inside).
TOLERANCE = 0.05
# The largest image read (width x height): a few bytes of PNG can claim 100000x100000 pixels.
MAX_PIXELS = 50_000_000


def convert(
    image: Image.Image,
    dataset: str,
    image_shape: Sequence[int],
    background: str | None = None,
    negate: bool | None = None,
) -> np.ndarray:
    """``image`` as the run's training data holds one: uint8 ``(C, H, W)``, values 0-255.

    Args:
        image: a picture of any size and mode; transparent parts are taken as white.
        dataset: the run's data set (``data.json``'s ``dataset``): ``fashion_mnist`` is converted by
            :func:`fashion_mnist`, any other by :func:`plain`.
        image_shape: the run's ``(C, H, W)``.
        background: ``dark`` or ``light`` when the training images share one, else ``None``
            (``data.json``'s ``background``).
        negate: whether to negate the picture; ``None``: as :func:`negates` decides.
    """
    if negate is None:
        negate = negates(image, dataset, background)
    if dataset == FASHION_MNIST:
        return fashion_mnist(image, image_shape, negate)
    return plain(image, image_shape, negate)


def negates(image: Image.Image, dataset: str, background: str | None) -> bool:
    """Whether :func:`convert` negates ``image``: for Fashion-MNIST, when its background (the colour of
    its border) is light and the training images' is dark, or the other way round; never otherwise."""
    if dataset != FASHION_MNIST or background is None:
        return False
    light = _luminance(border_colour(np.asarray(_flatten(image, "RGB")))) > 127.5
    return light if background == "dark" else not light


def fashion_mnist(image: Image.Image, image_shape: Sequence[int] = (1, 28, 28), negate: bool = True) -> np.ndarray:
    """Zalando's conversion of a product photo: trim, fit the longest side, centre, negate, grayscale.

    The border (what is within :data:`TOLERANCE` of the border's colour) is trimmed, the rest is
    resized so that its longest side fills the square and centred on it, the border's colour
    around it. An image already of the run's size is taken as framed like the data (an image of
    the data set comes through unchanged): only negated if asked, and made grayscale.

    Returns:
        uint8 ``(C, H, W)``.
    """
    channels, height, width = image_shape
    picture = _flatten(image, "RGB")
    if picture.size != (width, height):
        colour = border_colour(np.asarray(picture))
        picture = picture.crop(content_box(picture, colour))
        scale = min(width / picture.width, height / picture.height)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        square = Image.new("RGB", (width, height), colour)
        square.paste(picture.resize(size, Image.Resampling.BOX), ((width - size[0]) // 2, (height - size[1]) // 2))
        picture = square
    return _pixels(picture.convert("L" if channels == 1 else "RGB"), negate)


def plain(image: Image.Image, image_shape: Sequence[int], negate: bool = False) -> np.ndarray:
    """The picture in the run's channels (grayscale or RGB), its centre fitted to the run's size, nothing more.

    Returns:
        uint8 ``(C, H, W)``.
    """
    channels, height, width = image_shape
    picture = _flatten(image, "L" if channels == 1 else "RGB")
    return _pixels(fit(picture, (width, height)), negate)


def fit(picture: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``picture``'s centre, cropped to the aspect of ``size`` (width, height), resized to it.

    The conversion of a folder of images (``data.dataset: image_folder``) at training time too, so a
    photo given to ``predict`` is cut as the training images were.
    """
    return ImageOps.fit(picture, size, Image.Resampling.BILINEAR)


def border_colour(pixels: np.ndarray) -> tuple[int, int, int]:
    """The colour of the outermost pixels of ``pixels`` ``(H, W, 3)``: their median, channel by channel."""
    ring = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    red, green, blue = (int(v) for v in np.median(ring, axis=0).round())
    return red, green, blue


def content_box(picture: Image.Image, colour: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of what differs from ``colour`` by more than :data:`TOLERANCE`
    in some channel; the whole picture when nothing does."""
    red, green, blue = ImageChops.difference(picture, Image.new("RGB", picture.size, colour)).split()
    largest = ImageChops.lighter(ImageChops.lighter(red, green), blue)
    far = largest.point(lambda value: 255 if value > TOLERANCE * 255 else 0)
    return far.getbbox() or (0, 0, picture.width, picture.height)


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An image file, decoded; one larger than ``max_pixels`` is refused before its pixels are decoded.

    Raises:
        ValueError: the image is larger than ``max_pixels``.
        OSError: the file cannot be read as an image (PIL's ``UnidentifiedImageError`` among them).
    """
    with Image.open(path) as image:
        if image.width * image.height > max_pixels:
            raise ValueError(f"{path}: {image.width}x{image.height} pixels is more than the {max_pixels:,} allowed")
        image.load()
        return image.copy()


def _flatten(image: Image.Image, mode: str) -> Image.Image:
    """``image`` in ``mode``, its transparent parts on white (a product photo's cut-out background)."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        if rgba.getchannel("A").getextrema() != (255, 255):
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert(mode)


def _luminance(colour: tuple[int, int, int]) -> float:
    red, green, blue = colour
    return 0.299 * red + 0.587 * green + 0.114 * blue


def _pixels(picture: Image.Image, negate: bool) -> np.ndarray:
    pixels = np.array(picture, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if negate:
        pixels = 255 - pixels
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))
