"""Tests of passes/remove_op.py: SNAS-style op removal and the deletion of what only feeds zeros."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

import archir
from passes.check import check_preserved, make_inputs, run_graph
from passes.infra import PreconditionError
from passes.remove_op import prune_zero_paths, remove_op
from tests.passes import assert_onnx_agrees, sample
from tests.strategies import graphs


def _values(g: archir.Graph, *nodes: str) -> list[torch.Tensor]:
    """The values of ``nodes`` on seeded inputs (eval mode)."""
    h = g.copy()
    h.set_outputs(*nodes)
    return run_graph(h, make_inputs(h, n=2, seed=3))


def test_zero_keeps_id_and_consumers_and_outputs_zeros():
    g = sample("resnet_like")
    g2 = remove_op(g, "b1.b.bn")
    assert g2.node("b1.b.bn").op == "zero" and g2.inputs_of("b1.b.bn") == ["b1.b.conv"]
    assert g.node("b1.b.bn").op == "batchnorm2d"  # the input is untouched
    assert ("b1.add", 0) in g2.users_of("b1.b.bn")
    z, add, skip = _values(g2, "b1.b.bn", "b1.add", "stem.relu")
    assert torch.count_nonzero(z) == 0 and torch.equal(add, skip)
    assert_onnx_agrees(g2)


def test_zero_takes_a_stride_for_a_downsampling_op():
    g = sample("chain")
    g2 = remove_op(g, "l0.pool")  # (8, 16, 16) -> (8, 8, 8): zeros like l0.relu[:, :, ::2, ::2]
    assert g2.node("l0.pool").attrs["stride"] == 2 and g2.node("l0.pool").type == g.node("l0.pool").type
    (z,) = _values(g2, "l0.pool")
    assert z.shape == (2, 8, 8, 8) and torch.count_nonzero(z) == 0


def test_zero_reads_an_earlier_tensor_when_the_input_has_other_channels():
    g = archir.Graph("t")
    x = g.input("x", (4, 8, 8))
    a = g.add("conv2d", x, out_channels=4, kernel_size=1, name="a")
    b = g.add("conv2d", a, out_channels=8, kernel_size=1, name="b")
    c = g.add("conv2d", b, out_channels=4, kernel_size=3, stride=2, padding=1, name="c")  # (4, 4, 4)
    g.set_outputs(g.add("relu", c, name="y"))
    g.init_params(0).validate()
    g2 = remove_op(g, "c")  # its input b has 8 channels: the nearest 4-channel tensor is a, at stride 2
    assert g2.inputs_of("c") == ["a"] and g2.node("c").attrs["stride"] == 2
    g3 = prune_zero_paths(g2)  # relu(0) is 0: the output y becomes the zero op, reading x; a, b, c go
    assert set(g2) - set(g3) == {"a", "b", "c"}
    assert g3.node("y").op == "zero" and g3.inputs_of("y") == ["x"] and g3.node("y").attrs["stride"] == 2
    assert check_preserved(g2, g3).max_abs == 0


def test_identity_passes_the_input_through():
    g = sample("chain")
    g2 = remove_op(g, "l1.relu", "identity")
    assert g2.node("l1.relu").op == "identity"
    a, b = _values(g2, "l1.relu", "l1.bn")
    assert torch.equal(a, b)
    g3 = remove_op(sample("resnet_like"), "b1.add", "identity", port=1)
    assert g3.inputs_of("b1.add") == ["stem.relu"]


def test_prune_zero_paths_deletes_the_dead_branch_exactly():
    g = sample("resnet_like")
    g2 = remove_op(g, "b1.b.bn")
    g3 = prune_zero_paths(g2)
    assert sorted(set(g2) - set(g3)) == ["b1.a.bn", "b1.a.conv", "b1.a.relu", "b1.add", "b1.b.bn", "b1.b.conv"]
    assert g3.inputs_of("b1.out") == ["stem.relu"]
    assert check_preserved(g2, g3).max_abs == 0
    assert_onnx_agrees(g3)


def test_snas_edge_deletion_in_a_darts_cell():
    g = sample("darts_like")
    edge = "cell0.n0.e0"  # a sep conv: relu, dw, pw, bn twice
    last = max((n for n in g if n.startswith(edge + ".")), key=g.topo_order().index)
    g2 = remove_op(g, last)
    g3 = prune_zero_paths(g2)
    assert not [n for n in g3 if n.startswith(edge + ".")]  # the whole edge is gone
    assert "cell0.n0.add" not in g3  # x + 0 folded
    assert check_preserved(g2, g3).max_abs == 0
    assert_onnx_agrees(g3)


def test_zero_valued_ops_become_zero_ops_and_walk_back():
    g = archir.Graph("z")
    x = g.input("x", (4, 8, 8))
    a = g.add("conv2d", x, out_channels=4, kernel_size=3, padding=1, name="a")
    z = g.add("zero", a, name="z")
    r = g.add("maxpool2d", g.add("relu", z, name="r"), kernel_size=2, name="p")  # zero-valued, (4, 4, 4)
    c = g.add("conv2d", r, out_channels=4, kernel_size=1, bias=False, name="c")  # no bias: still zero
    other = g.add("avgpool2d", x, kernel_size=2, name="other")
    g.set_outputs(g.add("tanh", g.add("add", other, c, name="sum"), name="y"))
    g.init_params(0).validate()
    g2 = prune_zero_paths(g)
    assert set(g) - set(g2) == {"a", "z", "r", "p", "c", "sum"}
    assert g2.inputs_of("y") == ["other"]
    assert check_preserved(g, g2).max_abs == 0


def test_prune_zero_paths_on_a_graph_without_zeros_changes_nothing():
    g = sample("mobilenet_like")
    g2 = prune_zero_paths(g)
    assert g2 is not g and g2.structural_hash() == g.structural_hash()


REFUSALS = {
    "unknown node": (("nope",), {}, "no node 'nope'"),
    "graph input": (("x",), {}, "graph input cannot be removed"),
    "replace_with": (("l1.relu", "skip"), {}, "unknown replace_with"),
    "identity shape": (("l1.conv", "identity"), {}, "an identity needs its input's shape"),
    "identity port": (("l1.relu", "identity"), {"port": 1}, "port=1 is not an input port"),
    "zero no source": (("l1.conv",), {}, "no tensor before it has a shape"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals(case):
    args, kwargs, pattern = REFUSALS[case]
    with pytest.raises(PreconditionError, match=pattern) as e:
        remove_op(sample("chain"), *args, **kwargs)
    assert "how to fix" in str(e.value) and "remove_op" in str(e.value)


@settings(max_examples=10)
@given(graphs(max_nodes=10), st.integers(0, 10 ** 6))
def test_random_removal_then_prune_zero_paths_keeps_function(g, pick):
    ops = [n for n in g.topo_order() if g.node(n).op != "input"]
    node = ops[pick % len(ops)]
    try:
        g2 = remove_op(g, node)
    except PreconditionError as e:
        assert "no tensor before it" in str(e)
        return
    assert g2.node(node).op == "zero"
    g3 = prune_zero_paths(g2)
    assert len(g3) <= len(g2)
    assert check_preserved(g2, g3).ok
