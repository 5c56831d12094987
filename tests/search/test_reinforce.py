"""--strategy reinforce (NAS-RL): a tiny search on digits, the rewards, and resume by replay."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from search.experiment import ExperimentConfig, export_candidate, run_search
from search.spaces import get_space
from search.store import Candidate, Store
from search.strategies import STRATEGIES, StrategyError, get_strategy
from search.strategies.reinforce import Reinforce, reward_of

TINY = dict(space="chain", space_options={"layers": 2}, strategy="reinforce", budget="6c", round_size=2,
            strategy_options={"lr": 0.05}, train={"epochs": 1, "batch_size": 128, "lr": 0.05})


def _space():
    return get_space("chain", input_shape=(1, 8, 8), num_classes=10, layers=2)


def _row(cid: int, decisions: dict, score: float | None, status: str = "done", within: bool = True) -> Candidate:
    return Candidate(id=cid, round=0, op="controller", decisions=decisions, seed=0, status=status, score=score,
                     within_budget=within)


def _same_state(a, b) -> bool:
    (ma, ta), (mb, tb) = a.controller_state(), b.controller_state()
    return ma == mb and set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_registered_and_options_checked():
    assert STRATEGIES["reinforce"] is Reinforce
    with pytest.raises(StrategyError, match="unknown option"):
        get_strategy("reinforce", _space(), seed=0, population=3)
    with pytest.raises(StrategyError, match="reinforce: controller option lr"):
        get_strategy("reinforce", _space(), seed=0, lr=-1.0)
    with pytest.raises(StrategyError, match="budget_penalty"):
        get_strategy("reinforce", _space(), seed=0, budget_penalty=-1)


def test_reward_of():
    d = _space().sample(np.random.default_rng(0))
    assert reward_of(_row(0, d, 0.25)) == pytest.approx(-0.25)
    assert reward_of(_row(0, d, 0.25, within=False), budget_penalty=2.0) == pytest.approx(-2.25)
    assert reward_of(_row(0, d, None, status="failed")) is None


def test_replay_rebuilds_the_controller_bit_for_bit():
    """The resume contract: the same asks and the same tells give the same torch state."""
    space = _space()
    a = get_strategy("reinforce", space, seed=np.random.default_rng(5), lr=0.05)
    rows = []
    for r in range(3):
        specs = a.ask(3)
        told = [_row(3 * r + i, s.decisions, 0.1 * ((3 * r + i) % 4), status="failed" if i == 1 and r == 1 else "done")
                for i, s in enumerate(specs)]
        told = [c if c.status == "done" else _row(c.id, c.decisions, None, "failed") for c in told]
        a.tell(told)
        rows.append(told)
    assert len(a.history) == 3 and a.controller.updates == 3
    b = get_strategy("reinforce", space, seed=np.random.default_rng(5), lr=0.05)
    for told in rows:
        assert [s.decisions for s in b.ask(len(told))] == [c.decisions for c in told]
        b.tell(told)
    assert _same_state(a, b)
    assert [s.decisions for s in a.ask(2)] == [s.decisions for s in b.ask(2)]
    # a different history gives a different controller (the check above can fail)
    c = get_strategy("reinforce", space, seed=np.random.default_rng(5), lr=0.05)
    for told in rows:
        c.ask(len(told))
        c.tell([_row(x.id, x.decisions, 1.0 - (x.score or 0.0)) for x in told])
    assert not _same_state(a, c)


def test_tell_scores_the_sampled_indices():
    """A skipped chain layer ignores its width; the update still scores the width the controller drew."""
    space = _space()
    s = get_strategy("reinforce", space, seed=0)
    seen = []
    real = s.controller.update
    s.controller.update = lambda ch, rw: (seen.append([list(c) for c in ch]), real(ch, rw))[1]
    for _ in range(8):
        specs = s.ask(4)
        drawn = [list(x) for x in s._asked]
        s.tell([_row(i, sp.decisions, 0.5) for i, sp in enumerate(specs)])
        assert seen[-1] == drawn
        assert all(space.from_choices(ch) == sp.decisions for ch, sp in zip(drawn, specs))


@pytest.mark.parametrize("scheduling, rounds", [("sync", [0, 0, 1, 1, 2, 2]),
                                                # asynchronous: the results told before each ask
                                                ("async", [0, 0, 1, 2, 3, 4])])
def test_tiny_search_on_digits_exports_and_resumes(tmp_path, scheduling, rounds):
    cfg = {**TINY, "scheduling": scheduling}
    full = run_search(ExperimentConfig(**cfg), tmp_path / "full")
    assert full.counts["done"] == 6
    with Store.open(tmp_path / "full") as st:
        cands = st.candidates()
    assert {c.op for c in cands} == {"controller"} and [c.round for c in cands] == rounds
    v, best = export_candidate(tmp_path / "full", tmp_path / "best.onnx", best=True)
    onnx.checker.check_model(onnx.load(tmp_path / "best.onnx"), full_check=True)
    assert best.id == full.best.id and v is not None

    # kill the search after its third candidate (mid round 1), then resume: the same search as uninterrupted
    seen = []

    def stop(c):
        seen.append(c.id)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(ExperimentConfig(**cfg), tmp_path / "cut", on_candidate=stop)
    resumed = run_search(ExperimentConfig(**cfg), tmp_path / "cut", resume=True)
    assert resumed.requeued == [3] and resumed.counts["done"] == 6
    assert resumed.resumed == 3  # finished before the resume (not counting the re-queued one it then finished)
    with Store.open(tmp_path / "cut") as st:
        again = st.candidates()
    assert [c.decisions for c in again] == [c.decisions for c in cands]
    assert [c.metrics["val_error"] for c in again] == [c.metrics["val_error"] for c in cands]


def test_progress_shows_the_controller_after_each_round(tmp_path):
    import io

    from search.experiment import Progress

    buf = io.StringIO()
    run_search(ExperimentConfig(**{**TINY, "budget": "4c", "scheduling": "sync"}), tmp_path / "run",
               progress=Progress(buf, use_rich=False))
    lines = [ln for ln in buf.getvalue().splitlines() if ln.startswith("controller:")]
    assert len(lines) == 2 and "reward" in lines[-1] and "2 updates" in lines[-1]
    # asynchronously: one update per result, the line after every round_size results
    buf = io.StringIO()
    run_search(ExperimentConfig(**{**TINY, "budget": "4c"}), tmp_path / "async", progress=Progress(buf, use_rich=False))
    lines = [ln for ln in buf.getvalue().splitlines() if ln.startswith("controller:")]
    assert len(lines) == 2 and "2 updates" in lines[0] and "4 updates" in lines[-1]
