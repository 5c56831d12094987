"""``check_preserved``: eval mode, seeded inputs, allclose semantics, clear failures."""

import time

import numpy as np
import pytest
import torch

import archir
from archir import samples

from passes import FunctionNotPreserved, PreservationReport, check_preserved
from passes.check import make_inputs, run_graph


@pytest.fixture(scope="module")
def g():
    return samples.chain()


def _bumped(g, node="head", k="bias", delta=1e-3):
    g2 = g.copy()
    a = g2.node(node).params[k]
    g2.set_params(node, **{k: a + delta})
    return g2


def test_identical_graphs_pass_with_zero_error(g):
    r = check_preserved(g, g.copy())
    assert isinstance(r, PreservationReport) and r.ok
    assert r.max_abs == 0.0 and r.max_rel == 0.0
    assert [o.name for o in r.outputs] == ["head"] and r.outputs[0].shape == (10,)
    assert r.n == 4 and r.seed == 0 and "ok" in str(r) and "eval mode" in str(r)


def test_changed_weights_raise_naming_the_output_and_errors(g):
    with pytest.raises(FunctionNotPreserved) as ei:
        check_preserved(g, _bumped(g))
    msg = str(ei.value)
    assert "output 'head'" in msg and "max abs error 0.001" in msg and "atol=1e-09*scale" in msg and "rtol=0*" in msg
    assert "float64" in msg and "of its scale max|before|=" in msg
    rep = ei.value.report
    assert not rep.ok and rep.worst.name == "head" and rep.max_abs == pytest.approx(1e-3, rel=1e-3)


def test_tolerance_semantics(g):
    # float64, per output: |after - before| <= atol * S + rtol * |before| (+ store_tol * storage floor),
    # S = max |before| over the output. The default (atol 1e-9 of S) rejects a 5e-6 bias change, which
    # the float32 check's fixed atol=1e-5 let through
    s = check_preserved(g, g.copy()).outputs[0].scale
    assert s == pytest.approx(float(run_graph(g, make_inputs(g), dtype="float64")[0].abs().max()))
    with pytest.raises(FunctionNotPreserved):
        check_preserved(g, _bumped(g, delta=5e-6))
    # atol is a fraction of the output scale: delta passes iff delta <= atol * S (storage floor off)
    delta = 5e-5
    r = check_preserved(g, _bumped(g, delta=delta), atol=1.01 * delta / s, store_tol=0)
    assert r.ok and 0.98 < r.worst.ratio <= 1.0 and r.worst.max_rel == pytest.approx(delta / s, rel=1e-4)
    assert not check_preserved(g, _bumped(g, delta=delta), atol=0.99 * delta / s, store_tol=0,
                               raise_on_failure=False).ok
    # rtol is per element (torch.allclose style): a relative change of every output by 1e-3 passes rtol=2e-3
    h = g.copy()
    h.set_params("head", weight=np.asarray(g.node("head").params["weight"]) * 1.001,
                 bias=np.asarray(g.node("head").params["bias"]) * 1.001)
    assert check_preserved(g, h, atol=0, rtol=2e-3, store_tol=0).ok
    assert not check_preserved(g, h, atol=0, rtol=5e-4, store_tol=0, raise_on_failure=False).ok


def test_no_raise_returns_the_failing_report(g):
    r = check_preserved(g, _bumped(g), raise_on_failure=False)
    assert not r.ok and "FAILED" in str(r) and "<-- FAIL" in str(r)


def test_runs_in_eval_mode(g):
    # BN with running stats (0, 1) and weight sqrt(1+eps) is the identity in eval mode only;
    # in train mode it would normalise by batch statistics. The check must pass.
    import passes

    g2 = passes.insert_bn(g, after="l1.conv")
    assert check_preserved(g, g2).ok
    # and dropout (identity in eval mode) does not make it flaky
    g3 = g.copy()
    d = g3.add("dropout", "flatten", p=0.9, name="drop")
    g3.set_input("head", 0, d)
    g3.validate()
    assert check_preserved(g, g3).ok


