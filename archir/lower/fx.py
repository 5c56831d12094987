"""Lowering to ``torch.fx``: ``to_fx`` builds a GraphModule directly from the IR (no tracing).

Ops with parameters (or train/eval behaviour) become ``call_module`` nodes whose modules
sit at the node's id as a module path (``"stem.conv"`` -> ``gm.stem.conv``), so the
GraphModule's ``state_dict`` reads like a hand-written network's. Other ops become
``call_function`` nodes on torch functions. ``sync_back`` copies trained weights back into
a graph (weight inheritance for morphism search).

Training-time constructs are lowered too: ``drop_path`` is a :class:`DropPath` module (whose rate
a trainer ramps with :func:`set_drop_path`), and a graph with auxiliary outputs gives a module
returning ``(main, aux...)`` (``gm.meta["archir_auxiliary"]``: output index -> loss weight).
``to_fx(g, training_ops=False)`` lowers ``archir.strip_training(g)``, the inference network.

Each op's lowering is registered with ``@to_fx.register("op")``.
"""

from __future__ import annotations

import keyword
import operator
import re
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from archir.errors import IRError, LoweringError
from archir.graph import Graph, Node, arch_key
from archir.ops import OpHandlers, pair, slice_range, step_inputs
from archir.lower.modules import (CHOICE_MODES, ArchSampler, ChoiceModule, DropPath, LayerNorm2d, LearnedTensor, Scale,
                                  RelPosAttention, SelfAttention, stop_forward, zero)
from archir.lower.modules import WindowAttention, WindowAttentionV2  # swin
from archir.training import auxiliary_head, auxiliary_outputs, has_training_ops, strip_training

__all__ = ["to_fx", "sync_back", "set_drop_path", "arch_parameters", "weight_parameters", "FX_HANDLERS",
           "module_path"]

FX_HANDLERS = OpHandlers("to_fx")

ARCH_ROOT = "archir_arch"
# "self" and "torch" are names the generated forward() itself uses: an input, value or module
# called so would shadow them
_RESERVED = set(dir(fx.GraphModule)) | {"graph", "_graph", "meta", "training", "code", "_code", ARCH_ROOT,
                                        "self", "torch"}


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


class _Ctx:
    def __init__(self, graph: Graph, choice_mode: str | None, decisions: dict | None, tau: float) -> None:
        self.g = graph
        self.fx = fx.Graph()
        self.root = nn.Module()
        self.paths: dict[str, str] = {}
        self.taken: set[str] = set()
        self.scopes: set[str] = set()  # every proper prefix of a taken path ("a", "a.b" of "a.b.c")
        self.choice_mode = choice_mode
        self.decisions = decisions or {}
        self.tau = tau
        self.samplers: dict[str, fx.Node] = {}
        self.arch_paths: dict[str, str] = {}
        self.n_modules = 0

    def module(self, node_id: str, mod: nn.Module) -> str:
        """Attach ``mod`` for ``node_id`` under its module path; returns the path."""
        path = module_path(node_id, self.taken, self.scopes)
        parent = self.root
        *scopes, leaf = path.split(".")
        for s in scopes:
            if not hasattr(parent, s):
                parent.add_module(s, nn.Module())
            parent = getattr(parent, s)
        parent.add_module(leaf, mod)
        self.taken.add(path)
        self.scopes.update(_prefixes(path))
        self.paths[node_id] = path
        return path


def _ident(s: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]", "_", s)
    return ("m_" + s) if (s[:1].isdigit() or keyword.iskeyword(s) or s in _RESERVED) else s


def _prefixes(path: str) -> set[str]:
    """The proper scopes of a dotted path: ``{"a", "a.b"}`` of ``"a.b.c"``."""
    parts = path.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def module_path(node_id: str, taken: set[str], scopes: set[str] | None = None) -> str:
    """The module path of a node: its id where that nests cleanly, else a flat escaped name.

    A path nests cleanly when no other module sits on one of its scopes or below it, and
    its first scope is not an attribute of ``GraphModule`` (``graph``, ``forward`` ...).
    ``scopes``: every proper prefix of the ``taken`` paths, kept by the caller as paths are
    taken (set lookups instead of a scan of ``taken`` per node); computed here when not given.
    """
    if scopes is None:
        scopes = set().union(*map(_prefixes, taken))

    def free(path: str) -> bool:  # not taken, not a scope of a taken path, no taken path among its scopes
        return path not in taken and path not in scopes and not (_prefixes(path) & taken)

    parts = node_id.split(".")
    ok = all(p not in _RESERVED and (p.isidentifier() or p.isdigit()) for p in parts)
    if ok and free(node_id):
        return node_id
    base = _ident(node_id.replace(".", "__"))
    cand, k = base, 1
    while not free(cand):
        k += 1
        cand = f"{base}_{k}"
    return cand


