"""The precision policy: under O2 every norm and softmax computes in float32, the matrix products in float16."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

import dvt_ms
from dvt_ms.amp import apply_precision
from dvt_ms.models.layers import AttentionScores, LayerNorm, RelationReuse, TokenPerformer

TINY = {"img_size": 32, "exit_grids": [4, 6, 8], "embed_dim": 64, "depth": 2, "num_heads": 2, "num_classes": 10}
# measured: max |O2 - fp32| of the tiny models' logits is 4.0e-4 (DeiT-style) and 2.3e-4 (T2T)
O2_TOLERANCE = 2e-3


def _model(name: str):
    ms.set_seed(0)
    extra = {"token_dim": 16} if name == "dvt_t2t_vit" else {}
    model = dvt_ms.create_model(name, **TINY, **extra)
    model.set_train(False)
    return model


def _images() -> ms.Tensor:
    return ms.Tensor(np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32))


@pytest.mark.parametrize("name", ["dvt_vit", "dvt_t2t_vit"])
def test_o2_runs_every_norm_softmax_and_relation_logit_in_float32(pynative_mode, name):
    model = apply_precision(_model(name), "O2")
    seen: list[tuple[str, str, list]] = []

    def record(cell_name):
        def hook(cell, inputs, outputs):
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            seen.append((cell_name, type(cell).__name__, [o.dtype for o in outputs if o is not None]))
        return hook

    watched = (LayerNorm, AttentionScores, RelationReuse, TokenPerformer, nn.Dense)
    for cell_name, cell in model.cells_and_names():
        if isinstance(cell, watched):
            cell.register_forward_hook(record(cell_name))
    logits = model(_images())
    kinds = {kind for _, kind, _ in seen}
    assert {"LayerNorm", "AttentionScores", "RelationReuse", "Dense"} <= kinds
    performers = [n + "." for n, c in model.cells_and_names() if isinstance(c, TokenPerformer)]
    for cell_name, kind, dtypes in seen:
        # float16: the Dense layers, except inside the float32 T2T performer; float32: all the rest
        low = kind == "Dense" and not any(cell_name.startswith(p) for p in performers)
        assert all(d == (ms.float16 if low else ms.float32) for d in dtypes), (cell_name, kind, dtypes)
    norms = [n for n, kind, _ in seen if kind == "LayerNorm"]
    assert len(norms) == sum(isinstance(c, LayerNorm) for _, c in model.cells_and_names())  # every one ran
    assert all(o.dtype == ms.float16 for o in logits)  # heads are Dense layers


@pytest.mark.exhaustive
@pytest.mark.parametrize("name", ["dvt_vit", "dvt_t2t_vit"])
def test_o2_logits_stay_close_to_float32(graph_mode, name):
    x = _images()
    reference = [o.asnumpy() for o in _model(name)(x)]
    got = [o.asnumpy().astype(np.float32) for o in apply_precision(_model(name), "O2")(x)]
    for g, r in zip(got, reference, strict=True):
        assert np.abs(g - r).max() < O2_TOLERANCE


def test_o3_is_pure_low_precision_and_levels_are_checked(pynative_mode):
    model = apply_precision(_model("dvt_vit"), "O3")
    dtypes = []
    model.exit(0).blocks[0].norm1.register_forward_hook(lambda cell, inputs, output: dtypes.append(output.dtype))
    model(_images())
    assert dtypes == [ms.float16]
    with pytest.raises(ValueError, match="amp_level must be one of O0, O2, O3"):
        apply_precision(_model("dvt_vit"), "O1")
    with pytest.raises(ValueError, match="float16, bfloat16"):
        apply_precision(_model("dvt_vit"), "O2", "float8")
