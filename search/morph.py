"""Morphism-based candidates: a child is its parent's *trained* graph plus rewrites (weight inheritance).

NASH hill climbing and Petridish do not build candidates from decisions with fresh weights; a
child is "the parent's trained graph + some function-preserving rewrites" and training starts
from the inherited weights. This module is that extension of the experiment loop:

- :class:`StartSpace` (space ``"start"``, in ``search.spaces.start``): the space of morphism search. Its only "sampled"
  network is the start graph -- the built-in :func:`starter` net, or any graph file
  (``archir search --strategy hillclimb --start net.json``, e.g. one imported from PyTorch; its
  weights, if saved, are kept: a warm start). Its decisions say how a child is *grown*::

      {"method": "start"}                                              # the start graph itself
      {"method": "morph", "parent": 3, "seed": 77, "n": 2,
       "ops": ["deepen", "widen", "add_skip", "enlarge_kernel"]}       # NASH: n random morphisms
      {"method": "petridish", "parent": 3, "seed": 77, "n": 1,         # Petridish: n join points,
       "ops": ["conv3x3", "sep_conv3x3", "maxpool3x3", "identity"],    # candidate ops,
       "inputs": 2, "select": 1, "epochs": 1, "l1": 0.001}             # ... see search.petridish

  Options ``max_params`` / ``max_macs`` (``--space-opt max_params=20000``) bound every grown child:
  ``morph`` moves past a bound are refused (``passes.random_morphism``'s bounds, MACs as
  ``costmodels.count`` counts them), and a ``petridish`` child past one fails with the reason.

  The random moves are drawn in the worker from ``seed`` (the legal targets depend on the
  parent's graph, which only the worker holds), so the decisions are small, canonical and
  replayable: the same parent and seed give the same child. What was applied is recorded in the
  child's graph (``graph.meta["grown"]``: the calls, e.g. ``"widen(node='c1.conv', ...)"``).
- the experiment's task for such a candidate carries its parent's graph as plain data (archir
  JSON text + safetensors bytes: :func:`graph_to_data`), so the process and Ray executors work;
  :func:`grow` runs in the worker: it applies the moves, checks with
  ``passes.check_preserved`` that the child computes its parent's function *before training*
  (eval mode; the child fails with the reason otherwise) and records the max error in the
  candidate's metrics (``preserve_max_abs``); the experiment then trains it with the run's
  training config (SGDR for these strategies) starting from the inherited weights.

Example:
    >>> space = StartSpace(input_shape=(1, 8, 8), num_classes=10)
    >>> g = space.build(space.sample(None), seed=0)
    >>> [n.op for n in g.nodes()][:4]
    ['input', 'conv2d', 'batchnorm2d', 'relu']
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from archir import Graph
from search.spaces import get_space as _get_space
from search.spaces.base import DecisionError, Space
from search.spaces.start import (DEFAULT_MORPHISMS, METHODS, StartSpace, bounds_of, graph_file_data,  # noqa: F401
                                 graph_from_data, graph_to_data, past_bounds, starter)

__all__ = ["StartSpace", "starter", "get_space", "graph_to_data", "graph_from_data", "grow", "parent_task",
           "bounds_of", "past_bounds", "DEFAULT_MORPHISMS", "METHODS"]


def get_space(name: str, **kwargs: Any) -> Space:
    """:func:`search.spaces.get_space` (which knows ``"start"`` too); kept here for existing imports."""
    return _get_space(name, **kwargs)


# --------------------------------------------------------------------------- driver and worker sides


def parent_task(space: Space, decisions: Mapping, run_dir: str | os.PathLike,
                graph_path: str | None, seed: int = 0) -> dict:
    """The task fields of a grown candidate: ``{"parent_graph": data}`` (driver side).

    Args:
        space: the run's space (a :class:`StartSpace`, else ``{}`` is returned).
        decisions: the candidate's decisions.
        run_dir: the run folder.
        graph_path: the parent's ``graph_path`` in the store (None for the start graph).
        seed: the candidate's seed (the built-in starter's weights; a start file keeps its own).

    Raises:
        ValueError: the parent has no trained graph (it failed) -- strategies only grow done parents.
    """
    if not getattr(space, "grows", False):
        return {}
    d = space.decode(decisions)
    if d["method"] == "start":
        return {"parent_graph": space.start_data(seed)}
    if not graph_path:
        raise ValueError(f"candidate parent {d['parent']} has no trained graph")
    return {"parent_graph": graph_file_data(Path(run_dir) / graph_path)}


def grow(task: Mapping[str, Any], dataset: Any = None) -> tuple[Graph, dict]:
    """Build a grown candidate from its task (worker side): the parent's graph + the decisions' rewrites.

    - ``start``: the start graph as shipped (its weights, or fresh ones from the candidate seed).
    - ``morph``: ``n`` random legal morphisms (``passes.random_morphism`` over ``ops``, drawn from
      ``seed``, within the space's ``max_params``/``max_macs`` in ``task["space_options"]``: a move past
      one is refused, and if every move is, the candidate fails with the reason), then
      ``passes.check_preserved(parent, child)`` (eval mode): the child starts with its parent's
      function, or this raises ``FunctionNotPreserved`` (the candidate fails with it).
    - ``petridish``: :func:`search.petridish.grow_petridish` (candidate training on ``dataset``,
      selection, finalize); a child past the space's bound fails (``DecisionError`` with the sizes).

    Returns:
        ``(graph, info)``: ``info["metrics"]`` (floats: ``preserve_max_abs``, ``grow_epochs`` ...),
        ``info["epochs"]`` (training epochs spent while growing) and ``info["moves"]`` (what was applied;
        also stored in ``graph.meta["grown"]``).
    """
    import passes

    d = dict(task["decisions"])
    parent = graph_from_data(task["parent_graph"])
    method = d["method"]
    bounds = bounds_of(task.get("space_options"))
    if method == "start":
        g = parent.copy()
        g.init_params(seed=int(task["seed"]), only_missing=True)
        info = {"metrics": {}, "epochs": 0, "moves": []}
    elif method == "morph":
        rng = np.random.default_rng(int(d["seed"]))
        g, moves = parent, []
        for _ in range(int(d["n"])):
            g, desc = passes.random_morphism(g, rng, morphisms=d["ops"], **bounds)
            moves.append(desc)
        rep = passes.check_preserved(parent, g, seed=int(d["seed"]) % (2 ** 31))
        info = {"metrics": {"preserve_max_abs": float(rep.max_abs), "grow_epochs": 0.0}, "epochs": 0, "moves": moves}
    elif method == "petridish":
        from search.petridish import grow_petridish

        if dataset is None:
            raise ValueError("petridish growth trains candidates: pass the dataset")
        hint = ("raise --space-opt max_params/max_macs, or grow less per step (--strategy-opt targets=1, "
                "select=1, cheaper ops such as maxpool3x3 or identity)")
        over = past_bounds(parent, bounds)
        if over:  # nothing attached to it can come back under the bound: do not train candidates for nothing
            raise DecisionError(f"petridish parent {d['parent']} is already past the space's bound: {over}", hint=hint)
        g, info = grow_petridish(parent, dataset, d, threads=int(task.get("threads", 1)),
                                 train=task.get("train") or {})
        over = past_bounds(g, bounds)
        if over:
            raise DecisionError(f"the petridish child of {d['parent']} is past the space's bound: {over} "
                                f"(grown by {info['moves']})", hint=hint)
    else:
        raise DecisionError(f"unknown method {method!r}", where="method")
    g = g.copy()
    g.meta = {**dict(g.meta or {}), "grown": {"method": method, "parent": d.get("parent"), "moves": info["moves"]}}
    return g, info
