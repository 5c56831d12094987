"""``from_onnx`` on ONNX files of opsets 17 to 21 and on torch's dynamo exporter (issue 17, item 5).

Small models are written with ``onnx.helper`` at each opset (checked by ``onnx.checker`` and strict shape
inference), imported, and archir's ``to_fx`` output is compared with ONNX Runtime's output of the
original file (atol = rtol = 1e-5): ``Pad`` (constant / reflect / edge; the ``axes`` input of opset
18), ``Slice``, ``Split`` (the ``split`` input, equal parts, ``num_outputs`` of opset 18, and the
``split`` attribute of opsets before 13), ``Resize`` (nearest asymmetric / floor; linear half_pixel,
pytorch_half_pixel and align_corners; scales, sizes, the ``axes`` attribute of opset 18),
``LayerNormalization`` (opset 17: the last axis, several trailing axes, the channels between two
``Transpose``s), ``Gelu`` (opset 20: none / tanh), and the decomposed forms older exporters write
(the ``Erf`` and ``Tanh`` GELU formulas, the ``ReduceMean`` layer norm), which import as one
``gelu`` / ``layernorm``. Unsupported attribute values are refused naming the node and the mend.
Then the small families of ``test_frontend_families`` exported by ``torch.onnx.export(dynamo=True)``.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from archir.frontend import UnsupportedModelError, from_onnx
from archir.lower import to_fx
from tests.archir.parity import dynamo_export

ort = pytest.importorskip("onnxruntime")

OPSETS = [17, 18, 19, 20, 21]
TOL = 1e-5
BIG = np.iinfo(np.int64).max


def _i64(*v):
    return np.asarray(v, np.int64)


def _f32(*v):
    return np.asarray(v, np.float32)


def _model(nodes, inits, in_shape, opset):
    graph = helper.make_graph(nodes, f"opset{opset}",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    m = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)  # fills in y's type
    onnx.checker.check_model(m, full_check=True)
    return m


def _ort(m, x):
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _check(m, in_shape, seed=0):
    """Import ``m``; archir's fx output equals ORT's output of ``m`` on a batch of 2 (1e-5). The graph."""
    x = np.random.default_rng(seed).standard_normal((2, *in_shape)).astype(np.float32)
    ref = _ort(m, x)
    g = from_onnx(m)
    with torch.no_grad():
        got = to_fx(g).eval()(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape
    assert np.abs(ref).max() > 1e-3, "the reference output is ~0, the comparison would prove nothing"
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=TOL)
    return g


def _ops(g) -> set[str]:
    return {n.op for n in g.nodes()} - {"input"}


# --------------------------------------------------------------------------- the cases
# name -> (first opset, builder(opset) -> (nodes, initializers, per-sample input shape), archir ops expected)

N = helper.make_node


def _pad(mode, pads, value=None, axes=None):
    def build(opset):
        inits = {"pads": _i64(*pads)}
        ins = ["x", "pads"]
        if value is not None:
            inits["v"] = np.float32(value)
        ins.append("v" if value is not None else "")
        if axes is not None:
            inits["axes"] = _i64(*axes)
            ins.append("axes")
        return [N("Pad", ins, ["y"], mode=mode, name="pad")], inits, (3, 5, 6)

    return build


def _slice(starts, ends, axes=None, steps=None, shape=(4, 7, 9)):
    def build(opset):
        inits = {"s": _i64(*starts), "e": _i64(*ends)}
        ins = ["x", "s", "e"]
        for key, v in (("a", axes), ("st", steps)):
            if v is not None:
                inits[key] = _i64(*v)
                ins.append(key)
        return [N("Slice", ins, ["y"], name="slice")], inits, shape

    return build


def _split(axis, sizes=None, num_outputs=None, k=3, shape=(6, 5, 4)):
    """``Split`` into ``k`` parts, read back in another order (one through a Relu)."""

    def build(opset):
        outs = [f"p{i}" for i in range(k)]
        inits, ins, kw = {}, ["x"], {}
        if sizes is not None:
            inits["split"] = _i64(*sizes)
            ins.append("split")
        if num_outputs is not None:
            kw["num_outputs"] = num_outputs
        nodes = [N("Split", ins, outs, axis=axis, name="split", **kw), N("Relu", ["p0"], ["r0"], name="relu"),
                 N("Concat", [outs[-1], "r0", *outs[1:-1]], ["y"], axis=axis, name="cat")]
        return nodes, inits, shape

    return build


def _resize(mode, ctm, *, scales=None, sizes=None, axes=None, nearest_mode=None, shape=(2, 3, 4)):
    """``Resize`` by constant ``scales``, or to ``sizes``: constant with ``axes`` (opset 18), else torch's
    ``Concat(Slice(Shape(x), 0, 2), [oh, ow])``."""

    def build(opset):
        kw = {"mode": mode, "coordinate_transformation_mode": ctm}
        if nearest_mode:
            kw["nearest_mode"] = nearest_mode
        if axes is not None:
            kw["axes"] = axes
        nodes, inits = [], {}
        if scales is not None:
            inits["scales"] = _f32(*scales)
            ins = ["x", "", "scales"]
        elif axes is not None:
            inits["sizes"] = _i64(*sizes)
            ins = ["x", "", "", "sizes"]
        else:
            inits.update({"z": _i64(0), "two": _i64(2), "hw": _i64(*sizes)})
            nodes += [N("Shape", ["x"], ["shp"], name="shape"), N("Slice", ["shp", "z", "two"], ["nc"], name="nc"),
                      N("Concat", ["nc", "hw"], ["sizes"], axis=0, name="sizes")]
            ins = ["x", "", "", "sizes"]
        nodes.append(N("Resize", ins, ["y"], name="up", **kw))
        return nodes, inits, shape

    return build


def _layer_norm(axis, shape, norm_shape, bias=True, stash_type=None):
    def build(opset):
        rng = np.random.default_rng(1)
        inits = {"w": (rng.random(norm_shape) + 0.5).astype(np.float32)}
        ins = ["x", "w"]
        if bias:
            inits["b"] = rng.standard_normal(norm_shape).astype(np.float32)
            ins.append("b")
        kw = {} if stash_type is None else {"stash_type": stash_type}
        return [N("LayerNormalization", ins, ["y"], axis=axis, epsilon=1e-5, name="ln", **kw)], inits, shape

    return build


def _layer_norm_channels(opset):
    rng = np.random.default_rng(2)
    inits = {"w": (rng.random(3) + 0.5).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32)}
    return [N("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1], name="to_nhwc"),
            N("LayerNormalization", ["t", "w", "b"], ["n"], axis=-1, epsilon=1e-6, name="ln"),
            N("Transpose", ["n"], ["y"], perm=[0, 3, 1, 2], name="to_nchw")], inits, (3, 4, 5)


def _gelu(approximate):
    def build(opset):
        return [N("Gelu", ["x"], ["y"], approximate=approximate, name="gelu")], {}, (3, 4)

    return build


def _const(name, v):
    return N("Constant", [], [name], value=numpy_helper.from_array(np.asarray(v, np.float32), name), name=name)


def _gelu_erf_div(opset):  # torch's TorchScript exporter before opset 20
    return [_const("s2", math.sqrt(2)), _const("one", 1.0), _const("half", 0.5),
            N("Div", ["x", "s2"], ["a"]), N("Erf", ["a"], ["b"]), N("Add", ["b", "one"], ["c"]),
            N("Mul", ["x", "c"], ["d"]), N("Mul", ["d", "half"], ["y"])], {}, (3, 4)


def _gelu_erf_mul(opset):  # x * (1 / sqrt 2), the 0.5 before the x
    return [_const("r2", math.sqrt(0.5)), _const("one", 1.0), _const("half", 0.5),
            N("Mul", ["x", "r2"], ["a"]), N("Erf", ["a"], ["b"]), N("Add", ["one", "b"], ["c"]),
            N("Mul", ["half", "c"], ["d"]), N("Mul", ["d", "x"], ["y"])], {}, (3, 4)


def _gelu_tanh_form(pow_form):
    def build(opset):
        k, c = 0.044715, math.sqrt(2 / math.pi)
        cube = [_const("three", 3.0), N("Pow", ["x", "three"], ["x3"])] if pow_form else \
            [N("Mul", ["x", "x"], ["x2"]), N("Mul", ["x", "x2"], ["x3"])]
        return cube + [_const("k", k), _const("c", c), _const("one", 1.0), _const("half", 0.5),
                       N("Mul", ["k", "x3"], ["a"]), N("Add", ["x", "a"], ["b"]), N("Mul", ["c", "b"], ["t0"]),
                       N("Tanh", ["t0"], ["t"]), N("Add", ["one", "t"], ["u"]), N("Mul", ["x", "u"], ["v"]),
                       N("Mul", ["half", "v"], ["y"])], {}, (3, 4)

    return build


def _decomposed_ln(axis, shape, pshape, square="pow", affine=True):
    """torch's LayerNorm before opset 17 (``ReduceMean``, ``Sub``, ``Pow``, ``ReduceMean``, ``Add``, ``Sqrt``,
    ``Div``, ``Mul``, ``Add``), the axes an attribute up to opset 17 and an input from 18."""

    def build(opset):
        rng = np.random.default_rng(3)
        inits = {"eps": np.float32(1e-5)}
        if opset >= 18:
            inits["axes"] = _i64(axis)

        def mean(i, o, name):
            return N("ReduceMean", [i, "axes"], [o], name=name) if opset >= 18 else \
                N("ReduceMean", [i], [o], axes=[axis], name=name)

        sq = [_const("two", 2.0), N("Pow", ["d", "two"], ["sq"], name="pow")] if square == "pow" else \
            [N("Mul", ["d", "d"], ["sq"], name="square")]
        nodes = [mean("x", "m", "mean"), N("Sub", ["x", "m"], ["d"], name="sub"), *sq, mean("sq", "var", "var"),
                 N("Add", ["var", "eps"], ["ve"], name="add_eps"), N("Sqrt", ["ve"], ["std"], name="sqrt"),
                 N("Div", ["d", "std"], ["n" if affine else "y"], name="div")]
        if affine:
            inits["w"] = (rng.random(pshape) + 0.5).astype(np.float32)
            inits["b"] = rng.standard_normal(pshape).astype(np.float32)
            nodes += [N("Mul", ["w", "n"], ["nw"], name="ln.mul"), N("Add", ["nw", "b"], ["y"], name="ln.add")]
        return nodes, inits, shape

    return build


CASES = {
    "pad_constant": (17, _pad("constant", [0, 0, 1, 2, 0, 0, 3, 0], value=0.5), {"pad"}),
    "pad_constant_default_value": (17, _pad("constant", [0, 0, 0, 1, 0, 0, 2, 2]), {"pad"}),
    "pad_reflect": (17, _pad("reflect", [0, 0, 2, 1, 0, 0, 1, 3]), {"pad"}),
    "pad_edge": (17, _pad("edge", [0, 0, 0, 4, 0, 0, 5, 1]), {"pad"}),
    "pad_axes": (18, _pad("reflect", [1, 2, 3, 0], axes=[2, 3]), {"pad"}),
    "pad_negative_axes": (18, _pad("constant", [2, 1, 0, 1], value=-1.0, axes=[-1, -2]), {"pad"}),
    "slice_channels": (17, _slice([1], [3], [1]), {"slice"}),
    "slice_steps_negative_bounds": (17, _slice([0, -4, 1], [BIG, 1000, -1], [2, -1, 1], [2, 1, 3]), {"slice"}),
    "slice_default_axes": (17, _slice([0, 0, 1], [BIG, 2, -2]), {"slice"}),
    "split_sizes_input": (17, _split(1, sizes=[1, 2, 3]), {"slice", "relu", "concat"}),
    "split_sizes_input_negative_axis": (17, _split(-2, sizes=[3, 2], k=2), {"slice", "relu", "concat"}),
    "split_num_outputs": (18, _split(2, num_outputs=3), {"slice", "relu", "concat"}),
    "resize_nearest_scales": (17, _resize("nearest", "asymmetric", scales=[1, 1, 2, 2], nearest_mode="floor"),
                              {"upsample"}),
    "resize_nearest_sizes": (17, _resize("nearest", "asymmetric", sizes=[5, 9], nearest_mode="floor"), {"upsample"}),
    "resize_linear_half_pixel": (17, _resize("linear", "half_pixel", scales=[1, 1, 2, 2]), {"upsample"}),
    "resize_linear_half_pixel_1.5": (17, _resize("linear", "half_pixel", scales=[1, 1, 1.5, 1.5]), {"upsample"}),
    "resize_linear_pytorch_half_pixel": (17, _resize("linear", "pytorch_half_pixel", scales=[1, 1, 2, 2]),
                                         {"upsample"}),
    "resize_linear_align_corners": (17, _resize("linear", "align_corners", sizes=[5, 7]), {"upsample"}),
    "resize_linear_axes": (18, _resize("linear", "half_pixel", scales=[2, 2], axes=[2, 3]), {"upsample"}),
    "resize_nearest_axes_sizes": (18, _resize("nearest", "asymmetric", sizes=[6, 8], axes=[2, 3],
                                              nearest_mode="floor"), {"upsample"}),
    "layernorm_last": (17, _layer_norm(-1, (4, 6), (6,)), {"layernorm"}),
    "layernorm_last_positive_axis": (17, _layer_norm(2, (4, 6), (6,)), {"layernorm"}),
    "layernorm_no_bias": (17, _layer_norm(-1, (4, 6), (6,), bias=False), {"layernorm"}),
    "layernorm_two_axes": (17, _layer_norm(1, (4, 6), (4, 6)), {"reshape", "layernorm"}),
    "layernorm_chw": (17, _layer_norm(1, (3, 4, 5), (3, 4, 5)), {"reshape", "layernorm"}),
    "layernorm_hw": (17, _layer_norm(-2, (3, 4, 5), (4, 5)), {"reshape", "layernorm"}),
    "layernorm_channels": (17, _layer_norm_channels, {"layernorm"}),
    "gelu_none": (20, _gelu("none"), {"gelu"}),
    "gelu_tanh": (20, _gelu("tanh"), {"gelu"}),
    "gelu_erf_div": (17, _gelu_erf_div, {"gelu"}),
    "gelu_erf_mul": (17, _gelu_erf_mul, {"gelu"}),
    "gelu_tanh_mul_form": (17, _gelu_tanh_form(pow_form=False), {"gelu"}),
    "gelu_tanh_pow_form": (17, _gelu_tanh_form(pow_form=True), {"gelu"}),
    "decomposed_layernorm_last": (17, _decomposed_ln(-1, (4, 6), (6,)), {"layernorm"}),
    "decomposed_layernorm_mul_square_no_affine": (17, _decomposed_ln(2, (4, 6), (6,), square="mul", affine=False),
                                                  {"layernorm"}),
    "decomposed_layernorm_channels": (17, _decomposed_ln(1, (3, 4, 5), (3, 1, 1)), {"layernorm"}),
}


@pytest.mark.parametrize("case,opset", [(c, o) for c, (first, _, _) in CASES.items() for o in OPSETS if o >= first])
def test_opset_file_imports_and_matches_onnx_runtime(case, opset):
    _, build, expected = CASES[case]
    nodes, inits, shape = build(opset)
    g = _check(_model(nodes, inits, shape, opset), shape)
    assert _ops(g) == expected, f"{case}: imported as {_ops(g)}"
    assert g.meta["frontend"]["opset"] == opset
    if case == "layernorm_channels" or case == "decomposed_layernorm_channels":
        assert g.node(g.outputs[0]).attrs["axis"] == "channels"
    if case.startswith("decomposed_layernorm"):
        (ln,) = g.nodes("layernorm")
        assert ln.attrs["affine"] == ("no_affine" not in case) and ln.attrs["eps"] == 1e-5
    if case.startswith("gelu"):
        assert g.node(g.outputs[0]).attrs["approximate"] == ("tanh" if "tanh" in case else "none")
    if case.startswith("resize_linear"):
        assert g.node(g.outputs[0]).attrs["align_corners"] == ("align_corners" in case)


@pytest.mark.parametrize("opset", [11, 12])
def test_split_attribute_form_before_opset_13(opset):
    """Up to opset 12 the sizes are the ``split`` attribute (then an input)."""
    nodes = [N("Split", ["x"], ["a", "b"], axis=1, split=[4, 2], name="split"), N("Relu", ["a"], ["r"]),
             N("Concat", ["b", "r"], ["y"], axis=1)]
    g = _check(_model(nodes, {}, (6, 3, 3), opset), (6, 3, 3))
    assert sorted((n.attrs["start"], n.attrs["end"]) for n in g.nodes("slice")) == [(0, 4), (4, None)]


def test_equal_split_without_sizes_at_opset_17():
    g = _check(_model([N("Split", ["x"], ["a", "b", "c"], axis=1, name="split"), N("Relu", ["a"], ["r"]),
                       N("Concat", ["c", "r", "b"], ["y"], axis=1)], {}, (6, 2, 2), 17), (6, 2, 2))
    assert len(g.nodes("slice")) == 3


def test_torch_exports_before_opset_17_read_as_one_layernorm_and_gelu():
    """torch's TorchScript exporter at opset 14 writes LayerNorm as ReduceMean arithmetic and GELU as its formula."""

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln, self.fc = torch.nn.LayerNorm(6), torch.nn.Linear(6, 6)

        def forward(self, x):
            return torch.nn.functional.gelu(self.fc(self.ln(x)), approximate="tanh") + torch.nn.functional.gelu(x)

    torch.manual_seed(0)
    m = M().eval()
    with torch.no_grad():
        m.ln.weight.uniform_(0.5, 1.5)
        m.ln.bias.normal_()
    x = torch.randn(2, 4, 6)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), buf, dynamo=False, opset_version=14, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    assert {"Pow", "Sqrt", "Erf"} <= {n.op_type for n in proto.graph.node}  # the decomposed forms
    g = _check(proto, (4, 6))
    assert _ops(g) == {"layernorm", "linear", "gelu", "add"}
    assert sorted(n.attrs["approximate"] for n in g.nodes("gelu")) == ["none", "tanh"]
    with torch.no_grad():
        np.testing.assert_allclose(to_fx(g).eval()(x).numpy(), m(x).numpy(), atol=TOL, rtol=TOL)


