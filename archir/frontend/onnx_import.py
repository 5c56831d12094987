"""``from_onnx``: an ONNX model as an archir graph.

Reads models from ``torch.onnx.export`` and from ``archir.lower.to_onnx`` (which it maps back
op for op: a ``Gemm``/``MatMul(+Add)`` is a ``linear``, ``Sigmoid`` then ``Mul`` of the same
value is a ``silu``, the ``MatMul`` pair of an uneven adaptive pooling is an
``adaptive_avgpool2d``, and so is torch dynamo's ``Transpose -> GatherND -> Transpose -> ReduceMean``
of one whose windows have one length per axis, and its masked ``Where``/``Gather``/``Add``/``Div``
form for windows of several lengths (proved linear and probed on a basis), a per-channel
constant ``Mul`` is a ``scale``, the GELU formula (``Erf`` or ``Tanh`` form, as exporters write
it before opset 20's ``Gelu``) is a ``gelu``, torch's ``ReduceMean``/``Sub``/``Pow``/``Sqrt``/``Div`` layer norm (before opset 17's
``LayerNormalization``) is a ``layernorm``, a ``LayerNormalization`` over several trailing axes is
``reshape -> layernorm -> reshape``, a ``Clip`` with finite bounds other than ``(0, 6)`` is a
``hardtanh``, a ``Split`` is one ``slice`` per output). Small constant shape
arithmetic in the graph (torch's computed ``Pad`` pads, ``chunk`` bounds) is evaluated first.

vit-onnx: shape arithmetic fed by ``Shape`` of run-time tensors is evaluated exactly with the batch as a
symbol ``N`` (``_SymPass``): what comes out free of ``N`` is a constant, what still holds ``N`` is read only
as a ``Reshape``/``Expand`` target ``[N, *constant sizes]`` (keep the batch); nothing is folded unless exact
for every batch size. torch's exports (TorchScript and dynamo) of ``nn.MultiheadAttention(batch_first=True)``
-- its sequence-first implementation, the batch transposed to dim 1 and back -- are read as one ``attention``
node after a proof that the region computes it (``_vit_mha``: layouts of index ranges tracked through every
Transpose/Reshape/Gather, the contractions, heads, scale and weights checked), and ``Gather`` of one index of a
non-batch axis (``x[:, 0]``) is a ``slice`` (and ``flatten``).

swin-onnx: dynamo's ``as_strided`` flatten with a dynamic batch, ``Reshape [-1]`` then ``Gather`` by
``Range(0, N) * P + offsets``, is a per-sample ``reshape`` after a symbolic proof (``_PerSample``: the index as integer
polynomials in the sample index ``n`` and ``N``, equal to ``P n + i``; see ``_per_sample_flat_gather``).

Loading is safe by default:

- the file size, node count and initializer size are capped;
- external-data locations must be relative paths inside the model's folder: absolute paths,
  ``..`` components and symlinks are refused, as are data ranges past the end of a file;
- only the default ONNX domain is accepted (no custom ops, no model-local functions).

Every unsupported node is collected and reported at once in an
:class:`~archir.frontend.UnsupportedModelError`, naming the ONNX node and op type.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from archir.frontend.common import (FrontendError, IdMaker, Skip, UnsafeModelError, Unsupported, UnsupportedModelError,
                                    add_mapped, fuse_layernorm2d)
from archir.graph import Graph

__all__ = ["from_onnx", "MAX_FILE_BYTES", "MAX_NODES", "MAX_WEIGHT_BYTES"]

MAX_FILE_BYTES = 2 << 30  # protobuf's own limit
MAX_NODES = 200_000
MAX_WEIGHT_BYTES = 8 << 30


class _Bad:
    pass


_BAD = _Bad()


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _collapse_scope(name: str) -> str:
    """``/layer1/layer1.0/conv1/Conv`` (torch.onnx.export) -> ``layer1.0.conv1.conv``."""
    if "/" not in name:
        return name.replace("::", ".")
    segs = [s for s in name.split("/") if s]
    # each scope segment is a module name local to its parent, prefixed by the parent's own local
    # name when it is nested in a container (".../conv/conv.0/conv.0.0/Conv")
    path = prev = ""
    for s in segs[:-1]:
        if prev and s.startswith(prev + "."):
            path += s[len(prev):]
        else:
            path = f"{path}.{s}" if path else s
        prev = s
    leaf = segs[-1].lower() if segs else "node"
    return f"{path}.{leaf}" if path else leaf


_QUOTED = re.compile(r"'([^']*)'")


def _torch_scope(node: onnx.NodeProto, op: str) -> str | None:
    """The module path of a node from torch.onnx.export(dynamo=True)'s metadata, if it has any.

    ``name_scopes`` is ``['', 'layer1', 'layer1.0', 'layer1.0.relu', 'relu_1']`` (module paths, then
    the fx node); ``class_hierarchy`` names the module classes. A node inside a torch.nn layer is
    named after the layer (``layer1.0.relu``), a call inside a composite module after the module
    and the op (``layer1.0.add``).
    """
    meta = {e.key: e.value for e in node.metadata_props}
    scopes = _QUOTED.findall(meta.get("pkg.torch.onnx.name_scopes", ""))
    classes = _QUOTED.findall(meta.get("pkg.torch.onnx.class_hierarchy", ""))
    paths = [p for p in scopes[1:-1] if p]
    if not paths:
        return None
    leaf = len(classes) >= 2 and classes[-2].startswith("torch.nn.modules.") and ".container." not in classes[-2]
    return paths[-1] if leaf else f"{paths[-1]}.{op}"


# --------------------------------------------------------------------------- loading


def _check_external(model: onnx.ModelProto, base: Path | None, max_weight_bytes: int) -> None:
    total = 0
    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node for a in n.attribute if a.HasField("t")]
    for t in tensors:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        where = f"initializer {t.name!r}"
        if base is None:
            raise UnsafeModelError(f"{where} keeps its data in external file {loc!r}, but the model was given as "
                                   "an in-memory proto", rule="external_data",
                                   hint="pass the .onnx file's path so external data is read from its folder")
        p = Path(loc)
        if not loc or p.is_absolute() or loc.startswith(("/", "\\")) or ".." in p.parts or "\\" in loc:
            raise UnsafeModelError(f"{where}: external data location {loc!r} is absolute or leaves the model's "
                                   "folder", rule="external_data",
                                   hint="keep external data files beside the model, named by a relative path")
        full = base / p
        cur = base
        for part in p.parts:
            cur = cur / part
            if cur.is_symlink():
                raise UnsafeModelError(f"{where}: external data path {str(cur)!r} is a symlink", rule="external_data",
                                       hint="copy the data file beside the model instead of linking it")
        if not full.is_file():
            raise UnsafeModelError(f"{where}: external data file {str(full)!r} does not exist", rule="external_data",
                                   hint="put the external data file beside the model")
        if not full.resolve().is_relative_to(base.resolve()):
            raise UnsafeModelError(f"{where}: external data {loc!r} resolves outside the model's folder",
                                   rule="external_data", hint="keep external data beside the model")
        size = full.stat().st_size
        offset = int(info.get("offset", 0) or 0)
        length = int(info["length"]) if info.get("length") else size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise UnsafeModelError(f"{where}: external data range [{offset}, {offset + length}) is past the end of "
                                   f"{loc!r} ({size} bytes)", rule="external_data",
                                   hint="the model and its data file do not belong together")
        total += length
        if total > max_weight_bytes:
            raise UnsafeModelError(f"external data exceeds {max_weight_bytes} bytes", rule="size",
                                   hint="raise max_weight_bytes= if you trust this model")


def _load(path_or_proto, max_file_bytes: int, max_weight_bytes: int) -> tuple[onnx.ModelProto, str]:
    if isinstance(path_or_proto, onnx.ModelProto):
        model, base, label = path_or_proto, None, path_or_proto.graph.name or "ONNX model"
    elif isinstance(path_or_proto, (bytes, bytearray)):
        if len(path_or_proto) > max_file_bytes:
            raise UnsafeModelError(f"the model is {len(path_or_proto)} bytes, more than {max_file_bytes}",
                                   rule="size", hint="raise max_file_bytes= if you trust this model")
        try:
            model = onnx.load_from_string(bytes(path_or_proto))
        except Exception as e:  # noqa: BLE001 - a corrupt protobuf
            raise FrontendError(f"bytes are not an ONNX model: {e}", rule="from_onnx",
                                hint="pass the bytes of an .onnx file") from None
        base, label = None, model.graph.name or "ONNX model"
    elif isinstance(path_or_proto, (str, os.PathLike)):
        path = Path(path_or_proto)
        label = str(path)
        if not path.is_file():
            raise FrontendError(f"{path}: no such file", rule="from_onnx", hint="check the path of the .onnx file")
        size = path.stat().st_size
        if size > max_file_bytes:
            raise UnsafeModelError(f"{path}: {size} bytes, more than {max_file_bytes}", rule="size",
                                   hint="raise max_file_bytes= if you trust this model")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001
            raise FrontendError(f"{path}: not an ONNX model ({type(e).__name__}: {e})", rule="from_onnx",
                                hint="pass a .onnx file written by torch.onnx.export or archir export") from None
        base = path.parent
    else:
        raise FrontendError(f"from_onnx needs a path, bytes or an onnx.ModelProto, got {type(path_or_proto).__name__}",
                            rule="from_onnx", hint="pass the path of an .onnx file")
    if len(model.graph.node) > MAX_NODES:
        raise UnsafeModelError(f"{label}: {len(model.graph.node)} nodes, more than {MAX_NODES}", rule="size",
                               hint="archir imports networks up to this size")
    custom = sorted({f"{n.op_type} (domain {n.domain!r}) at {n.name or '?'}" for n in model.graph.node
                     if n.domain not in ("", "ai.onnx")})
    if custom or model.functions:
        listing = custom + [f"local function {f.domain}.{f.name}" for f in model.functions]
        raise UnsafeModelError(f"{label}: custom op domains are refused: {', '.join(listing[:10])}"
                               + (" ..." if len(listing) > 10 else ""), rule="custom_op",
                               hint="export with standard ONNX ops only (no custom domains or local functions)")
    _check_external(model, base, max_weight_bytes)
    if base is not None and any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(base))
    weight_bytes = sum(t.ByteSize() for t in model.graph.initializer)
    if weight_bytes > max_weight_bytes:
        raise UnsafeModelError(f"{label}: {weight_bytes} bytes of weights, more than {max_weight_bytes}", rule="size",
                               hint="raise max_weight_bytes= if you trust this model")
    return model, label


# --------------------------------------------------------------------------- the importer


class _Importer:
    def __init__(self, model: onnx.ModelProto, name: str) -> None:
        self.model = model
        self.g = Graph(name)
        self.ids = IdMaker()
        self.env: dict[str, Any] = {}  # ONNX value name -> IR id (str) or constant (np.ndarray) or _BAD
        self.problems: list[Unsupported] = []
        self.users: dict[str, list[onnx.NodeProto]] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.done: set[int] = set()  # ids of nodes consumed by a fused pattern
        self.static_batch: int | None = None  # swin-onnx: the fixed batch of the file's input, if any
        opsets = {o.domain: o.version for o in model.opset_import}
        self.opset = opsets.get("", opsets.get("ai.onnx", 1))
        for n in model.graph.node:
            for i in n.input:
                self.users.setdefault(i, []).append(n)
            for o in n.output:
                self.producer[o] = n

    def node_id(self, node: onnx.NodeProto, op: str) -> str:
        scoped = _torch_scope(node, op)
        if scoped:
            return self.ids(scoped)
        name = node.name or ""
        base = _collapse_scope(name) if name else op
        if "::" in name or not name:  # an archir aux name or no name at all
            base = op
        return self.ids(base)

    def add(self, node, op, inputs, *, params=None, buffers=None, **attrs) -> str:
        return add_mapped(self.g, self.ids, self.node_id(node, op), op, inputs, params=params, buffers=buffers,
                          **attrs)

    def act(self, name: str) -> str:
        v = self.env.get(name, _BAD)
        if isinstance(v, _PerSample):  # swin-onnx
            raise Skip(f"input {name!r} is an integer tensor computed from the run-time batch size (a per-sample "
                       "index); archir reads that only as the index of a flatten's Gather (dynamo's as_strided)")
        if isinstance(v, (_BatchSize, _BatchShape, _Sym)):  # vit-onnx: _Sym too
            raise Skip(f"input {name!r} is computed from the run-time batch size; archir reads that only as the "
                       "first entry of a Reshape target (x.view(x.size(0), ...))")
        if not isinstance(v, str):
            raise Skip(f"input {name!r} is {'a constant' if isinstance(v, np.ndarray) else 'not available'}; "
                        "archir expects a network tensor here")
        return v

    def const(self, name: str, what: str) -> np.ndarray:
        if name == "":
            return None
        v = self.env.get(name, _BAD)
        if not isinstance(v, np.ndarray):
            raise Skip(f"{what} ({name!r}) is not a constant initializer")
        return v

    def shape(self, ir_id: str) -> tuple[int, ...]:
        return self.g.node(ir_id).type.shape

    def sole_user(self, value: str) -> onnx.NodeProto | None:
        us = self.users.get(value, [])
        outs = {o.name for o in self.model.graph.output}
        return us[0] if len(us) == 1 and value not in outs else None

    def run(self) -> list[str]:
        for t in self.model.graph.initializer:
            self.env[t.name] = numpy_helper.to_array(t)
        inits = set(self.env)
        for vi in self.model.graph.input:
            if vi.name in inits:
                continue
            tt = vi.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            if tt.elem_type != onnx.TensorProto.FLOAT:
                raise FrontendError(f"input {vi.name!r} has element type "
                                    f"{onnx.TensorProto.DataType.Name(tt.elem_type)}; archir graphs take float32",
                                    rule="from_onnx", hint="export the model with float32 inputs")
            if len(dims) < 2 or any(d is None or d < 1 for d in dims[1:]):
                raise FrontendError(f"input {vi.name!r} has shape {dims}: every dim after the batch must be a fixed "
                                    "size", rule="from_onnx",
                                    hint="export with static shapes except the batch axis (dynamic_axes={'x': {0: 'batch'}}), "
                                    "or give the sizes (from_onnx(input_shapes=...), archir import --input-shape)")
            nid = self.ids(vi.name)
            self.static_batch = dims[0] if dims[0] else None  # swin-onnx: a dynamo file's fixed batch
            self.g.input(nid, dims[1:])
            self.env[vi.name] = nid
        for i, node in enumerate(self.model.graph.node):
            # constants first: a pattern (the GELU formula) may read one that is written after its start
            if node.op_type == "Constant" and node.output[0] not in self.env:
                try:
                    self.env[node.output[0]] = _constant(self, node, _attrs(node))
                    self.done.add(i)
                except Skip:
                    pass  # reported in order below
        self.sym = _SymPass(self)  # vit-onnx: shape arithmetic evaluated with the batch as a symbol
        # swin-onnx: torch's exports of Swin / MaxViT attention modules, each read as one node after a proof by
        # evaluation (archir/frontend/onnx_regions.py)
        from archir.frontend import onnx_regions
        regions = onnx_regions.plan_regions(self)
        for i, node in enumerate(self.model.graph.node):
            if i in self.done:
                continue
            if i in regions:  # swin-onnx
                nid = onnx_regions.read_region(self, regions[i], lambda op, x, params, attrs, out: self.add(
                    self.producer[out], op, [x], params=params, **attrs))
                if nid is not None:
                    self.done.update(nid[1].nodes)
                    self.env[nid[1].out] = nid[0]
                    continue
            # vit-onnx: a shape value evaluated exactly is used as such; one that depends on the batch goes to
            # the importer's own shape rules where they can read it, else it stays symbolic (_Sym)
            pv = self.sym.vals.get(node.output[0]) if node.op_type in _SYM_OPS and node.output else None
            # swin: archir's to_onnx of window_attention (v2) starts with a constant Gather (or MatMul): matched
            # before the constant is taken as a shape value
            wa = None
            if node.op_type in ("Gather", "MatMul") and not any(self.env.get(x, None) is _BAD for x in node.input if x):
                wa = _window_attention_at(self, i, node)
            if wa is None and (isinstance(pv, (np.ndarray, _PerSample)) or
                               (isinstance(pv, _Sym) and not _legacy_ok(self, node))):
                self.env[node.output[0]] = pv
                continue
            if node.op_type == "Transpose":  # vit-onnx: torch's export of nn.MultiheadAttention
                try:
                    if _vit_mha(self, i, node) is not None:
                        continue
                except Skip as e:
                    self.problems.append(Unsupported(f"ONNX {node.op_type}", node.name or f"node #{i}", str(e)))
                    self.env[node.output[0]] = _BAD
                    continue
            try:
                if any(self.env.get(x, None) is _BAD for x in node.input if x):
                    if node.op_type not in _RULES and node.op_type not in _FOLDABLE:
                        raise Skip("no mapping for this ONNX op")
                    out = _BAD
                elif wa is not None:
                    out = wa  # swin: matched above
                elif _foldable(self, node):
                    out = _fold(self, node)
                else:
                    rule = _RULES.get(node.op_type)
                    if rule is None:
                        raise Skip("no mapping for this ONNX op")
                    out = rule(self, node, _attrs(node))
            except Skip as e:
                out = _BAD
                if isinstance(pv, _Sym):  # vit-onnx
                    self.env[node.output[0]] = pv
                    continue
                if node.op_type in _SYM_OPS and any(isinstance(self.env.get(x), (_Sym, _BatchSize, _ShapeOf))
                                                    for x in node.input):  # vit-onnx
                    e = Skip(f"{e}; it computes on the run-time batch size N and its result is not an exact integer "
                             "polynomial in N (archir reads a batch-dependent shape only as a Reshape or Expand "
                             "target [N, *constant sizes])")
                self.problems.append(Unsupported(f"ONNX {node.op_type}", node.name or f"node #{i}", str(e)))
            if node.op_type in _MULTI_OUTPUT:  # the rule gave one value per output (Split)
                for o, v in zip(node.output, out if isinstance(out, list) else [out] * len(node.output)):
                    if o:
                        self.env[o] = v
                continue
            if len(node.output) > 1 and any(node.output[1:]):
                used = [o for o in node.output[1:] if o and o in self.users]
                if used and out is not _BAD:
                    self.problems.append(Unsupported(f"ONNX {node.op_type}", node.name or f"node #{i}",
                                                     f"its extra output(s) {used} are used; archir ops have one output"))
                    out = _BAD
            self.env[node.output[0]] = out
        outs = []
        for vi in self.model.graph.output:
            v = self.env.get(vi.name, _BAD)
            if isinstance(v, str):
                outs.append(v)
            elif isinstance(v, np.ndarray):
                self.problems.append(Unsupported("output", vi.name, "the output is a constant"))
        return outs


# --------------------------------------------------------------------------- constant folding
# torch.onnx.export computes some constant inputs in the graph (F.pad's pads: Constant ->
# ConstantOfShape -> Concat -> Reshape -> Slice -> Transpose -> Reshape -> Cast; torch.chunk's
# ends from Shape -> Gather -> Add -> Div -> Mul). A node of these pure ops whose inputs are all
# small constants is evaluated here (onnx.reference), so the op reading it sees a constant.

#: ops folded when every input is a constant
_FOLDABLE = frozenset({"Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Floor", "Ceil", "Min", "Max", "Cast", "Concat",
                       "Reshape", "Slice", "Transpose", "Squeeze", "Unsqueeze", "Gather", "ConstantOfShape",
                       "Shape", "Size", "Equal", "Where", "Range"})
#: a folded input may hold this many elements at most (shape arithmetic is tiny; a hostile file is not) ...
_FOLD_MAX = 1024
#: ... except for ops whose output is as large as their input (a weight cast or reshaped)
_SAME_SIZE = frozenset({"Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Neg", "Abs", "Floor", "Ceil"})


class _BatchSize:
    """The run-time batch size, ``Gather(Shape(x), 0)`` (``batchsize = x.size(0)``), or it unsqueezed to a
    1-element vector (``vec``). Only a ``Concat`` into a ``Reshape`` target reads it: every tensor of an
    archir graph has the same batch, so a target that starts with it keeps the batch (ONNX's 0)."""

    def __init__(self, vec: bool = False) -> None:
        self.vec = vec


class _BatchShape:
    """A ``Reshape`` target ``[batch size, *rest]`` with constant ``rest`` (``Concat`` of a :class:`_BatchSize`
    vector and constants: torchvision's ``x.view(batchsize, groups, c // groups, h, w)``)."""

    def __init__(self, rest: list[int]) -> None:
        self.rest = rest


class _ShapeOf:
    """``Shape(x)`` of a network tensor: its dims, the batch unknown (``None``); ``src``: the IR id of ``x``
    while the batch entry (``None``) in ``dims`` is still its batch (an ``Expand`` target: ``param``)."""

    def __init__(self, dims: list[int | None], src: str | None = None) -> None:
        self.dims = dims
        self.src = src if dims[:1] == [None] else None


def _foldable(imp, node) -> bool:
    if node.op_type not in _FOLDABLE:
        return False
    vals = [imp.env.get(i, _BAD) for i in node.input if i]
    return bool(vals) and all(isinstance(v, np.ndarray) for v in vals)


def _fold(imp, node) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator

    feeds = {i: imp.env[i] for i in node.input if i}
    if node.op_type not in _SAME_SIZE and any(v.size > _FOLD_MAX for v in feeds.values()):
        raise Skip(f"computes on a constant of more than {_FOLD_MAX} elements; archir folds small shape arithmetic "
                   "only")
    if node.op_type in ("Add", "Sub", "Mul", "Div", "Min", "Max", "Equal", "Where"):  # broadcasting
        try:
            n = math.prod(np.broadcast_shapes(*(v.shape for v in feeds.values())))
        except ValueError:
            raise Skip(f"constant operands of shapes {[v.shape for v in feeds.values()]} do not broadcast") from None
        if n > max(_FOLD_MAX, *(v.size for v in feeds.values())):
            raise Skip(f"broadcasts constants to {n} elements; archir folds small shape arithmetic only")
    if node.op_type in ("ConstantOfShape", "Range"):
        a = [np.asarray(feeds[i]).reshape(-1).astype(np.float64) for i in node.input if i]
        n = np.prod(a[0]) if node.op_type == "ConstantOfShape" else (a[1][0] - a[0][0]) / (a[2][0] or 1)
        if not 0 <= n <= _FOLD_MAX:
            raise Skip(f"makes a constant of {n} elements; archir folds small shape arithmetic only")
    try:
        (out,) = ReferenceEvaluator(node).run(None, feeds)
    except Exception as e:  # noqa: BLE001 - a malformed node
        raise Skip(f"cannot be evaluated on its constant inputs ({type(e).__name__}: {e})") from None
    return np.asarray(out)


# --------------------------------------------------------------------------- rules

_RULES: dict[str, Any] = {}
#: ops whose rule returns one value per output
_MULTI_OUTPUT = frozenset({"Split"})


def _rule(*ops: str):
    def deco(fn):
        for o in ops:
            _RULES[o] = fn
        return fn

    return deco


def _sym_pads(pads: list[int], what: str) -> list[int]:
    if not pads:
        return [0, 0]
    if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
        raise Skip(f"{what} pads {pads} are not symmetric (archir pads both sides alike)")
    return [pads[0], pads[1]]


def _auto_pad(a: dict) -> None:
    ap = a.get("auto_pad", b"NOTSET")
    ap = ap.decode() if isinstance(ap, bytes) else ap
    if ap not in ("NOTSET", "VALID", ""):
        raise Skip(f"auto_pad={ap} is not supported; export with explicit pads")


@_rule("Conv")
def _conv(imp: _Importer, node, a):
    w = imp.env.get(node.input[1]) if len(node.input) > 1 else None
    if not (isinstance(w, np.ndarray) and w.ndim == 3):  # a 1-d conv reads its auto_pad itself
        _auto_pad(a)
    x = imp.act(node.input[0])
    w = imp.const(node.input[1], "the conv weight")
    b = imp.const(node.input[2], "the conv bias") if len(node.input) > 2 and node.input[2] else None
    if w.ndim == 3:
        return _conv1d(imp, node, a, x, w, b)
    if w.ndim != 4:
        raise Skip("only 1-d and 2-d convolutions are supported")
    params = {"weight": w}
    if b is not None:
        params["bias"] = b
    return imp.add(node, "conv2d", [x], params=params, out_channels=int(w.shape[0]),
                   kernel_size=list(a.get("kernel_shape", w.shape[2:])), stride=list(a.get("strides", [1, 1])),
                   padding=_sym_pads(list(a.get("pads", [])), "Conv"), dilation=list(a.get("dilations", [1, 1])),
                   groups=int(a.get("group", 1)), bias=b is not None)


@_rule("BatchNormalization")
def _bn(imp, node, a):
    if a.get("training_mode", 0):
        raise Skip("training_mode=1 (archir imports inference graphs)")
    x = imp.act(node.input[0])
    scale, bias, mean, var = (imp.const(node.input[i], w) for i, w in
                              enumerate(["scale", "B", "input_mean", "input_var"], start=1))
    momentum = 1.0 - float(a.get("momentum", 0.9))
    return imp.add(node, "batchnorm2d", [x], params={"weight": scale, "bias": bias},
                   buffers={"running_mean": mean, "running_var": var}, eps=float(a.get("epsilon", 1e-5)),
                   momentum=min(max(momentum, 0.0), 1.0), affine=True)


def _unary(op: str):
    def rule(imp, node, a):
        return imp.add(node, op, [imp.act(node.input[0])])

    return rule


for _o, _op in [("Relu", "relu"), ("Tanh", "tanh"), ("HardSwish", "hardswish")]:
    _RULES[_o] = _unary(_op)


@_rule("Neg")
def _neg(imp, node, a):
    return imp.add(node, "neg", [imp.act(node.input[0])])


@_rule("LeakyRelu")
def _leaky_relu(imp, node, a):
    return imp.add(node, "leaky_relu", [imp.act(node.input[0])], negative_slope=_f32(a.get("alpha", 0.01)))


@_rule("Elu")
def _elu(imp, node, a):
    return imp.add(node, "elu", [imp.act(node.input[0])], alpha=_f32(a.get("alpha", 1.0)))


@_rule("Gelu")
def _gelu(imp, node, a):
    approx = a.get("approximate", b"none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    return imp.add(node, "gelu", [imp.act(node.input[0])], approximate=approx)


def _f32(v: float) -> float:
    """An ONNX float attribute (float32) as the shortest decimal that rounds to it: 0.2, not 0.200000003."""
    v32 = np.float32(v)
    for digits in range(1, 10):
        r = float(f"{float(v32):.{digits}g}")
        if np.float32(r) == v32:
            return r
    return float(v32)


def _is_const(imp, name: str, value: float) -> bool:
    c = imp.env.get(name)
    return isinstance(c, np.ndarray) and c.size == 1 and math.isclose(float(c.reshape(())), value, rel_tol=1e-6)


def _follow(imp, start, x: str, steps) -> list | None:
    """The nodes of a chain from ``start``: each step ``(op_type, other)`` is the sole user of the value
    before it, whose other input is ``x`` (``other == "x"``) or a constant close to ``other``."""
    nodes, cur = [], start
    for op_type, other in steps:
        user = imp.sole_user(cur.output[0])
        if user is None or user.op_type != op_type:
            return None
        if other is None:  # a unary step
            if list(user.input) != [cur.output[0]]:
                return None
            nodes.append(user)
            cur = user
            continue
        if len(user.input) != 2:
            return None
        rest = list(user.input)
        rest.remove(cur.output[0])
        if not (rest[0] == x if other == "x" else _is_const(imp, rest[0], other)):
            return None
        nodes.append(user)
        cur = user
    return nodes


def _gelu_chain(imp, start, x: str, steps, approximate: str):
    """``gelu(x)`` when ``start`` begins the formula (archir's to_onnx and torch's exporter before
    opset 20): the chain's nodes are consumed, its last value is the gelu."""
    from archir.lower.onnx import GELU_SQRT2, GELU_TANH_C, GELU_TANH_K

    steps = [(op, {"sqrt2": GELU_SQRT2, "c": GELU_TANH_C, "k": GELU_TANH_K}.get(o, o)) for op, o in steps]
    nodes = None
    for tail in ([("Add", 1.0), ("Mul", "x"), ("Mul", 0.5)], [("Add", 1.0), ("Mul", 0.5), ("Mul", "x")]):
        nodes = nodes or _follow(imp, start, x, steps + tail)
    if nodes is None:
        return None
    index = {id(n): k for k, n in enumerate(imp.model.graph.node)}
    for n in nodes:
        imp.done.add(index[id(n)])
    nid = imp.add(nodes[-1], "gelu", [imp.act(x)], approximate=approximate)
    imp.env[nodes[-1].output[0]] = nid
    return nid


@_rule("Sigmoid")
def _sigmoid(imp, node, a):
    x = imp.act(node.input[0])
    # x * sigmoid(x): the silu of archir's to_onnx and torch's SiLU export
    user = imp.sole_user(node.output[0])
    if user is not None and user.op_type == "Mul" and sorted(user.input) == sorted([node.input[0], node.output[0]]):
        imp.done.add(list(imp.model.graph.node).index(user))
        nid = imp.add(user, "silu", [x])
        imp.env[user.output[0]] = nid
        return nid
    return imp.add(node, "sigmoid", [x])


@_rule("HardSigmoid")
def _hardsigmoid(imp, node, a):
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    if not (math.isclose(alpha, 1 / 6, rel_tol=1e-5) and math.isclose(beta, 0.5, rel_tol=1e-6)):
        raise Skip(f"HardSigmoid(alpha={alpha}, beta={beta}); archir's hardsigmoid is alpha=1/6, beta=0.5")
    return imp.add(node, "hardsigmoid", [imp.act(node.input[0])])


@_rule("Clip")
def _clip(imp, node, a):
    x = imp.act(node.input[0])
    if imp.opset < 11:
        lo, hi = a.get("min", -np.inf), a.get("max", np.inf)
    else:
        lo = float(imp.const(node.input[1], "min")) if len(node.input) > 1 and node.input[1] else -np.inf
        hi = float(imp.const(node.input[2], "max")) if len(node.input) > 2 and node.input[2] else np.inf
    if lo == 0.0 and hi == 6.0:
        return imp.add(node, "relu6", [x])
    if lo == 0.0 and hi == np.inf:
        return imp.add(node, "relu", [x])
    if math.isfinite(lo) and math.isfinite(hi):
        return imp.add(node, "hardtanh", [x], min_val=_f32(lo), max_val=_f32(hi))
    raise Skip(f"Clip({lo}, {hi}); archir has relu (0, inf), relu6 (0, 6) and hardtanh (finite bounds)")


@_rule("Identity", "Dropout")
def _identity(imp, node, a):
    v = imp.env.get(node.input[0], _BAD)
    if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
        t = imp.const(node.input[2], "training_mode")
        if bool(np.asarray(t)):
            raise Skip("Dropout in training mode")
    return v  # a constant stays a constant (torch exports shared weights through Identity)


@_rule("Constant")
def _constant(imp, node, a):
    if "value" in a:
        return numpy_helper.to_array(a["value"])
    for k in ("value_float", "value_floats", "value_int", "value_ints"):
        if k in a:
            return np.asarray(a[k], np.float32 if "float" in k else np.int64)
    raise Skip(f"Constant with attribute(s) {sorted(a)}")


@_rule("GlobalAveragePool")
def _gap(imp, node, a):
    return imp.add(node, "global_avgpool", [imp.act(node.input[0])])


def _pool_common(imp, node, a, op, x=None):
    _auto_pad(a)
    x = imp.act(node.input[0]) if x is None else x
    c, h, w = imp.shape(x)
    k = list(a["kernel_shape"])
    s = list(a.get("strides", [1, 1]))
    pads = list(a.get("pads", [0, 0, 0, 0]))
    dil = list(a.get("dilations", [1, 1]))
    ceil = bool(a.get("ceil_mode", 0))
    if len(k) != 2:
        raise Skip("only 2-d pooling is supported")
    begin = pads[:2]
    # the output size ONNX computes, then a torch form (symmetric padding, maybe ceil_mode) giving it
    onnx_out = []
    for i, size in enumerate((h, w)):
        span = size + pads[i] + pads[i + 2] - dil[i] * (k[i] - 1) - 1
        onnx_out.append((-(-span // s[i]) if ceil else span // s[i]) + 1)
    from archir.ops.core import _out_size

    for mode in ([ceil] if pads[:2] == pads[2:] else [False, True]):
        got = [_out_size((h, w)[i], k[i], s[i], begin[i], dil[i], mode) for i in range(2)]
        if got == onnx_out:
            return x, k, s, begin, dil, mode
    raise Skip(f"{op} pads {pads} with ceil_mode={int(ceil)} have no torch equivalent")


@_rule("MaxPool")
def _maxpool(imp, node, a, x=None):
    if len(node.output) > 1 and node.output[1] and node.output[1] in imp.users:
        raise Skip("MaxPool indices output is used")
    x, k, s, p, d, ceil = _pool_common(imp, node, a, "MaxPool", x)
    return imp.add(node, "maxpool2d", [x], kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)


#: ONNX Pad's mode -> archir's
_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


@_rule("Pad")
def _pad(imp, node, a):
    """A ``Pad`` of H and W with constant pads (and value): archir's ``pad``;
    ``MaxPool(Pad(x, end pads, -inf))`` is archir's ceil-mode max pooling with dilated windows."""
    x = imp.act(node.input[0])
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if imp.opset < 11:
        pads, value = list(a.get("pads", [])), np.asarray(a.get("value", 0.0))
    else:
        pads = imp.const(node.input[1], "pads").astype(np.int64).reshape(-1).tolist() if len(node.input) > 1 else []
        value = imp.const(node.input[2], "the pad value") if len(node.input) > 2 and node.input[2] else None
    rank = len(imp.shape(x)) + 1
    if len(node.input) > 3 and node.input[3]:  # opset 18: the axes the pads are for
        axes = [int(v) % rank for v in imp.const(node.input[3], "axes").reshape(-1)]
        if len(pads) != 2 * len(axes) or len(set(axes)) != len(axes):
            raise Skip(f"Pad with {len(pads)} pads for axes {axes}")
        full = [0] * (2 * rank)
        for k, ax in enumerate(axes):
            full[ax], full[rank + ax] = pads[k], pads[len(axes) + k]
        pads = full
    user = imp.sole_user(node.output[0])
    if (mode == "constant" and value is not None and np.all(np.isneginf(value)) and len(pads) == 8
            and pads[:6] == [0] * 6 and user is not None and user.op_type == "MaxPool"):
        return _pad_maxpool(imp, node, x, pads, user)
    if mode not in _PAD_MODES:
        raise Skip(f"Pad mode {mode!r}; archir pads with constant, reflect or edge (torch's F.pad modes "
                   "'constant', 'reflect', 'replicate'): export with one of those (a circular pad has no IR op)")
    if rank != 4 or len(pads) != 8:
        raise Skip(f"Pad of a rank-{rank} tensor with {len(pads)} pads; archir pads H and W of (N, C, H, W)")
    if pads[:2] != [0, 0] or pads[4:6] != [0, 0]:
        raise Skip(f"Pad {pads} pads the batch or channel axis; archir pads H and W only")
    if any(p < 0 for p in pads):
        raise Skip(f"Pad {pads} crops (negative pads); archir pads only")
    top, left, bottom, right = pads[2], pads[3], pads[6], pads[7]
    v = 0.0 if value is None else np.asarray(value).reshape(-1)
    if value is not None and v.size != 1:
        raise Skip("Pad value is not one number")
    v = float(np.asarray(v).reshape(-1)[0]) if value is not None else 0.0
    if not math.isfinite(v):
        raise Skip(f"Pad value {v}; archir pads with a finite value")
    attrs = {"pads": [left, right, top, bottom], "mode": _PAD_MODES[mode]}
    if mode == "constant":
        attrs["value"] = _f32(v)
    return imp.add(node, "pad", [x], **attrs)


def _pad_maxpool(imp, node, x, pads, user):
    ua = _attrs(user)
    mp = list(ua.get("pads", [0, 0, 0, 0]))
    ua["pads"] = mp[:2] + [mp[2] + pads[6], mp[3] + pads[7]]
    imp.done.add(list(imp.model.graph.node).index(user))
    nid = _maxpool(imp, user, ua, x=x)
    imp.env[user.output[0]] = nid
    return nid


@_rule("AveragePool")
def _avgpool(imp, node, a):
    x, k, s, p, d, ceil = _pool_common(imp, node, a, "AveragePool")
    if ceil:
        raise Skip("ceil_mode average pooling that changes the output size")
    return imp.add(node, "avgpool2d", [x], kernel_size=k, stride=s, padding=p,
                   count_include_pad=bool(a.get("count_include_pad", 0)))


# ---- upsample / reductions / conv1d / softmax / matmul (issue 17, part B)


def _conv1d(imp, node, a, x, w, b):
    """A ``Conv`` with a 3-d weight; ``auto_pad=SAME_*`` (torch's ``padding="same"``) at stride 1 pads
    ``dilation * (k - 1)`` in all, symmetric when that is even."""
    pads = list(a.get("pads", [0, 0]))
    ap = _s(a.get("auto_pad", "NOTSET"))
    k, d, st = int(w.shape[2]), int(a.get("dilations", [1])[0]), int(a.get("strides", [1])[0])
    if ap in ("SAME_UPPER", "SAME_LOWER"):
        if st != 1 or d * (k - 1) % 2:
            raise Skip(f"auto_pad={ap} with stride {st}, kernel {k}, dilation {d} pads asymmetrically")
        pads = [d * (k - 1) // 2] * 2
    elif ap not in ("NOTSET", "VALID", ""):
        raise Skip(f"auto_pad={ap} is not supported; export with explicit pads")
    if len(pads) != 2 or pads[0] != pads[1]:
        raise Skip(f"Conv pads {pads} are not symmetric (archir pads both sides alike)")
    params = {"weight": w, **({"bias": b} if b is not None else {})}
    return imp.add(node, "conv1d", [x], params=params, out_channels=int(w.shape[0]),
                   kernel_size=int(a.get("kernel_shape", w.shape[2:])[0]), stride=int(a.get("strides", [1])[0]),
                   padding=int(pads[0]), dilation=int(a.get("dilations", [1])[0]), groups=int(a.get("group", 1)),
                   bias=b is not None)


def _reduce_axes(imp, node, a, op_type: str, x: str) -> list[int] | None:
    axes = a.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:  # an input from opset 18 (ReduceSum: 13)
        axes = imp.const(node.input[1], "axes").reshape(-1).tolist()
    if axes is None or len(axes) == 0:
        if a.get("noop_with_empty_axes", 0):
            return []
        raise Skip(f"{op_type} over every axis (the batch included); archir reduces per sample")
    rank = len(imp.shape(x)) + 1
    axes = [int(v) % rank if -rank <= int(v) < rank else int(v) for v in axes]
    if any(not 1 <= v < rank for v in axes):
        raise Skip(f"{op_type} over axes {axes}: archir never reduces the batch axis")
    return axes


def _consume(imp, nodes) -> None:
    index = {id(n): k for k, n in enumerate(imp.model.graph.node)}
    imp.done.update(index[id(n)] for n in nodes)


def _other_input(node, value: str) -> str | None:
    """The input of a two-input ``node`` that is not ``value`` (``value`` itself for ``f(value, value)``)."""
    ins = list(node.input)
    if len(ins) != 2 or value not in ins:
        return None
    ins.remove(value)
    return ins[0]


def _decomposed_layer_norm(imp, node, a, x: str, axes: list[int]) -> str | None:
    """The layer norm torch's exporter writes before opset 17 (and hand-written LayerNorm2d modules do):
    ``d = x - ReduceMean(x); d / Sqrt(ReduceMean(d ** 2) + eps) [* weight] [+ bias]`` (``d ** 2`` as ``Pow``
    or ``Mul(d, d)``), over the last axis (``layernorm(axis="last")``) or over the channels of an
    ``(N, C, H, W)`` map (``axis="channels"``, weight and bias of shape ``(C, 1, 1)``). ``None`` when the
    nodes are not exactly this formula (they are then read one by one)."""
    shape = imp.shape(x)
    rank = len(shape) + 1
    if not a.get("keepdims", 1) or len(axes) != 1:
        return None
    if axes == [rank - 1]:
        axis, c = "last", shape[-1]
        pshape = [(1,) * k + (c,) for k in range(rank)]  # (C,), (1, C), ...: broadcast over the leading axes
    elif axes == [1] and rank == 4:
        axis, c = "channels", shape[0]
        pshape = [(c, 1, 1), (1, c, 1, 1)]
    else:
        return None
    m = node.output[0]
    sub = imp.sole_user(m)
    if sub is None or sub.op_type != "Sub" or list(sub.input) != [node.input[0], m]:
        return None
    d = sub.output[0]
    users = list({id(u): u for u in imp.users.get(d, [])}.values())  # Mul(d, d) reads d twice
    if len(users) != 2 or d in {o.name for o in imp.model.graph.output}:
        return None
    sq = next((u for u in users if u.op_type == "Pow" and u.input[0] == d and _is_const(imp, u.input[1], 2.0)
               or u.op_type == "Mul" and list(u.input) == [d, d]), None)
    div = next((u for u in users if u is not sq and u.op_type == "Div" and u.input[0] == d), None)
    if sq is None or div is None:
        return None
    var = imp.sole_user(sq.output[0])
    if var is None or var.op_type != "ReduceMean" or var.input[0] != sq.output[0]:
        return None
    try:
        if _reduce_axes(imp, var, _attrs(var), "ReduceMean", x) != axes or not _attrs(var).get("keepdims", 1):
            return None
    except Skip:
        return None
    add = imp.sole_user(var.output[0])
    eps_in = _other_input(add, var.output[0]) if add is not None and add.op_type == "Add" else None
    eps = imp.env.get(eps_in) if eps_in else None
    if not (isinstance(eps, np.ndarray) and eps.size == 1 and float(eps.reshape(())) >= 0):
        return None
    sqrt = imp.sole_user(add.output[0])
    if sqrt is None or sqrt.op_type != "Sqrt" or imp.sole_user(sqrt.output[0]) is not div \
            or list(div.input) != [d, sqrt.output[0]]:
        return None
    nodes, last, params = [node, sub, sq, var, add, sqrt, div], div, {}
    for kind, op_type in (("weight", "Mul"), ("bias", "Add")):
        user = imp.sole_user(last.output[0])
        other = _other_input(user, last.output[0]) if user is not None and user.op_type == op_type else None
        v = imp.env.get(other) if other else None
        if not (isinstance(v, np.ndarray) and v.shape in pshape and v.dtype == np.float32):
            break
        params[kind] = v.reshape(c)
        nodes.append(user)
        last = user
    if "bias" in params and "weight" not in params:
        params["weight"] = np.ones(c, np.float32)
    _consume(imp, nodes)
    nid = imp.add(last, "layernorm", [x], params=params or None, axis=axis, eps=_f32(float(eps.reshape(()))),
                  affine=bool(params), bias="bias" in params)
    imp.env[last.output[0]] = nid
    return nid


@_rule("ReduceMean", "ReduceSum")
def _reduce(imp, node, a):
    """``ReduceMean`` over H and W of (N, C, H, W) is a ``global_avgpool`` (as from_torch maps
    ``x.mean((2, 3))``); any other per-sample axes are a ``mean``/``sum``."""
    x = imp.act(node.input[0])
    axes = _reduce_axes(imp, node, a, node.op_type, x)
    if not axes:
        return x  # noop_with_empty_axes
    if node.op_type == "ReduceMean":
        nid = _decomposed_layer_norm(imp, node, a, x, axes)
        if nid is not None:
            return nid
    keep = bool(a.get("keepdims", 1))
    if node.op_type == "ReduceMean" and len(imp.shape(x)) == 3 and sorted(axes) == [2, 3]:
        gap = imp.add(node, "global_avgpool", [x])
        return gap if keep else imp.add(node, "flatten", [gap], start_dim=1)
    op = "mean" if node.op_type == "ReduceMean" else "sum"
    return imp.add(node, op, [x], dims=sorted(axes), keepdim=keep)


@_rule("Softmax", "LogSoftmax")
def _softmax(imp, node, a):
    if imp.opset < 13:
        raise Skip(f"{node.op_type} before opset 13 flattens from its axis; export with opset >= 13")
    x = imp.act(node.input[0])
    rank = len(imp.shape(x)) + 1
    axis = int(a.get("axis", -1))
    if not -rank <= axis < rank or axis % rank == 0:
        raise Skip(f"{node.op_type} over axis {axis}: archir never normalises across the batch axis")
    return imp.add(node, "softmax" if node.op_type == "Softmax" else "log_softmax", [x], dim=axis)


def _resize_scale(imp, node, x, axes=()) -> dict:
    """The ``size=`` or ``scale_factor=`` of a ``Resize`` (scales, or sizes: constant or torch's
    ``Concat(Slice(Shape(x), 0, 2), [oh, ow])``; for ``axes=[2, 3]`` (opset 18) the two of H and W)."""
    _, h, w = imp.shape(x)
    sizes = imp.env.get(node.input[3], _BAD) if len(node.input) > 3 and node.input[3] else None

    def full(v, one):  # the H, W values of axes=[2, 3] (or [3, 2]) as the 4 of every axis
        v = v.reshape(-1).tolist()
        if not axes or len(v) != 2:
            return v
        return [one, one, *(v if axes == [2, 3] else v[::-1])]

    if sizes is not None:
        dims = sizes.dims if isinstance(sizes, _ShapeOf) else (full(sizes, None)
                                                               if isinstance(sizes, np.ndarray) else None)
        if dims is None or len(dims) != 4 or any(d is None for d in dims[2:]):
            raise Skip("Resize sizes that are not known when importing")
        if dims[1] is not None and int(dims[1]) != imp.shape(x)[0]:
            raise Skip(f"Resize to {dims[1]} channels; archir resizes H and W only")
        return {"size": [int(dims[2]), int(dims[3])]}
    scales = imp.const(node.input[2], "the Resize scales") if len(node.input) > 2 and node.input[2] else None
    scales = None if scales is None else np.asarray(full(scales, 1.0), np.float64)
    if scales is None or scales.size != 4:
        raise Skip("Resize without 4 scales or sizes (or 2 with axes=[2, 3])")
    sn, sc, sh, sw = (float(v) for v in scales.reshape(-1))
    if (sn, sc) != (1.0, 1.0):
        raise Skip(f"Resize scales {scales.tolist()} resize the batch or channel axis")
    if sh == sw:
        return {"scale_factor": _f32(sh)}
    return {"size": [int(math.floor(h * sh)), int(math.floor(w * sw))]}  # archir's to_onnx of size=


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


@_rule("Resize")
def _resize(imp, node, a):
    """``Resize`` as torch's interpolate writes it (and archir's to_onnx): nearest with asymmetric
    coordinates and floor rounding; linear with half_pixel (or pytorch_half_pixel) or align_corners."""
    x = imp.act(node.input[0])
    if len(imp.shape(x)) != 3:
        raise Skip(f"Resize of a rank-{len(imp.shape(x)) + 1} tensor; archir's upsample takes (N, C, H, W)")
    mode, ctm = _s(a.get("mode", "nearest")), _s(a.get("coordinate_transformation_mode", "half_pixel"))
    if int(a.get("antialias", 0)):
        raise Skip("Resize with antialias=1; archir's upsample (torch's interpolate, antialias=False) does not "
                   "filter: export without antialias")
    if _s(a.get("keep_aspect_ratio_policy", "stretch")) != "stretch" and len(node.input) > 3 and node.input[3]:
        raise Skip(f"Resize keep_aspect_ratio_policy={_s(a['keep_aspect_ratio_policy'])}; archir resizes to the "
                   "sizes given (stretch): export with scales or the default policy")
    axes = [int(v) % 4 for v in a.get("axes", [])]
    if axes and sorted(axes) != [2, 3]:
        raise Skip(f"Resize along axes {a['axes']}; archir's upsample resizes H and W (axes 2 and 3) together")
    if mode == "nearest":
        if ctm != "asymmetric" or _s(a.get("nearest_mode", "round_prefer_floor")) != "floor":
            raise Skip(f"nearest Resize with coordinate_transformation_mode={ctm}, nearest_mode="
                       f"{_s(a.get('nearest_mode', 'round_prefer_floor'))}; archir's (torch's) nearest is asymmetric, floor")
        attrs = {"mode": "nearest"}
    elif mode == "linear":
        if ctm not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            raise Skip(f"linear Resize with coordinate_transformation_mode={ctm}; archir's bilinear is "
                       "half_pixel or align_corners (torch's align_corners=False / True)")
        attrs = {"mode": "bilinear", "align_corners": ctm == "align_corners"}
    else:
        raise Skip(f"Resize mode={mode}; archir's upsample has nearest (asymmetric, floor) and linear "
                   "(half_pixel or align_corners): export with F.interpolate(mode='nearest' or 'bilinear')")
    attrs.update(_resize_scale(imp, node, x, axes))
    nid = imp.add(node, "upsample", [x], **attrs)
    if ctm == "pytorch_half_pixel" and 1 in imp.shape(nid)[1:]:
        raise Skip("pytorch_half_pixel Resize to a length-1 axis (it differs from half_pixel there)")
    return nid


@_rule("Flatten")
def _flatten(imp, node, a):
    x = imp.act(node.input[0])
    axis = int(a.get("axis", 1))
    rank = len(imp.shape(x)) + 1
    if axis % rank != 1:
        raise Skip(f"Flatten(axis={axis}) does not keep the batch dimension alone; archir flattens from dim 1")
    return imp.add(node, "flatten", [x], start_dim=1)


def _target(imp, name: str) -> list[int]:
    """A Reshape target: a constant, or the batch size then constants (its batch entry as ONNX's 0)."""
    v = imp.env.get(name, _BAD)
    if (isinstance(v, _ShapeOf) or v is _BAD) and isinstance(imp.sym.vals.get(name), _Sym):
        # its exact symbolic value: a Concat of Shape(x) slices (which the legacy rules read for Resize sizes and
        # Expand targets), or one not imported yet (a channel shuffle's second target, read ahead): dynamo's view
        # targets from the run-time H and W of a file whose sizes from_onnx(input_shapes=...) fixed,
        # [N, 2, 24, (H - 1) // 8 + 1, ...]
        v = imp.sym.vals[name]
    if isinstance(v, _BatchShape):
        return [0] + v.rest
    if isinstance(v, _Sym):  # vit-onnx
        return [0] + _sym_target(imp, v, "the Reshape target")
    shape = imp.const(name, "the target shape").astype(np.int64).tolist()
    if imp.static_batch and shape[:1] == [imp.static_batch]:
        # swin-onnx: a file with a fixed batch B (dynamo without dynamic_shapes) writes x.view(B, ...): every tensor
        # has batch B, so a target starting with B keeps the batch (its other entries are per sample): exact
        return [0] + shape[1:]
    return shape


@_rule("Reshape")
def _reshape(imp, node, a):
    x = imp.act(node.input[0])
    shape = _target(imp, node.input[1])
    if shape == [-1]:  # swin-onnx: dynamo's as_strided flatten
        nid = _static_flat_gather(imp, node, x) if imp.static_batch else _per_sample_flat_gather(imp, node, x)
        if nid is not None:
            return nid
    if isinstance(imp.env.get(node.input[1]), (_BatchShape, _Sym)) and 0 in shape[1:] and not a.get("allowzero", 0):
        raise Skip(f"Reshape target {shape} copies input dims after the batch size computed at run time")
    ins = list(imp.shape(x))
    if shape in ([0, -1], [-1, math.prod(ins)]) or (shape[0] in (0, -1) and shape[1:] == [math.prod(ins)]):
        return imp.add(node, "flatten", [x], start_dim=1) if len(ins) > 1 else x
    for sd in range(2, len(ins) + 1):  # archir's flatten(start_dim > 1): [0, *kept dims, -1]
        if shape == [0] + ins[: sd - 1] + [-1]:
            return imp.add(node, "flatten", [x], start_dim=sd)
    if shape[:1] in ([0], [-1]) and shape[1:] == ins:
        return x
    nid = _channel_shuffle_chain(imp, node, x, shape)
    if nid is not None:
        return nid
    return _reshape_to(imp, node, x, shape, bool(a.get("allowzero", 0)))


def _static_flat_gather(imp, node, x: str) -> str | None:
    """swin-onnx: ``Reshape(x, [-1])`` then ``Gather(axis=0)`` by the constant index ``arange(B * n)`` shaped
    ``(B, *dims)`` (dynamo's ``as_strided`` in a file with the fixed batch ``B``): every element stays in place,
    so the pair is ``x`` reshaped to ``dims`` per sample (exact: the batch is ``B`` for every tensor)."""
    g = imp.sole_user(node.output[0])
    if g is None or g.op_type != "Gather" or int(_attrs(g).get("axis", 0)) != 0 or len(g.input) != 2:
        return None
    idx = imp.env.get(g.input[1], _BAD)
    n = math.prod(imp.shape(x))
    if not (isinstance(idx, np.ndarray) and idx.ndim >= 1 and idx.shape[0] == imp.static_batch and
            idx.size == imp.static_batch * n and np.array_equal(idx.reshape(-1), np.arange(idx.size))):
        return None
    nid = x if list(idx.shape[1:]) == list(imp.shape(x)) else _reshape_to(imp, g, x, [0, *idx.shape[1:]])
    imp.done.add(next(k for k, m in enumerate(imp.model.graph.node) if m.output[:1] == g.output[:1]))
    imp.env[g.output[0]] = nid
    return nid


def _per_sample_flat_gather(imp, node, x: str) -> str | None:
    """swin-onnx: ``Reshape(x, [-1])`` then ``Gather(axis=0)`` by a run-time index (dynamo's ``as_strided`` flatten
    in a file with a dynamic batch ``N``: ``Range(0, N) * P + offsets``), read as ``x`` reshaped per sample.

    The proof is symbolic, for every batch size at once: ``_SymPass`` evaluates the index exactly as a
    :class:`_PerSample` -- each entry ``[n, i]`` an integer polynomial in the sample index ``n`` and ``N`` -- from
    the nodes of ``_PER_SAMPLE_OPS`` only (each maps exact integer polynomials to exact integer polynomials). With
    ``x`` of shape ``(N, *ins)``, ``P = prod(ins)``, the index must be shaped ``(N, *dims)``, ``prod(dims) = P``,
    and equal, as a polynomial, ``n * P + i`` at flat position ``i`` of ``dims``: then output ``[n, i]`` is flat
    element ``n P + i`` of ``x``, element ``i`` of sample ``n`` -- every element in place, the batch kept, i.e.
    ``x`` reshaped to ``dims`` per sample. Anything else is refused naming the node."""
    g = imp.sole_user(node.output[0])
    if g is None or g.op_type != "Gather" or g.input[0] != node.output[0] or int(_attrs(g).get("axis", 0)) != 0 \
            or len(g.input) != 2 or isinstance(imp.env.get(g.input[1]), np.ndarray):
        return None  # not a run-time-indexed flatten: the Reshape's own refusal stands
    ins = list(imp.shape(x))
    size = math.prod(ins)
    idx = imp.sym.vals.get(g.input[1])
    mend = ("export with a static batch (no dynamic_shapes), or flatten with torch.flatten / x.reshape(x.size(0), -1) "
            "instead of as_strided")
    if not isinstance(idx, _PerSample):
        culprit = _per_sample_culprit(imp, g.input[1])
        raise Skip(f"Reshape [-1] then Gather {g.name!r} by a run-time index: the index is not evaluated exactly as a "
                   f"per-sample integer tensor{culprit} (archir evaluates it from {'; '.join(_PER_SAMPLE_OPS)}); "
                   f"{mend}")
    where = f"Reshape [-1] of (N, {', '.join(map(str, ins))}) then Gather {g.name!r}"
    if math.prod(idx.rest) != size:
        raise Skip(f"{where}: the index has {math.prod(idx.rest)} entries per sample, not {size}: it does not keep each "
                   f"sample's elements; {mend}")
    want = {(1, 0): np.full(idx.rest, size, dtype=object), (0, 0): np.arange(size, dtype=object).reshape(idx.rest)}
    for k in np.ndindex(idx.rest):
        if any((idx.coef[m][k] if m in idx.coef else 0) != (want[m][k] if m in want else 0)
               for m in set(idx.coef) | set(want)):
            off = int(want[(0, 0)][k])
            raise Skip(f"{where}: index entry [n, {', '.join(map(str, k))}] is {idx.entry(k)}, not "
                       f"{size} * n{f' + {off}' if off else ''}: the Gather moves elements within or across samples (not "
                       f"a flatten); {mend}")
    nid = x if list(idx.rest) == ins else _reshape_to(imp, g, x, [0, *idx.rest])
    imp.done.add(next(k for k, m in enumerate(imp.model.graph.node) if m.output[:1] == g.output[:1]))
    imp.env[g.output[0]] = nid
    return nid


def _per_sample_culprit(imp, name: str) -> str:
    """``: node 'X' (Op) is not ...`` for the first node feeding ``name`` whose value was not evaluated (its inputs
    were), or ``''``."""
    seen, stack = set(), [name]
    while stack:
        v = stack.pop()
        n = imp.producer.get(v)
        if v in seen or n is None:
            continue
        seen.add(v)
        pending = [i for i in n.input if i and i not in imp.sym.vals and i in imp.producer]
        if v not in imp.sym.vals and not pending:
            return f": node {n.name!r} ({n.op_type}) is not one of those ops on such values"
        stack.extend(pending)
    v = imp.sym.vals.get(name)
    return "" if v is None else f": it is {'a constant' if isinstance(v, np.ndarray) else 'free of the sample index'}"


def _channel_shuffle_chain(imp, node, x: str, shape: list[int]) -> str | None:
    """``channel_shuffle`` when ``node`` begins Reshape (N, g, C/g, H, W) -> Transpose(0, 2, 1, 3, 4) ->
    Reshape (N, C, H, W) (archir's to_onnx writes it so; torchvision's view / transpose / view with
    constant sizes too): the chain's nodes are consumed, its last value is the shuffle."""
    ins = list(imp.shape(x))
    if len(ins) != 3 or len(shape) != 5 or shape[0] not in (0, -1) or shape[3:] != ins[1:]:
        return None
    g = shape[1]
    if g < 1 or shape[2] != ins[0] // g or g * shape[2] != ins[0]:
        return None
    tr = imp.sole_user(node.output[0])
    if tr is None or tr.op_type != "Transpose" or [int(v) for v in _attrs(tr).get("perm", [])] != [0, 2, 1, 3, 4]:
        return None
    back = imp.sole_user(tr.output[0])
    if back is None or back.op_type != "Reshape" or back.input[0] != tr.output[0]:
        return None
    try:  # a constant, [batch, *constants], or its exact symbolic value (a target from the run-time H and W)
        t = _target(imp, back.input[1])
    except Skip:
        return None
    if len(t) != 4 or t[0] not in (0, -1) or t[2:] != ins[1:] or t[1] not in (ins[0], -1):
        return None
    index = {id(n): k for k, n in enumerate(imp.model.graph.node)}
    imp.done.update((index[id(tr)], index[id(back)]))
    nid = imp.add(back, "channel_shuffle", [x], groups=g)
    imp.env[tr.output[0]] = nid
    imp.env[back.output[0]] = nid
    return nid


def _reshape_to(imp, node, x: str, shape: list[int], allowzero: bool = False) -> str:
    """A general Reshape (batch first, then the per-sample target) as an IR ``reshape``."""
    ins = list(imp.shape(x))
    if not shape or shape[0] not in (0, -1) or (shape[0] == -1 and -1 in shape[1:]):
        raise Skip(f"Reshape of (N, {', '.join(map(str, ins))}) to {shape} does not keep the batch dim first; "
                   "archir reshapes within a sample (export the target as [0 or -1, ...])")
    out = []
    for i, d in enumerate(shape[1:], start=1):
        if d == 0 and not allowzero:
            if i > len(ins):
                raise Skip(f"Reshape target {shape}: dim {i} copies a dim the input does not have")
            d = ins[i - 1]
        out.append(d)
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known < 1 or math.prod(ins) % known:
            raise Skip(f"Reshape of {tuple(ins)} to {shape}: the -1 dim does not divide")
        out[out.index(-1)] = math.prod(ins) // known
    if not out or math.prod(out) != math.prod(ins) or any(d < 1 for d in out):
        raise Skip(f"Reshape of (N, {', '.join(map(str, ins))}) to {shape} does not keep each sample's elements")
    if out == ins:
        return x
    return imp.add(node, "reshape", [x], shape=out)


@_rule("Squeeze", "Unsqueeze")
def _squeeze(imp, node, a):
    b = imp.env.get(node.input[0])
    if isinstance(b, _BatchSize) and not b.vec and node.op_type == "Unsqueeze":
        axes = imp.const(node.input[1], "the axes").reshape(-1).tolist() if len(node.input) > 1 else a.get("axes")
        if list(axes or []) in ([0], [-1]):
            return _BatchSize(vec=True)
    x = imp.act(node.input[0])
    ins = list(imp.shape(x))
    rank = len(ins) + 1
    if len(node.input) > 1 and node.input[1]:
        axes = imp.const(node.input[1], "the axes").astype(np.int64).reshape(-1).tolist()
    else:
        axes = a.get("axes")
    if node.op_type == "Unsqueeze":
        if axes is None:
            raise Skip("Unsqueeze without axes")
        out_rank = rank + len(axes)
        axes = sorted(int(v) % out_rank for v in axes)
        if 0 in axes:
            raise Skip("Unsqueeze before the batch dim; archir keeps the batch first")
        full = [None] + ins
        for ax in axes:
            full.insert(ax, 1)
    else:
        axes = [i for i in range(1, rank) if ins[i - 1] == 1] if axes is None else sorted(int(v) % rank for v in axes)
        if 0 in axes:
            raise Skip("Squeeze of the batch dim; archir keeps the batch first")
        if any(ins[ax - 1] != 1 for ax in axes):
            raise Skip(f"Squeeze of axes {axes} of size > 1 in (N, {ins})")
        full = [None] + [d for i, d in enumerate(ins, start=1) if i not in axes]
    return _reshape_to(imp, node, x, [0] + full[1:])


def _gathernd_pool(imp, node, x: str) -> str | None:
    """torch's dynamo decomposition of an adaptive average pool whose windows along each axis all have
    one length (e.g. 7 -> 3, 1 -> 3): ``Transpose(x, [2, 3, 0, 1])``, ``GatherND`` of the constant window
    indices ``(oh, kh, ow, kw, 2)``, ``Transpose([4, 5, 0, 1, 2, 3])``, ``ReduceMean`` over the two window
    axes. Read as ``adaptive_avgpool2d`` only when the indices are exactly torch's adaptive windows.
    (Windows of different lengths, e.g. 5 -> 3, are written as a masked ``Where`` and a chain of
    ``Gather``/``Add``s; that is not read.)"""
    from archir.ops.core import adaptive_windows

    _, h, w = imp.shape(x)
    gnd = imp.sole_user(node.output[0])
    if gnd is None or gnd.op_type != "GatherND" or gnd.input[0] != node.output[0] or _attrs(gnd).get("batch_dims", 0):
        return None
    idx = imp.env.get(gnd.input[1])
    if not (isinstance(idx, np.ndarray) and idx.ndim == 5 and idx.shape[-1] == 2):
        return None
    oh, kh, ow, kw, _ = idx.shape
    wins = adaptive_windows(h, oh), adaptive_windows(w, ow)
    if {e - s for s, e in wins[0]} != {kh} or {e - s for s, e in wins[1]} != {kw}:
        return None
    want = np.zeros(idx.shape, np.int64)
    want[..., 0] = (np.array([s for s, _ in wins[0]])[:, None] + np.arange(kh))[:, :, None, None]
    want[..., 1] = (np.array([s for s, _ in wins[1]])[:, None] + np.arange(kw))[None, None]
    back = imp.sole_user(gnd.output[0])
    if not np.array_equal(idx, want) or back is None or back.op_type != "Transpose" \
            or [int(v) for v in _attrs(back).get("perm", [])] != [4, 5, 0, 1, 2, 3]:
        return None
    red = imp.sole_user(back.output[0])
    if red is None or red.op_type != "ReduceMean" or red.input[0] != back.output[0] or _attrs(red).get("keepdims", 1):
        return None
    axes = _attrs(red).get("axes")
    if axes is None and len(red.input) > 1 and red.input[1]:
        c = imp.env.get(red.input[1])
        axes = c.reshape(-1).tolist() if isinstance(c, np.ndarray) else None
    if axes is None or sorted(int(v) % 6 for v in axes) != [3, 5]:
        return None
    _consume(imp, [gnd, back, red])
    nid = imp.add(red, "adaptive_avgpool2d", [x], output_size=[oh, ow])
    imp.env[red.output[0]] = nid
    return nid


#: ops of dynamo's masked adaptive pool that are linear in their network input (constant indices, masks,
#: divisors); :func:`_probed_pool` checks each use is
_LINEAR_OPS = frozenset({"Transpose", "GatherND", "Gather", "Where", "Add", "Mul", "Div", "ReduceSum", "ReduceMean"})
#: largest H * W of a map whose pooling is probed (the probe batch holds 2 * H * W maps)
_PROBE_MAX = 1024


def _probed_pool(imp, node, x: str) -> str | None:
    """torch dynamo's adaptive average pool with windows of several lengths (e.g. VGG's 2 -> 7 at 64x64):
    ``Transpose``, ``GatherND`` of the windows padded to the longest, ``Transpose``, ``Where`` masks zeroing
    the padding, a chain of ``Gather``/``Add`` summing each window, ``Div`` by the window sizes.

    The nodes reachable from ``node`` through these ops, with every other input a constant (indices,
    masks, zeros, divisors), are a linear map of ``x`` (each op is checked to be used linearly), and
    they must have one value read from outside. A linear map is known from its values on a basis: the
    nodes are evaluated (onnx.reference) on every one-hot ``(2, H, W)`` map, and read as
    ``adaptive_avgpool2d`` only when they give exactly torch's adaptive averages, channel by channel."""
    from onnx.reference import ReferenceEvaluator

    from archir.lower.onnx import adaptive_matrix

    c, h, w = imp.shape(x)
    if h * w > _PROBE_MAX:
        return None
    graph = list(imp.model.graph.node)
    inside, members, consts = set(node.output), [node], {}
    for n in graph[graph.index(node) + 1:]:  # in topological order
        ins = [i for i in n.input if i]
        live = [i for i in ins if i in inside]
        if not live or n.op_type not in _LINEAR_OPS:
            continue  # not reading the pool, or reading its result
        for i in ins:
            if i not in inside:
                if not isinstance(imp.env.get(i), np.ndarray):
                    return None
                consts[i] = imp.env[i]
        linear = {"Where": n.input[0] not in inside and len(live) == 1
                  and all(not np.any(consts[i]) for i in n.input[1:] if i not in inside),  # x or 0
                  "Mul": len(live) == 1, "Div": n.input[0] in inside and len(live) == 1,
                  "Add": len(live) == len(ins) == 2, "Gather": n.input[0] in inside and len(live) == 1,
                  "GatherND": n.input[0] in inside and len(live) == 1}.get(n.op_type, len(live) == 1)
        if not linear:
            return None
        members.append(n)
        inside.update(o for o in n.output if o)
    ids = {id(m) for m in members}
    outs = {o.name for o in imp.model.graph.output}
    exits = [v for v in inside if v in outs or any(id(u) not in ids for u in imp.users.get(v, []))]
    if len(exits) != 1 or exits[0] == node.output[0] or len(members) < 3:
        return None
    cp = min(c, 2)
    basis = np.eye(cp * h * w, dtype=np.float32).reshape(cp * h * w, cp, h, w)
    sub = onnx.helper.make_graph(
        [onnx.NodeProto.FromString(m.SerializeToString()) for m in members], "probe",
        [onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None)],
        [onnx.helper.make_tensor_value_info(exits[0], onnx.TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    try:
        model = onnx.helper.make_model(sub, opset_imports=list(imp.model.opset_import))
        (y,) = ReferenceEvaluator(model).run(None, {node.input[0]: basis})
    except Exception:  # noqa: BLE001 - constants that do not fit the probe's shapes: not this pattern
        return None
    y = np.asarray(y)
    if y.ndim != 4 or y.shape[:2] != (cp * h * w, cp):
        return None
    oh, ow = y.shape[2:]
    # one-hot input k = (ch, i, j) -> output channel ch holds the outer product of the two averaging columns
    want = np.einsum("cd,ai,bj->cijdab", np.eye(cp), adaptive_matrix(h, oh), adaptive_matrix(w, ow))
    if not np.allclose(y, want.reshape(cp * h * w, cp, oh, ow), rtol=0, atol=1e-6):
        return None
    last = imp.producer[exits[0]]
    _consume(imp, members[1:])
    nid = imp.add(last, "adaptive_avgpool2d", [x], output_size=[int(oh), int(ow)])
    imp.env[exits[0]] = nid
    return nid


@_rule("Transpose")
def _transpose(imp, node, a):
    x = imp.act(node.input[0])
    rank = len(imp.shape(x)) + 1
    perm = [int(v) for v in a.get("perm", list(range(rank))[::-1])]
    if perm == [2, 3, 0, 1] and rank == 4:
        nid = _gathernd_pool(imp, node, x)
        if nid is None:
            nid = _probed_pool(imp, node, x)
        if nid is not None:
            return nid
    if sorted(perm) != list(range(rank)) or perm[0] != 0:
        raise Skip(f"Transpose perm={perm} moves the batch dim; archir keeps the batch first")
    if perm == list(range(rank)):
        return x
    if perm == [0, 2, 3, 1]:
        ln = imp.sole_user(node.output[0])
        back = imp.sole_user(ln.output[0]) if ln is not None and ln.op_type == "LayerNormalization" else None
        if back is not None and back.op_type == "Transpose" and [int(v) for v in _attrs(back).get("perm", [])] == \
                [0, 3, 1, 2] and ln.input[0] == node.output[0]:
            # Transpose -> LayerNormalization -> Transpose back (archir's to_onnx, torch's export of LayerNorm2d):
            # one layernorm over the channels, named after the chain's last value
            imp.env[node.output[0]] = x  # stands for the channels-last value inside the chain only
            index = {id(n): k for k, n in enumerate(imp.model.graph.node)}
            imp.done.update((index[id(ln)], index[id(back)]))
            nid = _layer_norm(imp, ln, _attrs(ln), x=x, axis="channels", name_from=back)
            imp.env[ln.output[0]] = imp.env[back.output[0]] = nid
            return nid
    return imp.add(node, "permute", [x], dims=[d - 1 for d in perm[1:]])


@_rule("LayerNormalization")
def _layer_norm(imp, node, a, x=None, axis="last", name_from=None):
    """``LayerNormalization`` over the last axis (``layernorm(axis="last")``); over several trailing axes
    ``k..`` (``axis=k`` with ``1 <= k < rank - 1``, e.g. torch's ``nn.LayerNorm((H, W))``) as the primitives it
    is: ``reshape`` to ``(N, d1.., prod(dk..))``, ``layernorm`` over that last axis (scale and bias flattened
    alike), ``reshape`` back."""
    x = imp.act(node.input[0]) if x is None else x
    ins = list(imp.shape(x))
    rank = len(ins) + 1 if axis == "last" else 4
    k = int(a.get("axis", -1))
    if not -rank <= k < rank or k % rank == 0:
        raise Skip(f"LayerNormalization(axis={k}) of a rank-{rank} tensor normalises across the batch axis (or "
                   "is out of range); archir normalises within a sample: export with axis >= 1")
    k %= rank
    if int(a.get("stash_type", 1)) != 1:
        raise Skip(f"LayerNormalization with stash_type={int(a.get('stash_type', 1))}; archir computes the "
                   "statistics in float32: export with stash_type=1 (the default)")
    if len(node.output) > 1 and any(o and o in imp.users for o in node.output[1:]):
        raise Skip("LayerNormalization's mean / inverse std outputs are used; archir's layernorm has one output")
    if k != rank - 1 and axis != "last":
        raise Skip(f"LayerNormalization(axis={k}) between Transposes to channels-last; archir's channel layer norm "
                   "normalises over the channels only (axis=-1)")
    norm = ins[k - 1:] if axis == "last" else ins[:1]  # the channels of (C, H, W)
    w = imp.const(node.input[1], "the LayerNormalization scale")
    b = imp.const(node.input[2], "the LayerNormalization bias") if len(node.input) > 2 and node.input[2] else None
    params = {}
    for key, v in (("weight", w), ("bias", b)):
        if v is None:
            continue
        try:
            params[key] = np.ascontiguousarray(np.broadcast_to(v, norm), np.float32).reshape(-1)
        except ValueError:
            raise Skip(f"LayerNormalization {key} of shape {v.shape} does not broadcast to the normalised "
                       f"shape {tuple(norm)}") from None
    eps = _f32(a.get("epsilon", 1e-5))
    if k == rank - 1:
        return imp.add(name_from or node, "layernorm", [x], params=params, axis=axis, eps=eps, affine=True,
                       bias=b is not None)
    flat = _reshape_to(imp, node, x, [0, *ins[:k - 1], math.prod(norm)])
    ln = imp.add(node, "layernorm", [flat], params=params, axis="last", eps=eps, affine=True, bias=b is not None)
    return _reshape_to(imp, node, ln, [0, *ins])


@_rule("Concat")
def _concat(imp, node, a):
    vals = [imp.env.get(i, _BAD) for i in node.input]
    if any(isinstance(v, _ShapeOf) for v in vals):  # shape arithmetic: Concat(Shape(x)[:2], [oh, ow])
        if not all(isinstance(v, _ShapeOf) or (isinstance(v, np.ndarray) and v.ndim == 1) for v in vals):
            raise Skip("Concat of a shape with a value that is not a constant vector")
        src = vals[0].src if isinstance(vals[0], _ShapeOf) else None
        return _ShapeOf([d for v in vals for d in (v.dims if isinstance(v, _ShapeOf) else v.tolist())], src)
    if vals and isinstance(vals[0], _BatchSize) and vals[0].vec:
        rest = vals[1:]
        if int(a.get("axis", 0)) != 0 or not all(isinstance(v, np.ndarray) and v.ndim == 1 for v in rest):
            raise Skip("Concat of the run-time batch size with values that are not constant vectors")
        return _BatchShape([int(x) for v in rest for x in v.astype(np.int64).tolist()])
    xs = [imp.act(i) for i in node.input]
    return imp.add(node, "concat", xs, dim=int(a["axis"]))


@_rule("Expand")
def _expand(imp, node, a):
    """``Expand(value, Concat(Shape(x)[0:1], shape))`` of a constant ``value`` of shape ``(1, *shape)`` (archir's
    to_onnx of ``param``): the learned tensor repeated over ``x``'s batch."""
    value = imp.const(node.input[0], "the expanded value")
    target = imp.env.get(node.input[1], _BAD)
    if isinstance(target, _Sym):  # vit-onnx: TorchScript's Where(Equal(...)) target, [N, 1, 1]
        target = _ShapeOf([None] + _sym_target(imp, target, "the Expand target"), imp.g.inputs[0])
    if not isinstance(target, _ShapeOf) or target.src is None:
        raise Skip("Expand to a shape that is not [batch of a network tensor, *constant sizes]; archir repeats a "
                   "constant over the batch only (its param op)")
    rest = target.dims[1:]
    # Expand broadcasts both ways: a target dim of 1 keeps the value's dim (torch.export writes expand(n, -1, -1)
    # as [n, 1, 1])
    if value.ndim != len(target.dims) or value.shape[0] != 1 or not rest or any(
            t not in (v, 1) for t, v in zip(rest, value.shape[1:])):
        raise Skip(f"Expand of a constant of shape {value.shape} to [batch, *{rest}]: archir repeats a (1, *shape) "
                   "constant over the batch only, with the other dims kept")
    shape = [int(d) for d in value.shape[1:]]
    return imp.add(node, "param", [target.src], params={"value": value.reshape(shape).astype(np.float32)},
                   shape=shape)


@_rule("Add")
def _add(imp, node, a):
    l, r = (imp.env.get(i, _BAD) for i in node.input)
    if isinstance(l, str) and isinstance(r, str):
        if imp.shape(l) != imp.shape(r):
            raise Skip(f"broadcasting Add of {imp.shape(l)} and {imp.shape(r)}")
        return imp.add(node, "add", [l, r])
    x, c = (l, r) if isinstance(l, str) else (r, l)
    if isinstance(x, str) and isinstance(c, np.ndarray) and c.ndim >= 1:
        shape = list(imp.shape(x))
        full = list(c.shape[1:]) if c.ndim == len(shape) + 1 and c.shape[0] == 1 else list(c.shape)
        if full == shape:  # a learned tensor of the sample's shape (ViT's position embedding): param, then add
            p = add_mapped(imp.g, imp.ids, imp.ids(f"{imp.node_id(node, 'add')}.param"), "param", [x],
                           params={"value": c.reshape(shape).astype(np.float32)}, shape=shape)
            return imp.add(node, "add", [x, p] if isinstance(l, str) else [p, x])
    raise Skip("Add of a constant that is not of the other operand's per-sample shape (archir's add takes two "
               "network tensors of equal shape; a bias belongs to Conv/Gemm)")


@_rule("Mul")
def _mul(imp, node, a):
    l, r = (imp.env.get(i, _BAD) for i in node.input)
    if isinstance(l, str) and isinstance(r, str):
        if node.input[0] == node.input[1]:  # x * x may begin the tanh form of gelu
            nid = _gelu_chain(imp, node, node.input[0], [("Mul", "x"), ("Mul", "k"), ("Add", "x"), ("Mul", "c"),
                                                         ("Tanh", None)], "tanh")
            if nid is not None:
                return nid
        return imp.add(node, "mul", [l, r])
    x, c = (l, r) if isinstance(l, str) else (r, l)
    if not isinstance(x, str) or not isinstance(c, np.ndarray):
        raise Skip("Mul of two constants")
    if c.size == 1 and math.isclose(float(c.reshape(())), math.sqrt(0.5), rel_tol=1e-6):  # gelu: x / sqrt 2 ...
        nid = _gelu_chain(imp, node, node.input[0 if isinstance(l, str) else 1], [("Erf", None)], "none")
        if nid is not None:
            return nid
    shape = imp.shape(x)
    if c.size == 1 and float(c.reshape(())) == 0.0:
        return imp.add(node, "zero", [x])
    if c.size == 1:
        nid = _attention_chain(imp, node, x, float(c.reshape(())))
        if nid is not None:
            return nid
    ch = shape[0]
    if c.size == ch and (c.shape in ((ch,) + (1,) * (len(shape) - 1), (1, ch) + (1,) * (len(shape) - 1))
                         or (len(shape) == 1 and c.shape == (ch,))):
        return imp.add(node, "scale", [x], params={"weight": c.reshape(ch)})
    raise Skip(f"Mul by a constant of shape {c.shape}; archir multiplies by a learnable per-channel scale only")


def _heads_of(imp, pid: str, dims: list[int], users: int = 1) -> tuple[str, np.ndarray, np.ndarray | None] | None:
    """``permute(dims)(reshape([L, H, d])(linear(x)))`` in the IR built so far (one of attention's q, k, v as
    archir's to_onnx writes them): ``(x, weight, bias)``, else ``None``."""
    g = imp.g
    p = g.node(pid)
    if p.op != "permute" or p.attrs["dims"] != dims or len(g.users_of(pid)) != users:
        return None
    r = g.node(g.inputs_of(pid)[0])
    if r.op != "reshape" or len(r.attrs["shape"]) != 3 or len(g.users_of(r.id)) != 1:
        return None
    lin = g.node(g.inputs_of(r.id)[0])
    if lin.op != "linear" or len(g.users_of(lin.id)) != 1 or len(g.node(g.inputs_of(lin.id)[0]).type.shape) != 2:
        return None
    return g.inputs_of(lin.id)[0], lin.params["weight"], lin.params.get("bias")


def _attention_chain(imp, node, s: str, c: float) -> str | None:
    """archir's to_onnx of ``attention``: ``Mul(MatMul(q, k), 1/sqrt(d)) -> Softmax -> MatMul(., v) -> Transpose
    -> Reshape -> MatMul(., W_out^T) [-> Add(b_out)]`` with q, k, v the heads of three linears of one ``x``
    (already read as linear -> reshape -> permute). Read back as one ``attention`` node: the forward ONNX nodes
    are consumed and the q/k/v IR nodes replaced. ``None`` where the chain is anything else."""
    g = imp.g
    mm = g.node(s)
    if mm.op != "matmul" or len(g.users_of(s)) != 0:
        return None
    qi, ki = g.inputs_of(s)
    q, k = _heads_of(imp, qi, [1, 0, 2]), _heads_of(imp, ki, [1, 2, 0])
    if q is None or k is None or q[0] != k[0]:
        return None
    x = q[0]
    length, e = imp.shape(x)
    heads, d = g.node(g.inputs_of(qi)[0]).attrs["shape"][1:]
    if heads * d != e or not math.isclose(c, 1.0 / math.sqrt(d), rel_tol=1e-6):
        return None
    sm = imp.sole_user(node.output[0])
    if sm is None or sm.op_type != "Softmax" or int(_attrs(sm).get("axis", -1)) not in (-1, 3):
        return None
    ctx = imp.sole_user(sm.output[0])
    if ctx is None or ctx.op_type != "MatMul" or ctx.input[0] != sm.output[0]:
        return None
    vi = imp.env.get(ctx.input[1], _BAD)
    # v's heads are read by the context MatMul, which is not imported yet: no IR user, one ONNX user
    v = _heads_of(imp, vi, [1, 0, 2], users=0) if isinstance(vi, str) else None
    if v is None or v[0] != x or imp.sole_user(ctx.input[1]) is not ctx:
        return None
    tr = imp.sole_user(ctx.output[0])
    if tr is None or tr.op_type != "Transpose" or list(_attrs(tr).get("perm", [])) != [0, 2, 1, 3]:
        return None
    rs = imp.sole_user(tr.output[0])
    target = imp.env.get(rs.input[1], _BAD) if rs is not None and rs.op_type == "Reshape" else _BAD
    if not isinstance(target, np.ndarray) or target.reshape(-1).tolist() != [0, length, e]:
        return None
    out = imp.sole_user(rs.output[0])
    w_out = imp.env.get(out.input[1], _BAD) if out is not None and out.op_type == "MatMul" else _BAD
    if out is None or out.input[0] != rs.output[0] or not isinstance(w_out, np.ndarray) or w_out.shape != (e, e):
        return None
    chain, b_out = [sm, ctx, tr, rs, out], None
    add = imp.sole_user(out.output[0])
    if add is not None and add.op_type == "Add":
        other = [i for i in add.input if i != out.output[0]]
        b = imp.env.get(other[0], _BAD) if len(other) == 1 else _BAD
        if isinstance(b, np.ndarray) and b.shape == (e,):
            chain.append(add)
            b_out = b
    biases = [q[2], k[2], v[2], b_out]
    if any(b is None for b in biases) != all(b is None for b in biases):
        return None  # a bias on some projections only: not nn.MultiheadAttention
    params = {"in_proj_weight": np.concatenate([q[1], k[1], v[1]]), "out_proj_weight": np.ascontiguousarray(w_out.T)}
    if b_out is not None:
        params.update(in_proj_bias=np.concatenate(biases[:3]), out_proj_bias=b_out)
    nid = imp.add(chain[-1], "attention", [x], params=params, num_heads=int(heads), bias=b_out is not None)
    index = {id(n): i for i, n in enumerate(imp.model.graph.node)}
    for n in chain:
        imp.done.add(index[id(n)])
    imp.env[chain[-1].output[0]] = nid
    # the q, k, v heads and their scores are now inside the attention node
    dead = [s]
    for pid in (qi, ki, vi):
        r = g.inputs_of(pid)[0]
        dead += [pid, r, g.inputs_of(r)[0]]
    for n in dead:
        g.remove(n)
    return nid


# ---- swin: window_attention read back


class _WindowAttentionRead:
    """The value of the ``Gather`` that starts archir's lowering of a ``window_attention`` (its bias rows, now
    inside the node; nothing else reads it)."""


def _window_attention_at(imp, i: int, node) -> Any:
    """archir's to_onnx of ``window_attention`` (``window_attention_v2``), read back as one node, starting at its
    first ONNX node: ``Gather`` of a float table ``(R, heads)`` by a constant index of ``T * T`` entries (V2:
    ``MatMul`` of the constant ``(R, 2)`` coordinate table by cpb_mlp's first weight, the ``Gather`` 4 nodes
    later). The attrs are read from the model (the window from R and T, the input from the node after the bias,
    the shift from the roll's first ``Slice``); then a node with those attrs is lowered again and its ONNX nodes
    must match the model's next nodes exactly: the same op types, attributes and wiring, every structural constant
    (index, coordinate table, mask, shapes, pads, slices, scales) equal, and no value inside the run read from
    outside it. The weights are the model's constants in the weight slots (V2's unused k third of ``qkv_bias``,
    which torchvision zeroes and the lowering leaves out, reads back as zeros). ``None`` (the model's nodes are
    then mapped one by one) where anything differs."""
    import itertools

    from archir.ops import relative_position_index

    nodes = imp.model.graph.node
    extra: dict[str, Any] = {}
    if node.op_type == "MatMul":  # V2: cpb_mlp on the coordinate table
        coords, w1 = (imp.env.get(v, _BAD) for v in node.input[:2])
        gather = nodes[i + 4] if i + 4 < len(nodes) else None
        w2 = imp.env.get(nodes[i + 3].input[1], _BAD) if i + 3 < len(nodes) and len(nodes[i + 3].input) > 1 else _BAD
        if not (isinstance(coords, np.ndarray) and coords.ndim == 2 and coords.shape[1] == 2 and
                isinstance(w1, np.ndarray) and w1.ndim == 2 and w1.shape[0] == 2 and isinstance(w2, np.ndarray)
                and w2.ndim == 2 and w2.shape[0] == w1.shape[1] and gather is not None and
                gather.op_type == "Gather" and len(gather.input) == 2):
            return None
        op, rows, heads, index, first = "window_attention_v2", coords.shape[0], w2.shape[1], \
            imp.env.get(gather.input[1], _BAD), 9
        extra["cpb_hidden"] = int(w1.shape[1])
    else:
        table, index = (imp.env.get(v, _BAD) for v in node.input[:2])
        if not (isinstance(table, np.ndarray) and table.dtype == np.float32 and table.ndim == 2):
            return None
        op, (rows, heads), first = "window_attention", table.shape, 3
    if not (isinstance(index, np.ndarray) and index.dtype == np.int64 and index.ndim == 1 and
            int(_attrs(node).get("axis", 0)) == 0):
        return None
    t = math.isqrt(index.size)
    s2 = 4 * t + 1 - rows  # (2 wh - 1)(2 ww - 1) = R and wh ww = T: wh + ww = (4 T + 1 - R) / 2
    if t * t != index.size or t < 1 or s2 <= 0 or s2 % 2:
        return None
    total = s2 // 2
    root = math.isqrt(max(total * total - 4 * t, 0))
    windows = {((total + root) // 2, (total - root) // 2), ((total - root) // 2, (total + root) // 2)}
    windows = [w for w in windows if w[0] >= 1 and w[1] >= 1 and w[0] * w[1] == t and
               np.array_equal(index, relative_position_index(*w).reshape(-1))]
    if not windows or i + first >= len(nodes) or not nodes[i + first].input:
        return None
    x = imp.env.get(nodes[i + first].input[0], _BAD)
    if not isinstance(x, str) or len(imp.shape(x)) != 3 or imp.shape(x)[2] % heads:
        return None
    shift = [0, 0]
    for n in nodes[i + first:i + first + 9]:  # the roll's first Slice per axis starts at the shift
        if n.op_type == "Slice" and len(n.input) >= 4:
            st, ax = imp.env.get(n.input[1], _BAD), imp.env.get(n.input[3], _BAD)
            if isinstance(st, np.ndarray) and isinstance(ax, np.ndarray) and ax.size == 1 and int(ax[0]) in (1, 2) \
                    and not shift[int(ax[0]) - 1]:
                shift[int(ax[0]) - 1] = int(st.reshape(-1)[0])
    for window, (qkv_bias, proj_bias) in itertools.product(windows, ((True, True), (False, False), (True, False),
                                                                      (False, True))):
        if any(s >= w for s, w in zip(shift, window)):
            continue
        attrs = dict(window_size=list(window), shift_size=shift, num_heads=heads, qkv_bias=qkv_bias,
                     proj_bias=proj_bias, **extra)
        got = _match_window_attention(imp, i, x, op, attrs, first)
        if got is not None:
            return got
    return None


def _match_window_attention(imp, i: int, x: str, op: str, attrs: dict, first: int) -> Any:
    from archir.lower.onnx import to_onnx

    probe = Graph("probe")
    probe.set_outputs(probe.add(op, probe.input("x", imp.shape(x)), name="wa", **attrs))
    try:
        probe.init_params(seed=0)
        want = to_onnx(probe, check=False)
    except Exception:  # noqa: BLE001 - attrs that do not fit this input: not this pattern
        return None
    inits = {t.name for t in want.graph.initializer}
    nodes = imp.model.graph.node
    mine = list(want.graph.node)
    if i + len(mine) > len(nodes):
        return None
    values, slots = {"x": nodes[i + first].input[0]}, {}
    for k, (e, got) in enumerate(zip(mine, nodes[i:i + len(mine)])):
        if e.op_type != got.op_type or len(e.input) != len(got.input) or len(got.output) != 1 or \
                _attrs(e) != _attrs(got) or i + k in imp.done:
            return None
        for ei, gi in zip(e.input, got.input):
            if ei in inits:
                c = imp.env.get(gi, _BAD)
                ref = next(numpy_helper.to_array(t) for t in want.graph.initializer if t.name == ei)
                if not isinstance(c, np.ndarray) or c.dtype != ref.dtype or c.shape != ref.shape:
                    return None
                if "::" in ei:  # structural: index, mask, shapes, pads, slice bounds, scale
                    if not np.array_equal(c, ref):
                        return None
                else:  # a weight slot
                    slots[ei] = c
            elif values.get(ei) != gi:
                return None
        values[e.output[0]] = got.output[0]
    chain = nodes[i:i + len(mine)]
    inside = {id(n) for n in chain}
    for n in chain[:-1]:  # the run's inner values are read inside it only
        if n.output[0] in {o.name for o in imp.model.graph.output} or any(
                id(u) not in inside for u in imp.users.get(n.output[0], [])):
            return None
    c = imp.shape(x)[2]
    params = {"qkv_weight": np.concatenate([slots[f"wa.{w}_weight_t"].T for w in "qkv"]),
              "proj_weight": np.ascontiguousarray(slots["wa.proj_weight_t"].T)}
    if op == "window_attention_v2":
        params.update(logit_scale=slots["wa.logit_scale"], cpb_fc1_weight=np.ascontiguousarray(
            slots["wa.cpb_fc1_weight_t"].T), cpb_fc1_bias=slots["wa.cpb_fc1_bias"],
            cpb_fc2_weight=np.ascontiguousarray(slots["wa.cpb_fc2_weight_t"].T))
    else:
        params["relative_position_bias_table"] = slots["wa.relative_position_bias_table"]
    if attrs["qkv_bias"]:
        params["qkv_bias"] = np.concatenate([slots.get(f"wa.{w}_bias", np.zeros(c, np.float32)) for w in "qkv"])
    if attrs["proj_bias"]:
        params["proj_bias"] = slots["wa.proj_bias"]
    assert params["qkv_weight"].shape == (3 * c, c)
    nid = imp.add(chain[-1], op, [x], params=params, **attrs)
    for k in range(1, len(chain)):
        imp.done.add(i + k)
    imp.env[chain[-1].output[0]] = nid
    return _WindowAttentionRead()


def _binary(op: str, onnx_op: str):
    def rule(imp, node, a):
        l, r = (imp.env.get(i, _BAD) for i in node.input)
        if isinstance(l, str) and isinstance(r, str):
            return imp.add(node, op, [l, r])
        raise Skip(f"{onnx_op} with a constant operand; archir's {op} takes two network tensors")

    return rule


_RULES["Sub"] = _binary("sub", "Sub")


@_rule("Div")
def _div(imp, node, a):
    x, c = (imp.env.get(i, _BAD) for i in node.input)
    if isinstance(x, str) and _is_const(imp, node.input[1], math.sqrt(2.0)):  # gelu: x / sqrt 2 -> Erf ...
        nid = _gelu_chain(imp, node, node.input[0], [("Erf", None)], "none")
        if nid is not None:
            return nid
    return _binary("div", "Div")(imp, node, a)


@_rule("Pow")
def _pow(imp, node, a):
    """``x ** 3`` beginning the tanh form of gelu (some exporters write it with Pow)."""
    x = imp.act(node.input[0])
    if _is_const(imp, node.input[1], 3.0):
        nid = _gelu_chain(imp, node, node.input[0], [("Mul", "k"), ("Add", "x"), ("Mul", "c"), ("Tanh", None)],
                          "tanh")
        if nid is not None:
            return nid
    raise Skip(f"Pow of {x!r}; archir has no power op (x ** 3 inside a GELU is read as gelu)")


@_rule("Shape")
def _shape(imp, node, a):
    """The shape of a network tensor (its batch unknown): only a ``Gather`` of its fixed dims reads it."""
    dims = [None, *imp.shape(imp.act(node.input[0]))]
    start, end = int(a.get("start", 0)), a.get("end")
    return _ShapeOf(dims[start:None if end is None else int(end)], imp.act(node.input[0]) if start == 0 else None)


@_rule("Gather")
def _gather(imp, node, a):
    v = imp.env.get(node.input[0], _BAD)
    if isinstance(v, str):  # vit-onnx: x[:, 0]
        return _vit_gather_token(imp, node, a, v)
    idx = imp.const(node.input[1], "the indices")
    if not isinstance(v, _ShapeOf) or int(a.get("axis", 0)) != 0:
        raise Skip("Gather other than of a tensor's fixed dims (Shape then Gather); archir has no gather op")
    n = len(v.dims)
    if idx.ndim == 0 and int(idx) % n == 0 and -n <= int(idx) < n:
        return _BatchSize()  # x.size(0): read by a Reshape target only
    picked = [v.dims[int(i) % n] if -n <= int(i) < n else None for i in idx.reshape(-1)]
    if any(d is None for d in picked):
        raise Skip(f"Gather of dims {idx.reshape(-1).tolist()} of a shape with a dynamic batch axis")
    return np.asarray(picked, np.int64).reshape(idx.shape)


@_rule("Split")
def _split(imp, node, a):
    """``Split`` along a non-batch axis: one ``slice`` per used output (an unused one is left out)."""
    x = imp.act(node.input[0])
    shape = imp.shape(x)
    rank = len(shape) + 1
    axis = int(a.get("axis", 0))
    axis = axis % rank if -rank <= axis < rank else axis
    if not 1 <= axis < rank:
        raise Skip(f"Split along axis {a.get('axis', 0)}; archir never splits the batch axis")
    size, k = shape[axis - 1], len(node.output)
    if len(node.input) > 1 and node.input[1]:
        sizes = imp.const(node.input[1], "split").astype(np.int64).reshape(-1).tolist()
    elif "split" in a:
        sizes = [int(v) for v in a["split"]]
    else:  # equal parts (opset 18: num_outputs, the last one smaller)
        part = -(-size // k)
        sizes = [min(part, size - j * part) for j in range(k)]
    if len(sizes) != k or sum(sizes) != size or any(v < 0 for v in sizes):
        raise Skip(f"Split sizes {sizes} of a dim of {size} into {k} outputs")
    outs, start = [], 0
    graph_outs = {o.name for o in imp.model.graph.output}
    for o, n in zip(node.output, sizes):
        if not o or (o not in imp.users and o not in graph_outs):
            outs.append(_BAD)  # read by nothing
        elif n == size:
            outs.append(x)
        else:
            if n < 1:
                raise Skip(f"Split output {o!r} is empty")
            outs.append(imp.add(node, "slice", [x], dim=axis, start=start, end=None if start + n >= size
                                else start + n))
        start += n
    return outs


@_rule("Slice")
def _slice(imp, node, a):
    """A ``Slice`` with constant starts/ends/axes/steps: one archir ``slice`` per axis, chained;
    ``Mul(Slice(x, [0, 0], [big, big], [2, 3], [s, s]), 0)`` is archir's strided ``zero``."""
    v = imp.env.get(node.input[0], _BAD)
    if isinstance(v, _ShapeOf):  # Shape(x)[a:b] (torch's Resize sizes)
        bounds = [imp.const(i, w).reshape(-1).tolist() if i else None
                  for i, w in zip(list(node.input[1:]) + [""] * 4, ["starts", "ends", "axes", "steps"])][:4]
        if len(bounds[0]) != 1 or (bounds[2] not in (None, [0])) or (bounds[3] not in (None, [1])):
            raise Skip("Slice of a shape other than one contiguous range")
        start = int(bounds[0][0])
        return _ShapeOf(v.dims[start:int(min(bounds[1][0], len(v.dims)))], v.src if start == 0 else None)
    x = imp.act(node.input[0])
    shape = imp.shape(x)
    names = ["starts", "ends", "axes", "steps"]
    vals = [imp.const(i, w) if k < len(node.input) else None
            for k, (i, w) in enumerate(zip(list(node.input[1:5]) + [""] * 4, names), start=1)]
    starts, ends = (v.astype(np.int64).reshape(-1).tolist() for v in vals[:2])
    rank = len(shape) + 1  # with the batch axis
    axes = list(range(len(starts))) if vals[2] is None else vals[2].astype(np.int64).reshape(-1).tolist()
    steps = [1] * len(starts) if vals[3] is None else vals[3].astype(np.int64).reshape(-1).tolist()
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise Skip(f"Slice with {len(starts)} starts, {len(ends)} ends, {len(axes)} axes, {len(steps)} steps")
    axes = [ax % rank if -rank <= ax < rank else ax for ax in axes]
    if any(not 0 <= ax < rank for ax in axes) or len(set(axes)) != len(axes):
        raise Skip(f"Slice axes {axes} are not distinct axes of a rank-{rank} tensor")
    user = imp.sole_user(node.output[0])
    zero_mul = False
    if user is not None and user.op_type == "Mul":
        other = [i for i in user.input if i != node.output[0]]
        c = imp.env.get(other[0]) if len(other) == 1 else None
        zero_mul = isinstance(c, np.ndarray) and c.size == 1 and float(c.reshape(())) == 0.0
    if (zero_mul and len(shape) == 3 and starts == [0, 0] and axes == [2, 3] and len(set(steps)) == 1
            and steps[0] > 1 and ends[0] >= shape[1] and ends[1] >= shape[2]):
        imp.done.add(list(imp.model.graph.node).index(user))
        nid = imp.add(user, "zero", [x], stride=int(steps[0]))
        imp.env[user.output[0]] = nid
        return nid
    if any(s < 1 for s in steps):
        raise Skip(f"Slice steps {steps}: archir slices forwards only (step >= 1)")
    nid = x
    for ax, start, end, step in sorted(zip(axes, starts, ends, steps)):
        size = shape[ax - 1] if ax else None
        if ax == 0:
            if (start, step) == (0, 1) and end >= np.iinfo(np.int64).max // 2:
                continue  # the whole batch
            raise Skip("Slice of the batch axis")
        # ONNX clamps like Python; indices() gives the canonical bounds
        got = range(*slice(int(start), int(end), int(step)).indices(size))
        if (got.start, got.stop, got.step) == (0, size, 1):
            continue
        nid = imp.add(node, "slice", [nid], dim=ax, start=got.start, end=None if got.stop >= size else got.stop,
                      step=got.step)
    return nid


def _matmul_weight(imp, node) -> tuple[str, np.ndarray] | None:
    x = imp.env.get(node.input[0], _BAD)
    w = imp.env.get(node.input[1], _BAD)
    if isinstance(x, str) and isinstance(w, np.ndarray) and w.ndim == 2:
        return x, w
    return None


def _adaptive(imp, node, a):
    """``MatMul(Ph, MatMul(x, Pw^T))`` from archir's to_onnx of an uneven adaptive average pool."""
    from archir.lower.onnx import adaptive_matrix

    x = imp.env.get(node.input[0], _BAD)
    pw = imp.env.get(node.input[1], _BAD)
    if not (isinstance(x, str) and isinstance(pw, np.ndarray) and pw.ndim == 2):
        return None
    user = imp.sole_user(node.output[0])
    if user is None or user.op_type != "MatMul" or user.input[1] != node.output[0]:
        return None
    ph = imp.env.get(user.input[0], _BAD)
    shape = imp.shape(x)
    if not isinstance(ph, np.ndarray) or ph.ndim != 2 or len(shape) != 3:
        return None
    _, h, w = shape
    oh, ow = ph.shape[0], pw.shape[1]
    if ph.shape[1] != h or pw.shape[0] != w:
        return None
    if not (np.allclose(ph, adaptive_matrix(h, oh), atol=1e-7) and np.allclose(pw, adaptive_matrix(w, ow).T, atol=1e-7)):
        return None
    imp.done.add(list(imp.model.graph.node).index(user))
    nid = imp.add(user, "adaptive_avgpool2d", [x], output_size=[oh, ow])
    imp.env[user.output[0]] = nid
    return nid


# ---- maxvit


def _rel_attention_chain(imp, node) -> str | None:
    """archir's to_onnx of ``rel_attention``, read back from its first node, the qkv ``MatMul(x, W^T)`` of a
    ``(N, G, P, E)`` value: ``Add(b) -> Reshape [0, G, P, 3, H, d]`` read by three ``Gather(axis=3)`` of 0, 1, 2,
    each ``Transpose``-d to heads (k then ``Mul``-ed by a scalar), ``MatMul(q, k)``, ``Add`` of the constant bias
    ``Transpose(Reshape(Gather(table, index)))``, ``Softmax``, ``MatMul(., v)``, ``Transpose``, ``Reshape [0, G,
    P, E]``, ``MatMul(W_merge^T)``, ``Add(b_merge)``. Every intermediate value has exactly the users the chain
    gives it; the index must be :func:`archir.ops.relative_position_index` of a window of P tokens whose table
    has the given rows (a 1 x P and a P x 1 window have the same index, the same function: read as 1 x P).
    The nodes are consumed and one ``rel_attention`` node made; ``None`` where the chain is
    anything else."""
    from archir.ops import relative_position_index

    def const(name):
        v = imp.env.get(name, _BAD)
        return v if isinstance(v, np.ndarray) else None

    def user(value, op_type, pos=None):
        u = imp.sole_user(value)
        if u is None or u.op_type != op_type or (pos is not None and (len(u.input) <= pos or u.input[pos] != value)):
            return None
        return u

    def perm_of(n):
        return [int(v) for v in _attrs(n).get("perm", [])]

    x = imp.env.get(node.input[0], _BAD)
    w = const(node.input[1])
    if not isinstance(x, str) or w is None or len(imp.shape(x)) != 3 or w.ndim != 2:
        return None
    g, p, e = imp.shape(x)
    if w.shape != (e, 3 * e):
        return None
    chain = [node]
    add = user(node.output[0], "Add", 0)
    b = const(add.input[1]) if add is not None and len(add.input) == 2 else None
    if b is None or b.shape != (3 * e,):
        return None
    rs = user(add.output[0], "Reshape", 0)
    target = const(rs.input[1]) if rs is not None else None
    if target is None or target.ndim != 1 or len(target) != 6 or target[:4].tolist() != [0, g, p, 3] \
            or int(target[4]) * int(target[5]) != e or int(target[4]) < 1:
        return None
    heads = int(target[4])
    chain += [add, rs]
    gathers = imp.users.get(rs.output[0], [])
    if rs.output[0] in {o.name for o in imp.model.graph.output} or len(gathers) != 3:
        return None
    parts = {}
    for gth in gathers:
        idx = const(gth.input[1]) if gth.op_type == "Gather" and len(gth.input) == 2 else None
        if idx is None or idx.ndim != 0 or int(_attrs(gth).get("axis", 0)) != 3 or int(idx) not in (0, 1, 2):
            return None
        tr = user(gth.output[0], "Transpose")
        if tr is None:
            return None
        parts["qkv"[int(idx)]] = (gth, tr)
    if len(parts) != 3 or perm_of(parts["q"][1]) != [0, 1, 3, 2, 4] or perm_of(parts["v"][1]) != [0, 1, 3, 2, 4] \
            or perm_of(parts["k"][1]) != [0, 1, 3, 4, 2]:
        return None
    for what in "qkv":
        chain += parts[what]
    mul = user(parts["k"][1].output[0], "Mul", 0)
    c = const(mul.input[1]) if mul is not None and len(mul.input) == 2 else None
    if c is None or c.size != 1:
        return None
    scores = user(mul.output[0], "MatMul", 1)
    if scores is None or scores.input[0] != parts["q"][1].output[0] or user(parts["q"][1].output[0], "MatMul") is None:
        return None
    chain += [mul, scores]
    biased = user(scores.output[0], "Add", 0)
    if biased is None or len(biased.input) != 2:
        return None
    # the bias: Transpose [2, 0, 1] of Reshape [P, P, H] of Gather(table, index) on constants
    bt = imp.producer.get(biased.input[1])
    if bt is None or bt.op_type != "Transpose" or perm_of(bt) != [2, 0, 1] or imp.sole_user(bt.output[0]) is not biased:
        return None
    br = imp.producer.get(bt.input[0])
    if br is None or br.op_type != "Reshape" or imp.sole_user(br.output[0]) is not bt:
        return None
    shape = const(br.input[1])
    bg = imp.producer.get(br.input[0])
    if shape is None or shape.reshape(-1).tolist() != [p, p, heads] or bg is None or bg.op_type != "Gather" \
            or imp.sole_user(bg.output[0]) is not br or int(_attrs(bg).get("axis", 0)) != 0:
        return None
    table, index = const(bg.input[0]), const(bg.input[1])
    if table is None or index is None or table.ndim != 2 or table.shape[1] != heads or index.shape != (p * p,):
        return None
    window = next(((wh, p // wh) for wh in range(1, p + 1) if p % wh == 0
                   and (2 * wh - 1) * (2 * (p // wh) - 1) == table.shape[0]
                   and np.array_equal(index, relative_position_index(wh, p // wh).reshape(-1))), None)
    if window is None:
        return None
    chain += [bg, br, bt, biased]
    sm = user(biased.output[0], "Softmax", 0)
    if sm is None or int(_attrs(sm).get("axis", -1)) not in (-1, 4):
        return None
    ctx = user(sm.output[0], "MatMul", 0)
    if ctx is None or ctx.input[1] != parts["v"][1].output[0] or user(parts["v"][1].output[0], "MatMul") is not ctx:
        return None
    tr = user(ctx.output[0], "Transpose", 0)
    if tr is None or perm_of(tr) != [0, 1, 3, 2, 4]:
        return None
    rs2 = user(tr.output[0], "Reshape", 0)
    t2 = const(rs2.input[1]) if rs2 is not None else None
    if t2 is None or t2.reshape(-1).tolist() != [0, g, p, e]:
        return None
    mm = user(rs2.output[0], "MatMul", 0)
    wm = const(mm.input[1]) if mm is not None else None
    if wm is None or wm.shape != (e, e):
        return None
    out = user(mm.output[0], "Add", 0)
    bm = const(out.input[1]) if out is not None and len(out.input) == 2 else None
    if bm is None or bm.shape != (e,):
        return None
    chain += [sm, ctx, tr, rs2, mm, out]
    scale = float(c.reshape(()))
    params = {"qkv_weight": np.ascontiguousarray(w.T), "qkv_bias": b, "merge_weight": np.ascontiguousarray(wm.T),
              "merge_bias": bm, "bias_table": table.astype(np.float32)}
    nid = imp.add(out, "rel_attention", [x], params=params, num_heads=heads, window=list(window),
                  scale=None if math.isclose(scale, e ** -0.5, rel_tol=1e-6) else _f32(scale))
    _consume(imp, chain)
    imp.env[out.output[0]] = nid
    return nid


@_rule("MatMul")
def _matmul(imp, node, a):
    pooled = _adaptive(imp, node, a)
    if pooled is not None:
        return pooled
    windowed = _rel_attention_chain(imp, node)  # maxvit
    if windowed is not None:
        return windowed
    xw = _matmul_weight(imp, node)
    l, r = (imp.env.get(i, _BAD) for i in node.input)
    if xw is None and isinstance(l, str) and isinstance(r, str):
        return imp.add(node, "matmul", [l, r])  # two activations (attention's q @ k^T)
    if xw is None:
        raise Skip("MatMul that is neither x @ constant matrix (a linear layer), two network tensors, nor "
                   "archir's adaptive pooling")
    x, w = xw
    user = imp.sole_user(node.output[0])
    if user is not None and user.op_type == "Add":
        other = [i for i in user.input if i != node.output[0]]
        b = imp.env.get(other[0], _BAD) if len(other) == 1 else _BAD
        if isinstance(b, np.ndarray) and b.shape == (w.shape[1],):
            imp.done.add(list(imp.model.graph.node).index(user))
            nid = imp.add(user, "linear", [x], params={"weight": w.T, "bias": b}, out_features=int(w.shape[1]))
            imp.env[user.output[0]] = nid
            return nid
    return imp.add(node, "linear", [x], params={"weight": w.T}, out_features=int(w.shape[1]), bias=False)


@_rule("Gemm")
def _gemm(imp, node, a):
    x = imp.act(node.input[0])
    w = imp.const(node.input[1], "the Gemm weight")
    c = imp.const(node.input[2], "the Gemm bias") if len(node.input) > 2 and node.input[2] else None
    if a.get("transA", 0) or float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0:
        raise Skip("Gemm with transA, alpha or beta other than the defaults")
    w = w if a.get("transB", 0) else w.T
    params = {"weight": w}
    if c is not None:
        if c.size == w.shape[0]:
            params["bias"] = c.reshape(w.shape[0])
        else:
            raise Skip(f"Gemm bias of shape {c.shape} is not one value per output")
    return imp.add(node, "linear", [x], params=params, out_features=int(w.shape[0]), bias=c is not None)


# --------------------------------------------------------------------------- vit-onnx: symbolic shape arithmetic
# torch.onnx.export computes shapes in the graph from ``Shape`` of run-time tensors (TorchScript: the head size of
# nn.MultiheadAttention from ``Shape -> Gather -> Div -> Cast``, the scale from ``Sqrt`` of a shape, the class token
# target from ``Where(Equal(...))``; dynamo: ``Shape -> Slice -> Concat`` reshape targets). Every dim of an
# importable graph is static except the batch, so these values are evaluated exactly before the import, with the
# batch as the symbol ``N`` (sympy): a value that comes out free of ``N`` is a constant; one that still holds ``N``
# is a :class:`_Sym`, which only a Reshape target or an Expand target may read, and only as "keep the batch"
# (``[N, *constants]``). Nothing is approximated: an entry that is not an exact integer polynomial in ``N`` (a
# ``Div`` that does not divide, ``Mod(N, 2)``, ``Equal(N, 5)``) stays unknown, and whatever needs it is refused.

#: ops evaluated on shape values (all inputs small constants or shape values)
_SYM_OPS = frozenset({"Shape", "Size", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Mul", "Div", "Mod",
                      "Add", "Sub", "Neg", "Sqrt", "Equal", "Where", "ConstantOfShape", "Reshape", "Range"})
#: tensor ops whose output has their first input's shape
_SYM_SAME = frozenset({"Relu", "Sigmoid", "Tanh", "Erf", "Gelu", "Softmax", "LayerNormalization", "BatchNormalization",
                       "Identity", "Dropout", "Cast", "Sqrt", "Neg", "Abs", "Exp", "Log", "HardSigmoid", "HardSwish",
                       "LeakyRelu", "Elu", "Clip", "Reciprocal", "Floor", "Ceil"})
_SYM_BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Where", "Equal", "Max", "Min"})


class _Sym:
    """A shape value that depends on the run-time batch size: an integer array of sympy polynomials in ``N``."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr

    def __repr__(self) -> str:
        return str(self.arr.tolist())


class _Unknown(Exception):
    pass


class _PerSample:
    """swin-onnx: an integer tensor of shape ``(N, *rest)`` whose entry ``[n, i]`` is an exact integer polynomial in
    the sample index ``n`` and the batch size ``N`` (dynamo's ``as_strided`` index, ``Range(0, N) * stride +
    offsets``). ``coef`` maps a monomial ``(a, b)`` (``n ** a * N ** b``) to its integer coefficients, an object array
    of Python ints of shape ``rest`` (exact: no int64 overflow)."""

    def __init__(self, coef: dict[tuple[int, int], np.ndarray], rest: tuple[int, ...]) -> None:
        self.rest = tuple(int(d) for d in rest)
        if math.prod(self.rest) > _PER_SAMPLE_MAX:
            raise _Unknown
        self.coef = {}
        for k, c in coef.items():
            c = np.broadcast_to(np.asarray(c, dtype=object), self.rest)
            if any(v != 0 for v in c.reshape(-1)):
                if sum(k) > _SYM_MAX_DEGREE or any(abs(int(v)) >= _SYM_MAX_COEFF for v in c.reshape(-1)):
                    raise _Unknown
                self.coef[k] = c

    def entry(self, i: tuple[int, ...]) -> str:
        terms = [f"{int(c[i])}{''.join(f' * {v}' + (f' ** {p}' if p > 1 else '') for v, p in zip('nN', k) if p)}"
                 for k, c in sorted(self.coef.items(), reverse=True) if c[i]]
        return " + ".join(terms) or "0"

    def __repr__(self) -> str:
        return f"<per-sample (N, {', '.join(map(str, self.rest))})>"


#: what a :class:`_PerSample` is built from (``_SymPass._per_sample``); anything else leaves the value unknown
_PER_SAMPLE_OPS = ("Range(s, s + N * d, d) with constant integers s, d", "Add", "Sub", "Mul", "Neg",
                   "Unsqueeze / Squeeze / Reshape that keep the batch axis first", "Cast to an integer type")
#: a per-sample index holds at most this many entries per sample (a flattened sample: 768 in Swin-T)
_PER_SAMPLE_MAX = 1 << 16


def _sympy():
    import sympy

    return sympy


#: a shape value's polynomial in N is at most this degree, its coefficients below this size (shape arithmetic is
#: N * heads, not N ** 100; a hostile file must not make sympy build huge numbers)
_SYM_MAX_DEGREE = 4
_SYM_MAX_COEFF = 1 << 62


def _int_poly(e, n) -> bool:
    """``e`` is an integer-valued polynomial in ``n`` with integer coefficients (so exact for every batch size),
    of small degree and coefficients."""
    sp = _sympy()
    if e.is_Integer:
        return abs(int(e)) < _SYM_MAX_COEFF
    if not e.is_polynomial(n):
        return False
    poly = sp.Poly(e, n)
    return poly.degree() <= _SYM_MAX_DEGREE and all(c.is_Integer and abs(int(c)) < _SYM_MAX_COEFF
                                                    for c in poly.coeffs())


class _SymPass:
    """Symbolic shapes of the tensors and values of a model, the batch as ``N`` (see the block comment)."""

    def __init__(self, imp) -> None:
        sp = _sympy()
        self.sp = sp
        self.N = sp.Symbol("N", integer=True, positive=True)
        self.env = imp.env
        self.shapes: dict[str, list | None] = {}
        self.vals: dict[str, np.ndarray | _Sym] = {}
        for t in imp.model.graph.initializer:
            self.shapes[t.name] = [sp.Integer(d) for d in t.dims]
        for name, v in imp.env.items():  # initializers and Constant outputs
            if isinstance(v, np.ndarray):
                self.shapes[name] = [sp.Integer(d) for d in v.shape]
                if v.size <= _FOLD_MAX:
                    self.vals[name] = v
        for vi in imp.model.graph.input:
            if vi.name not in self.shapes:
                dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
                self.shapes[vi.name] = [self.N] + [sp.Integer(d) for d in dims[1:]]
        for node in imp.model.graph.node:
            if not node.output or node.output[0] in self.vals:
                continue
            out = None
            try:
                if node.op_type in _SYM_OPS:
                    out = self._value(node)
            except Exception:  # noqa: BLE001 - not evaluable: unknown, and the importer's own rules report the node
                out = None
            if out is not None:
                self.vals[node.output[0]] = out
                self.shapes[node.output[0]] = ([self.N] if isinstance(out, _PerSample) else []) + [
                    sp.Integer(d) for d in (out.rest if isinstance(out, _PerSample) else
                                            np.shape(out.arr if isinstance(out, _Sym) else out))]
                continue
            try:
                self.shapes[node.output[0]] = self._tensor_shape(node)
            except Exception:  # noqa: BLE001 - an unknown shape (a Shape of it is not evaluated)
                self.shapes[node.output[0]] = None

    # ---- values
    def _obj(self, v) -> np.ndarray:
        """A value as an object array of sympy integers (or booleans)."""
        if isinstance(v, _Sym):
            return v.arr
        a = np.asarray(v)
        if a.dtype == np.bool_:
            return a.astype(object)
        if not np.issubdtype(a.dtype, np.integer):
            if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
                raise _Unknown
        flat = [self.sp.Integer(int(x)) for x in a.reshape(-1)]
        return np.array(flat + [None], dtype=object)[:-1].reshape(a.shape)

    def _done(self, arr: np.ndarray, dtype=np.int64):
        arr = np.asarray(arr, dtype=object)
        flat = []
        for e in arr.reshape(-1):
            if isinstance(e, (bool, np.bool_)) or e in (self.sp.true, self.sp.false):
                flat.append(bool(e))
                continue
            e = self.sp.expand(self.sp.sympify(e))
            if not _int_poly(e, self.N):
                raise _Unknown
            flat.append(e)
        out = np.array(flat + [None], dtype=object)[:-1].reshape(arr.shape)
        if all(isinstance(e, bool) for e in flat):
            return out.astype(np.bool_)
        if all(not isinstance(e, bool) and e.is_Integer for e in flat):
            return np.array([int(e) for e in flat], dtype=dtype).reshape(arr.shape)
        return _Sym(out)

    def _const(self, name: str) -> np.ndarray:
        v = self.vals.get(name)
        if not isinstance(v, np.ndarray):
            raise _Unknown
        return v

    def _value(self, node):
        op, ins, a = node.op_type, list(node.input), _attrs(node)
        if op == "Shape":
            dims = self.shapes.get(ins[0])
            if dims is None:
                raise _Unknown
            start, end = int(a.get("start", 0)), a.get("end")
            return self._done(np.array(dims[start:None if end is None else int(end)] + [None], dtype=object)[:-1])
        if op == "Size":
            dims = self.shapes.get(ins[0])
            if dims is None:
                raise _Unknown
            return self._done(np.array(math.prod(dims), dtype=object))
        if not all(i in self.vals for i in ins if i):
            # swin-onnx: a per-sample index may read a constant larger than the shape-value bound (Swin-T's offsets
            # of a 768-channel sample, a 2048-channel CNN's)
            big = {i: self.env.get(i) for i in ins if i and i not in self.vals}
            if not any(isinstance(self.vals.get(i), _PerSample) for i in ins if i) or not all(
                    isinstance(v, np.ndarray) and v.size <= _PER_SAMPLE_MAX for v in big.values()):
                return None
            return self._per_sample(node, [self.vals.get(i, big.get(i)) if i else None for i in ins])
        feeds = [self.vals[i] if i else None for i in ins]
        if any(isinstance(f, _PerSample) for f in feeds) or (op == "Range" and any(isinstance(f, _Sym) for f in feeds)):
            return self._per_sample(node, feeds)  # swin-onnx
        if all(f is None or isinstance(f, np.ndarray) for f in feeds):
            return self._fold(node, {i: self.vals[i] for i in ins if i})
        x = feeds[0]
        if op == "Gather":
            idx = self._const(ins[1]).astype(np.int64)
            return self._done(np.take(self._obj(x), idx, axis=int(a.get("axis", 0))))
        if op == "Slice":
            arr = self._obj(x)
            starts, ends = (self._const(i).reshape(-1).tolist() for i in ins[1:3])
            axes = self._const(ins[3]).reshape(-1).tolist() if len(ins) > 3 and ins[3] else list(range(len(starts)))
            steps = self._const(ins[4]).reshape(-1).tolist() if len(ins) > 4 and ins[4] else [1] * len(starts)
            idx = [slice(None)] * arr.ndim
            for ax, s, e, st in zip(axes, starts, ends, steps):
                idx[int(ax)] = slice(int(s), int(e), int(st))
            return self._done(arr[tuple(idx)])
        if op == "Concat":
            return self._done(np.concatenate([self._obj(f) for f in feeds], axis=int(a["axis"])))
        if op in ("Unsqueeze", "Squeeze"):
            axes = self._const(ins[1]).reshape(-1).tolist() if len(ins) > 1 and ins[1] else a.get("axes")
            arr = self._obj(x)
            if op == "Squeeze":
                return self._done(np.squeeze(arr, axis=None if axes is None else tuple(int(v) for v in axes)))
            rank = arr.ndim + len(axes)
            for ax in sorted(int(v) % rank for v in axes):
                arr = np.expand_dims(arr, ax)
            return self._done(arr)
        if op == "Reshape":
            arr = self._obj(x)
            shape = self._const(ins[1]).astype(np.int64).tolist()
            shape = [arr.shape[k] if d == 0 and not a.get("allowzero", 0) else d for k, d in enumerate(shape)]
            return self._done(arr.reshape(shape))
        if op == "Cast":
            if onnx.helper.tensor_dtype_to_np_dtype(int(a["to"])).kind not in "iu":
                raise _Unknown  # a batch-dependent shape as a float (Sqrt of it) is never a constant
            return self._done(self._obj(x))
        if op in ("Add", "Sub", "Mul", "Neg"):
            l = self._obj(x)
            if op == "Neg":
                return self._done(-l)
            r = self._obj(feeds[1])
            return self._done(l + r if op == "Add" else l - r if op == "Sub" else l * r)
        if op == "Div":  # integer division: exact only where it divides
            l, r = np.broadcast_arrays(self._obj(x), self._obj(feeds[1]))
            out = np.empty(l.shape, dtype=object)
            for k in np.ndindex(l.shape):
                if r[k] == 0:
                    raise _Unknown
                out[k] = self.sp.cancel(l[k] / r[k])
            return self._done(out)
        if op == "Mod":
            if int(a.get("fmod", 0)):
                raise _Unknown
            l, r = np.broadcast_arrays(self._obj(x), self._obj(feeds[1]))
            out = np.empty(l.shape, dtype=object)
            for k in np.ndindex(l.shape):
                if r[k] == 0:
                    raise _Unknown
                out[k] = self.sp.Mod(l[k], r[k])
            return self._done(out)
        if op == "Equal":
            l, r = np.broadcast_arrays(self._obj(x), self._obj(feeds[1]))
            out = np.empty(l.shape, dtype=object)
            for k in np.ndindex(l.shape):
                e = self.sp.Eq(l[k], r[k])
                if e not in (self.sp.true, self.sp.false):
                    raise _Unknown  # e.g. N == 5: true for one batch size only
                out[k] = bool(e)
            return self._done(out)
        if op == "Where":
            cond = feeds[0]
            if not isinstance(cond, np.ndarray):
                raise _Unknown
            return self._done(np.where(cond.astype(bool), self._obj(feeds[1]), self._obj(feeds[2])))
        raise _Unknown  # Sqrt, ConstantOfShape, Range of a batch-dependent value

    # ---- swin-onnx: per-sample integer tensors (dynamo's as_strided index)
    def _poly(self, v, rest: tuple[int, ...]) -> dict:
        """A constant or :class:`_Sym` (no batch axis) as :class:`_PerSample` coefficients broadcast to ``rest``."""
        if isinstance(v, _PerSample):
            return v.coef
        arr = np.asarray(v.arr if isinstance(v, _Sym) else v)
        if not isinstance(v, _Sym) and arr.dtype.kind not in "iu":
            raise _Unknown  # a float index is no integer arithmetic
        coef: dict = {}
        for k in np.ndindex(arr.shape):
            e = arr[k]
            terms = {(0, 0): int(e)} if not isinstance(v, _Sym) else {
                (0, int(m[0])): int(c) for m, c in self.sp.Poly(e, self.N).as_dict().items()}
            for key, c in terms.items():
                coef.setdefault(key, np.zeros(arr.shape, dtype=object))[k] = c
        return {key: np.broadcast_to(c, rest) for key, c in coef.items()}

    def _per_sample(self, node, feeds) -> _PerSample:
        """``node`` on a :class:`_PerSample` (or ``Range`` over the batch), exactly; anything but the ops of
        ``_PER_SAMPLE_OPS`` raises :class:`_Unknown` (the value stays unknown, and whatever reads it is refused)."""
        op, a = node.op_type, _attrs(node)
        if op == "Range":
            start, limit, delta = feeds
            if not all(isinstance(f, np.ndarray) and f.size == 1 and f.dtype.kind in "iu" for f in (start, delta)) or \
                    not isinstance(limit, _Sym) or limit.arr.size != 1:
                raise _Unknown
            s, d = int(start.reshape(())), int(delta.reshape(()))
            # Range(s, L, d) has length N and entry n = s + n d exactly when L - s = N d (then ceil((L - s) / d) = N)
            if d == 0 or self.sp.expand(limit.arr.reshape(-1)[0] - s - d * self.N) != 0:
                raise _Unknown
            return _PerSample({(0, 0): np.array(s, dtype=object), (1, 0): np.array(d, dtype=object)}, ())
        x = feeds[0]
        if op == "Cast":
            if onnx.helper.tensor_dtype_to_np_dtype(int(a["to"])).kind not in "iu":
                raise _Unknown
            return x
        if op == "Neg":
            return _PerSample({k: -c for k, c in x.coef.items()}, x.rest)
        if op in ("Add", "Sub", "Mul"):
            l, r = feeds
            ranks = [1 + len(f.rest) if isinstance(f, _PerSample) else np.ndim(f.arr if isinstance(f, _Sym) else f)
                     for f in (l, r)]
            rank = max(ranks)
            parts = []
            for f, k in zip((l, r), ranks):
                if isinstance(f, _PerSample):
                    if k != rank:
                        raise _Unknown  # the batch axis would not stay first
                    parts.append((f, f.rest))
                    continue
                arr = f.arr if isinstance(f, _Sym) else f
                if k == rank:  # a constant with the batch axis: it must broadcast along it (size 1)
                    if arr.shape[0] != 1:
                        raise _Unknown
                    f = _Sym(arr[0]) if isinstance(f, _Sym) else arr[0]
                parts.append((f, np.shape(f.arr if isinstance(f, _Sym) else f)))
            rest = np.broadcast_shapes(*(sh for _, sh in parts))
            cl, cr = (self._poly(f, rest) for f, _ in parts)
            if op == "Mul":
                out: dict = {}
                for (a1, b1), c1 in cl.items():
                    for (a2, b2), c2 in cr.items():
                        key = (a1 + a2, b1 + b2)
                        out[key] = out.get(key, 0) + np.broadcast_to(c1, rest) * np.broadcast_to(c2, rest)
            else:
                out = {k: np.broadcast_to(c, rest) for k, c in cl.items()}
                for k, c in cr.items():
                    c = np.broadcast_to(c, rest)
                    out[k] = out.get(k, 0) + (c if op == "Add" else -c)
            return _PerSample(out, rest)
        if op in ("Unsqueeze", "Squeeze"):
            axes = feeds[1] if len(feeds) > 1 and feeds[1] is not None else a.get("axes")
            if axes is None or not isinstance(axes, (np.ndarray, list)):
                raise _Unknown
            axes = [int(v) for v in np.asarray(axes).reshape(-1)]
            rank = 1 + len(x.rest) + (len(axes) if op == "Unsqueeze" else 0)
            axes = sorted({v % rank for v in axes})
            if 0 in axes:
                raise _Unknown  # the batch axis would not stay first
            rest = list(x.rest)
            if op == "Unsqueeze":
                for ax in axes:
                    rest.insert(ax - 1, 1)
            else:
                if any(rest[ax - 1] != 1 for ax in axes):
                    raise _Unknown
                rest = [d for k, d in enumerate(rest, start=1) if k not in axes]
            return _PerSample({k: c.reshape(rest) for k, c in x.coef.items()}, tuple(rest))
        if op == "Reshape":
            t = feeds[1]
            flat = list(self._obj(t).reshape(-1)) if isinstance(t, (np.ndarray, _Sym)) else None
            if not flat or any(not e.is_Integer for e in flat[1:]):
                raise _Unknown
            first, rest = flat[0], [int(e) for e in flat[1:]]
            if not (self.sp.expand(first - self.N) == 0 or (first == 0 and not a.get("allowzero", 0)) or
                    (first == -1 and -1 not in rest)):
                raise _Unknown  # the batch axis would not stay first (and whole)
            rest = [x.rest[k - 1] if d == 0 and not a.get("allowzero", 0) and k - 1 < len(x.rest) else d
                    for k, d in enumerate(rest, start=1)]
            size = math.prod(x.rest)
            if -1 in rest:
                known = math.prod(d for d in rest if d != -1)
                if known < 1 or size % known:
                    raise _Unknown
                rest[rest.index(-1)] = size // known
            if any(d < 0 for d in rest) or math.prod(rest) != size:
                raise _Unknown  # not N samples of this size each
            return _PerSample({k: c.reshape(rest) for k, c in x.coef.items()}, tuple(rest))
        raise _Unknown

    def _fold(self, node, feeds: dict) -> np.ndarray | None:
        from onnx.reference import ReferenceEvaluator

        if node.op_type in ("ConstantOfShape", "Range"):
            v = [np.asarray(f).reshape(-1).astype(np.float64) for f in feeds.values()]
            n = np.prod(v[0]) if node.op_type == "ConstantOfShape" else (v[1][0] - v[0][0]) / (v[2][0] or 1)
            if not 0 <= n <= _FOLD_MAX:
                raise _Unknown
        (out,) = ReferenceEvaluator(node).run(None, feeds)
        out = np.asarray(out)
        if out.size > _FOLD_MAX:
            raise _Unknown
        return out

    # ---- tensor shapes
    def _bcast(self, shapes: list) -> list:
        rank = max(len(s) for s in shapes)
        out = []
        for k in range(rank):
            ds = {s[len(s) - rank + k] for s in shapes if len(s) - rank + k >= 0} - {1}
            if len(ds) > 1:
                raise _Unknown
            out.append(ds.pop() if ds else self.sp.Integer(1))
        return out

    def _tensor_shape(self, node) -> list | None:
        op, ins, a = node.op_type, list(node.input), _attrs(node)
        sh = [self.shapes.get(i) if i else None for i in ins]
        if op not in ("Where",) and sh and sh[0] is None:
            return None
        if op in _SYM_SAME:
            return list(sh[0])
        if op in _SYM_BROADCAST:
            if any(s is None for s in sh):
                return None
            return self._bcast(sh)
        if op == "Transpose":
            perm = [int(p) for p in a.get("perm", list(range(len(sh[0])))[::-1])]
            return [sh[0][p] for p in perm]
        if op in ("Reshape", "Expand"):
            t = self.vals.get(ins[1])
            if t is None:
                return None
            target = list(self._obj(t).reshape(-1))
            if op == "Expand":
                return self._bcast([sh[0], target])
            out = [sh[0][k] if d == 0 and not a.get("allowzero", 0) else d for k, d in enumerate(target)]
            if -1 in out:
                known = math.prod(d for d in out if d != -1)
                q = self.sp.cancel(math.prod(sh[0]) / known)
                if not _int_poly(q, self.N):
                    raise _Unknown
                out[out.index(-1)] = q
            if self.sp.expand(math.prod(out) - math.prod(sh[0])) != 0:
                raise _Unknown  # the element counts differ: not a reshape of this tensor
            return out
        if op == "MatMul":
            l, r = sh
            if r is None or len(l) < 2 or len(r) < 2 or self.sp.expand(l[-1] - r[-2]) != 0:
                return None
            return self._bcast([l[:-2], r[:-2]]) + [l[-2], r[-1]]
        if op == "Gemm":
            l, r = sh[0], sh[1]
            if r is None:
                return None
            return [l[1] if a.get("transA", 0) else l[0], r[0] if a.get("transB", 0) else r[1]]
        if op in ("Unsqueeze", "Squeeze"):
            axes = self._const(ins[1]).reshape(-1).tolist() if len(ins) > 1 and ins[1] else a.get("axes")
            s = list(sh[0])
            if op == "Squeeze":
                if axes is None:
                    return [d for d in s if d != 1]
                drop = {int(v) % len(s) for v in axes}
                return [d for k, d in enumerate(s) if k not in drop]
            rank = len(s) + len(axes)
            for ax in sorted(int(v) % rank for v in axes):
                s.insert(ax, self.sp.Integer(1))
            return s
        if op == "Gather":
            idx = self.vals.get(ins[1])
            if idx is None:
                return None
            ax = int(a.get("axis", 0)) % len(sh[0])
            return sh[0][:ax] + [self.sp.Integer(d) for d in np.shape(idx)] + sh[0][ax + 1:]
        if op == "Concat":
            if any(s is None for s in sh):
                return None
            ax = int(a["axis"]) % len(sh[0])
            return sh[0][:ax] + [sum(s[ax] for s in sh)] + sh[0][ax + 1:]
        if op == "Flatten":
            ax = int(a.get("axis", 1)) % len(sh[0])
            return [math.prod(sh[0][:ax]), math.prod(sh[0][ax:])]
        if op == "Conv" and sh[1] is not None and a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"):
            k = [int(v) for v in a.get("kernel_shape", [int(d) for d in sh[1][2:]])]
            nd = len(k)
            pads = [int(v) for v in a.get("pads", [0] * 2 * nd)]
            st = [int(v) for v in a.get("strides", [1] * nd)]
            dil = [int(v) for v in a.get("dilations", [1] * nd)]
            sp_ = [int(d) for d in sh[0][2:]]
            out = [(sp_[j] + pads[j] + pads[j + nd] - dil[j] * (k[j] - 1) - 1) // st[j] + 1 for j in range(nd)]
            return [sh[0][0], sh[1][0]] + [self.sp.Integer(d) for d in out]
        return None


def _sym_target(imp, v: _Sym, what: str) -> list:
    """A batch-dependent shape value read as ``[batch, *constant sizes]`` (``[0 or keep, ...]``), else refused."""
    flat = list(v.arr.reshape(-1))
    n = imp.sym.N
    if not flat or imp.sym.sp.expand(flat[0] - n) != 0 or any(not e.is_Integer for e in flat[1:]):
        raise Skip(f"{what} {v} is computed from the run-time batch size N and is not [N, *constant sizes]: it "
                   "would mix samples of the batch (archir keeps each sample apart)")
    return [int(e) for e in flat[1:]]


def _legacy_ok(imp, node) -> bool:
    """The importer's own shape-value rules (``_ShapeOf``, ``_BatchSize``) may read this node's inputs."""
    for name in node.input:
        if not name:
            continue
        v = imp.env.get(name, _BAD)
        if v is _BAD or isinstance(v, (_Sym, _PerSample)):
            return False
    if node.op_type == "Shape":
        x = imp.env.get(node.input[0])
        dims = imp.sym.shapes.get(node.input[0])
        if not isinstance(x, str) or dims is None or len(dims) != len(imp.shape(x)) + 1 or dims[0] != imp.sym.N or \
                any(d != k for d, k in zip(dims[1:], imp.shape(x))):
            return False
    return True


def _vit_gather_token(imp, node, a, x: str) -> str:
    """``Gather(x, i, axis=k)`` of a network tensor at a constant index (``x[:, 0]``: ViT's class token): a
    ``slice`` of one entry, then that axis dropped (``flatten`` for ``(N, 1, E)``, as from_torch maps it)."""
    idx = imp.const(node.input[1], "the Gather indices")
    shape = list(imp.shape(x))
    rank = len(shape) + 1
    axis = int(a.get("axis", 0))
    axis = axis % rank if -rank <= axis < rank else axis
    if not 1 <= axis < rank or idx.size != 1:
        raise Skip(f"Gather of indices {idx.reshape(-1).tolist()} along axis {a.get('axis', 0)}: archir gathers one "
                   "constant index of a non-batch axis only (x[:, i])")
    size = shape[axis - 1]
    i = int(idx.reshape(()))
    if not -size <= i < size:
        raise Skip(f"Gather index {i} is out of range for a dim of {size}")
    i %= size
    nid = imp.add(node, "slice", [x], dim=axis, start=i, end=None if i + 1 >= size else i + 1)
    if idx.ndim == 1:
        return nid
    if rank == 3 and axis == 1:
        return imp.add(node, "flatten", [nid], start_dim=1)
    return _reshape_to(imp, node, nid, [0] + shape[:axis - 1] + shape[axis:])


# --------------------------------------------------------------------------- vit-onnx: exported nn.MultiheadAttention
# Both of torch's exporters write nn.MultiheadAttention(batch_first=True) as its sequence-first implementation
# (F.multi_head_attention_forward): Transpose the batch to dim 1, one MatMul (+Add) with the packed in-projection on
# (L, N, E), Reshape / Unsqueeze / Transpose / Squeeze to (3, L, N, E), Gather q, k, v, Reshape each to
# (L, N*h, d) and Transpose to (N*h, L, d), Reshape to (N, h, L, d) (k transposed to (N, h, d, L) on the way),
# Mul by scalars, MatMul, Softmax, MatMul with v, Transpose and Reshape to (L*N, E), Gemm with the out-projection,
# Reshape to (L, N, E), Transpose the batch back. The two exporters differ in the order of the layout ops and in
# how they compute the shapes (symbolically evaluated above).
#
# The match is a proof, not a pattern of node names: every tensor of the region is tracked as a layout of
# "atoms" (a dim of the input, the batch N, the token L, a head, a feature) — each atom a (root, stride, size)
# index range of one root dim — through Transpose, Reshape (split / merge of atoms, exact in N), Unsqueeze,
# Squeeze and Gather; the MatMuls must contract the right atoms (q's and k's per-head features, the key tokens with
# v's tokens), q, k, v must be the Gathers 0, 1, 2 of one packed projection, the out-projection must read the heads
# concatenated in order, the scale product must be 1/sqrt(d), and the output must be (N, L, E) in that order. Every
# node reading a tensor of the region is part of it (or a Shape, evaluated above), none is a graph output.

_L_ATOM = "l"


def _vit_quot(sym, a, b):
    """``a / b`` when it is an exact positive integer polynomial in N, else ``None``."""
    q = sym.sp.cancel(a / b)
    if not _int_poly(q, sym.N) or (q.is_Integer and q < 1):
        return None
    return q


class _NoMatch(Exception):
    pass


def _vit_reshape(sym, lay: list, dims: list) -> list:
    atoms = [t for ax in lay for t in ax if t[2] != 1]
    out = []
    for t in dims:
        grp, p = [], sym.sp.Integer(1)
        while True:
            r = _vit_quot(sym, t, p)
            if r is None:
                raise _NoMatch(f"target dim {t} is not a product of whole input dims")
            if r == 1:
                break
            if not atoms:
                raise _NoMatch(f"target dim {t} is larger than the input")
            root, stride, size = atoms.pop(0)
            if _vit_quot(sym, r, size) is not None:
                grp.append((root, stride, size))
                p = p * size
                continue
            s = _vit_quot(sym, size, r)
            if s is None or root == "n":
                raise _NoMatch(f"it splits a dim of {size} ({root}) into {r} x {size / r}"
                               + (", which mixes the batch" if root == "n" or r.free_symbols else ""))
            grp.append((root, stride * s, r))
            atoms.insert(0, (root, stride, s))
            p = p * r
        out.append(tuple(grp))
    if atoms:
        raise _NoMatch("target shape is smaller than the input")
    return out


def _vit_norm(lay: list) -> list:
    """A layout without its atoms of size 1 (they index nothing: any two size-1 axes are the same)."""
    return [tuple(t for t in ax if t[2] != 1) for ax in lay]


def _vit_contiguous(atoms, root: str, size) -> bool:
    """``atoms`` (in order) index all of ``root``'s ``size`` entries, row-major."""
    if not atoms or any(t[0] != root for t in atoms) or atoms[-1][1] != 1:
        return False
    for (_, s0, _), (_, s1, z1) in zip(atoms, atoms[1:]):
        if s0 != s1 * z1:
            return False
    return atoms[0][1] * atoms[0][2] == size


def _vit_mha(imp, index: int, entry) -> str | None:
    """``entry`` (a Transpose perm=[1, 0, 2] of a network tensor) begins an exported nn.MultiheadAttention:
    one ``attention`` node (None when it does not even start like one; Skip with the reason when it starts
    like one and does not match)."""
    if [int(v) for v in _attrs(entry).get("perm", [])] != [1, 0, 2]:
        return None
    x = imp.env.get(entry.input[0])
    if not isinstance(x, str) or len(imp.shape(x)) != 2:
        return None
    nxt = [u for u in imp.users.get(entry.output[0], []) if u.op_type != "Shape"]
    if len(nxt) != 1 or nxt[0].op_type != "MatMul" or nxt[0].input[0] != entry.output[0]:
        return None
    try:
        return _vit_mha_match(imp, index, entry, x)
    except _NoMatch as e:
        raise Skip(f"Transpose perm=[1, 0, 2] moves the batch dim; it begins a sequence-first attention as torch "
                   f"exports nn.MultiheadAttention, but {e}; archir reads only nn.MultiheadAttention(batch_first=True)"
                   "(x, x, x, need_weights=False) exported as is") from None


def _vit_mha_match(imp, index: int, entry, x: str) -> str:
    sym = imp.sym
    sp = sym.sp
    length, e = (sp.Integer(d) for d in imp.shape(x))
    nodes = list(imp.model.graph.node)
    graph_outs = {o.name for o in imp.model.graph.output}

    def const(name):
        v = imp.env.get(name)
        if isinstance(v, np.ndarray):
            return v
        v = sym.vals.get(name)
        return v if isinstance(v, np.ndarray) else None

    def where(n):
        return f"at {n.op_type} {n.name or '?'}"

    st = {entry.output[0]: {"lay": _vit_norm([(("l", 1, length),), (("n", 1, sym.N),), (("e", 1, e),)]),
                            "kind": "x"}}
    tok, key = _vit_norm([(("l", 1, length),), (("key", 1, length),)])
    final = _vit_norm([(("n", 1, sym.N),), (("l", 1, length),), (("o", 1, e),)])
    region = {index}
    found = {}  # w_in, b_in, w_out, b_out, roles, scores, heads
    roles_seen = set()
    out_value = None
    for j in range(index + 1, len(nodes)):
        node = nodes[j]
        tracked = [k for k, i in enumerate(node.input) if i in st]
        if not tracked:
            continue
        if node.op_type == "Shape":
            continue
        if out_value is not None:
            break
        a = _attrs(node)
        op = node.op_type
        s = st[node.input[tracked[0]]]
        lay, kind = s["lay"], s["kind"]
        new = None
        if op in ("Transpose", "Reshape", "Unsqueeze", "Squeeze") and tracked == [0]:
            if op == "Transpose":
                perm = [int(v) for v in a.get("perm", list(range(len(lay)))[::-1])]
                if sorted(perm) != list(range(len(lay))):
                    raise _NoMatch(f"bad perm {perm} {where(node)}")
                lay2 = [lay[p] for p in perm]
            elif op == "Reshape":
                dims = sym.shapes.get(node.output[0])
                if dims is None:
                    raise _NoMatch(f"the target shape is not known exactly {where(node)}")
                try:
                    lay2 = _vit_reshape(sym, lay, dims)
                except _NoMatch as err:
                    raise _NoMatch(f"the Reshape to {dims} {where(node)} does not keep the layout: {err}") from None
            else:
                ax_in = node.input[1] if len(node.input) > 1 and node.input[1] else None
                c = const(ax_in) if ax_in else None
                axes = c.reshape(-1).tolist() if c is not None else a.get("axes")
                if axes is None:
                    raise _NoMatch(f"axes not constant {where(node)}")
                lay2 = list(lay)
                if op == "Unsqueeze":
                    rank = len(lay) + len(axes)
                    for ax in sorted(int(v) % rank for v in axes):
                        lay2.insert(ax, ())
                else:
                    drop = {int(v) % len(lay) for v in axes}
                    if any(t[2] != 1 for k in drop for t in lay[k]):
                        raise _NoMatch(f"squeezes a dim that is not 1 {where(node)}")
                    lay2 = [ax for k, ax in enumerate(lay) if k not in drop]
            new = dict(s, lay=lay2)
        elif op in ("MatMul", "Gemm") and tracked == [0] and kind in ("x", "c"):
            w = const(node.input[1])
            if w is None or w.ndim != 2:
                raise _NoMatch(f"the projection weight is not a constant matrix {where(node)}")
            bias = None
            if op == "Gemm":
                if a.get("transA", 0) or float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0:
                    raise _NoMatch(f"Gemm with transA, alpha or beta {where(node)}")
                w = w.T if a.get("transB", 0) else w
                if len(node.input) > 2 and node.input[2]:
                    bias = const(node.input[2])
                    if bias is None or bias.size != w.shape[1]:
                        raise _NoMatch(f"the Gemm bias is not one constant per output {where(node)}")
                    bias = bias.reshape(-1)
            if kind == "x":
                if lay[-1] != (("e", 1, e),) or w.shape[0] != e or w.shape[1] != 3 * e or "w_in" in found:
                    raise _NoMatch(f"the in-projection is not a packed ({e}, {3 * e}) weight on the features "
                                   f"{where(node)}")
                found["w_in"], found["b_in"] = w, bias
                new = {"lay": lay[:-1] + [(("p", 1, 3 * e),)], "kind": "p", "bias": bias is not None}
            else:
                heads = found["heads"]
                if lay[-1] != heads or w.shape != (e, e) or "w_out" in found:
                    raise _NoMatch(f"the out-projection does not read the heads concatenated in order {where(node)}")
                found["w_out"], found["b_out"] = w, bias
                new = {"lay": lay[:-1] + [(("o", 1, e),)], "kind": "o", "bias": bias is not None}
        elif op == "Add" and len(tracked) == 1 and kind in ("p", "o") and not s["bias"]:
            b = const(node.input[1 - tracked[0]])
            if b is None or len(lay[-1]) != 1 or b.shape != (int(lay[-1][0][2]),):
                raise _NoMatch(f"the Add is not a bias of the projection {where(node)}")
            found["b_in" if kind == "p" else "b_out"] = b
            new = dict(s, bias=True)
        elif op == "Gather" and tracked == [0] and kind == "p":
            idx = const(node.input[1])
            ax = int(a.get("axis", 0)) % len(lay)
            if idx is None or idx.ndim != 0 or lay[ax] != (("p", e, sp.Integer(3)),):
                raise _NoMatch(f"the Gather does not pick one of q, k, v of the packed projection {where(node)}")
            role = int(idx) % 3
            if role in roles_seen:
                raise _NoMatch(f"{'qkv'[role]} is picked twice {where(node)}")
            roles_seen.add(role)
            new = {"lay": lay[:ax] + lay[ax + 1:], "kind": "role", "role": role, "scale": 1.0}
        elif op in ("Mul", "Div") and len(tracked) == 1 and kind in ("role", "s"):
            c = const(node.input[1 - tracked[0]])
            if c is None or c.size != 1 or (op == "Div" and tracked[0] != 0):
                raise _NoMatch(f"{op} by something other than a constant scalar {where(node)}")
            c = float(c.reshape(()))
            new = dict(s, scale=s["scale"] * (c if op == "Mul" else 1.0 / c))
        elif op == "MatMul" and tracked == [0, 1]:
            l, r = st[node.input[0]], st[node.input[1]]
            if l["kind"] == "role" and r["kind"] == "role":
                if (l["role"], r["role"]) != (0, 1):
                    raise _NoMatch(f"the scores are not q @ k^T {where(node)}")
                lead, d = l["lay"][:-2], l["lay"][-1]
                if r["lay"][:-2] != lead or r["lay"][-2] != d or l["lay"][-2] != tok or r["lay"][-1] != tok:
                    raise _NoMatch(f"q @ k^T does not contract each head's features {where(node)}")
                flat = [t for ax in lead for t in ax]
                head = [t for t in flat if t[0] == "p"]
                if sorted(t[0] for t in flat) != ["n"] + ["p"] * len(head) or \
                        not _vit_contiguous(head + list(d), "p", e):
                    raise _NoMatch(f"the batch of q @ k^T is not (N, heads) with each head's features contiguous "
                                   f"{where(node)}")
                found["heads"], found["lead"], found["d"] = tuple(head) + tuple(d), lead, d
                found["scale"] = l["scale"] * r["scale"]
                new = {"lay": lead + [tok, key], "kind": "s", "scale": 1.0}
            elif l["kind"] == "a" and r["kind"] == "role":
                lead, d = found["lead"], found["d"]
                if r["role"] != 2 or r["scale"] != 1.0 or l["lay"] != lead + [tok, key] or \
                        r["lay"] != lead + [tok, d]:
                    raise _NoMatch(f"the weights do not multiply v over the key tokens {where(node)}")
                new = {"lay": lead + [tok, d], "kind": "c"}
            else:
                raise _NoMatch(f"unexpected MatMul of two region tensors {where(node)}")
        elif op == "Softmax" and kind == "s" and tracked == [0]:
            ax = int(a.get("axis", -1 if imp.opset >= 13 else 1)) % len(lay)
            if ax != len(lay) - 1 or (imp.opset < 13 and ax != 1):
                raise _NoMatch(f"Softmax is not over the key tokens {where(node)}")
            found["scale"] *= s["scale"]
            new = {"lay": lay, "kind": "a", "scale": 1.0}
        else:
            raise _NoMatch(f"{op} {node.name or '?'} is not part of nn.MultiheadAttention's export")
        region.add(j)
        new["lay"] = _vit_norm(new["lay"])
        st[node.output[0]] = new
        if new.get("kind") == "o" and new["lay"] == final:
            users = [u for u in imp.users.get(node.output[0], []) if u.op_type != "Shape"]
            if not new["bias"] and len(users) == 1 and users[0].op_type == "Add" and any(
                    const(i) is not None for i in users[0].input if i != node.output[0]):
                continue  # the out-projection's bias follows
            out_value = node
    if out_value is None:
        raise _NoMatch("it does not end in an (N, L, E) tensor with the batch first again")
    if roles_seen != {0, 1, 2}:
        raise _NoMatch("q, k and v are not all used")
    heads, d = found["heads"], found["d"]
    h = int(math.prod(t[2] for t in heads[:len(heads) - len(d)]))
    dsize = int(e) // h
    if not math.isclose(found["scale"], 1.0 / math.sqrt(dsize), rel_tol=1e-6):
        raise _NoMatch(f"the scores are scaled by {found['scale']:.8g}, not 1/sqrt({dsize})")
    region_ids = {id(nodes[k]) for k in region}
    for v in st:
        if v == out_value.output[0]:
            continue
        if v in graph_outs:
            raise _NoMatch(f"its intermediate {v!r} is a graph output")
        for u in imp.users.get(v, []):
            if id(u) not in region_ids and u.op_type != "Shape":
                raise _NoMatch(f"its intermediate {v!r} is read by {u.op_type} {u.name or '?'} outside it")
    b_in, b_out = found.get("b_in"), found.get("b_out")
    # nn.MultiheadAttention has both biases or neither; torch's dynamo exporter drops a bias that is all zeros
    # (torchvision initialises out_proj.bias so): the missing one is exactly zero
    if b_in is None and b_out is not None:
        b_in = np.zeros(3 * int(e), np.float32)
    if b_out is None and b_in is not None:
        b_out = np.zeros(int(e), np.float32)
    params = {"in_proj_weight": np.ascontiguousarray(found["w_in"].T, np.float32),
              "out_proj_weight": np.ascontiguousarray(found["w_out"].T, np.float32)}
    if b_in is not None:
        params.update(in_proj_bias=np.asarray(b_in, np.float32).reshape(-1),
                      out_proj_bias=np.asarray(b_out, np.float32).reshape(-1))
    scoped = _torch_scope(out_value, "attention")
    name = out_value.name or ""
    if scoped:
        base = scoped.rsplit(".", 1)[0] if scoped.endswith(".attention") else scoped
    elif "/" in name and "." in _collapse_scope(name):
        base = _collapse_scope(name).rsplit(".", 1)[0]
    else:
        base = "attention"
    nid = add_mapped(imp.g, imp.ids, imp.ids(base), "attention", [x], params=params, num_heads=h,
                     bias=b_in is not None)
    imp.done.update(region)
    imp.env[out_value.output[0]] = nid
    return nid


# --------------------------------------------------------------------------- inception: fixed input sizes


def _fix_input_shapes(model: onnx.ModelProto, label: str, shapes) -> None:
    """inception (issue 17, item 5): give the dynamic dims after the batch of ``model``'s inputs (a file
    exported with ``dynamic_axes={'x': {0: 'b', 2: 'h', 3: 'w'}}``) the sizes of ``shapes``, one per-sample shape
    (batch excluded) per graph input, in order. A dim the file fixes must be given its own size."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    shapes = [tuple(int(d) for d in s) for s in shapes]
    if len(shapes) != len(inputs):
        raise FrontendError(f"{label}: {len(shapes)} input shape(s) given for {len(inputs)} input(s) "
                            f"({', '.join(vi.name for vi in inputs)})", rule="from_onnx",
                            hint="give one per-sample shape (batch excluded) per model input, in order")
    for vi, shape in zip(inputs, shapes):
        dims = vi.type.tensor_type.shape.dim
        have = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in dims[1:]]
        if len(shape) != len(have) or any(d < 1 for d in shape) or any(
                isinstance(h, int) and h != d for h, d in zip(have, shape)):
            raise FrontendError(f"{label}: input {vi.name!r} has per-sample shape {have}; {list(shape)} does not "
                                "fit it", rule="from_onnx", where={"input": vi.name},
                                hint=f"give {len(have)} positive sizes, keeping the fixed ones ({have})")
        for d, size in zip(dims[1:], shape):
            d.dim_value = size  # clears dim_param (a oneof)


# --------------------------------------------------------------------------- entry point


def from_onnx(path_or_proto, *, name: str | None = None, max_file_bytes: int = MAX_FILE_BYTES,
              max_weight_bytes: int = MAX_WEIGHT_BYTES, input_shapes=None) -> Graph:
    """Import an ONNX model (an ``.onnx`` path, its bytes or an ``onnx.ModelProto``) as an archir graph.

    Args:
        path_or_proto: the model. External data is read only from relative paths inside the
            model file's folder (so an in-memory proto with external data is refused).
        name: the graph name (default: the ONNX graph's name).
        max_file_bytes / max_weight_bytes: size caps of the file and of all weights.
        input_shapes: optional per-sample shapes (batch excluded), one per input, that fix the
            sizes of dynamic dims after the batch (e.g. ``[(3, 224, 224)]`` for an export with a
            dynamic height and width); a dim the file fixes must be given its own size.

    Returns:
        A validated :class:`archir.Graph`. Inputs keep their ONNX names; node ids come from ONNX
        node names (``/layer1/layer1.0/conv1/Conv`` becomes ``layer1.0.conv1.conv``; archir's own
        exports keep their ids). Inputs need fixed sizes after the batch axis.

    Raises:
        UnsafeModelError: a size cap is exceeded, external data is unsafe (absolute path, ``..``,
            symlink, outside the folder, past the end of its file) or a custom op domain is used.
        UnsupportedModelError: some nodes have no IR equivalent; every one is listed.
        FrontendError: the file is missing or not ONNX, or an input has no fixed shape.

    Example:
        >>> g = archir.frontend.from_onnx("resnet18.onnx")      # doctest: +SKIP
    """
    model, label = _load(path_or_proto, max_file_bytes, max_weight_bytes)
    if input_shapes is not None:  # inception: fixed sizes for dynamic dims after the batch
        if model is path_or_proto:  # the caller's proto stays as it is
            model = onnx.ModelProto()
            model.CopyFrom(path_or_proto)
        _fix_input_shapes(model, label, input_shapes)
    gname = name or model.graph.name or "onnx_model"
    from archir.frontend.common import clean_id

    imp = _Importer(model, clean_id(gname).replace(".", "_"))
    outs = imp.run()
    if imp.problems:
        raise UnsupportedModelError(label, imp.problems,
                                    hint="re-export with supported ops (see docs/frontend_support.md)")
    if not outs:
        raise FrontendError(f"{label}: the model has no tensor output", rule="from_onnx",
                            hint="export a model that returns a tensor")
    imp.g.set_outputs(*outs)
    fuse_layernorm2d(imp.g)  # Transpose -> LayerNormalization -> Transpose back: ConvNeXt's LayerNorm2d
    imp.g.meta["frontend"] = {"source": "onnx", "opset": imp.opset, "producer": model.producer_name}
    imp.g.validate()
    return imp.g
