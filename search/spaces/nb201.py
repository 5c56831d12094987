"""The NAS-Bench-201 cell space (Dong & Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural
Architecture Search", ICLR 2020).

A cell is a DAG of 4 nodes: node 0 is the cell input, and node ``j`` (1, 2, 3) is the sum of one
op per earlier node ``i < j`` applied to node ``i``: 6 edges, each one of the 5 ops of :data:`OPS`
(``none`` = zero, ``skip_connect`` = identity, ``nor_conv_1x1`` / ``nor_conv_3x3`` = ReLU-Conv-BN,
``avg_pool_3x3`` = a 3x3 average pool, stride 1, padding 1, not counting the padding). The cell
output is node 3. 5 ** 6 = 15,625 cells.

Decisions are the six edge ops in NAS-Bench-201's order -- ``(1<-0), (2<-0), (2<-1), (3<-0),
(3<-1), (3<-2)``::

    {"edges": ["nor_conv_3x3", "nor_conv_3x3", "avg_pool_3x3", "skip_connect", "nor_conv_3x3", "skip_connect"]}

and :meth:`Nb201Space.to_string` / :meth:`Nb201Space.from_string` convert to and from NAS-Bench-201's
own architecture string, ``|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|``
(``decode`` takes either form). That string is the key of a tabular benchmark
(``search.evaluators``, ``archir search --evaluator table:FILE.csv``).

:meth:`Nb201Space.build` is NAS-Bench-201's ``TinyNetwork`` (``C = 16``, ``N = 5``), op for op:
stem conv 3x3 to ``C`` + BN; three stages of ``N`` cells at ``C``, ``2C``, ``4C`` channels with a
``ResNetBasicblock`` (ReLU-Conv3x3/2-BN, ReLU-Conv3x3-BN; shortcut AvgPool 2x2/2 + Conv1x1 without
BN; summed) between stages; BN, ReLU, global average pool, linear. The cell ops are those of the
reference (``nor_conv_kxk``: ``nn.ReLU``, ``nn.Conv2d(bias=False)``, ``nn.BatchNorm2d`` with affine and
tracked statistics). A node's edges are summed in input order, as the reference's ``sum(...)``.
``none`` edges leave a node's sum (``zero`` adds nothing), as in the supernet derivation.

Example:
    >>> import numpy as np
    >>> space = Nb201Space()
    >>> d = space.from_string("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")
    >>> d["edges"][2]
    'avg_pool_3x3'
    >>> space.to_string(space.mutate(d, np.random.default_rng(0))) != space.to_string(d)
    True
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from archir import Graph, decision_keys
from archir.cells import add_steps
from search.spaces.base import DecisionError, Space, SpaceError, check_rng, register_space, simplify

__all__ = ["Nb201Space", "OPS", "EDGES"]

#: NAS-Bench-201's five ops, in its order.
OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: the six edges ``(to, from)`` in NAS-Bench-201's order (the order of its architecture string).
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
_SHORT = {"none": "none", "skip_connect": "skip", "nor_conv_1x1": "c1", "nor_conv_3x3": "c3", "avg_pool_3x3": "avg"}


def op_steps(op: str, c: int) -> list[dict]:
    """The op specs of NAS-Bench-201 op ``op`` on ``c`` channels (stride 1, as every cell edge is)."""
    if op == "none":
        return [{"op": "zero", "stride": 1}]
    if op == "skip_connect":
        return []
    if op in ("nor_conv_1x1", "nor_conv_3x3"):
        k = int(op[-1])
        return [{"op": "relu"},
                {"op": "conv2d", "out_channels": c, "kernel_size": k, "stride": 1, "padding": k // 2, "bias": False},
                {"op": "batchnorm2d"}]
    if op == "avg_pool_3x3":
        return [{"op": "avgpool2d", "kernel_size": 3, "stride": 1, "padding": 1, "count_include_pad": False}]
    raise DecisionError(f"unknown NAS-Bench-201 op {op!r}", hint=f"use one of {list(OPS)}")


@register_space
class Nb201Space(Space):
    """The NAS-Bench-201 cell space (see the module docstring).

    Args:
        input_shape: ``(C, H, W)`` of one input (default CIFAR's ``(3, 32, 32)``).
        num_classes: classes of the head.
        cells: cells per stage (``N``; NAS-Bench-201: 5).
        channels: channels of the first stage (``C``; NAS-Bench-201: 16).

    Raises:
        SpaceError: ``cells`` or ``channels`` not a positive int.
    """

    name = "nb201"

    def __init__(self, input_shape=(3, 32, 32), num_classes: int = 10, *, cells: int = 5, channels: int = 16) -> None:
        super().__init__(input_shape, num_classes)
        self.cells = _positive("cells", cells)
        self.channels = _positive("channels", channels)

    # ---------------------------------------------------------------- strings

    def to_string(self, decisions: Any) -> str:
        """NAS-Bench-201's architecture string of ``decisions`` (``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``)."""
        e = self.decode(decisions)["edges"]
        return "+".join("|" + "|".join(f"{e[k]}~{i}" for k, (j, i) in enumerate(EDGES) if j == node) + "|"
                        for node in (1, 2, 3))

    def from_string(self, text: str) -> dict:
        """Canonical decisions of a NAS-Bench-201 architecture string (``DecisionError`` naming the bad part)."""
        if not isinstance(text, str):
            raise DecisionError(f"expected a NAS-Bench-201 architecture string, got {type(text).__name__}")
        hint = "write it as |op~0|+|op~0|op~1|+|op~0|op~1|op~2| with ops " + ", ".join(OPS)
        nodes = text.strip().split("+")
        if len(nodes) != 3:
            raise DecisionError(f"architecture string {text!r} has {len(nodes)} nodes, not 3", hint=hint)
        edges: list[str] = []
        for j, part in enumerate(nodes, start=1):
            if not (part.startswith("|") and part.endswith("|")):
                raise DecisionError(f"node {j} of {text!r} is not enclosed in '|'", where=f"node {j}", hint=hint)
            items = part[1:-1].split("|")
            if len(items) != j:
                raise DecisionError(f"node {j} of {text!r} has {len(items)} edges, not {j}", where=f"node {j}",
                                    hint=hint)
            for i, item in enumerate(items):
                op, tilde, src = item.partition("~")
                if not tilde or src != str(i):
                    raise DecisionError(f"edge {item!r} of node {j} must read node {i} (op~{i})",
                                        where=f"node {j}", hint=hint)
                if op not in OPS:
                    raise DecisionError(f"unknown op {op!r} on edge {j}<-{i}", where=f"node {j}",
                                        hint=f"use one of {list(OPS)}")
                edges.append(op)
        return {"edges": edges}

    # ---------------------------------------------------------------- decisions

    def sample(self, rng: np.random.Generator) -> dict:
        rng = check_rng(rng)
        return {"edges": [OPS[int(i)] for i in rng.integers(len(OPS), size=len(EDGES))]}

    def mutate(self, decisions: Mapping, rng: np.random.Generator) -> dict:
        """One edge gets another op (the mutation of regularized evolution on NAS-Bench-201)."""
        rng = check_rng(rng)
        edges = list(self.decode(decisions)["edges"])
        k = int(rng.integers(len(EDGES)))
        others = [op for op in OPS if op != edges[k]]
        edges[k] = others[int(rng.integers(len(others)))]
        return {"edges": edges}

    def decode(self, obj: Any) -> dict:
        """``{"edges": [6 ops]}`` or a NAS-Bench-201 string, checked, as canonical decisions."""
        if isinstance(obj, str):
            return self.from_string(obj)
        if not isinstance(obj, Mapping) or set(obj) != {"edges"}:
            raise DecisionError(f"expected {{'edges': [6 ops]}} or a NAS-Bench-201 string, got {obj!r:.80}",
                                hint='e.g. {"edges": ["nor_conv_3x3", "none", "skip_connect", "avg_pool_3x3", '
                                     '"nor_conv_1x1", "none"]}')
        edges = obj["edges"]
        if not isinstance(edges, (list, tuple)) or len(edges) != len(EDGES):
            raise DecisionError(f"expected a list of {len(EDGES)} ops (edges 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2), "
                                f"got {edges!r:.80}", where="edges")
        for k, op in enumerate(edges):
            if op not in OPS:
                j, i = EDGES[k]
                raise DecisionError(f"op {op!r} of edge {j}<-{i} is not a NAS-Bench-201 op", where=f"edges[{k}]",
                                    hint=f"use one of {list(OPS)}")
        return {"edges": [str(op) for op in edges]}

    def encode(self, decisions: Mapping) -> dict:
        return self.decode(decisions)  # already canonical: one key, a list

    def describe(self, decisions: Mapping) -> str:
        return self.to_string(decisions)

    # ---------------------------------------------------------------- categorical view

    def variables(self) -> list[tuple[str, int]]:
        """One variable per edge (``edge.<to>.<from>``), ``len(OPS)`` options each, in :data:`OPS` order."""
        return [(f"edge.{j}.{i}", len(OPS)) for j, i in EDGES]

    def to_choices(self, decisions: Mapping) -> list[int]:
        return [OPS.index(op) for op in self.decode(decisions)["edges"]]

    def from_choices(self, choices) -> dict:
        return {"edges": [OPS[c] for c in self._check_choices(choices)]}

    def progressive_plan(self) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...], str]:
        """PNAS' stages over this space: node 1, then node 2, then node 3 (the cell grows node by node).

        An undecided node ``j`` is ``skip_connect`` from node ``j - 1`` and ``none`` from the others, so a
        partial cell is a real cell that passes its decided nodes on (``search.strategies.pnas``).
        Returns ``(stages, filler, unit)``: variable indices per stage, the filler option per variable.
        """
        stages = tuple(tuple(k for k, (j, _) in enumerate(EDGES) if j == node) for node in (1, 2, 3))
        filler = tuple(OPS.index("skip_connect") if i == j - 1 else OPS.index("none") for j, i in EDGES)
        return stages, filler, "node"

    # ---------------------------------------------------------------- graphs

    def _network(self, g: Graph, edge, cells: int, channels: int) -> None:
        """TinyNetwork around ``edge(g, cell, k, x, c) -> id`` (edge ``k`` of a cell on state ``x``)."""
        x = g.input("x", self.input_shape)
        h = g.add("conv2d", x, out_channels=channels, kernel_size=3, padding=1, bias=False, name="stem.conv")
        h = g.add("batchnorm2d", h, name="stem.bn")
        idx, c = 0, channels
        for stage in range(3):
            if stage:  # ResNetBasicblock(c, 2c, stride 2): the reduction between stages
                c2 = 2 * c
                a = g.add("relu", h, name=f"cell{idx}.a.relu")
                a = g.add("conv2d", a, out_channels=c2, kernel_size=3, stride=2, padding=1, bias=False,
                          name=f"cell{idx}.a.conv")
                a = g.add("batchnorm2d", a, name=f"cell{idx}.a.bn")
                a = g.add("relu", a, name=f"cell{idx}.b.relu")
                a = g.add("conv2d", a, out_channels=c2, kernel_size=3, padding=1, bias=False, name=f"cell{idx}.b.conv")
                a = g.add("batchnorm2d", a, name=f"cell{idx}.b.bn")
                r = g.add("avgpool2d", h, kernel_size=2, stride=2, name=f"cell{idx}.down.pool")
                r = g.add("conv2d", r, out_channels=c2, kernel_size=1, bias=False, name=f"cell{idx}.down.conv")
                h = g.add("add", r, a, name=f"cell{idx}.add")  # residual + basicblock
                idx, c = idx + 1, c2
            for _ in range(cells):
                nodes = [h]
                for node in (1, 2, 3):
                    acc = None
                    for k, (j, i) in enumerate(EDGES):
                        if j == node:
                            e = edge(g, idx, k, nodes[i], c)
                            acc = e if acc is None else g.add("add", acc, e, name=f"cell{idx}.n{j}.add{i}")
                    nodes.append(acc)
                h = nodes[3]
                idx += 1
        h = g.add("relu", g.add("batchnorm2d", h, name="last.bn"), name="last.relu")
        h = g.add("flatten", g.add("global_avgpool", h, name="pool"), name="flatten")
        g.set_outputs(g.add("linear", h, out_features=self.num_classes, name="head"))

    def _sizes(self, cells, channels) -> tuple[int, int]:
        return (self.cells if cells is None else _positive("cells", cells),
                self.channels if channels is None else _positive("channels", channels))

    def build(self, decisions: Mapping, seed: int = 0, cells: int | None = None,
              channels: int | None = None) -> Graph:
        """NAS-Bench-201's network of the cell ``decisions``: ``cells`` cells per stage (default 5),
        ``channels`` in the first stage (default 16), weights from ``seed``."""
        e = self.decode(decisions)["edges"]
        cells, channels = self._sizes(cells, channels)
        g = Graph(f"nb201_{cells}x{channels}")

        def edge(g: Graph, cell: int, k: int, x: str, c: int) -> str:
            j, i = EDGES[k]
            return add_steps(g, x, op_steps(e[k], c), f"cell{cell}.e{j}{i}")

        self._network(g, edge, cells, channels)
        simplify(g)
        g.meta = {"space": self.name, "decisions": {"edges": list(e)}, "arch": self.to_string({"edges": e}),
                  "cells": cells, "channels": channels}
        g.init_params(seed)
        return g.validate()

    def supernet(self, seed: int = 0, cells: int | None = None, channels: int | None = None) -> Graph:
        """The one-shot network: every edge of every cell a ``choice`` over the five ops, tied per edge
        (key ``edge.<to>.<from>``) across all cells."""
        cells, channels = self._sizes(cells, channels)
        g = Graph(f"nb201_supernet_{cells}x{channels}")

        def edge(g: Graph, cell: int, k: int, x: str, c: int) -> str:
            j, i = EDGES[k]
            cands = [{"name": op, "ops": op_steps(op, c)} for op in OPS]
            return g.add("choice", x, name=f"cell{cell}.e{j}{i}", tie=f"edge.{j}.{i}", candidates=cands)

        self._network(g, edge, cells, channels)
        g.meta = {"space": self.name, "supernet": True}
        g.init_params(seed)
        return g.validate()

    def supernet_decisions(self, decisions: Mapping, supernet: Graph | None = None) -> dict[str, str]:
        e = self.decode(decisions)["edges"]
        out = {f"edge.{j}.{i}": e[k] for k, (j, i) in enumerate(EDGES)}
        if supernet is not None:
            keys = decision_keys(supernet)
            out = {k: v for k, v in out.items() if k in keys}
        return out

    def __repr__(self) -> str:
        return (f"Nb201Space(input_shape={self.input_shape}, num_classes={self.num_classes}, cells={self.cells}, "
                f"channels={self.channels})")


def _positive(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise SpaceError(f"nb201 space: {name} must be a positive int, got {v!r}",
                         hint=f"e.g. {name}={ {'cells': 5, 'channels': 16}[name] }")
    return int(v)
