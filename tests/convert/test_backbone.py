"""Tests of cascade initialisation from a standalone backbone and of the resampling it uses."""

from __future__ import annotations

import numpy as np
import pytest

import dvt_ms
from dvt_ms.checkpoint import read_metadata
from dvt_ms.convert.backbone import (
    COPIED,
    KEPT,
    PARTIAL,
    RESAMPLED,
    area_matrix,
    cubic_matrix,
    init_from_backbone,
    load_backbone,
    resample_kernel,
    resample_pos_embed,
)
from dvt_ms.convert.errors import ConvertError
from dvt_ms.models import DVTCascade
from dvt_ms.models.spec import with_reuse
from tests.helpers import (
    HAVE_TORCH,
    TINY_CONFIG,
    max_relative_error,
    ms_logits,
    requires_torch,
    run_cli,
    set_parameters,
    tiny_spec,
    tiny_t2t_spec,
    torch_reference,
)

if HAVE_TORCH:
    import torch
    import torch.nn.functional as F


def standalone(kind: str, grid: int, seed: int = 0) -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    """A single-exit PyTorch model and its state dict without the exit prefix: the key layout of a
    standalone DeiT (``kind="vit"``) or T2T-ViT (``kind="t2t"``) checkpoint, at the tiny size."""
    depth = 4 if kind == "vit" else 2
    spec = dvt_ms.spec_for(f"dvt_{'t2t_' if kind == 't2t' else ''}vit", img_size=32, exit_grids=[grid], embed_dim=64,
                           depth=depth, num_heads=2, num_classes=10, exit_names=["backbone"])
    model = torch_reference(spec, seed)
    state = {k.split(".", 1)[1]: v.numpy() for k, v in model.state_dict().items()}
    return model, state


def actions(report, exit_name: str) -> dict[str, str]:
    return {rest: action for name, rest, action, _ in report.entries if name == exit_name}


# ---- resampling -----------------------------------------------------------------------------------

@requires_torch
@pytest.mark.parametrize(("src", "dst"), [(14, 7), (14, 10), (7, 14), (4, 6), (8, 3), (5, 5)])
def test_cubic_matrix_is_torch_bicubic(src, dst):
    x = torch.randn(2, 3, src, src, dtype=torch.float64)
    expected = F.interpolate(x, size=(dst, dst), mode="bicubic", align_corners=False).numpy()
    m = cubic_matrix(src, dst)
    np.testing.assert_allclose(np.einsum("ia,jb,ncab->ncij", m, m, x.numpy()), expected, atol=1e-12)


def test_area_matrix():
    for src, dst in [(8, 4), (4, 8), (16, 23), (23, 16), (7, 11), (6, 6)]:
        a = area_matrix(src, dst)
        assert a.shape == (dst, src) and np.allclose(a.sum(1), 1) and (a >= 0).all()
    np.testing.assert_array_equal(area_matrix(6, 6), np.eye(6))
    np.testing.assert_array_equal(area_matrix(2, 4), [[1, 0], [1, 0], [0, 1], [0, 1]])


@requires_torch
def test_area_matrix_is_torch_average_pooling():
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    a = area_matrix(32, 16)
    np.testing.assert_allclose(np.einsum("ia,jb,ncab->ncij", a, a, x.numpy()), F.avg_pool2d(x, 2).numpy(), atol=1e-12)


@pytest.mark.parametrize(("k", "size"), [(16, 32), (16, 23), (8, 6), (7, 11)])
def test_resampled_kernel_sees_the_area_resized_patch(k, size):
    rng = np.random.RandomState(0)
    weight = rng.randn(5, 3, k, k).astype(np.float32)
    patch = rng.randn(3, size, size)
    new = resample_kernel(weight, size)
    assert new.shape == (5, 3, size, size) and new.dtype == np.float32
    a = area_matrix(size, k)
    shrunk = np.einsum("ia,jb,cab->cij", a, a, patch)
    np.testing.assert_allclose(np.einsum("ocij,cij->o", new, patch), np.einsum("ocij,cij->o", weight, shrunk),
                               rtol=1e-5, atol=1e-5)


def test_resample_pos_embed():
    rng = np.random.RandomState(1)
    table = rng.randn(1, 1 + 14 * 14, 8).astype(np.float32)
    for grid in (7, 10, 14):
        out = resample_pos_embed(table, grid)
        assert out.shape == (1, 1 + grid * grid, 8)
        np.testing.assert_array_equal(out[:, 0], table[:, 0])
    np.testing.assert_allclose(resample_pos_embed(table, 14), table, atol=1e-6)
    with pytest.raises(ConvertError, match="not a square grid"):
        resample_pos_embed(table[:, :51], 7)


# ---- initialisation -------------------------------------------------------------------------------

