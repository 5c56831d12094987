"""One-shot option ``inherit``: the derived candidate is fine-tuned from the supernet's trained weights."""

from __future__ import annotations

import numpy as np
import pytest

from archir.graph import arch_key
from search import evaluators as ev
from search.data import cached_dataset
from search.experiment import ExperimentConfig, load_candidate_graph, run_search
from search.morph import graph_from_data
from search.oneshot import ONESHOT, run_oneshot
from search.spaces import get_space
from search.store import DB_NAME, Store
from search.strategies import StrategyError
from search.train import TrainConfig, evaluate, train

TRAIN = {"epochs": 1, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 3e-4, "schedule": "cosine"}
DARTS_TINY = {"cells": 1, "channels": 4}


def config(strategy: str, space: str = "darts", budget: str = "1c", **opts) -> ExperimentConfig:
    space_options = dict(DARTS_TINY) if space == "darts" else {"layers": 2}
    return ExperimentConfig(space=space, space_options=space_options, strategy=strategy, budget=budget,
                            strategy_options={"max_batches": 2, "batch_size": 32, **opts}, train=dict(TRAIN), seed=5)


def _space(cfg: ExperimentConfig):
    return get_space(cfg.space, **cfg.space_options, input_shape=(1, 8, 8), num_classes=10)


def run_capturing(cfg, out, monkeypatch):
    """Run ``cfg``; returns (summary, the driver, the evaluation tasks, the candidates)."""
    tasks, drivers = [], []
    real = ev.evaluate_candidate

    def spy(task):
        tasks.append(task)
        return real(task)

    monkeypatch.setattr(ev, "evaluate_candidate", spy)
    s = run_oneshot(cfg, out, on_step=lambda d, f: drivers.append(d))
    with Store.open(out) as st:
        cands = st.candidates()
    return s, drivers[-1], tasks, cands


@pytest.mark.parametrize("strategy", ["darts", "snas"])
def test_inherited_weights_are_the_supernets_chosen_candidates(strategy, tmp_path, monkeypatch):
    cfg = config(strategy)
    s, driver, tasks, cands = run_capturing(cfg, tmp_path / "r", monkeypatch)
    assert driver.options["inherit"] is True  # the default
    (c,) = cands
    (task,) = tasks
    assert c.status == "done" and c.op == f"derive:{strategy}" and s.best.id == c.id
    space = _space(cfg)
    d = space.decode(c.decisions)
    start = graph_from_data(task["init_graph"])
    trained = driver.trained_supernet()  # the supernet as it was when c was derived (its last step)
    direct = space.derive(trained, d)
    # same structure as the space's network, same weights as the supernet's chosen candidates
    assert start.structural_hash() == space.build(d).structural_hash() == c.graph_hash
    assert start.weights_hash() == direct.weights_hash()
    assert start.weights_hash() != space.build(d, seed=c.seed).weights_hash()
    chosen = space.supernet_decisions(d, trained)
    copied = 0
    for node in trained.nodes("choice"):
        name = chosen[arch_key(node.id, node.attrs)]
        cand = next(x for x in node.attrs["candidates"] if x["name"] == name)
        if not cand["ops"] or name == "none" or node.id not in start:
            continue
        last = len(cand["ops"]) - 1
        for pname, arr in start.node(node.id).params.items():
            np.testing.assert_array_equal(arr, node.params[f"{name}.{last}.{pname}"])
            copied += 1
    assert copied > 0
    # the recorded figures: the inherited weights' error before fine-tuning, then the fine-tuned graph
    ds = cached_dataset(cfg.dataset)
    assert c.metrics["inherited"] == 1
    assert c.metrics["inherited_val_error"] == pytest.approx(evaluate(direct, ds.x_val, ds.y_val)[0], abs=1e-12)
    g, _ = load_candidate_graph(tmp_path / "r", cid=c.id)
    assert g.structural_hash() == start.structural_hash() and g.weights_hash() != start.weights_hash()
    # the recorded graph is the inherited one fine-tuned (not a fresh build trained)
    tuned = train(direct, ds, TrainConfig(**{**TRAIN, "seed": c.seed, "threads": 1}))
    assert tuned.graph.weights_hash() == g.weights_hash()
    assert tuned.metrics["val_error"] == pytest.approx(c.metrics["val_error"], abs=1e-12)
    assert 0 <= c.metrics["val_error"] <= 1 and c.timings["epochs"] == TRAIN["epochs"]


