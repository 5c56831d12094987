"""``costmodels.Predictor``: a latency model learned from measured networks, in numpy.

Counts and per-op tables rank networks, but neither predicts a backend's latency well: MACs
ignore memory traffic and per-kernel overhead, and a sum of isolated ops ignores what the
backend fuses (ONNX Runtime folds BN into the conv and fuses the activation and a residual
``add`` into it). The predictor learns the mapping from IR features to measured latency.

Features (:func:`graph_features`, one number each, per batch as ``count`` reports them):

- totals of :func:`costmodels.count`: params, MACs, FLOPs, activation/weight bytes, bytes
  moved, peak bytes;
- per conv kind (dense kxk, pointwise 1x1, depthwise, grouped) and for ``linear``: the number
  of nodes, their MACs and activation bytes read and written; dilated and strided convs apart;
  depthwise convs by kernel size;
- channel alignment: conv nodes and MACs per kind, and other nodes and their bytes, split by
  whether the channel counts are multiples of 16, of 8, or neither. ONNX Runtime runs convs
  (and pools, BN, adds, activations between them) in a blocked layout (NCHWc: 8 channels a
  block with AVX2, 16 with AVX-512) only when the channels fill whole blocks; on the other
  path the same conv is much slower per MAC, so without these features two networks of
  equal MACs and widths 12 vs 16 are predicted 20 % off in opposite directions;
- the number of nodes of every registered op;
- kernels as ONNX Runtime's CPU optimiser makes them (:func:`fused_kernels`): duplicates
  merged (common-subexpression elimination), a ``conv2d`` absorbing a following BN, residual
  ``add`` and activation; the number of kernels, of merged nodes, of fused and of standalone BN,
  activations and adds, the bytes moved by standalone elementwise ops, and the number of edges
  where the layout changes (conv kernel to non-conv, and blocked to plain for blocks of 8/16);
- the roofline split on a nominal device (:data:`NOMINAL_CPU` unless another is given): time of
  the compute-bound and of the memory-bound nodes;
- optionally, with a :class:`~costmodels.LatencyTable`: the table estimate and its per-node
  sum split by kind (convs by channel alignment, nodes that ORT fuses into a conv or merges,
  linear, BN, activation, add/mul, pooling, concat, other), so the model learns how much of
  the table's isolated-op time a network really pays.

Models (``model=``):

- ``"linear"`` (default): latency is additive in kernels, so a linear model on the raw
  features, fitted by ridge regression weighted by ``1 / latency**2`` (which minimises the
  *relative* squared error), with the ridge strength chosen by 5-fold cross-validation on
  the training set.
- ``"log"``: ridge regression of ``log(latency)`` on ``log1p(features)``.

Errors are reported as :class:`ErrorReport` (share within +/-10 %, MAPE, Kendall's tau-b).
Files are JSON (no pickle) with a format version; another version is refused.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from archir.errors import ArchirError
from archir.graph import Graph
from archir.ops import get_op, op_names, pair
from archir.training import STRIPPED_BY, strip_training
from costmodels.counts import count
from costmodels.measure import Latency
from costmodels.roofline import DeviceSpec

__all__ = ["Predictor", "ErrorReport", "error_report", "kendall_tau", "graph_features", "fused_kernels",
           "PredictorFormatError", "NOMINAL_CPU", "PREDICTOR_FORMAT_VERSION"]

#: The version of the files :meth:`Predictor.save` writes; :meth:`Predictor.load` reads only this one.
PREDICTOR_FORMAT_VERSION = 1
_FORMAT = "archir.costmodels.Predictor"

#: The default device of the roofline features: a nominal single CPU core (AVX2 FMA at about
#: 3 GHz: 2 x 8-wide FMA = 96 GFLOP/s; 20 GB/s of DRAM bandwidth per core). Only the split
#: into compute- and memory-bound nodes and their relative times matter to the model.
NOMINAL_CPU = DeviceSpec("nominal CPU core (fp32 AVX2, 1 thread)", peak_flops=96e9, mem_bandwidth=20e9,
                         peak_flops_fp32=96e9, source="nominal figures of costmodels.predictor")

_CONV_KINDS = ("conv_dense", "conv_pw", "conv_dw", "conv_grouped", "linear")
_TABLE_KINDS = ("conv_a16", "conv_a8", "conv_a1", "fused", "linear", "bn", "act", "eltwise", "pool", "concat",
                "other")
_MODELS = ("linear", "log")


def _traits(g: Graph, n: str):
    return get_op(g.node(n).op, n).traits


def _view(g: Graph, n: str) -> bool:
    return _traits(g, n).zero_cost  # inputs and views run no kernel


#: the table-time split of a node's category (fused nodes and convs are split apart first)
_TABLE_KIND_OF = {"linear": "linear", "norm": "bn", "activation": "act", "gate": "act", "eltwise": "eltwise",
                  "pool": "pool", "concat": "concat"}


class PredictorFormatError(ArchirError, ValueError):
    """A predictor file is not a predictor, or of another format version; the message says what to do."""


# --------------------------------------------------------------------------- metrics


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's rank correlation tau-b of two sequences (ties handled as in tau-b).

    ``tau_b = (concordant - discordant) / sqrt((n0 - ties_x) * (n0 - ties_y))`` over all
    ``n0 = n (n - 1) / 2`` pairs. O(n^2) time, in blocks of rows, so thousands of points are fine.

    Args:
        x, y: equal-length sequences of numbers (at least 2).

    Returns:
        tau-b in [-1, 1]; ``nan`` when either sequence is constant.

    Raises:
        ValueError: lengths differ, fewer than two points, or a value is not finite.

    Example:
        >>> kendall_tau([1, 2, 3, 4], [10, 20, 40, 30])
        0.6666666666666666
    """
    a, b = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"kendall_tau: needs two equal-length sequences of >= 2 numbers, got {a.size} and {b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("kendall_tau: values must be finite (drop NaN/inf first)")
    s = ties_a = ties_b = 0
    n = a.size
    for i0 in range(0, n, 512):
        sa = np.sign(a[i0:i0 + 512, None] - a[None, :])
        sb = np.sign(b[i0:i0 + 512, None] - b[None, :])
        upper = np.arange(i0, min(i0 + 512, n))[:, None] < np.arange(n)[None, :]  # each pair once
        s += int((sa * sb)[upper].sum())
        ties_a += int(((sa == 0) & upper).sum())
        ties_b += int(((sb == 0) & upper).sum())
    n0 = n * (n - 1) // 2
    denom = math.sqrt((n0 - ties_a) * (n0 - ties_b))
    return s / denom if denom else float("nan")


