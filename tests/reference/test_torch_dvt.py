"""Tests of the PyTorch reference DVT (``dvt_ms.reference.torch_dvt``).

The three published cascades must reproduce the official checkpoints' parameter names, order, shapes
and counts; the tiny cascades exercise every reuse combination, both T2T variants and exits of
different sizes; the grid/relation resizing is checked against the official operator sequence (the
model's resize matrix is checked against the same torch operators in tests/models/test_grid_resize.py).
"""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace

import pytest

from dvt_ms.models.spec import CascadeSpec, ExitSpec, with_reuse
from dvt_ms.models.stems import PatchStem, T2TStem
from tests.helpers import HAVE_TORCH, PUBLISHED, REPO, official_key_rows, requires_torch

if HAVE_TORCH:
    import torch
    import torch.nn.functional as F

    from dvt_ms.reference import torch_dvt as td

NAMES = ("less_less_token", "less_token", "normal_token")
PARAM_COUNTS = {"dvt_t2t_vit_12": 22_461_516, "dvt_t2t_vit_14": 67_881_836, "dvt_deit_small": 70_442_232}
T2T_UNFOLDS = (
    ((14, 8, 3), (3, 2, 1), (3, 2, 1)),  # 7x7
    ((11, 6, 5), (3, 2, 1), (3, 2, 1)),  # 10x10
    ((7, 4, 2), (3, 2, 1), (3, 2, 1)),  # 14x14
)
DEIT_PATCHES = ((32, 0), (23, 3), (16, 0))  # (kernel = stride, padding)
REUSE_COMBOS = [(f, r) for f in (False, True) for r in (False, True)]


# ---- specs ----------------------------------------------------------------------------------------

def _cascade(exits: list[ExitSpec], img_size: int, num_classes: int, **kwargs) -> CascadeSpec:
    exits = [e if k else replace(e, feature_reuse=False, relation_reuse=False) for k, e in enumerate(exits)]
    names = NAMES if len(exits) == 3 else tuple(f"exit{k + 1}" for k in range(len(exits)))
    return CascadeSpec(img_size=img_size, in_chans=3, num_classes=num_classes, exits=tuple(exits),
                       exit_names=names, **kwargs)


def local_published_spec(name: str) -> CascadeSpec:
    """The published cascades written out by hand (README section 2), both reuses on."""
    if name == "dvt_deit_small":
        exits = [ExitSpec(stem=PatchStem(p, p, pad), embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0,
                          qkv_bias=True, norm_eps=1e-6, pos_embed="learned", feature_reuse=True, relation_reuse=True)
                 for p, pad in DEIT_PATCHES]
    else:
        dim, depth, heads, ratio = (256, 12, 4, 2.0) if name == "dvt_t2t_vit_12" else (384, 14, 6, 3.0)
        exits = [ExitSpec(stem=T2TStem(u), embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=ratio,
                          qkv_bias=False, norm_eps=1e-5, pos_embed="sinusoid", feature_reuse=True,
                          relation_reuse=True) for u in T2T_UNFOLDS]
    return _cascade(exits, 224, 1000, drop_path_rate=0.1)


def published_spec(name: str) -> CascadeSpec:
    """The package's spec builder when it exists, else the hand-written spec."""
    try:
        from dvt_ms.models import spec_for
    except ImportError:
        return local_published_spec(name)
    return spec_for(name)


def reference_deit_spec(feature_reuse: bool = True, relation_reuse: bool = True) -> CascadeSpec:
    """32px, grids 4 / 6 / 8 (patch 8, patch 6 pad 2, patch 4), embed 64, depth 4, heads 2, 10 classes."""
    exits = [ExitSpec(stem=PatchStem(p, p, pad), embed_dim=64, depth=4, num_heads=2, mlp_ratio=4.0, qkv_bias=True,
                      norm_eps=1e-6, pos_embed="learned", feature_reuse=feature_reuse, relation_reuse=relation_reuse)
             for p, pad in ((8, 0), (6, 2), (4, 0))]
    return _cascade(exits, 32, 10)


def reference_t2t_spec(feature_reuse: bool = True, relation_reuse: bool = True, variant: str = "performer",
                  **kwargs) -> CascadeSpec:
    """32px, grids 2 / 3 / 4, embed 32, depth 2, heads 2, token dim 16, 10 classes."""
    unfolds = (((7, 4, 2), (3, 2, 1), (3, 2, 1)), ((9, 2, 0), (3, 2, 1), (3, 2, 1)),
               ((3, 2, 1), (3, 2, 1), (3, 2, 1)))
    exits = [ExitSpec(stem=T2TStem(u, variant=variant, token_dim=16), embed_dim=32, depth=2, num_heads=2,
                      mlp_ratio=2.0, qkv_bias=False, norm_eps=1e-5, pos_embed="sinusoid",
                      feature_reuse=feature_reuse, relation_reuse=relation_reuse) for u in unfolds]
    return _cascade(exits, 32, 10, **kwargs)


