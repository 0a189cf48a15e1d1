"""Evaluation preprocessing (the official DVT / torchvision recipe, written with PIL and numpy).

For a model of ``img_size`` pixels: resize the short side to ``floor(img_size / crop_pct)`` with PIL
bicubic (the long side keeps the aspect ratio, truncated as torchvision does), crop the centre
``img_size`` square, scale to [0, 1] and normalise with the ImageNet mean / std. With the default
``crop_pct = 224 / 256`` a 224 model gets the published "resize 256, centre crop 224"; other sizes keep
that ratio (32 -> resize 36, crop 32). ``crop_pct = 1`` resizes the short side straight to
``img_size`` (the usual choice for CIFAR).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image

__all__ = ["DEFAULT_CROP_PCT", "IMAGENET_MEAN", "IMAGENET_STD", "EvalTransform", "center_crop",
           "eval_resize_size", "normalization_table", "resize_short_side", "to_normalized_chw"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 224 / 256


def eval_resize_size(img_size: int, crop_pct: float = DEFAULT_CROP_PCT) -> int:
    """Short-side length before the centre crop: ``floor(img_size / crop_pct)`` (256 for 224)."""
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return math.floor(img_size / crop_pct + 1e-9)


def resize_short_side(image: Image.Image, size: int, resample: int = Image.BICUBIC) -> Image.Image:
    """Resize so that the short side is ``size``; the long side is ``int(size * long / short)``."""
    w, h = image.size
    if min(w, h) == size:
        return image
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    return image.resize(new, resample)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The centre ``size`` x ``size`` square (offsets rounded as torchvision's ``CenterCrop``)."""
    w, h = image.size
    if w < size or h < size:
        raise ValueError(f"cannot centre-crop {size}x{size} from a {w}x{h} image")
    top = round((h - size) / 2.0)
    left = round((w - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def to_normalized_chw(image: Image.Image, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """RGB PIL image -> float32 ``[3, H, W]``, scaled to [0, 1] then normalised per channel.

    Each channel is a lookup in :func:`normalization_table`, which holds the same float32 arithmetic for all 256
    byte values: the same bits as computing ``(pixel / 255 - mean) / std`` per pixel, several times faster.
    """
    pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    table = normalization_table(tuple(map(float, np.broadcast_to(mean, (3,)))),
                                tuple(map(float, np.broadcast_to(std, (3,)))))
    out = np.empty((3, *pixels.shape[:2]), np.float32)
    for channel in range(3):
        np.take(table[channel], pixels[:, :, channel], out=out[channel])
    return out


@functools.lru_cache(maxsize=16)
def normalization_table(mean: tuple[float, float, float], std: tuple[float, float, float]) -> np.ndarray:
    """Read-only float32 ``[3, 256]``: ``(value / 255 - mean[c]) / std[c]`` for every byte value, in float32."""
    values = np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0)
    table = np.ascontiguousarray(((values - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).T)
    table.flags.writeable = False
    return table


class EvalTransform:
    """Callable PIL image -> normalised float32 ``[3, img_size, img_size]`` array (see the module doc)."""

    def __init__(self, img_size: int, crop_pct: float = DEFAULT_CROP_PCT, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD) -> None:
        self.img_size = int(img_size)
        self.crop_pct = float(crop_pct)
        self.resize = eval_resize_size(self.img_size, crop_pct)
        self.mean, self.std = tuple(mean), tuple(std)

    def describe(self) -> dict:
        """The preprocessing as plain data (stored in an export manifest); :meth:`from_description` inverts it."""
        return {"resize_short_side": self.resize, "center_crop": self.img_size, "crop_pct": self.crop_pct,
                "interpolation": "bicubic", "scale": "1/255", "mean": list(self.mean), "std": list(self.std),
                "layout": "NCHW float32 RGB"}

    @classmethod
    def from_description(cls, description: dict) -> EvalTransform:
        """The transform :meth:`describe` wrote (``ValueError`` for one this code cannot reproduce)."""
        if description.get("interpolation") != "bicubic":
            raise ValueError(f"unsupported interpolation {description.get('interpolation')!r} (only bicubic)")
        transform = cls(int(description["center_crop"]), float(description["crop_pct"]), description["mean"],
                        description["std"])
        if transform.resize != int(description["resize_short_side"]):
            raise ValueError(f"resize_short_side {description['resize_short_side']} does not follow from "
                             f"center_crop {transform.img_size} and crop_pct {transform.crop_pct}")
        return transform

    def __call__(self, image: Image.Image) -> np.ndarray:
        image = center_crop(resize_short_side(image.convert("RGB"), self.resize), self.img_size)
        return to_normalized_chw(image, self.mean, self.std)

    def __repr__(self) -> str:
        return f"EvalTransform(resize={self.resize}, bicubic, center_crop={self.img_size}, imagenet mean/std)"
