"""``costmodels.count``: analytic counts of a graph, per node and in total.

Every op's arithmetic is priced by a handler in :data:`COUNT_HANDLERS` (an
:class:`archir.ops.OpHandlers` table); a test asserts every registered op has one, so a new
op cannot be silently free. Register one for a new op with::

    @costmodels.count.register("my_op")          # or @COUNT_HANDLERS.register("my_op")
    def _my_op(attrs, ins, out):
        return OpCost(flops=3 * out.numel)

A handler sees the op's attributes, its input :class:`~archir.TensorType` s and its output
type (all per sample, batch excluded) and returns an :class:`OpCost` per sample; ``count``
multiplies by the batch size. Taking attributes rather than a node lets the ``choice``
handler price its candidate chains with the same handlers.

Conventions (also in :func:`count`'s docstring) are chosen so that ``macs`` matches the
figures torchvision publishes ("GFLOPS" there are conv + linear multiply-accumulates).
An auxiliary classifier head (the nodes only ``auxiliary`` outputs need) is a training-time
construct and is left out of every total, as the papers count their networks
(:attr:`Counts.excluded`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np

from archir.graph import Graph
from archir.ops import OpHandlers, attention_dims, candidate_steps, get_op, layernorm_size, pair, rel_attention_dims
from archir.ops import window_attention_dims  # swin
from archir.training import auxiliary_head
from archir.types import TensorType

__all__ = ["count", "Counts", "NodeCount", "OpCost", "COUNT_HANDLERS", "op_cost"]

#: The per-op cost table of ``count``: ``handler(attrs, ins, out) -> OpCost`` (per sample).
COUNT_HANDLERS = OpHandlers("costmodels.count")


@dataclass(frozen=True)
class OpCost:
    """What one op costs for one sample, as a :data:`COUNT_HANDLERS` handler reports it.

    Attributes:
        macs: multiply-accumulates of conv and linear (0 for every other op).
        flops: all arithmetic (see :func:`count` for the convention per op).
        alias: the output is a view of input 0 (``identity``, ``flatten``, ``dropout`` and
            ``drop_path`` in eval, ``stop_gradient``, ``auxiliary``): no new memory, no memory traffic.
        traffic_bytes: activation bytes read plus written; ``None`` means the default: every
            input read once and the output written once (0 for an alias).
        workspace_bytes: extra bytes live only while the op runs (a choice node's candidate
            intermediates).

    Example:
        >>> OpCost(flops=10).macs
        0
    """

    macs: int = 0
    flops: int = 0
    alias: bool = False
    traffic_bytes: int | None = None
    workspace_bytes: int = 0


def _nbytes(t: TensorType) -> int:
    return t.numel * np.dtype(t.dtype).itemsize


def op_cost(op: str, attrs: Mapping, ins: list[TensorType], out: TensorType, node: str | None = None) -> OpCost:
    """The per-sample :class:`OpCost` of one op, with ``traffic_bytes`` filled in.

    Args:
        op: the registry key.
        attrs: its attributes (defaults filled in).
        ins: input types in port order; out: the output type (batch excluded).
        node: the node id, for error messages.

    Returns:
        The handler's ``OpCost`` with ``traffic_bytes`` resolved (never ``None``).

    Raises:
        OpSchemaError: the op has no cost handler (register one with ``@costmodels.count.register``).

    Example:
        >>> from archir import TensorType
        >>> op_cost("relu", {}, [TensorType((4, 2, 2))], TensorType((4, 2, 2))).traffic_bytes
        128
    """
    c = COUNT_HANDLERS.get(op, node)(attrs, ins, out)
    if c.traffic_bytes is None:
        traffic = 0 if c.alias else sum(_nbytes(t) for t in ins) + _nbytes(out)
        c = OpCost(c.macs, c.flops, c.alias, traffic, c.workspace_bytes)
    return c


# --------------------------------------------------------------------------- handlers


@COUNT_HANDLERS.register("input")
def _input(attrs, ins, out):
    return OpCost(traffic_bytes=0)


@COUNT_HANDLERS.register("conv2d", "conv1d")
def _conv(attrs, ins, out):
    taps = math.prod(pair(attrs["kernel_size"])) if ins[0].rank == 3 else attrs["kernel_size"]  # conv1d: (C, L)
    macs = out.numel * (ins[0].shape[0] // attrs["groups"]) * taps
    return OpCost(macs=macs, flops=2 * macs + (out.numel if attrs["bias"] else 0))


@COUNT_HANDLERS.register("linear")
def _linear(attrs, ins, out):
    macs = out.numel * ins[0].shape[-1]
    return OpCost(macs=macs, flops=2 * macs + (out.numel if attrs["bias"] else 0))


def _per_element(k: int) -> Callable:
    def handler(attrs, ins, out):
        return OpCost(flops=k * out.numel)

    return handler


# flops per output element: one per add, multiply, compare, exp or divide
for _op, _k in [("batchnorm2d", 2),  # eval: x * a + b, a and b folded from the running stats
                ("relu", 1), ("relu6", 2), ("sigmoid", 4), ("hardsigmoid", 4), ("hardswish", 5), ("silu", 5),
                ("tanh", 5), ("add", 1), ("mul", 1), ("scale", 1), ("stop_forward", 1),
                ("leaky_relu", 2),  # compare, multiply (select)
                ("elu", 4),  # compare, exp, subtract, multiply
                ("hardtanh", 2),  # two compares, as relu6
                ("neg", 1), ("sub", 1), ("div", 1)]:
    COUNT_HANDLERS.register(_op)(_per_element(_k))


@COUNT_HANDLERS.register("gelu")
def _gelu(attrs, ins, out):
    # none: x / sqrt2, erf (one, as exp is), + 1, * x, * 0.5 = 5; tanh: x*x*x (2), * k, + x, * c, tanh (5, as
    # the tanh op), + 1, * x, * 0.5 = 13
    return OpCost(flops=(5 if attrs["approximate"] == "none" else 13) * out.numel)


@COUNT_HANDLERS.register("pad")
def _pad(attrs, ins, out):
    return OpCost()  # a copy: reads the input, writes the padded output; no arithmetic


# ---- upsample / reductions / conv1d / softmax / matmul (issue 17, part B)


@COUNT_HANDLERS.register("upsample")
def _upsample(attrs, ins, out):
    # nearest copies; bilinear weighs 4 neighbours: 4 multiplies + 3 adds per output element
    return OpCost(flops=0 if attrs["mode"] == "nearest" else 7 * out.numel)


@COUNT_HANDLERS.register("mean", "sum")
def _reduction(attrs, ins, out):
    return OpCost(flops=ins[0].numel)  # one add per input element (mean's divide per output: in the rounding)


# max compare, subtract, exp, add (the row sum), divide / subtract the log
COUNT_HANDLERS.register("softmax")(_per_element(5))
COUNT_HANDLERS.register("log_softmax")(_per_element(5))


@COUNT_HANDLERS.register("matmul")
def _matmul(attrs, ins, out):
    macs = out.numel * ins[0].shape[-1]
    return OpCost(macs=macs, flops=2 * macs)
# --------------------------------------------------------------------------- layout ops


@COUNT_HANDLERS.register("permute", "channel_shuffle")
def _layout_copy(attrs, ins, out):
    return OpCost()  # a copy in another order: traffic, no arithmetic


@COUNT_HANDLERS.register("reshape")
def _reshape(attrs, ins, out):
    return OpCost(alias=True)  # a view of the same elements


@COUNT_HANDLERS.register("layernorm")
def _layernorm(attrs, ins, out):
    # per element: the sum for the mean, x - mean, its square, the sum for the variance, * 1/std (5), then
    # * weight and + bias when present; per normalised vector: / C twice, + eps, rsqrt (4)
    c = layernorm_size(attrs, ins[0])
    per = 5 + (1 if attrs["affine"] else 0) + (1 if attrs["affine"] and attrs["bias"] else 0)
    return OpCost(flops=per * out.numel + 4 * (out.numel // c))


# ---- transformer ops (param, attention)


@COUNT_HANDLERS.register("param")
def _param(attrs, ins, out):
    # no arithmetic; the ref input's values are not read, the repeated value is written once per sample
    return OpCost(traffic_bytes=4 * out.numel)


@COUNT_HANDLERS.register("attention")
def _attention(attrs, ins, out):
    # q, k, v and out projections 4 L E^2; q k^T and weights @ v L^2 E each (per head L^2 d, H heads), as
    # fvcore and torchvision's published GFLOPS count them; flops: 2 per MAC, the 4 L E bias adds, the
    # 1/sqrt(d) multiply and softmax (5) per attention weight (H L^2)
    length, e, _ = attention_dims(attrs, ins[0])
    macs = 4 * length * e * e + 2 * length * length * e
    weights = attrs["num_heads"] * length * length
    return OpCost(macs=macs, flops=2 * macs + (4 * length * e if attrs["bias"] else 0) + 6 * weights)


# ---- maxvit


@COUNT_HANDLERS.register("rel_attention")
def _rel_attention(attrs, ins, out):
    # per window as attention on (P, E) tokens: the qkv and merge projections 4 P E^2, q k^T and weights @ v
    # P^2 E each (as torchvision's published MaxViT GFLOPS count them); flops: 2 per MAC, the 4 P E bias adds,
    # P E multiplies of k by the scale, and per attention weight (H P^2) the relative-bias add and softmax (5)
    g, length, e, heads, _ = rel_attention_dims(attrs, ins[0])
    macs = g * (4 * length * e * e + 2 * length * length * e)
    return OpCost(macs=macs, flops=2 * macs + g * (5 * length * e + 6 * heads * length * length))


# ---- swin: window_attention


@COUNT_HANDLERS.register("window_attention")
def _window_attention(attrs, ins, out):
    # per window of T tokens over the zero-padded map (the padding's tokens are computed, as torchvision does):
    # the qkv and output projections 4 T C^2, q k^T and weights @ v T^2 C each, as fvcore / torchvision's
    # published GFLOPS count them; flops: 2 per MAC, the bias adds (3 T C + T C), the q scaling (T C), and per
    # attention weight (heads T^2) the relative position bias add, the shift mask add (shifted windows) and the
    # softmax (5)
    d = window_attention_dims(attrs, ins[0])
    t, c = d.tokens, d.c
    macs = d.windows * (4 * t * c * c + 2 * t * t * c)
    adds = (3 * t * c if attrs["qkv_bias"] else 0) + (t * c if attrs["proj_bias"] else 0)
    per_weight = 1 + (1 if d.sh or d.sw else 0) + 5
    return OpCost(macs=macs, flops=2 * macs + d.windows * (adds + t * c + per_weight * d.heads * t * t))


@COUNT_HANDLERS.register("window_attention_v2")
def _window_attention_v2(attrs, ins, out):
    # the windows' MACs as window_attention, plus cpb_mlp on the (2 wh - 1)(2 ww - 1) coordinate rows (2 -> hidden
    # -> heads), as torchvision's published 5.94 GFLOPS of swin_v2_t count it; flops: 2 per MAC, the q, v and
    # proj bias adds (torchvision zeroes k's), 3 per element of q and k to normalise them (square, sum, divide),
    # per attention weight the logit scale multiply, the bias add, the shift mask add (shifted windows) and the
    # softmax (5); cpb_mlp's bias add and relu per hidden value, 16 * sigmoid (5) per bias entry (heads T^2)
    d = window_attention_dims(attrs, ins[0])
    t, c = d.tokens, d.c
    rows, hidden = (2 * d.wh - 1) * (2 * d.ww - 1), attrs["cpb_hidden"]
    macs = d.windows * (4 * t * c * c + 2 * t * t * c) + rows * (2 * hidden + hidden * d.heads)
    adds = (2 * t * c if attrs["qkv_bias"] else 0) + (t * c if attrs["proj_bias"] else 0)
    per_weight = 1 + 1 + (1 if d.sh or d.sw else 0) + 5
    flops = 2 * macs + d.windows * (adds + 6 * t * c + per_weight * d.heads * t * t) + 2 * rows * hidden + \
        5 * d.heads * t * t
    return OpCost(macs=macs, flops=flops)


@COUNT_HANDLERS.register("identity", "dropout", "drop_path", "flatten", "stop_gradient", "auxiliary")
def _view(attrs, ins, out):
    return OpCost(alias=True)


@COUNT_HANDLERS.register("concat")
def _concat(attrs, ins, out):
    return OpCost()  # a copy: traffic, no arithmetic


@COUNT_HANDLERS.register("slice")
def _slice(attrs, ins, out):
    return OpCost(traffic_bytes=2 * _nbytes(out))  # reads the selected elements, writes them


@COUNT_HANDLERS.register("zero")
def _zero(attrs, ins, out):
    return OpCost(traffic_bytes=_nbytes(out))  # writes zeros, reads nothing


@COUNT_HANDLERS.register("maxpool2d", "avgpool2d")
def _pool(attrs, ins, out):
    kh, kw = pair(attrs["kernel_size"])
    return OpCost(flops=kh * kw * out.numel)


@COUNT_HANDLERS.register("adaptive_avgpool2d")
def _adaptive_pool(attrs, ins, out):
    from archir.ops.core import adaptive_windows

    c, h, w = ins[0].shape
    oh, ow = pair(attrs["output_size"])
    # one flop per element of every (possibly overlapping) window: the adds plus the divide
    rows = sum(e - s for s, e in adaptive_windows(h, oh))
    cols = sum(e - s for s, e in adaptive_windows(w, ow))
    return OpCost(flops=c * rows * cols)


@COUNT_HANDLERS.register("global_avgpool")
def _gap(attrs, ins, out):
    return OpCost(flops=ins[0].numel)  # H*W - 1 adds and one divide per channel


@COUNT_HANDLERS.register("choice")
def _choice(attrs, ins, out):
    # The supernet as the sum over all candidates (a DARTS-style mixture runs every one).
    macs = flops = traffic = work = 0
    for cand in attrs["candidates"]:
        for st in candidate_steps(cand["ops"], ins[0], None):
            c = op_cost(st.op, st.attrs, st.in_types, st.out)
            macs += c.macs
            flops += c.flops
            traffic += c.traffic_bytes
            work += c.workspace_bytes + (0 if c.alias else _nbytes(st.out))
    return OpCost(macs=macs, flops=flops, traffic_bytes=traffic + _nbytes(out), workspace_bytes=work)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class NodeCount:
    """Counts of one node (batch included where it applies).

    Attributes:
        id, op: the node and its op.
        params: trainable parameters.
        macs, flops: see :func:`count`.
        activation_bytes: bytes of the output tensor (0 for ``input`` nodes).
        weight_bytes: bytes of params and buffers.
        bytes_moved: activation bytes read and written plus ``weight_bytes``: the memory
            traffic the roofline charges to this node.
        live_bytes: activation bytes live while this node runs under the topological schedule.
    """

    id: str
    op: str
    params: int
    macs: int
    flops: int
    activation_bytes: int
    weight_bytes: int
    bytes_moved: int
    live_bytes: int


@dataclass(frozen=True)
class Counts:
    """The result of :func:`count`: per-node records and totals.

    Attributes:
        graph: the graph's name.
        batch_size: the batch size counted for.
        nodes: node id -> :class:`NodeCount`, in schedule (topological) order.
        params, macs, flops, activation_bytes, weight_bytes, bytes_moved: sums over nodes.
        peak_bytes: the most activation bytes live at once under the schedule.
        peak_node: the node running when ``peak_bytes`` is reached.
        supernet: the graph has choice nodes (counted as the sum over all candidates).
        excluded: node id -> :class:`NodeCount` of the auxiliary head (the ``auxiliary`` nodes and
            the nodes only they need), which no total includes and ``nodes`` does not list (their
            ``live_bytes`` are 0: they are not scheduled). Empty without auxiliary outputs.
        auxiliary_params: the parameters of ``excluded`` (trained with the network, not counted
            in ``params``).

    Example:
        >>> c = count(archir.samples.chain())         # doctest: +SKIP
        >>> c.macs, c["l0.conv"].macs                 # doctest: +SKIP
    """

    graph: str
    batch_size: int
    nodes: Mapping[str, NodeCount]
    params: int
    macs: int
    flops: int
    activation_bytes: int
    weight_bytes: int
    bytes_moved: int
    peak_bytes: int
    peak_node: str
    supernet: bool = False
    excluded: Mapping[str, NodeCount] = field(default_factory=lambda: MappingProxyType({}))
    auxiliary_params: int = 0

    def __getitem__(self, node_id: str) -> NodeCount:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise KeyError(f"no node {node_id!r} in the counts of graph {self.graph!r} "
                           f"(nodes: {', '.join(list(self.nodes)[:8])}{' ...' if len(self.nodes) > 8 else ''})"
                           ) from None

    def totals(self) -> dict[str, int]:
        """The totals as a dict (``params``, ``macs``, ``flops``, ... ``peak_bytes``)."""
        return {k: getattr(self, k) for k in ("params", "macs", "flops", "activation_bytes", "weight_bytes",
                                              "bytes_moved", "peak_bytes")}

    def by_op(self) -> dict[str, dict[str, int]]:
        """Per-op sums: op -> ``{"nodes", "params", "macs", "flops", "activation_bytes", ...}``."""
        out: dict[str, dict[str, int]] = {}
        for r in self.nodes.values():
            d = out.setdefault(r.op, {"nodes": 0, "params": 0, "macs": 0, "flops": 0, "activation_bytes": 0,
                                      "weight_bytes": 0, "bytes_moved": 0})
            d["nodes"] += 1
            for k in list(d)[1:]:
                d[k] += getattr(r, k)
        return out

    def to_dict(self) -> dict:
        """JSON-ready: ``{"graph", "batch_size", "supernet", "totals", "peak_node", "nodes": [...],
        "excluded": [...], "auxiliary_params"}`` (``excluded``: the auxiliary head's records)."""
        return {"graph": self.graph, "batch_size": self.batch_size, "supernet": self.supernet,
                "totals": self.totals(), "peak_node": self.peak_node,
                "nodes": [asdict(r) for r in self.nodes.values()],
                "excluded": [asdict(r) for r in self.excluded.values()], "auxiliary_params": self.auxiliary_params}

    def excluded_note(self) -> str:
        """One line on the auxiliary head left out of the totals (``""`` when nothing is)."""
        if not self.excluded:
            return ""
        e = self.excluded.values()
        return (f"excluded: {len(self.excluded)} auxiliary-head node(s) ({self.auxiliary_params:,} params, "
                f"{sum(r.macs for r in e):,} MACs) feed only auxiliary training outputs and are in no total "
                "(archir.strip_training removes them)")

    def table(self) -> str:
        """A per-node table with a totals line (what ``archir cost`` prints)."""
        cols = ("params", "macs", "flops", "activation_bytes", "weight_bytes", "live_bytes")
        head = ("node", "op", "params", "MACs", "FLOPs", "act bytes", "weight bytes", "live bytes")
        rows = [head] + [(r.id, r.op, *(f"{getattr(r, c):,}" for c in cols)) for r in self.nodes.values()]
        rows.append(("total", f"batch {self.batch_size}", *(f"{v:,}" for v in (
            self.params, self.macs, self.flops, self.activation_bytes, self.weight_bytes))) + (
            f"peak {self.peak_bytes:,}",))
        w = [max(len(r[i]) for r in rows) for i in range(len(head))]
        fmt = lambda r: "  ".join(c.ljust(w[i]) if i < 2 else c.rjust(w[i]) for i, c in enumerate(r))
        sep = "  ".join("-" * x for x in w)
        note = self.excluded_note()
        return "\n".join([fmt(rows[0]), sep, *map(fmt, rows[1:-1]), sep, fmt(rows[-1])] + ([note] if note else []))


# --------------------------------------------------------------------------- count


def count(g: Graph, batch_size: int = 1) -> Counts:
    """Count parameters, MACs, FLOPs and memory of ``g``, per node and in total.

    Conventions (per node; batch-dependent figures are multiplied by ``batch_size``):

    - ``params``: trainable parameters (BN running stats are buffers, not params).
    - ``macs``: multiply-accumulates of ``conv2d`` and ``linear`` (and ``matmul``, ``attention`` below), bias excluded:
      conv ``out_numel * in_channels / groups * kh * kw``, linear ``out_numel * in_features``.
      This is torchvision's convention (its published "GFLOPS" are these MACs).
    - ``flops``: all arithmetic, one flop per add, multiply, compare, exp or divide:
      conv/linear ``2 * macs`` plus one per output element for the bias; ``batchnorm2d`` 2 per
      element (eval mode: ``x * a + b`` with ``a, b`` folded from the running stats);
      ``relu`` 1, ``relu6`` 2, ``sigmoid`` 4 (neg, exp, add, divide), ``hardsigmoid`` 4,
      ``hardswish`` 5, ``silu`` 5, ``tanh`` 5 per element; ``leaky_relu`` 2 (compare, multiply),
      ``elu`` 4 (compare, exp, subtract, multiply), ``hardtanh`` 2 (as relu6), ``gelu`` 5
      (``approximate="none"``: divide, erf counted as one like exp, add, two multiplies) or 13
      (``"tanh"``: eight adds/multiplies and a tanh of 5), ``neg`` 1; ``add``, ``sub``, ``mul``,
      ``div``, ``scale``, ``stop_forward`` 1 per output element; ``maxpool2d``/``avgpool2d`` ``kh * kw`` per output
      element (the window, padding included); ``global_avgpool`` one per input element; ``adaptive_avgpool2d`` one per element of every
      window (windows may overlap);
      ``identity``, ``dropout`` and ``drop_path`` (eval), ``flatten``, ``stop_gradient``, ``auxiliary``,
      ``concat``, ``slice``, ``pad``, ``zero``, ``permute``, ``reshape``, ``channel_shuffle``: 0;
      ``upsample`` 0 (nearest: a copy) or 7 per output element (bilinear: 4 multiplies, 3 adds);
      ``mean``/``sum`` one per input element; ``conv1d`` as ``conv2d`` (``macs = out * cin/groups * k``);
      ``softmax``/``log_softmax`` 5 per element (max, subtract, exp, sum, divide or log-subtract);
      ``matmul`` ``macs = n * k * m`` per matrix (leading dims broadcast), ``2 * macs`` flops;
      ``param`` 0 (a learned tensor: no arithmetic); ``attention`` on ``(L, E)`` tokens with ``H`` heads
      ``macs = 4 L E^2 + 2 L^2 E`` (the four projections and the two matmuls, as fvcore / torchvision's
      published GFLOPS), flops ``2 * macs + 4 L E`` (biases) ``+ 6 H L^2`` (scale and softmax);
      ``rel_attention`` on ``(G, P, E)`` windows ``G`` times attention's MACs on ``(P, E)``, flops ``2 * macs +
      G (5 P E + 6 H P^2)`` (biases and the scale of k; the relative-bias add and softmax);
      ``window_attention`` (swin) with ``nW`` windows of ``T`` tokens over the zero-padded ``(Hp, Wp, C)`` map
      ``macs = nW (4 T C^2 + 2 T^2 C)``, flops ``2 * macs`` plus the bias adds, the q scaling ``T C`` and
      ``(1 + shifted + 5) H T^2`` (position bias, shift mask, softmax) per window; ``window_attention_v2``
      the same MACs plus cpb_mlp's ``(2 wh - 1)(2 ww - 1)(2 hidden + hidden H)`` (torchvision's swin_v2 figures);
      ``layernorm`` ``(5 + weight + bias)`` per element (mean and variance sums, subtract, square, scale by
      1/std; the affine multiply and add) plus 4 per normalised vector (two divisions by C, + eps, rsqrt).
    - ``activation_bytes``: bytes of the node's output tensor; 0 for ``input`` nodes (given,
      not computed). View ops are counted here although backends alias them.
    - ``weight_bytes``: bytes of params plus buffers (weights are float32: 4 bytes each).
    - ``bytes_moved``: the memory traffic of the node: each input read once, the output written
      once, the weights read once; 0 for views (``identity``, ``flatten``, ``dropout``, ``drop_path``,
      ``stop_gradient``, ``auxiliary``), output only for ``zero``. The roofline's memory time uses it.
    - ``peak_bytes``: run the nodes in ``g.topo_order()``. A tensor is live from the step that
      produces it until its last consumer has run; graph inputs are live from the start and
      graph outputs to the end. View ops share their input's storage (which then lives until
      the view's last consumer) instead of adding a tensor. While a node runs its inputs and its
      output are live. ``peak_bytes`` is the largest sum of live bytes over the steps (weights
      excluded; add ``weight_bytes`` for the whole footprint).
    - ``choice`` (a supernet) counts the **sum over all candidates**: MACs, FLOPs, params and
      traffic of every candidate chain, and every candidate's intermediate tensors live while
      the choice node runs (as in a DARTS mixture). The expected cost under architecture
      probabilities is another function.
    - An **auxiliary head** (``auxiliary`` outputs and the nodes only they need, see
      ``archir.training.auxiliary_head``) is a training-time construct: it is left out of every
      total (params, MACs, FLOPs, bytes, peak memory: the schedule is that of the main outputs),
      as the papers count their networks. Its records are in ``Counts.excluded``, its
      parameters in ``Counts.auxiliary_params``, and ``Counts.table()`` says so in a last line.
      ``drop_path`` (eval: the identity) is a view: 0.

    Args:
        g: a graph (weights need not be initialised: parameter counts come from the op schemas).
        batch_size: the batch size to count for (a positive int).

    Returns:
        A :class:`Counts` with per-node :class:`NodeCount` records in schedule order.

    Raises:
        ValueError: ``batch_size`` is not a positive int.
        IRError: the graph is invalid (it is validated without weights first), or an op has no
            cost handler (``OpSchemaError`` naming the node; register one with
            ``@costmodels.count.register("op")``).

    Example:
        >>> import archir, costmodels
        >>> g = archir.Graph("one")
        >>> x = g.input("x", shape=(3, 32, 32))
        >>> g.set_outputs(g.add("conv2d", x, out_channels=16, kernel_size=3, padding=1, bias=False, name="c"))
        >>> c = costmodels.count(g)
        >>> c.macs == 16 * 3 * 9 * 32 * 32, c.params, c.peak_bytes == 4 * (3 + 16) * 32 * 32
        (True, 432, True)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"count: batch_size must be a positive int, got {batch_size!r}")
    batch_size = int(batch_size)
    g.validate(weights=False)
    head = auxiliary_head(g)
    excluded = {}
    if head:
        excluded = _head_counts(g, head, batch_size)
        g = g.copy()  # the network as deployed: the main outputs and what they need
        gone = set(head)
        g.set_outputs(*[o for o in g.outputs if o not in gone])
        for n in reversed(head):
            g.remove(n)
    order = g.topo_order()
    pos = {n: i for i, n in enumerate(order)}
    outputs = set(g.outputs)
    raw: dict[str, tuple] = {}
    root: dict[str, str] = {}  # the node whose storage a node's output lives in
    for n in order:
        node = g.node(n)
        ins = g.input_types(n)
        c = op_cost(node.op, node.attrs, ins, node.type, n)
        opdef = get_op(node.op, n)
        params = sum(math.prod(s) for s in opdef.param_shapes(node.attrs, ins).values())
        buffers = sum(math.prod(s) for s in opdef.buffer_shapes(node.attrs, ins).values())
        raw[n] = (node.op, params, buffers, c, node.type)
        root[n] = root[g.inputs_of(n)[0]] if c.alias else n

    # liveness: one interval [start, end] of schedule steps per storage root
    last = len(order) - 1
    start = {r: (0 if raw[r][0] == "input" else pos[r]) for r in set(root.values())}
    end = dict.fromkeys(start, -1)
    for n in order:
        r = root[n]
        steps = [pos[n]] + [pos[v] for v, _ in g.users_of(n)] + ([last] if n in outputs else [])
        end[r] = max(end[r], *steps)
    delta = [0] * (len(order) + 1)
    for r in start:
        size = batch_size * _nbytes(raw[r][4])
        delta[start[r]] += size
        delta[end[r] + 1] -= size
    live, running = [], 0
    for i, n in enumerate(order):
        running += delta[i]
        live.append(running + batch_size * raw[n][3].workspace_bytes)

    records = {}
    for i, n in enumerate(order):
        op, params, buffers, c, t = raw[n]
        wbytes = 4 * (params + buffers)
        records[n] = NodeCount(
            id=n, op=op, params=params, macs=batch_size * c.macs, flops=batch_size * c.flops,
            activation_bytes=0 if op == "input" else batch_size * _nbytes(t), weight_bytes=wbytes,
            bytes_moved=batch_size * c.traffic_bytes + wbytes, live_bytes=live[i])
    peak_i = max(range(len(order)), key=live.__getitem__)
    tot = lambda k: sum(getattr(r, k) for r in records.values())
    return Counts(
        graph=g.name, batch_size=batch_size, nodes=MappingProxyType(records), params=tot("params"), macs=tot("macs"),
        flops=tot("flops"), activation_bytes=tot("activation_bytes"), weight_bytes=tot("weight_bytes"),
        bytes_moved=tot("bytes_moved"), peak_bytes=live[peak_i], peak_node=order[peak_i],
        supernet=any(r.op == "choice" for r in records.values()), excluded=MappingProxyType(excluded),
        auxiliary_params=sum(r.params for r in excluded.values()))


def _head_counts(g: Graph, head: list[str], batch_size: int) -> dict[str, NodeCount]:
    """The records of the auxiliary-head nodes, each priced alone (not scheduled: ``live_bytes`` 0)."""
    out = {}
    for n in head:
        node = g.node(n)
        ins = g.input_types(n)
        c = op_cost(node.op, node.attrs, ins, node.type, n)
        opdef = get_op(node.op, n)
        params = sum(math.prod(s) for s in opdef.param_shapes(node.attrs, ins).values())
        wbytes = 4 * (params + sum(math.prod(s) for s in opdef.buffer_shapes(node.attrs, ins).values()))
        out[n] = NodeCount(id=n, op=node.op, params=params, macs=batch_size * c.macs, flops=batch_size * c.flops,
                           activation_bytes=batch_size * _nbytes(node.type), weight_bytes=wbytes,
                           bytes_moved=batch_size * c.traffic_bytes + wbytes, live_bytes=0)
    return out


# ``@costmodels.count.register("op")`` is what OpHandlers' error hint tells a new op's author to write.
count.register = COUNT_HANDLERS.register  # type: ignore[attr-defined]
count.handlers = COUNT_HANDLERS  # type: ignore[attr-defined]
