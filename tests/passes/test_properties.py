"""Property: random sequences of up to 20 morphisms keep what the network computes.

Graphs come from ``tests.strategies.graphs()`` (random valid networks: residual adds, broadcast
muls, concats on channels and on H/W, several inputs/outputs, heads on rank-2 tensors ...) and
from the sample nets with a drawn seed. After every step: the result validates and
``check_preserved`` holds against the previous graph (eval mode); at the end, against the first.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, note, settings, strategies as st

from archir import samples

from passes import PreconditionError, check_preserved, random_morphism
from tests.passes import ATOL, RTOL, assert_onnx_agrees
from tests.strategies import graphs

SAMPLES = {
    "chain": lambda s: samples.chain(s),
    "resnet_like": lambda s: samples.resnet_like(s),
    "densenet_like": lambda s: samples.densenet_like(s),
    "mobilenet_like": lambda s: samples.mobilenet_like(s),
    "darts_like": lambda s: samples.darts_like(cells=1, seed=s, in_shape=(3, 16, 16), channels=8),
}


@st.composite
def sample_nets(draw):
    name = draw(st.sampled_from(sorted(SAMPLES)))
    return SAMPLES[name](draw(st.integers(0, 2 ** 16)))


def _chain_of_morphisms(g, seed: int, steps: int):
    rng = np.random.default_rng(seed)
    first = g
    for step in range(steps):
        try:
            g2, desc = random_morphism(g, rng)
        except PreconditionError as e:  # a graph with no legal target at all: nothing to do
            assert "has a legal target" in str(e)
            break
        note(f"step {step}: {desc}")
        g2.validate()
        check_preserved(g, g2, atol=ATOL, rtol=RTOL)
        g = g2
    # errors compound over the chain (each step within 1e-5/1e-4 of the one before)
    check_preserved(first, g, atol=10 * ATOL, rtol=10 * RTOL)
    return g


@given(g=graphs(max_nodes=12), seed=st.integers(0, 2 ** 32 - 1), steps=st.integers(1, 20))
def test_random_morphisms_on_random_graphs(g, seed, steps):
    out = _chain_of_morphisms(g, seed, steps)
    if seed % 5 == 0:
        assert_onnx_agrees(out)


@settings(max_examples=max(2, settings().max_examples // 2))  # half the profile's: bigger graphs
@given(g=sample_nets(), seed=st.integers(0, 2 ** 32 - 1), steps=st.integers(1, 20))
def test_random_morphisms_on_sample_nets(g, seed, steps):
    out = _chain_of_morphisms(g, seed, steps)
    assert_onnx_agrees(out)
