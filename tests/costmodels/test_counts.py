"""costmodels.count: exact counts on hand-computable networks, and MACs checked against torch.

Every expected figure is written out as arithmetic so a reader can check it by hand.
"""

import json

import pytest
import torch
from hypothesis import given, settings
from torch import nn

import archir
import costmodels
from archir import samples
from costmodels import COUNT_HANDLERS, count
from costmodels.counts import op_cost
from tests.strategies import decisions, graphs, supernets

F32 = 4  # bytes per float32


def _graph(in_shape, build, name="t"):
    """A graph with one input ``x``; ``build(g, x)`` returns the output id(s)."""
    g = archir.Graph(name)
    x = g.input("x", shape=in_shape)
    out = build(g, x)
    g.set_outputs(*(out if isinstance(out, tuple) else (out,)))
    return g


def _conv_net(cin, cout, k, hw, **attrs):
    return _graph((cin, hw, hw), lambda g, x: g.add("conv2d", x, out_channels=cout, kernel_size=k, name="c", **attrs))


# --------------------------------------------------------------------------- registry


def test_every_op_has_a_cost_handler():
    assert COUNT_HANDLERS.missing() == []
    assert COUNT_HANDLERS.missing(archir.ops.op_names()) == []


def test_missing_handler_error_says_how_to_register():
    with pytest.raises(archir.OpSchemaError) as e:
        op_cost("no_such_op", {}, [], archir.TensorType((1,)), node="n1")
    msg = str(e.value)
    assert "n1" in msg and "no_such_op" in msg and "costmodels.count.register" in msg


def test_count_register_is_the_handler_table():
    assert costmodels.count.register == COUNT_HANDLERS.register
    with pytest.raises(ValueError, match="already has a handler"):
        costmodels.count.register("conv2d")(lambda a, i, o: None)


# --------------------------------------------------------------------------- conv / linear


def test_conv3x3_is_exact():
    # 3x3 conv 3 -> 16 on 32x32, padding 1: output 16x32x32, each output reads 3*3*3 inputs
    c = count(_conv_net(3, 16, 3, 32, padding=1))
    macs = 16 * 3 * 9 * 32 * 32
    assert c.macs == c["c"].macs == macs == 442_368
    assert c.params == 16 * 3 * 9 + 16  # weight + bias
    assert c["c"].flops == 2 * macs + 16 * 32 * 32  # one add per output for the bias
    assert c["c"].activation_bytes == 16 * 32 * 32 * F32
    assert c["c"].weight_bytes == (16 * 3 * 9 + 16) * F32
    assert c["x"].activation_bytes == 0  # the input is given, not computed
    assert c.activation_bytes == 16 * 32 * 32 * F32


def test_conv_without_bias_stride_dilation():
    # 5x5 conv, stride 2, no padding, on 3x17x17: out = (17 - 5) // 2 + 1 = 7
    c = count(_conv_net(3, 8, 5, 17, stride=2, bias=False))
    assert c.macs == 8 * 7 * 7 * 3 * 25
    assert c.flops == 2 * c.macs
    assert c.params == 8 * 3 * 25
    # 3x3 conv dilation 2, padding 2 on 4x10x10: the effective kernel is 5x5, out stays 10x10
    c = count(_conv_net(4, 4, 3, 10, dilation=2, padding=2, bias=False))
    assert c.macs == 4 * 10 * 10 * 4 * 9  # dilation spreads the taps but does not add any


def test_rectangular_conv():
    # kernel (1, 3), padding (0, 1) on 2x6x8 -> 5x6x8
    c = count(_graph((2, 6, 8), lambda g, x: g.add("conv2d", x, out_channels=5, kernel_size=[1, 3],
                                                    padding=[0, 1], bias=False)))
    assert c.macs == 5 * 6 * 8 * 2 * 3


