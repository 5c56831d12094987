"""The ``slice`` op: shape rule and refusals, fx against torch indexing, ONNX Runtime against fx,
costs, imports from torch (``x[:, :, a:b]``, ``narrow``) and ONNX, DARTS' FactorizedReduce
bit-exact, and prune/widen across a spatial slice."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import archir
import costmodels
import passes
from archir.errors import OpSchemaError, ShapeError
from archir.frontend import UnsupportedModelError, from_onnx, from_torch
from archir.lower import to_fx, to_onnx, verify_onnx
from archir.ops import slice_range
from passes.coupling import analyze


def _net(shape, **attrs) -> archir.Graph:
    g = archir.Graph("s")
    y = g.add("slice", g.input("x", shape), name="s", **attrs)
    g.set_outputs(y)
    g.init_params(0)
    return g.validate()


@settings(max_examples=40, deadline=None)
@given(dim=st.integers(1, 3), start=st.integers(-9, 9), end=st.one_of(st.none(), st.integers(-9, 9)),
       step=st.integers(1, 4), shape=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)))
def test_shape_and_values_are_python_slicing(dim, start, end, step, shape):
    x = torch.randn(2, *shape)
    index = (slice(None),) * dim + (slice(start, end, step),)
    want = x[index]
    if want.numel() == 0:
        with pytest.raises(ShapeError, match="empty"):
            _net(shape, dim=dim, start=start, end=end, step=step)
        return
    g = _net(shape, dim=dim, start=start, end=end, step=step)
    assert g.node("s").type.shape == tuple(want.shape[1:])
    assert torch.equal(to_fx(g)(x), want)
    # the same dim counted from the end
    neg = _net(shape, dim=dim - 4, start=start, end=end, step=step)
    assert torch.equal(to_fx(neg)(x), want)


def test_refusals_name_the_node_and_the_mend():
    with pytest.raises(OpSchemaError, match="batch dim") as e:
        _net((4, 6, 6), dim=0)
    assert e.value.node == "s" and "dim=" in e.value.hint
    with pytest.raises(OpSchemaError, match="step"):
        _net((4, 6, 6), dim=2, step=0)
    with pytest.raises(OpSchemaError, match="needs attribute 'dim'"):
        _net((4, 6, 6))
    with pytest.raises(OpSchemaError, match="'start'"):
        _net((4, 6, 6), dim=2, start=1.5)
    with pytest.raises(ShapeError, match="out of range"):
        _net((4, 6, 6), dim=4)
    with pytest.raises(ShapeError, match="empty") as e:
        _net((4, 6, 6), dim=2, start=6)
    assert e.value.node == "s"


@pytest.mark.parametrize("attrs", [dict(dim=1, start=1, end=3), dict(dim=2, start=1), dict(dim=3, step=2),
                                   dict(dim=-1, start=-4, end=-1, step=2), dict(dim=3, start=-100, end=5)])
def test_onnx_runtime_agrees_with_fx_and_imports_back(attrs):
    g = _net((4, 7, 6), **attrs)
    rep = verify_onnx(g)
    assert rep.ok and rep.max_abs == 0.0
    m = to_onnx(g)
    assert [n.op_type for n in m.graph.node] == ["Slice"]
    back = from_onnx(m)
    (s,) = back.nodes("slice")  # imported with canonical bounds: the same slice
    assert slice_range(s.attrs, (4, 7, 6)) == slice_range(g.node("s").attrs, (4, 7, 6))
    x = torch.randn(2, 4, 7, 6)
    assert torch.equal(to_fx(back)(x), to_fx(g)(x))


def test_onnx_import_splits_a_multi_axis_slice_and_keeps_the_strided_zero():
    g = _net((4, 8, 8), dim=2, start=1)
    m = to_onnx(g)
    node = m.graph.node[0]
    inits = {i.name: i for i in m.graph.initializer}
    for name, vals in zip(node.input[1:], ([1, 1], [2**63 - 1, 7], [2, 3], [1, 1])):
        inits[name].CopyFrom(onnx.numpy_helper.from_array(np.array(vals, np.int64), name))
    onnx.checker.check_model(m)
    back = from_onnx(m)
    assert [(n.attrs["dim"], n.attrs["start"], n.attrs["end"]) for n in back.nodes("slice")] == \
        [(2, 1, None), (3, 1, 7)]
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(to_fx(back)(x), x[:, :, 1:, 1:7])
    z = archir.Graph("z")
    z.set_outputs(z.add("zero", z.input("x", (4, 8, 8)), stride=2))
    assert [n.op for n in from_onnx(to_onnx(z.validate())).nodes()] == ["input", "zero"]


class _Sliced(torch.nn.Module):
    """``x[:, :, a:b]`` (with an Ellipsis and a step) and ``narrow`` (function and method, a negative start)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        a = torch.narrow(y, 2, 1, 3) + y[:, :, 2:5, :]
        b = y.narrow(3, -4, 4)[..., ::2, 1:]
        return torch.cat([a.flatten(1), b.flatten(1)], 1)


def test_torch_import_maps_getitem_and_narrow_to_slices():
    m = _Sliced().eval()
    g = from_torch(m, torch.randn(1, 3, 6, 6))
    got = [(n.attrs["dim"], n.attrs["start"], n.attrs["end"], n.attrs["step"]) for n in g.nodes("slice")]
    # one slice per non-trivial dim, chained; a slice to the end imports with end=None
    assert got == [(2, 1, 4, 1), (2, 2, 5, 1), (3, 2, None, 1), (2, 0, None, 2), (3, 1, None, 1)]
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(to_fx(g).eval()(x), m(x))


