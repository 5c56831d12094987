"""The elementwise ops of issue 17 (``leaky_relu``, ``gelu``, ``elu``, ``hardtanh``, ``neg``, ``sub``,
``div``): shape rules and refusals, fx against torch, ONNX Runtime against fx, costs by hand,
imports from torch (functions, modules, methods, in place) and from ONNX (torch's exporter and
archir's own), and widen/prune through them."""

from __future__ import annotations

import io
import math
import warnings

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

UNARY = {  # op -> (attrs, the torch function it is)
    "leaky_relu": ({"negative_slope": 0.2}, lambda x: F.leaky_relu(x, 0.2)),
    "gelu": ({}, F.gelu),
    "gelu_tanh": ({"approximate": "tanh"}, lambda x: F.gelu(x, approximate="tanh")),
    "elu": ({"alpha": 0.7}, lambda x: F.elu(x, 0.7)),
    "hardtanh": ({"min_val": -0.5, "max_val": 1.5}, lambda x: F.hardtanh(x, -0.5, 1.5)),
    "neg": ({}, torch.neg),
}
BINARY = {"sub": torch.sub, "div": torch.div}


def _op(name: str) -> str:
    return name.split("_tanh")[0]


def _unary_net(name: str, shape=(3, 5, 5)) -> archir.Graph:
    g = archir.Graph("u")
    g.set_outputs(g.add(_op(name), g.input("x", shape), name="y", **UNARY[name][0]))
    g.init_params(0)
    return g.validate()


def _binary_net(op: str, sa=(3, 5, 5), sb=(3, 5, 5)) -> archir.Graph:
    g = archir.Graph("b")
    g.set_outputs(g.add(op, g.input("a", sa), g.input("b", sb), name="y"))
    g.init_params(0)
    return g.validate()


# --------------------------------------------------------------------------- shapes and refusals


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_keeps_the_shape_and_is_the_torch_function(name):
    g = _unary_net(name, (3, 5, 7))
    assert g.node("y").type.shape == (3, 5, 7)
    x = torch.randn(2, 3, 5, 7) * 3
    with torch.no_grad():
        torch.testing.assert_close(to_fx(g)(x), UNARY[name][1](x), rtol=0, atol=0)


def test_binary_ops_broadcast_like_mul_and_are_torch_sub_and_div():
    for op, fn in BINARY.items():
        g = _binary_net(op, (3, 5, 5), (3, 1, 1))
        assert g.node("y").type.shape == (3, 5, 5)
        a, b = torch.randn(2, 3, 5, 5), torch.rand(2, 3, 1, 1) + 0.5
        assert torch.equal(to_fx(g)(a, b), fn(a, b))
        assert _binary_net(op, (1, 5, 1), (3, 1, 5)).node("y").type.shape == (3, 5, 5)
        with pytest.raises(ShapeError, match=f"{op} cannot broadcast") as e:
            _binary_net(op, (3, 5, 5), (2, 5, 5))
        assert e.value.node == "y" and "equal or 1" in e.value.hint
        with pytest.raises(ShapeError, match=f"{op} needs equal ranks"):
            _binary_net(op, (3, 5, 5), (3,))


def test_bad_attrs_are_refused_naming_the_node():
    g = archir.Graph("bad")
    x = g.input("x", (3, 4, 4))
    with pytest.raises(OpSchemaError, match="'approximate'.*one of") as e:
        g.add("gelu", x, name="g", approximate="fast")
    assert e.value.node == "g"
    with pytest.raises(OpSchemaError, match="min_val=2.0 is greater than max_val=1.0") as e:
        g.add("hardtanh", x, name="h", min_val=2.0, max_val=1.0)
    assert e.value.node == "h" and "min_val <= max_val" in e.value.hint
    with pytest.raises(OpSchemaError, match="'negative_slope'.*must be a number"):
        g.add("leaky_relu", x, negative_slope="0.1")
    with pytest.raises(OpSchemaError, match="'alpha'.*finite"):
        g.add("elu", x, alpha=math.inf)
    with pytest.raises(OpSchemaError, match="takes 2 input"):
        g.add("sub", x)


# --------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("name", sorted(UNARY))
def test_onnx_runtime_agrees_with_fx_and_imports_back(name):
    g = _unary_net(name)
    rep = verify_onnx(g, inputs=np.random.default_rng(0).normal(0, 3, (3, 3, 5, 5)).astype(np.float32))
    assert rep.ok, rep
    m = to_onnx(g)
    if _op(name) == "gelu":  # opset 17 has no Gelu: the formula, read back as one gelu
        assert "Erf" in {n.op_type for n in m.graph.node} or "Tanh" in {n.op_type for n in m.graph.node}
    back = from_onnx(m)
    (node,) = [n for n in back.nodes() if n.op != "input"]
    assert node.op == _op(name) and node.id == "y"
    for k, v in UNARY[name][0].items():
        assert node.attrs[k] == pytest.approx(v)
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(to_fx(back)(x), to_fx(g)(x), rtol=0, atol=0)


