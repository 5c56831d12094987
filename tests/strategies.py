"""Hypothesis strategies that build random *valid* archir graphs, for property tests.

Import them in any test module::

    from hypothesis import given
    from tests.strategies import graphs, supernets, input_arrays

    @given(graphs(max_nodes=12))
    def test_my_pass_keeps_validity(g):
        g2 = my_pass(g)
        g2.validate()

Public names:

- :func:`graphs` (``graphs(max_nodes=14, allow_choice=False, max_inputs=2, max_outputs=2)``):
  plain networks built with the public ``Graph`` API. One (sometimes two) inputs of shape
  ``(C, H, W)`` with ``C`` in 1..8 and ``H``, ``W`` in 4..12; a random body of ``conv2d``
  (random groups, dilation, stride, padding, kernel, bias; square or per-dim pairs),
  ``batchnorm2d``, activations (relu, relu6, sigmoid, hardswish, hardsigmoid, silu, tanh, leaky_relu,
  gelu, elu, hardtanh and neg, with drawn attrs), ``sub`` (of an equal-shape node or a ``(C, 1, 1)``
  mean), ``div`` by a positive ``(C, 1, 1)`` sigmoid gate, ``pad`` (constant/reflect/replicate),
  ``layernorm`` (over the channels, or ConvNeXt's channels-last ``permute -> layernorm -> linear ->
  permute`` back; drawn eps/affine/bias), ``channel_shuffle`` (groups dividing C), ``permute`` swapping H and W,
  ``maxpool2d`` (ceil_mode, dilation, default stride), ``avgpool2d`` (count_include_pad both
  ways), ``identity``, ``dropout``, ``zero`` (strided too), ``scale``, residual ``add`` (with an
  earlier node of equal shape, or ``add(x, x)``), broadcast ``mul`` by a ``(C, 1, 1)`` gate (and
  equal-shape ``mul``), ``concat`` of equal-spatial nodes (channels; sometimes H or W), and
  ``global_avgpool -> flatten -> linear`` heads (sometimes ``flatten -> linear`` straight from
  a feature map, sometimes a ``linear`` on a rank-2 ``(C, H*W)`` tensor; one or two outputs).
  With ``allow_choice=True`` some body steps are ``choice`` nodes (see :func:`supernets`); with
  ``transformer=True`` some are ViT-like blocks on the map's ``(H*W, C)`` tokens (``permute``, a ``param``
  class token ``concat``-ed in front and a ``param`` position embedding added, ``layernorm``, ``attention``
  with a residual, the class token sliced off, ``reshape`` back to the map), MaxViT-like window blocks
  (``reshape``/``permute`` of the map into p x p windows, ``rel_attention`` with a residual, and back), and
  some Swin-like blocks on the channels-last ``(H, W, C)`` map (``permute``, ``layernorm``, ``window_attention``
  or ``window_attention_v2`` with drawn window, shift, heads and biases, a residual, ``permute`` back).
  Every attribute is drawn legal for the current shape (nothing is rejected by catching an
  error), spatial dims stay <= 16 and channels <= 32. The graph is validated, weights come
  from a drawn seed, BN running stats/affine params, ``scale`` and layernorm weights are randomised so
  that eval-mode numerics are not trivial. Every graph input reaches an output. Node ids are
  readable (``"n3.conv2d"``, ``"conv2d_7"`` or ``"b3_relu"`` styles).
- :func:`supernets` (``supernets(max_cells=3, max_nodes_per_cell=3)``): DARTS-like supernets.
  A stem, then cells (normal or reduction) whose intermediate nodes sum one or two ``choice``
  edges; candidates come from :data:`CANDIDATE_MENU` (``none`` = zero, ``skip_connect``,
  pools, sep/dil convs, plain convs); edges at the same position of cells of the same kind are
  often tied (``tie="normal.n0.e1"``) and share one decision. Architecture logits are drawn
  ``N(0, 1)`` so ``derive(g)`` (argmax) is meaningful; BN stats inside candidates are
  randomised too.
- :func:`decisions` (``decisions(g)``): a complete random decision map ``{key: name}`` for a
  supernet (to pass to ``archir.derive``).
- :func:`input_arrays` (``input_arrays(g, batch=2, seed=0)``): seeded float32 inputs, one
  array ``(batch, *shape)`` per graph input, in ``g.inputs`` order.
- :func:`candidates_for`: the DARTS-like candidate list for a given input shape and stride.

All strategies are deterministic given hypothesis' draws (and so derandomizable).
"""

