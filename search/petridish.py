"""Petridish forward search, the graph side: attach candidates, train them in isolation, select, finalize.

Petridish (Hu et al., 2019) grows a trained parent network. At a chosen node ``y`` (a *join
point*) it attaches candidate ops ``op_i`` reading earlier tensors ``x_i`` and joins them as::

    y' = y + stop_forward( sum_i  w_i * op_i(stop_gradient(x_i)) )        (w_i: per-channel join weights, from 0)

``stop_gradient(x) = x.detach()`` stops the candidates' gradient from reaching the parent, and
``stop_forward(c) = c - c.detach()`` is exactly 0 in the forward pass but passes ``dL/dy'`` to
the candidates. So while candidates train, the parent's outputs *and the gradients of every
parent parameter* are exactly what they would be without the candidates (``tests/search/
test_petridish.py`` checks both numerically), and each candidate learns to fit the parent's
loss gradient at ``y``. The join weights start at zero (``dL/dw_i = dL/dy' * op_i(x_i)`` is not zero,
so they grow as far as their candidate helps), and training adds an L1 penalty ``l1 * sum_i mean|w_i|``;
the candidates with the largest ``mean|w_i|`` are selected, the others removed, and
``passes.finalize`` removes the stop ops: the selected candidates now join the forward pass (the
grown model), which the experiment then trains (SGDR, from the inherited weights).

Candidate ops (:data:`CANDIDATE_OPS`, each ending in a BN so its scale starts comparable; a
strided or channel-changing input is brought to ``y``'s shape by the op's stride and a 1x1
projection): ``conv3x3``, ``conv5x5``, ``sep_conv3x3``, ``sep_conv5x5``, ``maxpool3x3``,
``avgpool3x3``, ``identity``.

Example:
    >>> from search.morph import starter
    >>> parent = starter((1, 8, 8), 10)
    >>> g, cands = attach(parent, ["c1.relu"], ["conv3x3", "maxpool3x3"], inputs=2)
    >>> len(cands), sorted({c.op for c in cands})
    (4, ['conv3x3', 'maxpool3x3'])
    >>> import passes
    >>> passes.check_preserved(parent, g, atol=0, rtol=0, store_tol=0).max_abs
    0.0
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from archir import Graph
from archir.ops import get_op

__all__ = ["CANDIDATE_OPS", "PetridishCandidate", "join_points", "input_options", "attach", "join_weights",
           "select", "keep_only", "train_candidates", "grow_petridish"]



def _joins(g: Graph, n: str) -> bool:
    """A node where features meet: a rectifier-like activation, or a sum or concat of branches (OpTraits)."""
    t = get_op(g.node(n).op, n).traits
    return t.category == "activation" or t.merge in ("sum", "concat")


def _rank3(g: Graph, n: str) -> tuple[int, int, int] | None:
    t = g.node(n).type
    return tuple(t.shape) if t is not None and len(t.shape) == 3 else None  # type: ignore[return-value]


def _stride(src: int, dst: int) -> int | None:
    """The stride s with ``floor((src - 1) / s) + 1 == dst`` (a k x k window with padding k // 2), or None."""
    if dst > src:
        return None
    for s in range(1, src + 1):
        if (src - 1) // s + 1 == dst:
            return s
    return None


def _conv(g, x, c_out, k, s, name, groups=1):
    return g.add("conv2d", x, out_channels=c_out, kernel_size=k, stride=s, padding=k // 2, groups=groups,
                 bias=False, name=name)


def _op_conv(k: int) -> Callable:
    def build(g: Graph, x: str, c_out: int, s: int, name: str) -> str:
        h = g.add("relu", x, name=f"{name}.relu")
        h = _conv(g, h, c_out, k, s, f"{name}.conv")
        return g.add("batchnorm2d", h, name=f"{name}.bn")
    return build


def _op_sep(k: int) -> Callable:
    def build(g: Graph, x: str, c_out: int, s: int, name: str) -> str:
        c_in = _rank3(g, x)[0]
        h = g.add("relu", x, name=f"{name}.relu")
        h = _conv(g, h, c_in, k, s, f"{name}.dw", groups=c_in)
        h = _conv(g, h, c_out, 1, 1, f"{name}.pw")
        return g.add("batchnorm2d", h, name=f"{name}.bn")
    return build


def _op_pool(op: str) -> Callable:
    def build(g: Graph, x: str, c_out: int, s: int, name: str) -> str:
        h = g.add(op, x, kernel_size=3, stride=s, padding=1, name=f"{name}.pool")
        if _rank3(g, h)[0] != c_out:
            h = _conv(g, h, c_out, 1, 1, f"{name}.proj")
        return g.add("batchnorm2d", h, name=f"{name}.bn")
    return build


def _op_identity(g: Graph, x: str, c_out: int, s: int, name: str) -> str:
    if s == 1 and _rank3(g, x)[0] == c_out:
        return g.add("identity", x, name=f"{name}.id")
    return g.add("batchnorm2d", _conv(g, x, c_out, 1, s, f"{name}.proj"), name=f"{name}.bn")


#: name -> builder(g, x, out_channels, stride, scope) -> node id (the op's output, before the join weight)
CANDIDATE_OPS: dict[str, Callable[[Graph, str, int, int, str], str]] = {
    "conv3x3": _op_conv(3), "conv5x5": _op_conv(5), "sep_conv3x3": _op_sep(3), "sep_conv5x5": _op_sep(5),
    "maxpool3x3": _op_pool("maxpool2d"), "avgpool3x3": _op_pool("avgpool2d"), "identity": _op_identity,
}


@dataclass(frozen=True)
class PetridishCandidate:
    """One attached candidate: ``op`` reading ``src``, joined at ``target`` through the scale node ``join``;
    ``gate`` is the ``stop_forward`` node that sums the candidates of ``target``."""

    target: str
    src: str
    op: str
    join: str
    gate: str


def join_points(g: Graph) -> list[str]:
    """Nodes where candidates may join: feature maps (C, H, W) made by an activation, ``add`` or ``concat``
    that are not graph outputs but that an output depends on (a candidate on a dead node could never
    help: no gradient reaches it), in topological order."""
    import networkx as nx

    outs = set(g.outputs)
    live = set().union(*(nx.ancestors(g.nx, o) for o in outs)) if outs else set()
    return [n for n in g.topo_order() if _joins(g, n) and n in live and _rank3(g, n)]


def input_options(g: Graph, target: str, k: int) -> list[str]:
    """The ``k`` latest feature maps (``target`` itself first) a candidate at ``target`` may read: ``target`` and its
    ancestors of rank 3 whose height and width reach ``target``'s with a stride (graph inputs included)."""
    import networkx as nx

    _, h, w = _rank3(g, target)
    anc = nx.ancestors(g.nx, target) | {target}
    out = []
    for n in reversed(g.topo_order()):
        if n not in anc:
            continue
        sh = _rank3(g, n)
        if sh is None or get_op(g.node(n).op, n).training_only:
            continue
        s1, s2 = _stride(sh[1], h), _stride(sh[2], w)
        if s1 is not None and s1 == s2 and (n == target or g.node(n).op == "input" or _joins(g, n)):
            out.append(n)
        if len(out) == k:
            break
    return out


def _fresh(g: Graph, base: str) -> str:
    k = 1
    while True:
        cand = base if k == 1 else f"{base}_{k}"
        if cand not in g and not any(t.startswith(cand + ".") for t in g.nx.nodes):
            return cand
        k += 1


def attach(parent: Graph, targets: Sequence[str], ops: Sequence[str], *, inputs: int = 2,
           seed: int = 0) -> tuple[Graph, list[PetridishCandidate]]:
    """Attach every op of ``ops`` on each of the :func:`input_options` of every target (see the module docstring).

    Args:
        parent: the (trained) parent; not changed.
        targets: join points (:func:`join_points`).
        ops: names in :data:`CANDIDATE_OPS`.
        inputs: how many input options per target.
        seed: initialisation of the candidates' weights (the parent keeps its weights).

    Returns:
        ``(graph, candidates)``: the augmented graph (same forward as ``parent``, exactly) and the
        attached candidates.

    Raises:
        ValueError: an unknown op or a target that is not a join point (naming it and the legal ones).
    """
    bad = [o for o in ops if o not in CANDIDATE_OPS]
    if bad:
        raise ValueError(f"unknown petridish candidate op(s) {bad} (how to fix: choose from {sorted(CANDIDATE_OPS)})")
    legal = join_points(parent)
    g = parent.copy()
    cands: list[PetridishCandidate] = []
    for t_i, target in enumerate(targets):
        if target not in legal:
            raise ValueError(f"node {target!r} is not a petridish join point (how to fix: pick one of {legal[:8]})")
        c_out = _rank3(g, target)[0]
        _, h, _ = _rank3(g, target)
        scope = _fresh(g, "pd")  # pd, pd_2, ...: short ids however often a network grows
        branches, mine = [], []
        for i_i, src in enumerate(input_options(g, target, inputs)):
            sg = g.add("stop_gradient", src, name=f"{scope}.in{i_i}.sg")
            s = _stride(_rank3(g, src)[1], h)
            for op in ops:
                name = f"{scope}.in{i_i}.{op}"
                y = CANDIDATE_OPS[op](g, sg, c_out, s, name)
                j = g.add("scale", y, name=f"{name}.w")
                branches.append(j)
                mine.append((src, op, j))
        total = branches[0]
        for k, b in enumerate(branches[1:]):
            total = g.add("add", total, b, name=f"{scope}.sum{k}")
        sf = g.add("stop_forward", total, name=f"{scope}.sf")
        cands += [PetridishCandidate(target, src, op, j, sf) for src, op, j in mine]
        join = g.add("add", target, sf, name=f"{scope}.join")
        g.replace_uses(target, join, exclude=[n for n in g.nx.successors(target) if n.startswith(scope + ".")])
    g.init_params(seed=int(seed), only_missing=True)
    for c in cands:  # join weights start at 0: each grows as far as its candidate helps, against the L1 pull
        g.set_params(c.join, weight=np.zeros_like(g.node(c.join).params["weight"]))
    return g.validate(), cands


def join_weights(g: Graph, cands: Sequence[PetridishCandidate]) -> list[float]:
    """``mean |w|`` of each candidate's join weights (its scale node), the selection criterion."""
    return [float(np.abs(g.node(c.join).params["weight"]).mean()) for c in cands]


def select(g: Graph, cands: Sequence[PetridishCandidate], k: int) -> list[PetridishCandidate]:
    """The ``k`` candidates per target with the largest :func:`join_weights` (ties: attachment order)."""
    ws = join_weights(g, cands)
    out = []
    for target in dict.fromkeys(c.target for c in cands):
        mine = [(-w, i) for i, (c, w) in enumerate(zip(cands, ws)) if c.target == target]
        out += [cands[i] for _, i in sorted(mine)[:k]]
    return out


def keep_only(g: Graph, cands: Sequence[PetridishCandidate], keep: Sequence[PetridishCandidate]) -> Graph:
    """A copy of ``g`` where each target's ``stop_forward`` sums only the ``keep`` candidates (the rest removed)."""
    from passes._rewrite import remove_dead

    out = g.copy()
    keep_ids = {c.join for c in keep}
    for target in dict.fromkeys(c.target for c in cands):
        joins = [c.join for c in cands if c.target == target]
        sf = next(c.gate for c in cands if c.target == target)
        kept = [j for j in joins if j in keep_ids]
        if not kept:
            raise ValueError(f"target {target!r}: keep at least one candidate")
        total = kept[0]
        scope = sf.rsplit(".", 1)[0]
        for k, b in enumerate(kept[1:]):
            total = out.add("add", total, b, name=_fresh(out, f"{scope}.keep{k}"))
        out.set_input(sf, 0, total)
    remove_dead(out)
    return out.validate()


def train_candidates(g: Graph, dataset: Any, cands: Sequence[PetridishCandidate], *, epochs: int, l1: float,
                     train: Mapping[str, Any] | None = None, seed: int = 0, threads: int = 1) -> tuple[Graph, dict]:
    """Train the augmented graph ``epochs`` epochs with cross-entropy + ``l1 * sum mean|w|`` of the join weights.

    Parent and candidates train together (the stop ops keep the parent's forward and gradients as
    without candidates). SGD settings and the learning-rate schedule come from ``train``
    (``search.train.TrainConfig`` fields; ``epochs``/``seed``/``threads`` are set here).

    Returns:
        ``(trained graph, {"train_loss": ..., "seconds": ...})``.

    Raises:
        FloatingPointError: the loss became NaN/Inf (the candidate fails with it).
    """
    import torch
    import torch.nn.functional as F

    from archir.lower import sync_back, to_fx
    from search.train import TrainConfig, learning_rate

    cfg = TrainConfig(**{**dict(train or {}), "epochs": int(epochs), "seed": int(seed), "threads": int(threads)})
    t0 = time.perf_counter()
    prev = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            gm = to_fx(g)
            paths = gm.meta["archir_modules"]
            joins = [gm.get_submodule(paths[c.join]).weight for c in cands]
            params = list(gm.parameters())
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
            x = torch.from_numpy(np.array(dataset.x_train, dtype=np.float32))
            y = torch.from_numpy(np.array(dataset.y_train, dtype=np.int64))
            n = len(y)
            steps = math.ceil(n / cfg.batch_size)
            rng = np.random.default_rng(cfg.seed)
            total = 0.0
            for epoch in range(cfg.epochs):
                gm.train()
                order = torch.from_numpy(rng.permutation(n))
                total = 0.0
                for s in range(steps):
                    for group in opt.param_groups:
                        group["lr"] = learning_rate(cfg, epoch + s / steps)
                    idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
                    ce = F.cross_entropy(gm(x[idx]), y[idx])
                    loss = ce + float(l1) * sum(w.abs().mean() for w in joins)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"petridish candidate training: loss became {float(loss)} in "
                                                 f"epoch {epoch + 1}, step {s + 1}")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    opt.step()
                    total += float(ce.detach()) * len(idx)
            return sync_back(g, gm), {"train_loss": total / max(1, n), "seconds": time.perf_counter() - t0}
    finally:
        torch.set_num_threads(prev)


