"""Validation during training: top-1 / top-5 accuracy of every exit (early exit off)."""

from __future__ import annotations

from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import nn

from ..data import iterate_batches
from ..inference.thresholds import topk_correct
from .distributed import Runtime, sum_over_devices


@dataclass
class Accuracy:
    """Per-exit top-1 / top-5 accuracy (%) over ``count`` images."""

    top1: list[float]
    top5: list[float]
    count: int


def pad_batch(images: np.ndarray, batch_size: int) -> np.ndarray:
    """``images`` [n, ...] with zero images appended up to ``batch_size`` (unchanged when n is that already)."""
    short = batch_size - len(images)
    if short <= 0:
        return images
    return np.concatenate([images, np.zeros((short, *images.shape[1:]), images.dtype)])


def exit_accuracy(model: nn.Cell, dataset, batch_size: int, runtime: Runtime, num_workers: int = 4,
             forward=None) -> Accuracy:
    """Accuracy of every exit of ``model`` on ``dataset`` (items ``(float32 [3, S, S], label)``).

    In a data-parallel run each rank evaluates every ``group_size``-th image and the counts are summed
    over the ranks, so every rank returns the accuracy over the whole set. ``forward`` replaces
    ``model(images)`` (e.g. a jit-compiled version of it). Every call sees ``batch_size`` images: a short
    last batch is padded with zero images, whose outputs are left out, so graph mode compiles the model for
    one static shape.
    """
    forward = forward or model
    indices = np.arange(runtime.rank, len(dataset), runtime.group_size)
    was_training = model.training
    model.set_train(False)
    counts = None
    try:
        for images, labels, _ in iterate_batches(dataset, batch_size, indices, num_workers=num_workers):
            outputs = forward(ms.Tensor(pad_batch(images, batch_size)))
            row = []
            for logits in outputs:
                scores = logits.astype(ms.float32).asnumpy()[:len(labels)]
                row += [int(topk_correct(scores, labels, 1).sum()), int(topk_correct(scores, labels, 5).sum())]
            row.append(len(labels))
            counts = np.asarray(row, np.float64) if counts is None else counts + row
    finally:
        model.set_train(was_training)
    if counts is None:
        n_exits = len(getattr(model, "exit_names", ())) or 1
        counts = np.zeros(2 * n_exits + 1)
    counts = sum_over_devices(runtime, counts).astype(np.float64)
    total = max(round(counts[-1]), 1)
    return Accuracy([100.0 * c / total for c in counts[0:-1:2]], [100.0 * c / total for c in counts[1:-1:2]],
                    round(counts[-1]))
