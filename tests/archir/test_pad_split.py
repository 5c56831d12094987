"""``pad`` (constant/reflect/replicate on H and W) and the import of ``torch.split``/``chunk`` and ONNX
``Split`` as slices: shape rule and refusals, fx against torch, ONNX Runtime against fx, costs,
imports from torch and ONNX (torch's exporter computes the pads in the graph), and prune/widen
across a pad (TF "same" padding before a conv, as NASNet-A ports write it)."""

from __future__ import annotations


import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archir
import costmodels
import passes
from archir.errors import OpSchemaError, ShapeError
from archir.frontend import UnsupportedModelError, from_onnx, from_torch
from archir.lower import to_fx, to_onnx, verify_onnx
from passes.coupling import analyze
from tests.archir.test_elementwise_ops import _export


def _net(shape=(3, 5, 6), **attrs) -> archir.Graph:
    g = archir.Graph("p")
    g.set_outputs(g.add("pad", g.input("x", shape), name="p", **attrs))
    g.init_params(0)
    return g.validate()


CASES = [dict(pads=[1, 2, 0, 3]), dict(pads=[1, 2, 0, 3], value=-0.5), dict(pads=[2, 1], mode="reflect"),
         dict(pads=[4, 5, 4, 4], mode="reflect"), dict(pads=[7, 0, 0, 9], mode="replicate"), dict(pads=[0, 0, 0, 0])]


@pytest.mark.parametrize("attrs", CASES)
def test_shape_values_onnx_runtime_and_import_back(attrs):
    g = _net(**attrs)
    p = attrs["pads"] + [0, 0] * (len(attrs["pads"]) == 2)
    assert g.node("p").attrs["pads"] == p  # canonical: four entries
    assert g.node("p").type.shape == (3, 5 + p[2] + p[3], 6 + p[0] + p[1])
    x = torch.randn(2, 3, 5, 6)
    kw = {"value": attrs["value"]} if "value" in attrs else {}
    assert torch.equal(to_fx(g)(x), F.pad(x, p, mode=attrs.get("mode", "constant"), **kw))
    rep = verify_onnx(g)
    assert rep.ok and rep.max_abs == 0.0
    back = from_onnx(to_onnx(g))
    (node,) = back.nodes("pad")
    assert dict(node.attrs) == dict(g.node("p").attrs)


def test_refusals_name_the_node_and_the_mend():
    with pytest.raises(ShapeError, match="reflect pad left=6 needs an input of more than 6") as e:
        _net(pads=[6, 0, 0, 0], mode="reflect")
    assert e.value.node == "p" and "replicate" in e.value.hint
    with pytest.raises(ShapeError, match="bottom=5"):
        _net(pads=[0, 0, 0, 5], mode="reflect")
    with pytest.raises(OpSchemaError, match="2 or 4 entries") as e:
        _net(pads=[1, 1, 1])
    assert e.value.node == "p" and "left, right, top, bottom" in e.value.hint
    with pytest.raises(OpSchemaError, match="only used by mode='constant'"):
        _net(pads=[1, 1], mode="reflect", value=1.0)
    with pytest.raises(OpSchemaError, match="'mode'.*one of"):
        _net(pads=[1, 1], mode="circular")
    with pytest.raises(OpSchemaError, match=">= 0"):
        _net(pads=[-1, 1])
    g = archir.Graph("v")
    with pytest.raises(ShapeError, match="rank-3"):
        g.add("pad", g.input("x", (8,)), pads=[1, 1])


def test_costs_are_traffic_without_arithmetic():
    c = costmodels.count(_net(pads=[1, 1, 1, 1], mode="reflect"))["p"]
    assert (c.macs, c.flops, c.params) == (0, 0, 0)
    assert c.bytes_moved == (3 * 5 * 6 + 3 * 7 * 8) * 4


