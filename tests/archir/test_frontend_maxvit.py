"""torchvision's MaxViT in archir: the ``rel_attention`` op and the import of ``MaxVit``.

MaxViT's MBConv blocks are convs, BN and squeeze-excitation; its window and grid partitions are reshapes and
permutes within a sample; what is new is ``RelativePositionalMultiHeadAttention``: multi-head attention inside
each window of P = s*s tokens, with a learned relative-position bias gathered from a ((2s-1)^2, heads) table by
a fixed index. archir maps that module to one ``rel_attention`` node (the index rebuilt from the window size
and checked against the module's buffer). Checked here against torch: shape rule and refusals, fx and ONNX
Runtime against torchvision's module, cost by hand, archir's ONNX and fx lowerings importing back, the import
of a small ``MaxVit`` (fx and ORT parity 1e-4, exact parameters) and what prune does next to the attention.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import archir
import costmodels
import passes
from archir.errors import ShapeError
from archir.frontend import UnsupportedModelError, from_onnx, from_torch
from archir.lower import sync_back, to_fx, to_onnx
from archir.ops import relative_position_index
from tests.archir.parity import assert_matches_module, assert_reads_back_as_one, ort_run as _ort

mv = pytest.importorskip("torchvision.models.maxvit")




def _randomize(m: nn.Module, seed: int = 0, std: float = 0.3) -> nn.Module:
    """Every parameter from N(0, std) (the bias table's own N(0, 0.02) would barely move the scores) and
    non-trivial BN statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
    return m.eval()


def _small_maxvit(**kw) -> nn.Module:
    # two blocks at 32x32: a 16x16 map after the stem, 8x8 and 4x4 in the blocks, windows of 2x2 tokens
    cfg = dict(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16, 32], block_layers=[1, 1],
               head_dim=8, stochastic_depth_prob=0.0, num_classes=10)
    cfg.update(kw)
    torch.manual_seed(0)
    return _randomize(mv.MaxVit(**cfg))


