"""passes.finalize: stop ops removed; "join" grows the candidates into the forward pass, "drop" restores the parent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import archir
import passes
from passes.check import make_inputs, run_graph


def petridish_like(seed: int = 0) -> tuple[archir.Graph, archir.Graph]:
    """(parent, parent + one candidate at y through stop_gradient / stop_forward)."""
    p = archir.Graph("parent")
    x = p.input("x", shape=(2, 6, 6))
    y = p.add("relu", p.add("conv2d", x, out_channels=4, kernel_size=3, padding=1, name="conv"), name="y")
    p.set_outputs(p.add("linear", p.add("flatten", p.add("global_avgpool", y, name="gap"), name="flat"),
                        out_features=3, name="head"))
    p.init_params(seed=seed).validate()
    g = p.copy()
    sg = g.add("stop_gradient", "x", name="cand.sg")
    c = g.add("conv2d", sg, out_channels=4, kernel_size=3, padding=1, name="cand.conv")
    j = g.add("add", "y", g.add("stop_forward", c, name="cand.sf"), name="cand.join")
    g.replace_uses("y", j, exclude=[j])
    g.init_params(seed=seed + 1, only_missing=True).validate()
    return p, g


def test_join_removes_stop_ops_and_adds_the_candidate():
    p, g = petridish_like()
    assert passes.check_preserved(p, g, atol=0, rtol=0).ok  # the stop ops hide the candidate
    f = passes.finalize(g)
    assert passes.stop_ops(f) == [] and passes.stop_ops(g) == ["cand.sg", "cand.sf"]  # g is untouched
    assert f.inputs_of("cand.conv") == ["x"] and f.inputs_of("cand.join") == ["y", "cand.conv"]
    # y' = y + cand(x): compare with the two pieces computed separately
    xs = make_inputs(p, n=3, seed=0)
    (out,) = run_graph(f, xs)
    expect = p.copy()
    c = expect.add("conv2d", "x", out_channels=4, kernel_size=3, padding=1, name="cand.conv")
    expect.set_params("cand.conv", **dict(g.node("cand.conv").params))
    j = expect.add("add", "y", c, name="cand.join")
    expect.replace_uses("y", j, exclude=[j])
    (want,) = run_graph(expect.validate(), xs)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    with pytest.raises(passes.FunctionNotPreserved):
        passes.check_preserved(p, f)  # growing changes the function (that is the point)


def test_drop_restores_the_parent_exactly():
    p, g = petridish_like()
    f = passes.finalize(g, mode="drop")
    assert passes.stop_ops(f) == [] and "cand.conv" not in f and "cand.join" not in f
    assert f.structural_hash() == p.structural_hash()
    assert passes.check_preserved(p, f, atol=0, rtol=0).ok


def test_drop_with_a_non_add_consumer_reads_zeros():
    p = archir.Graph("p")
    x = p.input("x", shape=(2, 4, 4))
    sf = p.add("stop_forward", x, name="sf")
    m = p.add("mul", x, sf, name="m")  # x * 0
    p.set_outputs(p.add("global_avgpool", p.add("add", x, m, name="a"), name="gap"))
    p.validate()
    f = passes.finalize(p, mode="drop")
    assert passes.stop_ops(f) == [] and [n.op for n in f.nodes("zero")] == ["zero"]
    assert passes.check_preserved(p, f, atol=0, rtol=0).ok


def test_finalized_graph_exports_and_ort_agrees():
    _, g = petridish_like(seed=3)
    with pytest.raises(archir.IRError, match="finalize"):
        archir.lower.to_onnx(g)
    f = passes.finalize(g)
    archir.lower.verify_onnx(f, inputs=make_inputs(f, n=2, seed=1), rtol=1e-4, atol=1e-5).raise_if_failed()


def test_no_stop_ops_gives_an_equal_copy_and_bad_inputs_are_refused():
    p, g = petridish_like()
    f = passes.finalize(p)
    assert f is not p and f.structural_hash() == p.structural_hash() and f.weights_hash() == p.weights_hash()
    with pytest.raises(passes.PreconditionError, match="unknown mode 'keep'"):
        passes.finalize(g, mode="keep")
    q = archir.Graph("q")
    q.set_outputs(q.add("stop_gradient", q.input("x", shape=(2, 3, 3)), name="out"))
    with pytest.raises(passes.PreconditionError, match="'out' .* is a graph output"):
        passes.finalize(q.validate())
    # "join" changes the function, so the pass promises nothing a PassManager would check
    assert passes.finalize.preserves is None and passes.finalize.pass_name == "finalize"
