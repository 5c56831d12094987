"""archir.Graph: the builder API contract of issue 2, node views, editing, copies, hashes."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
import torch

import archir
from archir import GraphStructureError, OpSchemaError, ShapeError, TensorType, WeightError


def small(seed: int = 0, names: tuple[str, ...] = ("x", "a", "b", "cat", "head"), k: int = 3, swap=False):
    """x -> conv a (4 ch) ; x -> relu -> conv b (4 ch) ; concat(a, b) -> gap -> flatten -> linear."""
    x_, a_, b_, cat_, head_ = names
    g = archir.Graph("small")
    x = g.input(x_, (3, 8, 8))
    a = g.add("conv2d", x, out_channels=4, kernel_size=k, padding=k // 2, name=a_)
    r = g.add("relu", x)
    b = g.add("conv2d", r, out_channels=4, kernel_size=1, name=b_)
    c = g.add("concat", *((b, a) if swap else (a, b)), name=cat_)
    y = g.add("linear", g.add("flatten", g.add("global_avgpool", c, name="gap"), name="flat"), out_features=3,
              name=head_)
    g.set_outputs(y)
    g.init_params(seed=seed)
    return g


# --------------------------------------------------------------------------- the contract


def test_tiny_example_verbatim(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # ---- verbatim from issue 2
    import archir
    g = archir.Graph("tiny")
    x = g.input("x", shape=(3, 32, 32))          # (C, H, W); the batch dim is symbolic
    h = g.add("conv2d", x, out_channels=16, kernel_size=3, padding=1, name="stem.conv")
    h = g.add("batchnorm2d", h)
    h = g.add("relu", h)
    h = g.add("add", h, h)
    h = g.add("global_avgpool", h)
    h = g.add("flatten", h)
    y = g.add("linear", h, out_features=10, name="head")
    g.set_outputs(y)
    g.init_params(seed=0)
    g.validate()
    archir.save(g, "tiny.json")                   # tiny.json (structure) + tiny.safetensors (weights)
    g2 = archir.load("tiny.json")
    module = archir.lower.to_fx(g)               # torch.fx.GraphModule
    proto = archir.lower.to_onnx(g)              # onnx.ModelProto
    # ---- what it promises
    assert x == "x" and y == "head"
    assert (tmp_path / "tiny.json").is_file() and (tmp_path / "tiny.safetensors").is_file()
    assert g.node("stem.conv").type == TensorType((16, 32, 32))
    assert g.node(y).type == TensorType((10,))
    assert g.num_params() == 16 * 3 * 9 + 16 + 2 * 16 + 16 * 10 + 10
    assert g2.structural_hash() == g.structural_hash() and g2.weights_hash() == g.weights_hash()
    assert isinstance(module, torch.fx.GraphModule)
    out = module.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert isinstance(proto, onnx.ModelProto)
    assert [i.name for i in proto.graph.input] == ["x"] and [o.name for o in proto.graph.output] == ["head"]


def test_add_returns_ids_and_auto_names_are_unique_readable():
    g = archir.Graph("g")
    x = g.input("x", (3, 8, 8))
    ids = [g.add("relu", x) for _ in range(3)]
    assert len(set(ids)) == 3 and all(i in g for i in ids)
    assert all(i.startswith("relu_") and re.fullmatch(r"[A-Za-z0-9_\-.]+", i) for i in ids)
    named = g.add("sigmoid", ids[0], name="cell1.n0.gate")
    assert named == "cell1.n0.gate" and g.node(named).op == "sigmoid"
    # an automatic name never takes a name the user already gave
    g2 = archir.Graph("g2")
    x = g2.input("x", (3, 8, 8))
    g2.add("relu", x, name="relu_1")
    g2.add("relu", x, name="relu_2")
    auto = g2.add("relu", x)
    assert auto not in ("relu_1", "relu_2") and len(g2) == 4


@pytest.mark.parametrize("bad", ["a b", "", ".a", "a..b", "a.", "x/y", "ü"])
def test_unreadable_names_are_refused(bad):
    g = archir.Graph("g")
    x = g.input("x", (3, 8, 8))
    with pytest.raises(GraphStructureError, match="not a readable id") as ei:
        g.add("relu", x, name=bad)
    assert ei.value.rule == "id"
    assert len(g) == 1


def test_duplicate_names_are_refused():
    g = archir.Graph("g")
    x = g.input("x", (3, 8, 8))
    g.add("relu", x, name="r")
    with pytest.raises(GraphStructureError, match="already exists") as ei:
        g.add("sigmoid", x, name="r")
    assert ei.value.node == "r" and ei.value.rule == "id"
    assert g.node("r").op == "relu"
    with pytest.raises(GraphStructureError, match="already exists"):
        g.input("x", (3, 8, 8))
    assert g.inputs == ("x",)


def test_add_rejects_unknown_inputs_and_input_op():
    g = archir.Graph("g")
    x = g.input("x", (3, 8, 8))
    with pytest.raises(GraphStructureError, match="not a node of this graph") as ei:
        g.add("add", x, "nope", name="s")
    assert ei.value.node == "s"
    with pytest.raises(OpSchemaError, match="g.input"):
        g.add("input", shape=[3])
    assert len(g) == 1 and list(g.nx.edges) == []


def test_failed_add_leaves_graph_unchanged():
    g = small()
    before = (sorted(g), sorted(g.nx.edges(data="port")))
    with pytest.raises(ShapeError):
        g.add("add", "a", "x", name="bad")
    with pytest.raises(OpSchemaError):
        g.add("conv2d", "x", out_channels=0, kernel_size=1, name="bad")
    assert (sorted(g), sorted(g.nx.edges(data="port"))) == before


def test_node_view():
    g = small()
    n = g.node("a")
    assert n.id == "a" and n.op == "conv2d"
    assert dict(n.attrs) == {"out_channels": 4, "kernel_size": 3, "stride": 1, "padding": 1, "dilation": 1,
                             "groups": 1, "bias": True}
    assert set(n.params) == {"weight", "bias"} and n.params["weight"].shape == (4, 3, 3, 3)
    assert dict(n.buffers) == {}
    assert n.type == TensorType((4, 8, 8)) and n.type.dtype == "float32"
    assert g.node("x").type == TensorType((3, 8, 8))
    assert g.node("cat").type.shape == (8, 8, 8)
    assert "conv2d" in repr(n) and "(N, 4, 8, 8)" in repr(n)
    with pytest.raises(TypeError):
        n.attrs["out_channels"] = 5
    with pytest.raises(TypeError):
        n.params["weight"] = np.zeros((4, 3, 3, 3), np.float32)
    with pytest.raises(GraphStructureError, match="no node 'zz'") as ei:
        g.node("zz")
    assert ei.value.rule == "id"
    assert [m.id for m in g.nodes("conv2d")] == ["a", "b"]


def test_inputs_of_port_order_and_parallel_edges():
    g = small(swap=True)
    assert g.inputs_of("cat") == ["b", "a"]
    g2 = archir.Graph("g")
    x = g2.input("x", (3, 4, 4))
    r = g2.add("relu", x)
    s = g2.add("add", r, r, name="s")
    assert g2.inputs_of(s) == [r, r]
    assert g2.nx.number_of_edges(r, s) == 2
    assert sorted(p for _, _, p in g2.nx.in_edges(s, data="port")) == [0, 1]
    assert sorted(g2.users_of(r)) == [(s, 0), (s, 1)]
    assert g2.inputs_of(x) == []
    # a variadic op keeps its port order
    c = g2.add("concat", x, r, x, name="c")
    assert g2.inputs_of(c) == [x, r, x]
    assert g2.node(c).type.shape == (9, 4, 4)


def test_users_of():
    g = small()
    assert sorted(g.users_of("x")) == [("a", 0), ("relu_1", 0)]
    assert g.users_of("a") == [("cat", 0)] and g.users_of("b") == [("cat", 1)]
    assert g.users_of("head") == []
    with pytest.raises(GraphStructureError):
        g.users_of("nope")


def test_topo_order_is_deterministic_and_respects_edges():
    g = small()
    order = g.topo_order()
    assert order == ["x", "a", "relu_1", "b", "cat", "gap", "flat", "head"]
    assert order == small(seed=3).topo_order() == g.copy().topo_order()
    pos = {n: i for i, n in enumerate(order)}
    assert all(pos[u] < pos[v] for u, v in g.nx.edges())
    # ties follow insertion order, even when a later branch is wired first
    h = archir.Graph("h")
    x = h.input("x", (2, 4, 4))
    b1 = h.add("relu", x, name="b1")
    b2 = h.add("sigmoid", x, name="b2")
    h.add("add", b2, b1, name="s")
    assert h.topo_order() == ["x", "b1", "b2", "s"]


def test_copy_shares_arrays_and_is_structurally_independent():
    g = small()
    g.meta["note"] = {"k": [1]}
    c = g.copy()
    assert c is not g and c.nx is not g.nx
    assert c.node("a").params["weight"] is g.node("a").params["weight"]  # shared, read-only
    assert c.structural_hash() == g.structural_hash() and c.weights_hash() == g.weights_hash()
    assert c.inputs == g.inputs and c.outputs == g.outputs and c.meta == g.meta
    # structure and attributes are independent
    new = c.add("relu", "head", name="extra")
    c.set_outputs(new)
    c.set_attrs("b", out_channels=4, kernel_size=3, padding=1)
    c.set_params("a", weight=np.zeros((4, 3, 3, 3)))
    c.meta["note"]["k"].append(2)
    assert "extra" not in g and g.outputs == ("head",)
    assert g.node("b").attrs["kernel_size"] == 1 and c.node("b").attrs["kernel_size"] == 3
    assert np.abs(g.node("a").params["weight"]).sum() > 0
    assert g.meta == {"note": {"k": [1]}}
    assert c.copy(name="other").name == "other"
    g.validate()


def test_arrays_are_read_only():
    g = small()
    w = g.node("a").params["weight"]
    assert not w.flags.writeable and w.dtype == np.float32
    with pytest.raises(ValueError, match="read-only"):
        w[0, 0, 0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        w += 1
    src = np.ones((4,), np.float64)
    g.set_params("a", bias=src)
    stored = g.node("a").params["bias"]
    assert stored.dtype == np.float32 and not stored.flags.writeable
    src[0] = 5.0  # the graph keeps its own copy
    assert stored[0] == 1.0
    with pytest.raises(ValueError, match="read-only"):
        stored[0] = 2.0
    bn = archir.Graph("bn")
    bn.set_outputs(bn.add("batchnorm2d", bn.input("x", (2, 2, 2)), name="bn"))
    bn.init_params(0)
    with pytest.raises(ValueError, match="read-only"):
        bn.node("bn").buffers["running_mean"][0] = 1.0
    sup = archir.Graph("sup")
    sup.set_outputs(sup.add("choice", sup.input("x", (2, 2, 2)), name="c",
                            candidates=[{"name": "r", "ops": [{"op": "relu"}]}, {"name": "s", "ops": []}]))
    sup.init_params(0)
    with pytest.raises(ValueError, match="read-only"):
        sup.arch["c"][0] = 1.0


def test_set_params_and_buffers():
    g = small()
    old_bias = g.node("a").params["bias"]
    g.set_params("a", weight=np.full((4, 3, 3, 3), 0.5))
    assert g.node("a").params["bias"] is old_bias  # untouched params are kept
    np.testing.assert_array_equal(g.node("a").params["weight"], np.full((4, 3, 3, 3), 0.5, np.float32))
    g.validate()
    with pytest.raises(WeightError, match="not a float32 array") as ei:
        g.set_params("a", weight=[[1, 2], [3]])
    assert ei.value.node == "a"
    bn = archir.Graph("bn")
    bn.set_outputs(bn.add("batchnorm2d", bn.input("x", (2, 2, 2)), name="bn"))
    bn.init_params(0)
    bn.set_buffers("bn", running_var=[2.0, 3.0])
    np.testing.assert_array_equal(bn.node("bn").buffers["running_var"], np.array([2, 3], np.float32))
    bn.validate()


def test_set_attrs_checks_and_reinfers():
    g = small()
    g.set_attrs("a", out_channels=6)
    assert g.node("a").attrs["out_channels"] == 6 and g.node("a").type.shape == (6, 8, 8)
    with pytest.raises(OpSchemaError, match="must be >= 1"):
        g.set_attrs("a", out_channels=-1)
    with pytest.raises(ShapeError, match="does not fit"):
        g.set_attrs("a", kernel_size=11, padding=0)
    assert g.node("a").attrs["kernel_size"] == 3 and g.node("a").attrs["out_channels"] == 6  # unchanged
    with pytest.raises(OpSchemaError, match="no attribute"):
        g.set_attrs("a", in_channels=3)
    g.set_attrs("a", out_channels=4)
    g.validate()


def test_set_input_and_replace_uses():
    g = small()
    g.set_input("cat", 1, "a")
    assert g.inputs_of("cat") == ["a", "a"]
    assert g.users_of("b") == []
    with pytest.raises(GraphStructureError, match="no input port 2") as ei:
        g.set_input("cat", 2, "a")
    assert ei.value.node == "cat"
    with pytest.raises(GraphStructureError, match="no node"):
        g.set_input("cat", 0, "nope")

    g = small()
    g.replace_uses("a", "b")
    assert g.inputs_of("cat") == ["b", "b"] and g.users_of("a") == []
    g = small()
    g.replace_uses("head", "flat")
    assert g.outputs == ("flat",)
    g = small()
    r2 = g.add("relu", "a", name="r2")
    g.replace_uses("a", r2, exclude=[])  # r2 itself keeps reading a: no cycle
    assert g.inputs_of("cat") == ["r2", "b"] and g.inputs_of("r2") == ["a"]
    g.validate()
    g = small()
    g.replace_uses("x", "a", exclude=["a"])
    assert g.inputs_of("relu_1") == ["a"] and g.inputs_of("a") == ["x"]


def test_remove():
    g = small()
    with pytest.raises(GraphStructureError, match="still used") as ei:
        g.remove("a")
    assert ei.value.node == "a" and ei.value.rule == "remove"
    with pytest.raises(GraphStructureError, match="still used"):
        g.remove("head")  # an output
    extra = g.add("relu", "a", name="dead")
    g.remove(extra)
    assert "dead" not in g and g.users_of("a") == [("cat", 0)]
    g2 = archir.Graph("g2")
    g2.input("x", (3,))
    y = g2.input("y", (3,))
    g2.set_outputs(g2.add("relu", y))
    g2.remove("x")
    assert g2.inputs == ("y",)
    g2.validate()


# --------------------------------------------------------------------------- identity


def test_structural_hash_ignores_names_and_weights():
    h = small().structural_hash()
    assert isinstance(h, str) and len(h) == 32
    assert small(seed=7, names=("inp", "left", "right", "join", "out")).structural_hash() == h
    assert small().structural_hash() == h  # stable across builds


def test_structural_hash_sees_attrs_ports_and_outputs():
    h = small().structural_hash()
    assert small(k=5).structural_hash() != h
    assert small(swap=True).structural_hash() != h  # concat is not commutative
    g = small()
    g.set_attrs("a", bias=False)
    assert g.structural_hash() != h
    g = small()
    g.set_outputs("head", "cat")
    assert g.structural_hash() != h

    def cat_of(swap):
        g = archir.Graph("g")
        x = g.input("x", (3, 8, 8))
        a, b = g.add("relu", x), g.add("sigmoid", x)  # same output types: only the ports tell them apart
        g.set_outputs(g.add("concat", *((b, a) if swap else (a, b))))
        return g.structural_hash()

    assert cat_of(False) != cat_of(True)


def test_structural_hash_of_parallel_edges():
    def build(shared):
        g = archir.Graph("g")
        x = g.input("x", (3, 4, 4))
        r = g.add("relu", x)
        g.set_outputs(g.add("add", r, r if shared else g.add("relu", x)))
        return g.structural_hash()

    assert build(True) == build(True)
    assert build(True) != build(False)


def test_weights_hash():
    g = small()
    assert g.weights_hash() == small().weights_hash()
    assert g.weights_hash() != small(seed=1).weights_hash()
    assert re.fullmatch(r"[0-9a-f]{64}", g.weights_hash())
    before = g.weights_hash()
    w = np.array(g.node("head").params["bias"])
    w[0] += 1e-3
    g.set_params("head", bias=w)
    assert g.weights_hash() != before


def test_summary():
    g = small()
    s = g.summary()
    lines = s.splitlines()
    assert lines[0] == f"graph 'small': 8 nodes, {g.num_params():,} params, inputs ['x'], outputs ['head']"
    assert lines[1].split() == ["node", "op", "output", "params"]
    row = next(line for line in lines if line.startswith("a "))
    assert row.split()[:2] == ["a", "conv2d"] and "(N, 4, 8, 8)" in row and row.rstrip().endswith("112")
    assert any(line.split()[:2] == ["relu_1", "relu"] and line.rstrip().endswith("-") for line in lines)
    assert [line.split()[0] for line in lines[3:]] == g.topo_order()
    assert g.num_params() == 4 * 27 + 4 + 4 * 3 + 4 + 8 * 3 + 3
    assert "archir.Graph 'small'" in repr(g)


def test_init_params_determinism():
    def arrays(g):
        return {(n.id, kind, k): a for n in g.nodes() for kind in ("params", "buffers")
                for k, a in getattr(n, kind).items()}

    a, b, c = arrays(small(seed=0)), arrays(small(seed=0)), arrays(small(seed=1))
    assert a.keys() == b.keys() == c.keys() and len(a) == 6
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a[("a", "params", "weight")], c[("a", "params", "weight")])
    assert not np.array_equal(a[("head", "params", "weight")], c[("head", "params", "weight")])
    # a Generator works too and gives the same draws as its seed
    g = small()
    assert g.init_params(np.random.default_rng(0)) is g
    assert all(np.array_equal(arrays(g)[k], a[k]) for k in a)
    # only_missing keeps what is there
    g.set_params("a", weight=np.zeros((4, 3, 3, 3)))
    g.init_params(seed=5, only_missing=True)
    assert np.abs(g.node("a").params["weight"]).sum() == 0


def test_graph_name_and_outputs():
    with pytest.raises(archir.IRError, match="non-empty string"):
        archir.Graph("")
    g = small()
    with pytest.raises(GraphStructureError, match="no node"):
        g.set_outputs("head", "nope")
    assert g.outputs == ("head",)
    g.set_outputs("head", "cat")
    assert g.outputs == ("head", "cat")
    g.validate()
    m = archir.lower.to_fx(g).eval()
    y, c = m(torch.randn(2, 3, 8, 8))
    assert y.shape == (2, 3) and c.shape == (2, 8, 8, 8)


def test_frontend_and_samples_load_on_first_use():
    import subprocess
    import sys

    code = ("import sys, archir; assert 'archir.frontend' not in sys.modules; "
            "f = archir.frontend.from_onnx; s = archir.samples.chain; assert 'archir.frontend' in sys.modules; "
            "import pytest\n"
            "try:\n    archir.nope\nexcept AttributeError as e:\n    assert 'nope' in str(e)\nelse:\n    raise SystemExit(1)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
