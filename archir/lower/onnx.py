"""Lowering to ONNX: ``to_onnx`` emits an ``onnx.ModelProto`` directly from the IR.

No tracing and no ``torch.onnx.export``: each op writes its ONNX nodes (registered with
``@to_onnx.register("op")``), weights become initializers, and every IR node's output
value is named after the node id, so an ONNX value can be traced back to the IR. The batch
axis is dynamic (``"batch"``). Opset 17; the result passes
``onnx.checker.check_model(full_check=True)``.

Protobuf cannot serialize a message of 2 GiB or more, so a model whose weights are that large
needs ONNX *external data*: ``to_onnx(g, external_data="net.onnx.data")`` writes each weight of
``external_min_bytes`` or more into that file as it is lowered (never holding a second copy of
the weights in the ModelProto) and returns a small ModelProto that refers to it by name; save it
beside the data file (``onnx.save(proto, "net.onnx")``). Without ``external_data`` a model over
the limit is refused with :class:`OnnxTooLarge` before it is built.

The model is the inference network: ``to_onnx`` exports ``archir.strip_training(graph)``, so
``drop_path`` vanishes (the identity at inference) and auxiliary outputs are left out with the
heads that only they need: a classifier with an auxiliary head has one ONNX output, its logits.
The other training-only constructs (``choice``, ``stop_gradient``, ``stop_forward``) are
refused, naming the pass that removes them.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from archir.errors import IRError, LoweringError
from archir.graph import Graph, Node, weight_bytes_of
from archir.ops import OpHandlers, get_op, op_names, pair, slice_range
from archir.training import has_training_ops, strip_training
from archir.types import TensorType

__all__ = ["to_onnx", "ONNX_HANDLERS", "OPSET", "IR_VERSION", "adaptive_matrix", "OnnxTooLarge", "PROTOBUF_LIMIT",
           "weight_bytes", "uses_external_data"]

ONNX_HANDLERS = OpHandlers("to_onnx")
OPSET = 17
IR_VERSION = 8  # the IR version of opset 17; ONNX Runtime reads it everywhere
#: the largest protobuf message (bytes) that can be serialized: 2 GiB - 1
PROTOBUF_LIMIT = 2**31 - 1
#: weights of at least this many bytes start at a multiple of ``_ALIGN`` in the external data
#: file, so ONNX Runtime can memory-map them (onnx's own convention: 1 MiB, 64 KiB granularity)
_ALIGN_MIN, _ALIGN = 1 << 20, 1 << 16


class OnnxTooLarge(LoweringError):
    """The ONNX model would be over protobuf's 2 GiB limit and no ``external_data`` was given."""


def weight_bytes(graph: Graph) -> int:
    """The bytes of ``graph``'s parameters and buffers: about the size of its ONNX initializers."""
    return sum(int(a.nbytes) for n in graph.nodes() for a in (*n.params.values(), *n.buffers.values()))


def uses_external_data(model: onnx.ModelProto) -> bool:
    """True when an initializer of ``model`` keeps its data in an external file."""
    return any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)


class _External:
    """Writes weights into an ONNX external data file as they are lowered."""

    def __init__(self, path: Path, min_bytes: int) -> None:
        self.path = path
        self.location = path.name  # relative to the model file, which must sit beside it
        self.min_bytes = min_bytes
        self.file = open(path, "wb")
        self.offset = 0

    def tensor(self, arr: np.ndarray, name: str) -> onnx.TensorProto:
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        if arr.nbytes >= _ALIGN_MIN and self.offset % _ALIGN:
            pad = _ALIGN - self.offset % _ALIGN
            self.file.write(b"\0" * pad)
            self.offset += pad
        self.file.write(arr.data)  # straight from the array: no bytes copy of a large weight
        t = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(arr.dtype), dims=arr.shape)
        for k, v in (("location", self.location), ("offset", self.offset), ("length", arr.nbytes)):
            t.external_data.add(key=k, value=str(v))  # (onnx's set_external_data wants raw_data first)
        t.data_location = TensorProto.EXTERNAL
        self.offset += arr.nbytes
        return t


class _TooLarge(Exception):
    """Raised inside the lowering when the inline initializers pass protobuf's limit."""


def set_attribute(attr: onnx.AttributeProto, key: str, value) -> None:
    """Fill ``attr`` as ``helper.make_attribute(key, value)`` would, in place.

    Building the attribute inside its node (``node.attribute.add()``) saves a message copy per
    attribute; the common values (ints, floats, strings and lists of one of them) are written
    directly, anything else (tensors, numpy scalars, mixed lists) through ``make_attribute``.
    """
    kind = type(value)
    if kind is int or kind is bool:
        attr.name, attr.i, attr.type = key, int(value), onnx.AttributeProto.INT
    elif kind is float:
        attr.name, attr.f, attr.type = key, value, onnx.AttributeProto.FLOAT
    elif kind is str:
        attr.name, attr.s, attr.type = key, value.encode("utf-8"), onnx.AttributeProto.STRING
    elif (kind is list or kind is tuple) and value and all(type(v) is int for v in value):
        attr.name, attr.type = key, onnx.AttributeProto.INTS
        attr.ints.extend(value)
    elif (kind is list or kind is tuple) and value and all(type(v) is float for v in value):
        attr.name, attr.type = key, onnx.AttributeProto.FLOATS
        attr.floats.extend(value)
    else:
        attr.CopyFrom(helper.make_attribute(key, value))


class _Ctx:
    def __init__(self, external: _External | None = None) -> None:
        #: the model being built: nodes are written straight into its graph (no copy at the end)
        self.model = onnx.ModelProto()
        self.nodes = self.model.graph.node
        self.inits: list[tuple[str, np.ndarray] | onnx.TensorProto] = []  # (name, array) inline, or external
        self.names: set[str] = set()
        self.external = external
        self.inline_bytes = 0  # an upper bound of the serialized size of the inline initializers

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def const(self, base: str, value, dtype=np.float32) -> str:
        name = self.fresh(base)
        arr = np.asarray(value, dtype=dtype)
        if self.external is not None and arr.nbytes >= self.external.min_bytes:
            self.inits.append(self.external.tensor(arr, name))
            return name
        # tag + length + data, name, dims and data type: 64 bytes bound the fixed part
        self.inline_bytes += arr.nbytes + len(name.encode()) + 11 * arr.ndim + 64
        if self.inline_bytes > PROTOBUF_LIMIT:
            raise _TooLarge()  # before copying more weights into the ModelProto
        self.inits.append((name, arr))  # a TensorProto only at the end: see _add_initializer
        return name

    def emit(self, op_type: str, inputs: list[str], out: str, **attrs) -> str:
        """Append an ONNX node writing value ``out`` (an IR node id or a fresh aux name)."""
        node = self.nodes.add()  # as helper.make_node(op_type, inputs, [out], name=out, **attrs), built in place
        node.op_type = op_type
        node.input.extend(inputs)
        node.output.append(out)
        node.name = out
        for key in sorted(attrs):
            if attrs[key] is not None:
                set_attribute(node.attribute.add(), key, attrs[key])
        return out


def _aux(ctx: _Ctx, node: Node, what: str) -> str:
    return ctx.fresh(f"{node.id}::{what}")


