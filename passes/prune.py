"""Structured channel pruning over channel-dependency groups: ``prune_channels``.

What is removed
---------------
The unit of pruning is a *dependency group* (:func:`passes.coupling.dependency_groups`): the
channels that convs/linears produce together with every channel tied to them through ``add`` /
``mul`` (residual streams, squeeze-excite gates), laid out by ``concat``, or carried by BN,
``scale``, activations, pools, depthwise convs, layernorms, ``permute`` (channels-last blocks:
a ``linear`` over the channels is a 1x1 conv), channel slices, channel shuffles (whole rows of
their groups go together, so the per-group counts stay equal) and ``flatten -> linear``. A group has ``size``
independent channels (its *classes*). Removing channel ``i`` of a group removes, at once:

- row ``i`` of every producer's weight (and bias): the filters of each conv/linear tied in;
- entry ``i`` of every carrier's per-channel arrays: BN weight/bias/running stats, ``scale``
  weight, a depthwise conv's filter (its ``groups`` follows its channel count);
- the column(s) reading channel ``i`` in every consumer conv/linear, at every offset where a
  ``concat`` lays the channel (a ``flatten -> linear`` consumer loses ``H*W`` columns).

So the pruned graph is valid by construction (every tie stays consistent), and it really is
smaller: every conv, BN and linear that touched the channel gets narrower. Channels that reach
a graph input or output, or meet an op whose coupling archir does not model (a grouped conv
that is not depthwise, a ``choice`` ...), are *pinned*: such a group is skipped (and listed in
the report with the reason) or, when named explicitly, refused with a ``PreconditionError``.
Grouped convs therefore keep legal group sizes: their channels are never touched; depthwise
convs shrink with their input (``groups == in == out`` after pruning too).

Importance (summed over the whole group, so tied producers decide together)
---------------------------------------------------------------------------
- ``"l1"``: ``sum |w|`` over every conv/linear weight slice of the channel: producers' filter
  rows, depthwise filters and consumers' input columns (Torch-Pruning's group magnitude);
- ``"l2"``: ``sqrt(sum w^2)`` over the same slices;
- ``"bn_gamma"``: ``sum |gamma|`` over the group's affine BatchNorms (network slimming); a
  group without an affine BN has no such importance (skipped, or refused when named);
- ``"random"``: uniform draws from ``numpy.random.default_rng(seed)``.

The least important channels go first (ties: the lower index is removed first). At least one
channel stays in every group and in every node holding the group's channels (so a ``concat``
input never vanishes).

Function
--------
Pruning changes the function in general; the report measures by how much: the output
deviation against the unpruned graph with ``check_preserved``'s machinery (eval mode, seeded
inputs). It is exact in two cases the tests build: ``ratio=0`` (nothing removed) and channels
that contribute nothing (all consumer columns zero, or zero BN gamma and beta before a relu:
their values downstream are exactly zero).

API
---
``prune_channels(g, ...)`` returns ``PruneResult(graph, report)``, a named tuple
(``small, report = prune_channels(g, ratio=0.5)``), like Torch-Pruning's prune-then-count.
For a :class:`~passes.manager.PassManager` pipeline, :func:`prune_channels_pass` is the same
rewrite as a ``@graph_pass(preserves="shape")`` that returns the graph only.

The report holds parameter counts from the graph (``Graph.num_params``). ``passes`` does not
import ``costmodels`` (DESIGN.md), so MACs come from a cost function the caller passes:
``prune_channels(g, ratio=0.5, cost=costmodels.count)`` (any callable ``g -> obj`` with
``.macs`` and ``.params``) fills ``macs_before``/``macs_after``.

Example:
    >>> import archir.samples as S
    >>> small, report = prune_channels(S.resnet_like(), ratio=0.5, criterion="l1")
    >>> small.node("b1.a.conv").attrs["out_channels"], report.params_after < report.params_before
    (4, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from archir import Graph
from archir.ops import get_op

from passes.check import PreservationReport, check_preserved
from passes.coupling import Coupling, Group, analyze
from passes.infra import PreconditionError, graph_pass

__all__ = ["prune_channels", "prune_channels_pass", "prunable_groups", "PruneResult", "PruneReport", "GroupPrune",
           "SkippedGroup", "CRITERIA"]

CRITERIA = ("l1", "l2", "bn_gamma", "random")

_PNAME = "prune_channels"


@dataclass(frozen=True)
class GroupPrune:
    """What ``prune_channels`` did to one dependency group.

    Attributes:
        group: the group's index in ``dependency_groups(g)`` of the *input* graph.
        producers: the nodes producing the group's channels (conv/linear sources).
        before: channels (independent classes) before pruning.
        after: channels after.
        removed: the removed channels, as positions in the group's channel order (the first
            producer's filter order), ascending.
        importance: the importance of every channel before pruning (in the same order).
    """

    group: int
    producers: tuple[str, ...]
    before: int
    after: int
    removed: tuple[int, ...]
    importance: tuple[float, ...] = field(repr=False, default=())

    @property
    def num_removed(self) -> int:
        return self.before - self.after


@dataclass(frozen=True)
class SkippedGroup:
    """A group that ``prune_channels`` left alone, and why (pinned, one channel, no BN gamma)."""

    group: int
    producers: tuple[str, ...]
    reason: str


@dataclass
class PruneReport:
    """The report of :func:`prune_channels`.

    Attributes:
        criterion, ratio, keep, seed: the call's settings.
        groups: one :class:`GroupPrune` per pruned group, in topological order.
        skipped: the groups left alone, with the reason.
        params_before, params_after: trainable parameters (``Graph.num_params``).
        macs_before, macs_after: MACs from the ``cost`` function (``None`` without one).
        deviation: the output deviation of the pruned graph against the input
            (:class:`~passes.check.PreservationReport`, eval mode; ``None`` when not measured).
        latency_before_ms, latency_after_ms, latency_backend: measured latency of one forward
            pass before and after, and where (``None`` unless the caller measured it: passes do
            not run backends; ``archir prune`` fills them with ``costmodels.measure``).
        speedup: ``latency_before_ms / latency_after_ms`` as measured (the median of paired
            rounds when the caller measured several); ``None`` when not measured.
    """

    criterion: str
    ratio: float | None
    keep: Any
    seed: int
    groups: list[GroupPrune]
    skipped: list[SkippedGroup]
    params_before: int
    params_after: int
    macs_before: int | None = None
    macs_after: int | None = None
    deviation: PreservationReport | None = None
    latency_before_ms: float | None = None
    latency_after_ms: float | None = None
    latency_backend: str | None = None
    speedup: float | None = None

    @property
    def channels_removed(self) -> int:
        """Channels removed over all groups."""
        return sum(gp.num_removed for gp in self.groups)

    @property
    def max_abs_deviation(self) -> float | None:
        return None if self.deviation is None else self.deviation.max_abs

    def to_dict(self) -> dict:
        """JSON-ready summary (no arrays)."""
        return {
            "criterion": self.criterion, "ratio": self.ratio, "keep": self.keep, "seed": self.seed,
            "groups": [{"group": gp.group, "producers": list(gp.producers), "before": gp.before, "after": gp.after,
                        "removed": list(gp.removed)} for gp in self.groups],
            "skipped": [{"group": s.group, "producers": list(s.producers), "reason": s.reason} for s in self.skipped],
            "params_before": self.params_before, "params_after": self.params_after,
            "macs_before": self.macs_before, "macs_after": self.macs_after,
            "max_abs_deviation": self.max_abs_deviation,
            "max_rel_deviation": None if self.deviation is None else self.deviation.max_rel,
            "latency_backend": self.latency_backend, "latency_before_ms": self.latency_before_ms,
            "latency_after_ms": self.latency_after_ms, "speedup": self.speedup,
        }

    def __str__(self) -> str:
        how = f"ratio={self.ratio:g}" if self.ratio is not None else f"keep={self.keep}"
        lines = [f"prune_channels ({how}, criterion={self.criterion}, seed={self.seed}): "
                 f"{self.channels_removed} channels removed in {sum(gp.num_removed > 0 for gp in self.groups)} "
                 f"of {len(self.groups)} groups ({len(self.skipped)} skipped)"]
        rows = [("group", "producers", "channels", "removed")]
        for gp in self.groups:
            prod = ", ".join(gp.producers[:3]) + (f" +{len(gp.producers) - 3}" if len(gp.producers) > 3 else "")
            rows.append((str(gp.group), prod, f"{gp.before} -> {gp.after}", str(gp.num_removed)))
        if len(rows) > 1:
            w = [max(len(r[i]) for r in rows) for i in range(4)]
            lines += ["  " + "  ".join(c.ljust(w[i]) if i < 2 else c.rjust(w[i]) for i, c in enumerate(r))
                      for r in rows]
        for s in self.skipped:
            lines.append(f"  skipped group {s.group} ({', '.join(s.producers[:3])}): {s.reason}")

        def delta(a: int, b: int) -> str:
            return f"{a:,} -> {b:,} ({(b / a if a else 1.0):.1%})"

        lines.append(f"params: {delta(self.params_before, self.params_after)}")
        if self.macs_before is not None:
            lines.append(f"MACs:   {delta(self.macs_before, self.macs_after)}")
        if self.deviation is not None:
            d = self.deviation
            lines.append(f"output deviation (eval mode, n={d.n}, seed={d.seed}): max abs {d.max_abs:.3g}, "
                         f"max rel {d.max_rel:.3g}")
        if self.speedup is not None:
            lines.append(f"latency ({self.latency_backend}, measured): {self.latency_before_ms:.3g} ms -> "
                         f"{self.latency_after_ms:.3g} ms ({self.speedup:.2f}x "
                         f"{'faster' if self.speedup >= 1 else 'slower'})")
        return "\n".join(lines)


class PruneResult(NamedTuple):
    """``(graph, report)`` of :func:`prune_channels`."""

    graph: Graph
    report: PruneReport


def prunable_groups(g: Graph) -> list[dict]:
    """The groups ``prune_channels`` can prune: free (unpinned) and with at least two channels.

    Returns:
        One dict per group, in topological order: ``{"group": index, "producers": [...],
        "channels": size}``; ``groups=[index or producer id]`` selects them.

    Example:
        >>> import archir.samples as S
        >>> [t["producers"] for t in prunable_groups(S.chain())]
        [['l0.conv'], ['l1.conv']]
    """
    return [{"group": grp.index, "producers": list(grp.producers), "channels": grp.size}
            for grp in analyze(g).groups() if grp.free and grp.size >= 2]


# --------------------------------------------------------------------------- checks


def _check_args(g: Graph, ratio: Any, keep: Any, criterion: Any, seed: Any, round_to: Any) -> None:
    if criterion not in CRITERIA:
        raise PreconditionError(f"unknown criterion {criterion!r}", hint=f"use one of {list(CRITERIA)}")
    if (ratio is None) == (keep is None):
        raise PreconditionError("pass exactly one of ratio= (the fraction of each group's channels to remove) "
                                "and keep= (the channels to keep per group)",
                                hint="e.g. prune_channels(g, ratio=0.5) or prune_channels(g, keep=8)")
    if ratio is not None:
        if isinstance(ratio, (bool, np.bool_)) or not isinstance(ratio, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(ratio)) or not 0.0 <= float(ratio) < 1.0:
            raise PreconditionError(f"ratio must be a number in [0, 1), got {ratio!r}",
                                    hint="ratio is the fraction of each group's channels to remove, e.g. 0.5 "
                                         "(at least one channel always stays)")
    if keep is not None:
        items = keep.items() if isinstance(keep, Mapping) else [(None, keep)]
        for k, v in items:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
                where = f" for {k!r}" if k is not None else ""
                raise PreconditionError(f"keep{where} must be an int >= 1, got {v!r}",
                                        hint="keep is the number of channels to keep per group, e.g. keep=8")
    if round_to is not None and (isinstance(round_to, (bool, np.bool_)) or not isinstance(round_to, (int, np.integer))
                                 or round_to < 1):
        raise PreconditionError(f"round_to must be an int >= 1 or None, got {round_to!r}",
                                hint="e.g. round_to=8 keeps channel counts multiples of 8 (what SIMD kernels like)")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise PreconditionError(f"seed must be an int, got {seed!r}", hint="pass seed=0 (or any int)")
    choice = [n.id for n in g.nodes("choice")]
    if choice:
        raise PreconditionError(f"graph {g.name!r} is a supernet (choice nodes {choice[:3]}); channel pruning "
                                f"applies to plain graphs", node=choice[0],
                                hint="derive a plain graph first (archir.derive)")


def _resolve(cp: Coupling, sel: Any) -> Group:
    """The group named by ``sel``: a group index, or the id of any node holding its channels."""
    all_groups = cp.groups()
    if isinstance(sel, (int, np.integer)) and not isinstance(sel, (bool, np.bool_)):
        if not 0 <= int(sel) < len(all_groups):
            raise PreconditionError(f"no group {sel!r}: the graph has groups 0..{len(all_groups) - 1}",
                                    hint="list them with passes.prunable_groups(g)")
        return all_groups[int(sel)]
    if isinstance(sel, str):
        if sel not in cp.order:
            legal = [p for t in _free(all_groups) for p in t.producers][:6]
            raise PreconditionError(f"no node {sel!r} in graph {cp.graph_name!r}",
                                    hint=f"name a producer of a prunable group, e.g. {legal} "
                                         f"(see passes.prunable_groups(g))")
        if not cp.layout(sel):
            raise PreconditionError("node has no channels to prune", node=sel,
                                    hint="name a conv2d/linear (see passes.prunable_groups(g))")
        return cp.group_of(sel)
    raise PreconditionError(f"groups must hold group indices or node ids, got {sel!r}",
                            hint="e.g. groups=['b1.a.conv'] or groups=[3] (see passes.prunable_groups(g))")


def _select(cp: Coupling, groups: Any, keep: Any) -> tuple[list[Group], bool, dict[int, int] | None]:
    """The groups to consider, whether they were named explicitly, and a per-group keep (mapping keep)."""
    per_group = None
    if isinstance(keep, Mapping):
        per_group = {}
        for k, v in keep.items():
            per_group[_resolve(cp, k).index] = int(v)
        if groups is None:
            groups = list(keep)
    if groups is None:
        return cp.groups(), False, per_group
    if isinstance(groups, (str, int, np.integer)):
        groups = [groups]
    chosen: list[Group] = []
    for sel in groups:
        grp = _resolve(cp, sel)
        if grp not in chosen:
            chosen.append(grp)
    return chosen, True, per_group


def _free(groups: Iterable[Group]) -> list[Group]:
    return [grp for grp in groups if grp.free and grp.size >= 2]


# --------------------------------------------------------------------------- importance


def _importance(g: Graph, cp: Coupling, grp: Group, criterion: str, rng: np.random.Generator) -> np.ndarray | None:
    """Per channel of ``grp``: the criterion summed over every weight slice of the channel in the group.

    The same sum as over ``grp.channel_refs(i)``, computed per array: each weight is reduced to one
    value per position of its channel axis, then positions are summed into their classes.
    """
    if criterion == "random":
        return rng.random(grp.size)
    nxg = g.nx
    scored = ("norm",) if criterion == "bn_gamma" else ("conv", "linear")  # OpTraits.category
    index = {cls: i for i, cls in enumerate(grp.classes)}
    out = np.zeros(grp.size, np.float64)
    found = False
    for n in dict.fromkeys((*grp.producers, *grp.carriers, *grp.consumers)):
        d = nxg.nodes[n]
        if get_op(d["op"], n).traits.category not in scored:
            continue
        for ax in cp.rule(n).arrays:
            if ax.kind != "params" or ax.name != "weight":
                continue
            w = np.asarray(d["params"]["weight"], np.float64)
            w = np.square(w) if criterion == "l2" else np.abs(w)
            per_pos = w.sum(axis=tuple(k for k in range(w.ndim) if k != ax.axis))
            layout = cp.layout(n) if ax.side == "out" else cp.layout(cp.input_of(n))
            pos = 0
            for cls, width in layout:
                i = index.get(cls)
                if i is not None:
                    out[i] += float(per_pos[pos:pos + width].sum())
                    found = True
                pos += width
    if not found:
        return None
    return np.sqrt(out) if criterion == "l2" else out


def _n_keep(size: int, ratio: float | None, keep: Any, grp: Group, per_group: dict[int, int] | None,
            round_to: int | None) -> int:
    if ratio is not None:
        # floor, with a guard against 8 * (1 - 0.7) = 2.3999999999999995
        n = max(1, int(math.floor(size * (1.0 - float(ratio)) + 1e-9)))
    elif per_group is not None:
        n = min(size, per_group.get(grp.index, size))
    else:
        n = min(size, int(keep))
    if round_to and n < size:
        n = min(size, -(-n // round_to) * round_to)  # up to a multiple: fast kernels like aligned channel counts
    return n


def _choose(cp: Coupling, grp: Group, imp: np.ndarray, n_remove: int) -> list[int]:
    """Positions of the ``n_remove`` least important channels, keeping a channel in every holder."""
    left: dict[str, int] = {}
    for cls in grp.classes:
        for n in cp.holders(cls):
            if n not in left:
                left[n] = len(cp.classes(n))
    removed: list[int] = []
    for i in np.argsort(imp, kind="stable"):
        if len(removed) == n_remove:
            break
        hs = cp.holders(grp.classes[int(i)])
        if all(left[n] > 1 for n in hs):
            for n in hs:
                left[n] -= 1
            removed.append(int(i))
    return sorted(removed)


# --------------------------------------------------------------------------- the rewrite


def _apply(g: Graph, cp: Coupling, edit: dict[int, tuple]) -> Graph:
    if not edit:
        return g.copy()
    return cp.apply(g, cp.remap(edit, what="prune these channels", pass_name=_PNAME))


def _cost(cost: Callable, g: Graph) -> int:
    c = cost(g)
    macs = getattr(c, "macs", None)
    if macs is None:
        raise PreconditionError(f"cost={getattr(cost, '__name__', cost)!r} returned a {type(c).__name__} without .macs",
                                hint="pass cost=costmodels.count (any callable g -> object with .macs and .params)")
    return int(macs)


def _prune(g: Graph, ratio: float | None, keep: Any, criterion: str, groups: Any, seed: int,
           cost: Callable | None, deviation: bool, report_box: list | None, round_to: int | None = None) -> Graph:
    _check_args(g, ratio, keep, criterion, seed, round_to)
    if cost is not None and not callable(cost):
        raise PreconditionError(f"cost must be callable (g -> object with .macs), got {cost!r}",
                                hint="pass cost=costmodels.count")
    cp = analyze(g)
    chosen, named, per_group = _select(cp, groups, keep)
    rng = np.random.default_rng(int(seed))
    edit: dict[int, tuple] = {}
    done: list[GroupPrune] = []
    skipped: list[SkippedGroup] = []
    for grp in chosen:
        if grp.pins:
            if named:
                grp.require_free(f"prune group {grp.index} (producers {list(grp.producers)})", pass_name=_PNAME)
            skipped.append(SkippedGroup(grp.index, grp.producers, "; ".join(str(p) for p in grp.pins[:2])))
            continue
        if grp.size < 2:
            if named and (ratio is None or ratio > 0):
                raise PreconditionError(f"group {grp.index} (producers {list(grp.producers)}) has a single channel",
                                        node=grp.producers[0] if grp.producers else None,
                                        hint="a tensor keeps at least one channel; prune another group")
            skipped.append(SkippedGroup(grp.index, grp.producers, "a single channel"))
            continue
        imp = _importance(g, cp, grp, criterion, rng)
        if imp is None:
            reason = "no affine batchnorm2d holds these channels (bn_gamma needs one)"
            if named:
                raise PreconditionError(f"group {grp.index} (producers {list(grp.producers)}): {reason}",
                                        node=grp.producers[0] if grp.producers else None,
                                        hint="use criterion='l1' for this group, or insert a BN (passes.insert_bn)")
            skipped.append(SkippedGroup(grp.index, grp.producers, reason))
            continue
        n_keep = _n_keep(grp.size, ratio, keep, grp, per_group, round_to)
        removed = _choose(cp, grp, imp, grp.size - n_keep)
        for i in removed:
            edit[grp.classes[i]] = ()
        done.append(GroupPrune(grp.index, grp.producers, grp.size, grp.size - len(removed), tuple(removed),
                               tuple(float(v) for v in imp)))
    out = _apply(g, cp, edit)
    if report_box is not None:
        report = PruneReport(criterion, None if ratio is None else float(ratio),
                             dict(keep) if isinstance(keep, Mapping) else keep, int(seed), done, skipped,
                             g.num_params(), out.num_params())
        if cost is not None:
            report.macs_before, report.macs_after = _cost(cost, g), _cost(cost, out)
        if deviation:
            report.deviation = check_preserved(g, out, raise_on_failure=False)
        report_box.append(report)
    return out


@graph_pass(preserves="shape", name=_PNAME)
def _prune_pass(g: Graph, ratio: float | None = None, keep: Any = None, criterion: str = "l1", groups: Any = None,
                seed: int = 0, cost: Callable | None = None, deviation: bool = True, round_to: int | None = None,
                _report_box: list | None = None) -> Graph:
    return _prune(g, ratio, keep, criterion, groups, seed, cost, deviation, _report_box, round_to)


def prune_channels(g: Graph, *, ratio: float | None = None, keep: int | Mapping[Any, int] | None = None,
                   criterion: str = "l1", groups: Sequence[str | int] | str | int | None = None, seed: int = 0,
                   cost: Callable[[Graph], Any] | None = None, deviation: bool = True,
                   round_to: int | None = None) -> PruneResult:
    """Remove the least important channels of each dependency group; return the graph and a report.

    The graph is not changed. The method (what is removed together, the criteria, what is
    skipped) is in the module docstring.

    Args:
        g: a plain, valid graph with weights.
        ratio: the fraction of each group's channels to remove, in ``[0, 1)``; the group keeps
            ``max(1, floor(size * (1 - ratio)))`` channels. Exactly one of ``ratio``/``keep``.
        keep: channels to keep per group: an int (groups smaller than it are left as they are),
            or a mapping from a group (index, or id of a node holding its channels) to an int
            (then only those groups are pruned unless ``groups`` says otherwise).
        criterion: ``"l1"``, ``"l2"``, ``"bn_gamma"`` or ``"random"`` (see the module docstring).
        groups: the groups to prune (producer/member node ids or group indices of
            ``dependency_groups(g)``); ``None`` prunes every free group with two or more channels
            and lists the others in ``report.skipped``.
        seed: seeds ``"random"`` (every random decision takes it).
        cost: ``g -> object with .macs`` (e.g. ``costmodels.count``) to report MACs before/after.
        deviation: measure the output deviation against ``g`` (``check_preserved``, eval mode,
            4 seeded samples) into ``report.deviation``.
        round_to: round each group's kept channel count up to a multiple of this (never above
            its size), as Torch-Pruning's ``round_to``: SIMD/tensor-core kernels run aligned
            channel counts faster (``benchmarks/pruning.py --round-to 8`` shows it).

    Returns:
        :class:`PruneResult` ``(graph, report)``: a new validated graph and its :class:`PruneReport`.

    Raises:
        PreconditionError: a bad ``ratio``/``keep``/``criterion``/``seed``; both or neither of
            ratio and keep; a bad ``round_to``; a supernet (choice nodes); a named group that is pinned (its
            channels reach a graph input/output or an op with unknown coupling: the reason and
            node are named), has one channel, or has no BN for ``"bn_gamma"``; an unknown
            node or group index; a ``cost`` without ``.macs``.

    Example:
        >>> import archir.samples as S
        >>> small, report = prune_channels(S.chain(), keep=4, groups=["l1.conv"])
        >>> small.node("l1.conv").attrs["out_channels"], small.node("head").params["weight"].shape
        (4, (10, 4))
        >>> [(gp.producers, gp.before, gp.after) for gp in report.groups]
        [(('l1.conv',), 16, 4)]
    """
    box: list[PruneReport] = []
    out = _prune_pass(g, ratio=ratio, keep=keep, criterion=criterion, groups=groups, seed=seed, cost=cost,
                      deviation=deviation, round_to=round_to, _report_box=box)
    return PruneResult(out, box[0])


@graph_pass(preserves="shape", name=_PNAME)
def prune_channels_pass(g: Graph, *, ratio: float | None = None, keep: int | Mapping[Any, int] | None = None,
                        criterion: str = "l1", groups: Sequence[str | int] | str | int | None = None,
                        seed: int = 0, round_to: int | None = None) -> Graph:
    """:func:`prune_channels` as a pass for a ``PassManager``: returns the pruned graph only.

    Declared ``preserves="shape"``: the graph's interface keeps its shapes; the function changes
    (use :func:`prune_channels` for the report with the deviation).

    Example:
        >>> import archir.samples as S, passes
        >>> pm = passes.PassManager([passes.bind(prune_channels_pass, ratio=0.5)])   # doctest: +SKIP
    """
    return _prune(g, ratio, keep, criterion, groups, seed, None, False, None, round_to)
