"""Petridish forward search (Hu et al., 2019): grow parents near the Pareto frontier with selected candidate ops.

Needs the ``start`` space (:class:`search.morph.StartSpace`). The first round is the start graph
(a built-in starter, or ``--start net.json``: a warm start keeps its weights). Every later round
asks ``n`` children; each child's parent is drawn uniformly from the finished candidates *near*
the current Pareto frontier of (validation error, cost): those whose validation error is within
``near`` of the frontier's error at their cost (the frontier itself included). A child is
:func:`search.petridish.grow_petridish` of the parent: candidate ops from ``ops`` attached at
``targets`` random join points through ``stop_gradient``/``stop_forward`` (the parent is unchanged
while they train), ``inputs`` input options each, ``epochs`` of candidate training with an L1
penalty ``l1`` on the join weights, the ``select`` largest join weights kept per join point, the
stop ops removed (``passes.finalize``), and the grown model trained (the run's training config)
from the inherited weights. Every trained model is recorded in the store, so ``archir gallery``
shows the whole frontier.

Options: ``ops`` (default conv3x3, sep_conv3x3, maxpool3x3, avgpool3x3, identity), ``targets`` (1),
``inputs`` (2), ``select`` (1), ``epochs`` (1), ``l1`` (0.001), ``near`` (0.01), ``cost``
(``"macs"``; ``"latency_ms"`` with a latency objective, ``"params"``).
"""

from __future__ import annotations

import math
from typing import Sequence

from search.pareto import Point, frontier
from search.strategies.base import CandidateSpec, Strategy, StrategyError, register_strategy
from search.strategies.hillclimb import check_grow_space

__all__ = ["Petridish"]


@register_strategy
class Petridish(Strategy):
    """Petridish: grow parents drawn near the (error, cost) frontier (see the module docstring)."""

    name = "petridish"
    GROWS = True
    OPTIONS = {"ops": ["conv3x3", "sep_conv3x3", "maxpool3x3", "avgpool3x3", "identity"], "targets": 1, "inputs": 2,
               "select": 1, "epochs": 1, "l1": 0.001, "near": 0.01, "cost": "macs"}

    def __init__(self, space, rng, **options) -> None:
        super().__init__(space, rng, **options)
        check_grow_space(self.name, space)
        from search.petridish import CANDIDATE_OPS

        o = self.options
        if not isinstance(o["ops"], (list, tuple)) or not o["ops"] or any(x not in CANDIDATE_OPS for x in o["ops"]):
            raise StrategyError(f"petridish: ops must be a non-empty list of {sorted(CANDIDATE_OPS)}, got {o['ops']!r}",
                                hint='pass e.g. --strategy-opt ops=\'["conv3x3","maxpool3x3"]\'')
        for k in ("targets", "inputs", "select", "epochs"):
            if isinstance(o[k], bool) or not isinstance(o[k], int) or o[k] < 1:
                raise StrategyError(f"petridish: {k} must be an int >= 1, got {o[k]!r}",
                                    hint=f"pass --strategy-opt {k}={self.OPTIONS[k]}")
        for k in ("l1", "near"):
            if isinstance(o[k], bool) or not isinstance(o[k], (int, float)) or not math.isfinite(o[k]) or o[k] < 0:
                raise StrategyError(f"petridish: {k} must be a number >= 0, got {o[k]!r}",
                                    hint=f"pass --strategy-opt {k}={self.OPTIONS[k]}")
        if o["cost"] not in ("macs", "params", "flops", "latency_ms"):
            raise StrategyError(f"petridish: cost must be macs, params, flops or latency_ms, got {o['cost']!r}",
                                hint="pass --strategy-opt cost=macs")
        self.options["ops"] = list(o["ops"])
        self.members: list = []  # finished candidates that can be parents (search.store.Candidate)
        self._start_out = False  # the start graph is asked for and its result not told yet

    def near_frontier(self) -> list:
        """The members whose validation error is within ``near`` of the frontier's at their cost (by id)."""
        key = self.options["cost"]
        pts = [Point(c.id, float(c.metrics["val_error"]), float(c.costs[key]), c.within_budget)
               for c in self.members if key in c.costs and "val_error" in c.metrics]
        front = frontier(pts)
        out = []
        for p in pts:
            if not p.eligible:
                continue
            ref = [f.error for f in front if f.cost <= p.cost]  # the frontier's error at p's cost
            if ref and p.error <= min(ref) + float(self.options["near"]):
                out.append(p.id)
        return sorted(out)

    def ask(self, n: int) -> list[CandidateSpec]:
        pool = self.near_frontier()
        if not pool:  # nothing trained yet (or only failures): train the start graph
            if self.asynchronous and self._start_out:
                return []  # every child grows from a trained member: wait for the start graph
            self._start_out = True
            return [CandidateSpec(decisions=self.space.sample(self.rng), op="start", parents=[])]
        out = []
        o = self.options
        for _ in range(n):
            pid = int(pool[int(self.rng.integers(len(pool)))])
            d = {"method": "petridish", "parent": pid, "seed": int(self.rng.integers(2 ** 31 - 1)), "n": o["targets"],
                 "ops": list(o["ops"]), "inputs": o["inputs"], "select": o["select"], "epochs": o["epochs"],
                 "l1": float(o["l1"])}
            out.append(CandidateSpec(decisions=self.space.decode(d), op=f"petridish:{o['select']}", parents=[pid]))
        return out

    def tell(self, results: Sequence) -> None:
        if any(c.op == "start" for c in results):
            self._start_out = False
        self.members += [c for c in results if c.status == "done" and c.score is not None]
