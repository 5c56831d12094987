"""Channel coupling: which channels of a graph are tied together, and who reads them.

This is the one channel-coupling analysis of archir (DESIGN.md, "The hard parts"). ``widen``
uses it to grow a conv consistently; ``prune_channels`` builds on :func:`dependency_groups`
to remove channels consistently. Both are edits of *channel classes*, applied through
:meth:`Coupling.remap`, so the two can never disagree about what is tied.

The model
---------
A *channel* is one index of a tensor's channel axis: axis 0 of a ``(C, H, W)`` feature map,
one feature of a ``(F,)`` vector, or the last axis of a channels-last ``(H, W, C)`` map. The
analysis tracks which axis holds the channels, per tensor (:meth:`Coupling.channel_axis`): it is
0 where channels are made (convs, graph inputs), ``permute`` moves it (ConvNeXt's
``permute(0, 2, 3, 1)`` takes it to the last axis and back), a ``linear`` over the last axis makes
channels there, and a reduction without ``keepdim`` shifts it. An op that reads axis 0 as the
channels (conv, BN, ``scale``, pools, ``pad``, ``upsample``, ``flatten``, ``channel_shuffle``) on a
tensor whose channels are elsewhere is opaque (below). Every channel of every node's output is labelled with a
*class*; two channels have the same class when they must be changed together (widened by the
same replication map, or pruned together). Classes come from a union-find over the channels
of the *sources*:

- **sources** make new channels: ``conv2d`` and ``conv1d`` with ``groups == 1`` (``out_channels``), ``linear``
  whose input holds its channels on the last axis (``out_features``): a vector, or a channels-last map,
  where it is a 1x1 conv (ConvNeXt's pointwise layers); graph ``input`` nodes (pinned, see below);
- **carriers** pass their input's channels through, index for index: BN, ``scale``, every
  parameter-free op declared ``channelwise`` in its ``OpTraits`` (the activations, ``neg``,
  ``identity``/``dropout``/``zero``/``stop_*``, max/avg/adaptive pools, ``global_avgpool``, ``pad``,
  ``upsample``), ``mean``/``sum``/``softmax``/``log_softmax`` over non-channel dims (over the channels
  they mix every channel: pinned, like ``matmul``, which contracts its operands' axes),
  and depthwise convs, 1-d or 2-d (``groups == in_channels == out_channels``: channel ``i`` of the output
  is filter ``i`` applied to input channel ``i`` only);
- **ties**: ``add``, ``mul``/``sub``/``div`` with equal channel counts (a squeeze-excite gate ``(C, 1, 1)``
  broadcasts over H and W, not over channels), and ``concat`` along a non-channel axis make
  their inputs' channels the same classes, position by position;
- ``concat`` along the channel axis lays its inputs' channels one after the other (the offsets);
- ``layernorm`` over the channel axis (``axis="channels"`` of ``(C, H, W)``, ``axis="last"`` of a vector
  or a channels-last map) carries them with its affine weight/bias (per-channel arrays), but its
  statistics mix them (:attr:`NodeRule.mixes`): pruning follows, widening refuses (that is math: a new
  channel, even a copy, changes the mean and variance of every position); over another axis
  the channels pass through;
- ``permute`` passes the channels, moving their axis; a ``slice`` of the channel axis with step 1
  (``x[:, a:b]``, ``chunk``, ``split``) holds that range of them, and an edit resets its
  ``start``/``end`` (a slice of another axis passes them through);
- ``channel_shuffle`` (and torchvision's ``view(g, C/g, H, W) -> transpose -> view(C, H, W)``, whose views
  get their ``shape`` reset) is a permutation that depends on the channel count: channel ``j`` of
  each of its ``g`` segments is made one class, so an edit removes or copies whole rows and keeps the
  per-group counts equal; its output's position map is its input's permuted by the shuffle of the *new*
  count (:meth:`Coupling.carry`). Any other ``reshape`` is opaque;
- ``param`` (a learned tensor) makes a new pinned class (its input gives the batch size only and is not
  pinned); ``attention`` mixes every token and projects the embedding: opaque; so are MaxViT's
  ``rel_attention`` (windows of tokens, heads tied to its relative-bias table) and swin's
  ``window_attention`` (its heads split the channels, and its table has one column per head);
- ``flatten(start_dim=1)`` of ``(C, H, W)`` keeps the classes, but each channel now covers
  ``H*W`` consecutive features (its *width*): a ``linear`` after it reads channel ``c`` through
  weight columns ``[c*H*W, (c+1)*H*W)`` (with ``global_avgpool`` first the width is 1).

Each op's rule is registered in a table, as lowerings and costs are (``@coupling.register(
"conv2d")``, a function of a :class:`CouplingBuilder`, the node, its attrs and its inputs);
a parameter-free channel-wise op needs none (:func:`rule_of`), and an op with neither is
opaque (below). ``add_skip(mode="concat")`` extends a node's consumers with the same rules.

So each tensor has a *layout*: a sequence of entries ``(class, width)`` along its channel axis
(:meth:`Coupling.layout`). The arrays indexed by channels are described per node by
:class:`ArrayAxis` (:meth:`Coupling.rule`):

- ``role="filter"``: a source's weight rows / bias (axis 0, indexed by its output layout);
- ``role="channel"``: a carrier's per-channel arrays: BN weight/bias/running stats, ``scale``
  weight, a depthwise conv's filters and bias (axis 0, indexed by its output layout);
- ``role="column"``: a consumer's input slice: conv weight axis 1, linear weight axis 1
  (indexed by the layout of its input, widths included).

**Pins.** Some channels cannot change, and every class holding one carries a :class:`Pin`
saying why: a graph input's channels, a graph output's channels (the interface is fixed), and
the channels that meet an op whose coupling archir does not model (*unknown coupling*): a
grouped conv that is not depthwise, a depthwise conv with a channel multiplier, ``flatten``
with ``start_dim > 1`` or of a rank-2 tensor, ``linear`` over an axis that does not hold the
channels, a strided channel slice, an axis-0 op on a channels-last tensor, ``mul`` broadcasting
across the channel axis (``(1, H, W) * (C, H, W)``) or of operands of different ranks, ``add``/``mul`` whose inputs' layouts do not
line up, ``choice`` nodes (the coupling depends on the decision: ``archir.derive`` first), and
any op without a rule here. An unknown op's inputs are pinned and its output is a new pinned
class, so nothing is guessed. By default unknown coupling is recorded, not raised, so the rest
of a graph stays analysable (search drivers list legal targets); any edit that touches a pinned
class raises :class:`~passes.infra.PreconditionError` naming the node and the reason
(:meth:`Coupling.remap`, :meth:`Group.require_free`). ``analyze(g, strict=True)`` raises at the
first unknown coupling instead.

**Groups** (:func:`dependency_groups`, for pruning): classes joined by sharing a source node.
A group is what one ``prune_channels`` decision works on: its classes are its independent
channels, :meth:`Group.channel_refs` lists every array slice of one class ((node, array, axis,
index range): the sets of "(node, axis, channel-index) to remove together" of issue 5), and the
group names its producers, carriers and consumers. ``add(concat(a, b), c)`` makes one group of
``a``, ``b`` and ``c`` (``c``'s first channels tied to ``a``, the rest to ``b``); a concat that
meets no add leaves ``a`` and ``b`` separate groups and its consumers in both.

**Edits** (:meth:`Coupling.remap`): an edit says, per class, what replaces every occurrence of
it: ``("keep",)`` (unchanged), ``()`` (removed: pruning), ``("keep", "copy")`` (replicated
right after itself: widen), ``("keep", "new")`` (a fresh channel right after it: widen's zero
mode). Inserting next to every occurrence of the class keeps every tie consistent: both inputs
of an ``add`` hold the class at the same positions, so they grow at the same positions; a
``concat`` grows inside the segment of the input that holds the class, which shifts the offsets
of the segments after it for every consumer. The result is, per affected node, an index map
from new positions to old ones (:class:`PositionMap`) and the attrs to set (``out_channels``,
``groups`` of a depthwise conv, ``out_features``, a slice's ``start``/``end``, a shuffle view's ``shape``).

Only a source's map is read off its layout ("right after every occurrence"); every other node's map is
*propagated* from its inputs' maps in topological order by its flow (:meth:`Coupling.carry`), so it is
what the edited graph computes there. Without a shuffle the two agree everywhere. A shuffle of
``C = g * p`` channels puts input segment ``i``, row ``j`` at output ``j * g + i``; a copy of row ``j``
(one class: row ``j`` of every segment) grows every segment by one at row ``j + 1``, so the new output is
the old one with a block of ``g`` copies inserted after block ``j`` -- not a copy next to each of them.
Downstream, a tie needs its operands mapped alike and a channel slice needs its old channels to stay one
range (a shuffle row straddling its bound breaks that); where they do not, the edit is refused with the
node and the reason (``widen`` tries one copy of every class of its target first).

Example:
    >>> import archir.samples as S
    >>> cp = analyze(S.resnet_like())
    >>> sorted(cp.group_of("b1.b.conv").producers)   # the residual stream
    ['b1.b.conv', 'b2.b.conv', 'stem.conv']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from archir import Graph
from archir.ops import OpHandlers, concat_axis, get_op, op_names, slice_range

from passes.infra import PassError, PreconditionError

__all__ = ["analyze", "dependency_groups", "Coupling", "CouplingBuilder", "Group", "Pin", "ArrayAxis", "NodeRule",
           "ChannelRef", "PositionMap", "NodeRemap", "EDIT_TAGS", "COUPLING_RULES", "register", "rule_of",
           "missing_rules"]

#: what may replace a channel in an edit (see Coupling.remap)
EDIT_TAGS = ("keep", "copy", "new")


@dataclass(frozen=True)
class Pin:
    """Why a channel class cannot change.

    Attributes:
        node: the node that pins it (the graph input/output, or the op with unknown coupling).
        kind: ``"input"``, ``"output"`` or ``"unknown"``.
        reason: what, in words.
        hint: how to get around it.
    """

    node: str
    kind: str
    reason: str
    hint: str = ""

    def __str__(self) -> str:
        return f"{self.node!r}: {self.reason}"


@dataclass(frozen=True)
class ArrayAxis:
    """One axis of a node's param/buffer that is indexed by channels.

    Attributes:
        kind: ``"params"`` or ``"buffers"``.
        name: the array name (``"weight"``, ``"running_mean"`` ...).
        axis: the array axis indexed by channels.
        side: ``"out"`` (indexed by the node's output layout) or ``"in"`` (by its input's layout).
        role: ``"filter"`` (a source's rows/bias), ``"channel"`` (a carrier's per-channel
            array), ``"column"`` (a consumer's input slice).
    """

    kind: str
    name: str
    axis: int
    side: str
    role: str


@dataclass(frozen=True)
class NodeRule:
    """How one node treats channels.

    Attributes:
        node, op: the node.
        kind: ``"source"`` (conv/linear making channels), ``"carrier"`` (passes, ties or lays
            out its inputs' channels), ``"input"`` (a graph input: pinned source), ``"opaque"``
            (unknown coupling: inputs pinned, output a new pinned class).
        arrays: the channel-indexed axes of its params/buffers.
        reason: for ``"opaque"``, why its coupling is unknown.
        flow: for a ``"carrier"``, how its output holds its inputs' channels: ``"pass"``
            (port 0's, index for index), ``"concat"`` (one input's after the other's),
            ``"flatten"`` (each widened to ``H*W`` features), ``"tie"`` (the inputs' channels
            made one: ``add``, ``mul``, a concat on another axis), ``"slice"`` (a range of port
            0's: an edit resets ``start``/``end``), ``"shuffle"`` (port 0's in ``channel_shuffle``
            order: the op, or the transpose of torchvision's view/transpose/view), or
            ``"shuffle_split"`` / ``"shuffle_merge"`` (that pattern's views: an edit resets their
            ``shape``); ``None`` otherwise.
        count_attrs: the attributes that hold its output channel count (``out_channels``, a
            depthwise conv's ``groups``, ``out_features``), set when an edit changes it.
        mixes: for a carrier through which removing channels is followed but adding them is not,
            why; ``None`` otherwise. ``layernorm`` over the channels: every output channel depends
            on all input channels together (the mean and variance run over them), so an added
            channel changes every channel's statistics. Pruning through it is consistent (and
            changes the function, as pruning may); function-preserving edits that add channels
            (``widen``, ``add_skip``) refuse it. (A channel shuffle does not mix: its map is followed,
            :meth:`Coupling.carry`.)
        axis: the per-sample axis of the node's output that holds its channels: 0 for ``(C, H, W)``
            maps and vectors, the last axis of a channels-last ``(H, W, C)`` map (``permute`` moves
            it; a ``linear`` over it makes channels there).
    """

    node: str
    op: str
    kind: str
    arrays: tuple[ArrayAxis, ...] = ()
    reason: str | None = None
    flow: str | None = None
    count_attrs: tuple[str, ...] = ()
    mixes: str | None = None
    axis: int = 0


@dataclass(frozen=True)
class ChannelRef:
    """One slice that belongs to a channel: ``array[..., start:stop, ...]`` along ``axis`` of ``node``.

    ``array`` is ``"output"`` for the node's output tensor (``axis`` is its per-sample channel
    axis, :attr:`NodeRule.axis`; the batch dim is not counted), else a param/buffer name of kind ``kind``.
    """

    node: str
    array: str
    axis: int
    start: int
    stop: int
    kind: str = "output"


@dataclass(frozen=True)
class PositionMap:
    """How an edit rewrites one channel axis.

    Attributes:
        src: for each new position, the old position it derives from (``np.take`` index).
        tag: for each new position, ``"keep"``, ``"copy"`` or ``"new"`` (a ``new`` position
            points at its anchor's old position only to have a shape; its values are fresh).
        share: for each new position, how many new positions carry the values of its old
            position (``keep`` + ``copy`` of that occurrence): a consumer's column is divided by it.
        entries: the new number of channels (entries; a flattened channel of width ``H*W``
            counts once).
    """

    src: np.ndarray
    tag: np.ndarray
    share: np.ndarray
    entries: int

    @property
    def positions(self) -> int:
        return int(self.src.shape[0])


@dataclass(frozen=True)
class NodeRemap:
    """What an edit does to one node: new output and/or input positions and attrs to set.

    Attributes:
        node: the node id.
        out: the map of its output channel axis (``None`` if unchanged).
        inp: the map of its port-0 input's channel axis, for nodes with ``side="in"`` arrays
            (``None`` if unchanged).
        attrs: attributes to set (``out_channels``, ``groups``, ``out_features``).
    """

    node: str
    out: PositionMap | None
    inp: PositionMap | None
    attrs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Group:
    """A set of channel classes that share source nodes: one unit for channel pruning.

    Attributes:
        index: position in :meth:`Coupling.groups`.
        classes: the channel classes (independent channels) of the group, in the order of the
            first producer's channels.
        producers: nodes whose output makes these channels (conv/linear sources, graph inputs,
            outputs of unknown-coupling ops).
        carriers: nodes whose output carries them (BN, activations, pools, add, mul, concat,
            depthwise convs, flatten ...).
        consumers: conv/linear nodes that read them through their weight's input axis.
        pins: why (some of) the channels cannot change; empty when the group is free.
    """

    index: int
    classes: tuple[int, ...]
    producers: tuple[str, ...]
    carriers: tuple[str, ...]
    consumers: tuple[str, ...]
    pins: tuple[Pin, ...]
    _coupling: "Coupling" = field(repr=False, compare=False)

    @property
    def size(self) -> int:
        """Number of independent channels (classes)."""
        return len(self.classes)

    @property
    def free(self) -> bool:
        return not self.pins

    def channel_refs(self, i: int) -> tuple[ChannelRef, ...]:
        """Every slice of the group's ``i``-th channel: what must be removed together."""
        return self._coupling.refs(self.classes[i])

    def require_free(self, what: str = "change these channels", *, pass_name: str | None = None) -> None:
        """Raise ``PreconditionError`` naming the pins when the group's channels cannot change."""
        if self.pins:
            raise self._coupling.pin_error(self.classes, what, pass_name=pass_name)


class _UF:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def make(self, n: int) -> list[int]:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return list(range(start, start + n))

    def find(self, x: int) -> int:
        p = self.parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:  # the older element stays the root: class ids follow topological order
                p, q = ra, rb
            else:
                p, q = rb, ra
            self.parent[q] = p


_GROUP_HINT = ("put a conv2d/linear between them (it decouples channels), or widen/prune another node "
               "(passes.widen_targets(g) lists the legal ones)")


class CouplingBuilder:
    """What a channel-coupling rule works with (one per :func:`analyze` call).

    A rule ``fn(b, n, attrs, ins, types)`` (``ins``: the node's input ids in port order,
    ``types``: their :class:`~archir.TensorType`) reads its inputs' :attr:`layout` and records
    the node with exactly one of :meth:`source`, :meth:`carrier`, :meth:`tie` or :meth:`opaque`.
    """

    def __init__(self, g: Graph, strict: bool) -> None:
        self.g = g
        self.strict = strict
        self.uf = _UF()
        self.layout: dict[str, list[tuple[int, int]]] = {}  # node -> [(element, width)]
        self.axis: dict[str, int] = {}  # node -> the per-sample axis of its output holding the layout
        self.rules: dict[str, NodeRule] = {}
        self.pins: list[tuple[list[tuple[int, int]], Pin]] = []

    def fresh(self, t, axis: int = 0) -> list[tuple[int, int]]:
        """A layout of new channel classes, one per index of axis ``axis`` of a tensor of type ``t``."""
        c = t.shape[axis] if t.rank >= 1 else 1
        return [(e, 1) for e in self.uf.make(c)]

    def axis_of(self, u: str) -> int:
        """The per-sample axis of ``u``'s output that holds its channels (:attr:`NodeRule.axis`)."""
        return self.axis[u]

    def source(self, n: str, arrays: Sequence[ArrayAxis], count_attrs: Sequence[str], *, axis: int = 0) -> None:
        """``n`` makes new channels on its output's axis ``axis`` (its filters ``arrays``;
        ``count_attrs`` hold its channel count)."""
        d = self.g.nx.nodes[n]
        self.rules[n] = NodeRule(n, d["op"], "source", tuple(arrays), count_attrs=tuple(count_attrs), axis=axis)
        self.layout[n] = self.fresh(d["type"], axis)
        self.axis[n] = axis

    def pin_input(self, n: str, reason: str, hint: str) -> None:
        """``n`` is a graph input: new channels, pinned."""
        d = self.g.nx.nodes[n]
        self.rules[n] = NodeRule(n, d["op"], "input")
        self.layout[n] = self.fresh(d["type"])
        self.axis[n] = 0
        self.pins.append((self.layout[n], Pin(n, "input", reason, hint)))

    def opaque(self, n: str, reason: str, hint: str) -> None:
        """``n`` couples channels in a way archir does not model: pin its inputs and its (new) output."""
        if self.strict:
            raise PreconditionError(f"unknown channel coupling: {reason}", node=n, hint=hint)
        d = self.g.nx.nodes[n]
        pin = Pin(n, "unknown", reason, hint)
        for u in self.g.inputs_of(n):
            self.pins.append((self.layout[u], pin))
        self.rules[n] = NodeRule(n, d["op"], "opaque", (), reason)
        self.layout[n] = self.fresh(d["type"])
        self.axis[n] = 0
        self.pins.append((self.layout[n], pin))

    def carrier(self, n: str, layout: list[tuple[int, int]], arrays: Sequence[ArrayAxis] = (), *,
                flow: str = "pass", count_attrs: Sequence[str] = (), mixes: str | None = None,
                axis: int | None = None) -> None:
        """``n``'s output holds ``layout`` (its inputs' channels), with per-channel ``arrays``.

        ``flow`` says how: ``"pass"`` (port 0's channels index for index), ``"concat"`` (the
        inputs' channels one after the other), ``"flatten"`` (each channel widened to ``H*W``
        features), ``"tie"`` (the inputs' channels made the same classes: :meth:`tie`),
        ``"slice"`` (a range of port 0's channels), ``"shuffle"`` (port 0's channels reordered), and a
        shuffle's views ``"shuffle_split"`` / ``"shuffle_merge"``.
        ``mixes``: why channels may be removed here but not added (:attr:`NodeRule.mixes`).
        ``axis``: the output's channel axis (default: port 0's).
        """
        if axis is None:
            ins = self.g.inputs_of(n)
            axis = self.axis[ins[0]] if ins else 0
        self.rules[n] = NodeRule(n, self.g.nx.nodes[n]["op"], "carrier", tuple(arrays), flow=flow,
                                 count_attrs=tuple(count_attrs), mixes=mixes, axis=axis)
        self.layout[n] = layout
        self.axis[n] = axis

    def tie(self, n: str, ins: list[str], what: str) -> bool:
        """Make the inputs' channels the same classes, position by position (``add``, ``mul``)."""
        lays = [self.layout[u] for u in ins]
        first = lays[0]
        for u in ins[1:]:
            if self.axis[u] != self.axis[ins[0]]:
                self.opaque(n, f"{what} inputs {ins[0]!r} and {u!r} hold their channels on different axes "
                               f"({self.axis[ins[0]]} and {self.axis[u]}), so their channels do not meet",
                            "permute both inputs to the same layout before combining them")
                return False
        for u, lay in zip(ins[1:], lays[1:]):
            if len(lay) != len(first) or any(w1 != w2 for (_, w1), (_, w2) in zip(first, lay)):
                self.opaque(n, f"{what} inputs {ins[0]!r} and {u!r} do not line up channel for channel "
                               f"(e.g. a flattened feature map meets a vector)",
                            "make both inputs the same kind of tensor (global_avgpool before flatten, or "
                            "a linear on each side)")
                return False
        for lay in lays[1:]:
            for (a, _), (b, _) in zip(first, lay):
                self.uf.union(a, b)
        self.carrier(n, list(first), flow="tie")
        return True

    def finish(self) -> "Coupling":
        for o in self.g.outputs:
            t = self.g.nx.nodes[o]["type"]
            self.pins.append((self.layout[o], Pin(o, "output", f"graph output {o!r} keeps its shape {t}",
                                                  "a consumer conv/linear between the target and the output "
                                                  "decouples the channels from the interface")))
        roots: dict[int, int] = {}
        layouts: dict[str, tuple[tuple[int, int], ...]] = {}
        for n in self.g.topo_order():
            lay = []
            for e, w in self.layout[n]:
                r = self.uf.find(e)
                c = roots.setdefault(r, len(roots))
                lay.append((c, w))
            layouts[n] = tuple(lay)
        pins: dict[int, list[Pin]] = {}
        for lay, pin in self.pins:
            seen = set()
            for e, _ in lay:
                c = roots[self.uf.find(e)]
                if c in seen:
                    continue
                seen.add(c)
                lst = pins.setdefault(c, [])
                if pin not in lst:
                    lst.append(pin)
        return Coupling(self.g, layouts, self.rules, {c: tuple(p) for c, p in pins.items()}, len(roots))

    def visit(self, n: str) -> None:
        d = self.g.nx.nodes[n]
        op = d["op"]
        ins = self.g.inputs_of(n)
        fn = rule_of(op)
        if fn is None:
            self.opaque(n, f"op {op!r} has no channel-coupling rule",
                        f"register one with @passes.coupling.register({op!r}) (passes/coupling.py)")
            return
        fn(self, n, d["attrs"], ins, [self.g.nx.nodes[u]["type"] for u in ins])


# --------------------------------------------------------------------------- the rules, one per op

#: the channel-coupling rule of each op, registered with :func:`register` like the lowerings
#: and costs; a single-input op declared ``channelwise`` (``OpTraits``) without params needs
#: none: its channels pass through (:func:`rule_of`)
COUPLING_RULES = OpHandlers("passes.coupling")
register = COUPLING_RULES.register


#: ``OpTraits.category`` of the channel-wise ops that act on each element alone (any axis may hold the
#: channels); the others (pools, pad, upsample) work on the H and W of a ``(C, H, W)`` map
_ELEMENTWISE = ("activation", "gate", "eltwise", "view")


def _channels_first(b: CouplingBuilder, n: str, u: str, t, what: str) -> bool:
    """True when ``u`` (of type ``t``) holds its channels on axis 0, as ``what`` reads them; else record
    ``n`` as opaque (a channels-last tensor meets an op that takes axis 0 for the channels)."""
    if b.axis_of(u) == 0:
        return True
    b.opaque(n, f"{what} takes axis 0 of {t} for the channels, but {u!r} holds its channels on axis "
                f"{b.axis_of(u)} (channels-last, after a permute)",
             "permute the channels back to axis 0 first (x.permute(0, 3, 1, 2) in torch)")
    return False


def _pass_through(b: CouplingBuilder, n, a, ins, it) -> None:
    op = b.g.nx.nodes[n]["op"]
    if get_op(op).traits.category not in _ELEMENTWISE and not _channels_first(b, n, ins[0], it[0], op):
        return
    b.carrier(n, list(b.layout[ins[0]]))


def rule_of(op: str) -> Callable | None:
    """The coupling rule of ``op``: its registered one, else the pass-through rule of a
    parameter-free channel-wise op (``OpTraits.channelwise``), else ``None`` (opaque)."""
    if op in COUPLING_RULES.ops():
        return COUPLING_RULES.get(op)
    opdef = get_op(op)
    if opdef.traits.channelwise and opdef.stateless:
        return _pass_through
    return None


def missing_rules(names: Iterable[str] | None = None) -> list[str]:
    """Registered ops without a coupling rule (a test asserts this is empty)."""
    return sorted(op for op in (names if names is not None else op_names()) if rule_of(op) is None)


def _weight_source(b: CouplingBuilder, n: str, a, count_attr: str) -> None:
    """A conv (groups 1) or a linear: rows (and bias) make its channels, weight columns read its input's."""
    b.source(n, [*_filters(a, "filter"), ArrayAxis("params", "weight", 1, "in", "column")], [count_attr])


def _filters(a, role: str) -> list[ArrayAxis]:
    arrays = [ArrayAxis("params", "weight", 0, "out", role)]
    if a["bias"]:
        arrays.append(ArrayAxis("params", "bias", 0, "out", role))
    return arrays


@register("input")
def _input(b: CouplingBuilder, n, a, ins, it) -> None:
    b.pin_input(n, f"graph input {n!r} has a fixed shape {b.g.nx.nodes[n]['type']}",
                "the graph's inputs keep their shape")


@register("conv2d", "conv1d")
def _conv2d(b: CouplingBuilder, n, a, ins, it) -> None:
    """A conv's channels are axis 0 of its ``(C, H, W)`` (conv1d: ``(C, L)``) sample; its weight is
    ``(out, in/groups, *kernel)``."""
    if not _channels_first(b, n, ins[0], it[0], b.g.nx.nodes[n]["op"]):
        return
    cin, groups, cout = it[0].shape[0], a["groups"], a["out_channels"]
    if groups == 1:
        _weight_source(b, n, a, "out_channels")
    elif groups == cin == cout:  # depthwise: channel i is filter i on input channel i
        b.carrier(n, list(b.layout[ins[0]]), _filters(a, "channel"), count_attrs=["out_channels", "groups"])
    elif groups == cin:
        b.opaque(n, f"depthwise conv with a channel multiplier (in {cin}, out {cout}, groups {groups}) "
                    f"is not modelled: only groups == in_channels == out_channels pass channels through",
                 "use out_channels == groups == in_channels, or leave this conv's channels alone")
    else:
        b.opaque(n, f"grouped conv (in {cin}, out {cout}, groups {groups}) ties channels per group; "
                    f"archir models groups == 1 and depthwise (groups == in == out) convs only",
                 "leave this conv's input and output channels alone")


@register("linear")
def _linear(b: CouplingBuilder, n, a, ins, it) -> None:
    """A linear acts on its input's last axis. When that axis holds the channels (a vector, or a
    channels-last ``(H, W, C)`` map after a permute: ConvNeXt's pointwise ``Linear``), it is a 1x1
    conv: a source of new channels on its output's last axis, reading its input's through its columns."""
    last = it[0].rank - 1
    if b.axis_of(ins[0]) != last:
        b.opaque(n, f"linear on {it[0]} acts on its last axis, but {ins[0]!r} holds its channels on axis "
                    f"{b.axis_of(ins[0])}: it mixes positions, not channels",
                 "flatten to a vector before the linear, or permute the channels last (x.permute(0, 2, 3, 1))")
        return
    b.source(n, [*_filters(a, "filter"), ArrayAxis("params", "weight", 1, "in", "column")], ["out_features"],
             axis=last)


@register("batchnorm2d")
def _batchnorm2d(b: CouplingBuilder, n, a, ins, it) -> None:
    if not _channels_first(b, n, ins[0], it[0], "batchnorm2d"):
        return
    arrays = []
    if a["affine"]:
        arrays += [ArrayAxis("params", "weight", 0, "out", "channel"), ArrayAxis("params", "bias", 0, "out", "channel")]
    arrays += [ArrayAxis("buffers", "running_mean", 0, "out", "channel"),
               ArrayAxis("buffers", "running_var", 0, "out", "channel")]
    b.carrier(n, list(b.layout[ins[0]]), arrays)


@register("scale")
def _scale(b: CouplingBuilder, n, a, ins, it) -> None:
    if not _channels_first(b, n, ins[0], it[0], "scale (one weight per index of axis 0)"):
        return
    b.carrier(n, list(b.layout[ins[0]]), [ArrayAxis("params", "weight", 0, "out", "channel")])


@register("flatten")
def _flatten(b: CouplingBuilder, n, a, ins, it) -> None:
    sd, r = a["start_dim"], it[0].rank
    if not _channels_first(b, n, ins[0], it[0], "flatten"):
        return
    if sd == 1 and r == 1:
        b.carrier(n, list(b.layout[ins[0]]))
    elif sd == 1 and r == 3:
        hw = it[0].shape[1] * it[0].shape[2]
        b.carrier(n, [(e, w * hw) for e, w in b.layout[ins[0]]], flow="flatten")
    else:
        b.opaque(n, f"flatten(start_dim={sd}) of a rank-{r} tensor {it[0]} keeps a non-channel axis; what "
                    f"follows it would act on channels in a way archir does not model",
                 "use flatten(start_dim=1) (after global_avgpool for a vector of channels)")


@register("add")
def _add(b: CouplingBuilder, n, a, ins, it) -> None:
    b.tie(n, ins, "add")


@register("mul", "sub", "div")
def _broadcasting(b: CouplingBuilder, n, a, ins, it) -> None:
    """``mul``, ``sub`` and ``div`` tie their inputs' channels when both have them (equal channel
    counts; H and W may broadcast), as ``add`` does. (A widened ``div`` in zero mode divides by its
    new channels: finite unless such a channel is exactly zero, which ``check_preserved`` catches.)"""
    op = b.g.nx.nodes[n]["op"]
    if it[0].rank != it[1].rank:
        # broadcasting aligns trailing axes: a lower-rank operand's axis 0 is not channels
        b.opaque(n, f"{op} of a rank-{it[0].rank} {it[0]} with a rank-{it[1].rank} {it[1]} aligns trailing axes, "
                    f"so their channel axes do not meet",
                 "give the gate the input's rank, e.g. (C, 1, 1) for a (C, H, W) input")
    elif it[0].shape[b.axis_of(ins[0])] != it[1].shape[b.axis_of(ins[0])]:
        b.opaque(n, f"{op} broadcasts {it[0]} with {it[1]} across the channel axis; only a gate with the same "
                    f"channels (like squeeze-excite's (C, 1, 1)) keeps channels apart",
                 "make the gate (C, 1, 1) (one value per channel)")
    else:
        b.tie(n, ins, op)


@register("concat")
def _concat(b: CouplingBuilder, n, a, ins, it) -> None:
    r = it[0].rank
    ax = b.axis_of(ins[0])
    if r not in (1, 3):
        b.opaque(n, f"concat of rank-{r} tensors has no channel axis archir models", "concat (C, H, W) maps or vectors")
    elif concat_axis(a["dim"], r, n) == ax:
        odd = [u for u in ins if b.axis_of(u) != ax]
        if odd:
            b.opaque(n, f"concat inputs {ins[0]!r} and {odd[0]!r} hold their channels on different axes "
                        f"({ax} and {b.axis_of(odd[0])})", "permute both inputs to the same layout first")
            return
        b.carrier(n, [x for u in ins for x in b.layout[u]], flow="concat")
    else:
        b.tie(n, ins, f"concat (dim={a['dim']}, not channels)")


@register("slice")
def _slice(b: CouplingBuilder, n, a, ins, it) -> None:
    """A slice of a non-channel axis passes the channels through. A slice ``start:stop`` (step 1) of
    the channel axis (``x[:, a:b]``, ``chunk``, ``split``) holds that range of its input's channels
    (flow ``"slice"``): an edit of them moves the range, and :meth:`Coupling.remap` sets the new
    ``start``/``end`` from the input's new positions. A strided channel slice is opaque."""
    ax, start, stop, step = slice_range(a, it[0].shape, n)
    lay = b.layout[ins[0]]
    if ax != b.axis_of(ins[0]):
        b.carrier(n, list(lay))  # a spatial slice: channels pass through
    elif step == 1 and all(w == 1 for _, w in lay):
        b.carrier(n, list(lay[start:stop]), flow="slice")
    else:
        b.opaque(n, f"slice {start}:{stop}:{step} of the channels of {it[0]}: a strided slice (or one of a "
                    f"flattened map's features) keeps channels by a pattern an edit of channels would break",
                 "slice the channels with step 1 (x[:, a:b], chunk, split), or leave the channels feeding it alone")


# ---- upsample / reductions / conv1d / softmax / matmul (issue 17, part B)
# upsample is declared channelwise and parameter-free: it passes channels through (rule_of).


@register("mean", "sum")
def _reduction(b: CouplingBuilder, n, a, ins, it) -> None:
    """A reduction over non-channel dims passes the channels through (``x.mean((2, 3))`` of a squeeze-excite
    block); one over the channels mixes them all into one value, which widen and prune cannot follow."""
    from archir.ops.core import reduce_axes

    op = b.g.nx.nodes[n]["op"]
    ax = b.axis_of(ins[0])
    axes = reduce_axes(a, it[0].rank, n, op)
    if ax in axes:
        b.opaque(n, f"{op} over the channel dim of {it[0]} adds all channels together: widening would add "
                    f"terms and pruning would drop them", "leave the channels feeding this reduction alone")
    else:  # without keepdim the reduced axes before the channels go away
        b.carrier(n, list(b.layout[ins[0]]), axis=ax if a["keepdim"] else ax - sum(k < ax for k in axes))


@register("softmax", "log_softmax")
def _softmax(b: CouplingBuilder, n, a, ins, it) -> None:
    """Softmax along a non-channel dim works per channel; along the channels every channel's value depends
    on all of them (the normaliser), so a new channel would change the others."""
    op = b.g.nx.nodes[n]["op"]
    if concat_axis(a["dim"], it[0].rank, n) == b.axis_of(ins[0]):
        b.opaque(n, f"{op} over the channel dim of {it[0]} normalises the channels together: a widened or "
                    f"pruned channel changes every other one", "leave the channels feeding this softmax alone")
    else:
        b.carrier(n, list(b.layout[ins[0]]))


@register("matmul")
def _matmul(b: CouplingBuilder, n, a, ins, it) -> None:
    b.opaque(n, f"matmul of {it[0]} and {it[1]} contracts and mixes the operands' axes (attention's q @ k^T); "
                f"archir does not follow channels through it", "leave the channels feeding this matmul alone")


# --------------------------------------------------------------------------- layout ops


@register("permute")
def _permute(b: CouplingBuilder, n, a, ins, it) -> None:
    """The channels keep their order and their own elements; the axis holding them moves to where
    ``dims`` puts it (``dims=[1, 2, 0]``: ``(C, H, W)`` to channels-last ``(H, W, C)``, axis 2)."""
    dims, ax = a["dims"], b.axis_of(ins[0])
    if b.rules[ins[0]].flow == "shuffle_split":  # the middle of a view/transpose/view channel shuffle
        b.carrier(n, _shuffled(b.layout[ins[0]], b.g.nx.nodes[ins[0]]["attrs"]["shape"][0]), flow="shuffle",
                  axis=0)
    elif all(w == 1 for _, w in b.layout[ins[0]]):
        b.carrier(n, list(b.layout[ins[0]]), axis=dims.index(ax))
    else:
        b.opaque(n, f"permute dims={dims} of {it[0]}, a flattened map whose features are blocks of channels",
                 "permute before flattening")


def _shuffle_triple(b: CouplingBuilder, n: str, a, u: str, t) -> int | None:
    """The group count ``g`` when reshape ``n`` of ``u`` (type ``t``) starts torchvision's channel
    shuffle, ``x.view(g, C/g, H, W).transpose(0, 1).reshape(C, H, W)`` (per sample), else ``None``."""
    shape, g = list(a["shape"]), b.g
    if t.rank != 3 or b.axis_of(u) != 0 or len(shape) != 4 or shape[0] < 1 or shape[0] * shape[1] != t.shape[0] \
            or shape[2:] != list(t.shape[1:]) or any(w != 1 for _, w in b.layout[u]):
        return None
    outs = set(g.outputs)
    users = [v for v, _ in g.users_of(n)]
    if n in outs or len(users) != 1 or g.nx.nodes[users[0]]["op"] != "permute" \
            or list(g.nx.nodes[users[0]]["attrs"]["dims"]) != [1, 0, 2, 3]:
        return None
    after = [v for v, _ in g.users_of(users[0])]
    if users[0] in outs or len(after) != 1 or g.nx.nodes[after[0]]["op"] != "reshape" \
            or list(g.nx.nodes[after[0]]["attrs"]["shape"]) != list(t.shape):
        return None
    return shape[0]


def _shuffled(lay: Sequence[tuple[int, int]], groups: int) -> list[tuple[int, int]]:
    from archir.ops.core import shuffle_order

    return [lay[k] for k in shuffle_order(len(lay), groups)]


def _shuffle_rows(b: CouplingBuilder, lay: Sequence[tuple[int, int]], groups: int) -> None:
    """Make channel ``j`` of every one of the ``groups`` segments of ``lay`` one class (see ``channel_shuffle``)."""
    per = len(lay) // groups
    for j in range(per):
        for i in range(1, groups):
            b.uf.union(lay[j][0], lay[i * per + j][0])


@register("reshape")
def _reshape(b: CouplingBuilder, n, a, ins, it) -> None:
    """Opaque, except torchvision's channel shuffle ``view(g, C/g, H, W) -> transpose -> view(C, H, W)``,
    followed as ``channel_shuffle`` is: the first view holds the channels over its first two axes
    (row-major, flow ``"shuffle_split"``), the transpose reorders them (``"shuffle"``), the last view
    holds them on axis 0 again (``"shuffle_merge"``); an edit sets both views' ``shape``."""
    u = ins[0]
    groups = _shuffle_triple(b, n, a, u, it[0])
    if groups is not None:
        _shuffle_rows(b, b.layout[u], groups)
        b.carrier(n, list(b.layout[u]), flow="shuffle_split", axis=0)
        return
    if b.rules[u].op == "permute" and b.rules[u].flow == "shuffle":
        b.carrier(n, list(b.layout[u]), flow="shuffle_merge", axis=0)
        return
    b.opaque(n, f"reshape of {it[0]} to {tuple(a['shape'])}: its target shape fixes the channel count, and in "
                f"general it regroups the elements of several channels",
             "leave the channels feeding the reshape alone (flatten(start_dim=1) before a linear is followed)")


@register("channel_shuffle")
def _channel_shuffle(b: CouplingBuilder, n, a, ins, it) -> None:
    """A fixed permutation of the channels: output ``j * g + i`` is input ``i * (C / g) + j``
    (:func:`archir.ops.core.shuffle_order`), which depends on the count ``C``.

    The input is ``g`` segments of ``C / g`` channels; output row ``j`` is channel ``j`` of every
    segment. Removing the same rows ``j`` from every segment keeps ``C / g`` integral, and then the
    shuffle of the pruned input is the pruned shuffle, entry for entry (rows stay whole and in
    order). So channel ``j`` of every segment is made one class (they are pruned together, which
    keeps the per-group counts equal, as the op needs), and the output holds the input's classes
    in shuffled order. Adding channels is followed too: a copy of row ``j`` in every segment lands,
    after the shuffle of the new count, as a block of ``g`` copies right after block ``j``; the output's
    map is its input's permuted that way (:meth:`Coupling.carry`), not read off its layout."""
    if not _channels_first(b, n, ins[0], it[0], "channel_shuffle"):
        return
    lay, gr = b.layout[ins[0]], a["groups"]
    if any(w != 1 for _, w in lay) or len(lay) != it[0].shape[0]:
        b.opaque(n, f"channel_shuffle of {it[0]} whose channels archir cannot line up one per index",
                 "leave the channels feeding the shuffle alone")
        return
    _shuffle_rows(b, lay, gr)
    b.carrier(n, _shuffled(lay, gr), flow="shuffle")


@register("layernorm")
def _layernorm(b: CouplingBuilder, n, a, ins, it) -> None:
    """Over the channel axis (``axis="channels"`` of a ``(C, H, W)`` map, or ``axis="last"`` of a vector
    or of a channels-last ``(H, W, C)`` map) its affine follows the channels and its statistics mix
    them; over another axis the channels pass through (its affine is indexed by that axis)."""
    norm_axis = 0 if a["axis"] == "channels" else it[0].rank - 1
    if norm_axis == b.axis_of(ins[0]):  # normalises over the channel axis
        arrays = []
        if a["affine"]:
            arrays.append(ArrayAxis("params", "weight", 0, "out", "channel"))
            if a["bias"]:
                arrays.append(ArrayAxis("params", "bias", 0, "out", "channel"))
        if any(w != 1 for _, w in b.layout[ins[0]]):
            b.opaque(n, f"layernorm over the features of a flattened map {it[0]} mixes channels and positions",
                     "normalise (C, H, W) maps with axis='channels' before flattening")
            return
        b.carrier(n, list(b.layout[ins[0]]), arrays,
                  mixes=f"layernorm {n!r} normalises over the channels: its mean and variance run over all "
                        f"{it[0].shape[norm_axis]} of them, so a new channel (even a copy) changes every output")
    else:  # over the last axis of a (.., W) map: a spatial axis; channels (axis 0) pass through unchanged
        b.carrier(n, list(b.layout[ins[0]]))


# ---- transformer ops (param, attention)


@register("param")
def _param(b: CouplingBuilder, n, a, ins, it) -> None:
    """A learned tensor makes new channels that no pass resizes: its output is a fresh pinned class (an ``add``
    of it ties the other operand's channels to it, so those are pinned too). Its input only gives the batch
    size, so the input's channels are neither read nor pinned. Like a graph input, this is a known coupling
    (``strict`` analysis does not raise on it)."""
    t = b.g.nx.nodes[n]["type"]
    # its channel axis: the last of a token sequence (L, E) -- a class token or position embedding meets the
    # tokens' embedding channels there -- and axis 0 of a feature map, like every other fresh tensor
    axis = t.rank - 1 if t.rank == 2 else 0
    b.rules[n] = NodeRule(n, "param", "opaque", (), f"param {n!r} is a learned tensor of fixed shape {a['shape']}",
                          axis=axis)
    b.layout[n] = b.fresh(t, axis)
    b.axis[n] = axis
    b.pins.append((b.layout[n], Pin(n, "unknown", f"learned tensor {n!r} of fixed shape {a['shape']}: widen and "
                                                  f"prune do not resize it", "leave the channels it meets alone")))


@register("attention")
def _attention(b: CouplingBuilder, n, a, ins, it) -> None:
    b.opaque(n, f"attention on {it[0]} mixes every token (axis 0) through the attention weights and projects "
                f"the embedding; archir does not follow channels through it",
             "leave the tokens and embedding feeding this attention alone")


# ---- maxvit


@register("rel_attention")
def _rel_attention(b: CouplingBuilder, n, a, ins, it) -> None:
    b.opaque(n, f"rel_attention on {it[0]} mixes the tokens of each window (axis 1) through the attention weights "
                f"and projects the embedding (axis 2, split into {a['num_heads']} heads and read by its relative-"
                f"bias table per head); archir does not follow channels through it",
             "leave the windows and embedding feeding this rel_attention alone")
# ---- swin: window_attention


@register("window_attention", "window_attention_v2")
def _window_attention(b: CouplingBuilder, n, a, ins, it) -> None:
    """Opaque (its inputs and output pinned), with the output's channels on their own axis: the last of the
    channels-last ``(H, W, C)`` map (a permute after it moves them back to axis 0 for a conv)."""
    b.opaque(n, f"{b.g.nx.nodes[n]['op']} on {it[0]} mixes the tokens of each window through the attention weights and "
                f"projects the channels (qkv, heads, proj and the per-head position bias table); archir does not "
                f"follow channels through it", "leave the channels feeding this window attention alone")
    t = b.g.nx.nodes[n]["type"]
    pin = b.pins[-1]
    b.pins.pop()  # opaque pinned a layout on axis 0; the output's channels are on the last axis
    b.rules[n] = NodeRule(n, b.g.nx.nodes[n]["op"], "opaque", (), b.rules[n].reason, axis=t.rank - 1)
    b.layout[n] = b.fresh(t, t.rank - 1)
    b.axis[n] = t.rank - 1
    b.pins.append((b.layout[n], pin[1]))


@register("choice")
def _choice(b: CouplingBuilder, n, a, ins, it) -> None:
    b.opaque(n, "choice node: its channel coupling depends on the decision", "derive a plain graph first (archir.derive)")


class Coupling:
    """The result of :func:`analyze`: layouts, rules, pins and groups of one graph.

    It describes the graph as it was when analysed; analyse again after editing it.
    """

    def __init__(self, g: Graph, layouts, rules, pins, n_classes) -> None:
        self.graph_name = g.name
        self._layouts: dict[str, tuple[tuple[int, int], ...]] = layouts
        self._rules: dict[str, NodeRule] = rules
        self._pins: dict[int, tuple[Pin, ...]] = pins
        self._n_classes = n_classes
        self._order = list(layouts)  # topological
        self._inputs = {n: g.inputs_of(n) for n in self._order}
        self._occurs: dict[int, list[str]] = {}
        for n, lay in layouts.items():
            for c in dict.fromkeys(c for c, _ in lay):
                self._occurs.setdefault(c, []).append(n)
        self._read_by: dict[int, list[str]] = {}
        for n, rule in rules.items():
            if any(x.side == "in" for x in rule.arrays):
                for c in dict.fromkeys(c for c, _ in layouts[self._inputs[n][0]]):
                    self._read_by.setdefault(c, []).append(n)
        self._groups: list[Group] | None = None
        self._group_of_class: dict[int, int] = {}
        self._slice_bounds: dict[str, tuple[int, int]] = {}  # channel slice -> (start, stop) on its input
        self._views: dict[str, tuple[int, list[int]]] = {}  # a channel shuffle's views -> (groups, spatial dims)
        self._shuffle_groups: dict[str, int] = {}  # a "shuffle" carrier -> its group count
        for n, rule in rules.items():
            if rule.flow == "shuffle":
                u = self._inputs[n][0]
                self._shuffle_groups[n] = int(g.nx.nodes[n]["attrs"]["groups"]) if rule.op == "channel_shuffle" \
                    else int(g.nx.nodes[u]["attrs"]["shape"][0])
            if rule.flow == "shuffle_split":
                shape = list(g.nx.nodes[n]["attrs"]["shape"])
                self._views[n] = (shape[0], shape[2:])
                merge = g.users_of(g.users_of(n)[0][0])[0][0]
                self._views[merge] = (shape[0], list(g.nx.nodes[merge]["attrs"]["shape"])[1:])
            if rule.flow == "slice":
                _, start, stop, _ = slice_range(g.nx.nodes[n]["attrs"], g.nx.nodes[self._inputs[n][0]]["type"].shape, n)
                self._slice_bounds[n] = (start, stop)

    # ------------------------------------------------------------------ queries

    def _node(self, node: str) -> str:
        if node not in self._layouts:
            raise PassError(f"node {node!r} is not in the analysed graph {self.graph_name!r}", node=node,
                            hint="analyse the graph you are asking about (passes.coupling.analyze(g)); an analysis "
                                 "describes the graph as it was, so analyse again after editing it")
        return node

    def _cls(self, cls) -> int:
        if isinstance(cls, (bool, np.bool_)) or not isinstance(cls, (int, np.integer)) \
                or not 0 <= int(cls) < self._n_classes:
            raise PassError(f"{cls!r} is not a channel class of graph {self.graph_name!r} (it has {self._n_classes})",
                            hint="take classes from Coupling.classes(node) or Group.classes")
        return int(cls)

    @property
    def num_classes(self) -> int:
        return self._n_classes

    @property
    def order(self) -> tuple[str, ...]:
        """The node ids in the topological order of the analysis."""
        return tuple(self._order)

    def layout(self, node: str) -> tuple[tuple[int, int], ...]:
        """The ``(class, width)`` entries of ``node``'s output channel axis."""
        return self._layouts[self._node(node)]

    def channel_axis(self, node: str) -> int:
        """The per-sample axis of ``node``'s output that holds its channels (:attr:`NodeRule.axis`)."""
        return self._rules[self._node(node)].axis

    def classes(self, node: str) -> tuple[int, ...]:
        """The distinct classes of ``node``'s output, in order of first position."""
        return tuple(dict.fromkeys(c for c, _ in self._layouts[self._node(node)]))

    def rule(self, node: str) -> NodeRule:
        """How ``node`` treats channels (:class:`NodeRule`)."""
        return self._rules[self._node(node)]

    def input_of(self, node: str) -> str:
        """The port-0 input of ``node`` (whose layout indexes its ``side="in"`` arrays)."""
        ins = self._inputs[self._node(node)]
        if not ins:
            raise PassError(f"node {node!r} has no inputs", node=node, hint="ask about a node that reads a tensor")
        return ins[0]

    def pins(self, classes: int | Iterable[int]) -> tuple[Pin, ...]:
        """The pins of one class or of several (deduplicated, in order)."""
        if isinstance(classes, (int, np.integer)):
            return self._pins.get(self._cls(classes), ())
        out: list[Pin] = []
        for c in map(self._cls, classes):
            for p in self._pins.get(c, ()):
                if p not in out:
                    out.append(p)
        return tuple(out)

    def mixers(self, classes: int | Iterable[int]) -> tuple[NodeRule, ...]:
        """The carriers holding any of ``classes`` whose channels depend on each other
        (:attr:`NodeRule.mixes`: a layernorm over the channels), in topological order. A
        function-preserving edit that adds channels must refuse when this is not empty."""
        cs = {self._cls(classes)} if isinstance(classes, (int, np.integer)) else {self._cls(c) for c in classes}
        nodes = {n for c in cs for n in self._occurs.get(c, ())}
        return tuple(self._rules[n] for n in self._order if n in nodes and self._rules[n].mixes)

    def shufflers(self, classes: int | Iterable[int]) -> tuple[str, ...]:
        """The channel shuffles (flow ``"shuffle"``: the op, or the transpose of torchvision's
        view/transpose/view) holding any of ``classes``, in topological order."""
        cs = {self._cls(classes)} if isinstance(classes, (int, np.integer)) else {self._cls(c) for c in classes}
        nodes = {n for c in cs for n in self._occurs.get(c, ())}
        return tuple(n for n in self._order if n in nodes and self._rules[n].flow == "shuffle")

    def holders(self, cls: int) -> tuple[str, ...]:
        """Nodes whose output holds channels of class ``cls``, in topological order."""
        return tuple(self._occurs.get(self._cls(cls), ()))

    def readers(self, cls: int) -> tuple[str, ...]:
        """Nodes that read class ``cls`` through a ``side="in"`` array (conv/linear columns)."""
        return tuple(self._read_by.get(self._cls(cls), ()))

    def refs(self, cls: int) -> tuple[ChannelRef, ...]:
        """Every slice of class ``cls``: output positions, filters, per-channel arrays, columns."""
        out: list[ChannelRef] = []
        cls = self._cls(cls)
        for n in self._occurs.get(cls, ()):
            spans = _spans(self._layouts[n], cls)
            rule = self._rules[n]
            for s, e in spans:
                out.append(ChannelRef(n, "output", rule.axis, s, e))
            for x in rule.arrays:
                if x.side == "out":
                    out += [ChannelRef(n, x.name, x.axis, s, e, x.kind) for s, e in spans]
        for n in self._read_by.get(cls, ()):
            spans = _spans(self._layouts[self._inputs[n][0]], cls)
            for x in self._rules[n].arrays:
                if x.side == "in":
                    out += [ChannelRef(n, x.name, x.axis, s, e, x.kind) for s, e in spans]
        return tuple(out)

    # ------------------------------------------------------------------ groups

    def groups(self) -> list[Group]:
        """The dependency groups (see the module docstring), in topological order of their first producer."""
        if self._groups is not None:
            return self._groups
        uf = _UF()
        uf.make(self._n_classes)
        for n in self._order:
            if self._rules[n].kind != "carrier":
                cs = self.classes(n)
                for c in cs[1:]:
                    uf.union(cs[0], c)
        members: dict[int, list[int]] = {}
        for n in self._order:  # classes in order of first appearance (a producer's channel order)
            if self._rules[n].kind != "carrier":
                for c in self.classes(n):
                    lst = members.setdefault(uf.find(c), [])
                    if c not in lst:
                        lst.append(c)
        rank = {n: i for i, n in enumerate(self._order)}
        groups = []
        for root, classes in members.items():
            holders = sorted({n for c in classes for n in self._occurs.get(c, ())}, key=rank.__getitem__)
            prod = [n for n in holders if self._rules[n].kind != "carrier"]
            carr = [n for n in holders if self._rules[n].kind == "carrier"]
            cons = sorted({n for c in classes for n in self._read_by.get(c, ())}, key=rank.__getitem__)
            gi = len(groups)
            for c in classes:
                self._group_of_class[c] = gi
            groups.append(Group(gi, tuple(classes), tuple(prod), tuple(carr), tuple(cons), self.pins(classes), self))
        self._groups = groups
        return groups

    def group_of(self, node: str) -> Group:
        """The group holding ``node``'s output channels (its first channel's group)."""
        self.groups()
        lay = self._layouts[self._node(node)]
        if not lay:
            raise PassError(f"node {node!r} has no channels", node=node, hint="ask about a node with a channel axis")
        return self._groups[self._group_of_class[lay[0][0]]]

    # ------------------------------------------------------------------ edits

    def pin_error(self, classes: Iterable[int], what: str, *, node: str | None = None,
                  pass_name: str | None = None) -> PreconditionError:
        """The ``PreconditionError`` for an edit of ``classes`` that meets pins (what, where, how)."""
        pins = self.pins(classes)
        listing = "; ".join(str(p) for p in pins[:4]) + (f"; and {len(pins) - 4} more" if len(pins) > 4 else "")
        hints = list(dict.fromkeys(p.hint for p in pins if p.hint))
        return PreconditionError(f"cannot {what}: its channels, or channels tied to them, must keep their "
                                 f"count ({listing})", node=node or (pins[0].node if pins else None),
                                 pass_name=pass_name, hint="; ".join(hints[:2]) or _GROUP_HINT)

    def remap(self, edit: Mapping[int, Sequence[str]], *, what: str = "edit these channels",
              pass_name: str | None = None) -> dict[str, NodeRemap]:
        """Per-node index maps for an edit of channel classes (see the module docstring).

        Args:
            edit: class -> the tags that replace each occurrence of it (``"keep"``, ``"copy"``,
                ``"new"``; ``()`` removes it). Classes not in ``edit`` are kept.
            what: the action, for error messages.
            pass_name: the pass, for error messages.

        Returns:
            ``{node: NodeRemap}`` in topological order, for every node whose output or
            ``side="in"`` input changes.

        Raises:
            PreconditionError: an edited class is pinned, or a node would be left with no channels.
        """
        edit = {int(c): tuple(v) for c, v in edit.items() if tuple(v) != ("keep",)}
        for c, tags in edit.items():
            bad = [t for t in tags if t not in EDIT_TAGS]
            self._cls(c)
            if bad:
                raise PassError(f"bad edit of channel class {c}: tags {bad} are not among {EDIT_TAGS}",
                                pass_name=pass_name, hint="an edit maps a class to a tuple of 'keep'/'copy'/'new' "
                                                          "(() removes it)")
        if any(c in self._pins for c in edit):
            raise self.pin_error([c for c in edit if c in self._pins], what, pass_name=pass_name)
        outs: set[str] = set()
        for c in edit:
            outs.update(self._occurs.get(c, ()))
        # every map is propagated in topological order: a source's from its layout (a copy or new channel
        # right after every occurrence of its class), every other node's from its inputs' maps by its flow
        # (Coupling.carry), so each describes what the edited graph really computes there
        maps: dict[str, PositionMap] = {}
        result: dict[str, NodeRemap] = {}
        for n in self._order:
            rule = self._rules[n]
            in_maps = [maps.get(u) for u in self._inputs[n]]
            out, attrs = None, {}
            if rule.kind == "source":
                if n in outs:
                    out = _posmap(self._layouts[n], edit)
            elif rule.kind == "carrier":
                if any(m is not None for m in in_maps):
                    out, attrs = self.carry(n, in_maps, what=what, pass_name=pass_name)
            elif n in outs:  # an input or opaque node holding an edited class: pinned, refused above
                raise AssertionError(f"remap: pinned node {n!r} holds an edited class")
            inp = in_maps[0] if any(x.side == "in" for x in rule.arrays) else None
            if out is None and inp is None and not attrs:
                continue
            if (out is not None and out.entries == 0) or (inp is not None and inp.entries == 0):
                raise PreconditionError(f"the edit would leave node {n!r} with no channels", node=n,
                                        pass_name=pass_name, hint="keep at least one channel per tensor")
            if out is not None:
                maps[n] = out
                attrs.update(dict.fromkeys(rule.count_attrs, out.entries))
                if n in self._views:  # a channel shuffle's view: its shape follows the count
                    groups = self._views[n][0]
                    if out.entries % groups:
                        raise PreconditionError(
                            f"the edit would leave {out.entries} channels at channel shuffle {n!r}, not a multiple "
                            f"of its {groups} groups", node=n, pass_name=pass_name,
                            hint="remove whole rows of the shuffle's groups (one class each)")
                    attrs["shape"] = self.view_shape(n, out.entries)
            result[n] = NodeRemap(n, out, inp, attrs)
        return result

    def view_shape(self, n: str, entries: int) -> list[int]:
        """The ``shape`` of view ``n`` of a torchvision channel shuffle holding ``entries`` channels."""
        groups, rest = self._views[n]
        return [groups, entries // groups, *rest] if self._rules[n].flow == "shuffle_split" else [entries, *rest]

    def identity_map(self, node: str) -> PositionMap:
        """The map of ``node``'s output channel axis when nothing changes (every position kept, once)."""
        lay = self._layouts[self._node(node)]
        p = sum(w for _, w in lay)
        return PositionMap(np.arange(p, dtype=np.int64), np.full(p, "keep", dtype=object),
                           np.ones(p, dtype=np.int64), len(lay))

    def carry(self, node: str, in_maps: Sequence[PositionMap | None], *, what: str = "edit these channels",
              pass_name: str | None = None) -> tuple[PositionMap | None, dict]:
        """The map of carrier ``node``'s output, given its inputs' maps (``None``: that input is unchanged).

        Each flow says what the op computes from its inputs' new channels: ``"pass"`` (and the views of a
        shuffle) keeps port 0's map; ``"tie"`` needs every operand mapped alike (an ``add`` combines
        positions); ``"concat"`` lays the inputs' maps end to end; ``"flatten"`` widens each entry to its
        ``H*W`` features; ``"slice"`` keeps the positions derived from its old range (which must still be
        one range: a channel derived from outside it may sit inside only if it is new) and gives the new
        ``start``/``end``; ``"shuffle"`` permutes its input's new channels by the shuffle of the *new*
        count: output ``q`` is new input ``shuffle_order(C', g)[q]``, which derives from the old input
        position ``in.src[...]``, which the old shuffle put at old output ``shuffle_order(C, g)^-1[...]``.

        Returns:
            ``(map, attrs)``: the output's map (``None`` when it is unchanged) and attributes to set
            (a slice's ``start``/``end``).

        Raises:
            PreconditionError: the operands of a tie would be mapped differently (one comes through a
                channel shuffle, say), a slice's range would no longer be one range, or a shuffle would
                get a channel count that is not a multiple of its groups.
        """
        rule = self._rules[self._node(node)]
        flow = rule.flow
        ins = self._inputs[node]
        if all(m is None for m in in_maps):
            return None, {}
        if flow in ("pass", "shuffle_split", "shuffle_merge"):
            return in_maps[0], {}
        if flow == "tie":
            first = in_maps[0]
            for u, m in zip(ins[1:], in_maps[1:]):
                if first is None or m is None or not _same_map(first, m):
                    other = u if first is not None else ins[0]
                    raise PreconditionError(
                        f"cannot {what}: {rule.op} {node!r} combines {ins[0]!r} and {u!r} position by position, but "
                        f"after the edit their channels would not line up ({other!r} "
                        f"{'is unchanged' if first is None or m is None else 'is reordered differently, e.g. by a channel shuffle'})",
                        node=node, pass_name=pass_name,
                        hint="edit channels that reach the operands the same way (not through a channel shuffle on "
                             "one side only)")
            return first, {}
        if flow == "concat":
            parts = [m if m is not None else self.identity_map(u) for u, m in zip(ins, in_maps)]
            offs = np.cumsum([0] + [sum(w for _, w in self._layouts[u]) for u in ins])[:-1]
            return PositionMap(np.concatenate([m.src + o for m, o in zip(parts, offs)]),
                               np.concatenate([m.tag for m in parts]), np.concatenate([m.share for m in parts]),
                               sum(m.entries for m in parts)), {}
        m = in_maps[0]
        if m is None:  # a single-input flow whose input is unchanged
            return None, {}
        if flow == "flatten":
            hw = sum(w for _, w in self._layouts[node]) // max(1, sum(w for _, w in self._layouts[ins[0]]))
            feat = np.arange(hw, dtype=np.int64)
            return PositionMap((m.src[:, None] * hw + feat).ravel(), np.repeat(m.tag, hw), np.repeat(m.share, hw),
                               m.entries), {}
        if flow == "slice":
            return self._carry_slice(node, m, what, pass_name)
        if flow == "shuffle":
            from archir.ops.core import shuffle_order

            groups = self._shuffle_groups[node]
            c_old, c_new = sum(w for _, w in self._layouts[ins[0]]), m.positions
            if c_new % groups:
                raise PreconditionError(
                    f"cannot {what}: channel shuffle {node!r} would get {c_new} channels, not a multiple of its "
                    f"{groups} groups", node=node, pass_name=pass_name,
                    hint=f"add channels in multiples of {groups} (widen adds one to every group per class)")
            inv_old = np.argsort(np.asarray(shuffle_order(c_old, groups), dtype=np.int64))
            order_new = np.asarray(shuffle_order(c_new, groups), dtype=np.int64)
            return PositionMap(inv_old[m.src[order_new]], m.tag[order_new], m.share[order_new], m.entries), {}
        raise AssertionError(f"carry: flow {flow!r} of {node!r} is not handled")

    def _carry_slice(self, n: str, m: PositionMap, what: str, pass_name: str | None) -> tuple[PositionMap | None, dict]:
        """A channel slice ``start:stop`` of an input mapped by ``m``: the new positions derived from the old
        range (a new channel counts by its anchor) must be one range, with nothing but new channels from
        elsewhere inside it (a concat skip's channels after a shuffle, say)."""
        start, stop = self._slice_bounds[n]
        inr = (m.src >= start) & (m.src < stop)
        idx = np.flatnonzero(inr)
        if idx.size == 0:
            raise PreconditionError(f"the edit would leave node {n!r} with no channels", node=n,
                                    pass_name=pass_name, hint="keep at least one channel per tensor")
        a, b = int(idx[0]), int(idx[-1]) + 1
        foreign = ~inr[a:b]
        if (foreign & (m.tag[a:b] != "new")).any():
            q = a + int(np.flatnonzero(foreign & (m.tag[a:b] != "new"))[0])
            raise PreconditionError(
                f"cannot {what}: channel slice {n!r} ({start}:{stop} of {self._inputs[n][0]!r}) would no longer "
                f"hold its channels as one range: old channel {int(m.src[q])} (outside it) would land at new "
                f"position {q}, between channels it holds (a channel shuffle's group row straddles the slice's "
                f"bound)", node=n, pass_name=pass_name,
                hint="edit channels whose shuffle rows the slice holds whole, or slice at a multiple of the "
                     "shuffle's groups")
        src = np.clip(m.src[a:b] - start, 0, stop - start - 1)  # a new channel from elsewhere: any index (shape only)
        share = np.where(foreign, 1, m.share[a:b])
        out = PositionMap(src.astype(np.int64), m.tag[a:b], share.astype(np.int64), b - a)
        attrs = {} if (a, b) == (start, stop) else {"start": a, "end": b}
        if out.positions == stop - start and (out.tag == "keep").all() and (out.src == np.arange(stop - start)).all():
            out = None
        return out, attrs

    def apply(self, g: Graph, remaps: Mapping[str, NodeRemap],
              adjust: Callable[[NodeRule, ArrayAxis, PositionMap, np.ndarray, np.ndarray], np.ndarray] | None = None
              ) -> Graph:
        """A validated copy of ``g`` with ``remaps`` (from :meth:`remap`) carried out.

        Every array a remapped node's rule names is gathered along its channel axis
        (``np.take(arr, pm.src, axis)``); ``adjust(rule, axis, posmap, before, gathered)``, when
        given, returns the array to store instead (``widen`` rescales copies and fills new
        channels there). Attributes are set last, and every remapped node's type is re-inferred in
        topological order, so each sees its already remapped inputs.
        """
        out = g.copy()
        for n, rm in remaps.items():
            rule = self._rules[n]
            d = out.nx.nodes[n]
            new_arrays: dict[str, dict[str, np.ndarray]] = {"params": {}, "buffers": {}}
            for ax in rule.arrays:
                pm = rm.out if ax.side == "out" else rm.inp
                if pm is None:
                    continue
                arr = new_arrays[ax.kind].get(ax.name, d[ax.kind][ax.name])
                new = np.take(arr, pm.src, axis=ax.axis)
                if adjust is not None:
                    new = adjust(rule, ax, pm, arr, new)
                new_arrays[ax.kind][ax.name] = np.ascontiguousarray(new, dtype=np.float32)
            if new_arrays["params"]:
                out.set_params(n, **new_arrays["params"])
            if new_arrays["buffers"]:
                out.set_buffers(n, **new_arrays["buffers"])
            out.set_attrs(n, **rm.attrs)  # also re-infers the type (a reshape's check needs its input's new one)
        return out.validate()


def _same_map(a: PositionMap, b: PositionMap) -> bool:
    return a.entries == b.entries and np.array_equal(a.src, b.src) and np.array_equal(a.tag, b.tag)


def _spans(layout: Sequence[tuple[int, int]], cls: int) -> list[tuple[int, int]]:
    out, s = [], 0
    for c, w in layout:
        if c == cls:
            out.append((s, s + w))
        s += w
    return out


def _posmap(layout: Sequence[tuple[int, int]], edit: Mapping[int, tuple[str, ...]]) -> PositionMap:
    src: list[int] = []
    tag: list[str] = []
    share: list[int] = []
    entries = 0
    s = 0
    for c, w in layout:
        tags = edit.get(c, ("keep",))
        k = sum(t != "new" for t in tags)
        for t in tags:
            src.extend(range(s, s + w))
            tag.extend([t] * w)
            share.extend([k] * w)
            entries += 1
        s += w
    return PositionMap(np.asarray(src, dtype=np.int64), np.asarray(tag, dtype=object),
                       np.asarray(share, dtype=np.int64), entries)


def analyze(g: Graph, *, strict: bool = False) -> Coupling:
    """Analyse how the channels of ``g`` are coupled (see the module docstring).

    Args:
        g: a graph whose shapes are inferred (any valid graph; the graph is not changed).
        strict: raise at the first op whose coupling is unknown instead of pinning its channels.

    Returns:
        A :class:`Coupling`.

    Raises:
        PreconditionError: (``strict=True``) an op couples channels in a way archir does not
            model; the error names the node, the reason and how to fix it. Also when a node
            has no inferred type.

    Example:
        >>> import archir.samples as S
        >>> cp = analyze(S.chain())
        >>> cp.rule("l0.bn").kind, len(cp.layout("l0.bn"))
        ('carrier', 8)
    """
    for n, d in g.nx.nodes(data=True):
        if d.get("type") is None:  # analysing must not edit the graph, so ask rather than infer
            raise PreconditionError("node has no inferred type; channel coupling needs shapes", node=n,
                                    hint="call g.infer_shapes() (or g.validate()) first")
    b = CouplingBuilder(g, strict)
    for n in g.topo_order():
        b.visit(n)
    return b.finish()


def dependency_groups(g: Graph, *, strict: bool = False) -> list[Group]:
    """The channel-dependency groups of ``g``: channels that must be pruned (or widened) together.

    Each :class:`Group` lists its independent channels (``classes``), its producers, carriers and
    consumers, and its pins (a pinned group must not change: graph input/output channels, or
    channels meeting an op whose coupling is unknown). ``group.channel_refs(i)`` gives the
    ``(node, array, axis, start, stop)`` slices of channel ``i``; ``Coupling.remap`` turns a
    removal into per-node index maps.

    Args:
        g: the graph.
        strict: raise ``PreconditionError`` on unknown coupling instead of pinning.

    Example:
        >>> import archir.samples as S
        >>> [grp.producers for grp in dependency_groups(S.chain()) if grp.free]
        [('l0.conv',), ('l1.conv',)]
    """
    return analyze(g, strict=strict).groups()
