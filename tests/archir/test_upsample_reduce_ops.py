"""``upsample`` (nearest / bilinear, align_corners as torch, by size or scale_factor) and ``mean``/``sum``
over dims (issue 17, part B): shape rules and refusals, fx against torch, ONNX Runtime against fx (1e-5),
costs by hand, imports from torch (functions, modules, methods) and ONNX (torch's exporter and archir's
own), and widen/prune through upsample and the spatial mean (refused, naming the node, over channels).
Real-model toys: an HRNet-style two-branch fuse (upsample + add) and an SE block written with
``x.mean((2, 3), keepdim=True)``."""

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
from passes.infra import PreconditionError
from tests.archir.test_elementwise_ops import _export

TOL = 1e-5


def _one(op: str, shape=(3, 4, 5), **attrs) -> archir.Graph:
    g = archir.Graph("u")
    g.set_outputs(g.add(op, g.input("x", shape), name="y", **attrs))
    g.init_params(0)
    return g.validate()


UPSAMPLE = [dict(scale_factor=2.0), dict(scale_factor=1.7), dict(scale_factor=0.5), dict(size=[7, 9]),
            dict(size=[10, 10]), dict(scale_factor=3.0, mode="bilinear"), dict(scale_factor=1.5, mode="bilinear"),
            dict(size=[7, 9], mode="bilinear"), dict(size=[1, 3], mode="bilinear"),
            dict(scale_factor=2.0, mode="bilinear", align_corners=True),
            dict(size=[9, 2], mode="bilinear", align_corners=True)]


def _interp(x, attrs):
    kw = {"mode": attrs.get("mode", "nearest")}
    if "size" in attrs:
        kw["size"] = tuple(attrs["size"])
    else:
        kw["scale_factor"] = attrs["scale_factor"]
    if kw["mode"] == "bilinear":
        kw["align_corners"] = attrs.get("align_corners", False)
    return F.interpolate(x, **kw)


@pytest.mark.parametrize("attrs", UPSAMPLE, ids=lambda a: "-".join(f"{k}={v}" for k, v in a.items()))
def test_upsample_is_torch_and_onnx_runtime_agrees_and_reads_back(attrs):
    g = _one("upsample", **attrs)
    x = torch.randn(2, 3, 4, 5) * 3
    want = _interp(x, attrs)
    assert g.node("y").type.shape == tuple(want.shape[1:])
    with torch.no_grad():
        assert torch.equal(to_fx(g)(x), want)
    rep = verify_onnx(g, inputs=x.numpy())
    assert rep.ok and rep.max_abs <= TOL, rep
    m = to_onnx(g)
    assert "Resize" in {n.op_type for n in m.graph.node}
    back = from_onnx(m)
    assert dict(back.node("y").attrs) == dict(g.node("y").attrs)


def test_a_float32_scale_below_an_exact_size_is_written_as_sizes():
    """0.7 is 0.699999988 in float32: ONNX Runtime would make floor(10 * 0.699999988) = 6 rows, torch 7."""
    g = _one("upsample", shape=(3, 10, 20), scale_factor=0.7, mode="bilinear")
    assert g.node("y").type.shape == (3, 7, 14)
    x = torch.randn(2, 3, 10, 20)
    with torch.no_grad():
        assert torch.equal(to_fx(g)(x), F.interpolate(x, scale_factor=0.7, mode="bilinear"))
    rep = verify_onnx(g, inputs=x.numpy())
    assert rep.ok and rep.max_abs <= TOL, rep
    assert from_onnx(to_onnx(g)).node("y").attrs["size"] == [7, 14]


def test_upsample_refusals_name_the_node_and_the_mend():
    with pytest.raises(OpSchemaError, match="exactly one of size and scale_factor") as e:
        _one("upsample", size=[4, 4], scale_factor=2.0)
    assert e.value.node == "y" and "nn.Upsample" in e.value.hint
    with pytest.raises(OpSchemaError, match="exactly one"):
        _one("upsample")
    with pytest.raises(OpSchemaError, match="align_corners=True only applies to mode='bilinear'"):
        _one("upsample", scale_factor=2.0, align_corners=True)
    with pytest.raises(OpSchemaError, match="'mode'.*one of"):
        _one("upsample", scale_factor=2.0, mode="bicubic")
    with pytest.raises(ShapeError, match="gives a 0x0 map") as e:
        _one("upsample", scale_factor=0.1)
    assert e.value.node == "y"
    with pytest.raises(ShapeError, match="rank-3"):
        _one("upsample", shape=(3, 4), scale_factor=2.0)