def mixed_spec() -> CascadeSpec:
    """Exits of different widths, depths and head counts (a T2T exit between two patch exits)."""
    exits = (
        ExitSpec(stem=PatchStem(8, 8), embed_dim=48, depth=2, num_heads=3, mlp_ratio=2.0, qkv_bias=True,
                 norm_eps=1e-6, pos_embed="learned"),
        ExitSpec(stem=T2TStem(((9, 2, 0), (3, 2, 1), (3, 2, 1)), variant="transformer", token_dim=8),
                 embed_dim=64, depth=3, num_heads=2, mlp_ratio=2.0, qkv_bias=False, norm_eps=1e-5,
                 pos_embed="sinusoid", feature_reuse=True, relation_reuse=True),
        ExitSpec(stem=PatchStem(4, 4), embed_dim=32, depth=1, num_heads=4, mlp_ratio=3.0, qkv_bias=True,
                 norm_eps=1e-6, pos_embed="learned", feature_reuse=True, relation_reuse=True),
    )
    return CascadeSpec(img_size=32, in_chans=3, num_classes=7, exits=exits, exit_names=("a", "b", "c"),
                       reuse_channels=12, reuse_hidden=20, relation_expansion=2)


@pytest.fixture(scope="module")
def published_models():
    torch.manual_seed(0)
    return {name: td.build_torch_dvt(published_spec(name)).eval() for name in PUBLISHED}


# ---- published models -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", PUBLISHED)
def test_published_spec_matches_package(name):
    try:
        from dvt_ms.models import spec_for
    except ImportError:
        pytest.skip("dvt_ms.models.spec_for is not available")
    assert spec_for(name) == local_published_spec(name)


@requires_torch
@pytest.mark.parametrize("name", PUBLISHED)
def test_state_dict_matches_official_keys(published_models, name):
    model = published_models[name]
    mine = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert mine == official_key_rows(name)  # same keys, same order, same shapes


@requires_torch
@pytest.mark.parametrize("name", PUBLISHED)
def test_parameter_count_and_frozen_tensors(published_models, name):
    model = published_models[name]
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[name]
    frozen = sorted(k for k, p in model.named_parameters() if not p.requires_grad)
    if name == "dvt_deit_small":
        assert frozen == []
    else:
        expected = sorted([f"{n}.pos_embed" for n in NAMES]
                          + [f"{n}.tokens_to_token.attention{i}.w" for n in NAMES for i in (1, 2)])
        assert frozen == expected


@requires_torch
@pytest.mark.parametrize("name", PUBLISHED)
def test_published_forward(published_models, name):
    model = published_models[name]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224))
    assert isinstance(out, tuple) and len(out) == 3
    for logits in out:
        assert logits.shape == (2, 1000) and torch.isfinite(logits).all()


@requires_torch
def test_published_exit_outputs(published_models):
    model = published_models["dvt_t2t_vit_12"]
    with torch.no_grad():
        outs = model.forward_exits(torch.randn(1, 3, 224, 224))
    for (logits, tokens, rels), grid in zip(outs, (7, 10, 14), strict=True):
        assert logits.shape == (1, 1000)
        assert tokens.shape == (1, grid * grid + 1, 256)
        assert len(rels) == 12 and all(r.shape == (1, 4, grid * grid + 1, grid * grid + 1) for r in rels)


# ---- resizing -------------------------------------------------------------------------------------

@requires_torch
@pytest.mark.parametrize("src,dst,inter", [(7, 10, 14), (10, 14, 20), (4, 6, 8), (6, 8, 12), (2, 3, 4), (5, 5, 5)])
def test_resize_token_grid_official_rule(src, dst, inter):
    x = torch.randn(2, 5, src * src, dtype=torch.float64)
    official = F.adaptive_avg_pool2d(F.interpolate(x.reshape(2, 5, src, src), size=(inter, inter), mode="nearest"),
                                     (dst, dst)).reshape(2, 5, dst * dst)
    got = td.resize_token_grid(x, src, dst)
    torch.testing.assert_close(got, official, rtol=0, atol=0)
    torch.testing.assert_close(td.GridResize(src, dst)(x), official, rtol=0, atol=0)