#: torch module class -> its subclass whose ``reset_parameters`` does nothing (see _meta_module)
_NO_INIT: dict[type, type] = {}


def _meta_module(cls, *args, **kw) -> nn.Module:
    """``cls(*args, **kw)`` with its tensors on the meta device and its ``reset_parameters`` skipped:
    the caller assigns every parameter and buffer next, so nothing is allocated or initialised only to
    be overwritten (on the meta device the init functions still cost about 2/3 of a conv's
    construction). The module is built as a subclass of ``cls`` whose ``reset_parameters`` is empty,
    then given back the public type (``type(m) is cls``): to_fx's modules are plain torch modules."""
    sub = _NO_INIT.get(cls)
    if sub is None:
        sub = _NO_INIT[cls] = type(cls.__name__, (cls,), {"reset_parameters": lambda self: None,
                                                          "__module__": cls.__module__})
    m = sub(*args, device="meta", **kw)
    m.__class__ = cls
    return m


def _load_params(m: nn.Module, node: Node) -> nn.Module:
    """Give ``m`` the node's weights as parameters under their own names (``weight``, ``bias``, ``value``,
    ``in_proj_weight``, ...: a node holds exactly the params its attrs call for, e.g. no ``bias`` when
    ``bias=False``), one copy each; returns ``m``."""
    for k, v in node.params.items():
        setattr(m, k, nn.Parameter(_tensor(v)))
    return m


# --------------------------------------------------------------------------- handlers


@FX_HANDLERS.register("conv2d", "conv1d")
def _conv(ctx: _Ctx, node: Node, args, ins):
    a = node.attrs
    cls, dims = (nn.Conv2d, pair) if node.op == "conv2d" else (nn.Conv1d, int)
    m = _meta_module(cls, ins[0].shape[0], a["out_channels"], dims(a["kernel_size"]), stride=dims(a["stride"]),
                     padding=dims(a["padding"]), dilation=dims(a["dilation"]), groups=a["groups"], bias=a["bias"])
    _load_params(m, node)
    return ctx.fx.call_module(ctx.module(node.id, m), tuple(args))


@FX_HANDLERS.register("linear")
def _linear(ctx, node, args, ins):
    a = node.attrs
    m = _load_params(_meta_module(nn.Linear, ins[0].shape[-1], a["out_features"], bias=a["bias"]), node)
    return ctx.fx.call_module(ctx.module(node.id, m), tuple(args))


@FX_HANDLERS.register("batchnorm2d")
def _bn(ctx, node, args, ins):
    a = node.attrs
    m = _meta_module(nn.BatchNorm2d, ins[0].shape[0], eps=a["eps"], momentum=a["momentum"], affine=a["affine"])
    _load_params(m, node)  # weight and bias when affine
    m.running_mean = _tensor(node.buffers["running_mean"])
    m.running_var = _tensor(node.buffers["running_var"])
    m.num_batches_tracked = torch.tensor(0, dtype=torch.long)
    return ctx.fx.call_module(ctx.module(node.id, m), tuple(args))


@FX_HANDLERS.register("scale")
def _scale(ctx, node, args, ins):
    m = _load_params(Scale(ins[0].shape[0], device="meta"), node)
    return ctx.fx.call_module(ctx.module(node.id, m), tuple(args))


@FX_HANDLERS.register("dropout")
def _dropout(ctx, node, args, ins):
    return ctx.fx.call_module(ctx.module(node.id, nn.Dropout(node.attrs["p"])), tuple(args))


@FX_HANDLERS.register("drop_path")
def _drop_path(ctx, node, args, ins):
    return ctx.fx.call_module(ctx.module(node.id, DropPath(node.attrs["p"])), tuple(args))


