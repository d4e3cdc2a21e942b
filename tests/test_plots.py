"""plots.py: Pillow drawing at twice the size, ticks, the Blues scale, and line panels; PNGs that decode."""

from __future__ import annotations

import doctest
import io
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageColor

from fmnist_ignite import plots
from fmnist_ignite.plots import (
    BLUES,
    COLORS,
    SCALE,
    Canvas,
    Curve,
    blues,
    line_panel,
    nice_ticks,
    png_bytes,
    tick_label,
)


def pixels(canvas: Canvas) -> np.ndarray:
    return np.asarray(canvas.image()).astype(int)


def near(array: np.ndarray, color: str | tuple[int, int, int], tolerance: int = 40) -> np.ndarray:
    """Where ``array`` (H, W, 3) is within ``tolerance`` of ``color`` on every channel."""
    rgb = np.array(ImageColor.getrgb(color) if isinstance(color, str) else color)
    return (np.abs(array - rgb) <= tolerance).all(-1)


def test_a_canvas_is_white_and_its_picture_has_the_final_size() -> None:
    canvas = Canvas(120, 80)
    assert canvas.size == (120, 80) and SCALE == 2
    image = canvas.image()
    assert image.mode == "RGB" and image.size == (120, 80)
    assert (np.asarray(image) == 255).all()


def test_a_picture_saves_as_a_png_that_decodes() -> None:
    canvas = Canvas(64, 48)
    canvas.line([(0, 0), (63, 47)], fill="red", width=2)
    data = png_bytes(canvas.image())
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    decoded = Image.open(io.BytesIO(data))
    decoded.load()  # Pillow checks each chunk's CRC as it reads
    assert (decoded.format, decoded.size, decoded.mode) == ("PNG", (64, 48), "RGB")
    assert np.array_equal(np.asarray(decoded), np.asarray(canvas.image()))


@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(["L", "RGB", "RGBA", "P", "1"]),
    width=st.integers(1, 40),
    height=st.integers(1, 30),
    seed=st.integers(0, 2**32 - 1),
)
def test_png_bytes_decode_to_the_same_pixels_in_every_mode(mode: str, width: int, height: int, seed: int) -> None:
    channels = {"L": 1, "RGB": 3, "RGBA": 4}.get(mode, 1)
    values = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    image = Image.fromarray(values.squeeze(2) if channels == 1 else values, "L" if channels == 1 else mode)
    image = image.convert(mode)  # P and 1: written by Pillow itself
    decoded = Image.open(io.BytesIO(png_bytes(image)))
    decoded.load()
    assert (decoded.size, decoded.mode) == (image.size, mode)
    assert np.array_equal(np.asarray(decoded), np.asarray(image))


def test_png_bytes_of_a_run_picture_are_about_the_size_of_pillows_own() -> None:
    canvas = Canvas(400, 300)
    line_panel(canvas, (0, 0, 400, 300), "loss", [Curve("train", [1, 2, 3, 4], [0.9, 0.6, 0.5, 0.45], COLORS[0])])
    image = canvas.image()
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    assert len(png_bytes(image)) < 1.3 * len(buffer.getvalue())


def test_shapes_land_where_their_final_coordinates_say() -> None:
    canvas = Canvas(100, 60)
    canvas.rectangle((10, 10, 30, 20), fill="#2ca02c")
    canvas.dot((70, 40), 4, "#d62728")
    canvas.line([(5, 55), (95, 55)], fill="#1f77b4", width=2)
    array = pixels(canvas)
    assert near(array[12:19, 12:29], "#2ca02c", 0).all()
    assert near(array[38:43, 68:73], "#d62728", 0).all()
    assert near(array[55, 10:90], "#1f77b4", 60).all()
    assert (array[0:5, 40:60] == 255).all()  # untouched elsewhere


def test_a_dashed_line_has_gaps() -> None:
    canvas = Canvas(100, 10)
    canvas.dashed_line((0, 5), (100, 5), fill="black", dash=10)
    row = pixels(canvas)[5].max(-1)  # the darkest channel is still light where nothing is drawn
    drawn = row < 128
    assert 30 < drawn.sum() < 70
    assert drawn[2:8].all() and not drawn[12:18].any() and drawn[22:28].all()