def official_style_relation_resize(rel, src: int, dst: int):
    """The official forward_features sequence (key axis, then query axis via transposes and reshapes)."""
    batch, chans, n, _ = rel.shape
    inter = math.ceil(dst / src) * src

    def resample(t):
        return F.adaptive_avg_pool2d(F.interpolate(t, size=(inter, inter), mode="nearest"), (dst, dst))

    body = resample(rel[..., 1:].reshape(batch * chans, n, src, src)).reshape(batch * chans, n, dst * dst)
    step = torch.cat((rel[..., 0].reshape(batch * chans, n, 1), body), dim=2).transpose(1, 2)
    cls_row = step[:, :, :1]
    body = resample(step[:, :, 1:].reshape(batch * chans, dst * dst + 1, src, src))
    body = body.reshape(batch * chans, dst * dst + 1, dst * dst)
    return torch.cat((cls_row, body), dim=2).transpose(1, 2).reshape(batch, chans, dst * dst + 1, dst * dst + 1)


@requires_torch
@pytest.mark.parametrize("src,dst", [(7, 10), (10, 14), (4, 6), (2, 3)])
def test_resize_relations(src, dst):
    rel = torch.randn(2, 6, src * src + 1, src * src + 1, dtype=torch.float64)
    got = td.resize_relations(rel, src, dst)
    assert got.shape == (2, 6, dst * dst + 1, dst * dst + 1)
    torch.testing.assert_close(got, official_style_relation_resize(rel, src, dst), rtol=0, atol=1e-14)


