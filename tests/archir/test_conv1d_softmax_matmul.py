"""``conv1d``, ``softmax``/``log_softmax`` and ``matmul`` (issue 17, part B): shape rules and refusals,
fx against torch, ONNX Runtime against fx (1e-5), costs by hand, imports from torch (functions, modules,
methods, operators) and ONNX (torch's exporter and archir's own), and the passes: conv1d is a channel
source like conv2d (widen/prune through it, numerically checked); a softmax over the channels and a matmul
are pinned with the reason. Real-model toy: an ECA-style attention (spatial mean, a conv1d across the
channels, a sigmoid gate) and a small conv1d sequence model."""

from __future__ import annotations

import numpy as np
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


def _one(op: str, *shapes, **attrs) -> archir.Graph:
    g = archir.Graph("t")
    ins = [g.input(f"x{i}", s) for i, s in enumerate(shapes)]
    g.set_outputs(g.add(op, *ins, name="y", **attrs))
    g.init_params(0)
    return g.validate()


CONV1D = [dict(out_channels=5, kernel_size=3, padding=1), dict(out_channels=6, kernel_size=5, stride=2, dilation=2,
                                                                 groups=3, bias=False),
          dict(out_channels=3, kernel_size=3, padding=2, groups=3)]


@pytest.mark.parametrize("attrs", CONV1D)
def test_conv1d_is_torch_and_onnx_runtime_agrees_and_reads_back(attrs):
    g = _one("conv1d", (3, 16), **attrs)
    n = g.node("y")
    x = torch.randn(2, 3, 16)
    w = torch.tensor(n.params["weight"])
    b = torch.tensor(n.params["bias"]) if attrs.get("bias", True) else None
    want = F.conv1d(x, w, b, attrs.get("stride", 1), attrs.get("padding", 0), attrs.get("dilation", 1),
                    attrs.get("groups", 1))
    assert n.type.shape == tuple(want.shape[1:])
    with torch.no_grad():
        assert torch.equal(to_fx(g)(x), want)
    rep = verify_onnx(g, inputs=x.numpy())
    assert rep.ok and rep.max_abs <= TOL, rep
    back = from_onnx(to_onnx(g))
    assert dict(back.node("y").attrs) == dict(n.attrs)
    np.testing.assert_array_equal(back.node("y").params["weight"], n.params["weight"])


def test_conv1d_refusals_and_cost():
    with pytest.raises(ShapeError, match="rank-2") as e:
        _one("conv1d", (3, 4, 4), out_channels=2, kernel_size=1)
    assert e.value.node == "y"
    with pytest.raises(ShapeError, match="does not fit"):
        _one("conv1d", (3, 4), out_channels=2, kernel_size=7)
    with pytest.raises(OpSchemaError, match="not divisible by groups"):
        _one("conv1d", (4, 8), out_channels=3, kernel_size=1, groups=2)
    with pytest.raises(OpSchemaError, match="'kernel_size'.*must be an int"):
        _one("conv1d", (4, 8), out_channels=4, kernel_size=[3, 3])
    c = costmodels.count(_one("conv1d", (4, 16), out_channels=6, kernel_size=3, stride=2, groups=2))["y"]
    # out 6 x 7 positions, each 2 input channels x 3 taps
    assert (c.macs, c.flops, c.params) == (6 * 7 * 2 * 3, 2 * 6 * 7 * 2 * 3 + 6 * 7, 6 * 2 * 3 + 6)


@pytest.mark.parametrize("op,dim", [("softmax", 1), ("softmax", -1), ("log_softmax", 2), ("log_softmax", 1)])
def test_softmax_is_torch_and_onnx_runtime_agrees_and_reads_back(op, dim):
    g = _one(op, (3, 4, 5), dim=dim)
    x = torch.randn(2, 3, 4, 5) * 4
    with torch.no_grad():
        assert torch.equal(to_fx(g)(x), getattr(torch, op)(x, dim))
    rep = verify_onnx(g, inputs=x.numpy())
    assert rep.ok and rep.max_abs <= TOL, rep
    back = from_onnx(to_onnx(g))
    assert back.node("y").op == op and back.node("y").attrs["dim"] == dim
    c = costmodels.count(g)["y"]
    assert (c.macs, c.flops) == (0, 5 * 60)
    with pytest.raises(OpSchemaError, match="batch dim") as e:
        _one(op, (3, 4), dim=0)
    assert e.value.node == "y"
    with pytest.raises(ShapeError, match="out of range"):
        _one(op, (3, 4), dim=3)


