"""Petridish: candidates train in isolation from the parent, selection by join weights, finalize, search."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import archir
import passes
from archir.lower import to_fx
from search.data import load_dataset
from search.experiment import ExperimentConfig, export_candidate, run_search
from search.morph import StartSpace, graph_to_data, grow, starter
from search.petridish import (CANDIDATE_OPS, attach, input_options, join_points, join_weights, keep_only, select,
                              train_candidates)
from search.store import Store
from search.strategies import StrategyError, get_strategy
from search.train import TrainConfig, train

TRAIN = {"epochs": 1, "batch_size": 128, "lr": 0.05, "schedule": "sgdr"}
OPS = ["conv3x3", "maxpool3x3", "identity"]


@pytest.fixture(scope="module")
def ds():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def parent(ds):
    res = train(starter(ds.input_shape, ds.num_classes), ds, TrainConfig(epochs=1, schedule="sgdr"))
    assert res.ok
    return res.graph


def _forward_backward(g, x, y):
    gm = to_fx(g)
    gm.train()
    out = gm(x)
    F.cross_entropy(out, y).backward()
    paths = gm.meta["archir_modules"]
    grads = {}
    for node in g.nodes():
        if node.params:
            mod = gm.get_submodule(paths[node.id])
            for k in node.params:
                grads[(node.id, k)] = getattr(mod, k).grad
    return out.detach(), grads


def test_candidates_do_not_change_the_parents_forward_or_gradients(parent, ds):
    targets = join_points(parent)
    assert targets == ["c0.relu", "c1.relu"]
    g, cands = attach(parent, targets, sorted(CANDIDATE_OPS), inputs=2, seed=3)
    assert len(cands) == 2 * len(CANDIDATE_OPS) + 2 * len(CANDIDATE_OPS)  # 2 input options at both join points
    assert len(g.nodes("stop_forward")) == 2 and len(g.nodes("stop_gradient")) == 4
    assert join_weights(g, cands) == [0.0] * len(cands)  # they start at 0; isolation holds for any value:
    rng = np.random.default_rng(0)
    for c in cands:
        g.set_params(c.join, weight=rng.normal(size=g.node(c.join).params["weight"].shape).astype(np.float32))
    x = torch.from_numpy(np.array(ds.x_train[:32], dtype=np.float32))
    y = torch.from_numpy(np.array(ds.y_train[:32], dtype=np.int64))
    torch.manual_seed(0)
    out_p, grads_p = _forward_backward(parent, x, y)
    torch.manual_seed(0)
    out_c, grads_c = _forward_backward(g, x, y)
    # train mode, one batch: the parent's outputs and the gradient of every parent parameter are identical
    assert torch.equal(out_p, out_c)
    assert set(grads_p) <= set(grads_c)
    for key, gp in grads_p.items():
        assert gp is not None and torch.equal(gp, grads_c[key]), key
    # ... while the candidates do learn: their parameters get gradients
    cand_grads = [grads_c[(c.join, "weight")] for c in cands]
    assert all(gr is not None for gr in cand_grads) and sum(float(gr.abs().sum()) for gr in cand_grads) > 0
    # controls: without the stop_gradient ops the candidates' gradients reach the parent's parameters ...
    h = g.copy()
    for n in [n.id for n in h.nodes("stop_gradient")]:
        (src,) = h.inputs_of(n)
        h.replace_uses(n, src)
        h.remove(n)
    torch.manual_seed(0)
    out_h, grads_h = _forward_backward(h, x, y)
    assert torch.equal(out_h, out_p) and not torch.equal(grads_h[("c0.conv", "weight")], grads_p[("c0.conv", "weight")])
    # ... and without any stop op (finalize), the same candidates change the forward pass
    torch.manual_seed(0)
    out_f, _ = _forward_backward(passes.finalize(g), x, y)
    assert not torch.allclose(out_f, out_p)


def test_input_options_and_bad_arguments(parent):
    assert input_options(parent, "c1.relu", 3) == ["c1.relu", "c0.relu", "x"]
    with pytest.raises(ValueError, match="not a petridish join point"):
        attach(parent, ["head"], OPS)
    with pytest.raises(ValueError, match="unknown petridish candidate op"):
        attach(parent, ["c1.relu"], ["conv7x7"])


def test_selection_by_join_weight_and_keep_only(parent):
    g, cands = attach(parent, ["c0.relu", "c1.relu"], OPS, inputs=2, seed=0)
    wanted = {}
    for i, c in enumerate(cands):  # known join weights: the largest per target is the last attached
        w = np.full(g.node(c.join).params["weight"].shape, 0.1 * (i + 1), np.float32)
        g.set_params(c.join, weight=w)
        wanted[c.target] = c
    chosen = select(g, cands, 1)
    assert chosen == [wanted["c0.relu"], wanted["c1.relu"]]
    assert join_weights(g, chosen) == pytest.approx([0.6, 1.2])
    two = select(g, cands, 2)
    assert len(two) == 4 and all(c.target in ("c0.relu", "c1.relu") for c in two)
    kept = keep_only(g, cands, chosen)
    left = {n.id for n in kept.nodes("scale")}
    assert left == {c.join for c in chosen}
    # what was dropped is gone, and the parent's forward is still exactly the parent's
    assert passes.check_preserved(parent, kept, atol=0, rtol=0).ok
    grown = passes.finalize(kept)
    assert not passes.stop_ops(grown)
    assert len(grown.nodes("scale")) == 2


def test_l1_penalty_shrinks_the_join_weights(parent, ds):
    g, cands = attach(parent, ["c1.relu"], OPS, inputs=1, seed=0)
    plain, _ = train_candidates(g, ds, cands, epochs=1, l1=0.0, train=TRAIN, seed=0)
    sparse, _ = train_candidates(g, ds, cands, epochs=1, l1=1.0, train=TRAIN, seed=0)
    assert sum(join_weights(sparse, cands)) < sum(join_weights(plain, cands))
    # the parent trained too, identically: the candidates never reach its forward or backward pass
    for n in parent.nodes("conv2d"):
        np.testing.assert_array_equal(plain.node(n.id).params["weight"], sparse.node(n.id).params["weight"])


def test_grown_child_finalized_and_exports_to_onnx(parent, ds, tmp_path):
    d = {"method": "petridish", "parent": 0, "seed": 4, "n": 2, "ops": OPS, "inputs": 2, "select": 1, "epochs": 1,
         "l1": 0.001}
    child, info = grow({"id": 1, "seed": 1, "decisions": StartSpace().decode(d), "parent_graph": graph_to_data(parent),
                        "train": TRAIN}, ds)
    assert info["metrics"]["preserve_max_abs"] == 0.0 and info["epochs"] == 1
    assert info["metrics"]["petridish_candidates"] == 2 * 2 * len(OPS)
    assert len(info["moves"]) == 2 and child.meta["grown"]["method"] == "petridish"
    assert not passes.stop_ops(child) and len(child.nodes("scale")) == 2
    assert child.structural_hash() != parent.structural_hash()
    from search.pareto import export_onnx

    rep = export_onnx(child, tmp_path / "child.onnx")
    assert rep.path.is_file() and rep.max_abs_err < 1e-4
    # before finalize the stop ops are refused, naming the pass that removes them
    g, _ = attach(parent, ["c1.relu"], OPS, inputs=1)
    with pytest.raises(archir.IRError, match="finalize"):
        archir.lower.to_onnx(g)


def test_strategy_draws_parents_near_the_frontier():
    from search.store import Candidate

    s = get_strategy("petridish", StartSpace(), seed=0, near=0.01)
    (root,) = s.ask(2)
    assert root.decisions == {"method": "start"}

    def done(i, err, macs):
        return Candidate(id=i, round=0, op="x", decisions={}, seed=0, status="done", score=err,
                         metrics={"val_error": err}, costs={"macs": macs})

    # frontier: 0 (cheap), 2 (accurate); 3 is within 0.01 of the frontier at its cost; 1 is far behind
    s.tell([done(0, 0.10, 1e4), done(1, 0.30, 3e4), done(2, 0.05, 5e4), done(3, 0.055, 6e4)])
    assert s.near_frontier() == [0, 2, 3]
    kids = s.ask(30)
    assert {k.parents[0] for k in kids} == {0, 2, 3}
    assert all(k.decisions["method"] == "petridish" and k.decisions["ops"] == s.options["ops"] for k in kids)
    with pytest.raises(StrategyError, match="ops"):
        get_strategy("petridish", StartSpace(), seed=0, ops=["conv9x9"])
    with pytest.raises(StrategyError, match="select"):
        get_strategy("petridish", StartSpace(), seed=0, select=0)


def cfg(**kw):
    base = dict(space="start", strategy="petridish", strategy_options={"ops": OPS}, budget="4c", round_size=2,
                train=dict(TRAIN))
    return ExperimentConfig(**{**base, **kw})


def test_tiny_run_warm_start_resume_and_export(tmp_path, parent):
    archir.save(parent, tmp_path / "net.json")  # a warm start: the trained parent's weights are kept
    opts = {"start": str(tmp_path / "net.json")}
    s = run_search(cfg(space_options=opts), tmp_path / "run")
    with Store.open(tmp_path / "run") as st:
        cands = st.candidates()
    assert [c.status for c in cands] == ["done"] * 4
    assert cands[0].op == "start" and all(c.parents and c.op == "petridish:1" for c in cands[1:])
    for c in cands[1:]:
        assert c.metrics["preserve_max_abs"] == 0.0 and c.timings["epochs"] == 2  # 1 candidate + 1 grown epoch
        g = archir.load(tmp_path / "run" / c.graph_path)
        assert not passes.stop_ops(g) and g.meta["grown"]["parent"] == c.parents[0]
    # the warm start is trained further from the file's weights: one epoch gets far below the cold starter's error
    cold = run_search(cfg(budget="1c"), tmp_path / "cold")
    assert cands[0].metrics["val_error"] < cold.best.metrics["val_error"]
    rep, _ = export_candidate(tmp_path / "run", tmp_path / "best.onnx", best=True)
    assert rep.path.is_file()

    class Stop(Exception):
        pass

    def kill(c):
        if c.id == 2:
            raise Stop

    with pytest.raises(Stop):
        run_search(cfg(space_options=opts), tmp_path / "cut", on_candidate=kill)
    run_search(cfg(space_options=opts), tmp_path / "cut", resume=True)
    with Store.open(tmp_path / "cut") as st:
        again = st.candidates()
    assert [(c.decisions, c.graph_hash, c.metrics["val_error"]) for c in again] == \
        [(c.decisions, c.graph_hash, c.metrics["val_error"]) for c in cands]
    assert s.best is not None


def test_join_points_skip_dead_nodes():
    # a feature map no output depends on is no place for a candidate: no gradient would reach it
    import archir
    from search.petridish import join_points

    g = archir.Graph("dead")
    x = g.input("x", shape=(1, 8, 8))
    h = g.add("relu", g.add("conv2d", x, out_channels=4, kernel_size=3, padding=1), name="live.relu")
    g.add("relu", g.add("conv2d", x, out_channels=4, kernel_size=3, padding=1), name="dead.relu")
    g.set_outputs(g.add("linear", g.add("flatten", g.add("global_avgpool", h)), out_features=10))
    g.init_params(seed=0)
    assert join_points(g) == ["live.relu"]


def test_a_child_past_the_space_bound_fails(parent, ds):
    from search.spaces.base import DecisionError

    d = StartSpace().decode({"method": "petridish", "parent": 0, "seed": 4, "n": 1, "ops": ["conv3x3"], "inputs": 1,
                             "select": 1, "epochs": 1, "l1": 0.001})
    task = {"id": 1, "seed": 1, "decisions": d, "parent_graph": graph_to_data(parent), "train": TRAIN}
    with pytest.raises(DecisionError, match="petridish parent 0 is already past the space's bound: 1,970 params"):
        grow({**task, "space_options": {"max_params": 1000}}, ds)  # refused before any candidate trains
    with pytest.raises(DecisionError, match=r"the petridish child of 0 is past the space's bound: [\d,]+ params > "
                                            r"max_params=1,971") as ei:
        grow({**task, "space_options": {"max_params": parent.num_params() + 1}}, ds)
    assert "max_params" in ei.value.hint
    child, _ = grow({**task, "space_options": {"max_params": parent.num_params() + 10 ** 5}}, ds)
    assert child.num_params() > parent.num_params()
