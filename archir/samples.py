"""Small sample networks built with the public API: test material, demos and benchmarks.

Each builder returns a validated graph with weights initialised from ``seed``. BatchNorm
running statistics are randomised (``bn_stats=True``) so that eval-mode BN is not the
identity, which makes numeric checks meaningful.

- :func:`chain`: conv-bn-relu stack with a max pool and a linear head (plain chain).
- :func:`resnet_like`: basic residual blocks; channels coupled through ``add``, one strided
  block with a 1x1 projection shortcut.
- :func:`densenet_like`: dense blocks (``concat``) and a transition.
- :func:`mobilenet_like`: inverted residuals with depthwise convs, squeeze-excite (broadcast
  ``mul``), hardswish/relu6.
- :func:`darts_like`: a stack of DARTS-style cells (sep convs, dilated convs, pools, skips,
  ``concat`` of intermediate nodes), the network of ``benchmarks/lowering.py``.
"""

from __future__ import annotations


import numpy as np

from archir.cells import add_steps, cell_op, cell_network
from archir.graph import Graph

__all__ = ["chain", "resnet_like", "densenet_like", "mobilenet_like", "darts_like", "randomize_bn",
           "SAMPLES"]


def randomize_bn(g: Graph, seed: int = 0) -> Graph:
    """Give every BN non-trivial running stats and affine params (in place; new arrays)."""
    rng = np.random.default_rng(seed)
    for node in g.nodes("batchnorm2d"):
        c = node.type.shape[0]
        g.set_buffers(node.id, running_mean=rng.normal(0, 0.1, c), running_var=rng.uniform(0.5, 1.5, c))
        if node.attrs["affine"]:
            g.set_params(node.id, weight=rng.uniform(0.5, 1.5, c), bias=rng.normal(0, 0.1, c))
    return g


def _finish(g: Graph, out: str, seed: int, bn_stats: bool) -> Graph:
    g.set_outputs(out)
    g.init_params(seed)
    if bn_stats:
        randomize_bn(g, seed + 1)
    return g.validate()


def _cbr(g: Graph, x: str, c: int, name: str, k: int = 3, s: int = 1, groups: int = 1, act: str = "relu") -> str:
    h = g.add("conv2d", x, out_channels=c, kernel_size=k, stride=s, padding=k // 2, groups=groups, bias=False,
              name=f"{name}.conv")
    h = g.add("batchnorm2d", h, name=f"{name}.bn")
    return g.add(act, h, name=f"{name}.{act}") if act else h


def _head(g: Graph, h: str, classes: int) -> str:
    h = g.add("global_avgpool", h, name="pool")
    h = g.add("flatten", h, name="flatten")
    return g.add("linear", h, out_features=classes, name="head")


def chain(seed: int = 0, *, in_shape=(3, 16, 16), widths=(8, 16), classes: int = 10, bn_stats: bool = True) -> Graph:
    """conv-bn-relu x len(widths), a max pool after the first, GAP, linear."""
    g = Graph("chain")
    h = g.input("x", in_shape)
    for i, c in enumerate(widths):
        h = _cbr(g, h, c, f"l{i}")
        if i == 0:
            h = g.add("maxpool2d", h, kernel_size=2, name=f"l{i}.pool")
    return _finish(g, _head(g, h, classes), seed, bn_stats)


def resnet_like(seed: int = 0, *, in_shape=(3, 16, 16), width: int = 8, classes: int = 10,
                bn_stats: bool = True) -> Graph:
    """Stem, two identity basic blocks, one strided block with a 1x1 projection, head."""
    g = Graph("resnet_like")
    h = _cbr(g, g.input("x", in_shape), width, "stem")

    def block(x: str, name: str, c: int, stride: int) -> str:
        y = _cbr(g, x, c, f"{name}.a", s=stride)
        y = _cbr(g, y, c, f"{name}.b", act=None)
        sc = x
        if stride != 1 or c != g.node(x).type.shape[0]:
            sc = _cbr(g, x, c, f"{name}.proj", k=1, s=stride, act=None)
        return g.add("relu", g.add("add", y, sc, name=f"{name}.add"), name=f"{name}.out")

    h = block(h, "b1", width, 1)
    h = block(h, "b2", width, 1)
    h = block(h, "b3", 2 * width, 2)
    return _finish(g, _head(g, h, classes), seed, bn_stats)


