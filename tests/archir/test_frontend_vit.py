"""torchvision's ViT in archir: the ``param`` and ``attention`` ops, and the import of ``VisionTransformer``.

ViT needs a learned tensor as an operand (the class token, ``expand``-ed over the batch and ``cat``-ed in
front of the patches; the position embedding added to the tokens), multi-head self-attention
(``nn.MultiheadAttention(batch_first=True)`` called with ``need_weights=False``) and the class-token
``x[:, 0]``. Each is checked here against torch: shape rules and refusals, fx and ONNX Runtime against the
torch module, costs by hand, the import of a small ``VisionTransformer`` (fx and ORT parity 1e-4, exact
parameters), archir's own modules importing back, and what widen and prune do on a ViT (skip, with reasons).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import archir
import costmodels
import passes
from archir.errors import OpSchemaError, ShapeError
from archir.frontend import UnsupportedModelError, from_torch
from archir.lower import sync_back, to_fx, to_onnx
from tests.archir.parity import assert_matches_module, assert_reads_back_as_one, ort_run as _ort
from tests.strategies import graphs, input_arrays

tv = pytest.importorskip("torchvision.models.vision_transformer")




def _randomize(m: nn.Module, seed: int = 0, std: float = 0.3) -> nn.Module:
    """Every parameter drawn from N(0, std): torchvision zero-initialises the head and the class token, which
    would make a parity check vacuous."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return m.eval()


def _small_vit(**kw) -> nn.Module:
    cfg = dict(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10)
    cfg.update(kw)
    torch.manual_seed(0)
    return _randomize(tv.VisionTransformer(**cfg))


# --------------------------------------------------------------------------- param


def _param_graph(shape=(5, 8)):
    g = archir.Graph("p")
    x = g.input("x", shape)
    pos = g.add("param", x, shape=list(shape), name="pos")
    cls = g.add("param", x, shape=[1, shape[1]], name="cls")
    g.set_outputs(g.add("concat", cls, g.add("add", x, pos), dim=1, name="cat"))
    g.init_params(seed=0)
    return g.validate()


def test_param_is_its_value_repeated_over_the_batch_in_fx_and_onnx():
    g = _param_graph()
    assert g.node("pos").type.shape == (5, 8) and g.node("cat").type.shape == (6, 8)
    pos, cls = g.node("pos").params["value"], g.node("cls").params["value"]
    assert pos.shape == (5, 8) and 0.005 < pos.std() < 0.05  # torchvision's N(0, 0.02)
    x = np.random.default_rng(0).normal(size=(3, 5, 8)).astype(np.float32)
    want = np.concatenate([np.broadcast_to(cls, (3, 1, 8)), x + pos], axis=1)
    with torch.no_grad():
        got = to_fx(g).eval()(torch.tensor(x)).numpy()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(_ort(g, x), want, rtol=0, atol=1e-6)  # dynamic batch: 3
    np.testing.assert_allclose(_ort(g, x[:1]), want[:1], rtol=0, atol=1e-6)
    c = costmodels.count(g)
    assert c["pos"].macs == c["pos"].flops == 0 and c["pos"].params == 40 and c.params == 48


