"""images.py: untrusted image files decoded to one PIL mode, with the size checked before decoding."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmnist_ignite import DataError
from fmnist_ignite.images import MAX_PIXELS, open_image

from .helpers import png


def gradient(mode: str, size: tuple[int, int] = (6, 4)) -> Image.Image:
    """A small picture in ``mode`` whose pixels all differ."""
    width, height = size
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[..., 0] = np.arange(width)[None, :] * 40
    rgb[..., 1] = np.arange(height)[:, None] * 60
    rgb[..., 2] = 200
    picture = Image.fromarray(rgb, "RGB")
    if mode == "P":
        return picture.quantize(16)
    return picture.convert(mode)


@pytest.mark.parametrize(("source", "fmt"), [("L", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("P", "PNG"),
                                             ("1", "PNG"), ("I;16", "PNG"), ("LA", "PNG"), ("RGB", "BMP"),
                                             ("L", "TIFF"), ("CMYK", "JPEG")])  # fmt: skip
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_every_mode_is_converted_like_pil_converts_it(tmp_path: Path, source: str, fmt: str, mode: str) -> None:
    path = tmp_path / f"picture.{fmt.lower()}"
    gradient(source).save(path, fmt)
    image = open_image(path, mode)
    assert image.mode == mode and image.size == (6, 4)
    with Image.open(path) as original:
        expected = original.convert(mode)
    assert np.array_equal(np.asarray(image), np.asarray(expected))


@pytest.mark.parametrize(("source", "fmt"), [("RGBA", "PNG"), ("P", "PNG"), ("CMYK", "JPEG"), ("I;16", "PNG")])
def test_an_image_in_its_own_mode(tmp_path: Path, source: str, fmt: str) -> None:
    path = tmp_path / f"picture.{fmt.lower()}"
    gradient(source).save(path, fmt)
    image = open_image(path, None)
    with Image.open(path) as original:
        assert image.mode == original.mode and image.info.keys() == original.info.keys()
        assert np.array_equal(np.asarray(image), np.asarray(original))


def test_grey_values_survive(tmp_path: Path) -> None:
    pixels = np.arange(28 * 28, dtype=np.uint32).reshape(28, 28) % 256
    path = tmp_path / "digit.png"
    Image.fromarray(pixels.astype(np.uint8), "L").save(path)
    image = open_image(str(path), "L")  # a str path too
    assert np.array_equal(np.asarray(image), pixels)


def test_the_image_is_decoded_and_the_file_closed(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    gradient("RGB").save(path)
    image = open_image(path, "RGB")
    path.unlink()
    assert image.getpixel((5, 3)) == (200, 180, 200)


def test_an_image_over_the_limit_is_refused_by_its_header(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (100, 50)).save(path)
    with pytest.raises(DataError) as info:
        open_image(path, "L", max_pixels=4999)
    assert str(info.value) == f"{path}: 100x50 pixels is more than the 4,999 allowed"
    assert open_image(path, "L", max_pixels=5000).size == (100, 50)


def test_a_claimed_size_is_refused_before_decoding(tmp_path: Path) -> None:
    """A PNG whose header claims 20000x20000 pixels (400 M) in a few hundred bytes."""
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, "PNG")
    path = tmp_path / "bomb.png"
    path.write_bytes(buffer.getvalue())
    assert path.stat().st_size < 100_000
    with pytest.raises(DataError) as info:
        open_image(path, "L")
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "more than the 50,000,000 allowed" in message
    assert MAX_PIXELS == 50_000_000


def test_pil_s_own_limit_never_speaks_instead_of_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "x.png"
    Image.new("L", (100, 100)).save(path)
    with pytest.raises(DataError) as info:
        open_image(path, "L", max_pixels=5000)
    assert str(info.value) == f"{path}: 100x100 pixels is more than the 5,000 allowed"
    assert Image.MAX_IMAGE_PIXELS == 1000  # put back


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("hello, not a picture\n")
    with pytest.raises(DataError) as info:
        open_image(path, "L")
    assert str(info.value) == f"{path}: not an image file PIL can read"


def test_a_truncated_image(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8), "L").save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError) as info:
        open_image(path, "L")
    message = str(info.value)
    assert message.startswith(f"{path}: cannot be read as an image (") and message.endswith(")")
    assert "\n" not in message


def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.png"
    with pytest.raises(DataError) as info:
        open_image(path, "L")
    assert str(info.value).startswith(f"{path}: cannot be read as an image (FileNotFoundError: ")


def test_a_max_pixels_above_pil_s_own_limit_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses above 2,000 pixels
    path = tmp_path / "x.png"
    Image.new("L", (100, 100)).save(path)
    assert open_image(path, "L", max_pixels=100_000).size == (100, 100)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (png(100_000, 100_000), "100000x100000 pixels is more than the 50,000,000 allowed"),
        (png(8000, 8000), "8000x8000 pixels is more than the 50,000,000 allowed"),
        (png(40, 30), "cannot be read as an image (OSError: image file is truncated"),
        (b"not a picture", "not an image file PIL can read"),
    ],
    ids=["100000x100000", "8000x8000", "truncated", "text"],
)
def test_open_image_refuses_bombs_and_damaged_files_in_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"^{re.escape(f'{path}: {message}')}") as info:
        open_image(path, "L")
    assert "\n" not in str(info.value)


def test_open_image_converts_and_bounds(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "good.png"
    Image.new("RGB", (30, 20), (255, 0, 0)).save(path)
    image = open_image(path, "L")
    assert image.mode == "L" and image.size == (30, 20) and image.getpixel((0, 0)) == 76
    with pytest.raises(DataError, match=re.escape(f"{path}: 30x20 pixels is more than the 500 allowed")):
        open_image(path, "L", max_pixels=500)
    with pytest.raises(
        DataError, match=re.escape(f"{tmp_path / 'nope.png'}: cannot be read as an image (FileNotFound")
    ):
        open_image(tmp_path / "nope.png", "L")


def test_a_fifo_or_a_device_among_the_images_is_refused_without_blocking(tmp_path: Path) -> None:
    """Class 4 of issue 19: opening a FIFO for reading blocks until a writer comes; it is never opened."""
    import os
    import threading

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    link = tmp_path / "link.png"
    link.symlink_to(fifo)
    answers: dict[str, str] = {}

    def refuse() -> None:
        for path in (fifo, link, Path("/dev/zero"), tmp_path):
            try:
                open_image(path, "L")
            except DataError as err:
                answers[str(path)] = str(err)

    worker = threading.Thread(target=refuse, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():
        os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # frees the reader that blocked
        pytest.fail("open_image blocked on a FIFO")
    for path in (fifo, link, Path("/dev/zero"), tmp_path):
        assert (
            answers[str(path)] == f"{path}: not a regular file (a FIFO, a device, a folder); only image files are read"
        )
