"""preprocess.py: pictures made into a run's input on synthetic images; numpy and Pillow only, never torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from fmnist_ignite import preprocess
from fmnist_ignite.preprocess import content_box, convert, fashion_mnist, negates, plain, read_image

from .conftest import synthetic_images
from .helpers import product_photo

FASHION = (1, 28, 28)
WHITE, BLACK = (255, 255, 255), (0, 0, 0)


def photo(
    size: tuple[int, int],
    box: tuple[int, int, int, int],
    garment: tuple[int, int, int] = BLACK,
    background: tuple[int, int, int] = WHITE,
) -> Image.Image:
    """A ``size`` RGB picture of ``background`` with a ``garment``-coloured rectangle at ``box``."""
    picture = Image.new("RGB", size, background)
    picture.paste(garment, box)
    return picture


def garment_like(seed: int = 0) -> np.ndarray:
    """A 28x28 image like Fashion-MNIST's: a light garment on black, touching the top and bottom, its
    shades changing smoothly (by ``seed``) as a garment's do."""
    pixels = np.zeros((28, 28), dtype=np.uint8)
    rows = np.linspace(0, np.pi, 28)[:, None] * (1 + seed)
    pixels[:, 6:22] = (180 + 70 * np.sin(rows + np.linspace(0, 2, 16)[None, :])).round()
    return pixels


def test_a_dark_garment_on_white_is_trimmed_fitted_keeping_its_aspect_centred_and_negated() -> None:
    # 100x160 garment: its 160 rows fill the 28 rows, its 100 columns become round(17.5) = 18, centred at 5..22.
    pixels = convert(photo((300, 200), (60, 20, 160, 180)), "fashion_mnist", FASHION, background="dark")
    expected = np.zeros((1, 28, 28), dtype=np.uint8)
    expected[0, :, 5:23] = 255
    assert pixels.dtype == np.uint8 and np.array_equal(pixels, expected)


@pytest.mark.parametrize(
    ("size", "box"),
    [((300, 200), (0, 0, 100, 160)), ((1000, 400), (700, 230, 800, 390)), ((101, 161), (1, 1, 101, 161))],
    ids=["top-left", "far-right", "no-margin"],
)
def test_where_the_garment_stands_and_how_wide_the_margins_are_change_nothing(
    size: tuple[int, int], box: tuple[int, int, int, int]
) -> None:
    reference = convert(photo((300, 200), (60, 20, 160, 180)), "fashion_mnist", FASHION, background="dark")
    assert np.array_equal(convert(photo(size, box), "fashion_mnist", FASHION, background="dark"), reference)


def test_a_wide_garment_keeps_its_aspect_and_is_centred_vertically() -> None:
    # 200x50: 28 columns by round(7.0) = 7 rows, at rows (28 - 7) // 2 = 10 .. 16.
    pixels = fashion_mnist(photo((400, 300), (150, 20, 350, 70)), FASHION, negate=True)[0]
    assert np.flatnonzero(pixels.any(axis=1)).tolist() == list(range(10, 17))
    assert pixels[10:17].min() == 255 and pixels.sum() == 255 * 28 * 7


def test_the_border_is_whatever_is_close_to_the_colour_of_the_edges() -> None:
    # Noise within 5% (12 of 255) is border; a mark 20 levels off is not, and widens what is kept.
    rng = np.random.default_rng(0)
    noisy = np.clip(200 + rng.integers(-12, 13, (200, 300, 3)), 0, 255).astype(np.uint8)
    noisy[50:150, 100:150] = (30, 30, 30)
    picture = Image.fromarray(noisy, "RGB")
    colour = preprocess.border_colour(np.asarray(picture))
    assert all(abs(c - 200) <= 2 for c in colour)
    assert content_box(picture, colour) == (100, 50, 150, 150)
    noisy[10, 20] = (200, 200, 180)
    assert content_box(Image.fromarray(noisy, "RGB"), colour) == (20, 10, 150, 150)


def test_a_picture_of_nothing_but_background_is_kept_whole() -> None:
    picture = Image.new("RGB", (50, 40), (240, 240, 240))
    assert content_box(picture, (240, 240, 240)) == (0, 0, 50, 40)
    assert np.array_equal(convert(picture, "fashion_mnist", FASHION, "dark"), np.full((1, 28, 28), 15, np.uint8))


def test_negated_only_when_the_background_is_light_and_the_training_background_dark() -> None:
    light = photo((90, 60), (30, 10, 60, 50), garment=(40, 40, 40), background=(230, 230, 230))
    dark = photo((90, 60), (30, 10, 60, 50), garment=(215, 215, 215), background=(25, 25, 25))
    assert negates(light, "fashion_mnist", "dark") and not negates(dark, "fashion_mnist", "dark")
    assert negates(dark, "fashion_mnist", "light") and not negates(light, "fashion_mnist", "light")
    assert not negates(light, "fashion_mnist", None), "training images with no common background: never"
    assert not negates(light, "cifar10", "dark") and not negates(light, "image_folder", "dark")
    # Either way the garment ends light on black: 255 - 40 and 215.
    from_light = convert(light, "fashion_mnist", FASHION, "dark")
    from_dark = convert(dark, "fashion_mnist", FASHION, "dark")
    assert (from_light.max(), from_light[0, 0, 0]) == (215, 25)
    assert (from_dark.max(), from_dark[0, 0, 0]) == (215, 25)
    assert np.array_equal(from_light, from_dark)
    assert np.array_equal(convert(light, "fashion_mnist", FASHION, "dark", negate=False), 255 - from_light)


