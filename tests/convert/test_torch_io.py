"""Tests of safe PyTorch checkpoint reading and writing."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest

from dvt_ms.convert.errors import ConvertError
from dvt_ms.convert.torch_io import (
    find_state_dict,
    read_source,
    read_torch_object,
    sha256_file,
    write_torch_checkpoint,
)
from tests.helpers import HAVE_TORCH, requires_torch

if HAVE_TORCH:
    import torch

    STATE = OrderedDict([("a.weight", torch.arange(6, dtype=torch.float32).reshape(2, 3)),
                         ("a.bias", torch.ones(2))])

pytestmark = requires_torch  # reading a .pth file, even to refuse it, goes through torch.load


class CreatesFile:
    """Unpickling this calls ``open(path, "w")``: a file appears if the pickle is ever executed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_reduce_payload_in_torch_file_is_refused_without_running(tmp_path):
    marker = tmp_path / "created_by_pickle"
    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": STATE, "flops": CreatesFile(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(ConvertError) as info:
        read_source(path)
    text = str(info.value)
    assert text.startswith(f"refusing to load {path}") and "open" in text
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_reduce_payload_in_plain_pickle_is_refused(tmp_path, protocol):
    marker = tmp_path / "created_by_pickle"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"state_dict": CreatesFile(str(marker))}, protocol=protocol))
    with pytest.raises(ConvertError, match="refusing to load"):
        read_torch_object(path)
    assert not marker.exists()


@pytest.mark.parametrize("container", ["model_state_dict", "state_dict", "model", "state_dict_ema", "bare"])
def test_containers(tmp_path, container):
    path = tmp_path / "c.pth.tar"
    torch.save(STATE if container == "bare" else {container: STATE, "epoch": 3}, path)
    source = read_source(path)
    assert source.container == container
    assert list(source.state) == list(STATE)
    np.testing.assert_array_equal(source.state["a.weight"], STATE["a.weight"].numpy())
    assert source.ignored == ([] if container == "bare" else ["epoch"])
    assert source.sha256 == sha256_file(path) and len(source.sha256) == 64


def test_metadata_fields_become_json_values(tmp_path):
    path = tmp_path / "m.pth.tar"
    threshold = torch.rand(59, 3, dtype=torch.float64)
    torch.save({"model_state_dict": STATE, "flops": [np.float64(0.47), 1.45, torch.tensor(3.46)],
                "anytime_classification": np.array([69.0, 75.5, 80.0]), "dynamic_threshold": threshold,
                "budgeted_batch_classification": [[1.0, 2.0], [70.0, 71.0]]}, path)
    source = read_source(path)
    assert source.fields["flops"] == [0.47, 1.45, pytest.approx(3.46)]
    assert source.fields["anytime_classification"] == [69.0, 75.5, 80.0]
    assert source.fields["dynamic_threshold"] == threshold.tolist()
    assert source.fields["budgeted_batch_classification"] == [[1.0, 2.0], [70.0, 71.0]]
    assert source.tensor_fields == {"dynamic_threshold": "float64"}


def test_half_precision_tensors(tmp_path):
    path = tmp_path / "h.pth"
    torch.save({"a": torch.tensor([1.5, -2.25], dtype=torch.bfloat16), "b": torch.tensor([0.5], dtype=torch.float16)},
               path)
    state = read_source(path).state
    assert state["a"].dtype == np.float32 and state["a"].tolist() == [1.5, -2.25]
    assert state["b"].dtype == np.float16


def test_safetensors_input(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "s.safetensors"
    save_file(dict(STATE), str(path))
    source = read_source(path)
    assert source.container == "safetensors" and set(source.state) == set(STATE)
    np.testing.assert_array_equal(source.state["a.bias"], np.ones(2, np.float32))


def test_unreadable_sources(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model_state_dict": STATE}, good)
    data = good.read_bytes()
    cases = {
        "truncated.pth": (data[: len(data) // 2], "truncated or corrupt"),
        "empty.pth": (b"", "is empty"),
        "garbage.safetensors": (b"\x00" * 40, "not a readable safetensors file"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ConvertError, match=message) as info:
            read_source(tmp_path / name)
        assert name in str(info.value)
    with pytest.raises(ConvertError, match="source checkpoint not found"):
        read_source(tmp_path / "absent.pth")
    legacy = tmp_path / "legacy.pth"
    torch.save({"model_state_dict": STATE}, legacy, _use_new_zipfile_serialization=False)
    assert set(read_source(legacy).state) == set(STATE)
    legacy.write_bytes(legacy.read_bytes()[:-20])
    with pytest.raises(ConvertError, match="truncated or corrupt"):
        read_source(legacy)


def test_wrong_structures(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([STATE["a.bias"]], path)
    with pytest.raises(ConvertError, match="holds a list, not a dict"):
        read_source(path)
    with pytest.raises(ConvertError, match=r"no state dict found.*'epoch', 'lr'"):
        find_state_dict({"epoch": 1, "lr": 0.1}, "x.pth")
    torch.save({"state_dict": {"a.weight": STATE["a.weight"], "a.note": "text"}}, path)
    with pytest.raises(ConvertError, match=r"'a\.note' is a str, not a tensor"):
        read_source(path)


@pytest.mark.parametrize("name", ["out.pth.tar", "out.safetensors"])
def test_write_torch_checkpoint(tmp_path, name):
    state = {k: v.numpy() for k, v in STATE.items()}
    meta = {"model": "dvt_vit", "model_args": {"num_classes": 2}, "flops": [0.5],
            "dynamic_threshold": [[0.25, 0.5]], "tensor_fields": {"dynamic_threshold": "float32"}}
    path = write_torch_checkpoint(state, tmp_path / name, meta)
    assert os.listdir(tmp_path) == [name]
    source = read_source(path)
    assert set(source.state) == set(STATE)  # safetensors stores tensors in its own order
    assert source.fields["flops"] == [0.5] and source.fields["dynamic_threshold"] == [[0.25, 0.5]]
    assert source.info == {"model": "dvt_vit", "model_args": {"num_classes": 2}}
    if name.endswith(".tar"):
        raw = torch.load(path, weights_only=True)
        assert raw["dynamic_threshold"].dtype == torch.float32
        assert list(raw["model_state_dict"]) == list(STATE)
        assert all(torch.equal(raw["model_state_dict"][k], v) for k, v in STATE.items())
