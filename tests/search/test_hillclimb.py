"""NASH hill climbing: grown children start with their parent's function, inherit its weights, search, resume."""

from __future__ import annotations

import numpy as np
import pytest

import archir
import passes
from search.data import load_dataset
from search.experiment import ExperimentConfig, export_candidate, run_search
from search.morph import StartSpace, graph_from_data, graph_to_data, grow, starter
from search.store import Store
from search.strategies import StrategyError, get_strategy
from search.train import TrainConfig, evaluate, train

TRAIN = {"epochs": 1, "batch_size": 128, "lr": 0.05, "schedule": "sgdr"}


def cfg(**kw) -> ExperimentConfig:
    base = dict(space="start", strategy="hillclimb", strategy_options={"moves": 2}, budget="4c", round_size=2,
                train=dict(TRAIN))
    return ExperimentConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def ds():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained_parent(ds):
    res = train(starter(ds.input_shape, ds.num_classes), ds, TrainConfig(epochs=1, schedule="sgdr"))
    assert res.ok
    return res.graph


def test_graph_data_round_trip(trained_parent):
    g = graph_from_data(graph_to_data(trained_parent))
    assert g.structural_hash() == trained_parent.structural_hash()
    assert g.weights_hash() == trained_parent.weights_hash()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_each_child_starts_with_its_parents_function(trained_parent, seed):
    task = {"id": 1, "seed": 5, "decisions": {"method": "morph", "parent": 0, "seed": seed, "n": 3,
                                                "ops": ["deepen", "widen", "add_skip", "enlarge_kernel"]},
            "parent_graph": graph_to_data(trained_parent)}
    child, info = grow(task)
    # the rewrites fired: a different architecture, three recorded moves
    assert child.structural_hash() != trained_parent.structural_hash()
    assert len(info["moves"]) == 3 and child.meta["grown"]["moves"] == info["moves"]
    assert child.meta["grown"]["parent"] == 0
    # ... and the child computes what its trained parent computes (eval mode), before any training
    rep = passes.check_preserved(trained_parent, child, n=8, seed=123)
    assert rep.ok and info["metrics"]["preserve_max_abs"] < 1e-4
    # the same parent and seed give the same child (the decisions are replayable)
    again, _ = grow(task)
    assert again.structural_hash() == child.structural_hash() and again.weights_hash() == child.weights_hash()


def test_a_child_that_changes_the_function_is_refused(trained_parent, monkeypatch):
    def broken(g, rng, morphisms=None):
        out = g.copy()
        w = out.node("head").params["weight"]
        out.set_params("head", weight=w + 1.0, bias=out.node("head").params["bias"])
        return out, "broken()"

    monkeypatch.setattr(passes, "random_morphism", broken)
    task = {"id": 1, "seed": 5, "decisions": {"method": "morph", "parent": 0, "seed": 0, "n": 1, "ops": ["deepen"]},
            "parent_graph": graph_to_data(trained_parent)}
    with pytest.raises(passes.FunctionNotPreserved):
        grow(task)


def test_training_starts_from_the_inherited_weights(trained_parent, ds):
    # with a vanishing learning rate the trained weights are the inherited ones, and so is the error
    res = train(trained_parent, ds, TrainConfig(epochs=1, lr=1e-12, momentum=0.0, weight_decay=0.0))
    for n in trained_parent.nodes("conv2d") + trained_parent.nodes("linear"):
        np.testing.assert_allclose(res.graph.node(n.id).params["weight"], n.params["weight"], atol=1e-8)
    # (BN running statistics do move in train mode; the parent itself is far from chance)
    assert res.metrics["val_error"] < 0.5 and evaluate(trained_parent, ds.x_val, ds.y_val)[0] < 0.5


def test_strategy_asks_the_start_then_children_of_the_incumbent():
    from search.store import Candidate

    space = StartSpace()
    s = get_strategy("hillclimb", space, seed=0, moves=2)
    (root,) = s.ask(3)
    assert root.decisions == {"method": "start"} and root.parents == []
    done = lambda i, score: Candidate(id=i, round=0, op="x", decisions={}, seed=0, status="done", score=score)  # noqa
    s.tell([done(0, 0.5)])
    kids = s.ask(3)
    assert [k.parents for k in kids] == [[0]] * 3 and len({k.decisions["seed"] for k in kids}) == 3
    s.tell([done(1, 0.6), done(2, 0.3), Candidate(id=3, round=1, op="x", decisions={}, seed=0, status="failed")])
    assert s.incumbent.id == 2 and all(k.parents == [2] for k in s.ask(2))
    s.tell([done(4, 0.4)])  # worse than the incumbent: kept
    assert s.incumbent.id == 2
    with pytest.raises(StrategyError, match="needs the 'start' space"):
        get_strategy("hillclimb", __import__("search.spaces", fromlist=["get_space"]).get_space("chain"), seed=0)
    with pytest.raises(StrategyError, match="morphisms"):
        get_strategy("hillclimb", space, seed=0, morphisms=["fold"])


