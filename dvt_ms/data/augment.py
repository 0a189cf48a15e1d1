"""Training augmentations of the DVT / DeiT / T2T-ViT recipe, written with PIL and numpy.

Every random choice is drawn from a ``numpy.random.Generator`` passed in by the caller. The training
pipeline seeds one generator per (seed, epoch, sample index) and one per (seed, epoch, rank, batch), so
an image is augmented the same way whichever worker process, device or restart handles it.

* :func:`random_resized_crop`: torchvision's RandomResizedCrop sampling, PIL bicubic resize;
* :class:`RandAugment`: timm-style ``rand-m9-mstd0.5-inc1`` (two ops per image, each applied with
  probability 0.5, magnitude drawn from N(m, mstd) and clipped to [0, 10], "increasing" variants);
* :func:`color_jitter`: brightness / contrast / saturation in random order;
* :func:`random_erasing`: one rectangle of per-pixel normal noise on the normalised CHW array;
* :class:`MixupCutmix`: batch-level mixup / cutmix on smoothed one-hot targets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from .transforms import IMAGENET_MEAN, IMAGENET_STD, to_normalized_chw

__all__ = ["MixupCutmix", "RandAugment", "TrainTransform", "color_jitter", "parse_rand_augment",
           "random_erasing", "random_resized_crop"]

MAX_LEVEL = 10.0


def random_resized_crop(image: Image.Image, rng: np.random.Generator, size: int,
                        scale: Sequence[float] = (0.08, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3)) -> Image.Image:
    """Crop a random area fraction in ``scale`` with aspect ratio (log-uniform) in ``ratio`` and
    resize it to ``size`` x ``size`` with PIL bicubic; after 10 failed tries, the centre crop of the
    closest allowed aspect ratio (torchvision's rule)."""
    width, height = image.size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            break
    else:
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, round(width / min(ratio))
        elif in_ratio > max(ratio):
            w, h = round(height * max(ratio)), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
    return image.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))


# ---- RandAugment ----------------------------------------------------------------------------------

def _signed(rng: np.random.Generator, value: float) -> float:
    return -value if rng.random() < 0.5 else value


def _affine(image: Image.Image, matrix: tuple[float, ...], fill: tuple[int, ...]) -> Image.Image:
    return image.transform(image.size, Image.AFFINE, matrix, resample=Image.BICUBIC, fillcolor=fill)


def _rotate(image, level, rng, fill):
    return image.rotate(_signed(rng, level / MAX_LEVEL * 30.0), resample=Image.BICUBIC, fillcolor=fill)


def _shear_x(image, level, rng, fill):
    return _affine(image, (1, _signed(rng, level / MAX_LEVEL * 0.3), 0, 0, 1, 0), fill)


def _shear_y(image, level, rng, fill):
    return _affine(image, (1, 0, 0, _signed(rng, level / MAX_LEVEL * 0.3), 1, 0), fill)


def _translate_x(image, level, rng, fill):
    pixels = _signed(rng, level / MAX_LEVEL * 0.45) * image.size[0]
    return _affine(image, (1, 0, pixels, 0, 1, 0), fill)


def _translate_y(image, level, rng, fill):
    pixels = _signed(rng, level / MAX_LEVEL * 0.45) * image.size[1]
    return _affine(image, (1, 0, 0, 0, 1, pixels), fill)


def _auto_contrast(image, level, rng, fill):
    return ImageOps.autocontrast(image)


def _equalize(image, level, rng, fill):
    return ImageOps.equalize(image)


def _invert(image, level, rng, fill):
    return ImageOps.invert(image)


def _posterize(bits: int, image: Image.Image) -> Image.Image:
    """Keep the ``bits`` most significant bits of every channel; 0 bits gives a black image, as TensorFlow's
    posterize and Pillow before 13 do (Pillow 13 refuses 0 bits, which RandAugment asks for at magnitude 10)."""
    if bits >= 8:
        return image
    if bits <= 0:
        return image.point([0] * 256 * len(image.getbands()))
    return ImageOps.posterize(image, bits)


def _posterize_increasing(image, level, rng, fill):
    return _posterize(4 - int(level / MAX_LEVEL * 4), image)


def _posterize_plain(image, level, rng, fill):
    return _posterize(int(level / MAX_LEVEL * 4), image)


def _solarize_increasing(image, level, rng, fill):
    return ImageOps.solarize(image, 256 - int(level / MAX_LEVEL * 256))


def _solarize_plain(image, level, rng, fill):
    return ImageOps.solarize(image, int(level / MAX_LEVEL * 256))


def _solarize_add(image, level, rng, fill):
    add = int(level / MAX_LEVEL * 110)
    lut = [min(255, i + add) if i < 128 else i for i in range(256)]
    return image.point(lut * len(image.getbands()))


def _enhancer(kind):
    def plain(image, level, rng, fill):
        return kind(image).enhance(level / MAX_LEVEL * 1.8 + 0.1)

    def increasing(image, level, rng, fill):
        return kind(image).enhance(max(0.1, 1.0 + _signed(rng, level / MAX_LEVEL * 0.9)))

    return plain, increasing


