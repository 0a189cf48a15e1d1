"""Stamping calibrated thresholds into a checkpoint."""

from __future__ import annotations

import json

import mindspore as ms
import numpy as np
import pytest

from dvt_ms.checkpoint import CheckpointError, read_checkpoint, read_metadata, save_checkpoint
from dvt_ms.inference.stamp import main, stamp_checkpoint


def write_results(path, **overrides):
    results = {"model": "dvt_vit", "flops": [0.1, 0.3], "anytime_classification": [50.0, 60.0],
               "dynamic_threshold": [[0.9, -1e8], [0.5, -1e8]], "budgeted_batch_classification": [[0.2, 0.1], [58, 55]],
               "throughput": {"early_exit_img_per_s": 1.0}, **overrides}
    path.write_text(json.dumps(results))
    return results


def test_stamp_keeps_weights_and_adds_fields(tmp_path):
    weights = {"a.weight": ms.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))}
    save_checkpoint(weights, str(tmp_path / "m.ckpt"), metadata={"num_classes": 10})
    write_results(tmp_path / "r.json")
    assert main(["--ckpt", str(tmp_path / "m.ckpt"), "--results", str(tmp_path / "r.json"),
                 "--dst", str(tmp_path / "s.ckpt")]) == 0
    arrays, meta = read_checkpoint(str(tmp_path / "s.ckpt"))
    np.testing.assert_array_equal(arrays["a.weight"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert meta["num_classes"] == 10 and meta["dynamic_threshold"] == [[0.9, -1e8], [0.5, -1e8]]
    assert "throughput" not in meta
    assert read_metadata(str(tmp_path / "m.ckpt")) == {"num_classes": 10}


def test_stamp_errors(tmp_path):
    save_checkpoint({"w": ms.Tensor(np.zeros(2, np.float32))}, str(tmp_path / "m.ckpt"))
    with pytest.raises(CheckpointError, match="not found"):
        stamp_checkpoint(str(tmp_path / "m.ckpt"), str(tmp_path / "none.json"))
    results = write_results(tmp_path / "r.json")
    del results["dynamic_threshold"]
    (tmp_path / "r.json").write_text(json.dumps(results))
    with pytest.raises(CheckpointError, match="no dynamic_threshold"):
        stamp_checkpoint(str(tmp_path / "m.ckpt"), str(tmp_path / "r.json"))
    assert read_metadata(str(tmp_path / "m.ckpt")) is None
