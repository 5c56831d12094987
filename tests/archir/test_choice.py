"""Supernets: ``choice`` nodes, ``archir.derive`` and the choice modes of ``to_fx``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import archir
from archir.graph import freeze_array
from archir.lower import arch_parameters, sync_back, to_fx, to_onnx, verify_onnx, weight_parameters
from tests.strategies import candidates_for, randomize_weights

NAMES = ["none", "skip_connect", "max_pool_3x3", "sep_conv_3x3", "conv_1x1"]


def _x(shape=(3, 8, 8), batch=3, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32))


def _run(g: archir.Graph, x: torch.Tensor, **kw) -> torch.Tensor:
    gm = to_fx(g, **kw).eval()
    with torch.no_grad():
        return gm(x)


def one_decision(parallel_tied: bool = False, seed: int = 0) -> archir.Graph:
    """stem -> choice -> (add a tied twin on the same input) -> GAP -> flatten -> linear.

    Everything after the choice is affine, so the softmax mixture's output is exactly the
    softmax-weighted sum of the derived graphs' outputs (the weights sum to 1).
    """
    g = archir.Graph("one_decision")
    h = g.add("conv2d", g.input("x", (3, 8, 8)), out_channels=4, kernel_size=3, padding=1, name="stem.conv")
    h = g.add("relu", h, name="stem.relu")
    c = g.add("choice", h, name="e0", candidates=candidates_for(4, 1, NAMES), tie="edge" if parallel_tied else None)
    if parallel_tied:
        c2 = g.add("choice", h, name="e1", candidates=candidates_for(4, 1, NAMES), tie="edge")
        c = g.add("add", c, c2, name="sum")
    h = g.add("batchnorm2d", c, name="bn")
    g.set_outputs(g.add("linear", g.add("flatten", g.add("global_avgpool", h, name="pool"), name="flat"),
                        out_features=5, name="head"))
    g.init_params(seed)
    return randomize_weights(g, seed + 1).validate()


def two_cells(seed: int = 0) -> archir.Graph:
    """Two normal cells whose edges are tied by position, and one reduction edge of its own."""
    g = archir.Graph("two_cells")
    s = g.add("conv2d", g.input("x", (3, 8, 8)), out_channels=4, kernel_size=3, padding=1, name="stem")
    for i in range(2):
        a = g.add("choice", s, name=f"cell{i}.e0", candidates=candidates_for(4, 1, NAMES), tie="normal.e0")
        b = g.add("choice", a, name=f"cell{i}.e1", candidates=candidates_for(4, 1, NAMES[1:]), tie="normal.e1")
        s = g.add("add", a, b, name=f"cell{i}.add")
    s = g.add("choice", s, name="reduce", candidates=candidates_for(4, 2, ["none", "skip_connect", "conv_1x1"]))
    g.set_outputs(g.add("linear", g.add("flatten", g.add("global_avgpool", s)), out_features=3, name="head"))
    g.init_params(seed)
    return randomize_weights(g, seed + 1).validate()


# --------------------------------------------------------------------------- building


def test_params_are_namespaced_per_candidate_step():
    g = one_decision()
    node = g.node("e0")
    assert node.op == "choice" and node.type.shape == (4, 8, 8)
    want = {
        "sep_conv_3x3.1.weight": (4, 1, 3, 3), "sep_conv_3x3.2.weight": (4, 4, 1, 1),
        "sep_conv_3x3.5.weight": (4, 1, 3, 3), "sep_conv_3x3.6.weight": (4, 4, 1, 1),
        "sep_conv_3x3.7.weight": (4,), "sep_conv_3x3.7.bias": (4,),  # step 3 is an affine=False BN
        "conv_1x1.0.weight": (4, 4, 1, 1), "conv_1x1.0.bias": (4,),
    }
    assert {k: a.shape for k, a in node.params.items()} == want
    assert set(node.buffers) == {f"sep_conv_3x3.{j}.{b}" for j in (3, 7) for b in ("running_mean", "running_var")}
    assert [c["name"] for c in node.attrs["candidates"]] == NAMES
    # candidate steps are canonicalised like top-level nodes (defaults filled in)
    assert node.attrs["candidates"][2]["ops"][0] == {"op": "maxpool2d", "kernel_size": 3, "stride": 1, "padding": 1,
                                                     "dilation": 1, "ceil_mode": False}


def test_arch_logits_per_decision_key():
    g = two_cells()
    assert set(g.arch) == {"normal.e0", "normal.e1", "reduce"}
    assert {k: a.shape for k, a in g.arch.items()} == {"normal.e0": (5,), "normal.e1": (4,), "reduce": (3,)}
    assert archir.decision_keys(g) == {"normal.e0": NAMES, "normal.e1": NAMES[1:],
                                       "reduce": ["none", "skip_connect", "conv_1x1"]}
    fresh = archir.Graph("f")
    x = fresh.input("x", (2, 4, 4))
    fresh.add("choice", x, name="c", candidates=candidates_for(2, 1, NAMES[:3]))
    assert fresh.arch["c"].shape == (3,) and not fresh.arch["c"].flags.writeable


def test_tie_shares_one_decision():
    g = one_decision(parallel_tied=True)
    assert list(g.arch) == ["edge"]
    for k in range(len(NAMES)):
        d = archir.derive(g, {"edge": k})
        assert d.node("e0").op == d.node("e1").op  # both edges took candidate k
        assert d.meta["derived"] == {"edge": NAMES[k]}


def test_mismatched_candidate_shapes_refused_at_add():
    g = archir.Graph("bad")
    x = g.input("x", (4, 8, 8))
    cands = candidates_for(4, 1, ["skip_connect"]) + [{"name": "strided", "ops": [
        {"op": "conv2d", "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1}]}]
    with pytest.raises(archir.ShapeError) as e:
        g.add("choice", x, name="c", candidates=cands)
    assert e.value.node == "c" and "'skip_connect'" in str(e.value) and "'strided'" in str(e.value)
    assert "c" not in g and g.arch == {}
    wider = candidates_for(4, 1, ["skip_connect"]) + [{"name": "wide", "ops": [
        {"op": "conv2d", "out_channels": 8, "kernel_size": 1}]}]
    with pytest.raises(archir.ShapeError):
        g.add("choice", x, name="c", candidates=wider)


def test_tied_nodes_with_different_candidates_refused():
    g = archir.Graph("tie")
    x = g.input("x", (4, 8, 8))
    g.add("choice", x, name="a", candidates=candidates_for(4, 1, NAMES[:3]), tie="t")
    with pytest.raises(archir.OpSchemaError) as e:
        g.add("choice", x, name="b", candidates=candidates_for(4, 1, [NAMES[0], NAMES[2], NAMES[1]]), tie="t")
    assert e.value.rule == "tie" and e.value.node == "b"
    with pytest.raises(archir.OpSchemaError) as e:
        g.add("choice", x, name="b", candidates=candidates_for(4, 1, NAMES[:4]), tie="t")
    assert e.value.rule == "tie"
    assert "b" not in g and list(g.arch) == ["t"]
    # the same names with other ops (another stride) are fine: a tie shares the decision only
    g.add("choice", x, name="b", candidates=candidates_for(4, 2, NAMES[:3]), tie="t")


@pytest.mark.parametrize("bad", [
    [],
    [{"name": "a", "ops": []}, {"name": "a", "ops": []}],
    [{"name": "a.b", "ops": []}],
    [{"name": "a", "ops": [{"op": "add"}]}],
    [{"name": "a", "ops": [{"op": "choice", "candidates": []}]}],
    [{"name": "a", "ops": [{"op": "conv2d", "kernel_size": 3}]}],
    [{"name": "a", "ops": [{"kernel_size": 3}]}],
    # branching candidates: inputs must name earlier steps, fit the op's arity, and every step must be read
    [{"name": "a", "ops": [{"op": "relu", "inputs": [0]}]}],
    [{"name": "a", "ops": [{"op": "relu", "inputs": []}]}],
    [{"name": "a", "ops": [{"op": "relu"}, {"op": "add", "inputs": [0]}]}],
    [{"name": "a", "ops": [{"op": "relu"}, {"op": "relu", "inputs": [-1]}]}],
    [{"name": "a", "ops": [{"op": "relu", "inputs": [True]}]}],
])
def test_malformed_candidates_refused(bad):
    g = archir.Graph("bad")
    x = g.input("x", (4, 8, 8))
    with pytest.raises(archir.OpSchemaError):
        g.add("choice", x, name="c", candidates=bad)


# a candidate that branches and joins: relu, then two half-width 1x1 convs (one on the relu, one
# on the raw input) concatenated, then BN -- the shape of DARTS' FactorizedReduce
BRANCHING = {"name": "branch", "ops": [
    {"op": "relu"},
    {"op": "conv2d", "out_channels": 2, "kernel_size": 1, "stride": 2, "bias": False},
    {"op": "conv2d", "out_channels": 2, "kernel_size": 1, "stride": 2, "bias": False, "inputs": [-1]},
    {"op": "concat", "inputs": [1, 2]},
    {"op": "batchnorm2d"},
]}


def branching_supernet(seed: int = 0) -> archir.Graph:
    g = archir.Graph("branching")
    h = g.add("conv2d", g.input("x", (3, 8, 8)), out_channels=4, kernel_size=3, padding=1, name="stem")
    c = g.add("choice", h, name="e0", candidates=[BRANCHING, *candidates_for(4, 2, ["none", "max_pool_3x3"])])
    g.set_outputs(g.add("linear", g.add("flatten", g.add("global_avgpool", c)), out_features=3, name="head"))
    g.init_params(seed)
    return randomize_weights(g, seed + 1).validate()


def test_branching_candidate_derives_fixes_and_counts_as_its_graph():
    import costmodels

    g = branching_supernet()
    step = g.node("e0").attrs["candidates"][0]["ops"]
    assert "inputs" not in step[1] and step[2]["inputs"] == [-1] and step[3]["inputs"] == [1, 2]
    d = archir.derive(g, {"e0": "branch"})
    # structure: the concat reads both convs, the second conv reads the stem (the choice's input) directly
    assert d.inputs_of("e0.branch.3") == ["e0.branch.1", "e0.branch.2"]
    assert d.inputs_of("e0.branch.2") == ["stem"] and d.inputs_of("e0.branch.1") == ["e0.branch.0"]
    assert d.node("e0").op == "batchnorm2d"
    x = _x()
    torch.testing.assert_close(_run(g, x, choice_mode="fixed", decisions={"e0": "branch"}), _run(d, x),
                               rtol=1e-5, atol=1e-6)
    # numbers: the derived graph is the hand-written function, with the candidate's own weights
    p = {k: torch.tensor(np.asarray(v)) for k, v in g.node("e0").params.items()}
    s = F.conv2d(x, torch.tensor(np.asarray(g.node("stem").params["weight"])),
                 torch.tensor(np.asarray(g.node("stem").params["bias"])), padding=1)
    y = torch.cat([F.conv2d(F.relu(s), p["branch.1.weight"], stride=2), F.conv2d(s, p["branch.2.weight"], stride=2)], 1)
    bn = {k: torch.tensor(np.asarray(v)) for k, v in g.node("e0").buffers.items()}
    y = F.batch_norm(y, bn["branch.4.running_mean"], bn["branch.4.running_var"], p["branch.4.weight"],
                     p["branch.4.bias"], eps=1e-5)
    head = g.node("head").params
    want = F.linear(y.mean((2, 3)), torch.tensor(np.asarray(head["weight"])),
                    torch.tensor(np.asarray(head["bias"])))
    torch.testing.assert_close(_run(d, x), want, rtol=1e-5, atol=1e-5)
    # the supernet counts the sum over candidates, so the branch counts as its derived steps do
    sup, der = costmodels.count(g), costmodels.count(d)
    branch = [n for n in d.topo_order() if n.startswith("e0")]
    assert sup["e0"].macs == sum(der[n].macs for n in branch) == 2 * (2 * 4 * 4 * 4)
    assert sup["e0"].params == sum(der[n].params for n in branch) == 2 * 8 + 2 * 4
    verify_onnx(d, to_onnx(d), inputs=x, atol=1e-5, rtol=1e-4).raise_if_failed()


# --------------------------------------------------------------------------- to_fx choice modes


def test_to_fx_refuses_supernet_without_choice_mode():
    g = one_decision()
    with pytest.raises(archir.LoweringError) as e:
        to_fx(g)
    assert e.value.node == "e0" and "choice_mode" in str(e.value) and "archir.derive" in str(e.value)
    with pytest.raises(archir.LoweringError, match="unknown choice_mode"):
        to_fx(g, choice_mode="argmax")


@pytest.mark.parametrize("parallel_tied", [False, True])
def test_softmax_is_the_weighted_sum_of_derived_graphs(parallel_tied):
    g = one_decision(parallel_tied)
    key = next(iter(g.arch))
    g.arch[key] = freeze_array([0.3, -1.0, 0.8, 1.5, -0.2])
    x = _x()
    w = torch.softmax(torch.tensor(g.arch[key]), 0)
    want = sum(w[k] * _run(archir.derive(g, {key: k}), x) for k in range(len(NAMES)))
    got = _run(g, x, choice_mode="softmax")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # and the candidates differ, so the weights matter
    assert not torch.allclose(_run(archir.derive(g, {key: 3}), x), _run(archir.derive(g, {key: 4}), x), atol=1e-3)


def test_fixed_equals_the_derived_graph():
    g = two_cells()
    x = _x()
    for dec in ({"normal.e0": 3, "normal.e1": "conv_1x1", "reduce": 2},
                {"normal.e0": "skip_connect", "normal.e1": 1, "reduce": "none"},
                {"normal.e0": np.int64(4), "normal.e1": 0, "reduce": 1}):
        torch.testing.assert_close(_run(g, x, choice_mode="fixed", decisions=dec), _run(archir.derive(g, dec), x),
                                   rtol=1e-5, atol=1e-6)
    # no decisions: the argmax of the logits, as derive(g)
    torch.testing.assert_close(_run(g, x, choice_mode="fixed"), _run(archir.derive(g), x), rtol=1e-5, atol=1e-6)


def test_fixed_refuses_unknown_or_bad_decisions():
    g = two_cells()
    with pytest.raises(archir.LoweringError, match="not a candidate"):
        to_fx(g, "fixed", decisions={"normal.e0": "nope", "normal.e1": 0, "reduce": 0})
    with pytest.raises(archir.LoweringError, match="not a candidate"):
        to_fx(g, "fixed", decisions={"normal.e0": 5})
    with pytest.raises(archir.LoweringError, match="not a candidate"):
        to_fx(g, "fixed", decisions={"normal.e0": True})
    with pytest.raises(archir.LoweringError, match="cell0.e0") as e:  # a node id of a tied edge is no key
        to_fx(g, "fixed", decisions={"cell0.e0": 1})
    assert "normal.e0" in str(e.value)


def _record_paths(gm) -> dict[str, list[int]]:
    ran: dict[str, list[int]] = {}
    for nid, path in gm.meta["archir_modules"].items():
        mod = gm.get_submodule(path)
        if hasattr(mod, "cands"):
            for k, cand in enumerate(mod.cands):
                cand.register_forward_hook(lambda m, i, o, nid=nid, k=k: ran.setdefault(nid, []).append(k))
    return ran


def test_sample_runs_one_path_and_tied_nodes_agree():
    g = two_cells()
    for key in g.arch:
        g.arch[key] = freeze_array(np.zeros(g.arch[key].shape))  # uniform: every candidate gets drawn
    torch.manual_seed(0)
    gm = to_fx(g, choice_mode="sample").eval()
    ran = _record_paths(gm)
    samplers = {k: gm.get_submodule(p) for k, p in gm.meta["archir_arch"].items()}
    x = _x()
    seen = set()
    for _ in range(12):
        ran.clear()
        with torch.no_grad():
            y = gm(x)
        assert {nid: len(ks) for nid, ks in ran.items()} == {"cell0.e0": 1, "cell0.e1": 1, "cell1.e0": 1,
                                                            "cell1.e1": 1, "reduce": 1}
        idx = {k: s.last_index for k, s in samplers.items()}
        assert ran["cell0.e0"] == ran["cell1.e0"] == [idx["normal.e0"]]
        assert ran["cell0.e1"] == ran["cell1.e1"] == [idx["normal.e1"]]
        assert ran["reduce"] == [idx["reduce"]]
        seen.add(idx["normal.e0"])
        torch.testing.assert_close(y, _run(archir.derive(g, idx), x), rtol=1e-5, atol=1e-6)
    assert len(seen) >= 3  # it does sample


def test_gumbel_weights_sum_to_one():
    g = two_cells()
    torch.manual_seed(1)
    gm = to_fx(g, choice_mode="gumbel", tau=0.5)
    for key, path in gm.meta["archir_arch"].items():
        sampler = gm.get_submodule(path)
        assert sampler.tau == 0.5
        draws = torch.stack([sampler() for _ in range(20)])
        assert draws.shape == (20, len(g.arch[key]))
        torch.testing.assert_close(draws.sum(1), torch.ones(20))
        assert (draws >= 0).all() and draws.std(0).sum() > 0  # random, not fixed
        sampler.hard = True
        hard = sampler()
        assert sorted(hard.tolist()) == [0.0] * (len(hard) - 1) + [1.0]
        sampler.hard = False
    out = gm.train()(_x())
    out.sum().backward()
    assert all(p.grad is not None for p in arch_parameters(gm))


def test_softmax_gradients_reach_logits_and_weights():
    g = two_cells()
    gm = to_fx(g, choice_mode="softmax").train()
    F.cross_entropy(gm(_x()), torch.tensor([0, 1, 2])).backward()
    for p in arch_parameters(gm):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_arch_and_weight_parameters_partition():
    g = two_cells()
    gm = to_fx(g, choice_mode="softmax")
    arch, weights = arch_parameters(gm), weight_parameters(gm)
    every = list(gm.parameters())
    assert len(arch) + len(weights) == len(every)
    assert {id(p) for p in arch} | {id(p) for p in weights} == {id(p) for p in every}
    assert not {id(p) for p in arch} & {id(p) for p in weights}
    assert sorted(tuple(p.shape) for p in arch) == sorted(a.shape for a in g.arch.values())
    assert sum(p.numel() for p in weights) == g.num_params()
    # a plain graph has no architecture parameters
    plain = archir.derive(g)
    assert arch_parameters(to_fx(plain)) == [] and len(weight_parameters(to_fx(plain))) > 0


# --------------------------------------------------------------------------- derive


def test_derive_by_name_or_index_and_argmax():
    g = two_cells()
    by_name = archir.derive(g, {"normal.e0": "sep_conv_3x3", "normal.e1": "max_pool_3x3", "reduce": "conv_1x1"})
    by_index = archir.derive(g, {"normal.e0": 3, "normal.e1": 1, "reduce": 2})
    assert by_name.structural_hash() == by_index.structural_hash()
    assert by_name.weights_hash() == by_index.weights_hash()
    assert not by_name.nodes("choice") and by_name.arch == {}
    assert by_name.meta["derived"] == {"normal.e0": "sep_conv_3x3", "normal.e1": "max_pool_3x3", "reduce": "conv_1x1"}
    # the chain's last op keeps the choice id; earlier ops are <id>.<candidate>.<step>
    assert by_name.node("cell0.e0").op == "batchnorm2d"
    assert by_name.node("cell0.e0.sep_conv_3x3.1").op == "conv2d"
    assert by_name.node("reduce").op == "hardswish" and by_name.node("reduce.conv_1x1.0").op == "conv2d"
    # weight sharing: the derived nodes carry the supernet's candidate params
    np.testing.assert_array_equal(by_name.node("cell1.e0.sep_conv_3x3.5").params["weight"],
                                  g.node("cell1.e0").params["sep_conv_3x3.5.weight"])
    np.testing.assert_array_equal(by_name.node("cell1.e0").buffers["running_var"],
                                  g.node("cell1.e0").buffers["sep_conv_3x3.7.running_var"])
    # None: argmax of the logits
    g.arch["normal.e0"] = freeze_array([0, 0, 5, 0, 0])
    g.arch["normal.e1"] = freeze_array([0, 0, 0, 2])
    g.arch["reduce"] = freeze_array([3, 0, 0])
    d = archir.derive(g)
    assert d.meta["derived"] == {"normal.e0": "max_pool_3x3", "normal.e1": "conv_1x1", "reduce": "none"}
    assert d.node("cell1.e0").op == "maxpool2d" and d.node("reduce").op == "zero"
    assert d.node("cell0.e1").op == "hardswish"
    # skip_connect (empty chain) becomes an identity
    s = archir.derive(g, {"normal.e0": "skip_connect", "normal.e1": "skip_connect", "reduce": "skip_connect"})
    assert s.node("cell0.e0").op == "identity" and s.inputs_of("cell0.e0") == ["stem"]


def test_derive_leaves_the_supernet_untouched():
    g = two_cells()
    before = (g.structural_hash(), g.weights_hash(), len(g))
    archir.derive(g, {"normal.e0": 3, "normal.e1": 1, "reduce": 2})
    assert (g.structural_hash(), g.weights_hash(), len(g)) == before


@pytest.mark.parametrize("dec", [
    {"normal.e0": 1, "normal.e1": 1},                                   # partial
    {"normal.e0": 1, "normal.e1": 1, "reduce": 0, "other": 0},          # unknown key
    {"cell0.e0": 1, "normal.e1": 1, "reduce": 0},                       # a node id, not its tie
    {"normal.e0": "conv_9x9", "normal.e1": 1, "reduce": 0},             # no such candidate
    {"normal.e0": 5, "normal.e1": 1, "reduce": 0},                      # index out of range
    {"normal.e0": -1, "normal.e1": 1, "reduce": 0},
    {"normal.e0": True, "normal.e1": 1, "reduce": 0},
    {"normal.e0": 1.0, "normal.e1": 1, "reduce": 0},
])
def test_derive_refuses_bad_decisions(dec):
    with pytest.raises(archir.IRError) as e:
        archir.derive(two_cells(), dec)
    assert e.value.rule == "derive"


def test_derived_graphs_validate_and_export():
    g = two_cells()
    x = _x()
    for dec in ({"normal.e0": k, "normal.e1": k % 4, "reduce": k % 3} for k in range(len(NAMES))):
        d = archir.derive(g, dec).validate()
        verify_onnx(d, to_onnx(d), inputs=x, atol=1e-5, rtol=1e-4).raise_if_failed()


# --------------------------------------------------------------------------- sync_back


def test_sync_back_copies_arch_logits_and_candidate_params():
    g = two_cells()
    gm = to_fx(g, choice_mode="softmax").train()
    opt = torch.optim.SGD([{"params": weight_parameters(gm), "lr": 0.05},
                           {"params": arch_parameters(gm), "lr": 0.5}])
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(4, 3, 8, 8, generator=gen)
        loss = F.cross_entropy(gm(x), torch.randint(0, 3, (4,), generator=gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    g2 = sync_back(g, gm)
    for key, path in gm.meta["archir_arch"].items():
        logits = gm.get_submodule(path).logits.detach().numpy()
        np.testing.assert_array_equal(g2.arch[key], logits)
        assert not np.array_equal(g2.arch[key], g.arch[key])
    cm = gm.get_submodule(gm.meta["archir_modules"]["cell1.e0"])
    sep = cm.cands[NAMES.index("sep_conv_3x3")]
    np.testing.assert_array_equal(g2.node("cell1.e0").params["sep_conv_3x3.5.weight"],
                                  sep.get_submodule("s5").weight.detach().numpy())
    np.testing.assert_array_equal(g2.node("cell1.e0").buffers["sep_conv_3x3.7.running_mean"],
                                  sep.get_submodule("s7").running_mean.numpy())
    assert not np.array_equal(g2.node("cell1.e0").params["sep_conv_3x3.5.weight"],
                              g.node("cell1.e0").params["sep_conv_3x3.5.weight"])
    # the synced supernet lowers to a module that computes what the trained one does
    x = _x()
    gm.eval()
    with torch.no_grad():
        torch.testing.assert_close(_run(g2, x, choice_mode="softmax"), gm(x), rtol=0, atol=0)
    # and a derived graph of it inherits the trained weights
    dec = {"normal.e0": 3, "normal.e1": 3, "reduce": 2}
    with torch.no_grad():
        fixed = to_fx(g2, "fixed", decisions=dec).eval()(x)
    torch.testing.assert_close(_run(archir.derive(g2, dec), x), fixed, rtol=1e-5, atol=1e-6)
