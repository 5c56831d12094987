"""Property tests of grown candidates (``search.morph.grow``, ``search.petridish``) over random seeds and parents.

- Hill climbing: a child grown by ``n`` random morphisms (the worker's grow path, before any
  training) computes its parent's function (``passes.check_preserved``, eval mode, on inputs
  other than grow's own check), validates, records its moves, and exports to ONNX that agrees
  with torch.fx under ONNX Runtime.
- Petridish: with candidates attached (join weights and candidate BN statistics randomised, so
  the candidates do compute something) the forward pass is the parent's exactly, and
  ``passes.finalize(mode="drop")`` gives back the parent itself: the same structure, weights and
  outputs, bit for bit (less any dead node of a random parent); the dropped graph exports and agrees under ONNX Runtime.

Parents are tiny: the built-in starter (random width and weights, randomised BN statistics) or
a random graph from ``tests.strategies.graphs``. Few examples: at most 10, fewer under a smaller
profile.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import archir
import passes
from archir.lower import to_fx, verify_onnx
from archir.samples import randomize_bn
from search.morph import DEFAULT_MORPHISMS, graph_to_data, grow, starter
from search.petridish import CANDIDATE_OPS, attach, join_points
from tests.strategies import graphs, input_arrays

EXAMPLES = min(10, settings.default.max_examples)


@st.composite
def starters(draw) -> archir.Graph:
    g = starter((draw(st.integers(1, 3)), 8, 8), draw(st.integers(2, 5)), channels=draw(st.integers(2, 6)),
                seed=draw(st.integers(0, 2 ** 16)))
    return randomize_bn(g, seed=draw(st.integers(0, 2 ** 16)))


parents = st.one_of(starters(), graphs(max_nodes=8, max_inputs=1, max_outputs=1))


def _fx(g: archir.Graph, xs: list[np.ndarray]) -> list[np.ndarray]:
    gm = to_fx(g).eval()
    with torch.no_grad():
        out = gm(*[torch.from_numpy(x) for x in xs])
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def _assert_onnx_matches_fx(g: archir.Graph) -> None:
    verify_onnx(g, inputs=input_arrays(g, batch=2, seed=1), atol=1e-5, rtol=1e-4).raise_if_failed()


@settings(max_examples=EXAMPLES, deadline=None)
@given(parent=parents, seed=st.integers(0, 2 ** 31 - 2), n=st.integers(1, 3),
       ops=st.lists(st.sampled_from(DEFAULT_MORPHISMS), min_size=1, max_size=4, unique=True))
def test_hillclimb_child_computes_its_parents_function(parent, seed, n, ops):
    try:  # a random graph may have no legal target for the drawn morphisms: not this property's concern
        passes.random_morphism(parent, np.random.default_rng(0), morphisms=ops)
    except passes.PreconditionError:
        assume(False)
    task = {"id": 1, "seed": 0, "decisions": {"method": "morph", "parent": 0, "seed": seed, "n": n, "ops": ops},
            "parent_graph": graph_to_data(parent)}
    child, info = grow(task)
    # the moves fired: n recorded calls of the drawn morphisms, a different architecture
    assert len(info["moves"]) == n and child.meta["grown"] == {"method": "morph", "parent": 0, "moves": info["moves"]}
    assert all(m.split("(")[0] in ops for m in info["moves"])
    assert child.structural_hash() != parent.structural_hash()
    child.validate()
    # the child computes its parent's function before training (other inputs than grow's own check)
    rep = passes.check_preserved(parent, child, n=3, seed=seed % 1000 + 1)
    assert rep.ok and info["metrics"]["preserve_max_abs"] <= 1e-3
    _assert_onnx_matches_fx(child)


@settings(max_examples=EXAMPLES, deadline=None)
@given(parent=parents, seed=st.integers(0, 2 ** 16), data=st.data())
def test_petridish_child_dropped_is_its_parent_exactly(parent, seed, data):
    points = join_points(parent)
    assume(points)
    targets = data.draw(st.lists(st.sampled_from(points), min_size=1, max_size=2, unique=True), label="targets")
    ops = data.draw(st.lists(st.sampled_from(sorted(CANDIDATE_OPS)), min_size=1, max_size=3, unique=True), label="ops")
    inputs = data.draw(st.integers(1, 2), label="inputs")
    g, cands = attach(parent, targets, ops, inputs=inputs, seed=seed)
    assert cands and {c.target for c in cands} == set(targets) and len(g) > len(parent)
    # give the candidates a real output: non-zero join weights, non-trivial BN statistics
    rng = np.random.default_rng(seed)
    for c in cands:
        w = g.node(c.join).params["weight"]
        g.set_params(c.join, weight=rng.normal(0, 1, w.shape).astype(np.float32))
    parent_ids = set(parent.nx.nodes)
    for node in g.nodes("batchnorm2d"):
        if node.id not in parent_ids:
            c = node.type.shape[0]
            g.set_buffers(node.id, running_mean=rng.normal(0, 0.5, c), running_var=rng.uniform(0.5, 2.0, c))
    # the stop ops keep the parent's forward exactly, whatever the candidates compute ...
    assert passes.check_preserved(parent, g, atol=0.0, rtol=0.0, seed=seed).ok
    # ... and finalize(mode="drop") removes them and everything that only fed them: the parent itself (a random
    # parent may hold dead nodes, which "drop" removes too: the reference is the parent without them)
    dropped = passes.finalize(g, mode="drop")
    dropped.validate()
    live = passes.eliminate_dead(parent)
    assert not passes.stop_ops(dropped)
    assert set(dropped.nx.nodes) == set(live.nx.nodes)
    assert dropped.structural_hash() == live.structural_hash()
    assert dropped.weights_hash() == live.weights_hash()
    xs = input_arrays(parent, batch=2, seed=seed)
    for a, b in zip(_fx(dropped, xs), _fx(parent, xs), strict=True):
        np.testing.assert_array_equal(a, b)
    # control: "join" mode lets the candidates into the forward pass, so that graph is not the parent
    joined = passes.finalize(g, mode="join")
    assert joined.structural_hash() != parent.structural_hash()
    _assert_onnx_matches_fx(dropped)
