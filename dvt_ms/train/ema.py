"""Exponential moving average of the model weights, updated inside the compiled train step."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

_ema_update = ops.MultitypeFuncGraph("ema_update")


@_ema_update.register("Number", "Number", "Tensor", "Tensor")  # a fixed decay
@_ema_update.register("Tensor", "Tensor", "Tensor", "Tensor")  # gated by the overflow flag
def _update_one(decay, one_minus_decay, shadow, param):
    ops.assign(shadow, shadow * decay + param.astype(shadow.dtype) * one_minus_decay)
    return True


class EMA(nn.Cell):
    """Shadow copies ``ema.<name>`` of ``params``; ``construct()`` moves every shadow towards its
    parameter: ``ema = decay * ema + (1 - decay) * param`` (as timm's ModelEmaV2)."""

    def __init__(self, params: Sequence[Parameter], decay: float) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {decay}")
        self.params = ParameterTuple(params)
        self.shadow = self.params.clone(prefix="ema", init="same")
        self.decay, self.one_minus_decay = float(decay), 1.0 - float(decay)
        self.decay_tensor = Tensor(np.float32(self.decay))
        self.one_minus_decay_tensor = Tensor(np.float32(self.one_minus_decay))
        self.hyper_map = ops.HyperMap()

    def construct(self, apply=None):
        """Move the shadows; with ``apply`` (a bool scalar tensor) False, leave them as they are (decay 1),
        without a branch in the graph."""
        if apply is None:
            return self.hyper_map(ops.partial(_ema_update, self.decay, self.one_minus_decay), self.shadow,
                                  self.params)
        decay = ops.select(apply, self.decay_tensor, ops.ones_like(self.decay_tensor))
        one_minus_decay = ops.select(apply, self.one_minus_decay_tensor, ops.zeros_like(self.decay_tensor))
        return self.hyper_map(ops.partial(_ema_update, decay, one_minus_decay), self.shadow, self.params)

    def shadow_arrays(self) -> dict[str, np.ndarray]:
        """The averaged weights under the model's parameter names."""
        return {p.name: s.asnumpy().copy() for p, s in zip(self.params, self.shadow, strict=True)}

    def swap_into(self, model_params: Sequence[Parameter]) -> dict[str, np.ndarray]:
        """Copy the averaged weights into ``model_params`` (matched by name); returns the values
        they held, for :meth:`restore`."""
        shadow = self.shadow_arrays()
        saved = {}
        for p in model_params:
            if p.name in shadow:
                saved[p.name] = p.asnumpy().copy()
                # ops.assign, not set_data: compiled train graphs must keep seeing the same buffers.
                ops.assign(p, Tensor(shadow[p.name]))
        return saved

    @staticmethod
    def restore(model_params: Sequence[Parameter], saved: dict[str, np.ndarray]) -> None:
        """Put back the values :meth:`swap_into` returned."""
        for p in model_params:
            if p.name in saved:
                ops.assign(p, Tensor(saved[p.name]))
