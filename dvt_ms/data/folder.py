"""ImageNet-style image folders: ``root/<class>/**/<image>``.

Classes are the sub-directories of ``root`` in sorted order (index 0 is the first name), images are
the files below each class directory (any depth) whose extension is a known image extension, sorted
by path: the same classes, indices and order as ``torchvision.datasets.ImageFolder``. Hidden entries
(names starting with ``.``) are skipped.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError

__all__ = ["IMG_EXTENSIONS", "READ_ERRORS", "ImageFolder", "decode_image", "is_image_file", "list_image_files",
           "load_image", "scan_image_folder", "to_rgb"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

Sample = tuple[str, int]


def is_image_file(name: str) -> bool:
    """Whether a file name has an accepted image extension (hidden files excluded)."""
    name = os.path.basename(name)
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def list_image_files(root: str | os.PathLike) -> list[str]:
    """Every image file below ``root`` (recursive, hidden folders skipped), sorted."""
    paths = []
    for directory, subdirs, files in os.walk(os.fspath(root), followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        paths.extend(os.path.join(directory, f) for f in files if is_image_file(f))
    return sorted(paths)


def scan_image_folder(root: str | os.PathLike) -> tuple[list[Sample], list[str]]:
    """List an image folder: ``(samples, classes)`` with ``samples`` as ``(path, class_index)`` pairs.

    Raises :class:`DataError` when ``root`` does not exist or is not a directory, when it has no class
    sub-directories, or when a class directory holds no image (the message names that directory and
    the accepted extensions). Files are not opened here; :func:`load_image` names unreadable ones.
    """
    root = os.fspath(root)
    if not os.path.exists(root):
        raise DataError(f"data directory not found: {root}")
    if not os.path.isdir(root):
        raise DataError(f"not a directory: {root} (expected an image folder laid out as <class>/<image files>)")
    with os.scandir(root) as entries:
        classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class sub-directories (expected an image folder laid out as "
                        f"{root}/<class>/<image files>)")
    samples: list[Sample] = []
    for index, name in enumerate(classes):
        images = list_image_files(os.path.join(root, name))
        if not images:
            raise DataError(f"class folder {os.path.join(root, name)} contains no images (accepted extensions: "
                            f"{', '.join(IMG_EXTENSIONS)})")
        samples.extend((path, index) for path in images)
    return samples, classes


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
#: what PIL raises for a file it cannot read (a bad header, a truncated or corrupt stream, a decoder bomb check)
READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB. 16-bit greyscale keeps its 8 most significant bits (PIL's own conversion clips
    every value above 255 to white); every other mode converts as PIL does (alpha dropped, palettes expanded,
    CMYK and YCbCr to RGB)."""
    if image.mode in _SIXTEEN_BIT:
        grey = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file fully decoded as RGB (:func:`to_rgb`); :class:`DataError` names the file when it
    cannot be read."""
    path = os.fspath(path)
    return _decode(path, path)


def decode_image(data: bytes, name: str = "image") -> Image.Image:
    """An image file's bytes fully decoded as RGB, as :func:`load_image` reads a file (any format it reads);
    :class:`DataError` says why when they cannot be read, calling them ``name``."""
    if not data:
        raise DataError(f"cannot read image {name}: it is empty (0 bytes)")
    return _decode(io.BytesIO(data), name)


def _decode(source: str | io.BytesIO, name: str) -> Image.Image:
    try:
        with Image.open(source) as img:
            img.load()
            return to_rgb(img)
    except UnidentifiedImageError:
        if isinstance(source, str):
            raise DataError(f"cannot read image {name}: cannot identify image file {source!r}") from None
        raise DataError(f"cannot read image {name}: not an image file of a format PIL reads (accepted file types: "
                        f"{', '.join(IMG_EXTENSIONS)})") from None
    except READ_ERRORS as err:
        raise DataError(f"cannot read image {name}: {err}") from None


class ImageFolder:
    """A random-access image-folder data set: ``dataset[i] -> (transform(image), class_index)``.

    ``transform`` takes a PIL RGB image (identity when ``None``). The object has ``__len__`` and
    ``__getitem__`` only, so it also serves as a ``mindspore.dataset.GeneratorDataset`` source.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable[[Image.Image], Any] | None = None) -> None:
        self.root = os.fspath(root)
        self.samples, self.classes = scan_image_folder(self.root)
        self.targets = [label for _, label in self.samples]
        self.transform = transform

    def excluding(self, paths: Iterable[str]) -> ImageFolder:
        """The same folder without the files ``paths`` (classes and their indices unchanged)."""
        left_out = set(map(os.fspath, paths))
        copy = object.__new__(ImageFolder)
        copy.root, copy.classes, copy.transform = self.root, self.classes, self.transform
        copy.samples = [s for s in self.samples if s[0] not in left_out]
        copy.targets = [label for _, label in copy.samples]
        return copy

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = load_image(path)
        return (self.transform(image) if self.transform is not None else image), label
