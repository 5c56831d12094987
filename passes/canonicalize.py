"""Canonicalization: fold BN into convs, drop identities and dead nodes, to a fixed point.

Each rewrite is a ``@graph_pass(preserves="function")``; the promise holds in **eval mode**
(``check_preserved`` runs there), which is the mode a deployed graph runs in.

``fold_batchnorm`` (as onnxscript's ``_fuse_batchnorm`` rule). An eval-mode BN computes, per
channel ``o``, ``y_o = (x_o - mean_o) / sqrt(var_o + eps) * gamma_o + beta_o``. With
``s_o = gamma_o / sqrt(var_o + eps)`` and ``x_o = sum W[o] * in + b_o`` (a conv, any ``groups``):

    W'[o] = W[o] * s_o        b'_o = (b_o - mean_o) * s_o + beta_o       (b_o = 0 without bias)

so ``conv'(in) = bn(conv(in))`` exactly in real arithmetic (float32 rounding: about 1e-7
relative; computed in float64, stored in float32). A non-affine BN has ``gamma = 1, beta = 0``.
The fold applies when the conv's only consumer is the BN and neither is a graph output
(outputs keep their ids: they are the interface). In train mode BN normalises by batch
statistics, so the folded graph is for inference (and for training from the folded weights).

``eliminate_identity``: ``identity`` ops; ``dropout`` with ``p == 0`` (any ``p`` with
``dropout=True``: dropout is the identity in eval mode, but removing it changes training);
``concat`` of one input; ``flatten`` that changes no shape. Their consumers read their input.

``eliminate_dead``: nodes no graph output depends on (graph inputs stay: the interface).

``canonicalize``: ``eliminate_identity``, ``fold_batchnorm``, ``prune_zero_paths`` (see
:mod:`passes.remove_op`) and ``eliminate_dead`` repeated until nothing changes: a
``PassManager(..., until_fixed_point=True)`` runs them (the fixed point is the manager's, and
``passes.changed`` says when a rule did nothing), nested inside ``canonicalize``, so ambient
instruments check canonicalize's result once, not each rule of each round. It is
idempotent: ``canonicalize(canonicalize(g))`` has the structure and weights of
``canonicalize(g)``.

Example:
    >>> import archir.samples as S, passes
    >>> g = S.resnet_like()
    >>> c = canonicalize(g)
    >>> len(c.nodes("batchnorm2d")), len(g.nodes("batchnorm2d"))
    (0, 8)
    >>> passes.check_preserved(g, c).ok
    True
"""

from __future__ import annotations

import numpy as np

from archir import Graph

from passes._rewrite import remove_dead
from passes.infra import PreconditionError, graph_pass
from passes.manager import PassManager, bind
from passes.remove_op import prune_zero_paths

#: the most rounds of canonicalize's fixed point (each round runs every rule once)
MAX_ROUNDS = 100

__all__ = ["fold_batchnorm", "eliminate_identity", "eliminate_dead", "canonicalize"]


def _fold_bn(g: Graph) -> int:
    outputs = set(g.outputs)
    folded = 0
    for n in g.topo_order():
        if n not in g:
            continue
        d = g.nx.nodes[n]
        if d["op"] != "batchnorm2d" or n in outputs:
            continue
        conv = g.inputs_of(n)[0]
        cd = g.nx.nodes[conv]
        if cd["op"] != "conv2d" or conv in outputs or [u for u, _ in g.users_of(conv)] != [n]:
            continue
        a = d["attrs"]
        mean = np.asarray(d["buffers"]["running_mean"], np.float64)
        var = np.asarray(d["buffers"]["running_var"], np.float64)
        c = mean.shape[0]
        gamma = np.asarray(d["params"]["weight"], np.float64) if a["affine"] else np.ones(c)
        beta = np.asarray(d["params"]["bias"], np.float64) if a["affine"] else np.zeros(c)
        s = gamma / np.sqrt(var + a["eps"])
        w = np.asarray(cd["params"]["weight"], np.float64)
        b = np.asarray(cd["params"]["bias"], np.float64) if cd["attrs"]["bias"] else np.zeros(c)
        g.set_attrs(conv, bias=True)
        g.set_params(conv, weight=(w * s[:, None, None, None]).astype(np.float32),
                     bias=((b - mean) * s + beta).astype(np.float32))
        g.replace_uses(n, conv)
        g.remove(n)
        folded += 1
    return folded


