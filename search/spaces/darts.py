"""The DARTS / NASNet cell space (Liu et al. 2019; Zoph et al. 2018; Real et al. 2019; Liu et al. 2018).

A network is a stack of cells (:func:`archir.cells.cell_network`: stem, cells with reductions
at 1/3 and 2/3 of the depth, GAP + linear head, optionally an auxiliary head and drop-path).
A cell has two inputs (the outputs of the two cells before it, preprocessed to the cell's
width) and ``nodes`` intermediate nodes (4 for DARTS/SNAS, 5 for NASNet, AmoebaNet, PNAS and
ENAS); node ``n`` sums two edges, each an op applied to one of the ``n + 2`` states before it;
the cell's output concatenates every intermediate node (``concat="all"``: DARTS, PNAS) or the
nodes nothing in the cell reads (``concat="loose"``: NASNet's and AmoebaNet's "loose ends").
All normal cells share one genotype, all reduction cells another; reduction cells apply
stride 2 on edges that read the cell inputs.

Decisions are DARTS genotypes::

    {"normal": [[op, input], ... 2 * nodes pairs: node 0 edge 0, node 0 edge 1, node 1 edge 0, ...],
     "reduce": [...]}

with ``input`` in ``0 .. n+1`` (0, 1: the cell inputs; ``k + 2``: node ``k``). The two edges of
a node read two different states unless the space has ``same_input=True`` (NASNet, AmoebaNet,
PNAS and ENAS cells read one state twice); in canonical form a node's pair is sorted by
(input, op). :meth:`DartsSpace.from_genotype` / :meth:`DartsSpace.to_genotype` convert to and from
the DARTS repository's ``Genotype`` (``search.spaces.genotypes``, which ships the published
cells), and :meth:`DartsSpace.for_genotype` makes the space that holds a given genotype.

The ops are those of the DARTS reference (``archir.cells.PRIMITIVES``, each defined once in
:func:`archir.cells.cell_op`); ``ops=`` picks the space's (default: DARTS' eight, :data:`OPS`).
``none`` is a candidate of every supernet edge -- it is how an edge is dropped -- and never an
op of a genotype's selected edge (:attr:`DartsSpace.genotype_ops`).

The supernet is DARTS' one-shot cell: node ``n`` sums a ``choice`` over ``none`` and every
genotype op on *every* one of its ``n + 2`` inputs (two such edges per input with
``same_input``: keys ``"<kind>.n<n>.i<j>"`` and ``"<kind>.n<n>.i<j>.s1"``), tied across cells of
a kind. ``supernet_decisions(d)`` selects the genotype's op on its two edges and ``none``
elsewhere; ``derive(supernet, d)`` then drops the ``none`` edges and is structurally identical
to ``build(d)``. ``genotype_of(supernet)`` is DARTS' argmax derivation: per node, the two edges
whose strongest non-``none`` op weighs most. A ``concat="loose"`` space has no supernet (which
nodes a cell concatenates, and so every later layer's width, would depend on the decisions).

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

import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from archir import Graph, decision_keys
from archir.cells import AUX_WEIGHT, PRIMITIVES, STEMS, add_steps, cell_network, cell_op
from search.spaces.base import DecisionError, Space, SpaceError, check_rng, register_space, simplify

__all__ = ["DartsSpace", "OPS", "GENOTYPE_OPS", "KINDS", "PRIMITIVES", "CONCATS"]

#: the DARTS search primitives, in DARTS' order (the default ``ops``).
OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
       "dil_conv_3x3", "dil_conv_5x5")
#: ops a genotype's selected edges may use in the default space (``none`` would drop the edge).
GENOTYPE_OPS = OPS[1:]
KINDS = ("normal", "reduce")
CONCATS = ("all", "loose")
MAX_NODES = 16
_SHORT = {"none": "none", "max_pool_3x3": "max3", "avg_pool_3x3": "avg3", "skip_connect": "skip",
          "sep_conv_3x3": "sep3", "sep_conv_5x5": "sep5", "sep_conv_7x7": "sep7", "dil_conv_3x3": "dil3",
          "dil_conv_5x5": "dil5", "conv_7x1_1x7": "c7x1"}


@register_space
class DartsSpace(Space):
    """The DARTS/NASNet cell space (see the module docstring).

    Args:
        input_shape: ``(C, H, W)`` of one input.
        num_classes: classes of the head.
        cells: cells of the search network (default 3: normal, reduce, reduce -- sized for 8x8 digits).
        channels: channels of the first cells (doubled at each reduction).
        nodes: intermediate nodes per cell.
        ops: the cell ops of the space (names from ``archir.cells.PRIMITIVES``; ``none`` may be listed
            and is always a supernet candidate).
        same_input: the two edges of a node may read the same state.
        concat: ``"all"`` (every intermediate node) or ``"loose"`` (the nodes nothing reads).
        stem: ``"cifar"`` or ``"imagenet"`` (the default of :meth:`build`).
        start_genotype: a genotype (name in ``search.spaces.genotypes``, or a ``Genotype``) that
            evolution and random search propose first (``archir search --start-genotype NAME``).
            ``nodes``, ``ops``, ``same_input`` and ``concat`` left out are then the genotype's
            (NASNet: 5 nodes, the reference's ops, ``same_input=True``, ``concat="loose"``); without
            one they are DARTS': 4 nodes, :data:`OPS`, ``False``, ``"all"``.

    Raises:
        SpaceError: an option the space cannot take (every problem listed).
    """

    name = "darts"

    def __init__(self, input_shape=(1, 8, 8), num_classes: int = 10, *, cells: int = 3, channels: int = 8,
                 nodes: int | None = None, ops: Sequence[str] | None = None, same_input: bool | None = None,
                 concat: str | None = None, stem: str = "cifar", start_genotype: Any = None) -> None:
        super().__init__(input_shape, num_classes)
        genotype = None
        if start_genotype is not None:
            from search.spaces.genotypes import get_genotype

            genotype = get_genotype(start_genotype) if isinstance(start_genotype, str) else start_genotype
        # an option left out: the start genotype's (the smallest space that holds it), else DARTS'
        fit = _fit(genotype) if genotype is not None else {}
        nodes = fit.get("nodes", 4) if nodes is None else nodes
        ops = fit.get("ops", OPS) if ops is None else ops
        same_input = fit.get("same_input", False) if same_input is None else same_input
        concat = fit.get("concat", "all") if concat is None else concat
        self.cells = _positive("cells", cells)
        self.channels = _positive("channels", channels)
        problems = []
        if isinstance(nodes, bool) or not isinstance(nodes, (int, np.integer)) or not 1 <= nodes <= MAX_NODES:
            problems.append(f"nodes must be an int 1..{MAX_NODES}, got {nodes!r}")
        if isinstance(ops, str) or not isinstance(ops, Sequence):
            problems.append(f"ops must be a list of op names, got {ops!r}")
            ops = OPS
        unknown = [op for op in ops if op not in PRIMITIVES]
        if unknown:
            problems.append(f"unknown op(s) {unknown} (the DARTS ops are {list(PRIMITIVES)})")
        if len(set(ops)) != len(ops):
            problems.append(f"ops {list(ops)} list an op twice")
        if not [op for op in ops if op != "none"]:
            problems.append("ops need at least one op besides 'none'")
        if not isinstance(same_input, bool):
            problems.append(f"same_input must be True or False, got {same_input!r}")
        if concat not in CONCATS:
            problems.append(f"concat must be one of {list(CONCATS)}, got {concat!r}")
        if stem not in STEMS:
            problems.append(f"stem must be one of {list(STEMS)}, got {stem!r}")
        if problems:
            raise SpaceError("darts space: " + "; ".join(problems),
                             hint='e.g. get_space("darts", nodes=5, ops=["sep_conv_3x3", "sep_conv_7x7", ...], '
                                  'same_input=True, concat="loose")')
        self.nodes = int(nodes)
        self.same_input = same_input
        self.concat = concat
        self.stem = stem
        # DARTS' order, then the reference's other ops: two spellings of one space agree
        order = OPS[1:] + tuple(op for op in PRIMITIVES if op not in OPS)
        self.genotype_ops = tuple(op for op in order if op in ops)
        #: the candidates of every supernet edge: none first (DARTS' OPS for the default space)
        self.supernet_ops = ("none",) + self.genotype_ops
        self._pairs = tuple(tuple((i, j) for i in range(n + 2) for j in range(i if same_input else i + 1, n + 2))
                            for n in range(self.nodes))
        self.start_genotype = start_genotype
        if genotype is not None:
            self.seeds = [self.from_genotype(genotype)]

    # ---------------------------------------------------------------- structure

    def pairs(self, n: int) -> tuple[tuple[int, int], ...]:
        """The (lower, higher) pairs of states node ``n`` may read, in a fixed order (the categorical view)."""
        return self._pairs[n]

    def edge_keys(self, kind: str, n: int, j: int) -> list[str]:
        """The supernet decision keys of node ``n``'s edges from state ``j`` (two with ``same_input``)."""
        base = f"{kind}.n{n}.i{j}"
        return [base, f"{base}.s1"] if self.same_input else [base]

    def concat_of(self, decisions: Mapping, kind: str) -> list[int]:
        """The states a cell of ``kind`` concatenates (2 and up: intermediate nodes), by the space's rule."""
        pairs = decisions[kind]
        if self.concat == "all":
            return list(range(2, self.nodes + 2))
        read = {int(j) for _, j in pairs}
        return [s for s in range(2, self.nodes + 2) if s not in read]

    # ---------------------------------------------------------------- decisions

    def sample(self, rng: np.random.Generator) -> dict:
        rng = check_rng(rng)
        ops = self.genotype_ops
        out = {}
        for kind in KINDS:
            pairs = []
            for n in range(self.nodes):
                picks = rng.choice(n + 2, size=2, replace=self.same_input)
                for j in sorted(int(v) for v in picks):
                    pairs.append([ops[int(rng.integers(len(ops)))], j])
            out[kind] = pairs
        return self.decode(out)

    def mutate(self, decisions: Mapping, rng: np.random.Generator) -> dict:
        """Regularized-evolution mutation (Real et al.): one edge of one cell kind gets another op,
        or reads another state (the "hidden state" mutation, when there is another state to read)."""
        rng = check_rng(rng)
        d = self.decode(decisions)
        for _ in range(64):
            kind = KINDS[int(rng.integers(2))]
            e = int(rng.integers(2 * self.nodes))
            n = e // 2
            pair = d[kind][e]
            other = d[kind][e ^ 1]
            inputs = [j for j in range(n + 2) if j != pair[1] and (self.same_input or j != other[1])]
            ops = [op for op in self.genotype_ops if op != pair[0]]
            if inputs and (rng.random() < 0.5 or not ops):
                pair[1] = inputs[int(rng.integers(len(inputs)))]
            elif ops:
                pair[0] = ops[int(rng.integers(len(ops)))]
            new = self.decode(d)
            if new != self.decode(decisions):
                return new
            d = self.decode(decisions)  # swapping the op of one of two equal edges: draw again
        raise DecisionError("no mutation changes these decisions", hint="use a space with more than one op")

    def decode(self, obj: Any) -> dict:
        """Check ``obj`` and return canonical decisions; one :class:`DecisionError` lists every problem."""
        out, problems = self._read(obj)
        if problems:
            _raise(problems)
        return out

    def _read(self, obj: Any) -> tuple[dict, list[tuple[str | None, str, str | None]]]:
        """Canonical decisions and the problems found: ``(place, what, how to mend)`` each."""
        problems: list[tuple[str | None, str, str | None]] = []
        if not isinstance(obj, Mapping):
            return {}, [(None, f"expected a dict with keys {list(KINDS)}, got {type(obj).__name__}",
                         'pass {"normal": [[op, input], ...], "reduce": [...]}')]
        if set(obj) != set(KINDS):
            return {}, [(None, f"keys {sorted(map(str, obj))} are not {list(KINDS)}",
                         f"give one genotype ({2 * self.nodes} [op, input] pairs) per cell kind")]
        out = {}
        for kind in KINDS:
            pairs = obj[kind]
            if not isinstance(pairs, (list, tuple)) or len(pairs) != 2 * self.nodes:
                got = f"{len(pairs)} pairs" if isinstance(pairs, (list, tuple)) else repr(pairs)
                problems.append((kind, f"expected a list of {2 * self.nodes} [op, input] pairs "
                                       f"({self.nodes} nodes), got {got}",
                                 f"two edges for each of the {self.nodes} nodes, node 0 first; a genotype with "
                                 "another node count needs get_space('darts', nodes=N) or DartsSpace.for_genotype(genotype)"))
                if not isinstance(pairs, (list, tuple)):
                    continue
            counted = len(pairs) == 2 * self.nodes
            canon = []
            for n in range(len(pairs) // 2 if not counted else self.nodes):  # the pairs there are, checked too
                node = []
                for e in (2 * n, 2 * n + 1):
                    p = pairs[e]
                    where = f"{kind}[{e}]"
                    if not isinstance(p, (list, tuple)) or len(p) != 2:
                        problems.append((where, f"expected an [op, input] pair, got {p!r}", None))
                        continue
                    op, j = p
                    bad = False
                    if op not in self.genotype_ops:
                        hint = ("drop the edge by choosing another input instead" if op == "none"
                                else f"use one of {list(self.genotype_ops)}"
                                + (" or a space with ops=[...] that lists it" if op in PRIMITIVES else ""))
                        problems.append((where, f"op {op!r} is not a genotype op of this space", hint))
                        bad = True
                    if isinstance(j, bool) or not isinstance(j, (int, np.integer)) or not 0 <= j < n + 2:
                        problems.append((where, f"input {j!r} is not a state node {n} can read",
                                         f"use an int 0..{n + 1} (0, 1: the cell inputs; k+2: node k)"))
                        bad = True
                    if not bad:
                        node.append([str(op), int(j)])
                if len(node) == 2 and node[0][1] == node[1][1] and not self.same_input:
                    problems.append((f"{kind}[{2 * n}]", f"both edges of node {n} read input {node[0][1]}",
                                     "the two edges of a node read two different states, or use a space "
                                     "with same_input=True"))
                canon += sorted(node, key=lambda q: (q[1], self.genotype_ops.index(q[0])))
            if counted:
                out[kind] = canon
        return out, problems

    # ---------------------------------------------------------------- genotypes

    def from_genotype(self, normal, normal_concat=None, reduce=None, reduce_concat=None) -> dict:
        """The space's decisions for a DARTS ``Genotype`` (or its four fields).

        ``normal``/``reduce`` are ``[(op, input), ...]`` with two pairs per node (inputs 0/1: the
        cell inputs, ``k + 2``: node ``k``); a concat, when given, must be the one the space's
        ``concat`` rule gives. Every reason the genotype does not fit is listed in one
        :class:`DecisionError` (node count, unknown op, input out of range, a repeated input,
        the concat).
        """
        if reduce is None and hasattr(normal, "normal"):
            normal, normal_concat, reduce, reduce_concat = normal.normal, normal.normal_concat, normal.reduce, \
                normal.reduce_concat
        if reduce is None:
            raise DecisionError("from_genotype needs the reduce cell", hint="pass a Genotype or all four fields")
        obj = {"normal": [list(p) if isinstance(p, (list, tuple)) else p for p in normal],
               "reduce": [list(p) if isinstance(p, (list, tuple)) else p for p in reduce]}
        d, problems = self._read(obj)
        for kind, concat in (("normal", normal_concat), ("reduce", reduce_concat)):
            if concat is None or kind not in d or len(d[kind]) != 2 * self.nodes:
                continue
            want = self.concat_of(d, kind)
            try:
                got = sorted(int(s) for s in concat)
            except (TypeError, ValueError):
                problems.append((f"{kind}_concat", f"expected a list of state indices, got {concat!r}", None))
                continue
            if got != want:
                rule = {"all": "every intermediate node", "loose": "the nodes nothing reads (loose ends)"}
                other = [c for c in CONCATS if c != self.concat][0]
                problems.append((f"{kind}_concat", f"concat {got} is not {want}, {rule[self.concat]}",
                                 f"use a space with concat={other!r}" if self.concat != other else None))
        if problems:
            _raise(problems)
        return d

    def to_genotype(self, decisions: Mapping):
        """The DARTS ``Genotype`` of ``decisions`` (pairs in canonical order, concat by the space's rule)."""
        from search.spaces.genotypes import Genotype

        d = self.decode(decisions)
        return Genotype(normal=[(op, j) for op, j in d["normal"]], normal_concat=self.concat_of(d, "normal"),
                        reduce=[(op, j) for op, j in d["reduce"]], reduce_concat=self.concat_of(d, "reduce"))

    @classmethod
    def for_genotype(cls, genotype, input_shape=(3, 32, 32), num_classes: int = 10, **options: Any) -> "DartsSpace":
        """The space that holds ``genotype`` (a ``Genotype`` or a name in ``search.spaces.genotypes``):
        its node count, DARTS' ops (all of the reference's if it uses others), ``same_input`` when a
        node reads one state twice, and the concat rule its concat lists follow."""
        from search.spaces.genotypes import get_genotype

        g = get_genotype(genotype) if isinstance(genotype, str) else genotype
        space = cls(input_shape, num_classes, **{**_fit(g), **options})
        space.from_genotype(g)  # every reason it does not fit, at once
        return space

    # ---------------------------------------------------------------- categorical view

    def variables(self) -> list[tuple[str, int]]:
        """Per cell kind and node: the pair of states it reads and the op of each edge."""
        out = []
        k = len(self.genotype_ops)
        for kind in KINDS:
            for n in range(self.nodes):
                out += [(f"{kind}.n{n}.inputs", len(self._pairs[n])), (f"{kind}.n{n}.op0", k),
                        (f"{kind}.n{n}.op1", k)]
        return out

    def to_choices(self, decisions: Mapping) -> list[int]:
        d = self.decode(decisions)
        out = []
        for kind in KINDS:
            for n in range(self.nodes):
                a, b = d[kind][2 * n], d[kind][2 * n + 1]
                out += [self._pairs[n].index((a[1], b[1])), self.genotype_ops.index(a[0]),
                        self.genotype_ops.index(b[0])]
        return out

    def from_choices(self, choices) -> dict:
        c = iter(self._check_choices(choices))
        out = {}
        for kind in KINDS:
            pairs = []
            for n in range(self.nodes):
                i, j = self._pairs[n][next(c)]
                pairs += [[self.genotype_ops[next(c)], i], [self.genotype_ops[next(c)], j]]
            out[kind] = pairs
        return self.decode(out)

    def describe(self, decisions: Mapping) -> str:
        d = self.decode(decisions)
        parts = []
        for kind in KINDS:
            ps = d[kind]
            nodes = " ".join(f"{_SHORT[ps[2 * n][0]]}@{ps[2 * n][1]}+{_SHORT[ps[2 * n + 1][0]]}@{ps[2 * n + 1][1]}"
                             for n in range(self.nodes))
            cat = "" if self.concat == "all" else f" cat{self.concat_of(d, kind)}"
            parts.append(f"{kind[0].upper()}: {nodes}{cat}")
        return " | ".join(parts)

    # ---------------------------------------------------------------- graphs

    def build(self, decisions: Mapping, seed: int = 0, cells: int | None = None, channels: int | None = None, *,
              stem: str | None = None, auxiliary: bool | float = False, drop_path: float = 0.0) -> Graph:
        """The network of genotype ``decisions``: ``cells`` cells of ``channels`` (default: the space's).

        A larger ``cells``/``channels`` stacks the same genotype into a larger network (NASNet
        transfer); ``stem="imagenet"`` gives DARTS' ``NetworkImageNet`` (the cells then run at 1/8
        of the input size, not at full size). ``auxiliary`` adds the auxiliary head after cell
        ``2 * cells // 3`` (True: loss weight 0.4; a float: that weight) and ``drop_path`` a
        ``drop_path`` op after every edge that is not an identity, as the papers train; both are
        training-time ops that ``to_onnx`` and ``finalize`` remove, and counts exclude the head.
        """
        d = self.decode(decisions)
        cells = self.cells if cells is None else _positive("cells", cells)
        channels = self.channels if channels is None else _positive("channels", channels)
        stem = self.stem if stem is None else stem
        weight = AUX_WEIGHT if auxiliary is True else float(auxiliary or 0.0)
        if not 0.0 <= weight or not 0.0 <= float(drop_path) < 1.0:
            raise SpaceError(f"auxiliary weight {weight} must be >= 0 and drop_path {drop_path} in [0, 1)",
                             hint="e.g. auxiliary=True (weight 0.4), drop_path=0.2")
        self._warn_full_size(stem)
        g = Graph(f"darts_{cells}x{channels}")

        def node(i: int, red: bool, n: int, states: list[str], c: int) -> str:
            kind = "reduce" if red else "normal"
            outs, seen = [], set()
            for op, j in d[kind][2 * n: 2 * n + 2]:
                name = self.edge_keys(kind, n, j)[1 if j in seen else 0].replace(f"{kind}.", f"cell{i}.", 1)
                seen.add(j)
                steps = cell_op(op, c, 2 if red and j < 2 else 1)
                h = add_steps(g, states[j], steps, name)
                if drop_path and steps:
                    h = g.add("drop_path", h, p=float(drop_path), name=f"{name}.drop")
                outs.append(h)
            return g.add("add", *outs, name=f"cell{i}.n{n}.add")

        outs = cell_network(g, g.input("x", self.input_shape), cells=cells, channels=channels,
                            classes=self.num_classes, node=node, nodes=self.nodes, stem=stem, auxiliary=weight,
                            concat=lambda red: self.concat_of(d, "reduce" if red else "normal"))
        g.set_outputs(*outs)
        simplify(g)
        g.meta = {"space": self.name, "decisions": d, "cells": cells, "channels": channels, "stem": stem}
        g.init_params(seed)
        return g.validate()

    def supernet(self, seed: int = 0, cells: int | None = None, channels: int | None = None) -> Graph:
        """DARTS' one-shot network: every node sums a ``choice`` over ``none`` and the genotype ops on each
        of its inputs (two per input with ``same_input``), tied per kind."""
        if self.concat != "all":
            raise SpaceError("a concat='loose' space has no supernet: which nodes a cell concatenates (and so "
                             "the width of every later layer) depends on the decisions",
                             hint="search one-shot with concat='all' (as DARTS does) and build the result with "
                                  "either rule")
        cells = self.cells if cells is None else _positive("cells", cells)
        channels = self.channels if channels is None else _positive("channels", channels)
        g = Graph(f"darts_supernet_{cells}x{channels}")

        def node(i: int, red: bool, n: int, states: list[str], c: int) -> str:
            kind = "reduce" if red else "normal"
            acc = None
            for j, s in enumerate(states):
                stride = 2 if red and j < 2 else 1
                cands = [{"name": op, "ops": cell_op(op, c, stride)} for op in self.supernet_ops]
                for key in self.edge_keys(kind, n, j):
                    name = key.replace(f"{kind}.", f"cell{i}.", 1)
                    e = g.add("choice", s, name=name, tie=key, candidates=cands)
                    acc = e if acc is None else g.add("add", acc, e, name=f"{name}.sum")
            return acc

        (out,) = cell_network(g, g.input("x", self.input_shape), cells=cells, channels=channels,
                              classes=self.num_classes, node=node, nodes=self.nodes, stem=self.stem)
        g.set_outputs(out)
        g.meta = {"space": self.name, "supernet": True}
        g.init_params(seed)
        return g.validate()

    def supernet_decisions(self, decisions: Mapping, supernet: Graph | None = None) -> dict[str, str]:
        """The genotype's op on its selected edges, ``none`` on every other edge (keys as :meth:`edge_keys`)."""
        d = self.decode(decisions)
        out = {}
        for kind in KINDS:
            for n in range(self.nodes):
                chosen: dict[str, str] = {}
                for op, j in d[kind][2 * n: 2 * n + 2]:
                    keys = self.edge_keys(kind, n, j)
                    chosen[keys[1] if keys[0] in chosen else keys[0]] = op
                for j in range(n + 2):
                    for key in self.edge_keys(kind, n, j):
                        out[key] = chosen.get(key, "none")
        if supernet is not None:
            keys = decision_keys(supernet)
            out = {k: v for k, v in out.items() if k in keys}
        return out

    def genotype_of(self, supernet: Graph) -> dict:
        """DARTS' derivation from a trained supernet's logits: per node, the two edges whose strongest
        non-``none`` op has the largest softmax weight, each with that op."""
        probs = {}
        for kind in KINDS:
            for n in range(self.nodes):
                for j in range(n + 2):
                    for key in self.edge_keys(kind, n, j):
                        if key not in supernet.arch:
                            raise DecisionError(f"supernet has no decision {key!r}",
                                                hint="pass a graph from this space's supernet()")
                        w = np.exp(supernet.arch[key] - supernet.arch[key].max())
                        probs[key] = w / w.sum()
        return self.genotype_from_probs(probs)

    supernet_sizes = ("cells", "channels")
    prior_view = "space"

    def progressive_plan(self):
        """PNAS' stages: node ``b`` of both cell kinds per stage; an undecided node is the filler block
        ``skip_connect(state n) + skip_connect(state n + 1)`` (see ``search.strategies.pnas``)."""
        names = [n for n, _ in self.variables()]
        stages = tuple(tuple(i for i, n in enumerate(names) if f".n{b}." in n) for b in range(self.nodes))
        ops = self.genotype_ops
        filler = []
        for name in names:
            node = int(name.split(".")[1][1:])
            filler.append(self.pairs(node).index((node, node + 1)) if name.endswith("inputs")
                          else ops.index("skip_connect") if "skip_connect" in ops else 0)
        return stages, tuple(filler), "node"

    def decisions_from_probs(self, supernet: Graph, probs: Mapping[str, Any], *, drop_zero: bool = False) -> dict:
        """:meth:`genotype_from_probs` (the supernet's decisions are the genotype's)."""
        return self.genotype_from_probs(probs, drop_zero=drop_zero)

    def genotype_from_probs(self, probs: Mapping[str, Any], *, drop_zero: bool = False) -> dict:
        """The genotype read off per-edge op probabilities (key as :meth:`edge_keys` -> one weight per
        :attr:`supernet_ops`; a missing key counts as uniform): per node the two edges whose strongest
        non-``none`` op weighs most, each with that op (DARTS). With ``drop_zero`` (SNAS) edges whose
        argmax is ``none`` rank after every surviving edge."""
        k_all = len(self.supernet_ops)
        out = {}
        for kind in KINDS:
            pairs = []
            for n in range(self.nodes):
                ranked = []
                for j in range(n + 2):
                    for key in self.edge_keys(kind, n, j):
                        w = np.full(k_all, 1.0 / k_all) if key not in probs else np.asarray(probs[key], np.float64)
                        k = 1 + int(np.argmax(w[1:]))  # supernet_ops[0] is none
                        dropped = drop_zero and int(np.argmax(w)) == 0
                        ranked.append((dropped, -float(w[k]), j, self.supernet_ops[k]))
                pairs += [[op, j] for _, _, j, op in sorted(ranked)[:2]]
            out[kind] = pairs
        return self.decode(out)

    def _warn_full_size(self, stem: str) -> None:
        h, w = self.input_shape[1:]
        if stem == "cifar" and min(h, w) >= 128:
            warnings.warn(f"a CIFAR stem on a {h}x{w} input runs the first cells at {h}x{w} (DARTS' ImageNet "
                          f"network runs them at {h // 8}x{w // 8}, with about 1/60 of the MACs); pass "
                          "stem='imagenet' for the papers' ImageNet network", stacklevel=3)

    def __repr__(self) -> str:
        extra = "" if (self.nodes, self.same_input, self.concat, self.stem, self.supernet_ops) == \
            (4, False, "all", "cifar", OPS) else \
            (f", nodes={self.nodes}, ops={list(self.genotype_ops)}, same_input={self.same_input}, "
             f"concat={self.concat!r}, stem={self.stem!r}")
        return (f"DartsSpace(input_shape={self.input_shape}, num_classes={self.num_classes}, cells={self.cells}, "
                f"channels={self.channels}{extra})")


def _fit(g) -> dict:
    """The options of the smallest space that holds genotype ``g``: its node count, DARTS' ops (all of
    the reference's if it uses others), ``same_input`` when a node reads one state twice, and the
    concat rule its concat lists follow (``"all"`` when neither does: ``from_genotype`` then says so)."""
    try:
        nodes = len(g.normal) // 2
        used = {p[0] for p in (*g.normal, *g.reduce) if isinstance(p, (list, tuple)) and p}
        same = any(isinstance(p, (list, tuple)) and isinstance(q, (list, tuple)) and len(p) == len(q) == 2
                   and p[1] == q[1] for cell in (g.normal, g.reduce) for p, q in zip(cell[::2], cell[1::2]))
        d = {"normal": [list(p) for p in g.normal], "reduce": [list(p) for p in g.reduce]}
        read = {kind: {p[1] for p in d[kind] if len(p) == 2} for kind in KINDS}
        loose = all(sorted(getattr(g, f"{kind}_concat")) ==
                    [s for s in range(2, nodes + 2) if s not in read[kind]] for kind in KINDS)
        full = all(sorted(getattr(g, f"{kind}_concat")) == list(range(2, nodes + 2)) for kind in KINDS)
    except (AttributeError, TypeError):
        raise DecisionError(f"expected a Genotype (normal, normal_concat, reduce, reduce_concat), got {g!r}",
                            hint="pass a name of search.spaces.genotypes or a Genotype") from None
    return {"nodes": max(nodes, 1), "ops": OPS if used <= set(OPS) else PRIMITIVES, "same_input": same,
            "concat": "loose" if loose and not full else "all"}


def _raise(problems: list[tuple[str | None, str, str | None]]) -> None:
    if len(problems) == 1:
        where, what, hint = problems[0]
        raise DecisionError(what, where=where, hint=hint)
    lines = [f"{where + ': ' if where else ''}{what}" + (f" ({hint})" if hint else "") for where, what, hint in problems]
    raise DecisionError(f"{len(problems)} problems:\n  " + "\n  ".join(lines),
                        hint="mend every listed place; see help(DartsSpace)")


def _positive(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise SpaceError(f"darts space: {name} must be a positive int, got {v!r}", hint=f"e.g. {name}=8")
    return int(v)