_color, _color_inc = _enhancer(ImageEnhance.Color)
_contrast, _contrast_inc = _enhancer(ImageEnhance.Contrast)
_brightness, _brightness_inc = _enhancer(ImageEnhance.Brightness)
_sharpness, _sharpness_inc = _enhancer(ImageEnhance.Sharpness)

_COMMON = {"AutoContrast": _auto_contrast, "Equalize": _equalize, "Invert": _invert, "Rotate": _rotate,
           "SolarizeAdd": _solarize_add, "ShearX": _shear_x, "ShearY": _shear_y,
           "TranslateXRel": _translate_x, "TranslateYRel": _translate_y}
RAND_OPS = {**_COMMON, "Posterize": _posterize_plain, "Solarize": _solarize_plain, "Color": _color,
            "Contrast": _contrast, "Brightness": _brightness, "Sharpness": _sharpness}
RAND_OPS_INCREASING = {**_COMMON, "Posterize": _posterize_increasing, "Solarize": _solarize_increasing,
                       "Color": _color_inc, "Contrast": _contrast_inc, "Brightness": _brightness_inc,
                       "Sharpness": _sharpness_inc}


def parse_rand_augment(spec: str) -> dict[str, float]:
    """Parse a timm-style policy string ``rand-m9-n2-mstd0.5-inc1-p0.5`` (every field after ``rand``
    optional; ``mstd`` above 100 means a magnitude uniform in [0, m], as in timm) into
    ``{"magnitude", "num_ops", "magnitude_std", "increasing", "prob"}``."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"auto_augment {spec!r}: only RandAugment policies ('rand-m9-mstd0.5-inc1') are supported")
    out = {"magnitude": 9.0, "num_ops": 2, "magnitude_std": 0.0, "increasing": False, "prob": 0.5}
    keys = {"m": "magnitude", "n": "num_ops", "mstd": "magnitude_std", "inc": "increasing", "p": "prob"}
    for part in parts[1:]:
        match = re.fullmatch(r"(mstd|inc|m|n|p)(\d+(?:\.\d+)?)", part)
        if not match:
            raise ValueError(f"auto_augment {spec!r}: cannot read {part!r} (fields: m<magnitude>, n<ops>, "
                             "mstd<std>, inc<0|1>, p<prob>)")
        key, value = keys[match.group(1)], float(match.group(2))
        out[key] = bool(value) if key == "increasing" else int(value) if key == "num_ops" else value
    if out["magnitude_std"] > 100:
        out["magnitude_std"] = math.inf
    if not 0 <= out["magnitude"] <= MAX_LEVEL:
        raise ValueError(f"auto_augment {spec!r}: magnitude must lie in [0, {MAX_LEVEL:g}]")
    return out


class RandAugment:
    """RandAugment on PIL images: ``num_ops`` operations drawn with replacement, each applied with
    probability ``prob`` at a magnitude drawn from N(magnitude, magnitude_std) clipped to [0, 10] (uniform in
    [0, magnitude] when ``magnitude_std`` is infinite).
    Geometric operations use bicubic resampling and fill with ``fill`` (the mean colour)."""

    def __init__(self, magnitude: float = 9.0, num_ops: int = 2, magnitude_std: float = 0.0,
                 increasing: bool = False, prob: float = 0.5, fill: Sequence[int] = (124, 116, 104)) -> None:
        self.magnitude, self.num_ops, self.magnitude_std = float(magnitude), int(num_ops), float(magnitude_std)
        self.prob, self.fill = float(prob), tuple(int(v) for v in fill)
        self.ops = RAND_OPS_INCREASING if increasing else RAND_OPS
        self.names = list(self.ops)

    @classmethod
    def from_string(cls, spec: str, fill: Sequence[int] = (124, 116, 104)) -> RandAugment:
        return cls(**parse_rand_augment(spec), fill=fill)

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        for index in rng.integers(0, len(self.names), self.num_ops):
            if rng.random() > self.prob:
                continue
            level = self.magnitude
            if self.magnitude_std == math.inf:  # timm's mstd above 100: uniform in [0, magnitude]
                level = float(rng.uniform(0.0, self.magnitude))
            elif self.magnitude_std > 0:
                level = float(np.clip(rng.normal(self.magnitude, self.magnitude_std), 0.0, MAX_LEVEL))
            image = self.ops[self.names[index]](image, level, rng, self.fill)
        return image


# ---- colour jitter, random erasing ----------------------------------------------------------------

def color_jitter(image: Image.Image, rng: np.random.Generator, strength: float) -> Image.Image:
    """Brightness, contrast and saturation factors uniform in [max(0, 1 - s), 1 + s], applied in a
    random order (torchvision's ColorJitter(s, s, s))."""
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    factors = rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength, size=3)
    for i in rng.permutation(3):
        image = enhancers[i](image).enhance(float(factors[i]))
    return image


