"""The error type of the converter."""

from __future__ import annotations

__all__ = ["ConvertError"]


class ConvertError(ValueError):
    """A conversion that cannot be done; the message names the file, key, shape or value at fault."""