def test_grouped_and_depthwise_conv():
    # groups=4: 8 -> 16, each output channel reads 8 / 4 = 2 input channels
    c = count(_conv_net(8, 16, 3, 8, padding=1, groups=4, bias=False))
    assert c.macs == 16 * 8 * 8 * (8 // 4) * 9
    assert c.params == 16 * 2 * 9
    # depthwise: groups = channels = 12, one input channel per output channel
    c = count(_conv_net(12, 12, 3, 8, padding=1, groups=12, bias=False))
    assert c.macs == 12 * 8 * 8 * 1 * 9
    assert c.params == 12 * 9
    # depthwise with channel multiplier 2: 6 -> 12, groups 6
    c = count(_conv_net(6, 12, 3, 8, padding=1, groups=6, bias=False))
    assert c.macs == 12 * 8 * 8 * 1 * 9


def test_halving_in_and_out_channels_quarters_macs():
    full = count(_conv_net(32, 64, 3, 16, padding=1, bias=False)).macs
    half = count(_conv_net(16, 32, 3, 16, padding=1, bias=False)).macs
    assert full == 4 * half


def test_linear():
    c = count(_graph((64,), lambda g, x: g.add("linear", x, out_features=10, name="fc")))
    assert c.macs == 64 * 10
    assert c.params == 64 * 10 + 10
    assert c.flops == 2 * 64 * 10 + 10
    # linear on a rank-2 sample (C, L): applied to each of the 5 rows
    c = count(_graph((5, 7), lambda g, x: g.add("linear", x, out_features=3, bias=False)))
    assert c.macs == 5 * 7 * 3


def test_batch_size_scales_activations_not_weights():
    g = samples.resnet_like()
    c1, c4 = count(g), count(g, batch_size=4)
    for k in ("macs", "flops", "activation_bytes", "peak_bytes"):
        assert getattr(c4, k) == 4 * getattr(c1, k), k
    assert (c4.params, c4.weight_bytes) == (c1.params, c1.weight_bytes)
    assert c4.batch_size == 4


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_bad_batch_size(bad):
    with pytest.raises(ValueError, match="batch_size"):
        count(samples.chain(), batch_size=bad)


# --------------------------------------------------------------------------- flops conventions


def test_flops_conventions_of_a_small_chain():
    # x (2, 4, 4) -> bn -> relu6 -> maxpool 2 -> gap -> flatten -> linear(3)
    def build(g, x):
        h = g.add("batchnorm2d", x, name="bn")
        h = g.add("relu6", h, name="act")
        h = g.add("maxpool2d", h, kernel_size=2, name="pool")        # -> (2, 2, 2)
        h = g.add("global_avgpool", h, name="gap")                   # -> (2, 1, 1)
        h = g.add("flatten", h, name="flat")                         # -> (2,)
        return g.add("linear", h, out_features=3, name="fc")

    c = count(_graph((2, 4, 4), build))
    n = 2 * 4 * 4
    expect = {
        "bn": 2 * n,             # x * a + b
        "act": 2 * n,            # min, max
        "pool": 4 * (2 * 2 * 2),  # a 2x2 window per output element
        "gap": 2 * 2 * 2,        # one per input element
        "flat": 0,
        "fc": 2 * 2 * 3 + 3,     # 2 per MAC + bias
    }
    assert {k: c[k].flops for k in expect} == expect
    assert c.flops == sum(expect.values()) == 183
    assert c.macs == 2 * 3  # only the linear
    assert c["bn"].params == 2 * 2 and c["bn"].weight_bytes == (2 * 2 + 2 * 2) * F32  # + running stats


@pytest.mark.parametrize("op,per_elem", [("relu", 1), ("relu6", 2), ("sigmoid", 4), ("hardsigmoid", 4),
                                         ("hardswish", 5), ("silu", 5), ("tanh", 5), ("scale", 1),
                                         ("stop_forward", 1), ("identity", 0), ("dropout", 0),
                                         ("stop_gradient", 0)])
def test_elementwise_flops(op, per_elem):
    c = count(_graph((3, 5, 5), lambda g, x: g.add(op, x, name="y")))
    assert c["y"].flops == per_elem * 3 * 5 * 5
    assert c.macs == 0


def test_binary_nary_and_zero():
    def build(g, x):
        a = g.add("relu", x, name="a")
        s = g.add("add", a, x, name="sum")                                  # (4, 6, 6)
        gate = g.add("global_avgpool", s, name="gate")                      # (4, 1, 1)
        m = g.add("mul", s, gate, name="prod")                              # broadcast to (4, 6, 6)
        cat = g.add("concat", m, s, name="cat")                             # (8, 6, 6)
        z = g.add("zero", cat, stride=2, name="z")                          # (8, 3, 3)
        return g.add("avgpool2d", z, kernel_size=3, stride=1, padding=1, name="ap")  # (8, 3, 3)

    c = count(_graph((4, 6, 6), build))
    assert c["sum"].flops == c["prod"].flops == 4 * 36
    assert c["cat"].flops == c["z"].flops == 0
    assert c["ap"].flops == 9 * 8 * 3 * 3
    assert c["cat"].activation_bytes == 8 * 36 * F32
    # traffic: concat reads both inputs and writes its output; zero only writes
    assert c["cat"].bytes_moved == (4 * 36 + 4 * 36 + 8 * 36) * F32
    assert c["z"].bytes_moved == 8 * 9 * F32
    assert c["prod"].bytes_moved == (4 * 36 + 4 + 4 * 36) * F32


def test_views_move_nothing():
    c = count(_graph((4, 2, 2), lambda g, x: g.add("flatten", g.add("identity", x, name="i"), name="f")))
    assert c["i"].bytes_moved == c["f"].bytes_moved == 0
    assert c["f"].activation_bytes == 16 * F32


def test_params_match_the_graph_and_need_no_weights():
    for name, build in samples.SAMPLES.items():
        g = build()
        assert count(g).params == g.num_params(), name
    g = _conv_net(3, 16, 3, 8)  # never initialised
    assert count(g).params == 16 * 3 * 9 + 16


# --------------------------------------------------------------------------- peak memory


def test_peak_bytes_on_a_branch():
    # x -> a=conv1x1 -> b=relu(a); c=conv1x1(a); d=add(b, c). Schedule x, a, b, c, d.
    def build(g, x):
        a = g.add("conv2d", x, out_channels=4, kernel_size=1, name="a")
        b = g.add("relu", a, name="b")
        c = g.add("conv2d", a, out_channels=4, kernel_size=1, name="c")
        return g.add("add", b, c, name="d")

    c = count(_graph((3, 8, 8), build))
    x, t = 3 * 64 * F32, 4 * 64 * F32
    # x lives [x, a]; a [a, c]; b [b, d]; c [c, d]; d [d, end]
    assert [c[n].live_bytes for n in "xabcd"] == [x, x + t, 2 * t, 3 * t, 3 * t]
    assert c.peak_bytes == 3 * t and c.peak_node == "c"


def test_outputs_stay_live_and_inputs_start_live():
    # outputs (a, c): a must stay live to the end although nothing reads it after b
    def build(g, x):
        a = g.add("relu", x, name="a")
        b = g.add("relu", a, name="b")
        return a, g.add("relu", b, name="c")

    c = count(_graph((2, 4, 4), build))
    s = 2 * 16 * F32
    assert [c[n].live_bytes for n in "xabc"] == [s, 2 * s, 2 * s, 3 * s]
    assert c.peak_bytes == 3 * s


def test_second_input_is_live_from_the_start():
    g = archir.Graph("two")
    x = g.input("x", shape=(8,))
    h = g.add("linear", x, out_features=8, name="h")
    y = g.input("y", shape=(8,))  # scheduled late, but a graph input exists from the start
    g.set_outputs(g.add("add", h, y, name="s"))
    c = count(g)
    s = 8 * F32
    assert c["x"].live_bytes == 2 * s  # x and y
    assert c["h"].live_bytes == 3 * s
    assert c["s"].live_bytes == 3 * s  # x is freed after h; y, h and s remain


def test_views_share_storage_in_peak():
    # x (4, 2, 2) -> gap (4, 1, 1) -> flatten (view of gap) -> linear 3
    def build(g, x):
        return g.add("linear", g.add("flatten", g.add("global_avgpool", x, name="gap"), name="f"),
                     out_features=3, name="fc")

    c = count(_graph((4, 2, 2), build))
    assert [c[n].live_bytes for n in ("x", "gap", "f", "fc")] == [64, 64 + 16, 16, 16 + 12]


def test_peak_is_at_least_the_largest_step():
    for name, build in samples.SAMPLES.items():
        g = build()
        c = count(g)
        assert c.peak_bytes == max(r.live_bytes for r in c.nodes.values())
        for r in c.nodes.values():
            assert r.live_bytes >= r.activation_bytes, (name, r.id)
        # never more than every tensor at once
        assert c.peak_bytes <= c.activation_bytes + sum(F32 * g.node(i).type.numel for i in g.inputs)


# --------------------------------------------------------------------------- choice (supernets)


def _supernet():
    cands = [{"name": "c3", "ops": [{"op": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1,
                                     "bias": False}]},
             {"name": "c5", "ops": [{"op": "conv2d", "out_channels": 4, "kernel_size": 5, "padding": 2,
                                     "bias": False}, {"op": "batchnorm2d"}]},
             {"name": "skip", "ops": []}]
    g = _graph((4, 8, 8), lambda g, x: g.add("choice", x, candidates=cands, name="ch"))
    return g.init_params(0)


def test_choice_counts_the_sum_over_candidates():
    c = count(_supernet())
    m3, m5 = 4 * 64 * 4 * 9, 4 * 64 * 4 * 25
    assert c.supernet
    assert c["ch"].macs == m3 + m5
    assert c["ch"].flops == 2 * m3 + 2 * m5 + 2 * 4 * 64  # + the bn of c5; skip is free
    assert c["ch"].params == 4 * 4 * 9 + 4 * 4 * 25 + 2 * 4
    assert c["ch"].weight_bytes == (4 * 4 * 9 + 4 * 4 * 25 + 2 * 4 + 2 * 4) * F32
    t = 4 * 64 * F32
    # while the choice runs: x, its output, and every candidate's intermediates (c3; c5 conv, bn)
    assert c["ch"].live_bytes == t + t + 3 * t


def test_derived_graph_counts_one_candidate():
    g = _supernet()
    assert count(archir.derive(g, {"ch": "c3"})).macs == 4 * 64 * 4 * 9
    assert count(archir.derive(g, {"ch": "skip"})).macs == 0
    assert not count(archir.derive(g, {"ch": "c5"})).supernet


@settings(max_examples=10)
@given(supernets(max_cells=2, max_nodes_per_cell=2).flatmap(lambda g: decisions(g).map(lambda d: (g, d))))
def test_supernet_bounds_every_derived_graph(pair):
    g, dec = pair
    sup, one = count(g), count(archir.derive(g, dec))
    assert sup.macs >= one.macs and sup.flops >= one.flops and sup.params >= one.params


# --------------------------------------------------------------------------- cross-check with torch


def _hook_macs(g, batch=2):
    """MACs of every Conv2d/Linear in ``to_fx(g)``, measured by forward hooks, by node id."""
    gm = archir.lower.to_fx(g).eval()
    path_to_node = {p: n for n, p in gm.meta["archir_modules"].items()}
    found = {}

    def hook(name):
        def fn(m, inp, out):
            if isinstance(m, nn.Conv2d):
                found[name] = out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            else:
                found[name] = out.numel() * m.in_features

        return fn

    for name, m in gm.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(hook(path_to_node[name]))
    xs = [torch.randn(batch, *g.node(i).type.shape) for i in g.inputs]
    with torch.inference_mode():
        gm(*xs)
    return found


@pytest.mark.parametrize("name", sorted(samples.SAMPLES))
def test_macs_match_torch_hooks_on_sample_nets(name):
    g = samples.SAMPLES[name]()
    c = count(g, batch_size=2)
    hooked = _hook_macs(g, batch=2)
    mine = {r.id: r.macs for r in c.nodes.values() if r.op in ("conv2d", "linear")}
    assert mine == hooked
    assert c.macs == sum(hooked.values()) > 0


@settings(max_examples=15)
@given(graphs(max_nodes=10))
def test_macs_match_torch_hooks_on_random_graphs(g):
    c = count(g, batch_size=2)
    hooked = _hook_macs(g, batch=2)
    assert {r.id: r.macs for r in c.nodes.values() if r.op in ("conv2d", "linear")} == hooked
    assert c.params == g.num_params()


# --------------------------------------------------------------------------- the Counts object


def test_counts_api():
    g = samples.resnet_like()
    c = count(g)
    assert list(c.nodes) == g.topo_order()
    assert c.macs == sum(r.macs for r in c.nodes.values())
    assert c.bytes_moved == sum(r.bytes_moved for r in c.nodes.values())
    assert c.totals()["peak_bytes"] == c.peak_bytes
    by_op = c.by_op()
    assert by_op["conv2d"]["macs"] == c.macs - c["head"].macs
    assert sum(d["nodes"] for d in by_op.values()) == len(g)
    d = json.loads(json.dumps(c.to_dict()))
    assert d["totals"]["macs"] == c.macs and len(d["nodes"]) == len(g)
    table = c.table()
    assert "stem.conv" in table and f"{c.macs:,}" in table and f"peak {c.peak_bytes:,}" in table
    with pytest.raises(KeyError, match="no node 'nope'"):
        c["nope"]
    with pytest.raises(TypeError):
        c.nodes["x"] = None  # read-only


def test_invalid_graph_is_refused():
    g = archir.Graph("no_outputs")
    g.input("x", shape=(3, 4, 4))
    with pytest.raises(archir.IRError, match="no outputs"):
        count(g)


def test_archir_does_not_import_costmodels():
    # DESIGN.md: arrows point down; the IR (all but its CLI) must work without costmodels
    import subprocess
    import sys

    code = ("import sys, archir, archir.lower, archir.samples, archir.serialize, archir.choice; "
            "print('costmodels' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
