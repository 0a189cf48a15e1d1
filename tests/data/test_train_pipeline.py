"""The training pipeline: deterministic order and augmentation, sharding by rank, errors naming files."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from dvt_ms.data import DataError
from dvt_ms.data.train_pipeline import TrainData, TrainSource, data_error_from, epoch_order, open_train_reader
from tests.helpers import make_image_folder


class _Reader:
    """In-memory reader: image i is a flat colour encoding i, label i % 5."""

    def __init__(self, n: int) -> None:
        self.targets = [i % 5 for i in range(n)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return Image.new("RGB", (12, 12), (i, 255 - i, (7 * i) % 256)), self.targets[i]


def _data(n=40, batch=4, shards=1, shard=0, **kw):
    return TrainData(_Reader(n), batch, 5, 8, seed=3, num_shards=shards, shard_id=shard, num_parallel_workers=1, **kw)


def test_epoch_order_is_a_seeded_permutation():
    a, b, c = epoch_order(50, 1, 0), epoch_order(50, 1, 0), epoch_order(50, 1, 1)
    np.testing.assert_array_equal(a, b)
    assert sorted(a) == list(range(50)) and not np.array_equal(a, c)
    np.testing.assert_array_equal(epoch_order(5, 1, 0, shuffle=False), np.arange(5))


def test_shards_together_read_the_single_process_global_batches():
    single = _data(n=43, batch=8).source(0, 2)
    shards = [_data(n=43, batch=4, shards=2, shard=r).source(0, 2) for r in range(2)]
    assert len(single) == 2 * 40 and all(len(s) == 2 * 20 for s in shards)
    for epoch in (0, 1):
        order = single.shard_indices(epoch)
        parts = [s.shard_indices(epoch) for s in shards]
        for step in range(5):
            global_batch = set(order[step * 8:(step + 1) * 8])
            assert global_batch == set(parts[0][step * 4:(step + 1) * 4]) | set(parts[1][step * 4:(step + 1) * 4])


def test_an_image_is_augmented_the_same_wherever_it_is_read():
    single = _data(n=40, batch=8, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.5).source(0, 1)
    shard = _data(n=40, batch=4, shards=2, shard=1, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.5).source(0, 1)
    index = int(shard.shard_indices(0)[3])
    j = int(np.flatnonzero(single.shard_indices(0) == index)[0])
    a, label_a = single[j]
    b, label_b = shard[3]
    np.testing.assert_array_equal(a, b)
    assert label_a == label_b == index % 5
    resumed = _data(n=40, batch=8, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.5).source(1, 1)
    later = _data(n=40, batch=8, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.5).source(0, 2)
    np.testing.assert_array_equal(resumed[5][0], later[40 + 5][0])  # epoch 1 read by a resumed run


def test_mindspore_pipeline_batches_are_deterministic_with_workers():
    data = TrainData(_Reader(24), 4, 5, 8, seed=1, mixup=0.8, cutmix=1.0, smoothing=0.1, num_parallel_workers=2)
    runs = []
    for _ in range(2):
        runs.append([(x.copy(), t.copy()) for x, t in data.dataset(0, 2).create_tuple_iterator(output_numpy=True)])
    assert len(runs[0]) == 2 * data.steps_per_epoch == 12
    for (x0, t0), (x1, t1) in zip(*runs, strict=True):
        assert x0.shape == (4, 3, 8, 8) and x0.dtype == np.float32 and t0.shape == (4, 5)
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(t0, t1)
        np.testing.assert_allclose(t0.sum(1), 1.0, rtol=1e-5)
    # the second epoch of a run started at epoch 1 equals the second epoch of a run started at 0
    resumed = [(x.copy(), t.copy()) for x, t in data.dataset(1, 1).create_tuple_iterator(output_numpy=True)]
    for (x0, t0), (x1, t1) in zip(runs[0][6:], resumed, strict=True):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(t0, t1)


def test_more_workers_than_cpus_are_clamped_and_change_nothing():
    one = _data(n=16, batch=4)
    many = TrainData(_Reader(16), 4, 5, 8, seed=3, num_parallel_workers=10_000)
    x1, t1 = next(one.dataset(0, 1).create_tuple_iterator(num_epochs=1, output_numpy=True))
    x2, t2 = next(many.dataset(0, 1).create_tuple_iterator(num_epochs=1, output_numpy=True))
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(t1, t2)


def test_without_mixing_targets_are_the_labels():
    data = _data(n=12, batch=4, random_crop=False, hflip=0.0, shuffle=False)
    _, t = next(data.dataset(0, 1).create_tuple_iterator(output_numpy=True))
    np.testing.assert_array_equal(t.argmax(1), [0, 1, 2, 3])


def test_corrupt_image_is_named(tmp_path):
    root = make_image_folder(str(tmp_path / "d"), 3, 1, classes=2, size=16)
    bad = os.path.join(root, "train", "class_01", "img_001.png")
    with open(bad, "wb") as f:
        f.write(b"not a png at all")
    data = TrainData(open_train_reader("imagefolder", root), 2, 2, 16, shuffle=False, num_parallel_workers=2)
    with pytest.raises(Exception) as info:
        for _ in data.dataset(0, 1).create_tuple_iterator(output_numpy=True):
            pass
    err = data_error_from(info.value)
    assert isinstance(err, DataError) and bad in str(err) and "\n" not in str(err)


def test_reader_and_configuration_errors(tmp_path):
    with pytest.raises(DataError, match="data directory not found"):
        open_train_reader("imagefolder", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="no data directory"):
        open_train_reader("imagefolder", None)
    (tmp_path / "only_val" / "val").mkdir(parents=True)
    with pytest.raises(DataError, match="has no train/"):
        open_train_reader("imagefolder", str(tmp_path / "only_val"))
    with pytest.raises(DataError, match="fewer than one global batch"):
        _data(n=7, batch=4, shards=2)
    with pytest.raises(DataError, match="num_classes=3"):
        TrainData(_Reader(10), 2, 3, 8)
    with pytest.raises(DataError, match="even batch_size"):
        _data(batch=3, mixup=0.8)
    assert data_error_from(RuntimeError("something else")) is None


def test_source_length_covers_the_remaining_epochs():
    src = TrainSource(_Reader(10), _data().transform, seed=0, start_epoch=3, num_epochs=2, per_shard=8)
    assert len(src) == 16
    assert src[8][1] == src.reader.targets[int(epoch_order(10, 0, 4)[0])]


def test_cifar10_binary_training_data(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    labels = []
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        y = rng.integers(0, 10, 4, dtype=np.uint8)
        labels += y.tolist() if name != "test_batch.bin" else []
        pixels = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        np.concatenate([y[:, None], pixels], axis=1).tofile(folder / name)
    reader = open_train_reader("cifar10", str(tmp_path))
    assert len(reader) == 20 and reader.targets == labels
    data = TrainData(reader, 4, 10, 32, shuffle=False, random_crop=False, hflip=0.0, num_parallel_workers=1)
    batches = list(data.dataset(0, 1).create_tuple_iterator(output_numpy=True))
    assert len(batches) == 5
    x, t = batches[0]
    assert x.shape == (4, 3, 32, 32) and t.argmax(1).tolist() == labels[:4]


class _FlakyReader(_Reader):
    """``_Reader`` whose images ``bad`` cannot be decoded."""

    def __init__(self, n: int, bad: set[int]) -> None:
        super().__init__(n)
        self.bad = bad

    def __getitem__(self, i: int):
        if i in self.bad:
            raise DataError(f"cannot read image {i}.jpg: image file is truncated")
        return super().__getitem__(i)


def test_an_image_that_cannot_be_decoded_is_replaced_the_same_way_everywhere(caplog):
    transform = _data().transform
    bad = {3, 7}
    skip = TrainSource(_FlakyReader(20, bad), transform, seed=1, start_epoch=0, num_epochs=2, per_shard=20,
                       skip_unreadable=True)
    again = TrainSource(_FlakyReader(20, bad), transform, seed=1, start_epoch=1, num_epochs=1, per_shard=20,
                        skip_unreadable=True)
    for epoch in (0, 1):
        for j in np.flatnonzero(np.isin(skip.shard_indices(epoch), list(bad))):
            with caplog.at_level("WARNING"):
                image, label = skip[epoch * 20 + int(j)]
            assert "cannot read image" in caplog.text and "is read in its place (--bad_images skip)" in caplog.text
            if epoch == 1:  # a run resumed at epoch 1 (another worker, another process) makes the same choice
                image2, label2 = again[int(j)]
                np.testing.assert_array_equal(image, image2)
                assert label == label2
    fail = TrainSource(_FlakyReader(20, bad), transform, seed=1, start_epoch=0, num_epochs=1, per_shard=20)
    j = int(np.flatnonzero(fail.shard_indices(0) == 3)[0])
    with pytest.raises(DataError, match=r"3\.jpg"):
        fail[j]
    hopeless = TrainSource(_FlakyReader(4, {0, 1, 2, 3}), transform, seed=1, start_epoch=0, num_epochs=1,
                           per_shard=4, skip_unreadable=True)
    with pytest.raises(DataError, match="could not be read either"):
        hopeless[0]


def test_a_pipeline_started_inside_an_epoch_reads_the_same_batches(tmp_path):
    data = TrainData(_Reader(24), 4, 5, 8, seed=1, mixup=0.8, cutmix=1.0, smoothing=0.1, auto_augment="rand-m9",
                     num_parallel_workers=2)
    whole = [(x.copy(), t.copy()) for x, t in data.dataset(0, 2).create_tuple_iterator(output_numpy=True)]
    later = [(x.copy(), t.copy()) for x, t in data.dataset(0, 2, start_step=4).create_tuple_iterator(
        output_numpy=True)]
    assert len(later) == len(whole) - 4
    for (x0, t0), (x1, t1) in zip(whole[4:], later, strict=True):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(t0, t1)
    with pytest.raises(ValueError, match="start_step"):
        data.dataset(0, 1, start_step=data.steps_per_epoch)