@requires_torch
def test_deit_backbone_fills_every_exit():
    _, state = standalone("vit", grid=4)
    model = DVTCascade(tiny_spec())
    initial = {k: p.asnumpy().copy() for k, p in model.parameters_dict().items()}
    params, report = init_from_backbone(model, state, "deit.pth")
    assert list(params) == list(initial)

    first = actions(report, "less_less_token")
    assert set(first.values()) == {COPIED}  # same grid, no reuse: a plain copy of the backbone
    for name in ("less_token", "normal_token"):
        act = actions(report, name)
        assert act["pos_embed"] == RESAMPLED and act["patch_embed.proj.weight"] == RESAMPLED
        assert act["blocks.0.norm2.weight"] == PARTIAL and act["blocks.3.mlp.fc1.weight"] == PARTIAL
        assert act["blocks.2.feature_resuse_mlp.1.fc1.weight"] == KEPT and act["relation_reuse_conv.0.weight"] == KEPT
        assert act["blocks.1.attn.qkv.weight"] == COPIED and act["head.bias"] == COPIED
        fc1 = params[f"{name}.blocks.3.mlp.fc1.weight"]
        np.testing.assert_array_equal(fc1[:, :64], state["blocks.3.mlp.fc1.weight"])
        np.testing.assert_array_equal(fc1[:, 64:], initial[f"{name}.blocks.3.mlp.fc1.weight"][:, 64:])
        np.testing.assert_array_equal(params[f"{name}.relation_reuse_conv.2.bias"],
                                      initial[f"{name}.relation_reuse_conv.2.bias"])
    assert params["normal_token.patch_embed.proj.weight"].shape == (64, 3, 4, 4)
    assert params["less_token.pos_embed"].shape == (1, 37, 64)
    assert report.counts()[COPIED] > report.counts()[KEPT]
    assert "tensors copied" in report.summary() and "relation_reuse_conv.0.weight" in report.summary()


@requires_torch
def test_exit_with_the_backbone_grid_computes_the_backbone(pynative_mode):
    backbone, state = standalone("vit", grid=4, seed=3)
    model = DVTCascade(tiny_spec())
    params, _ = init_from_backbone(model, state)
    set_parameters(model, params)
    x = np.random.RandomState(0).randn(2, 3, 32, 32).astype(np.float32)
    with torch.no_grad():
        expected = backbone(torch.from_numpy(x))[0].numpy()
    assert max_relative_error([expected], ms_logits(model, x)[:1]) <= 1e-4


@requires_torch
def test_t2t_backbone(pynative_mode):
    backbone, state = standalone("t2t", grid=8, seed=1)
    model = DVTCascade(with_reuse(tiny_t2t_spec(), False, False))
    params, report = init_from_backbone(model, state, "t2t.pth")
    for name in ("less_less_token", "less_token"):
        act = actions(report, name)
        assert act["tokens_to_token.attention1.kqv.weight"] == RESAMPLED
        assert act["tokens_to_token.attention1.norm1.bias"] == RESAMPLED
        assert act["tokens_to_token.attention1.w"] == COPIED and act["tokens_to_token.project.weight"] == COPIED
        assert act["pos_embed"] == KEPT  # each exit keeps the sinusoid table of its own grid
    assert params["less_token.tokens_to_token.attention1.kqv.weight"].shape == (192, 3 * 9 * 9)
    np.testing.assert_array_equal(params["less_token.tokens_to_token.attention2.w"],
                                  state["tokens_to_token.attention2.w"])
    assert set(actions(report, "normal_token").values()) == {COPIED, KEPT}

    set_parameters(model, params)
    x = np.random.RandomState(1).randn(2, 3, 32, 32).astype(np.float32)
    with torch.no_grad():
        expected = backbone(torch.from_numpy(x))[0].numpy()
    assert max_relative_error([expected], ms_logits(model, x)[2:]) <= 1e-4


@requires_torch
def test_other_class_count_leaves_the_head_new():
    _, state = standalone("vit", grid=4)
    model = DVTCascade(dvt_ms.spec_for("dvt_vit", img_size=32, exit_grids=[4, 6, 8], embed_dim=64, depth=4,
                                       num_heads=2, num_classes=3))
    _, report = init_from_backbone(model, state)
    assert actions(report, "normal_token")["head.weight"] == KEPT
    assert "10 backbone classes vs 3" in report.summary()


@requires_torch
def test_backbone_errors():
    _, state = standalone("vit", grid=4)
    model = DVTCascade(tiny_spec())
    distilled = {**state, "dist_token": np.zeros((1, 1, 64), np.float32)}
    with pytest.raises(ConvertError, match=r"1 unexpected in the backbone.*dist_token"):
        init_from_backbone(model, distilled)
    narrow = {**state, "blocks.0.attn.proj.weight": np.zeros((64, 32), np.float32)}
    with pytest.raises(ConvertError, match=r"less_less_token.blocks.0.attn.proj.weight: backbone \[64, 32\] vs DVT "
                                           r"exit \[64, 64\]"):
        init_from_backbone(model, narrow)
    cascade_state = {k: p.asnumpy() for k, p in DVTCascade(tiny_spec()).parameters_dict().items()}
    with pytest.raises(ConvertError, match="unexpected in the backbone"):
        init_from_backbone(model, cascade_state)


@requires_torch
def test_cli_backbone(tmp_path, capsys):
    _, state = standalone("vit", grid=4, seed=2)
    src = tmp_path / "deit_tiny.pth"
    torch.save({"model": {f"module.{k}": torch.from_numpy(v) for k, v in state.items()}}, src)
    dst = tmp_path / "init.ckpt"
    code, out, err = run_cli(capsys, "--backbone", "-c", TINY_CONFIG, "--src", src, "--dst", dst)
    assert code == 0, err
    assert "left at initialisation" in out and "resampled" in out
    meta = read_metadata(dst)
    assert meta["model"] == "dvt_vit" and meta["backbone_init"][COPIED] > 0
    assert meta["source"]["file"] == "deit_tiny.pth"

    model = DVTCascade(tiny_spec())
    report = load_backbone(model, src)
    np.testing.assert_array_equal(model.parameters_dict()["less_token.blocks.0.attn.qkv.weight"].asnumpy(),
                                  state["blocks.0.attn.qkv.weight"])
    assert report.backbone == "deit_tiny.pth"

    code, _, err = run_cli(capsys, "--backbone", "--src", src, "--dst", tmp_path / "x.ckpt")
    assert code == 1 and "--backbone needs the DVT model" in err