@pytest.mark.parametrize("sa,sb", [((2, 4, 5), (2, 5, 3)), ((1, 4, 5), (3, 5, 2)), ((6, 5), (5, 7))])
def test_matmul_is_torch_and_onnx_runtime_agrees_and_reads_back(sa, sb):
    g = _one("matmul", sa, sb)
    a, b = torch.randn(2, *sa), torch.randn(2, *sb)
    want = torch.matmul(a, b)
    assert g.node("y").type.shape == tuple(want.shape[1:])
    with torch.no_grad():
        assert torch.equal(to_fx(g)(a, b), want)
    rep = verify_onnx(g, inputs=[a.numpy(), b.numpy()])
    assert rep.ok and rep.max_abs <= TOL, rep
    assert [n.op for n in from_onnx(to_onnx(g)).nodes()] == ["input", "input", "matmul"]
    c = costmodels.count(g)["y"]
    assert c.macs == g.node("y").type.numel * sa[-1] and c.flops == 2 * c.macs


def test_matmul_refusals():
    with pytest.raises(ShapeError, match="inner dims 5 and 4 differ") as e:
        _one("matmul", (2, 4, 5), (2, 4, 5))
    assert e.value.node == "y" and "transpose" in e.value.hint
    with pytest.raises(ShapeError, match="equal ranks"):
        _one("matmul", (2, 4, 5), (5, 3))
    with pytest.raises(ShapeError, match="rank >= 2"):
        _one("matmul", (5,), (5,))
    with pytest.raises(ShapeError, match="cannot broadcast"):
        _one("matmul", (2, 4, 5), (3, 5, 2))


# --------------------------------------------------------------------------- import


class _Seq(nn.Module):
    """A small conv1d sequence model with a softmax-attention-like matmul."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 3, padding=1)
        self.c2 = nn.Conv1d(8, 8, 5, padding="same", groups=8)
        self.head = nn.Linear(12, 3)
        self.sm = nn.Softmax(dim=-1)
        self.lsm = nn.LogSoftmax(dim=1)

    def forward(self, x, q, k):
        h = self.c2(F.relu(self.c1(x)))
        att = self.sm(q @ k)  # (N, 2, 6, 6)
        att = torch.matmul(att, q).softmax(1) + torch.softmax(att.sigmoid() @ q, dim=2) + F.log_softmax(q, -1)
        return self.lsm(self.head(h)), att, self.lsm(h)


def _seq_inputs(batch=1):
    return torch.randn(batch, 4, 12), torch.randn(batch, 2, 6, 5), torch.randn(batch, 2, 5, 6)


def test_torch_import_maps_conv1d_softmax_and_matmul():
    m = _Seq().eval()
    g = from_torch(m, _seq_inputs())
    ops = [n.op for n in g.nodes()]
    assert ops.count("conv1d") == 2 and ops.count("matmul") == 3
    assert ops.count("softmax") == 3 and ops.count("log_softmax") == 3
    assert g.node("c2").attrs["padding"] == 2 and g.node("c2").attrs["groups"] == 8
    xs = _seq_inputs(3)
    with torch.no_grad():
        for got, want in zip(to_fx(g)(*xs), m(*xs)):
            torch.testing.assert_close(got, want)
    rep = verify_onnx(g)
    assert rep.ok and rep.max_abs <= TOL
    assert sorted(n.op for n in from_onnx(to_onnx(g)).nodes()) == sorted(ops)


def test_onnx_import_of_torch_exports():
    m = _Seq().eval()
    import io
    import warnings

    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, _seq_inputs(), f, dynamo=False, opset_version=17, input_names=["x", "q", "k"],
                          dynamic_axes={n: {0: "batch"} for n in ("x", "q", "k")})
    g = from_onnx(f.getvalue())
    assert sorted(n.op for n in g.nodes() if n.op in ("conv1d", "matmul")) == ["conv1d"] * 2 + ["matmul"] * 3
    xs = _seq_inputs(3)
    with torch.no_grad():
        for got, want in zip(to_fx(g)(*xs), m(*xs)):
            torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)


def test_what_has_no_matmul_or_softmax_is_refused_with_the_reason():
    class _M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(5, 3))

        def forward(self, x):
            return x @ self.w, torch.softmax(x, 0), torch.matmul(x.mean((2, 3)), x.mean((2, 3)))

    with pytest.raises(UnsupportedModelError) as e:
        from_torch(_M(), torch.randn(2, 2, 4, 5))
    text = str(e.value.context)
    for reason in ("a weight matrix is a linear layer", "softmax over the batch dimension", "equal rank >= 3"):
        assert reason in text, reason


# --------------------------------------------------------------------------- passes


def _eca(gap: str = "mean") -> archir.Graph:
    """conv -> ECA attention: y = x * sigmoid(conv1d over the channels of mean(x)) -> conv -> head.
    The conv1d's channel axis is the ECA 'sequence' (1 channel, C positions); built without a reshape."""
    g = archir.Graph("eca")
    x = g.input("x", (4, 12))
    h = g.add("relu", g.add("conv1d", x, out_channels=8, kernel_size=3, padding=1, name="c0"))
    s = g.add("mean", h, dims=[2], keepdim=True, name="squeeze")  # (8, 1)
    s = g.add("sigmoid", g.add("conv1d", s, out_channels=8, kernel_size=1, name="excite"))
    y = g.add("conv1d", g.add("mul", h, s, name="gate"), out_channels=5, kernel_size=1, name="c1")
    g.set_outputs(g.add("linear", g.add("mean", y, dims=[-1]), out_features=3, name="head"))
    g.init_params(0)
    return g.validate()


