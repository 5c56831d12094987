"""The DARTS / NASNet cell network, op for op as the DARTS reference implementation builds it.

One definition of each primitive and of the network around the cells, shared by
``archir.samples.darts_like`` and ``search.spaces.darts`` (plain networks and supernets), so a
genotype built here has the reference's exact parameters and MACs (Liu et al. 2019,
``cnn/operations.py`` and ``cnn/model.py`` of the DARTS repository; NASNet: Zoph et al. 2018).

- :data:`PRIMITIVES` and :func:`cell_op`: each cell op as a list of op specs (the format of
  ``choice`` candidates; a spec with ``"inputs"`` branches, see :func:`add_steps`).
- :func:`factorized_reduce`: DARTS' FactorizedReduce -- relu, then two 1x1 stride-2 convs to
  ``C/2``, the second on the input shifted by one pixel (``x[:, :, 1:, 1:]``: two ``slice``
  ops), concatenated, then BN. The strided ``skip_connect`` and the preprocessing of the
  older input after a reduction cell.
- :func:`cell_network`: stem (CIFAR: one 3x3 conv to ``3C``; ImageNet: the two stride-2 stems
  of ``NetworkImageNet``), ``cells`` cells with reductions at ``cells // 3`` and
  ``2 * cells // 3``, each preprocessing its two inputs and concatenating the states its
  genotype lists, an optional auxiliary head after cell ``2 * cells // 3``, GAP and a linear
  classifier.

Example:
    >>> from archir import Graph
    >>> from archir.cells import add_steps, cell_op
    >>> g = Graph("one_op")
    >>> y = add_steps(g, g.input("x", (8, 16, 16)), cell_op("sep_conv_3x3", 8, 2), "e")
    >>> g.node(y).type.shape
    (8, 8, 8)
"""

from __future__ import annotations

from typing import Callable, Sequence

from archir.errors import GraphStructureError
from archir.graph import Graph
from archir.ops import step_inputs

__all__ = ["PRIMITIVES", "STEMS", "cell_op", "factorized_reduce", "add_steps", "cell_network", "AUX_WEIGHT"]

#: every cell op the DARTS reference defines (``cnn/operations.py``), in its order.
PRIMITIVES = ("none", "avg_pool_3x3", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
              "sep_conv_7x7", "dil_conv_3x3", "dil_conv_5x5", "conv_7x1_1x7")
STEMS = ("cifar", "imagenet")
#: the auxiliary loss weight of the DARTS/NASNet recipe
AUX_WEIGHT = 0.4


def _relu_conv_bn(c: int, k, stride, padding) -> list[dict]:
    return [{"op": "relu"},
            {"op": "conv2d", "out_channels": c, "kernel_size": k, "stride": stride, "padding": padding, "bias": False},
            {"op": "batchnorm2d"}]