def test_colour_becomes_grayscale_by_luminance() -> None:
    # Red (255, 0, 0) is 76 in PIL's grayscale (ITU-R 601-2); negated on a white background: 179.
    pixels = convert(photo((60, 60), (10, 10, 50, 50), garment=(255, 0, 0)), "fashion_mnist", FASHION, "dark")
    assert pixels.shape == (1, 28, 28) and set(np.unique(pixels).tolist()) == {179}


def test_transparent_parts_are_taken_as_white() -> None:
    cutout = Image.new("RGBA", (120, 90), (0, 0, 0, 0))
    cutout.paste((10, 10, 10, 255), (20, 30, 60, 80))
    on_white = photo((120, 90), (20, 30, 60, 80), garment=(10, 10, 10))
    assert negates(cutout, "fashion_mnist", "dark")
    assert np.array_equal(
        convert(cutout, "fashion_mnist", FASHION, "dark"), convert(on_white, "fashion_mnist", FASHION, "dark")
    )


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_an_image_of_the_data_set_comes_through_unchanged(mode: str) -> None:
    images, _ = synthetic_images(4, (28, 28), seed=3)
    images[:, :3, :] = images[:, -3:, :] = 0  # dark border, garment touching the sides
    for pixels in [*images, garment_like()]:
        picture = Image.fromarray(pixels, "L").convert(mode)
        assert not negates(picture, "fashion_mnist", "dark")
        assert np.array_equal(convert(picture, "fashion_mnist", FASHION, "dark"), pixels[None])


def test_an_image_of_the_run_s_size_on_a_light_background_is_only_negated() -> None:
    pixels = garment_like()
    assert np.array_equal(convert(Image.fromarray(255 - pixels), "fashion_mnist", FASHION, "dark"), pixels[None])


def test_a_product_photo_of_a_garment_comes_back_close_to_it(tmp_path: Path) -> None:
    original = garment_like()
    path = tmp_path / "photo.jpg"
    made = product_photo(original, np.random.default_rng(1))
    made.save(path, quality=90)
    picture = read_image(path)
    assert picture.mode == "RGB" and min(picture.size) > 224
    pixels = convert(picture, "fashion_mnist", FASHION, "dark")[0].astype(int)
    assert np.abs(pixels - original).mean() < 16
    assert (pixels[:, :5] < 30).all() and (pixels[:, 23:] < 30).all(), "the margins are black"
    assert pixels[:, 7:21].mean() > 140, "the garment is light"


@pytest.mark.parametrize("dataset", ["cifar10", "image_folder", "my_plugin"])
def test_any_other_data_set_is_converted_to_its_channels_and_size_only(dataset: str) -> None:
    picture = photo((64, 48), (5, 5, 20, 40), garment=(200, 30, 30), background=(250, 250, 250))
    expected = np.asarray(ImageOps.fit(picture, (32, 32), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    pixels = convert(picture, dataset, (3, 32, 32), background="dark")
    assert pixels.shape == (3, 32, 32) and np.array_equal(pixels, expected), "the centre, no trimming, no negation"
    gray = convert(picture, dataset, (1, 16, 16), background=None)
    assert np.array_equal(gray[0], np.asarray(ImageOps.fit(picture.convert("L"), (16, 16), Image.Resampling.BILINEAR)))
    assert np.array_equal(convert(picture, dataset, (3, 32, 32), negate=True), 255 - expected)
    assert np.array_equal(plain(picture, (3, 32, 32)), expected)


def test_read_image_refuses_a_large_image_by_its_header(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (100, 50)).save(path)
    with pytest.raises(ValueError, match=rf"^{path}: 100x50 pixels is more than the 4,999 allowed$"):
        read_image(path, max_pixels=4999)
    assert read_image(path, max_pixels=5000).size == (100, 50)
    assert preprocess.MAX_PIXELS == 50_000_000


def test_the_module_needs_nothing_but_numpy_and_pillow(tmp_path: Path) -> None:
    """It is shipped alone next to an exported model: no import of the package, nor of torch."""
    source = Path(preprocess.__file__)
    (tmp_path / "preprocess.py").write_bytes(source.read_bytes())
    tree = ast.parse(source.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))
    assert imported <= {"__future__", "collections", "pathlib", "numpy", "PIL"}
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import preprocess; "
        "assert not {'torch', 'fmnist_ignite'} & set(sys.modules), sorted(sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
