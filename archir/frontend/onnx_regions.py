"""swin-onnx: torch's own ONNX exports of Swin V1/V2 and MaxViT attention, read as one IR node per module.

``torch.onnx.export`` (TorchScript and dynamo) writes torchvision's ``ShiftedWindowAttention`` (V2) and MaxViT's
``RelativePositionalMultiHeadAttention`` as dozens of primitives that fold the windows into the batch dim
(``x.size(0) // num_windows``), build the shift mask by slice assignment (``ScatterND``/``Not``), pad by run-time
shapes (``Mod``/``Pad``), gather the position bias, ``Einsum``, ... archir's IR keeps the batch first, so those
nodes cannot be read op for op. Instead a module's nodes are **explained as one IR op, and the explanation is
proved by evaluation**:

1. *Regions.* Every node carries its module path (TorchScript: the node name ``/features/features.1/.../attn/MatMul``;
   dynamo: ``pkg.torch.onnx.name_scopes``). A region is all nodes under one module path. It is a candidate when it
   holds a relative-position table ``((2a-1)(2b-1), heads)``, a V2 ``cpb_mlp`` first weight ``(hidden, 2)`` or
   that layer folded on the coordinate table ``(1, 2a-1, 2b-1, hidden)`` (dynamo), and a qkv weight ``(3C, C)``
   among its constants, and no module below it does (the deepest such module). A candidate must read exactly one
   network tensor from outside (everything else it reads is a constant, or a network tensor it takes only the
   ``Shape`` / ``Size`` of: dynamo's Swin V2 reads the batch size from the graph input) and exactly one of its
   values may be read outside it (or be a graph output); else it is left to the op-for-op reader (which then names what it cannot
   read).
2. *Candidates.* The op (``window_attention``, ``window_attention_v2``, ``rel_attention``), its weights and attrs are
   read from the region's constants by shape: qkv ``(3C, C)`` (or its transpose), the output projection ``(C, C)``
   (both orientations tried), biases ``(3C,)``/``(C,)``, the table, V2's ``logit_scale (heads, 1, 1)`` and cpb_mlp
   weights; the window from the table's rows (every ``(a, b)`` with ``(2a-1)(2b-1) = R``), the shift from
   ``{(a//2, b//2), (0, 0)}`` (torchvision's choices). Only a handful of candidates exist per region.
   *Swin V2.* TorchScript keeps cpb_mlp's ``(hidden, 2)`` and ``(hidden, heads)`` weights (with 2 heads of alike
   shape: each tried in both roles) and ``logit_scale``. dynamo folds ``relative_coords_table @ W1^T`` to a
   ``(1, 2wh-1, 2ww-1, hidden)`` constant and ``exp(clamp(logit_scale, max=log 100))`` to ``(heads, 1, 1)``: the
   candidates recover ``W1`` and a bias by least squares against the known coordinate table of that window
   (:func:`archir.ops.window_coords_table`; rank 3 for every window >= 2, else refused), add each ``(hidden,)``
   constant to the fitted bias (dynamo adds cpb_mlp's bias at run time), and try ``log`` of each
   ``(heads, 1, 1)`` constant besides the constant itself: ``exp(min(log v, log 100)) = v`` for ``v <= 100``,
   the same function (the module's stored scale where it was clamped is not recoverable, and need not be).
   These are guesses like the rest: the proof below decides.
3. *Proof.* The region, cut out as its own ONNX model (its nodes, the constants it reads, its one input and output),
   is run with ONNX Runtime on random inputs; each candidate, as a one-node archir graph, through ``to_fx``. The
   region is a composition of real-analytic maps of its input (linear maps, softmax, exp, normalisation, adding
   constant masks and biases; the integer shape arithmetic is constant for the fixed per-sample shape) and so is
   the candidate. Two real-analytic functions on R^n that differ anywhere differ on all but a measure-zero set, so
   agreement on a random (Gaussian) input means, with probability 1, that they are the same function; two draws
   guard against an unlucky near-coincidence. Agreement is required to ``RTOL`` of the output's largest magnitude:
   float32 rounding of these ~50-op chains (sums over at most C or T terms) stays near 1e-6 relative, while a wrong
   weight, orientation, shift or mask changes the output at the scale of the output itself. This is a check by
   evaluation, not a syntactic match: it does not depend on how an exporter version spells the computation. A
   candidate region that no candidate explains is refused (:class:`RegionMismatchError`: the module path, the
   candidates tried, the smallest error) -- never imported approximately.
4. The region is replaced by the one IR node (its weights the file's constants, or recovered from them as
   above); the rest imports op for op. Region nodes that read constants only and come before its input
   (TorchScript's cpb_mlp) were tried op for op first: what that reader reported on them is dropped once the
   region is proved.

The batch of the sub-model is the file's (static for dynamo exports without ``dynamic_shapes``) or 2.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from archir.errors import IRError
from archir.frontend.common import FrontendError

__all__ = ["RegionMismatchError", "plan_regions", "read_region", "RTOL"]

#: agreement required between the region and the candidate, relative to the largest output magnitude
RTOL = 1e-4
#: random draws of the input per proof
DRAWS = 2
#: candidates tried per region at most (a hostile file cannot make the proof expensive)
MAX_CANDIDATES = 96

_QUOTED = re.compile(r"'([^']*)'")


class RegionMismatchError(FrontendError):
    """A module of an ONNX file looks like an attention region but no candidate op computes what it computes."""


@dataclass
class Region:
    path: str
    nodes: list[int]
    x: str  # the one network tensor it reads
    out: str  # the one value read outside it
    consts: dict[str, np.ndarray] = field(default_factory=dict)  # constants it reads from outside, by name
    classes: list[str] = field(default_factory=list)
    helpers: list[int] = field(default_factory=list)  # nodes outside its scope that it alone reads
    shaped: list[str] = field(default_factory=list)  # network tensors it reads only the Shape of (the batch size)


def _paths(node: onnx.NodeProto) -> list[str]:
    meta = {e.key: e.value for e in node.metadata_props}
    if "pkg.torch.onnx.name_scopes" in meta:  # dynamo
        return [p for p in _QUOTED.findall(meta["pkg.torch.onnx.name_scopes"])[1:-1] if p]
    name = node.name or ""
    if not name.startswith("/"):
        return []
    segs = [s for s in name.split("/") if s][:-1]
    out, path, prev = [], "", ""
    for s in segs:  # as _collapse_scope: "features/features.1/features.1.0" -> features.1.0
        path = path + s[len(prev):] if prev and s.startswith(prev + ".") else (f"{path}.{s}" if path else s)
        prev = s
        out.append(path)
    return out


def _classes(node) -> list[str]:
    meta = {e.key: e.value for e in node.metadata_props}
    return _QUOTED.findall(meta.get("pkg.torch.onnx.class_hierarchy", ""))


def _float_consts(imp, names) -> dict[str, np.ndarray]:
    return {n: imp.env[n] for n in names if isinstance(imp.env.get(n), np.ndarray)
            and imp.env[n].dtype == np.float32 and imp.env[n].ndim >= 1}


def _odd_pairs(r: int) -> list[tuple[int, int]]:
    return [((p + 1) // 2, (r // p + 1) // 2) for p in range(1, r + 1) if r % p == 0 and p % 2 and (r // p) % 2]


def _signature(consts: dict[str, np.ndarray]) -> bool:
    shapes = [v.shape for v in consts.values()]
    has_qkv = any(len(s) == 2 and (s[0] == 3 * s[1] or s[1] == 3 * s[0]) for s in shapes)
    has_pos = any(len(s) == 2 and ((2 in s) and max(s) > 2 or (len(_odd_pairs(s[0])) > 1 and s[0] > 1))
                  or (len(s) == 4 and s[0] == 1 and s[2] == s[3] > 1) or _is_folded_cpb(s) for s in shapes)
    return has_qkv and has_pos


def plan_regions(imp) -> dict[int, Region]:
    """The candidate regions of ``imp``'s model, by the index of their first node not yet consumed."""
    nodes = imp.model.graph.node
    members: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for p in _paths(n):
            members.setdefault(p, []).append(i)
    sig = {}
    for p, idx in members.items():
        read = {v for i in idx for v in nodes[i].input if v}
        sig[p] = _signature(_float_consts(imp, read))
    ctx = _Ctx(imp)
    plan: dict[int, Any] = {}
    for p, idx in members.items():
        if not sig[p] or any(q.startswith(p + ".") and sig[q] for q in members):
            continue
        starts = [i for i in idx if i not in imp.done and any(v in ctx.net for v in nodes[i].input if v)]
        if not starts:
            continue
        r = _analyse(imp, ctx, p, idx)
        plan[min(starts)] = r if isinstance(r, Region) else (p, idx)  # else: analysed again when it is reached
        if isinstance(r, Region):
            imp.done.update(r.helpers)
    return plan


