"""Property tests over random valid graphs (``tests.strategies``).

For every graph: it validates; torch.fx and ONNX Runtime agree in eval mode (atol 1e-5,
rtol 1e-4); save/load round-trips to an equal graph with equal outputs; the structural hash
ignores node names and insertion order; ``copy()`` is equal and independent. For every
supernet: the argmax derivation validates, exports, and matches ``choice_mode="fixed"``.

Example counts scale with the hypothesis profile (``ci`` = 25 examples is the base).
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import archir
from archir.lower import to_fx, verify_onnx
from archir.serialize import to_json_dict
from tests.strategies import decisions, graphs, input_arrays, supernets

ATOL, RTOL = 1e-5, 1e-4


def _examples(n_at_ci: int) -> int:
    """``n_at_ci`` examples under the ``ci`` profile (25), scaled for ``dev``/``thorough``."""
    return max(1, round(n_at_ci * settings.default.max_examples / 25))


def _fx(g: archir.Graph, xs: list[np.ndarray], **kw) -> list[np.ndarray]:
    gm = to_fx(g, **kw).eval()
    with torch.no_grad():
        out = gm(*[torch.from_numpy(x) for x in xs])
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def _ort(g: archir.Graph, xs: list[np.ndarray]) -> list[np.ndarray]:
    """ONNX Runtime's outputs of ``to_onnx(g)`` on ``xs``, verified against ``to_fx(g)`` on the way."""
    return verify_onnx(g, inputs=xs, atol=ATOL, rtol=RTOL, keep_values=True).raise_if_failed().ort_values


def assert_graphs_equal(a: archir.Graph, b: archir.Graph) -> None:
    """Same structure (ids, ops, attrs, wiring, inputs, outputs, meta), types, weights and logits."""
    assert to_json_dict(a) == to_json_dict(b)
    assert {n.id: n.type for n in a.nodes()} == {n.id: n.type for n in b.nodes()}
    for node in a.nodes():
        other = b.node(node.id)
        for kind in ("params", "buffers"):
            mine, theirs = getattr(node, kind), getattr(other, kind)
            assert set(mine) == set(theirs), (node.id, kind)
            for k in mine:
                assert theirs[k].dtype == np.float32 and theirs[k].shape == mine[k].shape
                np.testing.assert_array_equal(theirs[k], mine[k], err_msg=f"{node.id}.{k}")
    assert set(a.arch) == set(b.arch)
    for k in a.arch:
        np.testing.assert_array_equal(a.arch[k], b.arch[k])
    assert a.weights_hash() == b.weights_hash()


def renamed(g: archir.Graph, seed: int) -> archir.Graph:
    """The same network rebuilt with other node ids, in another (random) topological order."""
    rng = random.Random(seed)
    new = archir.Graph(g.name)
    ids = {}
    for k, i in enumerate(g.inputs):
        ids[i] = new.input(f"in{k}_{rng.randrange(1000)}", g.node(i).type.shape)
    pending = {n: set(g.inputs_of(n)) for n in g if n not in ids}
    while pending:
        ready = sorted(n for n, deps in pending.items() if deps <= set(ids))
        n = rng.choice(ready)
        node = g.node(n)
        ids[n] = new.add(node.op, *[ids[u] for u in g.inputs_of(n)], name=f"r{rng.randrange(10**6)}.{len(ids)}",
                         **dict(node.attrs))
        new.set_params(ids[n], **node.params)
        new.set_buffers(ids[n], **node.buffers)
        del pending[n]
    new.set_outputs(*[ids[o] for o in g.outputs])
    new.arch = {ids.get(k, k): a for k, a in g.arch.items()}  # an untied decision is keyed by its node id
    return new.validate()


@settings(max_examples=_examples(25))
@given(graphs())
def test_random_graphs_validate_and_types_match_fx(g):
    assert g.validate() is g
    xs = input_arrays(g, batch=2)
    outs = _fx(g, xs)
    assert [o.shape for o in outs] == [(2, *g.node(o).type.shape) for o in g.outputs]
    assert all(np.isfinite(o).all() for o in outs)


