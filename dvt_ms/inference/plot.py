"""Accuracy vs GFLOPs chart (budgeted-batch curve and per-exit anytime points), drawn with PIL."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = ["plot_accuracy_vs_gflops"]

WIDTH, HEIGHT = 900, 640
LEFT, RIGHT, TOP, BOTTOM = 90, 30, 60, 110
CURVE, ANYTIME, CHOSEN, GRID, AXIS = (31, 119, 180), (214, 39, 40), (44, 160, 44), (225, 225, 225), (40, 40, 40)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font only
        return ImageFont.load_default()


def _vertical_text(image: Image.Image, centre: tuple[float, float], text: str, font) -> None:
    """Draw ``text`` rotated by 90 degrees (reading upwards) centred on ``centre``."""
    probe = ImageDraw.Draw(image)
    width = int(probe.textlength(text, font=font)) + 4
    height = int(getattr(font, "size", 12) * 1.4) + 4
    label = Image.new("RGBA", (width, height), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((width / 2, height / 2), text, fill=AXIS, font=font, anchor="mm")
    label = label.rotate(90, expand=True)
    image.paste(label, (int(centre[0] - label.width / 2), int(centre[1] - label.height / 2)), label)


def _nice_step(span: float, target_ticks: int = 6) -> float:
    raw = max(span, 1e-12) / target_ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _ticks(low: float, high: float) -> list[float]:
    step = _nice_step(high - low)
    first = math.ceil(low / step - 1e-9) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _range(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    pad = (high - low) * 0.08 or max(abs(high) * 0.05, 0.05)
    return low - pad, high + pad


def plot_accuracy_vs_gflops(path: str, curve_gflops: Sequence[float], curve_accuracy: Sequence[float],
                            exit_gflops: Sequence[float], exit_accuracy: Sequence[float],
                            chosen: tuple[float, float] | None = None, title: str = "") -> None:
    """Write a PNG: the budgeted-batch curve (line), the anytime accuracy of each exit at its cumulative
    GFLOPs (labelled squares) and optionally the operating point actually run (``chosen``)."""
    xs = list(curve_gflops) + list(exit_gflops) + ([chosen[0]] if chosen else [])
    ys = list(curve_accuracy) + list(exit_accuracy) + ([chosen[1]] if chosen else [])
    if not xs:
        raise ValueError("nothing to plot: no curve and no anytime points")
    x0, x1 = _range(xs)
    y0, y1 = _range(ys)
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    small, normal = _font(13), _font(16)
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def at(x: float, y: float) -> tuple[float, float]:
        return LEFT + (x - x0) / (x1 - x0) * pw, TOP + (1 - (y - y0) / (y1 - y0)) * ph

    for tick in _ticks(x0, x1):
        px, _ = at(tick, y0)
        draw.line([(px, TOP), (px, TOP + ph)], fill=GRID)
        draw.text((px, TOP + ph + 8), f"{tick:g}", fill=AXIS, font=small, anchor="ma")
    for tick in _ticks(y0, y1):
        _, py = at(x0, tick)
        draw.line([(LEFT, py), (LEFT + pw, py)], fill=GRID)
        draw.text((LEFT - 8, py), f"{tick:g}", fill=AXIS, font=small, anchor="rm")
    draw.rectangle([LEFT, TOP, LEFT + pw, TOP + ph], outline=AXIS)
    draw.text((LEFT + pw / 2, TOP + ph + 32), "GFLOPs per image (multiply-accumulates)", fill=AXIS, font=normal,
              anchor="ma")
    _vertical_text(image, (26, TOP + ph / 2), "top-1 accuracy (%)", normal)
    draw.text((LEFT + pw / 2, 22), title or "accuracy vs GFLOPs", fill=AXIS, font=normal, anchor="ma")

    points = [at(x, y) for x, y in sorted(zip(curve_gflops, curve_accuracy, strict=True))]
    if len(points) > 1:
        draw.line(points, fill=CURVE, width=2)
    for px, py in points:
        draw.ellipse([px - 2.5, py - 2.5, px + 2.5, py + 2.5], fill=CURVE)
    for k, (x, y) in enumerate(zip(exit_gflops, exit_accuracy, strict=True)):
        px, py = at(x, y)
        draw.rectangle([px - 5, py - 5, px + 5, py + 5], fill=ANYTIME)
        draw.text((px + 8, py + 6), f"exit {k + 1}", fill=ANYTIME, font=small)
    if chosen:
        px, py = at(*chosen)
        draw.ellipse([px - 7, py - 7, px + 7, py + 7], outline=CHOSEN, width=3)

    legend = [(CURVE, "budgeted batch (early exit)"), (ANYTIME, "anytime: exit k, no early exit")]
    if chosen:
        legend.append((CHOSEN, "operating point run"))
    lx, ly = LEFT, HEIGHT - 28  # one row under the x-axis title
    for color, label in legend:
        draw.rectangle([lx, ly - 5, lx + 10, ly + 5], fill=color)
        draw.text((lx + 16, ly), label, fill=AXIS, font=small, anchor="lm")
        lx += 16 + draw.textlength(label, font=small) + 30
    image.save(path, format="PNG")
