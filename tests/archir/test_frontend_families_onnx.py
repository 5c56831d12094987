"""Every CNN family of ``test_frontend_families`` from torch's dynamo ONNX exporter (issue 17, items 2 and 5).

One torchvision module per CNN family of ``TV_FAMILIES`` (torchvision's own code at the small settings and
inputs of the families test, random weights, randomised BN statistics) is exported with
``torch.onnx.export(dynamo=True)`` with a **dynamic batch** (``torch.export`` accepts it for all of them; the
sample batch is 2, as dynamo specialises a batch of 1) and read back with ``from_onnx``. Checked: archir's
``to_fx`` of the graph against ONNX Runtime on the file (1e-5) and against the module (1e-4), on a batch of
3 (another batch than the sample's, so the batch really is dynamic), and that no parameter is added (the
exporter folds BN into the convolutions).

Not here: ViT, Swin and MaxViT (``test_frontend_vit_onnx.py`` and the Swin/MaxViT ONNX tests); VGG and AlexNet
(their torchvision classifiers are 133M / 61M parameters: the self-written VGG and AlexNet miniatures' dynamo
exports, with dynamo's GatherND pooling, are ``test_frontend_onnx_opsets.py``'s). TorchScript's export
(``dynamo=False``) of these modules is ``test_frontend_families.py``'s ``round_trip``. Dynamo's export takes
2-11 s a model (densenet121 the longest), about 75 s in all on one core: the module is marked ``slow``.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

from archir.frontend import from_onnx
from archir.lower import to_fx
from tests.archir.parity import dynamo_export, ort_file as _ort
from tests.archir.test_frontend_families import TV_FAMILIES, build_torchvision

pytestmark = pytest.mark.slow
pytest.importorskip("torchvision.models")
pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
ort = pytest.importorskip("onnxruntime")

#: one torchvision module per CNN family (variants such as mobilenet_v3_large and shufflenet_v2_x1_0 use the same
#: constructs as the one kept; they read back too: ``python benchmarks/frontend_families.py --dynamo``)
NOT_HERE = {"vit", "swin", "maxvit", "vgg11", "alexnet", "mobilenet_v3_large", "shufflenet_v2_x1_0"}
DYNAMO_FAMILIES = [f for f in TV_FAMILIES if f not in NOT_HERE]



def test_the_list_covers_every_cnn_family():
    families = {"resnet", "resnext", "wide_resnet", "mobilenet_v2", "mobilenet_v3", "efficientnet", "efficientnet_v2", "mnasnet",
                "regnet", "densenet", "squeezenet", "googlenet", "convnext", "shufflenet", "inception"}
    assert {f for f in families if any(d.startswith(f) for d in DYNAMO_FAMILIES)} == families
    assert set(TV_FAMILIES) - set(DYNAMO_FAMILIES) == NOT_HERE


@pytest.mark.parametrize("family", DYNAMO_FAMILIES)
def test_dynamo_export_of_torchvision_family_reads_back(family):
    shape = TV_FAMILIES[family][2]
    module = build_torchvision(family)
    proto = dynamo_export(module, shape)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value"), "the batch axis should be dynamic"
    g = from_onnx(proto)
    assert g.meta["frontend"]["opset"] >= 18
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = to_fx(g).eval()(x).numpy()
        ref = module(x).numpy()
    assert got.shape == ref.shape and np.abs(ref).max() > 1e-3
    np.testing.assert_allclose(got, _ort(proto, x.numpy()), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    assert g.num_params() <= sum(p.numel() for p in module.parameters())  # BN folded, nothing added
    ops = {n.op for n in g.nodes()}
    if family == "convnext_tiny":
        assert "layernorm" in ops and "permute" in ops
    if family.startswith("shufflenet"):
        assert {"channel_shuffle", "slice"} <= ops  # view / transpose / view read as one op; chunk as slices
    if family == "inception_v3":
        assert {"concat", "avgpool2d", "maxpool2d"} <= ops