def test_inherit_false_trains_from_scratch(tmp_path, monkeypatch):
    cfg = config("darts", space="chain", inherit=False)
    _, _, tasks, (c,) = run_capturing(cfg, tmp_path / "r", monkeypatch)
    assert "init_graph" not in tasks[0]
    assert "inherited" not in c.metrics and "inherited_val_error" not in c.metrics and c.status == "done"
    with pytest.raises(StrategyError, match="inherit") as e:
        run_search(config("darts", space="chain", inherit="yes"), tmp_path / "bad")
    assert "inherit=false" in e.value.hint


def test_a_supernet_of_another_size_is_refused_before_any_step(tmp_path):
    cfg = config("parsec", samples=2, cells=2)  # the space's networks have 1 cell, the supernet 2
    with pytest.raises(StrategyError, match="cannot give the space.s networks") as e:
        run_search(cfg, tmp_path / "r")
    assert "inherit=false" in e.value.hint
    assert not (tmp_path / "r" / DB_NAME).exists()


def test_chain_widths_other_than_the_supernets_are_refused(tmp_path):
    cfg = config("enas", space="chain")
    space = _space(cfg)
    driver = ONESHOT["enas"](space, cached_dataset(cfg.dataset), cfg, seed=0, **cfg.strategy_options)
    driver.check_inherit()  # the derivation keeps the supernet's widths: fine
    d = space.decode(driver.derive())
    assert driver.derived_graph(d).structural_hash() == space.build(d).structural_hash()
    narrow = {"layers": [{**layer, "width": min(opts)} if not layer["skip"] else layer
                         for layer, opts in zip(d["layers"], space.width_options)]}
    assert space.widths(narrow) != space.widths(d)
    with pytest.raises(StrategyError, match="cannot derive") as e:
        driver.derived_graph(narrow)
    assert "inherit=false" in e.value.hint


class _Stop(Exception):
    pass


def test_resume_after_a_cut_evaluation_gives_the_same_result(tmp_path, monkeypatch):
    cfg = config("darts", space="chain", budget="2c", evaluate_every=1)
    full = run_search(cfg, tmp_path / "full")
    real = ev.evaluate_candidate
    calls = []

    def cut_second(task):
        calls.append(task["id"])
        if len(calls) == 2:
            raise _Stop  # the run dies while the candidate of step 2 is being evaluated
        return real(task)

    monkeypatch.setattr(ev, "evaluate_candidate", cut_second)
    with pytest.raises(_Stop):
        run_oneshot(cfg, tmp_path / "cut")
    monkeypatch.setattr(ev, "evaluate_candidate", real)
    resumed = run_search(cfg, tmp_path / "cut", resume=True)
    assert resumed.requeued == [calls[1]]
    with Store.open(tmp_path / "full") as a, Store.open(tmp_path / "cut") as b:
        ca, cb = a.candidates(), b.candidates()
    assert [c.metrics["inherited"] for c in ca] == [1, 1]
    assert [(c.decisions, c.graph_hash, c.metrics) for c in ca] == [(c.decisions, c.graph_hash, c.metrics) for c in cb]
    ga, _ = load_candidate_graph(tmp_path / "full", cid=full.best.id)
    gb, _ = load_candidate_graph(tmp_path / "cut", cid=resumed.best.id)
    assert ga.weights_hash() == gb.weights_hash()