REDUCE = [("mean", dict(dims=[2, 3], keepdim=True)), ("mean", dict(dims=[1])), ("mean", dict(dims=[-1, 2])),
          ("sum", dict(dims=[2, 3])), ("sum", dict(dims=[1], keepdim=True)), ("sum", dict(dims=[-2]))]


@pytest.mark.parametrize("op,attrs", REDUCE)
def test_reductions_are_torch_and_onnx_runtime_agrees_and_reads_back(op, attrs):
    g = _one(op, **attrs)
    x = torch.randn(2, 3, 4, 5)
    want = getattr(torch, op)(x, dim=tuple(attrs["dims"]), keepdim=attrs.get("keepdim", False))
    assert g.node("y").type.shape == tuple(want.shape[1:])
    with torch.no_grad():
        assert torch.equal(to_fx(g)(x), want)
    rep = verify_onnx(g, inputs=x.numpy())
    assert rep.ok and rep.max_abs <= TOL, rep
    node, *rest = [n for n in from_onnx(to_onnx(g)).nodes() if n.op != "input"]
    if op == "mean" and sorted(d % 4 for d in attrs["dims"]) == [2, 3]:
        # the spatial mean of a map: the op the cost models know (then a flatten without keepdim)
        assert node.op == "global_avgpool" and [n.op for n in rest] == ([] if attrs.get("keepdim") else ["flatten"])
    else:
        assert not rest
        assert node.op == op and node.attrs["keepdim"] == attrs.get("keepdim", False)
        assert sorted(d % 4 for d in node.attrs["dims"]) == sorted(d % 4 for d in attrs["dims"])


def test_reduction_refusals():
    with pytest.raises(ShapeError, match="the batch dim") as e:
        _one("mean", dims=[0])
    assert e.value.node == "y" and "dims >= 1" in e.value.hint
    with pytest.raises(ShapeError, match="out of range"):
        _one("sum", dims=[4])
    with pytest.raises(ShapeError, match="twice"):
        _one("sum", dims=[2, -2])
    with pytest.raises(OpSchemaError, match="at least one dim"):
        _one("mean", dims=[])
    with pytest.raises(ShapeError, match="leaves a scalar"):
        _one("mean", shape=(5,), dims=[1])


def test_costs_by_hand():
    c = costmodels.count(_one("upsample", scale_factor=2.0))["y"]
    assert (c.macs, c.flops, c.params) == (0, 0, 0) and c.bytes_moved == (60 + 240) * 4
    c = costmodels.count(_one("upsample", size=[8, 10], mode="bilinear"))["y"]
    assert (c.macs, c.flops) == (0, 7 * 240)
    for op, attrs in REDUCE:
        c = costmodels.count(_one(op, **attrs))["y"]
        assert (c.macs, c.flops) == (0, 60), (op, attrs)


# --------------------------------------------------------------------------- import from torch and ONNX


class _Resizes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2)
        self.upb = nn.Upsample(size=(7, 9), mode="bilinear")
        self.upn2 = nn.UpsamplingNearest2d(size=(8, 10))
        self.upb2 = nn.UpsamplingBilinear2d(scale_factor=2)  # align_corners=True

    def forward(self, x):
        y = self.conv(x)
        a = self.up(y) + self.upn2(y) + self.upb2(y) + F.interpolate(y, scale_factor=(2, 2), mode="bilinear")
        b = self.upb(y) - F.interpolate(y, size=(7, 9), mode="bilinear", align_corners=True)
        s = y.mean((2, 3), keepdim=True) * y.sum(dim=(-1, -2), keepdim=True)  # SE-style spatial reductions
        return a.mean(1, keepdim=True), b.sum(-1), torch.mean(y * s, dim=[2]), y.sum(1)