def _fn(target: Callable, **fixed: Any):
    def handler(ctx, node, args, ins):
        kw = {k: (v(node.attrs) if callable(v) else v) for k, v in fixed.items()}
        return ctx.fx.call_function(target, tuple(args), kw)

    return handler


for _op, _target in [("relu", torch.relu), ("relu6", F.relu6), ("sigmoid", torch.sigmoid),
                     ("hardswish", F.hardswish), ("hardsigmoid", F.hardsigmoid), ("silu", F.silu),
                     ("tanh", torch.tanh), ("stop_forward", stop_forward)]:
    FX_HANDLERS.register(_op)(_fn(_target))

FX_HANDLERS.register("leaky_relu")(_fn(F.leaky_relu, negative_slope=lambda a: a["negative_slope"]))
FX_HANDLERS.register("gelu")(_fn(F.gelu, approximate=lambda a: a["approximate"]))
FX_HANDLERS.register("elu")(_fn(F.elu, alpha=lambda a: a["alpha"]))
FX_HANDLERS.register("hardtanh")(_fn(F.hardtanh, min_val=lambda a: a["min_val"], max_val=lambda a: a["max_val"]))
FX_HANDLERS.register("neg")(_fn(operator.neg))
FX_HANDLERS.register("sub")(_fn(operator.sub))
FX_HANDLERS.register("div")(_fn(operator.truediv))
FX_HANDLERS.register("add")(_fn(operator.add))
FX_HANDLERS.register("mul")(_fn(operator.mul))
FX_HANDLERS.register("zero")(_fn(zero, stride=lambda a: a["stride"]))
FX_HANDLERS.register("global_avgpool")(_fn(F.adaptive_avg_pool2d, output_size=1))
FX_HANDLERS.register("adaptive_avgpool2d")(_fn(F.adaptive_avg_pool2d,
                                                output_size=lambda a: pair(a["output_size"])))
FX_HANDLERS.register("flatten")(_fn(torch.flatten, start_dim=lambda a: a["start_dim"]))
FX_HANDLERS.register("maxpool2d")(_fn(
    F.max_pool2d, kernel_size=lambda a: pair(a["kernel_size"]),
    stride=lambda a: pair(a["stride"] if a["stride"] is not None else a["kernel_size"]),
    padding=lambda a: pair(a["padding"]), dilation=lambda a: pair(a["dilation"]), ceil_mode=lambda a: a["ceil_mode"]))
FX_HANDLERS.register("avgpool2d")(_fn(
    F.avg_pool2d, kernel_size=lambda a: pair(a["kernel_size"]),
    stride=lambda a: pair(a["stride"] if a["stride"] is not None else a["kernel_size"]),
    padding=lambda a: pair(a["padding"]), count_include_pad=lambda a: a["count_include_pad"]))


@FX_HANDLERS.register("input")
def _input(ctx, node, args, ins):
    return ctx.fx.placeholder(_ident(node.id))


@FX_HANDLERS.register("identity", "auxiliary")
def _identity(ctx, node, args, ins):
    return args[0]  # an auxiliary output is its input's value; to_fx returns it among the outputs


@FX_HANDLERS.register("stop_gradient")
def _stop_gradient(ctx, node, args, ins):
    return ctx.fx.call_method("detach", tuple(args))


@FX_HANDLERS.register("concat")
def _concat(ctx, node, args, ins):
    return ctx.fx.call_function(torch.cat, (list(args),), {"dim": node.attrs["dim"]})


@FX_HANDLERS.register("pad")
def _pad(ctx, node, args, ins):
    a = node.attrs
    kw = {"mode": a["mode"]}
    if a["mode"] == "constant":
        kw["value"] = a["value"]
    return ctx.fx.call_function(F.pad, (args[0], list(a["pads"])), kw)


# ---- upsample / reductions / conv1d / softmax / matmul (issue 17, part B)


@FX_HANDLERS.register("upsample")
def _upsample(ctx, node, args, ins):
    a = node.attrs
    kw: dict[str, Any] = {"mode": a["mode"]}
    if a["size"] is not None:
        kw["size"] = pair(a["size"])
    else:
        kw["scale_factor"] = a["scale_factor"]
    if a["mode"] == "bilinear":
        kw["align_corners"] = a["align_corners"]
    return ctx.fx.call_function(F.interpolate, (args[0],), kw)