@pytest.mark.parametrize("op", sorted(BINARY))
def test_binary_onnx_runtime_agrees_with_fx_and_imports_back(op):
    g = _binary_net(op, (3, 5, 5), (3, 1, 1))
    ins = [np.random.default_rng(1).normal(size=(2, 3, 5, 5)).astype(np.float32),
           np.random.default_rng(2).uniform(0.5, 2, (2, 3, 1, 1)).astype(np.float32)]
    assert verify_onnx(g, inputs=ins).ok
    back = from_onnx(to_onnx(g))
    assert [n.op for n in back.nodes()] == ["input", "input", op]


def test_relu6_stays_relu6_and_other_clips_are_hardtanh():
    g = archir.Graph("c")
    x = g.input("x", (2, 3, 3))
    g.set_outputs(g.add("relu6", x, name="r6"), g.add("hardtanh", x, name="ht"),
                  g.add("hardtanh", x, name="ht06", min_val=0.0, max_val=6.0))
    back = from_onnx(to_onnx(g.validate()))
    assert {n.id: n.op for n in back.nodes()} == {"x": "input", "r6": "relu6", "ht": "hardtanh", "ht06": "relu6"}


# --------------------------------------------------------------------------- costs


def test_costs_by_hand():
    n = 3 * 5 * 5
    per = {"leaky_relu": 2, "gelu": 5, "gelu_tanh": 13, "elu": 4, "hardtanh": 2, "neg": 1}
    for name, k in per.items():
        c = costmodels.count(_unary_net(name))["y"]
        assert (c.macs, c.flops, c.params) == (0, k * n, 0), name
        assert c.bytes_moved == 2 * n * 4  # read x, write y
    for op in BINARY:
        c = costmodels.count(_binary_net(op, (3, 5, 5), (3, 1, 1)))["y"]
        assert (c.macs, c.flops, c.params) == (0, n, 0)
        assert c.bytes_moved == (n + 3 + n) * 4


# --------------------------------------------------------------------------- widen and prune


def _chain(op: str, **attrs) -> archir.Graph:
    """conv -> op -> conv -> head; for a binary op the conv output meets a second conv's output."""
    g = archir.Graph("w")
    x = g.input("x", (3, 8, 8))
    h = g.add("conv2d", x, out_channels=6, kernel_size=3, padding=1, name="c0")
    if op in BINARY:
        other = g.add("conv2d", x, out_channels=6, kernel_size=1, name="c0b")
        if op == "div":  # a positive divisor
            other = g.add("add", g.add("sigmoid", other), g.add("sigmoid", other, name="s2"), name="pos")
        h = g.add(op, h, other, name="op")
    else:
        h = g.add(op, h, name="op", **attrs)
    y = g.add("conv2d", h, out_channels=4, kernel_size=1, name="c1")
    g.set_outputs(g.add("linear", g.add("flatten", g.add("global_avgpool", y)), out_features=3, name="head"))
    g.init_params(0)
    return g.validate()


@pytest.mark.parametrize("name", sorted(UNARY) + sorted(BINARY))
def test_widen_and_prune_pass_through(name):
    op, attrs = (name, {}) if name in BINARY else (_op(name), UNARY[name][0])
    g = _chain(op, **attrs)
    grp = analyze(g).group_of("op")
    assert grp.free and "c1" in grp.consumers
    assert set(grp.producers) == ({"c0", "c0b"} if op in BINARY else {"c0"})
    for mode in ("replicate", "zero"):
        wide = passes.widen(g, node="c0", out_channels=9, mode=mode)
        wide.validate()
        assert wide.node("op").type.shape == (9, 8, 8) and wide.node("c1").params["weight"].shape[1] == 9
        passes.check_preserved(g, wide)
    pruned, _ = passes.prune_channels(g, ratio=0.5, groups=[grp.index])
    assert pruned.node("op").type.shape == (3, 8, 8)
    assert verify_onnx(pruned).ok


# --------------------------------------------------------------------------- import from torch and ONNX