def _rows(run):
    with Store.open(run) as st:
        return st.candidates()


def test_tiny_run_to_completion(tmp_path):
    s = run_search(cfg(), tmp_path / "run")
    cands = _rows(tmp_path / "run")
    assert [c.status for c in cands] == ["done"] * 4
    assert cands[0].op == "start" and cands[0].parents == []
    assert [c.parents for c in cands[1:3]] == [[0], [0]]
    best_of_round1 = min(cands[:3], key=lambda c: (c.score, c.id))
    assert cands[3].parents == [best_of_round1.id]  # children of the incumbent
    for c in cands[1:]:
        assert c.metrics["preserve_max_abs"] < 1e-4 and c.timings["epochs"] == 1
        g = archir.load(tmp_path / "run" / c.graph_path)
        assert len(g.meta["grown"]["moves"]) == 2
    assert s.best is not None
    rep, c = export_candidate(tmp_path / "run", tmp_path / "best.onnx", best=True)
    assert rep.path.is_file() and c.id == s.best.id


class _Stop(Exception):
    pass


def test_resume_gives_the_same_search(tmp_path):
    full = run_search(cfg(budget="5c"), tmp_path / "full")

    def kill_after_two(c):
        if c.id == 1:
            raise _Stop

    with pytest.raises(_Stop):
        run_search(cfg(budget="5c"), tmp_path / "cut", on_candidate=kill_after_two)
    assert [c.status for c in _rows(tmp_path / "cut")] == ["done", "done", "running"]
    s = run_search(cfg(budget="5c"), tmp_path / "cut", resume=True)
    assert s.requeued == [2]
    a, b = _rows(tmp_path / "full"), _rows(tmp_path / "cut")
    assert [(c.decisions, c.parents, c.graph_hash) for c in a] == [(c.decisions, c.parents, c.graph_hash) for c in b]
    assert [c.metrics["val_error"] for c in a] == [c.metrics["val_error"] for c in b]
    assert full.best.id == s.best.id


