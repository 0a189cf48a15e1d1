"""The exits of a cascade as stages: one callable per exit, wherever the exits come from.

A stage is ``(images, features or None, relations or None) -> (logits, features[, relations])``, the outputs
what the next exit takes (see :meth:`~dvt_ms.models.exit.ExitStage.unpack`). :class:`StageSource` is the one
list of stages every consumer drives: :meth:`DVTCascade.run_stage <dvt_ms.models.cascade.DVTCascade.run_stage>`,
the early-exit engine (:mod:`dvt_ms.inference.engine`) and the serving batcher. Sources say which inputs each
exit takes (:meth:`StageSource.input_names`); everything else (which reuse state an exit reads, the argument list
of a graph, building each stage once) is defined here, once. :class:`CascadeStages` compiles the stages of a
:class:`~dvt_ms.models.cascade.DVTCascade`; :class:`dvt_ms.serve.ExportedStages` and
:class:`dvt_ms.serve.onnx_runtime.OnnxStages` load exported graphs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import mindspore as ms
from mindspore import Tensor, nn

from .exit import ExitStage

__all__ = ["CascadeStages", "StageSource", "compiled"]


def compiled(cell: nn.Cell) -> Callable:
    """``cell`` as a compiled stage: itself in ``GRAPH_MODE`` (it compiles on first call), ``mindspore.jit`` of it in
    PyNative mode."""
    return cell if ms.get_context("mode") == ms.GRAPH_MODE else ms.jit(cell)


class StageSource(ABC):
    """Where the stages come from. A subclass sets ``num_exits``, ``image_shape`` (the ``(C, H, W)`` of the
    images every stage takes) and ``dynamic_only`` (its stages take any batch size and gain nothing from padding),
    and defines :meth:`input_names` and :meth:`build_stage`."""

    num_exits: int
    image_shape: tuple[int, int, int]
    dynamic_only: bool = False

    @abstractmethod
    def input_names(self, k: int) -> Sequence[str]:
        """The inputs exit ``k`` takes, in order: ``"images"``, then ``"features"`` and/or ``"relations"``
        where it reuses them."""

    @abstractmethod
    def build_stage(self, k: int, static: bool) -> Callable:
        """A new callable for exit ``k`` (see the module docstring); ``static``: it will only see the padded batch
        sizes of the caller's buckets (else any batch size)."""

    def needs_state(self, k: int) -> tuple[bool, bool]:
        """(features, relations): what exit ``k`` reads from exit ``k - 1``."""
        names = self.input_names(k)
        return "features" in names, "relations" in names

    def arguments(self, k: int) -> Callable[..., tuple]:
        """``pick(images, features=None, relations=None)``: what a graph of exit ``k`` taking exactly its inputs is
        called with (``images``, then the state it reads); made once per stage, so a call only packs a tuple."""
        wants_features, wants_relations = self.needs_state(k)

        def pick(images: Any, features: Any = None, relations: Any = None) -> tuple:
            return (images, *((features,) if wants_features else ()), *((relations,) if wants_relations else ()))

        return pick

    def stage(self, k: int, static: bool) -> Callable:
        """Exit ``k``'s stage, built on first use and the same callable afterwards (one compilation per source)."""
        if not 0 <= k < self.num_exits:
            raise IndexError(f"exit index {k} out of range for {self.num_exits} exits")
        built = self.__dict__.setdefault("_built", {})
        if (k, static) not in built:
            built[(k, static)] = self.build_stage(k, static)
        return built[(k, static)]


class CascadeStages(StageSource):
    """The stages of a :class:`~dvt_ms.models.cascade.DVTCascade`: each exit an :class:`ExitStage`, compiled on first
    call (:func:`compiled`). The cascade's training mode is the caller's to set."""

    def __init__(self, model: nn.Cell) -> None:  # a DVTCascade (whose run_stage uses this class)
        self.model, self.spec = model, model.spec
        self.num_exits = model.num_exits
        self.image_shape = (self.spec.in_chans, self.spec.img_size, self.spec.img_size)

    def input_names(self, k: int) -> list[str]:
        return [name for name, _ in self.model.stage_inputs(k)]

    def build_stage(self, k: int, static: bool) -> Callable:
        stage = ExitStage(self.model.exit(k))
        if not static:
            shapes = dict(self.model.stage_inputs(k))

            def dynamic(name: str) -> Tensor | None:  # the stage's positions: images, features, relations
                return Tensor(shape=[None, *shapes[name][1:]], dtype=ms.float32) if name in shapes else None

            stage.set_inputs(dynamic("images"), dynamic("features"), dynamic("relations"))
        return compiled(stage)
