"""Tests of ``archir.lower.to_fx`` and ``archir.lower.sync_back``.

Order, as torch.fx's own tests: the lowering fired (structure of the GraphModule), the
names are right (module paths, state_dict keys), the numbers match a hand-written
``torch.nn`` network, and training semantics (gradients, BN, dropout, stop_*) hold.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import archir
from archir import samples
from archir.lower import sync_back, to_fx


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))


def _x(shape, batch=4, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32))


def _expected_state_keys(g: archir.Graph) -> set[str]:
    keys = set()
    for node in g.nodes():
        keys |= {f"{node.id}.{k}" for k in (*node.params, *node.buffers)}
        if node.op == "batchnorm2d":
            keys.add(f"{node.id}.num_batches_tracked")
    return keys


# --------------------------------------------------------------------------- hand-written mirrors


class ChainNet(nn.Module):
    """``samples.chain()`` written by hand."""

    def __init__(self, g: archir.Graph) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 10)
        load = {"conv0": "l0.conv", "bn0": "l0.bn", "conv1": "l1.conv", "bn1": "l1.bn", "head": "head"}
        _load(self, g, load)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.bn0(self.conv0(x))), 2)
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ResNetLike(nn.Module):
    """``samples.resnet_like()`` written by hand."""

    def __init__(self, g: archir.Graph, width: int = 8) -> None:
        super().__init__()
        w = width

        def cb(cin, cout, k=3, s=1):
            return nn.ModuleDict({"conv": nn.Conv2d(cin, cout, k, s, k // 2, bias=False), "bn": nn.BatchNorm2d(cout)})

        self.stem = cb(3, w)
        self.b1 = nn.ModuleDict({"a": cb(w, w), "b": cb(w, w)})
        self.b2 = nn.ModuleDict({"a": cb(w, w), "b": cb(w, w)})
        self.b3 = nn.ModuleDict({"a": cb(w, 2 * w, s=2), "b": cb(2 * w, 2 * w), "proj": cb(w, 2 * w, k=1, s=2)})
        self.head = nn.Linear(2 * w, 10)
        load = {"head": "head"}
        for name in ("stem", "b1.a", "b1.b", "b2.a", "b2.b", "b3.a", "b3.b", "b3.proj"):
            load[f"{name}.conv"] = f"{name}.conv"
            load[f"{name}.bn"] = f"{name}.bn"
        _load(self, g, load)

    @staticmethod
    def _cb(m, x):
        return m["bn"](m["conv"](x))

    def forward(self, x):
        x = torch.relu(self._cb(self.stem, x))
        for blk in (self.b1, self.b2):
            y = self._cb(blk["b"], torch.relu(self._cb(blk["a"], x)))
            x = torch.relu(y + x)
        y = self._cb(self.b3["b"], torch.relu(self._cb(self.b3["a"], x)))
        x = torch.relu(y + self._cb(self.b3["proj"], x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _load(module: nn.Module, g: archir.Graph, mapping: dict[str, str]) -> None:
    for path, nid in mapping.items():
        m = module.get_submodule(path)
        node = g.node(nid)
        for k, a in {**node.params, **node.buffers}.items():
            getattr(m, k).data.copy_(_t(a))


@pytest.mark.parametrize("build,mirror", [(samples.chain, ChainNet), (samples.resnet_like, ResNetLike)])
def test_matches_hand_written_module(build, mirror):
    g = build(seed=3)
    gm = to_fx(g)
    ref = mirror(g)
    x = _x((3, 16, 16))
    gm.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(gm(x), ref(x), rtol=0, atol=0)
    # train mode: batch statistics, and the running stats move identically
    gm.train(), ref.train()
    with torch.no_grad():
        torch.testing.assert_close(gm(x), ref(x), rtol=0, atol=0)
    ours = {k: v for k, v in gm.state_dict().items()}
    for path in ("stem.bn", "b1.a.bn") if build is samples.resnet_like else ("l0.bn", "l1.bn"):
        mirror_path = path if build is samples.resnet_like else {"l0.bn": "bn0", "l1.bn": "bn1"}[path]
        torch.testing.assert_close(ours[f"{path}.running_mean"], ref.get_submodule(mirror_path).running_mean,
                                   rtol=0, atol=0)
        assert not torch.equal(ours[f"{path}.running_mean"], _t(g.node(path).buffers["running_mean"]))


def test_builds_without_tracing(monkeypatch):
    def no_tracing(*a, **k):
        raise AssertionError("to_fx must build the fx graph directly, not trace")

    monkeypatch.setattr(fx.Tracer, "trace", no_tracing)
    monkeypatch.setattr(fx, "symbolic_trace", no_tracing)
    g = samples.mobilenet_like()
    gm = to_fx(g)
    assert isinstance(gm, fx.GraphModule)
    ops = {n.meta.get("archir_id"): n for n in gm.graph.nodes if "archir_id" in n.meta}
    assert ops["stem.conv"].op == "call_module" and ops["stem.conv"].target == "stem.conv"
    assert ops["ir1.se.mul"].op == "call_function"
    assert ops["stem.hardswish"].op == "call_function"
    assert [n.target for n in gm.graph.nodes if n.op == "placeholder"] == ["x"]
    # every fx value carries the IR type of its node
    for n in gm.graph.nodes:
        if n.op not in ("output",):
            assert n.meta["archir_type"] == g.node(n.meta.get("archir_id", n.target)).type
    assert gm.meta["archir_modules"]["ir2.dw.conv"] == "ir2.dw.conv"
    assert gm.eval()(_x((3, 16, 16))).shape == (4, 10)


def test_modules_are_built_without_init_and_keep_their_public_types(monkeypatch):
    """to_fx assigns every weight, so no module's reset_parameters may run (issue 19: it was most of
    a conv's construction); the modules are still exactly torch's classes, holding the graph's weights."""
    calls = []
    for cls in (nn.Conv2d, nn.Linear, nn.BatchNorm2d):
        monkeypatch.setattr(cls, "reset_parameters", lambda self, _c=cls: calls.append(_c))
    g = samples.mobilenet_like()
    g.init_params(seed=1)
    gm = to_fx(g)
    assert calls == []
    mods = dict(gm.named_modules())
    assert type(mods["stem.conv"]) is nn.Conv2d and type(mods["head"]) is nn.Linear
    assert any(type(m) is nn.BatchNorm2d for m in mods.values())
    for name, t in list(gm.named_parameters()) + list(gm.named_buffers()):
        assert t.device.type == "cpu", name
    np.testing.assert_array_equal(mods["stem.conv"].weight.detach().numpy(), g.node("stem.conv").params["weight"])
    nn.Conv2d(3, 4, 1)  # torch's own construction still runs it (the spy works; nothing was patched for good)
    assert calls == [nn.Conv2d]


