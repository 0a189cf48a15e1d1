"""The training input pipeline on ``mindspore.dataset``: deterministic order, sharding by rank, augmentation.

Order: every epoch is a permutation of the data set drawn from ``(seed, epoch)``; the first
``steps_per_epoch * batch_size * num_shards`` entries are used and shard ``shard_id`` of ``num_shards``
takes every ``num_shards``-th of them (as torch's DistributedSampler). Batch ``i`` of all shards
together is therefore batch ``i`` of a single process with the global batch size, which is what makes a
data-parallel run equal to a single-device run.

Randomness: each image is augmented with a generator seeded by ``(seed, epoch, image index)`` and each
batch is mixed with one seeded by ``(seed, epoch, shard, batch)``, so results do not depend on worker
processes, timing or restarts. One pipeline (:func:`~dvt_ms.data.loader.reader_dataset`, the stack evaluation
uses too, here with worker processes) covers all remaining epochs, so worker processes start once per run;
a resumed run simply starts at a later epoch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .augment import MixupCutmix, TrainTransform
from .datasets import open_split
from .errors import DataError, data_error_from
from .loader import reader_dataset
from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["TrainData", "TrainSource", "data_error_from", "epoch_order", "open_train_reader"]

_BATCH_STREAM = 0x6D6978  # separates the batch generators' seed sequences from the per-image ones
_SUBSTITUTE_STREAM = 0x737562  # and those choosing a stand-in for an unreadable image
_SUBSTITUTE_TRIES = 10
_LOG = logging.getLogger(__name__)  # worker processes inherit the training log's handlers


def open_train_reader(dataset: str, data_dir: str | os.PathLike):
    """The training split as a random-access reader returning ``(PIL image, label)``."""
    return open_split(dataset, data_dir, "train")


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The sample order of ``epoch`` (a permutation drawn from ``(seed, epoch)``, or 0..N-1)."""
    if not shuffle:
        return np.arange(num_samples, dtype=np.int64)
    return np.random.default_rng((seed, epoch)).permutation(num_samples).astype(np.int64)


class TrainSource:
    """Random-access source over the remaining steps of one shard: item ``j`` is position ``(skip + j) % per_shard``
    of epoch ``start_epoch + (skip + j) // per_shard`` of this shard, decoded and augmented (``skip`` images of
    the first epoch were read before a resume inside it).

    ``skip_unreadable``: an image that cannot be decoded (one that passed the header check but whose data is
    cut off) is replaced by another image of the data set, chosen from ``(seed, epoch, index)`` so that every
    worker, device and restart makes the same choice, and a warning names it; otherwise its
    :class:`~dvt_ms.data.errors.DataError` ends the run."""

    def __init__(self, reader: Any, transform: TrainTransform, seed: int, start_epoch: int, num_epochs: int,
                 per_shard: int, num_shards: int = 1, shard_id: int = 0, shuffle: bool = True, skip: int = 0,
                 skip_unreadable: bool = False) -> None:
        self.reader, self.transform = reader, transform
        self.seed, self.start_epoch, self.num_epochs = int(seed), int(start_epoch), int(num_epochs)
        self.per_shard, self.num_shards, self.shard_id = int(per_shard), int(num_shards), int(shard_id)
        self.shuffle, self.skip, self.skip_unreadable = shuffle, int(skip), bool(skip_unreadable)
        if not 0 <= self.skip < max(self.per_shard, 1):
            raise ValueError(f"skip must lie in [0, {self.per_shard}), got {skip}")
        self._cached: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.num_epochs * self.per_shard - self.skip

    def shard_indices(self, epoch: int) -> np.ndarray:
        """Data-set indices this shard reads in ``epoch``, in order."""
        if self._cached is None or self._cached[0] != epoch:
            used = self.per_shard * self.num_shards
            order = epoch_order(len(self.reader), self.seed, epoch, self.shuffle)[:used]
            self._cached = (epoch, order[self.shard_id::self.num_shards])
        return self._cached[1]

    def __getitem__(self, j: int) -> tuple[np.ndarray, np.int32]:
        epoch, position = divmod(self.skip + j, self.per_shard)
        epoch += self.start_epoch
        index = int(self.shard_indices(epoch)[position])
        image, label = self._read(epoch, index)
        rng = np.random.default_rng((self.seed, epoch, index))
        return self.transform(image, rng), np.int32(label)

    def _read(self, epoch: int, index: int) -> tuple[Any, int]:
        try:
            return self.reader[index]
        except DataError as err:
            if not self.skip_unreadable:
                raise
            first = err
        choices = np.random.default_rng((self.seed, epoch, index, _SUBSTITUTE_STREAM))
        for _ in range(_SUBSTITUTE_TRIES):
            other = int(choices.integers(len(self.reader)))
            try:
                item = self.reader[other]
            except DataError:
                continue
            _LOG.warning("%s; image %d is read in its place (--bad_images skip)", first, other)
            return item
        raise DataError(f"{first}; and {_SUBSTITUTE_TRIES} images tried in its place could not be read either")


