"""Tests of passes/canonicalize.py: each rewrite fired, the structure is right, the function is kept."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

import archir
import passes
from passes.canonicalize import canonicalize, eliminate_dead, eliminate_identity, fold_batchnorm
from passes.check import check_preserved
from passes.infra import PreconditionError
from tests.passes import ATOL, RTOL, SAMPLE_BUILDERS, assert_onnx_agrees, sample
from tests.strategies import graphs

#: BNs that follow a conv read by nothing else, per sample: what fold_batchnorm must fold
FOLDABLE = {"chain": 2, "resnet_like": 8, "densenet_like": 1, "mobilenet_like": 10, "darts_like": 17}


def _foldable(g: archir.Graph) -> int:
    return sum(1 for bn in g.nodes("batchnorm2d") if g.node(g.inputs_of(bn.id)[0]).op == "conv2d"
               and len(g.users_of(g.inputs_of(bn.id)[0])) == 1 and bn.id not in g.outputs)


def test_foldable_counts_are_what_the_samples_hold():
    assert {n: _foldable(sample(n)) for n in SAMPLE_BUILDERS} == FOLDABLE


@pytest.mark.parametrize("name", sorted(SAMPLE_BUILDERS))
def test_fold_batchnorm_on_samples(name):
    g = sample(name)
    g2 = fold_batchnorm(g)
    assert len(g.nodes("batchnorm2d")) - len(g2.nodes("batchnorm2d")) == FOLDABLE[name]  # fired
    assert _foldable(g2) == 0
    report = check_preserved(g, g2, atol=ATOL, rtol=RTOL)
    assert report.ok, str(report)
    assert_onnx_agrees(g2)


def test_fold_math_with_conv_bias_nonaffine_bn_and_depthwise():
    g = archir.Graph("fold")
    x = g.input("x", (3, 6, 6))
    a = g.add("conv2d", x, out_channels=4, kernel_size=3, padding=1, bias=True, name="a")
    a = g.add("batchnorm2d", a, affine=False, eps=1e-3, name="a.bn")
    d = g.add("conv2d", a, out_channels=4, kernel_size=3, padding=1, groups=4, bias=False, name="dw")
    d = g.add("batchnorm2d", d, name="dw.bn")
    g.set_outputs(g.add("relu", d, name="y"))
    g.init_params(0)
    archir.samples.randomize_bn(g, seed=5)
    g.validate()
    g2 = fold_batchnorm(g)
    assert [n.op for n in g2.nodes()] == ["input", "conv2d", "conv2d", "relu"]
    assert g2.node("dw").attrs["bias"] and g2.node("dw").attrs["groups"] == 4
    bn = g.node("a.bn")
    s = 1 / np.sqrt(bn.buffers["running_var"].astype(np.float64) + 1e-3)
    np.testing.assert_allclose(g2.node("a").params["weight"], g.node("a").params["weight"] * s[:, None, None, None],
                               rtol=1e-6)
    np.testing.assert_allclose(g2.node("a").params["bias"],
                               (g.node("a").params["bias"] - bn.buffers["running_mean"]) * s,
                               rtol=1e-5, atol=1e-7)
    assert check_preserved(g, g2, atol=ATOL, rtol=RTOL).ok
    assert_onnx_agrees(g2)


def test_fold_leaves_shared_convs_and_output_bns():
    g = archir.Graph("nofold")
    x = g.input("x", (3, 6, 6))
    a = g.add("conv2d", x, out_channels=4, kernel_size=1, name="a")
    b = g.add("batchnorm2d", a, name="b")
    c = g.add("conv2d", x, out_channels=4, kernel_size=1, name="c")
    g.set_outputs(g.add("add", b, a, name="sum"), g.add("batchnorm2d", c, name="out.bn"))
    g.init_params(0).validate()
    g2 = fold_batchnorm(g)
    assert g2.structural_hash() == g.structural_hash() and g2.weights_hash() == g.weights_hash()


def _identities() -> archir.Graph:
    g = archir.Graph("ids")
    x = g.input("x", (3, 6, 6))
    h = g.add("identity", x, name="i0")
    h = g.add("conv2d", h, out_channels=4, kernel_size=1, name="c")
    h = g.add("dropout", h, p=0.0, name="d0")
    h = g.add("dropout", h, p=0.3, name="d1")
    h = g.add("concat", h, name="cat1")
    v = g.add("flatten", g.add("global_avgpool", h, name="gap"), name="flat")
    v = g.add("flatten", v, name="flat2")  # (4,) -> (4,)
    g.set_outputs(g.add("identity", g.add("linear", v, out_features=2, name="head"), name="out"))
    return g.init_params(0).validate()


def test_eliminate_identity():
    g = _identities()
    g2 = eliminate_identity(g)
    assert set(g) - set(g2) == {"i0", "d0", "cat1", "flat2"}  # the output identity stays: its id is the interface
    assert g2.inputs_of("c") == ["x"] and g2.outputs == ("out",)
    g3 = eliminate_identity(g, dropout=True)
    assert set(g) - set(g3) == {"i0", "d0", "d1", "cat1", "flat2"}
    for h in (g2, g3):
        assert check_preserved(g, h, atol=0.0, rtol=1e-7).max_abs == 0
    with pytest.raises(PreconditionError, match="dropout must be True or False"):
        eliminate_identity(g, dropout="yes")


def test_eliminate_dead_keeps_unused_inputs():
    g = archir.Graph("dead")
    x = g.input("x", (3, 6, 6))
    g.input("unused", (2,))
    dead = g.add("conv2d", x, out_channels=2, kernel_size=1, name="dead.conv")
    g.add("relu", dead, name="dead.relu")
    g.set_outputs(g.add("relu", x, name="y"))
    g.init_params(0).validate()
    g2 = eliminate_dead(g)
    assert list(g2) == ["x", "unused", "y"] and g2.inputs == ("x", "unused")
    assert check_preserved(g, g2).max_abs == 0


@pytest.mark.parametrize("name", sorted(SAMPLE_BUILDERS))
def test_canonicalize_preserves_function_and_is_idempotent(name):
    g = sample(name)
    before = g.weights_hash()
    c = canonicalize(g)
    assert g.weights_hash() == before
    assert len(c) == len(g) - FOLDABLE[name]
    report = check_preserved(g, c, atol=ATOL, rtol=RTOL)
    assert report.ok, str(report)
    c2 = canonicalize(c)
    assert c2.structural_hash() == c.structural_hash() and c2.weights_hash() == c.weights_hash()
    assert list(c2) == list(c)
    assert_onnx_agrees(c)


def _work_for_every_rule() -> archir.Graph:
    """_identities() plus a BN after conv c, a zero branch added to it, and a dangling reader of c
    (which blocks the fold until dead-code elimination removes it: a second round is needed)."""
    g = _identities().copy()
    bn = g.add("batchnorm2d", "c", name="c.bn")
    z = g.add("zero", bn, name="z")
    s = g.add("add", bn, g.add("relu", z, name="zr"), name="s")
    g.replace_uses("c", s, exclude=[bn])
    g.add("tanh", "c", name="dangling")
    g.init_params(0, only_missing=True)
    archir.samples.randomize_bn(g, seed=3)
    return g.validate()


def test_canonicalize_reaches_the_fixed_point_of_all_rules():
    g = _work_for_every_rule()
    c = canonicalize(g, dropout=True)
    assert [n.op for n in c.nodes()] == ["input", "conv2d", "global_avgpool", "flatten", "linear", "identity"]
    assert c.node("c").attrs["bias"]
    for rule in (fold_batchnorm, eliminate_identity, eliminate_dead, passes.prune_zero_paths):
        again = rule(c)
        assert again.structural_hash() == c.structural_hash() and again.weights_hash() == c.weights_hash(), rule
    assert check_preserved(g, c, atol=ATOL, rtol=RTOL).ok
    assert_onnx_agrees(c)


def test_canonicalize_in_a_pass_manager_is_checked():
    pm = passes.PassManager([canonicalize], instruments=[passes.Verify(), passes.CheckPreserved()])
    out = pm.run(sample("resnet_like"))
    assert not out.nodes("batchnorm2d")
    assert canonicalize.preserves == fold_batchnorm.preserves == "function"


@settings(max_examples=15)
@given(graphs(max_nodes=12))
def test_random_graphs_canonicalize(g):
    c = canonicalize(g, dropout=True)
    c.validate()
    assert check_preserved(g, c, atol=ATOL, rtol=RTOL).ok
    c2 = canonicalize(c, dropout=True)
    assert c2.structural_hash() == c.structural_hash() and c2.weights_hash() == c.weights_hash()
