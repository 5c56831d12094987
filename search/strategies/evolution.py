"""Regularized (aging) evolution, Real et al., "Regularized Evolution for Image Classifier
Architecture Search" (AAAI 2019), Algorithm 1.

- The population is a queue of the last ``population`` (P) evaluated candidates.
- The first P candidates asked for are random samples of the space.
- Every later candidate: draw ``sample`` (S) members of the population uniformly without
  replacement, take the best of them (the lowest score; a candidate over the hard budget, e.g.
  ``--max-latency-ms``, is never chosen while a member within the budget was drawn), and
  mutate it (``space.mutate``: one small change).
- When a result is told, it joins the population and the *oldest* member leaves (aging),
  not the worst: each architecture survives only P rounds unless its children carry it on,
  which regularises against architectures lucky in one noisy training run.

Failed candidates never join the population. With ``ask(n)`` for n > 1 the n children come
from the same population (a synchronous batch); their results are told in id order.

A child whose architecture was asked for before (the same canonical decisions) is mutated again
from the same parent, up to ``retries`` times (default 20), as random search re-draws a repeated
sample: a search whose budget counts candidates (a tabular benchmark's queries, or training runs)
does not spend it on an architecture it has already evaluated. ``retries=0`` is the textbook
algorithm, which evaluates repeats again.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Sequence

from search.strategies.base import CandidateSpec, Strategy, StrategyError, mutation_op, register_strategy

__all__ = ["RegularizedEvolution"]


@register_strategy
class RegularizedEvolution(Strategy):
    """Aging evolution (options: ``population`` P = 10, ``sample`` S = 3, ``retries`` 20 re-mutations of a repeat)."""

    name = "evolution"
    SEEDS = True
    OPTIONS = {"population": 10, "sample": 3, "retries": 20}

    def __init__(self, space, rng, **options) -> None:
        super().__init__(space, rng, **options)
        p, s = self.options["population"], self.options["sample"]
        if not (isinstance(p, int) and p >= 2):
            raise StrategyError(f"evolution: population must be an int >= 2, got {p!r}", hint="pass --population 10")
        if not (isinstance(s, int) and 1 <= s <= p):
            raise StrategyError(f"evolution: sample must be an int in 1..population ({p}), got {s!r}",
                                hint="pass --sample 3 (at most --population)")
        r = self.options["retries"]
        if isinstance(r, bool) or not (isinstance(r, int) and r >= 0):
            raise StrategyError(f"evolution: retries must be an int >= 0, got {r!r}",
                                hint="pass --strategy-opt retries=20 (0: evaluate repeats again)")
        self.population: deque = deque()  # search.store.Candidate rows, oldest first
        self.asked = 0
        self._seen: set[str] = set()  # canonical decisions asked so far

    def _parent(self):
        members = list(self.population)
        idx = self.rng.choice(len(members), size=min(self.options["sample"], len(members)), replace=False)
        drawn = [members[int(i)] for i in idx]
        # within-budget first, then the lowest score, then the lowest id (a deterministic tie-break)
        return min(drawn, key=lambda c: (not c.within_budget, c.score, c.id))

    def ask(self, n: int) -> list[CandidateSpec]:
        out = []
        for _ in range(n):
            seeds = getattr(self.space, "seeds", ())
            if self.asked < len(seeds):  # the population starts from the given architectures
                out.append(CandidateSpec(decisions=seeds[self.asked], op="start", parents=[]))
            elif self.asked < self.options["population"] or not self.population:
                out.append(CandidateSpec(decisions=self.space.sample(self.rng), op="sample", parents=[]))
            else:
                parent = self._parent()
                child = self.space.mutate(parent.decisions, self.rng)
                for _ in range(self.options["retries"]):
                    if self._key(child) not in self._seen:
                        break
                    child = self.space.mutate(parent.decisions, self.rng)  # a repeat: mutate the parent again
                out.append(CandidateSpec(decisions=child, op=mutation_op(self.space, parent.decisions, child),
                                         parents=[parent.id]))
            self._seen.add(self._key(out[-1].decisions))
            self.asked += 1
        return out

    def _key(self, decisions) -> str:
        return json.dumps(self.space.encode(decisions), sort_keys=True)

    def tell(self, results: Sequence) -> None:
        for c in results:
            if c.status != "done" or c.score is None:
                continue
            self.population.append(c)
            while len(self.population) > self.options["population"]:
                self.population.popleft()  # remove the oldest, not the worst
