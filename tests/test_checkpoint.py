"""Tests of MindSpore checkpoint I/O: round trips in both formats, metadata, strictness, atomic writes."""

from __future__ import annotations

import os

import mindspore as ms
import numpy as np
import pytest

import dvt_ms
from dvt_ms.checkpoint import (
    METADATA_KEY,
    CheckpointError,
    compare_shapes,
    load_checkpoint,
    read_checkpoint,
    read_metadata,
    save_checkpoint,
)
from dvt_ms.models import DVTCascade
from tests.helpers import tiny_spec

META = {"model": "dvt_vit", "num_classes": 10, "flops": [0.1, 0.2, 0.3], "dynamic_threshold": [[0.5, 0.25, 1.0]]}


@pytest.fixture(scope="module")
def spec():
    return tiny_spec()


@pytest.fixture(scope="module")
def model(spec):
    return DVTCascade(spec)


def params_of(model) -> dict[str, np.ndarray]:
    return {k: p.asnumpy().copy() for k, p in model.parameters_dict().items()}


def perturbed(model, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    return {k: rng.randn(*v.shape).astype(np.float32) for k, v in params_of(model).items()}


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_round_trip_with_metadata(spec, model, tmp_path, suffix):
    path = tmp_path / f"m{suffix}"
    values = perturbed(model)
    assert save_checkpoint(values, path, metadata=META) == str(path)
    assert read_metadata(path) == META

    fresh = DVTCascade(spec)
    result = load_checkpoint(fresh, path)
    assert result.missing == [] and result.unexpected == [] and result.metadata == META
    loaded = params_of(fresh)
    assert list(loaded) == list(values)
    for name, value in values.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left behind
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask


def test_save_a_model_without_metadata(model, tmp_path):
    path = tmp_path / "plain.ckpt"
    save_checkpoint(model, path)
    assert read_metadata(path) is None
    arrays, metadata = read_checkpoint(path)
    assert metadata is None and METADATA_KEY not in arrays
    assert list(arrays) == list(model.parameters_dict())


def test_safetensors_output_loads_with_mindspore(model, tmp_path):
    path = tmp_path / "m.safetensors"
    values = perturbed(model, seed=2)
    save_checkpoint(values, path, metadata=META)
    loaded = ms.load_checkpoint(str(path), format="safetensors")
    assert set(loaded) == set(values)
    for name, value in values.items():
        np.testing.assert_array_equal(loaded[name].asnumpy(), value)


def test_create_model_loads_checkpoint_path(spec, tmp_path):
    path = tmp_path / "m.ckpt"
    values = perturbed(DVTCascade(spec), seed=3)
    save_checkpoint(values, path)
    model = dvt_ms.create_model("dvt_vit", img_size=32, exit_grids=[4, 6, 8], embed_dim=64, depth=4, num_heads=2,
                                num_classes=10, checkpoint_path=str(path))
    np.testing.assert_array_equal(model.parameters_dict()["normal_token.head.weight"].asnumpy(),
                                  values["normal_token.head.weight"])


def test_strict_load_lists_every_problem_and_loads_nothing(spec, model, tmp_path):
    values = perturbed(model, seed=4)
    values.pop("less_token.norm.bias")
    values["less_token.extra.weight"] = np.zeros(3, np.float32)
    values["normal_token.head.weight"] = np.zeros((7, 64), np.float32)
    path = tmp_path / "bad.ckpt"
    save_checkpoint(values, path)

    fresh = DVTCascade(spec)
    before = params_of(fresh)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(fresh, path)
    text = str(info.value)
    assert str(path) in text
    assert "1 missing" in text and "less_token.norm.bias" in text
    assert "1 unexpected" in text and "less_token.extra.weight" in text
    assert "normal_token.head.weight: checkpoint [7, 64] vs model [10, 64]" in text
    assert "\n" not in text
    after = params_of(fresh)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_non_strict_reports_missing_and_unexpected(spec, model, tmp_path):
    values = perturbed(model, seed=5)
    values.pop("less_token.norm.bias")
    values["optimizer.step"] = np.zeros(1, np.float32)
    path = tmp_path / "partial.ckpt"
    save_checkpoint(values, path)
    fresh = DVTCascade(spec)
    result = load_checkpoint(fresh, path, strict=False)
    assert result.missing == ["less_token.norm.bias"] and result.unexpected == ["optimizer.step"]
    np.testing.assert_array_equal(fresh.parameters_dict()["less_token.norm.weight"].asnumpy(),
                                  values["less_token.norm.weight"])

    values["normal_token.head.bias"] = np.zeros(3, np.float32)
    save_checkpoint(values, path)
    with pytest.raises(CheckpointError, match=r"normal_token.head.bias: checkpoint \[3\] vs model \[10\]"):
        load_checkpoint(DVTCascade(spec), path, strict=False)


def test_failed_write_leaves_previous_file_and_no_temp(model, tmp_path, monkeypatch):
    path = tmp_path / "m.ckpt"
    save_checkpoint(model, path, metadata={"run": 1})
    original = path.read_bytes()

    def broken(save_obj, ckpt_file_name, **kwargs):
        with open(ckpt_file_name, "wb") as f:
            f.write(b"half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(ms, "save_checkpoint", broken)
    with pytest.raises(CheckpointError, match="disk full"):
        save_checkpoint(model, path, metadata={"run": 2})
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["m.ckpt"]


def test_unserialisable_metadata_writes_nothing(model, tmp_path):
    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        save_checkpoint(model, tmp_path / "m.ckpt", metadata={"bad": object()})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_unreadable_files(model, tmp_path, suffix):
    good = tmp_path / f"good{suffix}"
    save_checkpoint(model, good)
    data = good.read_bytes()
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(b"not a checkpoint at all")
    for bad in (truncated, garbage):
        with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
            load_checkpoint(DVTCascade(tiny_spec()), bad)
        assert str(bad) in str(info.value)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_checkpoint(tmp_path / f"absent{suffix}")


def test_bad_names_and_directories(model, tmp_path):
    with pytest.raises(CheckpointError, match=r"must end in \.ckpt or \.safetensors"):
        save_checkpoint(model, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        save_checkpoint(model, tmp_path / "no" / "such" / "m.ckpt")
    with pytest.raises(CheckpointError, match="not a file"):
        read_metadata(tmp_path)


def test_compare_shapes_orders_and_describes():
    result = compare_shapes({"b": (2,), "x": (1,), "a": (3, 4)}, {"a": (3, 5), "b": (2,), "c": (1,)})
    assert result.missing == ["c"] and result.unexpected == ["x"] and result.mis_shaped == [("a", (3, 4), (3, 5))]
    assert not result.ok
    assert result.describe() == ("1 missing from the checkpoint (c); 1 unexpected in the checkpoint, not in the model "
                                 "(x); 1 mis-shaped (a: checkpoint [3, 4] vs model [3, 5])")
    many = compare_shapes({}, {f"p{i}": (1,) for i in range(20)})
    assert many.describe(limit=3).endswith("(p0, p1, p2 and 17 more)")
    assert compare_shapes({"a": (1,)}, {"a": (1,)}).ok