def test_torch_import_maps_upsample_modules_functions_and_reductions():
    m = _Resizes().eval()
    g = from_torch(m, torch.randn(1, 3, 4, 5))  # checks fx parity itself
    ups = {n.id: dict(n.attrs) for n in g.nodes("upsample")}
    assert len(ups) == 6
    assert ups["up"]["scale_factor"] == 2.0 and ups["up"]["mode"] == "nearest"
    assert ups["upb2"]["align_corners"] is True and ups["upb"]["size"] == [7, 9]
    ops = [n.op for n in g.nodes()]
    assert ops.count("global_avgpool") == 1 and ops.count("mean") == 2 and ops.count("sum") == 3
    x = torch.randn(3, 3, 4, 5)
    with torch.no_grad():
        for got, want in zip(to_fx(g)(x), m(x)):
            torch.testing.assert_close(got, want)
    rep = verify_onnx(g)
    assert rep.ok and rep.max_abs <= TOL
    back = from_onnx(to_onnx(g))  # archir's own export reads back op for op
    assert sorted(n.op for n in back.nodes()) == sorted(ops)


def test_onnx_import_of_torch_exports():
    m = _Resizes().eval()
    g = from_onnx(_export(m, torch.randn(1, 3, 4, 5)))
    assert len(list(g.nodes("upsample"))) == 6
    x = torch.randn(3, 3, 4, 5)
    with torch.no_grad():
        for got, want in zip(to_fx(g)(x), m(x)):
            torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)


def test_what_has_no_upsample_or_reduction_is_refused_with_the_reason():
    class _M(nn.Module):
        def forward(self, x):
            return (F.interpolate(x, scale_factor=(2, 3)), F.interpolate(x, scale_factor=2, mode="bicubic"),
                    x.mean(), x.sum(0))

    with pytest.raises(UnsupportedModelError) as e:
        from_torch(_M(), torch.randn(1, 3, 4, 4))
    text = str(e.value.context)
    for reason in ("differs per dim", "bicubic", "over every dim", "batch dimension"):
        assert reason in text, reason
    node = onnx.helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest",
                                 coordinate_transformation_mode="half_pixel")
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [node], "r", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 4, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s")]),
        opset_imports=[onnx.helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedModelError, match="asymmetric, floor"):
        from_onnx(model)


# --------------------------------------------------------------------------- passes


def _hrnet_toy() -> archir.Graph:
    """Two branches at two resolutions, fused HRNet-style: the low one upsampled and added."""
    g = archir.Graph("hr")
    x = g.input("x", (3, 8, 8))
    hi = g.add("relu", g.add("conv2d", x, out_channels=6, kernel_size=3, padding=1, name="hi"))
    lo = g.add("relu", g.add("conv2d", x, out_channels=8, kernel_size=3, stride=2, padding=1, name="lo"))
    lo = g.add("conv2d", lo, out_channels=6, kernel_size=1, name="lo_proj")
    fused = g.add("add", hi, g.add("upsample", lo, scale_factor=2.0, mode="bilinear", name="up"), name="fuse")
    y = g.add("conv2d", g.add("relu", fused), out_channels=4, kernel_size=1, name="c1")
    g.set_outputs(g.add("linear", g.add("flatten", g.add("global_avgpool", y)), out_features=3, name="head"))
    g.init_params(0)
    return g.validate()


def _se_block(mean_op: bool = True) -> archir.Graph:
    """conv -> SE (spatial mean, two 1x1 convs, sigmoid gate) -> conv."""
    g = archir.Graph("se")
    x = g.input("x", (3, 8, 8))
    h = g.add("relu", g.add("conv2d", x, out_channels=8, kernel_size=3, padding=1, name="c0"))
    s = g.add("mean", h, dims=[2, 3], keepdim=True, name="squeeze") if mean_op else g.add("global_avgpool", h)
    s = g.add("sigmoid", g.add("conv2d", g.add("relu", g.add("conv2d", s, out_channels=4, kernel_size=1,
                                                                 name="fc1")), out_channels=8, kernel_size=1,
                                   name="fc2"))
    y = g.add("conv2d", g.add("mul", h, s, name="gate"), out_channels=4, kernel_size=1, name="c1")
    g.set_outputs(g.add("linear", g.add("flatten", g.add("global_avgpool", y)), out_features=3, name="head"))
    g.init_params(0)
    return g.validate()


