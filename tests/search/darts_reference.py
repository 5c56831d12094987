"""An independent PyTorch transcription of the DARTS evaluation networks, for tests to compare against.

This is the network of the DARTS authors' repository (quark0/darts, ``cnn/model.py`` and
``cnn/operations.py``), written out again from reading it: the same ops, the same cell wiring,
the same stems, auxiliary heads and classifier, so that parameter and multiply-accumulate counts
of a genotype built here match the ones the DARTS paper and its descendants report (DARTS_V2 on
CIFAR-10: 3,349,342 parameters, the "3.3M" of the paper's Table 1). It is a test helper, not
library code: archir's own builders are checked against it.

Differences from the reference, none of which changes a count or an eval-mode output:

- every ReLU is out-of-place (the reference's ``inplace=True`` in the stems and heads only saves
  memory);
- ``drop_path`` multiplies out of place (the reference's ``div_`` / ``mul_``);
- the training-only branches (drop-path, the auxiliary head) test ``self.training`` first, a
  Python bool at trace time, so ``torch.fx.symbolic_trace(model.eval())`` traces straight through.

:func:`reference_counts` counts parameters the way ``utils.count_parameters_in_MB`` of the DARTS
repository does (leaving out every parameter whose name contains ``auxiliary``) and
multiply-accumulates of one eval-mode forward with forward hooks on ``nn.Conv2d`` and
``nn.Linear``. :data:`REFERENCE_FIGURES` holds what that gives for every genotype of
``search.spaces.genotypes`` in the two standard layouts, computed once and written in.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

__all__ = ["OPS", "Zero", "Identity", "ReLUConvBN", "FactorizedReduce", "SepConv", "DilConv", "Conv7x1_1x7",
           "drop_path", "Cell", "AuxiliaryHeadCIFAR", "AuxiliaryHeadImageNet", "NetworkCIFAR", "NetworkImageNet",
           "reference_counts", "CIFAR_LAYOUT", "IMAGENET_LAYOUT", "build_reference", "REFERENCE_FIGURES"]


# ----------------------------------------------------------------------------------------- ops
class Zero(nn.Module):
    """The ``none`` op: zeros of the input's shape (strided when ``stride > 1``)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, ::self.stride, ::self.stride].mul(0.0)


class Identity(nn.Module):
    """``skip_connect`` at stride 1 (its own class: drop-path skips it, as the reference does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ReLUConvBN(nn.Module):
    """ReLU, a plain convolution without bias, BatchNorm."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class FactorizedReduce(nn.Module):
    """Halve the resolution: two 1x1 stride-2 convolutions, the second on the input shifted by one
    pixel, each giving half of ``c_out`` channels, concatenated, then BatchNorm (after a ReLU)."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True) -> None:
        super().__init__()
        assert c_out % 2 == 0, "FactorizedReduce needs an even number of output channels"
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        out = torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1)
        return self.bn(out)


class SepConv(nn.Module):
    """The DARTS separable convolution: (ReLU, depthwise k x k, pointwise, BN) twice, the first
    depthwise convolution carrying the stride, the first pointwise keeping ``c_in`` channels."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel_size, stride=stride, padding=padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_in, 1, padding=0, bias=False),
            nn.BatchNorm2d(c_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel_size, stride=1, padding=padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, padding=0, bias=False),
            nn.BatchNorm2d(c_out, affine=affine))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class DilConv(nn.Module):
    """ReLU, a dilated depthwise convolution, pointwise, BN (once, unlike :class:`SepConv`)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, dilation: int,
                 affine: bool = True) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel_size, stride=stride, padding=padding, dilation=dilation,
                      groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, padding=0, bias=False),
            nn.BatchNorm2d(c_out, affine=affine))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Conv7x1_1x7(nn.Module):
    """AmoebaNet's ``conv_7x1_1x7``: ReLU, a full 1x7 then a full 7x1 convolution, BN. (The
    reference builds it inline in ``OPS`` as a ``Sequential``; a class here only for a name.)"""

    def __init__(self, c: int, stride: int, affine: bool = True) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
            nn.Conv2d(c, c, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
            nn.BatchNorm2d(c, affine=affine))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


#: op name -> ``f(C, stride, affine)``, as ``OPS`` of the reference's ``operations.py``
OPS: dict[str, Callable[[int, int, bool], nn.Module]] = {
    "none": lambda C, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine),
    "sep_conv_7x7": lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine),
    "conv_7x1_1x7": lambda C, stride, affine: Conv7x1_1x7(C, stride, affine),
}


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability ``drop_prob``, scaling the kept ones by ``1 / keep``
    (the reference's ``utils.drop_path``: one Bernoulli draw per sample, shape ``(N, 1, 1, 1)``)."""
    keep = 1.0 - drop_prob
    mask = torch.bernoulli(torch.full((x.size(0), 1, 1, 1), keep, dtype=x.dtype, device=x.device))
    return x / keep * mask