def test_cli_hillclimb_from_a_start_file_and_its_errors(tmp_path, trained_parent, capsys):
    from archir.cli.main import main

    archir.save(trained_parent, tmp_path / "net.json")
    out = tmp_path / "run"
    args = ["search", "--strategy", "hillclimb", "--start", str(tmp_path / "net.json"), "--out", str(out),
            "--budget", "3c", "--epochs", "1", "--batch-size", "128", "--strategy-opt", "moves=1", "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "best ONNX" in text and (out / "best.onnx").is_file()
    with Store.open(out) as st:
        c = st.config
        assert c["space"] == "start" and c["space_options"]["start"] == str(tmp_path / "net.json")
        assert c["train"]["schedule"] == "sgdr" and c["strategy_options"] == {"moves": 1}
    assert main(["gallery", str(out), "--no-plot"]) == 0
    assert "#0 + 1 morphism" in capsys.readouterr().out
    for bad, msg in ((["--start", str(tmp_path / "nope.json")], "no such file"),
                     (["--space", "chain"], "needs the 'start' space"),
                     (["--strategy-opt", "moves"], "is not KEY=VALUE")):
        assert main(["search", "--strategy", "hillclimb", "--out", str(tmp_path / "x"), *bad]) == 2
        assert msg in capsys.readouterr().err


def test_start_space_checks_its_start_graph(tmp_path, trained_parent):
    from search.morph import get_space

    archir.save(trained_parent, tmp_path / "net.json")
    space = get_space("start", input_shape=(1, 8, 8), num_classes=10, start=str(tmp_path / "net.json"))
    g = space.build(space.sample(None), seed=7)
    assert g.weights_hash() == trained_parent.weights_hash()  # a warm start keeps the file's weights
    # the built-in starter takes its weights from the seed
    st = StartSpace()
    assert st.build({"method": "start"}, seed=1).weights_hash() != st.build({"method": "start"}, seed=2).weights_hash()
    with pytest.raises(ValueError, match="does not fit the dataset's"):
        StartSpace(input_shape=(3, 8, 8), start=str(tmp_path / "net.json"))
    with pytest.raises(ValueError, match="are not one \\(5,\\) logits"):
        StartSpace(num_classes=5, start=str(tmp_path / "net.json"))
    (tmp_path / "bad.json").write_text('{"bad": 1}')
    with pytest.raises(ValueError, match="start graph .*bad.json") as e:  # a SpaceError: a ValueError too
        StartSpace(start=str(tmp_path / "bad.json"))
    assert "archir.save" in e.value.hint and "\n  how to fix: " in str(e.value)
    with pytest.raises(ValueError, match="does not exist"):
        StartSpace(start=str(tmp_path / "none.json"))
    with pytest.raises(ValueError, match="unknown search space"):
        get_space("nope")
    from search.spaces import DecisionError

    for bad in ({"method": "grow"}, {"method": "morph", "parent": 0}, {"method": "morph", "parent": -1, "seed": 0,
                                                                       "n": 1, "ops": ["deepen"]},
                {"method": "morph", "parent": 0, "seed": 0, "n": 1, "ops": ["fold"]}):
        with pytest.raises(DecisionError):
            st.decode(bad)
    with pytest.raises(DecisionError, match="grown from candidate 3"):
        st.build({"method": "morph", "parent": 3, "seed": 0, "n": 1, "ops": ["deepen"]})


# --------------------------------------------------------------------------- the space's bounds (issue 13, item 7)


def _macs(g):
    import costmodels

    return costmodels.count(g).macs


def test_start_space_bound_options():
    from search.morph import get_space
    from search.spaces.base import SpaceError

    assert StartSpace(max_params=5000, max_macs=10 ** 6).options_bounds() == {"max_params": 5000, "max_macs": 10 ** 6}
    assert StartSpace().options_bounds() == {}
    for bad in (0, -1, 2.5, True, "100"):
        with pytest.raises(SpaceError, match="max_params must be an int >= 1") as ei:
            StartSpace(max_params=bad)
        assert "--space-opt max_params=" in ei.value.hint
    with pytest.raises(SpaceError, match="already past the space's bound: 1,970 params > max_params=1,000"):
        StartSpace(max_params=1000)  # the starter itself does not fit
    with pytest.raises(SpaceError, match="max_macs="):
        StartSpace(max_macs=10)
    with pytest.raises(SpaceError) as ei:
        get_space("start", bound=3)
    assert "max_params=..." in ei.value.hint and "max_macs=..." in ei.value.hint


def _morph_task(parent, seed, n, space_options, ops=("deepen", "widen", "add_skip", "enlarge_kernel")):
    return {"id": 1, "seed": 5, "space_options": space_options, "parent_graph": graph_to_data(parent),
            "decisions": {"method": "morph", "parent": 0, "seed": seed, "n": n, "ops": list(ops)}}


def test_grown_children_stay_within_the_space_bound(trained_parent):
    max_params, max_macs = trained_parent.num_params() + 2500, _macs(trained_parent) + 40000
    grown = 0
    for seed in range(8):
        try:
            child, info = grow(_morph_task(trained_parent, seed, 3, {"max_params": max_params, "max_macs": max_macs}))
        except passes.PreconditionError as e:  # every move past the bound: the candidate fails with the reason
            assert "past the bound" in str(e)
            continue
        grown += 1
        assert child.num_params() <= max_params and _macs(child) <= max_macs, info["moves"]
        assert info["metrics"]["preserve_max_abs"] < 1e-4
    assert grown >= 4


def test_a_child_past_the_bound_fails_with_the_reason(trained_parent):
    task = _morph_task(trained_parent, 0, 1, {"max_params": trained_parent.num_params()})
    with pytest.raises(passes.PreconditionError, match="past the bound max_params=1,970") as ei:
        grow(task)
    assert "--space-opt max_params=N" in str(ei.value)
    from archir.errors import is_user_error

    assert is_user_error(ei.value)  # the store keeps its one line, no traceback


def test_bounded_hillclimb_run(tmp_path):
    bound = 2600  # the starter has 1,970 parameters; most deepenings (+600) fit once
    run_search(cfg(space_options={"max_params": bound}, budget="5c"), tmp_path / "run")
    cands = _rows(tmp_path / "run")
    assert cands[0].status == "done" and sum(c.status == "done" for c in cands) >= 3
    for c in cands:
        if c.status == "done":
            assert c.costs["params"] <= bound, (c.id, c.costs)
        else:
            assert "past the bound max_params=2,600" in c.error, c.error
