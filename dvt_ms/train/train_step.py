"""One training iteration as a single compiled graph.

Forward with the summed multi-exit loss, backward of the scaled loss, gradient all-reduce (data
parallel), unscaling, overflow check, optional clipping, the AdamW update at this step's learning
rate, the loss-scale update and the EMA update all live in :class:`TrainStep.construct`.
"""

from __future__ import annotations

import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
from mindspore import dtype as mstype

from .. import kernels
from ..models.layers import MaskStreams
from .ema import EMA
from .loss_scale import LossScaling
from .optimizer import AdamW

_square_sum = ops.MultitypeFuncGraph("square_sum")
_mul = ops.MultitypeFuncGraph("mul")


@_square_sum.register("Tensor")
def _square_sum_one(grad):
    return (grad * grad).sum()


@_mul.register("Tensor", "Tensor")
def _mul_one(coef, grad):
    return grad * coef


class TrainStep(nn.Cell):
    """``construct(images, targets) -> (total_loss, per_exit_loss, lr, finite, loss_scale)``.

    ``n_exits`` sizes the running per-exit loss sums that :meth:`take_loss_sums` reads for the log.

    ``network`` maps ``(images, targets)`` to ``(total, per_exit)``; ``lr_table`` holds the learning
    rate of every step and is indexed by the ``global_step`` Parameter (so the schedule position is
    part of the checkpointed state). A step whose gradients overflowed (inf/NaN) changes no weight,
    moment or EMA and is counted by ``loss_scaler``; ``clip_grad`` clips the global gradient norm as
    ``torch.nn.utils.clip_grad_norm_``. ``reducer`` (data parallel) averages gradients over devices.
    ``masks`` (from :func:`~dvt_ms.models.layers.bind_masks` on the network's model) holds the words of
    ``global_step`` when a step starts (each step computes the next step's at its end; :meth:`sync_masks`
    sets them on the host, e.g. after a resume), so dropout and drop-path masks are a function of the step
    and a resume replays them exactly; the words are not part of the state (:meth:`derived_state`).
    """

    def __init__(self, network: nn.Cell, optimizer: AdamW, lr_table: np.ndarray, loss_scaler: LossScaling,
                 n_exits: int, clip_grad: float | None = None, ema: EMA | None = None,
                 reducer: nn.Cell | None = None, masks: MaskStreams | None = None) -> None:
        super().__init__(auto_prefix=False)
        if clip_grad is not None and clip_grad <= 0:
            raise ValueError(f"clip_grad must be positive (or unset), got {clip_grad}")
        self.network = network
        self.optimizer = optimizer
        self.weights = ParameterTuple(optimizer.params)
        self.loss_scaler = loss_scaler
        self.ema = ema
        self.use_ema = ema is not None
        self.reducer = reducer
        self.use_reducer = reducer is not None
        self.masks = masks
        self.use_masks = masks is not None
        self.clip_grad = float(clip_grad) if clip_grad else 0.0
        self.lr_table = Tensor(np.asarray(lr_table, np.float32))
        self.last_step = len(lr_table) - 1
        self.global_step = Parameter(Tensor(0, mstype.int32), name="global_step", requires_grad=False)
        # Running sums for the log, read and reset by the host between steps (no sync per step).
        self.loss_sum = Parameter(Tensor(np.zeros(n_exits, np.float32)), name="log_loss_sum", requires_grad=False)
        self.loss_steps = Parameter(Tensor(0, mstype.int32), name="log_loss_steps", requires_grad=False)
        # Steps in a row whose loss was NaN/inf, and the longest such run since the host last looked.
        self.bad_streak = Parameter(Tensor(0, mstype.int32), name="bad_loss_streak", requires_grad=False)
        self.worst_streak = Parameter(Tensor(0, mstype.int32), name="worst_bad_loss_streak", requires_grad=False)
        self.gated_update = optimizer.use_fused
        # CPU, float32, fixed loss scale, no clipping: the overflow check, unscaling, AdamW and the EMA in one
        # in-place kernel over every tensor (a few nodes in the graph instead of some ten per parameter)
        one_pass = optimizer.use_fused and not loss_scaler.dynamic and not self.clip_grad and (
            ema is None or kernels.all_float32(ema.shadow))
        self.update = kernels.train_update_op() if one_pass else None
        self.one_pass_update = self.update is not None
        if self.one_pass_update:
            decay = (ema.decay, ema.one_minus_decay, 1.0) if ema is not None else (1.0, 0.0, 0.0)
            self.ema_hyper = Tensor(np.array(decay, np.float32))
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()

    def clip(self, grads):
        norm = ops.sqrt(ops.stack(self.hyper_map(_square_sum, grads)).sum())
        coef = ops.minimum(self.clip_grad / (norm + 1e-6), 1.0)
        return self.hyper_map(ops.partial(_mul, coef), grads)

    def construct(self, images, targets):
        step = self.global_step * 1
        total, per_exit = self.network(images, targets)
        scale = self.loss_scaler.scale * 1.0
        sens = (ops.ones_like(total) * scale.astype(total.dtype), ops.zeros_like(per_exit))
        grads = self.grad(self.network, self.weights)(images, targets, sens)
        if self.use_reducer:
            grads = self.reducer(grads)
        lr = self.lr_table[ops.minimum(step, self.last_step)]
        if self.one_pass_update:
            finite = self.apply_one_pass(grads, lr, scale)
        else:
            finite = self.apply_update(grads, lr)
        streak = (self.bad_streak + 1) * ops.logical_not(ops.isfinite(total)).astype(mstype.int32)
        ops.assign(self.bad_streak, streak)
        ops.assign(self.worst_streak, ops.maximum(self.worst_streak, streak))
        ops.assign(self.loss_sum, self.loss_sum + per_exit.astype(mstype.float32))
        ops.assign(self.loss_steps, self.loss_steps + 1)
        ops.assign(self.global_step, step + 1)
        if self.use_masks:
            # The next step's mask streams, written last: the mask cells of this graph read the words the
            # previous step (or sync_masks) left, whatever order the compiler gives their loads.
            self.masks(step + 1)
        return total, per_exit, lr, finite, scale

    def apply_one_pass(self, grads, lr, scale):
        """The update through ``dvt_train_update``: returns whether it was applied (every gradient finite)."""
        opt = self.optimizer
        hyper = ops.concat((opt.hyper(lr), ops.reciprocal(scale.astype(mstype.float32)).reshape((1,)),
                            self.ema_hyper))
        shadows = self.ema.shadow if self.use_ema else ()
        applied = self.update(hyper, opt.decayed, *self.weights, *grads, *opt.exp_avg, *opt.exp_avg_sq, *shadows)
        applied = applied.reshape(())
        ops.assign(opt.step, opt.step + applied.astype(mstype.int32))
        overflows = self.loss_scaler.overflows
        ops.assign(overflows, overflows + (1 - applied.astype(mstype.int32)))
        return applied > 0.5

    def apply_update(self, grads, lr):
        """Unscale and check the gradients (a dynamic scale adjusts for the next step), clip, update the weights
        and the EMA unless a gradient overflowed; returns whether every gradient was finite."""
        finite, grads = self.loss_scaler(grads)
        if self.clip_grad > 0:
            grads = self.clip(grads)
        if self.gated_update:
            # The fused CPU update takes the overflow flag itself: no branch around hundreds of updates in
            # the graph (measured: the branch alone costs a third of the step's compile time).
            self.optimizer(grads, lr, finite)
            if self.use_ema:
                self.ema(finite)
        elif finite:
            self.optimizer(grads, lr)
            if self.use_ema:
                self.ema()
        return finite

    def sync_masks(self) -> None:
        """Set the mask streams to the words of the current ``global_step`` (before a run starts or resumes)."""
        if self.use_masks:
            self.masks.set_step(int(self.global_step.asnumpy()))

    def derived_state(self) -> tuple[str, ...]:
        """Names of the Parameters recomputed at every step, which a training state need not hold."""
        return (self.masks.words.name,) if self.use_masks else ()

    def take_worst_streak(self) -> int:
        """The longest run of consecutive NaN/inf-loss steps since the last call (one still going counts)."""
        worst = int(self.worst_streak.asnumpy())
        ops.assign(self.worst_streak, self.bad_streak * 1)
        return worst

    def log_counters(self) -> np.ndarray:
        """The running figures for the log (per-exit loss sums, their step count, the NaN/inf streaks) as one
        float32 vector: what differs between data-parallel ranks in the step's state (each computes its loss on
        its own images), so that a state saved by one rank can hold every rank's."""
        counts = [int(p.asnumpy()) for p in (self.loss_steps, self.bad_streak, self.worst_streak)]
        return np.concatenate([self.loss_sum.asnumpy().astype(np.float32), np.asarray(counts, np.float32)])

    def set_log_counters(self, values) -> None:
        """Set what :meth:`log_counters` returned."""
        values = np.asarray(values, np.float32)
        n = self.loss_sum.shape[0]
        if values.shape != (n + 3,):
            raise ValueError(f"log counters need {n + 3} values, got {values.shape}")
        ops.assign(self.loss_sum, Tensor(values[:n]))
        for param, value in zip((self.loss_steps, self.bad_streak, self.worst_streak), values[n:], strict=True):
            ops.assign(param, Tensor(int(value), mstype.int32))

    def take_loss_sums(self) -> tuple[np.ndarray, int]:
        """Per-exit loss summed over the steps since the last call, and their count; resets both."""
        sums, steps = self.loss_sum.asnumpy().copy(), int(self.loss_steps.asnumpy())
        # ops.assign, not set_data: a graph compiled by jit in PyNative mode keeps the old buffers.
        ops.assign(self.loss_sum, Tensor(np.zeros_like(sums)))
        ops.assign(self.loss_steps, Tensor(0, mstype.int32))
        return sums, steps
