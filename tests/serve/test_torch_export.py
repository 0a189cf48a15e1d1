"""The PyTorch reference made ready for ONNX export: the export modules give what the reference's own give, the
soft split exactly, and swapping them in keeps the weights and every exit's outputs."""

from __future__ import annotations

import copy

import pytest

from tests.helpers import HAVE_TORCH, tiny_t2t_spec, torch_reference

if not HAVE_TORCH:
    pytest.skip("needs PyTorch (pip install .[torch])", allow_module_level=True)

import torch

from dvt_ms.reference.torch_dvt import GridResize, SoftSplit
from dvt_ms.serve.torch_export import ConvSoftSplit, MatrixGridResize, use_export_modules


@pytest.mark.parametrize(("channels", "kernel", "stride", "padding"), [(3, 7, 4, 2), (16, 3, 2, 1), (5, 9, 2, 0)])
def test_the_one_hot_convolution_is_the_unfold_exactly(channels, kernel, stride, padding):
    x = torch.randn(2, channels, 19, 19, generator=torch.Generator().manual_seed(kernel))
    want = SoftSplit(channels, kernel, stride, padding)(x)
    torch.testing.assert_close(ConvSoftSplit(channels, kernel, stride, padding)(x), want, rtol=0, atol=0)


def test_every_resize_and_soft_split_is_swapped_and_the_exits_give_the_same():
    reference = torch_reference(tiny_t2t_spec(), seed=0)
    exported = use_export_modules(copy.deepcopy(reference))

    export_form = {GridResize: MatrixGridResize, SoftSplit: ConvSoftSplit}
    originals = {name: m for name, m in reference.named_modules() if type(m) in export_form}
    assert {type(m) for m in originals.values()} == set(export_form)  # the cascade has both kinds
    swapped = dict(exported.named_modules())
    for name, module in originals.items():
        assert type(swapped[name]) is export_form[type(module)], name
        assert swapped[name].extra_repr() == module.extra_repr(), name  # the same grids / split geometry
    assert not any(type(m) in export_form for m in exported.modules())
    assert list(exported.state_dict()) == list(reference.state_dict())

    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for (logits, tokens, relations), got in zip(reference.forward_exits(x), exported.forward_exits(x), strict=True):
            torch.testing.assert_close(got[0], logits, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got[1], tokens, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(torch.cat(got[2], 1), torch.cat(relations, 1), rtol=1e-5, atol=1e-5)
