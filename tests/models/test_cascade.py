"""Graph mode at any batch size, PyNative == graph, per-exit stages, and input checks."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import ops

import dvt_ms
from dvt_ms.models import DVTCascade, ReuseState
from tests.helpers import mindspore_mode, tiny_spec


def make_model(spec=None, seed: int = 0) -> DVTCascade:
    ms.set_seed(seed)
    model = DVTCascade(spec or tiny_spec())
    model.set_train(False)
    return model


def images(batch: int, size: int = 32, seed: int = 0) -> ms.Tensor:
    return ms.Tensor(np.random.RandomState(seed).randn(batch, 3, size, size).astype(np.float32))


@pytest.mark.slow
def test_graph_mode_any_batch_size(graph_mode):
    model = make_model()
    model.set_inputs(ms.Tensor(shape=[None, 3, 32, 32], dtype=ms.float32))
    x = images(5)
    full = [o.asnumpy() for o in model(x)]
    for batch in (1, 2, 5):
        out = model(x[:batch])
        assert [o.shape for o in out] == [(batch, 10)] * 3
        for a, b in zip(out, full, strict=True):
            np.testing.assert_allclose(a.asnumpy(), b[:batch], rtol=1e-5, atol=1e-5)


def test_graph_equals_pynative():
    model = make_model()
    x = images(3)
    with mindspore_mode(ms.PYNATIVE_MODE):
        eager = [o.asnumpy() for o in model(x)]
    with mindspore_mode(ms.GRAPH_MODE):
        graph = [o.asnumpy() for o in model(x)]
    for a, b in zip(eager, graph, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_wrong_input_size_names_expected_and_got(graph_mode):
    model = make_model()
    with pytest.raises(ValueError, match=r"expects images of shape \[B, 3, 32, 32\], got \[2, 3, 28, 28\]"):
        model(images(2, size=28))
    with pytest.raises(ValueError, match=r"got \[3, 32, 32\]"):
        model(ms.Tensor(np.zeros((3, 32, 32), np.float32)))


def test_stages_chain_to_full_forward(graph_mode):
    model = make_model()
    x = images(4)
    full = [o.asnumpy() for o in model(x)]
    state = None
    for k in range(model.num_exits):
        logits, state = model.run_stage(k, x, state)
        np.testing.assert_allclose(logits.asnumpy(), full[k], rtol=1e-5, atol=1e-5)
    assert state.features.shape == (4, 65, 64)


def test_stage_on_subset_matches_full_batch_rows(graph_mode):
    """Exit k on a subset, fed the subset of exit k-1's state, gives those rows of the full run."""
    model = make_model()
    x = images(6)
    full = [o.asnumpy() for o in model(x)]
    _, state = model.run_stage(0, x)
    assert state.relations.shape == (6, 8, 17, 17)  # depth 4 * heads 2, 4x4 grid + class token
    keep = ms.Tensor(np.array([1, 4, 5], np.int32))
    sub = ReuseState(ops.index_select(state.features, 0, keep), ops.index_select(state.relations, 0, keep))
    logits, state2 = model.run_stage(1, ops.index_select(x, 0, keep), sub)
    np.testing.assert_allclose(logits.asnumpy(), full[1][[1, 4, 5]], rtol=1e-5, atol=1e-5)
    keep2 = ms.Tensor(np.array([2], np.int32))
    sub2 = ReuseState(ops.index_select(state2.features, 0, keep2), ops.index_select(state2.relations, 0, keep2))
    logits3, _ = model.run_stage(2, ops.index_select(x, 0, ms.Tensor(np.array([5], np.int32))), sub2)
    np.testing.assert_allclose(logits3.asnumpy(), full[2][[5]], rtol=1e-5, atol=1e-5)


def test_stage_without_required_state_is_an_error(graph_mode):
    model = make_model()
    with pytest.raises(ValueError, match="exit 2 reuses features"):
        model.run_stage(1, images(1))
    with pytest.raises(IndexError, match="out of range"):
        model.exit(3)


def test_last_exit_emits_no_relations(graph_mode):
    model = make_model()
    state = None
    for k in range(model.num_exits - 1):
        _logits, state = model.run_stage(k, images(1), state)
        assert state.relations is not None  # the next exit reuses them
    logits, last = model.run_stage(model.num_exits - 1, images(1), state)
    assert logits.shape == (1, model.num_classes)
    assert last.relations is None and last.features is not None  # nobody comes after the last exit


def test_exits_without_relation_reuse_downstream_emit_no_relations(graph_mode):
    no_rel = make_model(dvt_ms.spec_for("dvt_vit", img_size=32, exit_grids=[4, 8], embed_dim=32, depth=1,
                                        num_heads=2, num_classes=3, relation_reuse=False))
    _, state = no_rel.run_stage(0, images(1))
    assert state.relations is None and state.features is not None


def test_one_exit_and_four_exits(graph_mode):
    for grids in ([8], [2, 4, 6, 8]):
        model = make_model(dvt_ms.spec_for("dvt_vit", img_size=32, exit_grids=grids, embed_dim=32, depth=1,
                                           num_heads=2, num_classes=3))
        out = model(images(2))
        assert len(out) == len(grids) and all(o.shape == (2, 3) for o in out)


def test_train_mode_forward_with_drop_path(graph_mode):
    model = make_model(dvt_ms.spec_for("dvt_vit", img_size=32, exit_grids=[4, 8], embed_dim=32, depth=2,
                                       num_heads=2, num_classes=3, drop_path_rate=0.5, drop_rate=0.1))
    model.set_train(True)
    out = model(images(4))
    assert all(np.isfinite(o.asnumpy()).all() for o in out)
