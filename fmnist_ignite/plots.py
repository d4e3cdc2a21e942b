"""Charts drawn with Pillow: curves against epoch, a shaded matrix with a colour bar, text.

The pictures of a run are simple (a few curves, a 10x10 table, a grid of images), and Pillow
draws each in milliseconds; matplotlib took about a second to import and another to lay them
out and render, a sixth of a whole training run. Everything is drawn at twice the size and
reduced, which smooths lines and text. :func:`png_bytes` writes the PNG files.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFont

SCALE = 2
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
BLUES = ("#f7fbff", "#deebf7", "#c6dbef", "#9dcae1", "#6aaed6", "#4191c6", "#2070b4", "#08509b", "#08306b")
GRID = "#e4e4e4"
Box = tuple[float, float, float, float]
Ink = str | tuple[int, int, int]


PNG_COLOR_TYPES = {"L": 0, "RGB": 2, "RGBA": 6}


def png_bytes(image: Image.Image) -> bytes:
    """``image`` as a PNG file: every row filtered as its difference from the row above, compressed by zlib
    at its fastest level.

    Pillow tries PNG's five filters on every row and keeps the best; on these pictures (flat areas,
    lines, text) the one filter gives files of about the same size in half the time, and numpy's
    subtraction and zlib's compression let go of the interpreter's lock, so the pictures of several
    runs are encoded side by side. Decoded, the pixels are the image's (tested against Pillow's
    reader). Modes other than ``L``, ``RGB`` and ``RGBA`` are written by Pillow.
    """
    color_type = PNG_COLOR_TYPES.get(image.mode)
    if color_type is None:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
    width, height = image.size
    pixels = np.asarray(image).reshape(height, -1)
    rows = np.empty((height, pixels.shape[1] + 1), dtype=np.uint8)
    rows[:, 0] = 2  # "up": each byte less the one above it (zero above the first row), modulo 256
    rows[0, 1:] = pixels[0]
    np.subtract(pixels[1:], pixels[:-1], out=rows[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    data = zlib.compress(rows.data, 1)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@lru_cache(maxsize=16)
def _font(size: float) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=round(size * SCALE))


@lru_cache(maxsize=4096)
def _text_mask(text: str, size: float, anchor: str) -> tuple[Image.Image, tuple[int, int]]:
    """``text`` rendered by Pillow at ``size``, as a mask, and where its corner lies from the ``anchor`` point."""
    font = _font(size)
    bbox = font.getbbox(text, anchor=anchor)
    left, top, right, bottom = math.floor(bbox[0]), math.floor(bbox[1]), math.ceil(bbox[2]), math.ceil(bbox[3])
    mask = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, font=font, anchor=anchor, fill=255)
    return mask, (left, top)


@lru_cache(maxsize=1024)
def _turned_mask(text: str, angle: float, size: float) -> tuple[Image.Image, float]:
    """``text`` rendered by Pillow at ``size`` and turned ``angle`` degrees, as a mask; and its length unturned."""
    font = _font(size)
    right, bottom = font.getbbox(text)[2:]
    mask = Image.new("L", (int(right) + 2, int(bottom) + 2), 0)
    ImageDraw.Draw(mask).text((0, 0), text, font=font, fill=255)
    return mask.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True), float(right)


def blues(share: float) -> tuple[int, int, int]:
    """The colour of ``share`` (0 to 1) on a white-to-dark-blue scale (matplotlib's ``Blues``)."""
    position = min(max(share, 0.0), 1.0) * (len(BLUES) - 1)
    low = min(int(position), len(BLUES) - 2)
    a, b = ImageColor.getrgb(BLUES[low]), ImageColor.getrgb(BLUES[low + 1])
    t = position - low
    r, g, bl = (round(a[i] + (b[i] - a[i]) * t) for i in range(3))
    return (r, g, bl)


class Canvas:
    """A white picture of ``width`` x ``height`` pixels, drawn at :data:`SCALE` times that and reduced by :meth:`image`.

    Coordinates and sizes are in the final picture's pixels.
    """

    def __init__(self, width: int, height: int) -> None:
        self.size = (width, height)
        self._image = Image.new("RGB", (width * SCALE, height * SCALE), "white")
        self.draw = ImageDraw.Draw(self._image)

    def image(self) -> Image.Image:
        """The finished picture, at its final size."""
        return self._image.reduce(SCALE)

    def text(
        self, xy: tuple[float, float], text: str, size: float = 10, anchor: str = "mm", fill: Ink = "black"
    ) -> None:
        """``text`` placed by Pillow's ``anchor`` (``"mm"``: its middle at ``xy``; ``"rm"``: its right end).

        Each text is rendered once (:func:`_text_mask`) and then pasted in ``fill``: a run's pictures, and
        a sweep's, draw the same labels and numbers again and again. The text is placed at the nearest
        whole pixel of the drawing (half a pixel of the final picture at most); there it is pixel for
        pixel what Pillow's ``ImageDraw.text`` draws.
        """
        mask, (left, top) = _text_mask(text, size, anchor)
        self.draw.bitmap((round(xy[0] * SCALE) + left, round(xy[1] * SCALE) + top), mask, fill=fill)

    def text_width(self, text: str, size: float = 10) -> float:
        """How wide ``text`` is, in final pixels."""
        return float(self.draw.textlength(text, font=_font(size))) / SCALE

    def rotated_text(
        self, xy: tuple[float, float], text: str, angle: float, size: float = 10, end: bool = True
    ) -> None:
        """``text`` turned ``angle`` degrees anticlockwise, its end (or with ``end=False`` its middle) at ``xy``.

        Each text is rendered and turned once (:func:`_turned_mask`), as :meth:`text` renders once.
        """
        turned, right = _turned_mask(text, angle, size)
        # The text's end lies half its length from the centre, turned with it (y grows downwards).
        reach = right / 2 if end else 0.0
        x = xy[0] * SCALE - turned.width / 2 - reach * math.cos(math.radians(angle))
        y = xy[1] * SCALE - turned.height / 2 + reach * math.sin(math.radians(angle))
        self._image.paste("black", (round(x), round(y)), turned)

    def line(self, points: Sequence[tuple[float, float]], fill: Ink = "black", width: float = 1) -> None:
        """A polyline through ``points``."""
        scaled = [(x * SCALE, y * SCALE) for x, y in points]
        self.draw.line(scaled, fill=fill, width=max(1, round(width * SCALE)), joint="curve")

    def dashed_line(self, start: tuple[float, float], end: tuple[float, float], fill: Ink, dash: float = 4) -> None:
        """A straight dashed line."""
        length = math.dist(start, end)
        steps = max(1, int(length // dash))
        for k in range(0, steps, 2):
            a, b = k / steps, min(1.0, (k + 1) / steps)
            self.line(
                [
                    (start[0] + (end[0] - start[0]) * a, start[1] + (end[1] - start[1]) * a),
                    (start[0] + (end[0] - start[0]) * b, start[1] + (end[1] - start[1]) * b),
                ],
                fill=fill,
            )

    def rectangle(self, box: Box, fill: Ink | None = None, outline: Ink | None = None, width: float = 1) -> None:
        """An axis-aligned rectangle ``(left, top, right, bottom)``."""
        scaled = [v * SCALE for v in box]
        self.draw.rectangle(scaled, fill=fill, outline=outline, width=round(width * SCALE))

    def dot(self, xy: tuple[float, float], radius: float, fill: Ink) -> None:
        """A filled circle."""
        x, y = xy[0] * SCALE, xy[1] * SCALE
        r = radius * SCALE
        self.draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)

    def paste(self, picture: Image.Image, xy: tuple[float, float]) -> None:
        """``picture`` (at final size) with its top-left corner at ``xy``, enlarged without smoothing."""
        enlarged = picture.resize((picture.width * SCALE, picture.height * SCALE), Image.Resampling.NEAREST)
        self._image.paste(enlarged, (round(xy[0] * SCALE), round(xy[1] * SCALE)))


def nice_ticks(low: float, high: float, most: int = 9, integer: bool = False) -> list[float]:
    """Round values covering ``low``..``high``: the finest step of 1, 2, 2.5 or 5 times a power of ten with at most
    ``most`` intervals (whole numbers only with ``integer``).

    Example:
        >>> nice_ticks(0.355, 0.525)
        [0.36, 0.38, 0.4, 0.42, 0.44, 0.46, 0.48, 0.5, 0.52]
        >>> nice_ticks(1, 10, most=8, integer=True)
        [2, 4, 6, 8, 10]
    """
    span = max(high - low, 1e-12)
    power = 10 ** math.floor(math.log10(span / most))
    if integer:
        power = max(power, 1)
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if span / (m * power) <= most and not (integer and m == 2.5))
    first = math.ceil(low / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((high - first) / step + 1e-9) + 1)]