def test_param_reads_back_from_archirs_onnx():
    from archir.frontend import from_onnx

    g = _param_graph()
    g2 = from_onnx(to_onnx(g))
    assert sorted(n.op for n in g2.nodes()) == sorted(n.op for n in g.nodes())
    assert g2.num_params() == g.num_params()
    x = np.random.default_rng(3).normal(size=(2, 5, 8)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_array_equal(to_fx(g2).eval()(torch.tensor(x)).numpy(), to_fx(g).eval()(torch.tensor(x))
                                      .numpy())


def test_learned_tensors_read_back_from_exported_onnx_forms():
    """torch.export's ONNX of ``x + pos_embedding`` (Add of an initializer of the sample's shape) and of
    ``class_token.expand(n, -1, -1)`` (Expand to ``[n, 1, 1]``: a target dim of 1 keeps the value's dim)."""
    from onnx import TensorProto, helper, numpy_helper

    from archir.frontend import from_onnx

    rng = np.random.default_rng(0)
    pos, cls = rng.normal(size=(1, 5, 8)).astype(np.float32), rng.normal(size=(1, 1, 8)).astype(np.float32)
    nodes = [helper.make_node("Add", ["x", "pos"], ["h"]),
             helper.make_node("Shape", ["x"], ["n"], start=0, end=1),
             helper.make_node("Concat", ["n", "ones"], ["target"], axis=0),
             helper.make_node("Expand", ["cls", "target"], ["c"]),
             helper.make_node("Concat", ["c", "h"], ["y"], axis=1)]
    inits = [numpy_helper.from_array(pos, "pos"), numpy_helper.from_array(cls, "cls"),
             numpy_helper.from_array(np.array([1, 1], np.int64), "ones")]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g = from_onnx(model)
    assert sorted(n.attrs["shape"] for n in g.nodes("param")) == [[1, 8], [5, 8]] and g.num_params() == 48
    x = rng.normal(size=(3, 5, 8)).astype(np.float32)
    want = np.concatenate([np.broadcast_to(cls, (3, 1, 8)), x + pos], axis=1)
    with torch.no_grad():
        np.testing.assert_allclose(to_fx(g).eval()(torch.tensor(x)).numpy(), want, rtol=0, atol=1e-6)
    # a constant that broadcasts over the tokens is still refused (it is not a learned tensor of the sample's shape)
    inits[0] = numpy_helper.from_array(pos[:, :1], "pos")
    bad = helper.make_model(helper.make_graph(nodes, "t", graph.input, graph.output, inits),
                            opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedModelError, match="per-sample shape"):
        from_onnx(bad)


def test_param_shape_rule_and_refusals():
    g = archir.Graph("p")
    x = g.input("x", (3, 4, 4))
    with pytest.raises(OpSchemaError, match="at least one dim"):
        g.add("param", x, shape=[])
    with pytest.raises(OpSchemaError, match="takes 1 input"):
        g.add("param", shape=[3])
    p = g.add("param", x, shape=[2, 7])  # any shape: the input gives the batch size only
    assert g.node(p).type.shape == (2, 7)
    with pytest.raises(ShapeError, match="equal shapes"):
        g.add("add", x, p)


def test_param_weights_train_and_sync_back(tmp_path):
    g = _param_graph()
    gm = to_fx(g).train()
    assert dict(gm.named_parameters()).keys() == {"pos.value", "cls.value"}
    opt = torch.optim.SGD(gm.parameters(), lr=0.5)
    gm(torch.randn(4, 5, 8)).square().mean().backward()
    opt.step()
    g2 = sync_back(g, gm)
    assert not np.allclose(g2.node("pos").params["value"], g.node("pos").params["value"])
    archir.save(g2, tmp_path / "p.json")
    g3 = archir.load(tmp_path / "p.json")
    np.testing.assert_array_equal(g3.node("cls").params["value"], g2.node("cls").params["value"])


# --------------------------------------------------------------------------- attention


def _mha_pair(e=8, heads=2, bias=True, length=5, seed=0):
    torch.manual_seed(seed)
    mha = _randomize(nn.MultiheadAttention(e, heads, bias=bias, batch_first=True), seed)
    g = archir.Graph("a")
    x = g.input("x", (length, e))
    n = g.add("attention", x, num_heads=heads, bias=bias, name="attn")
    g.set_outputs(n)
    params = {"in_proj_weight": mha.in_proj_weight, "out_proj_weight": mha.out_proj.weight}
    if bias:
        params.update(in_proj_bias=mha.in_proj_bias, out_proj_bias=mha.out_proj.bias)
    g.set_params(n, **{k: v.detach().numpy().copy() for k, v in params.items()})
    return mha, g.validate()


@pytest.mark.parametrize("bias", [True, False])
def test_attention_matches_multihead_attention_in_fx_and_onnx(bias):
    mha, g = _mha_pair(bias=bias, heads=4 if bias else 2)
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = mha(x, x, x, need_weights=False)[0].numpy()
        got = to_fx(g).eval()(x).numpy()
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(_ort(g, x.numpy()), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_attention_reads_back_from_archirs_onnx(bias):
    _, g = _mha_pair(bias=bias, heads=2)
    assert assert_reads_back_as_one(g, "attn")[1].attrs == g.node("attn").attrs


def test_small_vit_reads_back_from_archirs_onnx():
    from archir.frontend import from_onnx

    g = from_torch(_small_vit(), torch.randn(1, 3, 32, 32))
    g2 = from_onnx(to_onnx(g))
    assert sorted(n.op for n in g2.nodes()) == sorted(n.op for n in g.nodes() if n.op != "dropout")
    assert g2.num_params() == g.num_params()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(to_fx(g2).eval()(x).numpy(), to_fx(g).eval()(x).numpy(), rtol=1e-5, atol=1e-5)


def test_attention_shape_rule_params_and_cost_by_hand():
    g = archir.Graph("a")
    x = g.input("x", (7, 12))
    with pytest.raises(ShapeError, match="not divisible by num_heads=5"):
        g.add("attention", x, num_heads=5)
    with pytest.raises(ShapeError, match=r"\(L, E\) token samples"):
        g.add("attention", g.input("m", (3, 4, 4)), num_heads=1)
    n = g.add("attention", x, num_heads=3, name="attn")
    g.set_outputs(n)
    g.init_params(seed=0)
    g.validate()
    length, e, h = 7, 12, 3
    c = costmodels.count(g)["attn"]
    assert c.params == 4 * e * e + 4 * e
    # q, k, v and out projections, then q k^T and weights @ v over all heads
    assert c.macs == 3 * length * e * e + length * e * e + 2 * length * length * e
    assert c.flops == 2 * c.macs + 4 * length * e + 6 * h * length * length


def test_attention_refused_forms_name_the_reason():
    class Net(nn.Module):
        def __init__(self, mode):
            super().__init__()
            self.mode = mode
            self.attn = nn.MultiheadAttention(8, 2, batch_first=mode != "seq_first")

        def forward(self, x):
            if self.mode == "weights":
                return self.attn(x, x, x)[0]
            if self.mode == "cross":
                return self.attn(x, x + 1, x, need_weights=False)[0]
            if self.mode == "twice":  # one module, two calls: shared weights
                x = self.attn(x, x, x, need_weights=False)[0]
            return self.attn(x, x, x, need_weights=False)[0]

    for mode, why in [("weights", "need_weights=False"), ("cross", "cross-attention"),
                      ("seq_first", "batch_first=True"), ("twice", "called again")]:
        with pytest.raises(UnsupportedModelError, match=why):
            from_torch(Net(mode), torch.randn(2, 5, 8))


# --------------------------------------------------------------------------- the ViT import


def test_small_vit_imports_with_fx_and_ort_parity_and_exact_params():
    m = _small_vit()
    g = from_torch(m, torch.randn(1, 3, 32, 32))  # from_torch itself checks to_fx against m (1e-4)
    ops = {n.op for n in g.nodes()}
    assert {"param", "attention", "concat", "layernorm", "gelu", "slice", "flatten", "permute"} <= ops
    assert g.node(g.outputs[0]).op == "linear" and g.node(g.inputs_of(g.outputs[0])[0]).op == "flatten"  # x[:, 0]
    assert g.node("class_token").op == "param" and g.node("class_token").type.shape == (1, 16)
    assert g.node("encoder.pos_embedding").type.shape == (5, 16)  # 4 patches and the class token
    assert g.node("encoder.layers.encoder_layer_0.self_attention").attrs["num_heads"] == 2
    assert g.num_params() == sum(p.numel() for p in m.parameters())
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert_matches_module(g, m, x)
    # MACs by hand: the patch conv, per layer attention and the MLP, the head
    length, e, mlp, layers = 5, 16, 32, 2
    per_layer = 4 * length * e * e + 2 * length * length * e + 2 * length * e * mlp
    assert costmodels.count(g).macs == 4 * e * 3 * 16 * 16 + layers * per_layer + e * 10


def test_lowered_vit_imports_back_op_for_op():
    g = from_torch(_small_vit(), torch.randn(1, 3, 32, 32))
    gm = to_fx(g).eval()
    g2 = from_torch(gm, torch.randn(1, 3, 32, 32))
    assert sorted(n.op for n in g2.nodes()) == sorted(n.op for n in g.nodes())
    assert g2.num_params() == g.num_params()


def test_token_indexing_and_learned_operands():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.randn(1, 6, 4))
            self.gate = nn.Parameter(torch.rand(6, 4) + 0.5)
            self.shift = nn.Parameter(torch.randn(6, 4))
            self.cls = nn.Parameter(torch.randn(1, 1, 4))

        def forward(self, x):
            n = x.size(0)
            x = torch.cat([self.cls.expand(n, -1, -1), (x + self.bias) * self.gate - self.shift], dim=1)
            return torch.cat([x[:, 0], x[:, -1, 1:3], x[:, 2:5].flatten(1)], dim=1)

    torch.manual_seed(0)
    m = Net()
    g = from_torch(m, torch.randn(2, 6, 4))
    assert sorted(n.id for n in g.nodes("param")) == ["bias", "cls", "gate", "shift"]
    assert {"mul", "sub", "slice", "flatten"} <= {n.op for n in g.nodes()}
    assert g.num_params() == sum(p.numel() for p in m.parameters())
    x = torch.randn(3, 6, 4)
    with torch.no_grad():
        ref = m(x).numpy()
    assert ref.shape == (3, 4 + 2 + 12)
    np.testing.assert_allclose(_ort(g, x.numpy()), ref, rtol=0, atol=1e-5)

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.randn(6, 4))

        def forward(self, x):
            return x + self.p - self.p

    with pytest.raises(UnsupportedModelError, match="no weight tying"):
        from_torch(Shared(), torch.randn(2, 6, 4))