# --------------------------------------------------------------------------- handlers


@ONNX_HANDLERS.register("conv2d", "conv1d")
def _conv(ctx: _Ctx, node: Node, xs, ins, out):
    a = node.attrs
    dims = (lambda v: list(pair(v))) if node.op == "conv2d" else (lambda v: [int(v)])  # one value per spatial dim
    pads = dims(a["padding"])
    inputs = [xs[0], ctx.const(f"{node.id}.weight", node.params["weight"])]
    if a["bias"]:
        inputs.append(ctx.const(f"{node.id}.bias", node.params["bias"]))
    return ctx.emit("Conv", inputs, out, kernel_shape=dims(a["kernel_size"]), strides=dims(a["stride"]),
                    pads=pads + pads, dilations=dims(a["dilation"]), group=a["groups"])


@ONNX_HANDLERS.register("linear")
def _linear(ctx, node, xs, ins, out):
    a = node.attrs
    w = node.params["weight"]
    if ins[0].rank == 1:
        inputs = [xs[0], ctx.const(f"{node.id}.weight", w)]
        if a["bias"]:
            inputs.append(ctx.const(f"{node.id}.bias", node.params["bias"]))
        return ctx.emit("Gemm", inputs, out, transB=1)
    wt = ctx.const(f"{node.id}.weight_t", np.ascontiguousarray(w.T))
    if not a["bias"]:
        return ctx.emit("MatMul", [xs[0], wt], out)
    mm = ctx.emit("MatMul", [xs[0], wt], _aux(ctx, node, "matmul"))
    return ctx.emit("Add", [mm, ctx.const(f"{node.id}.bias", node.params["bias"])], out)


@ONNX_HANDLERS.register("batchnorm2d")
def _bn(ctx, node, xs, ins, out):
    a = node.attrs
    c = ins[0].shape[0]
    if a["affine"]:
        scale, bias = node.params["weight"], node.params["bias"]
    else:
        scale, bias = np.ones(c, np.float32), np.zeros(c, np.float32)
    inputs = [xs[0], ctx.const(f"{node.id}.weight", scale), ctx.const(f"{node.id}.bias", bias),
              ctx.const(f"{node.id}.running_mean", node.buffers["running_mean"]),
              ctx.const(f"{node.id}.running_var", node.buffers["running_var"])]
    return ctx.emit("BatchNormalization", inputs, out, epsilon=a["eps"], momentum=1.0 - a["momentum"])


def _unary(op_type: str, **attrs):
    def handler(ctx, node, xs, ins, out):
        return ctx.emit(op_type, [xs[0]], out, **attrs)

    return handler


for _op, _onnx in [("relu", "Relu"), ("sigmoid", "Sigmoid"), ("hardswish", "HardSwish"), ("tanh", "Tanh"),
                   ("identity", "Identity"), ("dropout", "Identity"), ("global_avgpool", "GlobalAveragePool")]:
    ONNX_HANDLERS.register(_op)(_unary(_onnx))
ONNX_HANDLERS.register("hardsigmoid")(_unary("HardSigmoid", alpha=1.0 / 6.0, beta=0.5))


ONNX_HANDLERS.register("neg")(_unary("Neg"))


@ONNX_HANDLERS.register("leaky_relu")
def _leaky_relu(ctx, node, xs, ins, out):
    return ctx.emit("LeakyRelu", [xs[0]], out, alpha=node.attrs["negative_slope"])


@ONNX_HANDLERS.register("elu")
def _elu(ctx, node, xs, ins, out):
    return ctx.emit("Elu", [xs[0]], out, alpha=node.attrs["alpha"])


@ONNX_HANDLERS.register("hardtanh")
def _hardtanh(ctx, node, xs, ins, out):
    a = node.attrs
    return ctx.emit("Clip", [xs[0], ctx.const(f"{node.id}::min", a["min_val"]),
                             ctx.const(f"{node.id}::max", a["max_val"])], out)


#: the constants of the GELU decompositions (opset 17 has no Gelu op; from_onnx matches them)
GELU_SQRT2 = math.sqrt(2.0)
GELU_TANH_C, GELU_TANH_K = math.sqrt(2.0 / math.pi), 0.044715


@ONNX_HANDLERS.register("gelu")
def _gelu(ctx, node, xs, ins, out):
    """Opset 17 has no ``Gelu`` (it comes with opset 20): the formulas, in the node order torch's
    exporter writes them, so that ``from_onnx`` reads both back as ``gelu``.

    none: ``Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5)``;
    tanh: ``Mul(Mul(x, Add(Tanh(Mul(c, Add(x, Mul(k, Mul(x, Mul(x, x)))))), 1)), 0.5)``.
    """
    x = xs[0]
    if node.attrs["approximate"] == "none":
        t = ctx.emit("Div", [x, ctx.const(f"{node.id}::sqrt2", GELU_SQRT2)], _aux(ctx, node, "div"))
        t = ctx.emit("Erf", [t], _aux(ctx, node, "erf"))
    else:
        x2 = ctx.emit("Mul", [x, x], _aux(ctx, node, "x2"))
        x3 = ctx.emit("Mul", [x, x2], _aux(ctx, node, "x3"))
        t = ctx.emit("Mul", [ctx.const(f"{node.id}::k", GELU_TANH_K), x3], _aux(ctx, node, "kx3"))
        t = ctx.emit("Add", [x, t], _aux(ctx, node, "inner"))
        t = ctx.emit("Mul", [ctx.const(f"{node.id}::c", GELU_TANH_C), t], _aux(ctx, node, "scaled"))
        t = ctx.emit("Tanh", [t], _aux(ctx, node, "tanh"))
    t = ctx.emit("Add", [t, ctx.const(f"{node.id}::one", 1.0)], _aux(ctx, node, "one_plus"))
    t = ctx.emit("Mul", [x, t], _aux(ctx, node, "mul"))
    return ctx.emit("Mul", [t, ctx.const(f"{node.id}::half", 0.5)], out)


@ONNX_HANDLERS.register("relu6")
def _relu6(ctx, node, xs, ins, out):
    return ctx.emit("Clip", [xs[0], ctx.const(f"{node.id}::min", 0.0), ctx.const(f"{node.id}::max", 6.0)], out)


@ONNX_HANDLERS.register("silu")
def _silu(ctx, node, xs, ins, out):
    s = ctx.emit("Sigmoid", [xs[0]], _aux(ctx, node, "sigmoid"))
    return ctx.emit("Mul", [xs[0], s], out)


@ONNX_HANDLERS.register("zero")
def _zero(ctx, node, xs, ins, out):
    x = xs[0]
    s = node.attrs["stride"]
    if s > 1:
        big = np.iinfo(np.int64).max
        x = ctx.emit("Slice", [x, ctx.const(f"{node.id}::starts", [0, 0], np.int64),
                               ctx.const(f"{node.id}::ends", [big, big], np.int64),
                               ctx.const(f"{node.id}::axes", [2, 3], np.int64),
                               ctx.const(f"{node.id}::steps", [s, s], np.int64)], _aux(ctx, node, "slice"))
    return ctx.emit("Mul", [x, ctx.const(f"{node.id}::zero", 0.0)], out)