class _Ctx:
    def __init__(self, imp) -> None:
        nodes = imp.model.graph.node
        self.nodes = nodes
        self.outs = {o.name for o in imp.model.graph.output}
        # network values: those that depend on a graph input's numbers (a Shape of a network tensor is not one:
        # it is fixed per sample); the others (the shift mask built by slice assignment, shape arithmetic) join a
        # region that reads them, as constants do
        self.net = {vi.name for vi in imp.model.graph.input if not isinstance(imp.env.get(vi.name), np.ndarray)}
        for n in nodes:
            if n.op_type not in ("Shape", "Size") and any(v in self.net for v in n.input if v):
                self.net.update(o for o in n.output if o)
        self.made_by = {o: i for i, n in enumerate(nodes) for o in n.output if o}
        self.index_of = {id(n): k for k, n in enumerate(nodes)}


def _analyse(imp, ctx: _Ctx, p: str, own_idx) -> Region | str:
    """The region of module ``p`` (its nodes ``own_idx``) with the current constants, or why it is none."""
    nodes, net, made_by, index_of, outs = ctx.nodes, ctx.net, ctx.made_by, ctx.index_of, ctx.outs
    sym = getattr(getattr(imp, "sym", None), "vals", {})

    def const(v):  # a constant, or shape arithmetic the importer evaluated exactly (free of the batch)
        c = imp.env.get(v)
        return c if isinstance(c, np.ndarray) else sym.get(v) if isinstance(sym.get(v), np.ndarray) else None

    own = set(own_idx)
    idx = set(own_idx)
    todo = [v for i in idx for v in nodes[i].input if v]
    while todo:
        v = todo.pop()
        j = made_by.get(v)
        if j is not None and j not in idx and v not in net and const(v) is None:
            idx.add(j)
            todo.extend(u for u in nodes[j].input if u)
    grew = True
    while grew:  # a node outside the scope that only passes values between the region's nodes (dynamo's
        grew = False  # Split of the qkv projection) is inside it too
        for o in [o for i in list(idx) for o in nodes[i].output if o]:
            for u in imp.users.get(o, []):
                j = index_of[id(u)]
                if j in idx:
                    continue
                ins_ok = all(v in made_by and made_by[v] in idx or const(v) is not None for v in u.input if v)
                outs_ok = all(w not in outs and w in imp.users and all(index_of[id(x)] in idx
                                                                      for x in imp.users[w]) for w in u.output if w)
                if ins_ok and outs_ok:
                    idx.add(j)
                    grew = True
    idx = sorted(idx)
    inside = {id(nodes[j]) for j in idx}
    made = {o for i in idx for o in nodes[i].output if o}
    ext = [v for i in idx for v in nodes[i].input if v and v not in made]
    # a network tensor read only by Shape / Size nodes of the region (dynamo's Swin V2 takes the batch size from the
    # graph input) gives the region its per-sample shape, not its numbers: the sub-model gets a tensor of that shape
    shape_readers = {v: [nodes[i].op_type for i in idx if v in nodes[i].input] for v in ext}
    shaped = sorted({v for v in ext if const(v) is None and v in net
                     and all(op in ("Shape", "Size") for op in shape_readers[v])})
    tensors = sorted({v for v in ext if const(v) is None} - set(shaped))
    # the value the module hands on: a network value (constants, and static helpers outside its scope that
    # something else reads too, may be shared)
    leaving = sorted({o for i in own for o in nodes[i].output if o and o in net and (o in outs or any(
        id(u) not in inside for u in imp.users.get(o, [])))})
    shared = {o for i in idx for o in nodes[i].output if o and o not in net and any(
        id(u) not in inside for u in imp.users.get(o, []))}
    if len(tensors) != 1 or len(leaving) != 1 or any(o in outs for o in shared):
        return (f"it reads {len(tensors)} network values from outside ({tensors[:3]}) and hands on {len(leaving)} "
                f"({leaving[:3]}); a region must read one and hand on one")
    helpers = [j for j in idx if j not in own and not any(o in shared for o in nodes[j].output)]
    return Region(p, idx, tensors[0], leaving[0], {v: const(v) for v in set(ext) if const(v) is not None},
                  _classes(nodes[min(own)]), helpers, shaped)


