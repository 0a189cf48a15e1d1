"""Ordered mini-batches from a random-access data set, decoded by a small thread pool.

Evaluation wants every image exactly once, in a fixed order, with errors that name the bad file:
a thread pool keeps Python exceptions (e.g. :class:`~dvt_ms.data.errors.DataError` from an unreadable
image) as they are, while PIL decoding and resizing run outside the GIL.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["Batch", "iterate_batches"]

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # images [B, ...] float32, labels int64, indices int64


def _load_batch(dataset: Any, indices: np.ndarray) -> Batch:
    items = [dataset[int(i)] for i in indices]
    images = np.stack([np.asarray(image, dtype=np.float32) for image, _ in items])
    labels = np.asarray([label for _, label in items], dtype=np.int64)
    return images, labels, indices


def iterate_batches(dataset: Any, batch_size: int, indices: Sequence[int] | None = None,
                    num_workers: int = 4, prefetch: int = 2) -> Iterator[Batch]:
    """Yield ``(images, labels, indices)`` batches of ``dataset`` (all items, or ``indices`` in that order).

    ``dataset[i]`` must return ``(array-like image, integer label)``. Up to ``prefetch`` batches are
    prepared ahead by ``num_workers`` threads (each batch by one thread); the last batch may be short.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.arange(len(dataset), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if num_workers <= 1:
        for chunk in chunks:
            yield _load_batch(dataset, chunk)
        return
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        pending: deque[Future] = deque()
        ahead = max(1, prefetch) + num_workers - 1
        next_chunk = 0
        try:
            while next_chunk < len(chunks) or pending:
                while next_chunk < len(chunks) and len(pending) < ahead:
                    pending.append(pool.submit(_load_batch, dataset, chunks[next_chunk]))
                    next_chunk += 1
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
