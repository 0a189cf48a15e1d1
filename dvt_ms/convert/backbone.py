"""Initialising a DVT cascade from a standalone pretrained backbone.

The backbone is a single vision transformer checkpoint (an official DeiT-small
``deit_small_patch16_224`` or a T2T-ViT-12/14 ImageNet model) whose keys are those of one DVT exit
without the exit prefix (``cls_token``, ``pos_embed``, ``patch_embed.proj.weight`` or
``tokens_to_token.*``, ``blocks.N.*``, ``norm.*``, ``head.*``). Every exit of the cascade starts from
it; per parameter of an exit, :data:`RULES` decides:

* copied: same name and shape in the backbone (blocks, norms, class token, T2T token modules, the
  performer's random features, the head when the class count agrees);
* resampled:

  - learned position embeddings: the class-token row is kept, the grid is resized bicubically
    (``torch.nn.functional.interpolate(mode="bicubic", align_corners=False)``) to the exit's grid;
  - patch kernels (``patch_embed.proj.weight`` and the first T2T soft split's ``kqv`` weight, whose
    input is an unfolded ``k x k`` patch): with ``A`` the area-resize matrix that shrinks the exit's
    patch to the backbone's, the kernel becomes ``A^T W A`` per axis, so that the exit's kernel on a
    patch equals the backbone's kernel on that patch resized (by area) to the backbone's patch size;
  - the LayerNorm in front of that first ``kqv`` (one scale/shift per unfolded pixel): its values are
    resized to the new patch with the transposed, row-normalised area matrix (pixel replication for
    integer factors), which keeps the normalised patch consistent with the resampled kernel;

* partially copied: in exits with feature reuse the second norm and ``fc1`` of every block take the
  48 reused channels after the block's own ``D``: the first ``D`` entries / input columns are copied,
  the reuse part stays at its initialisation;
* left at initialisation: the reuse modules (``feature_resuse_mlp``, ``relation_reuse_conv``), the head
  when the class counts differ, and the fixed sinusoid position tables of T2T exits (each exit keeps
  the table of its own grid).

Backbone tensors that no exit uses, and shapes that no rule explains, are errors.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..checkpoint import StateMismatch
from .errors import ConvertError
from .mapping import strip_wrapper_prefixes

__all__ = [
    "COPIED",
    "KEPT",
    "PARTIAL",
    "RESAMPLED",
    "RULES",
    "BackboneReport",
    "area_matrix",
    "cubic_matrix",
    "init_from_backbone",
    "load_backbone",
    "resample_affine",
    "resample_kernel",
    "resample_pos_embed",
]

# (pattern on the parameter name inside an exit, how it is initialised); first match wins, default "same"
RULES: tuple[tuple[str, str], ...] = (
    (r"pos_embed", "position"),
    (r"patch_embed\.proj\.weight", "kernel"),
    (r"tokens_to_token\.attention1\.(kqv|attn\.qkv)\.weight", "unfold_kernel"),
    (r"tokens_to_token\.attention1\.norm1\.(weight|bias)", "unfold_affine"),
    (r"blocks\.\d+\.(norm2\.(weight|bias)|mlp\.fc1\.weight)", "widened"),
    (r"head\.(weight|bias)", "head"),
)

COPIED, RESAMPLED, PARTIAL, KEPT = "copied", "resampled", "partially copied", "left at initialisation"


# ---- resampling -----------------------------------------------------------------------------------

def area_matrix(src: int, dst: int) -> np.ndarray:
    """[dst, src] matrix of area resizing along one axis: output cell ``i`` averages the input pixels
    it overlaps, weighted by overlap. Rows sum to one."""
    scale = src / dst
    out = np.zeros((dst, src), np.float64)
    for i in range(dst):
        lo, hi = i * scale, (i + 1) * scale
        for j in range(math.floor(lo), min(src, math.ceil(hi))):
            out[i, j] = (min(hi, j + 1) - max(lo, j)) / scale
    return out


def _cubic(t: float, a: float = -0.75) -> np.ndarray:
    """Weights of the four taps at offsets -1, 0, 1, 2 for fraction ``t`` (torch's bicubic kernel)."""
    def near(x: float) -> float:
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: float) -> float:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.array([far(t + 1), near(t), near(1 - t), far(2 - t)])