class _Same(nn.Module):
    """TF "same" padding before a strided conv, as ports of NASNet-A write it, and the pad modules."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.zero = nn.ZeroPad2d((1, 0, 1, 0))
        self.const = nn.ConstantPad2d((1, 1, 2, 0), 0.25)
        self.reflect = nn.ReflectionPad2d(1)
        self.replicate = nn.ReplicationPad2d((0, 2, 1, 0))
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = self.conv(F.pad(x, (0, 1, 0, 1)))  # "same" for an even input: more on the bottom/right
        h = self.zero(h) + F.pad(h, [0, 1, 0, 1], mode="replicate")
        h = self.reflect(self.const(h)[:, :, 1:, :-1])
        return self.head(self.replicate(F.pad(h, (1, 1, 1, 1), mode="reflect")))


def test_torch_import_of_f_pad_and_the_pad_modules():
    m = _Same().eval()
    g = from_torch(m, torch.randn(1, 3, 8, 8))
    got = {n.id: (n.attrs["mode"], n.attrs["pads"], n.attrs["value"]) for n in g.nodes("pad")}
    assert got == {"pad": ("constant", [0, 1, 0, 1], 0.0), "zero": ("constant", [1, 0, 1, 0], 0.0),
                   "pad_1": ("replicate", [0, 1, 0, 1], 0.0), "const": ("constant", [1, 1, 2, 0], 0.25),
                   "reflect": ("reflect", [1, 1, 1, 1], 0.0), "pad_2": ("reflect", [1, 1, 1, 1], 0.0),
                   "replicate": ("replicate", [0, 2, 1, 0], 0.0)}
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(to_fx(g)(x), m(x))
    assert verify_onnx(g).ok
    # torch's exporter computes the pads in the graph (ConstantOfShape, Concat, Slice, ...): folded on import
    back = from_onnx(_export(m, torch.randn(1, 3, 8, 8)))
    assert sorted(n.attrs["mode"] for n in back.nodes("pad")) == sorted(v[0] for v in got.values())
    with torch.no_grad():
        torch.testing.assert_close(to_fx(back)(x), m(x), rtol=1e-5, atol=1e-5)


def test_conv_padding_modes_import_as_a_pad_then_the_conv():
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
                      nn.Conv2d(4, 4, (3, 5), padding=(2, 1), dilation=(2, 1), padding_mode="replicate"),
                      nn.Conv2d(4, 2, 3, padding="same", padding_mode="reflect")).eval()
    g = from_torch(m, torch.randn(1, 3, 7, 6))
    assert [(n.id, n.op) for n in g.nodes()] == [("input", "input"), ("0.pad", "pad"), ("0", "conv2d"),
                                                 ("1.pad", "pad"), ("1", "conv2d"), ("2.pad", "pad"), ("2", "conv2d")]
    assert g.node("1.pad").attrs["pads"] == [1, 1, 2, 2] and g.node("1").attrs["padding"] == 0
    x = torch.randn(2, 3, 7, 6)
    with torch.no_grad():
        torch.testing.assert_close(to_fx(g)(x), m(x))


@pytest.mark.parametrize("fn,why", [(lambda x: F.pad(x, (1, 1, 1, 1), mode="circular"), "circular"),
                                    (lambda x: F.pad(x, (1, 1, 1, 1, 1, 0)), "rank-4"),
                                    (lambda x: F.pad(x, (-1, 0)), "crops")],
                         ids=["circular", "channels", "crop"])
def test_torch_import_refuses_other_pads(fn, why):
    class _M(nn.Module):
        def forward(self, x):
            return fn(x)

    x = torch.randn(1, 2, 4, 3)
    with pytest.raises(UnsupportedModelError, match=why):
        from_torch(_M(), x)


def test_prune_and_widen_follow_channels_across_a_pad():
    g = archir.Graph("w")
    x = g.input("x", (3, 8, 8))
    h = g.add("relu", g.add("conv2d", x, out_channels=6, kernel_size=3, padding=1, name="c0"))
    for mode, value in (("constant", 0.0), ("constant", 0.5), ("reflect", 0.0), ("replicate", 0.0)):
        h = g.add("pad", h, pads=[0, 1, 0, 1], mode=mode, value=value, name=f"pad_{mode}_{value}")
    y = g.add("conv2d", h, out_channels=4, kernel_size=3, stride=2, name="c1")
    g.set_outputs(g.add("linear", g.add("flatten", g.add("global_avgpool", y)), out_features=3, name="head"))
    g.init_params(0)
    g.validate()
    grp = analyze(g).group_of("c0")
    assert grp.free and grp.consumers == ("c1",)
    for mode in ("replicate", "zero"):
        wide = passes.widen(g, node="c0", out_channels=10, mode=mode)
        assert wide.node("pad_replicate_0.0").type.shape == (10, 12, 12)
        passes.check_preserved(g, wide)
    pruned, _ = passes.prune_channels(g, ratio=0.5, groups=[grp.index])
    assert pruned.node("c1").params["weight"].shape[1] == 3 and verify_onnx(pruned).ok


# --------------------------------------------------------------------------- split and chunk


class _Split(nn.Module):
    """Every form of split/chunk: function and method, int and list sizes, uneven last parts, negative
    dims and indices, a tuple fed to cat, a part unused."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 7, 1)

    def forward(self, x):
        y = self.conv(x)
        a, b = torch.split(y, [3, 4], dim=1)
        c = y.split(3, 1)  # 3, 3, 1
        d0, d1, d2 = torch.chunk(y, 3, dim=-1)  # W = 7: 3, 3, 1
        e = y.chunk(2, 2)  # H = 6: 3, 3
        f = torch.cat(y.chunk(4, dim=1), 1)  # 2, 2, 2, 1
        return torch.cat([a, c[1], c[-1]], 1), b * c[0][:, :1], d0 - d1, d2, e[0] + e[1], f


