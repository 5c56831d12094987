"""``costmodels.count`` against torchvision's published figures (issue 6's acceptance line).

torchvision's weights metadata lists ``_ops`` (GFLOPS in their convention: giga multiply-
accumulates of conv and linear layers at 224x224; 299x299 for Inception v3, 256x256 for Swin V2, 384x384
for EfficientNetV2-S: each model's evaluation size) and
``num_params``. Reading the metadata downloads nothing; models are built with random weights.
``macs`` must agree within the rounding of the published figure (3 decimals) and ``params``
exactly.
"""

from __future__ import annotations

import pytest
import torch

import archir
import costmodels

tvm = pytest.importorskip("torchvision.models")
from archir.frontend import from_torch  # noqa: E402

# family -> constructor kwargs; input 224x224 unless given
FAMILIES = {
    "resnet18": {}, "resnet50": {}, "resnext50_32x4d": {}, "wide_resnet50_2": {}, "vgg11": {}, "alexnet": {},
    "mobilenet_v2": {}, "mobilenet_v3_small": {}, "mobilenet_v3_large": {}, "efficientnet_b0": {},
    "mnasnet1_0": {}, "regnet_y_400mf": {}, "regnet_x_400mf": {}, "densenet121": {}, "squeezenet1_0": {},
    "squeezenet1_1": {}, "googlenet": {"aux_logits": False, "init_weights": False},
    "convnext_tiny": {}, "shufflenet_v2_x1_0": {}, "shufflenet_v2_x0_5": {},
    "vit_b_16": {},  # attention's two matmuls count, as in the published 17.564 (fvcore's convention)
    "maxvit_t": {},  # maxvit: so do rel_attention's, per window (the published 5.558)
    "swin_t": {},  # swin: window_attention's projections and two matmuls per window of the padded map (4.491)
    "swin_v2_t": {},  # window_attention_v2 adds its cpb_mlp per block (5.94 at 256x256)
    "efficientnet_v2_s": {},  # at 384x384 (8.366)
}
#: the input side where torchvision's published figure is taken at another size than 224 (its evaluation size)
_SIZE = {"swin_v2_t": 256, "efficientnet_v2_s": 384}
_SLOW = {"resnet50", "resnext50_32x4d", "wide_resnet50_2", "vgg11", "alexnet", "densenet121", "vit_b_16", "maxvit_t",
         "swin_v2_t", "efficientnet_v2_s"}


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f in _SLOW else f for f in FAMILIES])
def test_macs_and_params_match_torchvision(family):
    meta = tvm.get_model_weights(family).DEFAULT.meta
    with torch.no_grad():
        module = getattr(tvm, family)(weights=None, **FAMILIES[family])
    side = _SIZE.get(family, 224)
    g = from_torch(module, torch.randn(1, 3, side, side), check=False)  # counting needs no numeric check
    c = costmodels.count(g)
    assert abs(c.macs / 1e9 - meta["_ops"]) <= 0.0005 + 1e-9, (c.macs / 1e9, meta["_ops"])
    assert c.params == meta["num_params"]
    counted = ("conv2d", "linear", "attention", "rel_attention", "window_attention", "window_attention_v2")
    assert c.macs == sum(r.macs for r in c.nodes.values() if r.op in counted)


def test_inception_v3_macs_and_params_match_torchvision():
    """inception: at 299x299, torchvision's input for it. The published 27,161,264 params include the auxiliary
    classifier (``AuxLogits``, used only in training mode, so not in the traced eval graph): the graph's params
    plus the aux head's must give it exactly, and the graph alone the 5.713 GFLOPS (the aux head is not counted)."""
    meta = tvm.get_model_weights("inception_v3").DEFAULT.meta
    with torch.no_grad():
        module = tvm.inception_v3(weights=None, aux_logits=True, init_weights=False).eval()
    g = from_torch(module, torch.randn(1, 3, 299, 299), check=False)
    c = costmodels.count(g)
    assert abs(c.macs / 1e9 - meta["_ops"]) <= 0.0005 + 1e-9, (c.macs / 1e9, meta["_ops"])
    aux = sum(p.numel() for p in module.AuxLogits.parameters())
    assert c.params + aux == meta["num_params"] == 27_161_264
    assert not any(n.startswith("AuxLogits") for n in g)
    assert c.macs == sum(r.macs for r in c.nodes.values() if r.op in ("conv2d", "linear"))


def _pool_graph(shape, size):
    g = archir.Graph("ap")
    x = g.input("x", shape)
    g.set_outputs(g.add("adaptive_avgpool2d", x, output_size=size, name="ap"))
    return g.validate()


def test_adaptive_avgpool_cost_counts_every_window_element():
    g = _pool_graph((2, 5, 3), [3, 2])  # rows: windows (0,2),(1,4),(3,5) -> 7; cols: (0,2),(1,3) -> 4
    c = costmodels.count(g)
    assert c["ap"].flops == 2 * 7 * 4 and c.macs == 0
    assert costmodels.count(_pool_graph((2, 4, 4), [2, 2]))["ap"].flops == 2 * 16  # disjoint windows: each input once
