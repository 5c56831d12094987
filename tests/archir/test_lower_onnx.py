"""Tests of ``archir.lower.to_onnx``: checker, opset, dynamic batch, names, and agreement with
the fx lowering under ONNX Runtime (CPU) in eval mode (atol 1e-5, rtol 1e-4), checked with
``verify_onnx``."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

import archir
from archir import samples
from archir.lower import to_onnx, verify_onnx

ATOL, RTOL = 1e-5, 1e-4


def _inputs(g: archir.Graph, batch: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, *g.node(i).type.shape)).astype(np.float32) for i in g.inputs]


def _verified(g: archir.Graph, model, xs, atol: float = ATOL, rtol: float = RTOL):
    """``verify_onnx`` on the given inputs, raising on a mismatch; the outputs are kept."""
    return verify_onnx(g, model, inputs=xs, atol=atol, rtol=rtol, keep_values=True).raise_if_failed()


def _sample(name: str) -> archir.Graph:
    build = samples.SAMPLES[name]
    return build(cells=3) if name == "darts_like" else build()


@pytest.mark.parametrize("name", sorted(samples.SAMPLES))
def test_samples_export_check_and_match_fx(name):
    g = _sample(name)
    model = to_onnx(g)
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert [i.name for i in model.graph.input] == list(g.inputs)
    assert [o.name for o in model.graph.output] == list(g.outputs)
    for vi in (*model.graph.input, *model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and not dims[0].HasField("dim_value")
        want = g.node(vi.name).type.shape
        assert [d.dim_value for d in dims[1:]] == list(want)
    # every IR node's value keeps the node id as its ONNX name
    produced = {o for n in model.graph.node for o in n.output}
    assert {n.id for n in g.nodes() if n.op != "input"} <= produced
    for batch in (1, 3):
        r = _verified(g, model, _inputs(g, batch, seed=batch))
        assert len(r.ort_values) == len(r.fx_values) == len(g.outputs)
        assert all(o.shape == o.ort_shape == (batch, 10) for o in r.outputs)
    assert np.abs(r.fx_values[0]).max() > 1e-3  # a meaningful comparison, not zeros against zeros


def test_weights_are_initializers_named_after_nodes():
    g = samples.resnet_like()
    model = to_onnx(g)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(inits["stem.conv.weight"], g.node("stem.conv").params["weight"])
    np.testing.assert_array_equal(inits["b3.proj.bn.running_var"], g.node("b3.proj.bn").buffers["running_var"])


def test_output_that_is_an_input_or_repeated():
    g = archir.Graph("odd_outputs")
    x = g.input("x", (2, 4, 4))
    y = g.input("y", (2, 4, 4))
    h = g.add("relu", x, name="h")
    s = g.add("add", h, y, name="s")
    g.set_outputs(x, h, h, s, y)
    g.validate()
    model = to_onnx(g)
    names = [o.name for o in model.graph.output]
    assert names[1] == "h" and names[3] == "s" and len(set(names)) == 5
    xs = _inputs(g, 2)
    r = _verified(g, model, {"x": xs[0], "y": xs[1]}, atol=0.0, rtol=0.0)
    want = [xs[0], np.maximum(xs[0], 0), np.maximum(xs[0], 0), np.maximum(xs[0], 0) + xs[1], xs[1]]
    assert len(r.ort_values) == len(want)
    for a, b, c in zip(r.ort_values, want, r.fx_values):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(c, b)


def test_graph_that_only_passes_its_input_through():
    g = archir.Graph("passthrough")
    x = g.input("x", (3, 2, 2))
    g.set_outputs(x, x)
    model = to_onnx(g.validate())
    xs = _inputs(g, 4)
    r = _verified(g, model, xs, atol=0.0, rtol=0.0)
    assert len(r.ort_values) == 2
    for out in r.ort_values:
        np.testing.assert_array_equal(out, xs[0])


def test_refuses_training_only_nodes_listing_all_of_them():
    g = archir.Graph("train_only")
    x = g.input("x", (4, 6, 6))
    c = g.add("choice", x, name="cell.e0", candidates=[
        {"name": "skip", "ops": []},
        {"name": "pool", "ops": [{"op": "maxpool2d", "kernel_size": 3, "stride": 1, "padding": 1}]}])
    sg = g.add("stop_gradient", c, name="sg")
    sf = g.add("stop_forward", x, name="sf")
    g.set_outputs(g.add("add", sg, sf, name="out"))
    g.init_params(0).validate()
    with pytest.raises(archir.LoweringError) as e:
        to_onnx(g)
    msg = str(e.value)
    for nid, op in (("cell.e0", "choice"), ("sg", "stop_gradient"), ("sf", "stop_forward")):
        assert f"{nid} ({op})" in msg
    assert "archir.derive" in msg and "finalize" in msg
    assert e.value.rule == "to_onnx"
    # derive removes the choice, the stop_* ops remain and are still refused, by name
    with pytest.raises(archir.LoweringError) as e:
        to_onnx(archir.derive(g, {"cell.e0": "pool"}))
    assert "cell.e0" not in str(e.value) and "sg (stop_gradient)" in str(e.value)
    assert "archir.derive" not in str(e.value) and "finalize" in str(e.value)


@pytest.mark.parametrize("h,w", [(1, 2), (3, 3), (5, 6), (8, 7)])
def test_maxpool_ceil_mode_and_dilation_match_torch(h, w):
    """torch drops a ceil_mode window that would start in the right padding, and gives -inf for
    a dilated window holding padding only; the ONNX model must do the same (and pass the checker)."""
    x = np.random.default_rng(h * w).standard_normal((2, 2, h, w)).astype(np.float32)
    checked = 0
    for k, s, p, d, ceil in itertools.product(range(1, 5), (1, 2, 3), range(0, 3), (1, 2, 3), (False, True)):
        if p > k // 2 or d * (k - 1) + 1 > min(h, w) + 2 * p:
            continue
        g = archir.Graph("mp")
        g.set_outputs(g.add("maxpool2d", g.input("x", (2, h, w)), kernel_size=k, stride=s, padding=p, dilation=d,
                            ceil_mode=ceil, name="mp"))
        model = to_onnx(g.validate())
        got = _verified(g, model, x, atol=0.0, rtol=0.0).ort_values[0]  # fx is exact too
        want = F.max_pool2d(torch.from_numpy(x), k, s, p, d, ceil_mode=ceil).numpy()
        assert got.shape == want.shape == (2, *g.node("mp").type.shape), (k, s, p, d, ceil)
        np.testing.assert_array_equal(got, want, err_msg=str((k, s, p, d, ceil)))
        checked += 1
    assert checked > 20


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avgpool_padding_divisor_matches_torch(count_include_pad):
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 6)).astype(np.float32)
    for k, s, p in [(3, 1, 1), (2, 2, 1), ([3, 2], [2, 1], [1, 1]), (4, None, 2)]:
        g = archir.Graph("ap")
        g.set_outputs(g.add("avgpool2d", g.input("x", (3, 7, 6)), kernel_size=k, stride=s, padding=p,
                            count_include_pad=count_include_pad, name="ap"))
        _verified(g.validate(), to_onnx(g), x)


def test_every_op_lowers_in_one_graph():
    """One small graph with every exportable op and the less common attribute forms."""
    g = archir.Graph("all_ops")
    x = g.input("x", (4, 9, 8))
    h = g.add("conv2d", x, out_channels=8, kernel_size=[3, 2], stride=[2, 1], padding=[1, 2], dilation=[1, 2],
              groups=2, name="conv")
    h = g.add("batchnorm2d", h, affine=False, name="bn")
    for act in ("relu6", "hardswish", "silu", "tanh", "sigmoid"):
        h = g.add(act, h, name=act)
    h = g.add("scale", h, name="scale")
    gate = g.add("hardsigmoid", g.add("global_avgpool", h, name="se.pool"), name="se.gate")
    h = g.add("mul", gate, h, name="se.mul")
    z = g.add("zero", h, stride=2, name="zero")
    p = g.add("maxpool2d", h, kernel_size=2, stride=2, ceil_mode=True, name="pool")  # (8, 3, 5) like zero
    h = g.add("concat", p, g.add("identity", z, name="id"), dim=-3, name="cat")
    h = g.add("dropout", h, p=0.3, name="drop")
    flat2 = g.add("flatten", h, start_dim=2, name="flat2")
    rank2 = g.add("linear", flat2, out_features=3, name="rank2")
    y = g.add("linear", g.add("flatten", h, name="flat"), out_features=5, bias=False, name="head")
    g.set_outputs(y, rank2)
    g.init_params(1)
    samples.randomize_bn(g, 2)
    g.set_params("scale", weight=np.linspace(0.5, 1.5, 8))
    g.validate()
    model = to_onnx(g)
    xs = _inputs(g, 3)
    r = _verified(g, model, xs)
    assert [o.shape for o in r.outputs] == [(3, *g.node(o).type.shape) for o in g.outputs]


# --------------------------------------------------------------------------- weights and the checker, at the copy limit

def test_initializers_hold_the_frozen_weights_bytes_and_the_model_passes_the_checker():
    from onnx import numpy_helper

    from archir.graph import freeze_array, weight_bytes_of

    g = samples.darts_like(cells=2)
    model = to_onnx(g)
    onnx.checker.check_model(model, full_check=True)  # the whole model, weights included, as a user would
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in g.nodes("conv2d"):
        np.testing.assert_array_equal(inits[f"{n.id}.weight"], n.params["weight"])
    assert not ({i.name for i in model.graph.input} & set(inits))  # the checker's typed inputs are gone again
    w = freeze_array(np.arange(12, dtype=np.float64).reshape(3, 4).T)  # converted, transposed: one copy
    assert w.flags.c_contiguous and not w.flags.writeable and weight_bytes_of(w) is w.base.base
    with pytest.raises(ValueError):
        w.setflags(write=True)  # frozen for good: its buffer is immutable bytes
    np.testing.assert_array_equal(np.frombuffer(weight_bytes_of(w.T), np.float32), w.T.ravel())  # a view: a copy


def test_the_checker_sees_every_node_and_runs_once_per_unchanged_graph(monkeypatch):
    from archir.lower import onnx as lower_onnx

    calls = []
    real = onnx.checker.check_model
    def counted(m, **k):  # the model checked, as a message or its bytes
        calls.append((onnx.load_from_string(m) if isinstance(m, bytes) else m).graph.name)
        return real(m, **k)

    monkeypatch.setattr(onnx.checker, "check_model", counted)
    monkeypatch.setattr(lower_onnx, "_CHECKED", type(lower_onnx._CHECKED)())
    g = samples.chain()
    to_onnx(g)
    to_onnx(g)
    assert calls == [g.name]  # the same structure again: not checked twice
    h = g.copy()
    h.set_attrs(next(n.id for n in h.nodes("conv2d")), padding=2)  # another structure: checked again
    h.infer_shapes()
    h.init_params(seed=0)
    to_onnx(h)
    assert len(calls) == 2
    to_onnx(g, check=False)
    assert len(calls) == 2

    # a node the checker rejects (a Conv whose weight has the wrong rank) is caught, weights or not
    def broken(ctx, node, ins, types, n):
        w = ctx.const(f"{n}::weight", np.zeros((4, 4096), np.float32))  # large: a typed input in the check
        return ctx.emit("Conv", [ins[0], w], n)

    monkeypatch.setitem(lower_onnx.ONNX_HANDLERS._table, "conv2d", broken)
    with pytest.raises(archir.errors.LoweringError, match="fails the ONNX checker"):
        to_onnx(g)
