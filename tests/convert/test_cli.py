"""End-to-end tests of ``dvt-convert`` on the tiny config: conversion, metadata, verify, round trips, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest

from dvt_ms.checkpoint import load_checkpoint, read_metadata
from dvt_ms.convert.torch_io import sha256_file
from dvt_ms.models import DVTCascade
from tests.helpers import (
    HAVE_TORCH,
    REPO,
    TINY_CONFIG,
    max_relative_error,
    ms_logits,
    requires_torch,
    run_cli,
    save_official,
    subprocess_env,
    tiny_spec,
    torch_logits,
)

if HAVE_TORCH:
    import torch

pytestmark = requires_torch  # every test converts or writes a PyTorch checkpoint

TOL = 1e-4


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A tiny official-format checkpoint with a ``module.`` prefix and every metadata field."""
    path = tmp_path_factory.mktemp("src") / "tiny.pth.tar"
    model, fields = save_official(tiny_spec(), path, prefix="module.", extra={"epoch": 299})
    return path, model, fields


def only_files(directory) -> list[str]:
    return sorted(os.listdir(directory))


def test_convert_with_metadata_and_prefix(official, tmp_path, capsys):
    src, reference, fields = official
    dst = tmp_path / "tiny.ckpt"
    code, out, err = run_cli(capsys, "-c", TINY_CONFIG, "--src", src, "--dst", dst)
    assert code == 0, err
    assert "prefix 'module.' stripped" in out and "ignored top-level keys: epoch" in out
    assert only_files(tmp_path) == ["tiny.ckpt"]

    meta = read_metadata(dst)
    assert meta["model"] == "dvt_vit" and meta["num_classes"] == 10
    assert meta["model_args"]["exit_grids"] == [4, 6, 8]
    assert meta["source"] == {"file": "tiny.pth.tar", "sha256": sha256_file(src), "container": "model_state_dict"}
    assert meta["flops"] == fields["flops"]
    assert meta["anytime_classification"] == fields["anytime_classification"]
    assert meta["budgeted_batch_classification"] == fields["budgeted_batch_classification"]
    assert meta["dynamic_threshold"] == fields["dynamic_threshold"].tolist()
    assert np.asarray(meta["dynamic_threshold"]).shape == (59, 3)

    model = DVTCascade(tiny_spec())
    load_checkpoint(model, dst)
    x = np.random.RandomState(0).randn(3, 3, 32, 32).astype(np.float32)
    assert max_relative_error(torch_logits(reference, x), ms_logits(model, x)) <= TOL


def test_verify_prints_differences_per_exit(official, tmp_path, capsys):
    src, _, _ = official
    code, out, err = run_cli(capsys, "-c", TINY_CONFIG, "--src", src, "--dst", tmp_path / "v.safetensors", "--verify")
    assert code == 0, err
    for name in ("less_less_token", "less_token", "normal_token"):
        assert name in out
    assert "verified: max relative difference" in out
    assert read_metadata(tmp_path / "v.safetensors")["model"] == "dvt_vit"


def test_failed_verification_writes_nothing(official, tmp_path, capsys, monkeypatch):
    from dvt_ms.convert import verify

    def off_by_far(spec, torch_state, ms_checkpoint, batch=2, seed=0):
        assert os.path.exists(ms_checkpoint)  # the staged file is what gets checked
        return [verify.ExitDifference(name, 0.5, 0.01) for name in spec.exit_names]

    monkeypatch.setattr(verify, "verify_against_torch", off_by_far)
    code, out, err = run_cli(capsys, "-c", TINY_CONFIG, "--src", official[0], "--dst", tmp_path / "v.ckpt", "--verify")
    assert code == 1 and "FAIL" in out and "verification failed" in err
    assert only_files(tmp_path) == []


def test_safetensors_output_loads_with_mindspore(official, tmp_path, capsys):
    import mindspore as ms

    dst = tmp_path / "tiny.safetensors"
    code, _, err = run_cli(capsys, "-c", TINY_CONFIG, "--src", official[0], "--dst", dst, "--format", "safetensors")
    assert code == 0, err
    loaded = ms.load_checkpoint(str(dst), format="safetensors")
    state = official[1].state_dict()
    assert set(loaded) == set(state)
    for name, value in state.items():
        np.testing.assert_array_equal(loaded[name].asnumpy(), value.numpy())


