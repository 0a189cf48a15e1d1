"""Build the evaluation data sets by name: ``imagefolder``, ``cifar10``, ``cifar100``."""

from __future__ import annotations

import os

from .cifar import CifarDataset
from .errors import DataError
from .folder import ImageFolder
from .transforms import DEFAULT_CROP_PCT, EvalTransform

__all__ = ["DATASETS", "SPLIT_DIRS", "build_eval_dataset", "default_crop_pct", "open_split"]

DATASETS = ("imagefolder", "cifar10", "cifar100")
# split -> sub-directory of an image folder / CIFAR split
SPLIT_DIRS = {"train": ("train", "train"), "val": ("val", "test")}


def default_crop_pct(dataset: str) -> float:
    """224/256 for image folders (the ImageNet recipe); 1.0 for CIFAR (resize straight to the model size)."""
    return DEFAULT_CROP_PCT if dataset == "imagefolder" else 1.0


def open_split(dataset: str, data_dir: str | os.PathLike, split: str, transform=None):
    """The ``split`` (``"train"`` or ``"val"``) of a data set as a random-access reader.

    ``imagefolder`` reads ``data_dir/train`` or ``data_dir/val`` (``<class>/<images>`` below each);
    ``cifar10`` / ``cifar100`` read the binary train / test files under ``data_dir``. Items are
    ``(transform(PIL image), label)`` (the PIL image itself without ``transform``). Problems are
    :class:`DataError` naming the path.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}: use one of {', '.join(DATASETS)}")
    if split not in SPLIT_DIRS:
        raise DataError(f"unknown split {split!r}: use 'train' or 'val'")
    if not data_dir:
        raise DataError("no data directory given: set --data_dir (it must hold train/ and val/ for "
                        "imagefolder, the binary files for CIFAR)")
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise DataError(f"data directory not found: {data_dir}")
    folder, cifar_split = SPLIT_DIRS[split]
    if dataset == "imagefolder":
        root = os.path.join(data_dir, folder)
        if not os.path.isdir(root):
            raise DataError(f"{data_dir} has no {folder}/ directory (expected {root}/<class>/<image files>)")
        return ImageFolder(root, transform)
    return CifarDataset(data_dir, cifar_split, dataset, transform)


def build_eval_dataset(dataset: str, data_dir: str | os.PathLike, split: str, img_size: int,
                       crop_pct: float | None = None):
    """The ``split`` of a data set (:func:`open_split`) with the evaluation transform for ``img_size``:
    items are ``(float32 [3, img_size, img_size], label)``."""
    transform = EvalTransform(img_size, crop_pct if crop_pct is not None else default_crop_pct(dataset))
    return open_split(dataset, data_dir, split, transform)