@requires_torch
def test_sinusoid_table():
    table = td.sinusoid_table(5, 6)
    assert table.shape == (1, 5, 6) and table.dtype == torch.float32
    for p in range(5):
        for j in range(6):
            angle = p / 10000 ** (2 * (j // 2) / 6)
            assert table[0, p, j].item() == pytest.approx(math.sin(angle) if j % 2 == 0 else math.cos(angle),
                                                          abs=1e-7)


# ---- tiny cascades --------------------------------------------------------------------------------

def _reuse_keys(model) -> tuple[bool, bool]:
    keys = list(model.state_dict())
    return any("feature_resuse_mlp" in k for k in keys), any("relation_reuse_conv" in k for k in keys)


@requires_torch
@pytest.mark.parametrize("feature_reuse,relation_reuse", REUSE_COMBOS)
@pytest.mark.parametrize("kind", ["deit", "t2t", "t2t_transformer"])
def test_tiny_reuse_combinations(kind, feature_reuse, relation_reuse):
    torch.manual_seed(1)
    if kind == "deit":
        spec = reference_deit_spec(feature_reuse, relation_reuse)
    else:
        spec = reference_t2t_spec(feature_reuse, relation_reuse,
                             variant="transformer" if kind == "t2t_transformer" else "performer")
    model = td.build_torch_dvt(spec).eval()
    assert _reuse_keys(model) == (feature_reuse, relation_reuse)
    first = getattr(model, spec.exit_names[0])
    assert first.relation_reuse_conv is None and all(b.feature_resuse_mlp is None for b in first.blocks)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        again = model(x)
    assert len(out) == 3 and all(o.shape == (2, 10) for o in out)
    for a, b in zip(out, again, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # eval mode is deterministic

    # the cascade's forward is the chain of the exits' own forwards
    e1, e2, e3 = (getattr(model, n) for n in spec.exit_names)
    with torch.no_grad():
        l1, t1, r1 = e1(x)
        l2, t2, r2 = e2(x, t1 if feature_reuse else None, r1 if relation_reuse else None)
        l3, _, _ = e3(x, t2 if feature_reuse else None, r2 if relation_reuse else None)
    for a, b in zip(out, (l1, l2, l3), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    # what is reused changes the downstream exit
    with torch.no_grad():
        if relation_reuse:
            assert not torch.allclose(e2(x, t1 if feature_reuse else None, None)[0], l2)
        if feature_reuse:
            assert not torch.allclose(e2(x, torch.randn_like(t1), r1 if relation_reuse else None)[0], l2)
        else:
            with pytest.raises(RuntimeError):
                e2(x, t1, None)


@requires_torch
def test_tiny_training_step_reaches_every_parameter():
    torch.manual_seed(2)
    model = td.build_torch_dvt(reference_t2t_spec(drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2)).train()
    out = model(torch.randn(3, 3, 32, 32))
    sum(F.cross_entropy(o, torch.tensor([0, 1, 2])) for o in out).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
    # dropout and drop path are active in training mode
    torch.manual_seed(3)
    a = model(torch.ones(2, 3, 32, 32))[2]
    b = model(torch.ones(2, 3, 32, 32))[2]
    assert not torch.allclose(a, b)


@requires_torch
def test_drop_path_schedule_and_rates():
    spec = reference_deit_spec()
    spec = replace(spec, drop_rate=0.25, attn_drop_rate=0.125, drop_path_rate=0.3)
    model = td.build_torch_dvt(spec)
    for exit_ in model.exits:
        assert [b.drop_path.p for b in exit_.blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3])
        assert exit_.pos_drop.p == 0.25
        assert exit_.blocks[0].attn.attn_drop.p == 0.125 and exit_.blocks[0].mlp.drop.p == 0.25


@requires_torch
def test_mixed_exit_sizes():
    torch.manual_seed(4)
    spec = mixed_spec()
    model = td.build_torch_dvt(spec).eval()
    sd = model.state_dict()
    assert sd["b.relation_reuse_conv.0.weight"].shape == (2 * 3 * 2, 2 * 3, 1, 1)  # in = depth*heads of "a"
    assert sd["b.relation_reuse_conv.2.weight"].shape == (3 * 2, 2 * 3 * 2, 1, 1)
    assert sd["c.relation_reuse_conv.0.weight"].shape == (2 * 1 * 4, 3 * 2, 1, 1)
    assert sd["b.blocks.0.feature_resuse_mlp.0.weight"].shape == (48,)  # upstream width
    assert sd["b.blocks.0.feature_resuse_mlp.1.fc1.weight"].shape == (20, 48)
    assert sd["b.blocks.0.feature_resuse_mlp.1.fc2.weight"].shape == (12, 20)
    assert sd["b.blocks.0.norm2.weight"].shape == (64 + 12,)
    assert sd["c.blocks.0.feature_resuse_mlp.1.fc1.weight"].shape == (20, 64)
    assert sd["b.tokens_to_token.attention1.attn.qkv.weight"].shape == (24, 3 * 81)
    with torch.no_grad():
        outs = model.forward_exits(torch.randn(2, 3, 32, 32))
    assert [o[0].shape for o in outs] == [(2, 7)] * 3
    assert [o[1].shape for o in outs] == [(2, 17, 48), (2, 10, 64), (2, 65, 32)]
    assert [len(o[2]) for o in outs] == [2, 3, 1]
    assert outs[2][2][0].shape == (2, 4, 65, 65)


@requires_torch
def test_with_reuse_off_has_no_reuse_modules():
    spec = with_reuse(reference_t2t_spec(), feature_reuse=False, relation_reuse=False)
    model = td.build_torch_dvt(spec)
    assert _reuse_keys(model) == (False, False)
    with pytest.raises(RuntimeError):
        getattr(model, spec.exit_names[1])(torch.randn(1, 3, 32, 32), torch.randn(1, 5, 32))


# ---- building blocks against their definitions ----------------------------------------------------

@requires_torch
def test_exit_logits_include_reused_relations():
    torch.manual_seed(5)
    spec = reference_deit_spec(feature_reuse=False, relation_reuse=True)
    model = td.build_torch_dvt(spec).eval()
    e1, e2, _ = model.exits
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, _, r1 = e1(x)
        _, _, r2 = e2(x, None, r1)
        reused = e2.reused_relations(r1)
        tokens = e2.stem(x)
        tokens = torch.cat((e2.cls_token.expand(2, -1, -1), tokens), 1) + e2.pos_embed
        block = e2.blocks[0]
        q, k, _ = block.attn.qkv(block.norm1(tokens)).reshape(2, 37, 3, 2, 32).permute(2, 0, 3, 1, 4)
        plain = q @ k.transpose(-2, -1) / math.sqrt(32)
    assert len(reused) == 4 and reused[0].shape == (2, 2, 37, 37)
    torch.testing.assert_close(r2[0], plain + reused[0], rtol=1e-5, atol=1e-5)
    # the mapped relations: conv over the concatenated upstream logits, then the resize
    with torch.no_grad():
        mapped = e2.relation_reuse_conv(torch.cat(r1, 1))
        expected = td.resize_relations(mapped, 4, 6)
    torch.testing.assert_close(torch.cat(reused, 1), expected, rtol=0, atol=0)


@requires_torch
def test_block_feature_reuse_definition():
    torch.manual_seed(6)
    block = td.Block(16, 2, 2.0, True, 1e-6, reuse_dim=8, reuse_hidden=12, reuse_channels=4,
                     reuse_grids=(2, 3)).eval()
    x, up = torch.randn(2, 10, 16), torch.randn(2, 5, 8)
    with torch.no_grad():
        got, _ = block(x, features_to_be_reused=up)
        attended, _ = block.attn(block.norm1(x))
        h = x + attended
        ln, mlp = block.feature_resuse_mlp
        f = mlp.fc2(F.gelu(mlp.fc1(ln(up))))[:, 1:]  # [2, 4, 4]
        grid = F.adaptive_avg_pool2d(F.interpolate(f.transpose(1, 2).reshape(2, 4, 2, 2), size=(4, 4)), (3, 3))
        f = torch.cat((torch.zeros(2, 1, 4), grid.reshape(2, 4, 9).transpose(1, 2)), dim=1)
        expected = h + block.mlp(block.norm2(torch.cat((h, f), dim=2)))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@requires_torch
def test_token_performer_definition():
    torch.manual_seed(7)
    perf = td.TokenPerformer(dim=12, emb=8, kernel_ratio=0.5).eval()
    assert perf.w.shape == (4, 8) and not perf.w.requires_grad
    # orthogonal rows scaled by sqrt(m)
    torch.testing.assert_close(perf.w @ perf.w.T, 4.0 * torch.eye(4), rtol=1e-5, atol=1e-5)
    x = torch.randn(2, 5, 12)
    with torch.no_grad():
        got = perf(x)
        k, q, v = perf.kqv(perf.norm1(x)).split(8, dim=-1)

        def phi(t):
            return torch.exp(torch.einsum("bti,mi->btm", t, perf.w) - (t * t).sum(-1, keepdim=True) / 2) / 2.0

        kp, qp = phi(k), phi(q)
        # explicit (quadratic) form of the linear attention: sum_s <qp_t, kp_s> v_s / sum_s <qp_t, kp_s>
        scores = torch.einsum("btm,bsm->bts", qp, kp)
        y = torch.einsum("bts,bse->bte", scores, v) / (scores.sum(-1, keepdim=True) + 1e-8)
        y = v + perf.proj(y)
        expected = y + perf.mlp(perf.norm2(y))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert perf.norm1.eps == 1e-5 and perf.norm2.eps == 1e-5
    assert perf.dp.p == 0.1 and perf.mlp[3].p == 0.1


@requires_torch
def test_token_transformer_definition():
    torch.manual_seed(8)
    tt = td.TokenTransformer(dim=27, emb=6).eval()
    x = torch.randn(2, 5, 27)
    with torch.no_grad():
        got = tt(x)
        q, k, v = tt.attn.qkv(tt.norm1(x)).split(6, dim=-1)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(27), dim=-1)  # scale from the input width
        y = v + tt.attn.proj(weights @ v)
        expected = y + tt.mlp.fc2(F.gelu(tt.mlp.fc1(tt.norm2(y))))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert tt.attn.qkv.bias is None


@requires_torch
def test_t2t_stem_shapes():
    torch.manual_seed(9)
    spec = reference_t2t_spec()
    for exit_, grid in zip(td.build_torch_dvt(spec).exits, (2, 3, 4), strict=True):
        with torch.no_grad():
            assert exit_.stem(torch.randn(2, 3, 32, 32)).shape == (2, grid * grid, 32)


@requires_torch
def test_initialisation():
    torch.manual_seed(10)
    model = td.build_torch_dvt(reference_deit_spec())
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0), name
        elif isinstance(module, torch.nn.Linear):
            assert module.bias is None or torch.all(module.bias == 0), name
    weights = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, torch.nn.Linear)])
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.exits[0].cls_token.std().item() == pytest.approx(0.02, rel=0.5)
    assert model.exits[0].pos_embed.requires_grad
    assert model.exits[2].pos_embed.std().item() == pytest.approx(0.02, rel=0.1)


@requires_torch
def test_state_dict_round_trip_with_module_prefix():
    torch.manual_seed(11)
    src = td.build_torch_dvt(reference_t2t_spec()).eval()
    dst = td.build_torch_dvt(reference_t2t_spec()).eval()
    prefixed = {f"module.{k}": v for k, v in src.state_dict().items()}
    dst.load_state_dict({k.removeprefix("module."): v for k, v in prefixed.items()}, strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(src(x), dst(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_reference_package_imports_without_torch():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import dvt_ms.reference\n"
        "try:\n"
        "    import dvt_ms.reference.torch_dvt\n"
        "except ImportError:\n"
        "    print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
