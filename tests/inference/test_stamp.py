"""Stamping calibrated thresholds into a checkpoint: only results computed for the model it records, and nothing
written when anything is off."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dvt_ms
from dvt_ms.checkpoint import CheckpointError, read_checkpoint, read_metadata, save_checkpoint
from dvt_ms.flops import cumulative_gflops
from dvt_ms.inference.stamp import main, stamp_checkpoint

ARGS = {"img_size": 16, "exit_grids": [2, 4], "embed_dim": 16, "depth": 1, "num_heads": 2, "num_classes": 4}


@pytest.fixture
def ckpt(tmp_path) -> str:
    path = str(tmp_path / "m.ckpt")
    save_checkpoint(dvt_ms.create_model("dvt_vit", **ARGS), path,
                    metadata={"model": "dvt_vit", "model_args": ARGS, "num_classes": 4})
    return path


def write_results(path, **overrides) -> dict:
    """``eval_results.json`` of an ``--eval_mode 2`` run of the ``ARGS`` model (``overrides`` replace fields)."""
    flops = cumulative_gflops(dvt_ms.spec_for("dvt_vit", **ARGS))
    results = {"model": "dvt_vit", "num_classes": 4, "flops": flops, "anytime_classification": [50.0, 60.0],
               "dynamic_threshold": [[0.9, -1e8], [0.5, -1e8]], "budgeted_batch_classification": [[0.2, 0.1], [58, 55]],
               "throughput": {"early_exit_img_per_s": 1.0}, **overrides}
    path.write_text(json.dumps(results))
    return results


def test_stamp_keeps_weights_and_adds_fields(tmp_path, ckpt):
    write_results(tmp_path / "r.json")
    assert main(["--ckpt", ckpt, "--results", str(tmp_path / "r.json"), "--dst", str(tmp_path / "s.ckpt")]) == 0
    before, _ = read_checkpoint(ckpt)
    arrays, meta = read_checkpoint(str(tmp_path / "s.ckpt"))
    assert sorted(arrays) == sorted(before)
    for name in before:
        np.testing.assert_array_equal(arrays[name], before[name])
    assert meta["model"] == "dvt_vit" and meta["dynamic_threshold"] == [[0.9, -1e8], [0.5, -1e8]]
    assert "throughput" not in meta
    assert "dynamic_threshold" not in read_metadata(ckpt)  # the source is left as it was
    assert dvt_ms.load_model(str(tmp_path / "s.ckpt")).name == "dvt_vit"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"model": "dvt_t2t_vit_12"}, "the results are of model 'dvt_t2t_vit_12', the checkpoint is 'dvt_vit'"),
    ({"num_classes": 3}, "3 classes vs 4"),
    ({"flops": [0.1, 0.2, 0.3], "anytime_classification": [1.0, 2.0, 3.0],
      "dynamic_threshold": [[0.9, 0.8, -1e8]]}, "[3] exits vs 2"),
    ({"flops": [0.001, 0.002]}, "another architecture"),
    ({"dynamic_threshold": None}, "no dynamic_threshold (write it with dvt-eval --eval_mode 2)"),
])
def test_results_of_another_model_are_refused_and_nothing_is_written(tmp_path, ckpt, capsys, overrides, message):
    write_results(tmp_path / "r.json", **overrides)
    dst = tmp_path / "s.ckpt"
    assert main(["--ckpt", ckpt, "--results", str(tmp_path / "r.json"), "--dst", str(dst)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m dvt_ms stamp: error: ") and message in err[0], err
    assert not dst.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt", "r.json"]
    assert main(["--ckpt", ckpt, "--results", str(tmp_path / "r.json")]) == 1  # in place: the source unchanged
    assert "dynamic_threshold" not in read_metadata(ckpt)


def test_stamp_errors(tmp_path, ckpt):
    with pytest.raises(CheckpointError, match="not found"):
        stamp_checkpoint(ckpt, str(tmp_path / "none.json"))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"not an eval_results\.json"):
        stamp_checkpoint(ckpt, str(tmp_path / "list.json"))
    write_results(tmp_path / "r.json")
    save_checkpoint({"w": np.zeros(2, np.float32)}, str(tmp_path / "bare.ckpt"))
    with pytest.raises(CheckpointError, match="records no model"):
        stamp_checkpoint(str(tmp_path / "bare.ckpt"), str(tmp_path / "r.json"))
