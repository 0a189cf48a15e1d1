"""AdamW with torch semantics and the parameter groups of the DVT recipe.

:class:`AdamW` follows ``torch.optim.AdamW`` step for step (decoupled weight decay applied to the
parameter before the Adam update, bias-corrected moments, epsilon added after the square root). The
learning rate is an input of every step, so a schedule computed anywhere (here: inside the compiled
train step) drives it, and the optimizer's own state is only what torch keeps: the step count and the
two moments of every parameter.
"""

from __future__ import annotations

from collections.abc import Sequence

from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
from mindspore import dtype as mstype

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
        self.hyper_map = ops.HyperMap()

    def construct(self, grads, lr):
        step = self.step + 1
        ops.assign(self.step, step)
        # Bias corrections in float64, as torch computes them on the host in double precision.
        t = step.astype(mstype.float64)
        bias1 = 1.0 - ops.pow(Tensor(self.beta1, mstype.float64), t)
        bias2_sqrt = ops.sqrt(1.0 - ops.pow(Tensor(self.beta2, mstype.float64), t)).astype(mstype.float32)
        step_size = (lr.astype(mstype.float64) / bias1).astype(mstype.float32)
        lr = lr.astype(mstype.float32)
        update = ops.partial(_adamw_update, lr, step_size, bias2_sqrt, self.one_minus_beta1, self.beta2,
                             self.one_minus_beta2, self.eps)
        return self.hyper_map(update, self.weight_decays, self.params, grads, self.exp_avg, self.exp_avg_sq)