class _Acts(nn.Module):
    """Every new op as torch writes it: modules, functions, methods, operators."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.lrelu = nn.LeakyReLU(0.2)
        self.gelu = nn.GELU(approximate="tanh")
        self.elu = nn.ELU(0.7)
        self.htanh = nn.Hardtanh(-0.5, 1.5)
        self.relu6 = nn.ReLU6()

    def forward(self, x):
        y = self.conv(x)
        a = self.lrelu(y) + F.leaky_relu(y, 0.3) + self.gelu(y) + F.gelu(y) + self.elu(y) + F.elu(y)
        b = self.htanh(y) - F.hardtanh(y, -2.0, 0.5) + self.relu6(y) - (-y) + torch.neg(y)
        c = torch.sub(a, b) / (torch.sigmoid(y) + torch.sigmoid(a))
        return torch.div(c, y.sigmoid()).sub(a).div(b.sigmoid())


def _export(m: nn.Module, x: torch.Tensor, opset: int = 17) -> bytes:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, x, f, dynamo=False, opset_version=opset, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    return f.getvalue()


def test_torch_import_maps_modules_functions_and_operators():
    m = _Acts().eval()
    g = from_torch(m, torch.randn(1, 3, 6, 6))  # checks fx parity itself
    ops = [n.op for n in g.nodes()]
    for op, k in {"leaky_relu": 2, "gelu": 2, "elu": 2, "hardtanh": 2, "relu6": 1, "neg": 2, "sub": 4,
                  "div": 3}.items():
        assert ops.count(op) == k, (op, ops)
    assert g.node("gelu").attrs["approximate"] == "tanh" and g.node("lrelu").attrs["negative_slope"] == 0.2
    assert (g.node("htanh").attrs["min_val"], g.node("htanh").attrs["max_val"]) == (-0.5, 1.5)
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(to_fx(g)(x), m(x))
    assert verify_onnx(g).ok


@pytest.mark.parametrize("opset", [17, 20])
def test_onnx_import_of_torch_exports(opset):
    """opset 17: gelu as torch writes the formulas; opset 20: the Gelu op."""
    m = _Acts().eval()
    g = from_onnx(_export(m, torch.randn(1, 3, 6, 6), opset))
    ops = [n.op for n in g.nodes()]
    assert ops.count("gelu") == 2 and ops.count("hardtanh") == 2 and ops.count("relu6") == 1
    assert sorted(n.attrs["approximate"] for n in g.nodes("gelu")) == ["none", "tanh"]
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(to_fx(g)(x), m(x), rtol=1e-5, atol=1e-5)


def test_onnx_import_refuses_what_archir_has_no_op_for():
    class _M(nn.Module):
        def forward(self, x):
            return F.hardtanh(x, 0.0, 1.0).clamp(min=0.5), x - 1.0

    with pytest.raises(UnsupportedModelError, match=r"Clip\(0.5, inf\)") as e:
        from_onnx(_export(_M(), torch.randn(1, 3, 4, 4)))
    assert "Sub with a constant operand" in e.value.context
    with pytest.raises(UnsupportedModelError, match="rounding_mode='floor'"):
        from_torch(type("_F", (nn.Module,), {"forward": lambda self, x: torch.div(x, x, rounding_mode="floor")})(),
                   torch.randn(1, 3, 4, 4))


class _InPlace(nn.Module):
    """In-place forms whose input nobody reads again: imported as the out-of-place ops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.elu = nn.ELU(inplace=True)

    def forward(self, x, y):
        h = self.act(self.conv(x))
        h = F.leaky_relu(h, 0.2, inplace=True)
        h = self.elu(h)
        h += y
        h = h.sub_(y)
        h = h.add_(y)
        h = F.hardtanh(h, -1.0, 2.0, inplace=True)
        return h.neg_()


def test_in_place_ops_import_as_out_of_place_when_the_input_is_not_read_again():
    m = _InPlace().eval()
    x, y = torch.randn(2, 3, 5, 5), torch.randn(2, 4, 5, 5)
    g = from_torch(m, (x, y))
    assert [n.op for n in g.nodes()] == ["input", "input", "conv2d", "leaky_relu", "leaky_relu", "elu", "add",
                                         "sub", "add", "hardtanh", "neg"]
    x0 = x.clone()
    g = from_torch(m, (x, y))
    assert torch.equal(x, x0)  # the caller's inputs are not changed by the import
    with torch.no_grad():
        torch.testing.assert_close(to_fx(g)(x, y), m(x.clone(), y.clone()))


class _ReadAgain(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.act = nn.LeakyReLU(inplace=True)

    def forward(self, x):
        if self.how == "module":
            return self.act(x) + x
        if self.how == "function":
            y = F.leaky_relu(x, 0.1, inplace=True)
            return y * x
        if self.how == "method":
            y = x.sigmoid()
            z = y.sub_(x)
            return z + y
        a, b = x.chunk(2, 1)  # "view": the part shares x's memory
        F.elu(a, inplace=True)
        return x + x


@pytest.mark.parametrize("how", ["module", "function", "method", "view"])
def test_in_place_ops_whose_input_is_read_again_stay_refused(how):
    with pytest.raises(UnsupportedModelError, match="works in place on .* reads afterwards") as e:
        from_torch(_ReadAgain(how), torch.randn(1, 4, 4, 4))
    assert "out-of-place" in str(e.value.context)
