"""SNAS (Xie et al., 2019): stochastic NAS with Gumbel-softmax and a resource penalty.

The supernet is lowered with ``choice_mode="gumbel"``: every forward draws relaxed one-hot
weights ``Z = softmax((log p + g) / tau)`` per decision (``g`` Gumbel noise), so the loss is
differentiable in both the weights and the architecture logits, and one-level optimisation
updates both on the *same training batch* (SGD for the weights, Adam for the logits). The
temperature is annealed per step: ``tau = max(tau_min, tau0 * tau_decay ** step)``.

Resource penalty (SNAS eq. 16, ``costmodels.expected_cost``)::

    loss = cross_entropy + lam * E_p[cost(Z)] / cost_uniform

where ``E_p[cost(Z)] = fixed + sum_key p_key . c_key`` is linear in ``p = softmax(logits)``,
``c_key`` the per-candidate costs (``costmodels.candidate_costs``) and ``cost_uniform`` the
expected cost under uniform probabilities (so ``lam`` is unit-free: ``lam = 0.1`` trades 0.1
nats of loss for the whole cost). The cost source (option ``cost``): ``macs``, ``flops``,
``params`` or ``latency`` (per-op milliseconds from a :class:`costmodels.LatencyTable` on the
target backend: the objective's ``latency:<backend>``, else ``config.latency_backend``; the
table file is option ``table``, default ``<run folder>/latency_table.sqlite``, measured where
missing); ``auto`` (the default) takes the objective's cost (``macs`` for ``error``).

The child network is read off without retraining heuristics: the argmax of every decision,
where the zero op deletes the edge / layer (``decisions_from_probs(..., drop_zero=True)``;
on the DARTS space a node keeps its two strongest surviving edges, see there).
``child_val_error`` in the progress figures is that child's validation error with the
supernet's weights (the samplers switched to ``fixed``).

Options: ``lam``, ``cost``, ``table``, ``tau0``, ``tau_decay``, ``tau_min`` and those of
:class:`search.oneshot.darts.RelaxedDriver` (``w_lr``, ``arch_lr``, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from search.oneshot.base import decisions_from_probs, register_oneshot
from search.oneshot.darts import RelaxedDriver

__all__ = ["SnasDriver"]

_COSTS = ("auto", "macs", "flops", "params", "latency")


@register_oneshot
class SnasDriver(RelaxedDriver):
    """SNAS: Gumbel-softmax, annealed temperature, one-level updates, ``lam * expected cost`` penalty."""

    name = "snas"
    CHOICE_MODE = "gumbel"
    OPTIONS = {**RelaxedDriver.BASE_OPTIONS, "lam": 0.0, "cost": "auto", "table": "", "tau0": 1.0,
               "tau_decay": 0.9, "tau_min": 0.1}

    def __init__(self, space, dataset, config, seed: int = 0, **options) -> None:
        super().__init__(space, dataset, config, seed, **options)
        from search.strategies import StrategyError

        self._check_num("lam", 0.0)
        self._check_num("tau0", 0.0, strict=True)
        self._check_num("tau_decay", 0.0, strict=True, hi=1.0)
        self._check_num("tau_min", 0.0, strict=True)
        cost = self.options["cost"]
        if cost not in _COSTS:
            raise StrategyError(f"strategy 'snas': option cost={cost!r} is not one of {list(_COSTS)}",
                                hint="--strategy-opt cost=macs (or flops, params, latency, auto)")
        self.cost_source, self.backend = self._cost_source(cost)
        self.table = None
        if self.cost_source == "latency":
            self.table = self._latency_table()
        import costmodels

        self.costs = costmodels.candidate_costs(self.supernet, self.cost_source, table=self.table)
        uniform = {k: torch.full((len(v),), 1.0 / len(v), dtype=torch.float64)
                   for k, v in self.costs.candidates.items()}
        self.cost_uniform = float(self.costs.expected(uniform))
        if not self.cost_uniform > 0:
            raise StrategyError(f"strategy 'snas': the supernet's expected {self.cost_source} is "
                                f"{self.cost_uniform}; the penalty needs a positive cost",
                                hint="use another --strategy-opt cost=")

    def _cost_source(self, cost: str) -> tuple[str, str | None]:
        from search.config import parse_objective

        obj = parse_objective(self.config.objective)
        if cost == "auto":
            cost = obj.cost or "macs"
        if cost == "latency":
            return "latency", obj.backend if obj.cost == "latency" else self.config.latency_backend
        return cost, None

    def _latency_table(self):
        import costmodels

        path = self.options["table"] or (None if self.run_dir is None else self.run_dir / "latency_table.sqlite")
        if path is None:
            from search.strategies import StrategyError

            raise StrategyError("strategy 'snas': a latency penalty needs a latency table file",
                                hint="--strategy-opt table=PATH.sqlite (or run it through run_search with --out)")
        return costmodels.LatencyTable(Path(path), self.backend, threads=1, statistic="min", warmup=3, repeats=15)

    # ---------------------------------------------------------------- the penalty

    def penalty(self, logits: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``lam * E_softmax(logits)[cost] / cost_uniform`` (differentiable in ``logits``; default: the supernet's)."""
        if logits is None:
            logits = {k: s.logits for k, s in self.samplers().items()}
        probs = {k: torch.softmax(v, -1) for k, v in logits.items()}
        return self.options["lam"] * self.costs.expected(probs) / self.cost_uniform

    def expected_cost(self) -> float:
        """The expected cost (in the source's unit: MACs, params, ms) under the current distribution."""
        return float(self.costs.expected({k: p.double() for k, p in self.probs().items()}))

    def tau(self) -> float:
        """The temperature of the coming step."""
        o = self.options
        return max(o["tau_min"], o["tau0"] * o["tau_decay"] ** self.steps_done)

    # ---------------------------------------------------------------- a step

    def step(self) -> dict:
        tau = self.tau()
        for s in self.samplers().values():
            s.tau = tau
        total, pen_total, count = self.zeros(), self.zeros(), 0
        for x, y in self.batches("train"):
            ce = self._loss(x, y)
            pen = self.penalty()
            loss = ce + pen.to(ce.dtype)
            self._weight_step(loss)  # one level: the same backward also fills the logits' gradients
            self.a_opt.step()
            total += ce.detach().double() * len(y)
            pen_total += pen.detach().double() * len(y)
            count += len(y)
        return {"loss": float(total) / max(1, count), "penalty": float(pen_total) / max(1, count),
                "child_val_error": self.child_val_error(), "entropy": self.entropy(), "tau": tau,
                f"expected_{self.cost_source}": self.expected_cost()}

    def child_val_error(self) -> float:
        """Validation error of the argmax child with the supernet's weights."""
        samplers = self.samplers()
        for s in samplers.values():
            s.mode, s.index = "fixed", int(torch.argmax(s.logits.detach()))
        try:
            return self.val_error(self.gm)
        finally:
            for s in samplers.values():
                s.mode = "gumbel"

    def derive(self) -> dict:
        return decisions_from_probs(self.space, self.supernet, {k: p.cpu().numpy() for k, p in self.probs().items()},
                                    drop_zero=True)

    def child_cost(self) -> float:
        """The cost of the argmax child (every decision's argmax) under the penalty's cost source."""
        return self.costs.of({k: int(np.argmax(p.cpu().numpy())) for k, p in self.probs().items()})

