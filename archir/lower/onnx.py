"""Lowering to ONNX: ``to_onnx`` emits an ``onnx.ModelProto`` directly from the IR.

No tracing and no ``torch.onnx.export``: each op writes its ONNX nodes (registered with
``@to_onnx.register("op")``), weights become initializers, and every IR node's output
value is named after the node id, so an ONNX value can be traced back to the IR. The batch
axis is dynamic (``"batch"``). Opset 17; the result passes
``onnx.checker.check_model(full_check=True)``.

Training-only constructs (``choice``, ``stop_gradient``, ``stop_forward``) are refused,
naming the pass that removes them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from archir.errors import IRError, LoweringError
from archir.graph import Graph, Node
from archir.ops import OpHandlers, get_op, pair
from archir.types import TensorType

__all__ = ["to_onnx", "ONNX_HANDLERS", "OPSET", "IR_VERSION", "adaptive_matrix"]

ONNX_HANDLERS = OpHandlers("to_onnx")
OPSET = 17
IR_VERSION = 8  # the IR version of opset 17; ONNX Runtime reads it everywhere


class _Ctx:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.names: set[str] = set()

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def const(self, base: str, value, dtype=np.float32) -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def emit(self, op_type: str, inputs: list[str], out: str, **attrs) -> str:
        """Append an ONNX node writing value ``out`` (an IR node id or a fresh aux name)."""
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _aux(ctx: _Ctx, node: Node, what: str) -> str:
    return ctx.fresh(f"{node.id}::{what}")


# --------------------------------------------------------------------------- handlers


@ONNX_HANDLERS.register("conv2d")
def _conv(ctx: _Ctx, node: Node, xs, ins, out):
    a = node.attrs
    (ph, pw) = pair(a["padding"])
    inputs = [xs[0], ctx.const(f"{node.id}.weight", node.params["weight"])]
    if a["bias"]:
        inputs.append(ctx.const(f"{node.id}.bias", node.params["bias"]))
    return ctx.emit("Conv", inputs, out, kernel_shape=list(pair(a["kernel_size"])), strides=list(pair(a["stride"])),
                    pads=[ph, pw, ph, pw], dilations=list(pair(a["dilation"])), group=a["groups"])


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
ONNX_HANDLERS.register("concat")(lambda ctx, node, xs, ins, out: ctx.emit("Concat", xs, out, axis=node.attrs["dim"]))


@ONNX_HANDLERS.register("scale")
def _scale(ctx, node, xs, ins, out):
    w = node.params["weight"].reshape((-1,) + (1,) * (ins[0].rank - 1))
    return ctx.emit("Mul", [xs[0], ctx.const(f"{node.id}.weight", w)], out)


def _refuse(ctx, node, xs, ins, out):
    opdef = get_op(node.op)
    raise LoweringError(f"op {node.op!r} is training-only and has no ONNX form", node=node.id, rule="to_onnx",
                        hint=f"run {opdef.removed_by} first")


for _op in ("choice", "stop_gradient", "stop_forward"):
    ONNX_HANDLERS.register(_op)(_refuse)


# --------------------------------------------------------------------------- entry point


def _value_info(name: str, t: TensorType) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *t.shape])


def to_onnx(graph: Graph, *, check: bool = True) -> onnx.ModelProto:
    """Emit ``graph`` as an ONNX model (opset 17, dynamic batch axis ``"batch"``).

    Args:
        graph: a valid plain graph (no ``choice``/``stop_*`` nodes) with initialised weights.
        check: run ``onnx.checker.check_model(full_check=True)`` on the result (on by default).

    Returns:
        The ``onnx.ModelProto``. Graph inputs and outputs are named after the IR node ids.

    Raises:
        IRError: the graph is invalid.
        LoweringError: the graph still has training-only nodes (all of them are listed, with the
            pass that removes them), or the checker rejects the result.

    Example:
        >>> proto = archir.lower.to_onnx(g)      # doctest: +SKIP
        >>> onnx.save(proto, "net.onnx")         # doctest: +SKIP
    """
    graph.validate()
    training = [n for n in graph.nodes() if get_op(n.op).training_only]
    if training:
        listing = ", ".join(f"{n.id} ({n.op})" for n in training)
        passes = sorted({get_op(n.op).removed_by for n in training})
        raise LoweringError(f"graph still has training-only node(s): {listing}", node=training[0].id,
                            rule="to_onnx", hint=f"remove them with {' and '.join(passes)} before exporting")
    ctx = _Ctx()
    env: dict[str, str] = {}
    for n in graph.nodes():
        ctx.names.add(n.id)
    value_info = []
    for n in graph.topo_order():
        node = graph.node(n)
        if node.op == "input":
            env[n] = ONNX_HANDLERS.get("input", n)(ctx, node, [], [], n)
            continue
        handler = ONNX_HANDLERS.get(node.op, n)
        try:
            env[n] = handler(ctx, node, [env[s] for s in graph.inputs_of(n)], graph.input_types(n), n)
        except IRError:
            raise
        except Exception as e:  # a handler bug must still name the node
            raise LoweringError(f"lowering {node.op} to ONNX failed: {type(e).__name__}: {e}", node=n,
                                rule="to_onnx") from e
        if n not in graph.outputs:
            value_info.append(_value_info(n, node.type))
    outputs, seen = [], set()
    for o in graph.outputs:
        name = env[o]
        if name in seen or o in graph.inputs:
            # an ONNX value can be one graph output only, and a graph input is not a node output
            name = ctx.emit("Identity", [env[o]], ctx.fresh(f"{o}::output"))
        seen.add(name)
        outputs.append(_value_info(name, graph.node(o).type))
    inputs = [_value_info(i, graph.node(i).type) for i in graph.inputs]
    g = helper.make_graph(ctx.nodes, graph.name, inputs, outputs, initializer=ctx.inits, value_info=value_info)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="archir",
                              ir_version=IR_VERSION)
    model.doc_string = f"archir graph {graph.name!r}"
    if check:
        try:
            onnx.checker.check_model(model, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise LoweringError(f"the ONNX model for graph {graph.name!r} fails the ONNX checker: {e}",
                                rule="to_onnx", hint="this is an archir bug; please report it with the graph") from e
    return model


# DESIGN.md: backends register per-op handlers as @to_onnx.register("op")
to_onnx.register = ONNX_HANDLERS.register  # type: ignore[attr-defined]