def _is_identity(g: Graph, n: str, dropout: bool) -> bool:
    d = g.nx.nodes[n]
    op = d["op"]
    if op == "identity":
        return True
    if op == "dropout":
        return dropout or d["attrs"]["p"] == 0
    ins = g.inputs_of(n)
    if op == "concat":
        return len(ins) == 1
    if op == "flatten":
        return tuple(g.nx.nodes[ins[0]]["type"].shape) == tuple(d["type"].shape)
    return False


def _elim_identity(g: Graph, dropout: bool) -> int:
    outputs = set(g.outputs)
    removed = 0
    for n in g.topo_order():
        if n in outputs or not _is_identity(g, n, dropout):
            continue
        g.replace_uses(n, g.inputs_of(n)[0])
        g.remove(n)
        removed += 1
    return removed


def _check_dropout(dropout) -> None:
    if not isinstance(dropout, bool):
        raise PreconditionError(f"dropout must be True or False, got {dropout!r}",
                                hint="dropout=True also removes dropout ops with p > 0 (identity in eval mode)")


@graph_pass(preserves="function")
def fold_batchnorm(g: Graph) -> Graph:
    """Fold every eval-mode BatchNorm that follows a conv2d into the conv (weights scaled, bias added).

    The math and the conditions are in the module docstring.

    Returns:
        A new, validated graph with one ``batchnorm2d`` fewer per fold (the conv keeps its id
        and gets ``bias=True``); the same function in eval mode.

    Example:
        >>> import archir.samples as S
        >>> g = fold_batchnorm(S.chain())
        >>> g.nodes("batchnorm2d"), g.node("l0.conv").attrs["bias"]
        ([], True)
    """
    out = g.copy()
    _fold_bn(out)
    return out.validate()


@graph_pass(preserves="function")
def eliminate_identity(g: Graph, *, dropout: bool = False) -> Graph:
    """Remove ops that compute their input: ``identity``, ``dropout(p=0)`` (any dropout with
    ``dropout=True``), one-input ``concat``, shape-keeping ``flatten``.

    A graph output is kept (its id is part of the interface).

    Example:
        >>> import archir
        >>> g = archir.Graph("t"); x = g.input("x", (2, 4, 4))
        >>> g.set_outputs(g.add("relu", g.add("identity", x), name="y")); _ = g.validate()
        >>> [n.op for n in eliminate_identity(g).nodes()]
        ['input', 'relu']
    """
    _check_dropout(dropout)
    out = g.copy()
    _elim_identity(out, dropout)
    return out.validate()


@graph_pass(preserves="function")
def eliminate_dead(g: Graph) -> Graph:
    """Remove every node that no graph output depends on (graph inputs stay).

    Example:
        >>> import archir
        >>> g = archir.Graph("t"); x = g.input("x", (2, 4, 4))
        >>> _ = g.add("relu", x, name="unused"); g.set_outputs(g.add("tanh", x, name="y")); _ = g.validate()
        >>> list(eliminate_dead(g))
        ['x', 'y']
    """
    out = g.copy()
    remove_dead(out)
    return out.validate()


@graph_pass(preserves="function")
def canonicalize(g: Graph, *, dropout: bool = False) -> Graph:
    """Apply ``eliminate_identity``, ``fold_batchnorm``, ``prune_zero_paths`` and ``eliminate_dead``
    until nothing changes (eval-mode function kept; idempotent).

    Args:
        g: the graph (not changed).
        dropout: also remove dropout with ``p > 0`` (the identity in eval mode; for deployment:
            ``archir export --canonicalize`` sets it).

    Returns:
        A new, validated graph.

    Raises:
        PreconditionError: ``dropout`` is not a bool.
        PostconditionError: the rules did not reach a fixed point in ``MAX_ROUNDS`` rounds (a bug
            in a rule: two rules undo each other).

    Example:
        >>> import archir.samples as S
        >>> c = canonicalize(S.mobilenet_like())
        >>> canonicalize(c).structural_hash() == c.structural_hash()
        True
    """
    _check_dropout(dropout)
    rules = [bind(eliminate_identity, dropout=dropout), fold_batchnorm, prune_zero_paths, eliminate_dead]
    return PassManager(rules, until_fixed_point=True, max_rounds=MAX_ROUNDS).run(g)