class _BatchMixer:
    """``per_batch_map`` of the pipeline: stack, then mixup/cutmix with a per-batch generator."""

    def __init__(self, mixer: MixupCutmix, seed: int, first_batch: int, steps_per_epoch: int, shard_id: int) -> None:
        self.mixer, self.seed, self.first_batch = mixer, int(seed), int(first_batch)
        self.steps_per_epoch, self.shard_id = int(steps_per_epoch), int(shard_id)

    def __call__(self, images, labels, info):
        batch = self.first_batch + info.get_batch_num()
        epoch, position = divmod(batch, self.steps_per_epoch)
        rng = np.random.default_rng((self.seed, epoch, self.shard_id, position, _BATCH_STREAM))
        return self.mixer(np.stack(images), np.asarray(labels, dtype=np.int64), rng)


@dataclass
class TrainData:
    """The training data of one run: the reader, how it is split into steps, and how it is augmented.

    ``batch_size`` is per shard; ``steps_per_epoch = len(reader) // (batch_size * num_shards)``. The
    leftover images of an epoch's permutation are not used in that epoch (they are in others).
    """

    reader: Any
    batch_size: int
    num_classes: int
    img_size: int
    seed: int = 0
    num_shards: int = 1
    shard_id: int = 0
    shuffle: bool = True
    crop_scale: Sequence[float] = (0.08, 1.0)
    crop_ratio: Sequence[float] = (3 / 4, 4 / 3)
    random_crop: bool = True
    hflip: float = 0.5
    auto_augment: str | None = None
    color_jitter: float = 0.0
    reprob: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.0
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    num_parallel_workers: int = 4
    skip_unreadable: bool = False
    transform: TrainTransform = field(init=False)
    mixer: MixupCutmix = field(init=False)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.shard_id < self.num_shards:
            raise DataError(f"shard_id {self.shard_id} is outside 0..{self.num_shards - 1}")
        labels = getattr(self.reader, "targets", None)
        if labels is not None and len(labels) and max(labels) >= self.num_classes:
            raise DataError(f"the training data has {max(labels) + 1} classes but the model has "
                            f"num_classes={self.num_classes}: set --num_classes {max(labels) + 1}")
        if self.steps_per_epoch < 1:
            raise DataError(f"{len(self.reader)} training images are fewer than one global batch "
                            f"({self.batch_size} per device x {self.num_shards} devices)")
        self.transform = TrainTransform(self.img_size, self.crop_scale, self.crop_ratio, self.hflip,
                                        self.auto_augment, self.color_jitter, self.reprob, self.mean, self.std,
                                        self.random_crop)
        self.mixer = MixupCutmix(self.num_classes, self.mixup, self.cutmix, self.mixup_prob,
                                 self.mixup_switch_prob, self.smoothing)
        if self.mixer.active and self.batch_size % 2:
            raise DataError(f"mixup/cutmix pair each image with the batch reversed: use an even batch_size "
                            f"(got {self.batch_size})")

    @property
    def steps_per_epoch(self) -> int:
        return len(self.reader) // (self.batch_size * self.num_shards)

    def source(self, start_epoch: int, num_epochs: int, start_step: int = 0) -> TrainSource:
        """The images of epochs ``start_epoch ..`` (``num_epochs`` of them) from step ``start_step`` of the first."""
        return TrainSource(self.reader, self.transform, self.seed, start_epoch, num_epochs,
                           self.steps_per_epoch * self.batch_size, self.num_shards, self.shard_id, self.shuffle,
                           start_step * self.batch_size, self.skip_unreadable)

    def dataset(self, start_epoch: int, num_epochs: int, start_step: int = 0):
        """A ``mindspore.dataset`` pipeline of epochs ``start_epoch .. start_epoch + num_epochs - 1``, from step
        ``start_step`` of the first (a resume inside an epoch): columns ``image`` float32 [B, 3, S, S] and
        ``target`` float32 [B, num_classes] (soft targets). Its batches equal those of a pipeline started
        earlier, from the same step on."""
        if not 0 <= start_step < self.steps_per_epoch:
            raise ValueError(f"start_step must lie in [0, {self.steps_per_epoch}), got {start_step}")
        source = self.source(start_epoch, num_epochs, start_step)
        pipeline = reader_dataset(source, np.arange(len(source)), ["image", "label"], self.num_parallel_workers,
                                  processes=True)
        mixer = _BatchMixer(self.mixer, self.seed, start_epoch * self.steps_per_epoch + start_step,
                            self.steps_per_epoch, self.shard_id)
        return pipeline.batch(self.batch_size, drop_remainder=True, per_batch_map=mixer,
                              input_columns=["image", "label"], output_columns=["image", "target"])