# --------------------------------------------------------------------------------------- cells
class Cell(nn.Module):
    """One DARTS evaluation cell built from a genotype (``reduction`` picks the reduce half)."""

    def __init__(self, genotype: Any, c_prev_prev: int, c_prev: int, c: int, reduction: bool,
                 reduction_prev: bool) -> None:
        super().__init__()
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(c_prev_prev, c)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, c, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0)
        pairs = genotype.reduce if reduction else genotype.normal
        concat = genotype.reduce_concat if reduction else genotype.normal_concat
        assert len(pairs) % 2 == 0, "a genotype gives two (op, input) pairs per node"
        self.reduction = reduction
        self._steps = len(pairs) // 2
        self._concat = [int(i) for i in concat]
        self.multiplier = len(self._concat)
        self._indices = [int(index) for _, index in pairs]
        self._ops = nn.ModuleList()
        for name, index in pairs:
            stride = 2 if reduction and index < 2 else 1
            self._ops.append(OPS[name](c, stride, True))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            op1, op2 = self._ops[2 * i], self._ops[2 * i + 1]
            h1 = op1(states[self._indices[2 * i]])
            h2 = op2(states[self._indices[2 * i + 1]])
            if self.training and drop_prob > 0.0:
                if not isinstance(op1, Identity):
                    h1 = drop_path(h1, drop_prob)
                if not isinstance(op2, Identity):
                    h2 = drop_path(h2, drop_prob)
            states.append(h1 + h2)
        return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    """The CIFAR auxiliary classifier (on the 8x8 map after the second reduction)."""

    def __init__(self, c: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),  # 8x8 -> 2x2
            nn.Conv2d(c, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=False))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


class AuxiliaryHeadImageNet(nn.Module):
    """The ImageNet auxiliary classifier: as the CIFAR one with pooling stride 2 and *no*
    BatchNorm after the 2x2 convolution (the reference leaves it out, noting the paper's
    experiments ran without it)."""

    def __init__(self, c: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),
            nn.Conv2d(c, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.ReLU(inplace=False))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


# ------------------------------------------------------------------------------------ networks
def _stack_cells(net: nn.Module, genotype: Any, layers: int, c_prev_prev: int, c_prev: int, c_curr: int,
                 reduction_prev: bool) -> int:
    """Append ``layers`` cells to ``net.cells`` (reductions at layers//3 and 2*layers//3, which
    double the width); set ``net._c_aux``; return the channels of the last cell's output."""
    net.cells = nn.ModuleList()
    net._c_aux = None
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            c_curr *= 2
        cell = Cell(genotype, c_prev_prev, c_prev, c_curr, reduction, reduction_prev)
        reduction_prev = reduction
        net.cells.append(cell)
        c_prev_prev, c_prev = c_prev, cell.multiplier * c_curr
        if i == 2 * layers // 3:
            net._c_aux = c_prev
    return c_prev


