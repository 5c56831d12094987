"""``archir.frontend.from_onnx``: archir's own exports read back op for op, torch exports, and
every refusal of the safe loader (external data, custom domains, size caps).

The CNN families through ``torch.onnx.export`` are in ``test_frontend_families.py``.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import archir
from archir import samples
from archir.frontend import FrontendError, UnsafeModelError, UnsupportedModelError, from_onnx


def _same(g1, g2, batch=2, seed=3):
    x = [torch.randn(batch, *g1.node(i).type.shape, generator=torch.Generator().manual_seed(seed + k))
         for k, i in enumerate(g1.inputs)]
    with torch.no_grad():
        a = archir.lower.to_fx(g1).eval()(*x)
        b = archir.lower.to_fx(g2).eval()(*x)
    assert float(a.abs().max()) > 1e-3
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- archir's own exports


@pytest.mark.parametrize("name", ["chain", "resnet_like", "densenet_like", "mobilenet_like"])
def test_samples_round_trip_with_their_ids(name):
    g = samples.SAMPLES[name]()
    g2 = from_onnx(archir.lower.to_onnx(g))
    assert g2.meta["frontend"]["source"] == "onnx"
    kept = {n.id: n.op for n in g.nodes() if n.op not in ("identity", "dropout")}  # ONNX Identity: aliases
    assert {n.id: n.op for n in g2.nodes()} == kept
    assert g2.num_params() == g.num_params()
    _same(g, g2)


def _every_op_graph():
    g = archir.Graph("ops")
    x = g.input("x", (4, 9, 9))
    h = g.add("conv2d", x, out_channels=6, kernel_size=[3, 1], stride=[1, 2], padding=[1, 0], groups=2, name="conv")
    h = g.add("batchnorm2d", h, affine=False, name="bn")
    h = g.add("scale", h, name="scale")
    a = g.add("relu6", h, name="r6")
    b = g.add("hardsigmoid", g.add("hardswish", h, name="hsw"), name="hsig")
    h = g.add("mul", a, b, name="mul")
    h = g.add("silu", g.add("tanh", h, name="tanh"), name="silu")
    s = g.add("sigmoid", h, name="sig")
    h = g.add("add", g.add("relu", h, name="relu"), g.add("mul", s, g.add("zero", s, name="z"), name="mz"), name="add")
    gate = g.add("global_avgpool", h, name="gap")
    h = g.add("mul", h, gate, name="se")  # broadcasting (C, H, W) * (C, 1, 1)
    p1 = g.add("maxpool2d", h, kernel_size=3, stride=2, ceil_mode=True, name="mp")          # 9x5 -> 4x2
    p2 = g.add("avgpool2d", h, kernel_size=3, stride=2, padding=1, count_include_pad=False, name="ap")  # 5x3
    p2 = g.add("adaptive_avgpool2d", p2, output_size=[4, 2], name="adapt")                   # uneven windows
    h = g.add("concat", p1, p2, dim=1, name="cat")
    up = g.add("adaptive_avgpool2d", g.add("global_avgpool", h, name="gap2"), output_size=3, name="up")  # 1 -> 3
    even = g.add("adaptive_avgpool2d", h, output_size=[2, 1], name="even")                   # divides: AveragePool
    f1 = g.add("flatten", even, name="flat")
    f2 = g.add("flatten", up, start_dim=2, name="flat2")                                    # (C, 9)
    l2 = g.add("linear", f2, out_features=3, name="lin_mat")                                # MatMul + Add
    l3 = g.add("linear", l2, out_features=2, bias=False, name="lin_nobias")                 # MatMul
    l1 = g.add("linear", g.add("dropout", f1, p=0.3, name="drop"), out_features=24, name="gemm")  # Gemm
    out = g.add("add", g.add("flatten", l3, name="flat3"), l1, name="out")
    g.set_outputs(out)
    g.init_params(0)
    samples.randomize_bn(g, 1)
    return g.validate()


def test_every_op_reads_back_op_for_op():
    g = _every_op_graph()
    g2 = from_onnx(archir.lower.to_onnx(g))
    ops = {n.id: n.op for n in g2.nodes()}
    expected = {n.id: n.op for n in g.nodes() if n.op not in ("dropout",)}
    expected["even"] = "avgpool2d"  # adaptive pooling with equal windows is exported as a plain AveragePool
    assert ops == expected
    assert g2.node("even").attrs["kernel_size"] == 2 and g2.node("even").attrs["stride"] == 2  # 4x2 -> 2x1
    assert g2.node("adapt").attrs["output_size"] == [4, 2] and g2.node("up").attrs["output_size"] == 3
    assert g2.node("mp").type == g.node("mp").type
    assert g2.node("conv").attrs == g.node("conv").attrs
    assert g2.node("ap").attrs["count_include_pad"] is False
    assert g2.node("flat2").attrs["start_dim"] == 2 and not g2.node("lin_nobias").attrs["bias"]
    _same(g, g2)


@pytest.mark.parametrize("size,dilation", [(8, 1), (10, 2)])
def test_maxpool_ceil_mode_reads_back(size, dilation):
    g = archir.Graph("mp")
    x = g.input("x", (2, size, size))
    g.set_outputs(g.add("maxpool2d", x, kernel_size=3, stride=2, padding=1, dilation=dilation, ceil_mode=True,
                        name="mp"))
    g.validate()
    g2 = from_onnx(archir.lower.to_onnx(g))
    assert g2.node("mp").attrs == g.node("mp").attrs  # ceil_mode recovered from ONNX's end padding
    _same(g, g2)


def test_file_and_bytes_inputs(tmp_path):
    g = samples.chain()
    proto = archir.lower.to_onnx(g)
    path = tmp_path / "chain.onnx"
    onnx.save(proto, path)
    for src in (path, str(path), proto.SerializeToString()):
        _same(g, from_onnx(src))
    assert from_onnx(path, name="renamed").name == "renamed"


def test_torch_export_names_become_module_paths():
    from tests.archir.test_frontend_families import TinyResNeXt, _torch_export_onnx, randomize

    m = randomize(TinyResNeXt())
    x = torch.randn(2, 3, 32, 32)
    g = from_onnx(_torch_export_onnx(m, x))
    assert "layer1.0.conv1.conv" in g and "layer1.0.add" in g and g.node("fc.gemm").op == "linear"
    with torch.no_grad():
        torch.testing.assert_close(archir.lower.to_fx(g).eval()(x), m(x), atol=1e-4, rtol=1e-4)


def test_torch_dynamo_export_reads_back_with_module_paths():
    import warnings

    from tests.archir.test_frontend_families import TinyResNeXt, randomize

    m = randomize(TinyResNeXt())
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(m, (x,), dynamo=True, verbose=False,
                                 dynamic_shapes=({0: torch.export.Dim("batch")},))
    g = from_onnx(prog.model_proto)
    # dynamo's exporter records module scopes in node metadata (BN is folded into the convs)
    assert g.node("layer1.0.add").op == "add" and g.node("layer1.0.relu").op == "relu"
    assert g.node("fc").op == "linear"
    with torch.no_grad():
        torch.testing.assert_close(archir.lower.to_fx(g).eval()(x), m(x), atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- hand-made models and refusals


def _model(nodes, inits=(), inputs=None, outputs=None, opset=17, functions=(), **kw):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "hand", inputs, outputs, initializer=list(inits))
    ops = [helper.make_opsetid("", opset)] + [helper.make_opsetid(f.domain, 1) for f in functions]
    return helper.make_model(graph, opset_imports=ops, functions=list(functions), **kw)


def _conv_model(weight_name="w"):
    w = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), weight_name)
    return _model([helper.make_node("Conv", ["x", weight_name], ["y"], name="conv")], [w])


def test_every_unsupported_onnx_node_is_listed():
    m = _model([helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2, 3], name="tr"),
                helper.make_node("Relu", ["t"], ["r"], name="relu"),
                helper.make_node("Hardmax", ["r"], ["s"], axis=1, name="sm"),
                helper.make_node("Add", ["x", "c"], ["y"], name="addc")],
               [numpy_helper.from_array(np.ones((1,), np.float32), "c")])
    with pytest.raises(UnsupportedModelError) as e:
        from_onnx(m)
    got = [(u.what, u.where) for u in e.value.unsupported]
    assert got == [("ONNX Transpose", "tr"), ("ONNX Hardmax", "sm"), ("ONNX Add", "addc")]
    assert "constant" in e.value.unsupported[2].reason


@pytest.mark.parametrize("node,reason", [
    (helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 0, 0]), "not symmetric"),
    (helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER"), "auto_pad"),
    (helper.make_node("Clip", ["x", "lo"], ["y"]), r"Clip\(-1.0, inf\)"),  # Clip(lo, hi) is a hardtanh
    (helper.make_node("HardSigmoid", ["x"], ["y"], alpha=0.2), "HardSigmoid"),
    (helper.make_node("ReduceMean", ["x"], ["y"], axes=[0]), "ReduceMean over axes.*batch"),
    (helper.make_node("Flatten", ["x"], ["y"], axis=2), "Flatten"),
    (helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], training_mode=1), "training_mode"),
    (helper.make_node("Conv", ["x", "x"], ["y"]), "not a constant"),
])
def test_onnx_settings_without_an_ir_equivalent(node, reason):
    inits = [numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w"),
             numpy_helper.from_array(np.array(-1.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(1.0, np.float32), "hi")] + [
        numpy_helper.from_array(np.ones(2, np.float32), n) for n in "sbmv"]
    with pytest.raises(UnsupportedModelError, match=reason):
        from_onnx(_model([node], inits))


def test_inputs_need_fixed_sizes_after_the_batch():
    m = _conv_model()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    with pytest.raises(FrontendError, match="fixed size"):
        from_onnx(m)


def test_custom_domains_and_local_functions_are_refused():
    w = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    m = _model([helper.make_node("Conv", ["x", "w"], ["c"]),
                helper.make_node("MyOp", ["c"], ["y"], domain="com.evil", name="mine")], [w])
    with pytest.raises(UnsafeModelError, match=r"custom op domains.*MyOp \(domain 'com\.evil'\) at mine"):
        from_onnx(m)
    fn = helper.make_function("local.fns", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                              [helper.make_opsetid("", 17)])
    m = _model([helper.make_node("Relu", ["x"], ["y"])], functions=[fn])
    with pytest.raises(UnsafeModelError, match="local function local.fns.Twice"):
        from_onnx(m)


def _external(tmp_path, location: str, *, data: bytes | None = None, length: int | None = None):
    """A conv model whose weight points at external data ``location``; the data file is written beside it."""
    m = _conv_model()
    t = m.graph.initializer[0]
    raw = np.arange(4, dtype=np.float32).reshape(2, 2, 1, 1).tobytes()
    t.ClearField("float_data")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in [("location", location), ("offset", "0"), ("length", str(length if length is not None else 16))]:
        e = t.external_data.add()
        e.key, e.value = k, v
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    if data is not False:
        (model_dir / "w.bin").write_bytes(raw if data is None else data)
    path = model_dir / "net.onnx"
    path.write_bytes(m.SerializeToString())
    return path


def test_safe_external_data_loads(tmp_path):
    path = _external(tmp_path, "w.bin")
    g = from_onnx(path)
    np.testing.assert_array_equal(g.node("conv").params["weight"].ravel(), np.arange(4, dtype=np.float32))


def test_external_data_written_by_onnx_itself_loads(tmp_path):
    g = samples.chain()
    proto = archir.lower.to_onnx(g)
    onnx.save(proto, tmp_path / "net.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="net.data", size_threshold=0)
    _same(g, from_onnx(tmp_path / "net.onnx"))


@pytest.mark.parametrize("location,match", [
    ("/etc/passwd", "absolute"),
    ("../secret.bin", "leaves the model's folder"),
    ("sub/../../secret.bin", "leaves the model's folder"),
    ("missing.bin", "does not exist"),
])
def test_unsafe_external_data_is_refused(tmp_path, location, match):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    with pytest.raises(UnsafeModelError, match=match):
        from_onnx(_external(tmp_path, location))


def test_symlinked_external_data_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(np.zeros(4, np.float32).tobytes())
    path = _external(tmp_path, "link.bin")
    os.symlink(tmp_path / "secret.bin", path.parent / "link.bin")
    with pytest.raises(UnsafeModelError, match="symlink"):
        from_onnx(path)


def test_external_range_past_the_end_and_in_memory_external_are_refused(tmp_path):
    with pytest.raises(UnsafeModelError, match="past the end"):
        from_onnx(_external(tmp_path, "w.bin", length=64))
    path = _external(tmp_path, "w.bin")
    with pytest.raises(UnsafeModelError, match="in-memory proto"):
        from_onnx(onnx.load(str(path), load_external_data=False))


def test_size_caps(tmp_path):
    proto = archir.lower.to_onnx(samples.chain())
    path = tmp_path / "net.onnx"
    onnx.save(proto, path)
    with pytest.raises(UnsafeModelError, match="more than 100"):
        from_onnx(path, max_file_bytes=100)
    with pytest.raises(UnsafeModelError, match="bytes of weights"):
        from_onnx(path, max_weight_bytes=1000)
    with pytest.raises(UnsafeModelError, match="external data exceeds"):
        from_onnx(_external(tmp_path, "w.bin"), max_weight_bytes=8)


def test_node_count_and_bytes_caps(monkeypatch):
    from archir.frontend import onnx_import

    proto = archir.lower.to_onnx(samples.chain())
    monkeypatch.setattr(onnx_import, "MAX_NODES", 3)
    with pytest.raises(UnsafeModelError, match="nodes, more than 3"):
        from_onnx(proto)
    monkeypatch.undo()
    with pytest.raises(UnsafeModelError, match="bytes, more than 10"):
        from_onnx(proto.SerializeToString(), max_file_bytes=10)


def test_bad_paths_and_objects(tmp_path):
    with pytest.raises(FrontendError, match="no such file"):
        from_onnx(tmp_path / "nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff\x00not onnx at all" * 10)
    with pytest.raises(FrontendError, match="not an ONNX model"):
        from_onnx(tmp_path / "junk.onnx")
    with pytest.raises(FrontendError, match="needs a path"):
        from_onnx(42)