def test_torch_import_of_split_and_chunk_as_slices():
    m = _Split().eval()
    g = from_torch(m, torch.randn(1, 3, 6, 7))
    spans = sorted((n.attrs["dim"], n.attrs["start"], n.attrs["end"] or -1) for n in g.nodes("slice"))
    assert spans == sorted([(1, 0, 3), (1, 3, -1), (1, 3, 6), (1, 6, -1), (1, 0, 3), (1, 0, 1),  # -1: to the end
                            (3, 0, 3), (3, 3, 6), (3, 6, -1), (2, 0, 3), (2, 3, -1),
                            (1, 0, 2), (1, 2, 4), (1, 4, 6), (1, 6, -1)])
    x = torch.randn(2, 3, 6, 7)
    with torch.no_grad():
        for got, want in zip(to_fx(g)(x), m(x)):
            assert torch.equal(got, want)
    # and through torch's exporter: Split, and chunk's Slices with bounds computed from Shape
    back = from_onnx(_export(m, torch.randn(1, 3, 6, 7)))
    assert {n.op for n in back.nodes()} == {"input", "conv2d", "slice", "concat", "mul", "sub", "add"}
    with torch.no_grad():
        for got, want in zip(to_fx(back)(x), m(x)):
            torch.testing.assert_close(got, want)


def test_torch_import_refuses_batch_splits_and_bad_indices():
    class _M(nn.Module):
        def forward(self, x):
            return x.split(1, 0)[0]

    with pytest.raises(UnsupportedModelError, match="splitting the batch dimension"):
        from_torch(_M(), torch.randn(2, 3, 4, 4))


def _split_model(sizes, axis=1, opset=17, outputs=None) -> onnx.ModelProto:
    h = onnx.helper
    outs = [f"y{k}" for k in range(len(sizes))]
    inputs, inits, attrs = ["x"], [], {"axis": axis}
    if opset >= 13:
        inits.append(onnx.numpy_helper.from_array(np.array(sizes, np.int64), "split"))
        inputs.append("split")
    else:
        attrs["split"] = sizes
    node = h.make_node("Split", inputs, outs, name="sp", **attrs)
    keep = outs if outputs is None else [outs[k] for k in outputs]
    relus = [h.make_node("Relu", [o], [f"r{o}"], name=f"relu_{o}") for o in keep]
    graph = h.make_graph([node] + relus, "s", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 6, 4, 5])],
                         [h.make_tensor_value_info(f"r{o}", onnx.TensorProto.FLOAT, None) for o in keep], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [11, 17])
def test_onnx_split_imports_as_slices(opset):
    g = from_onnx(_split_model([1, 3, 2], opset=opset, outputs=[0, 2]))  # the middle part is read by nothing
    assert [(n.attrs["dim"], n.attrs["start"], n.attrs["end"]) for n in g.nodes("slice")] == [(1, 0, 1), (1, 4, None)]
    x = torch.randn(2, 6, 4, 5)
    a, c = to_fx(g)(x)
    assert torch.equal(a, x[:, :1].relu()) and torch.equal(c, x[:, 4:].relu())
    g = from_onnx(_split_model([2, 3], axis=-1, opset=opset))
    assert [(n.attrs["dim"], n.attrs["start"], n.attrs["end"]) for n in g.nodes("slice")] == [(3, 0, 2), (3, 2, None)]
    with pytest.raises(UnsupportedModelError, match="never splits the batch axis"):
        from_onnx(_split_model([1, 1], axis=0, opset=opset))
    with pytest.raises(UnsupportedModelError, match="Split sizes"):
        from_onnx(_split_model([1, 2], opset=opset))


class _Exported(nn.Module):
    """Python control flow on a shape: fx cannot trace it, torch.export captures ATen ops instead."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        self.elu = nn.ELU()
        self.reflect = nn.ReflectionPad2d(1)

    def forward(self, x):
        if x.shape[-1] > 4:
            x = self.conv(x)
        a, b = x.split(3, 1)
        c, d = torch.chunk(x, 2, dim=2)
        h = self.lrelu(a - b) / torch.sigmoid(b) + F.gelu(a, approximate="tanh") - self.elu(-b)
        h = F.hardtanh(h, -2.0, 3.0) + F.pad(h, (1, 1, 1, 1), value=0.5)[:, :, 1:-1, 1:-1]
        return self.reflect(h), F.pad(c, (0, 1, 2, 0), mode="replicate"), d


def test_torch_export_path_maps_the_aten_forms():
    m = _Exported().eval()
    g = from_torch(m, torch.randn(1, 3, 6, 6))
    assert g.meta["frontend"]["tracer"] == "torch.export"
    ops = [n.op for n in g.nodes()]
    for op, k in {"slice": 6, "pad": 3, "sub": 2, "div": 1, "leaky_relu": 1, "gelu": 1, "elu": 1, "neg": 1,
                  "hardtanh": 1}.items():
        assert ops.count(op) == k, (op, ops)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        for got, want in zip(to_fx(g)(x), m(x)):
            torch.testing.assert_close(got, want)