def _rel_pair(e=16, head_dim=4, side=3, groups=2, seed=0):
    """torchvision's module and a one-node graph with its weights."""
    torch.manual_seed(seed)
    m = _randomize(mv.RelativePositionalMultiHeadAttention(e, head_dim, side * side), seed)
    g = archir.Graph("r")
    x = g.input("x", (groups, side * side, e))
    n = g.add("rel_attention", x, num_heads=e // head_dim, window=side, name="attn")
    g.set_outputs(n)
    g.set_params(n, qkv_weight=m.to_qkv.weight.detach().numpy().copy(), qkv_bias=m.to_qkv.bias.detach().numpy().copy(),
                 merge_weight=m.merge.weight.detach().numpy().copy(), merge_bias=m.merge.bias.detach().numpy().copy(),
                 bias_table=m.relative_position_bias_table.detach().numpy().copy())
    return m, g.validate()


# --------------------------------------------------------------------------- the op


def test_relative_position_index_is_torchvisions():
    for h, w in [(1, 1), (2, 2), (3, 5), (7, 7)]:
        np.testing.assert_array_equal(relative_position_index(h, w), mv._get_relative_position_index(h, w).numpy())
    idx = relative_position_index(2, 3)
    assert idx.shape == (6, 6) and idx.min() == 0 and idx.max() == 3 * 5 - 1 and len(np.unique(idx)) == 3 * 5


def test_rel_attention_matches_torchvision_in_fx_and_onnx():
    m, g = _rel_pair()
    x = torch.randn(3, 2, 9, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m(x).numpy()
        got = to_fx(g).eval()(x).numpy()
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(_ort(g, x.numpy()), ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(_ort(g, x.numpy()[:1]), ref[:1], rtol=0, atol=1e-5)  # the batch is dynamic
    # the relative bias matters: without it (a zero table) the output moves
    g0 = g.copy()
    g0.set_params("attn", bias_table=np.zeros_like(g.node("attn").params["bias_table"]))
    with torch.no_grad():
        assert np.abs(to_fx(g0).eval()(x).numpy() - ref).max() > 1e-2


def test_rel_attention_rectangular_window_and_explicit_scale_agree_in_fx_and_onnx():
    g = archir.Graph("r")
    x = g.input("x", (3, 6, 8))
    g.set_outputs(g.add("rel_attention", x, num_heads=2, window=[2, 3], scale=0.7, name="attn"))
    g.init_params(seed=0)
    g.validate()
    g.set_params("attn", bias_table=np.random.default_rng(0).normal(size=(3 * 5, 2)).astype(np.float32))
    xs = np.random.default_rng(1).normal(size=(2, 3, 6, 8)).astype(np.float32)
    with torch.no_grad():
        ref = to_fx(g).eval()(torch.tensor(xs)).numpy()
    np.testing.assert_allclose(_ort(g, xs), ref, rtol=0, atol=1e-5)
    # scale is what multiplies k: by hand in numpy, one window, one head
    p = g.node("attn").params
    qkv = xs[0, 0] @ p["qkv_weight"].T + p["qkv_bias"]
    q, k, v = qkv[:, :4], qkv[:, 8:12] * 0.7, qkv[:, 16:20]
    s = q @ k.T + p["bias_table"][relative_position_index(2, 3), 0]
    w = np.exp(s - s.max(-1, keepdims=True))
    head0 = (w / w.sum(-1, keepdims=True)) @ v
    qkv1 = qkv[:, 4:8], qkv[:, 12:16] * 0.7, qkv[:, 20:24]
    s1 = qkv1[0] @ qkv1[1].T + p["bias_table"][relative_position_index(2, 3), 1]
    w1 = np.exp(s1 - s1.max(-1, keepdims=True))
    head1 = (w1 / w1.sum(-1, keepdims=True)) @ qkv1[2]
    want = np.concatenate([head0, head1], axis=1) @ p["merge_weight"].T + p["merge_bias"]
    np.testing.assert_allclose(ref[0, 0], want, rtol=1e-5, atol=1e-5)


def test_rel_attention_shape_rule_params_and_cost_by_hand():
    g = archir.Graph("r")
    x = g.input("x", (4, 9, 12))
    with pytest.raises(ShapeError, match=r"\(G, P, E\) samples"):
        g.add("rel_attention", g.input("t", (9, 12)), num_heads=3, window=3)
    with pytest.raises(ShapeError, match="needs 4 tokens per window, got P=9"):
        g.add("rel_attention", x, num_heads=3, window=2)
    with pytest.raises(ShapeError, match="not divisible by num_heads=5"):
        g.add("rel_attention", x, num_heads=5, window=3)
    n = g.add("rel_attention", x, num_heads=3, window=3, name="attn")
    g.set_outputs(n)
    g.init_params(seed=0)
    g.validate()
    assert g.node(n).type.shape == (4, 9, 12)
    groups, length, e, h = 4, 9, 12, 3
    assert g.node(n).params["bias_table"].shape == (25, 3)
    c = costmodels.count(g)["attn"]
    assert c.params == 4 * e * e + 4 * e + 25 * h
    # per window: the qkv and merge projections, q k^T and weights @ v over all heads
    assert c.macs == groups * (3 * length * e * e + length * e * e + 2 * length * length * e)
    assert c.flops == 2 * c.macs + groups * (4 * length * e + length * e + 6 * h * length * length)


def test_rel_attention_reads_back_from_archirs_onnx():
    for window, scale in [(3, None), ([2, 3], 0.25), ([3, 2], None)]:
        h, w = (window, window) if isinstance(window, int) else window
        g = archir.Graph("r")
        x = g.input("x", (2, h * w, 8))
        g.set_outputs(g.add("rel_attention", x, num_heads=2, window=window, scale=scale, name="attn"))
        g.init_params(seed=1)
        assert assert_reads_back_as_one(g, "attn")[1].attrs == g.node("attn").attrs


def test_rel_attention_onnx_with_another_index_is_not_read_as_one():
    """The constant Gather's index must be the window's relative-position index: a permuted one is not
    archir's rel_attention (and archir has no general gather), so it is refused, not misread."""
    from onnx import numpy_helper

    g = archir.Graph("r")
    x = g.input("x", (2, 4, 8))
    g.set_outputs(g.add("rel_attention", x, num_heads=2, window=2, name="attn"))
    g.init_params(seed=0)
    proto = to_onnx(g.validate())
    (init,) = [t for t in proto.graph.initializer if "relative_position_index" in t.name]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init)[::-1].copy(), init.name))
    with pytest.raises(UnsupportedModelError):
        from_onnx(proto)