def densenet_like(seed: int = 0, *, in_shape=(3, 16, 16), growth: int = 4, layers: int = 3, classes: int = 10,
                  bn_stats: bool = True) -> Graph:
    """Stem, a dense block (each layer reads the concat of all before), transition, head."""
    g = Graph("densenet_like")
    h = g.add("conv2d", g.input("x", in_shape), out_channels=2 * growth, kernel_size=3, padding=1, name="stem.conv")
    feats = [h]
    for i in range(layers):
        x = feats[0] if len(feats) == 1 else g.add("concat", *feats, name=f"d{i}.cat")
        y = g.add("relu", g.add("batchnorm2d", x, name=f"d{i}.bn"), name=f"d{i}.relu")
        feats.append(g.add("conv2d", y, out_channels=growth, kernel_size=3, padding=1, bias=False, name=f"d{i}.conv"))
    h = g.add("concat", *feats, name="dense.out")
    h = _cbr(g, h, 2 * growth, "trans", k=1)
    h = g.add("avgpool2d", h, kernel_size=2, name="trans.pool")
    return _finish(g, _head(g, h, classes), seed, bn_stats)


def mobilenet_like(seed: int = 0, *, in_shape=(3, 16, 16), width: int = 8, classes: int = 10,
                   bn_stats: bool = True) -> Graph:
    """Stem, inverted residuals (1x1 expand, 3x3 depthwise, squeeze-excite, 1x1 project), head."""
    g = Graph("mobilenet_like")
    h = _cbr(g, g.input("x", in_shape), width, "stem", act="hardswish")

    def inverted(x: str, name: str, c_out: int, expand: int, stride: int, se: bool) -> str:
        c_in = g.node(x).type.shape[0]
        mid = c_in * expand
        y = _cbr(g, x, mid, f"{name}.expand", k=1, act="relu6")
        y = _cbr(g, y, mid, f"{name}.dw", k=3, s=stride, groups=mid, act="relu6")
        if se:
            s = g.add("global_avgpool", y, name=f"{name}.se.pool")
            s = g.add("conv2d", s, out_channels=max(1, mid // 4), kernel_size=1, name=f"{name}.se.fc1")
            s = g.add("relu", s, name=f"{name}.se.relu")
            s = g.add("conv2d", s, out_channels=mid, kernel_size=1, name=f"{name}.se.fc2")
            s = g.add("hardsigmoid", s, name=f"{name}.se.gate")
            y = g.add("mul", y, s, name=f"{name}.se.mul")
        y = _cbr(g, y, c_out, f"{name}.project", k=1, act=None)
        if stride == 1 and c_in == c_out:
            y = g.add("add", x, y, name=f"{name}.add")
        return y

    h = inverted(h, "ir1", width, 2, 1, se=True)
    h = inverted(h, "ir2", 2 * width, 3, 2, se=False)
    h = inverted(h, "ir3", 2 * width, 2, 1, se=True)
    return _finish(g, _head(g, h, classes), seed, bn_stats)


def darts_like(cells: int = 20, seed: int = 0, *, in_shape=(3, 32, 32), channels: int = 16, classes: int = 10,
               bn_stats: bool = True) -> Graph:
    """A DARTS-style network (:func:`archir.cells.cell_network`): CIFAR stem, ``cells`` cells
    (reduction at 1/3 and 2/3), GAP + linear head.

    Node ``n`` of cell ``i`` sums two edges on states ``n`` and ``n + 1`` (mod the states so
    far), cycling through sep_conv_3x3, dil_conv_3x3, max_pool_3x3 and skip_connect (an
    avg_pool_3x3 where it would be strided), and the cell concatenates its four nodes.
    """
    g = Graph(f"darts_like_{cells}")
    kinds = ("sep_conv_3x3", "dil_conv_3x3", "max_pool_3x3", "skip_connect")

    def node(i: int, red: bool, n: int, states: list[str], c: int) -> str:
        outs = []
        for e, j in enumerate((n % len(states), (n + 1) % len(states))):
            stride = 2 if red and j < 2 else 1
            op = kinds[(n + e + i) % 4]
            if op == "skip_connect" and stride == 2:
                op = "avg_pool_3x3"
            outs.append(add_steps(g, states[j], cell_op(op, c, stride), f"cell{i}.n{n}.e{e}"))
        return g.add("add", *outs, name=f"cell{i}.n{n}.add")

    (out,) = cell_network(g, g.input("x", in_shape), cells=cells, channels=channels, classes=classes, node=node)
    return _finish(g, out, seed, bn_stats)


SAMPLES = {"chain": chain, "resnet_like": resnet_like, "densenet_like": densenet_like,
           "mobilenet_like": mobilenet_like, "darts_like": darts_like}
