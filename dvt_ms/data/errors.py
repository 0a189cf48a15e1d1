"""The error type of the data readers, and its recovery from ``mindspore.dataset`` pipeline errors."""

from __future__ import annotations

import re

__all__ = ["DataError", "data_error_from"]


class DataError(ValueError):
    """A data set that cannot be read as asked; the message names the directory or file and the problem."""


_DATA_ERROR = re.compile(r"DataError: ([^\n]+)")


def data_error_from(err: BaseException) -> DataError | None:
    """The :class:`DataError` raised inside a ``mindspore.dataset`` pipeline (MindSpore re-raises it as a
    long RuntimeError holding the worker's traceback as text), or ``None`` when ``err`` does not carry one."""
    if isinstance(err, DataError):
        return err
    # the traceback text holds "DataError: Traceback ..." first and the error's own line last
    found = _DATA_ERROR.findall(str(err))
    return DataError(found[-1].strip()) if found else None
