"""The op registry and the core ops. Importing this package registers the core ops."""

from archir.ops.registry import AttrSpec, OpDef, OpHandlers, OpTraits, get_op, op_names, pair, register_op
from archir.ops import core as _core  # noqa: F401  (registers the core ops)
from archir.ops.core import candidate_names, chain_types, concat_axis

__all__ = [
    "AttrSpec", "OpDef", "OpTraits", "OpHandlers", "get_op", "op_names", "pair", "register_op",
    "candidate_names", "chain_types", "concat_axis",
]
