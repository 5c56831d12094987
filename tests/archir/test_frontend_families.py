"""Small self-written equivalents of the torchvision CNN families, for the frontend tests.

Each reproduces the constructs its family's torchvision code uses (module types, functional
calls, in-place ops, method calls), so the frontend's logic is covered without torchvision:
ResNet/ResNeXt/Wide-ResNet (``out += identity``, grouped 3x3, projection shortcut), VGG and
AlexNet (adaptive pooling to a larger or uneven size, dropout), MobileNetV2 (ReLU6, functional
adaptive pool + ``torch.flatten``), MobileNetV3 (squeeze-excite ``scale * x`` with
hardsigmoid, hardswish), EfficientNet (SiLU, sigmoid SE, eval-mode stochastic depth), MnasNet
(``x.mean([2, 3])``), RegNet (grouped bottleneck with SE, ``x.flatten(start_dim=1)``),
DenseNet (``torch.cat`` of a growing list, ``F.relu(inplace=True)``, avg-pool transition),
SqueezeNet (fire modules, ``MaxPool2d(ceil_mode=True)``, conv classifier) and GoogLeNet
(four-branch inception blocks, ``MaxPool2d(3, 1, 1, ceil_mode=True)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine params (seeded), so eval-mode outputs are O(1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
    return module.eval()


def cbr(cin, cout, k=3, s=1, groups=1, act=nn.ReLU):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         act(inplace=True) if act in (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU) else act())


class Bottleneck(nn.Module):
    def __init__(self, cin, width, cout, stride=1, groups=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TinyResNeXt(nn.Module):
    """ResNet / ResNeXt (groups) / Wide-ResNet (width) in miniature."""

    def __init__(self, groups=2, width=8, classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(Bottleneck(8, width, 16, 1, groups), Bottleneck(16, width, 16, 1, groups))
        self.layer2 = nn.Sequential(Bottleneck(16, width, 24, 2, groups))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(24, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TinyVGG(nn.Module):
    def __init__(self, classes=5, pool=(3, 3)):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(2, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(pool)
        self.classifier = nn.Sequential(nn.Linear(8 * pool[0] * pool[1], 16), nn.ReLU(True), nn.Dropout(0.5),
                                        nn.Linear(16, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class TinyAlexNet(nn.Module):
    """AlexNet's stem and an adaptive pool that *upsamples* (1x1 -> 3x3), as AlexNet at small inputs."""

    def __init__(self, classes=5):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
                                      nn.Conv2d(8, 8, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((3, 3))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(8 * 9, 16), nn.ReLU(inplace=True),
                                        nn.Linear(16, classes))

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand, se=None, act=nn.ReLU6):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [cbr(cin, hidden, 1, act=act), cbr(hidden, hidden, 3, stride, groups=hidden, act=act)]
        if se is not None:
            layers.append(se(hidden))
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class TinyMobileNetV2(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.features = nn.Sequential(cbr(3, 8, 3, 2, act=nn.ReLU6), InvertedResidual(8, 8, 1, 2),
                                      InvertedResidual(8, 12, 2, 3), cbr(12, 16, 1, act=nn.ReLU6))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


class SqueezeExcite(nn.Module):
    """torchvision.ops.SqueezeExcitation: F.adaptive_avg_pool2d(x, 1), two 1x1 convs, ``scale * x``."""

    def __init__(self, c, squeeze=4, activation=nn.ReLU, scale_activation=nn.Hardsigmoid):
        super().__init__()
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, x):
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(scale))))
        return scale * x