def test_widen_and_prune_follow_channels_through_upsample():
    g = _hrnet_toy()
    grp = analyze(g).group_of("up")
    assert grp.free and {"hi", "lo_proj"} <= set(grp.producers) and "c1" in grp.consumers
    for mode in ("replicate", "zero"):
        wide = passes.widen(g, node="lo_proj", out_channels=9, mode=mode).validate()
        assert wide.node("up").type.shape == (9, 8, 8) and wide.node("hi").type.shape[0] == 9
        passes.check_preserved(g, wide)
    pruned, _ = passes.prune_channels(g, ratio=0.5, groups=[grp.index])
    assert pruned.node("up").type.shape == (3, 8, 8)
    assert verify_onnx(pruned).ok


def test_widen_and_prune_follow_channels_through_the_spatial_mean_of_an_se_block():
    g = _se_block()
    grp = analyze(g).group_of("squeeze")
    assert grp.free and "c0" in grp.producers and "fc1" in grp.consumers
    for mode in ("replicate", "zero"):
        wide = passes.widen(g, node="c0", out_channels=12, mode=mode).validate()
        assert wide.node("squeeze").type.shape == (12, 1, 1)
        passes.check_preserved(g, wide)
    pruned, _ = passes.prune_channels(g, ratio=0.5, groups=[grp.index])
    assert pruned.node("squeeze").type.shape == (4, 1, 1)
    assert verify_onnx(pruned).ok


def test_the_se_block_written_with_mean_imports_and_prunes():
    class _SE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c0, self.fc1, self.fc2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
            self.c1, self.head = nn.Conv2d(8, 4, 1), nn.Linear(4, 3)

        def forward(self, x):
            h = torch.relu(self.c0(x))
            s = torch.sigmoid(self.fc2(torch.relu(self.fc1(h.mean((2, 3), keepdim=True)))))
            return self.head(self.c1(h * s).mean((2, 3)))

    m = _SE().eval()
    g = from_torch(m, torch.randn(1, 3, 8, 8))
    pruned, _ = passes.prune_channels(g, ratio=0.5, groups=[analyze(g).group_of("c0").index])
    assert pruned.node("c0").type.shape[0] == 4 and verify_onnx(pruned).ok
    wide = passes.widen(g, node="c0", out_channels=12)
    passes.check_preserved(g, wide)


def test_a_reduction_over_the_channels_is_pinned_with_the_reason():
    g = archir.Graph("cm")
    x = g.input("x", (3, 6, 6))
    h = g.add("conv2d", x, out_channels=6, kernel_size=3, padding=1, name="c0")
    m = g.add("sum", h, dims=[1], keepdim=True, name="csum")
    y = g.add("conv2d", g.add("mul", h, g.add("sigmoid", m)), out_channels=4, kernel_size=1, name="c1")
    g.set_outputs(g.add("linear", g.add("flatten", g.add("global_avgpool", y)), out_features=3))
    g.init_params(0)
    g.validate()
    with pytest.raises(PreconditionError, match="sum over the channel dim") as e:
        passes.widen(g, node="c0", out_channels=9)
    assert "csum" in str(e.value)
    with pytest.raises(PreconditionError, match="channels together"):
        analyze(g, strict=True)


class _HRFuse(nn.Module):
    """HRNet's fuse layer as torch writes it: the low branch through a 1x1 conv + BN, nn.Upsample(nearest), +."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.hi = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.lo = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.fuse = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8), nn.Upsample(scale_factor=2))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = self.stem(x)
        y = torch.relu(self.hi(h) + self.fuse(self.lo(h)))
        return self.head(y.mean((2, 3)))


def test_an_hrnet_style_fuse_imports_from_torch_and_onnx_and_prunes():
    m = _HRFuse().eval()
    for bn in (mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    g = from_torch(m, torch.randn(1, 3, 8, 8))
    g2 = from_onnx(_export(m, torch.randn(1, 3, 8, 8)))
    assert len(list(g.nodes("upsample"))) == len(list(g2.nodes("upsample"))) == 1
    grp = analyze(g).group_of("fuse.2")  # the upsample joins the high branch's channels at the add
    assert grp.free and {"hi.0", "fuse.0"} <= set(grp.producers)
    pruned, _ = passes.prune_channels(g, ratio=0.5, groups=[grp.index])
    assert pruned.node("fuse.2").type.shape == (4, 8, 8) and verify_onnx(pruned).ok
    wide = passes.widen(g, node="hi.0", out_channels=12)
    passes.check_preserved(g, wide)
