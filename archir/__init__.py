"""archir: a graph IR for neural architecture search with hardware cost models.

Public names:
    Graph, Node, TensorType: the IR.
    save, load: JSON structure + safetensors weights.
    derive: supernet (choice nodes) -> plain graph.
    strip_training: the inference network (no ``drop_path``, no auxiliary outputs and heads).
    lower: ``lower.to_fx``, ``lower.sync_back``, ``lower.to_onnx``, ``lower.verify_onnx``.
    ops: the op registry (``ops.get_op``, ``ops.op_names``, ``ops.OpHandlers``).
    frontend: ``frontend.from_torch``, ``frontend.from_onnx`` (imported on first use).
    samples: sample networks (imported on first use).
    IRError and its subclasses.
"""

from archir.errors import (
    GraphStructureError,
    IRError,
    LoweringError,
    OpSchemaError,
    SerializationError,
    ShapeError,
    WeightError,
)
from archir.types import TensorType
from archir import ops
from archir.graph import Graph, Node
from archir.serialize import SCHEMA_VERSION, load, save
from archir.training import strip_training
from archir.choice import decision_keys, derive
from archir import lower

__version__ = "0.1.0"


def __getattr__(name: str):
    # archir.frontend / archir.samples load on first use, so `import archir` stays light
    if name in ("frontend", "samples"):
        import importlib

        return importlib.import_module(f"archir.{name}")
    raise AttributeError(f"module 'archir' has no attribute {name!r}")

__all__ = [
    "Graph", "Node", "TensorType", "save", "load", "derive", "decision_keys", "strip_training", "lower", "ops", "frontend", "samples", "SCHEMA_VERSION",
    "IRError", "GraphStructureError", "OpSchemaError", "ShapeError", "WeightError", "SerializationError",
    "LoweringError", "__version__",
]
