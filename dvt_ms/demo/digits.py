"""Turn scikit-learn's bundled handwritten digits into an ImageNet-style folder.

The 1,797 real 8x8 grey images (10 classes) ship inside scikit-learn, so nothing is downloaded. They
are split into ``train/`` and ``val/`` with a fixed seed (stratified per class), upsampled with PIL
bicubic to ``img_size`` and written as RGB PNGs under ``<out>/{train,val}/<digit>/<index>.png``.

    python -m dvt_ms digits --out data/digits [--img_size 32] [--val_fraction 0.25] [--seed 0]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ..command import run_command
from ..options import DigitsSettings, parse_command

MARKER = ".dvt_digits"


class DemoError(RuntimeError):
    """The demo folder cannot be built; the message says what to do."""


def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError:
        raise DemoError("the digits demo needs scikit-learn: pip install 'dvt_ms[demo]' (or scikit-learn)") from None
    return load_digits()


def split_indices(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: the same fraction of every class goes to validation."""
    rng = np.random.RandomState(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = round(len(idx) * val_fraction)
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(np.array(train)), np.sort(np.array(val))


def to_image(pixels: np.ndarray, img_size: int) -> Image.Image:
    """An 8x8 array of 0..16 ink values -> an RGB image of img_size px (dark digit on white)."""
    grey = (255 - np.clip(pixels, 0, 16) * (255 / 16)).astype(np.uint8)
    return Image.fromarray(grey, mode="L").resize((img_size, img_size), Image.BICUBIC).convert("RGB")


def build_digits_folder(out: str, img_size: int = 32, val_fraction: float = 0.25, seed: int = 0) -> dict:
    """Write the folder (atomically: a temp folder renamed into place) and return counts per split.

    An existing folder made with the same settings is kept as it is.
    """
    settings = f"img_size={img_size} val_fraction={val_fraction} seed={seed}"
    marker = os.path.join(out, MARKER)
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as f:
            if f.read().strip() == settings:
                return {split: sum(len(files) for _, _, files in os.walk(os.path.join(out, split)))
                        for split in ("train", "val")}
    if os.path.exists(out) and not os.path.isfile(marker):
        if os.listdir(out):
            raise DemoError(f"{out} exists and is not a digits folder made by this script; choose another --out")
    digits = _load_digits()
    train, val = split_indices(digits.target, val_fraction, seed)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".digits-", dir=parent)
    try:
        for split, indices in (("train", train), ("val", val)):
            for c in range(10):
                os.makedirs(os.path.join(tmp, split, str(c)), exist_ok=True)
            for i in indices:
                to_image(digits.images[i], img_size).save(
                    os.path.join(tmp, split, str(digits.target[i]), f"{i:04d}.png"))
        with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as f:
            f.write(settings + "\n")
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"train": len(train), "val": len(val)}


def main(argv: Sequence[str] | None = None) -> int:
    """Build the digits folder from the command line; returns the exit status (see :mod:`dvt_ms.command`)."""
    def build(settings: DigitsSettings) -> str:
        counts = build_digits_folder(settings.out, settings.img_size, settings.val_fraction, settings.seed)
        return f"digits folder {settings.out}: {counts['train']} train / {counts['val']} val images, 10 classes"

    return run_command("python -m dvt_ms digits", lambda: parse_command(
        DigitsSettings, argv, "Build the handwritten-digits demo folder.", "python -m dvt_ms digits"),
        build, (DemoError,))


if __name__ == "__main__":
    sys.exit(main())
