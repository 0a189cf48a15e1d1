"""The evaluation transform (sizes, crop offsets, normalisation) and the batch iterator."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dvt_ms.data import IMAGENET_MEAN, IMAGENET_STD, DataError, EvalTransform, eval_resize_size, iterate_batches
from dvt_ms.data.transforms import center_crop, resize_short_side


def test_resize_sizes_keep_the_224_256_ratio():
    assert eval_resize_size(224) == 256
    assert eval_resize_size(32) == 36  # floor(32 * 256 / 224) = floor(36.57)
    assert eval_resize_size(384) == 438
    assert eval_resize_size(32, crop_pct=1.0) == 32
    with pytest.raises(ValueError, match="crop_pct"):
        eval_resize_size(224, 0)


@pytest.mark.parametrize("size, expected", [((300, 400), (256, 341)), ((500, 375), (341, 256)),
                                            ((256, 999), (256, 999))])
def test_short_side_resize_truncates_the_long_side(size, expected):
    assert resize_short_side(Image.new("RGB", size), 256).size == expected


def test_center_crop_offsets_round_like_torchvision():
    # 341 - 224 = 117 -> 58.5 -> round() = 58; 256 - 224 = 32 -> 16
    columns = np.tile(np.arange(341, dtype=np.uint8)[None, :, None] % 251, (256, 1, 3))
    rows = np.tile(np.arange(256, dtype=np.uint8)[:, None, None], (1, 341, 3))
    crop_c = np.asarray(center_crop(Image.fromarray(columns), 224))
    crop_r = np.asarray(center_crop(Image.fromarray(rows), 224))
    assert crop_c[0, 0, 0] == 58 and crop_c.shape == (224, 224, 3)
    assert crop_r[0, 0, 0] == 16


def test_eval_transform_normalises_with_imagenet_statistics():
    transform = EvalTransform(32)
    out = transform(Image.new("RGB", (50, 40), (255, 128, 0)))
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 128, 0), IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    np.testing.assert_allclose(out[:, 16, 16], expected, rtol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 0, atol=1e-5)  # a flat image stays flat


def test_eval_transform_accepts_grey_and_palette_images():
    transform = EvalTransform(32)
    assert transform(Image.new("L", (40, 60), 9)).shape == (3, 32, 32)
    assert transform(Image.new("P", (40, 60))).shape == (3, 32, 32)


class Items:
    def __init__(self, n, bad=None):
        self.n, self.bad = n, bad

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.bad:
            raise DataError(f"cannot read image item{i}.png: broken")
        return np.full((2, 2), i, np.float32), i % 3


@pytest.mark.parametrize("workers", [0, 3])
def test_batches_come_in_order_with_a_short_last_batch(workers):
    batches = list(iterate_batches(Items(11), 4, num_workers=workers))
    assert [len(labels) for _, labels, _ in batches] == [4, 4, 3]
    assert np.concatenate([idx for _, _, idx in batches]).tolist() == list(range(11))
    assert batches[2][0][:, 0, 0].tolist() == [8, 9, 10]
    assert batches[0][1].dtype == np.int64 and batches[0][0].dtype == np.float32
    subset = list(iterate_batches(Items(11), 2, indices=[9, 1, 5], num_workers=workers))
    assert np.concatenate([idx for _, _, idx in subset]).tolist() == [9, 1, 5]


@pytest.mark.parametrize("workers", [0, 3])
def test_errors_of_the_data_set_reach_the_caller_unchanged(workers):
    with pytest.raises(DataError, match=r"item6\.png"):
        list(iterate_batches(Items(11, bad=6), 4, num_workers=workers))