class TinyMobileNetV3(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.features = nn.Sequential(cbr(3, 8, 3, 2, act=nn.Hardswish),
                                      InvertedResidual(8, 8, 1, 2, se=SqueezeExcite, act=nn.Hardswish),
                                      InvertedResidual(8, 12, 2, 2, se=SqueezeExcite, act=nn.ReLU))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(12, 16), nn.Hardswish(inplace=True), nn.Dropout(0.2, inplace=True),
                                        nn.Linear(16, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class EvalStochasticDepth(nn.Module):
    """Stochastic depth as torchvision writes it: the identity in eval mode."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty(x.shape[0], 1, 1, 1).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class MBConv(nn.Module):
    def __init__(self, c, expand=2):
        super().__init__()
        hidden = c * expand
        self.block = nn.Sequential(cbr(c, hidden, 1, act=nn.SiLU), cbr(hidden, hidden, 3, groups=hidden, act=nn.SiLU),
                                   SqueezeExcite(hidden, 2, nn.SiLU, nn.Sigmoid), cbr(c * expand, c, 1, act=nn.Identity))
        self.stochastic_depth = EvalStochasticDepth(0.2)

    def forward(self, x):
        result = self.block(x)
        result = self.stochastic_depth(result)
        result += x
        return result


class TinyEfficientNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.features = nn.Sequential(cbr(3, 8, 3, 2, act=nn.SiLU), MBConv(8), MBConv(8))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2, inplace=True), nn.Linear(8, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class TinyMnasNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.layers = nn.Sequential(cbr(3, 8, 3, 2), InvertedResidual(8, 8, 1, 3, act=nn.ReLU), cbr(8, 16, 1))
        self.classifier = nn.Sequential(nn.Dropout(p=0.2, inplace=True), nn.Linear(16, classes))

    def forward(self, x):
        return self.classifier(self.layers(x).mean([2, 3]))


class RegBlock(nn.Module):
    def __init__(self, cin, cout, stride, group_width=4):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) \
            if stride != 1 or cin != cout else None
        self.f = nn.Sequential(cbr(cin, cout, 1), cbr(cout, cout, 3, stride, groups=cout // group_width),
                               SqueezeExcite(cout, 4, nn.ReLU, nn.Sigmoid), cbr(cout, cout, 1, act=nn.Identity))
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x):
        if self.proj is not None:
            x = self.proj(x) + self.f(x)
        else:
            x = x + self.f(x)
        return self.activation(x)


class TinyRegNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.stem = cbr(3, 8, 3, 2)
        self.trunk_output = nn.Sequential(RegBlock(8, 16, 2), RegBlock(16, 16, 1))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.avgpool(self.trunk_output(self.stem(x)))
        return self.fc(x.flatten(start_dim=1))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(2 * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, inputs):
        prev = [inputs] if isinstance(inputs, torch.Tensor) else inputs
        x = torch.cat(prev, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    def __init__(self, n, cin, growth):
        super().__init__()
        for i in range(n):
            self.add_module(f"denselayer{i + 1}", DenseLayer(cin + i * growth, growth))

    def forward(self, init):
        features = [init]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class TinyDenseNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True), DenseBlock(2, 8, 4),
            nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.Conv2d(16, 8, 1, bias=False), nn.AvgPool2d(2, 2),
            DenseBlock(2, 8, 4), nn.BatchNorm2d(16))
        self.classifier = nn.Linear(16, classes)

    def forward(self, x):
        out = F.relu(self.features(x), inplace=True)
        out = torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1)
        return self.classifier(out)


class Fire(nn.Module):
    def __init__(self, cin, squeeze, expand):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class TinySqueezeNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, ceil_mode=True), Fire(8, 4, 8),
                                      nn.MaxPool2d(3, 2, ceil_mode=True), Fire(16, 4, 8))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(16, classes, 1), nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, pp):
        super().__init__()
        self.branch1 = BasicConv2d(cin, c1, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(cin, c3r, kernel_size=1), BasicConv2d(c3r, c3, kernel_size=3,
                                                                                      padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(cin, c5r, kernel_size=1), BasicConv2d(c5r, c5, kernel_size=3,
                                                                                      padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), BasicConv2d(cin, pp, kernel_size=1))

    def forward(self, x):
        outputs = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(outputs, 1)


class TinyGoogLeNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = BasicConv2d(3, 8, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception3a = Inception(8, 4, 4, 8, 2, 4, 4)
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception4a = Inception(20, 8, 4, 8, 2, 4, 4)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(24, classes)

    def forward(self, x):
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool3(self.inception3a(x))
        x = self.avgpool(self.inception4a(x))
        return self.fc(self.dropout(torch.flatten(x, 1)))


#: family name -> (builder, per-sample input shape)
FAMILIES = {
    "resnext": (lambda: TinyResNeXt(groups=2, width=8), (3, 32, 32)),
    "wide_resnet": (lambda: TinyResNeXt(groups=1, width=16), (3, 32, 32)),
    "vgg": (TinyVGG, (3, 28, 28)),  # 7x7 features pooled to an uneven 3x3
    "alexnet": (TinyAlexNet, (3, 40, 40)),  # 1x1 features pooled up to 3x3
    "mobilenet_v2": (TinyMobileNetV2, (3, 32, 32)),
    "mobilenet_v3": (TinyMobileNetV3, (3, 32, 32)),
    "efficientnet": (TinyEfficientNet, (3, 32, 32)),
    "mnasnet": (TinyMnasNet, (3, 32, 32)),
    "regnet": (TinyRegNet, (3, 32, 32)),
    "densenet": (TinyDenseNet, (3, 32, 32)),
    "squeezenet": (TinySqueezeNet, (3, 33, 33)),
    "googlenet": (TinyGoogLeNet, (3, 32, 32)),
}


# =========================================================================== tests
#
# For every family: from_torch, then to_fx matches the module (eval mode, atol = rtol = 1e-4,
# a fresh random batch), to_onnx matches under ONNX Runtime, and from_onnx of
# torch.onnx.export(module) is equivalent again.

import io  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import archir  # noqa: E402
from archir.frontend import from_onnx, from_torch  # noqa: E402

ATOL = RTOL = 1e-4


def _close(got, ref, what):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, what
    assert np.abs(ref).max() > 1e-3, f"{what}: the reference output is ~0, the comparison would prove nothing"
    err = np.abs(got - ref)
    assert np.all(err <= ATOL + RTOL * np.abs(ref)), f"{what}: max error {err.max():.3g}"


def _ort(g, proto, x):
    """ORT's output of ``proto`` on ``x``, verified against ``to_fx(g)`` (atol = rtol = 1e-4) on the way."""
    rep = archir.lower.verify_onnx(g, proto, inputs=x, atol=ATOL, rtol=RTOL, keep_values=True)
    rep.raise_if_failed()
    return rep.ort_values[0]


def _torch_export_onnx(module, x) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    return buf.getvalue()


def round_trip(module, shape, *, torch_onnx=True, seed=0):
    """The three acceptance checks on one module; returns the imported graph."""
    torch.manual_seed(seed)
    module = module.eval()
    g = from_torch(module, torch.randn(1, *shape))
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        ref = module(x).numpy()
        _close(archir.lower.to_fx(g).eval()(x).numpy(), ref, "to_fx")
    _close(_ort(g, archir.lower.to_onnx(g), x), ref, "to_onnx under ORT")
    if torch_onnx:
        g2 = from_onnx(_torch_export_onnx(module, x))
        with torch.no_grad():
            _close(archir.lower.to_fx(g2).eval()(x).numpy(), ref, "from_onnx(torch.onnx.export)")
        assert g2.num_params() <= g.num_params()  # torch folds BN into convs; nothing is added
    return g


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_self_written_family_round_trips(family):
    build, shape = FAMILIES[family]
    torch.manual_seed(0)
    # torch.onnx.export refuses adaptive pooling to a size that does not divide the input (VGG, AlexNet
    # here); archir's own to_onnx lowers it (checked under ORT above), and test_frontend_onnx reads it back
    g = round_trip(randomize(build()), shape, torch_onnx=family not in ("vgg", "alexnet"))
    ops = {n.op for n in g.nodes()}
    expected = {"resnext": {"add", "conv2d"}, "wide_resnet": {"add"}, "vgg": {"adaptive_avgpool2d", "dropout"},
                "alexnet": {"adaptive_avgpool2d"}, "mobilenet_v2": {"relu6", "global_avgpool"},
                "mobilenet_v3": {"hardsigmoid", "hardswish", "mul"}, "efficientnet": {"silu", "sigmoid", "mul"},
                "mnasnet": {"global_avgpool", "flatten"}, "regnet": {"sigmoid", "mul"},
                "densenet": {"concat", "avgpool2d"}, "squeezenet": {"concat", "maxpool2d"},
                "googlenet": {"concat", "maxpool2d"}}[family]
    assert expected <= ops, f"{family}: expected ops {expected - ops} are missing"
    if family == "resnext":
        assert g.node("layer1.0.conv2").attrs["groups"] == 2
    if family in ("squeezenet", "googlenet"):
        assert any(n.attrs["ceil_mode"] for n in g.nodes("maxpool2d"))
    if family == "efficientnet":
        assert g.meta["frontend"]["notes"] == []  # self-written stochastic depth is traced away in eval mode


# ------------------------------------------------------------------ torchvision, random init, no downloads

# family -> (constructor, kwargs, per-sample input shape, also check torch.onnx.export -> from_onnx)
TV_FAMILIES = {
    "resnet18": ("resnet18", {}, (3, 64, 64), True),
    # torchvision's own ResNet class with ResNeXt's / Wide-ResNet's block settings and one block per stage
    # (resnext50_32x4d / wide_resnet50_2 differ only in having more of the same blocks)
    "resnext": ("ResNet", {"block": "Bottleneck", "layers": [1, 1, 1, 1], "groups": 32, "width_per_group": 4},
                (3, 32, 32), True),
    "wide_resnet": ("ResNet", {"block": "Bottleneck", "layers": [1, 1, 1, 1], "width_per_group": 128},
                    (3, 32, 32), False),
    "vgg11": ("vgg11", {}, (3, 32, 32), False),
    "alexnet": ("alexnet", {}, (3, 64, 64), False),
    "mobilenet_v2": ("mobilenet_v2", {}, (3, 64, 64), True),
    "mobilenet_v3_small": ("mobilenet_v3_small", {}, (3, 64, 64), True),
    "mobilenet_v3_large": ("mobilenet_v3_large", {}, (3, 64, 64), False),
    "efficientnet_b0": ("efficientnet_b0", {}, (3, 64, 64), True),
    # efficientnet_v2: torchvision's efficientnet_v2_s itself (fused MBConv stages; 21.5M parameters) at 32x32
    "efficientnet_v2_s": ("efficientnet_v2_s", {}, (3, 32, 32), True),
    "mnasnet0_5": ("mnasnet0_5", {}, (3, 64, 64), True),
    "regnet_y_400mf": ("regnet_y_400mf", {}, (3, 64, 64), True),
    "densenet121": ("densenet121", {}, (3, 32, 32), True),
    "squeezenet1_1": ("squeezenet1_1", {}, (3, 64, 64), True),
    "googlenet": ("googlenet", {"aux_logits": False, "init_weights": True}, (3, 64, 64), True),
    # inception: torchvision's inception_v3 itself (no smaller config exists) at 75x75, the least input it accepts
    # (74 leaves a 2x2 map for Mixed_7a's 3x3 stride-2 convs); 1x7 / 7x1 convs, avg-pool branches, 2 s here
    "inception_v3": ("inception_v3", {"aux_logits": False, "init_weights": False}, (3, 75, 75), True),
    # 32x32: the least multiple of the stride 32; LayerNorm2d fuses to layernorm(axis="channels")
    "convnext_tiny": ("convnext_tiny", {}, (3, 32, 32), True),
    # torch.onnx.export writes channel_shuffle's x.view(batchsize, ...) with the batch size read at run time
    # (Shape -> Gather(0) -> Unsqueeze -> Concat): from_onnx reads that Reshape target as "keep the batch"
    "shufflenet_v2_x0_5": ("shufflenet_v2_x0_5", {}, (3, 32, 32), True),
    "shufflenet_v2_x1_0": ("shufflenet_v2_x1_0", {}, (3, 32, 32), False),
    # torchvision's own VisionTransformer class with vit_b_16's patch size at 32x32 and a narrow, shallow encoder
    # (vit_b_16 is 12 layers of the same blocks at hidden 768); torch.onnx.export's MultiheadAttention does not
    # read back (see docs/frontend_support.md); tests/archir/test_frontend_vit.py randomises the zero-init head
    "vit": ("VisionTransformer", {"image_size": 32, "patch_size": 16, "num_layers": 2, "num_heads": 2,
                                  "hidden_dim": 32, "mlp_dim": 64, "num_classes": 10}, (3, 32, 32), False),
    # maxvit: torchvision's own MaxVit class, two blocks of one layer at 32x32 (maxvit_t is 4 blocks of 2, 2, 5, 2
    # layers at 224, partition 7); torch.onnx.export's einsum / gather forms do not read back (docs/frontend_support.md)
    "maxvit": ("MaxVit", {"input_size": (32, 32), "stem_channels": 8, "partition_size": 2, "block_channels": [16, 32],
                          "block_layers": [1, 1], "head_dim": 8, "stochastic_depth_prob": 0.0, "num_classes": 10},
               (3, 32, 32), False),
    # swin: torchvision's own SwinTransformer class with swin_t's patch size and 7x7 windows at 32x32 (8x8 maps,
    # padded to 14x14 and shifted; then 4x4, one window) and two narrow stages (swin_t is 4 stages of the same
    # blocks); torch.onnx.export's shifted_window_attention does not read back (see docs/frontend_support.md)
    "swin": ("SwinTransformer", {"patch_size": [4, 4], "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4],
                                 "window_size": [7, 7], "num_classes": 10}, (3, 32, 32), False),
}
_BIG = {"vgg11", "alexnet"}  # 133M and 61M parameters: their classifiers are fixed by torchvision


def build_torchvision(family):
    """TV_FAMILIES[family]'s torchvision module, seeded and randomised as the tests use it (eval mode)."""
    tvm = pytest.importorskip("torchvision.models")
    ctor, kw, _, _ = TV_FAMILIES[family]
    torch.manual_seed(0)
    if ctor == "ResNet":
        from torchvision.models import resnet

        kw = {**kw, "block": getattr(resnet, kw["block"])}
        module = randomize(resnet.ResNet(**kw))
    elif ctor == "VisionTransformer":
        module = tvm.VisionTransformer(**kw)
        with torch.no_grad():  # torchvision zero-initialises the head and the class token
            for p in module.parameters():
                if p.dim() >= 2 and not p.any():
                    p.normal_(0.0, 0.02)
        module = randomize(module)
    elif ctor == "MaxVit":  # maxvit
        module = randomize(tvm.MaxVit(**kw))
    elif ctor == "SwinTransformer":  # swin: torchvision's N(0, 0.02) weights give near-uniform attention, tiny logits
        module = tvm.SwinTransformer(**kw)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        module = randomize(module)
    else:
        module = randomize(getattr(tvm, ctor)(weights=None, **kw))
    return module


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f in _BIG else f
                                    for f in TV_FAMILIES])
