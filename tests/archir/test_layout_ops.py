"""The layout ops of issue 17: ``permute``, ``reshape``, ``channel_shuffle``, ``layernorm`` (over the last
dim and channels-first, ConvNeXt's LayerNorm2d) and ConvNeXt's layer scale (imported as ``scale``):
shape rules and refusals, fx against torch, ONNX Runtime against fx, costs by hand, imports from torch
(functions, modules, methods, ATen) and from ONNX, and the channel coupling widen / prune / add_skip see."""

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
from archir.ops import shuffle_order
from passes.coupling import analyze
from passes.infra import PreconditionError
from tests.archir.test_elementwise_ops import _export


def _net(op, in_shape, seed=0, **attrs) -> archir.Graph:
    g = archir.Graph("l")
    g.set_outputs(g.add(op, g.input("x", in_shape), name="n", **attrs))
    g.init_params(seed)
    if op == "layernorm" and attrs.get("affine", True):  # non-trivial affine, so the checks see it
        rng = np.random.default_rng(seed)
        c = g.node("n").params["weight"].shape[0]
        g.set_params("n", weight=rng.uniform(0.5, 2, c).astype(np.float32))
        if attrs.get("bias", True):
            g.set_params("n", bias=rng.normal(size=c).astype(np.float32))
    return g.validate()


def _ln_ref(x, a, g):
    """torch's layer norm of ``x`` as the node's attrs say (torchvision's LayerNorm2d for axis='channels')."""
    p = g.node("n").params
    w = torch.as_tensor(p["weight"]) if "weight" in p else None
    b = torch.as_tensor(p["bias"]) if "bias" in p else None
    eps = a.get("eps", 1e-5)
    if a.get("axis", "last") == "channels":
        return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, b, eps).permute(0, 3, 1, 2)
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


CASES = [
    ("permute", (3, 4, 5), dict(dims=[1, 2, 0]), lambda x, a, g: x.permute(0, 2, 3, 1)),
    ("permute", (3, 4, 5), dict(dims=[0, 2, 1]), lambda x, a, g: x.transpose(2, 3)),
    ("reshape", (6, 4, 4), dict(shape=[2, 3, 16]), lambda x, a, g: x.reshape(-1, 2, 3, 16)),
    ("reshape", (6, 4, 4), dict(shape=[96]), lambda x, a, g: x.flatten(1)),
    ("channel_shuffle", (6, 3, 4), dict(groups=2), lambda x, a, g: F.channel_shuffle(x, 2)),
    ("channel_shuffle", (6, 3, 4), dict(groups=3), lambda x, a, g: nn.ChannelShuffle(3)(x)),
    ("layernorm", (5, 3, 4), dict(), _ln_ref),
    ("layernorm", (5, 3, 4), dict(axis="channels", eps=1e-6), _ln_ref),
    ("layernorm", (5, 3, 4), dict(axis="channels", affine=False, bias=False), _ln_ref),
    ("layernorm", (7,), dict(affine=True, bias=False, eps=1e-3), _ln_ref),
]