def grow_petridish(parent: Graph, dataset: Any, decisions: Mapping[str, Any], *, threads: int = 1,
                   train: Mapping[str, Any] | None = None) -> tuple[Graph, dict]:
    """One Petridish step on ``parent`` (worker side): attach, check isolation, train candidates, select, finalize.

    Args:
        parent: the trained parent.
        dataset: the training data (``x_train``, ``y_train``).
        decisions: ``n`` join points drawn from ``seed`` among :func:`join_points`; ``ops``; ``inputs`` per
            join point; ``select`` candidates kept per join point; ``epochs`` of candidate training;
            ``l1`` the join-weight penalty.
        threads: torch threads.
        train: SGD settings (``search.train.TrainConfig`` fields).

    Returns:
        ``(grown graph, info)``: the grown graph has no stop op (ready to train and export); ``info``
        as :func:`search.morph.grow` (``metrics``: ``preserve_max_abs`` of the augmented graph against the
        parent before candidate training -- 0 exactly --, ``grow_epochs``, ``petridish_candidates``,
        ``join_weight_max``/``join_weight_min`` of the selected ones).

    Raises:
        ValueError: the parent has no join point.
    """
    import passes

    rng = np.random.default_rng(int(decisions["seed"]))
    points = join_points(parent)
    if not points:
        raise ValueError(f"graph {parent.name!r} has no petridish join point (an activation, add or concat "
                         "producing a (C, H, W) feature map)")
    n = min(int(decisions["n"]), len(points))
    targets = [points[int(i)] for i in sorted(rng.choice(len(points), size=n, replace=False))]
    g, cands = attach(parent, targets, decisions["ops"], inputs=int(decisions["inputs"]),
                      seed=int(rng.integers(2 ** 31 - 1)))
    rep = passes.check_preserved(parent, g, atol=0.0, rtol=0.0, store_tol=0.0,  # bit-equal: nothing rounded
                                 seed=int(decisions["seed"]) % (2 ** 31))
    epochs = int(decisions["epochs"])
    g, _ = train_candidates(g, dataset, cands, epochs=epochs, l1=float(decisions["l1"]), train=train,
                            seed=int(decisions["seed"]), threads=threads)
    chosen = select(g, cands, int(decisions["select"]))
    ws = dict(zip([c.join for c in cands], join_weights(g, cands)))
    grown = passes.finalize(keep_only(g, cands, chosen))
    moves = [f"petridish(target={c.target!r}, src={c.src!r}, op={c.op!r}, join_weight={ws[c.join]:.4g})"
             for c in chosen]
    sel = [ws[c.join] for c in chosen]
    return grown, {"metrics": {"preserve_max_abs": float(rep.max_abs), "grow_epochs": float(epochs),
                               "petridish_candidates": float(len(cands)), "join_weight_max": max(sel),
                               "join_weight_min": min(sel)},
                   "epochs": epochs, "moves": moves}