def tick_label(value: float, step: float) -> str:
    """``value`` with as many decimals as the tick step needs (0.25 steps get two, 0.02 steps two, 5 steps none)."""
    decimals = 0
    while decimals < 6 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-6:
        decimals += 1
    return f"{value:.{decimals}f}"


@dataclass(frozen=True)
class Curve:
    """One line of a :func:`line_panel`: its legend label, points and colour."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    color: str


def line_panel(
    canvas: Canvas,
    box: Box,
    title: str,
    curves: Sequence[Curve],
    xlabel: str = "epoch",
    marker: tuple[float, str] | None = None,
) -> None:
    """Curves against an integer x (epochs), with grid, ticks, title, legend and an optional dashed marker line.

    Args:
        canvas: where to draw.
        box: the panel's area ``(left, top, right, bottom)``, its labels included.
        title: above the plot.
        curves: the lines; each gets a dot at every point.
        xlabel: below the x axis.
        marker: ``(x, legend label)`` of a grey dashed vertical line, e.g. the best epoch.
    """
    left, top, right, bottom = box[0] + 52, box[1] + 30, box[2] - 8, box[3] - 42
    canvas.text(((left + right) / 2, box[1] + 15), title, size=14)
    canvas.text(((left + right) / 2, box[3] - 13), xlabel, size=11)
    curves = [Curve(c.label, *_finite(c.x, c.y), c.color) for c in curves]  # a diverged run's inf is left out
    xs = [x for c in curves for x in c.x] + ([marker[0]] if marker else [])
    ys = [y for c in curves for y in c.y]
    if not xs or not ys:
        canvas.rectangle((left, top, right, bottom), outline="black")
        return
    x_low, x_high = min(xs), max(xs)
    x_pad = max(x_high - x_low, 1) * 0.05
    x_low, x_high = x_low - x_pad, x_high + x_pad
    y_low, y_high = min(ys), max(ys)
    y_pad = (y_high - y_low) * 0.05 or max(abs(y_high) * 0.05, 0.01)
    y_low, y_high = y_low - y_pad, y_high + y_pad

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x_low) / (x_high - x_low) * (right - left),
            bottom - (y - y_low) / (y_high - y_low) * (bottom - top),
        )

    x_ticks = nice_ticks(math.ceil(x_low), math.floor(x_high), most=8, integer=True)
    y_ticks = nice_ticks(y_low, y_high)
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    for x in x_ticks:
        px = at(x, y_low)[0]
        canvas.line([(px, top), (px, bottom)], fill=GRID)
        canvas.line([(px, bottom), (px, bottom + 4)])
        canvas.text((px, bottom + 13), tick_label(x, 1), size=11)
    for y in y_ticks:
        py = at(x_low, y)[1]
        canvas.line([(left, py), (right, py)], fill=GRID)
        canvas.line([(left - 4, py), (left, py)])
        canvas.text((left - 7, py), tick_label(y, y_step), size=11, anchor="rm")
    if marker is not None:
        px = at(marker[0], y_low)[0]
        canvas.dashed_line((px, top), (px, bottom), fill="grey")
    for curve in curves:
        points = [at(x, y) for x, y in zip(curve.x, curve.y, strict=True)]
        if len(points) > 1:
            canvas.line(points, fill=curve.color, width=1.5)
        for point in points:
            canvas.dot(point, 2.5, curve.color)
    canvas.rectangle((left, top, right, bottom), outline="black")
    entries = [(c.label, c.color, "line") for c in curves] + ([(marker[1], "grey", "dashed")] if marker else [])
    points = [at(x, y) for c in curves for x, y in zip(c.x, c.y, strict=True)]
    _legend(canvas, (left, top, right, bottom), entries, points)


def _finite(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    kept = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(x) and math.isfinite(y)]
    return [x for x, _ in kept], [y for _, y in kept]


def _legend(canvas: Canvas, plot: Box, entries: list[tuple[str, str, str]], points: list[tuple[float, float]]) -> None:
    """A framed legend in the corner of ``plot`` that covers the fewest of ``points``.

    Each entry is ``(label, colour, style)``, the style ``line``, ``dashed`` or a :func:`mark` shape.
    """
    row, size = 19, 11
    width = 36 + max(canvas.text_width(label, size) for label, _, _ in entries)
    height = 6 + row * len(entries)
    left, top, right, bottom = plot
    corners = [
        (left + 6, top + 6),
        (right - 6 - width, top + 6),
        (left + 6, bottom - 6 - height),
        (right - 6 - width, bottom - 6 - height),
    ]

    def covered(corner: tuple[float, float]) -> int:
        x, y = corner
        return sum(x - 4 <= px <= x + width + 4 and y - 4 <= py <= y + height + 4 for px, py in points)

    x, y = min(corners, key=covered)
    canvas.rectangle((x, y, x + width, y + height), fill="white", outline="#cccccc")
    for k, (label, color, style) in enumerate(entries):
        cy = y + 3 + row * k + row / 2
        if style == "dashed":
            canvas.dashed_line((x + 6, cy), (x + 26, cy), fill=color, dash=3)
        elif style == "line":
            canvas.line([(x + 6, cy), (x + 26, cy)], fill=color, width=1.5)
            canvas.dot((x + 16, cy), 2.5, color)
        else:
            mark(canvas, (x + 16, cy), color, style.split()[0], "hollow" in style)
        canvas.text((x + 32, cy), label, size=size, anchor="lm")


@dataclass(frozen=True)
class Marks:
    """One set of points of a :func:`scatter_panel`: legend label, points, colour, ``circle`` or ``square``, hollow."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    color: str
    shape: str = "circle"
    hollow: bool = False


