"""Shared fixtures: MindSpore on the CPU, its execution mode per test, a seeded random state.

Every test leaves MindSpore's execution mode as it found it (``_restore_mindspore_mode``), so a test's mode
never depends on which tests ran before it: a test that needs a mode asks for ``graph_mode`` or
``pynative_mode`` (or uses ``tests.helpers.mindspore_mode`` for part of its body); the others run in the
mode the session started in (MindSpore's default). Plain helpers live in ``tests/helpers.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import mindspore as ms
import numpy as np
import pytest

from tests.helpers import mindspore_mode


def pytest_configure(config: pytest.Config) -> None:
    """Pin MindSpore to the CPU once, before any test runs a kernel. The suite is written for the CPU, and
    code that names the device again in-process (``dvt-train``'s ``main``) then finds the same device set
    instead of failing on a runtime that is already initialised."""
    ms.set_device("CPU")


@pytest.fixture(autouse=True)
def _restore_mindspore_mode() -> Iterator[None]:
    """Put MindSpore's execution mode back after the test, whatever the test (or code it ran) set."""
    mode = ms.get_context("mode")
    yield
    if ms.get_context("mode") != mode:
        ms.set_context(mode=mode)


@pytest.fixture
def graph_mode() -> Iterator[None]:
    """Run the test in ``GRAPH_MODE``."""
    with mindspore_mode(ms.GRAPH_MODE):
        yield


@pytest.fixture
def pynative_mode() -> Iterator[None]:
    """Run the test in ``PYNATIVE_MODE``."""
    with mindspore_mode(ms.PYNATIVE_MODE):
        yield


@pytest.fixture
def rng() -> np.random.RandomState:
    """A random state seeded with 0."""
    return np.random.RandomState(0)