@pytest.mark.parametrize("op,shape,attrs,ref", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_shape_fx_onnx_runtime_and_import_back(op, shape, attrs, ref):
    g = _net(op, shape, **attrs)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(x, attrs, g)
        got = to_fx(g).eval()(x)
    assert tuple(got.shape[1:]) == g.node("n").type.shape == tuple(want.shape[1:])
    if op == "layernorm":
        torch.testing.assert_close(got, want, rtol=0, atol=0)  # computed the same way: bit-equal
    else:
        assert torch.equal(got, want)
    rep = verify_onnx(g, inputs=x, atol=1e-5, rtol=1e-5)
    assert rep.ok, rep
    if op != "layernorm":
        assert rep.max_abs == 0.0  # data movement only
    back = from_onnx(to_onnx(g))
    with torch.no_grad():
        torch.testing.assert_close(to_fx(back).eval()(x), got, rtol=1e-6, atol=1e-6)
    if op == "reshape" and len(attrs["shape"]) == 1:
        op = "flatten"  # a reshape to a vector is a flatten, and comes back as one
    (node,) = back.nodes(op)  # channel_shuffle: its Reshape / Transpose / Reshape is recognised
    assert dict(node.attrs) == dict(g.node("n").attrs) or op in ("layernorm", "flatten")


def test_shuffle_order_is_torchs_permutation():
    x = torch.arange(12.0).reshape(1, 12, 1, 1)
    assert F.channel_shuffle(x, 3).flatten().tolist() == [float(i) for i in shuffle_order(12, 3)]


def test_refusals_name_the_node_and_the_mend():
    with pytest.raises(OpSchemaError, match="not a permutation") as e:
        _net("permute", (3, 4, 5), dims=[0, 0, 1])
    assert e.value.node == "n" and "dims=[1, 2, 0]" in e.value.hint
    with pytest.raises(ShapeError, match="2 entries for a rank-3"):
        _net("permute", (3, 4, 5), dims=[1, 0])
    with pytest.raises(ShapeError, match="60 elements per sample.*to \\(7, 8\\)") as e:
        _net("reshape", (3, 4, 5), shape=[7, 8])
    assert e.value.node == "n"
    with pytest.raises(ShapeError, match="groups=4 does not divide the 6 channels"):
        _net("channel_shuffle", (6, 3, 3), groups=4)
    with pytest.raises(ShapeError, match="rank-3"):
        _net("layernorm", (6,), axis="channels")
    with pytest.raises(OpSchemaError, match="bias=True needs affine=True"):
        _net("layernorm", (6,), affine=False)


def test_costs_by_hand():
    c = costmodels.count(_net("layernorm", (8, 3, 5), axis="channels"))["n"]
    assert c.flops == 7 * 8 * 15 + 4 * 15 and c.macs == 0  # 5 + weight + bias per element, 4 per position
    c = costmodels.count(_net("layernorm", (3, 5, 8), affine=False, bias=False))["n"]
    assert c.flops == 5 * 120 + 4 * 15
    for op, shape, attrs in [("permute", (3, 4, 5), dict(dims=[2, 0, 1])),
                             ("channel_shuffle", (6, 2, 2), dict(groups=2))]:
        c = costmodels.count(_net(op, shape, **attrs))["n"]
        assert c.flops == 0 and c.bytes_moved == 2 * 4 * int(np.prod(shape))  # a copy: read, write
    c = costmodels.count(_net("reshape", (6, 4, 4), shape=[2, 48]))["n"]
    assert c.flops == 0 and c.bytes_moved == 0  # a view


# --------------------------------------------------------------------------- import from torch


class _Layouts(nn.Module):
    """Every torch form the layout ops import from: functions, methods, modules."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.ln = nn.LayerNorm(8, eps=1e-6)
        self.shuffle = nn.ChannelShuffle(2)
        self.gamma = nn.Parameter(torch.rand(8, 1, 1) + 0.5)

    def forward(self, x):
        y = self.conv(x)                                     # (N, 8, 4, 6)
        a = self.ln(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        b = F.layer_norm(torch.permute(y, (0, 2, 3, 1)), (8,)).permute(0, 3, 1, 2)
        c = self.gamma * (a + b)
        d = self.shuffle(c) + F.channel_shuffle(c, 4)
        e = d.transpose(2, 3).swapaxes(-1, -2)               # back to (N, 8, 4, 6)
        f = e.view(e.size(0), 2, 4, 4, 6).reshape(-1, 8, 24).unflatten(2, (4, 6))
        g = torch.flatten(f, 2, 3).unsqueeze(-1).squeeze(-1)  # flatten(start, end) inside the sample
        return g, f.flatten(1)


def test_torch_import_maps_functions_methods_and_modules():
    m = _Layouts().eval()
    g = from_torch(m, torch.randn(1, 3, 4, 6))
    ops = [n.op for n in g.nodes()]
    lns = {n.id: n.attrs["axis"] for n in g.nodes("layernorm")}
    assert sorted(lns.values()) == ["channels", "channels"]  # both permute-LN-permute forms fused
    assert ops.count("channel_shuffle") == 2 and ops.count("scale") == 1 and "permute" in ops
    assert "reshape" in ops and "flatten" in ops
    np.testing.assert_array_equal(g.node("scale").params["weight"], m.gamma.detach().reshape(8).numpy())
    x = torch.randn(2, 3, 4, 6)
    with torch.no_grad():
        for got, want in zip(to_fx(g).eval()(x), m(x)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert verify_onnx(g, inputs=x).ok


def test_torch_import_refuses_batch_moves_and_other_norms():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.ones(1, 3, 1, 1))

        def forward(self, x):
            return (x.permute(1, 0, 2, 3).sum() + F.layer_norm(x, (4, 4)).sum(), x.view(-1, 4, 4) * 2,
                    self.p * x.unsqueeze(0).squeeze(0))

    with pytest.raises(UnsupportedModelError) as e:
        from_torch(Bad(), torch.randn(1, 3, 4, 4))
    reasons = " | ".join(u.reason for u in e.value.unsupported)
    assert "moves the batch dimension" in reasons and "last 2 dims" in reasons
    assert "across the batch dimension" in reasons and "unsqueeze(0)" in reasons


def test_torch_export_path_maps_the_aten_forms():
    class Exported(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.ln = nn.LayerNorm(4)

        def forward(self, x):
            y = self.conv(x)
            if y.shape[-1] > 1:  # Python control flow on a shape: fx fails, torch.export specialises it
                y = self.ln(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return F.channel_shuffle(y, 2).reshape(y.shape[0], 2, -1).transpose(1, 2)

    m = Exported().eval()
    g = from_torch(m, torch.randn(1, 3, 4, 4))
    assert g.meta["frontend"]["tracer"] == "torch.export"
    assert {"layernorm", "channel_shuffle", "reshape", "permute"} <= {n.op for n in g.nodes()}
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(to_fx(g).eval()(x), m(x))


# --------------------------------------------------------------------------- import from ONNX


class _ConvNeXtish(nn.Module):
    """A ConvNeXt block in miniature: LayerNorm2d as torchvision writes it, the channels-last MLP, layer scale."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, 2)
        self.ln2d = nn.LayerNorm(c, eps=1e-6)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.ln = nn.LayerNorm(c, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(c, 2 * c), nn.Linear(2 * c, c)
        self.gamma = nn.Parameter(torch.rand(c, 1, 1) + 0.5)

    def forward(self, x):
        x = self.ln2d(self.stem(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        y = self.ln(self.dw(x).permute(0, 2, 3, 1))
        y = self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return x + self.gamma * y


def test_onnx_import_of_a_torch_export():
    m = _ConvNeXtish().eval()
    x = torch.randn(2, 3, 8, 8)
    g = from_onnx(_export(m, x))
    ops = [n.op for n in g.nodes()]
    assert [n.attrs["axis"] for n in g.nodes("layernorm")] == ["channels", "last"]
    assert ops.count("permute") == 2 and ops.count("scale") == 1
    with torch.no_grad():
        torch.testing.assert_close(to_fx(g).eval()(x), m(x), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- passes


def _ln_graph(affine=True) -> archir.Graph:
    g = archir.Graph("ln")
    x = g.input("x", (3, 8, 8))
    h = g.add("conv2d", x, out_channels=6, kernel_size=3, padding=1, name="c0")
    h = g.add("layernorm", h, axis="channels", affine=affine, bias=affine, name="ln")
    h = g.add("conv2d", g.add("gelu", h), out_channels=6, kernel_size=1, name="c1")
    t = g.add("permute", h, dims=[0, 2, 1], name="hw")  # (C, W, H): channels stay on axis 0
    y = g.add("conv2d", t, out_channels=4, kernel_size=3, stride=2, name="c2")
    g.set_outputs(g.add("linear", g.add("flatten", g.add("global_avgpool", y)), out_features=3, name="head"))
    g.init_params(0)
    if affine:
        rng = np.random.default_rng(0)
        g.set_params("ln", weight=rng.uniform(0.5, 2, 6).astype(np.float32),
                     bias=rng.normal(size=6).astype(np.float32))
    return g.validate()


def test_widen_refuses_channels_that_meet_a_channel_layernorm_and_fires_past_it():
    g = _ln_graph()
    cp = analyze(g)
    assert cp.rule("ln").kind == "carrier" and [r.node for r in cp.mixers(cp.classes("c0"))] == ["ln"]
    with pytest.raises(PreconditionError, match="normalises over the channels") as e:
        passes.widen(g, node="c0", out_channels=8)
    assert e.value.node == "ln" and "pruning" in e.value.hint
    targets = [t["node"] for t in passes.widen_targets(g)]
    assert "c0" not in targets and "c1" in targets
    wide = passes.widen(g, node="c1", out_channels=9)  # through the permute that keeps channels first
    assert wide.node("hw").type.shape == (9, 8, 8)
    passes.check_preserved(g, wide)


def test_add_skip_concat_refuses_a_channel_layernorm_without_affine():
    g = _ln_graph(affine=False)
    with pytest.raises(PreconditionError, match="normalises over the channels") as e:
        passes.add_skip(g, src="x", dst="c0", mode="concat")
    assert e.value.node == "ln"


def test_prune_follows_the_layernorm_affine():
    g = _ln_graph()
    grp = analyze(g).group_of("c0")
    assert grp.free and "ln" in grp.carriers
    small, report = passes.prune_channels(g, ratio=0.5, groups=[grp.index])
    assert small.node("ln").params["weight"].shape == (3,) and small.node("c1").params["weight"].shape[1] == 3
    kept = [i for i in range(6) if any(np.array_equal(small.node("ln").params["bias"][j:j + 1],
                                                      g.node("ln").params["bias"][i:i + 1]) for j in range(3))]
    assert len(kept) == 3  # the affine entries of the kept channels, not a reset
    assert verify_onnx(small).ok


def test_reshape_pins_and_channel_shuffle_is_pruned_and_widened_by_rows():
    g = archir.Graph("pin")
    x = g.input("x", (3, 8, 8))
    a = g.add("conv2d", x, out_channels=8, kernel_size=1, name="a")
    s = g.add("channel_shuffle", a, groups=2, name="cs")
    b = g.add("conv2d", s, out_channels=8, kernel_size=1, name="b")
    r = g.add("reshape", b, shape=[4, 2, 64], name="r")
    g.set_outputs(r)
    g.init_params(0)
    g.validate()
    # a channel shuffle moves whole rows of its groups: adding (widen by copies of rows) and removing them is followed
    wide = passes.widen(g, node="a", out_channels=12)
    assert wide.node("a").attrs["out_channels"] == 12 and wide.node("cs").attrs["groups"] == 2
    assert wide.node("b").params["weight"].shape == (8, 12, 1, 1)
    assert passes.check_preserved(g, wide).ok
    with pytest.raises(PreconditionError, match="classes of 2 channels each"):
        passes.widen(g, node="a", out_channels=11)  # 3 new channels cannot be whole rows of 2 groups
    with pytest.raises(PreconditionError, match="reshape.*fixes the channel count") as e:
        passes.widen(g, node="b", out_channels=12)
    assert e.value.node == "b" and "'r'" in str(e.value)
    cp = analyze(g)
    assert cp.group_of("a").size == 4  # channel j of both groups of 4 is one class
    small, report = passes.prune_channels(g, ratio=0.5)
    assert small.node("a").attrs["out_channels"] == 4 and small.node("b").attrs["out_channels"] == 8
    assert [gp.producers for gp in report.groups] == [("a",)]  # b's channels meet the reshape: skipped
    assert verify_onnx(small).ok


def test_onnx_reshape_targets_with_the_run_time_batch_size():
    class Shuffle(nn.Module):  # torchvision's channel_shuffle, batch size read with x.size()
        def forward(self, x):
            b, c, h, w = x.size()
            y = x.view(b, 2, c // 2, h, w)
            return torch.transpose(y, 1, 2).contiguous().view(b, -1, h, w)

    x = torch.randn(3, 6, 4, 5)
    g = from_onnx(_export(Shuffle(), x))
    assert {n.op for n in g.nodes()} - {"input"} <= {"reshape", "permute", "channel_shuffle"}
    torch.testing.assert_close(to_fx(g)(x), Shuffle()(x), rtol=0, atol=0)

    class Folds(nn.Module):  # the batch size in arithmetic: not a "keep the batch" target
        def forward(self, x):
            return x.view(x.size(0) * 2, -1)

    with pytest.raises(UnsupportedModelError):
        from_onnx(_export(Folds(), x))
