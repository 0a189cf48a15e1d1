"""Numerical parity with the PyTorch reference: same weights -> same logits at every exit."""

from __future__ import annotations

import numpy as np
import pytest

import dvt_ms
from dvt_ms.kernels import use_kernels
from dvt_ms.models import DVTCascade
from dvt_ms.models.spec import CascadeSpec, with_reuse
from tests.helpers import (
    PUBLISHED,
    copy_torch_weights,
    max_relative_error,
    ms_logits,
    requires_torch,
    tiny_spec,
    tiny_t2t_spec,
    torch_logits,
    torch_reference,
)

pytestmark = requires_torch

TOL = 1e-4  # max |delta| <= 1e-4 * max |logit|, fp32


def run_both(spec: CascadeSpec, batch: int = 2, seed: int = 0,
             kernels: bool = True) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Logits of the reference and of dvt_ms (built with or without the fused CPU kernels)."""
    reference = torch_reference(spec, seed)
    with use_kernels(kernels):
        model = DVTCascade(spec)
    copy_torch_weights(reference, model)
    x = np.random.RandomState(seed).randn(batch, spec.in_chans, spec.img_size, spec.img_size).astype(np.float32)
    return torch_logits(reference, x), ms_logits(model, x)


@pytest.mark.exhaustive
@pytest.mark.parametrize("kernels", [True, False], ids=["fused_kernels", "stock_ops"])
@pytest.mark.parametrize("feature_reuse", [True, False])
@pytest.mark.parametrize("relation_reuse", [True, False])
@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_tiny_all_reuse_combinations(feature_reuse, relation_reuse, mode, kernels, request):
    request.getfixturevalue(f"{mode}_mode")
    spec = with_reuse(tiny_spec(), feature_reuse, relation_reuse)
    expected, got = run_both(spec, batch=3, kernels=kernels)
    assert len(got) == 3
    assert max_relative_error(expected, got) <= TOL


@pytest.mark.exhaustive
@pytest.mark.parametrize("kernels", [True, False], ids=["fused_kernels", "stock_ops"])
@pytest.mark.parametrize("variant", ["performer", "transformer"])
@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_tiny_t2t(variant, kernels, mode, request):
    # every exit has its own soft-split geometry: PyNative must not reuse one exit's shapes for another
    request.getfixturevalue(f"{mode}_mode")
    expected, got = run_both(tiny_t2t_spec(t2t_variant=variant), kernels=kernels)
    assert max_relative_error(expected, got) <= TOL


def test_heterogeneous_exits(graph_mode):
    spec = dvt_ms.spec_for("dvt_vit", img_size=32, exit_grids=[4, 8], embed_dim=[32, 48], depth=[2, 3],
                           num_heads=[2, 3], num_classes=5)
    expected, got = run_both(spec)
    assert max_relative_error(expected, got) <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", PUBLISHED)
def test_published_models_graph(name, graph_mode):
    expected, got = run_both(dvt_ms.spec_for(name), batch=2)
    assert max_relative_error(expected, got) <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("feature_reuse, relation_reuse", [(False, False), (True, False), (False, True)])
def test_t2t_vit_12_reuse_switches(feature_reuse, relation_reuse, graph_mode):
    spec = dvt_ms.spec_for("dvt_t2t_vit_12", feature_reuse=feature_reuse, relation_reuse=relation_reuse)
    expected, got = run_both(spec, batch=1)
    assert max_relative_error(expected, got) <= TOL


@pytest.mark.slow
def test_t2t_vit_12_pynative(pynative_mode):
    expected, got = run_both(dvt_ms.spec_for("dvt_t2t_vit_12"), batch=1)
    assert max_relative_error(expected, got) <= TOL
