"""Shared fixtures: MindSpore context per test, tiny specs, the published model names."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest


@pytest.fixture
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    yield
    ms.set_context(mode=ms.GRAPH_MODE)


@pytest.fixture
def pynative_mode():
    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    yield
    ms.set_context(mode=ms.GRAPH_MODE)


@pytest.fixture
def rng():
    return np.random.RandomState(0)
