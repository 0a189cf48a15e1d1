"""Ascend's compile-once blocks (``mindspore.lazy_inline``): which class is built where, and which blocks
share a graph. Ascend compiles them; here the decoration logic is checked on CPU."""

from __future__ import annotations

import dataclasses

import dvt_ms
from dvt_ms.models import DVTCascade
from dvt_ms.models.layers import Block, CompileOnceBlock, block_class
from dvt_ms.models.layers import block as block_module
from tests.helpers import tiny_t2t_spec


def test_block_class_is_compile_once_on_ascend_only(monkeypatch):
    monkeypatch.delenv("DVT_MS_LAZY_INLINE", raising=False)
    assert block_class("Ascend") is CompileOnceBlock
    assert block_class("CPU") is Block
    assert block_class("GPU") is Block
    monkeypatch.setenv("DVT_MS_LAZY_INLINE", "0")
    assert block_class("Ascend") is Block


def _ascend_model(monkeypatch, spec) -> DVTCascade:
    monkeypatch.delenv("DVT_MS_LAZY_INLINE", raising=False)
    monkeypatch.setattr(block_module, "_device_target", lambda: "Ascend")
    return DVTCascade(spec)


def _keys(model: DVTCascade) -> list[list[str]]:
    """Each block's ``signature``, what ``lazy_inline`` keys the compiled graphs by (``attrs="signature"``)."""
    blocks = [list(model.exit(k).blocks) for k in range(model.num_exits)]
    assert all(type(b) is CompileOnceBlock for row in blocks for b in row)
    return [[b.signature for b in row] for row in blocks]


def test_blocks_of_one_exit_share_a_graph_except_the_first(monkeypatch):
    spec = tiny_t2t_spec(depth=4, drop_path_rate=0.1)
    keys = _keys(_ascend_model(monkeypatch, spec))
    for k, row in enumerate(keys):
        assert row[0] != row[1], "block 0 has no drop path: its graph differs"
        assert len(set(row[1:])) == 1, f"exit {k}: blocks 1.. should compile once"
    assert len({row[1] for row in keys}) == len(keys), "exits differ in width and grid"


def test_blocks_with_active_dropout_share_nothing(monkeypatch):
    spec = dataclasses.replace(tiny_t2t_spec(depth=3, drop_path_rate=0.1), drop_rate=0.1)
    for row in _keys(_ascend_model(monkeypatch, spec)):
        assert len(set(row)) == len(row)


def test_parameter_names_do_not_change(monkeypatch):
    spec = tiny_t2t_spec(depth=3)
    names = [p.name for p in _ascend_model(monkeypatch, spec).get_parameters()]
    monkeypatch.undo()
    assert names == [p.name for p in DVTCascade(spec).get_parameters()]


def test_cpu_models_keep_plain_blocks():
    model = DVTCascade(dvt_ms.spec_for("dvt_t2t_vit", img_size=32, exit_grids=[4, 6], embed_dim=32, depth=2,
                                       num_heads=2, num_classes=4))
    assert all(type(b) is Block for k in range(model.num_exits) for b in model.exit(k).blocks)