def _reduction(target: Callable):
    def handler(ctx, node, args, ins):
        return ctx.fx.call_function(target, (args[0],), {"dim": tuple(node.attrs["dims"]),
                                                          "keepdim": node.attrs["keepdim"]})

    return handler


FX_HANDLERS.register("mean")(_reduction(torch.mean))
FX_HANDLERS.register("sum")(_reduction(torch.sum))
FX_HANDLERS.register("softmax")(_fn(torch.softmax, dim=lambda a: a["dim"]))
FX_HANDLERS.register("log_softmax")(_fn(torch.log_softmax, dim=lambda a: a["dim"]))
FX_HANDLERS.register("matmul")(_fn(torch.matmul))


@FX_HANDLERS.register("slice")
def _slice(ctx, node, args, ins):
    ax, start, stop, step = slice_range(node.attrs, ins[0].shape, node.id)
    index = (slice(None),) * (ax + 1) + (slice(start, stop, step),)  # the batch dim, then axes before ax
    return ctx.fx.call_function(operator.getitem, (args[0], index))


# --------------------------------------------------------------------------- layout ops


@FX_HANDLERS.register("permute")
def _permute(ctx, node, args, ins):
    # materialised, as ONNX's Transpose is: a strided view of (N, H, W, C) read back as (N, C, H, W) is a
    # channels-last tensor, and torch 2.14's CPU conv2d crashes (SIGSEGV) on some channels-last inputs
    # (e.g. (2, 6, 4, 1) into a 6->6 conv; found by tests/archir/test_properties.py)
    return ctx.fx.call_method("contiguous", (ctx.fx.call_function(
        torch.permute, (args[0], [0] + [d + 1 for d in node.attrs["dims"]])),))


@FX_HANDLERS.register("reshape")
def _reshape(ctx, node, args, ins):
    return ctx.fx.call_method("reshape", (args[0], -1, *node.attrs["shape"]))  # -1: the batch


FX_HANDLERS.register("channel_shuffle")(_fn(F.channel_shuffle, groups=lambda a: a["groups"]))


@FX_HANDLERS.register("layernorm")
def _layernorm(ctx, node, args, ins):
    a = node.attrs
    cls = LayerNorm2d if a["axis"] == "channels" else nn.LayerNorm
    c = ins[0].shape[0] if a["axis"] == "channels" else ins[0].shape[-1]
    m = _load_params(_meta_module(cls, c, eps=a["eps"], elementwise_affine=a["affine"], bias=a["bias"]), node)
    return ctx.fx.call_module(ctx.module(node.id, m), tuple(args))


# ---- transformer ops (param, attention)


@FX_HANDLERS.register("param")
def _param(ctx, node, args, ins):
    m = _load_params(LearnedTensor(node.attrs["shape"], device="meta"), node)
    return ctx.fx.call_module(ctx.module(node.id, m), tuple(args))


@FX_HANDLERS.register("attention")
def _attention(ctx, node, args, ins):
    a = node.attrs
    m = _load_params(SelfAttention(ins[0].shape[-1], a["num_heads"], bias=a["bias"], dropout=a["dropout"],
                                   device="meta"), node)
    return ctx.fx.call_module(ctx.module(node.id, m), tuple(args))


# ---- maxvit


@FX_HANDLERS.register("rel_attention")
def _rel_attention(ctx, node, args, ins):
    from archir.ops import rel_attention_scale

    a, e = node.attrs, ins[0].shape[-1]
    m = _load_params(RelPosAttention(e, a["num_heads"], pair(a["window"]), rel_attention_scale(a, e), device="meta"),
                     node)
    return ctx.fx.call_module(ctx.module(node.id, m), tuple(args))


# ---- swin: window_attention


@FX_HANDLERS.register("window_attention", "window_attention_v2")
def _window_attention(ctx, node, args, ins):
    a = node.attrs
    cls, extra = (WindowAttentionV2, {"cpb_hidden": a["cpb_hidden"]}) if node.op == "window_attention_v2" else \
        (WindowAttention, {})
    m = _load_params(cls(ins[0].shape[-1], a["window_size"], a["shift_size"], a["num_heads"], qkv_bias=a["qkv_bias"],
                         proj_bias=a["proj_bias"], attention_dropout=a["attention_dropout"], dropout=a["dropout"],
                         device="meta", **extra), node)
    return ctx.fx.call_module(ctx.module(node.id, m), tuple(args))


