"""The core ops of archir (DESIGN.md, "The IR").

Shapes exclude the symbolic batch dimension: a ``conv2d`` sees ``(C, H, W)``.
Attribute names and semantics follow torch (``torch.nn.Conv2d`` and friends), and
initialisers follow torch's defaults, drawn from a ``numpy.random.Generator`` so that a
seed gives the same weights on every machine.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from archir.errors import OpSchemaError, ShapeError
from archir.ops.registry import AttrSpec, OpDef, OpTraits, get_op, pair, register_op
from archir.types import DTYPES, TensorType

# Bounds that keep a hostile file from asking for absurd tensors.
MAX_DIM = 1 << 20
MAX_NUMEL = 1 << 31
MAX_KERNEL = 1024


def _fail(node, msg, hint=None) -> ShapeError:
    return ShapeError(msg, node=node, rule="shape", hint=hint)


def _rank(op: str, t: TensorType, rank: int, node, what: str = "input") -> None:
    if t.rank != rank:
        raise _fail(
            node,
            f"{op} expects a rank-{rank} {what} per sample, got {t} ",
            hint=f"{op} works on (N, C, H, W) tensors; insert a reshape or use another op"
            if rank == 3
            else None,
        )


def _out_size(size: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    # torch: with ceil_mode the last window must start inside the input or left padding
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


def _checked_type(shape, node) -> TensorType:
    t = TensorType(tuple(shape))
    for d in t.shape:
        if d < 1 or d > MAX_DIM:
            raise _fail(node, f"output dimension {d} out of range [1, {MAX_DIM}] (shape {t})",
                        hint="check kernel_size/stride/padding against the input size")
    if t.numel > MAX_NUMEL:
        raise _fail(node, f"output has {t.numel} elements per sample, more than {MAX_NUMEL}")
    return t


INF = math.inf


def _traits(category, *, merge=None, channelwise=False, zero_preserving=None, value_range=None, identity_on=None,
            conv_epilogue=None, blocked_layout=False) -> OpTraits:
    """An :class:`OpTraits` with this module's usual values spelled out as keyword defaults."""
    return OpTraits(category=category, merge=merge, channelwise=channelwise, zero_preserving=zero_preserving,
                    value_range=value_range, identity_on=identity_on, conv_epilogue=conv_epilogue,
                    blocked_layout=blocked_layout)


def _zero_unless_bias(attrs) -> str | None:
    return None if attrs["bias"] else "all"  # W @ 0 = 0, and + b only with a bias


def _uniform(rng: np.random.Generator, bound: float, shape) -> np.ndarray:
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def _same(op):
    def infer(attrs, ins, node):
        return ins[0]

    return infer


# --------------------------------------------------------------------------- input


def _input_check(attrs, node):
    n = 1
    for d in attrs["shape"]:
        n *= d
    if n > MAX_NUMEL:
        raise OpSchemaError(f"input shape {attrs['shape']} has {n} elements, more than {MAX_NUMEL}",
                            node=node, rule="attr", hint="use a smaller input shape")


register_op(OpDef(
    "input", arity=0,
    attrs={"shape": AttrSpec("ints", min=1, max=MAX_DIM), "dtype": AttrSpec("str", "float32", choices=DTYPES)},
    infer=lambda a, ins, node: TensorType(tuple(a["shape"]), a["dtype"]),
    check=_input_check,
    traits=_traits("input"),
    doc="graph input; shape excludes the batch dim",
))

# --------------------------------------------------------------------------- conv2d


def _conv_in(ins, node):
    _rank("conv2d", ins[0], 3, node)
    return ins[0].shape


def _conv_check(a, node):
    if a["out_channels"] % a["groups"]:
        raise OpSchemaError(f"out_channels={a['out_channels']} is not divisible by groups={a['groups']}",
                            node=node, rule="attr", hint="make out_channels a multiple of groups")


def _conv_infer(a, ins, node):
    c, h, w = _conv_in(ins, node)
    if c % a["groups"]:
        raise _fail(node, f"input channels {c} not divisible by groups={a['groups']}",
                    hint="choose groups dividing the input channel count")
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (pair(a[k]) for k in ("kernel_size", "stride", "padding", "dilation"))
    oh, ow = _out_size(h, kh, sh, ph, dh, False), _out_size(w, kw, sw, pw, dw, False)
    if oh < 1 or ow < 1:
        raise _fail(node, f"conv2d kernel {kh}x{kw} (dilation {dh}x{dw}, padding {ph}x{pw}) does not fit input {ins[0]}",
                    hint="use a smaller kernel, more padding or a larger input")
    return _checked_type((a["out_channels"], oh, ow), node)


