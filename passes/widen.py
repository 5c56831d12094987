"""``widen``: give a conv2d or linear more output channels without changing what the network computes.

Net2WiderNet (Chen et al., 2016) and NASH's type II morphism (Elsken et al., 2017), over the
channel-coupling analysis of :mod:`passes.coupling`.

The math
--------
Let a source ``P`` (conv2d with ``groups == 1``, or linear) make channels ``h_1 .. h_C`` and a
consumer ``Q`` read them: ``y_o = sum_i U[o, i] * h_i + ...`` (for a conv, ``U[o, i]`` is the
kernel slice ``weight[o, i]``, applied by convolution, which is linear in ``h_i``).

**replicate** (Net2WiderNet). Draw ``N - C`` channels to copy (seeded, every channel once
before any twice). A copy of channel ``r`` gets ``P``'s filter row and bias of ``r``, so
``h_new = h_r`` exactly. Every node that carries the channel copies its per-channel values
too (BN weight/bias/running stats, ``scale``, depthwise filters), so the copy stays equal to
``h_r`` through BN, activations, pools, depthwise convs, ``add`` and ``mul`` (both operands of a
tie are copied at the same positions) and ``concat``. If channel ``r`` now exists ``k = 1 +
copies`` times, every consumer column of it (and of each copy) becomes ``U[o, r] / k``:

    sum over the k equal channels of (U[o, r] / k) * h_r  =  U[o, r] * h_r

so ``y`` is unchanged (up to one rounding: ``/ k`` is exact when ``k`` is a power of two).
``flatten -> linear``: channel ``r`` is ``H*W`` consecutive features, and each of its ``H*W``
columns is divided by ``k`` in the same way.

**zero** (NASH type II). The new channels get fresh filters (He-normal, ``std = sqrt(2 /
fan_in)``, seeded; bias 0), identity-like per-channel values on the way (BN weight 1, bias 0,
running mean 0, running var 1; ``scale`` 1; depthwise filters He-normal, bias 0), and every
consumer column of a new channel is **zero**:

    y_o = sum_{i <= C} U[o, i] * h_i + sum_{new j} 0 * h_j  =  unchanged

(the new ``h_j`` are finite, so ``0 * h_j == 0`` exactly). The new channels are placed after the
target's last channel.

**Coupled channels.** Channels tied to the target's (through ``add``/``mul``/``concat`` along a
non-channel axis, see :mod:`passes.coupling`) are the *same* channels: every producer of the
tie grows with the same replication map (its own filter of the tied channel is copied, or a
fresh one made), every carrier after it grows, and every consumer is rescaled. A new channel
is inserted right after every occurrence of the channel it copies (or of the anchor, in zero
mode), so both inputs of an ``add`` grow at the same positions, and a ``concat`` grows inside
the segment that holds the channel, shifting its consumers' columns for the segments after it.
Channels that reach a graph output or input, or meet an op whose coupling is unknown, cannot
grow: the call is refused with the reason (:class:`~passes.infra.PreconditionError`).

**Layer norm over channels** (ConvNeXt's LayerNorm2d) normalises each position by the mean and
variance of *all* its channels: a copy of channel ``r`` shifts both (``(C * mu + h_r) / (C + 1)``),
a zero-mode channel shifts them too, so every output channel changes. No choice of the new
channels' values keeps the function in general, so widening channels that reach such a layernorm
is refused, naming it (:meth:`passes.coupling.Coupling.mixers`).

**Channel shuffle** (``channel_shuffle``, or torchvision's view/transpose/view). Output ``j * g + i`` is
input segment ``i``, row ``j``; row ``j`` of every segment is one class, so a copy (or zero-mode channel)
of it grows every segment by one, right after row ``j``: the segments stay equal and ``g`` is kept. The
shuffled output is then the old output with a block of ``g`` copies inserted after block ``j``: every copy
still equals its original, so the consumers after it are divided by ``k`` (or given zero columns) as
above, at the positions the shuffle of the new count gives (:meth:`passes.coupling.Coupling.carry`); the
views' ``shape`` is reset. Refused, with the node: a tie whose operands the shuffle would reorder on one
side only, and a channel slice (``chunk``) whose bound a shuffle row straddles (its channels would no
longer be one range; in torchvision's ShuffleNetV2 this happens in stage 3, whose eight units merge rows
into classes wider than a chunk).

**Channels-last.** A ``linear`` over the last axis of a channels-last map (ConvNeXt's pointwise
layers, between ``permute(0, 2, 3, 1)`` and back) is a 1x1 conv: it is widened as one, its rows
copied and its consumer's columns divided, and the activations between pass the copies through.

**Eval mode.** Preservation is promised in eval mode (``check_preserved`` runs in eval mode):
BN normalises by its running statistics, which are copied (replicate) or set to finite,
identity-like values (zero), and dropout is the identity. In train mode BN normalises by batch
statistics and dropout draws a different mask for a copy than for its original, so the
training-mode function is not kept exactly.

**Noise.** Net2Net adds noise to the copies to break their symmetry in training. Noise changes
the function, so ``widen`` (which promises ``preserves="function"`` for every call) refuses
``noise != 0``; :func:`widen_noisy` does the same rewrite, adds the noise, and promises
nothing (``preserves=None``), so a ``PassManager`` never checks a promise it does not make.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from archir import Graph
from archir.ops import get_op

from passes.coupling import Coupling, analyze
from passes.infra import PreconditionError, graph_pass

__all__ = ["widen", "widen_noisy", "widen_targets", "widen_reason", "widen_draw", "MODES", "MAX_RATIO"]

MODES = ("replicate", "zero")

#: the largest widening ratio ``widen_draw`` draws (``random_morphism``'s widen: at most a doubling, as before)
MAX_RATIO = 2.0

#: values of a zero-mode channel in a carrier's per-channel array: "random" (He-normal), or a constant
_CHANNEL_FILL = {("batchnorm2d", "weight"): 1.0, ("batchnorm2d", "bias"): 0.0,
                 ("batchnorm2d", "running_mean"): 0.0, ("batchnorm2d", "running_var"): 1.0,
                 ("scale", "weight"): 1.0, ("conv2d", "weight"): "random", ("conv2d", "bias"): 0.0,
                 ("conv1d", "weight"): "random", ("conv1d", "bias"): 0.0}


def _check(g: Graph, cp: Coupling, node: Any, out_channels: Any, mode: Any, pname: str) -> int:
    """Raise ``PreconditionError`` when ``widen(g, node, out_channels, mode)`` cannot apply; else return C."""
    if mode not in MODES:
        raise PreconditionError(f"unknown mode {mode!r}", pass_name=pname, node=node if node in g else None,
                                hint=f"use one of {list(MODES)}")
    if not isinstance(node, str) or node not in g:
        legal = [t["node"] for t in _targets(g, cp)][:6]
        raise PreconditionError(f"no node {node!r} in graph {g.name!r}", pass_name=pname,
                                hint=f"widen a conv2d/linear; legal targets include {legal} (see widen_targets(g))")
    rule = cp.rule(node)
    op = rule.op
    if get_op(op, node).traits.category not in ("conv", "linear"):
        producers = _producers(cp, node)
        raise PreconditionError(
            f"widen changes the output channels of a conv2d or linear; this node is a {op}", pass_name=pname,
            node=node, hint=f"widen the producer of its channels ({producers}); the nodes after it follow"
            if producers else "pick one of widen_targets(g)")
    if rule.kind == "carrier":
        raise PreconditionError(
            "this is a depthwise conv (groups == in_channels == out_channels): its channels are its input's, "
            "passed through", pass_name=pname, node=node,
            hint=f"widen the producer of its input ({_producers(cp, node)}); the depthwise conv is widened with it")
    if rule.kind == "opaque":
        raise PreconditionError(f"its channel coupling is unknown: {rule.reason}", pass_name=pname, node=node,
                                hint="widen a conv2d with groups == 1 or a linear on a vector")
    c = len(cp.layout(node))
    if isinstance(out_channels, (bool, np.bool_)) or not isinstance(out_channels, (int, np.integer)):
        raise PreconditionError(f"out_channels must be an int, got {out_channels!r}", pass_name=pname, node=node,
                                hint=f"pass an int > {c}, e.g. out_channels={2 * c}")
    if out_channels <= c:
        raise PreconditionError(
            f"widen only grows: out_channels={int(out_channels)} is not more than the current {c}",
            pass_name=pname, node=node,
            hint=f"pass out_channels > {c}; to shrink, prune channels (passes.prune_channels)")
    if cp.pins(cp.classes(node)):
        tied = [p for p in cp.group_of(node).producers if p != node]
        raise cp.pin_error(cp.classes(node), f"widen {node!r}" + (f" (tied to {tied})" if tied else ""),
                           node=node, pass_name=pname)
    mixers = cp.mixers(cp.classes(node))
    if mixers:
        raise PreconditionError(
            f"widen {node!r} would add channels to {mixers[0].node!r}: {mixers[0].mixes}", pass_name=pname,
            node=mixers[0].node, hint="widen a conv whose channels meet no layernorm over the channels "
                                      "(widen_targets(g) lists them); pruning through them is allowed")
    _follow(cp, node, pname)
    return c


def _follow(cp: Coupling, node: str, pname: str) -> None:
    """Raise ``PreconditionError`` when an edit of ``node``'s channels cannot be followed through a channel
    shuffle (a tie whose operands it would reorder differently, a slice it would split; see
    :meth:`passes.coupling.Coupling.carry`). Without a shuffle every edit is followed, so nothing is tried.

    It tries one copy of every class of ``node``: the edits ``widen`` makes (any subset of the classes, any
    number of copies, or new channels after one of them) put their channels at the same places, so they
    are followed when this one is."""
    classes = cp.classes(node)
    if not cp.shufflers(classes):
        return
    cp.remap({c: ("keep", "copy") for c in classes}, what=f"widen {node!r}", pass_name=pname)


def _producers(cp: Coupling, node: str) -> list[str]:
    try:
        grp = cp.group_of(node)
    except KeyError:
        return []
    return [p for p in grp.producers if cp.rule(p).kind == "source"]


def _targets(g: Graph, cp: Coupling) -> list[dict]:
    out = []
    for n in cp.order:
        rule = cp.rule(n)
        if rule.kind == "source" and not cp.pins(cp.classes(n)) and not cp.mixers(cp.classes(n)):
            try:
                _follow(cp, n, "widen")
            except PreconditionError:
                continue
            out.append({"node": n, "out_channels": 2 * len(cp.layout(n))})
    return out


def widen_targets(g: Graph) -> list[dict]:
    """Legal ``widen`` keyword arguments, one per widenable node (doubling it), in topological order.

    A node is legal when it is a conv2d (``groups == 1``) or a linear on a vector, and none of its
    channels (nor channels tied to them) reach a graph input or output or an op whose coupling
    is unknown, nor meet a layernorm over the channels, and an edit of them is followed through every
    channel shuffle they reach (no slice split, no tie reordered on one side). Tied producers (the members
    of one residual stream) are each listed: widening any of them widens all.

    Example:
        >>> import archir.samples as S
        >>> widen_targets(S.chain())
        [{'node': 'l0.conv', 'out_channels': 16}, {'node': 'l1.conv', 'out_channels': 32}]
    """
    return _targets(g, analyze(g))


def widen_draw(g: Graph, target: dict, rng: np.random.Generator, *, max_ratio: float = MAX_RATIO) -> dict:
    """A random widening of ``target`` (one of :func:`widen_targets`): the ratio is drawn, not fixed.

    NASH draws the widening ratio at random; here the new width ``N`` of the node (``C`` channels now)
    is drawn uniformly among the integers ``C + 1 .. max(C + 1, floor(C * max_ratio))``, so a search
    can take small steps as well as a doubling (which ``widen_targets`` lists). ``passes.random_morphism``
    calls this when it picks ``widen``; ``widen(g, node, out_channels)`` itself takes the width it is given.

    Args:
        g: the graph.
        target: ``{"node": ..., "out_channels": ...}`` from :func:`widen_targets` (other keys are kept).
        rng: where the width is drawn from (one ``integers`` draw).
        max_ratio: the largest ratio ``N / C`` (> 1).

    Returns:
        ``target`` with the drawn ``out_channels``.

    Example:
        >>> import archir.samples as S, numpy as np
        >>> t = widen_draw(S.chain(), {"node": "l0.conv", "out_channels": 16}, np.random.default_rng(0))
        >>> 9 <= t["out_channels"] <= 16
        True
    """
    if not (isinstance(max_ratio, (int, float)) and max_ratio > 1):
        raise ValueError(f"widen_draw: max_ratio must be a number > 1, got {max_ratio!r}")
    a = g.node(target["node"]).attrs
    c = int(a["out_channels"] if "out_channels" in a else a["out_features"])
    hi = max(c + 1, int(math.floor(c * max_ratio)))
    return {**target, "out_channels": int(rng.integers(c + 1, hi + 1))}


def widen_reason(g: Graph, node: str, out_channels: int | None = None, mode: str = "replicate") -> str | None:
    """Why ``widen(g, node=node, out_channels=...)`` does not apply (the error message), or ``None`` if it does.

    ``out_channels=None`` asks about the node only (doubling it). For search drivers that log reasons.

    Example:
        >>> import archir.samples as S
        >>> print(widen_reason(S.chain(), "l0.conv"))
        None
        >>> "graph output 'head'" in widen_reason(S.chain(), "head")
        True
    """
    cp = analyze(g)
    try:
        if out_channels is None and isinstance(node, str) and node in g:
            out_channels = 2 * max(1, len(cp.layout(node)))
        _check(g, cp, node, out_channels, mode, "widen")
    except PreconditionError as e:
        return str(e)
    return None


def _he(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    fan_in = max(1, math.prod(shape[1:]))
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=shape).astype(np.float32)


def _along(mask: np.ndarray, axis: int, ndim: int) -> tuple:
    idx = [slice(None)] * ndim
    idx[axis] = mask
    return tuple(idx)


def _widen(g: Graph, node: str, out_channels: int, mode: str, noise: float, seed: int, pname: str) -> Graph:
    cp = analyze(g)
    c = _check(g, cp, node, out_channels, mode, pname)
    rng = np.random.default_rng(seed)
    # a class can occur several times in the node's own output (a row of every group of a channel shuffle it
    # feeds): an edit of it adds that many channels, so the classes edited must add up to exactly k channels
    mult: dict[int, int] = {}
    for cls, _ in cp.layout(node):
        mult[cls] = mult.get(cls, 0) + 1
    classes = list(mult)
    k = int(out_channels) - c
    taken: list[int] = []
    rem = k
    if mode == "replicate":
        # every class is copied once before any is copied twice: copies spread evenly
        while rem > 0:
            before = rem
            for j in rng.permutation(len(classes)):
                if 0 < mult[classes[int(j)]] <= rem:
                    taken.append(classes[int(j)])
                    rem -= mult[classes[int(j)]]
            if rem == before:
                break
    else:  # new channels after the last class that fits
        for cls in reversed(classes):
            while 0 < mult[cls] <= rem:
                taken.append(cls)
                rem -= mult[cls]
    if rem:
        steps = sorted(set(mult.values()))
        raise PreconditionError(f"{pname} of {node!r} to {out_channels} channels: its channels are classes of "
                                f"{'/'.join(map(str, steps))} channels each (rows of a channel shuffle's groups), "
                                f"which grow together, so {k} more cannot be made of whole classes",
                                node=node, pass_name=pname,
                                hint=f"grow it by a multiple of {steps[0]} (e.g. out_channels={c + steps[0] * -(-k // steps[0])})")
    edit: dict[int, list[str]] = {}
    for cls in taken:
        edit.setdefault(cls, ["keep"]).append("copy" if mode == "replicate" else "new")
    remaps = cp.remap(edit, what=f"widen {node!r}", pass_name=pname)


    def adjust(rule, ax, pm, arr: np.ndarray, new: np.ndarray) -> np.ndarray:
        is_new = pm.tag == "new"
        shape = [1] * new.ndim
        shape[ax.axis] = -1
        if ax.role == "column":
            new = new / pm.share.reshape(shape).astype(np.float32)
            if is_new.any():
                fill = np.zeros(new[_along(is_new, ax.axis, new.ndim)].shape, np.float32)
                if noise:
                    fill = rng.normal(0.0, noise * (float(arr.std()) or 1.0), size=fill.shape).astype(np.float32)
                new[_along(is_new, ax.axis, new.ndim)] = fill
        elif is_new.any():
            sub = np.moveaxis(new, ax.axis, 0)[is_new]
            how = "random" if (ax.role == "filter" and ax.name == "weight") else \
                0.0 if ax.role == "filter" else _CHANNEL_FILL.get((rule.op, ax.name), 0.0)
            sub = _he(rng, sub.shape) if how == "random" else np.full(sub.shape, how, np.float32)
            moved = np.moveaxis(new, ax.axis, 0).copy()
            moved[is_new] = sub
            new = np.moveaxis(moved, 0, ax.axis)
        if noise and ax.role == "filter" and ax.name == "weight" and (pm.tag == "copy").any():
            is_copy = pm.tag == "copy"
            moved = np.moveaxis(new, ax.axis, 0).copy()
            moved[is_copy] += rng.normal(0.0, noise * (float(arr.std()) or 1.0),
                                         size=moved[is_copy].shape).astype(np.float32)
            new = np.moveaxis(moved, 0, ax.axis)
        return new

    return cp.apply(g, remaps, adjust)


@graph_pass(preserves="function")
def widen(g: Graph, node: str, out_channels: int, mode: str = "replicate", noise: float = 0.0,
          seed: int = 0) -> Graph:
    """Widen conv2d/linear ``node`` to ``out_channels`` output channels, keeping the function (eval mode).

    Net2WiderNet (``mode="replicate"``) or NASH type II (``mode="zero"``); the math is in the module
    docstring. Everything coupled to the node's channels follows: BN, depthwise convs, ``scale``,
    producers tied through ``add``/``mul`` (a residual stream grows as a whole), ``concat``
    offsets, and the consumers (conv/linear columns, ``flatten -> linear`` blocks of ``H*W``).

    Args:
        g: the graph (not changed).
        node: a conv2d with ``groups == 1`` or a linear on a vector (see :func:`widen_targets`).
        out_channels: the new channel count, more than the current one. Channels that feed a channel
            shuffle grow by whole rows of its groups (one class is several of the node's channels): a
            count that whole classes cannot make is refused, naming the step.
        mode: ``"replicate"`` (copies of random existing channels, consumers divided by the copy
            count) or ``"zero"`` (fresh He-normal filters, consumer columns zero).
        noise: must be 0: noise breaks the promise of this pass (use :func:`widen_noisy`).
        seed: seeds the choice of copies (replicate) or the new filters (zero).

    Returns:
        A new, validated graph.

    Raises:
        PreconditionError: unknown node; not a conv2d/linear (or a depthwise/grouped conv);
            ``out_channels`` not more than now (shrinking); the channels (or channels tied to
            them) reach a graph output/input or an op with unknown coupling, or a layernorm over the
            channels, or cannot be followed through a channel shuffle (a slice bound straddling a shuffle
            row, a tie reordered on one side); ``noise != 0``; unknown mode. The message says which, where and how to fix it.

    Example:
        >>> import archir.samples as S, passes
        >>> g = S.resnet_like()
        >>> g2 = widen(g, node="b1.b.conv", out_channels=12)   # the residual stream: stem and b2.b grow too
        >>> g2.node("stem.conv").attrs["out_channels"], g2.node("b2.b.conv").attrs["out_channels"]
        (12, 12)
        >>> passes.check_preserved(g, g2).ok
        True
    """
    if noise != 0:
        raise PreconditionError(
            f"noise={noise!r} changes the function, and widen promises to preserve it", node=node,
            hint="use widen_noisy(g, node=..., out_channels=..., noise=...) from passes.widen (it promises "
                 "nothing), or noise=0")
    return _widen(g, node, out_channels, mode, 0.0, seed, "widen")


@graph_pass(preserves=None, name="widen_noisy")
def widen_noisy(g: Graph, node: str, out_channels: int, mode: str = "replicate", noise: float = 0.01,
                seed: int = 0) -> Graph:
    """``widen`` plus symmetry-breaking noise; declared ``preserves=None`` (the function changes slightly).

    The rewrite is :func:`widen`'s; then Gaussian noise of ``noise * std(W)`` is added to the
    copied filter rows of every source (replicate mode; ``W`` the source's weight) or written into
    the new consumer columns instead of zeros (zero mode; ``W`` the consumer's weight). With
    ``noise=0`` the result equals ``widen``'s.

    Args:
        g, node, out_channels, mode, seed: as for :func:`widen`.
        noise: relative standard deviation of the noise, ``>= 0``.

    Raises:
        PreconditionError: as :func:`widen`, or ``noise`` negative / not finite.

    Example:
        >>> import archir.samples as S
        >>> g2 = widen_noisy(S.chain(), node="l0.conv", out_channels=12, noise=0.01, seed=0)
        >>> g2.node("l0.conv").attrs["out_channels"]
        12
    """
    if not isinstance(noise, (int, float, np.floating)) or not math.isfinite(noise) or noise < 0:
        raise PreconditionError(f"noise must be a finite number >= 0, got {noise!r}", node=node,
                                hint="noise is relative to the weights' standard deviation, e.g. 0.01")
    return _widen(g, node, out_channels, mode, float(noise), seed, "widen_noisy")
