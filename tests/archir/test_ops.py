"""The op registry and the core ops: shape rules, defaults, canonical attrs, param shapes, handlers.

Shape rules are checked against hand-computed values and, where torch has the op, against
torch itself on the ``meta`` device (shapes only, no compute).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import archir
from archir import OpSchemaError, ShapeError, TensorType
from archir.ops import AttrSpec, OpDef, OpHandlers, get_op, op_names, register_op


def _meta(shape):
    return torch.empty((1, *shape), device="meta")


def _one(op, in_shapes, **attrs):
    """Build input(s) -> op and return (graph, node id)."""
    g = archir.Graph("t")
    ins = [g.input(f"x{i}", s) for i, s in enumerate(in_shapes)]
    n = g.add(op, *ins, name="n", **attrs)
    return g, n


def _type(op, in_shapes, **attrs):
    g, n = _one(op, in_shapes, **attrs)
    return g.node(n).type.shape


# --------------------------------------------------------------------------- conv2d

CONV_CASES = [
    # (input (C,H,W), attrs, hand-computed output)
    ((3, 32, 32), dict(out_channels=16, kernel_size=3, padding=1), (16, 32, 32)),
    ((3, 32, 32), dict(out_channels=8, kernel_size=3, stride=2, padding=1), (8, 16, 16)),
    ((3, 32, 32), dict(out_channels=8, kernel_size=3, stride=2), (8, 15, 15)),  # floor((32-3)/2)+1
    ((4, 10, 10), dict(out_channels=4, kernel_size=3, dilation=2, padding=2), (4, 10, 10)),
    ((4, 10, 10), dict(out_channels=8, kernel_size=3, dilation=2), (8, 6, 6)),  # 10 - 2*(3-1)
    ((4, 9, 7), dict(out_channels=6, kernel_size=[3, 1], stride=[2, 1], padding=[1, 0], groups=2), (6, 5, 7)),
    ((8, 8, 8), dict(out_channels=8, kernel_size=5, padding=2, groups=8), (8, 8, 8)),  # depthwise
    ((3, 6, 6), dict(out_channels=2, kernel_size=[1, 5], padding=[0, 2]), (2, 6, 6)),
    ((3, 7, 7), dict(out_channels=5, kernel_size=7), (5, 1, 1)),  # kernel == input
    ((6, 11, 13), dict(out_channels=9, kernel_size=3, stride=3, dilation=2, padding=1, groups=3), (9, 3, 4)),
]


@pytest.mark.parametrize("shape,attrs,expected", CONV_CASES)
def test_conv2d_shape_rule(shape, attrs, expected):
    assert _type("conv2d", [shape], **attrs) == expected
    # torch agrees
    a = {k: (tuple(v) if isinstance(v, list) else v) for k, v in attrs.items()}
    k = a.pop("kernel_size")
    k = k if isinstance(k, tuple) else (k, k)
    oc, groups = a.pop("out_channels"), a.get("groups", 1)
    w = torch.empty(oc, shape[0] // groups, *k, device="meta")
    assert tuple(F.conv2d(_meta(shape), w, **a).shape[1:]) == expected


def test_conv2d_defaults_and_param_shapes():
    g, n = _one("conv2d", [(6, 8, 8)], out_channels=4, kernel_size=3)
    node = g.node(n)
    assert dict(node.attrs) == {"out_channels": 4, "kernel_size": 3, "stride": 1, "padding": 0, "dilation": 1,
                                "groups": 1, "bias": True}
    opdef = get_op("conv2d")
    ins = [TensorType((6, 8, 8))]
    assert opdef.param_shapes(dict(node.attrs), ins) == {"weight": (4, 6, 3, 3), "bias": (4,)}
    grouped = opdef.normalize_attrs({"out_channels": 4, "kernel_size": [3, 5], "groups": 2, "bias": False})
    assert opdef.param_shapes(grouped, ins) == {"weight": (4, 3, 3, 5)}
    assert opdef.buffer_shapes(grouped, ins) == {}


def test_conv2d_init_follows_torch_bounds():
    g, n = _one("conv2d", [(6, 8, 8)], out_channels=4, kernel_size=3)
    g.set_outputs(n)
    g.init_params(seed=0)
    w, b = g.node(n).params["weight"], g.node(n).params["bias"]
    bound = 1 / math.sqrt(6 * 3 * 3)
    assert w.dtype == np.float32 and w.shape == (4, 6, 3, 3)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.5 * bound
    assert np.abs(b).max() <= bound and b.shape == (4,)


# --------------------------------------------------------------------------- pooling

POOL_CASES = [
    ("maxpool2d", (3, 5, 5), dict(kernel_size=2), (3, 2, 2)),
    ("maxpool2d", (3, 5, 5), dict(kernel_size=2, ceil_mode=True), (3, 3, 3)),
    ("maxpool2d", (3, 6, 6), dict(kernel_size=3, stride=2, padding=1), (3, 3, 3)),
    ("maxpool2d", (3, 6, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), (3, 4, 4)),
    # ceil_mode, but the last window would start in the right padding: torch drops it
    ("maxpool2d", (3, 5, 5), dict(kernel_size=2, stride=2, padding=1, ceil_mode=True), (3, 3, 3)),
    ("maxpool2d", (3, 4, 4), dict(kernel_size=3, stride=3), (3, 1, 1)),
    ("maxpool2d", (3, 4, 4), dict(kernel_size=3, stride=3, ceil_mode=True), (3, 2, 2)),
    ("maxpool2d", (3, 10, 10), dict(kernel_size=3, dilation=2), (3, 2, 2)),  # stride = kernel_size
    ("maxpool2d", (2, 9, 6), dict(kernel_size=[3, 2], stride=[2, 1]), (2, 4, 5)),
    ("maxpool2d", (3, 8, 8), dict(kernel_size=3, stride=1, padding=1), (3, 8, 8)),
    ("avgpool2d", (3, 8, 8), dict(kernel_size=2), (3, 4, 4)),
    ("avgpool2d", (3, 8, 8), dict(kernel_size=3, stride=1, padding=1), (3, 8, 8)),
    ("avgpool2d", (3, 8, 8), dict(kernel_size=3, stride=2, padding=1), (3, 4, 4)),
    ("avgpool2d", (3, 7, 9), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False), (3, 4, 5)),
]


@pytest.mark.parametrize("op,shape,attrs,expected", POOL_CASES)
def test_pool_shape_rule(op, shape, attrs, expected):
    assert _type(op, [shape], **attrs) == expected
    a = {k: (tuple(v) if isinstance(v, list) else v) for k, v in attrs.items()}
    fn = F.max_pool2d if op == "maxpool2d" else F.avg_pool2d
    assert tuple(fn(_meta(shape), **a).shape[1:]) == expected


def test_pool_defaults():
    g, n = _one("maxpool2d", [(3, 8, 8)], kernel_size=2)
    assert dict(g.node(n).attrs) == {"kernel_size": 2, "stride": None, "padding": 0, "dilation": 1,
                                     "ceil_mode": False}
    g, n = _one("avgpool2d", [(3, 8, 8)], kernel_size=[2, 2])
    assert dict(g.node(n).attrs) == {"kernel_size": 2, "stride": None, "padding": 0, "count_include_pad": True}
    assert get_op("maxpool2d").param_shapes(dict(g.node(n).attrs), [TensorType((3, 8, 8))]) == {}


def test_pool_window_too_large_and_bad_padding():
    with pytest.raises(ShapeError, match="does not fit"):
        _one("maxpool2d", [(3, 2, 2)], kernel_size=3)
    with pytest.raises(OpSchemaError, match="more than half"):
        _one("avgpool2d", [(3, 8, 8)], kernel_size=3, padding=2)


def test_global_avgpool():
    assert _type("global_avgpool", [(16, 7, 5)]) == (16, 1, 1)
    with pytest.raises(ShapeError, match="rank-3"):
        _type("global_avgpool", [(16,)])


# --------------------------------------------------------------------------- flatten / linear


@pytest.mark.parametrize("start_dim,expected", [(1, (24,)), (2, (4, 6)), (3, (4, 3, 2))])
def test_flatten_start_dim(start_dim, expected):
    assert _type("flatten", [(4, 3, 2)], start_dim=start_dim) == expected
    assert tuple(torch.flatten(_meta((4, 3, 2)), start_dim).shape[1:]) == expected


def test_flatten_defaults_and_range():
    g, n = _one("flatten", [(4, 3, 2)])
    assert dict(g.node(n).attrs) == {"start_dim": 1}
    with pytest.raises(ShapeError, match="start_dim=4"):
        _type("flatten", [(4, 3, 2)], start_dim=4)
    with pytest.raises(OpSchemaError, match="start_dim"):  # 0 would flatten the batch
        _type("flatten", [(4, 3, 2)], start_dim=0)


def test_linear_shape_and_params():
    assert _type("linear", [(10,)], out_features=3) == (3,)
    assert _type("linear", [(4, 5, 6)], out_features=7) == (4, 5, 7)  # on the last dim, like nn.Linear
    g, n = _one("linear", [(10,)], out_features=3)
    assert dict(g.node(n).attrs) == {"out_features": 3, "bias": True}
    opdef = get_op("linear")
    assert opdef.param_shapes({"out_features": 3, "bias": True}, [TensorType((10,))]) == {
        "weight": (3, 10), "bias": (3,)}
    assert opdef.param_shapes({"out_features": 3, "bias": False}, [TensorType((4, 10))]) == {"weight": (3, 10)}


# --------------------------------------------------------------------------- n-ary


def test_add_requires_equal_shapes():
    assert _type("add", [(4, 5, 5), (4, 5, 5)]) == (4, 5, 5)
    with pytest.raises(ShapeError, match="equal shapes"):
        _type("add", [(4, 5, 5), (4, 5, 4)])


@pytest.mark.parametrize("a,b,expected", [
    ((8, 4, 4), (8, 1, 1), (8, 4, 4)),   # squeeze-excite gate
    ((8, 1, 1), (8, 4, 4), (8, 4, 4)),
    ((1, 4, 4), (8, 1, 1), (8, 4, 4)),   # both sides broadcast
    ((8, 4, 4), (8, 4, 4), (8, 4, 4)),
    ((5,), (1,), (5,)),
])
def test_mul_broadcasting(a, b, expected):
    assert _type("mul", [a, b]) == expected
    assert tuple((_meta(a) * _meta(b)).shape[1:]) == expected


def test_mul_rejects_unbroadcastable():
    with pytest.raises(ShapeError, match="cannot broadcast"):
        _type("mul", [(8, 4, 4), (4, 4, 4)])
    with pytest.raises(ShapeError, match="equal ranks"):
        _type("mul", [(8, 4, 4), (8,)])


@pytest.mark.parametrize("shapes,dim,expected", [
    ([(2, 4, 4), (3, 4, 4)], 1, (5, 4, 4)),
    ([(2, 4, 4), (3, 4, 4)], -3, (5, 4, 4)),   # negative dims count from the end, batch included
    ([(2, 4, 4), (2, 4, 6)], -1, (2, 4, 10)),
    ([(2, 4, 4), (2, 1, 4), (2, 3, 4)], 2, (2, 8, 4)),
    ([(2, 4, 4)], 1, (2, 4, 4)),
])
def test_concat_shape_rule(shapes, dim, expected):
    assert _type("concat", shapes, dim=dim) == expected
    assert tuple(torch.cat([_meta(s) for s in shapes], dim=dim).shape[1:]) == expected


def test_concat_errors():
    with pytest.raises(ShapeError, match="dim 0 is the batch"):
        _type("concat", [(2, 4, 4), (2, 4, 4)], dim=0)
    with pytest.raises(ShapeError, match="out of range"):
        _type("concat", [(2, 4, 4), (2, 4, 4)], dim=-4)
    with pytest.raises(ShapeError, match="needs equal other dims"):
        _type("concat", [(2, 4, 4), (2, 5, 4)], dim=1)
    g, n = _one("concat", [(2, 4, 4), (3, 4, 4)])
    assert dict(g.node(n).attrs) == {"dim": 1}


# --------------------------------------------------------------------------- zero / elementwise


@pytest.mark.parametrize("shape,stride,expected", [
    ((4, 8, 8), 1, (4, 8, 8)),
    ((4, 7, 8), 2, (4, 4, 4)),
    ((4, 9, 9), 3, (4, 3, 3)),
    ((4, 10, 9), 4, (4, 3, 3)),
])
def test_zero_with_stride(shape, stride, expected):
    assert _type("zero", [shape], stride=stride) == expected
    assert tuple(_meta(shape)[:, :, ::stride, ::stride].shape[1:]) == expected


def test_zero_stride_one_keeps_any_rank():
    assert _type("zero", [(10,)]) == (10,)
    with pytest.raises(ShapeError):
        _type("zero", [(10,)], stride=2)


@pytest.mark.parametrize("op", ["relu", "relu6", "sigmoid", "hardswish", "hardsigmoid", "silu", "tanh",
                                "identity", "dropout", "drop_path", "auxiliary", "stop_gradient", "stop_forward", "scale", "batchnorm2d"])
def test_shape_preserving_ops(op):
    assert _type(op, [(5, 6, 7)]) == (5, 6, 7)


def test_batchnorm_and_scale_params():
    bn = get_op("batchnorm2d")
    t = [TensorType((6, 4, 4))]
    attrs = bn.normalize_attrs({})
    assert attrs == {"eps": 1e-5, "momentum": 0.1, "affine": True}
    assert bn.param_shapes(attrs, t) == {"weight": (6,), "bias": (6,)}
    assert bn.buffer_shapes(attrs, t) == {"running_mean": (6,), "running_var": (6,)}
    assert bn.param_shapes({**attrs, "affine": False}, t) == {}
    params, buffers = bn.init(attrs, t, np.random.default_rng(0))
    np.testing.assert_array_equal(params["weight"], np.ones(6, np.float32))
    np.testing.assert_array_equal(params["bias"], np.zeros(6, np.float32))
    np.testing.assert_array_equal(buffers["running_var"], np.ones(6, np.float32))
    sc = get_op("scale")
    assert sc.param_shapes({}, t) == {"weight": (6,)}
    np.testing.assert_array_equal(sc.init({}, t, np.random.default_rng(0))[0]["weight"], np.ones(6, np.float32))
    assert get_op("dropout").normalize_attrs({}) == {"p": 0.5}
    assert get_op("zero").normalize_attrs({}) == {"stride": 1}


# --------------------------------------------------------------------------- canonical attrs


def test_canonical_attr_form():
    conv = get_op("conv2d")
    a = conv.normalize_attrs({"out_channels": np.int64(4), "kernel_size": [3, 3], "stride": (2, 2),
                              "padding": [1, 2], "dilation": np.int32(1)})
    assert a["kernel_size"] == 3 and type(a["kernel_size"]) is int
    assert a["stride"] == 2
    assert a["padding"] == [1, 2]  # unequal pairs stay a JSON list
    assert type(a["out_channels"]) is int and type(a["dilation"]) is int
    bn = get_op("batchnorm2d").normalize_attrs({"eps": 1, "momentum": np.float32(0.25)})
    assert bn["eps"] == 1.0 and type(bn["eps"]) is float and type(bn["momentum"]) is float
    g, n = _one("conv2d", [(3, 8, 8)], out_channels=4, kernel_size=(3, 3), padding=[1, 1])
    assert g.node(n).attrs["kernel_size"] == 3 and g.node(n).attrs["padding"] == 1


@pytest.mark.parametrize("attrs,match", [
    ({"out_channels": True, "kernel_size": 3}, "must be an int"),          # bool is not an int
    ({"out_channels": 4, "kernel_size": [3, 3, 3]}, "pair of ints"),
    ({"out_channels": 4, "kernel_size": 3.0}, "pair of ints"),
    ({"out_channels": 4, "kernel_size": 0}, ">= 1"),
    ({"out_channels": 4, "kernel_size": 3, "bias": 1}, "must be a bool"),
    ({"kernel_size": 3}, "needs attribute 'out_channels'"),
])
def test_attr_schema_rejects(attrs, match):
    with pytest.raises(OpSchemaError, match=match):
        get_op("conv2d").normalize_attrs(attrs, node="c")


def test_float_attrs_must_be_finite():
    with pytest.raises(OpSchemaError, match="finite"):
        get_op("batchnorm2d").normalize_attrs({"eps": float("nan")})
    with pytest.raises(OpSchemaError, match="<= 1.0"):
        get_op("dropout").normalize_attrs({"p": 1.5})


# --------------------------------------------------------------------------- choice


def _cands():
    return [
        {"name": "conv", "ops": [{"op": "relu"}, {"op": "conv2d", "out_channels": 4, "kernel_size": [3, 3],
                                                  "padding": 1, "bias": False}, {"op": "batchnorm2d"}]},
        {"name": "pool", "ops": [{"op": "maxpool2d", "kernel_size": 3, "stride": 1, "padding": 1}]},
        {"name": "skip", "ops": []},
    ]


def test_choice_namespaced_params_and_canonical_candidates():
    g, n = _one("choice", [(4, 8, 8)], candidates=_cands())
    node = g.node(n)
    assert node.type.shape == (4, 8, 8)
    assert node.attrs["tie"] is None
    assert node.attrs["candidates"][0]["ops"][1]["kernel_size"] == 3  # steps are canonicalised too
    assert node.attrs["candidates"][0]["ops"][1]["stride"] == 1       # and get their defaults
    opdef = get_op("choice")
    t = [TensorType((4, 8, 8))]
    assert opdef.param_shapes(dict(node.attrs), t) == {
        "conv.1.weight": (4, 4, 3, 3), "conv.2.weight": (4,), "conv.2.bias": (4,)}
    assert opdef.buffer_shapes(dict(node.attrs), t) == {"conv.2.running_mean": (4,), "conv.2.running_var": (4,)}
    assert g.arch[n].shape == (3,)


def test_choice_candidates_must_agree_and_name_their_inputs():
    bad = _cands() + [{"name": "down", "ops": [{"op": "maxpool2d", "kernel_size": 2}]}]
    with pytest.raises(ShapeError, match="disagree"):
        _one("choice", [(4, 8, 8)], candidates=bad)
    for op in ("input", "choice", "auxiliary"):
        with pytest.raises(OpSchemaError, match="cannot be a step"):
            _one("choice", [(4, 8, 8)], candidates=[{"name": "a", "ops": [{"op": op}]}])
    # a two-input step must say which two steps it reads
    with pytest.raises(OpSchemaError, match="takes 2 input"):
        _one("choice", [(4, 8, 8)], candidates=[{"name": "a", "ops": [{"op": "add"}]}])
    with pytest.raises(OpSchemaError, match="unique"):
        _one("choice", [(4, 8, 8)], candidates=[{"name": "a", "ops": []}, {"name": "a", "ops": []}])
    with pytest.raises(OpSchemaError, match="non-empty list"):
        _one("choice", [(4, 8, 8)], candidates=[])


# --------------------------------------------------------------------------- registry


# one valid use of every op: (input shapes, attrs). A new op without an entry fails the test below.
OP_EXAMPLES = {
    "conv2d": ([(4, 8, 8)], dict(out_channels=8, kernel_size=3, padding=1, groups=2)),
    "linear": ([(12,)], dict(out_features=5)),
    "slice": ([(4, 8, 8)], dict(dim=3, start=1, end=-1, step=2)),
    "batchnorm2d": ([(4, 8, 8)], {}),
    "relu": ([(4, 8, 8)], {}), "relu6": ([(4, 8, 8)], {}), "sigmoid": ([(4, 8, 8)], {}),
    "hardswish": ([(4, 8, 8)], {}), "hardsigmoid": ([(4, 8, 8)], {}), "silu": ([(4, 8, 8)], {}),
    "tanh": ([(4, 8, 8)], {}), "identity": ([(4, 8, 8)], {}), "dropout": ([(4, 8, 8)], dict(p=0.1)),
    "drop_path": ([(4, 8, 8)], dict(p=0.2)), "auxiliary": ([(4, 8, 8)], dict(weight=0.4)),
    "stop_gradient": ([(4, 8, 8)], {}), "stop_forward": ([(4, 8, 8)], {}),
    "zero": ([(4, 8, 8)], dict(stride=2)),
    "maxpool2d": ([(4, 8, 8)], dict(kernel_size=2)), "avgpool2d": ([(4, 8, 8)], dict(kernel_size=2)),
    "global_avgpool": ([(4, 8, 8)], {}), "flatten": ([(4, 8, 8)], {}),
    "adaptive_avgpool2d": ([(4, 7, 5)], dict(output_size=[3, 2])),
    "add": ([(4, 8, 8), (4, 8, 8)], {}), "mul": ([(4, 8, 8), (4, 1, 1)], {}),
    "concat": ([(4, 8, 8), (2, 8, 8)], {}), "scale": ([(4, 8, 8)], {}),
    "leaky_relu": ([(4, 8, 8)], dict(negative_slope=0.2)), "gelu": ([(4, 8, 8)], dict(approximate="tanh")),
    "elu": ([(4, 8, 8)], dict(alpha=0.5)), "hardtanh": ([(4, 8, 8)], dict(min_val=-2.0, max_val=2.0)),
    "neg": ([(4, 8, 8)], {}), "sub": ([(4, 8, 8), (4, 1, 1)], {}), "div": ([(4, 8, 8), (4, 8, 8)], {}),
    "pad": ([(4, 8, 8)], dict(pads=[1, 0, 2, 1], mode="reflect")),
    "upsample": ([(4, 8, 8)], dict(scale_factor=2.0, mode="bilinear")),
    "mean": ([(4, 8, 8)], dict(dims=[2, 3], keepdim=True)), "sum": ([(4, 8, 8)], dict(dims=[1])),
    "conv1d": ([(4, 16)], dict(out_channels=6, kernel_size=3, stride=2, groups=2)),
    "softmax": ([(4, 8, 8)], dict(dim=1)), "log_softmax": ([(10,)], dict(dim=1)),
    "matmul": ([(2, 8, 4), (1, 4, 3)], {}),
    "permute": ([(4, 6, 8)], dict(dims=[1, 2, 0])), "reshape": ([(4, 6, 8)], dict(shape=[2, 2, 48])),
    "channel_shuffle": ([(4, 8, 8)], dict(groups=2)), "layernorm": ([(4, 8, 8)], dict(axis="channels", eps=1e-6)),
    "param": ([(4, 8, 8)], dict(shape=[3, 5])), "attention": ([(6, 8)], dict(num_heads=2)),
    "rel_attention": ([(3, 4, 8)], dict(num_heads=2, window=2)),  # maxvit
    "window_attention": ([(5, 6, 8)], dict(window_size=[4, 4], shift_size=[2, 2], num_heads=2)),  # swin
    "window_attention_v2": ([(5, 6, 8)], dict(window_size=[4, 4], shift_size=[2, 2], num_heads=2, cpb_hidden=16)),
    "choice": ([(4, 8, 8)], dict(candidates=_cands())),
}


def test_every_op_has_a_shape_rule_and_consistent_init():
    names = op_names()
    assert names == sorted(names) and "input" in names
    for required in ["input", "conv2d", "linear", "batchnorm2d", "relu", "relu6", "sigmoid", "hardswish", "silu",
                     "maxpool2d", "avgpool2d", "global_avgpool", "flatten", "add", "mul", "concat", "scale",
                     "identity", "zero", "dropout", "stop_gradient", "stop_forward", "choice"]:
        assert required in names, required
    assert sorted(set(names) - {"input"}) == sorted(OP_EXAMPLES), "add an OP_EXAMPLES entry for every new op"
    for op, (shapes, attrs) in OP_EXAMPLES.items():
        opdef = get_op(op)
        assert isinstance(opdef, OpDef) and opdef.name == op and callable(opdef.infer)
        g, n = _one(op, shapes, **attrs)
        # an auxiliary output follows the main one
        g.set_outputs(*([g.inputs_of(n)[0], n] if opdef.auxiliary_output else [n]))
        g.init_params(seed=0)
        g.validate()  # init produced exactly the param/buffer shapes the op declares
        node = g.node(n)
        assert isinstance(node.type, TensorType) and node.type.numel > 0
        ins = g.input_types(n)
        assert {k: v.shape for k, v in node.params.items()} == opdef.param_shapes(dict(node.attrs), ins)
        assert {k: v.shape for k, v in node.buffers.items()} == opdef.buffer_shapes(dict(node.attrs), ins)
    assert get_op("input").infer({"shape": [3, 4], "dtype": "float32"}, [], "x") == TensorType((3, 4))


def test_every_op_has_fx_and_onnx_lowerings():
    assert archir.lower.FX_HANDLERS.missing() == []
    assert archir.lower.ONNX_HANDLERS.missing() == []
    assert archir.lower.FX_HANDLERS.ops() >= set(op_names())
    assert archir.lower.ONNX_HANDLERS.ops() >= set(op_names())


def test_unknown_op_lists_known_ops():
    with pytest.raises(OpSchemaError) as ei:
        get_op("conv3d", node="n1")
    e = ei.value
    assert e.rule == "op" and e.node == "n1" and "conv3d" in str(e)
    assert "conv2d" in e.hint and "maxpool2d" in e.hint


def test_register_twice_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_op(OpDef("relu", arity=1, infer=lambda a, ins, node: ins[0]))
    assert get_op("relu").doc == "max(x, 0)"  # the original is kept


def test_op_handlers_table():
    h = OpHandlers("cost")

    @h.register("relu", "relu6")
    def _f(*args):
        return 0

    assert h.get("relu") is _f and h.ops() == {"relu", "relu6"}
    assert "conv2d" in h.missing() and "relu" not in h.missing()
    assert h.missing(["relu", "tanh"]) == ["tanh"]
    with pytest.raises(ValueError, match="already has a handler"):
        h.register("relu")(_f)
    with pytest.raises(OpSchemaError, match="no handler") as ei:
        h.get("tanh", node="t1")
    assert ei.value.node == "t1" and "@cost.register('tanh')" in ei.value.hint


def test_attrspec_optional_and_choices():
    s = AttrSpec("str", "a", choices=("a", "b"))
    assert s.normalize("m", "b", op="o", node=None) == "b"
    with pytest.raises(OpSchemaError, match="one of"):
        s.normalize("m", "c", op="o", node=None)
    assert AttrSpec("pair", None, optional=True).normalize("s", None, op="o", node=None) is None
    with pytest.raises(OpSchemaError, match="may not be None"):
        AttrSpec("int", 1).normalize("k", None, op="o", node=None)
    assert AttrSpec("ints", min=1).normalize("shape", (3, np.int64(4)), op="input", node=None) == [3, 4]
