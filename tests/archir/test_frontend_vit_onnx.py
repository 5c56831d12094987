"""ViT from torch's own ONNX exports (TorchScript and dynamo) reads back through ``from_onnx`` (issue 17, item 5).

``torch.onnx.export`` writes ``nn.MultiheadAttention(batch_first=True)`` as its sequence-first implementation
(the batch transposed to dim 1, one packed in-projection on ``(L, N, E)``, the heads split by reshapes whose
targets are computed from run-time shapes, ``Gemm`` on ``(L*N, E)``, the batch transposed back) and computes the
class token's ``Expand`` target with ``Where``/``Equal``. ``from_onnx`` evaluates that shape arithmetic exactly
with the batch as a symbol and proves the attention region is ``nn.MultiheadAttention`` (one ``attention`` node).
Checked here: the small ViT of ``test_frontend_vit`` exported both ways imports op for op with exact weights,
``to_fx`` matches ONNX Runtime on the file (1e-5) and the torch module (1e-4) at another batch size; random
``nn.MultiheadAttention`` shapes read back (hypothesis); mutated files are refused, naming the node and why.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from archir.frontend import UnsupportedModelError, from_onnx, from_torch
from archir.lower import to_fx
from tests.archir.parity import ort_file as _ort
from tests.archir.test_frontend_vit import _randomize, _small_vit

ort = pytest.importorskip("onnxruntime")


def _export(m: nn.Module, shape, dynamo: bool, batch: int = 2) -> onnx.ModelProto:
    """``m`` exported with a dynamic batch (dynamo specialises a sample batch of 1, so the sample has 2)."""
    x = torch.randn(batch, *shape)
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if dynamo:
                pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
                prog = torch.onnx.export(m, (x,), dynamo=True, verbose=False,
                                         dynamic_shapes=({0: torch.export.Dim("batch")},))
                return prog.model_proto
            buf = io.BytesIO()
            torch.onnx.export(m, (x,), buf, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
            return onnx.load_from_string(buf.getvalue())
    finally:
        logging.disable(logging.NOTSET)



@pytest.fixture(scope="module")
def vit():
    return _small_vit()


@pytest.fixture(scope="module", params=["torchscript", "dynamo"])
def exported(request, vit):
    return request.param, _export(vit, (3, 32, 32), dynamo=request.param == "dynamo")


def test_torch_exports_of_vit_import_with_parity_and_exact_weights(vit, exported):
    kind, proto = exported
    g = from_onnx(proto)
    ref_g = from_torch(vit, torch.randn(1, 3, 32, 32))
    # op for op as from_torch (the patch flattening, a Reshape to (N, E, 4) in the file, reads as reshape)
    want = Counter(n.op for n in ref_g.nodes() if n.op != "dropout")
    got = Counter(n.op for n in g.nodes())
    want["reshape"] += want.pop("flatten") - 1
    got["reshape"] += got.pop("flatten") - 1
    assert got == want
    attn = sorted(g.nodes("attention"), key=lambda n: n.id)
    assert [n.id for n in attn] == [f"encoder.layers.encoder_layer_{k}.self_attention" for k in range(2)]
    for k, n in enumerate(attn):
        mha = vit.encoder.layers[k].self_attention
        assert n.attrs["num_heads"] == mha.num_heads == 2 and n.attrs["bias"] is True
        for key, p in [("in_proj_weight", mha.in_proj_weight), ("in_proj_bias", mha.in_proj_bias),
                       ("out_proj_weight", mha.out_proj.weight), ("out_proj_bias", mha.out_proj.bias)]:
            np.testing.assert_array_equal(n.params[key], p.detach().numpy())
    (cls,) = [n for n in g.nodes("param") if n.type.shape == (1, 16)]
    np.testing.assert_array_equal(cls.params["value"], vit.class_token.detach().numpy().reshape(1, 16))
    assert g.num_params() == sum(p.numel() for p in vit.parameters())
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))  # not the export's batch of 2
    with torch.no_grad():
        ref = vit(x).numpy()
        out = to_fx(g).eval()(x).numpy()
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(out, _ort(proto, x.numpy()), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


class _Attn(nn.Module):
    def __init__(self, e, heads, bias):
        super().__init__()
        self.mha = nn.MultiheadAttention(e, heads, bias=bias, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


def _check_mha(m: _Attn, length: int, proto: onnx.ModelProto):
    g = from_onnx(proto)
    assert [n.op for n in g.nodes()] == ["input", "attention"]
    (a,) = g.nodes("attention")
    assert a.attrs["num_heads"] == m.mha.num_heads
    np.testing.assert_array_equal(a.params["in_proj_weight"], m.mha.in_proj_weight.detach().numpy())
    np.testing.assert_array_equal(a.params["out_proj_weight"], m.mha.out_proj.weight.detach().numpy())
    assert ("in_proj_bias" in a.params) == (m.mha.in_proj_bias is not None)
    x = torch.randn(3, length, m.mha.embed_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m(x).numpy()
        out = to_fx(g).eval()(x).numpy()
    np.testing.assert_allclose(out, _ort(proto, x.numpy()), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 3), st.sampled_from([1, 2, 4]), st.integers(1, 6), st.booleans(), st.integers(0, 99))
def test_random_multihead_attention_reads_back_from_torchscript_export(d, heads, length, bias, seed):
    torch.manual_seed(seed)
    m = _randomize(_Attn(2 * d * heads, heads, bias), seed)
    _check_mha(m, length, _export(m, (length, 2 * d * heads), dynamo=False))


@pytest.mark.parametrize("bias", [True, False, "zero out_proj.bias"])
def test_multihead_attention_without_bias_and_four_heads_reads_back_from_dynamo(bias):
    torch.manual_seed(0)
    m = _randomize(_Attn(16, 4, bool(bias)))
    if bias == "zero out_proj.bias":  # torchvision's init: dynamo's exporter drops the zero bias of the Gemm
        with torch.no_grad():
            m.mha.out_proj.bias.zero_()
    proto = _export(m, (7, 16), dynamo=True)
    _check_mha(m, 7, proto)
    if bias == "zero out_proj.bias":
        assert all(len(n.input) == 2 for n in proto.graph.node if n.op_type == "Gemm")
        (a,) = from_onnx(proto).nodes("attention")
        np.testing.assert_array_equal(a.params["out_proj_bias"], np.zeros(16, np.float32))


# --------------------------------------------------------------------------- refusals


def _mutated(proto: onnx.ModelProto, edit) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    edit(m)
    return m


def _set_init(m, name, value):
    for k, t in enumerate(m.graph.initializer):
        if t.name == name:
            m.graph.initializer[k].CopyFrom(numpy_helper.from_array(value, name))
            return
    raise AssertionError(name)


def _node(m, op, pred=lambda n: True):
    return next(n for n in m.graph.node if n.op_type == op and pred(n))


def test_mutated_dynamo_exports_are_refused_naming_the_node(vit):
    proto = _export(vit, (3, 32, 32), dynamo=True)
    inits = {t.name: t for t in proto.graph.initializer}
    scale = _node(proto, "Mul", lambda n: n.input[1] in inits and math.prod(inits[n.input[1]].dims) == 1).input[1]

    # a wrong scale constant: the scores are no longer scaled by 1/sqrt(d)
    bad = _mutated(proto, lambda m: _set_init(m, scale, np.asarray([0.6], np.float32)))
    with pytest.raises(UnsupportedModelError, match=r"(?s)Transpose.*node_transpose.*scaled by 0\.36\d*, not 1/sqrt\(8\)"):
        from_onnx(bad)

    # the context transposed to (N, L, h, d) instead of (L, N, h, d): the Reshape to (L*N, E) and back to (L, N, E)
    # then mixes tokens of different samples
    def perm(m):
        n = _node(m, "Transpose", lambda n: list(n.attribute[0].ints) == [2, 0, 1, 3])
        n.attribute[0].ints[:] = [0, 2, 1, 3]

    with pytest.raises(UnsupportedModelError, match=r"(?s)Reshape to \[5, N, 16\] at Reshape node_Reshape_\d+ does "
                                                    r"not keep the layout.*mixes the batch"):
        from_onnx(_mutated(proto, perm))


def test_mutated_torchscript_head_count_is_refused_naming_the_node(vit):
    proto = _export(vit, (3, 32, 32), dynamo=False)
    # the head size E // num_heads: Div of the embedding dim by a constant 2 (num_heads); 4 makes the head reshape
    # (L, N*2, 4) of (L, N, 16), which no longer holds the same elements
    div = _node(proto, "Div", lambda n: "encoder_layer_0/self_attention" in n.name)
    const = _node(proto, "Constant", lambda n: n.output[0] == div.input[1])
    assert numpy_helper.to_array(const.attribute[0].t).tolist() == 2

    def edit(m):
        c = _node(m, "Constant", lambda n: n.output[0] == div.input[1])
        c.attribute[0].t.CopyFrom(numpy_helper.from_array(np.asarray(4, np.int64)))

    with pytest.raises(UnsupportedModelError, match=r"(?s)encoder_layer_0/self_attention/Transpose.*the target shape "
                                                    r"is not known exactly at Reshape /encoder/layers/encoder_layer_0"):
        from_onnx(_mutated(proto, edit))


def _shape_model(nodes, inits, out_shape):
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_batch_shape_arithmetic_is_exact_or_refused():
    """``Reshape(x, Concat(Shape(x)[0] * k, ...))``: k = 1 keeps the batch; k = 2 mixes samples; a Mod of the batch
    is not a constant (never guessed from one batch size)."""
    def model(k, op="Mul"):
        nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
                 helper.make_node(op, ["n", "k"], ["nk"]), helper.make_node("Unsqueeze", ["nk", "axes"], ["nv"]),
                 helper.make_node("Concat", ["nv", "rest"], ["t"], axis=0),
                 helper.make_node("Reshape", ["x", "t"], ["y"])]
        return _shape_model(nodes, {"zero": np.asarray(0, np.int64), "k": np.asarray(k, np.int64),
                                    "axes": np.asarray([0], np.int64), "rest": np.asarray([8, 3], np.int64)}, None)

    g = from_onnx(model(1))
    assert [n.attrs["shape"] for n in g.nodes("reshape")] == [[8, 3]]
    x = np.random.default_rng(0).normal(size=(3, 4, 6)).astype(np.float32)
    np.testing.assert_array_equal(to_fx(g).eval()(torch.tensor(x)).numpy(), x.reshape(3, 8, 3))
    with pytest.raises(UnsupportedModelError, match=r"(?s)Reshape.*\[2\*N, 8, 3\].*mix samples"):
        from_onnx(model(2))
    with pytest.raises(UnsupportedModelError, match=r"ONNX Mod at node #2: .*run-time batch size N.* not an exact"):
        from_onnx(model(2, "Mod"))  # N mod 2 depends on the batch: never folded
