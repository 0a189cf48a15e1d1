"""Per-exit graphs: the cell exported for each exit, and the engine stages loaded back from MindIR files."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import mindspore as ms
from mindspore import Tensor, nn

from ..models.exit import ExitStage
from ..models.stages import StageSource
from .manifest import Manifest

__all__ = ["ExitGraph", "ExportedStages", "export_graph"]


class ExitGraph(ExitStage):
    """Exit ``k`` taking exactly the inputs it uses: ``(images[, features][, relations])``; returns
    ``(logits, tokens[, relations])`` like :class:`~dvt_ms.models.exit.ExitStage`."""

    def __init__(self, exit_cell, feature_reuse: bool, relation_reuse: bool) -> None:
        super().__init__(exit_cell)
        self.takes_features, self.takes_relations = feature_reuse, relation_reuse

    def construct(self, x, *state):
        features = state[0] if self.takes_features else None
        relations = state[-1] if self.takes_relations else None
        return super().construct(x, features, relations)


def export_graph(model: Any, k: int) -> tuple[Any, list[Any]]:
    """Exit ``k`` of ``model`` as the graph dvt-export writes: ``(graph, placeholders)``, the graph's inputs
    declared with a dynamic batch (so it runs MindSpore's portable stock ops, not the CPU kernels)."""
    features, relations = model.needs_state(k)
    graph = ExitGraph(model.exit(k), features, relations)
    placeholders = [Tensor(shape=[None, *shape[1:]], dtype=ms.float32) for _, shape in model.stage_inputs(k)]
    graph.set_inputs(*placeholders)
    return graph, placeholders


class ExportedStages(StageSource):
    """The engine's stages (a :class:`~dvt_ms.models.stages.StageSource`) from a verified export folder: each exit
    an ``nn.GraphCell`` over its MindIR file, called with the inputs its manifest lists."""

    dynamic_only = True

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.num_exits = manifest.num_exits
        self.image_shape = (manifest.in_chans, manifest.img_size, manifest.img_size)
        self._graphs = [nn.GraphCell(ms.load(os.path.join(manifest.directory, e.file))) for e in manifest.exits]

    def input_names(self, k: int) -> list[str]:
        return self.manifest.exits[k].input_names

    def build_stage(self, k: int, static: bool) -> Callable:
        graph, pick = self._graphs[k], self.arguments(k)

        def run(images: Tensor, features: Tensor | None = None, relations: Tensor | None = None):
            return graph(*pick(images, features, relations))

        return run
