"""Helpers for converter tests: tiny specs, official-format PyTorch checkpoints, running the CLI."""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

import dvt_ms
from dvt_ms.config import load_yaml, spec_from_config
from dvt_ms.convert.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_CONFIG = os.path.join(REPO, "configs", "dvt_tiny_cpu.yaml")
PUBLISHED = ("dvt_t2t_vit_12", "dvt_t2t_vit_14", "dvt_deit_small")


def tiny_spec():
    """configs/dvt_tiny_cpu.yaml: DeiT-style, 32px, exits 4/6/8, both reuses on, 10 classes."""
    return spec_from_config(load_yaml(TINY_CONFIG))


def tiny_t2t_spec(**overrides):
    return dvt_ms.spec_for("dvt_t2t_vit", **{"img_size": 32, "exit_grids": [4, 6, 8], "embed_dim": 64, "depth": 2,
                                             "num_heads": 2, "num_classes": 10, **overrides})


def official_fields(num_exits: int, seed: int = 0) -> dict:
    """The evaluation fields of an official checkpoint, with random values."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return {
        "flops": [0.47, 1.45, 3.46][:num_exits],
        "anytime_classification": [69.04, 75.65, 80.0][:num_exits],
        "dynamic_threshold": torch.rand(59, num_exits, generator=gen),
        "budgeted_batch_classification": [[0.5 + 0.05 * i for i in range(59)], [70.0 + 0.1 * i for i in range(59)]],
    }


def save_official(spec, path, prefix: str = "", container: str = "model_state_dict", seed: int = 0,
                  fields: bool = True, extra: dict | None = None):
    """Random-init PyTorch reference of ``spec`` saved like the official files. Returns (model, fields)."""
    import torch

    from dvt_ms.reference.torch_dvt import build_torch_dvt

    torch.manual_seed(seed)
    model = build_torch_dvt(spec).eval()
    state = OrderedDict((prefix + k, v) for k, v in model.state_dict().items())
    meta = official_fields(spec.num_exits, seed) if fields else {}
    payload = state if container == "bare" else {container: state, **meta, **(extra or {})}
    torch.save(payload, path)
    return model, meta


def torch_logits(model, x: np.ndarray) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return [o.numpy() for o in model(torch.from_numpy(x))]


def ms_logits(model, x: np.ndarray) -> list[np.ndarray]:
    import mindspore as ms

    model.set_train(False)
    return [o.asnumpy() for o in model(ms.Tensor(x))]


def max_relative_error(expected, got) -> float:
    return max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(expected, got, strict=True))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``dvt-convert`` in-process; returns (exit status, stdout, stderr)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err