def test_rel_attention_weights_train_and_sync_back():
    _, g = _rel_pair()
    gm = to_fx(g).train()
    assert {k for k, _ in gm.named_parameters()} == {f"attn.{k}" for k in g.node("attn").params}
    assert "attn.relative_position_index" not in gm.state_dict()  # rebuilt from the window, not a weight
    opt = torch.optim.SGD(gm.parameters(), lr=0.5)
    gm(torch.randn(2, 2, 9, 16)).square().mean().backward()
    opt.step()
    g2 = sync_back(g, gm)
    assert not np.allclose(g2.node("attn").params["bias_table"], g.node("attn").params["bias_table"])


def test_torchvision_attention_with_another_index_is_refused():
    m, _ = _rel_pair()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = m

        def forward(self, x):
            return self.attn(x)

    net = Net().eval()
    g = from_torch(net, torch.randn(1, 2, 9, 16))
    assert [n.op for n in g.nodes()] == ["input", "rel_attention"] and g.node("attn").attrs["scale"] is None
    m.relative_position_index.copy_(m.relative_position_index.flip(0))
    with pytest.raises(UnsupportedModelError, match="relative_position_index"):
        from_torch(net, torch.randn(1, 2, 9, 16))


# --------------------------------------------------------------------------- the MaxVit import


def test_small_maxvit_imports_with_fx_and_ort_parity_and_exact_params():
    m = _small_maxvit()
    g = from_torch(m, torch.randn(1, 3, 32, 32))  # from_torch itself checks to_fx against m (1e-4)
    ops = {n.op for n in g.nodes()}
    assert {"rel_attention", "reshape", "permute", "layernorm", "gelu", "tanh", "sigmoid", "avgpool2d"} <= ops
    attn = list(g.nodes("rel_attention"))
    assert len(attn) == 4  # a window and a grid attention per layer, one layer per block
    a = g.node("blocks.1.layers.0.layers.grid_attention.attn_layer.1")
    assert a.attrs == {"num_heads": 4, "window": 2, "scale": None} and g.input_types(a.id)[0].shape == (4, 4, 32)
    assert g.num_params() == sum(p.numel() for p in m.parameters())
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert_matches_module(g, m, x)
    # MACs of the attention nodes by hand: block 0 at 8x8 (16 windows of 4 tokens, E = 16), block 1 at 4x4
    c = costmodels.count(g)
    by_hand = sum(2 * (groups * (4 * 4 * e * e + 2 * 16 * e))
                  for groups, e in [(16, 16), (4, 32)])
    assert sum(c[n.id].macs for n in attn) == by_hand


def test_small_maxvit_reads_back_from_archirs_onnx_and_its_lowering():
    g = from_torch(_small_maxvit(), torch.randn(1, 3, 32, 32))
    g2 = from_onnx(to_onnx(g))
    assert sorted(n.op for n in g2.nodes()) == sorted(n.op for n in g.nodes() if n.op != "dropout")
    assert g2.num_params() == g.num_params()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = to_fx(g).eval()(x).numpy()
        np.testing.assert_allclose(to_fx(g2).eval()(x).numpy(), ref, rtol=1e-5, atol=1e-5)
    g3 = from_torch(to_fx(g).eval(), torch.randn(1, 3, 32, 32))  # archir's RelPosAttention maps back
    assert sorted(n.op for n in g3.nodes()) == sorted(n.op for n in g.nodes())
    assert g3.num_params() == g.num_params()


def test_prune_on_maxvit_keeps_the_attention_and_validates():
    g = from_torch(_small_maxvit(), torch.randn(1, 3, 32, 32))
    cp = passes.coupling.analyze(g, strict=False)
    a = "blocks.0.layers.0.layers.window_attention.attn_layer.1"
    assert cp.rule(a).kind == "opaque"
    with pytest.raises(passes.PreconditionError):
        passes.widen(g, node="blocks.0.layers.0.layers.window_attention.mlp_layer.3", out_channels=32)
    small, report = passes.prune_channels(g, ratio=0.5, criterion="l1")
    small.validate()
    assert report.skipped and all(k.reason for k in report.skipped)
    assert costmodels.count(small).macs < costmodels.count(g).macs  # the MBConv channels inside each block prune
    for n in g.nodes("rel_attention"):  # nothing next to the attention is resized
        assert small.node(n.id).type == n.type
        for k, v in n.params.items():
            np.testing.assert_array_equal(small.node(n.id).params[k], v)
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = to_fx(small).eval()(torch.tensor(x)).numpy()
    np.testing.assert_allclose(_ort(small, x), ref, rtol=1e-4, atol=1e-4)