def random_erasing(chw: np.ndarray, rng: np.random.Generator, prob: float, area: Sequence[float] = (0.02, 1 / 3),
                   aspect: float = 0.3) -> np.ndarray:
    """With probability ``prob`` replace one rectangle (area fraction in ``area``, log-uniform aspect
    ratio in [aspect, 1 / aspect], up to 10 tries) of the normalised [C, H, W] array by standard
    normal noise per pixel and channel (timm's ``mode='pixel'``). Works in place, returns ``chw``."""
    if prob <= 0 or rng.random() >= prob:
        return chw
    channels, height, width = chw.shape
    log_aspect = (math.log(aspect), math.log(1.0 / aspect))
    for _ in range(10):
        target = rng.uniform(area[0], area[1]) * height * width
        ratio = math.exp(rng.uniform(*log_aspect))
        h = round(math.sqrt(target * ratio))
        w = round(math.sqrt(target / ratio))
        if 0 < h < height and 0 < w < width:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            chw[:, top:top + h, left:left + w] = rng.standard_normal((channels, h, w), dtype=np.float32)
            break
    return chw


class TrainTransform:
    """PIL image + generator -> normalised float32 [3, img_size, img_size]: random resized crop
    (bicubic), horizontal flip, RandAugment, colour jitter, to CHW + mean/std, random erasing."""

    def __init__(self, img_size: int, scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 hflip: float = 0.5, auto_augment: str | None = None, color_jitter: float = 0.0,
                 reprob: float = 0.0, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 random_crop: bool = True) -> None:
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"crop_scale must be two numbers 0 < lo <= hi <= 1, got {list(scale)}")
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"crop_ratio must be two numbers 0 < lo <= hi, got {list(ratio)}")
        self.img_size, self.scale, self.ratio = int(img_size), tuple(scale), tuple(ratio)
        self.hflip, self.color_jitter, self.reprob = float(hflip), float(color_jitter), float(reprob)
        self.mean, self.std = tuple(mean), tuple(std)
        self.random_crop = random_crop
        fill = tuple(min(255, round(255 * m)) for m in self.mean)
        self.rand_augment = RandAugment.from_string(auto_augment, fill) if auto_augment else None

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> np.ndarray:
        image = image.convert("RGB")
        if self.random_crop:
            image = random_resized_crop(image, rng, self.img_size, self.scale, self.ratio)
        elif image.size != (self.img_size, self.img_size):
            image = image.resize((self.img_size, self.img_size), Image.BICUBIC)
        if self.hflip > 0 and rng.random() < self.hflip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        if self.rand_augment is not None:
            image = self.rand_augment(image, rng)
        if self.color_jitter > 0:
            image = color_jitter(image, rng, self.color_jitter)
        chw = to_normalized_chw(image, self.mean, self.std)
        return random_erasing(chw, rng, self.reprob)


# ---- mixup / cutmix -------------------------------------------------------------------------------

def one_hot(labels: np.ndarray, num_classes: int, smoothing: float = 0.0) -> np.ndarray:
    """Smoothed one-hot float32 targets: ``smoothing / C`` off the label, ``1 - smoothing + smoothing / C`` on it."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values from {labels.min()} to {labels.max()}")
    off = smoothing / num_classes
    out = np.full((labels.size, num_classes), off, dtype=np.float32)
    out[np.arange(labels.size), labels] = 1.0 - smoothing + off
    return out


class MixupCutmix:
    """Batch-level mixup / cutmix (timm's ``Mixup`` in batch mode) producing soft targets.

    With probability ``prob`` a batch is mixed with its reverse: cutmix (when both alphas are on,
    with probability ``switch_prob``; the box is centred uniformly and the mixing weight corrected to
    the box area) or mixup (``x * lam + x[::-1] * (1 - lam)``), ``lam ~ Beta(alpha, alpha)``. Targets
    are the same mix of the smoothed one-hot labels. With both alphas 0 it only makes the targets.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5, smoothing: float = 0.0) -> None:
        self.num_classes = int(num_classes)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob, self.smoothing = float(prob), float(switch_prob), float(smoothing)

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def __call__(self, images: np.ndarray, labels: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``images`` float32 [B, C, H, W], ``labels`` int [B] -> (mixed images, soft targets [B, num_classes])."""
        targets = one_hot(labels, self.num_classes, self.smoothing)
        if not self.active or rng.random() >= self.prob:
            return images, targets
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        flipped = images[::-1]
        if use_cutmix:
            height, width = images.shape[-2:]
            cut = math.sqrt(1.0 - lam)
            cut_h, cut_w = int(height * cut), int(width * cut)
            cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
            y0, y1 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
            x0, x1 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
            images = images.copy()
            images[:, :, y0:y1, x0:x1] = flipped[:, :, y0:y1, x0:x1]
            lam = 1.0 - float((y1 - y0) * (x1 - x0)) / (height * width)
        else:
            images = (images * np.float32(lam) + flipped * np.float32(1.0 - lam)).astype(np.float32)
        targets = (targets * np.float32(lam) + targets[::-1] * np.float32(1.0 - lam)).astype(np.float32)
        return images, targets
