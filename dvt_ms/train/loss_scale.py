"""Loss scaling for mixed precision: dynamic (Ascend/GPU) or fixed, state kept in Parameters."""

from __future__ import annotations

from mindspore import Parameter, Tensor, nn, ops
from mindspore import dtype as mstype

LOSS_SCALE_TYPES = ("auto", "dynamic", "fixed")


def resolve_loss_scale_type(kind: str, amp_level: str, device_target: str) -> str:
    """``auto`` means dynamic scaling on Ascend/GPU under mixed precision, a fixed scale otherwise
    (CPU, where MindSpore's own loss-scale managers support only a fixed scale, and float32 runs)."""
    if kind not in LOSS_SCALE_TYPES:
        raise ValueError(f"loss_scale_type must be one of {', '.join(LOSS_SCALE_TYPES)}, got {kind!r}")
    if kind == "auto":
        return "dynamic" if device_target in ("Ascend", "GPU") and amp_level != "O0" else "fixed"
    return kind


class LossScaler(nn.Cell):
    """Loss-scale state: ``scale`` (float32), ``good_steps`` since the last change and ``overflows``
    (steps skipped), all Parameters so that they go into the resume checkpoint.

    The train step skips the update of every step whose gradients overflowed and counts it here.
    Dynamic: such a step also divides the scale by ``factor`` (not below 1), and ``window`` finite
    steps in a row multiply it by ``factor``. Fixed: the scale never changes.
    """

    def __init__(self, scale: float = 1024.0, dynamic: bool = False, factor: float = 2.0, window: int = 1000) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"loss_scale must be positive, got {scale}")
        if dynamic and (factor <= 1 or window < 1):
            raise ValueError(f"dynamic loss scaling needs factor > 1 and window >= 1, got {factor}, {window}")
        self.dynamic = dynamic
        self.factor, self.window = float(factor), int(window)
        self.scale = Parameter(Tensor(float(scale), mstype.float32), name="loss_scale", requires_grad=False)
        self.good_steps = Parameter(Tensor(0, mstype.int32), name="loss_scale_good_steps", requires_grad=False)
        self.overflows = Parameter(Tensor(0, mstype.int32), name="overflow_steps", requires_grad=False)

    def construct(self, finite):
        """Record one step whose gradients were ``finite`` (bool scalar); returns ``finite``."""
        overflow = ops.logical_not(finite).astype(mstype.int32)
        ops.assign(self.overflows, self.overflows + overflow)
        if self.dynamic:
            good = (self.good_steps + 1) * (1 - overflow)
            grow = (good >= self.window).astype(mstype.float32)
            shrunk = ops.maximum(self.scale / self.factor, 1.0)
            grown = self.scale * (1.0 + (self.factor - 1.0) * grow)
            new_scale = ops.select(finite, grown, shrunk)
            ops.assign(self.scale, new_scale)
            ops.assign(self.good_steps, good * (1 - grow.astype(mstype.int32)))
        return finite
