"""The op registry and the core ops. Importing this package registers the core ops."""

from archir.ops.registry import AttrSpec, OpDef, OpHandlers, OpTraits, get_op, op_names, pair, register_op
from archir.ops import core as _core  # noqa: F401  (registers the core ops)
from archir.ops.core import (Step, attention_dims, candidate_names, candidate_output, candidate_steps, concat_axis, layernorm_size,
                             shuffle_order, slice_range, step_inputs)
from archir.ops.core import rel_attention_dims, rel_attention_scale, relative_position_index  # maxvit
# swin: window_attention's geometry and shift mask (its relative position index is relative_position_index)
from archir.ops.core import WINDOW_MASK_VALUE, WindowDims, window_attention_dims, window_coords_table, window_shift_mask

__all__ = [
    "AttrSpec", "OpDef", "OpTraits", "OpHandlers", "get_op", "op_names", "pair", "register_op",
    "Step", "candidate_names", "candidate_output", "candidate_steps", "concat_axis", "slice_range", "step_inputs",
    "layernorm_size", "shuffle_order", "attention_dims",
    "rel_attention_dims", "rel_attention_scale", "relative_position_index",  # maxvit
    # swin
    "WINDOW_MASK_VALUE", "WindowDims", "window_attention_dims", "window_shift_mask",
    "window_coords_table",
]