from __future__ import annotations

import networkx as nx
import numpy as np
from hypothesis import strategies as st

import archir
from archir.ops.core import _out_size  # the IR's own size rule (torch's, incl. ceil_mode)
from archir.graph import freeze_array
from archir.samples import randomize_bn

__all__ = ["graphs", "supernets", "decisions", "input_arrays", "candidates_for", "CANDIDATE_MENU",
           "ACTIVATIONS", "randomize_weights"]

ACTIVATIONS = ("relu", "relu6", "sigmoid", "hardswish", "hardsigmoid", "silu", "tanh", "leaky_relu", "gelu", "elu",
               "hardtanh", "neg")
#: attrs drawn for the parametrised activations (hardtanh(0, 6) is left out: it imports as relu6)
ACTIVATION_ATTRS = {"leaky_relu": [{}, {"negative_slope": 0.2}, {"negative_slope": -0.1}],
                    "gelu": [{}, {"approximate": "tanh"}], "elu": [{}, {"alpha": 0.5}],
                    "hardtanh": [{}, {"min_val": -0.5, "max_val": 2.0}, {"min_val": 0.25, "max_val": 0.75}]}
MAX_SPATIAL = 16
MAX_CHANNELS = 32

#: candidate names of :func:`candidates_for`, in DARTS order.
CANDIDATE_MENU = ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3", "dil_conv_3x3",
                  "conv_5x5", "conv_1x1")


# --------------------------------------------------------------------------- helpers


