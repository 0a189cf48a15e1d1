"""AdamW with torch semantics and the parameter groups of the DVT recipe.

:class:`AdamW` follows ``torch.optim.AdamW`` step for step (decoupled weight decay applied to the
parameter before the Adam update, bias-corrected moments, epsilon added after the square root). The
learning rate is an input of every step, so a schedule computed anywhere (here: inside the compiled
train step) drives it, and the optimizer's own state is only what torch keeps: the step count and the
two moments of every parameter.

The bias corrections come from float32 tables computed on the host in float64 (as torch computes them in
Python floats), indexed by the step count: the compiled graph holds no float64 (Ascend's AI Cores have no
float64 kernels). A table ends where both corrections have become 1.0 in float32 (``1 - beta ** t`` below
half an ulp), so its length depends on the betas, not on the length of the run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
from mindspore import dtype as mstype

from .. import kernels

NO_DECAY_NAMES = ("cls_token", "pos_embed")

_adamw_update = ops.MultitypeFuncGraph("adamw_update")


# Constants such as 1 - beta arrive precomputed in double precision: graph mode would fold ``1.0 - beta``
# in float32 and be off by 1e-5 relative.
@_adamw_update.register("Tensor", "Tensor", "Tensor", "Number", "Number", "Number", "Number", "Number",
                        "Tensor", "Tensor", "Tensor", "Tensor")
def _update_one(lr, step_size, bias2_sqrt, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, param,
                grad, exp_avg, exp_avg_sq):
    grad = grad.astype(param.dtype)
    decayed = param * (1.0 - lr * weight_decay) if weight_decay else param
    m = exp_avg + (grad - exp_avg) * one_minus_beta1
    v = exp_avg_sq * beta2 + grad * grad * one_minus_beta2
    denom = ops.sqrt(v) / bias2_sqrt + eps
    ops.assign(exp_avg, m)
    ops.assign(exp_avg_sq, v)
    ops.assign(param, decayed - step_size * (m / denom))
    return True


_fused_update = ops.MultitypeFuncGraph("fused_adamw_update")


@_fused_update.register("Function", "Tensor", "Tensor", "Number", "Tensor", "Tensor", "Tensor", "Tensor")
def _fused_update_one(fused, hyper_decay, hyper_plain, weight_decay, param, grad, exp_avg, exp_avg_sq):
    hyper = hyper_decay if weight_decay else hyper_plain
    new_param, m, v = fused(param, grad.astype(param.dtype), exp_avg, exp_avg_sq, hyper)
    ops.assign(exp_avg, m)
    ops.assign(exp_avg_sq, v)
    ops.assign(param, new_param)
    return True


MAX_TABLE_STEPS = 1 << 22


def bias_correction_tables(beta1: float, beta2: float) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``1 - beta1 ** t`` and ``sqrt(1 - beta2 ** t)`` for t = 1, 2, ..., past the first t at which
    both equal 1.0 in float32 (later steps use the last entry); ``ValueError`` when that takes more than
    :data:`MAX_TABLE_STEPS` entries (a beta within ~4e-6 of 1)."""
    # beta ** t < 2**-25 makes 1 - beta ** t round to 1.0; the square root needs beta2 ** t < 2**-24
    ends = [1]
    for beta, floor in ((beta1, 2.0 ** -25), (beta2, 2.0 ** -24)):
        if beta > 0.0:
            ends.append(int(np.ceil(np.log(floor) / np.log(beta))) + 1)
    if max(ends) > MAX_TABLE_STEPS:
        raise ValueError(f"AdamW betas {beta1}, {beta2}: the bias corrections would need a table of "
                         f"{max(ends):,} steps (at most {MAX_TABLE_STEPS:,}); use betas further from 1")
    t = np.arange(1, max(ends) + 1, dtype=np.float64)
    bias1 = (1.0 - np.power(beta1, t)).astype(np.float32)
    bias2_sqrt = np.sqrt(1.0 - np.power(beta2, t)).astype(np.float32)
    return bias1, bias2_sqrt


def no_weight_decay(name: str, param: Parameter) -> bool:
    """True for parameters the recipe does not decay: norms and biases (every 1-D tensor), class
    tokens and position embeddings."""
    leaf = name.rsplit(".", 1)[-1]
    return len(param.shape) <= 1 or leaf in NO_DECAY_NAMES or name.endswith(".bias")


def param_groups(model: nn.Cell, weight_decay: float) -> tuple[list[Parameter], list[float]]:
    """Trainable parameters of ``model`` and the weight decay of each (0 where :func:`no_weight_decay`)."""
    params, decays = [], []
    for p in model.trainable_params():
        params.append(p)
        decays.append(0.0 if no_weight_decay(p.name, p) else float(weight_decay))
    return params, decays