@dataclass(frozen=True)
class ErrorReport:
    """How well predicted latencies match measured ones.

    Attributes:
        n: the number of networks.
        within_10: the share (0..1) predicted within +/-10 % of the measurement.
        mape: the mean absolute percentage error (in %).
        median_ape, max_ape: median and largest absolute percentage error (in %).
        kendall_tau: Kendall's tau-b between predicted and measured (ranking quality).
        bias: the median of ``predicted / measured - 1`` (in %; > 0 over-predicts).

    Example:
        >>> r = error_report([1.0, 2.1, 2.9], [1.0, 2.0, 3.0])
        >>> r.within_10, round(r.mape, 2)
        (1.0, 2.78)
    """

    n: int
    within_10: float
    mape: float
    median_ape: float
    max_ape: float
    kendall_tau: float
    bias: float

    def __str__(self) -> str:
        return (f"n={self.n}: {100 * self.within_10:.1f}% within +/-10%, MAPE {self.mape:.2f}%, "
                f"median APE {self.median_ape:.2f}%, max APE {self.max_ape:.1f}%, Kendall tau {self.kendall_tau:.3f}, "
                f"bias {self.bias:+.1f}%")

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def error_report(predicted_ms: Sequence[float], measured_ms: Sequence[float]) -> ErrorReport:
    """Compare predicted with measured latencies (share within +/-10 %, MAPE, Kendall tau).

    Args:
        predicted_ms: predictions (any unit, the same as ``measured_ms``).
        measured_ms: measurements, all > 0.

    Returns:
        An :class:`ErrorReport`.

    Raises:
        ValueError: lengths differ, no data, or a measurement is not a positive finite number.

    Example:
        >>> print(error_report([1.05, 2.5], [1.0, 2.0]))
        n=2: 50.0% within +/-10%, MAPE 15.00%, median APE 15.00%, max APE 25.0%, Kendall tau 1.000, bias +15.0%
    """
    p, m = np.asarray(predicted_ms, np.float64).ravel(), np.asarray(measured_ms, np.float64).ravel()
    if p.shape != m.shape or p.size == 0:
        raise ValueError(f"error_report: needs equal-length non-empty sequences, got {p.size} predictions and "
                         f"{m.size} measurements")
    if not (np.isfinite(m).all() and (m > 0).all()):
        raise ValueError("error_report: every measured latency must be a positive finite number")
    if not np.isfinite(p).all():
        raise ValueError("error_report: a prediction is NaN/inf")
    rel = p / m - 1.0
    ape = 100 * np.abs(rel)
    tau = kendall_tau(p, m) if p.size >= 2 else float("nan")
    return ErrorReport(n=int(p.size), within_10=float(np.mean(np.abs(rel) <= 0.10 + 1e-12)), mape=float(ape.mean()),
                       median_ape=float(np.median(ape)), max_ape=float(ape.max()), kendall_tau=float(tau),
                       bias=float(100 * np.median(rel)))