def test_learned_operands_that_do_not_fit_are_refused():
    class Broadcast(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.randn(1, 1, 4))

        def forward(self, x):
            return x + self.p  # broadcasts over the tokens: archir's add needs equal shapes

    class NotBatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.randn(1, 1, 4))

        def forward(self, x):
            return torch.cat([self.p.expand(2, -1, -1), x], dim=1)  # a literal 2, not x's batch size

    with pytest.raises(UnsupportedModelError, match="broadcasts"):
        from_torch(Broadcast(), torch.randn(2, 6, 4))
    with pytest.raises(UnsupportedModelError, match="batch size"):
        from_torch(NotBatch(), torch.randn(2, 6, 4))


# --------------------------------------------------------------------------- passes on a ViT


def test_widen_and_prune_on_vit_skip_with_reasons():
    g = from_torch(_small_vit(), torch.randn(1, 3, 32, 32))
    cp = passes.coupling.analyze(g)
    assert cp.rule("encoder.layers.encoder_layer_0.self_attention").kind == "opaque"
    assert passes.coupling.analyze(g, strict=False).rule("class_token").kind == "opaque"
    with pytest.raises(passes.PreconditionError):
        passes.widen(g, node="conv_proj", out_channels=32)
    small, report = passes.prune_channels(g, ratio=0.5, criterion="l1")
    small.validate()
    assert report.skipped and all(k.reason for k in report.skipped)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(to_fx(small).eval()(x).numpy(), to_fx(g).eval()(x).numpy(), atol=1e-5)


