"""Lowerings of the IR: ``to_fx`` (trainable torch.fx GraphModule), ``sync_back`` and ``to_onnx``.

``verify_onnx`` (``archir/lower/verify.py``) is the one check of an ONNX model against ``to_fx``
under ONNX Runtime; ``to_onnx(g, external_data=path)`` writes weights as ONNX external data,
which models over protobuf's 2 GiB limit need (without it they raise ``OnnxTooLarge``).
``set_drop_path(gm, scale)`` ramps the drop-path rate of a lowered module (DARTS' linear schedule);
``to_onnx`` exports ``archir.strip_training(g)`` (no drop-path, no auxiliary outputs).

Each lowering keeps a per-op handler table (``FX_HANDLERS``, ``ONNX_HANDLERS``); register a
new op's lowering with ``@FX_HANDLERS.register("op")`` in the module that defines it.
"""

from archir.lower.fx import FX_HANDLERS, arch_parameters, set_drop_path, sync_back, to_fx, weight_parameters
from archir.lower.onnx import ONNX_HANDLERS, OnnxTooLarge, to_onnx, uses_external_data, weight_bytes
from archir.lower.verify import OnnxMismatch, OutputDiff, VerifyReport, verify_onnx

__all__ = ["to_fx", "sync_back", "set_drop_path", "to_onnx", "verify_onnx", "VerifyReport", "OutputDiff", "OnnxMismatch", "OnnxTooLarge",
           "uses_external_data", "weight_bytes", "arch_parameters", "weight_parameters", "FX_HANDLERS", "ONNX_HANDLERS"]