@settings(max_examples=_examples(50))
@given(graphs(), st.integers(1, 3), st.integers(0, 1000))
def test_fx_and_onnx_runtime_agree(g, batch, seed):
    rep = verify_onnx(g, inputs=input_arrays(g, batch=batch, seed=seed), atol=ATOL, rtol=RTOL)
    assert rep.ok, str(rep)
    assert [o.name for o in rep.outputs] == list(g.outputs)
    assert [o.shape for o in rep.outputs] == [(batch, *g.node(o).type.shape) for o in g.outputs]


@settings(max_examples=_examples(25))
@given(graphs())
def test_save_load_round_trip(g):
    with tempfile.TemporaryDirectory() as d:
        path = archir.save(g, Path(d) / "net.json")
        g2 = archir.load(path)
    assert_graphs_equal(g, g2)
    assert g2.structural_hash() == g.structural_hash()
    xs = input_arrays(g, batch=2, seed=1)
    for a, b in zip(_fx(g, xs), _fx(g2, xs)):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=_examples(25))
@given(graphs(allow_choice=True), st.integers(0, 2**16))
def test_structural_hash_ignores_names_and_order(g, seed):
    h = g.structural_hash()
    r = renamed(g, seed)
    assert not set(r) & (set(g) - set(g.inputs) - {"x", "y"})
    assert r.structural_hash() == h
    assert r.weights_hash() != g.weights_hash() or len(g) == len(g.inputs)  # weights are keyed by id
    # a real change of structure changes the hash
    grown = g.copy()
    grown.set_outputs(*g.outputs[:-1], grown.add("relu", g.outputs[-1]))
    assert grown.structural_hash() != h


@settings(max_examples=_examples(25))
@given(graphs(allow_choice=True))
def test_copy_is_equal_and_independent(g):
    c = g.copy()
    assert_graphs_equal(g, c)
    assert c.structural_hash() == g.structural_hash()
    before = (g.structural_hash(), g.weights_hash(), list(g), g.outputs, dict(g.meta))
    # arrays are shared (they are read-only), structure is not
    some = next(n for n in g.nodes() if n.params) if g.num_params() else None
    if some is not None:
        k = next(iter(some.params))
        assert c.node(some.id).params[k] is some.params[k]
        c.set_params(some.id, **{k: some.params[k] + 1})
    c.add("relu", g.outputs[0], name="extra")
    c.set_outputs("extra")
    c.meta["touched"] = True
    assert (g.structural_hash(), g.weights_hash(), list(g), g.outputs, dict(g.meta)) == before
    g.validate()


@settings(max_examples=_examples(25))
@given(supernets(), st.data())
def test_supernet_derivations_validate_and_export(g, data):
    d = archir.derive(g).validate()
    assert not d.nodes("choice") and d.arch == {}
    assert d.meta["derived"] == {k: names[int(np.argmax(g.arch[k]))] for k, names in archir.decision_keys(g).items()}
    xs = input_arrays(g, batch=2)
    got = _ort(d, xs)[0]  # verified against _fx(d, xs)
    np.testing.assert_allclose(got, _fx(g, xs, choice_mode="fixed")[0], atol=ATOL, rtol=RTOL)
    dec = data.draw(decisions(g))
    d2 = archir.derive(g, dec).validate()
    np.testing.assert_allclose(_ort(d2, xs)[0], _fx(g, xs, choice_mode="fixed", decisions=dec)[0],
                               atol=ATOL, rtol=RTOL)


@settings(max_examples=_examples(15))
@given(graphs(allow_choice=True))
def test_graphs_with_choices_derive_and_export(g):
    d = archir.derive(g).validate()
    xs = input_arrays(g, batch=2)
    for a, b in zip(_ort(d, xs), _fx(g, xs, choice_mode="fixed")):
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=RTOL)
