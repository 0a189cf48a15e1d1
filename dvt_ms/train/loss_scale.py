"""Loss scaling for mixed precision: MindSpore's dynamic (Ascend/GPU) or static scaler, state kept in Parameters."""

from __future__ import annotations

from collections.abc import Sequence

from mindspore import Parameter, Tensor, amp, nn, ops
from mindspore import dtype as mstype

from .. import kernels

LOSS_SCALE_TYPES = ("auto", "dynamic", "fixed")


def resolve_loss_scale_type(kind: str, amp_level: str, device_target: str) -> str:
    """``auto`` means dynamic scaling on Ascend/GPU under mixed precision, a fixed scale otherwise
    (CPU, where MindSpore's own loss-scale managers support only a fixed scale, and float32 runs)."""
    if kind not in LOSS_SCALE_TYPES:
        raise ValueError(f"loss_scale_type must be one of {', '.join(LOSS_SCALE_TYPES)}, got {kind!r}")
    if kind == "auto":
        return "dynamic" if device_target in ("Ascend", "GPU") and amp_level != "O0" else "fixed"
    return kind


class LossScaling(nn.Cell):
    """MindSpore's ``amp.DynamicLossScaler`` / ``amp.StaticLossScaler`` in a cell, with the count of
    skipped steps; their Parameters (``loss_scale``, ``loss_scale_good_steps``, ``overflow_steps``) are
    this cell's, so they go into the resume state.

    ``construct(scaled gradients)`` unscales them, checks them with ``amp.all_finite``,
    counts an overflow, lets a dynamic scaler adjust (divide by ``factor`` on overflow, multiply after
    ``window`` finite steps) and returns ``(finite, unscaled gradients)``. The train step skips the
    update of a step that is not finite. Fixed: the scale never changes.
    """

    def __init__(self, scale: float = 1024.0, dynamic: bool = False, factor: float = 2.0, window: int = 1000,
                 params: Sequence[Parameter] | None = None) -> None:
        super().__init__()
        if scale < 1:
            raise ValueError(f"loss_scale must be >= 1, got {scale}")
        if dynamic and (factor <= 1 or factor != int(factor) or window < 1):
            raise ValueError(f"dynamic loss scaling needs an integer factor > 1 and window >= 1, got {factor}, "
                             f"{window}")
        self.dynamic = dynamic
        if dynamic:
            self.scaler = amp.DynamicLossScaler(float(scale), int(factor), int(window))
            self.scaler.counter.name = "loss_scale_good_steps"
            self.good_steps = self.scaler.counter
        else:
            self.scaler = amp.StaticLossScaler(float(scale))
        self.scaler.scale_value.name = "loss_scale"
        self.scale = self.scaler.scale_value
        self.overflows = Parameter(Tensor(0, mstype.int32), name="overflow_steps", requires_grad=False)
        # CPU: one fused check of every gradient (one node instead of two per tensor: a smaller, faster-compiling
        # graph); Ascend/GPU: amp.all_finite (on 910A it reads the float-status register).
        float32 = params is not None and kernels.all_float32(params)
        self.fused_check = kernels.all_finite_op() if float32 else None
        self.use_fused_check = self.fused_check is not None

    def all_finite(self, grads):
        if self.use_fused_check:
            return self.fused_check(*grads).reshape(()) > 0.5
        return amp.all_finite(grads)

    def construct(self, grads):
        grads = self.scaler.unscale(grads)
        finite = self.all_finite(grads)
        ops.assign(self.overflows, self.overflows + ops.logical_not(finite).astype(mstype.int32))
        if self.dynamic:
            self.scaler.adjust(finite)
        return finite, grads
