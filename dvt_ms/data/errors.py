"""The error type of the data readers."""

from __future__ import annotations


class DataError(ValueError):
    """A data set that cannot be read as asked; the message names the directory or file and the problem."""