def _submodel(imp, r: Region, batch) -> onnx.ModelProto:
    nodes = [imp.model.graph.node[i] for i in r.nodes]
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in r.consts.items()]
    ins = [helper.make_tensor_value_info(v, onnx.TensorProto.FLOAT, [batch, *imp.shape(imp.env[v])])
           for v in [r.x, *r.shaped]]
    g = helper.make_graph(nodes, "region", ins,
                          [helper.make_tensor_value_info(r.out, onnx.TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=list(imp.model.opset_import))
    m.ir_version = imp.model.ir_version
    return m


def _candidates(r: Region, c: int, shape: tuple[int, ...]):
    """(op, attrs, params) candidates read from the region's constants by shape."""
    by = list(r.consts.values())

    def find(pred):
        seen, out = [], []
        for v in by:
            if pred(v.shape) and not any(v.shape == s.shape and np.array_equal(v, s) for s in seen):
                seen.append(v)
                out.append(v)
        return out

    qkv = [v if v.shape == (3 * c, c) else v.T for v in find(lambda s: s in ((3 * c, c), (c, 3 * c)))]
    proj = [w for v in find(lambda s: s == (c, c)) for w in (v, v.T)]
    qkv_b = find(lambda s: s == (3 * c,))
    proj_b = find(lambda s: s == (c,))
    # V2's cpb_mlp first layer: its weight (hidden, 2) (either orientation; TorchScript), or recovered from the
    # constant-folded table @ weight.T (dynamo): (weight, bias fitted or None, window or None)
    fc1 = [(v if v.shape[1] == 2 else v.T, None, None) for v in find(lambda s: len(s) == 2 and 2 in s and max(s) > 2)]
    fc1 += [_fc1_of_folded(r, f) for f in find(_is_folded_cpb)]
    out = []
    for qw, pw in itertools.product(qkv, proj):
        biases = list(itertools.product(qkv_b or [None], proj_b or [None]))
        for qb, pb in biases:
            base = dict(qkv_weight=np.ascontiguousarray(qw), proj_weight=np.ascontiguousarray(pw))
            if qb is not None:
                base["qkv_bias"] = qb
            if pb is not None:
                base["proj_bias"] = pb
            flags = dict(qkv_bias=qb is not None, proj_bias=pb is not None)
            for w1, b_fit, known in fc1:  # V2
                hidden = w1.shape[0]
                b1s = find(lambda s: s == (hidden,))
                b1s = ([b_fit + b for b in b1s] + [b_fit]) if b_fit is not None else (b1s or [None])
                # cpb_mlp's second weight (heads, hidden): any other matrix with a side of hidden, the one taken as
                # w1 excepted (with 2 heads it has w1's shape: both are tried in both roles)
                w2s = [w for v in find(lambda s: len(s) == 2 and hidden in s) if not (
                    v.shape in (w1.shape, w1.T.shape) and (np.array_equal(v, w1) or np.array_equal(v.T, w1)))
                    for w in ((v, v.T) if v.shape[0] == v.shape[1] else (v if v.shape[1] == hidden else v.T,))]
                for b1, w2 in itertools.product(b1s, w2s):
                    heads = w2.shape[0]
                    ls = find(lambda s: s == (heads, 1, 1))
                    # dynamo folds exp(clamp(logit_scale, max=log 100)) to a constant: its log is a logit_scale of
                    # the same function (log of a value <= 100 is <= log 100, where the clamp is the identity)
                    ls += [np.log(v).astype(np.float32) for v in ls if np.all(v > 0)]
                    if known:
                        wins = [known]
                    else:
                        tables = find(lambda s: len(s) >= 2 and s[-1] == 2 and max(s[:-1]) > 1)
                        rows = sorted({int(np.prod(t.shape[:-1])) for t in tables})
                        wins = [w for rr in rows for w in _odd_pairs(rr)]
                    for lsv, win in itertools.product(ls, wins):
                        for sh in ((win[0] // 2, win[1] // 2), (0, 0)):
                            p = dict(base, logit_scale=lsv, cpb_fc1_weight=np.ascontiguousarray(w1),
                                     cpb_fc2_weight=np.ascontiguousarray(w2))
                            if b1 is not None:
                                p["cpb_fc1_bias"] = b1
                            out.append(("window_attention_v2", dict(window_size=list(win), shift_size=list(sh),
                                        num_heads=heads, cpb_hidden=hidden, **flags), p))
            tables = []  # (table, its window)
            for b in find(lambda s: len(s) == 4 and s[0] == 1 and s[2] == s[3] > 1 and c % s[1] == 0):
                tables += _tables_of_bias(b[0].reshape(b.shape[1], -1).T)  # the exporter gathered the table by the index
            for b in find(lambda s: len(s) == 2 and s[0] > 1 and math.isqrt(s[0]) ** 2 == s[0] and c % s[1] == 0):
                tables += _tables_of_bias(b)  # ... and left its reshape to run time
            tables += [(t, w) for t in find(lambda s: len(s) == 2 and len(_odd_pairs(s[0])) > 1 and s[0] > 1 and
                                            c % s[1] == 0) for w in _odd_pairs(t.shape[0])]
            tables.sort(key=lambda tw: abs(tw[1][0] - tw[1][1]))  # square windows first (torchvision's)
            for t, win in tables:
                heads = t.shape[1]
                for sh in ((win[0] // 2, win[1] // 2), (0, 0)):
                    out.append(("window_attention", dict(window_size=list(win), shift_size=list(sh),
                                                         num_heads=heads, **flags),
                                dict(base, relative_position_bias_table=t)))
                if win[0] == win[1] and len(shape) == 3 and shape[1] == win[0] * win[1] and qb is not None \
                        and pb is not None:
                    out.append(("rel_attention", dict(num_heads=heads, window=win[0]),
                                dict(qkv_weight=base["qkv_weight"], qkv_bias=qb, merge_weight=base["proj_weight"],
                                     merge_bias=pb, bias_table=t)))

    def square(cand):  # torchvision's windows are square: those first
        w = cand[1].get("window_size") or [cand[1]["window"]] * 2
        return abs(w[0] - w[1])

    return sorted(out, key=square)


def _is_folded_cpb(s) -> bool:
    return len(s) == 4 and s[0] == 1 and s[1] > 1 and s[2] > 1 and s[1] % 2 == 1 and s[2] % 2 == 1 and s[3] > 2


def _fc1_of_folded(r: Region, f: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """cpb_mlp's first weight ``(hidden, 2)`` and bias ``(hidden,)`` from ``f = coords @ weight.T (+ bias)``, the
    ``(1, 2 wh - 1, 2 ww - 1, hidden)`` constant dynamo folds it to, by least squares against the known coordinate
    table of that window (torchvision's ``relative_coords_table``, :func:`archir.ops.window_coords_table`). The fit
    is exact where ``f`` is such a product (up to float32 rounding); where it is not, the proof refuses the
    candidate. Its bias is 0 where the file adds cpb_mlp's bias at run time (the candidates add each
    ``(hidden,)`` constant of the region to it)."""
    from archir.ops import window_coords_table

    wh, ww = (f.shape[1] + 1) // 2, (f.shape[2] + 1) // 2
    a = np.concatenate([window_coords_table(wh, ww).reshape(-1, 2).astype(np.float64),
                        np.ones((f.shape[1] * f.shape[2], 1))], axis=1)
    if np.linalg.matrix_rank(a) < 3:  # only for windows < 2, which V2 has not: kept as a guard
        raise RegionMismatchError(
            f"module {r.path!r}: the constant {f.shape} looks like cpb_mlp's first layer folded on the coordinate "
            f"table of a {wh} x {ww} window, but that table has rank < 3: its weight and bias cannot be recovered "
            "by least squares", node=r.path, rule="from_onnx", hint="import the model with from_torch")
    sol = np.linalg.lstsq(a, f.reshape(-1, f.shape[3]).astype(np.float64), rcond=None)[0]  # (3, hidden)
    return (np.ascontiguousarray(sol[:2].T.astype(np.float32)), sol[2].astype(np.float32), (wh, ww))


def _tables_of_bias(b: np.ndarray) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """The relative-position tables ``(R, heads)`` whose gather by ``relative_position_index(wh, ww)`` is the
    constant-folded bias ``b``, the table's rows gathered by the index: ``(T * T, heads)``, one per window ``wh * ww = T`` (every table row
    is hit by the index; the entries of a row hit twice are not compared here: the proof does that)."""
    from archir.ops import relative_position_index

    heads, t = b.shape[1], math.isqrt(b.shape[0])
    out = []
    for wh in range(1, t + 1):
        if t % wh:
            continue
        idx = relative_position_index(wh, t // wh).reshape(-1)
        vals = b
        table = np.zeros(((2 * wh - 1) * (2 * (t // wh) - 1), heads), np.float32)
        table[idx] = vals  # rows hit twice and differing: the proof refuses the candidate
        out.append((table, (wh, t // wh)))
    return out


def _run_candidate(op, attrs, params, shape, xs):
    import torch

    from archir.graph import Graph
    from archir.lower.fx import to_fx

    g = Graph("probe")
    g.set_outputs(g.add(op, g.input("x", shape), name="r", **attrs))
    g.set_params("r", **params)
    m = to_fx(g).eval()
    with torch.no_grad():
        return [m(torch.from_numpy(x)).numpy() for x in xs]


def read_region(imp, r, add) -> tuple[str, Region] | None:
    """Prove region ``r`` (or a module ``(path, nodes)`` that was no region before the import, analysed again now)
    computes one candidate op and add that node (``add(op, x, params, attrs, out)`` -> IR id): ``(IR id, region)``.
    ``None`` where it is no region, or its input is not a network tensor of archir's graph (the op-for-op reader
    then takes its nodes and names what it cannot read)."""
    import onnxruntime as ort

    if not isinstance(r, Region):  # not a region with the constants known before the import: again, now
        r = _analyse(imp, _Ctx(imp), *r)
        if not isinstance(r, Region):
            return None
        names = {imp.model.graph.node[j].name for j in r.helpers}
        imp.problems = [pr for pr in imp.problems if pr.where not in names]  # they run inside the proof
        imp.done.update(r.helpers)
    x = imp.env.get(r.x)
    if not isinstance(x, str) or not all(isinstance(imp.env.get(v), str) for v in r.shaped):
        return None
    shape = imp.shape(x)
    batch = imp.static_batch or 2
    c = shape[-1]
    cands = _candidates(r, c, shape)
    if not cands:  # no op of this kind fits its constants: the op-for-op reader names what it cannot read
        return None
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((batch, *shape)).astype(np.float32) for _ in range(DRAWS)]
    try:
        sess = ort.InferenceSession(_submodel(imp, r, batch).SerializeToString(), providers=["CPUExecutionProvider"])
        shaped = {v: np.zeros((batch, *imp.shape(imp.env[v])), np.float32) for v in r.shaped}
        refs = [sess.run(None, {r.x: v, **shaped})[0] for v in xs]
    except Exception as e:  # noqa: BLE001 - a region ORT cannot run alone is not read this way
        raise RegionMismatchError(f"module {r.path!r}: the region cannot be evaluated on its own "
                                  f"({type(e).__name__}: {str(e)[:300]})", node=r.path, rule="from_onnx",
                                  hint="import the model with from_torch, or export it with archir's to_onnx")
    tried, best = [], float("inf")
    for op, attrs, params in cands[:MAX_CANDIDATES]:
        try:
            got = _run_candidate(op, attrs, params, shape, xs[:1])
            if got[0].shape != refs[0].shape:
                continue
            err = float(np.abs(got[0] - refs[0]).max() / max(1.0, np.abs(refs[0]).max()))
            if err <= RTOL:
                got = _run_candidate(op, attrs, params, shape, xs)
                err = max(float(np.abs(gv - rv).max() / max(1.0, np.abs(rv).max())) for gv, rv in zip(got, refs))
        except IRError:  # attrs or weights that do not fit this input (its shape rule or schema says so): not
            continue  # this candidate; anything else is a bug of ours and keeps its traceback
        tried.append(f"{op}({', '.join(f'{k}={v}' for k, v in attrs.items())})")
        best = min(best, err)
        if err <= RTOL:
            # nodes of the region that read constants only (TorchScript's cpb_mlp on the coordinate table) come
            # before its start and were tried op for op: what that reader found is void, they ran in the proof
            names = {imp.model.graph.node[j].name or f"node #{j}" for j in r.nodes}
            imp.problems = [pr for pr in imp.problems if pr.where not in names]
            return add(op, x, params, attrs, r.out), r
    raise RegionMismatchError(
        f"module {r.path!r} ({len(r.nodes)} ONNX nodes, input {r.x!r}) looks like window / relative-position "
        f"attention, but no candidate computes what it computes: tried {len(tried)} ({'; '.join(tried[:4])}"
        f"{' ...' if len(tried) > 4 else ''}); smallest relative error {best:.3g} > {RTOL}", node=r.path,
        rule="from_onnx", hint="the file's attention differs from torchvision's (edited weights or masks?); import "
        "the model with from_torch")
