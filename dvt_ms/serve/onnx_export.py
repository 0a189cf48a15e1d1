"""One ONNX graph per exit, exact against the MindSpore checkpoint, with a dynamic batch dimension.

MindSpore's own ONNX exporter cannot write these graphs (no ``Erf`` for the exact GELU, no ``Im2Col`` for
the T2T soft split, and no dynamic shapes). The route taken instead: the checkpoint's weights go into the
PyTorch reference implementation (:mod:`dvt_ms.reference.torch_dvt`, the same names through
:func:`~dvt_ms.convert.mapping.to_torch_state_dict`), made ready for export by
:mod:`~dvt_ms.serve.torch_export` (the soft split as a grouped convolution with one-hot kernels, the grid
resize as a product with the stored resize matrix), whose exits ``torch.onnx.export`` writes with standard
operators (``Erf`` for the exact GELU). Each exit's graph takes and gives what its MindIR twin does:
``images`` and, where the exit reuses them, the previous exit's ``features`` and ``relations``; it returns
``logits``, ``tokens`` and, where the next exit reuses them, ``relations``. Before anything is kept, every
file passes ``onnx.checker`` with full checking and ONNX Runtime's logits of a random batch through every
exit (:func:`~dvt_ms.serve.onnx_runtime.session`) must equal the MindSpore model's within :data:`TOLERANCE`
relative.

Needs the ``onnx`` extra: ``pip install -e ".[onnx]"`` (onnx, onnxruntime, torch).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .errors import ServeError
from .onnx_runtime import require_onnx, session

__all__ = ["OPSET", "TOLERANCE", "export_onnx_exits"]

OPSET = 17
TOLERANCE = 1e-5  # max |ONNX - MindSpore| / max |MindSpore| of every exit's logits


def export_onnx_exits(model: Any, directory: str, stems: list[str]) -> list[str]:
    """Write exit ``k`` of ``model`` to ``directory/stems[k].onnx``; returns the file names. Each file is
    checked (:mod:`onnx.checker`, full) and the chain is verified against ``model`` (ONNX Runtime)."""
    require_onnx()
    import onnx
    import torch

    from .torch_export import ExitStageModule, export_reference

    reference = export_reference(model)
    spec = model.spec
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, spec.in_chans, spec.img_size, spec.img_size)).astype(np.float32)
    files, state = [], None
    for k, stem in enumerate(stems):
        takes = model.needs_state(k)
        emits = model.exit(k).emit_relations
        module = ExitStageModule(reference.exits[k], takes, spec.exits[k - 1].depth if k else 1, emits).eval()
        names = ["images"] + (["features"] if takes[0] else []) + (["relations"] if takes[1] else [])
        outputs = ["logits", "tokens"] + (["relations"] if emits else [])
        out_names = [n if n != "relations" else "relations_out" for n in outputs]  # ONNX names are unique
        arguments = [torch.from_numpy(images)]
        if k:
            arguments += [torch.from_numpy(a) for a, wanted in zip(state, takes, strict=True) if wanted]
        file = f"{stem}.onnx"
        path = os.path.join(directory, file)
        with torch.no_grad():
            torch.onnx.export(module, tuple(arguments), path, input_names=names, output_names=out_names,
                              dynamic_axes={n: {0: "batch"} for n in names + out_names}, opset_version=OPSET,
                              dynamo=False)
            produced = module(*arguments)
        onnx.checker.check_model(onnx.load(path), full_check=True)
        state = (produced[1].numpy(), produced[2].numpy() if emits else None)
        files.append(file)
    _verify(model, directory, files, images)
    return files


def _verify(model: Any, directory: str, files: list[str], images: np.ndarray) -> None:
    """ONNX Runtime's logits of every exit on ``images`` against ``model``'s (MindSpore)."""
    import mindspore as ms

    state = None
    features = relations = None
    for k, file in enumerate(files):
        takes = model.needs_state(k)
        feed = {"images": images}
        if takes[0]:
            feed["features"] = features
        if takes[1]:
            feed["relations"] = relations
        got = session(os.path.join(directory, file)).run(None, feed)
        want, state = model.run_stage(k, ms.Tensor(images), state)
        want = want.asnumpy()
        error = float(np.abs(got[0] - want).max() / max(float(np.abs(want).max()), 1e-30))
        if not error <= TOLERANCE:
            raise ServeError(f"the ONNX graph of exit {k + 1} differs from the checkpoint by {error:.2e} relative "
                             f"(more than {TOLERANCE:g}); nothing was exported")
        features, relations = got[1], got[2] if len(got) > 2 else None
