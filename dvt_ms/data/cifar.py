"""CIFAR-10 / CIFAR-100 in their binary distribution format.

CIFAR-10 (``cifar-10-batches-bin``): ``data_batch_1.bin`` .. ``data_batch_5.bin`` (train) and
``test_batch.bin`` (test); each record is one label byte then 3072 pixel bytes (the 1024 red, 1024
green and 1024 blue values of a 32x32 image, row-major). Class names: ``batches.meta.txt``.

CIFAR-100 (``cifar-100-binary``): ``train.bin`` and ``test.bin``; each record is a coarse-label byte,
a fine-label byte and the 3072 pixel bytes. The fine labels (100 classes) are used. Class names:
``fine_label_names.txt``.

``root`` may be the directory that holds those files or its parent (where the archive was unpacked).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from .errors import DataError

__all__ = ["CIFAR_LAYOUT", "CifarDataset", "cifar_classes", "find_cifar_dir", "read_cifar"]

PIXELS = 32 * 32 * 3

# which -> (sub-directory, {split: files}, label bytes per record, index of the label byte, names file)
CIFAR_LAYOUT: dict[str, tuple[str, dict[str, tuple[str, ...]], int, int, str]] = {
    "cifar10": ("cifar-10-batches-bin",
                {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)},
                1, 0, "batches.meta.txt"),
    "cifar100": ("cifar-100-binary", {"train": ("train.bin",), "test": ("test.bin",)}, 2, 1,
                 "fine_label_names.txt"),
}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def _layout(which: str):
    if which not in CIFAR_LAYOUT:
        raise DataError(f"unknown CIFAR variant {which!r}: use 'cifar10' or 'cifar100'")
    return CIFAR_LAYOUT[which]


def find_cifar_dir(root: str | os.PathLike, which: str) -> str:
    """The directory holding the binary files of ``which`` (``root`` or ``root/<archive dir>``)."""
    root = os.fspath(root)
    subdir, files, *_ = _layout(which)
    if not os.path.isdir(root):
        raise DataError(f"data directory not found: {root}")
    for candidate in (root, os.path.join(root, subdir)):
        if os.path.isfile(os.path.join(candidate, files["test"][0])):
            return candidate
    expected = ", ".join(files["train"] + files["test"])
    raise DataError(f"{root} does not hold the {which} binary files ({expected}), neither directly nor in "
                    f"{os.path.join(root, subdir)}")


def read_cifar(root: str | os.PathLike, split: str, which: str = "cifar10") -> tuple[np.ndarray, np.ndarray]:
    """Read a CIFAR split: ``(images, labels)``, images uint8 ``[N, 32, 32, 3]`` (HWC, RGB), labels int64.

    ``split`` is ``"train"`` or ``"test"``; ``which`` is ``"cifar10"`` or ``"cifar100"`` (fine labels).
    A missing or truncated file is a :class:`DataError` naming it.
    """
    _, files, label_bytes, label_index, _ = _layout(which)
    if split not in files:
        raise DataError(f"unknown CIFAR split {split!r}: use 'train' or 'test'")
    directory = find_cifar_dir(root, which)
    record = label_bytes + PIXELS
    paths = [os.path.join(directory, name) for name in files[split]]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"CIFAR file missing: {', '.join(missing)}")
    images, labels = [], []
    for path in paths:
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % record:
            raise DataError(f"{path} is not a {which} binary batch: {raw.size} bytes is not a multiple of the "
                            f"{record}-byte record (truncated file?)")
        raw = raw.reshape(-1, record)
        labels.append(raw[:, label_index].astype(np.int64))
        images.append(raw[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    out_labels = np.concatenate(labels)
    if out_labels.max() >= NUM_CLASSES[which]:
        raise DataError(f"{directory}: label {int(out_labels.max())} found, but {which} has "
                        f"{NUM_CLASSES[which]} classes (wrong --dataset?)")
    return np.ascontiguousarray(np.concatenate(images)), out_labels


def cifar_classes(root: str | os.PathLike, which: str = "cifar10") -> list[str]:
    """Class names from the archive's names file; ``class_<i>`` when that file is absent."""
    *_, names_file = _layout(which)
    path = os.path.join(find_cifar_dir(root, which), names_file)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
        if len(names) == NUM_CLASSES[which]:
            return names
    return [f"class_{i}" for i in range(NUM_CLASSES[which])]


class CifarDataset:
    """A random-access CIFAR split: ``dataset[i] -> (transform(PIL image), label)``.

    Like :class:`~dvt_ms.data.folder.ImageFolder` it has ``samples``-free ``targets``, ``classes``,
    ``__len__`` and ``__getitem__``, so it also serves as a ``mindspore.dataset.GeneratorDataset`` source.
    """

    def __init__(self, root: str | os.PathLike, split: str, which: str = "cifar10",
                 transform: Callable[[Image.Image], Any] | None = None) -> None:
        self.root = os.fspath(root)
        self.images, labels = read_cifar(self.root, split, which)
        self.targets = labels.tolist()
        self.classes = cifar_classes(self.root, which)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[index])
        return (self.transform(image) if self.transform is not None else image), self.targets[index]