def test_conv1d_is_a_channel_source_widen_and_prune_apply_and_preserve():
    g = _eca()
    cp = analyze(g)
    grp = cp.group_of("c0")
    assert grp.free and "c0" in grp.producers and {"excite", "c1"} <= set(grp.consumers)
    for mode in ("replicate", "zero"):
        wide = passes.widen(g, node="c0", out_channels=11, mode=mode).validate()
        assert wide.node("gate").type.shape == (11, 12) and wide.node("c1").params["weight"].shape[1] == 11
        passes.check_preserved(g, wide)
    pruned, _ = passes.prune_channels(g, ratio=0.5, groups=[grp.index])
    assert pruned.node("c0").type.shape == (4, 12)
    assert verify_onnx(pruned).ok
    wide = passes.widen(g, node="c1", out_channels=7).validate()  # c1 feeds the vector mean and the head
    passes.check_preserved(g, wide)


def test_softmax_over_channels_and_matmul_are_pinned_with_the_reason():
    g = archir.Graph("p")
    x = g.input("x", (3, 6, 6))
    h = g.add("conv2d", x, out_channels=6, kernel_size=1, name="c0")
    a = g.add("softmax", h, dim=1, name="csm")
    b = g.add("softmax", h, dim=-1, name="wsm")  # per channel: a carrier
    h2 = g.add("conv2d", x, out_channels=6, kernel_size=1, name="c2")
    mm = g.add("matmul", h2, h2, name="mm")
    y = g.add("conv2d", g.add("concat", a, b, mm), out_channels=4, kernel_size=1, name="c1")
    g.set_outputs(y)
    g.init_params(0)
    g.validate()
    with pytest.raises(PreconditionError, match="softmax over the channel dim") as e:
        passes.widen(g, node="c0", out_channels=9)
    assert "csm" in str(e.value)
    with pytest.raises(PreconditionError, match="matmul .* contracts"):
        passes.widen(g, node="c2", out_channels=9)
    cp = analyze(g)
    assert cp.rule("wsm").kind == "carrier"


def test_the_aten_forms_import_under_torch_export():
    """Shape-dependent control flow makes fx tracing fail: torch.export's ATen ops map by the same rules."""

    class _M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv1d(3, 4, 3, padding=1)
            self.up = nn.Upsample(scale_factor=2, mode="bilinear")

        def forward(self, x, q, k):
            if x.shape[2] > 2:
                x = torch.relu(x)
            return (self.up(x).mean(1, keepdim=True), F.interpolate(x, size=(5, 7)).sum((2, 3)),
                    torch.softmax(q @ k, -1), F.log_softmax(q, 1), self.c(x.sum(2)))

    xs = (torch.randn(1, 3, 4, 5), torch.randn(1, 2, 3, 4), torch.randn(1, 2, 4, 3))
    g = from_torch(_M().eval(), xs)  # checks fx parity itself
    assert g.meta["frontend"]["tracer"] == "torch.export"
    assert sorted(n.op for n in g.nodes() if n.op != "input") == sorted(
        ["relu", "upsample", "upsample", "mean", "sum", "matmul", "softmax", "log_softmax", "sum", "conv1d"])
