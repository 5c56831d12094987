"""Tests of ``passes/``, and the checks every morphism test shares."""

from __future__ import annotations

import functools

from archir import samples
from archir.lower import verify_onnx

from passes.check import check_preserved, make_inputs
from passes.infra import graph_pass

ATOL, RTOL = 1e-5, 1e-4

#: the sample networks every morphism is tested on (darts_like kept small for speed)
SAMPLE_BUILDERS = {
    "chain": samples.chain,
    "resnet_like": samples.resnet_like,
    "densenet_like": samples.densenet_like,
    "mobilenet_like": samples.mobilenet_like,
    "darts_like": functools.partial(samples.darts_like, cells=2),
}


@functools.lru_cache(maxsize=None)
def _sample(name: str):
    return SAMPLE_BUILDERS[name]()


def sample(name: str):
    """A sample net (built once per test session; passes never change their input)."""
    return _sample(name)


def assert_onnx_agrees(g, *, atol: float = ATOL, rtol: float = RTOL, n: int = 2, seed: int = 1) -> None:
    """``to_onnx(g)`` under ONNX Runtime (no graph optimisations) matches ``to_fx(g)`` (eval mode) on
    seeded inputs: ``verify_onnx``."""
    verify_onnx(g, inputs=make_inputs(g, n=n, seed=seed), atol=atol, rtol=rtol, optimize=False).raise_if_failed()


def assert_morphism(before, after, *, onnx: bool = True):
    """The three checks of a morphism result: valid, same function (eval mode), ONNX agrees.

    Returns the preservation report.
    """
    assert after is not before
    after.validate()
    report = check_preserved(before, after, atol=ATOL, rtol=RTOL)
    assert report.ok, str(report)
    if onnx:
        assert_onnx_agrees(after)
    return report


def new_nodes(before, after) -> set[str]:
    return set(after) - set(before)


@graph_pass(preserves="function")
def breaks_function(g):
    """Declares preserves='function' and adds 1 to the head's bias: a broken promise (for the instrument tests)."""
    g = g.copy()
    g.set_params("head", bias=g.node("head").params["bias"] + 1.0)
    return g
