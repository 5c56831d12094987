"""``archir.frontend.from_torch``: naming, weights, the torch.export fallback, and every refusal.

The CNN families themselves are in ``test_frontend_families.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archir
from archir.frontend import FrontendError, UnsupportedModelError, from_torch
from archir.frontend import torch_import
from tests.archir.test_frontend_families import TinyResNeXt, randomize


def _same(g, module, shape, batch=3):
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = module.eval()(x)
        got = archir.lower.to_fx(g).eval()(x)
    assert float(ref.abs().max()) > 1e-3
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- structure and weights


def test_ids_follow_module_paths_and_weights_are_carried():
    m = randomize(TinyResNeXt())
    g = from_torch(m, torch.randn(1, 3, 32, 32))
    assert g.meta["frontend"]["tracer"] == "torch.fx"
    # modules keep their paths; calls inside a module are named after it; a reused module gets a suffix
    assert g.node("layer1.0.conv1").op == "conv2d"
    assert g.node("layer1.0.downsample.0").op == "conv2d"
    assert g.node("layer1.0.add").op == "add"
    assert g.node("layer1.0.relu").op == "relu" and g.node("layer1.0.relu_1").op == "relu"
    assert g.node("fc").op == "linear" and g.node("flatten").op == "flatten"
    assert g.node("avgpool").op == "global_avgpool"
    assert g.inputs == ("x",)
    sd = m.state_dict()
    np.testing.assert_array_equal(g.node("layer1.0.conv2").params["weight"], sd["layer1.0.conv2.weight"].numpy())
    assert g.node("layer1.0.conv2").attrs["groups"] == 2
    bn = g.node("layer2.0.bn3")
    np.testing.assert_array_equal(bn.buffers["running_mean"], sd["layer2.0.bn3.running_mean"].numpy())
    np.testing.assert_array_equal(bn.buffers["running_var"], sd["layer2.0.bn3.running_var"].numpy())
    np.testing.assert_array_equal(bn.params["bias"], sd["layer2.0.bn3.bias"].numpy())
    assert g.num_params() == sum(p.numel() for p in m.parameters())
    _same(g, m, (3, 32, 32))


def test_training_mode_is_restored_and_graph_saves(tmp_path):
    m = randomize(TinyResNeXt()).train()
    m.layer1.eval()
    g = from_torch(m, torch.randn(2, 3, 32, 32))
    assert m.training and not m.layer1.training and m.layer2.training
    archir.save(g, tmp_path / "net.json")
    g2 = archir.load(tmp_path / "net.json")
    assert g2.weights_hash() == g.weights_hash() and g2.structural_hash() == g.structural_hash()


def test_attributes_map_exactly():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, (3, 5), stride=(2, 1), padding=(1, 2), dilation=1,
                                  groups=3, bias=True)
            self.same = nn.Conv2d(6, 6, 3, padding="same", dilation=2, bias=False)
            self.bn = nn.BatchNorm2d(6, eps=1e-3, momentum=0.01, affine=False)
            self.pool = nn.MaxPool2d(3, 2, 1, dilation=1, ceil_mode=True)
            self.avg = nn.AvgPool2d(2, padding=1, count_include_pad=False)
            self.drop = nn.Dropout(0.3)

        def forward(self, x):
            h = self.avg(self.pool(self.bn(self.same(self.conv(x)))))
            h = F.hardtanh(h, 0.0, 6.0) + F.relu6(h)
            return self.drop(torch.sigmoid(h) * torch.tanh(h))

    m = randomize(Net())
    g = from_torch(m, torch.randn(1, 3, 13, 11))
    c = g.node("conv").attrs
    assert (c["kernel_size"], c["stride"], c["padding"], c["groups"], c["bias"]) == ([3, 5], [2, 1], [1, 2], 3, True)
    assert g.node("same").attrs["padding"] == 2 and g.node("same").attrs["dilation"] == 2
    bn = g.node("bn")
    assert bn.attrs == {"eps": 1e-3, "momentum": 0.01, "affine": False} and not bn.params
    assert g.node("pool").attrs["ceil_mode"] is True
    assert g.node("avg").attrs["count_include_pad"] is False
    assert g.node("drop").op == "dropout" and g.node("drop").attrs["p"] == 0.3
    assert {"relu6", "add", "mul", "sigmoid", "tanh"} <= {n.op for n in g.nodes()}
    _same(g, m, (3, 13, 11))


def test_functional_forms_and_shape_arithmetic():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4 * 2 * 2, 3)

        def forward(self, x):
            h = F.max_pool2d(self.conv(x), 2)
            h = F.adaptive_avg_pool2d(h.relu(), (2, None))  # None keeps the width
            h = F.avg_pool2d(h, kernel_size=(1, 2), stride=(1, 2))
            h = F.hardswish(torch.add(h, F.silu(h)).contiguous())
            h = h.reshape(h.shape[0], h.shape[1], -1).flatten(1)  # flatten(2) then flatten(1), as reshapes
            return self.fc(F.dropout(h.view(h.size(0), -1), 0.1, training=False))  # shape arithmetic

    m = Net().eval()
    g = from_torch(m, torch.randn(1, 3, 10, 10))
    assert g.node("adaptive_avgpool2d").attrs["output_size"] == [2, 4]
    # reshape(N, C, -1) is flatten(start_dim=2); the view of an already flat tensor is no node at all
    assert [n.attrs["start_dim"] for n in g.nodes("flatten")] == [2, 1]
    _same(g, m, (3, 10, 10))


def test_torch_export_fallback_when_fx_cannot_trace():
    class Shapey(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            y = F.relu(self.bn(self.conv(x)))
            if x.shape[-1] > 4:  # Python control flow on a shape: fx cannot trace it, export specialises
                y = self.pool(y)
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))

    m = randomize(Shapey())
    g = from_torch(m, torch.randn(2, 3, 8, 8))
    meta = g.meta["frontend"]
    assert meta["tracer"] == "torch.export" and "control flow" in meta["fx_error"]
    assert [n.op for n in g.nodes()] == ["input", "conv2d", "batchnorm2d", "relu", "maxpool2d", "global_avgpool",
                                         "flatten", "linear"]
    assert {"conv", "bn", "pool", "fc"} <= set(g)  # torch.export's module stack names the nodes
    _same(g, m, (3, 8, 8))


def test_neither_tracer_works():
    class DataDependent(nn.Module):
        def forward(self, x):
            return x.relu() if x.sum() > 0 else x.sigmoid()

    with pytest.raises(FrontendError, match=r"torch\.fx failed .* torch\.export failed") as e:
        from_torch(DataDependent(), torch.randn(1, 3, 4, 4))
    assert e.value.hint and "traceable" in e.value.hint


# --------------------------------------------------------------------------- unsupported: all listed at once


class Unsupportable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.gamma = nn.Parameter(torch.ones(6))
        self.norm = nn.GroupNorm(2, 4)

    def forward(self, x):
        b, c, h, w = x.shape
        y = x.view(b, 2, c // 2, h, w).transpose(0, 1).reshape(b, c, h, w)   # transposes the batch
        y = self.conv(y) + 1.0                                                # adding a constant
        y = F.layer_norm(y, (6, 6))                                           # LayerNorm over two dims
        y = self.gamma * self.norm(y)                                         # a parameter, not per channel
        return torch.cumsum(y, dim=1)


def test_every_unsupported_node_is_listed_with_where_it_comes_from():
    with pytest.raises(UnsupportedModelError) as e:
        from_torch(Unsupportable(), torch.randn(1, 4, 6, 6))
    items = e.value.unsupported
    whats = [u.what for u in items]
    for expected in ("method .transpose()", "function _operator.add", "layer_norm", "function _operator.mul",
                     "function torch.cumsum"):
        assert any(expected in w for w in whats), (expected, whats)
    # the source line in the user's file is named, and the reason
    tr = next(u for u in items if "transpose" in u.what)
    assert "test_frontend_torch.py:" in tr.where and "transposes the batch" in tr.where
    assert "batch" in tr.reason
    assert any("two dims" in u.reason or "last 2 dims" in u.reason for u in items if "layer_norm" in u.what)
    assert any("per-channel" in u.reason for u in items if "mul" in u.what)
    assert any("constant" in u.reason for u in items if "add" in u.what)
    norm = next(u for u in items if "GroupNorm" in u.what)
    assert norm.where.startswith("norm")
    msg = str(e.value)
    assert msg.splitlines()[0].startswith(f"[unsupported] cannot import Unsupportable: {len(items)} unsupported")
    assert all(f"  - {u}" in msg for u in items)


def test_inplace_op_whose_input_is_read_later_is_refused():
    class Aliasing(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            a = self.conv(x)
            b = F.relu(a, inplace=True)  # changes a ...
            return a + b                 # ... which is read again here

    with pytest.raises(UnsupportedModelError, match="in place") as e:
        from_torch(Aliasing(), torch.randn(1, 3, 4, 4))
    assert e.value.unsupported[0].what == "function torch.nn.functional.relu"


def test_module_with_weights_called_twice_is_refused():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.conv(self.act(self.conv(x))))  # act reused: fine; conv reused: shared weights

    with pytest.raises(UnsupportedModelError, match="weight tying") as e:
        from_torch(Shared(), torch.randn(1, 3, 4, 4))
    assert len(e.value.unsupported) == 1


def test_parameter_shared_by_functional_calls_is_refused():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(3, 3, 1, 1))

        def forward(self, x):
            return F.conv2d(F.conv2d(x, self.weight), self.weight)

    with pytest.raises(UnsupportedModelError, match="parameter weight.*shared by several ops"):
        from_torch(Tied(), torch.randn(1, 3, 4, 4))


def test_functional_conv_on_a_parameter_is_mapped():
    class Fn(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))
            self.bias = nn.Parameter(torch.randn(4))

        def forward(self, x):
            return F.conv2d(x, self.weight, self.bias, stride=2, padding=1)

    m = Fn()
    g = from_torch(m, torch.randn(1, 3, 8, 8))
    assert g.node("conv2d").attrs["stride"] == 2
    _same(g, m, (3, 8, 8))


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("module,reason", [
    (nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular"), "padding_mode"),
    (nn.BatchNorm2d(3, track_running_stats=False), "batch statistics"),
    (nn.Hardtanh(-1.0, float("inf")), "max_val.*finite"),  # finite bounds are a hardtanh
    (nn.MaxPool2d(2, return_indices=True), "return_indices"),
    (nn.Conv2d(3, 3, 2, padding="same"), "asymmetrically"),
    (nn.AvgPool2d(2, divisor_override=3), "divisor_override"),
    (nn.Flatten(0), "batch dimension"),
])
def test_module_settings_without_an_ir_equivalent(module, reason):
    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = module

        def forward(self, x):
            return self.m(x)

    with pytest.raises(UnsupportedModelError, match=reason):
        from_torch(Wrap(), torch.randn(1, 3, 6, 6))


def test_the_numeric_check_catches_a_wrong_mapping(monkeypatch):
    monkeypatch.setitem(torch_import._MODULE_RULES, nn.ReLU, torch_import._m_unary("sigmoid"))
    m = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())
    with pytest.raises(FrontendError, match="does not reproduce output 0"):
        from_torch(m, torch.randn(1, 3, 4, 4))
    g = from_torch(m, torch.randn(1, 3, 4, 4), check=False)  # the check is what caught it
    assert g.node("1").op == "sigmoid"


@pytest.mark.parametrize("inputs,match", [
    ("not a tensor", "must be a tensor or a tuple"),
    ((), "must be a tensor or a tuple"),
    (torch.ones(1, 3, 4, 4, dtype=torch.int64), "floating-point"),
    (torch.ones(3), "batch dimension"),
])
def test_bad_example_inputs(inputs, match):
    with pytest.raises(FrontendError, match=match):
        from_torch(nn.ReLU(), inputs)


def test_bad_module_and_dtypes():
    with pytest.raises(FrontendError, match="needs an nn.Module"):
        from_torch(lambda x: x, torch.ones(1, 3, 4, 4))
    with pytest.raises(FrontendError, match=r"not float32") as e:
        from_torch(nn.Conv2d(3, 3, 1).double(), torch.ones(1, 3, 4, 4))
    assert "module.float()" in e.value.hint
    with pytest.raises(FrontendError, match="example inputs failed"):
        from_torch(nn.Conv2d(3, 3, 1), torch.ones(1, 5, 4, 4))


def test_multiple_inputs_and_outputs():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(2, 4, 1)

        def forward(self, x, y):
            s = self.a(x) + self.b(y)
            return s, torch.sigmoid(s)

    m = Two()
    g = from_torch(m, (torch.randn(1, 3, 5, 5), torch.randn(1, 2, 5, 5)))
    assert g.inputs == ("x", "y") and len(g.outputs) == 2
    xs = (torch.randn(2, 3, 5, 5), torch.randn(2, 2, 5, 5))
    with torch.no_grad():
        for got, ref in zip(archir.lower.to_fx(g)(*xs), m(*xs)):
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
