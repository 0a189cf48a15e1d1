"""Checkpoint files of a run: full resume state, atomic writes under SIGKILL, keep-max, pretrained weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import mindspore as ms
import numpy as np
import pytest

import dvt_ms
from dvt_ms.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from dvt_ms.train.ema import EMA
from dvt_ms.train.loss import NetWithLoss
from dvt_ms.train.loss_scale import LossScaling
from dvt_ms.train.optimizer import AdamW, param_groups
from dvt_ms.train.pretrained import load_pretrained
from dvt_ms.train.run_state import (
    STATE,
    CheckpointManager,
    ResumeError,
    RunRecord,
    find_state,
    load_state,
)
from dvt_ms.train.train_step import TrainStep
from tests.helpers import REPO, subprocess_env

MODEL_ARGS = {"img_size": 16, "exit_grids": [2, 4], "embed_dim": 16, "depth": 1, "num_heads": 2, "num_classes": 4}


def _train_step(seed: int = 0, ema: bool = True):
    ms.set_seed(seed)
    model = dvt_ms.create_model("dvt_vit", **MODEL_ARGS)
    params, decays = param_groups(model, 0.05)
    step = TrainStep(NetWithLoss(model), AdamW(params, decays), np.linspace(1e-3, 1e-4, 10, dtype=np.float32),
                     LossScaling(64.0, dynamic=True, window=1), model.num_exits, 1.0,
                     EMA(params, 0.9) if ema else None)
    step.set_train(True)
    return model, step


def _batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    return ms.Tensor(x), ms.Tensor(np.eye(4, dtype=np.float32)[rng.integers(0, 4, 4)])


@pytest.mark.slow
def test_state_round_trip_restores_everything(tmp_path, graph_mode):
    model, step = _train_step()
    for i in range(3):
        step(*_batch(i))
    manager = CheckpointManager(str(tmp_path), keep_max=2, interval=1)
    progress = RunRecord(epoch=3, global_step=3, best_top1=12.5, best_epoch=2, results=[{"epoch": 1}])
    np.random.seed(7)
    manager.save(step, model, progress, {"model": "dvt_vit", "global_batch": 4}, is_best=True)
    expected_numpy_draw = np.random.random_sample()

    _, fresh = _train_step(seed=1)
    restored, notes = load_state(str(tmp_path / STATE), fresh, {"model": "dvt_vit", "global_batch": 4})
    assert restored == progress and notes == []
    before, after = step.parameters_dict(), fresh.parameters_dict()
    assert sorted(before) == sorted(after)
    for name in before:
        assert after[name].shape == before[name].shape, name
        np.testing.assert_array_equal(after[name].asnumpy(), before[name].asnumpy(), err_msg=name)
    assert np.random.random_sample() == expected_numpy_draw
    assert float(fresh.loss_scaler.scale.asnumpy()) == 64.0 * 2 ** 3  # grew once per finite step
    assert int(fresh.optimizer.step.asnumpy()) == 3 and int(fresh.global_step.asnumpy()) == 3
    # both continue identically
    out_a, out_b = step(*_batch(9)), fresh(*_batch(9))
    np.testing.assert_array_equal(out_a[1].asnumpy(), out_b[1].asnumpy())
    # the weight files: latest == best, plus the model metadata
    latest, meta = read_checkpoint(str(tmp_path / "latest.ckpt"))
    assert sorted(latest) == sorted(model.parameters_dict()) and meta["epoch"] == 3
    assert (tmp_path / "best.ckpt").read_bytes() == (tmp_path / "latest.ckpt").read_bytes()


def test_resume_refuses_a_different_set_up_and_plain_weights(tmp_path, graph_mode):
    model, step = _train_step()
    manager = CheckpointManager(str(tmp_path))
    manager.save(step, model, RunRecord(epoch=1, global_step=1), {"model": "dvt_vit", "global_batch": 4}, False)
    with pytest.raises(ResumeError, match="global_batch: state 4 vs now 8"):
        load_state(str(tmp_path / STATE), step, {"model": "dvt_vit", "global_batch": 8})
    with pytest.raises(ResumeError, match="not a dvt_ms training state"):
        load_state(str(tmp_path / "latest.ckpt"), step, {})
    _, no_ema = _train_step(ema=False)
    _, notes = load_state(str(tmp_path / STATE), no_ema, {"model": "dvt_vit"})
    assert any("ignored" in n for n in notes)


def test_find_state(tmp_path):
    assert find_state(None, False, str(tmp_path)) is None
    assert find_state(None, True, str(tmp_path)) is None  # nothing to resume yet: start fresh
    with pytest.raises(ResumeError, match="no training state"):
        find_state(str(tmp_path), False, str(tmp_path))
    (tmp_path / STATE).write_bytes(b"x")
    assert find_state(None, True, str(tmp_path)) == str(tmp_path / STATE)
    assert find_state(str(tmp_path), False, "elsewhere") == str(tmp_path / STATE)
    assert find_state(str(tmp_path / "latest.ckpt"), False, "elsewhere") == str(tmp_path / STATE)


def test_keep_checkpoint_max_and_interval(tmp_path, graph_mode):
    model, step = _train_step(ema=False)
    manager = CheckpointManager(str(tmp_path), keep_max=2, interval=2)
    for epoch in range(1, 8):
        manager.save(step, model, RunRecord(epoch=epoch, global_step=epoch), {}, is_best=epoch == 3)
    assert [e for e, _ in manager.epoch_files()] == [4, 6]
    assert read_checkpoint(str(tmp_path / STATE))[1]["epoch"] == 7
    manager.write_results([{"epoch": 1}], {"skipped_images": ["a/b.jpg"]})
    assert json.loads((tmp_path / "results.json").read_text()) == {"epochs": [{"epoch": 1}],
                                                                    "skipped_images": ["a/b.jpg"]}
    assert not [n for n in os.listdir(tmp_path) if "partial" in n]


_KILL_DURING_WRITE = textwrap.dedent("""
    import sys, time
    import mindspore as ms
    import numpy as np
    from dvt_ms.train.run_state import CheckpointManager, RunRecord
    sys.path.insert(0, {tests!r})
    from tests.train.test_run_state import _train_step

    model, step = _train_step(ema=False)
    manager = CheckpointManager({directory!r})
    manager.save(step, model, RunRecord(epoch=1, global_step=5), {{"model": "dvt_vit"}}, is_best=False)
    real_save = ms.save_checkpoint

    def slow_save(entries, path, *args, **kwargs):
        real_save(entries, path, *args, **kwargs)
        with open(path, "r+b") as f:  # leave the new file half-written, then hang
            f.truncate(f.seek(0, 2) // 2)
        print("WRITING", path, flush=True)
        time.sleep(600)

    ms.save_checkpoint = slow_save
    for p in step.get_parameters():
        if p.name.endswith("head.bias"):
            p.set_data(ms.Tensor(np.full(p.shape, 7.0, np.float32)))
    manager.save(step, model, RunRecord(epoch=2, global_step=10), {{"model": "dvt_vit"}}, is_best=False)
""")


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path, graph_mode):
    script = _KILL_DURING_WRITE.format(tests=REPO, directory=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("WRITING"), line
        partial = line.split()[1]
        assert os.path.exists(partial) and os.path.dirname(partial) == str(tmp_path)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    arrays, meta = read_checkpoint(str(tmp_path / STATE))
    assert meta["epoch"] == 1 and meta["global_step"] == 5
    assert not np.any(arrays["normal_token.head.bias"] == 7.0)
    _, step = _train_step(seed=3, ema=False)
    progress, _ = load_state(str(tmp_path / STATE), step, {"model": "dvt_vit"})
    assert progress.epoch == 1
    assert find_state(None, True, str(tmp_path)) == str(tmp_path / STATE)


def test_pretrained_with_other_classes_keeps_new_heads(tmp_path, graph_mode):
    source = dvt_ms.create_model("dvt_vit", **{**MODEL_ARGS, "num_classes": 7})
    save_checkpoint(source, str(tmp_path / "src.ckpt"))
    target = dvt_ms.create_model("dvt_vit", **MODEL_ARGS)
    head_before = target.parameters_dict()["normal_token.head.weight"].asnumpy().copy()
    notes = load_pretrained(target, str(tmp_path / "src.ckpt"))
    assert any("7-class heads" in n for n in notes)
    got, want = target.parameters_dict(), source.parameters_dict()
    np.testing.assert_array_equal(got["normal_token.head.weight"].asnumpy(), head_before)
    np.testing.assert_array_equal(got["less_less_token.blocks.0.mlp.fc1.weight"].asnumpy(),
                                  want["less_less_token.blocks.0.mlp.fc1.weight"].asnumpy())


def test_pretrained_that_does_not_fit_is_refused(tmp_path, graph_mode):
    save_checkpoint(dvt_ms.create_model("dvt_vit", **{**MODEL_ARGS, "embed_dim": 32}), str(tmp_path / "big.ckpt"))
    target = dvt_ms.create_model("dvt_vit", **MODEL_ARGS)
    before = target.parameters_dict()["less_less_token.cls_token"].asnumpy().copy()
    with pytest.raises(CheckpointError, match=r"does not fit the model being trained.*mis-shaped"):
        load_pretrained(target, str(tmp_path / "big.ckpt"))
    np.testing.assert_array_equal(target.parameters_dict()["less_less_token.cls_token"].asnumpy(), before)
    with pytest.raises(CheckpointError, match="file not found"):
        load_pretrained(target, str(tmp_path / "missing.ckpt"))