@pytest.mark.parametrize("middle", ["ckpt", "safetensors"])
def test_round_trip_torch_ms_torch_is_bit_exact(official, tmp_path, capsys, middle):
    src, reference, fields = official
    mid, back = tmp_path / f"mid.{middle}", tmp_path / "back.pth.tar"
    assert run_cli(capsys, "-c", TINY_CONFIG, "--src", src, "--dst", mid)[0] == 0
    code, out, err = run_cli(capsys, "--to-torch", "--src", mid, "--dst", back)
    assert code == 0, err
    assert "recorded in the checkpoint" in out

    original = reference.state_dict()
    result = torch.load(back, map_location="cpu", weights_only=True)
    assert list(result["model_state_dict"]) == list(original)  # official key names and order, no prefix
    for name, value in original.items():
        got = result["model_state_dict"][name]
        assert got.dtype == value.dtype and got.shape == value.shape
        assert got.numpy().tobytes() == value.numpy().tobytes(), name
    assert torch.equal(result["dynamic_threshold"], fields["dynamic_threshold"])
    for key in ("flops", "anytime_classification", "budgeted_batch_classification"):
        assert result[key] == fields[key]

    # the written file converts again without naming the model
    code, out, err = run_cli(capsys, "--src", back, "--dst", tmp_path / "again.ckpt")
    assert code == 0, err


def test_to_torch_safetensors_and_verify(official, tmp_path, capsys):
    from safetensors.torch import load_file

    mid = tmp_path / "mid.ckpt"
    assert run_cli(capsys, "-c", TINY_CONFIG, "--src", official[0], "--dst", mid)[0] == 0
    code, out, err = run_cli(capsys, "--to-torch", "--src", mid, "--dst", tmp_path / "back.safetensors", "--verify")
    assert code == 0, err
    assert "verified" in out
    loaded = load_file(str(tmp_path / "back.safetensors"))
    original = official[1].state_dict()
    assert set(loaded) == set(original) and all(torch.equal(loaded[k], v) for k, v in original.items())


def broken_checkpoints(directory, reference):
    """name -> (path, words the error must contain): one bad checkpoint per failure mode."""
    state = OrderedDict(reference.state_dict())
    cases = {}

    def save(name, obj):
        path = directory / name
        torch.save(obj, path)
        return path

    missing = OrderedDict(state)
    missing.pop("less_token.blocks.1.attn.proj.bias")
    cases["missing key"] = (save("missing.pth", {"model_state_dict": missing}),
                            ["1 missing", "less_token.blocks.1.attn.proj.bias"])
    extra = OrderedDict(state)
    extra["normal_token.dist_token"] = torch.zeros(1, 1, 64)
    cases["extra key"] = (save("extra.pth", {"model_state_dict": extra}), ["1 unexpected", "normal_token.dist_token"])
    shaped = OrderedDict(state)
    shaped["less_token.head.weight"] = torch.zeros(10, 65)
    cases["mis-shaped"] = (save("shaped.pth", {"model_state_dict": shaped}),
                           ["mis-shaped", "less_token.head.weight: checkpoint [10, 65] vs model [10, 64]"])
    full = directory / "full.pth"
    torch.save({"model_state_dict": state}, full)
    truncated = directory / "truncated.pth"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    cases["truncated"] = (truncated, ["truncated.pth", "truncated or corrupt"])
    cases["non-dict"] = (save("list.pth", list(state.values())), ["holds a list, not a dict"])
    cases["missing file"] = (directory / "absent.pth.tar", ["--src", "absent.pth.tar: no such file"])
    return cases


CASES = ["missing key", "extra key", "mis-shaped", "truncated", "non-dict", "missing file"]