def input_arrays(g: archir.Graph, batch: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Seeded standard-normal inputs ``(batch, *shape)`` for every graph input, in order."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, *g.node(i).type.shape)).astype(np.float32) for i in g.inputs]


def randomize_weights(g: archir.Graph, seed: int) -> archir.Graph:
    """Make eval-mode numerics non-trivial (in place, new arrays): BN stats and affine params
    (also inside choice candidates), ``scale`` weights, and N(0, 1) architecture logits."""
    randomize_bn(g, seed)
    rng = np.random.default_rng(seed + 7919)
    for node in g.nodes("scale"):
        g.set_params(node.id, weight=rng.uniform(0.5, 1.5, node.type.shape[0]))
    for node in g.nodes("layernorm"):
        ps = {k: (rng.uniform(0.5, 1.5, a.shape) if k == "weight" else rng.normal(0, 0.1, a.shape))
              for k, a in node.params.items()}
        if ps:
            g.set_params(node.id, **ps)
    for node in [*g.nodes("attention"), *g.nodes("window_attention"), *g.nodes("window_attention_v2")]:
        # a spread of scores, not uniform weights
        g.set_params(node.id, **{k: rng.normal(0, 0.5 if k.endswith("weight") else 0.1, a.shape)
                                 for k, a in node.params.items()})
    for node in g.nodes("rel_attention"):  # maxvit: a relative bias that moves the scores (init: N(0, 0.02))
        g.set_params(node.id, bias_table=rng.normal(0, 0.5, node.params["bias_table"].shape))
    for node in g.nodes("choice"):
        bufs = {k: (rng.normal(0, 0.1, a.shape) if k.endswith("running_mean") else rng.uniform(0.5, 1.5, a.shape))
                for k, a in node.buffers.items()}
        if bufs:
            g.set_buffers(node.id, **bufs)
        bn_steps = {k.rsplit(".", 1)[0] for k in node.buffers}  # "<cand>.<step>" of each BN step
        ps = {}
        for k, a in node.params.items():
            if k.rsplit(".", 1)[0] in bn_steps:
                ps[k] = rng.uniform(0.5, 1.5, a.shape) if k.endswith("weight") else rng.normal(0, 0.1, a.shape)
        if ps:
            g.set_params(node.id, **ps)
    for key in sorted(g.arch):
        g.arch[key] = freeze_array(rng.standard_normal(g.arch[key].shape[0]))
    return g


def _conv_dim_ok(size: int, k: int, s: int, p: int, d: int) -> bool:
    if d * (k - 1) + 1 > size + 2 * p:
        return False
    return 1 <= _out_size(size, k, s, p, d, False) <= MAX_SPATIAL


def _pool_dim_ok(size: int, k: int, s: int, p: int, d: int, ceil: bool) -> bool:
    if p > k // 2 or d * (k - 1) + 1 > size + 2 * p or d > size:  # d > size: windows of padding only
        return False
    return 1 <= _out_size(size, k, s, p, d, ceil) <= MAX_SPATIAL


def _draw_conv_dim(draw, size: int) -> tuple[int, int, int, int]:
    """(kernel, stride, padding, dilation) for one spatial dim of a conv on ``size``."""
    p = draw(st.integers(0, 2 if size <= 12 else 0))  # padding may grow the map, but never past 16
    span = size + 2 * p
    k = draw(st.sampled_from([v for v in (1, 2, 3, 5) if v <= span]))
    dmax = 3 if k == 1 else max(1, min(3, (span - 1) // (k - 1)))
    d = draw(st.integers(1, dmax))
    s_min = 1 if _out_size(size, k, 1, p, d, False) <= MAX_SPATIAL else 2
    s = draw(st.integers(s_min, 3))
    return k, s, p, d


def _draw_pool_dim(draw, size: int, *, dilation: bool, ceil: bool, default_stride: bool):
    """(kernel, stride, padding, dilation) for one dim of a pool on ``size`` (stride None = kernel)."""
    k = draw(st.integers(1, min(4, size + 1)))  # k = size + 1 needs padding 1 <= k // 2
    hi = k // 2
    dmax = 1
    if dilation and k > 1:
        # d <= size: a window wider apart than the map could see padding only (-inf in torch)
        dmax = max(d for d in (1, 2) if d * (k - 1) + 1 <= size + 2 * hi and d <= size)
    d = draw(st.integers(1, dmax))
    eff = d * (k - 1) + 1
    p_lo = max(0, -(-(eff - size) // 2))
    p = draw(st.integers(p_lo, hi))
    if default_stride and _pool_dim_ok(size, k, k, p, d, ceil):
        return k, None, p, d
    s_min = 1 if _out_size(size, k, 1, p, d, ceil) <= MAX_SPATIAL else 2
    return k, draw(st.integers(s_min, 3)), p, d


def _pairs(hw: list[tuple]) -> dict[str, object]:
    """Per-dim tuples [(k, s, p, d) for H, (k, s, p, d) for W] -> torch-style attrs."""
    out = {}
    for i, name in enumerate(("kernel_size", "stride", "padding", "dilation")):
        a, b = hw[0][i], hw[1][i]
        out[name] = a if a == b else [a, b]
    return out


def candidates_for(c: int, stride: int, names=CANDIDATE_MENU) -> list[dict]:
    """DARTS-like candidate chains for a ``(c, H, W)`` input; all give ``(c, ceil(H/s), ceil(W/s))``.

    ``skip_connect`` is the empty chain (identity) at stride 1 and a strided 1x1 conv + BN at
    stride 2; ``none`` is ``zero`` with the stride.
    """
    s = stride
    menu = {
        "none": [{"op": "zero", "stride": s}],
        "skip_connect": [] if s == 1 else [{"op": "conv2d", "out_channels": c, "kernel_size": 1, "stride": s,
                                            "bias": False}, {"op": "batchnorm2d"}],
        "max_pool_3x3": [{"op": "maxpool2d", "kernel_size": 3, "stride": s, "padding": 1}],
        "avg_pool_3x3": [{"op": "avgpool2d", "kernel_size": 3, "stride": s, "padding": 1,
                          "count_include_pad": False}],
        "sep_conv_3x3": [
            {"op": "relu"},
            {"op": "conv2d", "out_channels": c, "kernel_size": 3, "stride": s, "padding": 1, "groups": c,
             "bias": False},
            {"op": "conv2d", "out_channels": c, "kernel_size": 1, "bias": False},
            {"op": "batchnorm2d", "affine": False},
            {"op": "relu"},
            {"op": "conv2d", "out_channels": c, "kernel_size": 3, "padding": 1, "groups": c, "bias": False},
            {"op": "conv2d", "out_channels": c, "kernel_size": 1, "bias": False},
            {"op": "batchnorm2d"},
        ],
        "dil_conv_3x3": [
            {"op": "relu"},
            {"op": "conv2d", "out_channels": c, "kernel_size": 3, "stride": s, "padding": 2, "dilation": 2,
             "groups": c, "bias": False},
            {"op": "conv2d", "out_channels": c, "kernel_size": 1, "bias": False},
            {"op": "batchnorm2d"},
        ],
        "conv_5x5": [{"op": "relu"}, {"op": "conv2d", "out_channels": c, "kernel_size": 5, "stride": s, "padding": 2},
                     {"op": "batchnorm2d"}],
        "conv_1x1": [{"op": "conv2d", "out_channels": c, "kernel_size": 1, "stride": s}, {"op": "hardswish"}],
    }
    return [{"name": n, "ops": menu[n]} for n in names]


_candidate_names = st.lists(st.sampled_from(CANDIDATE_MENU), min_size=2, max_size=5, unique=True).map(
    lambda ns: tuple(n for n in CANDIDATE_MENU if n in ns))  # menu order, like DARTS' PRIMITIVES


# --------------------------------------------------------------------------- graphs()


class _Builder:
    def __init__(self, draw, g: archir.Graph, naming: str, allow_choice: bool, transformer: bool = False) -> None:
        self.draw, self.g, self.naming, self.allow_choice = draw, g, naming, allow_choice
        self.transformer = transformer
        self.k = 0
        self.ties: dict[str, tuple[str, ...]] = {}

    def name(self, op: str) -> str | None:
        self.k += 1
        if self.naming == "auto":
            return None
        if self.naming == "scoped":
            return f"n{self.k}.{op}"
        return f"b{self.k}_{op}"

    def add(self, op: str, *ins: str, **attrs) -> str:
        return self.g.add(op, *ins, name=self.name(op), **attrs)

    def shape(self, n: str) -> tuple[int, ...]:
        return self.g.node(n).type.shape

    def maps(self) -> list[str]:
        """Rank-3 nodes so far (candidates for residuals, gates, concats, branches)."""
        return [n.id for n in self.g.nodes() if n.type is not None and n.type.rank == 3]

    # one body step on a (C, H, W) node; returns the new frontier
    def step(self, cur: str) -> str:
        draw = self.draw
        c, h, w = self.shape(cur)
        ops = ["conv2d", "batchnorm2d", "act", "maxpool2d", "avgpool2d", "identity", "dropout", "zero", "scale",
               "add", "mul", "concat", "sub", "div", "pad", "upsample", "reduce", "layernorm", "channel_shuffle",
               "permute"]
        weights = [6, 3, 4, 3, 2, 1, 1, 1, 1, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1]
        if self.allow_choice:
            ops.append("choice")
            weights.append(4)
        if self.transformer:
            ops.append("tokens")
            weights.append(12)
            ops.append("windows")  # swin
            weights.append(6)
        op = draw(st.sampled_from([o for o, wt in zip(ops, weights) for _ in range(wt)]))
        if op == "conv2d":
            in_groups = [d for d in range(1, c + 1) if c % d == 0]
            groups = draw(st.sampled_from(in_groups))
            mult = draw(st.integers(1, max(1, 16 // groups)))
            hw = [_draw_conv_dim(draw, h)]
            if draw(st.booleans()) and _conv_dim_ok(w, *hw[0]):
                hw.append(hw[0])  # square attrs (an int in torch style)
            else:
                hw.append(_draw_conv_dim(draw, w))
            return self.add("conv2d", cur, out_channels=groups * mult, groups=groups, bias=draw(st.booleans()),
                            **_pairs(hw))
        if op == "batchnorm2d":
            return self.add("batchnorm2d", cur, eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])),
                            momentum=draw(st.sampled_from([0.1, 0.01, 0.9])), affine=draw(st.booleans()))
        if op == "act":
            return self.activation(cur)
        if op == "sub":  # an earlier node of equal shape, or a (C, 1, 1) mean
            same = [n for n in self.maps() if self.shape(n) == (c, h, w)]
            other = draw(st.sampled_from(same)) if draw(st.booleans()) else self.add("global_avgpool", cur)
            a, b = (cur, other) if draw(st.booleans()) else (other, cur)
            return self.add("sub", a, b)
        if op == "div":  # by a positive (C, 1, 1) gate: sigmoid of a squeeze (no division by zero)
            gate = self.add("sigmoid", self.add("global_avgpool", draw(st.sampled_from(
                [n for n in self.maps() if self.shape(n)[0] == c]))))
            return self.add("div", cur, gate)
        if op == "pad":
            mode = draw(st.sampled_from(["constant", "constant", "reflect", "replicate"]))
            pads = []
            for size in (w, w, h, h):  # left, right, top, bottom; reflect needs pad < size
                most = min(2, (MAX_SPATIAL - size) // 2, size - 1 if mode == "reflect" else 2)
                pads.append(draw(st.integers(0, max(0, most))))
            value = draw(st.sampled_from([0.0, 0.0, -1.5])) if mode == "constant" else 0.0
            return self.add("pad", cur, pads=pads, mode=mode, value=value)
        if op == "upsample":
            mode = draw(st.sampled_from(["nearest", "bilinear"]))
            ac = mode == "bilinear" and draw(st.booleans())
            if 2 * max(h, w) <= MAX_SPATIAL and draw(st.booleans()):
                return self.add("upsample", cur, mode=mode, scale_factor=2.0, align_corners=ac)
            size = [draw(st.integers(1, MAX_SPATIAL)), draw(st.integers(1, MAX_SPATIAL))]
            return self.add("upsample", cur, mode=mode, size=size, align_corners=ac)
        if op == "reduce":  # a spatial mean/sum gating (SE-like) or centring the map; the mean over both
            # H and W imports as global_avgpool, so the mean is drawn over one of them
            red = draw(st.sampled_from(["mean", "sum"]))
            dims = draw(st.sampled_from([[2], [3], [-1]] + ([[2, 3], [-1, -2]] if red == "sum" else [])))
            r = self.add(red, cur, dims=dims, keepdim=True)
            if draw(st.booleans()):
                return self.add("mul", cur, self.add("sigmoid", r))
            return self.add("sub", cur, r)
        if op == "layernorm":  # over the channels (LayerNorm2d), or channels-last between permutes (ConvNeXt)
            affine = draw(st.booleans())
            attrs = dict(eps=draw(st.sampled_from([1e-5, 1e-6, 0.1])), affine=affine,
                         bias=affine and draw(st.booleans()))
            if draw(st.booleans()):
                return self.add("layernorm", cur, axis="channels", **attrs)
            # ConvNeXt's block: channels-last layernorm then a linear on the last dim, permuted back (with the
            # linear in between, importers do not fuse it into a layernorm over the channels)
            t = self.add("layernorm", self.add("permute", cur, dims=[1, 2, 0]), axis="last", **attrs)
            t = self.add("linear", t, out_features=draw(st.integers(1, 16)), bias=draw(st.booleans()))
            return self.add("permute", t, dims=[2, 0, 1])
        if op == "tokens":
            return self.maxvit_windows(cur) if self.draw(st.booleans()) else self.tokens(cur)
        if op == "windows":
            return self.swin_windows(cur)
        if op == "channel_shuffle":
            groups = [d for d in range(2, c + 1) if c % d == 0]
            if not groups:
                return self.add("identity", cur)
            return self.add("channel_shuffle", cur, groups=draw(st.sampled_from(groups)))
        if op == "permute":  # swap H and W: channels stay on axis 0
            return self.add("permute", cur, dims=[0, 2, 1])
        if op in ("maxpool2d", "avgpool2d"):
            is_max = op == "maxpool2d"
            ceil = is_max and draw(st.booleans())
            default_stride = draw(st.booleans())
            kw = dict(dilation=is_max, ceil=ceil, default_stride=default_stride)
            hw = [_draw_pool_dim(draw, h, **kw)]
            k0, s0, p0, d0 = hw[0]
            if draw(st.booleans()) and _pool_dim_ok(w, k0, k0 if s0 is None else s0, p0, d0, ceil):
                hw.append(hw[0])
            else:
                hw.append(_draw_pool_dim(draw, w, **kw))
            if (hw[0][1] is None) != (hw[1][1] is None):  # one dim took the default stride: spell it out
                hw = [(k, k if s is None else s, p, d) for k, s, p, d in hw]
            attrs = _pairs(hw)
            if not is_max:
                attrs.pop("dilation")
                attrs["count_include_pad"] = draw(st.booleans())
            else:
                attrs["ceil_mode"] = ceil
            return self.add(op, cur, **attrs)
        if op == "identity":
            return self.add("identity", cur)
        if op == "dropout":
            return self.add("dropout", cur, p=draw(st.sampled_from([0.0, 0.1, 0.5, 0.9])))
        if op == "zero":
            return self.add("zero", cur, stride=draw(st.integers(1, 3)))
        if op == "scale":
            return self.add("scale", cur)
        if op == "add":
            same = [n for n in self.maps() if self.shape(n) == (c, h, w)]  # includes cur: add(x, x)
            other = draw(st.sampled_from(same))
            a, b = (cur, other) if draw(st.booleans()) else (other, cur)
            return self.add("add", a, b)
        if op == "mul":
            same = [n for n in self.maps() if self.shape(n) == (c, h, w) and n != cur]
            if same and draw(st.integers(0, 3)) == 0:
                gate = draw(st.sampled_from(same))  # equal-shape product
            else:
                src = draw(st.sampled_from([n for n in self.maps() if self.shape(n)[0] == c]))
                gate = self.add("global_avgpool", src)  # (C, 1, 1) squeeze-excite gate
                if draw(st.booleans()):
                    gate = self.add("conv2d", gate, out_channels=c, kernel_size=1)
                gate = self.add(draw(st.sampled_from(["sigmoid", "hardsigmoid", "identity"])), gate)
            a, b = (cur, gate) if draw(st.booleans()) else (gate, cur)
            return self.add("mul", a, b)
        if op == "concat":
            axis = draw(st.sampled_from(["channel", "channel", "channel", "spatial"]))
            if axis == "channel":
                fits = [n for n in self.maps() if self.shape(n)[1:] == (h, w)]
                dim = draw(st.sampled_from([1, -3]))
                total_axis = 0
            else:
                ax = draw(st.sampled_from([1, 2]))  # per-sample axis: H or W
                fits = [n for n in self.maps() if self.shape(n)[0] == c and self.shape(n)[3 - ax] == (h, w)[2 - ax]]
                dim = draw(st.sampled_from([ax + 1, ax - 3]))
                total_axis = ax
            cap = MAX_CHANNELS if total_axis == 0 else MAX_SPATIAL
            parts = [cur]
            size = self.shape(cur)[total_axis]
            for _ in range(draw(st.integers(0, 2))):
                ok = [n for n in fits if size + self.shape(n)[total_axis] <= cap]
                if not ok:
                    break
                n = draw(st.sampled_from(ok))
                parts.insert(draw(st.integers(0, len(parts))), n)
                size += self.shape(n)[total_axis]
            return self.add("concat", *parts, dim=dim)
        assert op == "choice"
        stride = draw(st.sampled_from([1, 1, 2]))
        reuse = [k for k in self.ties]
        if reuse and draw(st.booleans()):
            key = draw(st.sampled_from(reuse))
            return self.g.add("choice", cur, name=self.name("choice"),
                              candidates=candidates_for(c, stride, self.ties[key]), tie=key)
        names = draw(_candidate_names)
        tie = None
        if draw(st.booleans()):
            tie = f"tie{len(self.ties)}"
            self.ties[tie] = names
        return self.g.add("choice", cur, name=self.name("choice"), candidates=candidates_for(c, stride, names),
                          tie=tie)

    def tokens(self, cur: str) -> str:
        """A ViT-like block on the (H*W, C) tokens of a map, and back: flatten and permute to tokens, maybe a
        learned class token in front, maybe a learned position embedding added, a pre-norm self-attention
        (heads dividing C) with a residual, then the class token sliced off and the map restored."""
        draw = self.draw
        c, h, w = self.shape(cur)
        t = self.add("permute", self.add("flatten", cur, start_dim=2), dims=[1, 0])  # (H*W, C)
        cls = draw(st.booleans())
        if cls:
            t = self.add("concat", self.add("param", t, shape=[1, c]), t, dim=1)
        if draw(st.booleans()):
            t = self.add("add", t, self.add("param", t, shape=list(self.shape(t))))
        a = self.add("layernorm", t, axis="last") if draw(st.booleans()) else t
        heads = draw(st.sampled_from([d for d in range(1, c + 1) if c % d == 0]))
        a = self.add("attention", a, num_heads=heads, bias=draw(st.booleans()))
        t = self.add("add", t, a) if draw(st.booleans()) else a
        if cls:
            t = self.add("slice", t, dim=1, start=1)
        return self.add("reshape", self.add("permute", t, dims=[1, 0]), shape=[c, h, w])

    # ---- maxvit

    def maxvit_windows(self, cur: str) -> str:
        """A MaxViT-like block: the (C, H, W) map cut into p x p windows as torchvision's WindowPartition does
        (reshape (C, H/p, p, W/p, p), permute to (H/p, W/p, p, p, C), reshape (H/p * W/p, p*p, C)),
        ``rel_attention`` (heads dividing C) maybe with a residual, then WindowDepartition back to the map."""
        draw = self.draw
        c, h, w = self.shape(cur)
        # the largest window first (what hypothesis draws and shrinks to most): p = 1 is one token per window
        p = draw(st.sampled_from([d for d in range(min(h, w, 4), 0, -1) if h % d == 0 and w % d == 0]))
        t = self.add("reshape", cur, shape=[c, h // p, p, w // p, p])
        t = self.add("reshape", self.add("permute", t, dims=[1, 3, 2, 4, 0]), shape=[(h // p) * (w // p), p * p, c])
        heads = draw(st.sampled_from([d for d in range(1, c + 1) if c % d == 0]))
        a = self.add("rel_attention", t, num_heads=heads, window=p,
                     scale=draw(st.sampled_from([None, 0.5])))
        t = self.add("add", t, a) if draw(st.booleans()) else a
        t = self.add("permute", self.add("reshape", t, shape=[h // p, w // p, p, p, c]), dims=[4, 0, 2, 1, 3])
        return self.add("reshape", t, shape=[c, h, w])

    # ---- swin

    def swin_windows(self, cur: str) -> str:
        """A Swin-like block on the channels-last ``(H, W, C)`` map, and back: permute, maybe a layernorm over
        the channels, a ``window_attention`` (a window from 1 up to larger than the map, so padded or not; a shift
        below it, or none; heads dividing C; biases or not) with a residual, permute back."""
        draw = self.draw
        c, h, w = self.shape(cur)
        t = self.add("permute", cur, dims=[1, 2, 0])
        a = self.add("layernorm", t, axis="last") if draw(st.booleans()) else t
        win = [draw(st.integers(1, min(h + 2, 8))), draw(st.integers(1, min(w + 2, 8)))]
        shift = [draw(st.integers(0, k - 1)) for k in win] if draw(st.booleans()) else [0, 0]
        heads = draw(st.sampled_from([d for d in range(1, c + 1) if c % d == 0]))
        bias = draw(st.booleans())
        extra = {}
        if min(win) >= 2 and draw(st.booleans()):  # Swin V2's cosine attention and cpb_mlp position bias
            extra = {"cpb_hidden": draw(st.integers(1, 16))}
        a = self.add("window_attention_v2" if extra else "window_attention", a, window_size=win, shift_size=shift,
                     num_heads=heads, qkv_bias=bias, proj_bias=bias if draw(st.booleans()) else not bias, **extra)
        t = self.add("add", t, a) if draw(st.booleans()) else a
        return self.add("permute", t, dims=[2, 0, 1])

    def activation(self, cur: str) -> str:
        op = self.draw(st.sampled_from(ACTIVATIONS))
        return self.add(op, cur, **self.draw(st.sampled_from(ACTIVATION_ATTRS.get(op, [{}]))))

    def head(self, src: str) -> str:
        draw = self.draw
        kind = draw(st.sampled_from(["gap", "gap", "gap", "gap2", "flat", "rank2"]))
        if kind in ("gap", "gap2"):
            h = self.add("flatten", self.add("global_avgpool", src))
        elif kind == "flat":
            h = self.add("flatten", src)
        else:
            h = self.add("flatten", src, start_dim=2)  # (C, H*W): linear on the last dim
        if kind == "gap2":
            h = self.add("linear", h, out_features=draw(st.integers(1, 8)))
            h = self.activation(h)
        return self.add("linear", h, out_features=draw(st.integers(1, 6)), bias=draw(st.booleans()))


@st.composite
def graphs(draw, max_nodes: int = 14, allow_choice: bool = False, max_inputs: int = 2,
           max_outputs: int = 2, transformer: bool = False) -> archir.Graph:
    """A random valid graph (see the module docstring); ``max_nodes`` bounds the body steps. ``transformer``:
    some steps are ViT-like token blocks (``param`` class token / position embedding, ``attention``)."""
    g = archir.Graph(draw(st.sampled_from(["rand", "random_net", "g"])))
    b = _Builder(draw, g, draw(st.sampled_from(["scoped", "flat", "auto"])), allow_choice, transformer)

    def shape():
        return (draw(st.integers(1, 8)), draw(st.integers(4, 12)), draw(st.integers(4, 12)))

    s0 = shape()
    x0 = g.input("x", s0)
    x1 = None
    if max_inputs > 1 and draw(st.integers(0, 3)) == 0:
        x1 = g.input("y", s0 if draw(st.booleans()) else shape())  # same shape: it can meet x's path
    cur = x0
    steps = draw(st.integers(1, max(1, max_nodes)))
    for _ in range(steps):
        if len(g) >= max_nodes:
            break
        if draw(st.integers(0, 5)) == 0:  # branch from an earlier map (the residual/concat steps rejoin)
            cur = draw(st.sampled_from(b.maps()))
        cur = b.step(cur)
    outs = [b.head(cur)]
    if x1 is not None and x1 not in nx.ancestors(g.nx, cur) and cur != x1:
        from_y = [n for n in b.maps() if n == x1 or x1 in nx.ancestors(g.nx, n)]
        y = from_y[-1]
        if draw(st.booleans()):
            y = b.step(y)
        outs.append(b.head(y))
    elif max_outputs > 1 and draw(st.integers(0, 3)) == 0:
        outs.append(b.head(draw(st.sampled_from(b.maps()))))
    g.set_outputs(*outs)
    seed = draw(st.integers(0, 2**16))
    g.init_params(seed)
    randomize_weights(g, seed + 1)
    return g.validate()


# --------------------------------------------------------------------------- supernets()


@st.composite
def supernets(draw, max_cells: int = 3, max_nodes_per_cell: int = 3) -> archir.Graph:
    """A random DARTS-like supernet (see the module docstring), validated, weights initialised."""
    g = archir.Graph("supernet")
    c = draw(st.integers(2, 6))
    hw = draw(st.integers(4, 10))
    x = g.input("x", (draw(st.integers(1, 4)), hw, hw))
    s = g.add("batchnorm2d", g.add("conv2d", x, out_channels=c, kernel_size=3, padding=1, bias=False,
                                   name="stem.conv"), name="stem.bn")
    menus: dict[str, tuple[str, ...]] = {}
    tie_often = draw(st.booleans())
    for i in range(draw(st.integers(1, max_cells))):
        kind = "reduce" if (i > 0 and draw(st.integers(0, 2)) == 0) else "normal"
        states = [s]
        for n in range(draw(st.integers(1, max_nodes_per_cell))):
            edges = []
            for e in range(draw(st.integers(1, 2))):
                j = draw(st.integers(0, len(states) - 1))
                src = states[j]
                stride = 2 if (kind == "reduce" and j == 0) else 1
                key = f"{kind}.n{n}.e{e}"
                if key not in menus:
                    menus[key] = draw(_candidate_names)
                tied = draw(st.integers(0, 3)) > (0 if tie_often else 2)
                cin = g.node(src).type.shape[0]
                edges.append(g.add("choice", src, name=f"cell{i}.n{n}.e{e}", candidates=candidates_for(cin, stride,
                                   menus[key] if tied else draw(_candidate_names)), tie=key if tied else None))
            states.append(edges[0] if len(edges) == 1 else g.add("add", *edges, name=f"cell{i}.n{n}.add"))
        s = states[-1]
    y = g.add("linear", g.add("flatten", g.add("global_avgpool", s, name="pool"), name="flatten"),
              out_features=draw(st.integers(1, 5)), name="head")
    g.set_outputs(y)
    seed = draw(st.integers(0, 2**16))
    g.init_params(seed)
    randomize_weights(g, seed + 1)
    return g.validate()


@st.composite
def decisions(draw, g: archir.Graph) -> dict[str, str]:
    """A complete decision map ``{decision key: candidate name}`` for supernet ``g``."""
    return {k: draw(st.sampled_from(names)) for k, names in archir.decision_keys(g).items()}
