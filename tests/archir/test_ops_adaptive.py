"""The ``adaptive_avgpool2d`` op: torch's window rule, shapes, and both lowerings against torch / ORT.

Output sizes that divide the input (a plain average pool), that do not (overlapping windows of
unequal size) and that exceed it (inputs repeated) are all covered, since torchvision's VGG
and AlexNet hit the last two at small input sizes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import archir
from archir import OpSchemaError, ShapeError
from archir.ops.core import adaptive_windows

CASES = [((3, 8, 8), [2, 2]), ((3, 7, 5), [3, 2]), ((2, 1, 1), [6, 6]), ((2, 5, 3), [7, 4]), ((4, 6, 9), 1),
         ((2, 9, 9), [9, 9]), ((2, 2, 10), [3, 4])]


def _graph(shape, size):
    g = archir.Graph("ap")
    x = g.input("x", shape)
    g.set_outputs(g.add("adaptive_avgpool2d", x, output_size=size, name="ap"))
    return g.validate()


def test_windows_follow_torch():
    assert adaptive_windows(5, 3) == [(0, 2), (1, 4), (3, 5)]
    assert adaptive_windows(1, 3) == [(0, 1)] * 3
    assert adaptive_windows(8, 2) == [(0, 4), (4, 8)]


@pytest.mark.parametrize("shape,size", CASES)
def test_shape_fx_and_onnx_match_torch(shape, size):
    g = _graph(shape, size)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    ref = F.adaptive_avg_pool2d(x, size)
    assert g.node("ap").type.shape == tuple(ref.shape[1:])
    torch.testing.assert_close(archir.lower.to_fx(g)(x), ref)
    proto = archir.lower.to_onnx(g)  # checker with full_check runs inside
    rep = archir.lower.verify_onnx(g, proto, inputs=x, rtol=1e-5, atol=1e-6, keep_values=True).raise_if_failed()
    np.testing.assert_allclose(rep.ort_values[0], ref.numpy(), rtol=1e-5, atol=1e-6)
    kinds = {n.op_type for n in proto.graph.node}
    oh, ow = (size, size) if isinstance(size, int) else size
    if (oh, ow) == (1, 1):
        assert kinds == {"GlobalAveragePool"}
    elif shape[1] % oh == 0 and shape[2] % ow == 0:
        assert kinds == {"AveragePool"}
    else:
        assert kinds == {"MatMul"}


@given(h=st.integers(1, 12), w=st.integers(1, 12), oh=st.integers(1, 12), ow=st.integers(1, 12))
def test_any_output_size_matches_torch(h, w, oh, ow):
    g = _graph((2, h, w), [oh, ow])
    x = torch.randn(1, 2, h, w, generator=torch.Generator().manual_seed(h * 100 + w))
    torch.testing.assert_close(archir.lower.to_fx(g)(x), F.adaptive_avg_pool2d(x, (oh, ow)))


def test_bad_attrs_and_inputs():
    g = archir.Graph("bad")
    x = g.input("x", (3, 4, 4))
    with pytest.raises(OpSchemaError, match="output_size"):
        g.add("adaptive_avgpool2d", x, output_size=0)
    with pytest.raises(OpSchemaError, match="needs attribute 'output_size'"):
        g.add("adaptive_avgpool2d", x)
    v = g.input("v", (12,))
    with pytest.raises(ShapeError, match="rank-3"):
        g.add("adaptive_avgpool2d", v, output_size=2)