def test_paste_enlarges_without_smoothing() -> None:
    tile = Image.fromarray(np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8), "RGB")  # 2x1: red, blue
    canvas = Canvas(10, 10)
    canvas.paste(tile, (3, 4))
    array = pixels(canvas)
    assert tuple(array[4, 3]) == (255, 0, 0) and tuple(array[4, 4]) == (0, 0, 255)
    assert tuple(array[4, 5]) == (255, 255, 255) and tuple(array[5, 3]) == (255, 255, 255)


def test_text_is_drawn_and_measured() -> None:
    canvas = Canvas(200, 40)
    canvas.text((100, 20), "epoch", size=14)
    dark = pixels(canvas).max(-1) < 128
    columns = np.nonzero(dark)[1]
    assert dark.any()
    assert abs((columns.min() + columns.max()) / 2 - 100) < 4  # "mm": centred on x
    short, long = canvas.text_width("ab", 10), canvas.text_width("abcdefgh", 10)
    assert 0 < short < long and long == pytest.approx(4 * short, rel=0.35)
    assert canvas.text_width("abcdefgh", 20) == pytest.approx(2 * long, rel=0.15)


@pytest.mark.parametrize("anchor", ["mm", "rm", "lm", "la"])
def test_text_rendered_once_and_pasted_is_pillows_own_drawing(anchor: str) -> None:
    from PIL import ImageDraw

    texts = [("T-shirt/top", 11, "black"), ("0.8512", 14, (214, 39, 40)), ("Ankle boot (Bag)", 10, "#1f77b4")]
    canvas = Canvas(200, 60)
    expected = Image.new("RGB", (200 * SCALE, 60 * SCALE), "white")
    draw = ImageDraw.Draw(expected)
    for k, (text, size, fill) in enumerate(texts * 2):  # the second time from the cache
        xy = (100, 10 + 8 * k)
        canvas.text(xy, text, size=size, anchor=anchor, fill=fill)
        draw.text((xy[0] * SCALE, xy[1] * SCALE), text, font=plots._font(size), anchor=anchor, fill=fill)
    assert np.array_equal(np.asarray(canvas._image), np.asarray(expected))


def test_rotated_text_is_upright() -> None:
    canvas = Canvas(60, 200)
    canvas.rotated_text((30, 100), "accuracy label", angle=90, size=12, end=False)
    dark = pixels(canvas).max(-1) < 160
    rows, columns = np.nonzero(dark)
    assert np.ptp(rows) > 3 * np.ptp(columns)  # turned: taller than wide
    assert abs((rows.min() + rows.max()) / 2 - 100) < 6


def test_rotated_text_from_the_cache_is_drawn_as_the_first_time() -> None:
    def drawn() -> np.ndarray:
        canvas = Canvas(120, 120)
        canvas.rotated_text((60, 60), "Ankle boot", angle=45, size=11)
        canvas.rotated_text((20, 60), "share of the true class", angle=90, size=11, end=False)
        return pixels(canvas)

    plots._turned_mask.cache_clear()
    first = drawn()
    assert plots._turned_mask.cache_info().misses == 2
    assert np.array_equal(drawn(), first)
    assert plots._turned_mask.cache_info().hits == 2


