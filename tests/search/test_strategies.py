"""search.strategies: ask/tell semantics of random search and regularized (aging) evolution."""

from __future__ import annotations

import json

import numpy as np
import pytest

from search.spaces import get_space
from search.store import Candidate
from search.strategies import (STRATEGIES, CandidateSpec, RandomSearch, RegularizedEvolution, Strategy, StrategyError,
                               get_strategy, mutation_op, register_strategy)


class LineSpace:
    """A test double of the Space protocol: decisions {"x": 0..n-1}; mutate moves x by one."""

    name = "line"

    def __init__(self, n: int = 1000) -> None:
        self.n = n

    def sample(self, rng):
        return {"x": int(rng.integers(self.n))}

    def mutate(self, d, rng):
        x = d["x"] + (1 if rng.random() < 0.5 else -1)
        return {"x": x if 0 <= x < self.n else d["x"] - (x - d["x"])}

    def encode(self, d):
        return {"x": int(d["x"])}


def _done(cid: int, spec: CandidateSpec, score: float, ok: bool = True, within: bool = True) -> Candidate:
    return Candidate(id=cid, round=0, op=spec.op, decisions=spec.decisions, seed=0, parents=spec.parents,
                     status="done" if ok else "failed", score=score if ok else None, within_budget=within)


def test_registry_and_errors():
    assert {"random", "evolution"} <= set(STRATEGIES)
    with pytest.raises(StrategyError, match="unknown strategy 'anneal'") as e:
        get_strategy("anneal", LineSpace())
    assert "evolution" in e.value.hint
    with pytest.raises(StrategyError, match="unknown option"):
        get_strategy("evolution", LineSpace(), populaton=5)
    with pytest.raises(StrategyError, match="population must be"):
        get_strategy("evolution", LineSpace(), population=1)
    with pytest.raises(StrategyError, match="sample must be"):
        get_strategy("evolution", LineSpace(), population=4, sample=5)

    @register_strategy
    class Fixed(Strategy):  # a new strategy plugs in with one decorator
        name = "fixed-test"

        def ask(self, n):
            return [CandidateSpec({"x": 7}) for _ in range(n)]

        def tell(self, results):
            pass

    try:
        assert [s.decisions for s in get_strategy("fixed-test", LineSpace()).ask(2)] == [{"x": 7}, {"x": 7}]
    finally:
        del STRATEGIES["fixed-test"]


def test_random_search_is_seeded_and_avoids_repeats():
    a = get_strategy("random", LineSpace(), seed=3).ask(20)
    b = get_strategy("random", LineSpace(), seed=3).ask(20)
    assert [s.decisions for s in a] == [s.decisions for s in b]
    assert all(s.op == "sample" and s.parents == [] for s in a)
    assert len({s.decisions["x"] for s in a}) == 20
    small = RandomSearch(LineSpace(n=4), np.random.default_rng(0))
    assert sorted(s.decisions["x"] for s in small.ask(4)) == [0, 1, 2, 3]  # exhausted before repeating


def test_evolution_samples_the_first_population_then_mutates_tournament_winners():
    ev = get_strategy("evolution", LineSpace(), seed=0, population=4, sample=4)
    first = ev.ask(4)
    assert [s.op for s in first] == ["sample"] * 4
    scores = [0.5, 0.1, 0.9, 0.3]
    ev.tell([_done(i, s, sc) for i, (s, sc) in enumerate(zip(first, scores))])
    # S = P: the tournament sees the whole population, so the parent is always the best (id 1)
    kids = ev.ask(3)
    for k in kids:
        assert k.parents == [1] and k.op == "mutate:x"
        assert abs(k.decisions["x"] - first[1].decisions["x"]) == 1


def test_evolution_removes_the_oldest_not_the_worst():
    ev = RegularizedEvolution(LineSpace(), np.random.default_rng(0), population=3, sample=3)
    specs = ev.ask(3)
    ev.tell([_done(0, specs[0], 0.0), _done(1, specs[1], 0.8), _done(2, specs[2], 0.9)])
    child = ev.ask(1)[0]
    assert child.parents == [0]
    ev.tell([_done(3, child, 0.95)])  # the worst so far joins; the oldest (0, the best) leaves
    assert [c.id for c in ev.population] == [1, 2, 3]
    assert ev.ask(1)[0].parents == [1]


def test_evolution_skips_failed_and_prefers_within_budget():
    ev = RegularizedEvolution(LineSpace(), np.random.default_rng(1), population=3, sample=3)
    s = ev.ask(3)
    ev.tell([_done(0, s[0], 0.0, within=False), _done(1, s[1], 0.5), _done(2, s[2], 0.0, ok=False)])
    assert [c.id for c in ev.population] == [0, 1]  # the failed one never joins
    assert ev.ask(1)[0].parents == [1]  # 0 scores better but is over the hard budget


def test_evolution_replays_deterministically():
    """The same ask/tell sequence gives the same proposals: what --resume relies on."""

    def run():
        ev = get_strategy("evolution", LineSpace(), seed=5, population=4, sample=2)
        out, cid = [], 0
        for _ in range(6):
            specs = ev.ask(2)
            res = []
            for s in specs:
                res.append(_done(cid, s, (s.decisions["x"] % 17) / 17))
                cid += 1
            ev.tell(res)
            out += [(s.op, s.parents, s.decisions) for s in specs]
        return out

    assert run() == run()


def test_real_chain_space_mutation_ops_name_the_changed_decision():
    space = get_space("chain", input_shape=(1, 8, 8), num_classes=10)
    ev = get_strategy("evolution", space, seed=0, population=2, sample=2)
    specs = ev.ask(2)
    ev.tell([_done(0, specs[0], 0.2), _done(1, specs[1], 0.4)])
    kid = ev.ask(1)[0]
    assert kid.parents == [0] and kid.op.startswith("mutate:") and kid.op != "mutate:none"
    space.decode(kid.decisions)  # valid decisions
    assert json.dumps(space.encode(kid.decisions)) != json.dumps(space.encode(specs[0].decisions))
    assert mutation_op(space, specs[0].decisions, specs[0].decisions) == "mutate:none"


@pytest.mark.parametrize("name", ["random", "evolution", "reinforce", "pnas"])
def test_sampling_strategies_refuse_the_start_space(name):
    # the start space only grows trained parents: a sampling strategy on it would retrain the start graph forever
    from search.morph import get_space as get_any_space

    space = get_any_space("start")
    with pytest.raises(StrategyError, match="only grows trained networks") as info:
        get_strategy(name, space, seed=0)
    assert "hillclimb" in info.value.hint