@pytest.mark.parametrize("fn,why", [(lambda x: x[1:], "slicing the batch dimension"),
                                    (lambda x: x[..., None], "slices .* only"),
                                    (lambda x: x.narrow(0, 0, 1), "narrowing the batch dimension")],
                         ids=["batch", "none", "narrow-batch"])
def test_torch_import_refuses_batch_slices_and_other_indexing(fn, why):
    class _M(torch.nn.Module):
        def forward(self, x):
            return fn(x)

    with pytest.raises(UnsupportedModelError, match=why):
        from_torch(_M(), torch.randn(2, 3, 6, 6))


@pytest.mark.parametrize("fn", [lambda x: x[:, 0], lambda x: x[:, :, 1], lambda x: x[:, 1:, 2]],
                         ids=["channel", "row", "range-then-row"])
def test_an_integer_index_imports_as_a_slice_and_a_reshape(fn):
    # x[:, 0] (ViT's class token) selects one position and drops the dim: a length-1 slice, then a reshape or flatten
    class _M(torch.nn.Module):
        def forward(self, x):
            return fn(x)

    g = from_torch(_M(), torch.randn(2, 3, 6, 6))
    assert g.nodes("slice") and (g.nodes("reshape") or g.nodes("flatten"))  # the dim dropped
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(to_fx(g).eval()(x), fn(x))


def test_costs_are_traffic_without_arithmetic():
    g = _net((4, 8, 8), dim=2, start=1)
    c = costmodels.count(g)
    assert (c["s"].macs, c["s"].flops, c["s"].params) == (0, 0, 0)
    assert c["s"].bytes_moved == 2 * 4 * 7 * 8 * 4


class _FactorizedReduce(torch.nn.Module):
    """DARTS' FactorizedReduce, as its reference writes it."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.relu = torch.nn.ReLU(inplace=False)
        self.conv_1 = torch.nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = torch.nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = torch.nn.BatchNorm2d(c_out)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def _fr_graph(c_in: int, c_out: int, hw: int) -> archir.Graph:
    from archir.cells import add_steps, factorized_reduce

    g = archir.Graph("fr")
    g.set_outputs(add_steps(g, g.input("x", (c_in, hw, hw)), factorized_reduce(c_out), "fr"))
    g.init_params(3)
    return g.validate()


def test_factorized_reduce_is_bit_exact_with_the_reference():
    g = _fr_graph(6, 8, 10)
    ref = _FactorizedReduce(6, 8).eval()
    with torch.no_grad():
        ref.conv_1.weight.copy_(torch.from_numpy(np.asarray(g.node("fr.1").params["weight"])))
        ref.conv_2.weight.copy_(torch.from_numpy(np.asarray(g.node("fr.4").params["weight"])))
        bn = g.node("fr.6")
        for name in ("weight", "bias"):
            getattr(ref.bn, name).copy_(torch.from_numpy(np.asarray(bn.params[name])))
        for name in ("running_mean", "running_var"):
            getattr(ref.bn, name).copy_(torch.from_numpy(np.asarray(bn.buffers[name])))
    x = torch.randn(3, 6, 10, 10)
    assert torch.equal(to_fx(g).eval()(x), ref(x))
    assert g.node(g.outputs[0]).type.shape == (8, 5, 5)
    # and the reference imports as the same structure
    assert from_torch(ref, torch.randn(1, 6, 10, 10)).structural_hash() == g.structural_hash()
    assert verify_onnx(g).ok


def test_prune_and_widen_follow_channels_across_a_spatial_slice():
    g = archir.Graph("p")
    x = g.input("x", (3, 10, 10))
    h = g.add("relu", g.add("conv2d", x, out_channels=8, kernel_size=3, padding=1, name="c0"))
    s = g.add("slice", g.add("slice", h, dim=2, start=1, name="s2"), dim=3, start=1, name="s3")
    y = g.add("conv2d", s, out_channels=6, kernel_size=1, stride=2, name="c1")
    y = g.add("linear", g.add("flatten", g.add("global_avgpool", y)), out_features=4, name="head")
    g.set_outputs(y)
    g.init_params(0)
    g.validate()
    grp = analyze(g).group_of("s3")
    assert grp.producers == ("c0",) and grp.consumers == ("c1",) and grp.free
    wide = passes.widen(g, node="c0", out_channels=12)
    assert wide.node("c0").attrs["out_channels"] == 12 and wide.node("c1").params["weight"].shape[1] == 12
    passes.check_preserved(g, wide)
    pruned, _ = passes.prune_channels(g, ratio=0.5, groups=[grp.index])
    assert pruned.node("c0").attrs["out_channels"] == 4 and pruned.node("s3").type.shape == (4, 9, 9)
    assert verify_onnx(pruned).ok
    # a channel slice with step 1 holds a range of the channels (followed, its range moves: see
    # tests/passes/test_prune_channels_last.py); a strided one is opaque: its producer's channels are pinned
    for step, free in ((1, True), (2, False)):
        c = archir.Graph("c")
        h = g_conv = c.add("conv2d", c.input("x", (3, 6, 6)), out_channels=8, kernel_size=1, name="c0")
        c.set_outputs(c.add("conv2d", c.add("slice", h, dim=1, end=4, step=step, name="cs"), out_channels=2,
                            kernel_size=1))
        c.init_params(0)
        cp = analyze(c.validate())
        assert cp.group_of(g_conv).free == free
        assert cp.rule("cs").flow == "slice" if free else "strided slice" in cp.rule("cs").reason
