"""The three published cascades: parameter names, shapes and counts equal the official checkpoints."""

from __future__ import annotations

import pytest

import dvt_ms
from tests.helpers import PUBLISHED, official_shapes

COUNTS = {"dvt_t2t_vit_12": 22_461_516, "dvt_t2t_vit_14": 67_881_836, "dvt_deit_small": 70_442_232}


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameters_mirror_official_keys(name):
    model = dvt_ms.create_model(name)
    mine = {p.name: tuple(p.shape) for p in model.get_parameters()}
    ref = official_shapes(name)
    assert sorted(set(mine) - set(ref)) == []
    assert sorted(set(ref) - set(mine)) == []
    assert mine == ref
    assert sum(p.size for p in model.get_parameters()) == COUNTS[name]
    frozen = sorted(p.name for p in model.get_parameters() if not p.requires_grad)
    if "t2t" in name:
        assert frozen == sorted(k for k in ref if k.endswith(".pos_embed") or k.endswith(".w"))
    else:
        assert frozen == []


@pytest.mark.parametrize("name", ["dvt_deit_small_2exit", "dvt_vit_base_2exit"])
def test_two_exit_models(name):
    spec = dvt_ms.spec_for(name)
    assert spec.grids() == [7, 14]
    assert [e.stem.patch_size for e in spec.exits] == [32, 16]
    assert spec.exit_names == ("less_less_token", "normal_token")
    assert spec.exits[1].feature_reuse and spec.exits[1].relation_reuse


def test_published_stems():
    t2t = dvt_ms.spec_for("dvt_t2t_vit_12")
    assert [e.stem.unfolds[0] for e in t2t.exits] == [(14, 8, 3), (11, 6, 5), (7, 4, 2)]
    deit = dvt_ms.spec_for("dvt_deit_small")
    assert [(e.stem.patch_size, e.stem.padding) for e in deit.exits] == [(32, 0), (23, 3), (16, 0)]
    assert t2t.grids() == deit.grids() == [7, 10, 14]


def test_every_argument_overridable():
    spec = dvt_ms.spec_for("dvt_t2t_vit_12", num_classes=10, img_size=112, exit_grids=[7, 14], depth=[2, 3],
                           embed_dim=128, num_heads=2, drop_path_rate=0.2, feature_reuse=False)
    assert spec.num_classes == 10 and spec.img_size == 112 and spec.grids() == [7, 14]
    assert [e.depth for e in spec.exits] == [2, 3]
    assert not spec.exits[1].feature_reuse and spec.exits[1].relation_reuse
    model = dvt_ms.create_model("dvt_t2t_vit_12", num_classes=10, img_size=112, exit_grids=[7, 14], depth=[2, 3],
                                embed_dim=128, num_heads=2)
    assert model.num_exits == 2