def _pool_attrs(a) -> dict:
    k = pair(a["kernel_size"])
    ph, pw = pair(a["padding"])
    return {"kernel_shape": list(k), "strides": list(pair(a["stride"]) if a["stride"] is not None else k),
            "pads": [ph, pw, ph, pw]}


@ONNX_HANDLERS.register("maxpool2d")
def _maxpool(ctx, node, xs, ins, out):
    a = node.attrs
    attrs = _pool_attrs(a)
    k, s, pads = attrs["kernel_shape"], attrs["strides"], attrs["pads"]
    dil = list(pair(a["dilation"]))
    size, osize = ins[0].shape[1:], node.type.shape[1:]
    x = xs[0]
    if a["ceil_mode"]:
        # torch's ceil_mode drops a last window that would start in the right padding; ONNX shape
        # inference does not (the checker then rejects the model). Emit floor mode with the end
        # padding that gives torch's output size instead: padding is -inf for max pooling, so the
        # values are torch's.
        ends = [max(pads[i], (osize[i] - 1) * s[i] + dil[i] * (k[i] - 1) + 1 - size[i] - pads[i]) for i in range(2)]
        if all(e < kk for e, kk in zip(ends, k)):  # ONNX Runtime needs pads < kernel_shape
            attrs["pads"] = pads[:2] + ends
        else:  # (dilated windows) pad the extra end explicitly with -inf
            extra = [e - p for e, p in zip(ends, pads[2:])]
            x = ctx.emit("Pad", [x, ctx.const(f"{node.id}::pads", [0, 0, 0, 0, 0, 0, *extra], np.int64),
                                 ctx.const(f"{node.id}::neg_inf", -np.inf)], _aux(ctx, node, "pad"), mode="constant")
    # A dilated window wider apart than the input can hold padding only: torch gives -inf there,
    # ONNX Runtime the lowest float. Those positions depend on shapes only; mask them to -inf.
    only_pad = [[all(not pads[i] <= o * s[i] + j * dil[i] < pads[i] + size[i] for j in range(k[i]))
                 for o in range(osize[i])] if dil[i] > size[i] and pads[i] > 0 else [False] * osize[i]
                for i in range(2)]
    if not any(only_pad[0]) and not any(only_pad[1]):
        return ctx.emit("MaxPool", [x], out, dilations=dil, ceil_mode=0, **attrs)
    y = ctx.emit("MaxPool", [x], _aux(ctx, node, "maxpool"), dilations=dil, ceil_mode=0, **attrs)
    mask = np.logical_or.outer(np.array(only_pad[0]), np.array(only_pad[1]))
    return ctx.emit("Where", [ctx.const(f"{node.id}::only_padding", mask, np.bool_),
                              ctx.const(f"{node.id}::neg_inf", -np.inf), y], out)


@ONNX_HANDLERS.register("avgpool2d")
def _avgpool(ctx, node, xs, ins, out):
    a = node.attrs
    return ctx.emit("AveragePool", [xs[0]], out, count_include_pad=int(a["count_include_pad"]), **_pool_attrs(a))


def adaptive_matrix(size: int, out: int) -> np.ndarray:
    """The ``(out, size)`` averaging matrix of adaptive pooling along one axis (rows sum to 1)."""
    from archir.ops.core import adaptive_windows

    m = np.zeros((out, size), np.float32)
    for i, (s, e) in enumerate(adaptive_windows(size, out)):
        m[i, s:e] = 1.0 / (e - s)
    return m


@ONNX_HANDLERS.register("adaptive_avgpool2d")
def _adaptive_avgpool(ctx, node, xs, ins, out):
    _, h, w = ins[0].shape
    oh, ow = pair(node.attrs["output_size"])
    if (oh, ow) == (1, 1):
        return ctx.emit("GlobalAveragePool", [xs[0]], out)
    if h % oh == 0 and w % ow == 0:  # equal, disjoint windows: a plain average pool
        k = [h // oh, w // ow]
        return ctx.emit("AveragePool", [xs[0]], out, kernel_shape=k, strides=k)
    # ONNX has no adaptive pooling. Windows of unequal size (or repeated inputs when upsampling)
    # are separable averages: y = Ph @ x @ Pw^T with the per-axis averaging matrices. from_onnx
    # recognises this pair of MatMuls by their constant matrices.
    cols = ctx.emit("MatMul", [xs[0], ctx.const(f"{node.id}::adaptive_w", adaptive_matrix(w, ow).T.copy())],
                    _aux(ctx, node, "adaptive_cols"))
    return ctx.emit("MatMul", [ctx.const(f"{node.id}::adaptive_h", adaptive_matrix(h, oh)), cols], out)


@ONNX_HANDLERS.register("flatten")
def _flatten(ctx, node, xs, ins, out):
    sd = node.attrs["start_dim"]
    if sd == 1:
        return ctx.emit("Flatten", [xs[0]], out, axis=1)
    shape = [0] + list(ins[0].shape[: sd - 1]) + [-1]
    return ctx.emit("Reshape", [xs[0], ctx.const(f"{node.id}::shape", shape, np.int64)], out)


ONNX_HANDLERS.register("input")(lambda ctx, node, xs, ins, out: out)  # a graph input: its value is its name
ONNX_HANDLERS.register("add")(lambda ctx, node, xs, ins, out: ctx.emit("Add", xs, out))
ONNX_HANDLERS.register("mul")(lambda ctx, node, xs, ins, out: ctx.emit("Mul", xs, out))
ONNX_HANDLERS.register("sub")(lambda ctx, node, xs, ins, out: ctx.emit("Sub", xs, out))
ONNX_HANDLERS.register("div")(lambda ctx, node, xs, ins, out: ctx.emit("Div", xs, out))
ONNX_HANDLERS.register("concat")(lambda ctx, node, xs, ins, out: ctx.emit("Concat", xs, out, axis=node.attrs["dim"]))


@ONNX_HANDLERS.register("slice")
def _slice(ctx, node, xs, ins, out):
    ax, start, stop, step = slice_range(node.attrs, ins[0].shape, node.id)
    return ctx.emit("Slice", [xs[0], ctx.const(f"{node.id}::starts", [start], np.int64),
                              ctx.const(f"{node.id}::ends", [stop], np.int64),
                              ctx.const(f"{node.id}::axes", [ax + 1], np.int64),
                              ctx.const(f"{node.id}::steps", [step], np.int64)], out)


#: archir's (torch's) pad mode -> ONNX Pad's
ONNX_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


@ONNX_HANDLERS.register("pad")
def _pad(ctx, node, xs, ins, out):
    a = node.attrs
    left, right, top, bottom = a["pads"]
    # ONNX: the begins of every axis (N, C, H, W), then the ends
    inputs = [xs[0], ctx.const(f"{node.id}::pads", [0, 0, top, left, 0, 0, bottom, right], np.int64)]
    if a["mode"] == "constant":
        inputs.append(ctx.const(f"{node.id}::value", a["value"]))
    return ctx.emit("Pad", inputs, out, mode=ONNX_PAD_MODES[a["mode"]])


# ---- upsample / reductions / conv1d / softmax / matmul (issue 17, part B)

#: ONNX Resize's attributes for archir's (torch's) upsample modes; from_onnx reads these back
RESIZE_NEAREST = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}


