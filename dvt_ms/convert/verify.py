"""``--verify``: the same weights in the PyTorch reference and in dvt_ms give the same logits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from .errors import ConvertError

__all__ = ["ExitDifference", "format_differences", "verify_against_torch"]

TOLERANCE = 1e-4  # max |ms - torch| <= TOLERANCE * max |torch logit| at every exit


@dataclass(frozen=True)
class ExitDifference:
    """Logit difference at one exit: max absolute, and relative to the largest reference logit."""

    exit_name: str
    max_abs: float
    max_rel: float


@contextlib.contextmanager
def _pynative() -> Iterator[None]:
    # One forward pass: PyNative avoids compiling a graph that is used once; restore the caller's mode.
    import mindspore as ms

    mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        yield
    finally:
        ms.set_context(mode=mode)


def verify_against_torch(spec, torch_state: Mapping[str, np.ndarray], ms_checkpoint: str, batch: int = 2,
                         seed: int = 0) -> list[ExitDifference]:
    """Load ``torch_state`` (official key names) into the PyTorch reference and ``ms_checkpoint`` into
    a dvt_ms model, both built from ``spec``; run one random batch through both in eval mode and
    return the per-exit differences."""
    try:
        import torch

        from ..reference.torch_dvt import build_torch_dvt
    except ImportError:
        raise ConvertError("--verify needs PyTorch for the reference model: pip install torch") from None
    import mindspore as ms

    from ..checkpoint import load_checkpoint
    from ..models import DVTCascade

    reference = build_torch_dvt(spec).eval()
    try:
        tensors = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in torch_state.items()}
        reference.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise ConvertError(f"--verify: the PyTorch reference does not accept the weights: {err}") from None
    model = DVTCascade(spec)
    load_checkpoint(model, ms_checkpoint, strict=True)
    model.set_train(False)

    x = np.random.RandomState(seed).randn(batch, spec.in_chans, spec.img_size, spec.img_size).astype(np.float32)
    with torch.no_grad():
        expected = [o.numpy() for o in reference(torch.from_numpy(x))]
    with _pynative():
        got = [o.asnumpy() for o in model(ms.Tensor(x))]
    out = []
    for name, a, b in zip(spec.exit_names, expected, got, strict=True):
        diff = float(np.abs(a.astype(np.float64) - b).max())
        out.append(ExitDifference(name, diff, diff / max(float(np.abs(a).max()), 1e-12)))
    return out


def format_differences(diffs: list[ExitDifference], tolerance: float = TOLERANCE) -> str:
    """A small table: one line per exit with max abs / relative difference and pass/FAIL."""
    lines = [f"{'exit':<5}{'name':<18}{'max abs diff':>14}{'max rel diff':>14}  result"]
    for k, d in enumerate(diffs, 1):
        verdict = "ok" if d.max_rel <= tolerance else "FAIL"
        lines.append(f"{k:<5}{d.exit_name:<18}{d.max_abs:>14.3e}{d.max_rel:>14.3e}  {verdict}")
    return "\n".join(lines)
