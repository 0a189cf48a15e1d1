"""The DVT cascade: exits with growing token grids, each reusing the previous exit's features/relations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mindspore import Tensor

from .. import kernels
from .exit import DVTExit, ExitStage
from .layers import bind_masks
from .spec import CascadeSpec
from .stages import CascadeStages
from .top_level import TopLevelCell


@dataclass
class ReuseState:
    """What exit k hands to exit k+1 for the same images: its features (last tokens) and relations (attention
    logits)."""

    features: Tensor | None = None
    relations: Tensor | None = None


class DVTCascade(kernels.StaticShapeKernels, TopLevelCell):
    """A Dynamic Vision Transformer: ``construct(x)`` returns the logits of every exit (a tuple).

    Exits are attributes named ``spec.exit_names`` (``less_less_token``, ``less_token``,
    ``normal_token`` for the published models), so parameter names equal the official PyTorch keys up
    to nothing at all. :meth:`run_stage` runs one exit on a batch given the previous exit's state; the
    stages are those of :class:`~dvt_ms.models.stages.CascadeStages`, which the early-exit engine drives too.

    Dropout and drop-path masks in training are a function of (seed, step counter, layer, sample): see
    :mod:`~dvt_ms.models.layers.dropout`. :func:`~dvt_ms.models.layers.bind_masks` returns the streams they
    read (``dvt-train`` hands them to its train step, which advances them every step); until something
    advances them, every training-mode call draws the masks of step 0.
    """

    def __init__(self, spec: CascadeSpec) -> None:
        super().__init__()
        self.spec = spec
        self.exit_names = tuple(spec.exit_names)
        self.num_exits = spec.num_exits
        self.num_classes = spec.num_classes
        self.img_size = spec.img_size
        for k, name in enumerate(self.exit_names):
            setattr(self, name, DVTExit(spec, k))
        bind_masks(self)  # every dropout / drop-path cell its own streams; dvt-train rebinds them for its step
        self.__dict__["_stage_source"] = None  # run_stage's CascadeStages, made on first use; not a child cell

    def exit(self, k: int) -> DVTExit:
        """The cell of exit ``k`` (0-based)."""
        if not 0 <= k < self.num_exits:
            raise IndexError(f"exit index {k} out of range for a cascade with {self.num_exits} exits")
        return getattr(self, self.exit_names[k])

    def check_input(self, x: Any) -> None:
        """Raise ``ValueError`` naming expected and actual shape when ``x`` is not [B, C, H, W] of the model."""
        shape = tuple(x.shape)
        expected = (self.spec.in_chans, self.img_size, self.img_size)
        if len(shape) != 4 or shape[1:] != expected:
            raise ValueError(f"{type(self).__name__} expects images of shape [B, {expected[0]}, {expected[1]}, "
                             f"{expected[2]}], got {list(shape)}")

    def __call__(self, *args, **kwargs):
        # A top-level call checks the images on the host first, so that graph mode reports a bad shape
        # before compiling, without a C++ stack; inside another cell's graph, construct's check raises.
        if args:
            self.check_input(args[0])
        return super().__call__(*args, **kwargs)

    def construct(self, x):
        self.check_input(x)
        outputs = ()
        features, relations = None, None
        for name in self.exit_names:
            logits, features, relations = getattr(self, name)(x, features, relations)
            outputs = (*outputs, logits)
        return outputs

    def stage_inputs(self, k: int) -> list[tuple[str, list[int]]]:
        """``(name, shape)`` of what exit ``k`` takes as a stage, the batch dimension ``-1``: ``images``,
        then the previous exit's ``features`` / ``relations`` where it reuses them."""
        spec = self.spec
        inputs = [("images", [-1, spec.in_chans, spec.img_size, spec.img_size])]
        features, relations = self.needs_state(k)
        up = self.exit(k - 1) if k else None
        if features:
            inputs.append(("features", [-1, up.num_tokens, up.embed_dim]))
        if relations:
            inputs.append(("relations", [-1, up.depth * up.num_heads, up.num_tokens, up.num_tokens]))
        return inputs

    def needs_state(self, k: int) -> tuple[bool, bool]:
        """(features, relations) that exit ``k`` reads from exit ``k - 1``."""
        e = self.spec.exits[k]
        return e.feature_reuse, e.relation_reuse

    def run_stage(self, k: int, x: Tensor, state: ReuseState | None = None) -> tuple[Tensor, ReuseState]:
        """Run exit ``k`` on images ``x`` given the state exit ``k - 1`` produced for the same images.

        Returns ``(logits, state_for_exit_k_plus_1)``. Subsets of a batch are fine as long as the state
        was taken for exactly those images (e.g. ``ops.index_select`` on both).
        """
        self.check_input(x)
        state = state or ReuseState()
        want_features, want_relations = self.needs_state(k)
        if want_features and state.features is None:
            raise ValueError(f"exit {k + 1} reuses features: pass the features produced by exit {k}")
        if want_relations and state.relations is None:
            raise ValueError(f"exit {k + 1} reuses relations: pass the relations produced by exit {k}")
        if self._stage_source is None:
            self.__dict__["_stage_source"] = CascadeStages(self)
        stage = self._stage_source.stage(k, static=True)
        logits, features, relations = ExitStage.unpack(stage(
            x, state.features if want_features else None, state.relations if want_relations else None))
        return logits, ReuseState(features, relations)
