"""The evaluation transform (sizes, crop offsets, normalisation) and the batch iterator."""

from __future__ import annotations

import multiprocessing
import threading

import numpy as np
import pytest
from PIL import Image

from dvt_ms.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataError,
    EvalTransform,
    data_error_from,
    eval_resize_size,
    iterate_batches,
)
from dvt_ms.data.loader import reader_dataset, worker_count
from dvt_ms.data.transforms import center_crop, resize_short_side, to_normalized_chw


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


@pytest.mark.parametrize("mean, std", [(IMAGENET_MEAN, IMAGENET_STD), ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]), (0.1, 0.3)])
def test_normalisation_gives_the_bits_of_the_per_pixel_formula(mean, std):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (33, 91, 3), dtype=np.uint8)
    pixels[0, :86] = np.arange(258).reshape(86, 3) % 256  # every byte value in every channel
    pixels[1, :] = 255
    got = to_normalized_chw(Image.fromarray(pixels), mean, std)
    scaled = pixels.astype(np.float32) / np.float32(255.0)
    by_pixel = (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, by_pixel.transpose(2, 0, 1))


def test_eval_transform_accepts_grey_and_palette_images():
    transform = EvalTransform(32)
    assert transform(Image.new("L", (40, 60), 9)).shape == (3, 32, 32)
    assert transform(Image.new("P", (40, 60))).shape == (3, 32, 32)


class Items:
    """Item i is a 2x2 image filled with i and label i % 3; item ``bad`` raises (and keeps) a DataError."""

    def __init__(self, n: int, bad: int | None = None) -> None:
        self.n, self.bad = n, bad
        self.reads = 0
        self.raised: list[Exception] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        with self._lock:
            self.reads += 1
        if i == self.bad:
            err = DataError(f"cannot read image item{i}.png: broken")
            self.raised.append(err)
            raise err
        return np.full((2, 2), i, np.float32), i % 3


WORKERS = [0, 1, 3]


@pytest.mark.parametrize("workers", WORKERS)
def test_batches_come_in_order_with_a_short_last_batch(workers):
    batches = list(iterate_batches(Items(11), 4, num_workers=workers))
    assert [len(labels) for _, labels, _ in batches] == [4, 4, 3]
    assert all(isinstance(batch, tuple) and len(batch) == 3 for batch in batches)
    assert np.concatenate([idx for _, _, idx in batches]).tolist() == list(range(11))
    assert np.concatenate([labels for _, labels, _ in batches]).tolist() == [i % 3 for i in range(11)]
    assert batches[2][0][:, 0, 0].tolist() == [8, 9, 10]
    assert batches[0][0].shape == (4, 2, 2) and batches[0][0].dtype == np.float32
    assert batches[0][1].dtype == np.int64 and batches[0][2].dtype == np.int64


@pytest.mark.parametrize("workers", WORKERS)
def test_indices_are_read_in_their_order_each_exactly_once(workers):
    items = Items(300)
    order = np.random.default_rng(0).permutation(300)[:197]
    batches = list(iterate_batches(items, 16, indices=order, num_workers=workers))
    assert [len(labels) for _, labels, _ in batches] == [16] * 12 + [5]
    np.testing.assert_array_equal(np.concatenate([idx for _, _, idx in batches]), order)
    np.testing.assert_array_equal(np.concatenate([x[:, 0, 0] for x, _, _ in batches]), order)
    assert items.reads == 197
    repeated = list(iterate_batches(Items(11), 2, indices=[9, 1, 9], num_workers=workers))
    assert np.concatenate([idx for _, _, idx in repeated]).tolist() == [9, 1, 9]


def test_batches_stay_valid_while_later_ones_are_read():
    kept = [images for images, _, _ in iterate_batches(Items(500), 8, num_workers=2)]
    np.testing.assert_array_equal(np.concatenate(kept)[:, 0, 0], np.arange(500))


@pytest.mark.parametrize("workers", WORKERS)
def test_errors_of_the_data_set_reach_the_caller_unchanged(workers):
    items = Items(40, bad=21)
    seen = []
    with pytest.raises(DataError, match=r"item21\.png") as info:
        for _, _, idx in iterate_batches(items, 4, num_workers=workers):
            seen += idx.tolist()
    assert info.value is items.raised[0]  # the reader's own exception, not a copy parsed from MindSpore's text
    assert seen == list(range(len(seen))) and len(seen) <= 20


def test_other_exceptions_of_the_data_set_keep_their_type():
    class Short(Items):
        def __getitem__(self, i):
            if i >= self.n:
                raise IndexError(f"item {i} of {self.n}")
            return super().__getitem__(i)

    with pytest.raises(IndexError, match="item 12 of 5"):
        list(iterate_batches(Short(5), 2, indices=[0, 12, 1], num_workers=2))


@pytest.mark.parametrize("workers", WORKERS)
def test_leaving_the_loop_early_stops_the_pipeline(workers):
    items = Items(100_000)
    for count, _ in enumerate(iterate_batches(items, 4, num_workers=workers), 1):
        if count == 2:
            break
    # leaving the loop closed the generator, whose ``finally`` stopped the pipeline (joining its readers): the
    # count is final now, and stays so while another pipeline runs from start to end
    reads = items.reads
    assert list(iterate_batches(Items(64), 4, num_workers=workers))
    assert items.reads == reads < 10_000, f"{items.reads - reads} reads after the loop was left"
    batches = iterate_batches(items, 4, num_workers=workers)
    next(batches)
    batches.close()  # what an abandoned generator gets; must not hang
    assert list(iterate_batches(Items(6), 4, num_workers=workers))[-1][2].tolist() == [4, 5]


def test_empty_input_yields_nothing():
    assert list(iterate_batches(Items(0), 4)) == []
    assert list(iterate_batches(Items(5), 4, indices=[])) == []
    assert list(iterate_batches(Items(5), 4, indices=np.zeros(0, np.int64))) == []
    with pytest.raises(ValueError, match="batch_size"):
        list(iterate_batches(Items(5), 0))


def test_reader_dataset_rows_follow_the_keys():
    source = {k: (np.full(3, k, np.float32), np.int64(k * 10)) for k in (7, 2, 5)}
    rows = list(reader_dataset(source, [5, 7, 2, 7], ["x", "y"], num_workers=2)
                .create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert [int(y) for _, y in rows] == [50, 70, 20, 70]
    assert [x[0] for x, _ in rows] == [5, 7, 2, 7]


def test_worker_count_stays_within_the_cpus():
    assert worker_count(0) == worker_count(-3) == 1
    assert worker_count(1) == 1
    assert worker_count(10_000) == multiprocessing.cpu_count()


def test_data_error_from_reads_mindspores_wrapped_error():
    wrapped = RuntimeError("Exception thrown from user defined Python function in dataset.\n"
                           "map operation: [PyFunc] failed. Error description:\nDataError: Traceback (most recent "
                           "call last):\n  File \"x.py\", line 1\ndvt_ms.data.errors.DataError: cannot read "
                           "/d/img_001.png: truncated\n\n- Dataset Pipeline Error Message:\n")
    err = data_error_from(wrapped)
    assert isinstance(err, DataError) and str(err) == "cannot read /d/img_001.png: truncated"
    original = DataError("x")
    assert data_error_from(original) is original
    assert data_error_from(RuntimeError("something else")) is None
