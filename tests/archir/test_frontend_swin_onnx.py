"""swin-onnx: torch's own ONNX export (dynamo, static batch) of torchvision's ShiftedWindowAttention read back as
one window_attention node after a proof by evaluation (archir/frontend/onnx_regions.py), and refused when a
constant inside the region is altered."""

import warnings

import numpy as np
import onnx
import pytest
import torch

from archir.frontend import from_onnx
from archir.frontend.onnx_regions import RegionMismatchError
from archir.lower.fx import to_fx

tv = pytest.importorskip("torchvision.models.swin_transformer")


def _export(tmp_path, shift):
    torch.manual_seed(0)
    m = torch.nn.Sequential(tv.ShiftedWindowAttention(16, [4, 4], [shift, shift], num_heads=2)).eval()
    with torch.no_grad():
        m[0].relative_position_bias_table.normal_()
    x = torch.randn(2, 8, 8, 16)
    f = tmp_path / f"swa{shift}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), str(f), dynamo=True, input_names=["x"])
    return m, x, f


@pytest.mark.parametrize("shift", [0, 2])
def test_dynamo_window_attention_reads_as_one_node(tmp_path, shift):
    m, x, f = _export(tmp_path, shift)
    g = from_onnx(str(f))
    ops = [n.op for n in g.nodes()]
    assert ops.count("window_attention") == 1 and "window_attention" in ops
    (wa,) = g.nodes("window_attention")
    assert wa.attrs["window_size"] == [4, 4] and wa.attrs["shift_size"] == [shift, shift]
    with torch.no_grad():
        got, want = to_fx(g).eval()(x), m(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
    assert g.num_params() == sum(p.numel() for p in m.parameters())


def test_altered_bias_constant_is_refused(tmp_path):
    _, _, f = _export(tmp_path, 2)
    model = onnx.load(str(f))
    for t in model.graph.initializer:  # the folded position bias (1, heads, T, T): one entry changed
        a = onnx.numpy_helper.to_array(t)
        if a.dtype == np.float32 and a.ndim == 4 and a.shape[0] == 1 and a.shape[2] == a.shape[3] == 16:
            a = a.copy()
            a[0, 0, 0, 1] += 1.0
            t.CopyFrom(onnx.numpy_helper.from_array(a, t.name))
            break
    else:
        pytest.fail("no folded bias constant in the export")
    with pytest.raises(RegionMismatchError, match="module '0'"):
        from_onnx(model)