# --------------------------------------------------------------------------- features


def _conv_kind(attrs: Mapping, cin: int) -> str:
    g = attrs["groups"]
    if g == 1:
        return "conv_pw" if pair(attrs["kernel_size"]) == (1, 1) else "conv_dense"
    return "conv_dw" if g == cin else "conv_grouped"


_ALIGN = ("a16", "a8", "a1")  # channels a multiple of 16, of 8 (not 16), neither


def _align(*channels: int) -> str:
    """The alignment class of a node's channel counts (the worst of them)."""
    if all(c % 16 == 0 for c in channels):
        return "a16"
    return "a8" if all(c % 8 == 0 for c in channels) else "a1"


def _blockable(g: Graph, n: str, block: int) -> bool:
    node = g.node(n)
    if not get_op(node.op, n).traits.blocked_layout or node.type.rank != 3:
        return False
    return node.type.shape[0] % block == 0 and all(t.shape[0] % block == 0 or node.op == "conv2d"
                                                   for t in g.input_types(n))


def _kernels(g: Graph) -> tuple[dict[str, str], set[str]]:
    """(node -> kernel root, nodes merged into an identical earlier node); see :func:`fused_kernels`."""
    order = g.topo_order()
    rep: dict[str, str] = {}  # node -> the node whose value it is (views and duplicates resolved)
    seen: dict[tuple, str] = {}
    merged: set[str] = set()
    for n in order:
        node = g.node(n)
        ins = tuple(rep[p] for p in g.inputs_of(n))
        if _view(g, n):
            rep[n] = ins[0] if ins else n
            continue
        rep[n] = n
        opdef = get_op(node.op, n)
        if node.op != "choice" and not opdef.param_shapes(node.attrs, g.input_types(n)) \
                and not opdef.buffer_shapes(node.attrs, g.input_types(n)):
            key = (node.op, json.dumps(dict(node.attrs), sort_keys=True), ins)
            if key in seen:  # ORT's common-subexpression elimination: relu(x) twice is computed once
                rep[n] = seen[key]
                merged.add(n)
            else:
                seen[key] = n
    users: dict[str, set[str]] = {}
    for n in order:
        if n in merged or _view(g, n):
            continue
        for p in g.inputs_of(n):
            users.setdefault(rep[p], set()).add(n)
    outputs = {rep[o] for o in g.outputs}
    root: dict[str, str] = {}
    stage: dict[str, int] = {}  # kernel root -> the last fused stage
    tail: dict[str, str] = {}  # kernel root -> its last node
    for n in order:
        op = g.node(n).op
        if _view(g, n) or n in merged:
            continue
        root[n] = n
        if op == "conv2d":
            stage[n], tail[n] = 0, n
            continue
        st = _traits(g, n).conv_epilogue  # 1 BN, 2 residual add, 3 activation
        if st is None:
            continue
        for p in dict.fromkeys(rep[q] for q in g.inputs_of(n)):
            r = root.get(p)
            if r is None or g.node(r).op != "conv2d" or tail[r] != p or stage[r] >= st:
                continue
            if len(users.get(p, ())) != 1 or p in outputs:
                continue
            root[n] = r
            stage[r], tail[r] = st, n
            break
    for n in merged:
        root[n] = root[rep[n]]
    return root, merged


def fused_kernels(g: Graph) -> dict[str, str]:
    """Group nodes into the kernels ONNX Runtime's CPU optimiser makes of them (an approximation).

    First, as ORT's common-subexpression elimination does, a weight-free node that repeats an
    earlier one (same op, attrs and inputs, e.g. ``relu(x)`` read by two DARTS edges) is merged
    into it. Then a ``conv2d`` absorbs, in this order and each only when it is the previous
    step's only consumer and not a graph output: a ``batchnorm2d`` (ORT's Conv+BN fusion), an
    ``add`` (the residual ``Sum`` input of ORT's NCHWc conv), an activation (``relu``, ``relu6``,
    ``sigmoid``, ``tanh``, ``hardsigmoid``, ``hardswish``: FusedConv). View ops (``identity``,
    ``dropout``, ``flatten``, ``stop_gradient``) and inputs belong to no kernel.

    Args:
        g: a valid graph (shapes inferred).

    Returns:
        Node id -> the id of the node that starts its kernel (itself when it runs alone; a
        merged duplicate maps to its original's kernel); view ops and inputs are left out.

    Example:
        >>> k = fused_kernels(archir.samples.resnet_like())     # doctest: +SKIP
        >>> k["stem.bn"], k["stem.relu"], k["b1.out"]   # doctest: +SKIP
        ('stem.conv', 'stem.conv', 'b1.b.conv')
    """
    return _kernels(g)[0]


