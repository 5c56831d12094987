"""Op traits (``OpDef.traits``): every op declares every one, and each declaration is true.

The traits are what passes and cost models reason with (a wrong ``zero_preserving`` would let
``prune_zero_paths`` delete a live path; a wrong ``value_range`` would let ``deepen`` insert a
relu that changes the function), so each is checked against the op's own fx lowering on
random inputs, not just read back.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import archir
from archir.ops import OpDef, OpTraits, get_op, op_names, register_op
from archir.ops.registry import CATEGORIES

# one example node per op: (input shapes, attrs); ops that are not plain tensor functions are left out
EXAMPLES = {
    "conv2d": ([(3, 6, 6)], [{"out_channels": 4, "kernel_size": 3, "padding": 1, "bias": False},
                             {"out_channels": 4, "kernel_size": 3, "padding": 1}]),
    "linear": ([(5,)], [{"out_features": 3, "bias": False}, {"out_features": 3}]),
    "batchnorm2d": ([(3, 5, 5)], [{}]),
    "dropout": ([(3, 5, 5)], [{"p": 0.3}]),
    "drop_path": ([(3, 5, 5)], [{"p": 0.3}, {}]),  # (lowered in eval mode: the identity)
    "zero": ([(3, 5, 5)], [{}, {"stride": 2}]),
    "maxpool2d": ([(3, 6, 6)], [{"kernel_size": 3, "stride": 1, "padding": 1}]),
    "avgpool2d": ([(3, 6, 6)], [{"kernel_size": 3, "stride": 1, "padding": 1},
                                {"kernel_size": 3, "stride": 1, "padding": 1, "count_include_pad": False},
                                {"kernel_size": 2}]),
    "global_avgpool": ([(3, 5, 5)], [{}]),
    "adaptive_avgpool2d": ([(3, 5, 5)], [{"output_size": 3}]),
    "flatten": ([(3, 4, 4)], [{}]),
    "add": ([(3, 4, 4), (3, 4, 4)], [{}]),
    "mul": ([(3, 4, 4), (3, 1, 1)], [{}]),
    "concat": ([(3, 4, 4), (2, 4, 4)], [{}]),
    "scale": ([(3, 4, 4)], [{}]),
    "slice": ([(4, 6, 6)], [{"dim": 1, "start": 1, "end": 3}, {"dim": 2, "start": 1}, {"dim": 3, "step": 2},
                            {"dim": -1, "start": -4, "end": -1}]),
    "leaky_relu": ([(3, 5, 5)], [{}, {"negative_slope": 0.2}, {"negative_slope": -0.5}, {"negative_slope": 3.0}]),
    "gelu": ([(3, 5, 5)], [{}, {"approximate": "tanh"}]),
    "elu": ([(3, 5, 5)], [{}, {"alpha": 0.5}, {"alpha": -1.0}]),
    "hardtanh": ([(3, 5, 5)], [{}, {"min_val": 0.5, "max_val": 2.0}, {"min_val": -3.0, "max_val": -1.0},
                               {"min_val": 1.0, "max_val": 1.0}]),
    "neg": ([(3, 5, 5)], [{}]),
    "sub": ([(3, 4, 4), (3, 4, 4)], [{}]),
    "div": ([(3, 4, 4), (3, 1, 1)], [{}]),
    "pad": ([(3, 5, 5)], [{"pads": [1, 2, 0, 3]}, {"pads": [1, 2, 0, 3], "value": 0.5}, {"pads": [2, 1],
                          "mode": "reflect"}, {"pads": [4, 4, 4, 4], "mode": "replicate"}]),
    # ---- upsample / reductions / conv1d / softmax / matmul
    "upsample": ([(3, 4, 5)], [{"scale_factor": 2.0}, {"size": [7, 9], "mode": "bilinear"},
                               {"scale_factor": 1.5, "mode": "bilinear", "align_corners": True}]),
    "mean": ([(3, 4, 5)], [{"dims": [2, 3], "keepdim": True}, {"dims": [1]}, {"dims": [-1]}]),
    "sum": ([(3, 4, 5)], [{"dims": [2, 3]}, {"dims": [1], "keepdim": True}]),
    "conv1d": ([(3, 9)], [{"out_channels": 4, "kernel_size": 3, "padding": 1, "bias": False},
                          {"out_channels": 3, "kernel_size": 5, "groups": 3, "dilation": 2}]),
    "softmax": ([(3, 4, 5)], [{"dim": 1}, {"dim": -1}]),
    "log_softmax": ([(3, 4, 5)], [{"dim": 2}]),
    "matmul": ([(2, 4, 5), (2, 5, 3)], [{}]),
    "permute": ([(3, 4, 5)], [{"dims": [1, 2, 0]}, {"dims": [0, 2, 1]}]),
    "reshape": ([(3, 4, 4)], [{"shape": [12, 4]}, {"shape": [3, 1, 4, 4]}]),
    "channel_shuffle": ([(6, 3, 3)], [{"groups": 2}, {"groups": 3}]),
    "layernorm": ([(4, 3, 3)], [{}, {"axis": "channels"}, {"axis": "channels", "affine": False, "bias": False},
                                {"affine": True, "bias": False, "eps": 1e-3}]),
    # ---- transformer ops
    "param": ([(3, 4, 4)], [{"shape": [3, 4, 4]}, {"shape": [2, 7]}]),
    "attention": ([(5, 8)], [{"num_heads": 2}, {"num_heads": 4, "bias": False}]),
    # ---- maxvit
    "rel_attention": ([(3, 6, 8)], [{"num_heads": 2, "window": [2, 3]}, {"num_heads": 4, "window": [3, 2], "scale": 0.5}]),
    # ---- swin
    "window_attention": ([(5, 6, 8)], [{"window_size": [4, 4], "shift_size": [2, 2], "num_heads": 2},
                                       {"window_size": [3, 2], "num_heads": 4, "qkv_bias": False,
                                        "proj_bias": False}]),
    "window_attention_v2": ([(5, 6, 8)], [{"window_size": [4, 4], "shift_size": [2, 2], "num_heads": 2,
                                           "cpb_hidden": 16},
                                          {"window_size": [3, 2], "num_heads": 4, "qkv_bias": False,
                                           "proj_bias": False, "cpb_hidden": 8}]),
}
UNARY = ("relu", "relu6", "sigmoid", "hardswish", "hardsigmoid", "silu", "tanh", "identity", "stop_gradient",
         "stop_forward")
for _op in UNARY:
    EXAMPLES[_op] = ([(3, 5, 5)], [{}])
NOT_FUNCTIONS = {"input": "the graph interface", "choice": "a search-space node (archir.derive replaces it)",
                 "auxiliary": "marks an auxiliary training output: a later graph output that no node reads"}


def test_every_op_declares_every_trait():
    for name in op_names():
        traits = get_op(name).traits
        assert isinstance(traits, OpTraits), name
        assert traits.problems() == [], (name, traits.problems())
    assert set(op_names()) == set(EXAMPLES) | set(NOT_FUNCTIONS), "a new op needs an example here"


def test_a_missing_trait_is_caught_and_the_op_refused():
    full = get_op("relu").traits
    partial = OpTraits(**{f.name: getattr(full, f.name) for f in dataclasses.fields(OpTraits)
                          if f.name != "value_range"})
    assert partial.missing() == ["value_range"]  # the check the test above relies on does fail
    assert partial.problems() == ["trait 'value_range' is not declared"]
    infer = get_op("relu").infer
    with pytest.raises(ValueError, match=r"op 'relu_like' cannot be registered: trait 'value_range' is not declared"):
        register_op(OpDef("relu_like", arity=1, infer=infer, traits=partial))
    with pytest.raises(ValueError, match="no traits= given"):
        register_op(OpDef("relu_like", arity=1, infer=infer))
    with pytest.raises(ValueError, match="category 'activations' is not one of"):
        register_op(OpDef("relu_like", arity=1, infer=infer, traits=dataclasses.replace(full, category="activations")))
    assert "relu_like" not in op_names()


def _cases():
    for op, (shapes, attr_list) in sorted(EXAMPLES.items()):
        for k, attrs in enumerate(attr_list):
            yield pytest.param(op, shapes, attrs, id=f"{op}-{k}")


def _module(op, shapes, attrs, seed=0):
    g = archir.Graph("t")
    ins = [g.input(f"x{i}", s) for i, s in enumerate(shapes)]
    n = g.add(op, *ins, name="n", **attrs)
    g.set_outputs(n)
    g.init_params(seed=seed)
    if op == "batchnorm2d":  # non-trivial statistics, so the checks see a real affine map
        rng = np.random.default_rng(seed)
        c = shapes[0][0]
        g.set_buffers(n, running_mean=rng.normal(size=c).astype(np.float32),
                      running_var=rng.uniform(0.5, 2, c).astype(np.float32))
        g.set_params(n, weight=rng.normal(size=c).astype(np.float32), bias=rng.normal(size=c).astype(np.float32))
    m = archir.lower.to_fx(g)
    m.eval()
    return g, n, m


def _run(m, xs):
    with torch.no_grad():
        return m(*[torch.as_tensor(x, dtype=torch.float32) for x in xs]).numpy()


@pytest.mark.parametrize("op,shapes,attrs", list(_cases()))
def test_traits_hold_numerically(op, shapes, attrs):
    g, n, m = _module(op, shapes, attrs)
    t = get_op(op).traits
    node = g.node(n)
    rng = np.random.default_rng(1)
    xs = [rng.normal(0, 3, (4, *s)).astype(np.float32) for s in shapes]
    y = _run(m, xs)

    rule = t.zeros(node.attrs)
    zeros = [np.zeros_like(x) for x in xs]
    if rule in ("all", "always"):
        assert np.all(_run(m, zeros) == 0), f"{op}: zero_preserving={rule!r} but f(0) != 0"
    if rule == "always":
        assert np.all(y == 0), f"{op}: zero_preserving='always' but the output is not zero"
    if rule == "any":
        for k in range(len(xs)):
            assert np.all(_run(m, [zeros[j] if j == k else xs[j] for j in range(len(xs))]) == 0), op

    lo_hi = [(float(x.min()), float(x.max())) for x in xs]
    r = t.range_of(node.attrs, lo_hi)
    if r is not None:
        assert r[0] - 1e-6 <= y.min() and y.max() <= r[1] + 1e-6, f"{op}: values {y.min()}..{y.max()} outside {r}"
    if t.value_range == "input":
        assert lo_hi[0][0] - 1e-6 <= y.min() and y.max() <= lo_hi[0][1] + 1e-6, op

    if t.identity_on is not None:
        lo, hi = t.identity_on
        inside = np.clip(xs[0], lo, min(hi, 1e6))
        np.testing.assert_array_equal(_run(m, [inside]), inside)

    if t.channelwise:
        assert len(shapes) == 1 and y.shape[1] == xs[0].shape[1], f"{op}: channel-wise but the channel count changes"
        x2 = xs[0].copy()
        x2[:, 1] += rng.normal(0, 3, x2[:, 1].shape).astype(np.float32)
        changed = np.abs(_run(m, [x2]) - y).reshape(y.shape[0], y.shape[1], -1).max(axis=(0, 2))
        assert np.all(changed[[0, 2]] == 0), f"{op}: channel-wise, but channel 1 moved other channels"

    if t.merge is not None:
        assert len(shapes) >= 2
        a, b = (torch.as_tensor(x) for x in xs)
        want = {"sum": lambda: a + b, "product": lambda: a * b, "concat": lambda: torch.cat([a, b], 1),
                "difference": lambda: a - b, "quotient": lambda: a / b}[t.merge]()
        np.testing.assert_allclose(y, want.numpy(), rtol=1e-6, atol=1e-6)


def test_trait_values_name_real_categories_and_the_conv_epilogue_order():
    assert get_op("batchnorm2d").traits.conv_epilogue < get_op("add").traits.conv_epilogue \
        < get_op("relu").traits.conv_epilogue
    for name in op_names():
        t = get_op(name).traits
        assert t.category in CATEGORIES
        if t.identity_on is not None:
            assert t.category == "activation" and t.channelwise, name
        if t.zero_cost or t.channelwise:
            assert t.merge is None, name  # a view or a channel-wise op has one input
    assert math.isinf(get_op("relu").traits.identity_on[1])
