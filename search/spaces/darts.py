"""The DARTS / NASNet cell space (Liu et al. 2019; Zoph et al. 2018).

A network is a stack of cells (``archir.samples.darts_body``: stem, cells with reductions at
1/3 and 2/3 of the depth, GAP + linear head). A cell has two inputs (the outputs of the two
cells before it, preprocessed to the cell's width) and four intermediate nodes; node ``n``
sums two edges, each an op applied to one of the ``n + 2`` states before it; the cell's
output concatenates the four nodes. All normal cells share one genotype, all reduction
cells another (decisions are tied across cells of a kind); reduction cells apply stride 2
on edges that read the cell inputs.

Decisions are DARTS genotypes::

    {"normal": [[op, input], ...8 pairs: node 0 edge 0, node 0 edge 1, node 1 edge 0, ...],
     "reduce": [...]}

with ``input`` in ``0 .. n+1`` (0, 1: the cell inputs; ``k + 2``: node ``k``), the two inputs
of a node distinct, and in canonical form the pair of a node sorted by input.

The eight DARTS ops (:data:`OPS`) are ``none`` (zero), ``max_pool_3x3``, ``avg_pool_3x3``,
``skip_connect`` (identity; relu-conv1x1-BN at stride 2: DARTS' FactorizedReduce without the
pixel-shifted half, which needs a slice op the IR does not have), ``sep_conv_3x3/5x5``
(relu-dw-pw-BN twice) and ``dil_conv_3x3/5x5`` (relu-dilated dw-pw-BN). ``none`` is a candidate
of every supernet edge -- it is how an edge is dropped -- and, as in DARTS' derivation, never
an op of a genotype's selected edge (:data:`GENOTYPE_OPS`: the other seven).

The supernet is DARTS' one-shot cell: node ``n`` sums a ``choice`` over all eight ops on
*every* one of its ``n + 2`` inputs, tied across cells of a kind
(``tie="normal.n2.i3"``). ``supernet_decisions(d)`` selects the genotype's op on its two
edges and ``none`` elsewhere; ``derive(supernet, d)`` then drops the ``none`` edges and is
structurally identical to ``build(d)``. ``genotype_of(supernet)`` is DARTS' argmax
derivation: per node, the two inputs whose strongest non-``none`` op weighs most.

Example:
    >>> import numpy as np
    >>> space = DartsSpace(input_shape=(1, 8, 8), num_classes=10)
    >>> d = space.sample(np.random.default_rng(0))
    >>> small = space.build(d)                               # the search proxy: 3 cells, 8 channels
    >>> large = space.build(d, cells=8, channels=16)         # NASNet transfer: the same cells, stacked
    >>> small.structural_hash() == space.derive(space.supernet(), d).structural_hash()
    True
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from archir import Graph, decision_keys
from archir.samples import darts_body
from search.spaces.base import DecisionError, Space, SpaceError, add_chain, check_rng, simplify

__all__ = ["DartsSpace", "OPS", "GENOTYPE_OPS", "KINDS", "op_chain"]

#: the DARTS primitives, in DARTS' order.
OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
       "dil_conv_3x3", "dil_conv_5x5")
#: ops a genotype's selected edges may use (``none`` would drop the edge: choose another input instead).
GENOTYPE_OPS = OPS[1:]
KINDS = ("normal", "reduce")
NODES = 4
#: the (lower, higher) pairs of states node ``n`` may read, in a fixed order (the categorical view).
_PAIRS = tuple(tuple((i, j) for i in range(n + 2) for j in range(i + 1, n + 2)) for n in range(NODES))
_SHORT = {"max_pool_3x3": "max3", "avg_pool_3x3": "avg3", "skip_connect": "skip", "sep_conv_3x3": "sep3",
          "sep_conv_5x5": "sep5", "dil_conv_3x3": "dil3", "dil_conv_5x5": "dil5", "none": "none"}


def op_chain(op: str, c: int, stride: int) -> list[dict]:
    """The chain of primitive op specs for DARTS op ``op`` on ``c`` channels with ``stride``.

    Used as a choice candidate in the supernet and added node by node in ``build``, so
    both agree by construction. Every chain maps ``(c, H, W)`` to ``(c, ceil(H/s), ceil(W/s))``.
    """
    s = stride
    if op == "none":
        return [{"op": "zero", "stride": s}]
    if op == "skip_connect":
        return [] if s == 1 else [{"op": "relu"},
                                  {"op": "conv2d", "out_channels": c, "kernel_size": 1, "stride": s, "bias": False},
                                  {"op": "batchnorm2d"}]
    if op in ("max_pool_3x3", "avg_pool_3x3"):
        spec = {"op": op[:3] + "pool2d", "kernel_size": 3, "stride": s, "padding": 1}
        if op == "avg_pool_3x3":
            spec["count_include_pad"] = False
        return [spec]
    k = int(op[-1])
    if op.startswith("sep_conv"):
        out: list[dict] = []
        for r in range(2):
            out += [{"op": "relu"},
                    {"op": "conv2d", "out_channels": c, "kernel_size": k, "stride": s if r == 0 else 1,
                     "padding": k // 2, "groups": c, "bias": False},
                    {"op": "conv2d", "out_channels": c, "kernel_size": 1, "bias": False},
                    {"op": "batchnorm2d"}]
        return out
    if op.startswith("dil_conv"):
        return [{"op": "relu"},
                {"op": "conv2d", "out_channels": c, "kernel_size": k, "stride": s, "padding": k - 1, "dilation": 2,
                 "groups": c, "bias": False},
                {"op": "conv2d", "out_channels": c, "kernel_size": 1, "bias": False},
                {"op": "batchnorm2d"}]
    raise SpaceError(f"unknown DARTS op {op!r}", hint=f"use one of {list(OPS)}")


def _candidates(c: int, stride: int) -> list[dict]:
    return [{"name": op, "ops": op_chain(op, c, stride)} for op in OPS]


class DartsSpace(Space):
    """The DARTS/NASNet cell space (see the module docstring).

    Args:
        input_shape: ``(C, H, W)`` of one input.
        num_classes: classes of the head.
        cells: cells of the search network (default 3: normal, reduce, reduce -- sized for 8x8 digits).
        channels: channels of the first cells (doubled at each reduction; the stem has 3x).
    """

    name = "darts"

    def __init__(self, input_shape=(1, 8, 8), num_classes: int = 10, *, cells: int = 3, channels: int = 8) -> None:
        super().__init__(input_shape, num_classes)
        self.cells = _positive("cells", cells)
        self.channels = _positive("channels", channels)

    # ---------------------------------------------------------------- decisions

    def sample(self, rng: np.random.Generator) -> dict:
        rng = check_rng(rng)
        out = {}
        for kind in KINDS:
            pairs = []
            for n in range(NODES):
                for j in sorted(int(v) for v in rng.choice(n + 2, size=2, replace=False)):
                    pairs.append([GENOTYPE_OPS[int(rng.integers(len(GENOTYPE_OPS)))], j])
            out[kind] = pairs
        return self.decode(out)

    def mutate(self, decisions: Mapping, rng: np.random.Generator) -> dict:
        """Regularized-evolution mutation (Real et al.): one edge of one cell kind gets another op,
        or reads another state (the "hidden state" mutation; node 0 has no other state to read)."""
        rng = check_rng(rng)
        d = self.decode(decisions)
        kind = KINDS[int(rng.integers(2))]
        e = int(rng.integers(2 * NODES))
        n = e // 2
        pair = d[kind][e]
        other = d[kind][e ^ 1][1]
        inputs = [j for j in range(n + 2) if j not in (pair[1], other)]
        if inputs and rng.random() < 0.5:
            pair[1] = inputs[int(rng.integers(len(inputs)))]
        else:
            ops = [op for op in GENOTYPE_OPS if op != pair[0]]
            pair[0] = ops[int(rng.integers(len(ops)))]
        return self.decode(d)

    def decode(self, obj: Any) -> dict:
        if not isinstance(obj, Mapping):
            raise DecisionError(f"expected a dict with keys {list(KINDS)}, got {type(obj).__name__}",
                                hint='pass {"normal": [[op, input], ...], "reduce": [...]}')
        if set(obj) != set(KINDS):
            raise DecisionError(f"keys {sorted(map(str, obj))} are not {list(KINDS)}",
                                hint="give one genotype (8 [op, input] pairs) per cell kind")
        out = {}
        for kind in KINDS:
            pairs = obj[kind]
            if not isinstance(pairs, (list, tuple)) or len(pairs) != 2 * NODES:
                raise DecisionError(f"expected a list of {2 * NODES} [op, input] pairs, got {pairs!r}", where=kind,
                                    hint="two edges for each of the 4 nodes, node 0 first")
            canon = []
            for n in range(NODES):
                node = []
                for e in (2 * n, 2 * n + 1):
                    p = pairs[e]
                    where = f"{kind}[{e}]"
                    if not isinstance(p, (list, tuple)) or len(p) != 2:
                        raise DecisionError(f"expected an [op, input] pair, got {p!r}", where=where)
                    op, j = p
                    if op not in GENOTYPE_OPS:
                        hint = ("drop the edge by choosing another input instead" if op == "none"
                                else f"use one of {list(GENOTYPE_OPS)}")
                        raise DecisionError(f"op {op!r} is not a genotype op", where=where, hint=hint)
                    if isinstance(j, bool) or not isinstance(j, (int, np.integer)) or not 0 <= j < n + 2:
                        raise DecisionError(f"input {j!r} is not a state node {n} can read", where=where,
                                            hint=f"use an int 0..{n + 1} (0, 1: the cell inputs; k+2: node k)")
                    node.append([str(op), int(j)])
                if node[0][1] == node[1][1]:
                    raise DecisionError(f"both edges of node {n} read input {node[0][1]}", where=f"{kind}[{2 * n}]",
                                        hint="the two edges of a node read two different states")
                canon += sorted(node, key=lambda q: q[1])
            out[kind] = canon
        return out

    # ---------------------------------------------------------------- categorical view

    def variables(self) -> list[tuple[str, int]]:
        """Per cell kind and node: the pair of states it reads (one of C(n+2, 2)) and the op of each edge."""
        out = []
        for kind in KINDS:
            for n in range(NODES):
                out += [(f"{kind}.n{n}.inputs", len(_PAIRS[n])), (f"{kind}.n{n}.op0", len(GENOTYPE_OPS)),
                        (f"{kind}.n{n}.op1", len(GENOTYPE_OPS))]
        return out

    def to_choices(self, decisions: Mapping) -> list[int]:
        d = self.decode(decisions)
        out = []
        for kind in KINDS:
            for n in range(NODES):
                a, b = d[kind][2 * n], d[kind][2 * n + 1]
                out += [_PAIRS[n].index((a[1], b[1])), GENOTYPE_OPS.index(a[0]), GENOTYPE_OPS.index(b[0])]
        return out

    def from_choices(self, choices) -> dict:
        c = iter(self._check_choices(choices))
        out = {}
        for kind in KINDS:
            pairs = []
            for n in range(NODES):
                i, j = _PAIRS[n][next(c)]
                pairs += [[GENOTYPE_OPS[next(c)], i], [GENOTYPE_OPS[next(c)], j]]
            out[kind] = pairs
        return self.decode(out)

    def describe(self, decisions: Mapping) -> str:
        d = self.decode(decisions)
        parts = []
        for kind in KINDS:
            ps = d[kind]
            nodes = " ".join(f"{_SHORT[ps[2 * n][0]]}@{ps[2 * n][1]}+{_SHORT[ps[2 * n + 1][0]]}@{ps[2 * n + 1][1]}"
                             for n in range(NODES))
            parts.append(f"{kind[0].upper()}: {nodes}")
        return " | ".join(parts)

    # ---------------------------------------------------------------- graphs

    def build(self, decisions: Mapping, seed: int = 0, cells: int | None = None,
              channels: int | None = None) -> Graph:
        """The network of genotype ``decisions``: ``cells`` cells of ``channels`` (default: the space's).

        A larger ``cells``/``channels`` stacks the same genotype into a larger network (NASNet
        transfer).
        """
        d = self.decode(decisions)
        cells = self.cells if cells is None else _positive("cells", cells)
        channels = self.channels if channels is None else _positive("channels", channels)
        g = Graph(f"darts_{cells}x{channels}")

        def node(i: int, red: bool, n: int, states: list[str], c: int) -> str:
            ps = d["reduce" if red else "normal"][2 * n: 2 * n + 2]
            outs = [add_chain(g, states[j], op_chain(op, c, 2 if red and j < 2 else 1), f"cell{i}.n{n}.i{j}")
                    for op, j in ps]
            return g.add("add", *outs, name=f"cell{i}.n{n}.add")

        out = darts_body(g, g.input("x", self.input_shape), cells=cells, channels=channels,
                         classes=self.num_classes, node=node)
        g.set_outputs(out)
        simplify(g)
        g.meta = {"space": self.name, "decisions": d}
        g.init_params(seed)
        return g.validate()

    def supernet(self, seed: int = 0, cells: int | None = None, channels: int | None = None) -> Graph:
        """DARTS' one-shot network: every node sums an 8-way ``choice`` on each of its inputs, tied per kind."""
        cells = self.cells if cells is None else _positive("cells", cells)
        channels = self.channels if channels is None else _positive("channels", channels)
        g = Graph(f"darts_supernet_{cells}x{channels}")

        def node(i: int, red: bool, n: int, states: list[str], c: int) -> str:
            kind = "reduce" if red else "normal"
            acc = None
            for j, s in enumerate(states):
                e = g.add("choice", s, name=f"cell{i}.n{n}.i{j}", tie=f"{kind}.n{n}.i{j}",
                          candidates=_candidates(c, 2 if red and j < 2 else 1))
                acc = e if acc is None else g.add("add", acc, e, name=f"cell{i}.n{n}.sum{j}")
            return acc

        out = darts_body(g, g.input("x", self.input_shape), cells=cells, channels=channels,
                         classes=self.num_classes, node=node)
        g.set_outputs(out)
        g.meta = {"space": self.name, "supernet": True}
        g.init_params(seed)
        return g.validate()

    def supernet_decisions(self, decisions: Mapping, supernet: Graph | None = None) -> dict[str, str]:
        """The genotype's op on its selected edges, ``none`` on every other edge (key ``"<kind>.n<n>.i<j>"``)."""
        d = self.decode(decisions)
        out = {}
        for kind in KINDS:
            for n in range(NODES):
                chosen = {j: op for op, j in d[kind][2 * n: 2 * n + 2]}
                for j in range(n + 2):
                    out[f"{kind}.n{n}.i{j}"] = chosen.get(j, "none")
        if supernet is not None:
            keys = decision_keys(supernet)
            out = {k: v for k, v in out.items() if k in keys}
        return out

    def genotype_of(self, supernet: Graph) -> dict:
        """DARTS' derivation from a trained supernet's logits: per node, the two inputs whose strongest
        non-``none`` op has the largest softmax weight, each with that op."""
        probs = {}
        for kind in KINDS:
            for n in range(NODES):
                for j in range(n + 2):
                    key = f"{kind}.n{n}.i{j}"
                    if key not in supernet.arch:
                        raise DecisionError(f"supernet has no decision {key!r}",
                                            hint="pass a graph from DartsSpace.supernet()")
                    w = np.exp(supernet.arch[key] - supernet.arch[key].max())
                    probs[key] = w / w.sum()
        return self.genotype_from_probs(probs)

    def genotype_from_probs(self, probs: Mapping[str, Any], *, drop_zero: bool = False) -> dict:
        """The genotype read off per-edge op probabilities (key ``"<kind>.n<n>.i<j>"`` -> one weight per
        :data:`OPS`; a missing key counts as uniform): per node the two inputs whose strongest
        non-``none`` op weighs most, each with that op (DARTS). With ``drop_zero`` (SNAS) edges whose
        argmax is ``none`` rank after every surviving edge."""
        out = {}
        for kind in KINDS:
            pairs = []
            for n in range(NODES):
                ranked = []
                for j in range(n + 2):
                    key = f"{kind}.n{n}.i{j}"
                    w = np.full(len(OPS), 1.0 / len(OPS)) if key not in probs else np.asarray(probs[key], np.float64)
                    k = 1 + int(np.argmax(w[1:]))  # OPS[0] is none
                    dropped = drop_zero and int(np.argmax(w)) == 0
                    ranked.append((dropped, -float(w[k]), j, OPS[k]))
                pairs += [[op, j] for _, _, j, op in sorted(ranked)[:2]]
            out[kind] = pairs
        return self.decode(out)

    def __repr__(self) -> str:
        return (f"DartsSpace(input_shape={self.input_shape}, num_classes={self.num_classes}, cells={self.cells}, "
                f"channels={self.channels})")


def _positive(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)
