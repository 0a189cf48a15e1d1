"""Acceptance: the three published models, random-init PyTorch reference -> official .pth.tar ->
``dvt-convert`` (model identified from the keys) -> dvt_ms logits within 1e-4 relative at every exit,
metadata read back equal, and ``--to-torch`` giving the original state dict back bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

import dvt_ms
from dvt_ms.checkpoint import read_metadata
from tests.helpers import (
    HAVE_TORCH,
    PUBLISHED,
    max_relative_error,
    ms_logits,
    requires_torch,
    run_cli,
    save_official,
    torch_logits,
)

if HAVE_TORCH:
    import torch

pytestmark = requires_torch

TOL = 1e-4
PREFIX = {"dvt_t2t_vit_12": "", "dvt_t2t_vit_14": "", "dvt_deit_small": "module."}  # one DDP-style file


@pytest.mark.slow
@pytest.mark.parametrize("name", PUBLISHED)
def test_published_model_converts_exactly(name, tmp_path, capsys, pynative_mode):
    src = tmp_path / f"{name}.pth.tar"
    reference, fields = save_official(dvt_ms.spec_for(name), src, prefix=PREFIX[name], seed=7)
    dst = tmp_path / f"{name}.ckpt"
    code, out, err = run_cli(capsys, "--src", src, "--dst", dst)
    assert code == 0, err
    assert f"{name} (identified from the checkpoint keys; 1000 classes)" in out

    meta = read_metadata(dst)
    assert meta["model"] == name and meta["num_classes"] == 1000 and meta["model_args"] == {}
    for key in ("flops", "anytime_classification", "budgeted_batch_classification"):
        assert meta[key] == fields[key]
    assert meta["dynamic_threshold"] == fields["dynamic_threshold"].tolist()

    model = dvt_ms.create_model(name, checkpoint_path=str(dst))
    x = np.random.RandomState(0).randn(2, 3, 224, 224).astype(np.float32)
    assert max_relative_error(torch_logits(reference, x), ms_logits(model, x)) <= TOL
    del model

    back = tmp_path / f"{name}.back.pth.tar"
    code, _, err = run_cli(capsys, "--to-torch", "--src", dst, "--dst", back)
    assert code == 0, err
    result = torch.load(back, map_location="cpu", weights_only=True)
    original = reference.state_dict()
    assert list(result["model_state_dict"]) == list(original)
    for key, value in original.items():
        assert result["model_state_dict"][key].numpy().tobytes() == value.numpy().tobytes(), key
    assert torch.equal(result["dynamic_threshold"], fields["dynamic_threshold"])