def candidate_graph(node: Node, k: int, in_type) -> Graph:
    """Candidate ``k`` of a choice node as a small graph ``x -> s0 -> s1 ...`` with its params
    (a step with ``inputs`` reads those steps: ``-1`` is ``x``)."""
    cand = node.attrs["candidates"][k]
    sub = Graph(f"{node.id}.{cand['name']}")
    x = h = sub.input("x", in_type.shape)
    made: list[str] = []
    for j, spec in enumerate(cand["ops"]):
        attrs = {kk: v for kk, v in spec.items() if kk not in ("op", "inputs")}
        h = sub.add(spec["op"], *[x if i < 0 else made[i] for i in step_inputs(spec, j)], name=f"s{j}", **attrs)
        made.append(h)
        pre = f"{cand['name']}.{j}."
        sub.set_params(h, **{n[len(pre):]: a for n, a in node.params.items() if n.startswith(pre)})
        sub.set_buffers(h, **{n[len(pre):]: a for n, a in node.buffers.items() if n.startswith(pre)})
    sub.set_outputs(h)
    return sub


@FX_HANDLERS.register("choice")
def _choice(ctx: _Ctx, node: Node, args, ins):
    if ctx.choice_mode is None:
        raise LoweringError(
            "graph has choice nodes (a supernet)", node=node.id, rule="choice",
            hint=f"lower with to_fx(g, choice_mode=one of {list(CHOICE_MODES)}), or derive a plain graph with "
                 "archir.derive(g, decisions)")
    key = arch_key(node.id, node.attrs)
    names = [c["name"] for c in node.attrs["candidates"]]
    if key not in ctx.samplers:
        index = None
        if key in ctx.decisions:
            d = ctx.decisions[key]
            index = names.index(d) if isinstance(d, str) and d in names else d
            # like archir.derive: an index (numpy ints too, bools not) or a candidate name
            if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(names):
                raise LoweringError(f"decision {key!r} = {d!r} is not a candidate", node=node.id, rule="choice",
                                    hint=f"use an index 0..{len(names) - 1} or one of {names}")
        sampler = ArchSampler(_tensor(ctx.g.arch[key]), ctx.choice_mode, index=index, tau=ctx.tau)
        path = f"{ARCH_ROOT}.{_ident(key)}"
        while path in ctx.arch_paths.values():
            path += "_"
        if not hasattr(ctx.root, ARCH_ROOT):
            ctx.root.add_module(ARCH_ROOT, nn.Module())
        getattr(ctx.root, ARCH_ROOT).add_module(path.split(".", 1)[1], sampler)
        ctx.arch_paths[key] = path
        ctx.samplers[key] = ctx.fx.call_module(path, ())
    cands = [to_fx(candidate_graph(node, k, ins[0])) for k in range(len(names))]
    m = ChoiceModule(cands, names, single_path=ctx.choice_mode in ("sample", "fixed"))
    return ctx.fx.call_module(ctx.module(node.id, m), (args[0], ctx.samplers[key]))


# --------------------------------------------------------------------------- entry points


