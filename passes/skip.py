"""``add_skip``: a new, zero-initialised path from an earlier tensor ``src`` to the output of ``dst``
(NASH types II/IV: skip connections by addition or by concatenation).

Why the function is preserved::

    mode="add":    y' = dst(x) + P(src(x)),  P = 1x1 conv src_C -> dst_C, stride s, weight 0, no bias
                   P(.) = 0, so y' = dst(x) = y. The zero projection also fixes channel mismatch, and
                   the stride s (with floor((H_src - 1) / s) + 1 = H_dst) fixes spatial mismatch.
                   (A plain identity add, y' = y + src, would change the function: the path is
                   always projected, and the projection starts at zero. Its gradient is not zero:
                   dL/dP = dL/dy' * src, so training grows the path.)

    mode="concat": y' = concat([dst(x), Q(src(x))]) on channels, where Q = src itself when the
                   spatial sizes agree, else a strided 1x1 conv (seeded, non-zero). Every consumer
                   of dst is extended so the new channels get zero weight:
                     conv (groups=1):  W' = [W, 0] on the input-channel axis  -> sum over c of W'[:, c] x'[c] = W x
                     flatten -> linear: zero columns at the flattened positions of the new channels
                     BN, scale:         identity stats / weight 1 for the new channels (channel-wise,
                                        the old channels are untouched); then their consumers in turn
                     relu, pools (adaptive too), dropout, identity ...: channel-wise, carried through
                                        to their consumers
                     concat:            the new channels keep their offset in the larger concat
                     channel slice:     the one whose range ends at the old last channel takes them in
                                        (``end`` moves); the others keep their range
                     channel shuffle:   the new count must be a multiple of its groups; the shuffle of
                                        the new count interleaves new and old channels, and every
                                        consumer after it reads the old ones where they now are
                   (each consumer by its rule in passes.coupling, the analysis widen and pruning use), so every tensor that is not channel-extended is unchanged. Consumers that cannot take
                   extra channels with zero weight (add/mul with an unextended operand, grouped or
                   depthwise convs, linear on a feature map, a graph output) are refused with the reason.
                   Non-zero Q keeps the gradient to the new consumer weights non-zero.

``src`` must be a strict ancestor of ``dst`` (a path src -> ... -> dst exists), which keeps the graph
acyclic: the new nodes read ``src`` and ``dst``, and only ``dst``'s consumers are rewired.
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np

from archir import Graph

from passes._util import fresh_scope, identity_bn, is_plain_target, require_node, require_rank3
from passes.coupling import Coupling, PositionMap, analyze
from passes.infra import PreconditionError, graph_pass

__all__ = ["add_skip", "skip_targets", "SKIP_MODES"]

SKIP_MODES = ("add", "concat")

def _stride_for(src: int, dst: int) -> int | None:
    """The stride s of a 1x1 conv (no padding) taking size ``src`` to ``dst``, or None."""
    if dst > src:
        return None
    for s in range(max(1, src // dst), math.ceil(src / dst) + 1):
        if (src - 1) // s + 1 == dst:
            return s
    return None


def _strides(g: Graph, src: str, dst: str) -> tuple[int, int] | None:
    (_, h1, w1), (_, h2, w2) = g.node(src).type.shape, g.node(dst).type.shape
    sh, sw = _stride_for(h1, h2), _stride_for(w1, w2)
    return None if sh is None or sw is None else (sh, sw)


def _extension_plan(g: Graph, start: str, new_mask: np.ndarray, cp: Coupling | None = None):
    """Walk the consumers of ``start`` (whose channel axis becomes ``new_mask``, True = new channel).

    Each consumer is treated by its channel-coupling rule (``passes.coupling``, the analysis
    ``widen`` and pruning use), through :meth:`~passes.coupling.Coupling.carry`, which maps every new
    position to the old one it holds (or marks it new): a carrier that passes channels index for index
    passes the new ones on (BN and ``scale`` get identity values for them), a channel concat keeps their
    offset, a flatten widens them to ``H*W`` features, a channel slice whose range ends at the old last
    channel takes them in (its ``end`` moves), a channel shuffle puts them, and the old channels, where
    the shuffle of the new count does (its views' ``shape`` is reset), a tie (``add``, ``mul``) needs every
    operand extended alike, and a source (conv, linear) reads the old channels where they now are and the
    new ones with zero weight.

    Returns ``(maps, edits)``: the position map of every extended node, and a list of ``(node, kind, map)``
    edits (``kind`` in ``"in_zero"``, ``"bn"``, ``"scale"``, ``"attrs"``: a slice's range or a view's
    shape, given as a dict). Raises ``PreconditionError`` at the first consumer that cannot take the new
    channels. Does not edit ``g``.
    """
    cp = analyze(g) if cp is None else cp
    n_new = int(new_mask.size)
    old = int(np.count_nonzero(~new_mask))
    # the new channels come after the old ones; each points at the old last channel (an anchor, for shape)
    src = np.where(new_mask, old - 1, np.cumsum(~new_mask) - 1).astype(np.int64)
    maps = {start: PositionMap(src, np.where(new_mask, "new", "keep").astype(object), np.ones(n_new, np.int64),
                               n_new)}
    edits = []
    order = g.topo_order()
    pos = {n: i for i, n in enumerate(order)}
    todo = {v for v, _ in g.users_of(start)}
    outputs = set(g.outputs)
    if cp.channel_axis(start) != 0:
        raise PreconditionError(f"it holds its channels on axis {cp.channel_axis(start)} (channels-last, after a "
                                f"permute): a concat on axis 0 would grow a spatial axis, not the channels",
                                pass_name="add_skip", node=start,
                                hint="use mode='add', or a dst whose channels are on axis 0 (a (C, H, W) map)")
    if start in outputs:
        raise PreconditionError("it is a graph output: concatenating channels onto it would change the output shape",
                                pass_name="add_skip", node=start, hint="use mode='add', or a dst inside the network")

    def refuse(n: str, why: str, hint: str = "use mode='add'") -> PreconditionError:
        return PreconditionError(f"consumer {n!r} {why}", pass_name="add_skip", node=n, hint=hint)

    while todo:
        n = min(todo, key=pos.__getitem__)
        todo.discard(n)
        rule = cp.rule(n)
        op = rule.op
        ins = g.inputs_of(n)
        in_maps = [maps.get(u) for u in ins]
        m_in = next(m for m in in_maps if m is not None)
        out_map = None
        if rule.kind == "opaque":
            raise refuse(n, f"cannot take new input channels: {rule.reason}")
        if rule.mixes:
            raise refuse(n, f"cannot take new channels with zero weight: {rule.mixes}")
        if rule.kind == "source":
            edits.append((n, "in_zero", m_in))  # old columns where their channels now are, zero for the new
        elif rule.flow == "pass":
            if rule.count_attrs:  # a depthwise conv: its channel count is its group count
                raise refuse(n, f"is a grouped conv (groups={g.node(n).attrs['groups']}, depthwise): its input "
                                "channels are tied to its output groups, so it cannot take extra input channels with "
                                "zero weight", "use mode='add', or widen the graph instead")
            if any(x.role == "channel" for x in rule.arrays):
                if op not in ("batchnorm2d", "scale"):
                    raise refuse(n, f"is a {op} with per-channel arrays that add_skip cannot fill for new channels")
                edits.append((n, "bn" if op == "batchnorm2d" else "scale", m_in))
            out_map = m_in
        elif rule.flow == "tie":
            if any(m is None or not np.array_equal(m.src, m_in.src) or not np.array_equal(m.tag, m_in.tag)
                   for m in in_maps):
                other = [u for u, m in zip(ins, in_maps) if m is None or not np.array_equal(m.tag, m_in.tag)
                         or not np.array_equal(m.src, m_in.src)]
                raise refuse(n, f"is {'an' if op[0] in 'aeiou' else 'a'} {op} whose other operand {other[0]!r} does "
                                "not get the new channels (channels are tied through it)",
                             "use mode='add', or widen the coupled producers instead")
            out_map = m_in
        elif rule.flow in ("flatten", "slice", "concat", "shuffle", "shuffle_split", "shuffle_merge"):
            try:
                out_map, attrs = cp.carry(n, in_maps, what="concatenate the skip's channels", pass_name="add_skip")
            except PreconditionError as e:
                raise refuse(n, f"cannot take the new channels: {e.message}",
                             e.hint or "use mode='add'") from None
            if out_map is not None and rule.flow in ("shuffle_split", "shuffle_merge"):
                attrs = {**attrs, "shape": cp.view_shape(n, out_map.entries)}
            if attrs:
                edits.append((n, "attrs", attrs))
        else:  # a rule this walk does not know: a bug of ours, not of the graph
            raise AssertionError(f"add_skip: coupling rule of {n!r} ({rule.kind}, flow {rule.flow!r}) is not handled")
        if out_map is not None:
            if n in outputs:
                raise PreconditionError(
                    f"the new channels reach graph output {n!r} (through channel-wise ops), which would change "
                    "the output shape", pass_name="add_skip", node=n,
                    hint="use mode='add', or a dst whose channels meet a conv/linear before the output")
            maps[n] = out_map
            todo |= {v for v, _ in g.users_of(n)}
    return maps, edits


def _take(a: np.ndarray, m: PositionMap, axis: int, fill: float) -> np.ndarray:
    """``a`` gathered along ``axis`` by ``m`` (each new position holds its old one), ``fill`` at new positions."""
    out = np.take(a, m.src, axis=axis).astype(np.float32)
    idx = [slice(None)] * out.ndim
    idx[axis] = m.tag == "new"
    out[tuple(idx)] = fill
    return out


def _apply_edits(g: Graph, edits) -> None:
    """The weight edits of :func:`_extension_plan` (its ``"attrs"`` edits are set before, in graph order)."""
    for n, kind, m in edits:
        node = g.node(n)
        if kind == "in_zero":
            g.set_params(n, weight=_take(node.params["weight"], m, 1, 0.0))
        elif kind == "bn":
            idp, idb = identity_bn(1, node.attrs["eps"])
            for arrs, ident, setter in ((node.params, idp, g.set_params), (node.buffers, idb, g.set_buffers)):
                setter(n, **{k: _take(a, m, 0, float(ident[k][0])) for k, a in arrs.items()})
        elif kind == "scale":
            g.set_params(n, weight=_take(node.params["weight"], m, 0, 1.0))


@graph_pass(preserves="function")
def add_skip(g: Graph, src: str, dst: str, mode: str = "add", seed: int = 0) -> Graph:
    """Add a zero-initialised path from ``src`` to the output of ``dst`` (function-preserving).

    Args:
        g: the graph (not changed).
        src: a ``(C, H, W)`` node that is a strict ancestor of ``dst``.
        dst: a ``(C, H, W)`` node; its spatial size must be ``src``'s divided by an integer stride
            (``floor((H_src - 1) / s) + 1 == H_dst``), channels may differ.
        mode: ``"add"``: ``dst + conv1x1(src)`` with the projection's weight at zero (strided
            where the sizes differ); ``"concat"``: ``concat([dst, src or strided conv1x1(src)])``
            with every consumer of ``dst`` given zero weights for the new channels.
        seed: seeds the (non-zero) strided projection of ``mode="concat"``.

    Returns:
        A new graph with the nodes ``{dst}.skip.proj`` (when there is a projection) and
        ``{dst}.skip.add`` / ``{dst}.skip.cat`` (or a fresh scope ``{dst}.skip_2`` ...).

    Raises:
        PreconditionError: unknown node (the message lists legal targets), not a ``(C, H, W)``
            node, ``src`` is not a strict ancestor of ``dst``, the spatial sizes are not related
            by an integer stride, an unknown mode, or (concat) a consumer of ``dst`` that cannot
            take extra channels with zero weight (named, with the reason).

    Example:
        >>> g2 = passes.add_skip(g, src="stem.relu", dst="b1.b.bn", mode="add")     # doctest: +SKIP
    """
    for role, n in (("src", src), ("dst", dst)):
        require_node(g, n, morphism="add_skip", role=role,
                     legal=lambda role=role: (t[role] for t in skip_targets(g, limit=50)))
    if mode not in SKIP_MODES:
        raise PreconditionError(f"mode must be one of {SKIP_MODES}, got {mode!r}", pass_name="add_skip")
    c1, _, _ = require_rank3(g, src, morphism="add_skip", role="src")
    c2, _, _ = require_rank3(g, dst, morphism="add_skip", role="dst")
    if src == dst or not nx.has_path(g.nx, src, dst):
        raise PreconditionError(
            f"src {src!r} is not an earlier tensor on a path to dst {dst!r}; a skip from a non-ancestor would "
            "create a cycle or connect unrelated branches", pass_name="add_skip", node=dst,
            hint="pick a src among dst's ancestors (nx.ancestors(g.nx, dst))")
    strides = _strides(g, src, dst)
    if strides is None:
        raise PreconditionError(
            f"spatial size {g.node(src).type.shape[1:]} of src {src!r} does not reduce to "
            f"{g.node(dst).type.shape[1:]} of dst {dst!r} with an integer stride",
            pass_name="add_skip", node=dst, hint="pick a src at the same or a larger (integer multiple) resolution")
    g = g.copy()
    scope = fresh_scope(g, f"{dst}.skip")
    stride = strides[0] if strides[0] == strides[1] else list(strides)
    if mode == "add":
        proj = g.add("conv2d", src, out_channels=c2, kernel_size=1, stride=stride, bias=False, name=f"{scope}.proj")
        g.set_params(proj, weight=np.zeros((c2, c1, 1, 1), np.float32))
        new = g.add("add", dst, proj, name=f"{scope}.add")
        g.replace_uses(dst, new, exclude=[new])
        return g.validate()
    # concat: plan the consumer edits on the old graph first, so a refusal leaves nothing half done
    mask = np.concatenate([np.zeros(c2, bool), np.ones(c1, bool)])
    _, edits = _extension_plan(g, dst, mask)
    path = src
    if strides != (1, 1):
        path = g.add("conv2d", src, out_channels=c1, kernel_size=1, stride=stride, bias=False, name=f"{scope}.proj")
        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(c1)  # torch's default conv init bound for a 1x1 kernel
        g.set_params(path, weight=rng.uniform(-bound, bound, (c1, c1, 1, 1)))
    cat = g.add("concat", dst, path, name=f"{scope}.cat", dim=1)
    g.replace_uses(dst, cat, exclude=[cat])
    attrs = {n: a for n, kind, a in edits if kind == "attrs"}
    for n in g.topo_order():  # a slice's new range, a shuffle view's new shape; each sees its inputs' new types
        if n in attrs:
            g.set_attrs(n, **attrs[n])
        elif n != cat and g.inputs_of(n):
            g.set_attrs(n)
    g.infer_shapes()
    _apply_edits(g, edits)
    return g.validate()


def skip_targets(g: Graph, limit: int | None = None) -> list[dict]:
    """Legal ``add_skip`` calls: every (ancestor ``src``, ``dst``) pair of ``(C, H, W)`` nodes whose sizes
    relate by an integer stride, in ``mode="add"``, and in ``mode="concat"`` where every consumer of
    ``dst`` can take new channels. Sources come in topological order; ``limit`` stops early."""
    out: list[dict] = []
    order = g.topo_order()
    nxg = g.nx
    bit = {n: 1 << i for i, n in enumerate(order)}
    anc: dict[str, int] = {}
    for n in order:  # ancestor sets as bitsets: one pass in topological order
        a = 0
        for u in nxg.predecessors(n):
            a |= anc[u] | bit[u]
        anc[n] = a
    plain = [n for n in order if is_plain_target(g, n)]
    cp = analyze(g)
    hw = {n: nxg.nodes[n]["type"].shape[1:] for n in plain}
    stride_ok: dict[tuple, bool] = {}

    def fits(a, b) -> bool:
        key = (a, b)
        if key not in stride_ok:
            stride_ok[key] = _stride_for(a[0], b[0]) is not None and _stride_for(a[1], b[1]) is not None
        return stride_ok[key]

    for dst in plain:
        # concat_ok: src channel count -> whether dst's consumers take that many (a shuffle needs a multiple of
        # its groups)
        a, concat_ok = anc[dst], {}
        for src in plain:  # in topological order: deterministic whatever the hash seed
            if not a & bit[src] or not fits(hw[src], hw[dst]):
                continue
            out.append({"src": src, "dst": dst, "mode": "add"})
            c1 = nxg.nodes[src]["type"].shape[0]
            if c1 not in concat_ok:
                c2 = nxg.nodes[dst]["type"].shape[0]
                try:
                    _extension_plan(g, dst, np.concatenate([np.zeros(c2, bool), np.ones(c1, bool)]), cp)
                    concat_ok[c1] = True
                except PreconditionError:
                    concat_ok[c1] = False
            if concat_ok[c1]:
                out.append({"src": src, "dst": dst, "mode": "concat"})
            if limit is not None and len(out) >= limit:
                return out
    return out
