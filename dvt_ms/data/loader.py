"""The one data-loading stack of evaluation and training: ``mindspore.dataset`` over our random-access readers.

:func:`reader_dataset` builds the pipeline both use: a ``GeneratorDataset`` of keys (in order) whose
``map`` reads ``source[key]`` with parallel workers. The workers sit in ``map`` rather than in the
``GeneratorDataset`` because MindSpore's parallel ``GeneratorDataset`` collects its workers' results by
polling every 0.1 s, which caps it at a few hundred small images per second; ``map`` does not poll.

:func:`iterate_batches` (evaluation) runs it with threads, so that a Python exception of the reader, e.g.
a :class:`~dvt_ms.data.errors.DataError` naming an unreadable image, reaches the caller unchanged; PIL
decoding and resizing run outside the GIL. Training (:mod:`~dvt_ms.data.train_pipeline`) runs it with
worker processes and recovers a ``DataError`` from MindSpore's wrapped error with
:func:`~dvt_ms.data.errors.data_error_from`.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import interrupts
from .errors import data_error_from

if TYPE_CHECKING:
    import mindspore.dataset as ds

__all__ = ["Batch", "iterate_batches", "reader_dataset", "worker_count"]

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # images [B, ...] float32, labels int64, indices int64


def worker_count(requested: int) -> int:
    """``requested`` clamped to ``1 .. cpu_count`` (``mindspore.dataset`` refuses more workers than CPUs)."""
    return max(1, min(int(requested), multiprocessing.cpu_count()))


class _Keys:
    """Random-access source of the key column: row ``j`` is ``(keys[j],)``."""

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, j: int) -> tuple[np.int64]:
        return (self.keys[j],)


class _Read:
    """The ``map`` operation: the row of ``source[key]`` (MindSpore passes the key as a 0-d array)."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def __call__(self, key: np.ndarray) -> tuple:
        return self.source[int(key)]


def reader_dataset(source: Any, keys: Sequence[int] | np.ndarray, column_names: Sequence[str], num_workers: int,
                   processes: bool = False) -> ds.Dataset:
    """A ``mindspore.dataset`` pipeline whose row ``j`` is ``source[keys[j]]`` (a tuple, one value per name of
    ``column_names``), in the order of ``keys``.

    ``num_workers`` (clamped by :func:`worker_count`) threads, or worker processes when ``processes`` and
    more than one, call ``source[key]``; with processes ``source`` must be picklable. ``keys`` must not be
    empty (MindSpore cannot build an empty pipeline).
    """
    import mindspore.dataset as ds

    workers = worker_count(num_workers)
    keys = np.asarray(keys, dtype=np.int64)
    pipeline = ds.GeneratorDataset(_Keys(keys), ["key"], shuffle=False, num_parallel_workers=1)
    return pipeline.map(_Read(source), input_columns=["key"], output_columns=list(column_names),
                        num_parallel_workers=workers, python_multiprocessing=processes and workers > 1)


class _EvalItems:
    """``dataset[i]`` as the row ``(float32 image, int64 label, int64 i)``; remembers what a read raised so that
    the exception itself, not MindSpore's RuntimeError around it, can reach the caller."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.failures: dict[int, Exception] = {}

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.int64, np.int64]:
        try:
            image, label = self.dataset[index]
        except Exception as err:
            self.failures.setdefault(index, err)
            raise
        return np.asarray(image, dtype=np.float32), np.int64(label), np.int64(index)


def iterate_batches(dataset: Any, batch_size: int, indices: Sequence[int] | None = None,
                    num_workers: int = 4) -> Iterator[Batch]:
    """Yield ``(images, labels, indices)`` batches of ``dataset`` (all items, or ``indices`` in that order).

    ``dataset[i]`` must return ``(array-like image, integer label)``; every item comes exactly once, in
    order, and the last batch may be short. Items are read by ``num_workers`` threads of a
    :func:`reader_dataset` pipeline, ahead of the caller as far as MindSpore's queues allow
    (``mindspore.dataset.config.set_prefetch_size``).
    An exception of ``dataset[i]`` (e.g. a :class:`~dvt_ms.data.errors.DataError`) is raised as it is.
    Leaving the loop early (``break``) stops the pipeline.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.arange(len(dataset), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    if order.size == 0:
        return
    items = _EvalItems(dataset)
    pipeline = reader_dataset(items, order, ["image", "label", "index"], num_workers).batch(batch_size)
    batches = pipeline.create_tuple_iterator(num_epochs=1, output_numpy=True)
    try:
        for row in batches:  # a list [images, labels, indices]
            interrupts.check()  # Ctrl-C: stop between batches
            yield tuple(row)
    except RuntimeError as err:
        if items.failures:
            first = np.flatnonzero(np.isin(order, list(items.failures)))[0]
            raise items.failures[int(order[first])] from None
        data_err = data_error_from(err)
        if data_err is not None:
            raise data_err from None
        raise
    finally:
        batches.stop()