def to_fx(graph: Graph, choice_mode: str | None = None, *, decisions: dict | None = None,
          tau: float = 1.0, training_ops: bool = True) -> fx.GraphModule:
    """Lower ``graph`` to a trainable ``torch.fx.GraphModule``, built directly (no tracing).

    Args:
        graph: a valid graph with initialised weights.
        choice_mode: how ``choice`` nodes run: ``"softmax"`` (DARTS), ``"gumbel"`` (SNAS),
            ``"sample"`` (ENAS/PARSEC, one path per forward), ``"fixed"`` (``decisions`` or the
            argmax of the logits). ``None`` refuses supernets.
        decisions: for ``"fixed"``: decision key -> candidate index or name.
        tau: Gumbel-softmax temperature (change it later on ``gm.archir_arch.<key>.tau``).
        training_ops: lower the training-time constructs (default): ``drop_path`` as a
            :class:`~archir.lower.modules.DropPath` module (identity in eval mode; ramp it with
            :func:`set_drop_path`) and auxiliary outputs among the outputs. ``False`` lowers
            ``archir.strip_training(graph)`` instead: the inference network, main outputs only.

    Returns:
        A GraphModule taking one tensor per graph input (``(N, *shape)``), returning one
        tensor, or a tuple when the graph has several outputs. A graph with auxiliary outputs
        (``g.set_outputs(main, aux)``) returns the tuple ``(main, aux...)`` in train and eval
        mode alike (as the DARTS reference's ``logits, logits_aux = model(x)``).
        ``gm.meta["archir_modules"]`` maps node ids to module paths, ``gm.meta["archir_arch"]``
        decision keys to samplers, ``gm.meta["archir_auxiliary"]`` the index of each auxiliary
        output to its loss weight (``{}`` without any), ``gm.meta["archir_training_ops"]`` is
        ``training_ops``.

    Raises:
        IRError: the graph is invalid (validated first).
        LoweringError: the graph has choice nodes and no ``choice_mode``.

    Example:
        >>> gm = archir.lower.to_fx(g)        # doctest: +SKIP
        >>> gm.eval()(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    if choice_mode is not None and choice_mode not in CHOICE_MODES:
        raise LoweringError(f"unknown choice_mode {choice_mode!r}", rule="choice",
                            hint=f"use one of {list(CHOICE_MODES)} or None")
    if not isinstance(training_ops, bool):
        raise LoweringError(f"training_ops must be True or False, got {training_ops!r}", rule="to_fx",
                            hint="False lowers archir.strip_training(graph): no drop_path, no auxiliary outputs")
    order = graph.validated_order()  # (checked once for an unchanged graph)
    if not training_ops and has_training_ops(graph):
        graph = strip_training(graph)  # (a copy: only where there is something to strip)
        order = graph.validated_order()
    if decisions:
        keys = {arch_key(n.id, n.attrs) for n in graph.nodes("choice")}
        unknown = sorted(set(decisions) - keys)
        if unknown:  # a typo must not silently fall back to the argmax
            raise LoweringError(f"decisions name unknown decision key(s) {unknown}", rule="choice",
                                hint=f"the decision keys here are {sorted(keys)} (a tie name, else the node id)")
    ctx = _Ctx(graph, choice_mode, decisions, tau)
    env: dict[str, fx.Node] = {}
    for n in order:
        node = graph.node(n)
        if node.op == "input":
            env[n] = FX_HANDLERS.get("input", n)(ctx, node, [], [])
        else:
            args = [env[s] for s in graph.inputs_of(n)]
            handler = FX_HANDLERS.get(node.op, n)
            try:
                out = handler(ctx, node, args, graph.input_types(n))
            except IRError:
                raise
            except Exception as e:  # a handler bug must still name the node
                raise LoweringError(f"lowering {node.op} to torch.fx failed: {type(e).__name__}: {e}", node=n,
                                    rule="to_fx") from e
            if out.op != "placeholder" and "archir_id" not in out.meta:
                out.meta["archir_id"] = n
                if hasattr(out, "_rename"):  # name fx values after IR nodes: readable gm.code
                    out._rename(_ident(n))
            env[n] = out
        env[n].meta.setdefault("archir_type", node.type)
    outs = [env[o] for o in graph.outputs]
    ctx.fx.output(outs[0] if len(outs) == 1 else tuple(outs))
    gm = fx.GraphModule(ctx.root, ctx.fx, class_name=_ident(graph.name) or "ArchirModule")
    gm.meta["archir_modules"] = dict(ctx.paths)
    gm.meta["archir_arch"] = dict(ctx.arch_paths)
    gm.meta["archir_auxiliary"] = auxiliary_outputs(graph)
    gm.meta["archir_training_ops"] = training_ops
    return gm


def set_drop_path(module: nn.Module, scale: float) -> int:
    """Set the drop-path ramp of every ``drop_path`` module in ``module``: rate = ``p * scale``.

    DARTS trains its final network with ``drop_prob = p_max * epoch / epochs`` at the start of
    each epoch (``epoch`` counted from 0): call ``set_drop_path(gm, epoch / epochs)``, with
    ``p_max`` the ``p`` attr of each ``drop_path`` node. Eval mode is unaffected (the identity).

    Args:
        module: a GraphModule from :func:`to_fx` (any ``nn.Module`` holding ``DropPath`` modules).
        scale: a number in ``[0, 1]`` (1, the default of a new module, is the full ``p``).

    Returns:
        How many modules were set (0 for a graph without ``drop_path``).

    Raises:
        LoweringError: ``scale`` is not a number in ``[0, 1]``.

    Example:
        >>> for epoch in range(epochs):                          # doctest: +SKIP
        ...     archir.lower.set_drop_path(gm, epoch / epochs)
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(scale) <= 1.0:
        raise LoweringError(f"drop-path scale must be a number in [0, 1], got {scale!r}", rule="set_drop_path",
                            hint="pass epoch / epochs (DARTS' linear ramp), or 1.0 for the full p")
    k = 0
    for m in module.modules():
        if isinstance(m, DropPath):
            m.scale = float(scale)
            k += 1
    return k