class AdamW(nn.Cell):
    """``torch.optim.AdamW`` for a list of parameters, each with its own weight decay.

    ``construct(grads, lr)`` applies one update with learning rate ``lr`` (a float32 scalar tensor)
    and returns True. State: ``step`` (updates applied so far) and per parameter the moments
    ``exp_avg.<name>`` / ``exp_avg_sq.<name>``, all Parameters, so a checkpoint of this cell's
    parameters is a complete optimizer state.
    """

    def __init__(self, params: Sequence[Parameter], weight_decays: Sequence[float],
                 betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__()
        if len(params) != len(weight_decays):
            raise ValueError(f"AdamW got {len(params)} parameters but {len(weight_decays)} weight decays")
        beta1, beta2 = (float(b) for b in betas)
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"AdamW betas must lie in [0, 1), got {tuple(betas)}")
        if eps <= 0:
            raise ValueError(f"AdamW eps must be positive, got {eps}")
        self.params = ParameterTuple(params)
        self.exp_avg = self.params.clone(prefix="exp_avg", init="zeros")
        self.exp_avg_sq = self.params.clone(prefix="exp_avg_sq", init="zeros")
        self.step = Parameter(Tensor(0, mstype.int32), name="adamw_step", requires_grad=False)
        self.beta1, self.beta2, self.eps = beta1, beta2, float(eps)
        self.one_minus_beta1, self.one_minus_beta2 = 1.0 - beta1, 1.0 - beta2
        self.weight_decays = tuple(float(w) for w in weight_decays)
        bias1, bias2_sqrt = bias_correction_tables(beta1, beta2)
        self.bias1, self.bias2_sqrt = Tensor(bias1), Tensor(bias2_sqrt)
        self.last_entry = len(bias1) - 1
        self.hyper_map = ops.HyperMap()
        # CPU: one fused kernel per tensor (one pass instead of ~15 element-wise ops) when every tensor is
        # float32 and every weight decay is 0 or one shared value; the stock ops otherwise.
        decays = {w for w in self.weight_decays if w}
        self.fused = kernels.adamw_op() if kernels.all_float32(self.params) and len(decays) <= 1 else None
        self.use_fused = self.fused is not None
        tail = (self.one_minus_beta1, self.beta2, self.one_minus_beta2, self.eps)  # rounded from float64 once
        self.shared_decay = decays.pop() if decays else 0.0
        self.tail_plain = Tensor(np.array([*tail, 0.0], np.float32))
        self.tail_decay = Tensor(np.array([*tail, self.shared_decay], np.float32))
        # which tensors take the (one) weight decay, for the one-pass update of the whole step (dvt_train_update)
        self.decayed = Tensor(np.array([1.0 if w else 0.0 for w in self.weight_decays], np.float32))

    def hyper(self, lr):
        """The float32 [8] AdamW constants of this step's update (``dvt_train_update``'s first eight): learning
        rate, step size, square root of the second bias correction, 1 - beta1, beta2, 1 - beta2, eps and the
        weight decay; reads the step count before this update."""
        entry = ops.minimum(self.step + 1, self.last_entry + 1) - 1
        lr = lr.astype(mstype.float32)
        return ops.concat((ops.stack((lr, lr / self.bias1[entry], self.bias2_sqrt[entry])), self.tail_decay))

    def construct(self, grads, lr, apply=None):
        """One update with learning rate ``lr``. ``apply`` (a bool scalar tensor, fused CPU path only): when
        False nothing changes, without a branch in the graph (the caller skips the call otherwise)."""
        step = self.step + 1
        if self.use_fused and apply is not None:
            ops.assign(self.step, self.step + apply.astype(mstype.int32))
        else:
            ops.assign(self.step, step)
        entry = ops.minimum(step, self.last_entry + 1) - 1
        lr = lr.astype(mstype.float32)
        step_size = lr / self.bias1[entry]  # within 1 ulp of the float64 quotient
        bias2_sqrt = self.bias2_sqrt[entry]
        if self.use_fused:
            gate = ops.ones((1,), mstype.float32) if apply is None else apply.astype(mstype.float32).reshape((1,))
            head = ops.stack((lr, step_size, bias2_sqrt))
            plain = ops.concat((head, self.tail_plain, gate))
            decay = ops.concat((head, self.tail_decay, gate))
            update = ops.partial(_fused_update, self.fused, decay, plain)
            return self.hyper_map(update, self.weight_decays, self.params, grads, self.exp_avg, self.exp_avg_sq)
        update = ops.partial(_adamw_update, lr, step_size, bias2_sqrt, self.one_minus_beta1, self.beta2,
                             self.one_minus_beta2, self.eps)
        return self.hyper_map(update, self.weight_decays, self.params, grads, self.exp_avg, self.exp_avg_sq)
