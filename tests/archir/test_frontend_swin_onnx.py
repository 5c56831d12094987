"""swin-onnx: Swin V1, Swin V2 and MaxViT from torch's own ONNX exports (TorchScript with a dynamic batch, dynamo
with a static and with a dynamic batch) read back through ``from_onnx`` (issue 17,
item 5).

Each attention module (``ShiftedWindowAttention``, ``ShiftedWindowAttentionV2``,
``RelativePositionalMultiHeadAttention``) is read as one ``window_attention`` / ``window_attention_v2`` /
``rel_attention`` node after a proof by evaluation (archir/frontend/onnx_regions.py); the
rest maps op for op. Checked: one attention node per block, ``to_fx`` vs ONNX Runtime on the file (1e-5) and vs
the torch module (1e-4), parameter counts equal to the module's; a file whose attention region was altered after
export (a weight, the folded position bias, the Softmax axis) is refused naming the module, and imports (wrongly)
when the proof's tolerance is disabled, so the proof is what refuses it.

dynamo with a dynamic batch (``dynamic_shapes={0: Dim("batch")}``): the same checks at batches 1 and 3 (neither the
export's); Swin's head flatten is then ``Reshape [-1]`` + ``Gather`` by ``Range(0, N) * P + offsets`` (its
``as_strided``), read as a per-sample reshape after a symbolic proof; an edited index (offsets swapped, the stride
changed, a node the proof does not evaluate) is refused naming the node.
"""

from __future__ import annotations

import functools
import io
import logging
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from archir.frontend import UnsupportedModelError, from_onnx, onnx_regions
from archir.frontend.onnx_regions import RegionMismatchError
from archir.lower import to_fx
from tests.archir.parity import assert_matches_file_at_batches, dynamo_export, ort_file as _ort

ort = pytest.importorskip("onnxruntime")
tvs = pytest.importorskip("torchvision.models.swin_transformer")
tvm = pytest.importorskip("torchvision.models.maxvit")

BATCH = 2  # dynamo's fixed batch


def _randomize(m):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():  # torchvision zeroes the biases: random ones make every weight slot count
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return m.eval()


def _swin():
    torch.manual_seed(0)
    return _randomize(tvs.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                          window_size=[7, 7], num_classes=10))


def _swinv2():
    """Swin V2 with 2 and 3 heads (2: cpb_mlp's second weight (512, 2) has the first's transposed shape), shifted
    windows of 3 that do not divide the 8 x 8 and 4 x 4 maps (padded)."""
    torch.manual_seed(0)
    return _randomize(tvs.SwinTransformer(patch_size=[4, 4], embed_dim=12, depths=[2, 2], num_heads=[2, 3],
                                          window_size=[3, 3], num_classes=10, block=tvs.SwinTransformerBlockV2,
                                          downsample_layer=tvs.PatchMergingV2))


def _maxvit():
    torch.manual_seed(0)
    return _randomize(tvm.MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16, 32],
                                 block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0, num_classes=10))


def _export(m, dynamo: bool) -> onnx.ModelProto:
    x = torch.randn(BATCH, 3, 32, 32)
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if dynamo:
                pytest.importorskip("onnxscript")
                return torch.onnx.export(m, (x,), dynamo=True, verbose=False).model_proto
            buf = io.BytesIO()
            torch.onnx.export(m, (x,), buf, dynamo=False, opset_version=17, input_names=["x"],
                              dynamic_axes={"x": {0: "batch"}})
            return onnx.load_from_string(buf.getvalue())
    finally:
        logging.disable(logging.NOTSET)



_MODELS = {"swin": (_swin, "window_attention", 4), "maxvit": (_maxvit, "rel_attention", 4),
           "swinv2": (_swinv2, "window_attention_v2", 4)}


@functools.cache
def _exported(family, kind):
    m = _MODELS[family][0]()
    return family, kind, m, _export(m, kind == "dynamo")