def arch_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The architecture logits of a lowered supernet (for the DARTS/SNAS architecture optimiser)."""
    return [p for n, p in module.named_parameters() if n.startswith(ARCH_ROOT + ".")]


def weight_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Every parameter of a lowered graph except the architecture logits."""
    return [p for n, p in module.named_parameters() if not n.startswith(ARCH_ROOT + ".")]


def _state(module: nn.Module, path: str) -> dict[str, torch.Tensor]:
    try:
        m = module.get_submodule(path)
    except AttributeError:
        return {}
    return {k: v for k, v in m.state_dict().items() if k != "num_batches_tracked"}


def sync_back(graph: Graph, module: nn.Module) -> Graph:
    """A copy of ``graph`` carrying ``module``'s (trained) weights, buffers and arch logits.

    Args:
        graph: the graph ``module`` was lowered from.
        module: the GraphModule from ``to_fx(graph, ...)`` (possibly trained). A module lowered
            with ``training_ops=True`` carries the auxiliary head's weights too; one lowered with
            ``training_ops=False`` syncs into ``archir.strip_training(graph)``.

    Raises:
        LoweringError: the module does not match the graph (a parameter is missing or has
            another shape), naming the node.
        WeightError: a trained weight is NaN/Inf.
    """
    meta = getattr(module, "meta", None) or {}
    paths = meta.get("archir_modules")
    if paths is None:
        raise LoweringError("module carries no archir module map (gm.meta['archir_modules'])", rule="sync_back",
                            hint="pass the GraphModule that archir.lower.to_fx made from this graph")
    if meta.get("archir_training_ops") is False:
        head = [n for n in auxiliary_head(graph) if graph.node(n).params or graph.node(n).buffers]
        if head:
            raise LoweringError(f"the module was lowered with training_ops=False, so it has no auxiliary head, but "
                                f"the graph's head node(s) {head[:3]} have weights", node=head[0], rule="sync_back",
                                hint="sync into archir.strip_training(graph), or train the module that "
                                     "to_fx(graph) (training_ops=True) makes")
    new = graph.copy()
    for node in graph.nodes():
        if not node.params and not node.buffers:
            continue
        path = paths.get(node.id)
        state = _state(module, path) if path else {}
        if node.op == "choice":
            flat = {}
            for k, c in enumerate(node.attrs["candidates"]):
                for key, v in state.items():
                    pre = f"cands.{k}.s"
                    if key.startswith(pre):
                        j, name = key[len(pre):].split(".", 1)
                        flat[f"{c['name']}.{j}.{name}"] = v
            state = flat
        upd = {"params": {}, "buffers": {}}
        for kind in ("params", "buffers"):
            for name, old in getattr(node, kind).items():
                t = state.get(name)
                if t is None or tuple(t.shape) != old.shape:
                    raise LoweringError(
                        f"module has no {kind[:-1]} {name!r} of shape {old.shape} at {path!r}"
                        + ("" if t is None else f" (found shape {tuple(t.shape)})"),
                        node=node.id, rule="sync_back", hint="pass the module that to_fx made from this graph")
                upd[kind][name] = t.detach().to("cpu", torch.float32).numpy()
        new.set_params(node.id, **upd["params"])
        new.set_buffers(node.id, **upd["buffers"])
    for key, path in meta.get("archir_arch", {}).items():
        new.arch[key] = np.asarray(module.get_submodule(path).logits.detach().cpu(), dtype=np.float32).copy()
        new.arch[key].setflags(write=False)
    new.validate()
    return new


# DESIGN.md: backends register per-op handlers as @to_fx.register("op") / @to_onnx.register("op")
to_fx.register = FX_HANDLERS.register  # type: ignore[attr-defined]
