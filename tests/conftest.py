"""Shared fixtures: MindSpore on the CPU, its execution mode per test, a seeded random state.

Every test runs in a temporary folder of its own (nothing it writes lands in the repository) and leaves
MindSpore's execution mode as it found it (``_restore_mindspore_mode``), so a test's mode
never depends on which tests ran before it: a test that needs a mode asks for ``graph_mode`` or
``pynative_mode`` (or uses ``tests.helpers.mindspore_mode`` for part of its body); the others run in the
mode the session started in (MindSpore's default). Plain helpers live in ``tests/helpers.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from tests.helpers import mindspore_mode


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--quick", action="store_true", default=False,
                     help="the quick tier: leave out tests marked slow, and run only the first variant of a test "
                          "marked exhaustive (CI runs everything)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--quick``: deselect ``slow`` tests and all but the first variant of each ``exhaustive`` test."""
    if not config.getoption("--quick"):
        return
    kept, dropped, seen = [], [], set()
    for item in items:
        function = getattr(item, "originalname", item.name)
        key = (item.path, function)
        if item.get_closest_marker("slow") or (item.get_closest_marker("exhaustive") and key in seen):
            dropped.append(item)
        else:
            kept.append(item)
        seen.add(key)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_configure(config: pytest.Config) -> None:
    """Pin MindSpore to the CPU once, before any test runs a kernel. The suite is written for the CPU, and
    code that names the device again in-process (``dvt-train``'s ``main``) then finds the same device set
    instead of failing on a runtime that is already initialised."""
    ms.set_device("CPU")


@pytest.fixture(autouse=True)
def _run_in_a_temporary_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own temporary folder: a default output path (``outputs/...``) or any other
    relative path a command writes lands there, never in the repository."""
    monkeypatch.chdir(tmp_path)


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
