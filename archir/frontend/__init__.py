"""Frontends: existing networks into archir graphs.

- :func:`from_torch`: an ``nn.Module`` (torch.fx symbolic trace, falling back to
  ``torch.export``), weights and BatchNorm statistics included, node ids after module paths.
- :func:`from_onnx`: an ONNX file or ``ModelProto`` (from ``torch.onnx.export`` or
  ``archir.lower.to_onnx``), loaded safely (external data confined to the model's folder, no
  custom op domains, size caps).

Both fail loudly: one :class:`UnsupportedModelError` lists every node that has no IR
equivalent, with where it comes from; nothing is guessed. What imports and what does not yet
is listed in ``docs/frontend_support.md``.

Example:
    >>> import torch, torchvision, archir.frontend
    >>> g = archir.frontend.from_torch(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))  # doctest: +SKIP
"""

from archir.frontend.common import FrontendError, UnsafeModelError, Unsupported, UnsupportedModelError
from archir.frontend.onnx_import import from_onnx
from archir.frontend.torch_import import from_torch

__all__ = ["from_torch", "from_onnx", "FrontendError", "UnsupportedModelError", "UnsafeModelError", "Unsupported"]
