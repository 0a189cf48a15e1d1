"""The error types of serving: every export or prediction that cannot run raises one of these, with a message
that says what to change."""

from __future__ import annotations

__all__ = ["ManifestError", "OnnxUnavailable", "ServeError", "ServeUnavailable"]


class ServeError(ValueError):
    """An export or prediction that cannot run as asked; the message says what to change."""


class OnnxUnavailable(ServeError):
    """ONNX export or ONNX Runtime was asked for, but the packages are not installed."""


class ServeUnavailable(ServeError):
    """dvt-serve was asked for, but the packages of the serve extra (the HTTP server) are not installed."""


class ManifestError(ValueError):
    """An export folder that cannot be used; the message names the folder, the file and the problem."""