def test_a_formula_that_is_not_a_layer_norm_stays_unsupported():
    """The pattern is matched exactly: ``d / Sqrt(var + eps)`` with ``d`` not the centred input is refused."""
    nodes, inits, shape = _decomposed_ln(-1, (4, 6), (6,))(17)
    nodes[1] = N("Sub", ["m", "x"], ["d"], name="sub")  # mean - x: not the layer norm's x - mean
    with pytest.raises(UnsupportedModelError) as e:
        from_onnx(_model(nodes, inits, shape, 17))
    assert "Sqrt" in str(e.value)


@st.composite
def _slice_pad_resize_files(draw):
    """A random chain of ``Slice`` (random bounds, negative ones and steps included), ``Pad`` (random mode and
    pads, written with or without the ``axes`` input) and ``Resize`` (torch's modes) at a random opset 17-21."""
    opset = draw(st.sampled_from(OPSETS))
    start_shape = (draw(st.integers(1, 4)), draw(st.integers(2, 7)), draw(st.integers(2, 7)))
    shape = list(start_shape)
    nodes, inits, cur = [], {}, "x"
    for i in range(draw(st.integers(1, 4))):
        out = f"v{i}"
        kind = draw(st.sampled_from(["slice", "pad", "resize"]))
        if kind == "slice":
            ax = draw(st.integers(1, 3))
            n = shape[ax - 1]
            step = draw(st.integers(1, 3))
            start = draw(st.integers(-n, n - 1))
            end = draw(st.sampled_from([BIG, -1, n, n + 5]) | st.integers(-n, n))
            got = len(range(*slice(start, end, step).indices(n)))
            if got == 0:
                continue
            shape[ax - 1] = got
            inits.update({f"s{i}": _i64(start), f"e{i}": _i64(end), f"a{i}": _i64(ax), f"t{i}": _i64(step)})
            nodes.append(N("Slice", [cur, f"s{i}", f"e{i}", f"a{i}", f"t{i}"], [out], name=f"slice{i}"))
        elif kind == "pad":
            mode = draw(st.sampled_from(["constant", "reflect", "edge"]))
            hi = [n - 1 if mode == "reflect" else 3 for n in shape[1:]]
            t, b = (draw(st.integers(0, hi[0])) for _ in range(2))
            left, r = (draw(st.integers(0, hi[1])) for _ in range(2))
            shape = [shape[0], shape[1] + t + b, shape[2] + left + r]
            value = f"c{i}" if mode == "constant" and draw(st.booleans()) else ""
            if value:
                inits[value] = np.float32(draw(st.floats(-2, 2, width=32)))
            if opset >= 18 and draw(st.booleans()):  # pads for the axes input only
                inits[f"p{i}"], inits[f"ax{i}"] = _i64(t, left, b, r), _i64(2, 3)
                ins = [cur, f"p{i}", value, f"ax{i}"]
            else:
                inits[f"p{i}"] = _i64(0, 0, t, left, 0, 0, b, r)
                ins = [cur, f"p{i}"] + ([value] if value else [])
            nodes.append(N("Pad", ins, [out], mode=mode, name=f"pad{i}"))
        else:
            mode, ctm = draw(st.sampled_from([("nearest", "asymmetric"), ("linear", "half_pixel"),
                                              ("linear", "align_corners")]))
            s = draw(st.sampled_from([1.5, 2.0, 3.0])) if ctm != "align_corners" else 2.0
            kw = {"nearest_mode": "floor"} if mode == "nearest" else {}
            inits[f"r{i}"] = _f32(1, 1, s, s)
            shape = [shape[0], int(shape[1] * s), int(shape[2] * s)]
            nodes.append(N("Resize", [cur, "", f"r{i}"], [out], mode=mode, coordinate_transformation_mode=ctm,
                           name=f"up{i}", **kw))
        cur = out
    nodes.append(N("Relu", [cur], ["y"], name="relu"))  # an exported value is never the input itself
    return opset, nodes, inits, start_shape, tuple(shape)