# --------------------------------------------------------------------------- random graphs with token blocks


@given(graphs(max_nodes=10, transformer=True), st.integers(1, 3))
def test_random_token_graphs_agree_in_fx_and_ort_read_back_and_prune_validly(g, batch):
    xs = input_arrays(g, batch=batch)
    with torch.no_grad():
        ref = to_fx(g).eval()(*[torch.tensor(x) for x in xs])
    refs = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
    s = ort.InferenceSession(to_onnx(g).SerializeToString(), providers=["CPUExecutionProvider"])
    for r, o in zip(refs, s.run(None, dict(zip(g.inputs, xs)))):
        np.testing.assert_allclose(o, r, rtol=1e-4, atol=1e-4)
    # archir's ONNX reads back: the token blocks as param and attention nodes again
    from archir.frontend import from_onnx

    g2 = from_onnx(to_onnx(g))
    for op in ("param", "attention", "rel_attention", "window_attention", "window_attention_v2"):
        assert len(list(g2.nodes(op))) == len(list(g.nodes(op)))
    with torch.no_grad():
        back = to_fx(g2).eval()(*[torch.tensor(x) for x in xs])
    for r, o in zip(refs, back if isinstance(back, tuple) else (back,)):
        np.testing.assert_allclose(o.numpy(), r, rtol=1e-4, atol=1e-4)
    # widen and prune follow channels up to a param / attention and never through them: the pruned graph is valid
    # and, with nothing removed next to them, each token block is unchanged
    small, report = passes.prune_channels(g, ratio=0.5, criterion="l1")
    small.validate()
    for n in [*g.nodes("attention"), *g.nodes("rel_attention")]:
        assert small.node(n.id).type == n.type
        for k, a in n.params.items():
            np.testing.assert_array_equal(small.node(n.id).params[k], a)
    for n in g.nodes("param"):
        np.testing.assert_array_equal(small.node(n.id).params["value"], n.params["value"])
    for n in [*g.nodes("window_attention"), *g.nodes("window_attention_v2")]:  # swin: as attention
        assert small.node(n.id).type == n.type
        for k, a in n.params.items():
            np.testing.assert_array_equal(small.node(n.id).params[k], a)
