"""Class names that travel with a model: read from a text file, checked against the model's classes."""

from __future__ import annotations

import os
from collections.abc import Sequence

from .errors import DataError

__all__ = ["check_class_names", "read_class_names"]


def read_class_names(path: str | os.PathLike) -> list[str]:
    """One class name per line, in class-index order (blank lines and surrounding spaces ignored)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        raise DataError(f"class-name file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read the class-name file {path}: {err}") from None
    if not names:
        raise DataError(f"{path} holds no class names (expected one per line)")
    return names


def check_class_names(names: Sequence[str] | None, num_classes: int, where: str) -> list[str] | None:
    """``names`` as a list, or ``DataError`` naming ``where`` when their number is not ``num_classes``."""
    if names is None:
        return None
    names = [str(n) for n in names]
    if len(names) != num_classes:
        raise DataError(f"{where}: {len(names)} class names for a model with {num_classes} classes")
    return names