@settings(max_examples=20)
@given(_slice_pad_resize_files(), st.integers(0, 2**16))
def test_random_slice_pad_resize_chains_match_onnx_runtime(case, seed):
    opset, nodes, inits, in_shape, out_shape = case
    m = _model(nodes, inits, in_shape, opset)
    x = np.random.default_rng(seed).standard_normal((2, *in_shape)).astype(np.float32) + 0.5
    ref = _ort(m, x)
    assert ref.shape == (2, *out_shape)  # the strategy's own shape arithmetic agrees with ORT
    g = from_onnx(m)
    assert g.node(g.outputs[0]).type.shape == out_shape
    with torch.no_grad():
        got = to_fx(g).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=TOL)


# --------------------------------------------------------------------------- refusals


REFUSED = {
    # case -> (opset, nodes, initializers, the node named, words of the reason and the mend); input (N, 3, 4, 4)
    "resize_cubic": (17, [N("Resize", ["x", "", "s"], ["y"], mode="cubic", name="up")], {"s": _f32(1, 1, 2, 2)},
                     "up", ["mode=cubic", "export with"]),
    "resize_nearest_half_pixel": (17, [N("Resize", ["x", "", "s"], ["y"], mode="nearest", name="up",
                                         coordinate_transformation_mode="half_pixel")], {"s": _f32(1, 1, 2, 2)},
                                  "up", ["half_pixel", "asymmetric, floor"]),
    "resize_linear_asymmetric": (17, [N("Resize", ["x", "", "s"], ["y"], mode="linear", name="up",
                                        coordinate_transformation_mode="asymmetric")], {"s": _f32(1, 1, 2, 2)},
                                 "up", ["asymmetric", "align_corners"]),
    "resize_antialias": (18, [N("Resize", ["x", "", "s"], ["y"], mode="linear", antialias=1, name="up")],
                         {"s": _f32(1, 1, 0.5, 0.5)}, "up", ["antialias", "export without"]),
    "resize_channels": (18, [N("Resize", ["x", "", "s"], ["y"], mode="nearest", axes=[1, 2], name="up",
                               coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
                        {"s": _f32(2, 2)}, "up", ["axes", "H and W"]),
    "pad_wrap": (19, [N("Pad", ["x", "p"], ["y"], mode="wrap", name="pad")], {"p": _i64(0, 0, 1, 1, 0, 0, 1, 1)},
                 "pad", ["'wrap'", "export with"]),
    "pad_channels": (17, [N("Pad", ["x", "p"], ["y"], name="pad")], {"p": _i64(0, 1, 0, 0, 0, 0, 0, 0)},
                     "pad", ["channel", "H and W"]),
    "layernorm_batch_axis": (17, [N("LayerNormalization", ["x", "w"], ["y"], axis=0, name="ln")],
                             {"w": np.ones((3, 4, 4), np.float32)}, "ln", ["axis=0", "axis >= 1"]),
    "layernorm_stash_type": (17, [N("LayerNormalization", ["x", "w"], ["y"], axis=-1, stash_type=0, name="ln")],
                             {"w": np.ones(4, np.float32)}, "ln", ["stash_type=0", "stash_type=1"]),
    "slice_backwards": (17, [N("Slice", ["x", "s", "e", "a", "st"], ["y"], name="slice")],
                        {"s": _i64(-1), "e": _i64(-BIG), "a": _i64(2), "st": _i64(-1)}, "slice", ["step >= 1"]),
    "split_batch": (18, [N("Split", ["x"], ["y", "z"], axis=0, num_outputs=2, name="split")], {}, "split",
                    ["batch"]),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsupported_attribute_values_are_refused_naming_the_node(case):
    opset, nodes, inits, where, words = REFUSED[case]
    m = _model(nodes, inits, (3, 4, 4), opset)
    with pytest.raises(UnsupportedModelError) as e:
        from_onnx(m)
    (u,) = e.value.unsupported
    assert u.where == where
    text = str(e.value)
    for w in words:
        assert w in text, f"{case}: {w!r} not in {text!r}"


# --------------------------------------------------------------------------- torch's dynamo exporter

# a representative set of test_frontend_families' small families (dynamo's export takes 1-4 s each, twice that
# on a loaded 2-core machine; TinyResNeXt is test_frontend_onnx's dynamo test): the GatherND decomposition of
# adaptive pooling (VGG 7 -> 3, AlexNet 1 -> 3), squeeze-excite with hardsigmoid / hardswish (MobileNetV3),
# SiLU and sigmoid SE (EfficientNet), grouped bottlenecks with SE (RegNet), a growing concat (DenseNet),
# fire modules with ceil-mode pooling (SqueezeNet), four-branch inception (GoogLeNet). The other four
# (ResNeXt, Wide-ResNet, MobileNetV2, MnasNet: the same constructs) import from dynamo's export too (checked by
# hand); the torchvision originals: `python benchmarks/frontend_families.py --dynamo`.
DYNAMO_FAMILIES = ["vgg", "alexnet", "mobilenet_v3", "efficientnet", "regnet", "densenet", "squeezenet", "googlenet"]


@pytest.mark.parametrize("family", DYNAMO_FAMILIES)
def test_dynamo_export_of_family_imports(family):
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    from tests.archir.test_frontend_families import FAMILIES, randomize

    build, shape = FAMILIES[family]
    torch.manual_seed(0)
    m = randomize(build())
    proto = dynamo_export(m, shape)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))  # the export's sample
    g = _check(proto, shape, seed=3)
    assert g.meta["frontend"]["opset"] >= 18
    xn = x.numpy()
    with torch.no_grad():
        ref = m(x).numpy()
        got = to_fx(g).eval()(x).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)  # BN folded into the convs by the exporter
    np.testing.assert_allclose(got, _ort(proto, xn), atol=TOL, rtol=TOL)
    if family in ("vgg", "alexnet"):
        assert "GatherND" in {n.op_type for n in proto.graph.node}
        assert g.nodes("adaptive_avgpool2d")
    assert g.num_params() <= sum(p.numel() for p in m.parameters())


