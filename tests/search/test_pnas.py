"""--strategy pnas: the progressive plans, the surrogate, beam expansion, replay, and a tiny digits search."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from search.experiment import ExperimentConfig, export_candidate, run_search
from search.spaces import get_space
from search.store import Candidate, Store
from search.strategies import STRATEGIES, StrategyError, get_strategy
from search.strategies.pnas import PNAS, Surrogate, progressive_plan


def _darts():
    return get_space("darts", input_shape=(1, 8, 8), num_classes=10, cells=1, channels=4)


def _chain():
    return get_space("chain", input_shape=(1, 8, 8), num_classes=10, layers=3)


def _row(cid: int, rnd: int, decisions: dict, score: float | None, status: str = "done") -> Candidate:
    return Candidate(id=cid, round=rnd, op="pnas", decisions=decisions, seed=0, status=status, score=score)


def test_darts_plan_one_node_per_stage_and_a_filler_cell():
    space = _darts()
    plan = progressive_plan(space)
    names = [n for n, _ in space.variables()]
    assert len(plan.stages) == 4 and plan.unit == "node"
    assert sorted(i for s in plan.stages for i in s) == list(range(len(names)))
    assert [names[i] for i in plan.stages[1]] == ["normal.n1.inputs", "normal.n1.op0", "normal.n1.op1",
                                                  "reduce.n1.inputs", "reduce.n1.op0", "reduce.n1.op1"]
    d = space.from_choices(plan.filler)
    # undecided node n = skip(state n) + skip(state n + 1)
    assert d["normal"] == [["skip_connect", 0], ["skip_connect", 1], ["skip_connect", 1], ["skip_connect", 2],
                           ["skip_connect", 2], ["skip_connect", 3], ["skip_connect", 3], ["skip_connect", 4]]
    g = space.build(d)
    # the normal-cell filler is parameter-free: its nodes are identities (simplified away)
    assert not any(n.id.startswith("cell0.n") and n.params for n in g.nodes())


def test_chain_plan_grows_layer_by_layer():
    space = _chain()
    plan = progressive_plan(space)
    assert plan.unit == "layer" and len(plan.stages) == 3
    d = space.from_choices(plan.filler)
    # undecided layers are skipped where they may be; the stride-2 layer is the cheapest block
    assert d["layers"][0] == {"skip": True} and d["layers"][2] == {"skip": True}
    assert d["layers"][1] == {"expand": 1, "kernel": 3, "skip": False, "width": 16}


def test_surrogate_ranks_a_toy_score():
    rng = np.random.default_rng(0)
    sizes = [4, 4, 3, 5]
    ch = np.stack([rng.integers(0, n, 120) for n in sizes], 1)
    score = (ch[:, 0] == 1) * 1.0 + 0.5 * ch[:, 2] - 0.2 * ch[:, 3]
    s = Surrogate(sizes, ensemble=2, steps=300)
    dec = [[True] * 4] * 120
    s.fit(ch[:80], dec[:80], score[:80], rng)
    pred = s.predict(ch[80:], dec[80:])
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    rho = np.corrcoef(rank(pred), rank(score[80:]))[0, 1]
    assert rho > 0.8


def test_beam_expansion_stage_by_stage():
    space = _darts()
    plan = progressive_plan(space)
    s = get_strategy("pnas", space, seed=0, beam=2, surrogate_steps=50, ensemble=1, max_expansions=300)
    score = lambda d: sum(v for v in space.to_choices(d)) / 100.0  # noqa: E731 (a toy score: lower indices win)
    told: list[Candidate] = []
    for stage in range(4):
        specs = s.ask(2)
        assert {sp.op for sp in specs} == {f"pnas:node{stage + 1}"} and s.stage == stage
        for sp in specs:
            ch = space.to_choices(sp.decisions)
            undecided = [i for st in plan.stages[stage + 1:] for i in st]
            assert [ch[i] for i in undecided] == [plan.filler[i] for i in undecided]  # later nodes: filler
            if stage:
                (pid,) = sp.parents
                parent = space.to_choices(told[pid].decisions)
                earlier = [i for st in plan.stages[:stage] for i in st]
                assert [ch[i] for i in earlier] == [parent[i] for i in earlier]  # extends a beam member
                # the beam is the best two of the previous stage
                prev = sorted((c for c in told if c.round == stage - 1), key=lambda c: c.score)[:2]
                assert pid in {c.id for c in prev}
        rows = [_row(len(told) + i, stage, sp.decisions, score(sp.decisions)) for i, sp in enumerate(specs)]
        told += rows
        s.tell(rows)
    refine = s.ask(2)
    assert {sp.op for sp in refine} == {"pnas:refine"}
    keys = [tuple(space.to_choices(c.decisions)) for c in told] + [tuple(space.to_choices(sp.decisions))
                                                                    for sp in refine]
    assert len(set(keys)) == len(keys)  # never the same architecture twice


def test_replay_gives_the_same_asks():
    space = _chain()
    runs = []
    for _ in range(2):
        s = get_strategy("pnas", space, seed=np.random.default_rng(3), beam=3, surrogate_steps=30, ensemble=1)
        asked = []
        for r in range(5):  # round size 2 does not divide the beam: steps straddle rounds
            specs = s.ask(2)
            asked.append([sp.decisions for sp in specs])
            s.tell([_row(2 * r + i, r, sp.decisions, 0.1 * ((2 * r + 3 * i) % 5),
                         "failed" if (r, i) == (1, 0) else "done") for i, sp in enumerate(specs)])
        runs.append(asked)
    assert runs[0] == runs[1]


def test_registered_and_options_checked():
    assert STRATEGIES["pnas"] is PNAS
    with pytest.raises(StrategyError, match="beam must be an int >= 1"):
        get_strategy("pnas", _chain(), seed=0, beam=0)
    with pytest.raises(StrategyError, match="surrogate_lr"):
        get_strategy("pnas", _chain(), seed=0, surrogate_lr=float("nan"))


def test_tiny_search_on_digits(tmp_path):
    cfg = ExperimentConfig(space="darts", space_options={"cells": 1, "channels": 4}, strategy="pnas",
                           strategy_options={"beam": 2, "surrogate_steps": 50, "ensemble": 1}, budget="5c",
                           round_size=2, train={"epochs": 1, "batch_size": 128, "lr": 0.05})
    summary = run_search(cfg, tmp_path / "run")
    assert summary.counts["done"] == 5
    with Store.open(tmp_path / "run") as st:
        cands = st.candidates()
    assert [c.op for c in cands] == ["pnas:node1", "pnas:node1", "pnas:node2", "pnas:node2", "pnas:node3"]
    export_candidate(tmp_path / "run", tmp_path / "best.onnx", best=True)
    onnx.checker.check_model(onnx.load(tmp_path / "best.onnx"), full_check=True)
    # resume after the budget: the replay matches the stored rounds and nothing is re-run
    again = run_search(cfg, tmp_path / "run", resume=True)
    assert again.counts == summary.counts