def test_state_dict_names_follow_node_ids():
    g = samples.resnet_like()
    gm = to_fx(g)
    sd = gm.state_dict()
    assert set(sd) == _expected_state_keys(g)
    assert "stem.conv.weight" in sd and "b3.proj.bn.running_var" in sd and "head.bias" in sd
    np.testing.assert_array_equal(sd["stem.conv.weight"].numpy(), g.node("stem.conv").params["weight"])
    np.testing.assert_array_equal(sd["b2.b.bn.running_mean"].numpy(), g.node("b2.b.bn").buffers["running_mean"])
    assert isinstance(gm.get_submodule("stem.conv"), nn.Conv2d)
    assert isinstance(gm.get_submodule("b3.proj.bn"), nn.BatchNorm2d)


def _conv_chain(ids, inp="x", shape=(3, 6, 6)) -> archir.Graph:
    g = archir.Graph("awkward")
    h = g.input(inp, shape)
    for i in ids:
        h = g.add("conv2d", h, out_channels=3, kernel_size=1, name=i)
    g.set_outputs(g.add("relu", h, name="act"))  # generated code calls torch.relu
    return g.init_params(0).validate()


def _manual(g: archir.Graph, x: torch.Tensor) -> torch.Tensor:
    for n in g.topo_order()[1:-1]:
        p = g.node(n).params
        x = F.conv2d(x, _t(p["weight"]), _t(p["bias"]))
    return torch.relu(x)


