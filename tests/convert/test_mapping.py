"""Tests of the pure state-dict mapping, the rule table and model identification."""

from __future__ import annotations

import numpy as np
import pytest

import dvt_ms
from dvt_ms.convert.errors import ConvertError
from dvt_ms.convert.mapping import (
    MappingError,
    Rename,
    expected_state_shapes,
    identify_model,
    map_state_dict,
    strip_wrapper_prefixes,
    to_torch_state_dict,
)
from dvt_ms.models import DVTCascade
from tests.helpers import PUBLISHED, official_shapes, requires_torch, tiny_spec, tiny_t2t_spec, torch_reference

EXPECTED = {"a.cls_token": (1, 1, 4), "a.norm.weight": (4,), "a.head.weight": (3, 4)}


def source(dtype=np.float32, prefix: str = "", seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    return {prefix + k: rng.randn(*shape).astype(dtype) for k, shape in reversed(EXPECTED.items())}


def test_exact_fill_in_model_order_bit_exact():
    state = source()
    out = map_state_dict(state, EXPECTED)
    assert list(out) == list(EXPECTED)
    for name in EXPECTED:
        assert out[name].dtype == np.float32
        assert out[name].tobytes() == state[name].tobytes()


def test_pure_function_leaves_input_alone():
    state = source(np.float16, prefix="module.")
    snapshot = {k: v.copy() for k, v in state.items()}
    map_state_dict(state, EXPECTED)
    assert list(state) == list(snapshot)
    assert all(state[k].dtype == np.float16 and np.array_equal(state[k], snapshot[k]) for k in state)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_floating_tensors_become_float32(dtype):
    state = source(dtype)
    out = map_state_dict(state, EXPECTED)
    for name in EXPECTED:
        assert out[name].dtype == np.float32
        np.testing.assert_array_equal(out[name], state[name].astype(np.float32))


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(prefix):
    out = map_state_dict(source(prefix=prefix), EXPECTED)
    assert list(out) == list(EXPECTED)
    stripped, removed = strip_wrapper_prefixes(source(prefix=prefix))
    assert "".join(removed) == prefix and set(stripped) == set(EXPECTED)


def test_prefix_on_some_keys_only_is_an_error():
    state = source()
    state["module.a.norm.weight"] = state.pop("a.norm.weight")
    with pytest.raises(MappingError) as info:
        map_state_dict(state, EXPECTED)
    assert info.value.mismatch.missing == ["a.norm.weight"]
    assert info.value.mismatch.unexpected == ["module.a.norm.weight"]


def test_every_kind_of_difference_is_listed_at_once():
    state = source()
    del state["a.norm.weight"]
    state["a.extra.bias"] = np.zeros(2, np.float32)
    state["a.head.weight"] = np.zeros((5, 4), np.float32)
    state["a.cls_token"] = np.zeros((1, 1, 4), np.int64)
    with pytest.raises(MappingError) as info:
        map_state_dict(state, EXPECTED)
    m = info.value.mismatch
    assert m.missing == ["a.norm.weight"]
    assert m.unexpected == ["a.extra.bias"]
    assert m.mis_shaped == [("a.head.weight", (5, 4), (3, 4))]
    assert m.bad_dtype == [("a.cls_token", "int64")]
    text = str(info.value)
    for part in ("a.norm.weight", "a.extra.bias", "a.head.weight: checkpoint [5, 4] vs model [3, 4]", "int64"):
        assert part in text


def test_rename_rules_apply_both_ways_and_catch_duplicates():
    renames = (Rename(torch="ln", mindspore="norm"),)
    state = source()
    state["a.ln.weight"] = state.pop("a.norm.weight")
    out = map_state_dict(state, EXPECTED, renames=renames)
    np.testing.assert_array_equal(out["a.norm.weight"], state["a.ln.weight"])
    back = to_torch_state_dict(out, EXPECTED, renames=renames)
    assert set(back) == {"a.cls_token", "a.ln.weight", "a.head.weight"}
    # only whole dot-separated segments are renamed
    kept = map_state_dict({"a.kln.weight": np.ones(2, np.float32)}, {"a.kln.weight": (2,)}, renames=renames)
    assert list(kept) == ["a.kln.weight"]

    state["a.norm.weight"] = state["a.ln.weight"]  # both names reach the same parameter
    with pytest.raises(MappingError, match=r"a.norm.weight \(duplicate of a.ln.weight\)"):
        map_state_dict(state, EXPECTED, renames=renames)


def test_to_torch_state_dict_is_strict():
    with pytest.raises(MappingError, match="missing"):
        to_torch_state_dict({"a.cls_token": np.zeros((1, 1, 4), np.float32)}, EXPECTED)


@requires_torch
@pytest.mark.parametrize("make_spec", [tiny_spec, tiny_t2t_spec], ids=["deit", "t2t"])
def test_expected_shapes_come_from_the_model_and_equal_the_torch_keys(make_spec):
    spec = make_spec()
    shapes = expected_state_shapes(spec)
    model = DVTCascade(spec)
    assert shapes == {k: tuple(p.shape) for k, p in model.parameters_dict().items()}
    reference = torch_reference(spec, seed=0).state_dict()
    assert list(shapes) == list(reference)
    assert all(shapes[k] == tuple(v.shape) for k, v in reference.items())


@pytest.mark.slow
def test_identify_the_published_models_from_their_official_keys():
    for name in PUBLISHED:
        found = identify_model(official_shapes(name))
        assert (found.name, found.overrides) == (name, {})
        assert found.spec == dvt_ms.spec_for(name)


def test_identify_infers_the_number_of_classes():
    shapes = official_shapes("dvt_t2t_vit_12")
    for key in list(shapes):
        if key.endswith("head.weight"):
            shapes[key] = (100, shapes[key][1])
        elif key.endswith("head.bias"):
            shapes[key] = (100,)
    found = identify_model(shapes)
    assert found.name == "dvt_t2t_vit_12" and found.overrides == {"num_classes": 100}


def test_unknown_layout_is_reported():
    shapes = expected_state_shapes(tiny_spec())
    with pytest.raises(ConvertError) as info:
        identify_model(shapes)
    text = str(info.value)
    assert "cannot tell the model" in text and "width 64, 4 blocks, patch stem" in text and "--model" in text