def _gathernd_pool_model(h, w, oh, ow, opset=20, perturb=False):
    """dynamo's adaptive average pool: windows of one length per axis gathered by a constant index."""
    from archir.ops.core import adaptive_windows

    wh, ww = adaptive_windows(h, oh), adaptive_windows(w, ow)
    kh, kw = wh[0][1] - wh[0][0], ww[0][1] - ww[0][0]
    idx = np.zeros((oh, kh, ow, kw, 2), np.int64)
    for i, (s, _) in enumerate(wh):
        for a in range(kh):
            for j, (t, _) in enumerate(ww):
                for b in range(kw):
                    idx[i, a, j, b] = (s + a, t + b)
    if perturb:
        idx[-1, -1, -1, -1, 0] -= 1  # one row of the last window moved up (every case has h >= 2)
    nodes = [N("Transpose", ["x"], ["t"], perm=[2, 3, 0, 1], name="t0"), N("GatherND", ["t", "idx"], ["g"], name="g"),
             N("Transpose", ["g"], ["tb"], perm=[4, 5, 0, 1, 2, 3], name="t1"),
             N("ReduceMean", ["tb", "axes"], ["y"], keepdims=0, name="pool")]
    return _model(nodes, {"idx": idx, "axes": _i64(-3, -1)}, (3, h, w), opset)