@pytest.fixture(scope="module", params=[(f, k) for f in _MODELS for k in ("torchscript", "dynamo")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def exported(request):
    return _exported(*request.param)


@pytest.fixture(scope="module", params=list(_MODELS))
def ts_exported(request):
    """The TorchScript export only: the alteration tests use one exporter, which keeps the suite quick (Swin V2's
    "bias" is its coordinate table, which the candidates take from archir.ops, not from the file)."""
    return _exported(request.param, "torchscript")


def test_torch_exports_import_with_one_attention_node_per_block(exported):
    family, kind, m, proto = exported
    _, op, blocks = _MODELS[family]
    g = from_onnx(proto)
    ops = [n.op for n in g.nodes()]
    assert ops.count(op) == blocks
    assert not {"attention", "window_attention_v2", "rel_attention", "window_attention"} - {op} & set(ops)
    # both exporters fold a BatchNorm that follows a bias-free conv into the conv (MaxViT's stem and MBConv convs;
    # not the pre-norm BN that follows no conv): the file holds the conv's new bias (C) instead of the BN's (2 C)
    folded = sum(b.num_features for k, b in m.named_modules() if isinstance(b, torch.nn.BatchNorm2d) and
                 not k.endswith("pre_norm"))
    assert g.num_params() == sum(p.numel() for p in m.parameters()) - folded
    batch = BATCH if kind == "dynamo" else 3  # TorchScript's batch axis is dynamic
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = to_fx(g).eval()(x).numpy()
        want = m(x).numpy()
    np.testing.assert_allclose(got, _ort(proto, x.numpy()), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _first_attention_init(proto, family, pred):
    """The first initializer read inside the first attention module's scope with a shape matching ``pred``."""
    scope = "attn" if family in ("swin", "swinv2") else "attn_layer.1"
    for n in proto.graph.node:
        if any(p.endswith(scope) for p in onnx_regions._paths(n)):
            for i in n.input:
                t = next((t for t in proto.graph.initializer if t.name == i), None)
                if t is not None and pred(numpy_helper.to_array(t).shape):
                    return t
    raise AssertionError("no such initializer in the attention region")


def _altered(proto, family, what):
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    if what == "softmax":
        n = next(n for n in p.graph.node if n.op_type == "Softmax")
        for a in n.attribute:
            if a.name == "axis":
                a.i = a.i - 1 if a.i > 0 else a.i - 1
                break
        else:
            n.attribute.append(onnx.helper.make_attribute("axis", -2))
        return p
    if what == "weight":  # the qkv projection
        t = _first_attention_init(p, family, lambda s: len(s) == 2 and 3 in (s[0] // max(s[1], 1), s[1] // s[0]))
    else:  # the folded position bias (1, heads, T, T) or (T * T, heads)
        t = _first_attention_init(p, family, lambda s: len(s) == 4 or (len(s) == 2 and s[0] > 3 * s[1] > 0 and
                                                                       s[0] != 3 * s[1]))
    a = numpy_helper.to_array(t).copy()
    a.reshape(-1)[1] += 0.5
    t.CopyFrom(numpy_helper.from_array(a, t.name))
    return p


def test_altered_weight_is_read_as_it_is(ts_exported):
    """A weight changed after export is still an attention of that kind: it imports with the file's weight."""
    family, kind, m, proto = ts_exported
    bad = _altered(proto, family, "weight")
    g = from_onnx(bad)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        got = to_fx(g).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _ort(bad, x), rtol=1e-5, atol=1e-5)
    op = _MODELS[family][1]
    first_bad, first_ok = (next(iter(h.nodes(op))) for h in (g, from_onnx(proto)))
    diff = np.abs(first_bad.params["qkv_weight"] - first_ok.params["qkv_weight"])
    assert np.isclose(diff.max(), 0.5) and np.count_nonzero(diff) == 1  # the one entry changed, as in the file


@pytest.mark.parametrize("what", ["bias", "softmax"])
def test_altered_region_is_refused_naming_the_module(ts_exported, what, monkeypatch):
    """One entry of the folded position bias (rows the index repeats no longer agree: no relative-position
    table gives it), or the Softmax axis: no candidate computes the region."""
    family, kind, m, proto = ts_exported
    bad = _altered(proto, family, what)
    with pytest.raises(RegionMismatchError, match=r"module '.*(attn|attn_layer\.1)'.*no candidate"):
        from_onnx(bad)
    monkeypatch.setattr(onnx_regions, "RTOL", float("inf"))  # the proof off: the altered file imports, wrongly
    g = from_onnx(bad)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        got = to_fx(g).eval()(torch.from_numpy(x)).numpy()
    assert np.abs(got - _ort(bad, x)).max() > 1e-3


def test_dynamo_window_attention_module_alone(tmp_path):
    torch.manual_seed(0)
    m = torch.nn.Sequential(tvs.ShiftedWindowAttention(16, [4, 4], [2, 2], num_heads=2)).eval()
    _randomize(m)
    x = torch.randn(2, 8, 8, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = torch.onnx.export(m, (x,), dynamo=True, verbose=False).model_proto
    g = from_onnx(proto)
    (wa,) = g.nodes("window_attention")
    assert wa.attrs["window_size"] == [4, 4] and wa.attrs["shift_size"] == [2, 2]
    with torch.no_grad():
        np.testing.assert_allclose(to_fx(g).eval()(x).numpy(), m(x).numpy(), rtol=1e-4, atol=1e-4)


def _v2_constant(proto, pred):
    """The first Swin V2 attention's constant (initializer) with a shape matching ``pred``, as a writable copy."""
    return _first_attention_init(proto, "swinv2", pred)


@pytest.mark.parametrize("what", ["table", "logit_scale"])
def test_swinv2_dynamo_altered_folded_constant_is_refused(what, monkeypatch):
    """dynamo folds cpb_mlp's first layer on the coordinate table to a (1, 5, 5, 512) constant, read back by least
    squares (archir/frontend/onnx_regions.py); one row changed is no such product: refused. The folded
    exp(clamp(logit_scale, max=log 100)) raised above 100 is no clamped value: refused (an entry below 100 is
    a logit scale, read as it is)."""
    family, kind, m, proto = _exported("swinv2", "dynamo")
    bad = onnx.ModelProto()
    bad.CopyFrom(proto)
    if what == "table":  # one row of the folded table (one relative offset's hidden vector)
        t = _v2_constant(bad, lambda s: len(s) == 4 and s[-1] > 2)
        a = numpy_helper.to_array(t).copy()
        a[0, 0, 0] += 0.5
    else:
        t = _v2_constant(bad, lambda s: len(s) == 3 and s[1:] == (1, 1))
        a = numpy_helper.to_array(t).copy()
        assert np.all(a < 100)  # exp of a clamped value
        a.reshape(-1)[0] = 150.0
    t.CopyFrom(numpy_helper.from_array(a, t.name))
    with pytest.raises(RegionMismatchError, match=r"module '.*attn'.*no candidate"):
        from_onnx(bad)
    monkeypatch.setattr(onnx_regions, "RTOL", float("inf"))  # the proof off: the altered file imports, wrongly
    g = from_onnx(bad)
    x = np.random.default_rng(0).standard_normal((BATCH, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        got = to_fx(g).eval()(torch.from_numpy(x)).numpy()
    assert np.abs(got - _ort(bad, x)).max() > 1e-3


def test_swinv2_torchscript_logit_scale_is_read_as_it_is():
    """TorchScript keeps logit_scale (heads, 1, 1) and clamps it in the graph: an edited one is a weight of the
    same op, imported with the file's value."""
    family, kind, m, proto = _exported("swinv2", "torchscript")
    bad = onnx.ModelProto()
    bad.CopyFrom(proto)
    t = _v2_constant(bad, lambda s: len(s) == 3 and s[1:] == (1, 1))
    a = numpy_helper.to_array(t).copy()
    a.reshape(-1)[0] += 0.5
    t.CopyFrom(numpy_helper.from_array(a, t.name))
    g = from_onnx(bad)
    first = next(iter(g.nodes("window_attention_v2")))
    np.testing.assert_array_equal(first.params["logit_scale"], a)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(to_fx(g).eval()(torch.from_numpy(x)).numpy(), _ort(bad, x), rtol=1e-5, atol=1e-5)


def test_cpb_fc1_recovered_by_least_squares_from_the_folded_table():
    """dynamo's folded ``coords @ W1^T + b1`` gives W1 and b1 back (float32 rounding) for a non-square window."""
    from archir.ops import window_coords_table

    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((16, 2)).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    folded = (window_coords_table(3, 4) @ w1.T + b1)[None].astype(np.float32)  # (1, 5, 7, 16)
    r = onnx_regions.Region("attn", [], "x", "y")
    got_w, got_b, win = onnx_regions._fc1_of_folded(r, folded)
    assert win == (3, 4)
    np.testing.assert_allclose(got_w, w1, atol=1e-5)
    np.testing.assert_allclose(got_b, b1, atol=1e-5)


@pytest.fixture(scope="module", params=list(_MODELS))
def dyn_exported(request):
    """dynamo with a dynamic batch (sample batch 2)."""
    pytest.importorskip("onnxscript")
    m = _MODELS[request.param][0]()
    return request.param, m, dynamo_export(m, (3, 32, 32))


def test_dynamo_dynamic_batch_imports_and_matches_at_two_batches(dyn_exported):
    family, m, proto = dyn_exported
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch is dynamic in the file
    _, op, blocks = _MODELS[family]
    g = from_onnx(proto)
    ops = [n.op for n in g.nodes()]
    assert ops.count(op) == blocks
    assert "gather" not in ops and not {"attention", "window_attention_v2", "rel_attention", "window_attention"} - {
        op} & set(ops)
    assert_matches_file_at_batches(g, m, proto, (3, 32, 32))


def _flat_gather(proto):
    """Swin's dynamo ``as_strided`` flatten: the Gather after ``Reshape [-1]``, and the nodes computing its index."""
    prod = {o: n for n in proto.graph.node for o in n.output}
    inits = {t.name: t for t in proto.graph.initializer}
    g = next(n for n in proto.graph.node if n.op_type == "Gather" and n.input[0] in prod and
             prod[n.input[0]].op_type == "Reshape" and prod[n.input[0]].input[1] in inits and
             numpy_helper.to_array(inits[prod[n.input[0]].input[1]]).tolist() == [-1])
    chain, stack = [], [g.input[1]]
    while stack:
        n = prod.get(stack.pop())
        if n is not None and n.op_type != "Shape":
            chain.append(n)
            stack.extend(n.input)
    return g, chain, inits


def _edit_index(proto, what):
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    g, chain, inits = _flat_gather(p)
    if what == "node":  # an op the proof does not evaluate: the last Add (of zeros) as Max(index, 0), the same index
        n = next(n for n in chain if n.op_type == "Add")
        n.op_type = "Max"
        return p, g, n.name
    if what == "offsets":  # two entries of the per-sample offsets arange(P) swapped: a permutation, no flatten
        t = next(inits[i] for n in chain if n.op_type == "Add" for i in n.input
                 if i in inits and numpy_helper.to_array(inits[i]).size > 1)
        a = numpy_helper.to_array(t).copy()
        a.reshape(-1)[[0, 1]] = a.reshape(-1)[[1, 0]]
    else:  # the stride P of Range(0, N) * P: samples overlap
        mul = next(n for n in chain if n.op_type == "Mul")
        t = next(inits[i] for i in mul.input if i in inits)
        a = numpy_helper.to_array(t) - 1
    t.CopyFrom(numpy_helper.from_array(a.astype(numpy_helper.to_array(t).dtype), t.name))
    return p, g, g.name


@pytest.mark.parametrize("dyn_exported", ["swin"], indirect=True)  # MaxViT's dynamo head has no as_strided
@pytest.mark.parametrize("what", ["offsets", "stride", "node"])
def test_dynamo_dynamic_batch_edited_flatten_index_is_refused_naming_the_node(dyn_exported, what):
    family, m, proto = dyn_exported
    bad, g, named = _edit_index(proto, what)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    if what == "offsets":  # the edit changes what the file computes (two channels of the head's input swapped)
        assert np.abs(_ort(bad, x) - _ort(proto, x)).max() > 1e-3
    with pytest.raises(UnsupportedModelError) as e:
        from_onnx(bad)
    msg = str(e.value)
    assert f"Gather {g.name!r}" in msg and f"{named!r}" in msg
    if what == "offsets":
        assert "index entry [n, 0, 0, 0] is 32 * n + 1, not 32 * n:" in msg
    elif what == "stride":
        assert "index entry [n, 0, 0, 0] is 31 * n, not 32 * n:" in msg
    else:
        assert "(Max) is not one of those ops" in msg


def _flat_gather_model(rng: str, offsets: np.ndarray) -> onnx.ModelProto:
    """x (N, 6) -> Reshape [-1] -> Gather by an index built from ``Range`` over the batch, shaped (N, 2, 3)."""
    h, T = onnx.helper, onnx.TensorProto
    c = [numpy_helper.from_array(np.asarray(v, np.int64), k) for k, v in [
        ("zero", 0), ("one", 1), ("two", 2), ("six", 6), ("three", 3), ("ax1", [1]), ("flat", [-1]),
        ("t", [-1, 2, 3]), ("off", offsets)]]
    nodes = [h.make_node("Shape", ["x"], ["s"], start=0, end=1), h.make_node("Squeeze", ["s"], ["N"])]
    if rng == "plain":  # Range(0, N, 1) * 6
        nodes += [h.make_node("Range", ["zero", "N", "one"], ["r"]), h.make_node("Mul", ["r", "six"], ["rs"])]
    elif rng == "shifted":  # (Range(2, N + 2, 1) - 2) * 6
        nodes += [h.make_node("Add", ["N", "two"], ["L"]), h.make_node("Range", ["two", "L", "one"], ["r0"]),
                  h.make_node("Sub", ["r0", "two"], ["r"]), h.make_node("Mul", ["r", "six"], ["rs"])]
    else:  # Range(0, 2 N, 2) * 3
        nodes += [h.make_node("Mul", ["N", "two"], ["L"]), h.make_node("Range", ["zero", "L", "two"], ["r"]),
                  h.make_node("Mul", ["r", "three"], ["rs"])]
    nodes += [h.make_node("Unsqueeze", ["rs", "ax1"], ["u"]), h.make_node("Add", ["u", "off"], ["i"]),
              h.make_node("Reshape", ["i", "t"], ["idx"]), h.make_node("Reshape", ["x", "flat"], ["xf"]),
              h.make_node("Gather", ["xf", "idx"], ["g"], axis=0, name="the_gather"),
              h.make_node("Relu", ["g"], ["y"])]
    graph = h.make_graph(nodes, "flat", [h.make_tensor_value_info("x", T.FLOAT, ["N", 6])],
                         [h.make_tensor_value_info("y", T.FLOAT, ["N", 2, 3])], initializer=c)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


@pytest.mark.parametrize("rng", ["plain", "shifted", "step2"])
def test_run_time_indexed_flatten_is_a_per_sample_reshape(rng):
    proto = _flat_gather_model(rng, np.arange(6)[None])
    onnx.checker.check_model(proto, full_check=True)
    g = from_onnx(proto)
    assert [n.op for n in g.nodes()] == ["input", "reshape", "relu"]
    fx = to_fx(g).eval()
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 6)).astype(np.float32)
        with torch.no_grad():
            got = fx(torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(got, _ort(proto, x))
        np.testing.assert_array_equal(got, np.maximum(x, 0).reshape(batch, 2, 3))


def test_run_time_indexed_gather_that_is_no_flatten_is_refused():
    proto = _flat_gather_model("plain", np.arange(6)[None, ::-1].copy())  # each sample reversed
    with pytest.raises(UnsupportedModelError, match=r"Gather 'the_gather': index entry \[n, 0, 0\] is 6 \* n \+ 5, "
                                                    r"not 6 \* n:"):
        from_onnx(proto)
