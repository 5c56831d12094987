"""``deepen``: insert an identity-initialised ``conv[-bn][-activation]`` after a node (NASH types I + III).

Why the function is preserved (eval mode)::

    x : (C, H, W), the output of ``after``

    conv (Dirac kernel)   W[o, i, u, v] = 1 if o == i and (u, v) == (k // 2, k // 2) else 0,
                          padding k // 2 ('same'), stride 1, no bias
        y[o, h, w] = sum_{i,u,v} W[o, i, u, v] * x_pad[i, h + u, w + v] = x[o, h, w]

    BN (identity in eval) mean = 0, var = 1, weight = sqrt(1 + eps), bias = 0
        y = (x - 0) / sqrt(1 + eps) * sqrt(1 + eps) + 0 = x   (one float rounding)

    activation a          a(x) = x on the range of x:
        relu:  relu(x) = x  iff x >= 0        (x already went through relu, relu6, sigmoid, ...)
        relu6: relu6(x) = x iff 0 <= x <= 6   (x already went through relu6, sigmoid, hardsigmoid)

so ``a(bn(conv(x))) = x`` and every consumer of ``after`` sees the same tensor. The range
of ``x`` is taken from a sound interval analysis (``passes._util.value_ranges``); where it
does not prove the activation idempotent the pass refuses the activation (use
``activation=None``). BN is the identity in eval mode only: in train mode it normalises by
batch statistics, so the numeric check (``check_preserved``) runs in eval mode.
"""

from __future__ import annotations

import numpy as np

from archir import Graph
from archir.ops import get_op, op_names

from passes._util import add_identity_bn, fresh_scope, is_plain_target, require_node, require_rank3, value_ranges
from passes.infra import PreconditionError, graph_pass

__all__ = ["deepen", "deepen_targets", "idempotent_activations"]


def idempotent_activations() -> list[str]:
    """The activations ``deepen`` can insert: those the identity on some input interval
    (``OpTraits.identity_on``; relu on ``[0, inf)``, relu6 on ``[0, 6]``)."""
    return [n for n in op_names() if get_op(n).traits.identity_on is not None]


def _identity_on(activation: str) -> tuple[float, float] | None:
    return get_op(activation).traits.identity_on if activation in op_names() else None


def _activation_ok(rng, activation: str) -> bool:
    lo, hi = _identity_on(activation)
    return rng is not None and rng[0] >= lo and rng[1] <= hi


@graph_pass(preserves="function")
def deepen(g: Graph, after: str, kernel_size: int = 3, with_bn: bool = True, activation: str | None = "relu",
           seed: int = 0) -> Graph:
    """Insert an identity ``conv[-bn][-activation]`` block after ``after`` (function-preserving in eval mode).

    Every consumer of ``after`` (and the graph output, if it is one) reads the new block instead.

    Args:
        g: the graph (not changed).
        after: a node with a ``(C, H, W)`` output.
        kernel_size: odd kernel size of the new ``C -> C`` conv (Dirac-initialised, 'same' padding, no bias).
        with_bn: add a BatchNorm2d initialised to the identity (in eval mode) after the conv.
        activation: ``"relu"``, ``"relu6"`` or ``None``. An activation is added only where it
            is provably the identity: relu needs ``after``'s output >= 0, relu6 needs it in [0, 6].
        seed: unused (the block is deterministic); accepted so every morphism takes a seed.

    Returns:
        A new graph with the nodes ``{after}.deepen.conv`` (``.bn``, ``.relu``), or a fresh
        scope such as ``{after}.deepen_2`` when that one is taken.

    Raises:
        PreconditionError: ``after`` is unknown (the message lists legal targets) or not a
            ``(C, H, W)`` node, ``kernel_size`` is even or < 1, ``activation`` is unknown, or the
            activation is not the identity on ``after``'s output range.

    Example:
        >>> g2 = passes.deepen(g, after="l0.relu")                       # doctest: +SKIP
        >>> g2 = passes.deepen(g, after="l0.bn", activation=None)        # doctest: +SKIP
    """
    require_node(g, after, morphism="deepen", role="after", legal=lambda: (t["after"] for t in deepen_targets(g)))
    c, _, _ = require_rank3(g, after, morphism="deepen", role="after")
    if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1 or kernel_size % 2 == 0:
        raise PreconditionError(f"kernel_size must be a positive odd int, got {kernel_size!r}", pass_name="deepen",
                                hint="an identity conv with 'same' padding needs a centre tap: use 1, 3, 5, ...")
    if activation is not None:
        if not isinstance(activation, str) or _identity_on(activation) is None:
            raise PreconditionError(
                f"activation {activation!r} is not idempotent on any input range, so it cannot be inserted "
                "without changing the function", pass_name="deepen",
                hint=f"use one of {idempotent_activations()} (where the input allows) or activation=None")
        rng = value_ranges(g).get(after)
        if not _activation_ok(rng, activation):
            lo, hi = _identity_on(activation)
            known = f"its values are only known to lie in {list(rng)}" if rng else \
                f"its values are not known to be bounded (it is a {g.node(after).op})"
            raise PreconditionError(
                f"{activation} is the identity only on [{lo:g}, {hi:g}], and {known}", pass_name="deepen",
                node=after,
                hint="deepen after a relu/relu6/sigmoid/hardsigmoid (or a pool of one), or pass activation=None")

    g = g.copy()
    scope = fresh_scope(g, f"{after}.deepen")
    conv = g.add("conv2d", after, out_channels=c, kernel_size=kernel_size, padding=kernel_size // 2, bias=False,
                 name=f"{scope}.conv")
    w = np.zeros((c, c, kernel_size, kernel_size), np.float32)
    idx = np.arange(c)
    w[idx, idx, kernel_size // 2, kernel_size // 2] = 1.0
    g.set_params(conv, weight=w)
    last = conv
    if with_bn:
        last = add_identity_bn(g, last, f"{scope}.bn")
    if activation is not None:
        last = g.add(activation, last, name=f"{scope}.{activation}")
    g.replace_uses(after, last, exclude=[conv])
    return g.validate()


def deepen_targets(g: Graph) -> list[dict]:
    """Every legal ``deepen`` call: one per ``(C, H, W)`` node, with ``activation="relu"``
    where relu is provably the identity on that node's output and ``None`` elsewhere."""
    ranges = value_ranges(g)
    out = []
    for n in g.topo_order():
        if is_plain_target(g, n):
            act = "relu" if _activation_ok(ranges.get(n), "relu") else None
            out.append({"after": n, "kernel_size": 3, "with_bn": True, "activation": act})
    return out