def cubic_matrix(src: int, dst: int) -> np.ndarray:
    """[dst, src] matrix of bicubic resizing along one axis, as ``torch.nn.functional.interpolate``
    with ``mode="bicubic", align_corners=False`` (taps beyond the border repeat the edge)."""
    out = np.zeros((dst, src), np.float64)
    scale = src / dst
    for i in range(dst):
        x = (i + 0.5) * scale - 0.5
        base = math.floor(x)
        for offset, w in zip(range(-1, 3), _cubic(x - base), strict=True):
            out[i, min(max(base + offset, 0), src - 1)] += w
    return out


def resample_kernel(weight: np.ndarray, size: int) -> np.ndarray:
    """Kernel [..., k, k] -> [..., size, size] such that it sees a ``size`` patch as the original sees
    that patch area-resized to ``k`` (``A^T W A`` with ``A = area_matrix(size, k)``)."""
    k = weight.shape[-1]
    a = area_matrix(size, k)
    return np.einsum("...ij,ia,jb->...ab", weight.astype(np.float64), a, a).astype(np.float32)


def resample_affine(values: np.ndarray, size: int) -> np.ndarray:
    """Per-pixel values [..., k, k] -> [..., size, size] by area resizing (replication for integer factors)."""
    k = values.shape[-1]
    b = area_matrix(k, size)
    return np.einsum("ai,...ij,bj->...ab", b, values.astype(np.float64), b).astype(np.float32)


def resample_pos_embed(pos_embed: np.ndarray, grid: int) -> np.ndarray:
    """Position table [1, 1 + g*g, D] -> [1, 1 + grid*grid, D]: class row kept, grid resized bicubically."""
    tokens, dim = pos_embed.shape[1] - 1, pos_embed.shape[2]
    g = math.isqrt(tokens)
    if g * g != tokens:
        raise ConvertError(f"backbone pos_embed has {tokens} patch positions, not a square grid")
    m = cubic_matrix(g, grid)
    table = pos_embed[0, 1:].reshape(g, g, dim).astype(np.float64)
    resized = np.einsum("ia,jb,abd->ijd", m, m, table).reshape(1, grid * grid, dim)
    return np.concatenate([pos_embed[:, :1], resized.astype(np.float32)], axis=1)


# ---- the report -----------------------------------------------------------------------------------

@dataclass
class BackboneReport:
    """What happened to every parameter: ``entries`` holds ``(exit name, name in exit, action, detail)``."""

    backbone: str = ""
    entries: list[tuple[str, str, str, str]] = field(default_factory=list)

    def counts(self, exit_name: str | None = None) -> dict[str, int]:
        """Number of parameters per action (for one exit or all)."""
        out = dict.fromkeys((COPIED, RESAMPLED, PARTIAL, KEPT), 0)
        for name, _, action, _ in self.entries:
            if exit_name is None or name == exit_name:
                out[action] += 1
        return out

    def summary(self) -> str:
        """Per exit, the tensors resampled, partially copied and left at initialisation (block indices
        folded into ``blocks.*``, names sharing a detail grouped); every other tensor was copied."""
        lines = [f"initialised from backbone {self.backbone}" if self.backbone else "initialised from a backbone"]
        for exit_name in dict.fromkeys(e[0] for e in self.entries):
            counts = self.counts(exit_name)
            lines.append(f"  {exit_name}: {counts[COPIED]} tensors copied")
            for action in (RESAMPLED, PARTIAL, KEPT):
                groups: dict[str, list[str]] = {}
                for name, rest, act, detail in self.entries:
                    if name == exit_name and act == action:
                        folded = re.sub(r"blocks\.\d+\.", "blocks.*.", rest)
                        names = groups.setdefault(detail, [])
                        if folded not in names:
                            names.append(folded)
                if groups:
                    items = [", ".join(names) + (f" ({detail})" if detail else "") for detail, names in groups.items()]
                    lines.append(f"    {action} ({counts[action]} tensors): {'; '.join(items)}")
        return "\n".join(lines)


# ---- initialisation -------------------------------------------------------------------------------

def _rule(rest: str) -> str:
    for pattern, action in RULES:
        if re.fullmatch(pattern, rest):
            return action
    return "same"


