"""The graphs the audit compiles, each built by the code that builds it for real.

* ``train_O0`` / ``train_O2``: dvt-train's step (:func:`dvt_ms.train.run.build_train_step`) with dropout,
  attention dropout and drop path on (0.1 where the config has 0), soft (mixup) targets, EMA, gradient
  clipping, the dynamic loss scaler under O2 and, in a data-parallel launch, the gradient all-reduce;
* ``validation``: the model in inference mode at the training batch, as validation runs it (static);
* ``stage_<k>``: exit ``k`` as the early-exit engine compiles it on Ascend (stock ops, a padded batch);
* ``export_<k>``: exit ``k`` as dvt-export writes it (a dynamic batch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..options import AuditSettings
from .rules import GraphKind

if TYPE_CHECKING:
    from ..train.distributed import Runtime

TRAIN, STATIC, EXPORT = (GraphKind("train", static=True), GraphKind("inference", static=True),
                         GraphKind("export", static=False))
MASK_RATE = 0.1  # the rate dropout, attention dropout and drop path get when the config leaves them at 0


@dataclass
class AuditGraph:
    """A graph to audit: ``run()`` builds and runs it once (so that it compiles)."""

    name: str
    kind: GraphKind
    run: Callable[[], None]


def audit_config(settings: AuditSettings) -> AuditSettings:
    """``settings`` with every mask on and every training feature the audit must see."""
    masks = {key: getattr(settings, key) or MASK_RATE for key in ("drop_rate", "attn_drop_rate", "drop_path_rate")}
    # the recipe's lr is quoted per lr_base_batch images: not scaled to the audit's small batch
    return settings.replace(**masks, ema=True, clip_grad=settings.clip_grad or 1.0, pretrained=None,
                            lr_base_batch=None)


def _inputs(settings: AuditSettings, batch: int) -> tuple[np.ndarray, np.ndarray]:
    spec = settings.model_spec()
    images = np.random.default_rng(0).standard_normal((batch, spec.in_chans, spec.img_size, spec.img_size))
    targets = np.full((batch, spec.num_classes), 1.0 / spec.num_classes)  # soft targets, as mixup gives
    return images.astype(np.float32), targets.astype(np.float32)


def train_graph(settings: AuditSettings, runtime: Runtime, amp_level: str) -> AuditGraph:
    """dvt-train's compiled step at ``amp_level`` (dynamic loss scale under O2/O3)."""

    def run() -> None:
        from mindspore import Tensor

        from .. import kernels
        from ..train.run import build_train_step, build_training_model

        run_cfg = settings.replace(amp_level=amp_level, loss_scale_type="dynamic" if amp_level != "O0" else "fixed")
        log = logging.getLogger("dvt_ms.audit")
        with kernels.use_kernels(False):  # what Ascend compiles: MindSpore's own ops (CPU trains with kernels)
            model = build_training_model(run_cfg, runtime, log)
            step, _ = build_train_step(run_cfg, model, 10, runtime, log)
        step.set_train(True)
        images, targets = _inputs(settings, settings.batch_size)
        step(Tensor(images), Tensor(targets))

    return AuditGraph(f"train_{amp_level}", TRAIN, run)


def inference_graphs(settings: AuditSettings, batch: int) -> list[AuditGraph]:
    """Validation, every early-exit stage and every export graph of the config's model (stock ops)."""
    from mindspore import Tensor

    from .. import kernels
    from ..models.cascade import ReuseState

    with kernels.use_kernels(False):  # what Ascend compiles: MindSpore's own ops
        model = settings.build_model()
    model.set_train(False)
    images = Tensor(_inputs(settings, batch)[0])
    states: dict[int, ReuseState] = {}

    def validation() -> None:
        model(images)

    def stage(k: int) -> Callable[[], None]:
        def run() -> None:
            _, states[k] = model.run_stage(k, images, states.get(k - 1))
        return run

    def export(k: int) -> Callable[[], None]:
        def run() -> None:
            from ..serve.graphs import export_graph

            graph, _ = export_graph(model, k)
            state = states.get(k - 1) or ReuseState()
            want_features, want_relations = model.needs_state(k)
            graph(images, *([state.features] if want_features else []), *([state.relations] if want_relations else []))
        return run

    n = model.num_exits
    return ([AuditGraph("validation", STATIC, validation)]
            + [AuditGraph(f"stage_{k + 1}", STATIC, stage(k)) for k in range(n)]
            + [AuditGraph(f"export_{k + 1}", EXPORT, export(k)) for k in range(n)])
