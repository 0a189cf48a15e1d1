"""Validation during training: one static batch shape, padding left out of the counts."""

from __future__ import annotations

import numpy as np
from mindspore import Tensor

from dvt_ms.train.distributed import Runtime
from dvt_ms.train.validate import exit_accuracy, pad_batch


class _Items:
    """Seven 'images' whose label is the class the fake model scores highest for them."""

    def __init__(self) -> None:
        self.labels = [0, 1, 2, 1, 0, 2, 1]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        image = np.zeros((3, 2, 2), np.float32)
        image[self.labels[i]] = 1.0
        return image, self.labels[i] if i != 6 else 0  # the last image is labelled wrongly


class _Model:
    """Two exits: the first scores by channel sums (right), the second always says class 2."""

    training = False
    exit_names = ("a", "b")

    def __init__(self) -> None:
        self.shapes = []

    def set_train(self, mode: bool) -> None:
        self.training = mode

    def __call__(self, images: Tensor):
        x = images.asnumpy()
        self.shapes.append(x.shape)
        first = x.sum(axis=(2, 3))
        second = np.tile(np.array([[0.0, 0.0, 1.0]], np.float32), (len(x), 1))
        return Tensor(first), Tensor(second)


def test_every_batch_has_the_static_shape_and_padding_is_not_counted():
    model = _Model()
    acc = exit_accuracy(model, _Items(), 3, Runtime("CPU", 0), num_workers=1)
    assert model.shapes == [(3, 3, 2, 2)] * 3  # 7 images: batches of 3, 3 and 1 padded to 3
    assert acc.count == 7
    np.testing.assert_allclose(acc.top1, [100 * 6 / 7, 100 * 2 / 7])


def test_pad_batch():
    images = np.ones((2, 3), np.float32)
    padded = pad_batch(images, 4)
    assert padded.shape == (4, 3) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[2:], 0.0)
    assert pad_batch(images, 2) is images