def mark(canvas: Canvas, xy: tuple[float, float], color: str, shape: str, hollow: bool = False) -> None:
    """A point drawn as a ``circle`` or a ``square``, filled or (``hollow``) outlined."""
    x, y, r = xy[0] * SCALE, xy[1] * SCALE, 4 * SCALE
    draw = canvas.draw.ellipse if shape == "circle" else canvas.draw.rectangle
    draw((x - r, y - r, x + r, y + r), fill=None if hollow else color, outline=color, width=SCALE * 3 // 2)


def scatter_panel(
    canvas: Canvas, box: Box, xlabel: str, marks: Sequence[Marks], labels: Sequence[str] | None, log: bool
) -> None:
    """Points against a number line (logarithmic with ``log``) or, with ``labels``, against those categories.

    Args:
        canvas: where to draw.
        box: the panel's area ``(left, top, right, bottom)``, its labels included.
        xlabel: below the x axis.
        marks: the points; with ``labels``, each x is the index of its label.
        labels: the names of the categories, side by side.
        log: place the numbers on a logarithmic axis; without labels it is also when they are positive and span
            a factor of 100 or more.
    """
    left, top, right, bottom = box[0] + 52, box[1] + 8, box[2] - 12, box[3] - 42
    canvas.text(((left + right) / 2, box[3] - 13), xlabel, size=11)
    canvas.rectangle((left, top, right, bottom), outline="black")
    numbers = [x for m in marks for x in m.x]
    if not numbers:
        return
    log = not labels and min(numbers) > 0 and (log or max(numbers) >= 100 * min(numbers))
    scale = math.log10 if log else float
    xs, ys = [scale(x) for x in numbers], [y for m in marks for y in m.y]
    x_low, x_high = (-0.5, len(labels) - 0.5) if labels else (min(xs), max(xs))
    x_pad = 0.0 if labels else (x_high - x_low) * 0.08 or 0.5
    y_pad = (max(ys) - min(ys)) * 0.08 or 0.01
    x_low, x_high, y_low, y_high = x_low - x_pad, x_high + x_pad, min(ys) - y_pad, max(ys) + y_pad

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x_low) / (x_high - x_low) * (right - left),
            bottom - (y - y_low) / (y_high - y_low) * (bottom - top),
        )

    if labels:
        x_ticks = [(float(i), text) for i, text in enumerate(labels)]
    elif log:
        powers = nice_ticks(math.ceil(x_low), math.floor(x_high), most=8, integer=True) if x_high - x_low >= 1 else []
        x_ticks = [(p, f"{10**p:g}") for p in powers] or [(x, f"{10**x:.3g}") for x in (min(xs), max(xs))]
    else:
        ticks = nice_ticks(x_low, x_high, most=6)
        step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
        x_ticks = [(t, tick_label(t, step)) for t in ticks]
    y_ticks = nice_ticks(y_low, y_high, most=7)
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    for x, text in x_ticks:
        px = at(x, y_low)[0]
        canvas.line([(px, top), (px, bottom)], fill=GRID)
        canvas.line([(px, bottom), (px, bottom + 4)])
        canvas.text((px, bottom + 13), text, size=11)
    for y in y_ticks:
        py = at(x_low, y)[1]
        canvas.line([(left, py), (right, py)], fill=GRID)
        canvas.line([(left - 4, py), (left, py)])
        canvas.text((left - 7, py), tick_label(y, y_step), size=11, anchor="rm")
    placed = []
    for m in marks:
        for x, y in zip(m.x, m.y, strict=True):
            placed.append(at(scale(x), y))
            mark(canvas, placed[-1], m.color, m.shape, m.hollow)
    canvas.rectangle((left, top, right, bottom), outline="black")
    entries = [(m.label, m.color, f"{m.shape}{' hollow' if m.hollow else ''}") for m in marks]
    _legend(canvas, (left, top, right, bottom), entries, placed)
