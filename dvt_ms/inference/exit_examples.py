"""``exit_examples.png``: sample images per exit, the easy ones that left early next to the hard ones.

One row per exit: its token grid, the share of images that left there and up to ``per_exit`` of those
images, each framed (a white image stays visible on the white page) and captioned with its predicted class
and confidence, as a line under the title explains. Written by ``dvt-eval`` and ``dvt-predict``; drawn with
PIL from the image files themselves.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from ..data.folder import load_image
from .plot import _font

__all__ = ["EXAMPLES_NAME", "pick_examples", "write_exit_examples"]

EXAMPLES_NAME = "exit_examples.png"
THUMB, CAPTION, LABEL_WIDTH, GAP = 96, 18, 190, 8
TEXT, MUTED, FRAME = (40, 40, 40), (120, 120, 120), (170, 170, 170)
LEGEND = ("under each image: the class it was given and that exit's confidence (its top softmax probability), "
          "which cleared the exit's threshold")


def pick_examples(exits: np.ndarray, num_exits: int, per_exit: int = 8) -> list[np.ndarray]:
    """For each exit, the indices of up to ``per_exit`` images that left there, spread evenly over them in
    input order (deterministic)."""
    picked = []
    for k in range(num_exits):
        rows = np.flatnonzero(np.asarray(exits) == k)
        if rows.size > per_exit:
            rows = rows[np.linspace(0, rows.size - 1, per_exit).round().astype(int)]
        picked.append(rows)
    return picked


def _thumbnail(path: str) -> Image.Image:
    try:
        image = load_image(path)
    except ValueError:  # unreadable now: a grey tile keeps the grid intact
        return Image.new("RGB", (THUMB, THUMB), (200, 200, 200))
    return ImageOps.pad(image, (THUMB, THUMB), method=Image.BICUBIC, color=(255, 255, 255))


def write_exit_examples(path: str, image_paths: Sequence[str], exits: np.ndarray, captions: Sequence[str],
                        grids: Sequence[int], per_exit: int = 8, title: str = "") -> str:
    """Write the figure to ``path`` (atomically); ``exits`` (0-based) and ``captions`` are per image."""
    from ..files import atomic_output

    exits = np.asarray(exits)
    n, num_exits = max(len(exits), 1), len(grids)
    picked = pick_examples(exits, num_exits, per_exit)
    small, normal = _font(12), _font(15)
    width = max(LABEL_WIDTH + per_exit * (THUMB + GAP) + GAP, round(small.getlength(LEGEND)) + 4 * GAP)
    row_height = THUMB + CAPTION + GAP
    top = 58
    figure = Image.new("RGB", (width, top + num_exits * row_height + GAP), "white")
    draw = ImageDraw.Draw(figure)
    draw.text((width / 2, 12), title or "images by the exit they left at (easy: early, hard: late)", fill=TEXT,
              font=normal, anchor="ma")
    draw.text((width / 2, 33), LEGEND, fill=MUTED, font=small, anchor="ma")
    for k, rows in enumerate(picked):
        y = top + k * row_height
        share = 100.0 * float(np.mean(exits == k)) if len(exits) else 0.0
        draw.text((GAP, y + THUMB / 2 - 10), f"exit {k + 1} ({grids[k]}x{grids[k]} tokens)", fill=TEXT, font=normal)
        draw.text((GAP, y + THUMB / 2 + 10), f"{share:.1f} % of {n} images", fill=MUTED, font=small)
        if rows.size == 0:
            draw.text((LABEL_WIDTH, y + THUMB / 2), "no image left here", fill=MUTED, font=small, anchor="lm")
        for j, i in enumerate(rows):
            x = LABEL_WIDTH + j * (THUMB + GAP)
            figure.paste(_thumbnail(image_paths[i]), (x, y))
            draw.rectangle((x - 1, y - 1, x + THUMB, y + THUMB), outline=FRAME)
            caption = captions[i]
            while caption and draw.textlength(caption, font=small) > THUMB:
                caption = caption[:-1]
            draw.text((x + THUMB / 2, y + THUMB + 3), caption, fill=TEXT, font=small, anchor="ma")
    with atomic_output(path) as tmp:
        figure.save(tmp, format="PNG")
    return os.fspath(path)
