"""Graph-surgery helpers shared by ``remove_op``, ``prune_zero_paths`` and canonicalization (private).

All of them edit the graph they are given (a pass calls them on its own copy).
"""

from __future__ import annotations

import math

import networkx as nx

from archir import Graph
from archir.ops import get_op

def dead_nodes(g: Graph) -> list[str]:
    """Nodes from which no graph output is reachable (graph inputs excepted: they are the interface)."""
    live = set(g.outputs)
    for o in g.outputs:
        live |= nx.ancestors(g.nx, o)
    return [n for n in g.topo_order() if n not in live and g.nx.nodes[n]["op"] != "input"]


def remove_dead(g: Graph) -> int:
    """Remove :func:`dead_nodes` (consumers first); returns how many were removed."""
    dead = dead_nodes(g)
    for n in reversed(dead):
        g.remove(n)
    return len(dead)


def zero_valued(g: Graph) -> set[str]:
    """Nodes whose output is exactly zero whatever the input: ``zero`` ops and what they feed
    through ops that keep zeros (``OpTraits.zero_preserving``: activations with ``f(0) = 0``,
    pools, convs/linears without bias, ``mul`` by zero, ``add``/``concat`` of zeros).

    Sound for finite inputs (``0 * x`` is ``0`` only for finite ``x``; weights are checked finite
    by ``validate``).
    """
    zero: set[str] = set()
    nxg = g.nx
    for n in g.topo_order():
        d = nxg.nodes[n]
        rule = get_op(d["op"], n).traits.zeros(d["attrs"])  # OpTraits.zero_preserving
        ins = g.inputs_of(n)
        if rule == "always" or (ins and (rule == "all" and all(u in zero for u in ins)
                                         or rule == "any" and any(u in zero for u in ins))):
            zero.add(n)
    return zero


def stride_for(src_shape: tuple[int, ...], want: tuple[int, ...]) -> int | None:
    """The stride ``s`` with ``zero(src, stride=s)`` shaped ``want``, or ``None`` (``zero`` keeps channels)."""
    if tuple(src_shape) == tuple(want):
        return 1
    if len(src_shape) != 3 or len(want) != 3 or src_shape[0] != want[0]:
        return None
    for s in range(2, max(src_shape[1], src_shape[2]) + 1):
        if math.ceil(src_shape[1] / s) == want[1] and math.ceil(src_shape[2] / s) == want[2]:
            return s
    return None


def replace_keeping_id(g: Graph, node: str, op: str, src: str, **attrs) -> None:
    """Replace ``node`` by a new ``op(src, **attrs)`` node that takes over its id, users and output slot."""
    tmp = g.add(op, src, name=_tmp_id(g, node), **attrs)
    g.replace_uses(node, tmp)
    g.remove(node)
    final = g.add(op, src, name=node, **attrs)
    g.replace_uses(tmp, final)
    g.remove(tmp)


def _tmp_id(g: Graph, node: str) -> str:
    k = 0
    while f"{node}--tmp{k}" in g:
        k += 1
    return f"{node}--tmp{k}"
