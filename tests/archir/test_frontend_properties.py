"""Property tests: random valid graphs (``tests.strategies.graphs``) survive both frontends.

``from_onnx(to_onnx(g))`` and ``from_torch(to_fx(g))`` compute what ``g`` computes (eval mode)
and have the same ops (``identity`` and, through ONNX, ``dropout`` are aliases, not nodes).
Through ONNX every node keeps its id; through torch.fx every node with weights keeps its id
(module paths are node ids).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from hypothesis import assume, given

import archir
from archir.frontend import from_onnx, from_torch
from tests.strategies import graphs, input_arrays


def _outputs(g, xs):
    with torch.no_grad():
        out = archir.lower.to_fx(g).eval()(*[torch.from_numpy(x) for x in xs])
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def _assert_same_function(g, g2):
    xs = input_arrays(g, batch=2, seed=1)
    for a, b in zip(_outputs(g, xs), _outputs(g2, xs)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


@given(graphs(max_nodes=10))
def test_onnx_round_trip_of_random_graphs(g):
    proto = archir.lower.to_onnx(g)
    # archir masks max-pool windows that see padding only with a Where (dilation > input size); from_onnx
    # does not read that form back
    assume(not any(n.op_type == "Where" for n in proto.graph.node))
    g2 = from_onnx(proto)
    assert g2.inputs == g.inputs
    kept = [n for n in g.nodes() if n.op not in ("identity", "dropout")]
    assert Counter(n.op for n in g2.nodes()) == Counter(n.op for n in kept)
    assert {n.id for n in kept} <= set(g2)
    _assert_same_function(g, g2)


@given(graphs(max_nodes=10))
def test_torch_round_trip_of_random_graphs(g):
    gm = archir.lower.to_fx(g)
    xs = [torch.from_numpy(x[:1]) for x in input_arrays(g, batch=1, seed=0)]
    g2 = from_torch(gm, tuple(xs))
    assert Counter(n.op for n in g2.nodes()) == Counter(n.op for n in g.nodes() if n.op != "identity")
    paths = gm.meta["archir_modules"]
    assert {paths[n.id] for n in g.nodes() if n.params} <= set(g2)
    _assert_same_function(g, g2)