def test_seeded_inputs_are_deterministic(g):
    a, b = make_inputs(g, n=3, seed=7), make_inputs(g, n=3, seed=7)
    assert a[0].shape == (3, 3, 16, 16) and torch.equal(a[0], b[0])
    assert not torch.equal(a[0], make_inputs(g, n=3, seed=8)[0])


def test_explicit_inputs(g):
    x = np.zeros((2, 3, 16, 16), np.float32)
    for inputs in (x, [x], {"x": x}, torch.from_numpy(x)):
        r = check_preserved(g, g.copy(), inputs=inputs)
        assert r.ok and r.n == 2 and r.seed is None
    with pytest.raises(ValueError, match="no value for graph input"):
        check_preserved(g, g.copy(), inputs={"y": x})
    with pytest.raises(ValueError, match="2 input tensor"):
        check_preserved(g, g.copy(), inputs=[x, x])


def test_bad_n(g):
    with pytest.raises(ValueError, match="n must be a positive int"):
        check_preserved(g, g.copy(), n=0)


def test_interface_mismatch_outputs(g):
    g2 = g.copy()
    g2.set_outputs("flatten")
    with pytest.raises(FunctionNotPreserved, match="different outputs") as ei:
        check_preserved(g, g2)
    assert "'head': (10,)" in str(ei.value) and "'flatten': (16,)" in str(ei.value)


def test_interface_mismatch_inputs():
    a, b = samples.chain(), samples.chain(in_shape=(3, 8, 8))
    with pytest.raises(FunctionNotPreserved, match="different inputs"):
        check_preserved(a, b)


def test_several_outputs_worst_is_named(g):
    g2 = g.copy()
    g2.set_outputs("flatten", "head")
    g3 = _bumped(g2)
    with pytest.raises(FunctionNotPreserved, match="output 'head'") as ei:
        check_preserved(g2, g3)
    rep = ei.value.report
    assert [o.ok for o in rep.outputs] == [True, False]


def test_nan_fails():
    g = samples.chain()
    g2 = g.copy()
    g2.set_attrs("l0.bn", eps=0.0)
    g2.set_buffers("l0.bn", running_var=np.zeros(8, np.float32), running_mean=np.ones(8, np.float32))
    g2.set_params("l0.bn", bias=np.zeros(8, np.float32))
    # (x - 1) / 0 -> +-inf, relu, conv: inf - inf = NaN somewhere downstream
    r = check_preserved(g, g2, raise_on_failure=False)
    assert not r.ok


def test_invalid_graph_is_an_irerror(g):
    bad = g.copy()
    bad.nx.remove_edge("l0.conv", "l0.bn")
    with pytest.raises(archir.IRError):
        check_preserved(g, bad)


def test_fast_on_a_200_node_graph():
    g = samples.darts_like(cells=5)
    assert 150 <= len(g) <= 260
    g2 = g.copy()
    check_preserved(g, g2)  # warm-up (first torch calls)
    best = min(_timed(lambda: check_preserved(g, g2)) for _ in range(3))
    # goal 0.2 s (benchmarks/passes.py); generous here: the machine is shared with other jobs
    assert best < 1.0, f"check_preserved took {best:.3f}s on {len(g)} nodes"


def _timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def test_exact_match_passes_with_zero_tolerance():
    # atol=rtol=0 asks for bit-equal outputs: an unchanged graph passes (0/0 is not an error),
    # a changed one fails with an infinite ratio where the reference is 0
    import archir.samples as S
    g = S.chain()
    r = check_preserved(g, g.copy(), atol=0.0, rtol=0.0)
    assert r.ok and r.max_abs == 0.0 and all(o.ratio == 0.0 and o.max_rel == 0.0 for o in r.outputs)
    h = g.copy()
    node = h.node("head")
    h.set_params("head", bias=np.asarray(node.params["bias"]) + 1e-3)
    with pytest.raises(FunctionNotPreserved):
        check_preserved(g, h, atol=0.0, rtol=0.0)
