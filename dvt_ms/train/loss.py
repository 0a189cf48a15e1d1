"""Training loss of a DVT cascade: the plain sum of every exit's cross-entropy on soft targets."""

from __future__ import annotations

from mindspore import dtype as mstype
from mindspore import nn, ops


class SoftTargetCrossEntropy(nn.Cell):
    """Mean over the batch of ``-sum_c t_c log softmax(z)_c``, computed in float32."""

    def construct(self, logits, targets):
        logp = ops.log_softmax(logits.astype(mstype.float32), -1)
        return -(targets.astype(mstype.float32) * logp).sum(-1).mean()


class MultiExitLoss(nn.Cell):
    """``construct(outputs, targets) -> (total, per_exit)``: ``outputs`` is the tuple of logits of
    every exit, ``targets`` [B, num_classes] soft targets shared by all exits; ``per_exit`` is the
    float32 vector of each exit's cross-entropy and ``total`` its sum."""

    def __init__(self) -> None:
        super().__init__()
        self.ce = SoftTargetCrossEntropy()

    def construct(self, outputs, targets):
        losses = ()
        for logits in outputs:
            losses = (*losses, self.ce(logits, targets))
        per_exit = ops.stack(losses)
        return per_exit.sum(), per_exit


class NetWithLoss(nn.Cell):
    """A model and :class:`MultiExitLoss` in one cell: ``(images, targets) -> (total, per_exit)``."""

    def __init__(self, model: nn.Cell, loss: MultiExitLoss | None = None) -> None:
        super().__init__(auto_prefix=False)
        self.model = model
        self.loss = loss or MultiExitLoss()

    def construct(self, images, targets):
        return self.loss(self.model(images), targets)