@pytest.mark.parametrize("ids,inp", [
    (["graph", "forward", "training", "meta", "code"], "x"),      # GraphModule attributes
    (["a", "a.b", "a.b.c"], "x"),                                 # an id is a scope of the next
    (["a.b.c", "a.b", "a"], "x"),                                 # ... in the other order
    (["cell-1.conv", "cell_1__conv", "cell-1.bn-2"], "x"),        # '-' and a clash after escaping
    (["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "0.conv"], "x"),  # numeric scopes
    (["self", "torch", "operator", "getattr", "F"], "inp"),        # names generated code uses
    (["c1", "torch_1"], "torch"),
    (["c1", "c2"], "self"),
])
def test_module_paths_for_awkward_ids(ids, inp):
    g = _conv_chain(ids, inp)
    gm = to_fx(g)
    paths = gm.meta["archir_modules"]
    assert set(paths) == set(ids)  # "act" (relu) is a call_function, not a module
    assert len(set(paths.values())) == len(ids), "two nodes share one module"
    for nid, path in paths.items():
        m = gm.get_submodule(path)
        assert isinstance(m, nn.Conv2d)
        np.testing.assert_array_equal(m.weight.detach().numpy(), g.node(nid).params["weight"])
    # ids that nest cleanly keep their id as the module path (the first of a scope clash wins)
    for nid in ids:
        if nid in ("layer1.0.conv1", "layer1.1.conv1", "0.conv", "c1", "operator") or nid == ids[0] == "a":
            assert paths[nid] == nid
    for nid in ("graph", "forward", "self", "torch"):
        if nid in paths:
            assert paths[nid] != nid
    assert isinstance(gm.graph, fx.Graph) and callable(gm.forward)
    x = _x((3, 6, 6))
    with torch.no_grad():
        torch.testing.assert_close(gm(x), _manual(g, x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gm(**{p.target: x for p in gm.graph.nodes if p.op == "placeholder"}), gm(x))
    # and the weights come back to the right nodes
    with torch.no_grad():
        for nid, path in paths.items():
            gm.get_submodule(path).weight.add_(float(len(nid)))
    g2 = sync_back(g, gm)
    for nid in ids:
        np.testing.assert_array_equal(g2.node(nid).params["weight"], g.node(nid).params["weight"] + len(nid))


def test_multiple_outputs_give_a_tuple():
    g = samples.chain()
    h = g.add("linear", "flatten", out_features=3, name="aux")
    g.set_outputs("head", "aux", "l1.relu")
    g.init_params(1, only_missing=True).validate()
    gm = to_fx(g).eval()
    x = _x((3, 16, 16))
    with torch.no_grad():
        out = gm(x)
    assert isinstance(out, tuple) and len(out) == 3
    assert [tuple(o.shape) for o in out] == [(4, 10), (4, 3), (4, 16, 8, 8)]
    for o, name in zip(out, g.outputs):
        single = g.copy()
        single.set_outputs(name)
        with torch.no_grad():
            torch.testing.assert_close(o, to_fx(single).eval()(x), rtol=0, atol=0)
    assert h == "aux"


def test_train_then_sync_back():
    g = samples.chain(seed=5)
    before = g.weights_hash()
    gm = to_fx(g)
    opt = torch.optim.SGD(gm.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    gm.train()
    for _ in range(4):
        x = torch.randn(8, 3, 16, 16, generator=gen)
        y = torch.randint(0, 10, (8,), generator=gen)
        loss = F.cross_entropy(gm(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    g2 = sync_back(g, gm)
    assert g.weights_hash() == before, "sync_back must not touch the input graph"
    assert g2.weights_hash() != before
    assert g2.structural_hash() == g.structural_hash()
    g2.validate()
    sd = gm.state_dict()
    for node in g2.nodes():
        for k, a in {**node.params, **node.buffers}.items():
            np.testing.assert_array_equal(a, sd[f"{node.id}.{k}"].numpy())
            assert not a.flags.writeable
    x = _x((3, 16, 16), batch=5, seed=9)
    gm.eval()
    with torch.no_grad():
        torch.testing.assert_close(to_fx(g2).eval()(x), gm(x), rtol=0, atol=0)


def test_sync_back_refuses_a_foreign_module():
    g = samples.chain()
    with pytest.raises(archir.LoweringError) as e:
        sync_back(g, to_fx(samples.resnet_like()))
    assert e.value.rule == "sync_back" and e.value.node in g
    assert "to_fx" in str(e.value)
    wider = samples.chain(widths=(8, 12))
    with pytest.raises(archir.LoweringError, match=r"found shape \(12, 8, 3, 3\)") as e:
        sync_back(g, to_fx(wider))
    assert e.value.node == "l1.conv"
    with pytest.raises(archir.LoweringError, match="archir_modules"):
        sync_back(g, nn.Sequential(nn.Linear(2, 2)))


def test_gradients_reach_every_parameter():
    for build in (samples.mobilenet_like, samples.densenet_like):
        g = build()
        gm = to_fx(g).train()
        out = gm(_x((3, 16, 16)))
        F.cross_entropy(out, torch.arange(4) % 10).backward()
        names = [n for n, _ in gm.named_parameters()]
        assert len(names) == sum(len(n.params) for n in g.nodes())
        for name, p in gm.named_parameters():
            assert p.requires_grad, name
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def _two_branch(stop: str | None) -> archir.Graph:
    """y = conv_b(x) + stop(conv_a(x)) (stop None: plain sum)."""
    g = archir.Graph("stops")
    x = g.input("x", (2, 5, 5))
    a = g.add("conv2d", x, out_channels=2, kernel_size=3, padding=1, name="a")
    if stop:
        a = g.add(stop, a, name="stop")
    b = g.add("conv2d", x, out_channels=2, kernel_size=1, name="b")
    g.set_outputs(g.add("add", b, a, name="sum"))
    return g.init_params(2).validate()


def _grads(g: archir.Graph, x: torch.Tensor):
    gm = to_fx(g)
    x = x.clone().requires_grad_(True)
    y = gm(x)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return y.detach(), {n: p.grad for n, p in gm.named_parameters()}, x.grad


def test_stop_gradient_and_stop_forward_semantics():
    x = _x((2, 5, 5))
    y_plain, g_plain, xg_plain = _grads(_two_branch(None), x)
    # stop_gradient: forward unchanged, no gradient through the stopped branch
    y_sg, g_sg, _ = _grads(_two_branch("stop_gradient"), x)
    torch.testing.assert_close(y_sg, y_plain, rtol=0, atol=0)
    assert g_sg["a.weight"] is None and g_sg["a.bias"] is None
    torch.testing.assert_close(g_sg["b.weight"], g_plain["b.weight"])
    # stop_forward: forward as if the branch were absent, gradients as if it were there
    y_sf, g_sf, xg_sf = _grads(_two_branch("stop_forward"), x)
    only_b = _two_branch(None)
    with torch.no_grad():
        want = to_fx(only_b).get_submodule("b")(x)
    torch.testing.assert_close(y_sf, want, rtol=0, atol=0)
    for k in ("a.weight", "a.bias", "b.weight", "b.bias"):
        torch.testing.assert_close(g_sf[k], g_plain[k])
    torch.testing.assert_close(xg_sf, xg_plain)


def test_stop_forward_alone_is_zero_with_identity_gradient():
    g = archir.Graph("sf")
    x = g.input("x", (3, 4, 4))
    g.set_outputs(g.add("stop_forward", g.add("tanh", x, name="t"), name="sf"))
    gm = to_fx(g.validate())
    xt = _x((3, 4, 4)).requires_grad_(True)
    y = gm(xt)
    assert torch.count_nonzero(y) == 0
    y.sum().backward()
    torch.testing.assert_close(xt.grad, 1 - torch.tanh(xt.detach()) ** 2)


def test_batchnorm_train_and_eval():
    g = archir.Graph("bn")
    x = g.input("x", (3, 5, 5))
    g.set_outputs(g.add("batchnorm2d", x, momentum=0.25, eps=1e-3, name="bn"))
    g.init_params(0)
    samples.randomize_bn(g, 4)
    node = g.node("bn")
    w, b = node.params["weight"], node.params["bias"]
    rm, rv = node.buffers["running_mean"], node.buffers["running_var"]
    xt = _x((3, 5, 5), batch=6, seed=2) * 2 + 0.5
    xn = xt.numpy().astype(np.float64)
    gm = to_fx(g)
    # eval: running statistics
    with torch.no_grad():
        y = gm.eval()(xt).numpy()
    want = (xn - rm[:, None, None]) / np.sqrt(rv[:, None, None] + 1e-3) * w[:, None, None] + b[:, None, None]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    # train: batch statistics, and the running stats move by momentum
    with torch.no_grad():
        y = gm.train()(xt).numpy()
    mean, var = xn.mean(axis=(0, 2, 3)), xn.var(axis=(0, 2, 3))
    want = (xn - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-3) * w[:, None, None] + b[:, None, None]
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    n = xn.size / 3
    bn = gm.get_submodule("bn")
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.75 * rm + 0.25 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy(), 0.75 * rv + 0.25 * var * n / (n - 1), rtol=1e-5, atol=1e-6)
    g2 = sync_back(g, gm)
    np.testing.assert_array_equal(g2.node("bn").buffers["running_mean"], bn.running_mean.numpy())


def test_dropout_is_identity_in_eval_mode():
    g = archir.Graph("drop")
    x = g.input("x", (4, 6, 6))
    g.set_outputs(g.add("dropout", x, p=0.5, name="drop"))
    gm = to_fx(g.validate())
    xt = _x((4, 6, 6), batch=8).abs() + 1  # no zeros in the input
    with torch.no_grad():
        torch.testing.assert_close(gm.eval()(xt), xt, rtol=0, atol=0)
        torch.manual_seed(0)
        y = gm.train()(xt)
    zeros = (y == 0).float().mean().item()
    assert 0.35 < zeros < 0.65
    kept = y != 0
    torch.testing.assert_close(y[kept], 2 * xt[kept])


def test_to_fx_refuses_an_invalid_graph():
    g = samples.chain()
    g.set_params("l0.conv", weight=np.full((8, 3, 3, 3), np.nan, np.float32))
    with pytest.raises(archir.WeightError) as e:
        to_fx(g)
    assert e.value.node == "l0.conv"