def graph_features(g: Graph, *, batch_size: int = 1, device: DeviceSpec = NOMINAL_CPU,
                   table=None) -> dict[str, float]:
    """The predictor's features of one graph (see the module docstring for the list).

    Args:
        g: a plain graph (weights are not needed); it is featurised as deployed,
            ``archir.strip_training(g)`` (no ``drop_path``, no auxiliary head).
        batch_size: the batch size the latency is for.
        device: the device of the roofline features.
        table: a :class:`~costmodels.LatencyTable` for the table features (it measures missing
            entries), or ``None`` to leave them out.

    Returns:
        Feature name -> value, always the same names in the same order for the same arguments
        (one ``n_op_<op>`` per registered op).

    Raises:
        IRError: the graph is invalid or a supernet (``choice`` nodes: derive first).

    Example:
        >>> f = graph_features(archir.samples.chain())   # doctest: +SKIP
        >>> f["macs"], f["n_kernels"]   # doctest: +SKIP
    """
    from archir.errors import IRError

    g = strip_training(g)  # what is deployed: no drop_path, no auxiliary head
    c = count(g, batch_size=batch_size)
    if c.supernet:
        raise IRError("graph has choice nodes (a supernet); the predictor prices plain graphs", rule="choice",
                      hint="derive a plain graph with archir.derive(g, decisions), or use costmodels.expected_cost")
    f: dict[str, float] = {k: float(v) for k, v in c.totals().items()}
    for kind in _CONV_KINDS:
        f[f"n_{kind}"] = f[f"macs_{kind}"] = f[f"io_bytes_{kind}"] = 0.0
    for k in ("n_conv_dilated", "macs_conv_dilated", "n_conv_strided", "macs_conv_strided"):
        f[k] = 0.0
    for k in (3, 5, 7):
        f[f"n_conv_dw_k{k}"] = f[f"macs_conv_dw_k{k}"] = 0.0
    for kind in _CONV_KINDS[:-1]:
        for a in _ALIGN:
            f[f"n_{kind}_{a}"] = f[f"macs_{kind}_{a}"] = 0.0
    for a in _ALIGN:
        f[f"n_other_{a}"] = f[f"bytes_other_{a}"] = 0.0
    for op in op_names():
        # (the ops strip_training removes never reach the counts: no feature for them)
        if get_op(op).traits.category not in ("input", "search") and get_op(op).removed_by != STRIPPED_BY:
            f[f"n_op_{op}"] = 0.0
    kernels, merged = _kernels(g)
    for k in ("n_kernels", "n_fused_bn", "n_fused_add", "n_fused_act", "n_standalone_bn", "n_standalone_add",
              "n_standalone_act", "n_standalone_other", "standalone_eltwise_bytes", "pool_bytes", "concat_bytes",
              "n_merged", "n_layout_boundaries", "n_layout_boundaries_b8", "n_layout_boundaries_b16",
              "roofline_compute_bound_ms", "roofline_memory_bound_ms"):
        f[k] = 0.0
    for n, r in c.nodes.items():
        node = g.node(n)
        op = node.op
        cat = get_op(op, n).traits.category
        if cat == "input":
            continue
        f[f"n_op_{op}"] += 1
        ins = g.input_types(n)
        io = float(batch_size * (sum(t.numel for t in ins) + node.type.numel) * 4)
        if cat in ("conv", "linear"):
            kind = "linear" if cat == "linear" else _conv_kind(node.attrs, ins[0].shape[0])  # linear, matmul
            f[f"n_{kind}"] += 1
            f[f"macs_{kind}"] += r.macs
            f[f"io_bytes_{kind}"] += io
            if op == "conv2d":
                a = _align(ins[0].shape[0], node.type.shape[0])
                f[f"n_{kind}_{a}"] += 1
                f[f"macs_{kind}_{a}"] += r.macs
                if pair(node.attrs["dilation"]) != (1, 1):
                    f["n_conv_dilated"] += 1
                    f["macs_conv_dilated"] += r.macs
                if pair(node.attrs["stride"]) != (1, 1):
                    f["n_conv_strided"] += 1
                    f["macs_conv_strided"] += r.macs
                if kind == "conv_dw":
                    k = max(pair(node.attrs["kernel_size"]))
                    k = 3 if k < 5 else (5 if k < 7 else 7)
                    f[f"n_conv_dw_k{k}"] += 1
                    f[f"macs_conv_dw_k{k}"] += r.macs
        elif node.type.rank == 3 and cat != "view":
            a = _align(node.type.shape[0])
            f[f"n_other_{a}"] += 1
            f[f"bytes_other_{a}"] += r.bytes_moved
        if cat == "pool":
            f["pool_bytes"] += r.bytes_moved
        if cat == "concat":
            f["concat_bytes"] += r.bytes_moved
        if n in merged:
            f["n_merged"] += 1
        elif n in kernels:
            if kernels[n] == n:
                f["n_kernels"] += 1
                if op == "batchnorm2d":
                    f["n_standalone_bn"] += 1
                elif op == "add":
                    f["n_standalone_add"] += 1
                elif cat in ("activation", "gate"):
                    f["n_standalone_act"] += 1
                elif cat not in ("conv", "linear"):
                    f["n_standalone_other"] += 1
                if cat in ("norm", "activation", "gate", "eltwise"):
                    f["standalone_eltwise_bytes"] += r.bytes_moved
            else:
                f["n_fused_bn" if op == "batchnorm2d" else "n_fused_add" if op == "add" else "n_fused_act"] += 1
        if device is not None:
            comp, mem = r.flops / device.peak_flops, r.bytes_moved / device.mem_bandwidth
            if comp > mem:
                f["roofline_compute_bound_ms"] += 1e3 * comp
            elif mem > 0:
                f["roofline_memory_bound_ms"] += 1e3 * mem
    # Edges where ORT changes layout: from a conv kernel to anything else and back; and, for
    # its blocked layout (NCHWc, 8 channels a block with AVX2, 16 with AVX-512), from a node
    # that can run blocked (channels a multiple of the block) to one that cannot.
    is_conv = lambda n: n in kernels and g.node(kernels[n]).op == "conv2d"  # noqa: E731
    blocked = {b: {n for n in kernels if _blockable(g, n, b)} for b in (8, 16)}
    for n in kernels:
        if n in merged:
            continue
        for v, _ in g.users_of(n):
            if kernels.get(v) != kernels[n] and is_conv(n) != is_conv(v):
                f["n_layout_boundaries"] += 1
            for b in (8, 16):
                if (n in blocked[b]) != (v in blocked[b]):
                    f[f"n_layout_boundaries_b{b}"] += 1
    if table is not None:
        if table.batch_size != batch_size:
            raise ValueError(f"graph_features: the latency table measures batch {table.batch_size}, the features "
                             f"are for batch {batch_size}; use a table of the same batch size")
        per_node = table.estimate_nodes(g)
        split = dict.fromkeys(_TABLE_KINDS, 0.0)
        for n, ms in per_node.items():
            node = g.node(n)
            op = node.op
            if n in merged or (n in kernels and kernels[n] != n):
                kind = "fused"  # runs inside a conv kernel in ORT, or not at all: its table time is saved
            elif op == "conv2d":
                kind = f"conv_{_align(g.input_types(n)[0].shape[0], node.type.shape[0])}"
            else:
                kind = _TABLE_KIND_OF.get(get_op(op, n).traits.category, "other")
            split[kind] += ms
        f["table_ms"] = table.overhead_ms + math.fsum(per_node.values())
        for kind in _TABLE_KINDS:
            f[f"table_{kind}_ms"] = split[kind]
    return f


