"""``from_torch``: an ``nn.Module`` as an archir graph.

How it works:

1. The module is put in eval mode (restored afterwards) and traced with ``torch.fx``
   symbolic tracing. Where that fails (Python control flow on tensor values or shapes, ...),
   ``torch.export`` captures it instead, specialised to the example inputs' shapes; then the
   graph is made of ATen ops and is mapped by the same rules.
2. The traced module runs once on the example inputs; every value's shape is recorded
   (shape arguments like ``x.view(x.size(0), -1)`` are then read from the recorded result).
3. Every node is mapped onto IR ops. Modules become nodes named after their module path
   (``layer1.0.conv1``); function and method calls are named after the module they are called
   in (``layer1.0.add``). Weights and BatchNorm running statistics are copied.
4. Unsupported constructs are collected, not skipped: at the end one
   :class:`~archir.frontend.UnsupportedModelError` lists every one of them with its target,
   module path, source line and reason.
5. The imported graph is checked: ``to_fx(graph)`` must reproduce the module's outputs on the
   example inputs (eval mode).

The graph describes the network in eval mode. Train-mode-only behaviour that the IR cannot
express is listed in ``graph.meta["frontend"]["notes"]`` (torchvision's stochastic depth is
the identity in eval mode and imported as such).
"""

from __future__ import annotations

import math
import operator
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from archir.errors import IRError
from archir.frontend.common import (FrontendError, IdMaker, Skip, Unsupported, UnsupportedModelError, add_mapped,
                                    clean_id, fuse_layernorm2d)
from archir.graph import Graph
from archir.lower.modules import LayerNorm2d, LearnedTensor, RelPosAttention, Scale, SelfAttention, stop_forward, zero
from archir.lower.modules import WindowAttention, WindowAttentionV2  # swin
from archir.ops import get_op

__all__ = ["from_torch"]

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


@dataclass(frozen=True)
class _Act:
    """An activation argument: the IR node holding the value, and its full shape (batch first)."""

    id: str
    shape: tuple[int, ...]


class _Bad:
    """The value of a node that could not be mapped (its users are not reported again)."""


_BAD = _Bad()


# --------------------------------------------------------------------------- argument binding

# canonical op -> (parameter names in order, defaults). aten ops bind through their schema.
_SIGS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "conv2d": (["input", "weight", "bias", "stride", "padding", "dilation", "groups"],
               {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}),
    "linear": (["input", "weight", "bias"], {"bias": None}),
    "batch_norm": (["input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"],
                   {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5}),
    "unary": (["input", "inplace"], {"inplace": False}),
    "hardtanh": (["input", "min_val", "max_val", "inplace"], {"min_val": -1.0, "max_val": 1.0, "inplace": False}),
    "relu6": (["input", "inplace"], {"inplace": False}),
    "max_pool2d": (["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"],
                   {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False}),
    "avg_pool2d": (["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                    "divisor_override"],
                   {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
                    "divisor_override": None}),
    "adaptive_avg_pool2d": (["input", "output_size"], {}),
    "mean": (["input", "dim", "keepdim", "dtype"], {"dim": None, "keepdim": False, "dtype": None}),
    "flatten": (["input", "start_dim", "end_dim"], {"start_dim": 0, "end_dim": -1}),
    "tensor_flatten": (["input", "start_dim", "end_dim"], {"start_dim": 0, "end_dim": -1}),
    "reshape": (["input", "shape"], {}),
    "view": (["input", "*shape"], {}),
    "binary": (["input", "other", "alpha"], {"alpha": 1}),
    "cat": (["tensors", "dim"], {"dim": 0}),
    "dropout": (["input", "p", "training", "inplace"], {"p": 0.5, "training": True, "inplace": False}),
    "stochastic_depth": (["input", "p", "mode", "training"], {"training": True}),
    "identity": (["input"], {}),
    "getitem": (["input", "index"], {}),
    "expand": (["input", "*sizes"], {}),
    "narrow": (["input", "dim", "start", "length"], {}),
    "leaky_relu": (["input", "negative_slope", "inplace"], {"negative_slope": 0.01, "inplace": False}),
    "gelu": (["input", "approximate"], {"approximate": "none"}),
    "elu": (["input", "alpha", "inplace"], {"alpha": 1.0, "inplace": False}),
    "div": (["input", "other", "rounding_mode"], {"rounding_mode": None}),
    "pad": (["input", "pad", "mode", "value"], {"mode": "constant", "value": None}),
    "split": (["input", "split_size_or_sections", "dim"], {"dim": 0}),
    "split_method": (["input", "split_size", "dim"], {"dim": 0}),
    "chunk": (["input", "chunks", "dim"], {"dim": 0}),
    "interpolate": (["input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor",
                     "antialias"], {"size": None, "scale_factor": None, "mode": "nearest", "align_corners": None,
                                    "recompute_scale_factor": None, "antialias": False}),
    "sum": (["input", "dim", "keepdim", "dtype"], {"dim": None, "keepdim": False, "dtype": None}),
    "softmax": (["input", "dim", "_stacklevel", "dtype"], {"dim": None, "_stacklevel": 3, "dtype": None}),
    "softmax_method": (["input", "dim", "dtype"], {"dtype": None}),
    "matmul": (["input", "other"], {}),
    "conv1d": (["input", "weight", "bias", "stride", "padding", "dilation", "groups"],
               {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}),
    "permute": (["input", "dims"], {}),
    "permute_method": (["input", "*dims"], {}),
    "transpose": (["input", "dim0", "dim1"], {}),
    "unflatten": (["input", "dim", "sizes"], {}),
    "squeeze": (["input", "dim"], {"dim": None}),
    "unsqueeze": (["input", "dim"], {}),
    "channel_shuffle": (["input", "groups"], {}),
    "layer_norm": (["input", "normalized_shape", "weight", "bias", "eps", "cudnn_enable"],
                   {"weight": None, "bias": None, "eps": 1e-5, "cudnn_enable": True}),
    "zero": (["x", "stride"], {"stride": 1}),
    "stop_forward": (["x"], {}),
}


def _bind(sig: str, args: tuple, kwargs: dict) -> dict:
    names, defaults = _SIGS[sig]
    out: dict[str, Any] = {}
    if names and names[-1].startswith("*"):  # x.view(a, b) or x.view((a, b))
        out[names[0]] = args[0]
        rest = args[1:]
        out[names[-1][1:]] = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else list(rest)
        out.update(kwargs)
        return out
    if len(args) > len(names):
        raise Skip(f"takes at most {len(names)} positional arguments here, got {len(args)}")
    out.update(zip(names, args))
    for k, v in kwargs.items():
        if k not in names:
            raise Skip(f"unexpected keyword argument {k!r}")
        out[k] = v
    for k, v in defaults.items():
        out.setdefault(k, v)
    missing = [k for k in names if k not in out]
    if missing:
        raise Skip(f"missing argument(s) {missing}")
    return out


def _bind_aten(target, args: tuple, kwargs: dict) -> dict:
    out: dict[str, Any] = {}
    for i, a in enumerate(target._schema.arguments):
        if i < len(args):
            out[a.name] = args[i]
        elif a.name in kwargs:
            out[a.name] = kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
    if "self" in out:  # aten calls the first tensor "self"
        out["input"] = out.pop("self")
    return out


# --------------------------------------------------------------------------- the importer