def factorized_reduce(c: int) -> list[dict]:
    """DARTS' FactorizedReduce to ``c`` channels (even): relu; cat(conv1x1/2(x), conv1x1/2(x[:, :, 1:, 1:])); BN.

    On an even ``H x W`` both halves are ``(H/2, W/2)``; the reference (and this) cannot reduce
    an odd map (the halves differ by one pixel: the concat refuses it).
    """
    if c % 2:
        raise GraphStructureError(f"FactorizedReduce needs an even channel count, got {c}", rule="cell",
                                  hint="use an even number of channels per cell (DARTS uses 16 or 36)")
    half = {"op": "conv2d", "out_channels": c // 2, "kernel_size": 1, "stride": 2, "bias": False}
    return [{"op": "relu"},
            dict(half),
            {"op": "slice", "dim": 2, "start": 1, "inputs": [0]},
            {"op": "slice", "dim": 3, "start": 1},
            dict(half),
            {"op": "concat", "inputs": [1, 4]},
            {"op": "batchnorm2d"}]


def cell_op(op: str, c: int, stride: int = 1) -> list[dict]:
    """The op specs of cell op ``op`` (one of :data:`PRIMITIVES`) on ``c`` channels with ``stride``.

    As the DARTS reference defines them: ``none`` a zero (strided), pools 3x3 with padding 1
    (average without the padding), ``skip_connect`` the identity (no specs) or FactorizedReduce
    at stride 2, ``sep_conv_k`` (relu, depthwise kxk, pointwise, BN) twice with the stride on the
    first depthwise conv, ``dil_conv_k`` relu, depthwise kxk dilation 2, pointwise, BN, and
    ``conv_7x1_1x7`` relu, conv 1x7 (stride along W), conv 7x1 (stride along H), BN. Every op
    maps ``(c, H, W)`` to ``(c, ceil(H/s), ceil(W/s))``.
    """
    s = stride
    if op == "none":
        return [{"op": "zero", "stride": s}]
    if op == "skip_connect":
        return [] if s == 1 else factorized_reduce(c)
    if op in ("max_pool_3x3", "avg_pool_3x3"):
        spec = {"op": op[:3] + "pool2d", "kernel_size": 3, "stride": s, "padding": 1}
        if op == "avg_pool_3x3":
            spec["count_include_pad"] = False
        return [spec]
    if op.startswith("sep_conv_") and op[-1] in "357":
        k = int(op[-1])
        out: list[dict] = []
        for r in range(2):
            out += [{"op": "relu"},
                    {"op": "conv2d", "out_channels": c, "kernel_size": k, "stride": s if r == 0 else 1,
                     "padding": k // 2, "groups": c, "bias": False},
                    {"op": "conv2d", "out_channels": c, "kernel_size": 1, "bias": False},
                    {"op": "batchnorm2d"}]
        return out
    if op in ("dil_conv_3x3", "dil_conv_5x5"):
        k = int(op[-1])
        return [{"op": "relu"},
                {"op": "conv2d", "out_channels": c, "kernel_size": k, "stride": s, "padding": k - 1, "dilation": 2,
                 "groups": c, "bias": False},
                {"op": "conv2d", "out_channels": c, "kernel_size": 1, "bias": False},
                {"op": "batchnorm2d"}]
    if op == "conv_7x1_1x7":
        return [{"op": "relu"},
                {"op": "conv2d", "out_channels": c, "kernel_size": [1, 7], "stride": [1, s], "padding": [0, 3],
                 "bias": False},
                {"op": "conv2d", "out_channels": c, "kernel_size": [7, 1], "stride": [s, 1], "padding": [3, 0],
                 "bias": False},
                {"op": "batchnorm2d"}]
    raise GraphStructureError(f"unknown cell op {op!r}", rule="cell", hint=f"use one of {list(PRIMITIVES)}")


def add_steps(g: Graph, x: str, ops: Sequence[dict], name: str | Callable[[int], str]) -> str:
    """Add op specs after ``x`` (a ``choice`` candidate's ``ops``); returns the last step's id.

    Step ``j`` reads the step before it, or the steps its ``"inputs"`` lists (``-1``: ``x``).
    It is named ``f"{name}.{j}"`` (or ``name(j)`` for a callable). No specs: ``x`` itself.
    """
    h, made = x, []
    for j, spec in enumerate(ops):
        ins = [x if i < 0 else made[i] for i in step_inputs(spec, j)]
        attrs = {k: v for k, v in spec.items() if k not in ("op", "inputs")}
        h = g.add(spec["op"], *ins, name=name(j) if callable(name) else f"{name}.{j}", **attrs)
        made.append(h)
    return h


def _spatial(g: Graph, x: str) -> tuple[int, int]:
    return tuple(g.node(x).type.shape[1:])  # type: ignore[return-value]


def _even(g: Graph, x: str, where: str) -> None:
    h, w = _spatial(g, x)
    if h % 2 or w % 2:
        raise GraphStructureError(
            f"{where} reduces a {h}x{w} map with FactorizedReduce, which needs an even height and width",
            rule="cell", hint="use an input size that stays even through every reduction (32x32, 224x224, 8x8 ...)")


def _aux_head(g: Graph, x: str, classes: int, stem: str) -> str:
    # AuxiliaryHeadCIFAR (an 8x8 map) / AuxiliaryHeadImageNet (7x7 at 224x224; its second BN is left
    # out in the reference, "for consistency with the experiments in the paper")
    h, w = _spatial(g, x)
    stride = 3 if stem == "cifar" else 2
    oh, ow = (h - 5) // stride + 1, (w - 5) // stride + 1
    if min(h, w) < 5 or (oh - 1, ow - 1) != (1, 1):
        want = "8x8 (a 32x32 input)" if stem == "cifar" else "7x7 (a 224x224 input)"
        raise GraphStructureError(f"the auxiliary head needs a {want} map after cell 2*cells//3, got {h}x{w}",
                                  rule="cell", hint="build with auxiliary=False, or at the papers' input size")
    a = g.add("relu", x, name="aux.relu0")
    a = g.add("avgpool2d", a, kernel_size=5, stride=stride, count_include_pad=False, name="aux.pool")
    a = g.add("conv2d", a, out_channels=128, kernel_size=1, bias=False, name="aux.conv0")
    a = g.add("relu", g.add("batchnorm2d", a, name="aux.bn0"), name="aux.relu1")
    a = g.add("conv2d", a, out_channels=768, kernel_size=2, bias=False, name="aux.conv1")
    if stem == "cifar":
        a = g.add("batchnorm2d", a, name="aux.bn1")
    a = g.add("relu", a, name="aux.relu2")
    a = g.add("linear", g.add("flatten", a, name="aux.flatten"), out_features=classes, name="aux.head")
    return a


NodeFn = Callable[[int, bool, int, list[str], int], str]


def cell_network(g: Graph, x: str, *, cells: int, channels: int, classes: int, node: NodeFn, nodes: int = 4,
                 concat: Callable[[bool], Sequence[int]] | None = None, stem: str = "cifar",
                 auxiliary: float = 0.0) -> list[str]:
    """The DARTS/NASNet network around caller-built cell nodes; returns the output ids (main first).

    Args:
        g, x: the graph and its input (``(3, H, W)``).
        cells, channels: cells of the network and channels of its first cells (``C``; doubled at
            each reduction, at ``cells // 3`` and ``2 * cells // 3``).
        classes: outputs of the classifier.
        node: ``node(cell, reduction, n, states, c) -> id`` builds intermediate node ``n`` from
            ``states`` (``states[:2]`` the preprocessed inputs, then the nodes so far) at ``c``
            channels; in a reduction cell, edges from ``states[:2]`` take stride 2.
        nodes: intermediate nodes per cell.
        concat: ``concat(reduction)`` -> the state indices the cell output concatenates (2 and up:
            the intermediate nodes; NASNet's "loose ends"); default every intermediate node.
        stem: ``"cifar"`` (conv 3x3 to ``3C``, BN) or ``"imagenet"`` (``NetworkImageNet``:
            conv 3x3/2 to ``C/2``, BN, relu, conv 3x3/2 to ``C``, BN; then relu, conv 3x3/2, BN).
        auxiliary: the auxiliary head's loss weight (0: no head). The head reads the output of
            cell ``2 * cells // 3`` and ends in an ``auxiliary`` output node.

    Each cell preprocesses the older input with FactorizedReduce when the previous cell reduced
    (else relu-conv1x1-BN) and the newer one with relu-conv1x1-BN, as the reference does.
    Preprocessing nodes that no edge reads are left for the caller to drop.
    """
    if stem not in STEMS:
        raise GraphStructureError(f"unknown stem {stem!r}", rule="cell", hint=f"use one of {list(STEMS)}")
    c = channels
    if stem == "cifar":
        h = g.add("conv2d", x, out_channels=3 * c, kernel_size=3, padding=1, bias=False, name="stem.conv")
        s0 = s1 = g.add("batchnorm2d", h, name="stem.bn")
    else:
        if c % 2:
            raise GraphStructureError(f"the ImageNet stem needs an even channel count, got {c}", rule="cell",
                                      hint="use an even number of channels (DARTS uses 48)")
        h = g.add("conv2d", x, out_channels=c // 2, kernel_size=3, stride=2, padding=1, bias=False,
                  name="stem0.conv0")
        h = g.add("relu", g.add("batchnorm2d", h, name="stem0.bn0"), name="stem0.relu")
        h = g.add("conv2d", h, out_channels=c, kernel_size=3, stride=2, padding=1, bias=False, name="stem0.conv1")
        s0 = g.add("batchnorm2d", h, name="stem0.bn1")
        s1 = add_steps(g, s0, _relu_conv_bn(c, 3, 2, 1), "stem1")
    reductions = {cells // 3, 2 * cells // 3} if cells >= 3 else set()
    aux_at = 2 * cells // 3 if auxiliary else None
    aux = None
    reduced_prev = stem == "imagenet"
    for i in range(cells):
        red = i in reductions
        if red:
            c *= 2
        if reduced_prev:
            _even(g, s0, f"cell {i}")
            p0 = add_steps(g, s0, factorized_reduce(c), f"cell{i}.pre0")
        else:
            p0 = add_steps(g, s0, _relu_conv_bn(c, 1, 1, 0), f"cell{i}.pre0")
        p1 = add_steps(g, s1, _relu_conv_bn(c, 1, 1, 0), f"cell{i}.pre1")
        if red:
            _even(g, p1, f"reduction cell {i}")
        states = [p0, p1]
        for n in range(nodes):
            states.append(node(i, red, n, list(states), c))
        picked = list(range(2, nodes + 2)) if concat is None else list(concat(red))
        out = [states[k] for k in picked]
        s0, s1 = s1, (out[0] if len(out) == 1 else g.add("concat", *out, name=f"cell{i}.out"))
        reduced_prev = red
        if i == aux_at:
            aux = g.add("auxiliary", _aux_head(g, s1, classes, stem), weight=float(auxiliary), name="aux")
    h = g.add("global_avgpool", s1, name="pool")
    h = g.add("flatten", h, name="flatten")
    return [g.add("linear", h, out_features=classes, name="head"), *([aux] if aux else [])]