@pytest.mark.parametrize("h,w,oh,ow", [(7, 7, 3, 3), (2, 1, 4, 3), (6, 4, 3, 4), (7, 5, 3, 2)])
def test_dynamo_gathernd_adaptive_pool_reads_as_adaptive_avgpool2d(h, w, oh, ow):
    from archir.ops.core import adaptive_windows

    assert len({e - s for s, e in adaptive_windows(h, oh)}) == len({e - s for s, e in adaptive_windows(w, ow)}) == 1
    g = _check(_gathernd_pool_model(h, w, oh, ow), (3, h, w))
    assert _ops(g) == {"adaptive_avgpool2d"}
    assert np.broadcast_to(g.node(g.outputs[0]).attrs["output_size"], 2).tolist() == [oh, ow]
    with pytest.raises(UnsupportedModelError) as e:  # an index that is not exactly the windows is no pool
        from_onnx(_gathernd_pool_model(h, w, oh, ow, perturb=True))
    assert "GatherND" in str(e.value)


def test_dynamo_masked_adaptive_pool_with_windows_of_several_lengths():
    """VGG at 64x64 pools 2 -> 7 (windows of 1 and 2): dynamo writes GatherND, Where masks, Gather/Add sums and
    a Div; probed on a basis, it is exactly adaptive_avgpool2d. A wrong divisor is no pool."""
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    m = torch.nn.AdaptiveAvgPool2d((7, 3)).eval()
    x = torch.randn(2, 4, 2, 5)
    proto = dynamo_export(m, (4, 2, 5))
    assert {"GatherND", "Where", "Gather", "Div"} <= {n.op_type for n in proto.graph.node}
    g = _check(proto, (4, 2, 5))
    assert _ops(g) == {"adaptive_avgpool2d"}
    with torch.no_grad():
        np.testing.assert_allclose(to_fx(g).eval()(x).numpy(), m(x).numpy(), atol=TOL, rtol=TOL)
    div = next(n for n in proto.graph.node if n.op_type == "Div")
    init = next(t for t in proto.graph.initializer if t.name == div.input[1])
    counts = numpy_helper.to_array(init).copy()
    counts.reshape(-1)[0] += 1.0  # the first window averaged over one element too many
    init.CopyFrom(numpy_helper.from_array(counts, init.name))
    with pytest.raises(UnsupportedModelError) as e:
        from_onnx(proto)
    assert "GatherND" in str(e.value)
