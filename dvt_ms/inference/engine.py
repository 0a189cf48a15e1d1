"""Real early-exit inference: later exits run only on the images that are still undecided.

For a batch, exit 1 runs on every image; the images whose top softmax probability clears ``T_1`` are
done; exit 2 runs on the rest only, with the reuse state (features, relations) of exit 1 taken for
exactly those images with ``ops.index_select``; and so on, the last exit taking whatever remains.
The decision is :func:`~dvt_ms.inference.thresholds.leaves_at` on
:func:`~dvt_ms.inference.thresholds.softmax_confidence`, the very functions of the offline
simulation, so that engine and simulation agree for the same logits.

Each exit is a compiled stage: a graph in ``GRAPH_MODE``, ``mindspore.jit`` in PyNative mode. How the
stages meet subsets of varying size depends on the device (``buckets="auto"``, the default):

* CPU: static shapes, each subset padded up to the next of finely spaced bucket sizes (every size to
  8, then at most 10 % apart; :func:`fine_buckets`). One graph is compiled per bucket actually used.
  On CPU, graphs compiled for a dynamic batch run slower than static ones, and the fused CPU
  kernels (:mod:`dvt_ms.kernels`) need static shapes; the padding costs at most 10 % of a stage's rows.
* Ascend: static shapes with power-of-two buckets (:func:`default_buckets`; compilation is costly).
* GPU: one graph per stage compiled for a dynamic batch dimension (``set_inputs`` with ``None``).

An explicit list of ``buckets`` pads to those sizes; ``None`` compiles for a dynamic batch. A subset
of a single image taken from a larger batch is padded to two by default (``min_batch``): a batch of one
takes matrix-vector kernels on some backends, whose last bits differ from those of the batched kernels
that computed the rest of the batch. A whole batch is never padded for ``min_batch``: a request of one
image runs exit 1 on that one image, as every other path computing its logits does.

The engine does not care where its stages come from: a :class:`~dvt_ms.models.stages.StageSource` gives one
callable per exit, ``(images, features, relations) -> (logits, features[, relations])``, and says which reuse
state each exit reads. :class:`~dvt_ms.models.stages.CascadeStages` compiles them from a :class:`DVTCascade`;
:class:`dvt_ms.serve.ExportedStages` and :class:`dvt_ms.serve.onnx_runtime.OnnxStages` load exported graphs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

from ..models.cascade import DVTCascade
from ..models.exit import ExitStage
from ..models.stages import CascadeStages, StageSource
from .thresholds import leaves_at, normalize_thresholds, softmax_confidence, softmax_top_k

__all__ = ["CascadeStages", "EarlyExitEngine", "EarlyExitResult", "ExitStage", "StageSource", "default_buckets",
           "fine_buckets"]


def default_buckets(batch_size: int) -> list[int]:
    """Powers of two below ``batch_size``, then ``batch_size`` itself (e.g. 2, 4, ..., 32, 50 for 50)."""
    buckets, size = [], 2
    while size < batch_size:
        buckets.append(size)
        size *= 2
    return [*buckets, max(batch_size, 1)]


def fine_buckets(batch_size: int, dense_up_to: int = 8, growth: float = 1.1) -> list[int]:
    """Every size up to ``dense_up_to``, then sizes at most ``growth`` apart, then ``batch_size``
    (e.g. 1, ..., 8, 9, 10, 11, 13, 15, 17, 19, 21, 24, 27, 30, 32 for 32): padding a subset to the
    next bucket adds less than ``growth - 1`` of its rows."""
    buckets, size = [], 1
    while size < batch_size:
        buckets.append(size)
        size = size + 1 if size < dense_up_to else math.ceil(size * growth)
    return [*buckets, max(batch_size, 1)]


@dataclass
class EarlyExitResult:
    """Per image of a batch: predicted class, its confidence and the exit (0-based) that decided it;
    with ``top_k`` the k most probable classes at that exit and their probabilities."""

    predictions: np.ndarray  # int64 [B]
    confidences: np.ndarray  # float32 [B]
    exits: np.ndarray  # int64 [B]
    counts: np.ndarray  # int64 [n_exits]: images that left at each exit
    top_classes: np.ndarray | None = None  # int64 [B, k]
    top_probabilities: np.ndarray | None = None  # float32 [B, k]


class EarlyExitEngine:
    """Run a :class:`DVTCascade` (or any :class:`StageSource`) with real early exit.

    ``thresholds``: one per exit but the last (or one per exit, the last ignored). ``buckets``:
    ``"auto"`` (the fastest shapes for the device, see the module docstring; no padding for stages that
    take any batch size), ``None`` for dynamic batch shapes, or the sizes subsets are padded up to (each
    >= 1; a subset larger than the largest bucket is an error). ``min_batch``: subsets of a larger batch
    smaller than this are padded up to it (see the module docstring). A model is switched to inference mode.
    Engines over the same source share its compiled stages.
    """

    def __init__(self, model: DVTCascade | StageSource, thresholds: Sequence[float], *,
                 buckets: Sequence[int] | str | None = "auto", min_batch: int = 2) -> None:
        if isinstance(model, DVTCascade):
            model.set_train(False)
        source = CascadeStages(model) if isinstance(model, DVTCascade) else model
        self.source = source
        self.model = model if isinstance(model, DVTCascade) else None
        self.spec = self.model.spec if self.model is not None else None
        self.num_exits = source.num_exits
        self.image_shape = tuple(source.image_shape)
        self.thresholds = normalize_thresholds(thresholds, self.num_exits)
        self.auto_buckets = None
        if isinstance(buckets, str):
            if buckets != "auto":
                raise ValueError(f"buckets must be 'auto', None or a list of sizes, got {buckets!r}")
            device = ms.get_context("device_target")
            if not source.dynamic_only:
                self.auto_buckets = {"CPU": fine_buckets, "Ascend": default_buckets}.get(device)
            self.buckets = None
        else:
            self.buckets = sorted({int(b) for b in buckets}) if buckets else None
            if self.buckets and self.buckets[0] < 1:
                raise ValueError(f"bucket sizes must be >= 1, got {list(buckets)}")
        self.static = self.auto_buckets is not None or self.buckets is not None
        self.min_batch = max(1, int(min_batch))
        self._wants = [source.needs_state(k) for k in range(self.num_exits)]
        self._stages = [source.stage(k, self.static) for k in range(self.num_exits)]

    # ---- padding ----------------------------------------------------------------------------------

    def padded_size(self, n: int, batch: int) -> int:
        """The rows a stage runs for ``n`` images of a batch of ``batch``: ``n`` raised to ``min_batch`` unless it
        is the whole batch, then to the next bucket (static stages; unchanged for stages of any batch size).
        The engine pads its subsets so; callers that assemble exit batches themselves pad them with this."""
        size = n if n == batch else max(n, self.min_batch)
        buckets = self.auto_buckets(max(batch, size)) if self.auto_buckets is not None else self.buckets
        if buckets is None:
            return size
        for bucket in buckets:
            if bucket >= size:
                return bucket
        raise ValueError(f"a subset of {n} images does not fit the largest bucket ({buckets[-1]}); "
                         "add a bucket of at least the batch size")

    def _pad(self, rows: np.ndarray, batch: int) -> np.ndarray:
        size = self.padded_size(rows.size, batch)
        if size == rows.size:
            return rows
        return np.concatenate([rows, np.full(size - rows.size, rows[-1], dtype=rows.dtype)])

    # ---- running ----------------------------------------------------------------------------------

    def set_thresholds(self, thresholds: Sequence[float]) -> None:
        """Change the thresholds (no recompilation)."""
        self.thresholds = normalize_thresholds(thresholds, self.num_exits)

    def _as_tensor(self, images) -> Tensor:
        if isinstance(images, Tensor):
            x = images.astype(ms.float32)
        else:
            x = Tensor(np.ascontiguousarray(images, dtype=np.float32))
        if len(x.shape) != 4 or tuple(x.shape[1:]) != self.image_shape:
            c, h, w = self.image_shape
            raise ValueError(f"the model expects images of shape [B, {c}, {h}, {w}], got {list(x.shape)}")
        return x

    def __call__(self, images, top_k: int = 0) -> EarlyExitResult:
        """Early-exit inference on a batch ``[B, C, H, W]`` (numpy array or Tensor); ``top_k > 0`` also
        returns the ``top_k`` most probable classes of each image at its exit."""
        x = self._as_tensor(images)
        batch = x.shape[0]
        predictions = np.zeros(batch, dtype=np.int64)
        confidences = np.zeros(batch, dtype=np.float32)
        exits = np.zeros(batch, dtype=np.int64)
        top_classes = top_probabilities = None
        active = np.arange(batch, dtype=np.int64)  # batch positions of the images reaching exit k
        rows = active  # their rows in the previous stage's (padded) outputs
        features = relations = None
        for k in range(self.num_exits):
            if active.size == 0:
                break
            padded = self._pad(active, batch)
            if k == 0 and padded.size == batch:
                images_k = x
            else:
                images_k = ops.index_select(x, 0, Tensor(padded.astype(np.int32)))
            state_index = Tensor(self._pad(rows, batch).astype(np.int32)) if k else None
            want_features, want_relations = self._wants[k]
            logits, features, relations = ExitStage.unpack(self._stages[k](
                images_k,
                ops.index_select(features, 0, state_index) if want_features else None,
                ops.index_select(relations, 0, state_index) if want_relations else None))
            scores = logits.asnumpy()[: active.size]
            conf, pred = softmax_confidence(scores)
            done = (leaves_at(conf, self.thresholds[k]) if k < self.num_exits - 1
                    else np.ones(active.size, dtype=bool))
            leaving = active[done]
            predictions[leaving], confidences[leaving], exits[leaving] = pred[done], conf[done], k
            if top_k > 0:
                classes, probs = softmax_top_k(scores[done], top_k)
                if top_classes is None:
                    top_classes = np.zeros((batch, classes.shape[1]), np.int64)
                    top_probabilities = np.zeros((batch, classes.shape[1]), np.float32)
                top_classes[leaving], top_probabilities[leaving] = classes, probs
            rows = np.nonzero(~done)[0]
            active = active[~done]
        counts = np.bincount(exits, minlength=self.num_exits).astype(np.int64)
        return EarlyExitResult(predictions, confidences, exits, counts, top_classes, top_probabilities)

    def run_stage(self, k: int, images, features: np.ndarray | None = None, relations: np.ndarray | None = None,
                  keep_state: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Exit ``k`` alone on exactly the rows given (padded by the caller, see :meth:`padded_size`), with the
        reuse state of exit ``k - 1`` for those rows where it reads it (``source.needs_state``). Returns its logits
        and, with ``keep_state``, the features and relations exit ``k + 1`` reads (None where it reads none), as
        numpy arrays row for row with the inputs: for callers that regroup rows of many batches between exits."""
        x = self._as_tensor(images)
        want_features, want_relations = self._wants[k]
        for wanted, value, name in ((want_features, features, "features"), (want_relations, relations, "relations")):
            if wanted and value is None:
                raise ValueError(f"exit {k + 1} reads the {name} of exit {k}; pass them")
        logits, features_out, relations_out = ExitStage.unpack(self._stages[k](
            x, Tensor(np.ascontiguousarray(features, np.float32)) if want_features else None,
            Tensor(np.ascontiguousarray(relations, np.float32)) if want_relations else None))
        if not keep_state:
            return logits.asnumpy(), None, None
        return (logits.asnumpy(), None if features_out is None else features_out.asnumpy(),
                None if relations_out is None else relations_out.asnumpy())

    def all_exit_logits(self, images) -> list[np.ndarray]:
        """Logits of every exit for every image of the batch (no early exit), as numpy arrays.

        Runs the same compiled stages as :meth:`__call__`, one after the other on the whole batch.
        """
        x = self._as_tensor(images)
        batch = x.shape[0]
        rows = self._pad(np.arange(batch, dtype=np.int64), batch)
        if rows.size != batch:
            x = ops.index_select(x, 0, Tensor(rows.astype(np.int32)))
        outputs, features, relations = [], None, None
        for k in range(self.num_exits):
            want_features, want_relations = self._wants[k]
            logits, features, relations = ExitStage.unpack(self._stages[k](
                x, features if want_features else None, relations if want_relations else None))
            outputs.append(logits.asnumpy()[:batch])
        return outputs
