"""Lowerings of the IR: ``to_fx`` (trainable torch.fx GraphModule), ``sync_back`` and ``to_onnx``.

Each lowering keeps a per-op handler table (``FX_HANDLERS``, ``ONNX_HANDLERS``); register a
new op's lowering with ``@FX_HANDLERS.register("op")`` in the module that defines it.
"""

from archir.lower.fx import FX_HANDLERS, arch_parameters, sync_back, to_fx, weight_parameters
from archir.lower.onnx import ONNX_HANDLERS, to_onnx

__all__ = ["to_fx", "sync_back", "to_onnx", "arch_parameters", "weight_parameters", "FX_HANDLERS", "ONNX_HANDLERS"]
