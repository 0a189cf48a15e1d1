"""Converting official PyTorch DVT checkpoints to dvt_ms and back (``dvt-convert``).

* :mod:`.torch_io`: safe reading of ``.pth`` / ``.pth.tar`` / ``.safetensors`` files, writing PyTorch files;
* :mod:`.mapping`: the pure, strict state-dict mapping and model identification;
* :mod:`.backbone`: initialising a cascade from a standalone DeiT / T2T-ViT checkpoint;
* :mod:`.verify`: logit comparison with the PyTorch reference;
* :mod:`.cli`: the command line (``python -m dvt_ms.convert``).

Importing this package does not import PyTorch.
"""

from .errors import ConvertError

__all__ = ["ConvertError"]
