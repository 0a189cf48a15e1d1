"""Training augmentations: determinism, shapes, and the documented sampling rules."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dvt_ms.data.augment import (
    RAND_OPS,
    RAND_OPS_INCREASING,
    MixupCutmix,
    RandAugment,
    TrainTransform,
    color_jitter,
    one_hot,
    parse_rand_augment,
    random_erasing,
    random_resized_crop,
)


def _image(w=48, h=40, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_random_resized_crop_full_area_is_a_bicubic_resize():
    img = _image(40, 40)
    out = random_resized_crop(img, np.random.default_rng(0), 24, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img.resize((24, 24), Image.BICUBIC)))


def test_random_resized_crop_is_deterministic_per_generator_and_sized():
    img = _image()
    a = random_resized_crop(img, np.random.default_rng(5), 16)
    b = random_resized_crop(img, np.random.default_rng(5), 16)
    c = random_resized_crop(img, np.random.default_rng(6), 16)
    assert a.size == (16, 16)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_random_resized_crop_falls_back_to_a_centre_crop():
    # an aspect ratio no crop of a 100x10 image can satisfy with area >= 90%
    img = _image(100, 10)
    out = random_resized_crop(img, np.random.default_rng(0), 8, scale=(0.9, 1.0), ratio=(1.0, 1.0))
    expected = img.resize((8, 8), Image.BICUBIC, box=(45, 0, 55, 10))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


def test_parse_rand_augment():
    assert parse_rand_augment("rand-m9-mstd0.5-inc1") == {
        "magnitude": 9.0, "num_ops": 2, "magnitude_std": 0.5, "increasing": True, "prob": 0.5}
    assert parse_rand_augment("rand-m7-n3-p1.0")["num_ops"] == 3
    with pytest.raises(ValueError, match="only RandAugment"):
        parse_rand_augment("v0")
    with pytest.raises(ValueError, match="cannot read"):
        parse_rand_augment("rand-x5")
    with pytest.raises(ValueError, match="magnitude"):
        parse_rand_augment("rand-m11")


@pytest.mark.parametrize("table", [RAND_OPS, RAND_OPS_INCREASING])
def test_every_rand_augment_op_keeps_size_and_mode(table):
    img = _image()
    for name, op in table.items():
        out = op(img, 9.0, np.random.default_rng(0), (124, 116, 104))
        assert out.size == img.size and out.mode == "RGB", name
    assert len(table) == 15


def test_rand_augment_is_deterministic_and_does_something():
    aug = RandAugment.from_string("rand-m9-mstd0.5-inc1")
    img = _image()
    outs = [np.asarray(aug(img, np.random.default_rng(s))) for s in (1, 1, 2, 3, 4)]
    np.testing.assert_array_equal(outs[0], outs[1])
    assert any(not np.array_equal(o, np.asarray(img)) for o in outs)


def test_increasing_enhancers_are_identity_at_magnitude_zero():
    img = _image()
    for name in ("Color", "Contrast", "Brightness", "Sharpness"):
        out = RAND_OPS_INCREASING[name](img, 0.0, np.random.default_rng(0), (0, 0, 0))
        np.testing.assert_array_equal(np.asarray(out), np.asarray(img), err_msg=name)


def test_color_jitter_zero_strength_is_identity():
    img = _image()
    np.testing.assert_array_equal(np.asarray(color_jitter(img, np.random.default_rng(0), 0.0)), np.asarray(img))
    assert not np.array_equal(np.asarray(color_jitter(img, np.random.default_rng(0), 0.4)), np.asarray(img))


def test_random_erasing_replaces_one_rectangle():
    chw = np.zeros((3, 32, 32), np.float32)
    assert not random_erasing(chw.copy(), np.random.default_rng(0), 0.0).any()
    out = random_erasing(chw.copy(), np.random.default_rng(0), 1.0)
    changed = np.argwhere((out != 0).any(axis=0))
    (y0, x0), (y1, x1) = changed.min(0), changed.max(0)
    area = (y1 - y0 + 1) * (x1 - x0 + 1)
    assert 0.02 * 32 * 32 * 0.5 <= area <= 32 * 32 / 3 * 1.5
    assert (out[:, y0:y1 + 1, x0:x1 + 1] != 0).mean() > 0.99  # noise fills the whole box


def test_train_transform_output():
    t = TrainTransform(24, auto_augment="rand-m9-mstd0.5-inc1", color_jitter=0.4, reprob=0.25)
    a = t(_image(), np.random.default_rng(3))
    b = t(_image(), np.random.default_rng(3))
    assert a.shape == (3, 24, 24) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="crop_scale"):
        TrainTransform(24, scale=(0.5, 0.2))


def test_train_transform_without_randomness_is_resize_and_normalise():
    from dvt_ms.data.transforms import to_normalized_chw

    t = TrainTransform(16, hflip=0.0, random_crop=False)
    img = _image()
    np.testing.assert_allclose(t(img, np.random.default_rng(0)), to_normalized_chw(img.resize((16, 16), Image.BICUBIC)))


def test_mixup_mixes_images_and_targets_with_one_lambda():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    labels = np.array([0, 1, 2, 3])
    mixer = MixupCutmix(5, mixup_alpha=0.8, smoothing=0.1)
    out, targets = mixer(x, labels, np.random.default_rng(1))
    y = one_hot(labels, 5, 0.1)
    lam = (targets[0, 0] - y[3, 0]) / (y[0, 0] - y[3, 0])
    np.testing.assert_allclose(out, lam * x + (1 - lam) * x[::-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(targets, lam * y + (1 - lam) * y[::-1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)


def test_cutmix_pastes_a_box_and_weights_targets_by_its_area():
    x = np.stack([np.full((1, 10, 10), float(i), np.float32) for i in range(4)])
    mixer = MixupCutmix(4, cutmix_alpha=1.0)
    for seed in range(5):
        out, targets = mixer(x, np.arange(4), np.random.default_rng(seed))
        pasted = (out[0] == 3.0).mean()  # image 0 receives a box of image 3
        assert np.all((out[0] == 0.0) | (out[0] == 3.0))
        np.testing.assert_allclose(targets[0], [1 - pasted, 0, 0, pasted], atol=1e-6)


def test_no_mixing_gives_smoothed_one_hot_targets():
    x = np.ones((2, 3, 4, 4), np.float32)
    out, targets = MixupCutmix(3, smoothing=0.3)(x, np.array([2, 0]), np.random.default_rng(0))
    assert out is x
    np.testing.assert_allclose(targets, one_hot([2, 0], 3, 0.3))


# ---- every op at every magnitude, on every image the reader yields ----------------------------------------

def _reader_images(tmp_path) -> list[Image.Image]:
    """What ``load_image`` yields for files of every mode PIL writes (and 1x1 / extreme-aspect ones)."""
    from dvt_ms.data.folder import load_image
    from tests.helpers import write_mode_zoo

    return [load_image(path) for path in write_mode_zoo(str(tmp_path))]


@pytest.mark.parametrize("table", [RAND_OPS, RAND_OPS_INCREASING], ids=["inc0", "inc1"])
def test_every_op_runs_at_every_magnitude_on_every_image_mode(table, tmp_path):
    images = _reader_images(tmp_path)
    assert {im.mode for im in images} == {"RGB"}
    levels = np.linspace(0.0, 10.0, 21)  # both ends included
    for name, op in table.items():
        for level in levels:
            for i, image in enumerate(images):
                out = op(image, float(level), np.random.default_rng(i), (124, 116, 104))
                assert out.size == image.size and out.mode == "RGB", (name, level, image.size)


def test_posterize_to_zero_bits_is_black_as_the_reference_implementations():
    img = _image()
    for out in (RAND_OPS_INCREASING["Posterize"](img, 10.0, np.random.default_rng(0), (0, 0, 0)),
                RAND_OPS["Posterize"](img, 0.0, np.random.default_rng(0), (0, 0, 0))):
        assert out.mode == "RGB" and out.size == img.size and not np.asarray(out).any()
    kept = RAND_OPS_INCREASING["Posterize"](img, 5.0, np.random.default_rng(0), (0, 0, 0))  # 2 bits
    np.testing.assert_array_equal(np.asarray(kept), np.asarray(img) & 0b11000000)


@pytest.mark.parametrize("spec", ["rand-m10-inc1", "rand-m10-inc0", "rand-m0-inc1", "rand-m0-inc0",
                                  "rand-m9-mstd0.5-inc1", "rand-m10-n4-mstd100-p1.0-inc1"])
def test_rand_augment_policies_at_the_ends_of_the_scale(spec, tmp_path):
    aug = RandAugment.from_string(spec)
    images = _reader_images(tmp_path)
    for seed in range(200):
        image = images[seed % len(images)]
        out = aug(image, np.random.default_rng(seed))
        assert out.size == image.size and out.mode == "RGB"
