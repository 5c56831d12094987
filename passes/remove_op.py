"""Op/edge removal (SNAS-style edge deletion): ``remove_op`` and ``prune_zero_paths``.

``remove_op(g, node, replace_with="zero")`` turns one op into a ``zero`` op: the DARTS/SNAS
``none`` edge. The node keeps its id, its consumers and its place among the graph outputs;
its output becomes exact zeros of the same shape. A ``zero`` op only takes the batch size and
shape from its input (``zeros like x[:, :, ::stride, ::stride]``), so it reads the removed
node's input when the shapes allow (same channels, a stride that gives the spatial size), else
the nearest earlier tensor that does. ``replace_with="identity"`` makes the node pass one of
its inputs through (which must have the node's output shape): a skip connection.

``remove_op`` changes the function (that is its point) and promises only the interface
shapes (``preserves="shape"``). What the removed op read is still computed, for nothing:

``prune_zero_paths(g)`` deletes it, keeping the function exactly (``preserves="function"``):

1. values: a node is *zero-valued* when it is a ``zero`` op, or an op with ``f(0) = 0`` (relu,
   pools, flatten, a conv/linear without bias, ``mul`` by a zero, ``add``/``concat`` of zeros) of
   zero-valued inputs. A zero-valued node (other than a ``zero`` op) whose shape some earlier
   tensor gives through a ``zero`` op is replaced by that ``zero`` op; an ``add`` with a
   zero-valued input is replaced by its other input (``x + 0 = x``);
2. shapes: a ``zero`` op whose input feeds nothing but ``zero`` ops reads that input's own
   input instead, when a stride gives the same shape (walking back as far as it can);
3. what no graph output depends on any more is deleted.

Graph outputs keep their ids (the interface): an output node is never replaced by another
node, only its inputs are.

Example:
    >>> import archir.samples as S
    >>> g = S.resnet_like()
    >>> g2 = remove_op(g, "b1.b.bn")                    # the residual branch of block 1 is now zero
    >>> g3 = prune_zero_paths(g2)                        # b1.a.*, b1.b.conv and the add are gone
    >>> sorted(n for n in g2 if n not in g3)[:3]
    ['b1.a.bn', 'b1.a.conv', 'b1.a.relu']
"""

from __future__ import annotations

from archir import Graph

from passes._rewrite import remove_dead, replace_keeping_id, stride_for, zero_valued
from passes.infra import PreconditionError, graph_pass

__all__ = ["remove_op", "prune_zero_paths", "REPLACEMENTS"]

REPLACEMENTS = ("zero", "identity")


def _zero_source(g: Graph, node: str, want: tuple[int, ...], exclude: set[str] = frozenset()) -> tuple[str, int] | None:
    """The nearest tensor before ``node`` (its inputs first, then their ancestors breadth-first) that
    a ``zero`` op can take ``want`` from: ``(node id, stride)``."""
    seen: set[str] = set()
    frontier = list(g.inputs_of(node))
    while frontier:
        nxt: list[str] = []
        for u in frontier:
            if u in seen:
                continue
            seen.add(u)
            if u not in exclude:
                s = stride_for(g.nx.nodes[u]["type"].shape, want)
                if s is not None:
                    return u, s
            nxt.extend(g.inputs_of(u))
        frontier = nxt
    return None