class _Importer:
    def __init__(self, gm: fx.GraphModule, root: nn.Module, shapes: dict, name: str, tracer: str) -> None:
        self.gm = gm
        self.root = root
        self.shapes = shapes  # fx node -> recorded value summary
        self.g = Graph(name)
        self.ids = IdMaker()
        self.env: dict[fx.Node, Any] = {}
        self.problems: list[Unsupported] = []
        self.notes: list[str] = []
        self.tracer = tracer
        self.order = {n: i for i, n in enumerate(gm.graph.nodes)}
        self.module_calls: dict[str, str] = {}
        self.dry = False

    # ----------------------------------------------------------------- helpers

    def where(self, node: fx.Node) -> str:
        scope = self.scope(node) or "<top level>"
        line = _user_line(node)
        return f"{scope} ({line})" if line else scope

    def scope(self, node: fx.Node) -> str:
        """The module path a node belongs to: its own for a module call, else the innermost caller's."""
        if node.op == "call_module":
            return str(node.target)
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return ""
        path, _ = list(stack.values())[-1]
        return str(path)

    def _leaf_scope(self, node: fx.Node) -> bool:
        """Whether the innermost module around an ATen node (torch.export) is a torch.nn layer."""
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return False
        _, typ = list(stack.values())[-1]
        mod = typ if isinstance(typ, str) else f"{getattr(typ, '__module__', '')}.{getattr(typ, '__name__', '')}"
        return mod.startswith("torch.nn.modules.") and ".container." not in mod

    def node_id(self, node: fx.Node, op: str) -> str:
        if node.op == "call_module":
            return self.ids(str(node.target))
        scope = self.scope(node)
        if scope and self.tracer == "torch.export" and self._leaf_scope(node):
            return self.ids(scope)
        return self.ids(f"{scope}.{op}" if scope else op)

    def add(self, node: fx.Node, op: str, inputs: Sequence[str], *, params=None, buffers=None, name: str | None = None,
            **attrs) -> str:
        """Add ``op`` for fx ``node`` (id from the node, or ``name``); in a dry run check the attrs only."""
        if self.dry:  # check the attributes only; the inputs are stand-ins
            try:
                get_op(op).normalize_attrs(attrs)
            except IRError as e:
                raise Skip(f"maps to {op} but {e.message}") from None
            return ""
        nid = self.ids(name) if name else self.node_id(node, op)
        return add_mapped(self.g, self.ids, nid, op, inputs,
                          params={k: _np(v) for k, v in (params or {}).items()},
                          buffers={k: _np(v) for k, v in (buffers or {}).items()}, **attrs)

    def value(self, a: Any, dry: bool = False) -> Any:
        """An fx argument as a Python value: activations as ``_Act``, constants as tensors.

        With ``dry``, an unmapped tensor becomes a stand-in ``_Act`` of its recorded shape.
        """
        if isinstance(a, fx.Node):
            v = self.env.get(a, _BAD)
            if v is _BAD and dry and isinstance(self.shapes.get(a), tuple):
                return _Act("", self.shapes[a])
            return v
        if isinstance(a, tuple):
            return tuple(self.value(x, dry) for x in a)
        if isinstance(a, list):
            return [self.value(x, dry) for x in a]
        if isinstance(a, dict):
            return {k: self.value(v, dry) for k, v in a.items()}
        return a

    def out_shape(self, node: fx.Node) -> tuple[int, ...] | None:
        info = self.shapes.get(node)
        return info if isinstance(info, tuple) else None

    # ----------------------------------------------------------------- the walk

    def run(self) -> list:
        outputs: list = []
        for node in self.gm.graph.nodes:
            if node.op == "output":
                outputs = self.collect_outputs(node)
                continue
            try:
                self.env[node] = self.visit(node)
            except Skip as e:
                self.env[node] = _BAD
                self.problems.append(Unsupported(_what(node, self.gm), self.where(node), str(e)))
        for node in self.gm.graph.nodes:
            # a parameter read by several ops (functional calls on one weight, or a module called twice
            # under torch.export) would become independent copies: refuse rather than untie silently
            if node.op == "get_attr" and len([u for u in node.users if u.op != "output"]) > 1:
                users = ", ".join(u.name for u in node.users)
                self.problems.append(Unsupported(f"parameter {node.target}", self.where(next(iter(node.users))),
                                                 f"is shared by several ops ({users}); archir has no weight tying"))
        return outputs

    def collect_outputs(self, node: fx.Node) -> list:
        res = node.args[0]
        flat = list(res) if isinstance(res, (list, tuple)) else [res]
        outs = []
        for r in flat:
            v = self.env.get(r, _BAD) if isinstance(r, fx.Node) else None
            if isinstance(v, _Act):
                outs.append(v.id)
            elif v is _BAD:
                outs.append(None)  # its producer is already reported
            else:
                self.problems.append(Unsupported("output", "<module output>",
                                                 f"the model returns a {type(r).__name__} that is not a tensor; "
                                                 "archir graphs return tensors (or a tuple of them)"))
        if isinstance(res, dict):
            self.problems.append(Unsupported("output", "<module output>",
                                             "the model returns a dict; return a tensor or a tuple of tensors"))
        return outs

    def visit(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            shape = self.out_shape(node)
            if shape is None:
                raise Skip("a forward() argument that is not a tensor")
            nid = self.ids(clean_id(str(node.target)))
            self.g.input(nid, shape[1:])
            return _Act(nid, shape)
        if node.op == "get_attr":
            return _fetch(self.gm, str(node.target))
        args = self.value(node.args)
        kwargs = self.value(node.kwargs)
        if any(v is _BAD for v in _flat(args, kwargs)):
            # An input is unsupported and already reported. Map this node anyway, in a dry run on
            # stand-ins of the recorded shapes, so that the error lists every unsupported construct at
            # once (a constant added downstream of a reshape is reported too); its value stays _BAD.
            if self.shapes.get(node) != "python" and not self.has_rule(node):
                if node.op == "call_module":
                    mod = self.gm.get_submodule(str(node.target))
                    raise Skip(f"module type {type(mod).__module__}.{type(mod).__name__} has no mapping")
                raise Skip("no mapping for this call")
            args, kwargs = self.value(node.args, dry=True), self.value(node.kwargs, dry=True)
            if any(v is _BAD for v in _flat(args, kwargs)):
                return _BAD
            self.dry = True
            try:
                self.dispatch(node, args, kwargs)
            finally:
                self.dry = False
            return _BAD
        return self.dispatch(node, args, kwargs)

    def dispatch(self, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        if node.op == "call_module":
            mod = self.gm.get_submodule(str(node.target))
            if any(True for _ in mod.parameters(recurse=False)) or any(True for _ in mod.buffers(recurse=False)):
                first = self.module_calls.get(str(node.target))
                if first is not None:
                    raise Skip(f"module {node.target!r} ({type(mod).__name__}) is called again: its weights are "
                                f"shared with node {first!r}, and archir has no weight tying")
            rule = _module_rule(mod)
            if rule is None:
                raise Skip(f"module type {type(mod).__module__}.{type(mod).__name__} has no mapping")
            out = rule(self, node, mod, args, kwargs)
        elif node.op in ("call_function", "call_method"):
            out = self.call(node, args, kwargs)
        else:
            raise Skip(f"fx node kind {node.op!r} has no mapping")
        first = out.values[0] if isinstance(out, _Outputs) else out  # (attn_output, None) of an attention
        if node.op == "call_module" and isinstance(first, _Act) and not self.dry:
            self.module_calls.setdefault(str(node.target), first.id)
        return out

    def has_rule(self, node: fx.Node) -> bool:
        t = node.target
        if node.op == "call_module":
            mod = self.gm.get_submodule(str(t))
            return _module_rule(mod) is not None
        if isinstance(t, torch._ops.OpOverload):
            return t._schema.name.split("::")[-1] in _ATEN_RULES
        key = t if node.op == "call_function" else ("method", t)
        return key in _CALL_RULES or (node.op == "call_function" and (_is_stochastic_depth(t)
                                                                        or _qualname(t) in _NAMED_CALL_RULES))

    def call(self, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        info = self.shapes.get(node)
        if info == "python" and not any(isinstance(a, _Act) for a in _flat(args, kwargs)):
            return _Py()  # arithmetic on shapes and other Python values
        target = node.target
        if isinstance(target, torch._ops.OpOverload):
            name = target._schema.name.split("::")[-1]
            rule = _ATEN_RULES.get(name)
            if rule is None:
                if info == "python":
                    return _Py()
                raise Skip(f"ATen op {name} has no mapping")
            sig, fn, inplace = rule
            kw = _bind_aten(target, args, kwargs)
        else:
            key = target if node.op == "call_function" else ("method", target)
            rule = _CALL_RULES.get(key)
            if rule is None and node.op == "call_function" and _is_stochastic_depth(target):
                rule = ("stochastic_depth", _stochastic_depth, False)
            if rule is None and node.op == "call_function":
                rule = _NAMED_CALL_RULES.get(_qualname(target))  # swin
            if rule is None:
                if info == "python":
                    # shape arithmetic (x.size(0), x.shape[2] ...): consumed as arguments of mapped ops,
                    # which read what they need from the recorded result shapes
                    if any(isinstance(a, _Act) for a in _flat(args, kwargs)) and not _is_shape_query(node):
                        raise Skip("returns a non-tensor value computed from a tensor's data")
                    return _Py()
                raise Skip("no mapping for this call")
            sig, fn, inplace = rule
            kw = _bind(sig, args, kwargs)
        if inplace or kw.get("inplace"):
            self.check_inplace(node)
        return fn(self, node, kw)

    def check_inplace(self, node: fx.Node) -> None:
        """An in-place op imports as its out-of-place op when nothing reads its input afterwards: neither
        the input itself nor any tensor sharing its memory (a view of it, what it is a view of, the other
        views of that); else it is refused (the reader would see the changed values)."""
        src = node.args[0] if node.args else None
        if not isinstance(src, fx.Node):
            return
        later = [u for a in _aliases(src) for u in a.users if u is not node and self.order[u] > self.order[node]]
        if later:
            via = "" if any(u in src.users for u in later[:1]) else " (through a view sharing its memory)"
            raise Skip(f"works in place on {src.name!r}, which {later[0].name!r} reads afterwards{via} (it would "
                        "see the changed values); use the out-of-place form")


class _Outputs:
    """The tuple a module returns, of which archir computes some entries (``values``: ``_Act`` or ``None``;
    ``what``: the others, in words)."""

    def __init__(self, values: list, what: list[str]) -> None:
        self.values, self.what = values, what


class _Py:
    """A Python (non-tensor) value such as ``x.size(0)``; mapped ops do not need its value."""


# calls whose result may share its first argument's memory (a view): an in-place op on one changes the other
_VIEW_METHODS = {"view", "reshape", "flatten", "narrow", "split", "chunk", "contiguous", "detach", "expand",
                 "expand_as", "squeeze", "unsqueeze", "permute", "transpose", "t", "view_as", "unflatten",
                 "unbind", "select", "split_with_sizes", "as_strided", "alias", "movedim"}


def _is_view(n: fx.Node) -> bool:
    t = n.target
    if n.op == "call_method":
        return t in _VIEW_METHODS
    if n.op != "call_function":
        return False
    if t is operator.getitem:
        return True
    if isinstance(t, torch._ops.OpOverload):
        return t._schema.name.split("::")[-1] in _VIEW_METHODS
    return getattr(t, "__name__", "") in _VIEW_METHODS and str(getattr(t, "__module__", "")).startswith("torch")


def _aliases(src: fx.Node) -> set[fx.Node]:
    """``src`` and every node that may share its memory: up through views to the base, then down through
    the views of the base."""
    base = src
    while _is_view(base) and base.args and isinstance(base.args[0], fx.Node):
        base = base.args[0]
    out, todo = set(), [base]
    while todo:
        n = todo.pop()
        if n in out:
            continue
        out.add(n)
        todo += [u for u in n.users if _is_view(u) and u.args and u.args[0] is n]
    return out


def _flat(*xs) -> list:
    out = []
    for x in xs:
        if isinstance(x, (list, tuple)):
            out += _flat(*x)
        elif isinstance(x, dict):
            out += _flat(*x.values())
        else:
            out.append(x)
    return out


def _is_shape_query(node: fx.Node) -> bool:
    t = node.target
    return (node.op == "call_method" and t in ("size", "dim")) or (
        node.op == "call_function" and t in (getattr, operator.getitem, len))


def _is_stochastic_depth(target) -> bool:
    return getattr(target, "__name__", "") == "stochastic_depth" and \
        str(getattr(target, "__module__", "")).startswith("torchvision.")


def _np(t) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _fetch(gm: nn.Module, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _what(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        return f"module {type(mod).__name__}"
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return f"aten.{t._schema.name.split('::')[-1]}"
    if node.op == "call_method":
        return f"method .{t}()"
    if node.op == "call_function":
        mod = getattr(t, "__module__", None) or ""
        name = getattr(t, "__name__", str(t))
        return f"function {mod + '.' if mod and mod != 'builtins' else ''}{name}"
    return f"{node.op} {t}"


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)')


def _user_line(node: fx.Node) -> str:
    """The innermost source line outside torch itself that created ``node`` (``file.py:12 code``)."""
    st = node.stack_trace or node.meta.get("stack_trace") or ""
    frames = _FRAME.findall(st)
    for path, line, fn, code in reversed(frames):
        if not os.path.abspath(path).startswith(_TORCH_DIR):
            return f"{os.path.basename(path)}:{line} {code.strip()}"
    return ""


# --------------------------------------------------------------------------- mapping rules


def _act(kw: dict, key: str = "input") -> _Act:
    v = kw.get(key)
    if not isinstance(v, _Act):
        raise Skip(f"argument {key!r} is not a tensor computed by the network (got {type(v).__name__})")
    return v


def _const(v, what: str):
    if isinstance(v, _Act):
        raise Skip(f"{what} is computed by the network; archir needs it to be a parameter")
    if v is not None and not isinstance(v, torch.Tensor):
        raise Skip(f"{what} is a {type(v).__name__}, not a tensor")
    return v


def _ints(v, what: str) -> list[int]:
    if isinstance(v, int):
        return [v]
    if isinstance(v, (list, tuple)) and all(isinstance(x, int) for x in v):
        return list(v)
    raise Skip(f"{what}={v!r} is not an int or a list of ints")


def _pair_attr(v, what: str) -> list[int]:
    v = _ints(v, what)
    if len(v) == 1:
        v = v * 2
    if len(v) != 2:
        raise Skip(f"{what}={v} is not 2-d")
    return v


def _rank4(a: _Act, op: str) -> None:
    if len(a.shape) != 4:
        raise Skip(f"{op} on a {len(a.shape) - 1}-d sample {a.shape[1:]}; archir supports 2-d (N, C, H, W) here")


def _result(imp: _Importer, node: fx.Node, nid: str) -> _Act:
    shape = imp.out_shape(node)
    if imp.dry:
        return _Act("", shape or ())
    ir = imp.g.node(nid).type.shape
    if shape is not None and tuple(shape[1:]) != tuple(ir):
        raise Skip(f"archir infers shape {ir} but torch computes {tuple(shape[1:])}")
    return _Act(nid, (shape[0] if shape else -1,) + tuple(ir))


def _conv(imp: _Importer, node, kw):
    x = _act(kw)
    w = _const(kw["weight"], "the conv weight")
    if w is not None and w.dim() == 3 and not kw.get("transposed"):
        return _conv1d(imp, node, kw)
    _rank4(x, "conv2d")
    b = _const(kw.get("bias"), "the conv bias")
    if kw.get("transposed"):
        raise Skip("transposed convolution is not an archir op")
    if kw.get("output_padding") and any(kw["output_padding"]):
        raise Skip("output_padding is not supported")
    if w is None or w.dim() != 4:
        raise Skip("only 2-d convolutions are supported")
    padding = kw["padding"]
    k = list(w.shape[2:])
    dil = _pair_attr(kw["dilation"], "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            padding = [0, 0]
        elif padding == "same" and all((d * (kk - 1)) % 2 == 0 for d, kk in zip(dil, k)):
            padding = [d * (kk - 1) // 2 for d, kk in zip(dil, k)]
        else:
            raise Skip(f"padding={padding!r} with an even kernel pads asymmetrically; archir pads symmetrically")
    nid = imp.add(node, "conv2d", [x.id], params={"weight": w, **({"bias": b} if b is not None else {})},
                  out_channels=int(w.shape[0]), kernel_size=k, stride=_pair_attr(kw["stride"], "stride"),
                  padding=_pair_attr(padding, "padding"), dilation=dil, groups=int(kw["groups"]),
                  bias=b is not None)
    return _result(imp, node, nid)


# ---- upsample / reductions / conv1d / softmax / matmul (issue 17, part B)


def _int1(v, what: str) -> int:
    v = _ints(v, what)
    if len(v) != 1:
        raise Skip(f"{what}={v} is not 1-d")
    return v[0]


def _conv1d(imp, node, kw):
    x = _act(kw)
    if len(x.shape) != 3:
        raise Skip(f"conv1d on a {len(x.shape) - 1}-d sample {x.shape[1:]}; archir's conv1d takes (N, C, L)")
    w = _const(kw["weight"], "the conv weight")
    b = _const(kw.get("bias"), "the conv bias")
    if kw.get("transposed"):
        raise Skip("transposed convolution is not an archir op")
    if w is None or w.dim() != 3:
        raise Skip("conv1d needs a 3-d weight (out, in/groups, k)")
    k, dil = int(w.shape[2]), _int1(kw["dilation"], "dilation")
    padding = kw["padding"]
    if isinstance(padding, str):
        if padding == "valid":
            padding = 0
        elif padding == "same" and dil * (k - 1) % 2 == 0:
            padding = dil * (k - 1) // 2
        else:
            raise Skip(f"padding={padding!r} with an even kernel pads asymmetrically; archir pads symmetrically")
    nid = imp.add(node, "conv1d", [x.id], params={"weight": w, **({"bias": b} if b is not None else {})},
                  out_channels=int(w.shape[0]), kernel_size=k, stride=_int1(kw["stride"], "stride"),
                  padding=_int1(padding, "padding"), dilation=dil, groups=int(kw["groups"]), bias=b is not None)
    return _result(imp, node, nid)


_INTERP_MODES = {"nearest": "nearest", "bilinear": "bilinear"}


def _interpolate(imp, node, kw):
    """``F.interpolate`` / ``nn.Upsample``: nearest or bilinear on (N, C, H, W), by size or by one scale
    factor for both dims (with recompute_scale_factor=True torch uses the computed size: mapped as size=)."""
    x = _act(kw)
    _rank4(x, "interpolate")
    mode = kw.get("mode", "nearest")
    if mode not in _INTERP_MODES:
        raise Skip(f"interpolate mode={mode!r}; archir's upsample has nearest and bilinear")
    if kw.get("antialias"):
        raise Skip("interpolate antialias=True (archir's upsample does not antialias)")
    ac = kw.get("align_corners")
    attrs: dict[str, Any] = {"mode": mode, "align_corners": bool(ac) if mode == "bilinear" else False}
    size, sf = kw.get("size"), kw.get("scale_factor")
    out = imp.out_shape(node)
    if size is not None or kw.get("recompute_scale_factor"):
        if out is None:
            raise Skip("the result shape is unknown")
        attrs["size"] = list(out[2:])
    elif sf is not None:
        sfs = list(sf) if isinstance(sf, (list, tuple)) else [sf, sf]
        if len(sfs) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in sfs):
            raise Skip(f"scale_factor={sf!r} is not one or two numbers")
        if sfs[0] != sfs[1]:
            raise Skip(f"scale_factor={sf!r} differs per dim; archir's upsample takes one factor (or size=)")
        attrs["scale_factor"] = float(sfs[0])
    else:
        raise Skip("interpolate without size or scale_factor")
    return _result(imp, node, imp.add(node, "upsample", [x.id], **attrs))


def _aten_upsample(mode: str):
    """``aten.upsample_{nearest,bilinear}2d`` (and ``.vec``): output_size, or scale factors."""

    def rule(imp, node, kw):
        sf = kw.get("scale_factors")
        if sf is None and (kw.get("scales_h") is not None or kw.get("scales_w") is not None):
            sf = [kw.get("scales_h"), kw.get("scales_w")]
        size = kw.get("output_size")
        return _interpolate(imp, node, {"input": kw["input"], "mode": mode, "align_corners": kw.get("align_corners"),
                                        "size": size if size else None, "scale_factor": None if size else sf})

    return rule


def _reduce(op: str):
    def rule(imp, node, kw):
        x = _act(kw)
        dims, r = kw.get("dim"), len(x.shape)
        if dims is None or dims == []:
            raise Skip(f"{op} over every dim (the batch included); archir reduces per sample: pass dim=")
        if kw.get("dtype") is not None:
            raise Skip(f"{op} with dtype={kw['dtype']} (archir computes in the input's float32)")
        dims = _ints(dims, "dim")
        if any(not -r <= d < r for d in dims):
            raise Skip(f"{op} dims {dims} out of range for a rank-{r} tensor")
        if any(d % r == 0 for d in dims):
            raise Skip(f"{op} over the batch dimension")
        if op == "mean" and r == 4 and sorted(d % r for d in dims) == [2, 3]:
            gap = imp.add(node, "global_avgpool", [x.id])  # the spatial mean of a feature map
            if kw.get("keepdim"):
                return _result(imp, node, gap)
            return _result(imp, node, imp.add(node, "flatten", [gap], start_dim=1))
        return _result(imp, node, imp.add(node, op, [x.id], dims=dims, keepdim=bool(kw.get("keepdim"))))

    return rule


def _softmax(op: str):
    def rule(imp, node, kw):
        x = _act(kw)
        dim = kw.get("dim")
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise Skip(f"{op} with dim={dim!r}; pass an int dim (torch's implicit dim is deprecated)")
        if kw.get("dtype") is not None or kw.get("half_to_float"):
            raise Skip(f"{op} with a dtype change")
        if dim % len(x.shape) == 0:
            raise Skip(f"{op} over the batch dimension")
        return _result(imp, node, imp.add(node, op, [x.id], dim=dim))

    return rule


def _matmul(imp, node, kw):
    a, b = kw["input"], kw["other"]
    if not isinstance(a, _Act) or not isinstance(b, _Act):
        raise Skip("matmul with a constant operand; a weight matrix is a linear layer (nn.Linear / F.linear)")
    if len(a.shape) != len(b.shape) or len(a.shape) < 3:
        raise Skip(f"matmul of {a.shape} and {b.shape}: archir's matmul takes two tensors of equal rank >= 3 "
                   "(batch, ..., n, k) @ (batch, ..., k, m)")
    if a.shape[0] != b.shape[0]:
        raise Skip(f"matmul broadcasts over the batch dimension ({a.shape} and {b.shape})")
    return _result(imp, node, imp.add(node, "matmul", [a.id, b.id]))


def _linear(imp, node, kw):
    x = _act(kw)
    w = _const(kw["weight"], "the linear weight")
    b = _const(kw.get("bias"), "the linear bias")
    if w is None or w.dim() != 2:
        raise Skip("the linear weight is not a matrix")
    nid = imp.add(node, "linear", [x.id], params={"weight": w, **({"bias": b} if b is not None else {})},
                  out_features=int(w.shape[0]), bias=b is not None)
    return _result(imp, node, nid)


def _batch_norm(imp, node, kw):
    x = _act(kw)
    if kw.get("training"):
        raise Skip("batch norm that normalises by batch statistics in eval mode (track_running_stats=False); "
                    "archir's batchnorm2d uses running statistics")
    rm, rv = _const(kw["running_mean"], "running_mean"), _const(kw["running_var"], "running_var")
    w, b = _const(kw.get("weight"), "the BN weight"), _const(kw.get("bias"), "the BN bias")
    if rm is None or rv is None:
        raise Skip("batch norm without running statistics")
    if len(x.shape) != 4:
        raise Skip(f"batch norm on a {len(x.shape) - 1}-d sample; archir has batchnorm2d only")
    momentum = kw.get("momentum")
    if momentum is None:
        raise Skip("momentum=None (a cumulative moving average) has no archir equivalent; set a momentum")
    if (w is None) != (b is None):
        raise Skip("batch norm with only one of weight and bias")
    params = {"weight": w, "bias": b} if w is not None else {}
    nid = imp.add(node, "batchnorm2d", [x.id], params=params, buffers={"running_mean": rm, "running_var": rv},
                  eps=float(kw["eps"]), momentum=float(momentum), affine=w is not None)
    return _result(imp, node, nid)


def _unary(op: str):
    def rule(imp, node, kw):
        x = _act(kw)
        return _result(imp, node, imp.add(node, op, [x.id]))

    return rule


def _number(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Skip(f"{what}={v!r} is not a number known when tracing")
    return float(v)


def _hardtanh(imp, node, kw):
    lo, hi = _number(kw["min_val"], "min_val"), _number(kw["max_val"], "max_val")
    if (lo, hi) == (0.0, 6.0):
        return _unary("relu6")(imp, node, kw)  # ReLU6 is Hardtanh(0, 6)
    x = _act(kw)
    return _result(imp, node, imp.add(node, "hardtanh", [x.id], min_val=lo, max_val=hi))


def _leaky_relu(imp, node, kw):
    x = _act(kw)
    slope = _number(kw["negative_slope"], "negative_slope")
    return _result(imp, node, imp.add(node, "leaky_relu", [x.id], negative_slope=slope))


def _gelu(imp, node, kw):
    x = _act(kw)
    return _result(imp, node, imp.add(node, "gelu", [x.id], approximate=kw.get("approximate", "none")))


def _elu(imp, node, kw):
    x = _act(kw)
    if kw.get("scale", 1) != 1 or kw.get("input_scale", 1) != 1:
        raise Skip(f"elu with scale={kw.get('scale')}, input_scale={kw.get('input_scale')} (selu/celu); archir's "
                    "elu has alpha only")
    return _result(imp, node, imp.add(node, "elu", [x.id], alpha=_number(kw["alpha"], "alpha")))


def _div(imp, node, kw):
    if kw.get("rounding_mode") is not None:
        raise Skip(f"division with rounding_mode={kw['rounding_mode']!r}; archir's div is true division")
    return _binary("div")(imp, node, {"input": kw["input"], "other": kw["other"]})


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "replicate"}


def _pad(imp, node, kw, mode: str | None = None):
    x = _act(kw)
    pads = _ints(kw["pad"], "pad")
    mode = mode or kw.get("mode", "constant")
    if mode not in _PAD_MODES:
        raise Skip(f"pad mode {mode!r}; archir pads with constant, reflect or replicate")
    while len(pads) > 4 and pads[-2:] == [0, 0]:
        pads = pads[:-2]  # (l, r, t, b, 0, 0): nothing on the channels
    if len(pads) not in (2, 4) or len(x.shape) != 4:
        raise Skip(f"pad {pads} of a rank-{len(x.shape)} tensor; archir pads H and W of (N, C, H, W)")
    if any(p < 0 for p in pads):
        raise Skip(f"pad {pads} crops (negative pads); archir pads only")
    attrs: dict[str, Any] = {"pads": pads, "mode": mode}
    if mode == "constant":
        attrs["value"] = 0.0 if kw.get("value") is None else _number(kw["value"], "value")
    return _result(imp, node, imp.add(node, "pad", [x.id], **attrs))


class _Parts:
    """The tuple of ``torch.split`` / ``chunk``: each part becomes a ``slice`` when an index picks it."""

    def __init__(self, x: _Act, dim: int, spans: list[tuple[int, int]]) -> None:
        self.x, self.dim, self.spans = x, dim, spans
        self.made: dict[int, _Act] = {}

    def part(self, imp, node, k: int, own: bool = True) -> _Act:
        """Part ``k`` as a node (made once); ``own``: it is ``node``'s value (a getitem)."""
        if k not in self.made:
            start, end = self.spans[k]
            self.made[k] = _slices(imp, node, self.x, {self.dim: (start, end, 1)}, own=own)
        return self.made[k]


def _split(imp, node, kw):
    x = _act(kw)
    dim = kw["dim"]
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise Skip(f"dim={dim!r} is not an int")
    dim %= len(x.shape)
    if dim == 0:
        raise Skip("splitting the batch dimension")
    size = x.shape[dim]
    if "chunks" in kw:
        chunks = kw["chunks"]
        if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
            raise Skip(f"chunks={chunks!r} is not a positive int")
        part = -(-size // chunks)  # torch.chunk: parts of ceil(size / chunks), fewer parts if they run out
        sizes = [min(part, size - j) for j in range(0, size, part)]
    else:
        v = kw.get("split_size_or_sections", kw.get("split_size", kw.get("split_sizes")))
        if isinstance(v, int) and not isinstance(v, bool):
            if v < 1:
                raise Skip(f"split size {v}")
            sizes = [min(v, size - j) for j in range(0, size, v)]
        else:
            sizes = _ints(v, "split sizes")
            if sum(sizes) != size or any(n < 0 for n in sizes):
                raise Skip(f"split sizes {sizes} do not add up to the dim's size {size}")
    spans, start = [], 0
    for n in sizes:
        spans.append((start, start + n))
        start += n
    return _Parts(x, dim, spans)


def _alias(imp, node, kw):
    return _act(kw)


def _stochastic_depth(imp, node, kw):
    if kw.get("training"):
        raise Skip("stochastic depth in training mode (archir imports the eval-mode network)")
    imp.notes.append(f"{imp.where(node)}: stochastic depth (p={kw.get('p')}) is the identity in eval mode and "
                     "was imported as such; archir has no stochastic-depth op for training")
    return _act(kw)


def _dropout(imp, node, kw):
    x = _act(kw)
    return _result(imp, node, imp.add(node, "dropout", [x.id], p=float(kw["p"])))


def _max_pool(imp, node, kw):
    x = _act(kw)
    _rank4(x, "max_pool2d")
    if kw.get("return_indices"):
        raise Skip("return_indices=True (archir's maxpool2d returns values only)")
    k = _pair_attr(kw["kernel_size"], "kernel_size")
    s = kw.get("stride")
    s = k if s is None or s == [] else _pair_attr(s, "stride")
    nid = imp.add(node, "maxpool2d", [x.id], kernel_size=k, stride=s, padding=_pair_attr(kw["padding"], "padding"),
                  dilation=_pair_attr(kw["dilation"], "dilation"), ceil_mode=bool(kw["ceil_mode"]))
    return _result(imp, node, nid)


def _avg_pool(imp, node, kw):
    x = _act(kw)
    _rank4(x, "avg_pool2d")
    if kw.get("divisor_override") is not None:
        raise Skip("divisor_override is not supported")
    k = _pair_attr(kw["kernel_size"], "kernel_size")
    s = kw.get("stride")
    s = k if s is None or s == [] else _pair_attr(s, "stride")
    p = _pair_attr(kw["padding"], "padding")
    if kw.get("ceil_mode"):
        floor = [(x.shape[2 + i] + 2 * p[i] - k[i]) // s[i] + 1 for i in range(2)]
        out = imp.out_shape(node)
        if out is None or list(out[2:]) != floor:
            raise Skip("ceil_mode=True that changes the output size (archir's avgpool2d has no ceil_mode)")
    nid = imp.add(node, "avgpool2d", [x.id], kernel_size=k, stride=s, padding=p,
                  count_include_pad=bool(kw["count_include_pad"]))
    return _result(imp, node, nid)


def _adaptive(imp, node, kw):
    x = _act(kw)
    _rank4(x, "adaptive_avg_pool2d")
    size = kw["output_size"]
    size = [size, size] if isinstance(size, int) or size is None else list(size)
    if len(size) != 2:
        raise Skip(f"output_size={kw['output_size']!r} is not 2-d")
    size = [x.shape[2 + i] if v is None else v for i, v in enumerate(size)]
    if size == [1, 1]:
        return _result(imp, node, imp.add(node, "global_avgpool", [x.id]))
    return _result(imp, node, imp.add(node, "adaptive_avgpool2d", [x.id], output_size=size))


def _flatten(imp, node, kw):
    x = _act(kw)
    r = len(x.shape)
    sd, ed = int(kw["start_dim"]) % r, int(kw["end_dim"]) % r
    if sd == 0 and ed >= 1:
        raise Skip("flattening the batch dimension (start_dim=0); use torch.flatten(x, 1)")
    if sd == ed:
        return x
    if ed != r - 1:  # flatten(start, end) inside the sample: a reshape
        return _reshape(imp, node, kw)
    return _result(imp, node, imp.add(node, "flatten", [x.id], start_dim=sd))


def _reshape(imp, node, kw):
    x = _act(kw)
    out = imp.out_shape(node)
    if out is None:
        raise Skip("the result shape is unknown")
    if tuple(out) == tuple(x.shape):
        return x
    for sd in range(1, len(x.shape) - 1):  # a flatten of the trailing dims from start_dim sd
        if tuple(out) == tuple(x.shape[:sd]) + (math.prod(x.shape[sd:]),):
            return _result(imp, node, imp.add(node, "flatten", [x.id], start_dim=sd))
    if len(out) < 1 or out[0] != x.shape[0] or math.prod(out[1:]) != math.prod(x.shape[1:]):
        raise Skip(f"reshape {x.shape} -> {tuple(out)} moves elements across the batch dimension; archir reshapes "
                    "within a sample (keep the batch dim first: x.view(x.size(0), ...))")
    if len(out) == 1:
        raise Skip(f"reshape {x.shape} -> {tuple(out)} leaves no per-sample axis")
    return _result(imp, node, imp.add(node, "reshape", [x.id], shape=list(out[1:])))


# ----------------------------------------------------------------- layout ops


def _dim(v, rank: int, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise Skip(f"{what}={v!r} is not an int known when tracing")
    if not -rank <= v < rank:
        raise Skip(f"{what}={v} is out of range for a rank-{rank} tensor")
    return v % rank


def _permute_to(imp, node, x: _Act, perm: list[int]) -> _Act:
    """``x.permute(*perm)`` (batch-first dims) as an IR ``permute`` over the per-sample axes."""
    if perm[0] != 0:
        raise Skip(f"permute {perm} moves the batch dimension; archir keeps the batch first")
    if perm == list(range(len(perm))):
        return x
    return _result(imp, node, imp.add(node, "permute", [x.id], dims=[d - 1 for d in perm[1:]]))


def _permute(imp, node, kw):
    x = _act(kw)
    r = len(x.shape)
    dims = _ints(kw["dims"], "dims")
    perm = [_dim(d, r, "dims") for d in dims]
    if len(perm) != r or sorted(perm) != list(range(r)):
        raise Skip(f"permute dims {dims} are not a permutation of the {r} dims")
    return _permute_to(imp, node, x, perm)


def _transpose(imp, node, kw):
    x = _act(kw)
    r = len(x.shape)
    d0, d1 = _dim(kw["dim0"], r, "dim0"), _dim(kw["dim1"], r, "dim1")
    perm = list(range(r))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return _permute_to(imp, node, x, perm)


def _unsqueeze(imp, node, kw):
    x = _act(kw)
    if _dim(kw["dim"], len(x.shape) + 1, "dim") == 0:
        raise Skip("unsqueeze(0) adds a dim before the batch; archir keeps the batch first")
    return _reshape(imp, node, kw)


def _squeeze(imp, node, kw):
    x = _act(kw)
    r = len(x.shape)
    dims = kw.get("dim")
    dims = list(range(r)) if dims is None else [_dim(d, r, "dim") for d in _ints(dims, "dim")]
    if 0 in dims and x.shape[0] == 1:
        raise Skip("squeeze of the batch dimension (size 1 in the example); name the dims to squeeze, e.g. "
                    "x.squeeze(-1)")
    return _reshape(imp, node, kw)


def _unflatten(imp, node, kw):
    x = _act(kw)
    if _dim(kw["dim"], len(x.shape), "dim") == 0:
        raise Skip("unflatten of the batch dimension")
    return _reshape(imp, node, kw)


def _channel_shuffle(imp, node, kw):
    x = _act(kw)
    _rank4(x, "channel_shuffle")
    groups = kw["groups"]
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise Skip(f"groups={groups!r} is not an int")
    return _result(imp, node, imp.add(node, "channel_shuffle", [x.id], groups=groups))


def _layer_norm(imp, node, kw):
    x = _act(kw)
    shape = _ints(kw["normalized_shape"], "normalized_shape")
    if len(shape) != 1 or shape[0] != x.shape[-1]:
        raise Skip(f"layer norm over the last {len(shape)} dims {shape} of {x.shape}; archir's layernorm "
                    "normalises over the last dim (or the channels of a map) only")
    w, b = _const(kw.get("weight"), "the layer norm weight"), _const(kw.get("bias"), "the layer norm bias")
    if w is None and b is not None:
        raise Skip("layer norm with a bias but no weight")
    params = {k: v for k, v in (("weight", w), ("bias", b)) if v is not None}
    nid = imp.add(node, "layernorm", [x.id], params=params, axis="last", eps=_number(kw["eps"], "eps"),
                  affine=w is not None, bias=b is not None)
    return _result(imp, node, nid)


def _layer_scale(imp, node, x: _Act, p) -> _Act:
    """``gamma * x`` with an ``nn.Parameter`` gamma of shape ``(C, 1, ..., 1)``: ConvNeXt's layer scale, a
    per-channel ``scale`` whose weight is gamma."""
    c = x.shape[1] if len(x.shape) > 1 else None
    want = (c,) + (1,) * (len(x.shape) - 2)
    if not isinstance(p, nn.Parameter) or tuple(p.shape) != want:
        raise Skip(f"mul by a constant of shape {tuple(p.shape)}; archir multiplies by a learnable per-channel "
                    f"scale (an nn.Parameter of shape {want}) only")
    return _result(imp, node, imp.add(node, "scale", [x.id], params={"weight": p.detach().reshape(c)}))


def _param_node(imp, node, ref: _Act, value: torch.Tensor, shape: list[int], name: str | None = None) -> _Act:
    """A ``param`` node holding ``value`` (per-sample ``shape``), repeated over ``ref``'s batch."""
    nid = imp.add(node, "param", [ref.id], params={"value": value.detach().reshape(shape)}, shape=list(shape),
                  name=name)
    if imp.dry:
        return _Act("", (ref.shape[0], *shape))
    return _Act(nid, (ref.shape[0], *shape))


def _learned_fits(x: _Act, p) -> bool:
    """``p`` is an ``nn.Parameter`` that ``_learned`` maps against ``x`` other than as a per-channel
    ``(C, 1, ..., 1)`` layer scale (which ``scale`` keeps)."""
    if not isinstance(p, nn.Parameter) or len(x.shape) < 2:
        return False
    shape = tuple(p.shape)[1:] if p.dim() == len(x.shape) and p.shape[0] == 1 else tuple(p.shape)
    return len(shape) == len(x.shape) - 1 and shape != (x.shape[1],) + (1,) * (len(x.shape) - 2)


def _learned(imp, node, x: _Act, p: nn.Parameter, op: str) -> _Act:
    """``x <op> p`` with an ``nn.Parameter`` ``p`` of shape ``(1, *s)`` or ``s`` (the same for every sample,
    ViT's ``input + self.pos_embedding``): ``p`` becomes a ``param`` node of per-sample shape ``s`` repeated
    over ``x``'s batch, so the binary op sees two batched tensors (nothing broadcasts over the batch)."""
    shape = tuple(p.shape)
    if len(shape) == len(x.shape) and shape[:1] == (1,):
        shape = shape[1:]
    if len(shape) != len(x.shape) - 1:
        raise Skip(f"{op} of {tuple(x.shape)} and a parameter of shape {tuple(p.shape)}: archir imports a learned "
                   f"tensor of shape (1, *sample) or (*sample) with as many sample dims as the other operand")
    if op == "add" and shape != tuple(x.shape[1:]):
        raise Skip(f"add of {tuple(x.shape)} and a parameter of shape {tuple(p.shape)} broadcasts (archir's add "
                   "needs equal shapes)")
    scope = imp.scope(node)
    name = None
    for n, q in imp.gm.named_parameters():
        if q is p:
            name = clean_id(n)  # named after the parameter: encoder.pos_embedding
            break
    return _param_node(imp, node, x, p, list(shape), name=name or (f"{scope}.param" if scope else "param"))


def _batch_source(imp, a) -> _Act | None:
    """The network tensor whose batch size the fx value ``a`` is (``x.shape[0]``, ``x.size(0)``,
    ``x.size()[0]``), or ``None``."""
    if not isinstance(a, fx.Node):
        return None
    src = None
    if a.op == "call_method" and a.target == "size" and len(a.args) == 2 and a.args[1] == 0:
        src = a.args[0]
    elif a.op == "call_function" and a.target is operator.getitem and len(a.args) == 2 and a.args[1] == 0:
        inner = a.args[0]
        if isinstance(inner, fx.Node) and (
                (inner.op == "call_function" and inner.target is getattr and inner.args[1:] == ("shape",))
                or (inner.op == "call_method" and inner.target == "size" and len(inner.args) == 1)):
            src = inner.args[0]
    v = imp.env.get(src) if isinstance(src, fx.Node) else None
    return v if isinstance(v, _Act) else None


def _expand(imp, node, kw):
    """``p.expand(n, -1, ...)`` of an ``nn.Parameter`` ``p`` of shape ``(1, *s)`` with ``n`` the batch size of a
    network tensor ``x`` (ViT's class token: ``self.class_token.expand(x.shape[0], -1, -1)``): a ``param`` node
    of shape ``s`` repeated over ``x``'s batch."""
    p = kw["input"]
    if isinstance(p, _Act):
        raise Skip("expand of a network tensor; archir repeats learned tensors (nn.Parameter) over the batch only")
    if not isinstance(p, nn.Parameter):
        raise Skip(f"expand of a {type(p).__name__}; archir imports expand of an nn.Parameter over the batch")
    fx_sizes = list(node.args[1:])
    if len(fx_sizes) == 1 and isinstance(fx_sizes[0], (list, tuple)):
        fx_sizes = list(fx_sizes[0])
    if node.kwargs or len(fx_sizes) != p.dim() or p.shape[0] != 1:
        raise Skip(f"expand{tuple(fx_sizes)} of a parameter of shape {tuple(p.shape)}: archir imports "
                   "p.expand(x.shape[0], -1, ...) of a (1, ...) parameter")
    ref = _batch_source(imp, fx_sizes[0])
    if ref is None:
        raise Skip(f"expand of a parameter to a first size {fx_sizes[0]!r} that is not a network tensor's batch "
                   "size (x.shape[0] or x.size(0))")
    for d, (want, have) in enumerate(zip(fx_sizes[1:], p.shape[1:]), 1):
        if not (isinstance(want, int) and want in (-1, have)):
            raise Skip(f"expand of a parameter of shape {tuple(p.shape)} to size {want!r} on dim {d}; archir "
                       "repeats it over the batch only (pass -1 for the other dims)")
    name = next((clean_id(n) for n, q in imp.gm.named_parameters() if q is p), None)
    return _param_node(imp, node, ref, p, list(p.shape[1:]), name=name)


def _binary(op: str):
    def rule(imp, node, kw):
        a, b = kw["input"], kw["other"]
        if op == "mul" and isinstance(a, _Act) != isinstance(b, _Act) and isinstance(
                b if isinstance(a, _Act) else a, torch.Tensor) and not _learned_fits(
                a if isinstance(a, _Act) else b, b if isinstance(a, _Act) else a):
            return _layer_scale(imp, node, *((a, b) if isinstance(a, _Act) else (b, a)))
        if isinstance(a, _Act) != isinstance(b, _Act) and isinstance(b if isinstance(a, _Act) else a, nn.Parameter):
            x = a if isinstance(a, _Act) else b
            p = _learned(imp, node, x, b if isinstance(a, _Act) else a, op)
            a, b = (x, p) if isinstance(a, _Act) else (p, x)
        if not isinstance(a, _Act) or not isinstance(b, _Act):
            c = b if isinstance(a, _Act) else a
            raise Skip(f"{op} with a constant ({type(c).__name__}); archir's {op} takes two network tensors")
        if kw.get("alpha", 1) != 1:
            raise Skip(f"alpha={kw['alpha']} is not supported")
        if not a.shape or not b.shape:
            raise Skip(f"{op} of a tensor without a batch dimension (a reduction to a scalar?)")
        if op == "add" and a.shape[1:] != b.shape[1:]:
            raise Skip(f"broadcasting add of {a.shape} and {b.shape} (archir's add needs equal shapes)")
        if a.shape[0] != b.shape[0]:
            raise Skip(f"{op} broadcasts over the batch dimension ({a.shape} and {b.shape})")
        return _result(imp, node, imp.add(node, op, [a.id, b.id]))

    return rule


def _cat(imp, node, kw):
    ts = kw["tensors"]
    if isinstance(ts, _Parts):  # torch.cat(x.chunk(2, 1), 1)
        ts = [ts.part(imp, node, k, own=False) for k in range(len(ts.spans))]
    if not isinstance(ts, (list, tuple)) or not ts or not all(isinstance(t, _Act) for t in ts):
        raise Skip("cat of values that are not all network tensors")
    return _result(imp, node, imp.add(node, "concat", [t.id for t in ts], dim=int(kw["dim"])))


def _slices(imp, node, x: _Act, spans: dict[int, tuple[int, int | None, int]], own: bool = True) -> _Act:
    """One ``slice`` node per sliced dim (batch first numbering), chained; ``spans`` dim -> (start, end, step).
    ``own``: the result is ``node``'s value (checked against its recorded shape), not a part of it."""
    nid = x.id
    for dim, (start, end, step) in sorted(spans.items()):
        got = range(*slice(start, end, step).indices(x.shape[dim]))
        if (got.start, got.stop, got.step) == (0, x.shape[dim], 1):
            continue  # the whole dim
        stop = None if got.stop >= x.shape[dim] else got.stop
        nid = imp.add(node, "slice", [nid], dim=dim, start=got.start, end=stop, step=got.step)
    if nid == x.id:
        return x
    if own:
        return _result(imp, node, nid)
    return _Act(nid, (x.shape[0],) + (tuple(imp.g.node(nid).type.shape) if not imp.dry else tuple(x.shape[1:])))


def _getitem(imp, node, kw, own: bool = True):
    x = kw["input"]
    if isinstance(x, _Parts):  # a part of torch.split / chunk
        k = kw["index"]
        if isinstance(k, bool) or not isinstance(k, int) or not -len(x.spans) <= k < len(x.spans):
            raise Skip(f"index {k!r} into the {len(x.spans)} parts of a split")
        return x.part(imp, node, k % len(x.spans))
    if isinstance(x, _Outputs):  # (attn_output, None) of nn.MultiheadAttention
        k = kw["index"]
        if isinstance(k, bool) or not isinstance(k, int) or not -len(x.values) <= k < len(x.values):
            raise Skip(f"index {k!r} into the {len(x.values)} outputs of a module")
        v = x.values[k]
        if not isinstance(v, _Act):
            raise Skip(f"output {k} of the module is {x.what[k]}, which archir does not compute")
        return v
    if not isinstance(x, _Act):
        raise Skip("indexing a value that is not a network tensor (a tuple of outputs?)")
    index = kw["index"] if isinstance(kw["index"], tuple) else (kw["index"],)
    if sum(i is Ellipsis for i in index) > 1:
        raise Skip("an index with two Ellipses")
    if Ellipsis in index:
        k = index.index(Ellipsis)
        index = index[:k] + (slice(None),) * (len(x.shape) - len(index) + 1) + index[k + 1:]
    if len(index) > len(x.shape) or not all(isinstance(i, slice) or (isinstance(i, int) and not isinstance(i, bool))
                                            for i in index):
        raise Skip(f"indexing with {index!r}: archir maps slices and integers (x[:, 0], x[:, :, a:b:s]) only, not "
                    "None, tensors or masks")
    picks = [dim for dim, i in enumerate(index) if isinstance(i, int)]
    if picks:  # x[:, 0]: a slice of length 1 on each integer-indexed dim, then a reshape dropping those dims
        if 0 in picks:
            raise Skip(f"indexing the batch dimension with an integer ({index[0]})")
        for dim in picks:
            if not -x.shape[dim] <= index[dim] < x.shape[dim]:
                raise Skip(f"index {index[dim]} is out of range for dim {dim} of size {x.shape[dim]}")
        spans = {dim: (index[dim] % x.shape[dim], index[dim] % x.shape[dim] + 1, 1) for dim in picks}
        rest = tuple(slice(None) if isinstance(i, int) else i for i in index)
        y = _getitem(imp, node, {"input": x, "index": rest}, own=False) if any(
            i != slice(None) for i in rest) else x
        y = _slices(imp, node, y, spans, own=False)
        out = imp.out_shape(node)
        if out is None or len(out) < 2:
            raise Skip(f"indexing with {index!r} leaves no per-sample axis")
        if imp.dry:
            return _Act("", tuple(out))
        return _reshape(imp, node, {"input": y})  # drops the picked dims (a flatten where it is one)
    spans = {}
    for dim, s in enumerate(index):
        if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in (s.start, s.stop, s.step)):
            raise Skip(f"slice {s!r} on dim {dim} has bounds computed at run time; archir needs ints")
        if s == slice(None):
            continue
        if dim == 0:
            raise Skip(f"slicing the batch dimension ({s!r})")
        if s.step is not None and s.step < 1:
            raise Skip(f"slice step {s.step} (torch allows only positive steps)")
        spans[dim] = (s.start or 0, s.stop, s.step or 1)
    return _slices(imp, node, x, spans, own=own)


def _narrow(imp, node, kw):
    x = _act(kw)
    dim, start, length = kw["dim"], kw["start"], kw["length"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (dim, start, length)):
        raise Skip("narrow with dim/start/length computed at run time; archir needs ints")
    dim %= len(x.shape)
    if dim == 0:
        raise Skip("narrowing the batch dimension")
    start %= x.shape[dim]  # torch.narrow: a negative start counts from the end
    return _slices(imp, node, x, {dim: (start, start + length, 1)})


def _aten_slice(imp, node, kw):
    """``aten.slice(x, dim, start, end, step)`` (torch.export's form of ``x[:, :, a:b:s]``)."""
    x = _act(kw)
    dim, start, end, step = kw.get("dim", 0), kw.get("start"), kw.get("end"), kw.get("step", 1)
    if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in (dim, start, end, step)):
        raise Skip("slice bounds computed at run time; archir needs ints")
    dim %= len(x.shape)
    if dim == 0:
        if (start or 0) == 0 and (end is None or end >= 2**62) and step == 1:
            return x  # the whole batch
        raise Skip("slicing the batch dimension")
    if step < 1:
        raise Skip(f"slice step {step}")
    return _slices(imp, node, x, {dim: (start or 0, end, step)})


Rule = tuple[str, Callable, bool]  # (signature, mapping function, works in place)

_CALL_RULES: dict[Any, Rule] = {}


def _reg(keys, sig: str, fn: Callable, inplace: bool = False) -> None:
    for k in keys:
        _CALL_RULES[k] = (sig, fn, inplace)


_reg([F.conv2d], "conv2d", _conv)
_reg([F.linear], "linear", _linear)
_reg([F.batch_norm], "batch_norm", _batch_norm)
_reg([F.relu, torch.relu, ("method", "relu")], "unary", _unary("relu"))
_reg([torch.relu_, F.relu_, ("method", "relu_")], "unary", _unary("relu"), inplace=True)
_reg([F.relu6], "relu6", _unary("relu6"))
_reg([F.hardtanh], "hardtanh", _hardtanh)
_reg([F.hardtanh_], "hardtanh", _hardtanh, inplace=True)
_reg([F.leaky_relu], "leaky_relu", _leaky_relu)
_reg([F.leaky_relu_], "leaky_relu", _leaky_relu, inplace=True)
_reg([F.gelu], "gelu", _gelu)
_reg([F.elu], "elu", _elu)
_reg([F.elu_], "elu", _elu, inplace=True)
_reg([operator.neg, torch.neg, torch.negative, ("method", "neg"), ("method", "negative")], "unary", _unary("neg"))
_reg([torch.neg_, ("method", "neg_"), ("method", "negative_")], "unary", _unary("neg"), inplace=True)
_reg([operator.sub, torch.sub, torch.subtract, ("method", "sub"), ("method", "subtract")], "binary", _binary("sub"))
_reg([operator.isub, ("method", "sub_"), ("method", "subtract_")], "binary", _binary("sub"), inplace=True)
_reg([operator.truediv, torch.div, torch.divide, torch.true_divide, ("method", "div"), ("method", "divide"),
      ("method", "true_divide")], "div", _div)
_reg([operator.itruediv, ("method", "div_"), ("method", "divide_"), ("method", "true_divide_")], "div", _div,
     inplace=True)
_reg([F.pad], "pad", _pad)
_reg([torch.split], "split", _split)
_reg([("method", "split")], "split_method", _split)
_reg([torch.chunk, ("method", "chunk")], "chunk", _split)
_reg([F.hardswish], "unary", _unary("hardswish"))
_reg([F.hardsigmoid], "unary", _unary("hardsigmoid"))
_reg([F.silu], "unary", _unary("silu"))
_reg([torch.sigmoid, F.sigmoid, ("method", "sigmoid")], "unary", _unary("sigmoid"))
_reg([torch.tanh, F.tanh, ("method", "tanh")], "unary", _unary("tanh"))
_reg([("method", "sigmoid_")], "unary", _unary("sigmoid"), inplace=True)
_reg([("method", "tanh_")], "unary", _unary("tanh"), inplace=True)
_reg([F.max_pool2d, torch.max_pool2d], "max_pool2d", _max_pool)
_reg([F.avg_pool2d], "avg_pool2d", _avg_pool)
_reg([F.adaptive_avg_pool2d], "adaptive_avg_pool2d", _adaptive)
_reg([torch.mean, ("method", "mean")], "mean", _reduce("mean"))
_reg([torch.sum, ("method", "sum")], "sum", _reduce("sum"))
_reg([F.interpolate, F.upsample], "interpolate", _interpolate)
_reg([F.conv1d], "conv1d", _conv1d)
_reg([F.softmax], "softmax", _softmax("softmax"))
_reg([F.log_softmax], "softmax", _softmax("log_softmax"))
_reg([torch.softmax, ("method", "softmax")], "softmax_method", _softmax("softmax"))
_reg([torch.log_softmax, ("method", "log_softmax")], "softmax_method", _softmax("log_softmax"))
_reg([operator.matmul, torch.matmul, torch.bmm, ("method", "matmul"), ("method", "bmm")], "matmul", _matmul)
_reg([torch.flatten], "flatten", _flatten)
_reg([("method", "flatten")], "tensor_flatten", _flatten)
_reg([torch.reshape], "reshape", _reshape)
_reg([("method", "view"), ("method", "reshape")], "view", _reshape)  # x.view(a, b) and x.view((a, b))
_reg([operator.add, torch.add, ("method", "add")], "binary", _binary("add"))
_reg([operator.iadd, ("method", "add_")], "binary", _binary("add"), inplace=True)
_reg([operator.mul, torch.mul, ("method", "mul")], "binary", _binary("mul"))
_reg([operator.imul, ("method", "mul_")], "binary", _binary("mul"), inplace=True)
_reg([torch.cat, torch.concat, torch.concatenate], "cat", _cat)
_reg([F.dropout], "dropout", _dropout)
_reg([("method", "contiguous"), ("method", "clone")], "identity", _alias)
_reg([operator.getitem], "getitem", _getitem)
_reg([torch.narrow, ("method", "narrow")], "narrow", _narrow)
_reg([("method", "expand")], "expand", _expand)
_reg([torch.permute], "permute", _permute)
_reg([("method", "permute")], "permute_method", _permute)
_reg([torch.transpose, torch.swapaxes, torch.swapdims, ("method", "transpose"), ("method", "swapaxes"),
      ("method", "swapdims")], "transpose", _transpose)
_reg([torch.unflatten, ("method", "unflatten")], "unflatten", _unflatten)
_reg([torch.squeeze, ("method", "squeeze")], "squeeze", _squeeze)
_reg([torch.unsqueeze, ("method", "unsqueeze")], "unsqueeze", _unsqueeze)
_reg([F.channel_shuffle, torch.channel_shuffle, torch.native_channel_shuffle], "channel_shuffle", _channel_shuffle)
_reg([F.layer_norm, torch.layer_norm], "layer_norm", _layer_norm)


# archir's own lowering helpers (archir.lower.modules), kept as calls by the tracer: a graph lowered
# with to_fx imports back op for op
def _zero(imp, node, kw):
    x = _act(kw, "x")
    return _result(imp, node, imp.add(node, "zero", [x.id], stride=int(kw["stride"])))


def _stop_forward(imp, node, kw):
    x = _act(kw, "x")
    return _result(imp, node, imp.add(node, "stop_forward", [x.id]))


def _detach(imp, node, kw):
    x = _act(kw)
    return _result(imp, node, imp.add(node, "stop_gradient", [x.id]))


_reg([zero], "zero", _zero)
_reg([stop_forward], "stop_forward", _stop_forward)
_reg([("method", "detach")], "identity", _detach)

# aten op name -> rule; arguments bind through the op's schema (torch.export graphs)
_ATEN_RULES: dict[str, Rule] = {
    "conv2d": ("", _conv, False), "convolution": ("", _conv, False), "linear": ("", _linear, False),
    "batch_norm": ("", _batch_norm, False),
    "relu": ("", _unary("relu"), False), "relu_": ("", _unary("relu"), True),
    "hardtanh": ("", _hardtanh, False), "hardtanh_": ("", _hardtanh, True),
    "leaky_relu": ("", _leaky_relu, False), "leaky_relu_": ("", _leaky_relu, True),
    "gelu": ("", _gelu, False), "elu": ("", _elu, False), "elu_": ("", _elu, True),
    "neg": ("", _unary("neg"), False), "neg_": ("", _unary("neg"), True),
    "sub": ("", _binary("sub"), False), "sub_": ("", _binary("sub"), True),
    "div": ("", _div, False), "div_": ("", _div, True),
    "pad": ("", _pad, False),
    "constant_pad_nd": ("", lambda imp, node, kw: _pad(imp, node, kw, "constant"), False),
    "reflection_pad2d": ("", lambda imp, node, kw: _pad(imp, node, {**kw, "pad": kw["padding"]}, "reflect"), False),
    "replication_pad2d": ("", lambda imp, node, kw: _pad(imp, node, {**kw, "pad": kw["padding"]}, "replicate"),
                          False),
    "split": ("", _split, False), "split_with_sizes": ("", _split, False), "chunk": ("", _split, False),
    "hardswish": ("", _unary("hardswish"), False), "hardswish_": ("", _unary("hardswish"), True),
    "hardsigmoid": ("", _unary("hardsigmoid"), False), "hardsigmoid_": ("", _unary("hardsigmoid"), True),
    "silu": ("", _unary("silu"), False), "silu_": ("", _unary("silu"), True),
    "sigmoid": ("", _unary("sigmoid"), False), "tanh": ("", _unary("tanh"), False),
    "max_pool2d": ("", _max_pool, False), "avg_pool2d": ("", _avg_pool, False),
    "adaptive_avg_pool2d": ("", _adaptive, False), "mean": ("", _reduce("mean"), False),
    "sum": ("", _reduce("sum"), False), "conv1d": ("", _conv1d, False),
    "upsample_nearest2d": ("", _aten_upsample("nearest"), False),
    "upsample_bilinear2d": ("", _aten_upsample("bilinear"), False),
    "_softmax": ("", _softmax("softmax"), False), "softmax": ("", _softmax("softmax"), False),
    "_log_softmax": ("", _softmax("log_softmax"), False), "log_softmax": ("", _softmax("log_softmax"), False),
    "matmul": ("", _matmul, False), "bmm": ("", _matmul, False),
    "flatten": ("", _flatten, False), "view": ("", _reshape, False), "reshape": ("", _reshape, False),
    "add": ("", _binary("add"), False), "add_": ("", _binary("add"), True),
    "mul": ("", _binary("mul"), False), "mul_": ("", _binary("mul"), True),
    "cat": ("", _cat, False), "concat": ("", _cat, False),
    "dropout": ("", lambda imp, node, kw: _dropout(imp, node, kw), False),
    "narrow": ("", _narrow, False), "slice": ("", _aten_slice, False),
    "clone": ("", _alias, False), "contiguous": ("", _alias, False), "alias": ("", _alias, False),
    "permute": ("", _permute, False), "transpose": ("", _transpose, False),
    "_unsafe_view": ("", _reshape, False), "unflatten": ("", _unflatten, False),
    "squeeze": ("", _squeeze, False), "unsqueeze": ("", _unsqueeze, False),
    "channel_shuffle": ("", _channel_shuffle, False), "native_channel_shuffle": ("", _channel_shuffle, False),
    "layer_norm": ("", _layer_norm, False),
}


# ----------------------------------------------------------------- modules

def _m_conv(imp, node, m: nn.Conv2d, args, kwargs):
    x = args[0] if args else kwargs.get("input")
    padding = m.padding if isinstance(m.padding, str) else list(m.padding)
    if m.padding_mode != "zeros":
        # torch pads first (F.pad(x, reversed padding repeated twice, mode)), then convolves unpadded
        if m.padding_mode not in ("reflect", "replicate"):
            raise Skip(f"padding_mode={m.padding_mode!r} (archir pads with zeros, reflect or replicate)")
        x = _act({"input": x})
        _rank4(x, "conv2d")
        pads = [int(p) for p in m._reversed_padding_repeated_twice]  # [left, right, top, bottom]
        pid = imp.add(node, "pad", [x.id], name=f"{node.target}.pad", pads=pads, mode=m.padding_mode)
        x = _Act(pid, x.shape[:2] + (x.shape[2] + pads[2] + pads[3], x.shape[3] + pads[0] + pads[1]))
        padding = [0, 0]
    return _conv(imp, node, {"input": x, "weight": m.weight, "bias": m.bias, "stride": list(m.stride),
                             "padding": padding, "dilation": list(m.dilation), "groups": m.groups})


def _m_conv1d(imp, node, m: nn.Conv1d, args, kwargs):
    if m.padding_mode != "zeros":
        raise Skip(f"Conv1d padding_mode={m.padding_mode!r} (archir's conv1d pads with zeros)")
    padding = m.padding if isinstance(m.padding, str) else list(m.padding)
    return _conv1d(imp, node, {"input": args[0] if args else kwargs.get("input"), "weight": m.weight,
                               "bias": m.bias, "stride": list(m.stride), "padding": padding,
                               "dilation": list(m.dilation), "groups": m.groups})


def _m_upsample(imp, node, m: nn.Upsample, args, kwargs):
    return _interpolate(imp, node, {"input": args[0] if args else kwargs.get("input"), "size": m.size,
                                    "scale_factor": m.scale_factor, "mode": m.mode,
                                    "align_corners": m.align_corners,
                                    "recompute_scale_factor": getattr(m, "recompute_scale_factor", None)})


def _m_softmax(op: str):
    def rule(imp, node, m, args, kwargs):
        return _softmax(op)(imp, node, {"input": args[0] if args else kwargs.get("input"), "dim": m.dim})

    return rule


def _m_linear(imp, node, m: nn.Linear, args, kwargs):
    return _linear(imp, node, {"input": args[0] if args else kwargs.get("input"), "weight": m.weight, "bias": m.bias})


def _m_bn(imp, node, m: nn.BatchNorm2d, args, kwargs):
    training = not m.track_running_stats or m.running_mean is None
    return _batch_norm(imp, node, {"input": args[0] if args else kwargs.get("input"), "running_mean": m.running_mean,
                                   "running_var": m.running_var, "weight": m.weight, "bias": m.bias,
                                   "training": training, "momentum": m.momentum, "eps": m.eps})


def _m_unary(op: str):
    def rule(imp, node, m, args, kwargs):
        if getattr(m, "inplace", False):
            imp.check_inplace(node)
        return _unary(op)(imp, node, {"input": args[0] if args else kwargs.get("input")})

    return rule


def _m_hardtanh(imp, node, m: nn.Hardtanh, args, kwargs):
    if m.inplace:
        imp.check_inplace(node)
    return _hardtanh(imp, node, {"input": args[0], "min_val": m.min_val, "max_val": m.max_val})


def _m_leaky_relu(imp, node, m: nn.LeakyReLU, args, kwargs):
    if m.inplace:
        imp.check_inplace(node)
    return _leaky_relu(imp, node, {"input": args[0] if args else kwargs.get("input"),
                                   "negative_slope": m.negative_slope})


def _m_gelu(imp, node, m: nn.GELU, args, kwargs):
    return _gelu(imp, node, {"input": args[0] if args else kwargs.get("input"), "approximate": m.approximate})


def _m_elu(imp, node, m: nn.ELU, args, kwargs):
    if m.inplace:
        imp.check_inplace(node)
    return _elu(imp, node, {"input": args[0] if args else kwargs.get("input"), "alpha": m.alpha})


def _m_pad(mode: str):
    def rule(imp, node, m, args, kwargs):
        return _pad(imp, node, {"input": args[0] if args else kwargs.get("input"), "pad": list(m.padding),
                                "value": getattr(m, "value", None)}, mode)

    return rule


def _m_identity(imp, node, m, args, kwargs):
    return _act({"input": args[0] if args else kwargs.get("input")})


def _m_dropout(imp, node, m: nn.Dropout, args, kwargs):
    return _dropout(imp, node, {"input": args[0], "p": m.p})


def _m_maxpool(imp, node, m: nn.MaxPool2d, args, kwargs):
    return _max_pool(imp, node, {"input": args[0], "kernel_size": m.kernel_size, "stride": m.stride,
                                 "padding": m.padding, "dilation": m.dilation, "ceil_mode": m.ceil_mode,
                                 "return_indices": m.return_indices})


def _m_avgpool(imp, node, m: nn.AvgPool2d, args, kwargs):
    return _avg_pool(imp, node, {"input": args[0], "kernel_size": m.kernel_size, "stride": m.stride,
                                 "padding": m.padding, "ceil_mode": m.ceil_mode,
                                 "count_include_pad": m.count_include_pad, "divisor_override": m.divisor_override})


def _m_adaptive(imp, node, m: nn.AdaptiveAvgPool2d, args, kwargs):
    return _adaptive(imp, node, {"input": args[0], "output_size": m.output_size})


def _m_flatten(imp, node, m: nn.Flatten, args, kwargs):
    return _flatten(imp, node, {"input": args[0], "start_dim": m.start_dim, "end_dim": m.end_dim})


def _m_layer_norm(imp, node, m: nn.LayerNorm, args, kwargs):
    x = args[0] if args else kwargs.get("input")
    if isinstance(m, LayerNorm2d):  # archir's own lowering of layernorm(axis="channels")
        x = _act({"input": x})
        _rank4(x, "LayerNorm2d")
        nid = imp.add(node, "layernorm", [x.id], params={k: v for k, v in (("weight", m.weight), ("bias", m.bias))
                                                         if v is not None},
                      axis="channels", eps=float(m.eps), affine=m.weight is not None, bias=m.bias is not None)
        return _result(imp, node, nid)
    if type(m) is not nn.LayerNorm:
        raise Skip(f"{type(m).__name__} subclasses nn.LayerNorm with its own forward; archir maps nn.LayerNorm")
    return _layer_norm(imp, node, {"input": x, "normalized_shape": list(m.normalized_shape), "weight": m.weight,
                                   "bias": m.bias, "eps": m.eps})


def _m_channel_shuffle(imp, node, m: nn.ChannelShuffle, args, kwargs):
    return _channel_shuffle(imp, node, {"input": args[0] if args else kwargs.get("input"), "groups": m.groups})


def _m_scale(imp, node, m: Scale, args, kwargs):
    x = _act({"input": args[0] if args else kwargs.get("x")})
    return _result(imp, node, imp.add(node, "scale", [x.id], params={"weight": m.weight}))


def _m_attention(imp, node, m: nn.Module, args, kwargs):
    """``nn.MultiheadAttention(batch_first=True)(x, x, x, need_weights=False)`` (torchvision's ViT) as one
    ``attention`` node; its ``(attn_output, None)`` result is indexed by the caller. archir's own
    ``SelfAttention`` (to_fx's lowering) maps back too."""
    if isinstance(m, SelfAttention):
        x = _act({"input": args[0] if args else kwargs.get("x")})
        params = {k: v for k, v in m.named_parameters()}
        return _result(imp, node, imp.add(node, "attention", [x.id], params=params, num_heads=m.num_heads,
                                          bias=m.in_proj_bias is not None, dropout=float(m.dropout)))
    names = ["query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
             "is_causal"]
    if len(args) > len(names):
        raise Skip(f"MultiheadAttention takes at most {len(names)} arguments, got {len(args)}")
    kw = {"key_padding_mask": None, "need_weights": True, "attn_mask": None, "average_attn_weights": True,
          "is_causal": False, **dict(zip(names, args)), **kwargs}
    q = _act(kw, "query")
    if kw.get("key") is not q or kw.get("value") is not q:
        raise Skip("cross-attention (query, key and value differ); archir's attention is self-attention "
                   "(mha(x, x, x))")
    if kw["key_padding_mask"] is not None or kw["attn_mask"] is not None or kw["is_causal"]:
        raise Skip("MultiheadAttention with a mask; archir's attention attends to every token")
    if kw["need_weights"] is not False:
        raise Skip("MultiheadAttention with need_weights=True returns the attention weights, which archir does "
                   "not compute; pass need_weights=False (as torchvision's ViT does)")
    if not m.batch_first:
        raise Skip("MultiheadAttention(batch_first=False) takes (L, N, E) tokens, batch second; archir keeps the "
                   "batch first: use batch_first=True")
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        raise Skip("MultiheadAttention with kdim/vdim, add_bias_kv or add_zero_attn; archir's attention has one "
                   "in_proj_weight (3E, E) and no extra key/value biases")
    if len(q.shape) != 3 or q.shape[2] != m.embed_dim:
        raise Skip(f"MultiheadAttention on {q.shape}; archir's attention takes (N, L, E) tokens with E = "
                   f"{m.embed_dim}")
    bias = m.in_proj_bias is not None
    if bias != (m.out_proj.bias is not None):
        raise Skip("MultiheadAttention with a bias on only one of in_proj and out_proj")
    params = {"in_proj_weight": m.in_proj_weight, "out_proj_weight": m.out_proj.weight}
    if bias:
        params.update(in_proj_bias=m.in_proj_bias, out_proj_bias=m.out_proj.bias)
    nid = imp.add(node, "attention", [q.id], params=params, num_heads=m.num_heads, bias=bias, dropout=float(m.dropout))
    if imp.dry:
        return _Outputs([_Act("", q.shape), None], ["", "the attention weights (need_weights=False)"])
    ir = imp.g.node(nid).type.shape
    return _Outputs([_Act(nid, (q.shape[0], *ir)), None], ["", "the attention weights (need_weights=False)"])


def _m_learned(imp, node, m: LearnedTensor, args, kwargs):
    ref = _act({"input": args[0] if args else kwargs.get("ref")})
    return _result(imp, node, imp.add(node, "param", [ref.id], params={"value": m.value},
                                      shape=list(m.value.shape)))


# ---- maxvit


def _m_rel_attention(imp, node, m: nn.Module, args, kwargs):
    """torchvision's MaxViT ``RelativePositionalMultiHeadAttention`` on ``(N, G, P, E)`` windows as one
    ``rel_attention`` node (weights ``to_qkv``, ``merge``, ``relative_position_bias_table``); its
    ``relative_position_index`` buffer must equal the index archir rebuilds from the window size, and its
    ``scale_factor`` is kept. archir's own ``RelPosAttention`` (to_fx's lowering) maps back too."""
    from archir.ops import relative_position_index

    x = _act({"input": args[0] if args else kwargs.get("x")})
    if isinstance(m, RelPosAttention):
        e = m.qkv_weight.shape[1]
        scale = None if m.scale == e ** -0.5 else m.scale
        return _result(imp, node, imp.add(node, "rel_attention", [x.id], params=dict(m.named_parameters()),
                                          num_heads=m.num_heads, window=list(m.window), scale=scale))
    e, heads, side = m.to_qkv.in_features, m.n_heads, m.size
    if len(x.shape) != 4 or x.shape[3] != e or x.shape[2] != side * side:
        raise Skip(f"RelativePositionalMultiHeadAttention on {x.shape}; it takes (N, G, P, E) windows with "
                   f"P = {side}*{side} tokens of E = {e} features")
    if m.max_seq_len != side * side or heads * m.head_dim != e or m.to_qkv.out_features != 3 * e or \
            m.merge.in_features != e or m.merge.out_features != e:
        raise Skip(f"RelativePositionalMultiHeadAttention with max_seq_len={m.max_seq_len}, {heads} heads of "
                   f"{m.head_dim}, to_qkv {m.to_qkv.in_features}->{m.to_qkv.out_features} and merge "
                   f"{m.merge.in_features}->{m.merge.out_features}: archir's rel_attention has a square window "
                   "of side**2 tokens, heads * head_dim = E, to_qkv E->3E and merge E->E")
    if m.to_qkv.bias is None or m.merge.bias is None:
        raise Skip("RelativePositionalMultiHeadAttention without a bias on to_qkv or merge; archir's rel_attention "
                   "has both (as torchvision builds them)")
    want = relative_position_index(side, side)
    got = m.relative_position_index
    if tuple(got.shape) != want.shape or not np.array_equal(got.detach().cpu().numpy(), want):
        raise Skip(f"its relative_position_index buffer is not torchvision's index of a {side}x{side} window, which "
                   "archir rebuilds from the window size; archir does not store a custom index")
    table = m.relative_position_bias_table
    if tuple(table.shape) != ((2 * side - 1) ** 2, heads):
        raise Skip(f"relative_position_bias_table of shape {tuple(table.shape)}; a {side}x{side} window with "
                   f"{heads} heads has ({(2 * side - 1) ** 2}, {heads})")
    scale = float(m.scale_factor)
    params = {"qkv_weight": m.to_qkv.weight, "qkv_bias": m.to_qkv.bias, "merge_weight": m.merge.weight,
              "merge_bias": m.merge.bias, "bias_table": table}
    return _result(imp, node, imp.add(node, "rel_attention", [x.id], params=params, num_heads=heads,
                                      window=side, scale=None if scale == e ** -0.5 else scale))
# ---- swin: torchvision's Swin Transformer (V1 and V2). torchvision.models.swin_transformer is matched by name
# (archir does not import torchvision): its ShiftedWindowAttention(V2) modules are traced as leaves (one
# window_attention(_v2) node each), and its fx-wrapped _patch_merging_pad is one call, mapped onto pad / slice / concat.

_SWIN = "torchvision.models.swin_transformer"


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', ''))}"


def _m_window_attention(imp, node, m: nn.Module, args, kwargs):
    """torchvision's ``ShiftedWindowAttention`` / ``ShiftedWindowAttentionV2`` (and archir's own
    ``WindowAttention`` / ``WindowAttentionV2``, to_fx's lowerings) as one ``window_attention`` /
    ``window_attention_v2`` node. The module's ``relative_position_index`` (and V2's ``relative_coords_table``)
    buffer must be what the op rebuilds from the window size (it is, unless changed by hand), and V2's
    ``cpb_mlp`` torchvision's ``Linear(2, hidden) -> ReLU -> Linear(hidden, heads, bias=False)``."""
    x = _act({"input": args[0] if args else kwargs.get("x")})
    if len(x.shape) != 4:
        raise Skip(f"window attention on {x.shape}; archir's window_attention takes (N, H, W, C) maps")
    v2 = isinstance(m, WindowAttentionV2) or _qualname(type(m)) == f"{_SWIN}.ShiftedWindowAttentionV2"
    extra: dict[str, Any] = {}
    if isinstance(m, WindowAttention):
        params = dict(m.named_parameters())
        qkv_bias, proj_bias = m.qkv_bias is not None, m.proj_bias is not None
        if v2:
            extra["cpb_hidden"] = int(m.cpb_fc1_weight.shape[0])
    else:
        from archir.ops import relative_position_index, window_coords_table

        if len(m.window_size) != 2 or len(m.shift_size) != 2:
            raise Skip(f"window_size={m.window_size}, shift_size={m.shift_size}: archir's windows are 2-d")
        index = m.relative_position_index
        if not torch.equal(index.detach().cpu().reshape(-1).long(),
                           torch.as_tensor(relative_position_index(*m.window_size).reshape(-1))):
            raise Skip("its relative_position_index buffer is not the index torchvision builds for window_size "
                       f"{list(m.window_size)}; archir rebuilds that index (it does not store one)")
        qkv_bias, proj_bias = m.qkv.bias is not None, m.proj.bias is not None
        params = {"qkv_weight": m.qkv.weight, "proj_weight": m.proj.weight}
        if v2:
            if min(m.window_size) < 2 or not torch.equal(
                    m.relative_coords_table.detach().cpu().reshape(-1),
                    torch.as_tensor(window_coords_table(*m.window_size)).reshape(-1)):
                raise Skip("its relative_coords_table buffer is not the table torchvision builds for window_size "
                           f"{list(m.window_size)}; archir rebuilds that table (it does not store one)")
            mlp = list(m.cpb_mlp.children()) if isinstance(m.cpb_mlp, nn.Sequential) else []
            if len(mlp) != 3 or type(mlp[0]) is not nn.Linear or type(mlp[1]) is not nn.ReLU or \
                    type(mlp[2]) is not nn.Linear or mlp[0].in_features != 2 or mlp[0].bias is None or \
                    mlp[2].bias is not None or mlp[2].out_features != m.num_heads:
                raise Skip("its cpb_mlp is not torchvision's Linear(2, hidden) -> ReLU -> Linear(hidden, heads, "
                           "bias=False)")
            params.update(logit_scale=m.logit_scale, cpb_fc1_weight=mlp[0].weight, cpb_fc1_bias=mlp[0].bias,
                          cpb_fc2_weight=mlp[2].weight)
            extra["cpb_hidden"] = int(mlp[0].out_features)
        else:
            params["relative_position_bias_table"] = m.relative_position_bias_table
        if qkv_bias:
            params["qkv_bias"] = m.qkv.bias
        if proj_bias:
            params["proj_bias"] = m.proj.bias
    nid = imp.add(node, "window_attention_v2" if v2 else "window_attention", [x.id], params=params,
                  window_size=[int(v) for v in m.window_size], shift_size=[int(v) for v in m.shift_size],
                  num_heads=int(m.num_heads), qkv_bias=qkv_bias, proj_bias=proj_bias,
                  attention_dropout=float(m.attention_dropout), dropout=float(m.dropout), **extra)
    return _result(imp, node, nid)


def _patch_merging_pad(imp, node, kw):
    """torchvision's ``_patch_merging_pad`` on ``(N, H, W, C)``: zero-pad H and W to even sizes (a ``pad`` between
    ``permute``s: archir's pad works on (C, H, W)), then ``concat([x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2],
    x[1::2, 1::2]], -1)`` as ``slice``s (rows first, then columns) and a ``concat`` on the channels."""
    x = _act(kw)
    if len(x.shape) != 4:
        raise Skip(f"_patch_merging_pad of {x.shape}; archir maps it on (N, H, W, C) maps")
    _, h, w, _ = x.shape
    nid = x.id
    if h % 2 or w % 2:
        nid = imp.add(node, "permute", [nid], dims=[2, 0, 1])
        nid = imp.add(node, "pad", [nid], pads=[0, w % 2, 0, h % 2], mode="constant", value=0.0)
        nid = imp.add(node, "permute", [nid], dims=[1, 2, 0])
    rows = [imp.add(node, "slice", [nid], dim=1, start=r, end=None, step=2) for r in (0, 1)]
    parts = [imp.add(node, "slice", [rows[r]], dim=2, start=col, end=None, step=2) for col, r in
             ((0, 0), (0, 1), (1, 0), (1, 1))]
    return _result(imp, node, imp.add(node, "concat", parts, dim=-1))


#: torchvision functions and modules (Swin's, MaxViT's attention), by qualified name
_NAMED_CALL_RULES: dict[str, Rule] = {f"{_SWIN}._patch_merging_pad": ("identity", _patch_merging_pad, False)}
_NAMED_MODULE_RULES: dict[str, Callable] = {
    "torchvision.models.maxvit.RelativePositionalMultiHeadAttention": _m_rel_attention,  # maxvit
    f"{_SWIN}.ShiftedWindowAttention": _m_window_attention, f"{_SWIN}.ShiftedWindowAttentionV2": _m_window_attention}


_MODULE_RULES: dict[type, Callable] = {
    nn.MultiheadAttention: _m_attention, SelfAttention: _m_attention, LearnedTensor: _m_learned,
    RelPosAttention: _m_rel_attention,  # maxvit (torchvision's own class: by name, _NAMED_MODULE_RULES)
    WindowAttention: _m_window_attention, WindowAttentionV2: _m_window_attention,  # swin
    Scale: _m_scale,
    nn.Conv2d: _m_conv, nn.Linear: _m_linear, nn.BatchNorm2d: _m_bn,
    nn.ReLU: _m_unary("relu"), nn.ReLU6: _m_unary("relu6"), nn.Sigmoid: _m_unary("sigmoid"),
    nn.Hardswish: _m_unary("hardswish"), nn.Hardsigmoid: _m_unary("hardsigmoid"), nn.SiLU: _m_unary("silu"),
    nn.Tanh: _m_unary("tanh"), nn.Hardtanh: _m_hardtanh, nn.Identity: _m_identity, nn.Dropout: _m_dropout,
    nn.MaxPool2d: _m_maxpool, nn.AvgPool2d: _m_avgpool, nn.AdaptiveAvgPool2d: _m_adaptive, nn.Flatten: _m_flatten,
    nn.LeakyReLU: _m_leaky_relu, nn.GELU: _m_gelu, nn.ELU: _m_elu,
    nn.ZeroPad2d: _m_pad("constant"), nn.ConstantPad2d: _m_pad("constant"), nn.ReflectionPad2d: _m_pad("reflect"),
    nn.ReplicationPad2d: _m_pad("replicate"),
    # nn.UpsamplingNearest2d / UpsamplingBilinear2d (align_corners=True) are nn.Upsample subclasses
    nn.Conv1d: _m_conv1d, nn.Upsample: _m_upsample, nn.Softmax: _m_softmax("softmax"),
    nn.LogSoftmax: _m_softmax("log_softmax"),
    nn.LayerNorm: _m_layer_norm, nn.ChannelShuffle: _m_channel_shuffle,
}


def _module_rule(mod: nn.Module) -> Callable | None:
    """The rule of a module: by its exact type, or torchvision's by qualified name (``_NAMED_MODULE_RULES``: archir
    does not import torchvision), else by a base class."""
    rule = _MODULE_RULES.get(type(mod)) or _NAMED_MODULE_RULES.get(_qualname(type(mod)))
    if rule is None:
        rule = next((r for cls, r in _MODULE_RULES.items() if isinstance(mod, cls)), None)
    return rule


# --------------------------------------------------------------------------- tracing


class _Recorder(fx.Interpreter):
    """Runs the traced module once and records each value's shape (or that it is not a tensor)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.info: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.info[n] = tuple(out.shape)
        elif isinstance(out, (list, tuple)) and out and all(isinstance(o, torch.Tensor) for o in out):
            self.info[n] = "tensors"
        else:
            self.info[n] = "python"
        return out


class _Tracer(fx.Tracer):
    """fx's tracer, keeping archir's own lowering modules and helpers as single calls."""

    def __init__(self) -> None:
        super().__init__(autowrap_functions=(zero, stop_forward))

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (Scale, LayerNorm2d, LearnedTensor, SelfAttention, RelPosAttention, WindowAttention)) or \
            _qualname(type(m)) in _NAMED_MODULE_RULES or super().is_leaf_module(m, qualname)


def _trace_fx(module: nn.Module) -> fx.GraphModule:
    tracer = _Tracer()
    tracer.record_stack_traces = True
    graph = tracer.trace(module)
    return fx.GraphModule(tracer.root, graph, module.__class__.__name__)


def _trace_export(module: nn.Module, inputs: tuple) -> fx.GraphModule:
    ep = torch.export.export(module, inputs)
    gm = ep.module()
    # input guards and assertions compute nothing the network returns
    for n in list(gm.graph.nodes):
        if (n.op == "call_module" and str(n.target).startswith("_guards")) or (
                n.op == "call_function" and "assert" in str(getattr(n.target, "__name__", n.target))):
            if not n.users:
                gm.graph.erase_node(n)
    gm.recompile()
    return gm


def _inputs(example_inputs) -> tuple[torch.Tensor, ...]:
    xs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    if not isinstance(xs, (tuple, list)) or not xs:
        raise FrontendError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}",
                            rule="from_torch", hint="pass e.g. torch.randn(1, 3, 224, 224)")
    out = []
    for i, x in enumerate(xs):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
            raise FrontendError(f"example input {i} must be a floating-point tensor with a batch dimension, got "
                                f"{type(x).__name__}{tuple(x.shape) if isinstance(x, torch.Tensor) else ''}",
                                rule="from_torch", hint="pass a (N, C, H, W) float tensor, e.g. torch.randn(1, 3, 224, 224)")
        out.append(x.detach().to(torch.float32))
    return tuple(out)


def _fresh(xs: tuple) -> tuple:
    """Copies of the example inputs: an in-place op on a graph input changes its copy, not the caller's
    tensor, nor the inputs of the next run."""
    return tuple(x.clone() for x in xs)


def from_torch(module: nn.Module, example_inputs, *, name: str | None = None, check: bool = True,
               atol: float = 1e-4, rtol: float = 1e-4) -> Graph:
    """Import an ``nn.Module`` as an archir graph (eval-mode semantics).

    Args:
        module: the network. Its parameters must be float32 (call ``module.float()`` first).
            It is traced in eval mode and put back in its original mode afterwards.
        example_inputs: a tensor or a tuple of tensors with a batch dimension, e.g.
            ``torch.randn(1, 3, 224, 224)``. Their shapes (batch excluded) become the graph
            inputs' shapes; the batch stays symbolic.
        name: the graph name (default: the module's class name).
        check: run ``archir.lower.to_fx`` on the result and compare it with ``module`` on
            ``example_inputs`` (eval mode); a mismatch raises.
        atol, rtol: the tolerances of that check.

    Returns:
        A validated :class:`archir.Graph` with the module's weights and BN running stats.
        Node ids follow module paths (``layer1.0.conv1``); function calls are named after the
        module they are called in (``layer1.0.add``). ``graph.meta["frontend"]`` records the
        tracer used (``"torch.fx"`` or ``"torch.export"``, with the reason fx failed) and notes
        about eval-only behaviour.

    Raises:
        UnsupportedModelError: some nodes have no IR equivalent; all are listed with module path,
            source line and reason.
        FrontendError: the inputs are not tensors, the module neither fx-traces nor exports, or
            the imported graph does not reproduce the module.

    Example:
        >>> import torchvision
        >>> g = archir.frontend.from_torch(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))  # doctest: +SKIP
        >>> g.node("layer1.0.conv1").op                                                             # doctest: +SKIP
        'conv2d'
    """
    if not isinstance(module, nn.Module):
        raise FrontendError(f"from_torch needs an nn.Module, got {type(module).__name__}", rule="from_torch",
                            hint="pass the model object (a torch.nn.Module)")
    xs = _inputs(example_inputs)
    bad = [n for n, t in list(module.named_parameters()) + list(module.named_buffers())
           if t.is_floating_point() and t.dtype != torch.float32]
    if bad:
        raise FrontendError(f"parameters/buffers {bad[:3]}{' ...' if len(bad) > 3 else ''} are not float32",
                            rule="from_torch", hint="archir weights are float32: call module.float() first")
    name = name or type(module).__name__
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        meta: dict[str, Any] = {"source": "torch"}
        try:
            gm = _trace_fx(module)
            meta["tracer"] = "torch.fx"
        except Exception as fx_err:  # noqa: BLE001 - any tracing failure falls back to torch.export
            meta["fx_error"] = f"{type(fx_err).__name__}: {str(fx_err).splitlines()[0] if str(fx_err) else ''}"
            try:
                gm = _trace_export(module, xs)
            except Exception as ex_err:  # noqa: BLE001
                raise FrontendError(
                    f"cannot trace {name}: torch.fx failed ({meta['fx_error']}) and torch.export failed "
                    f"({type(ex_err).__name__}: {(str(ex_err).splitlines() or [''])[0]})", rule="from_torch",
                    hint="make forward() traceable (no Python control flow on tensor values), or export to ONNX "
                         "and use from_onnx") from None
            meta["tracer"] = "torch.export"
        rec = _Recorder(gm)
        try:
            with torch.no_grad():
                rec.run(*_fresh(xs))
        except Exception as e:  # noqa: BLE001
            raise FrontendError(f"running {name} ({meta['tracer']} trace) on the example inputs failed: "
                                f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}", rule="from_torch",
                                hint="check that example_inputs have the shapes the model expects") from None
        imp = _Importer(gm, module, rec.info, clean_id(name).replace(".", "_"), meta["tracer"])
        outputs = imp.run()
        if imp.problems:
            raise UnsupportedModelError(name, imp.problems)
        if not outputs:
            raise FrontendError(f"{name} returns no tensor", rule="from_torch", hint="return the network's output")
        g = imp.g
        g.set_outputs(*outputs)
        fuse_layernorm2d(g)
        meta["notes"] = imp.notes
        g.meta["frontend"] = meta
        g.validate()
        if check:
            _check(g, module, xs, name, atol, rtol)
        return g
    finally:
        for m, t in modes.items():
            m.training = t


def _check(g: Graph, module: nn.Module, xs: tuple, name: str, atol: float, rtol: float) -> None:
    from archir.lower import to_fx

    gm = to_fx(g).eval()
    with torch.no_grad():
        ref = module(*_fresh(xs))
        got = gm(*_fresh(xs))
    refs = list(ref) if isinstance(ref, (tuple, list)) else [ref]
    gots = list(got) if isinstance(got, (tuple, list)) else [got]
    for i, (r, o) in enumerate(zip(refs, gots)):
        if r.shape != o.shape or not torch.allclose(o, r, atol=atol, rtol=rtol):
            err = float((o - r).abs().max()) if r.shape == o.shape else float("inf")
            raise FrontendError(
                f"the imported graph of {name} does not reproduce output {i} on the example inputs "
                f"(max abs error {err:.3g}, atol {atol:g}, rtol {rtol:g})", rule="from_torch",
                hint="this is an archir frontend bug; please report it with the model (or pass check=False)")
