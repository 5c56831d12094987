"""costmodels.expected_cost: the differentiable expected cost of a supernet (SNAS eq. 16).

Checked: for one-hot probabilities it equals the derived network's cost (every decision
combination of a small supernet, and random supernets), it is linear in the probabilities,
its gradient reaches the architecture logits and matches finite differences, and bad
probabilities are refused with messages that say what to pass.
"""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import archir
import costmodels
from costmodels import CandidateCosts, arch_probs, candidate_costs, count, expected_cost
from costmodels.counts import op_cost
from tests.strategies import candidates_for, decisions, supernets


def _supernet() -> archir.Graph:
    """Stem, two tied normal edges (one decision), a strided edge, an edge with an empty-chain
    candidate (it derives to an identity), a head."""
    g = archir.Graph("snet")
    x = g.input("x", (3, 8, 8))
    h = g.add("batchnorm2d", g.add("conv2d", x, out_channels=4, kernel_size=3, padding=1, bias=False,
                                   name="stem.conv"), name="stem.bn")
    names = ("none", "skip_connect", "max_pool_3x3", "sep_conv_3x3", "conv_5x5")
    a = g.add("choice", h, name="c0.e0", candidates=candidates_for(4, 1, names), tie="normal.e0")
    b = g.add("choice", a, name="c1.e0", candidates=candidates_for(4, 1, names), tie="normal.e0")
    r = g.add("choice", g.add("add", a, b, name="c1.add"), name="red.e0",
              candidates=candidates_for(4, 2, ("avg_pool_3x3", "conv_1x1", "dil_conv_3x3")))
    cands = candidates_for(4, 1, ("conv_1x1", "skip_connect")) + [{"name": "empty", "ops": []}]
    r = g.add("choice", r, name="c2.e0", candidates=cands)
    y = g.add("linear", g.add("flatten", g.add("global_avgpool", r, name="pool"), name="flat"), out_features=3,
              name="head")
    g.set_outputs(y)
    return g.init_params(0).validate()


def _one_hot(g, d: dict, dtype=torch.float64) -> dict:
    keys = archir.decision_keys(g)
    return {k: torch.nn.functional.one_hot(torch.tensor(keys[k].index(v)), len(keys[k])).to(dtype)
            for k, v in d.items()}


def _all_decisions(g):
    keys = archir.decision_keys(g)
    for combo in itertools.product(*keys.values()):
        yield dict(zip(keys, combo))


# --------------------------------------------------------------------------- one-hot = derived cost


@pytest.mark.parametrize("cost", ["macs", "flops", "params"])
def test_one_hot_equals_count_of_derived_graph_for_every_decision(cost):
    g = _supernet()
    cc = candidate_costs(g, cost)
    combos = list(_all_decisions(g))
    assert len(combos) == 5 * 3 * 3
    for d in combos:
        want = getattr(count(archir.derive(g, d)), cost)
        got = cc.expected(_one_hot(g, d))
        assert got.dtype == torch.float64 and got.dim() == 0
        assert got.item() == want, (d, got.item(), want)
        assert cc.of(d) == want
        assert expected_cost(g, _one_hot(g, d), cost=cost).item() == want


def test_costs_differ_between_candidates():
    # guards the test above against a trivially constant cost
    cc = candidate_costs(_supernet(), "macs")
    normal = cc.per_decision["normal.e0"]
    assert normal[0] == 0 and normal[1] == 0 and normal[3] > 0 and normal[4] > normal[3]
    assert cc.candidates["c2.e0"] == ("conv_1x1", "skip_connect", "empty")
    assert list(cc.per_decision["c2.e0"][1:]) == [0, 0] and cc.per_decision["c2.e0"][0] > 0


def test_batch_size_scales_macs():
    g = _supernet()
    d = next(_all_decisions(g))
    want = count(archir.derive(g, d), batch_size=4).macs
    assert expected_cost(g, _one_hot(g, d), cost="macs", batch_size=4).item() == want


@settings(max_examples=12)
@given(data=st.data())
def test_one_hot_equals_derived_count_on_random_supernets(data):
    g = data.draw(supernets(max_cells=2, max_nodes_per_cell=2))
    d = data.draw(decisions(g))
    derived = count(archir.derive(g, d))
    for cost in ("macs", "flops", "params"):
        assert expected_cost(g, _one_hot(g, d), cost=cost).item() == getattr(derived, cost)


def test_plain_graph_has_only_a_fixed_part():
    g = archir.samples.chain()
    got = expected_cost(g, {}, cost="macs")
    assert got.item() == count(g).macs and got.dtype == torch.float64


def test_callable_cost():
    g = _supernet()

    def macs(op, attrs, ins):
        out = archir.ops.get_op(op).infer(dict(attrs), ins, None)
        return op_cost(op, attrs, ins, out).macs

    convs = lambda op, attrs, ins: float(op == "conv2d")  # noqa: E731
    for d in _all_decisions(g):
        p = _one_hot(g, d)
        derived = archir.derive(g, d)
        assert expected_cost(g, p, cost=macs).item() == count(derived).macs
        assert expected_cost(g, p, cost=convs).item() == len(derived.nodes("conv2d"))
    assert candidate_costs(g, convs).cost == "<lambda>"


def test_callable_must_return_a_finite_number():
    g = _supernet()
    with pytest.raises(TypeError, match="must return a number"):
        candidate_costs(g, lambda op, attrs, ins: "cheap")
    with pytest.raises(ValueError, match="finite"):
        candidate_costs(g, lambda op, attrs, ins: math.inf)