@graph_pass(preserves="shape")
def remove_op(g: Graph, node: str, replace_with: str = "zero", *, port: int = 0) -> Graph:
    """Replace op ``node`` by a ``zero`` op (SNAS edge deletion) or by an identity of one of its inputs.

    The node keeps its id, its consumers and its place among the graph outputs. Its input
    sub-graph stays (``prune_zero_paths`` deletes what now only feeds zeros).

    Args:
        g: the graph (not changed).
        node: the node to remove (any op but a graph input).
        replace_with: ``"zero"`` (output zeros of the same shape) or ``"identity"`` (pass input
            ``port`` through; it must have the node's output shape).
        port: the input passed through by ``"identity"``.

    Returns:
        A new, validated graph.

    Raises:
        PreconditionError: unknown node, a graph input, an unknown ``replace_with``, a bad
            ``port``, an identity whose input shape differs from the node's output shape, or (zero)
            no earlier tensor from which a ``zero`` op can take the node's shape.

    Example:
        >>> import archir.samples as S
        >>> remove_op(S.chain(), "l1.relu", "identity").node("l1.relu").op
        'identity'
    """
    if replace_with not in REPLACEMENTS:
        raise PreconditionError(f"unknown replace_with={replace_with!r}", node=node if isinstance(node, str) else None,
                                hint=f"use one of {list(REPLACEMENTS)}")
    if not isinstance(node, str) or node not in g:
        some = [n for n in g.topo_order() if g.nx.nodes[n]["op"] != "input"][:6]
        raise PreconditionError(f"no node {node!r} in graph {g.name!r}", hint=f"name an op node, e.g. {some}")
    d = g.nx.nodes[node]
    if d["op"] == "input":
        raise PreconditionError("a graph input cannot be removed (it is the interface)", node=node,
                                hint="remove an op after it")
    want = tuple(d["type"].shape)
    out = g.copy()
    if replace_with == "identity":
        ins = g.inputs_of(node)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < len(ins):
            raise PreconditionError(f"port={port!r} is not an input port of this {d['op']} (it has {len(ins)})",
                                    node=node, hint=f"pass port in 0..{len(ins) - 1}")
        src = ins[port]
        st = tuple(g.nx.nodes[src]["type"].shape)
        if st != want:
            raise PreconditionError(
                f"an identity needs its input's shape: input {port} ({src!r}) is {st}, the node's output is {want}",
                node=node, hint="use replace_with='zero' (zeros of the output shape), or remove an op whose input "
                                "and output shapes agree")
        replace_keeping_id(out, node, "identity", src)
    else:
        found = _zero_source(g, node, want)
        if found is None:
            raise PreconditionError(
                f"no tensor before it has a shape a zero op can turn into {want} (a zero op keeps its input's "
                f"channels and only subsamples H and W)", node=node,
                hint="remove the op after it that restores a shape seen earlier, or prune its channels instead "
                     "(passes.prune_channels)")
        src, stride = found
        replace_keeping_id(out, node, "zero", src, stride=stride)
    return out.validate()


def _simplify_values(g: Graph) -> int:
    """Step 1 of ``prune_zero_paths``: replace zero-valued nodes by ``zero`` ops, fold ``x + 0``."""
    changed = 0
    outputs = set(g.outputs)
    # both edits keep the set valid: a replaced node stays zero-valued under the same id, and a
    # folded add was not zero-valued, so nothing downstream changes
    zeros = zero_valued(g)
    for n in g.topo_order():
        d = g.nx.nodes[n]
        if d["op"] == "add":
            ins = g.inputs_of(n)
            z = [u in zeros for u in ins]
            if z[0] != z[1] and n not in outputs:
                keep = ins[1] if z[0] else ins[0]
                g.replace_uses(n, keep)
                changed += 1
                continue
        if n in zeros and d["op"] != "zero":
            found = _zero_source(g, n, tuple(d["type"].shape), exclude=zeros)
            if found is not None:
                replace_keeping_id(g, n, "zero", found[0], stride=found[1])
                changed += 1
    return changed


def _walk_back(g: Graph) -> int:
    """Step 2: move each ``zero`` op's input back while that input feeds nothing but zeros."""
    changed = 0
    outputs = set(g.outputs)
    for z in [n.id for n in g.nodes("zero")]:
        while True:
            x = g.inputs_of(z)[0]
            xd = g.nx.nodes[x]
            if xd["op"] == "input" or x in outputs:
                break
            if any(g.nx.nodes[v]["op"] != "zero" for v, _ in g.users_of(x)):
                break
            want = tuple(g.nx.nodes[z]["type"].shape)
            moved = False
            for x0 in g.inputs_of(x):
                s = stride_for(g.nx.nodes[x0]["type"].shape, want)
                if s is not None:
                    g.set_input(z, 0, x0)
                    g.set_attrs(z, stride=s)
                    changed += 1
                    moved = True
                    break
            if not moved:
                break
    return changed


def zero_paths(g: Graph) -> int:
    """Run the three steps of :func:`prune_zero_paths` on ``g`` in place to a fixed point; returns the edits."""
    total = 0
    while True:
        k = _simplify_values(g)
        k += _walk_back(g)
        k += remove_dead(g)
        total += k
        if not k:
            return total


@graph_pass(preserves="function")
def prune_zero_paths(g: Graph) -> Graph:
    """Delete what only feeds ``zero`` ops, fold ``x + 0``, keep the function exactly.

    The rules are in the module docstring. Run it after :func:`remove_op` (or on a graph derived
    from a supernet whose ``none`` edges were chosen).

    Args:
        g: the graph (not changed).

    Returns:
        A new, validated graph computing the same function (exactly: only zeros are folded).

    Example:
        >>> import archir.samples as S
        >>> g = remove_op(S.chain(), "l1.bn")
        >>> len(prune_zero_paths(g)) < len(g)
        True
    """
    out = g.copy()
    zero_paths(out)
    return out.validate()