def init_from_backbone(model, backbone: Mapping[str, np.ndarray], label: str = "") -> tuple[dict[str, np.ndarray],
                                                                                           BackboneReport]:
    """Parameters for every exit of ``model`` (a ``DVTCascade``) from a standalone backbone state dict.

    Returns the full parameter dict (model order; parameters that are left at initialisation carry
    the model's current values) and the report. Raises :class:`ConvertError` listing backbone tensors
    that fit nowhere and shapes no rule explains.
    """
    spec = model.spec
    source, _ = strip_wrapper_prefixes(backbone)
    current = dict(model.parameters_dict())
    report = BackboneReport(label)
    used: set[str] = set()
    problems = StateMismatch()
    params: dict[str, np.ndarray] = {}

    def value_of(name: str) -> np.ndarray:
        return current[name].asnumpy().astype(np.float32)

    for name, param in current.items():
        exit_name, rest = name.split(".", 1)
        k = spec.exit_names.index(exit_name)
        exit_spec = spec.exits[k]
        target = tuple(int(s) for s in param.shape)
        action = _rule(rest)
        src = source.get(rest)
        if src is not None:
            used.add(rest)
            src = np.asarray(src, dtype=np.float32)
        if action == "position" and exit_spec.pos_embed == "sinusoid":
            entry, value = (KEPT, "fixed sinusoid table of this grid"), value_of(name)
        elif src is None:
            entry, value = (KEPT, ""), value_of(name)
        elif src.shape == target:
            entry, value = (COPIED, ""), src
        elif action == "position" and src.ndim == 3 and src.shape[2] == target[2]:
            grid, src_grid = math.isqrt(target[1] - 1), math.isqrt(src.shape[1] - 1)
            value = resample_pos_embed(src, grid)
            entry = (RESAMPLED, f"{src_grid}x{src_grid} -> {grid}x{grid}, bicubic")
        elif action == "kernel" and src.ndim == 4 and src.shape[:2] == target[:2]:
            value = resample_kernel(src, target[-1])
            entry = (RESAMPLED, f"kernel {src.shape[-1]} -> {target[-1]}, area")
        elif action in ("unfold_kernel", "unfold_affine") and _unfold_sizes(src.shape, target, spec.in_chans):
            size_src, size_dst = _unfold_sizes(src.shape, target, spec.in_chans)
            lead = src.shape[:-1]
            pixels = src.reshape(*lead, spec.in_chans, size_src, size_src)
            resized = (resample_kernel(pixels, size_dst) if action == "unfold_kernel"
                       else resample_affine(pixels, size_dst))
            value = resized.reshape(target)
            entry = (RESAMPLED, f"soft split {size_src} -> {size_dst}, area")
        elif action == "widened" and src.shape[:-1] == target[:-1] and src.shape[-1] < target[-1]:
            value = value_of(name)
            value[..., : src.shape[-1]] = src
            entry = (PARTIAL, f"first {src.shape[-1]} of {target[-1]} inputs; reuse part at initialisation")
        elif action == "head":
            entry, value = (KEPT, f"{src.shape[0]} backbone classes vs {target[0]}"), value_of(name)
        else:
            problems.mis_shaped.append((name, tuple(src.shape), target))
            continue
        report.entries.append((exit_name, rest, *entry))
        params[name] = value

    problems.unexpected = [k for k in source if k not in used]
    if not problems.ok:
        raise ConvertError(f"the backbone {label or ''} does not fit the DVT exits: "
                           f"{problems.describe(found='backbone', expected='DVT exit')}".replace("  ", " "))
    if not report.counts()[COPIED]:
        raise ConvertError(f"the backbone {label} shares no tensor with the DVT exits: is it a standalone "
                           "DeiT / T2T-ViT checkpoint?")
    return params, report


def _unfold_sizes(src_shape: tuple, target: tuple, in_chans: int) -> tuple[int, int] | None:
    """(backbone patch side, exit patch side) when both last axes are ``in_chans * k * k``."""
    if len(src_shape) != len(target) or src_shape[:-1] != target[:-1]:
        return None
    sides = []
    for n in (src_shape[-1], target[-1]):
        side = math.isqrt(n // in_chans) if n % in_chans == 0 else 0
        if side * side * in_chans != n:
            return None
        sides.append(side)
    return sides[0], sides[1]


def load_backbone(model, path: str | os.PathLike) -> BackboneReport:
    """Read a standalone backbone checkpoint (``.pth``, ``.pth.tar``, ``.safetensors``) safely and
    initialise every exit of ``model`` from it in place; returns the report."""
    import mindspore as ms

    from .torch_io import read_source

    source = read_source(path)
    params, report = init_from_backbone(model, source.state, os.path.basename(os.fspath(path)))
    for name, param in model.parameters_dict().items():
        param.set_data(ms.Tensor(params[name], dtype=param.dtype))
    return report
