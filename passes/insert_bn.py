"""``insert_bn``: insert a BatchNorm2d that is the identity in eval mode.

Why the function is preserved (eval mode)::

    BN(x) = (x - running_mean) / sqrt(running_var + eps) * weight + bias
    with running_mean = 0, running_var = 1, weight = sqrt(1 + eps), bias = 0:
    BN(x) = x / sqrt(1 + eps) * sqrt(1 + eps) = x            (one float rounding)

Only in eval mode: in train mode BN normalises by the batch's own statistics, which changes
the function (and updates the running statistics). ``check_preserved`` runs in eval mode.
"""

from __future__ import annotations

from archir import Graph

from passes._util import add_identity_bn, fresh_scope, is_plain_target, require_node, require_rank3
from passes.infra import PreconditionError, graph_pass

__all__ = ["insert_bn", "insert_bn_targets"]


@graph_pass(preserves="function")
def insert_bn(g: Graph, after: str, eps: float = 1e-5, seed: int = 0) -> Graph:
    """Insert a BatchNorm2d after ``after``, initialised to the identity in eval mode.

    Args:
        g: the graph (not changed).
        after: a node with a ``(C, H, W)`` output; its consumers (and the graph output, if it
            is one) read the new BN instead.
        eps: the BN's epsilon (the weight is ``sqrt(1 + eps)`` so that eval mode is the identity).
        seed: unused (deterministic); accepted so every morphism takes a seed.

    Returns:
        A new graph with the node ``{after}.bn`` (or ``{after}.bn_2``, ... when taken).

    Raises:
        PreconditionError: ``after`` is unknown (the message lists legal targets) or not a
            ``(C, H, W)`` node, or ``eps`` is negative.

    Example:
        >>> g2 = passes.insert_bn(g, after="l0.conv")       # doctest: +SKIP
    """
    require_node(g, after, morphism="insert_bn", role="after",
                 legal=lambda: (t["after"] for t in insert_bn_targets(g)))
    require_rank3(g, after, morphism="insert_bn", role="after")
    if not isinstance(eps, (int, float)) or eps < 0:
        raise PreconditionError(f"eps must be a non-negative number, got {eps!r}", pass_name="insert_bn")
    g = g.copy()
    bn = add_identity_bn(g, after, fresh_scope(g, f"{after}.bn"), float(eps))
    g.replace_uses(after, bn)
    return g.validate()


def insert_bn_targets(g: Graph) -> list[dict]:
    """Every legal ``insert_bn`` call: one per ``(C, H, W)`` node."""
    return [{"after": n} for n in g.topo_order() if is_plain_target(g, n)]
