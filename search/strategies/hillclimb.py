"""NASH hill climbing (Elsken et al., 2017): grow children of the current best by random network morphisms.

Needs the ``start`` space (:class:`search.morph.StartSpace`). The first round is the start graph
alone (trained like every candidate). Every later round asks ``n`` children (the round size, so
an executor trains them in parallel) of the *incumbent* -- the best candidate so far by score
(validation error, or the scalarised error + cost objective), within the hard budget. A child is
the incumbent's trained graph with ``moves`` random legal morphisms drawn from ``morphisms``
(default deepen, widen, add_skip -- skip by addition or concatenation --, enlarge_kernel),
checked to compute the incumbent's function before training (``search.morph.grow``), then
trained from the inherited weights (NASH trains children briefly with SGDR: pass
``--schedule sgdr``). ``tell`` keeps the best of the incumbent and its finished children, so the
incumbent's score never gets worse (hill climbing).

Options: ``moves`` (morphisms per child, default 3), ``morphisms`` (names in
``passes.MORPHISMS``).

Example:
    >>> from search.morph import StartSpace
    >>> s = get_strategy("hillclimb", StartSpace(), seed=0)      # doctest: +SKIP
    >>> [c.op for c in s.ask(4)]                                  # doctest: +SKIP
    ['start']
"""

from __future__ import annotations

from typing import Sequence

from search.strategies.base import CandidateSpec, Strategy, StrategyError, register_strategy

__all__ = ["HillClimb", "check_grow_space"]


def check_grow_space(name: str, space) -> None:
    """Refuse a space whose candidates are not grown from parents (e.g. ``chain``)."""
    if not getattr(space, "grows", False):
        raise StrategyError(f"strategy {name!r} grows trained networks with morphisms; it needs the 'start' space, "
                            f"not {getattr(space, 'name', space)!r}",
                            hint="pass --space start (optionally --start net.json; default: the built-in starter)")


def _better(a, b) -> bool:
    """True when candidate ``a`` beats ``b`` (score, then the lower id)."""
    return (a.score, a.id) < (b.score, b.id)


@register_strategy
class HillClimb(Strategy):
    """NASH hill climbing over network morphisms (see the module docstring)."""

    name = "hillclimb"
    GROWS = True
    OPTIONS = {"moves": 3, "morphisms": ["deepen", "widen", "add_skip", "enlarge_kernel"]}

    def __init__(self, space, rng, **options) -> None:
        super().__init__(space, rng, **options)
        check_grow_space(self.name, space)
        m, ms = self.options["moves"], self.options["morphisms"]
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise StrategyError(f"hillclimb: moves must be an int >= 1, got {m!r}", hint="pass --strategy-opt moves=3")
        import passes

        if not isinstance(ms, (list, tuple)) or not ms or any(x not in passes.MORPHISMS for x in ms):
            raise StrategyError(f"hillclimb: morphisms must be a non-empty list of {sorted(passes.MORPHISMS)}, "
                                f"got {ms!r}", hint='pass e.g. --strategy-opt morphisms=\'["deepen","widen"]\'')
        self.options["morphisms"] = list(ms)
        self.incumbent = None  # the best finished candidate so far (search.store.Candidate)
        self.started = False   # the start graph has been asked for
        self._start_out = False  # the start graph is asked for and its result not told yet

    def _child(self, parent_id: int) -> CandidateSpec:
        d = {"method": "morph", "parent": int(parent_id), "seed": int(self.rng.integers(2 ** 31 - 1)),
             "n": int(self.options["moves"]), "ops": list(self.options["morphisms"])}
        return CandidateSpec(decisions=self.space.decode(d), op=f"morph:{self.options['moves']}", parents=[parent_id])

    def ask(self, n: int) -> list[CandidateSpec]:
        if self.incumbent is None:  # nothing trained yet (or the start graph failed): (re)train the start graph
            if self.asynchronous and self._start_out:
                return []  # every child grows from the start graph: wait for it
            self.started = self._start_out = True
            return [CandidateSpec(decisions=self.space.sample(self.rng), op="start", parents=[])]
        return [self._child(self.incumbent.id) for _ in range(n)]

    def tell(self, results: Sequence) -> None:
        for c in results:
            if c.op == "start":
                self._start_out = False
            if c.status == "done" and c.within_budget and c.score is not None:
                if self.incumbent is None or _better(c, self.incumbent):
                    self.incumbent = c