def test_the_blues_scale() -> None:
    assert blues(0.0) == ImageColor.getrgb(BLUES[0]) == (247, 251, 255)
    assert blues(1.0) == ImageColor.getrgb(BLUES[-1]) == (8, 48, 107)
    assert blues(0.5) == ImageColor.getrgb(BLUES[4])
    assert blues(-3) == blues(0.0) and blues(7) == blues(1.0)
    darkness = [sum(blues(k / 20)) for k in range(21)]
    assert darkness == sorted(darkness, reverse=True)  # darker as the share grows
    a, b = ImageColor.getrgb(BLUES[0]), ImageColor.getrgb(BLUES[1])
    assert blues(1 / 16) == tuple(round((x + y) / 2) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("low", "high", "most", "integer", "expected"),
    [
        (0.355, 0.525, 9, False, [0.36, 0.38, 0.4, 0.42, 0.44, 0.46, 0.48, 0.5, 0.52]),
        (1, 10, 8, True, [2, 4, 6, 8, 10]),
        (0, 1, 9, False, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (1, 3, 8, True, [1, 2, 3]),
        (0.2, 0.7, 9, False, [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]),  # 0.05 would make 10 intervals
        (-1, 1, 9, False, [-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0]),
        (5, 5, 9, False, [5.0]),
    ],
)
def test_nice_ticks(low: float, high: float, most: int, integer: bool, expected: list[float]) -> None:
    ticks = nice_ticks(low, high, most=most, integer=integer)
    assert ticks == pytest.approx(expected)
    assert all(low - 1e-9 <= t <= high + 1e-9 for t in ticks)


@pytest.mark.parametrize(
    ("low", "high", "integer"), [(0.0, 1.0, False), (0.123, 0.9876, False), (3.0, 250.0, True), (1, 7, True)]
)
def test_nice_ticks_use_round_steps_and_at_most_nine_intervals(low: float, high: float, integer: bool) -> None:
    ticks = nice_ticks(low, high, integer=integer)
    steps = {round(b - a, 9) for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1
    step = steps.pop()
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert round(mantissa, 6) in (1, 2, 2.5, 5) and len(ticks) - 1 <= 9
    assert not integer or (step >= 1 and all(float(t).is_integer() for t in ticks))
    assert ticks[0] - step < low and ticks[-1] + step > high  # the range is covered


@pytest.mark.parametrize(
    ("value", "step", "text"),
    [(0.5, 0.25, "0.50"), (0.42, 0.02, "0.42"), (10, 5, "10"), (0.3, 0.1, "0.3"), (3, 1, "3"), (1e-3, 5e-4, "0.0010")],
)
def test_tick_label(value: float, step: float, text: str) -> None:
    assert tick_label(value, step) == text


def test_a_panel_draws_each_curve_in_its_colour_inside_its_box() -> None:
    canvas = Canvas(400, 300)
    curves = [
        Curve("train", [1, 2, 3, 4], [0.9, 0.6, 0.5, 0.45], COLORS[0]),
        Curve("validation", [1, 2, 3, 4], [0.8, 0.7, 0.65, 0.66], COLORS[1]),
    ]
    line_panel(canvas, (200, 0, 400, 300), "loss", curves, marker=(3, "best epoch"))
    array = pixels(canvas)
    for color in COLORS[:2]:
        where = near(array, color, 10)
        assert where[:, 200:].sum() > 50
        assert not where[:, :200].any()  # nothing outside the box
    assert near(array, "grey", 10)[:, 200:].sum() > 10  # the dashed marker


def test_a_diverged_run_s_infinite_values_are_left_out() -> None:
    canvas = Canvas(300, 200)
    finite = [Curve("loss", [1, 2], [0.5, 0.4], COLORS[0])]
    line_panel(canvas, (0, 0, 300, 200), "loss", finite)
    other = Canvas(300, 200)
    with_inf = [Curve("loss", [1, 2, 3, 4], [0.5, 0.4, math.inf, math.nan], COLORS[0])]
    line_panel(other, (0, 0, 300, 200), "loss", with_inf)
    assert near(pixels(other), COLORS[0], 10).sum() > 20
    assert np.array_equal(pixels(other), pixels(canvas))  # drawn as if those points were not there


def test_a_panel_without_points_is_an_empty_frame() -> None:
    canvas = Canvas(200, 150)
    line_panel(canvas, (0, 0, 200, 150), "nothing yet", [Curve("loss", [], [], COLORS[0])])
    array = pixels(canvas)
    assert not near(array, COLORS[0], 30).any()
    left, top, right, bottom = 52, 30, 192, 108
    assert (array[top, left + 5 : right - 5] < 200).all()  # the frame's top edge
    assert (array[bottom, left + 5 : right - 5] < 200).all()
    assert (array[top + 5 : bottom - 5, left + 5 : right - 5] == 255).all()  # and nothing inside


def test_curve_is_immutable() -> None:
    curve = Curve("a", [1], [2], "red")
    with pytest.raises(AttributeError):
        curve.label = "b"  # type: ignore[misc]


def test_docstring_examples() -> None:
    result = doctest.testmod(plots, verbose=False)
    assert result.attempted >= 2 and result.failed == 0
