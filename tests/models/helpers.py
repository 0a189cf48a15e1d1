"""Helpers for model tests: tiny specs, copying torch weights into a MindSpore cascade."""

from __future__ import annotations

import os

import numpy as np

import dvt_ms
from dvt_ms.config import load_yaml, spec_from_config
from dvt_ms.models.spec import CascadeSpec

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PUBLISHED = ("dvt_t2t_vit_12", "dvt_t2t_vit_14", "dvt_deit_small")


def tiny_spec() -> CascadeSpec:
    """configs/dvt_tiny_cpu.yaml: DeiT-style, 32px, exits 4/6/8, both reuses on."""
    return spec_from_config(load_yaml(os.path.join(REPO, "configs", "dvt_tiny_cpu.yaml")))


def tiny_t2t_spec(**overrides) -> CascadeSpec:
    return dvt_ms.spec_for("dvt_t2t_vit", **{"img_size": 32, "exit_grids": [4, 6, 8], "embed_dim": 64, "depth": 2,
                                             "num_heads": 2, "num_classes": 10, **overrides})


def copy_torch_weights(torch_model, ms_model) -> None:
    """Load a torch reference's state dict into a MindSpore cascade (names are identical)."""
    import mindspore as ms

    params = {p.name: p for p in ms_model.get_parameters()}
    state = torch_model.state_dict()
    assert set(params) == set(state), sorted(set(params) ^ set(state))
    for name, value in state.items():
        params[name].set_data(ms.Tensor(value.detach().numpy()))


def relative_errors(reference, got) -> list[float]:
    return [float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(reference, got, strict=False)]
