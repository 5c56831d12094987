"""Tests of passes/prune.py: pruning fired, the structure is right (hand-computed MACs), the numbers match."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import archir
import costmodels
import passes
from archir.ops.registry import op_names
from passes.check import check_preserved
from passes.coupling import analyze
from passes.infra import PreconditionError
from passes.prune import CRITERIA, prunable_groups, prune_channels, prune_channels_pass
from tests.passes import SAMPLE_BUILDERS, assert_onnx_agrees, sample
from tests.strategies import graphs


def _macs(g, node=None):
    c = costmodels.count(g)
    return c.macs if node is None else c[node].macs


def _out(g, n):
    return g.node(n).type.shape[0]


# --------------------------------------------------------------------------- every sample network


@pytest.mark.parametrize("name", sorted(SAMPLE_BUILDERS))
def test_samples_prune_validate_onnx_agrees_and_shrink(name):
    g = sample(name)
    before = g.weights_hash()
    small, report = prune_channels(g, ratio=0.5, criterion="l1", cost=costmodels.count)
    assert g.weights_hash() == before  # the input is untouched
    small.validate()
    assert_onnx_agrees(small)
    assert report.channels_removed > 0  # fired
    assert report.params_after == small.num_params() < g.num_params() == report.params_before
    assert report.macs_before == _macs(g) and report.macs_after == _macs(small) < _macs(g)
    for gp in report.groups:  # every free group of size s keeps floor(s / 2)
        assert gp.after == max(1, gp.before // 2) and len(gp.removed) == gp.before - gp.after
        for p in gp.producers:
            assert _out(small, p) == _out(g, p) - sum(1 for _ in gp.removed) * (_out(g, p) // gp.before)
    assert {s.group for s in report.skipped} == {grp.index for grp in analyze(g).groups()
                                                 if not grp.free or grp.size < 2}
    assert report.deviation is not None and report.deviation.max_abs > 0  # pruning changes the function


def test_chain_macs_by_hand():
    g = sample("chain")  # x(3,16,16) -> l0.conv 8 -> pool -> l1.conv 16 on 8x8 -> head 10
    small, _ = prune_channels(g, ratio=0.5)
    assert _macs(g, "l0.conv") == 8 * 16 * 16 * 3 * 9 and _macs(small, "l0.conv") == 4 * 16 * 16 * 3 * 9
    # halving both the in and out channels of an inner conv quarters its MACs
    assert _macs(g, "l1.conv") == 16 * 8 * 8 * 8 * 9 and _macs(small, "l1.conv") == _macs(g, "l1.conv") // 4
    assert _macs(small, "head") == 10 * 8
    bn = small.node("l0.bn")
    assert bn.params["weight"].shape == (4,) and bn.buffers["running_var"].shape == (4,)


def test_resnet_residual_stream_pruned_together():
    g = sample("resnet_like")
    small, report = prune_channels(g, ratio=0.5)
    stream = ("stem.conv", "b1.b.conv", "b2.b.conv")
    gp = next(gp for gp in report.groups if gp.producers == stream)
    assert (gp.before, gp.after) == (8, 4)
    assert [_out(small, n) for n in stream] == [4, 4, 4]
    # the same channels go from every producer and carrier of the residual stream
    kept = [i for i in range(8) if i not in gp.removed]
    np.testing.assert_array_equal(small.node("stem.conv").params["weight"],
                                  np.take(g.node("stem.conv").params["weight"], kept, axis=0))
    for bn in ("stem.bn", "b1.b.bn", "b2.b.bn"):
        for k in ("weight", "bias"):
            np.testing.assert_array_equal(small.node(bn).params[k], np.take(g.node(bn).params[k], kept))
    np.testing.assert_array_equal(small.node("b1.a.conv").params["weight"].shape[1], 4)
    assert _macs(small, "b1.a.conv") == _macs(g, "b1.a.conv") // 4
    assert _macs(small, "b3.proj.conv") == _macs(g, "b3.proj.conv") // 4  # 1x1 projection: in 8->4, out 16->8


def test_densenet_concat_offsets():
    g = sample("densenet_like")  # stem 8, growth 4: trans.conv reads 8 + 4 + 4 + 4
    small, _ = prune_channels(g, ratio=0.5)
    assert small.node("dense.out").type.shape[0] == 10
    assert small.node("trans.conv").params["weight"].shape[:2] == (4, 10)
    assert _macs(small, "trans.conv") == _macs(g, "trans.conv") // 4
    assert _macs(small, "d1.conv") == _macs(g, "d1.conv") // 4  # reads stem + d0: 12 -> 6, out 4 -> 2


def test_mobilenet_depthwise_and_squeeze_excite():
    g = sample("mobilenet_like")
    small, _ = prune_channels(g, ratio=0.5)
    for blk in ("ir1", "ir3"):  # the SE blocks
        mid = _out(small, f"{blk}.expand.conv")
        assert mid == _out(g, f"{blk}.expand.conv") // 2
        assert small.node(f"{blk}.dw.conv").attrs["groups"] == mid == _out(small, f"{blk}.se.fc2")
        assert small.node(f"{blk}.se.fc1").params["weight"].shape[1] == mid
        assert _macs(small, f"{blk}.dw.conv") == _macs(g, f"{blk}.dw.conv") // 2  # depthwise: linear in channels
    assert _macs(small, "ir2.expand.conv") == _macs(g, "ir2.expand.conv") // 4


def _se_block() -> archir.Graph:
    g = archir.Graph("se")
    x = g.input("x", (3, 8, 8))
    h = g.add("conv2d", x, out_channels=8, kernel_size=3, padding=1, name="expand")
    h = g.add("relu", g.add("batchnorm2d", h, name="bn"), name="relu")
    h = g.add("conv2d", h, out_channels=8, kernel_size=3, padding=1, groups=8, name="dw")
    s = g.add("global_avgpool", h, name="se.pool")
    s = g.add("relu", g.add("conv2d", s, out_channels=4, kernel_size=1, name="se.fc1"), name="se.relu")
    s = g.add("sigmoid", g.add("conv2d", s, out_channels=8, kernel_size=1, name="se.fc2"), name="se.gate")
    h = g.add("mul", h, s, name="se.mul")  # broadcasting (8, 8, 8) * (8, 1, 1)
    h = g.add("conv2d", h, out_channels=6, kernel_size=1, name="project")
    g.set_outputs(g.add("linear", g.add("flatten", g.add("global_avgpool", h)), out_features=3, name="head"))
    g.init_params(seed=1)
    archir.samples.randomize_bn(g, seed=2)
    return g.validate()


def test_hand_built_squeeze_excite_prunes_gate_with_main_path():
    g = _se_block()
    small, report = prune_channels(g, keep=5, groups=["expand"])
    (gp,) = report.groups
    assert set(gp.producers) == {"expand", "se.fc2"} and (gp.before, gp.after) == (8, 5)
    kept = [i for i in range(8) if i not in gp.removed]
    for n in ("expand", "se.fc2"):  # the same channels leave the main path and the gate
        np.testing.assert_array_equal(small.node(n).params["weight"], np.take(g.node(n).params["weight"], kept, 0))
    np.testing.assert_array_equal(small.node("dw").params["weight"], np.take(g.node("dw").params["weight"], kept, 0))
    np.testing.assert_array_equal(small.node("se.fc1").params["weight"],
                                  np.take(g.node("se.fc1").params["weight"], kept, 1))
    np.testing.assert_array_equal(small.node("project").params["weight"],
                                  np.take(g.node("project").params["weight"], kept, 1))
    assert small.node("se.mul").type.shape == (5, 8, 8)
    assert_onnx_agrees(small)


@pytest.mark.skipif("adaptive_avgpool2d" not in op_names(), reason="adaptive_avgpool2d is not registered")
def test_adaptive_avgpool_carries_channels():
    g = archir.Graph("ada")
    x = g.input("x", (3, 8, 8))
    h = g.add("conv2d", x, out_channels=6, kernel_size=3, padding=1, name="c")
    h = g.add("adaptive_avgpool2d", h, output_size=2, name="ap")
    g.set_outputs(g.add("linear", g.add("flatten", h), out_features=3, name="head"))
    g.init_params(0).validate()
    assert analyze(g).rule("ap").kind == "carrier"
    small, _ = prune_channels(g, ratio=0.5)
    assert small.node("head").params["weight"].shape == (3, 3 * 4)


def test_flatten_linear_removes_hw_column_blocks():
    g = archir.Graph("fl")
    x = g.input("x", (2, 4, 4))
    h = g.add("conv2d", x, out_channels=4, kernel_size=3, padding=1, name="c")
    g.set_outputs(g.add("linear", g.add("flatten", h, name="flat"), out_features=3, name="head"))
    g.init_params(0).validate()
    small, report = prune_channels(g, keep=2)
    kept = [i for i in range(4) if i not in report.groups[0].removed]
    cols = [c * 16 + k for c in kept for k in range(16)]
    np.testing.assert_array_equal(small.node("head").params["weight"], g.node("head").params["weight"][:, cols])
    assert_onnx_agrees(small)


def test_add_of_concat_keeps_a_channel_in_every_concat_input():
    g = archir.Graph("t")
    x = g.input("x", (3, 6, 6))
    a = g.add("conv2d", x, out_channels=2, kernel_size=1, name="a")
    b = g.add("conv2d", x, out_channels=3, kernel_size=1, name="b")
    c = g.add("conv2d", x, out_channels=5, kernel_size=1, name="c")
    s = g.add("add", g.add("concat", a, b, name="cat"), c, name="sum")
    g.set_outputs(g.add("conv2d", s, out_channels=2, kernel_size=1, name="out"))
    g.init_params(0).validate()
    small, report = prune_channels(g, keep=1)
    assert (_out(small, "a"), _out(small, "b"), _out(small, "c")) == (1, 1, 2)  # one group, a and b keep one each
    assert report.groups[0].after == 2
    assert_onnx_agrees(small)


# --------------------------------------------------------------------------- function-preserving cases


@pytest.mark.parametrize("name", sorted(SAMPLE_BUILDERS))
def test_ratio_zero_preserves_function(name):
    g = sample(name)
    small, report = prune_channels(g, ratio=0.0)
    assert small is not g and report.channels_removed == 0
    assert small.structural_hash() == g.structural_hash() and small.weights_hash() == g.weights_hash()
    # (check_preserved(atol=0, rtol=0) reports 0/0 = NaN for equal outputs, so compare max_abs)
    assert check_preserved(g, small).max_abs == 0 and report.deviation.max_abs == 0


def _with_dead_channels(dead=(1, 4, 6), *, bn: bool) -> archir.Graph:
    """chain() whose l0 channels ``dead`` contribute nothing: zero filters (or zero BN gamma/beta) and columns."""
    g = sample("chain").copy()
    w = g.node("l0.conv").params["weight"].copy()
    cols = g.node("l1.conv").params["weight"].copy()
    if bn:
        gamma, beta = (g.node("l0.bn").params[k].copy() for k in ("weight", "bias"))
        gamma[list(dead)] = 0
        beta[list(dead)] = 0
        g.set_params("l0.bn", weight=gamma, bias=beta)
    else:
        w[list(dead)] = 0
        cols[:, list(dead)] = 0
    g.set_params("l0.conv", weight=w)
    g.set_params("l1.conv", weight=cols)
    return g.validate()


@pytest.mark.parametrize("criterion,bn", [("l1", False), ("l2", False), ("bn_gamma", True)])
def test_pruning_channels_that_contribute_nothing_preserves_function(criterion, bn):
    g = _with_dead_channels(bn=bn)
    small, report = prune_channels(g, keep=5, groups=["l0.conv"], criterion=criterion)
    assert report.groups[0].removed == (1, 4, 6)
    assert check_preserved(g, small, atol=1e-6, rtol=1e-5).ok
    assert report.deviation.ok and report.deviation.max_abs <= 1e-6
    assert_onnx_agrees(small)


def test_l1_importance_sums_filters_and_columns():
    g = sample("chain")
    _, report = prune_channels(g, keep=1, groups=["l1.conv"], criterion="l1")
    w, head = g.node("l1.conv").params["weight"], g.node("head").params["weight"]
    want = np.abs(w).reshape(16, -1).sum(1) + np.abs(head).sum(0)
    np.testing.assert_allclose(report.groups[0].importance, want, rtol=1e-6)
    assert set(report.groups[0].removed) == set(np.argsort(want, kind="stable")[:15].tolist())


def test_round_to_keeps_aligned_channel_counts():
    g = sample("darts_like")  # 16-channel groups (48 in the stem)
    small, report = prune_channels(g, ratio=0.25, round_to=8, deviation=False)
    assert {(gp.before, gp.after) for gp in report.groups} == {(16, 16), (48, 40)}  # 12 -> 16, 36 -> 40
    small, report = prune_channels(g, ratio=0.5, round_to=8, deviation=False)
    assert {gp.after for gp in report.groups} == {8, 24}
    assert_onnx_agrees(small)


def test_random_criterion_is_seeded():
    g = sample("resnet_like")
    r = [prune_channels(g, ratio=0.5, criterion="random", seed=s, deviation=False).report for s in (3, 3, 4)]
    key = lambda rep: [gp.removed for gp in rep.groups]  # noqa: E731
    assert key(r[0]) == key(r[1]) != key(r[2])


def test_keep_mapping_prunes_only_the_named_groups():
    g = sample("chain")
    small, report = prune_channels(g, keep={"l1.conv": 3})
    assert [gp.producers for gp in report.groups] == [("l1.conv",)]
    assert (_out(small, "l0.conv"), _out(small, "l1.conv")) == (8, 3)
    small, _ = prune_channels(g, keep={"l0.bn": 2, 2: 5})  # any member node, or a group index
    assert (_out(small, "l0.conv"), _out(small, "l1.conv")) == (2, 5)


def test_report_text_and_dict():
    g = sample("chain")
    _, report = prune_channels(g, ratio=0.5, cost=costmodels.count)
    text = str(report)
    assert "12 channels removed" in text and "params: 1,586 ->" in text and "MACs:" in text
    assert "skipped group" in text and "graph output 'head'" in text
    d = report.to_dict()
    assert d["params_before"] == 1586 and [x["before"] for x in d["groups"]] == [8, 16]
    assert d["macs_after"] < d["macs_before"] and d["max_abs_deviation"] > 0


def test_pass_manager_runs_the_graph_pass():
    g = sample("chain")
    out = passes.PassManager([passes.bind(prune_channels_pass, ratio=0.5)], instruments=[passes.Verify()]).run(g)
    assert _out(out, "l1.conv") == 8 and prune_channels_pass.preserves == "shape"


def test_prunable_groups():
    assert prunable_groups(sample("chain")) == [{"group": 1, "producers": ["l0.conv"], "channels": 8},
                                               {"group": 2, "producers": ["l1.conv"], "channels": 16}]


# --------------------------------------------------------------------------- refusals


def _grouped() -> archir.Graph:
    g = archir.Graph("grouped")
    x = g.input("x", (4, 6, 6))
    a = g.add("conv2d", x, out_channels=4, kernel_size=1, name="a")
    b = g.add("conv2d", a, out_channels=4, kernel_size=3, padding=1, groups=2, name="grp")
    g.set_outputs(g.add("conv2d", b, out_channels=2, kernel_size=1, name="out"))
    return g.init_params(0).validate()


REFUSALS = {
    "both": (dict(ratio=0.5, keep=2), "exactly one of ratio"),
    "neither": (dict(), "exactly one of ratio"),
    "ratio one": (dict(ratio=1.0), r"ratio must be a number in \[0, 1\)"),
    "ratio negative": (dict(ratio=-0.1), "ratio must be"),
    "ratio str": (dict(ratio="half"), "ratio must be"),
    "ratio bool": (dict(ratio=True), "ratio must be"),
    "keep zero": (dict(keep=0), "keep must be an int >= 1"),
    "keep mapping bad": (dict(keep={"l1.conv": 0}), "keep for 'l1.conv' must be"),
    "criterion": (dict(ratio=0.5, criterion="taylor"), "unknown criterion"),
    "seed": (dict(ratio=0.5, seed=1.5), "seed must be an int"),
    "round_to": (dict(ratio=0.5, round_to=0), "round_to must be an int >= 1"),
    "output group": (dict(ratio=0.5, groups=["head"]), "graph output 'head'"),
    "input group": (dict(ratio=0.5, groups=["x"]), "graph input 'x'"),
    "unknown node": (dict(ratio=0.5, groups=["nope"]), "no node 'nope'"),
    "group index": (dict(ratio=0.5, groups=[99]), "no group 99"),
    "group type": (dict(ratio=0.5, groups=[1.5]), "group indices or node ids"),
    "cost": (dict(ratio=0.5, cost=lambda g: object()), "without .macs"),
    "cost not callable": (dict(ratio=0.5, cost=3), "cost must be callable"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals(case):
    kwargs, pattern = REFUSALS[case]
    g = sample("chain")
    with pytest.raises(PreconditionError, match=pattern) as e:
        prune_channels(g, **kwargs)
    assert "how to fix" in str(e.value) and "prune_channels" in str(e.value)


def test_bn_gamma_refuses_a_named_group_without_bn_and_skips_it_otherwise():
    g = sample("densenet_like")  # d2.conv feeds only the final concat -> trans.conv: no BN on its channels
    with pytest.raises(PreconditionError, match="no affine batchnorm2d") as e:
        prune_channels(g, ratio=0.5, criterion="bn_gamma", groups=["d2.conv"])
    assert e.value.node == "d2.conv"
    _, report = prune_channels(g, ratio=0.5, criterion="bn_gamma", deviation=False)
    assert any("no affine batchnorm2d" in s.reason and s.producers == ("d2.conv",) for s in report.skipped)


def test_grouped_conv_channels_are_pinned_not_guessed():
    g = _grouped()
    small, report = prune_channels(g, ratio=0.5)
    assert small.structural_hash() == g.structural_hash()  # nothing legal to prune: every group touches grp
    assert any("grouped conv" in s.reason for s in report.skipped)
    with pytest.raises(PreconditionError, match="grouped conv") as e:
        prune_channels(g, ratio=0.5, groups=["a"])
    assert e.value.node == "grp"


def test_single_channel_group_named_is_refused():
    g = archir.Graph("one")
    x = g.input("x", (2, 4, 4))
    a = g.add("conv2d", x, out_channels=1, kernel_size=1, name="a")
    g.set_outputs(g.add("conv2d", a, out_channels=2, kernel_size=1, name="out"))
    g.init_params(0).validate()
    with pytest.raises(PreconditionError, match="single channel"):
        prune_channels(g, ratio=0.5, groups=["a"])


def test_supernet_is_refused():
    g = archir.Graph("super")
    x = g.input("x", (3, 8, 8))
    h = g.add("choice", x, name="ch", candidates=[
        {"name": "conv", "ops": [{"op": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1}]},
        {"name": "skip", "ops": [{"op": "identity"}]}])
    g.set_outputs(g.add("conv2d", h, out_channels=2, kernel_size=1, name="out"))
    g.init_params(0).validate()
    with pytest.raises(PreconditionError, match="supernet") as e:
        prune_channels(g, ratio=0.5)
    assert "archir.derive" in str(e.value)


# --------------------------------------------------------------------------- random graphs


@settings(max_examples=15)
@given(graphs(max_nodes=10), st.sampled_from([0.0, 0.5, 0.75]), st.sampled_from(CRITERIA))
def test_random_graphs_prune_to_valid_graphs(g, ratio, criterion):
    small, report = prune_channels(g, ratio=ratio, criterion=criterion, seed=1)
    small.validate()
    assert [small.node(o).type for o in small.outputs] == [g.node(o).type for o in g.outputs]
    assert small.num_params() <= g.num_params()
    if ratio == 0.0:
        assert report.channels_removed == 0 and report.deviation.ok
    else:
        prunable = [grp for grp in analyze(g).groups() if grp.free and grp.size >= 2]
        if prunable and criterion != "bn_gamma":
            assert report.channels_removed > 0
    for gp in report.groups:
        assert 1 <= gp.after <= gp.before
