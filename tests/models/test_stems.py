"""The stem spec types (``dvt_ms.models.stems``): grids, checks, MACs, parameter prefixes, the cells built
from them, and that no other module switches on a stem's kind."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

import dvt_ms
from dvt_ms.flops import exit_breakdown
from dvt_ms.models import DVTExit
from dvt_ms.models.stems import STEM_TYPES, PatchStem, Stem, T2TStem
from tests.helpers import REPO, requires_torch, tiny_t2t_spec

OFFICIAL_T2T = {7: ((14, 8, 3), (3, 2, 1), (3, 2, 1)), 10: ((11, 6, 5), (3, 2, 1), (3, 2, 1)),
                14: ((7, 4, 2), (3, 2, 1), (3, 2, 1))}


def test_grids_of_the_published_stems():
    assert [PatchStem(p, p, pad).grid(224) for p, pad in ((32, 0), (23, 3), (16, 0))] == [7, 10, 14]
    grids = {7: (28, 14, 7), 10: (38, 19, 10), 14: (56, 28, 14)}  # after each soft split
    for grid, unfolds in OFFICIAL_T2T.items():
        stem = T2TStem(unfolds)
        assert stem.grid(224) == grid and stem.grids(224) == grids[grid]


def test_t2t_unfolds_become_int_triples_and_the_stem_stays_hashable():
    stem = T2TStem([[7, 4, 2], [3.0, 2, 1], (3, 2, 1)])
    assert stem.unfolds == ((7, 4, 2), (3, 2, 1), (3, 2, 1)) and stem == T2TStem(OFFICIAL_T2T[14])
    assert hash(stem) == hash(T2TStem(OFFICIAL_T2T[14]))


@pytest.mark.parametrize(("stem", "message"), [
    (T2TStem(((3, 2, 1), (3, 2, 1))), "t2t_unfolds needs 3"),
    (T2TStem(OFFICIAL_T2T[7], variant="mixer"), "t2t_variant must be"),
    (T2TStem(((64, 64, 0), (3, 2, 1), (3, 2, 1))), "too small"),
    (PatchStem(64, 64), "too small"),
])
def test_check_names_the_problem_and_the_spec_names_the_exit(stem, message):
    with pytest.raises(ValueError, match=message):
        stem.check(32)
    spec = dvt_ms.spec_for("dvt_vit", img_size=32, exit_grids=[4], embed_dim=16, num_heads=2, depth=1)
    with pytest.raises(ValueError, match=rf"exit 1 \(normal_token\): .*{message}"):
        replace(spec, exits=(replace(spec.exits[0], stem=stem),))


def test_a_stem_must_be_a_stem_type():
    spec = dvt_ms.spec_for("dvt_vit", img_size=32, exit_grids=[4], embed_dim=16, num_heads=2, depth=1)
    with pytest.raises(ValueError, match="stem must be a PatchStem or T2TStem, got 'patch'"):
        replace(spec, exits=(replace(spec.exits[0], stem="patch"),))


def test_macs_are_the_flops_counters_stem_entry():
    for name in ("dvt_t2t_vit_12", "dvt_deit_small"):
        spec = dvt_ms.spec_for(name)
        for k, e in enumerate(spec.exits):
            assert e.stem.macs(spec.img_size, spec.in_chans, e.embed_dim) == exit_breakdown(spec, k)["stem"]
    assert PatchStem(16, 16).macs(224, 3, 384) == 14 * 14 * 3 * 16 * 16 * 384
    tokens, width = 28 * 28, 3 * 14 * 14  # the first token module of the official 7x7 stem
    linear = tokens * (width * 3 * 64 + 3 * 64 * 64)
    assert T2TStem(OFFICIAL_T2T[7], variant="transformer").token_module_macs(tokens, width) == \
        linear + 2 * tokens * tokens * 64
    assert T2TStem(OFFICIAL_T2T[7]).token_module_macs(tokens, width) == linear + tokens * (4 * 32 * 64 + 32)


def test_every_stem_type_has_its_own_prefix_and_label():
    assert [t.attribute for t in STEM_TYPES] == ["patch_embed", "tokens_to_token"]
    assert len({t.label for t in STEM_TYPES}) == len(STEM_TYPES)


@pytest.mark.parametrize(("stem", "prefix"), [(PatchStem(8, 8), "patch_embed"),
                                              (T2TStem(((7, 4, 2), (3, 2, 1), (3, 2, 1)), token_dim=8),
                                               "tokens_to_token")])
def test_the_exit_holds_the_cell_under_the_stem_prefix(stem, prefix):
    spec = tiny_t2t_spec(exit_grids=[4], depth=1)
    spec = replace(spec, exits=(replace(spec.exits[0], stem=stem),))
    exit_cell = DVTExit(spec, 0)
    stem_params = [n for n in exit_cell.parameters_dict() if n.startswith(f"{prefix}.")]
    assert stem_params and exit_cell.stem_attribute == prefix
    other = {t.attribute for t in STEM_TYPES} - {prefix}
    assert not any(n.split(".")[0] in other for n in exit_cell.parameters_dict())


@requires_torch
def test_the_reference_builds_every_stem_type_and_refuses_others():
    from dvt_ms.reference import torch_dvt as td

    assert set(td.STEM_BUILDERS) == set(STEM_TYPES)

    @dataclass(frozen=True)
    class OtherStem(Stem):
        def grids(self, img_size: int) -> tuple[int, ...]:
            return (img_size,)

    with pytest.raises(TypeError, match="no module for a OtherStem stem"):
        td.build_stem(OtherStem(), 32, 3, 16)


def test_no_module_but_stems_switches_on_the_kind_of_stem():
    package = Path(REPO) / "dvt_ms"
    pattern = re.compile(r'stem ==|stem !=|== "t2t"|== "patch"')
    found = [f"{path}:{n}" for path in sorted(package.rglob("*.py")) if path.name != "stems.py"
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not found, found