def test_torchvision_family_round_trips(family):
    _, _, shape, torch_onnx = TV_FAMILIES[family]
    module = build_torchvision(family)
    g = round_trip(module, shape, torch_onnx=torch_onnx)
    assert g.num_params() == sum(p.numel() for p in module.parameters())
    if family == "resnet18":
        assert g.node("layer1.0.conv1").op == "conv2d" and g.node("layer1.0.add").op == "add"
    if family == "convnext_tiny":
        assert g.node("features.0.1.layernorm").attrs["axis"] == "channels"  # the stem's LayerNorm2d, fused
        assert g.node("features.1.0.block.2").attrs["axis"] == "last"  # nn.LayerNorm on channels-last
        assert g.node("features.1.0.scale").op == "scale"  # the layer scale gamma
        assert not [n for n in g.nodes("layernorm") if n.attrs["axis"] == "last" and g.node(g.inputs_of(n.id)[0]).op
                    != "permute"]
    if family.startswith("shufflenet"):
        assert {"reshape", "permute", "slice"} <= {n.op for n in g.nodes()}  # view / transpose / view, chunk
    if family == "vit":
        assert {"param", "attention"} <= {n.op for n in g.nodes()}
    if family == "maxvit":
        assert {"rel_attention", "reshape", "permute", "layernorm"} <= {n.op for n in g.nodes()}
    if family == "swin":
        assert {"window_attention", "slice", "concat"} <= {n.op for n in g.nodes()}
        assert g.node("features.1.1.attn").attrs["shift_size"] == [3, 3]
    if family == "inception_v3":  # inception: the factorised 1x7 / 7x1 convs and the 3x3 avg-pool branches
        assert g.node("Mixed_6b.branch7x7_2.conv").attrs["kernel_size"] == [1, 7]
        assert g.node("Mixed_6b.branch7x7_3.conv").attrs["kernel_size"] == [7, 1]
        assert len(g.nodes("avgpool2d")) == 9 and len(g.nodes("concat")) == 15
    if family == "efficientnet_b0":
        notes = g.meta["frontend"]["notes"]
        assert notes and all("stochastic depth" in n for n in notes)