@pytest.mark.parametrize("case", CASES)
def test_bad_sources_fail_cleanly(official, tmp_path, capsys, case):
    src_dir, out_dir = tmp_path / "src", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    path, words = broken_checkpoints(src_dir, official[1])[case]
    code, _, err = run_cli(capsys, "-c", TINY_CONFIG, "--src", path, "--dst", out_dir / "x.ckpt")
    assert code == (2 if case == "missing file" else 1)  # a named input that is not there: bad usage
    assert err.startswith("dvt-convert: error: ") and err.count("\n") == 1 and "Traceback" not in err
    for word in words:
        assert word in err
    assert case == "missing file" or "Nothing was written." in err
    assert only_files(out_dir) == []


def test_wrong_model_fails_cleanly(official, tmp_path, capsys):
    code, _, err = run_cli(capsys, "--model", "dvt_t2t_vit_12", "--src", official[0], "--dst", tmp_path / "x.ckpt")
    assert code == 1 and err.count("\n") == 1
    assert "does not fit model dvt_t2t_vit_12 (given)" in err and "mis-shaped" in err and "width 64" in err
    assert only_files(tmp_path) == []


def test_unidentifiable_model_and_usage_errors(official, tmp_path, capsys):
    code, _, err = run_cli(capsys, "--src", official[0], "--dst", tmp_path / "x.ckpt")
    assert code == 1 and "cannot tell the model" in err
    code, _, err = run_cli(capsys, "-c", TINY_CONFIG, "--src", official[0], "--dst", tmp_path / "x.safetensors",
                           "--format", "ckpt")
    assert code == 1 and "--format ckpt does not agree" in err
    code, _, err = run_cli(capsys, "-c", TINY_CONFIG, "--src", official[0], "--dst", tmp_path / "x.pth")
    assert code == 1 and "must end in .ckpt or .safetensors" in err
    code, _, err = run_cli(capsys, "--model", "dvt_tiny", "--src", official[0], "--dst", tmp_path / "x.ckpt")
    assert code == 1 and "unknown model 'dvt_tiny'" in err
    assert only_files(tmp_path) == []
    code, _, err = run_cli(capsys, "--dst", tmp_path / "x.ckpt")  # --src missing: argparse's usage error
    assert code == 2 and "--src" in err


def test_crafted_pickle_is_refused_by_the_cli(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class CreatesFile:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth.tar"
    torch.save({"model_state_dict": {"a": torch.ones(1)}, "flops": CreatesFile()}, path)
    code, _, err = run_cli(capsys, "-c", TINY_CONFIG, "--src", path, "--dst", tmp_path / "x.ckpt")
    assert code == 1 and "refusing to load" in err
    assert not marker.exists() and not (tmp_path / "x.ckpt").exists()


def test_existing_output_survives_a_failed_conversion(official, tmp_path, capsys):
    dst = tmp_path / "keep.ckpt"
    assert run_cli(capsys, "-c", TINY_CONFIG, "--src", official[0], "--dst", dst)[0] == 0
    before = dst.read_bytes()
    code, _, _ = run_cli(capsys, "--model", "dvt_deit_small", "--src", official[0], "--dst", dst)
    assert code == 1 and dst.read_bytes() == before and only_files(tmp_path) == ["keep.ckpt"]


def test_shell_wrapper_and_module_entry(official, tmp_path):
    dst = tmp_path / "sh.ckpt"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", os.path.join(REPO, "scripts", "convert.sh"), "-c", TINY_CONFIG, "--src",
                           str(official[0]), "--dst", str(dst)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert read_metadata(dst)["model"] == "dvt_vit"
    usage = subprocess.run(["bash", os.path.join(REPO, "scripts", "convert.sh")], capture_output=True, text=True,
                           env=env, timeout=60)
    assert usage.returncode == 2 and "--src" in usage.stdout
    done = subprocess.run([sys.executable, "-m", "dvt_ms.convert", "--src", str(tmp_path / "none.pth"), "--dst",
                           str(tmp_path / "none.ckpt")], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=subprocess_env())
    assert done.returncode == 2 and "none.pth: no such file" in done.stderr and "Traceback" not in done.stderr