def resize_attrs(mode: str, align_corners: bool) -> dict:
    """The ``Resize`` attributes that compute torch's ``interpolate(mode, align_corners)``: nearest is
    ``floor(dst / scale)`` (asymmetric, floor); bilinear is half_pixel, or align_corners."""
    if mode == "nearest":
        return dict(RESIZE_NEAREST)
    return {"mode": "linear", "coordinate_transformation_mode": "align_corners" if align_corners else "half_pixel"}


@ONNX_HANDLERS.register("upsample")
def _upsample(ctx, node, xs, ins, out):
    """``scale_factor``: ``Resize(x, "", scales=[1, 1, s, s])``; ``size``: ``Resize(x, "", "", sizes)``
    with ``sizes = Concat(Shape(x)[0:2], [oh, ow])`` (the batch is dynamic), as torch's exporter
    writes both, so that ONNX Runtime uses torch's coordinate scale (``1 / s``, or ``in / out``)."""
    a = node.attrs
    attrs = resize_attrs(a["mode"], a["align_corners"])
    _, h, w = ins[0].shape
    oh, ow = get_op("upsample").infer(a, ins, node.id).shape[1:]
    if a["scale_factor"] is not None:
        s32 = np.float32(a["scale_factor"])
        if all(math.floor(n * float(s32)) == o and math.floor(np.float32(n) * s32) == o for n, o in ((h, oh), (w, ow))):
            sc = ctx.const(f"{node.id}::scales", [1.0, 1.0, a["scale_factor"], a["scale_factor"]], np.float32)
            return ctx.emit("Resize", [xs[0], "", sc], out, **attrs)
        # the float32 scale rounds below an exact in * s (0.7 * 10): then out / in == s, and sizes are exact
    shape = ctx.emit("Shape", [xs[0]], _aux(ctx, node, "shape"))
    nc = ctx.emit("Slice", [shape, ctx.const(f"{node.id}::zero", [0], np.int64),
                            ctx.const(f"{node.id}::two", [2], np.int64)], _aux(ctx, node, "nc"))
    sizes = ctx.emit("Concat", [nc, ctx.const(f"{node.id}::hw", [oh, ow], np.int64)],
                     _aux(ctx, node, "sizes"), axis=0)
    return ctx.emit("Resize", [xs[0], "", "", sizes], out, **attrs)


def _reduce(op_type: str):
    def handler(ctx, node, xs, ins, out):
        from archir.ops.core import reduce_axes

        axes = [ax + 1 for ax in reduce_axes(node.attrs, ins[0].rank, node.id, node.op)]
        keep = int(node.attrs["keepdim"])
        if op_type == "ReduceSum":  # axes an input since opset 13
            return ctx.emit("ReduceSum", [xs[0], ctx.const(f"{node.id}::axes", axes, np.int64)], out, keepdims=keep)
        return ctx.emit(op_type, [xs[0]], out, axes=axes, keepdims=keep)  # an attribute until opset 18

    return handler


ONNX_HANDLERS.register("mean")(_reduce("ReduceMean"))
ONNX_HANDLERS.register("sum")(_reduce("ReduceSum"))
ONNX_HANDLERS.register("softmax")(lambda ctx, node, xs, ins, out: ctx.emit("Softmax", xs, out,
                                                                           axis=node.attrs["dim"]))
ONNX_HANDLERS.register("log_softmax")(lambda ctx, node, xs, ins, out: ctx.emit("LogSoftmax", xs, out,
                                                                               axis=node.attrs["dim"]))
ONNX_HANDLERS.register("matmul")(lambda ctx, node, xs, ins, out: ctx.emit("MatMul", xs, out))


@ONNX_HANDLERS.register("scale")
def _scale(ctx, node, xs, ins, out):
    w = node.params["weight"].reshape((-1,) + (1,) * (ins[0].rank - 1))
    return ctx.emit("Mul", [xs[0], ctx.const(f"{node.id}.weight", w)], out)


# --------------------------------------------------------------------------- layout ops


@ONNX_HANDLERS.register("permute")
def _permute(ctx, node, xs, ins, out):
    return ctx.emit("Transpose", [xs[0]], out, perm=[0] + [d + 1 for d in node.attrs["dims"]])


@ONNX_HANDLERS.register("reshape")
def _reshape(ctx, node, xs, ins, out):
    # 0 copies the input's dim 0: the batch stays symbolic
    return ctx.emit("Reshape", [xs[0], ctx.const(f"{node.id}::shape", [0] + list(node.attrs["shape"]), np.int64)],
                    out)


