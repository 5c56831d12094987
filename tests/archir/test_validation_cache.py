"""Validation of an unchanged graph runs once (issue 19), and no edit slips past it.

``Graph.validated_order`` remembers a fingerprint of what validation reads; these tests check
that the work is skipped only when nothing changed, whichever way the graph was edited
(``Graph`` methods or ``g.nx`` directly), and that frozen weights are scanned for NaN/Inf once.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

import archir
from archir import IRError
from archir.graph import _FINITE, all_finite, freeze_array
from archir.lower import to_fx, to_onnx
from archir.lower.onnx import set_attribute
from tests.strategies import graphs, supernets


def net() -> archir.Graph:
    g = archir.Graph("t")
    x = g.input("x", (3, 8, 8))
    c1 = g.add("conv2d", x, out_channels=4, kernel_size=3, padding=1, name="c1")
    r = g.add("relu", c1, name="r")
    y = g.add("linear", g.add("flatten", g.add("global_avgpool", r, name="gap"), name="fl"), out_features=2,
              name="head")
    g.set_outputs(y)
    return g.init_params(seed=0)


@pytest.fixture
def count(monkeypatch):
    """How often the full validation ran."""
    calls = []
    real = archir.Graph._validate

    def spy(self, weights):
        calls.append(weights)
        return real(self, weights)

    monkeypatch.setattr(archir.Graph, "_validate", spy)
    return calls


def test_an_unchanged_graph_is_validated_once(count):
    g = net()
    g.validate()
    g.validate()
    to_onnx(g, check=False)
    to_fx(g)
    assert len(count) == 1
    assert g.validated_order() == g.topo_order()


def test_weights_false_does_not_stand_for_weights_true(count):
    g = net()
    g.validate(weights=False)
    g.validate(weights=False)
    g.validate()
    g.validate(weights=False)  # a full validation covers the lighter one
    assert count == [False, True]


@pytest.mark.parametrize("edit", [
    "set_attrs", "set_params", "add_node", "set_outputs", "nx_attr", "nx_edge", "nx_param", "nx_type",
])
def test_every_edit_is_seen(count, edit):
    g = net()
    g.validate()
    d = g.nx.nodes["c1"]
    if edit == "set_attrs":
        g.set_attrs("c1", out_channels=5)  # the weights no longer fit: validation must say so
    elif edit == "set_params":
        g.set_params("c1", bias=np.zeros(7, np.float32))
    elif edit == "add_node":
        g.add("relu", "head", name="extra")
        g.set_outputs("head", "extra")
        g.validate()
        assert len(count) == 2
        return
    elif edit == "set_outputs":
        g.set_outputs("r")
        g.validate()
        assert len(count) == 2
        return
    elif edit == "nx_attr":
        d["attrs"]["kernel_size"] = [5, 5]  # an in-place edit of the attrs dict itself
    elif edit == "nx_edge":
        g.nx.remove_edge("c1", "r")
    elif edit == "nx_param":
        d["params"]["weight"] = freeze_array(np.zeros((4, 3, 2, 2)))
    elif edit == "nx_type":
        d["type"] = None  # validation infers it again, so the graph is valid and the type is back
        g.validate()
        assert len(count) == 2 and g.node("c1").type is not None
        return
    with pytest.raises(IRError):
        g.validate()
    assert len(count) == 2


def test_a_removed_output_node_is_seen():
    g = net()
    g.validate()
    g.nx.remove_node("head")
    with pytest.raises(IRError, match="head"):
        g.validate()


def test_writable_weights_are_validated_every_time(count):
    g = net()
    w = np.ones((4, 3, 3, 3), np.float32)  # put in behind the Graph's back: not frozen
    g.nx.nodes["c1"]["params"]["weight"] = w
    g.validate()
    w[0, 0, 0, 0] = np.nan  # changed in place: only a full validation can see it
    with pytest.raises(IRError, match="NaN"):
        g.validate()
    assert len(count) == 2


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=supernets(max_cells=1, max_nodes_per_cell=1))
def test_arch_logits_edited_in_place_are_seen(g):
    g.validate()
    key = next(iter(g.arch))
    g.arch[key] = np.array(g.arch[key])  # writable
    g.validate()
    g.arch[key][0] = np.inf
    with pytest.raises(IRError, match="NaN/Inf"):
        g.validate()


def test_frozen_weights_are_scanned_for_nan_once(monkeypatch):
    a = freeze_array(np.random.default_rng(0).normal(size=(64, 64)))
    b = np.ones((3,), np.float32)  # writable: never remembered
    assert all_finite(a) and all_finite(b)
    assert _FINITE.get(id(a)) is a and _FINITE.get(id(b)) is not b
    scans = []
    real = np.isfinite
    monkeypatch.setattr(np, "isfinite", lambda x: scans.append(x.shape) or real(x))
    assert all_finite(a) and scans == []
    assert not all_finite(freeze_array(np.array([1.0, np.nan])))
    assert scans == [(2,)]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=graphs(max_nodes=8), seed=st.integers(0, 10_000))
def test_cached_validation_agrees_with_a_fresh_one(g, seed):
    """After any weight swap through g.nx, the cached answer is the answer of a graph never validated."""
    g.validate()
    rng = np.random.default_rng(seed)
    with_params = [n for n in g.nodes() if n.params]
    if not with_params:
        return
    n = with_params[rng.integers(len(with_params))]
    k = sorted(n.params)[0]
    shape = n.params[k].shape
    bad = rng.integers(3)
    new = (np.zeros(shape[:-1] + (shape[-1] + 1,)) if bad == 0 and shape else
           np.full(shape, np.nan) if bad == 1 else rng.normal(size=shape))
    g.nx.nodes[n.id]["params"][k] = freeze_array(new)
    fresh = archir.Graph.__new__(archir.Graph)
    fresh.__dict__.update(g.__dict__)
    fresh._valid = None
    try:
        fresh.validate()
        expect = None
    except IRError as e:
        expect = type(e)
    if expect is None:
        g.validate()
    else:
        with pytest.raises(expect):
            g.validate()


VALUES = st.one_of(
    st.integers(-2**62, 2**62), st.booleans(), st.floats(allow_nan=False, width=32), st.text(max_size=8),
    st.lists(st.integers(-2**40, 2**40), min_size=1, max_size=5),
    st.lists(st.floats(allow_nan=False, width=32), min_size=1, max_size=5),
    st.lists(st.integers(-5, 5), min_size=1, max_size=4).map(tuple),
    st.lists(st.one_of(st.integers(-5, 5), st.floats(-5, 5)), min_size=1, max_size=4),  # mixed: floats
    st.integers(-5, 5).map(np.int64), st.floats(-5, 5).map(np.float32),
    st.lists(st.text(max_size=3), min_size=1, max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(value=VALUES)
def test_set_attribute_writes_what_make_attribute_makes(value):
    a = onnx.AttributeProto()
    set_attribute(a, "k", value)
    assert a.SerializeToString() == helper.make_attribute("k", value).SerializeToString()


def test_set_attribute_of_a_tensor():
    t = helper.make_tensor("t", onnx.TensorProto.FLOAT, [2], [1.0, 2.0])
    a = onnx.AttributeProto()
    set_attribute(a, "value", t)
    assert a == helper.make_attribute("value", t)
