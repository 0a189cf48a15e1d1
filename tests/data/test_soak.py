"""Volume: the recipe's whole training transform over 20,000 draws of photo-like images of every mode, size and
aspect ratio, through the real pipeline (worker processes, batching, mixup / cutmix); and every shipped
config's data settings through the pipeline."""

from __future__ import annotations

import glob
import logging
import os

import numpy as np
import pytest
from PIL import Image

from dvt_ms.data.train_pipeline import TrainData, open_train_reader
from dvt_ms.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dvt_ms.options import TrainSettings
from dvt_ms.train.distributed import Runtime
from dvt_ms.train.run import build_train_data
from tests.helpers import EDGE_SIZES, IMAGE_MODES, REPO, image_in_mode, load_config, photo_like, save_image

CLASSES = 5
LOW = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))  # normalised black
HIGH = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))  # normalised white


def _photo_folder(root: str, per_class: int, seed: int = 0) -> str:
    """``root/train/<class>/`` holding photo-like images that cycle through every mode of ``IMAGE_MODES``, every
    edge size (1x1 up to 4000x10), flat black and white, and ordinary sizes and aspect ratios."""
    rng = np.random.default_rng(seed)
    sizes = [*EDGE_SIZES, (500, 375), (375, 500), (64, 48), (300, 300), (1024, 200)]
    for c in range(CLASSES):
        folder = os.path.join(root, "train", f"class_{c}")
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            k = c * per_class + i
            mode, suffix = IMAGE_MODES[k % len(IMAGE_MODES)]
            width, height = sizes[k % len(sizes)]
            pixels = photo_like(width, height, rng)
            if k % 23 == 0:
                pixels[:] = 0 if k % 2 else 255
            save_image(image_in_mode(pixels, mode), os.path.join(folder, f"{k:04d}.{suffix}"))
    return root


def _check_batch(x: np.ndarray, targets: np.ndarray, batch: int, img_size: int, num_classes: int,
                 smoothing: float) -> int:
    """Shapes, finiteness and ranges of one batch; returns how many values lie outside the pixel range (only
    random erasing's normal noise may, mixed with pixels by mixup)."""
    assert x.shape == (batch, 3, img_size, img_size) and x.dtype == np.float32
    assert targets.shape == (batch, num_classes) and targets.dtype == np.float32
    assert np.isfinite(x).all() and np.isfinite(targets).all()
    assert np.abs(x).max() < 8.0  # pixels lie in [LOW, HIGH]; erasing noise is N(0, 1)
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-5)
    assert targets.min() >= smoothing / num_classes - 1e-6 and targets.max() <= 1.0 + 1e-6
    return int(np.count_nonzero((x < LOW - 1e-4) | (x > HIGH + 1e-4)))


@pytest.mark.slow
def test_twenty_thousand_draws_of_the_recipe_transform(tmp_path):
    root = _photo_folder(str(tmp_path / "photos"), per_class=40)
    reader = open_train_reader("imagefolder", root)
    batch, img_size, smoothing = 64, 224, 0.1
    data = TrainData(reader, batch, CLASSES, img_size, seed=7, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25,
                     mixup=0.8, cutmix=1.0, smoothing=smoothing, num_parallel_workers=2)
    epochs = -(-20_000 // (data.steps_per_epoch * batch))
    draws = outside = 0
    for x, targets in data.dataset(0, epochs).create_tuple_iterator(num_epochs=1, output_numpy=True):
        outside += _check_batch(x, targets, batch, img_size, CLASSES, smoothing)
        draws += batch
    assert draws >= 20_000 and draws == epochs * data.steps_per_epoch * batch
    assert 0 < outside < 0.02 * draws * 3 * img_size * img_size  # erasing happened, and only as much as 25 %


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml"))),
                         ids=os.path.basename)
def test_every_shipped_config_s_data_settings_run_through_the_pipeline(config, tmp_path_factory):
    recipe = load_config(config)
    images = max(300, 2 * recipe.get("batch_size", 128))
    root = _photo_folder(str(tmp_path_factory.mktemp("photos")), per_class=-(-images // CLASSES))
    settings = TrainSettings.from_config({**recipe, "data_dir": root, "num_classes": CLASSES,
                                          "ckpt_save_dir": str(tmp_path_factory.mktemp("run"))})
    reader = open_train_reader(settings.dataset, settings.data_dir)
    data, check = build_train_data(settings, reader, settings.model_spec(), Runtime("CPU", 0),
                                   logging.getLogger("test"))
    assert check.checked >= images and check.skipped_images == []
    spec = settings.model_spec()
    seen = 0
    for x, targets in data.dataset(0, 1).create_tuple_iterator(num_epochs=1, output_numpy=True):
        _check_batch(x, targets, settings.batch_size, spec.img_size, CLASSES, settings.smoothing)
        seen += len(x)
    assert seen == data.steps_per_epoch * settings.batch_size >= 300 - settings.batch_size


def test_the_photo_folder_holds_every_mode_and_size(tmp_path):
    root = _photo_folder(str(tmp_path), per_class=12)
    files = sorted(glob.glob(os.path.join(root, "train", "*", "*")))
    modes, sizes = set(), set()
    for path in files:
        with Image.open(path) as image:
            modes.add(image.mode)
            sizes.add(image.size)
    assert {"1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"} <= modes
    assert {(1, 1), (4000, 10), (10, 4000)} <= sizes