@ONNX_HANDLERS.register("channel_shuffle")
def _channel_shuffle(ctx, node, xs, ins, out):
    """ONNX has no channel shuffle: Reshape to (N, g, C/g, H, W), Transpose the two group axes, Reshape back
    (torchvision's view / transpose / view, which from_onnx reads back as ``channel_shuffle``)."""
    g = node.attrs["groups"]
    c, h, w = ins[0].shape
    t = ctx.emit("Reshape", [xs[0], ctx.const(f"{node.id}::grouped", [0, g, c // g, h, w], np.int64)],
                 _aux(ctx, node, "grouped"))
    t = ctx.emit("Transpose", [t], _aux(ctx, node, "transposed"), perm=[0, 2, 1, 3, 4])
    return ctx.emit("Reshape", [t, ctx.const(f"{node.id}::shape", [0, c, h, w], np.int64)], out)


# ---- transformer ops (param, attention)


@ONNX_HANDLERS.register("param")
def _param(ctx, node, xs, ins, out):
    """``Expand(value[None], [N, *shape])`` with ``N = Shape(ref)[0:1]``: the learned tensor repeated over the
    batch, exactly as to_fx's ``value.expand(N, *shape)``."""
    shape = list(node.attrs["shape"])
    value = ctx.const(f"{node.id}.value", node.params["value"].reshape(1, *shape))
    n = ctx.emit("Shape", [xs[0]], _aux(ctx, node, "batch"), start=0, end=1)
    target = ctx.emit("Concat", [n, ctx.const(f"{node.id}::shape", shape, np.int64)], _aux(ctx, node, "target"),
                      axis=0)
    return ctx.emit("Expand", [value, target], out)


@ONNX_HANDLERS.register("attention")
def _attention(ctx, node, xs, ins, out):
    """Multi-head self-attention from primitives (opset 17 has no attention op): per q, k, v a MatMul with its
    rows of ``in_proj_weight`` (transposed) and Add of its bias; Reshape to (N, L, H, d) and Transpose to
    (N, H, L, d) (k to (N, H, d, L)); MatMul, Mul by 1/sqrt(d), Softmax over the keys, MatMul with v;
    Transpose and Reshape back to (N, L, E); the output projection as a linear."""
    from archir.ops import attention_dims

    a, p = node.attrs, node.params
    length, e, d = attention_dims(a, ins[0], node.id)
    h = a["num_heads"]

    def proj(x, w, b, what, dst):
        wt = ctx.const(f"{node.id}.{what}_weight_t", np.ascontiguousarray(w.T))
        if b is None:
            return ctx.emit("MatMul", [x, wt], dst)
        mm = ctx.emit("MatMul", [x, wt], _aux(ctx, node, f"{what}_matmul"))
        return ctx.emit("Add", [mm, ctx.const(f"{node.id}.{what}_bias", b)], dst)

    heads = ctx.const(f"{node.id}::heads_shape", [0, length, h, d], np.int64)  # 0: the batch
    parts = {}
    for i, what in enumerate("qkv"):
        b = p["in_proj_bias"][i * e:(i + 1) * e] if a["bias"] else None
        y = proj(xs[0], p["in_proj_weight"][i * e:(i + 1) * e], b, what, _aux(ctx, node, what))
        y = ctx.emit("Reshape", [y, heads], _aux(ctx, node, f"{what}_heads"))
        parts[what] = ctx.emit("Transpose", [y], _aux(ctx, node, f"{what}_t"),
                               perm=[0, 2, 3, 1] if what == "k" else [0, 2, 1, 3])
    s = ctx.emit("MatMul", [parts["q"], parts["k"]], _aux(ctx, node, "scores"))
    s = ctx.emit("Mul", [s, ctx.const(f"{node.id}::scale", 1.0 / math.sqrt(d))], _aux(ctx, node, "scaled"))
    s = ctx.emit("Softmax", [s], _aux(ctx, node, "weights"), axis=-1)
    y = ctx.emit("MatMul", [s, parts["v"]], _aux(ctx, node, "context"))
    y = ctx.emit("Transpose", [y], _aux(ctx, node, "context_t"), perm=[0, 2, 1, 3])
    y = ctx.emit("Reshape", [y, ctx.const(f"{node.id}::tokens_shape", [0, length, e], np.int64)],
                 _aux(ctx, node, "tokens"))
    return proj(y, p["out_proj_weight"], p["out_proj_bias"] if a["bias"] else None, "out_proj", out)


# ---- maxvit


@ONNX_HANDLERS.register("rel_attention")
def _rel_attention(ctx, node, xs, ins, out):
    """Windowed attention with a relative-position bias from primitives, in torchvision's MaxViT order: MatMul
    by ``qkv_weight.T`` and Add ``qkv_bias``; Reshape to (N, G, P, 3, H, d) and one Gather (axis 3, index 0, 1,
    2) per q, k, v, each Transposed to (N, G, H, P, d) (k to (N, G, H, d, P)) and k Mul-ed by the scale; MatMul;
    Add the bias (H, P, P): a constant Gather of ``bias_table`` by the flat ``relative_position_index``,
    Reshape (P, P, H), Transpose; Softmax over the keys; MatMul with v; Transpose and Reshape to (N, G, P, E);
    the merge projection as a linear. The first node is the qkv MatMul (from_onnx reads the block back from
    there)."""
    from archir.ops import rel_attention_dims, rel_attention_scale, relative_position_index

    a, p = node.attrs, node.params
    g, length, e, h, d = rel_attention_dims(a, ins[0], node.id)
    wh, ww = pair(a["window"])
    t = ctx.emit("MatMul", [xs[0], ctx.const(f"{node.id}.qkv_weight_t", np.ascontiguousarray(p["qkv_weight"].T))],
                 _aux(ctx, node, "qkv_matmul"))
    t = ctx.emit("Add", [t, ctx.const(f"{node.id}.qkv_bias", p["qkv_bias"])], _aux(ctx, node, "qkv"))
    t = ctx.emit("Reshape", [t, ctx.const(f"{node.id}::qkv_shape", [0, g, length, 3, h, d], np.int64)],
                 _aux(ctx, node, "qkv_heads"))
    parts = {}
    for i, what in enumerate("qkv"):
        y = ctx.emit("Gather", [t, ctx.const(f"{node.id}::{what}_index", i, np.int64)], _aux(ctx, node, what), axis=3)
        parts[what] = ctx.emit("Transpose", [y], _aux(ctx, node, f"{what}_t"),
                               perm=[0, 1, 3, 4, 2] if what == "k" else [0, 1, 3, 2, 4])
    k = ctx.emit("Mul", [parts["k"], ctx.const(f"{node.id}::scale", rel_attention_scale(a, e))],
                 _aux(ctx, node, "k_scaled"))
    s = ctx.emit("MatMul", [parts["q"], k], _aux(ctx, node, "scores"))
    b = ctx.emit("Gather", [ctx.const(f"{node.id}.bias_table", p["bias_table"]),
                            ctx.const(f"{node.id}::relative_position_index",
                                      relative_position_index(wh, ww).reshape(-1), np.int64)],
                 _aux(ctx, node, "bias_rows"), axis=0)
    b = ctx.emit("Reshape", [b, ctx.const(f"{node.id}::bias_shape", [length, length, h], np.int64)],
                 _aux(ctx, node, "bias_pph"))
    b = ctx.emit("Transpose", [b], _aux(ctx, node, "bias"), perm=[2, 0, 1])
    s = ctx.emit("Add", [s, b], _aux(ctx, node, "biased"))
    s = ctx.emit("Softmax", [s], _aux(ctx, node, "weights"), axis=-1)
    y = ctx.emit("MatMul", [s, parts["v"]], _aux(ctx, node, "context"))
    y = ctx.emit("Transpose", [y], _aux(ctx, node, "context_t"), perm=[0, 1, 3, 2, 4])
    y = ctx.emit("Reshape", [y, ctx.const(f"{node.id}::tokens_shape", [0, g, length, e], np.int64)],
                 _aux(ctx, node, "tokens"))
    y = ctx.emit("MatMul", [y, ctx.const(f"{node.id}.merge_weight_t", np.ascontiguousarray(p["merge_weight"].T))],
                 _aux(ctx, node, "merge_matmul"))
    return ctx.emit("Add", [y, ctx.const(f"{node.id}.merge_bias", p["merge_bias"])], out)


@ONNX_HANDLERS.register("layernorm")
def _layernorm(ctx, node, xs, ins, out):
    """``LayerNormalization`` (opset 17) over the last axis; axis='channels' between Transposes to channels-last
    and back, as torch exports ConvNeXt's LayerNorm2d."""
    a = node.attrs
    c = ins[0].shape[0] if a["axis"] == "channels" else ins[0].shape[-1]
    w = node.params["weight"] if a["affine"] else np.ones(c, np.float32)
    inputs = [ctx.const(f"{node.id}.weight", w)]
    if a["affine"] and a["bias"]:
        inputs.append(ctx.const(f"{node.id}.bias", node.params["bias"]))
    if a["axis"] == "last":
        return ctx.emit("LayerNormalization", [xs[0], *inputs], out, axis=-1, epsilon=a["eps"])
    t = ctx.emit("Transpose", [xs[0]], _aux(ctx, node, "nhwc"), perm=[0, 2, 3, 1])
    t = ctx.emit("LayerNormalization", [t, *inputs], _aux(ctx, node, "norm"), axis=-1, epsilon=a["eps"])
    return ctx.emit("Transpose", [t], out, perm=[0, 3, 1, 2])


# ---- swin: window_attention


def _window_roll(ctx, node, x: str, axis: int, start: int, what: str) -> str:
    """``torch.roll`` along ``axis`` so that index ``start`` comes first: ``Concat(x[start:], x[:start])``."""
    big = np.iinfo(np.int64).max
    ax = ctx.const(f"{node.id}::{what}_axis", [axis], np.int64)
    head = ctx.emit("Slice", [x, ctx.const(f"{node.id}::{what}_start", [start], np.int64),
                              ctx.const(f"{node.id}::{what}_end", [big], np.int64), ax], _aux(ctx, node, f"{what}_a"))
    tail = ctx.emit("Slice", [x, ctx.const(f"{node.id}::{what}_zero", [0], np.int64),
                              ctx.const(f"{node.id}::{what}_cut", [start], np.int64), ax], _aux(ctx, node, f"{what}_b"))
    return ctx.emit("Concat", [head, tail], _aux(ctx, node, what), axis=axis)


@ONNX_HANDLERS.register("window_attention", "window_attention_v2")
def _window_attention(ctx, node, xs, ins, out):
    """Shifted-window attention from primitives, in this order (``from_onnx`` reads exactly this back as one
    node, starting at its first ONNX node): the position bias first, from constants and weights only --
    ``window_attention``: ``Transpose(Reshape(Gather(table, index), [T, T, heads]), [2, 0, 1])`` with the
    relative position index a constant; ``window_attention_v2``: cpb_mlp on the constant coordinate table
    (``MatMul``, ``Add``, ``Relu``, ``MatMul``), the same ``Gather`` / ``Reshape`` / ``Transpose``, ``Sigmoid``,
    ``Mul`` by 16 --; ``Pad`` (bottom / right zeros, when the size is not a multiple of the window); the roll by
    ``-shift`` as ``Slice`` + ``Concat`` per shifted axis; windows ``Reshape [N, nh, wh, nw, ww, C] -> Transpose
    -> Reshape [N, nW, T, C]`` (the batch stays axis 0, the windows get their own); per q, k, v a ``MatMul`` with
    its rows of ``qkv_weight`` (and ``Add`` of its bias; V2 has none on k, whose bias torchvision zeroes),
    ``Reshape`` to heads, ``Transpose``; the scores -- V1: ``Mul(q, d**-0.5)``, ``MatMul(q, k^T)``; V2: q and k^T
    divided by ``Max(ReduceL2, 1e-12)`` over the head dim (``F.normalize``), ``MatMul``, ``Mul`` by
    ``Exp(Min(logit_scale, log 100))`` --; ``Add`` the bias, ``Add`` the shift mask (a constant), ``Softmax``,
    ``MatMul(., v)``, back to ``(N, nW, T, C)``, the projection, the windows undone, the roll back, a ``Slice``
    cropping the padding."""
    from archir.ops import window_attention_dims, window_coords_table, relative_position_index, window_shift_mask

    a, p = node.attrs, node.params
    v2 = node.op == "window_attention_v2"
    d = window_attention_dims(a, ins[0], node.id)
    c, t, nw_, heads, hd = d.c, d.tokens, d.windows, d.heads, d.head_dim
    nh, nw = d.hp // d.wh, d.wp // d.ww
    i64 = np.int64

    def proj(x, w, b, what):
        y = ctx.emit("MatMul", [x, ctx.const(f"{node.id}.{what}_weight_t", np.ascontiguousarray(w.T))],
                     _aux(ctx, node, f"{what}_matmul"))
        return y if b is None else ctx.emit("Add", [y, ctx.const(f"{node.id}.{what}_bias", b)], _aux(ctx, node, what))

    if v2:
        coords = window_coords_table(d.wh, d.ww).reshape(-1, 2)
        table = proj(ctx.const(f"{node.id}::coords_table", coords), p["cpb_fc1_weight"], p["cpb_fc1_bias"], "cpb_fc1")
        table = ctx.emit("Relu", [table], _aux(ctx, node, "cpb_relu"))
        table = proj(table, p["cpb_fc2_weight"], None, "cpb_fc2")
    else:
        table = ctx.const(f"{node.id}.relative_position_bias_table", p["relative_position_bias_table"])
    bias = ctx.emit("Gather", [table, ctx.const(f"{node.id}::relative_position_index",
                                                relative_position_index(d.wh, d.ww).reshape(-1), i64)],
                    _aux(ctx, node, "bias_rows"), axis=0)
    bias = ctx.emit("Reshape", [bias, ctx.const(f"{node.id}::bias_shape", [t, t, heads], i64)],
                    _aux(ctx, node, "bias_grid"))
    bias = ctx.emit("Transpose", [bias], _aux(ctx, node, "bias_t" if v2 else "bias"), perm=[2, 0, 1])
    if v2:
        bias = ctx.emit("Sigmoid", [bias], _aux(ctx, node, "bias_sigmoid"))
        bias = ctx.emit("Mul", [bias, ctx.const(f"{node.id}::bias_gain", 16.0)], _aux(ctx, node, "bias"))
    x = xs[0]
    if (d.hp, d.wp) != (d.h, d.w):
        x = ctx.emit("Pad", [x, ctx.const(f"{node.id}::pads", [0, 0, 0, 0, 0, d.hp - d.h, d.wp - d.w, 0], i64)],
                     _aux(ctx, node, "padded"), mode="constant")
    if d.sh:
        x = _window_roll(ctx, node, x, 1, d.sh, "shift_h")
    if d.sw:
        x = _window_roll(ctx, node, x, 2, d.sw, "shift_w")
    x = ctx.emit("Reshape", [x, ctx.const(f"{node.id}::grid_shape", [0, nh, d.wh, nw, d.ww, c], i64)],
                 _aux(ctx, node, "grid"))
    x = ctx.emit("Transpose", [x], _aux(ctx, node, "grid_t"), perm=[0, 1, 3, 2, 4, 5])
    x = ctx.emit("Reshape", [x, ctx.const(f"{node.id}::windows_shape", [0, nw_, t, c], i64)],
                 _aux(ctx, node, "windows"))
    heads_shape = ctx.const(f"{node.id}::heads_shape", [0, nw_, t, heads, hd], i64)
    parts = {}
    for i, what in enumerate("qkv"):
        b = p["qkv_bias"][i * c:(i + 1) * c] if a["qkv_bias"] and not (v2 and what == "k") else None
        y = proj(x, p["qkv_weight"][i * c:(i + 1) * c], b, what)
        y = ctx.emit("Reshape", [y, heads_shape], _aux(ctx, node, f"{what}_heads"))
        parts[what] = ctx.emit("Transpose", [y], _aux(ctx, node, f"{what}_t"),
                               perm=[0, 1, 3, 4, 2] if what == "k" else [0, 1, 3, 2, 4])
    if v2:
        eps = ctx.const(f"{node.id}::eps", 1e-12)
        for what, axis in (("q", 4), ("k", 3)):  # k is transposed: its head dim is axis 3
            norm = ctx.emit("ReduceL2", [parts[what]], _aux(ctx, node, f"{what}_norm"), axes=[axis], keepdims=1)
            norm = ctx.emit("Max", [norm, eps], _aux(ctx, node, f"{what}_denom"))
            parts[what] = ctx.emit("Div", [parts[what], norm], _aux(ctx, node, f"{what}_unit"))
        s = ctx.emit("MatMul", [parts["q"], parts["k"]], _aux(ctx, node, "cosines"))
        gain = ctx.emit("Min", [ctx.const(f"{node.id}.logit_scale", p["logit_scale"]),
                                ctx.const(f"{node.id}::logit_max", math.log(100.0))], _aux(ctx, node, "logit_min"))
        gain = ctx.emit("Exp", [gain], _aux(ctx, node, "logit_gain"))
        s = ctx.emit("Mul", [s, gain], _aux(ctx, node, "scores"))
    else:
        q = ctx.emit("Mul", [parts["q"], ctx.const(f"{node.id}::scale", hd ** -0.5)], _aux(ctx, node, "q_scaled"))
        s = ctx.emit("MatMul", [q, parts["k"]], _aux(ctx, node, "scores"))
    s = ctx.emit("Add", [s, bias], _aux(ctx, node, "scores_biased"))
    mask = window_shift_mask(d)
    if mask is not None:
        s = ctx.emit("Add", [s, ctx.const(f"{node.id}::shift_mask", mask[:, None])], _aux(ctx, node, "scores_masked"))
    s = ctx.emit("Softmax", [s], _aux(ctx, node, "weights"), axis=-1)
    y = ctx.emit("MatMul", [s, parts["v"]], _aux(ctx, node, "context"))
    y = ctx.emit("Transpose", [y], _aux(ctx, node, "context_t"), perm=[0, 1, 3, 2, 4])
    y = ctx.emit("Reshape", [y, ctx.const(f"{node.id}::tokens_shape", [0, nw_, t, c], i64)], _aux(ctx, node, "tokens"))
    y = proj(y, p["proj_weight"], p["proj_bias"] if a["proj_bias"] else None, "proj")
    y = ctx.emit("Reshape", [y, ctx.const(f"{node.id}::out_grid_shape", [0, nh, nw, d.wh, d.ww, c], i64)],
                 _aux(ctx, node, "out_grid"))
    y = ctx.emit("Transpose", [y], _aux(ctx, node, "out_grid_t"), perm=[0, 1, 3, 2, 4, 5])
    y = ctx.emit("Reshape", [y, ctx.const(f"{node.id}::map_shape", [0, d.hp, d.wp, c], i64)], _aux(ctx, node, "map"))
    if d.sh:
        y = _window_roll(ctx, node, y, 1, d.hp - d.sh, "unshift_h")
    if d.sw:
        y = _window_roll(ctx, node, y, 2, d.wp - d.sw, "unshift_w")
    if (d.hp, d.wp) != (d.h, d.w):
        y = ctx.emit("Slice", [y, ctx.const(f"{node.id}::crop_start", [0, 0], i64),
                               ctx.const(f"{node.id}::crop_end", [d.h, d.w], i64),
                               ctx.const(f"{node.id}::crop_axes", [1, 2], i64)], _aux(ctx, node, "cropped"))
    last = ctx.nodes[-1]  # the last step writes the node's own value
    last.output[0] = last.name = out
    return out


def _refuse(ctx, node, xs, ins, out):
    opdef = get_op(node.op)
    raise LoweringError(f"op {node.op!r} is training-only and has no ONNX form", node=node.id, rule="to_onnx",
                        hint=f"run {opdef.removed_by} first")


for _op in op_names():  # the training-only ops (choice, stop_*) have no ONNX form
    if get_op(_op).training_only:
        ONNX_HANDLERS.register(_op)(_refuse)


# --------------------------------------------------------------------------- entry point


def _value_info(into, name: str, t: TensorType) -> None:
    """Append ``helper.make_tensor_value_info(name, FLOAT, ["batch", *t.shape])`` to ``into``, built in place."""
    vi = into.add()
    vi.name = name
    tt = vi.type.tensor_type
    tt.elem_type = TensorProto.FLOAT
    dims = tt.shape.dim
    dims.add().dim_param = "batch"
    for d in t.shape:
        dims.add().dim_value = d


def to_onnx(graph: Graph, *, check: bool = True, external_data: str | os.PathLike | None = None,
            external_min_bytes: int = 1024) -> onnx.ModelProto:
    """Emit ``graph`` as an ONNX model (opset 17, dynamic batch axis ``"batch"``).

    The graph is stripped first (:func:`archir.strip_training`): ``drop_path`` nodes vanish (the
    identity at inference) and auxiliary outputs are left out with their heads, so the model
    has the main output(s) only (one for a classifier with an auxiliary head).

    Args:
        graph: a valid plain graph (no ``choice``/``stop_*`` nodes) with initialised weights;
            ``drop_path`` and ``auxiliary`` nodes are allowed (stripped).
        check: run ``onnx.checker.check_model(full_check=True)`` on the result (on by default).
            The checker sees the model's structure with each large weight as a typed input, not
            its bytes (see ``_check_skeleton``), so checking costs what the structure costs, and
            a graph lowered again unchanged is not checked twice.
        external_data: write the weights as ONNX external data into this file (created or
            overwritten; removed again if the lowering fails). The returned model refers to it
            by its file name, so save the model in the same folder (``onnx.save(proto,
            "net.onnx")`` beside ``net.onnx.data``). Needed for models of 2 GiB or more.
        external_min_bytes: with ``external_data``, weights smaller than this stay inline.

    Returns:
        The ``onnx.ModelProto``. Graph inputs and outputs are named after the IR node ids
        (the main outputs of ``graph``, in order).

    Raises:
        IRError: the graph is invalid.
        OnnxTooLarge: (a ``LoweringError``) the initializers reach protobuf's 2 GiB limit and
            ``external_data`` was not given; raised before the model is built.
        LoweringError: the graph still has training-only nodes (all of them are listed, with the
            pass that removes them), or the checker rejects the result.

    Example:
        >>> proto = archir.lower.to_onnx(g)      # doctest: +SKIP
        >>> onnx.save(proto, "net.onnx")         # doctest: +SKIP
        >>> big = archir.lower.to_onnx(g, external_data="big.onnx.data")   # doctest: +SKIP
        >>> onnx.save(big, "big.onnx")           # beside big.onnx.data     # doctest: +SKIP
    """
    order = graph.validated_order()  # (checked once for an unchanged graph)
    if has_training_ops(graph):  # the inference network: no drop_path, no auxiliary outputs
        graph = strip_training(graph)  # (a copy, validated again: only where there is something to strip)
        order = graph.validated_order()
    training = [n for n in graph.nodes() if get_op(n.op).training_only]
    if training:
        listing = ", ".join(f"{n.id} ({n.op})" for n in training)
        passes = sorted({get_op(n.op).removed_by for n in training})
        raise LoweringError(f"graph still has training-only node(s): {listing}", node=training[0].id,
                            rule="to_onnx", hint=f"remove them with {' and '.join(passes)} before exporting")
    if external_data is None:
        if weight_bytes(graph) > PROTOBUF_LIMIT:  # cheap: refuse before copying any weight
            raise _too_large(graph)
        try:
            return _to_onnx(graph, _Ctx(), check, order)
        except _TooLarge:
            raise _too_large(graph) from None
    if isinstance(external_min_bytes, bool) or not isinstance(external_min_bytes, int) or external_min_bytes < 0:
        raise LoweringError(f"external_min_bytes must be an int >= 0, got {external_min_bytes!r}", rule="to_onnx",
                            hint="pass a byte count, e.g. 1024 (0: every weight goes to the external data)")
    path = Path(external_data)
    if path.is_dir() or not path.parent.is_dir():
        raise LoweringError("external_data must be a file in an existing folder" if path.is_dir() else
                            f"the folder of the external data file, {path.parent}, does not exist", file=path,
                            rule="to_onnx", hint="give a file name such as net.onnx.data in an existing folder")
    try:
        ext = _External(path, external_min_bytes)
    except OSError as e:
        raise LoweringError(f"cannot write the external data file: {e.strerror or e}", file=path, rule="to_onnx",
                            hint="give a writable path for the external data file") from None
    try:
        try:
            model = _to_onnx(graph, _Ctx(ext), check, order)
        finally:
            ext.file.close()
    except _TooLarge:  # only the small, inline weights are left: so many that they pass 2 GiB
        path.unlink(missing_ok=True)
        raise _too_large(graph, external_min_bytes) from None
    except BaseException:
        try:
            path.unlink()
        except OSError:
            pass
        raise
    return model


def _too_large(graph: Graph, external_min_bytes: int | None = None) -> OnnxTooLarge:
    b = weight_bytes(graph)
    size = f"its weights are {b / 2**30:.2f} GiB" if b >= 2**28 else f"its weights are {b / 2**20:.2f} MiB"
    if external_min_bytes is not None:
        return OnnxTooLarge(f"the ONNX model of graph {graph.name!r} is over protobuf's 2 GiB limit even with its "
                            f"weights of {external_min_bytes} bytes or more in external data ({size})",
                            rule="to_onnx", hint="pass a smaller external_min_bytes so more weights go external")
    return OnnxTooLarge(f"the ONNX model of graph {graph.name!r} would be over protobuf's 2 GiB limit ({size}), so it "
                        "cannot be serialized as one file", rule="to_onnx",
                        hint="write the weights as ONNX external data: to_onnx(g, external_data='net.onnx.data'), "
                             "or archir export --external-data")


def _check(run, graph: Graph) -> None:
    try:
        run()
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise LoweringError(f"the ONNX model for graph {graph.name!r} fails the ONNX checker: {e}",
                            rule="to_onnx", hint="this is an archir bug; please report it with the graph") from e


def _to_onnx(graph: Graph, ctx: _Ctx, check: bool, order: list[str]) -> onnx.ModelProto:
    model = ctx.model
    g = model.graph
    env: dict[str, str] = {}
    for n in graph.nodes():
        ctx.names.add(n.id)
    for n in order:
        node = graph.node(n)
        if node.op == "input":
            env[n] = ONNX_HANDLERS.get("input", n)(ctx, node, [], [], n)
            continue
        handler = ONNX_HANDLERS.get(node.op, n)
        try:
            env[n] = handler(ctx, node, [env[s] for s in graph.inputs_of(n)], graph.input_types(n), n)
        except (IRError, _TooLarge):
            raise
        except Exception as e:  # a handler bug must still name the node
            raise LoweringError(f"lowering {node.op} to ONNX failed: {type(e).__name__}: {e}", node=n,
                                rule="to_onnx") from e
        if n not in graph.outputs:
            _value_info(g.value_info, n, node.type)
    seen = set()
    for o in graph.outputs:
        name = env[o]
        if name in seen or o in graph.inputs:
            # an ONNX value can be one graph output only, and a graph input is not a node output
            name = ctx.emit("Identity", [env[o]], ctx.fresh(f"{o}::output"))
        seen.add(name)
        _value_info(g.output, name, graph.node(o).type)
    for i in graph.inputs:
        _value_info(g.input, i, graph.node(i).type)
    if ctx.inline_bytes > PROTOBUF_LIMIT - (1 << 26):  # near the limit: count the structure too
        if ctx.inline_bytes + g.ByteSize() + 4096 > PROTOBUF_LIMIT:
            raise _TooLarge()
    model.ir_version = IR_VERSION
    model.producer_name = "archir"
    model.doc_string = f"archir graph {graph.name!r}"
    model.opset_import.add(domain="", version=OPSET)
    g.name = graph.name
    if check:
        _check_skeleton(model, ctx.inits, graph)
    for item in ctx.inits:
        _add_initializer(g, item)
    return model


#: initializers up to this size stay in the skeleton the checker sees, values and all (shape
#: tensors, pads, axes: shape inference reads them); larger ones are described by name and type only
_SKELETON_INLINE = 1024
#: digests of skeletons that passed the checker (the most recent ones): an unchanged graph is checked once
_CHECKED: "OrderedDict[bytes, None]" = OrderedDict()
_CHECKED_MAX = 256


def _add_initializer(g: onnx.GraphProto, item: "tuple[str, np.ndarray] | onnx.TensorProto") -> None:
    """Append an initializer to ``g``, built in place: its data is copied once, into the message."""
    if isinstance(item, onnx.TensorProto):
        g.initializer.append(item)  # external data: a small reference into the data file
        return
    name, arr = item
    t = g.initializer.add()  # (appending a built TensorProto would copy its data a second time)
    t.name = name
    t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
    t.dims.extend(arr.shape)
    t.raw_data = weight_bytes_of(arr)  # a frozen weight's own bytes: the only copy is protobuf's


def _check_skeleton(model: onnx.ModelProto, inits: list, graph: Graph) -> None:
    """``onnx.checker.check_model(full_check=True)`` on ``model`` with its large weights as typed inputs.

    The checker serializes the model it is given and shape inference needs only the weights'
    types, so it sees the nodes, the values and the small initializers as they are, and every
    large weight as a graph input of its element type and shape: the same node checks and shape
    inference at the cost of the structure, not of the weight bytes. What the checker would
    check of a large initializer itself (its data length fits its shape and type) holds by
    construction (:func:`_add_initializer` writes ``raw_data`` from the array of that shape). The
    inputs are removed again before the weights go in. A skeleton that passed before (the same
    graph lowered again) is not checked again.
    """
    g = model.graph
    n_inputs, n_inits = len(g.input), len(g.initializer)
    for item in inits:
        if isinstance(item, onnx.TensorProto):
            g.input.append(helper.make_tensor_value_info(item.name, item.data_type, list(item.dims)))
        elif item[1].nbytes <= _SKELETON_INLINE:
            _add_initializer(g, item)
        else:
            name, arr = item
            g.input.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape))
    try:
        data = model.SerializeToString(deterministic=True)
        key = hashlib.sha256(data).digest()
        if key in _CHECKED:
            _CHECKED.move_to_end(key)
        else:  # the checker takes the bytes just made (given the message, it would serialize it again)
            _check(lambda: onnx.checker.check_model(data, full_check=True), graph)
            _CHECKED[key] = None
            if len(_CHECKED) > _CHECKED_MAX:
                _CHECKED.popitem(last=False)
    finally:
        del g.input[n_inputs:]
        del g.initializer[n_inits:]


# DESIGN.md: backends register per-op handlers as @to_onnx.register("op")
to_onnx.register = ONNX_HANDLERS.register  # type: ignore[attr-defined]