def test_latency_from_table_matches_table_estimate_of_derived_graph(tmp_path):
    g = _supernet()
    with costmodels.LatencyTable(tmp_path / "lut.sqlite", warmup=1, repeats=3) as table:
        cc = candidate_costs(g, "latency", table=table)
        n = len(table)
        for d in itertools.islice(_all_decisions(g), 0, None, 3):
            want = table.estimate(archir.derive(g, d), measure=False)  # every entry is there already
            assert cc.expected(_one_hot(g, d)).item() == pytest.approx(want, rel=1e-12, abs=1e-12)
        assert len(table) == n
        assert cc.fixed >= table.overhead_ms > 0
        assert (cc.per_decision["normal.e0"] >= 0).all()


# --------------------------------------------------------------------------- linearity and gradients


def test_linear_in_probabilities():
    g = _supernet()
    cc = candidate_costs(g, "flops")
    gen = torch.Generator().manual_seed(0)
    p = {k: torch.rand(len(v), generator=gen, dtype=torch.float64) for k, v in cc.candidates.items()}
    q = {k: torch.rand(len(v), generator=gen, dtype=torch.float64) for k, v in cc.candidates.items()}
    a = 0.3
    mix = {k: a * p[k] + (1 - a) * q[k] for k in p}
    lhs = cc.expected(mix).item()
    rhs = a * cc.expected(p).item() + (1 - a) * cc.expected(q).item()
    assert lhs == pytest.approx(rhs, rel=1e-12)
    # and equal to the sum over decisions written out
    manual = cc.fixed + sum(float(p[k] @ torch.tensor(cc.per_decision[k])) for k in p)
    assert cc.expected(p).item() == pytest.approx(manual, rel=1e-12)


def test_gradient_matches_finite_differences():
    g = _supernet()
    cc = candidate_costs(g, "macs")
    keys = list(cc.candidates)
    sizes = [len(cc.candidates[k]) for k in keys]
    scale = 1.0 / max(float(v.max()) for v in cc.per_decision.values())

    def f(*logits):
        return scale * cc.expected({k: torch.softmax(l, -1) for k, l in zip(keys, logits)})

    gen = torch.Generator().manual_seed(1)
    logits = [torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True) for s in sizes]
    assert torch.autograd.gradcheck(f, tuple(logits), eps=1e-6, atol=1e-7)


def test_gradient_reaches_lowered_arch_parameters():
    g = _supernet()
    gm = archir.lower.to_fx(g, choice_mode="softmax")
    probs = arch_probs(gm)
    assert set(probs) == set(archir.decision_keys(g))
    e = expected_cost(g, probs, cost="macs")
    e.backward()
    params = archir.lower.arch_parameters(gm)
    assert params and all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    # d/dlogit_k of sum_j p_j c_j = p_k (c_k - E_p[c])
    cc = candidate_costs(g, "macs")
    for key, path in gm.meta["archir_arch"].items():
        logits = gm.get_submodule(path).logits
        p = torch.softmax(logits.detach(), -1).double()
        c = torch.tensor(cc.per_decision[key])
        torch.testing.assert_close(logits.grad.double(), p * (c - p @ c), rtol=1e-4, atol=1e-3)
    assert float(np.abs(np.concatenate([p.grad.numpy() for p in params])).max()) > 0


def test_result_follows_dtype_and_float32_works():
    g = _supernet()
    p = {k: torch.full((len(v),), 1.0 / len(v)) for k, v in archir.decision_keys(g).items()}
    e = expected_cost(g, p)
    assert e.dtype == torch.float32
    assert e.item() == pytest.approx(expected_cost(g, {k: v.double() for k, v in p.items()}).item(), rel=1e-6)


# --------------------------------------------------------------------------- errors


def test_probs_must_match_the_decisions():
    g = _supernet()
    good = {k: torch.ones(len(v)) / len(v) for k, v in archir.decision_keys(g).items()}
    with pytest.raises(KeyError, match=r"missing \['red.e0', 'c2.e0'\]"):
        expected_cost(g, {"normal.e0": good["normal.e0"]})
    with pytest.raises(KeyError, match=r"unknown \['c0.e0'\]"):
        expected_cost(g, {**good, "c0.e0": good["normal.e0"]})  # a tied node's id is not its key
    with pytest.raises(ValueError, match=r"shape \(3,\).*shape \(5,\)"):
        expected_cost(g, {**good, "normal.e0": torch.ones(3)})
    with pytest.raises(ValueError, match="floating-point"):
        expected_cost(g, {**good, "normal.e0": torch.ones(5, dtype=torch.int64)})
    with pytest.raises(TypeError, match="arch_probs"):
        expected_cost(g, list(good.values()))


def test_bad_cost_sources():
    g = _supernet()
    with pytest.raises(ValueError, match="unknown cost 'energy'"):
        candidate_costs(g, "energy")
    with pytest.raises(ValueError, match="needs table="):
        candidate_costs(g, "latency")
    with pytest.raises(ValueError, match="batch_size"):
        candidate_costs(g, "macs", batch_size=0)


def test_of_refuses_bad_decisions():
    cc = candidate_costs(_supernet(), "macs")
    with pytest.raises(KeyError, match="missing"):
        cc.of({"normal.e0": 0})
    with pytest.raises(ValueError, match="not a candidate"):
        cc.of({"normal.e0": "nope", "red.e0": 0, "c2.e0": 0})


def test_arch_probs_needs_a_lowered_supernet():
    with pytest.raises(ValueError, match="choice_mode"):
        arch_probs(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="temperature"):
        arch_probs(archir.lower.to_fx(_supernet(), choice_mode="softmax"), temperature=0)
    assert isinstance(candidate_costs(_supernet()), CandidateCosts)
