"""Helpers shared by the morphisms (private: the names may change)."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np

from archir import Graph
from archir.ops import get_op

from passes.infra import PreconditionError


def value_ranges(g: Graph) -> dict[str, tuple[float, float]]:
    """A sound interval ``(lo, hi)`` for the values of every node whose range is known.

    Each op's rule is its ``OpTraits.value_range``: bounded activations (relu, relu6, sigmoid,
    hardsigmoid, tanh) give a range whatever the input, ops that cannot leave their input's
    interval (pools, identity, dropout, flatten) carry it, and sums, non-negative products and
    concats combine their inputs'. Other nodes (convs, BN, inputs, ...) are absent: their range
    is unknown.
    """
    out: dict[str, tuple[float, float]] = {}
    nxg = g.nx
    for n in g.topo_order():
        d = nxg.nodes[n]
        r = get_op(d["op"], n).traits.range_of(d["attrs"], [out.get(u) for u in g.inputs_of(n)])
        if r is not None:
            out[n] = r
    return out


def fresh_scope(g: Graph, base: str) -> str:
    """``base`` (or ``base_2``, ``base_3`` ...) such that no node id is it or starts with it plus a dot."""
    if len(base) > 48:  # chained morphisms would otherwise grow ids without bound
        base = base.split(".")[0] + "." + base.rsplit(".", 1)[-1]
    taken = set(g)
    k = 1
    while True:
        cand = base if k == 1 else f"{base}_{k}"
        if cand not in taken and not any(t.startswith(cand + ".") for t in taken):
            return cand
        k += 1


def require_node(g: Graph, node_id, *, morphism: str, role: str, legal: Callable[[], Iterable[str]]) -> None:
    """Raise ``PreconditionError`` when ``node_id`` is not a node of ``g``, listing a few legal ones."""
    if isinstance(node_id, str) and node_id in g:
        return
    some = []
    for x in legal():
        if x not in some:
            some.append(x)
        if len(some) == 6:
            break
    listing = ", ".join(repr(s) for s in some) if some else "none (this graph has no legal target)"
    raise PreconditionError(f"no node {node_id!r} in graph {g.name!r} to use as {role}",
                            pass_name=morphism, node=None,
                            hint=f"legal {role} targets include {listing} (see passes.legal_targets(g, {morphism!r}))")


def require_rank3(g: Graph, node_id: str, *, morphism: str, role: str) -> tuple[int, int, int]:
    """The ``(C, H, W)`` shape of ``node_id`` or a ``PreconditionError`` saying why it is not a target."""
    d = g.nx.nodes[node_id]
    if d["op"] == "choice":
        raise PreconditionError(f"{role} is a choice node (a supernet); morphisms apply to plain graphs",
                                pass_name=morphism, node=node_id, hint="derive a plain graph first (archir.derive)")
    t = d.get("type")
    if t is None or t.rank != 3:
        raise PreconditionError(f"{role} must produce a (C, H, W) feature map, but its output is {t}",
                                pass_name=morphism, node=node_id,
                                hint="pick a conv/bn/activation/pool node before the global pool")
    return t.shape


def identity_bn(c: int, eps: float) -> tuple[dict, dict]:
    """Params and buffers of a BatchNorm2d that is the identity in eval mode.

    Eval-mode BN computes ``(x - mean) / sqrt(var + eps) * weight + bias``; with ``mean = 0``,
    ``var = 1``, ``weight = sqrt(1 + eps)`` and ``bias = 0`` that is ``x`` (up to one rounding).
    """
    w = np.full(c, math.sqrt(1.0 + eps), np.float32)
    return ({"weight": w, "bias": np.zeros(c, np.float32)},
            {"running_mean": np.zeros(c, np.float32), "running_var": np.ones(c, np.float32)})


def add_identity_bn(g: Graph, x: str, name: str, eps: float = 1e-5) -> str:
    """Add a BatchNorm2d after ``x`` that is the identity in eval mode; returns its id."""
    bn = g.add("batchnorm2d", x, name=name, eps=eps)
    params, buffers = identity_bn(g.node(x).type.shape[0], eps)
    g.set_params(bn, **params)
    g.set_buffers(bn, **buffers)
    return bn


def is_plain_target(g: Graph, n: str) -> bool:
    """A node with a (C, H, W) output that is not a choice node."""
    d = g.nx.nodes[n]
    t = d.get("type")
    return d["op"] != "choice" and t is not None and t.rank == 3


def fmt_call(name: str, kwargs: dict) -> str:
    """``deepen(after='l0.relu', kernel_size=3)``: a move as a readable call."""
    return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"