class NetworkCIFAR(nn.Module):
    """The DARTS CIFAR evaluation network: 3x3 stem to ``3 C`` channels, ``layers`` cells,
    global average pooling, a linear classifier; the auxiliary head after cell ``2 layers // 3``.

    ``forward`` returns ``(logits, logits_aux)``; ``logits_aux`` is ``None`` outside training or
    without ``auxiliary``. Set ``drop_path_prob`` before a training forward (0 by default)."""

    def __init__(self, C: int, num_classes: int, layers: int, auxiliary: bool, genotype: Any) -> None:
        super().__init__()
        self._layers = layers
        self._auxiliary = auxiliary
        self.drop_path_prob = 0.0
        c_stem = 3 * C
        self.stem = nn.Sequential(nn.Conv2d(3, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        c_prev = _stack_cells(self, genotype, layers, c_stem, c_stem, C, reduction_prev=False)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadCIFAR(self._c_aux, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor):
        logits_aux = None
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == 2 * self._layers // 3 and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        out = self.global_pooling(s1)
        logits = self.classifier(out.view(out.size(0), -1))
        return logits, logits_aux


class NetworkImageNet(nn.Module):
    """The DARTS ImageNet (mobile setting) evaluation network: two stems of stride 4 and 2 (224 ->
    28), ``layers`` cells (the first reading the strided stems, so ``reduction_prev`` starts true),
    a 7x7 average pool and a linear classifier; the auxiliary head after cell ``2 layers // 3``."""

    def __init__(self, C: int, num_classes: int, layers: int, auxiliary: bool, genotype: Any) -> None:
        super().__init__()
        self._layers = layers
        self._auxiliary = auxiliary
        self.drop_path_prob = 0.0
        self.stem0 = nn.Sequential(
            nn.Conv2d(3, C // 2, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=False),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C))
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C))
        c_prev = _stack_cells(self, genotype, layers, C, C, C, reduction_prev=True)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadImageNet(self._c_aux, num_classes)
        self.global_pooling = nn.AvgPool2d(7)
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor):
        logits_aux = None
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == 2 * self._layers // 3 and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        out = self.global_pooling(s1)
        logits = self.classifier(out.view(out.size(0), -1))
        return logits, logits_aux


# -------------------------------------------------------------------------------------- counts
#: the DARTS evaluation layouts: (network class, C, num_classes, layers, input shape)
CIFAR_LAYOUT = dict(C=36, num_classes=10, layers=20, input_shape=(1, 3, 32, 32))
IMAGENET_LAYOUT = dict(C=48, num_classes=1000, layers=14, input_shape=(1, 3, 224, 224))


def build_reference(genotype: Any, dataset: str = "cifar10", auxiliary: bool = True) -> nn.Module:
    """The reference network of ``genotype`` in the DARTS layout for ``dataset`` ("cifar10" or
    "imagenet")."""
    if dataset == "cifar10":
        lay = CIFAR_LAYOUT
        return NetworkCIFAR(lay["C"], lay["num_classes"], lay["layers"], auxiliary, genotype)
    if dataset == "imagenet":
        lay = IMAGENET_LAYOUT
        return NetworkImageNet(lay["C"], lay["num_classes"], lay["layers"], auxiliary, genotype)
    raise ValueError(f"dataset must be 'cifar10' or 'imagenet', got {dataset!r}")


def reference_counts(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """``params``: parameters outside the auxiliary head (DARTS' ``count_parameters_in_MB``, in
    units rather than millions); ``macs``: conv + linear multiply-accumulates of one eval-mode,
    no-grad forward of a tensor of ``input_shape`` (batch 1 for per-image figures), the auxiliary
    head left out. A conv counts ``out_elems * (in_ch / groups) * kh * kw``, a linear
    ``in * out`` (both per sample, times the batch)."""
    params = sum(p.numel() for name, p in model.named_parameters() if "auxiliary" not in name)
    total = [0]

    def conv_hook(mod: nn.Conv2d, inputs: Any, out: torch.Tensor) -> None:
        kh, kw = mod.kernel_size
        total[0] += out.numel() * (mod.in_channels // mod.groups) * kh * kw

    def linear_hook(mod: nn.Linear, inputs: Any, out: torch.Tensor) -> None:
        total[0] += (out.numel() // mod.out_features) * mod.in_features * mod.out_features

    handles = []
    for name, mod in model.named_modules():
        if "auxiliary" in name:
            continue
        if isinstance(mod, nn.Conv2d):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {"params": int(params), "macs": int(total[0])}


#: What :func:`reference_counts` gives for each genotype of ``search.spaces.genotypes`` in the DARTS
#: layouts (``cifar10``: 20 cells, 36 channels, 10 classes, 3x32x32; ``imagenet``: 14 cells, 48
#: channels, 1000 classes, 3x224x224), auxiliary head built and left out. Computed once with this
#: file and written in, so a later change to the transcription shows as a failure.
REFERENCE_FIGURES: dict[str, dict[str, dict[str, int]]] = {
    "DARTS_V1": {"cifar10": {"params": 3_169_414, "macs": 500_987_520},
                 "imagenet": {"params": 4_510_432, "macs": 505_864_704}},
    "DARTS_V2": {"cifar10": {"params": 3_349_342, "macs": 528_359_040},
                 "imagenet": {"params": 4_718_752, "macs": 529_911_552}},
    "NASNet": {"cifar10": {"params": 3_830_950, "macs": 603_452_448},
               "imagenet": {"params": 5_564_320, "macs": 604_031_616}},
    "AmoebaNet": {"cifar10": {"params": 3_145_078, "macs": 488_931_552},
                  "imagenet": {"params": 4_627_360, "macs": 526_746_624}},
    "PNAS": {"cifar10": {"params": 4_481_110, "macs": 706_026_528},
             "imagenet": {"params": 6_394_912, "macs": 696_738_048}},
    "ENAS": {"cifar10": {"params": 4_020_166, "macs": 622_142_496},
             "imagenet": {"params": 5_908_768, "macs": 630_336_384}},
    "SNAS": {"cifar10": {"params": 2_661_382, "macs": 422_218_368},
             "imagenet": {"params": 3_939_328, "macs": 438_042_432}},
}
REFERENCE_FIGURES["DARTS"] = REFERENCE_FIGURES["DARTS_V2"]
