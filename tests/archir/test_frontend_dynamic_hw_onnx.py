"""dynamo ONNX exports with a dynamic height and width read back with ``from_onnx(input_shapes=...)`` (issue 17, item 5).

With ``dynamic_shapes`` on H and W, dynamo computes view targets from the run-time sizes (ShuffleNetV2's channel
shuffle: ``Concat(Shape(x)[0:1], [2, 24], (Shape(x)[2:3] - 1) // 8 + 1, ...)``). ``input_shapes`` fixes H and W;
the targets are then evaluated exactly with the batch as the symbol ``N`` (``[N, 2, 24, 8, 8]``) and the shuffle
reads as one ``channel_shuffle``, as in a file exported with a fixed H and W. Checked: the ops, ``to_fx`` against
ONNX Runtime on the file (1e-5) and against the module (1e-4) at batches 1 and 3.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from archir.frontend import from_onnx
from tests.archir.parity import assert_matches_file_at_batches

ort = pytest.importorskip("onnxruntime")
tvs = pytest.importorskip("torchvision.models.shufflenetv2")
pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")


def _export_hw(m, shape):
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    d = torch.export.Dim
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.onnx.export(m, (x,), dynamo=True, verbose=False, dynamic_shapes=(
                {0: d("batch"), 2: d("h", min=8, max=512), 3: d("w", min=8, max=512)},)).model_proto
    finally:
        logging.disable(logging.NOTSET)



def test_shufflenet_blocks_with_dynamic_hw_read_back_with_channel_shuffles():
    torch.manual_seed(0)
    m = torch.nn.Sequential(tvs.InvertedResidual(8, 16, 2), tvs.InvertedResidual(16, 16, 1)).eval()
    with torch.no_grad():
        for b in m.modules():
            if isinstance(b, torch.nn.BatchNorm2d):
                b.running_mean.uniform_(-0.5, 0.5)
                b.running_var.uniform_(0.5, 2)
    proto = _export_hw(m, (8, 16, 16))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param for k, d in enumerate(dims) if k != 1)  # N, H and W are dynamic in the file
    g = from_onnx(proto, input_shapes=[(8, 12, 12)])  # another size than the export's
    ops = [n.op for n in g.nodes()]
    assert ops.count("channel_shuffle") == 2 and not {"reshape", "permute"} & set(ops)
    assert_matches_file_at_batches(g, m, proto, (8, 12, 12))