# --------------------------------------------------------------------------- the model


def _ridge(Z: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Weighted ridge on standardised Z: minimise sum w (y - b - Z beta)^2 + alpha * sum(w) * |beta|^2."""
    sw = w.sum()
    zm = (w[:, None] * Z).sum(0) / sw
    ym = float((w * y).sum() / sw)
    Zc, yc = Z - zm, y - ym
    A = (Zc * w[:, None]).T @ Zc + alpha * sw * np.eye(Z.shape[1])
    beta = np.linalg.solve(A, (Zc * w[:, None]).T @ yc)
    return beta, ym - float(zm @ beta)


@dataclass
class _Fitted:
    names: list[str]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    alpha: float
    latency_range: tuple[float, float]


class Predictor:
    """A latency predictor learned from measured networks (numpy ridge regression).

    Args:
        table: a :class:`~costmodels.LatencyTable` whose estimate (and its split by op kind) is
            used as features; ``None`` leaves them out. Its batch size must be ``batch_size``.
        batch_size: the batch size of the latencies it learns and predicts.
        model: ``"linear"`` (ridge on raw features weighted for relative error; the default) or
            ``"log"`` (ridge of log latency on log features).
        alpha: the ridge strength, or ``None`` to choose it by 5-fold cross-validation from a grid.
        device: the :class:`~costmodels.DeviceSpec` of the roofline features (:data:`NOMINAL_CPU`).

    Attributes:
        feature_names: after ``fit``, the features used (constant ones are dropped).
        alpha_: the chosen ridge strength. train_report: the :class:`ErrorReport` on the
        training set (optimistic: report :meth:`evaluate` on held-out networks).
        meta: JSON-ready notes saved with the model (``fit`` records backend/device of
        :class:`~costmodels.Latency` inputs here).

    Raises:
        ValueError: an unknown model, a bad batch size or alpha.

    Example:
        >>> p = costmodels.Predictor().fit(train_graphs, train_ms)     # doctest: +SKIP
        >>> p.predict(g)                                               # ms  # doctest: +SKIP
        >>> print(p.evaluate(test_graphs, test_ms))                   # share within 10 %, MAPE, tau  # doctest: +SKIP
        >>> p.save("latency.predictor.json"); q = costmodels.Predictor.load("latency.predictor.json")   # doctest: +SKIP
    """

    ALPHAS = tuple(10.0 ** k for k in np.arange(-7, 2.5, 0.5))

    def __init__(self, *, table=None, batch_size: int = 1, model: str = "linear", alpha: float | None = None,
                 device: DeviceSpec = NOMINAL_CPU) -> None:
        if model not in _MODELS:
            raise ValueError(f"Predictor: unknown model {model!r}; use one of {list(_MODELS)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Predictor: batch_size must be a positive int, got {batch_size!r}")
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                                  or not math.isfinite(alpha) or alpha < 0):
            raise ValueError(f"Predictor: alpha must be a finite number >= 0 or None (cross-validated), got {alpha!r}")
        if not isinstance(device, DeviceSpec):
            raise TypeError(f"Predictor: device must be a costmodels.DeviceSpec, got {type(device).__name__}")
        if table is not None and getattr(table, "batch_size", batch_size) != batch_size:
            raise ValueError(f"Predictor: the table measures batch {table.batch_size}, the predictor is for batch "
                             f"{batch_size}")
        self.table = table
        self.batch_size = batch_size
        self.model = model
        self.alpha = alpha
        self.device = device
        self.uses_table = table is not None
        self.meta: dict = {}
        self.train_report: ErrorReport | None = None
        self.alpha_: float | None = None
        self._fit: _Fitted | None = None

    # ------------------------------------------------------------------ features

    def features(self, g: Graph) -> dict[str, float]:
        """The features of one graph (see :func:`graph_features`), with this predictor's settings."""
        if self.uses_table and self.table is None:
            raise ValueError("this predictor was fitted with latency-table features; attach a table first "
                             "(Predictor.load(path, table=LatencyTable(...)) or p.table = table)")
        return graph_features(g, batch_size=self.batch_size, device=self.device,
                              table=self.table if self.uses_table else None)

    def _matrix(self, graphs: Iterable[Graph], names: list[str] | None) -> tuple[np.ndarray, list[str]]:
        rows = [self.features(g) for g in graphs]
        if not rows:
            raise ValueError("Predictor: no graphs given")
        names = names or list(rows[0])
        X = np.array([[r.get(k, 0.0) for k in names] for r in rows], np.float64)
        return X, names

    def _transform(self, X: np.ndarray) -> np.ndarray:
        return np.log1p(np.maximum(X, 0.0)) if self.model == "log" else X

    # ------------------------------------------------------------------ fit / predict

    @staticmethod
    def _latencies(latencies_ms) -> tuple[np.ndarray, dict]:
        meta = {}
        vals = []
        for i, v in enumerate(latencies_ms):
            if isinstance(v, Latency):
                meta = {"backend": v.backend, "device": v.device, "threads": v.threads, "versions": v.versions}
                v = v.median_ms
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"Predictor.fit: latency {i} is {v!r}; latencies must be positive finite ms "
                                 "(or costmodels.Latency results)")
            vals.append(float(v))
        return np.array(vals), meta

    def fit(self, graphs: Sequence[Graph], latencies_ms: Sequence[float | Latency]) -> "Predictor":
        """Learn from measured networks.

        Args:
            graphs: plain graphs (at least 5; a few dozen or more of the kind you will predict).
            latencies_ms: their measured latencies in ms (or :class:`~costmodels.Latency` results,
                whose medians are used and whose backend and device are noted in :attr:`meta`).

        Returns:
            ``self``, fitted.

        Raises:
            ValueError: lengths differ, fewer than 5 graphs, or a latency is not positive.
            IRError: a graph is invalid or a supernet.
        """
        graphs = list(graphs)
        y, meta = self._latencies(latencies_ms)
        if len(graphs) != len(y):
            raise ValueError(f"Predictor.fit: {len(graphs)} graphs but {len(y)} latencies")
        if len(graphs) < 5:
            raise ValueError(f"Predictor.fit: needs at least 5 measured graphs, got {len(graphs)}")
        X, names = self._matrix(graphs, None)
        T = self._transform(X)
        keep = np.ptp(T, axis=0) > 0  # a constant feature carries nothing but the intercept
        names = [k for k, m in zip(names, keep) if m]
        T = T[:, keep]
        mean = T.mean(0)
        scale = T.std(0)
        scale[scale == 0] = 1.0
        Z = (T - mean) / scale
        target, w = self._target(y)
        alpha = self.alpha if self.alpha is not None else self._cv_alpha(Z, y, target, w)
        coef, intercept = _ridge(Z, target, w, alpha)
        self._fit = _Fitted(names, mean, scale, coef, intercept, float(alpha), (float(y.min()), float(y.max())))
        self.alpha_ = float(alpha)
        self.meta = {**self.meta, **meta, "n_train": len(y)}
        self.train_report = error_report(self._predict_matrix(Z, check=False), y)
        return self

    def _target(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.model == "log":
            return np.log(y), np.ones_like(y)
        w = (np.median(y) / y) ** 2  # relative error, weights of mean about 1
        return y, w

    def _predict_matrix(self, Z: np.ndarray, *, check: bool = True) -> np.ndarray:
        out = Z @ self._fit.coef + self._fit.intercept
        if self.model == "log":
            out = np.exp(out)
        lo, hi = self._fit.latency_range
        if check and ((out < 0.5 * lo).any() or (out > 2 * hi).any()):
            warnings.warn(f"Predictor: a prediction ({out.min():.4g} .. {out.max():.4g} ms) lies far outside the "
                          f"latencies it was fitted on ({lo:.4g} .. {hi:.4g} ms); it extrapolates and may be badly "
                          "off: fit it on networks like the ones you predict", RuntimeWarning, stacklevel=3)
        # a linear model can go negative far from its data; a latency cannot
        return np.maximum(out, 1e-3 * lo)

    def _cv_alpha(self, Z, y, target, w) -> float:
        n = len(y)
        folds = np.random.default_rng(0).permutation(n) % min(5, n)
        best, best_err = self.ALPHAS[0], math.inf
        for a in self.ALPHAS:
            pred = np.empty(n)
            for k in range(folds.max() + 1):
                te, tr = folds == k, folds != k
                coef, b = _ridge(Z[tr], target[tr], w[tr], a)
                out = Z[te] @ coef + b
                pred[te] = np.exp(out) if self.model == "log" else out
            err = float(np.mean(np.abs(pred / y - 1.0)))
            if err < best_err - 1e-12:
                best, best_err = a, err
        return float(best)

    @property
    def feature_names(self) -> list[str]:
        """The features the fitted model uses, in its order (constant ones were dropped)."""
        self._check_fitted()
        return list(self._fit.names)

    def _check_fitted(self) -> None:
        if self._fit is None:
            raise RuntimeError("Predictor is not fitted: call fit(graphs, latencies_ms) or Predictor.load(path)")

    def _z(self, graphs: Sequence[Graph]) -> np.ndarray:
        X, _ = self._matrix(graphs, self._fit.names)
        return (self._transform(X) - self._fit.mean) / self._fit.scale

    def predict(self, g: Graph) -> float:
        """The predicted latency of ``g`` in ms.

        A prediction far outside the latencies the model was fitted on (below half the
        smallest or above twice the largest) warns (``RuntimeWarning``): it extrapolates.
        Predictions are floored at a thousandth of the smallest training latency (a linear
        model can go negative far from its data).

        Raises:
            RuntimeError: not fitted. IRError: invalid graph or a supernet.

        Example:
            >>> p.predict(archir.samples.resnet_like())     # doctest: +SKIP
            0.0352...
        """
        self._check_fitted()
        return float(self._predict_matrix(self._z([g]))[0])

    def predict_many(self, graphs: Sequence[Graph]) -> np.ndarray:
        """Predicted latencies (ms) of several graphs, as an array."""
        self._check_fitted()
        return self._predict_matrix(self._z(list(graphs)))

    def evaluate(self, graphs: Sequence[Graph], latencies_ms: Sequence[float | Latency]) -> ErrorReport:
        """The honest error report on (held-out) measured networks.

        Args:
            graphs: plain graphs not used in ``fit``.
            latencies_ms: their measured latencies (ms, or :class:`~costmodels.Latency`).

        Returns:
            An :class:`ErrorReport`: share within +/-10 %, MAPE, Kendall tau, ...

        Raises:
            RuntimeError: not fitted. ValueError: lengths differ or a latency is not positive.

        Example:
            >>> print(p.evaluate(test_graphs, test_ms))     # doctest: +SKIP
            n=60: 96.7% within +/-10%, MAPE 3.81%, ...
        """
        self._check_fitted()
        y, _ = self._latencies(latencies_ms)
        graphs = list(graphs)
        if len(graphs) != len(y):
            raise ValueError(f"Predictor.evaluate: {len(graphs)} graphs but {len(y)} latencies")
        return error_report(self.predict_many(graphs), y)

    def coefficients(self) -> dict[str, float]:
        """Feature -> its weight in the model's (transformed, unstandardised) units, largest effect first."""
        self._check_fitted()
        f = self._fit
        raw = f.coef / f.scale
        order = np.argsort(-np.abs(f.coef))
        return {f.names[i]: float(raw[i]) for i in order}

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted model as JSON (atomically: a temporary file renamed over ``path``).

        Returns:
            The path written.

        Raises:
            RuntimeError: not fitted. OSError: the file cannot be written.
        """
        self._check_fitted()
        f = self._fit
        doc = {
            "format": _FORMAT, "version": PREDICTOR_FORMAT_VERSION, "model": self.model,
            "batch_size": self.batch_size, "uses_table": self.uses_table,
            "device": asdict(self.device), "alpha": f.alpha, "feature_names": f.names,
            "mean": f.mean.tolist(), "scale": f.scale.tolist(), "coef": f.coef.tolist(), "intercept": f.intercept,
            "latency_range_ms": list(f.latency_range),
            "train_report": self.train_report.to_dict() if self.train_report else None,
            "table": {"fingerprint": getattr(self.table, "fingerprint", None),
                      "statistic": getattr(self.table, "statistic", None)} if self.uses_table else None,
            "meta": self.meta,
        }
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=1, allow_nan=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, table=None) -> "Predictor":
        """Read a model written by :meth:`save`.

        Args:
            path: the JSON file.
            table: the :class:`~costmodels.LatencyTable` to use, required when the model was
                fitted with table features. A table of another device fingerprint or statistic
                than the one it was fitted with warns (``RuntimeWarning``).

        Returns:
            A fitted :class:`Predictor`.

        Raises:
            PredictorFormatError: not a predictor file, another format version, or missing fields.
            ValueError: the model needs a table and none was given.
            OSError: the file cannot be read.

        Example:
            >>> p = costmodels.Predictor.load("latency.predictor.json")   # doctest: +SKIP
        """
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PredictorFormatError(f"{path} is not a predictor file (not JSON: {e}); write one with "
                                       "Predictor.save") from None
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            fmt = doc.get("format") if isinstance(doc, dict) else None
            raise PredictorFormatError(f"{path} is not a predictor file (format {fmt!r}, expected {_FORMAT!r}); "
                                       "write one with Predictor.save")
        if doc.get("version") != PREDICTOR_FORMAT_VERSION:
            raise PredictorFormatError(
                f"{path} is a predictor of format version {doc.get('version')!r}; this archir reads version "
                f"{PREDICTOR_FORMAT_VERSION} only. Refit the predictor with this archir (Predictor().fit(...)) "
                "or use the archir version that wrote it")
        try:
            p = cls(table=table, batch_size=doc["batch_size"], model=doc["model"], alpha=doc["alpha"],
                    device=DeviceSpec(**doc["device"]))
            names = [str(n) for n in doc["feature_names"]]
            arrs = [np.asarray(doc[k], np.float64) for k in ("mean", "scale", "coef")]
            if any(a.shape != (len(names),) for a in arrs) or not all(np.isfinite(a).all() for a in arrs):
                raise ValueError("arrays do not match the feature names or are not finite")
            lo, hi = (float(v) for v in doc["latency_range_ms"])
            if not 0 < lo <= hi < math.inf:
                raise ValueError(f"latency_range_ms {doc['latency_range_ms']} is not a positive range")
            fitted = _Fitted(names, *arrs, intercept=float(doc["intercept"]), alpha=float(doc["alpha"]),
                             latency_range=(lo, hi))
        except (KeyError, TypeError, ValueError) as e:
            raise PredictorFormatError(f"{path}: a broken predictor file ({type(e).__name__}: {e}); write it "
                                       "again with Predictor.save") from None
        if doc.get("uses_table") and table is None:
            raise ValueError(f"{path}: this predictor was fitted with latency-table features; pass the table: "
                             "Predictor.load(path, table=costmodels.LatencyTable(...))")
        p.uses_table = bool(doc.get("uses_table"))
        saved = doc.get("table") or {}
        if p.uses_table and saved:
            have = {"fingerprint": getattr(table, "fingerprint", None), "statistic": getattr(table, "statistic", None)}
            diff = [k for k in ("fingerprint", "statistic") if saved.get(k) is not None and saved.get(k) != have[k]]
            if diff:
                warnings.warn(f"{path}: this predictor was fitted with a latency table of another {' and '.join(diff)} "
                              f"(fitted with {[saved[k] for k in diff]}, given {[have[k] for k in diff]}); its table "
                              "features mean something else here: refit it with this table", RuntimeWarning,
                              stacklevel=2)
        p._fit = fitted
        p.alpha_ = fitted.alpha
        p.meta = doc.get("meta") or {}
        if doc.get("train_report"):
            p.train_report = ErrorReport(**doc["train_report"])
        return p