def _conv_params(a, ins):
    """conv2d's ``(out, in/groups, kh, kw)`` on a ``(C, H, W)`` input, conv1d's ``(out, in/groups, k)`` on ``(C, L)``."""
    c = ins[0].shape[0]
    kernel = pair(a["kernel_size"]) if ins[0].rank == 3 else (a["kernel_size"],)
    p = {"weight": (a["out_channels"], c // a["groups"], *kernel)}
    if a["bias"]:
        p["bias"] = (a["out_channels"],)
    return p


def _conv_init(a, ins, rng):
    shapes = _conv_params(a, ins)
    w = shapes["weight"]
    bound = 1.0 / math.sqrt(math.prod(w[1:]))  # torch's kaiming_uniform_(a=sqrt(5)) default
    params = {"weight": _uniform(rng, bound, w)}
    if "bias" in shapes:
        params["bias"] = _uniform(rng, bound, shapes["bias"])
    return params, {}


def _conv_attrs(kind: str) -> dict[str, AttrSpec]:
    """conv2d's (``kind="pair"``: ``3`` or ``(3, 5)``) and conv1d's (``"int"``) attributes, as torch names them."""
    return {
        "out_channels": AttrSpec("int", min=1, max=MAX_DIM),
        "kernel_size": AttrSpec(kind, min=1, max=MAX_KERNEL),
        "stride": AttrSpec(kind, 1, min=1, max=MAX_KERNEL),
        "padding": AttrSpec(kind, 0, min=0, max=MAX_KERNEL),
        "dilation": AttrSpec(kind, 1, min=1, max=MAX_KERNEL),
        "groups": AttrSpec("int", 1, min=1, max=MAX_DIM),
        "bias": AttrSpec("bool", True),
    }


register_op(OpDef(
    "conv2d", arity=1,
    attrs=_conv_attrs("pair"),
    infer=_conv_infer, param_shapes=_conv_params, init=_conv_init, check=_conv_check,
    traits=_traits("conv", zero_preserving=_zero_unless_bias, blocked_layout=True),
    doc="2-d convolution (torch.nn.Conv2d); in_channels come from the input shape",
))

# --------------------------------------------------------------------------- linear


def _linear_infer(a, ins, node):
    if ins[0].rank < 1:
        raise _fail(node, f"linear needs a feature dimension, got {ins[0]}", hint="flatten first")
    return _checked_type(ins[0].shape[:-1] + (a["out_features"],), node)


def _linear_params(a, ins):
    p = {"weight": (a["out_features"], ins[0].shape[-1])}
    if a["bias"]:
        p["bias"] = (a["out_features"],)
    return p


def _linear_init(a, ins, rng):
    shapes = _linear_params(a, ins)
    bound = 1.0 / math.sqrt(shapes["weight"][1])
    return {k: _uniform(rng, bound, s) for k, s in shapes.items()}, {}


register_op(OpDef(
    "linear", arity=1,
    attrs={"out_features": AttrSpec("int", min=1, max=MAX_DIM), "bias": AttrSpec("bool", True)},
    infer=_linear_infer, param_shapes=_linear_params, init=_linear_init,
    traits=_traits("linear", zero_preserving=_zero_unless_bias),
    doc="fully connected layer on the last dim (torch.nn.Linear)",
))

# --------------------------------------------------------------------------- batchnorm2d


def _bn_infer(a, ins, node):
    _rank("batchnorm2d", ins[0], 3, node)
    return ins[0]


def _bn_params(a, ins):
    c = ins[0].shape[0]
    return {"weight": (c,), "bias": (c,)} if a["affine"] else {}


def _bn_buffers(a, ins):
    c = ins[0].shape[0]
    return {"running_mean": (c,), "running_var": (c,)}


def _bn_init(a, ins, rng):
    c = ins[0].shape[0]
    params = {"weight": np.ones(c, np.float32), "bias": np.zeros(c, np.float32)} if a["affine"] else {}
    return params, {"running_mean": np.zeros(c, np.float32), "running_var": np.ones(c, np.float32)}


register_op(OpDef(
    "batchnorm2d", arity=1,
    attrs={"eps": AttrSpec("float", 1e-5, min=0.0), "momentum": AttrSpec("float", 0.1, min=0.0, max=1.0),
           "affine": AttrSpec("bool", True)},
    infer=_bn_infer, param_shapes=_bn_params, buffer_shapes=_bn_buffers, init=_bn_init,
    traits=_traits("norm", channelwise=True, conv_epilogue=1, blocked_layout=True),
    doc="batch norm over channels (torch.nn.BatchNorm2d); running stats are buffers",
))

# --------------------------------------------------------------------------- elementwise

_UNARY = dict(channelwise=True, zero_preserving="all")
for _name, _doc, _t in [
    ("relu", "max(x, 0)", _traits("activation", **_UNARY, value_range=(0.0, INF), identity_on=(0.0, INF),
                                  conv_epilogue=3, blocked_layout=True)),
    ("relu6", "min(max(x, 0), 6)", _traits("activation", **_UNARY, value_range=(0.0, 6.0), identity_on=(0.0, 6.0),
                                           conv_epilogue=3, blocked_layout=True)),
    ("sigmoid", "1 / (1 + exp(-x))", _traits("gate", channelwise=True, value_range=(0.0, 1.0), conv_epilogue=3,
                                             blocked_layout=True)),
    ("hardswish", "x * relu6(x + 3) / 6", _traits("activation", **_UNARY, conv_epilogue=3)),
    ("hardsigmoid", "relu6(x + 3) / 6", _traits("gate", channelwise=True, value_range=(0.0, 1.0), conv_epilogue=3,
                                                blocked_layout=True)),
    ("silu", "x * sigmoid(x)", _traits("activation", **_UNARY)),
    ("tanh", "tanh(x)", _traits("gate", **_UNARY, value_range=(-1.0, 1.0), conv_epilogue=3, blocked_layout=True)),
    ("identity", "x", _traits("view", **_UNARY, value_range="input")),
    ("stop_gradient", "x.detach(): forward x, no gradient (training only)",
     _traits("view", **_UNARY, value_range="input")),
    # forward 0, but it carries gradients: never treated as a removable zero
    ("stop_forward", "x - x.detach(): forward 0, gradient of x (training only)", _traits("eltwise", channelwise=True)),
]:
    register_op(OpDef(
        _name, arity=1, infer=_same(_name), doc=_doc, traits=_t,
        training_only=_name.startswith("stop_"),
        removed_by="finalize" if _name.startswith("stop_") else None,
    ))

# --------------------------------------------------------------------------- parametrised activations
# Each keeps the shape and works on every element alone (channel-wise). Attributes and defaults are
# torch's (torch.nn.LeakyReLU, GELU, ELU, Hardtanh).


def _monotone_range(f):
    """``value_range`` of a non-decreasing ``f(attrs, x)``: ``(f(lo), f(hi))`` of a known input interval."""

    def rng(a, ins):
        if ins[0] is None:
            return None
        return (f(a, ins[0][0]), f(a, ins[0][1]))

    return rng


def _leaky(a, x):
    return x if x >= 0 else a["negative_slope"] * x


def _leaky_range(a, ins):
    # non-decreasing for slopes >= 0; a negative slope folds negative inputs up (unknown range)
    return _monotone_range(_leaky)(a, ins) if a["negative_slope"] >= 0 else None


register_op(OpDef(
    "leaky_relu", arity=1, attrs={"negative_slope": AttrSpec("float", 0.01, min=-1e6, max=1e6)},
    infer=_same("leaky_relu"),
    traits=_traits("activation", **_UNARY, value_range=_leaky_range, identity_on=(0.0, INF), conv_epilogue=3),
    doc="x if x >= 0 else negative_slope * x (torch.nn.LeakyReLU); 2 flops per element",
))

#: the least value of GELU (exact: -0.16997 at x = -0.7518; the tanh form's is within 1e-4 of it), rounded down
GELU_MIN = -0.17


register_op(OpDef(
    "gelu", arity=1, attrs={"approximate": AttrSpec("str", "none", choices=("none", "tanh"))},
    infer=_same("gelu"),
    traits=_traits("activation", **_UNARY, value_range=(GELU_MIN, INF)),
    doc="x * Phi(x) (torch.nn.GELU): approximate='none' is x/2 * (1 + erf(x / sqrt 2)), 'tanh' is "
        "x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))); 5 / 13 flops per element",
))


def _elu(a, x):
    return x if x > 0 else a["alpha"] * math.expm1(x)


def _elu_range(a, ins):
    if a["alpha"] < 0:
        return None  # not monotone
    if ins[0] is None:
        return (-a["alpha"], INF)
    return _monotone_range(_elu)(a, ins)


register_op(OpDef(
    "elu", arity=1, attrs={"alpha": AttrSpec("float", 1.0, min=-1e6, max=1e6)}, infer=_same("elu"),
    traits=_traits("activation", **_UNARY, value_range=_elu_range, identity_on=(0.0, INF)),
    doc="x if x > 0 else alpha * (exp(x) - 1) (torch.nn.ELU); 4 flops per element",
))


def _hardtanh_check(a, node):
    if a["min_val"] > a["max_val"]:
        raise OpSchemaError(f"hardtanh min_val={a['min_val']} is greater than max_val={a['max_val']}", node=node,
                            rule="attr", hint="pass min_val <= max_val (torch's default is -1, 1)")


def _hardtanh_zeros(a):
    return "all" if a["min_val"] <= 0.0 <= a["max_val"] else None  # clip(0) = 0 only when 0 is inside


register_op(OpDef(
    "hardtanh", arity=1,
    attrs={"min_val": AttrSpec("float", -1.0, min=-1e9, max=1e9), "max_val": AttrSpec("float", 1.0, min=-1e9, max=1e9)},
    infer=_same("hardtanh"), check=_hardtanh_check,
    traits=_traits("activation", channelwise=True, zero_preserving=_hardtanh_zeros,
                   value_range=lambda a, ins: (a["min_val"], a["max_val"]), conv_epilogue=3),
    doc="min(max(x, min_val), max_val) (torch.nn.Hardtanh; ONNX Clip); relu6 is hardtanh(0, 6) and imports as "
        "relu6; 2 flops per element",
))


def _neg_range(a, ins):
    return None if ins[0] is None else (-ins[0][1], -ins[0][0])


register_op(OpDef(
    "neg", arity=1, infer=_same("neg"),
    traits=_traits("eltwise", **_UNARY, value_range=_neg_range),
    doc="-x (torch.neg); 1 flop per element",
))

register_op(OpDef(
    "dropout", arity=1, attrs={"p": AttrSpec("float", 0.5, min=0.0, max=1.0)}, infer=_same("dropout"),
    traits=_traits("view", **_UNARY, value_range="input"),
    doc="dropout (identity in eval mode)",
))

# --------------------------------------------------------------------------- training-time constructs
# The DARTS/NASNet evaluation recipe trains the final network with drop-path and an auxiliary
# head. Both are training-only: archir.strip_training removes them (to_onnx, derive and
# finalize call it), to_fx trains with them.

#: the ``OpDef.removed_by`` of the ops that :func:`archir.strip_training` removes
STRIPPED_BY = "archir.strip_training"


def _drop_path_check(a, node):
    if a["p"] >= 1.0:
        raise OpSchemaError(f"drop_path p={a['p']} drops every sample", node=node, rule="attr",
                            hint="pass p= a drop probability in [0, 1), e.g. 0.2 (DARTS' CIFAR setting)")


register_op(OpDef(
    "drop_path", arity=1, attrs={"p": AttrSpec("float", 0.2, min=0.0, max=1.0)}, infer=_same("drop_path"),
    check=_drop_path_check, training_only=True, removed_by=STRIPPED_BY,
    traits=_traits("view", **_UNARY, value_range="input"),
    doc="drop-path: in training each sample is zeroed with probability p (survivors scaled by 1/(1-p)); "
        "identity in eval mode",
))

def _auxiliary_check(a, node):
    if not a["weight"] > 0:
        raise OpSchemaError(f"auxiliary weight={a['weight']} must be > 0", node=node, rule="attr",
                            hint="pass weight= the auxiliary loss weight, a positive number (DARTS: 0.4)")


register_op(OpDef(
    "auxiliary", arity=1, attrs={"weight": AttrSpec("float", 0.4, min=0.0)}, infer=_same("auxiliary"),
    check=_auxiliary_check, training_only=True, removed_by=STRIPPED_BY, auxiliary_output=True,
    traits=_traits("view", **_UNARY, value_range="input"),
    doc="marks an auxiliary training output (value = its input; loss weight `weight`); a later graph output, "
        "read by no node",
))


def _zero_infer(a, ins, node):
    s = a["stride"]
    if s == 1:
        return ins[0]
    _rank("zero", ins[0], 3, node)
    c, h, w = ins[0].shape
    return TensorType((c, -(-h // s), -(-w // s)))


register_op(OpDef(
    "zero", arity=1, attrs={"stride": AttrSpec("int", 1, min=1, max=MAX_KERNEL)}, infer=_zero_infer,
    traits=_traits("eltwise", channelwise=True, zero_preserving="always", value_range=(0.0, 0.0)),
    doc="zeros shaped like x[:, :, ::stride, ::stride] (the DARTS 'none' op)",
))

# --------------------------------------------------------------------------- value ranges (OpTraits.value_range)


def _avgpool_range(a, ins):
    if ins[0] is None:
        return None
    lo, hi = ins[0]
    pads = a["padding"] not in (0, [0, 0]) and a["count_include_pad"]  # padded zeros join the average
    return (min(lo, 0.0), max(hi, 0.0)) if pads else (lo, hi)


def _sum_range(a, ins):
    return None if any(x is None for x in ins) else (sum(x[0] for x in ins), sum(x[1] for x in ins))


def _product_range(a, ins):  # sound for non-negative factors only
    if any(x is None or x[0] < 0 for x in ins):
        return None
    return (math.prod(x[0] for x in ins), math.prod(x[1] for x in ins))


def _hull_range(a, ins):
    return None if any(x is None for x in ins) else (min(x[0] for x in ins), max(x[1] for x in ins))


# --------------------------------------------------------------------------- pooling


def _pool_check(a, node):
    (kh, kw), (ph, pw) = pair(a["kernel_size"]), pair(a["padding"])
    if ph > kh // 2 or pw > kw // 2:
        raise OpSchemaError(f"padding {a['padding']} is more than half of kernel_size {a['kernel_size']}",
                            node=node, rule="attr", hint="torch requires padding <= kernel_size // 2")


def _pool_infer(op):
    def infer(a, ins, node):
        _rank(op, ins[0], 3, node)
        c, h, w = ins[0].shape
        k, p = pair(a["kernel_size"]), pair(a["padding"])
        s = pair(a["stride"]) if a["stride"] is not None else k
        d = pair(a.get("dilation", 1))
        ceil = a.get("ceil_mode", False)
        oh, ow = _out_size(h, k[0], s[0], p[0], d[0], ceil), _out_size(w, k[1], s[1], p[1], d[1], ceil)
        if oh < 1 or ow < 1:
            raise _fail(node, f"{op} window {k} does not fit input {ins[0]}", hint="use a smaller kernel_size")
        return _checked_type((c, oh, ow), node)

    return infer


register_op(OpDef(
    "maxpool2d", arity=1,
    attrs={"kernel_size": AttrSpec("pair", min=1, max=MAX_KERNEL),
           "stride": AttrSpec("pair", None, min=1, max=MAX_KERNEL, optional=True),
           "padding": AttrSpec("pair", 0, min=0, max=MAX_KERNEL),
           "dilation": AttrSpec("pair", 1, min=1, max=MAX_KERNEL),
           "ceil_mode": AttrSpec("bool", False)},
    infer=_pool_infer("maxpool2d"), check=_pool_check,
    traits=_traits("pool", **_UNARY, value_range="input", blocked_layout=True),
    doc="2-d max pooling (stride defaults to kernel_size)",
))
register_op(OpDef(
    "avgpool2d", arity=1,
    attrs={"kernel_size": AttrSpec("pair", min=1, max=MAX_KERNEL),
           "stride": AttrSpec("pair", None, min=1, max=MAX_KERNEL, optional=True),
           "padding": AttrSpec("pair", 0, min=0, max=MAX_KERNEL),
           "count_include_pad": AttrSpec("bool", True)},
    infer=_pool_infer("avgpool2d"), check=_pool_check,
    traits=_traits("pool", **_UNARY, value_range=_avgpool_range, blocked_layout=True),
    doc="2-d average pooling (stride defaults to kernel_size)",
))


def _gap_infer(a, ins, node):
    _rank("global_avgpool", ins[0], 3, node)
    return TensorType((ins[0].shape[0], 1, 1))


register_op(OpDef("global_avgpool", arity=1, infer=_gap_infer,
                  traits=_traits("pool", **_UNARY, value_range="input", blocked_layout=True),
                  doc="mean over H and W, keeps (C, 1, 1)"))


def adaptive_windows(size: int, out: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` input windows of adaptive pooling from ``size`` to ``out`` positions.

    torch's rule: window ``i`` is ``[floor(i * size / out), ceil((i + 1) * size / out))``, so the
    windows cover the input, may overlap, and repeat inputs when ``out > size``.

    Example:
        >>> adaptive_windows(5, 3)
        [(0, 2), (1, 4), (3, 5)]
    """
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def _adaptive_infer(a, ins, node):
    _rank("adaptive_avgpool2d", ins[0], 3, node)
    oh, ow = pair(a["output_size"])
    return _checked_type((ins[0].shape[0], oh, ow), node)


register_op(OpDef(
    "adaptive_avgpool2d", arity=1,
    attrs={"output_size": AttrSpec("pair", min=1, max=MAX_DIM)},
    infer=_adaptive_infer,
    traits=_traits("pool", **_UNARY, value_range="input"),
    doc="adaptive average pooling to any (oh, ow) (torch.nn.AdaptiveAvgPool2d); windows may overlap or repeat",
))


def _flatten_infer(a, ins, node):
    t = ins[0]
    sd = a["start_dim"]  # torch's dim, counting the batch dim as 0
    if sd > max(t.rank, 1):
        raise _fail(node, f"flatten start_dim={sd} is past the last dim of {t}", hint="use start_dim=1")
    keep = t.shape[: sd - 1]
    return _checked_type(keep + (math.prod(t.shape[sd - 1:]),), node)


register_op(OpDef(
    "flatten", arity=1, attrs={"start_dim": AttrSpec("int", 1, min=1, max=16)}, infer=_flatten_infer,
    traits=_traits("view", zero_preserving="all", value_range="input"),
    doc="torch.flatten(x, start_dim) to the last dim; the batch dim is never flattened",
))

# --------------------------------------------------------------------------- binary / n-ary


def _add_infer(a, ins, node):
    if ins[0].shape != ins[1].shape:
        raise _fail(node, f"add needs equal shapes, got {ins[0]} and {ins[1]}",
                    hint="project one input (1x1 conv / pooling) so the shapes match")
    return ins[0]


register_op(OpDef("add", arity=2, infer=_add_infer,
                  traits=_traits("eltwise", merge="sum", zero_preserving="all", value_range=_sum_range,
                                 conv_epilogue=2, blocked_layout=True),
                  doc="elementwise sum of two equal-shape tensors"))


def _broadcast_infer(op):
    """The shape rule of a broadcasting binary op: equal ranks, each dim equal or 1 (torch's rule
    without rank promotion)."""

    def infer(a, ins, node):
        x, y = ins
        if x.rank != y.rank:
            raise _fail(node, f"{op} needs equal ranks, got {x} and {y}",
                        hint="reshape the gate to (C, 1, 1) for a (C, H, W) input")
        out = []
        for dx, dy in zip(x.shape, y.shape):
            if dx != dy and 1 not in (dx, dy):
                raise _fail(node, f"{op} cannot broadcast {x} with {y}", hint="dims must be equal or 1")
            out.append(max(dx, dy))
        return TensorType(tuple(out))

    return infer


_mul_infer = _broadcast_infer("mul")


register_op(OpDef("mul", arity=2, infer=_mul_infer,
                  traits=_traits("eltwise", merge="product", zero_preserving="any", value_range=_product_range),
                  doc="elementwise product with broadcasting (squeeze-excite)"))


def _difference_range(a, ins):
    if any(x is None for x in ins):
        return None
    (alo, ahi), (blo, bhi) = ins
    return (alo - bhi, ahi - blo)


register_op(OpDef("sub", arity=2, infer=_broadcast_infer("sub"),
                  traits=_traits("eltwise", merge="difference", zero_preserving="all",
                                 value_range=_difference_range),
                  doc="elementwise difference x - y with broadcasting (dims equal or 1, like mul); 1 flop per "
                      "element"))
register_op(OpDef("div", arity=2, infer=_broadcast_infer("div"),
                  # x / 0 is inf or nan: zeros are not kept, and no range is known
                  traits=_traits("eltwise", merge="quotient"),
                  doc="elementwise quotient x / y with broadcasting (dims equal or 1, like mul; torch's true "
                      "division); 1 flop per element"))


def concat_axis(dim: int, rank: int, node=None) -> int:
    """Per-sample axis of torch's ``dim`` (which counts the batch dim) for a rank-``rank`` sample."""
    full = rank + 1
    d = dim + full if dim < 0 else dim
    if not 1 <= d < full:
        raise _fail(node, f"concat dim={dim} is out of range for {rank}-d samples (dim 0 is the batch)",
                    hint="use dim=1 to concatenate channels")
    return d - 1


def _concat_infer(a, ins, node):
    r = ins[0].rank
    ax = concat_axis(a["dim"], r, node)
    out = list(ins[0].shape)
    for t in ins[1:]:
        if t.rank != r or any(t.shape[i] != ins[0].shape[i] for i in range(r) if i != ax):
            raise _fail(node, f"concat on dim {a['dim']} needs equal other dims, got {[str(x) for x in ins]}",
                        hint="resize inputs (pooling / strided conv) so only the concat dim differs")
        out[ax] += t.shape[ax]
    return _checked_type(out, node)


register_op(OpDef(
    "concat", arity=None, min_inputs=1, attrs={"dim": AttrSpec("int", 1, min=-16, max=16)}, infer=_concat_infer,
    traits=_traits("concat", merge="concat", zero_preserving="all", value_range=_hull_range,
                   blocked_layout=True),
    doc="torch.cat(inputs, dim); dim counts the batch dim",
))


def slice_range(a: dict, shape: tuple[int, ...], node=None) -> tuple[int, int, int, int]:
    """``(axis, start, stop, step)`` of a ``slice`` node on a per-sample ``shape``: the axis without
    the batch dim, and Python's ``slice(start, end, step).indices(size)``."""
    ax = concat_axis(a["dim"], len(shape), node)
    start, stop, step = slice(a["start"], a["end"], a["step"]).indices(shape[ax])
    return ax, start, stop, step


def _slice_check(a, node):
    if a["dim"] == 0:
        raise OpSchemaError("slice dim=0 is the batch dim, which archir never slices", node=node, rule="attr",
                            hint="pass dim= 1 (channels), 2 (height) or 3 (width); dims count the batch as 0")


def _slice_infer(a, ins, node):
    ax, start, stop, step = slice_range(a, ins[0].shape, node)
    n = len(range(start, stop, step))
    if n < 1:
        raise _fail(node, f"slice {a['start']}:{a['end']}:{a['step']} on dim {a['dim']} of {ins[0]} is empty",
                    hint="pick start/end inside the dim (Python semantics: negatives count from the end)")
    out = list(ins[0].shape)
    out[ax] = n
    return _checked_type(out, node)


register_op(OpDef(
    "slice", arity=1, infer=_slice_infer, check=_slice_check,
    attrs={"dim": AttrSpec("int", min=-16, max=16), "start": AttrSpec("int", 0, min=-MAX_DIM, max=MAX_DIM),
           "end": AttrSpec("int", None, min=-MAX_DIM, max=MAX_DIM, optional=True),
           "step": AttrSpec("int", 1, min=1, max=MAX_DIM)},
    traits=_traits("copy", zero_preserving="all", value_range="input"),
    doc="x[..., start:end:step] on one dim (Python semantics; dim counts the batch dim as 0; torch.narrow)",
))


#: the padding modes of ``pad`` (torch's names; ONNX calls replicate "edge")
PAD_MODES = ("constant", "reflect", "replicate")


def _pad_check(a, node):
    p = a["pads"]
    if len(p) not in (2, 4):
        raise OpSchemaError(f"pad pads={p} must have 2 or 4 entries", node=node, rule="attr",
                            hint="pass pads=[left, right, top, bottom] (torch.nn.functional.pad for the last two "
                                 "dims) or [left, right] for the width only")
    if a["mode"] != "constant" and a["value"] != 0.0:
        raise OpSchemaError(f"pad value={a['value']} is only used by mode='constant', not {a['mode']!r}", node=node,
                            rule="attr", hint="drop value= or use mode='constant'")
    a = dict(a)
    a["pads"] = list(p) + [0, 0] if len(p) == 2 else list(p)  # canonical: [left, right, top, bottom]
    return a


def _pad_infer(a, ins, node):
    _rank("pad", ins[0], 3, node)
    c, h, w = ins[0].shape
    left, right, top, bottom = a["pads"]
    if a["mode"] == "reflect":
        for what, p, size in (("left", left, w), ("right", right, w), ("top", top, h), ("bottom", bottom, h)):
            if p >= size:
                raise _fail(node, f"reflect pad {what}={p} needs an input of more than {p} along that dim, got "
                            f"{ins[0]}", hint="reflect padding must be smaller than the input size; use "
                                              "mode='replicate' or 'constant' for wider pads")
    return _checked_type((c, h + top + bottom, w + left + right), node)


def _pad_zeros(a):
    return "all" if a["mode"] != "constant" or a["value"] == 0.0 else None


def _pad_range(a, ins):
    if ins[0] is None:
        return None
    if a["mode"] != "constant" or not any(a["pads"]):
        return ins[0]
    return (min(ins[0][0], a["value"]), max(ins[0][1], a["value"]))


register_op(OpDef(
    "pad", arity=1, infer=_pad_infer, check=_pad_check,
    attrs={"pads": AttrSpec("ints", min=0, max=MAX_KERNEL),
           "mode": AttrSpec("str", "constant", choices=PAD_MODES), "value": AttrSpec("float", 0.0)},
    traits=_traits("copy", channelwise=True, zero_preserving=_pad_zeros, value_range=_pad_range),
    doc="pad H and W of a (C, H, W) map (torch.nn.functional.pad(x, [left, right, top, bottom], mode, value)); "
        "modes constant (with value), reflect (pads < input size), replicate; a copy, no arithmetic",
))


def _scale_infer(a, ins, node):
    if ins[0].rank < 1:
        raise _fail(node, "scale needs a channel dim", hint="apply it to (C, ...) tensors")
    return ins[0]


register_op(OpDef(
    "scale", arity=1, infer=_scale_infer,
    param_shapes=lambda a, ins: {"weight": (ins[0].shape[0],)},
    init=lambda a, ins, rng: ({"weight": np.ones(ins[0].shape[0], np.float32)}, {}),
    traits=_traits("eltwise", **_UNARY),
    doc="learnable per-channel multiply, initialised to 1",
))

# --------------------------------------------------------------------------- layout ops
# permute, reshape, channel_shuffle, layernorm (issue 17). Dims and shapes are per sample: the batch
# dim is never moved, merged or normalised over. ConvNeXt's per-channel layer_scale gamma is ``scale``.


def _permute_check(a, node):
    dims = a["dims"]
    if sorted(dims) != list(range(len(dims))):
        raise OpSchemaError(f"permute dims={dims} is not a permutation of 0..{len(dims) - 1}", node=node,
                            rule="attr", hint="dims reorder the per-sample axes (the batch stays first): for "
                                              "torch's x.permute(0, 2, 3, 1) pass dims=[1, 2, 0]")


def _permute_infer(a, ins, node):
    dims, t = a["dims"], ins[0]
    if len(dims) != t.rank:
        raise _fail(node, f"permute dims={dims} has {len(dims)} entries for a rank-{t.rank} sample {t}",
                    hint="give one entry per non-batch axis")
    return TensorType(tuple(t.shape[d] for d in dims))


register_op(OpDef(
    "permute", arity=1, attrs={"dims": AttrSpec("ints", min=0, max=16)}, infer=_permute_infer,
    check=_permute_check,
    traits=_traits("copy", zero_preserving="all", value_range="input"),
    doc="reorder the per-sample axes: x.permute(0, *[d + 1 for d in dims]) (torch.permute / transpose; ONNX "
        "Transpose); dims exclude the batch; a copy, no arithmetic",
))


def _reshape_infer(a, ins, node):
    shape, t = tuple(a["shape"]), ins[0]
    if math.prod(shape) != t.numel:
        raise _fail(node, f"reshape of {t} ({t.numel} elements per sample) to {shape} ({math.prod(shape)} "
                          f"elements)", hint="the target shape (batch excluded) must hold as many elements")
    return _checked_type(shape, node)


register_op(OpDef(
    "reshape", arity=1, attrs={"shape": AttrSpec("ints", min=1, max=MAX_DIM)}, infer=_reshape_infer,
    traits=_traits("view", zero_preserving="all", value_range="input"),
    doc="x.reshape(N, *shape) in row-major order (torch.reshape / view / unflatten / squeeze / unsqueeze; ONNX "
        "Reshape); shape excludes the batch and has no -1; no computation",
))


def _shuffle_infer(a, ins, node):
    _rank("channel_shuffle", ins[0], 3, node)
    c = ins[0].shape[0]
    if c % a["groups"]:
        raise _fail(node, f"channel_shuffle groups={a['groups']} does not divide the {c} channels of {ins[0]}",
                    hint="pick groups dividing the channel count")
    return ins[0]


def shuffle_order(channels: int, groups: int) -> list[int]:
    """The input channel of each output channel of ``channel_shuffle``: output ``j * groups + i``
    is input ``i * (channels // groups) + j`` (torch.nn.ChannelShuffle).

    Example:
        >>> shuffle_order(6, 2)
        [0, 3, 1, 4, 2, 5]
    """
    per = channels // groups
    return [i * per + j for j in range(per) for i in range(groups)]


register_op(OpDef(
    "channel_shuffle", arity=1, attrs={"groups": AttrSpec("int", min=1, max=MAX_DIM)}, infer=_shuffle_infer,
    traits=_traits("copy", zero_preserving="all", value_range="input"),
    doc="ShuffleNet's channel shuffle (torch.nn.ChannelShuffle): view (groups, C/groups), transpose, flatten; a "
        "fixed permutation of the channels (shuffle_order), a copy with no arithmetic",
))

#: where ``layernorm`` normalises: over the last axis (torch.nn.LayerNorm(C) on (..., C)), or over the channel
#: axis of a (C, H, W) map at every position (ConvNeXt's LayerNorm2d: permute, LayerNorm, permute back)
LAYERNORM_AXES = ("last", "channels")


def layernorm_size(a, t: TensorType) -> int:
    """The length of the axis a ``layernorm`` with attrs ``a`` normalises on an input of type ``t``."""
    return t.shape[0] if a["axis"] == "channels" else t.shape[-1]


def _ln_infer(a, ins, node):
    t = ins[0]
    if a["axis"] == "channels":
        _rank("layernorm (axis='channels')", t, 3, node)
    elif t.rank < 1:
        raise _fail(node, "layernorm needs an axis to normalise", hint="apply it to (..., C) tensors")
    return t


def _ln_params(a, ins):
    c = layernorm_size(a, ins[0])
    if not a["affine"]:
        return {}
    return {"weight": (c,), "bias": (c,)} if a["bias"] else {"weight": (c,)}


def _ln_init(a, ins, rng):
    shapes = _ln_params(a, ins)
    out = {"weight": np.ones(shapes["weight"], np.float32)} if "weight" in shapes else {}
    if "bias" in shapes:
        out["bias"] = np.zeros(shapes["bias"], np.float32)
    return out, {}


def _ln_check(a, node):
    if a["bias"] and not a["affine"]:
        raise OpSchemaError("layernorm bias=True needs affine=True", node=node, rule="attr",
                            hint="pass affine=False, bias=False for a layernorm without parameters (torch: "
                                 "elementwise_affine=False)")


register_op(OpDef(
    "layernorm", arity=1,
    attrs={"axis": AttrSpec("str", "last", choices=LAYERNORM_AXES), "eps": AttrSpec("float", 1e-5, min=0.0),
           "affine": AttrSpec("bool", True), "bias": AttrSpec("bool", True)},
    infer=_ln_infer, param_shapes=_ln_params, init=_ln_init, check=_ln_check,
    # LN(0) = bias; the statistics mix every channel (or feature) of a position, so it is not channel-wise
    traits=_traits("norm", zero_preserving=lambda a: None if a["affine"] and a["bias"] else "all"),
    doc="layer norm over one axis, biased variance, then weight * x + bias (torch.nn.LayerNorm(C, eps, "
        "elementwise_affine=affine, bias=bias)): axis='last' on (..., C), axis='channels' over C of a (C, H, W) "
        "map at every (h, w) (ConvNeXt's LayerNorm2d)",
))

# --------------------------------------------------------------------------- choice

_NOT_IN_CHOICE = {"input", "choice", "auxiliary"}  # an aux head is a graph output, not a step


def _choice_check(a, node):
    cands = a["candidates"]

    def bad(msg):
        return OpSchemaError(
            msg, node=node, rule="attr",
            hint='candidates is a list of {"name": str, "ops": [{"op": "conv2d", "kernel_size": 3, ...}, ...]}; '
                 'a step reads the step before it, or the steps listed in its "inputs" (-1: the choice input)',
        )

    if not isinstance(cands, list) or not cands:
        raise bad("choice needs a non-empty list of candidates")
    out, names = [], set()
    for k, c in enumerate(cands):
        if not isinstance(c, dict) or set(c) - {"name", "ops"} or not isinstance(c.get("ops"), list):
            raise bad(f"candidate {k} is not {{'name': ..., 'ops': [...]}}")
        name = c.get("name", f"c{k}")
        if not isinstance(name, str) or not name or "." in name or name in names:
            raise bad(f"candidate {k} name {name!r} must be a unique non-empty string without dots")
        names.add(name)
        ops, used = [], set()
        for j, spec in enumerate(c["ops"]):
            if not isinstance(spec, dict) or not isinstance(spec.get("op"), str):
                raise bad(f"candidate {name!r} step {j} must be a dict with an 'op' key")
            sub = get_op(spec["op"], node)
            if sub.name in _NOT_IN_CHOICE:
                raise bad(f"candidate {name!r} step {j}: op {sub.name!r} cannot be a step of a choice")
            inputs = spec.get("inputs", [j - 1])
            if (not isinstance(inputs, list) or not inputs
                    or any(isinstance(i, bool) or not isinstance(i, int) or not -1 <= i < j for i in inputs)):
                raise bad(f"candidate {name!r} step {j}: inputs {inputs!r} must be a non-empty list of earlier "
                          f"steps (-1 .. {j - 1}; -1 is the choice input)")
            try:
                sub.check_arity(len(inputs), f"{node}[{name}.{j}]")
            except OpSchemaError as e:
                raise bad(f"candidate {name!r} step {j}: {e.message}") from None
            used.update(inputs)
            attrs = {k2: v for k2, v in spec.items() if k2 not in ("op", "inputs")}
            step = {"op": sub.name, **sub.normalize_attrs(attrs, node=f"{node}[{name}.{j}]")}
            if inputs != [j - 1]:
                step["inputs"] = list(inputs)
            ops.append(step)
        dead = [j for j in range(len(ops) - 1) if j not in used]
        if dead:
            raise bad(f"candidate {name!r}: the output of step(s) {dead} is never read")
        out.append({"name": name, "ops": ops})
    a = dict(a)
    a["candidates"] = out
    return a


def candidate_names(attrs: dict) -> list[str]:
    return [c["name"] for c in attrs["candidates"]]


class Step(NamedTuple):
    """One step of a choice candidate, typed: ``inputs`` are step indices (-1: the choice input)."""

    op: str
    attrs: dict
    inputs: tuple[int, ...]
    in_types: list[TensorType]
    out: TensorType


def step_inputs(spec: dict, j: int) -> list[int]:
    """The steps step ``j`` of a candidate reads (-1: the choice input); the step before it by default."""
    return list(spec.get("inputs", [j - 1]))


def candidate_steps(chain: list[dict], t: TensorType, node) -> list[Step]:
    """Every step of a candidate with its attrs, the steps it reads, their types and its output type.

    A candidate is a chain of op specs; a spec with ``"inputs": [i, ...]`` reads those steps
    instead of the one before it (``-1`` is the choice input), so a candidate may branch and join
    (DARTS' FactorizedReduce). The last step's output is the candidate's.
    """
    outs: list[TensorType] = []
    steps = []
    for j, spec in enumerate(chain):
        sub = get_op(spec["op"], node)
        attrs = {k: v for k, v in spec.items() if k not in ("op", "inputs")}
        inputs = tuple(step_inputs(spec, j))
        in_types = [t if i < 0 else outs[i] for i in inputs]
        outs.append(sub.infer(attrs, in_types, f"{node}[step {j}]"))
        steps.append(Step(sub.name, attrs, inputs, in_types, outs[-1]))
    return steps


def candidate_output(chain: list[dict], t: TensorType, node) -> TensorType:
    """The output type of a candidate (its input type when it has no steps: an identity)."""
    steps = candidate_steps(chain, t, node)
    return steps[-1].out if steps else t


def _choice_infer(a, ins, node):
    outs = []
    for c in a["candidates"]:
        outs.append(candidate_output(c["ops"], ins[0], f"{node}:{c['name']}"))
    for c, t in zip(a["candidates"], outs):
        if t != outs[0]:
            raise _fail(node, f"choice candidates disagree on the output: {a['candidates'][0]['name']!r} gives "
                        f"{outs[0]}, {c['name']!r} gives {t}", hint="every candidate must produce the same shape")
    return outs[0]


def _choice_arrays(kind):
    def shapes(a, ins):
        out = {}
        for c in a["candidates"]:
            for j, st in enumerate(candidate_steps(c["ops"], ins[0], None)):
                sub = get_op(st.op)
                fn = sub.param_shapes if kind == "params" else sub.buffer_shapes
                for pname, shp in fn(st.attrs, st.in_types).items():
                    out[f"{c['name']}.{j}.{pname}"] = shp
        return out

    return shapes


def _choice_init(a, ins, rng):
    params, buffers = {}, {}
    for c in a["candidates"]:
        for j, st in enumerate(candidate_steps(c["ops"], ins[0], None)):
            p, b = get_op(st.op).init(st.attrs, st.in_types, rng)
            params.update({f"{c['name']}.{j}.{k}": v for k, v in p.items()})
            buffers.update({f"{c['name']}.{j}.{k}": v for k, v in b.items()})
    return params, buffers


register_op(OpDef(
    "choice", arity=1,
    attrs={"candidates": AttrSpec("json"), "tie": AttrSpec("str", None, optional=True)},
    infer=_choice_infer, param_shapes=_choice_arrays("params"), buffer_shapes=_choice_arrays("buffers"),
    init=_choice_init, check=_choice_check, training_only=True, removed_by="archir.derive",
    traits=_traits("search"),
    doc="search-space node: one of several candidate op chains; params are namespaced '<candidate>.<step>.<name>'",
))

# --------------------------------------------------------------------------- upsample / reductions / conv1d / softmax / matmul
# (issue 17, part B). Dims count the batch dim as 0, as torch's do; the batch is never reduced,
# normalised or multiplied across.

#: the interpolation modes of ``upsample`` (torch's names; ONNX Resize calls bilinear "linear")
UPSAMPLE_MODES = ("nearest", "bilinear")


def _upsample_check(a, node):
    if (a["size"] is None) == (a["scale_factor"] is None):
        raise OpSchemaError("upsample needs exactly one of size and scale_factor", node=node, rule="attr",
                            hint="pass size=[oh, ow] or scale_factor=2.0 (torch.nn.Upsample's arguments)")
    if a["mode"] == "nearest" and a["align_corners"]:
        raise OpSchemaError("upsample align_corners=True only applies to mode='bilinear'", node=node, rule="attr",
                            hint="drop align_corners= for mode='nearest' (torch refuses it too)")


def upsample_size(a: dict, h: int, w: int) -> tuple[int, int]:
    """The output ``(oh, ow)`` of an ``upsample`` node on an ``h x w`` map: ``size``, or
    ``floor(h * scale_factor)`` and ``floor(w * scale_factor)`` (torch's rule)."""
    if a["size"] is not None:
        return pair(a["size"])
    s = a["scale_factor"]
    return int(math.floor(h * s)), int(math.floor(w * s))


def _upsample_infer(a, ins, node):
    _rank("upsample", ins[0], 3, node)
    c, h, w = ins[0].shape
    oh, ow = upsample_size(a, h, w)
    if oh < 1 or ow < 1:
        raise _fail(node, f"upsample of {ins[0]} by scale_factor={a['scale_factor']} gives a {oh}x{ow} map",
                    hint="use a larger scale_factor (or size=) so each output dim is at least 1")
    return _checked_type((c, oh, ow), node)


register_op(OpDef(
    "upsample", arity=1, infer=_upsample_infer, check=_upsample_check,
    attrs={"mode": AttrSpec("str", "nearest", choices=UPSAMPLE_MODES),
           "size": AttrSpec("pair", None, min=1, max=MAX_DIM, optional=True),
           "scale_factor": AttrSpec("float", None, min=1e-3, max=1024.0, optional=True),
           "align_corners": AttrSpec("bool", False)},
    # nearest copies input values; bilinear takes convex combinations of them (inside the input's range)
    traits=_traits("copy", **_UNARY, value_range="input"),
    doc="resize H and W of a (C, H, W) map (torch.nn.functional.interpolate / nn.Upsample): mode nearest "
        "(floor of dst * in / out) or bilinear (align_corners as torch), to size=[oh, ow] or by one "
        "scale_factor for both dims (output floor(in * s); coordinates scaled by 1 / s, as torch)",
))


def reduce_axes(a: dict, rank: int, node=None, op: str = "mean") -> list[int]:
    """The per-sample axes (batch excluded, sorted) that a ``mean``/``sum`` node with torch ``dims``
    reduces on a rank-``rank`` sample."""
    full = rank + 1
    axes = []
    for d in a["dims"]:
        k = d + full if d < 0 else d
        if not 0 <= k < full:
            raise _fail(node, f"{op} dim {d} is out of range for {rank}-d samples (dims count the batch as 0)",
                        hint=f"pass dims in [1, {rank}] (or negative, from the end)")
        if k == 0:
            raise _fail(node, f"{op} over dim {d}, the batch dim: archir never reduces across samples",
                        hint="reduce dims >= 1 (e.g. dims=[2, 3] for the spatial mean of (N, C, H, W))")
        if k - 1 in axes:
            raise _fail(node, f"{op} dims {a['dims']} name dim {k} twice", hint="list each dim once")
        axes.append(k - 1)
    return sorted(axes)


def _reduce_check(op):
    def check(a, node):
        if not a["dims"]:
            raise OpSchemaError(f"{op} needs at least one dim", node=node, rule="attr",
                                hint="pass dims=[2, 3] (spatial) or dims=[1] (channels); the batch is never reduced")

    return check


def _reduce_infer(op):
    def infer(a, ins, node):
        t = ins[0]
        axes = reduce_axes(a, t.rank, node, op)
        if a["keepdim"]:
            return TensorType(tuple(1 if i in axes else d for i, d in enumerate(t.shape)), t.dtype)
        out = tuple(d for i, d in enumerate(t.shape) if i not in axes)
        if not out:
            raise _fail(node, f"{op} over every dim of {t} without keepdim leaves a scalar per sample",
                        hint="pass keepdim=True, or keep one dim (archir tensors have a dim after the batch)")
        return TensorType(out, t.dtype)

    return infer


def _sum_value_range(a, ins):
    # a sum of n values of one sign keeps the sign (n is not known here, so the magnitude is unbounded)
    if ins[0] is None:
        return None
    lo, hi = ins[0]
    if lo == hi == 0.0:
        return (0.0, 0.0)
    if lo >= 0.0:
        return (0.0, INF)
    if hi <= 0.0:
        return (-INF, 0.0)
    return None


_REDUCE_ATTRS = {"dims": AttrSpec("ints", min=-16, max=16), "keepdim": AttrSpec("bool", False)}
register_op(OpDef(
    "mean", arity=1, attrs=dict(_REDUCE_ATTRS), infer=_reduce_infer("mean"), check=_reduce_check("mean"),
    # channel-wise only when dims exclude the channels (attr-dependent: the coupling rule decides)
    traits=_traits("pool", zero_preserving="all", value_range="input"),
    doc="x.mean(dims, keepdim) over per-sample dims (torch dims: 1 is channels; never 0, the batch); "
        "one flop per input element",
))
register_op(OpDef(
    "sum", arity=1, attrs=dict(_REDUCE_ATTRS), infer=_reduce_infer("sum"), check=_reduce_check("sum"),
    traits=_traits("pool", zero_preserving="all", value_range=_sum_value_range),
    doc="x.sum(dims, keepdim) over per-sample dims (torch dims: 1 is channels; never 0, the batch); "
        "one flop per input element",
))


# conv1d: torch.nn.Conv1d on (C, L) samples


def _conv1d_infer(a, ins, node):
    _rank("conv1d", ins[0], 2, node)
    c, length = ins[0].shape
    if c % a["groups"]:
        raise _fail(node, f"input channels {c} not divisible by groups={a['groups']}",
                    hint="choose groups dividing the input channel count")
    k, s, p, d = (a[x] for x in ("kernel_size", "stride", "padding", "dilation"))
    out = _out_size(length, k, s, p, d, False)
    if out < 1:
        raise _fail(node, f"conv1d kernel {k} (dilation {d}, padding {p}) does not fit input {ins[0]}",
                    hint="use a smaller kernel, more padding or a longer input")
    return _checked_type((a["out_channels"], out), node)


register_op(OpDef(
    "conv1d", arity=1,
    attrs=_conv_attrs("int"),
    infer=_conv1d_infer, param_shapes=_conv_params, init=_conv_init, check=_conv_check,
    traits=_traits("conv", zero_preserving=_zero_unless_bias),
    doc="1-d convolution (torch.nn.Conv1d) on (C, L) samples; in_channels come from the input shape",
))


# softmax / log_softmax over one dim


def _softmax_infer(op):
    def infer(a, ins, node):
        full, d = ins[0].rank + 1, a["dim"]
        if not 1 <= (d + full if d < 0 else d) < full:
            raise _fail(node, f"{op} dim={d} is out of range for {ins[0].rank}-d samples (dim 0 is the batch)",
                        hint=f"pass dim in [1, {ins[0].rank}] (or negative, from the end)")
        return ins[0]

    return infer


def _softmax_check(op):
    def check(a, node):
        if a["dim"] == 0:
            raise OpSchemaError(f"{op} dim=0 is the batch dim: archir never normalises across samples", node=node,
                                rule="attr", hint="pass dim= 1 (channels) or a later dim; dims count the batch as 0")

    return check


register_op(OpDef(
    "softmax", arity=1, attrs={"dim": AttrSpec("int", min=-16, max=16)}, infer=_softmax_infer("softmax"),
    check=_softmax_check("softmax"),
    traits=_traits("gate", value_range=(0.0, 1.0)),
    doc="torch.softmax(x, dim): exp(x - max) / sum(exp(x - max)) along dim (counting the batch as 0); "
        "5 flops per element",
))
register_op(OpDef(
    "log_softmax", arity=1, attrs={"dim": AttrSpec("int", min=-16, max=16)}, infer=_softmax_infer("log_softmax"),
    check=_softmax_check("log_softmax"),
    traits=_traits("eltwise", value_range=(-INF, 0.0)),
    doc="torch.log_softmax(x, dim): x - max - log(sum(exp(x - max))) along dim; 5 flops per element",
))


# matmul of two activations


def _matmul_infer(a, ins, node):
    x, y = ins
    if x.rank < 2 or y.rank < 2:
        raise _fail(node, f"matmul needs two per-sample matrices (rank >= 2), got {x} and {y}",
                    hint="a vector times a weight matrix is a linear; reshape activations to (.., n, k) and (.., k, m)")
    if x.rank != y.rank:
        raise _fail(node, f"matmul needs equal ranks, got {x} and {y} (a lower-rank operand would broadcast over "
                          f"the batch dim)", hint="reshape one operand so both have the same rank")
    if x.shape[-1] != y.shape[-2]:
        raise _fail(node, f"matmul of {x} and {y}: inner dims {x.shape[-1]} and {y.shape[-2]} differ",
                    hint="transpose one operand so the inner dims match")
    out = []
    for dx, dy in zip(x.shape[:-2], y.shape[:-2]):
        if dx != dy and 1 not in (dx, dy):
            raise _fail(node, f"matmul cannot broadcast the leading dims of {x} and {y}", hint="dims must be equal or 1")
        out.append(max(dx, dy))
    return _checked_type((*out, x.shape[-2], y.shape[-1]), node)


register_op(OpDef(
    "matmul", arity=2, infer=_matmul_infer,
    traits=_traits("linear", zero_preserving="any"),
    doc="torch.matmul of two activations (.., n, k) @ (.., k, m), leading dims broadcast (equal ranks; the "
        "batch dim is never broadcast); n*k*m MACs per matrix",
))


# --------------------------------------------------------------------------- transformer ops
# param and attention (issue 17, torchvision's ViT). Shapes are per sample, as everywhere: a ViT's tokens are
# (L, E) samples, the batch dim stays symbolic.


def _param_infer(a, ins, node):
    return _checked_type(a["shape"], node)


def _param_check(a, node):
    if not a["shape"]:
        raise OpSchemaError("param needs a per-sample shape with at least one dim", node=node, rule="attr",
                            hint="pass shape= the learned tensor's shape without the batch dim, e.g. [197, 768] "
                                 "for ViT-B/16's position embedding")
    n = math.prod(a["shape"])
    if n > MAX_NUMEL:
        raise OpSchemaError(f"param shape {a['shape']} has {n} elements, more than {MAX_NUMEL}", node=node,
                            rule="attr", hint="use a smaller shape")


def _param_init(a, ins, rng):
    # torchvision's ViT draws its position embedding from N(0, 0.02) (and its class token as zeros)
    return {"value": rng.normal(0.0, 0.02, size=tuple(a["shape"])).astype(np.float32)}, {}


register_op(OpDef(
    "param", arity=1, attrs={"shape": AttrSpec("ints", min=1, max=MAX_DIM)},
    infer=_param_infer, check=_param_check,
    param_shapes=lambda a, ins: {"value": tuple(a["shape"])}, init=_param_init,
    # the output does not depend on the input's values at all: nothing is known of zeros or ranges
    traits=_traits("eltwise"),
    doc="a learned tensor, the same for every sample: its weight 'value' of per-sample shape `shape`, repeated "
        "over the batch of its one input (whose values are never read; it only gives the batch size N), so the "
        "output is exactly (N, *shape) and no op downstream broadcasts over the batch (ViT's position embedding "
        "and class token: nn.Parameter(1, *shape)); no arithmetic",
))


def attention_dims(a: dict, t: TensorType, node=None) -> tuple[int, int, int]:
    """``(L, E, head_dim)`` of an ``attention`` node with attrs ``a`` on a ``(L, E)`` input ``t``."""
    if t.rank != 2:
        raise _fail(node, f"attention needs (L, E) token samples (batch first, as nn.MultiheadAttention("
                          f"batch_first=True)), got {t}", hint="reshape the tokens to (L, E), e.g. a ViT's "
                                                               "(197, 768)")
    length, e = t.shape
    if e % a["num_heads"]:
        raise _fail(node, f"attention embed dim {e} is not divisible by num_heads={a['num_heads']}",
                    hint="pick num_heads dividing the embedding dim")
    return length, e, e // a["num_heads"]


def _attention_infer(a, ins, node):
    attention_dims(a, ins[0], node)
    return ins[0]


def _attention_params(a, ins):
    e = ins[0].shape[-1]
    p = {"in_proj_weight": (3 * e, e), "out_proj_weight": (e, e)}
    if a["bias"]:
        p.update({"in_proj_bias": (3 * e,), "out_proj_bias": (e,)})
    return p


def _attention_init(a, ins, rng):
    # torch's nn.MultiheadAttention: xavier_uniform_ in_proj_weight, zero biases, out_proj as nn.Linear
    e = ins[0].shape[-1]
    p = {"in_proj_weight": _uniform(rng, math.sqrt(6.0 / (e + 3 * e)), (3 * e, e)),
         "out_proj_weight": _uniform(rng, 1.0 / math.sqrt(e), (e, e))}
    if a["bias"]:
        p.update({"in_proj_bias": np.zeros(3 * e, np.float32), "out_proj_bias": np.zeros(e, np.float32)})
    return p, {}


register_op(OpDef(
    "attention", arity=1,
    attrs={"num_heads": AttrSpec("int", min=1, max=MAX_DIM), "bias": AttrSpec("bool", True),
           "dropout": AttrSpec("float", 0.0, min=0.0, max=1.0)},
    infer=_attention_infer, param_shapes=_attention_params, init=_attention_init,
    # softmax rows sum to 1, so attention(0) = out_proj(0) (zero without biases)
    traits=_traits("linear", zero_preserving=lambda a: None if a["bias"] else "all"),
    doc="multi-head self-attention on (L, E) tokens, as torch.nn.MultiheadAttention(E, num_heads, bias, "
        "batch_first=True)(x, x, x, need_weights=False)[0]: q, k, v = x @ in_proj_weight.T + in_proj_bias (split "
        "in 3), per head softmax(q k^T / sqrt(E / num_heads)) v, then out_proj; dropout (on the attention "
        "weights) acts in training only; 4 L E^2 + 2 L^2 E MACs",
))


# --------------------------------------------------------------------------- maxvit: rel_attention
# Relative-position multi-head self-attention within windows (issue 17, torchvision's MaxViT). Its samples are
# (G, P, E): G windows (or grid cells) of P = h*w tokens each, attended within each window.


def relative_position_index(h: int, w: int) -> np.ndarray:
    """The ``(h*w, h*w)`` int64 index into a ``((2h-1)(2w-1), heads)`` relative-bias table: entry ``[i, j]`` is
    the table row of the offset from token ``j`` to token ``i`` of an ``h x w`` window (row-major tokens), as
    torchvision's ``maxvit._get_relative_position_index(h, w)`` builds it (and Swin's ``relative_position_index``)."""
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = ys[:, None] - ys[None, :] + (h - 1)
    dx = xs[:, None] - xs[None, :] + (w - 1)
    return (dy * (2 * w - 1) + dx).astype(np.int64)


def rel_attention_dims(a: dict, t: TensorType, node=None) -> tuple[int, int, int, int, int]:
    """``(G, P, E, heads, head_dim)`` of a ``rel_attention`` node with attrs ``a`` on a ``(G, P, E)`` input ``t``."""
    if t.rank != 3:
        raise _fail(node, f"rel_attention needs (G, P, E) samples (G windows of P tokens of E features, as "
                          f"torchvision's MaxViT partitions a map), got {t}",
                    hint="reshape/permute the map into windows first, e.g. (C, H, W) -> (H/p * W/p, p*p, C)")
    g, p, e = t.shape
    h, w = pair(a["window"])
    if p != h * w:
        raise _fail(node, f"rel_attention with window {h}x{w} needs {h * w} tokens per window, got P={p} (input {t})",
                    hint=f"set window so that its h*w equals the token axis ({p})")
    heads = a["num_heads"]
    if e % heads:
        raise _fail(node, f"rel_attention embed dim {e} is not divisible by num_heads={heads}",
                    hint="pick num_heads dividing the embedding dim")
    return g, p, e, heads, e // heads


def rel_attention_scale(a: dict, e: int) -> float:
    """The factor ``k`` is multiplied by: ``scale``, or ``E ** -0.5`` when it is None (torchvision's MaxViT scales
    by the feature dim, not the head dim)."""
    return e ** -0.5 if a["scale"] is None else float(a["scale"])


def _rel_attention_infer(a, ins, node):
    rel_attention_dims(a, ins[0], node)
    return ins[0]


def _rel_attention_params(a, ins):
    e = ins[0].shape[-1]
    h, w = pair(a["window"])
    return {"qkv_weight": (3 * e, e), "qkv_bias": (3 * e,), "merge_weight": (e, e), "merge_bias": (e,),
            "bias_table": ((2 * h - 1) * (2 * w - 1), a["num_heads"])}


def _rel_attention_init(a, ins, rng):
    # torchvision: to_qkv and merge as nn.Linear (bound 1/sqrt(E) for weight and bias), the table
    # trunc_normal_(std=0.02) (truncated at +-2, 100 std: a plain normal in practice)
    e = ins[0].shape[-1]
    shapes = _rel_attention_params(a, ins)
    bound = 1.0 / math.sqrt(e)
    p = {k: _uniform(rng, bound, s) for k, s in shapes.items() if k != "bias_table"}
    p["bias_table"] = np.clip(rng.normal(0.0, 0.02, size=shapes["bias_table"]), -2.0, 2.0).astype(np.float32)
    return p, {}


register_op(OpDef(
    "rel_attention", arity=1,
    attrs={"num_heads": AttrSpec("int", min=1, max=MAX_DIM), "window": AttrSpec("pair", min=1, max=MAX_DIM),
           "scale": AttrSpec("float", None, optional=True)},
    infer=_rel_attention_infer, param_shapes=_rel_attention_params, init=_rel_attention_init,
    # biases on every projection: attention(0) = merge(softmax(bias) @ qkv_bias_v) + merge_bias, not zero
    traits=_traits("linear"),
    doc="multi-head self-attention within each of G windows of P = h*w tokens, with a learned relative-position "
        "bias, as torchvision's MaxViT RelativePositionalMultiHeadAttention on (N, G, P, E): q, k, v = split of "
        "x @ qkv_weight.T + qkv_bias in 3, in heads of E / num_heads; k *= scale (None: E ** -0.5, torchvision's "
        "feat_dim ** -0.5); per head softmax(q k^T + B) v with B[i, j] = bias_table[relative_position_index(h, w)"
        "[i, j], head]; heads merged and projected by merge_weight / merge_bias; 4 G P E^2 + 2 G P^2 E MACs",
))


# --------------------------------------------------------------------------- swin: window_attention
# torchvision's Swin Transformer (issue 17): shifted-window multi-head self-attention on channels-last (H, W, C)
# samples, one op. The windows stay inside the sample (the IR never folds them into the batch dim); the relative
# position index and the shifted-window mask are functions of the attrs and the input size, rebuilt wherever they
# are needed (relative_position_index, shared with maxvit's rel_attention; window_shift_mask), never stored.


class WindowDims(NamedTuple):
    """The geometry of a ``window_attention`` node: input ``(h, w, c)``; window ``(wh, ww)``; the shift in use
    ``(sh, sw)`` (0 on an axis whose padded size the window covers, as torchvision does); the padded size
    ``(hp, wp)`` (bottom / right zero padding to a multiple of the window); ``windows`` = nW, ``tokens`` = T =
    wh * ww per window; ``heads`` and ``head_dim``."""

    h: int
    w: int
    c: int
    wh: int
    ww: int
    sh: int
    sw: int
    hp: int
    wp: int
    windows: int
    tokens: int
    heads: int
    head_dim: int


def window_attention_dims(a: dict, t: TensorType, node=None) -> WindowDims:
    """:class:`WindowDims` of a ``window_attention`` node with attrs ``a`` on a ``(H, W, C)`` input ``t``."""
    if t.rank != 3:
        raise _fail(node, f"window_attention needs channels-last (H, W, C) samples (torchvision's Swin: "
                          f"(N, H, W, C)), got {t}", hint="permute a (C, H, W) map to (H, W, C) first")
    h, w, c = t.shape
    wh, ww = a["window_size"]
    heads = a["num_heads"]
    if c % heads:
        raise _fail(node, f"window_attention channels {c} are not divisible by num_heads={heads}",
                    hint="pick num_heads dividing the channel count")
    hp, wp = -(-h // wh) * wh, -(-w // ww) * ww
    sh, sw = (0 if wh >= hp else a["shift_size"][0]), (0 if ww >= wp else a["shift_size"][1])
    return WindowDims(h, w, c, wh, ww, sh, sw, hp, wp, (hp // wh) * (wp // ww), wh * ww, heads, c // heads)


#: the score torchvision adds between tokens of different regions of a shifted window (not -inf)
WINDOW_MASK_VALUE = -100.0


def window_shift_mask(d: WindowDims) -> np.ndarray | None:
    """The ``(nW, T, T)`` float32 mask added to the scores of a shifted window (``None`` when nothing is shifted),
    as torchvision's ``shifted_window_attention`` builds it: the padded, rolled map is cut into 3 x 3 regions
    (``[0, -w)``, ``[-w, -s)``, ``[-s, end)`` per axis), and a query and a key of different regions get -100."""
    if d.sh == 0 and d.sw == 0:
        return None
    region = np.zeros((d.hp, d.wp), np.float32)
    count = 0
    for h0, h1 in ((0, -d.wh), (-d.wh, -d.sh), (-d.sh, None)):
        for w0, w1 in ((0, -d.ww), (-d.ww, -d.sw), (-d.sw, None)):
            region[h0:h1, w0:w1] = count  # an empty slice (shift 0: -0 = 0) writes nothing, as in torch
            count += 1
    r = region.reshape(d.hp // d.wh, d.wh, d.wp // d.ww, d.ww).transpose(0, 2, 1, 3).reshape(d.windows, d.tokens)
    diff = r[:, None, :] - r[:, :, None]
    return np.where(diff != 0, np.float32(WINDOW_MASK_VALUE), np.float32(0.0)).astype(np.float32)


def _window_check(a, node):
    for k in ("window_size", "shift_size"):
        if len(a[k]) != 2:
            raise OpSchemaError(f"window_attention {k}={a[k]} must have 2 entries (height, width)", node=node,
                                rule="attr", hint=f"pass {k}=[h, w], e.g. [7, 7] as swin_t")
    for s, wsz, axis in zip(a["shift_size"], a["window_size"], ("height", "width")):
        if s >= wsz:
            raise OpSchemaError(f"window_attention shift {s} along the {axis} is not smaller than the window {wsz}",
                                node=node, rule="attr", hint="shift by less than the window (torchvision: window // 2)")


def _window_infer(a, ins, node):
    window_attention_dims(a, ins[0], node)
    return ins[0]


def _window_projections(a, c: int, position: dict) -> dict:
    """The param shapes of a window attention op on ``c`` channels: the qkv and output projections, the
    ``position`` bias's own params, then the optional biases (in this order: ``init`` draws in it)."""
    p = {"qkv_weight": (3 * c, c), "proj_weight": (c, c), **position}
    if a["qkv_bias"]:
        p["qkv_bias"] = (3 * c,)
    if a["proj_bias"]:
        p["proj_bias"] = (c,)
    return p


def _window_params(a, ins):
    wh, ww = a["window_size"]
    return _window_projections(a, ins[0].shape[-1],
                               {"relative_position_bias_table": ((2 * wh - 1) * (2 * ww - 1), a["num_heads"])})


def _window_init(a, ins, rng):
    # the projections as nn.Linear's default; the table as torchvision's trunc_normal_(std=0.02) (its cut at
    # +-2 is 100 sigma away: a normal draw)
    c = ins[0].shape[-1]
    bound = 1.0 / math.sqrt(c)
    shapes = _window_params(a, ins)
    p = {k: _uniform(rng, bound, s) for k, s in shapes.items() if k != "relative_position_bias_table"}
    p["relative_position_bias_table"] = rng.normal(0.0, 0.02, size=shapes["relative_position_bias_table"]).astype(
        np.float32)
    return p, {}


#: the attributes of window_attention (and, with cpb_hidden, of window_attention_v2)
_WINDOW_ATTRS = {"window_size": AttrSpec("ints", min=1, max=MAX_KERNEL),
                 "shift_size": AttrSpec("ints", [0, 0], min=0, max=MAX_KERNEL),
                 "num_heads": AttrSpec("int", min=1, max=MAX_DIM), "qkv_bias": AttrSpec("bool", True),
                 "proj_bias": AttrSpec("bool", True), "attention_dropout": AttrSpec("float", 0.0, min=0.0, max=1.0),
                 "dropout": AttrSpec("float", 0.0, min=0.0, max=1.0)}

register_op(OpDef(
    "window_attention", arity=1,
    attrs=dict(_WINDOW_ATTRS),
    infer=_window_infer, check=_window_check, param_shapes=_window_params, init=_window_init,
    # a zero input gives v = qkv_bias's v part, so out = proj(mean of v) + proj_bias: zero without biases
    traits=_traits("linear", zero_preserving=lambda a: None if a["qkv_bias"] or a["proj_bias"] else "all"),
    doc="shifted-window multi-head self-attention on channels-last (H, W, C) samples, as torchvision's "
        "shifted_window_attention (Swin V1): zero-pad H, W to multiples of window_size, roll by -shift_size (a "
        "shift is 0 on an axis whose padded size the window covers), per window of T = wh*ww tokens: qkv = x @ "
        "qkv_weight.T + qkv_bias, per head softmax(q k^T / sqrt(C / heads) + table[relative index] + shift mask "
        "(-100 across regions)) v, proj; then undo the windows, roll back, crop; dropouts act in training only; "
        "MACs nW (4 T C^2 + 2 T^2 C) over the padded map",
))


# --------------------------------------------------------------------------- swin: window_attention_v2
# Swin V2 (torchvision's ShiftedWindowAttentionV2): the same windows, with cosine attention scaled by a learned
# per-head logit_scale and a continuous position bias from a small MLP (cpb_mlp) on a fixed coordinate table.


def window_coords_table(wh: int, ww: int) -> np.ndarray:
    """The ``(2 wh - 1, 2 ww - 1, 2)`` float32 table cpb_mlp reads, as torchvision's
    ``ShiftedWindowAttentionV2.define_relative_position_bias_table`` builds it: each offset ``(dy, dx)`` scaled to
    [-8, 8] (``8 * d / (w - 1)``), then ``sign(v) * log2(|v| + 1) / 3``."""
    ys = np.arange(-(wh - 1), wh, dtype=np.float32) / np.float32(wh - 1)
    xs = np.arange(-(ww - 1), ww, dtype=np.float32) / np.float32(ww - 1)
    t = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).astype(np.float32) * np.float32(8)
    return (np.sign(t) * np.log2(np.abs(t) + np.float32(1.0)) / np.float32(3.0)).astype(np.float32)


def _window_v2_check(a, node):
    _window_check(a, node)
    if min(a["window_size"]) < 2:
        raise OpSchemaError(f"window_attention_v2 window_size={a['window_size']}: a window of 1 has no coordinate "
                            "table (torchvision divides by window - 1)", node=node, rule="attr",
                            hint="use windows of at least 2 x 2")


def _window_v2_params(a, ins):
    hidden, heads = a["cpb_hidden"], a["num_heads"]
    return _window_projections(a, ins[0].shape[-1], {"logit_scale": (heads, 1, 1), "cpb_fc1_weight": (hidden, 2),
                                                     "cpb_fc1_bias": (hidden,), "cpb_fc2_weight": (heads, hidden)})


def _window_v2_init(a, ins, rng):
    # nn.Linear's default everywhere; logit_scale = log(10) as torchvision
    p = {}
    for k, s in _window_v2_params(a, ins).items():
        if k == "logit_scale":
            p[k] = np.full(s, math.log(10.0), np.float32)
        else:
            fan_in = 2 if k.startswith("cpb_fc1") else a["cpb_hidden"] if k == "cpb_fc2_weight" else ins[0].shape[-1]
            p[k] = _uniform(rng, 1.0 / math.sqrt(fan_in), s)
    return p, {}


register_op(OpDef(
    "window_attention_v2", arity=1,
    attrs={**_WINDOW_ATTRS, "cpb_hidden": AttrSpec("int", 512, min=1, max=MAX_DIM)},
    infer=_window_infer, check=_window_v2_check, param_shapes=_window_v2_params, init=_window_v2_init,
    # as window_attention: a zero input gives out = proj(mean of v's bias) + proj_bias
    traits=_traits("linear", zero_preserving=lambda a: None if a["qkv_bias"] or a["proj_bias"] else "all"),
    doc="Swin V2's shifted-window attention on (H, W, C) samples, as torchvision's shifted_window_attention with "
        "logit_scale: the windows of window_attention; q and k from qkv with the k third of qkv_bias unused (torch"
        "vision zeroes it); per head cosine scores normalize(q) normalize(k)^T * exp(min(logit_scale, log 100)) + "
        "16 sigmoid(cpb_mlp(coords table))[relative index] (+ the shift mask), softmax, v, proj; cpb_mlp = "
        "relu(table @ cpb_fc1_weight.T + cpb_fc1_bias) @ cpb_fc2_weight.T; MACs as window_attention plus "
        "cpb_mlp's (2 wh - 1)(2 ww - 1)(2 hidden + hidden heads)",
))
