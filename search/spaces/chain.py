"""A chain space in the style of FBNet / ProxylessNAS: a stem, a chain of MBConv layers, a head.

Each layer is an inverted-residual block (MobileNetV2): 1x1 expansion to ``expand * C_in``
(left out when ``expand == 1``), a ``kernel x kernel`` depthwise conv (carrying the layer's
stride), a 1x1 projection to ``width``; BN after each conv, ReLU6 after the first two. A
residual ``add`` joins input and output when the layer keeps shape (stride 1 and
``width == C_in``). Per layer the space decides the kernel size, the expansion, the width,
and -- on stride-1 layers -- whether the layer is skipped (FBNet's ``skip`` block, the
ProxylessNAS ``zero`` op: depth search). The first layer of the second half has stride 2
and cannot be skipped.

Decisions::

    {"layers": [{"expand": 3, "kernel": 5, "skip": False, "width": 16},   # an MBConv layer
                {"skip": True},                                            # a skipped layer
                ...]}

The supernet is ProxylessNAS' over-parameterised chain: widths are fixed (choice candidates
must agree in shape; by default each layer's widest option), and each layer is a ``choice``
over the ``kernel x expand`` MBConvs, plus a ``skip`` candidate (``zero`` under the residual
``add``) where the layer keeps shape. ``derive(supernet(widths=widths(d)), d)`` is
structurally identical to ``build(d)``.

Example:
    >>> import numpy as np
    >>> space = ChainSpace(input_shape=(1, 8, 8), num_classes=10)
    >>> d = space.sample(np.random.default_rng(1))
    >>> g = space.build(d, seed=0)
    >>> len(d["layers"]) == 4 and g.nodes("choice") == []
    True
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from archir import Graph
from archir.cells import add_steps
from search.spaces.base import DecisionError, Space, check_rng, register_space

__all__ = ["ChainSpace", "mbconv_chain"]

_FIELDS = ("expand", "kernel", "skip", "width")


def mbconv_chain(c_in: int, kernel: int, expand: int, width: int, stride: int) -> list[dict]:
    """Op specs of one MBConv layer (the candidate chain in the supernet, node by node in ``build``)."""
    mid = c_in * expand
    ops: list[dict] = []
    if expand != 1:
        ops += [{"op": "conv2d", "out_channels": mid, "kernel_size": 1, "bias": False}, {"op": "batchnorm2d"},
                {"op": "relu6"}]
    ops += [{"op": "conv2d", "out_channels": mid, "kernel_size": kernel, "stride": stride, "padding": kernel // 2,
             "groups": mid, "bias": False}, {"op": "batchnorm2d"}, {"op": "relu6"},
            {"op": "conv2d", "out_channels": width, "kernel_size": 1, "bias": False}, {"op": "batchnorm2d"}]
    return ops


@register_space
class ChainSpace(Space):
    """Per-layer kernel, expansion, width and skip over a chain of MBConv layers (see the module docstring).

    Args:
        input_shape: ``(C, H, W)`` of one input.
        num_classes: classes of the head.
        layers: MBConv layers (default 4; the first of the second half has stride 2).
        stem: channels of the stem conv3x3-BN-ReLU6.
        kernels: kernel sizes to choose from (odd).
        expands: expansion ratios to choose from.
        widths: width options of the first-half and second-half layers.
    """

    name = "chain"

    def __init__(self, input_shape=(1, 8, 8), num_classes: int = 10, *, layers: int = 4, stem: int = 8,
                 kernels: Sequence[int] = (3, 5), expands: Sequence[int] = (1, 3, 6),
                 widths: Sequence[Sequence[int]] = ((8, 12, 16), (16, 24, 32))) -> None:
        super().__init__(input_shape, num_classes)
        if isinstance(layers, bool) or not isinstance(layers, (int, np.integer)) or layers < 1:
            raise ValueError(f"layers must be a positive int, got {layers!r}")
        self.layers = int(layers)
        self.stem = _ints("stem", [stem])[0]
        self.kernels = _ints("kernels", kernels)
        if any(k % 2 == 0 for k in self.kernels):
            raise ValueError(f"kernels must be odd (same padding), got {self.kernels}")
        self.expands = _ints("expands", expands)
        if len(widths) != 2:
            raise ValueError(f"widths must give two option lists (first half, second half), got {widths!r}")
        self.width_sets = tuple(_ints("widths", w) for w in widths)
        half = self.layers // 2
        self.strides = tuple(2 if (i == half and self.layers > 1) else 1 for i in range(self.layers))
        self.width_options = tuple(self.width_sets[0] if i < half else self.width_sets[1] for i in range(self.layers))

    def _cands(self, i: int) -> list[tuple[int, int]]:
        return [(k, e) for k in self.kernels for e in self.expands]

    def skippable(self, i: int) -> bool:
        """Whether layer ``i`` may be skipped (stride-1 layers)."""
        return self.strides[i] == 1

    # ---------------------------------------------------------------- decisions

    def sample(self, rng: np.random.Generator) -> dict:
        """Per layer: uniform over the MBConv kernel x expand candidates (and ``skip`` where allowed), then a width."""
        rng = check_rng(rng)
        layers = []
        for i in range(self.layers):
            cands = self._cands(i)
            n = len(cands) + (1 if self.skippable(i) else 0)
            pick = int(rng.integers(n))
            w = self.width_options[i][int(rng.integers(len(self.width_options[i])))]
            if pick == len(cands):
                layers.append({"skip": True})
            else:
                k, e = cands[pick]
                layers.append({"expand": e, "kernel": k, "skip": False, "width": w})
        return self.decode({"layers": layers})

    def mutate(self, decisions: Mapping, rng: np.random.Generator) -> dict:
        """One layer changes one thing: its kernel, expansion, width, or skip (on / off)."""
        rng = check_rng(rng)
        d = self.decode(decisions)
        i = int(rng.integers(self.layers))
        layer = d["layers"][i]
        if layer["skip"]:
            k, e = self._cands(i)[int(rng.integers(len(self._cands(i))))]
            w = self.width_options[i][int(rng.integers(len(self.width_options[i])))]
            d["layers"][i] = {"expand": e, "kernel": k, "skip": False, "width": w}
            return self.decode(d)
        options = {"kernel": self.kernels, "expand": self.expands, "width": self.width_options[i]}
        fields = [f for f, opts in options.items() if len(opts) > 1] + (["skip"] if self.skippable(i) else [])
        if not fields:
            raise ValueError("this chain space has a single point: nothing to mutate")
        f = fields[int(rng.integers(len(fields)))]
        if f == "skip":
            d["layers"][i] = {"skip": True}
        else:
            others = [v for v in options[f] if v != layer[f]]
            layer[f] = others[int(rng.integers(len(others)))]
        return self.decode(d)

    def decode(self, obj: Any) -> dict:
        if not isinstance(obj, Mapping) or set(obj) != {"layers"}:
            raise DecisionError(f"expected a dict with the one key 'layers', got {obj!r:.80}",
                                hint='pass {"layers": [{"kernel": 3, "expand": 3, "width": 16, "skip": false}, ...]}')
        layers = obj["layers"]
        if not isinstance(layers, (list, tuple)) or len(layers) != self.layers:
            raise DecisionError(f"expected a list of {self.layers} layers, got {layers!r:.80}", where="layers",
                                hint=f"this space has {self.layers} layers")
        out = []
        for i, layer in enumerate(layers):
            where = f"layers[{i}]"
            if not isinstance(layer, Mapping):
                raise DecisionError(f"expected a dict, got {layer!r}", where=where)
            skip = layer.get("skip", False)
            if not isinstance(skip, (bool, np.bool_)):
                raise DecisionError(f"skip must be true or false, got {skip!r}", where=where + ".skip")
            if skip:
                if not self.skippable(i):
                    raise DecisionError("this layer has stride 2 and cannot be skipped", where=where + ".skip",
                                        hint="set skip to false")
                if set(layer) != {"skip"}:
                    raise DecisionError(f"a skipped layer takes no other keys, got {sorted(layer)}", where=where,
                                        hint='write a skipped layer as {"skip": true}')
                out.append({"skip": True})
                continue
            if set(layer) - set(_FIELDS) or {"expand", "kernel", "width"} - set(layer):
                raise DecisionError(f"keys {sorted(layer)} are not {{expand, kernel, width[, skip]}}", where=where,
                                    hint='give {"kernel": k, "expand": e, "width": w, "skip": false}')
            clean = {"skip": False}
            for f, opts in (("kernel", self.kernels), ("expand", self.expands), ("width", self.width_options[i])):
                v = layer[f]
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) not in opts:
                    raise DecisionError(f"{f} {v!r} is not an option", where=f"{where}.{f}",
                                        hint=f"use one of {list(opts)}")
                clean[f] = int(v)
            out.append(dict(sorted(clean.items())))
        return {"layers": out}

    # ---------------------------------------------------------------- categorical view

    def variables(self) -> list[tuple[str, int]]:
        """Per layer: its block (a kernel x expand candidate, or ``skip`` where allowed) and its width
        (ignored when the layer is skipped)."""
        out = []
        for i in range(self.layers):
            out += [(f"layers.{i}.block", len(self._cands(i)) + (1 if self.skippable(i) else 0)),
                    (f"layers.{i}.width", len(self.width_options[i]))]
        return out

    def to_choices(self, decisions: Mapping) -> list[int]:
        d = self.decode(decisions)
        out = []
        for i, layer in enumerate(d["layers"]):
            if layer["skip"]:
                out += [len(self._cands(i)), 0]
            else:
                out += [self._cands(i).index((layer["kernel"], layer["expand"])),
                        self.width_options[i].index(layer["width"])]
        return out

    def from_choices(self, choices) -> dict:
        c = self._check_choices(choices)
        layers = []
        for i in range(self.layers):
            block, w = c[2 * i], c[2 * i + 1]
            if block == len(self._cands(i)):
                layers.append({"skip": True})
            else:
                k, e = self._cands(i)[block]
                layers.append({"expand": e, "kernel": k, "skip": False, "width": self.width_options[i][w]})
        return self.decode({"layers": layers})

    def widths(self, decisions: Mapping) -> list[int]:
        """Each layer's output width (a skipped layer passes its input width on)."""
        d = self.decode(decisions)
        c, out = self.stem, []
        for layer in d["layers"]:
            c = c if layer["skip"] else layer["width"]
            out.append(c)
        return out

    def describe(self, decisions: Mapping) -> str:
        d = self.decode(decisions)
        parts = []
        for i, layer in enumerate(d["layers"]):
            if layer["skip"]:
                parts.append("skip")
            else:
                s = "/2" if self.strides[i] == 2 else ""
                parts.append(f"k{layer['kernel']}e{layer['expand']}w{layer['width']}{s}")
        return f"stem{self.stem} " + " ".join(parts)

    # ---------------------------------------------------------------- graphs

    def _stem(self, g: Graph, width: int) -> str:
        h = g.add("conv2d", g.input("x", self.input_shape), out_channels=width, kernel_size=3, padding=1,
                  bias=False, name="stem.conv")
        return g.add("relu6", g.add("batchnorm2d", h, name="stem.bn"), name="stem.relu6")

    def _head(self, g: Graph, h: str) -> str:
        h = g.add("flatten", g.add("global_avgpool", h, name="pool"), name="flatten")
        return g.add("linear", h, out_features=self.num_classes, name="head")

    def build(self, decisions: Mapping, seed: int = 0, cells: int | None = None,
              channels: int | None = None) -> Graph:
        """The network of ``decisions``. ``cells`` repeats every layer that many times (the repeats
        keep shape, with stride 1 and a residual); ``channels`` scales every width (and the stem)
        by ``channels / stem`` -- a larger network with the same per-layer choices."""
        d = self.decode(decisions)
        reps = 1 if cells is None else _ints("cells", [cells])[0]
        scale = 1.0 if channels is None else _ints("channels", [channels])[0] / self.stem
        g = Graph("chain")
        h = self._stem(g, max(1, round(self.stem * scale)))
        for i, layer in enumerate(d["layers"]):
            if layer["skip"]:
                continue
            w = max(1, round(layer["width"] * scale))
            for r in range(reps):
                name = f"layer{i}" if r == 0 else f"layer{i}.r{r}"
                c_in = g.node(h).type.shape[0]
                stride = self.strides[i] if r == 0 else 1
                y = add_steps(g, h, mbconv_chain(c_in, layer["kernel"], layer["expand"], w, stride), name)
                h = g.add("add", h, y, name=f"{name}.add") if (stride == 1 and c_in == w) else y
        g.set_outputs(self._head(g, h))
        g.meta = {"space": self.name, "decisions": d}
        g.init_params(seed)
        return g.validate()

    def progressive_plan(self):
        """PNAS' stages: layer by layer; an undecided layer is skipped where it may be (stride 1) and is the
        cheapest block (first kernel, first expansion, first width) where it may not."""
        names = [n for n, _ in self.variables()]
        stages = tuple(tuple(i for i, n in enumerate(names) if n.startswith(f"layers.{layer}."))
                       for layer in range(self.layers))
        filler = []
        for name in names:
            layer = int(name.split(".")[1])
            filler.append(len(self._cands(layer)) if name.endswith("block") and self.skippable(layer) else 0)
        return stages, tuple(filler), "layer"

    def decisions_from_probs(self, supernet: Graph, probs: Mapping[str, Any], *, drop_zero: bool = False) -> dict:
        """The argmax of every layer (``skip``: the zero op drops the layer), at the supernet's widths."""
        from archir import decision_keys

        keys = decision_keys(supernet)
        widths = (supernet.meta or {}).get("widths") or [max(o) for o in self.width_options]
        layers = []
        for i in range(self.layers):
            key = f"layer{i}"
            name = keys[key][int(np.argmax(np.asarray(probs[key], np.float64)))]
            if name == "skip":
                layers.append({"skip": True})
            else:
                k, e = (int(v[1:]) for v in name.split("_"))
                layers.append({"expand": e, "kernel": k, "skip": False, "width": int(widths[i])})
        return self.decode({"layers": layers})

    def controller_variables(self, supernet: Graph) -> tuple[dict[int, int], list[tuple[str, int]]]:
        """The widths are the supernet's (fixed); a layer whose input width differs from the supernet's width
        has no residual, hence no skip candidate: its block variable has the MBConv options only."""
        from archir import decision_keys

        keys = decision_keys(supernet)
        widths = supernet.meta["widths"]
        variables = self.variables()
        fixed = {}
        for i, (name, _) in enumerate(variables):
            if name.endswith(".width"):
                layer = int(name.split(".")[1])
                fixed[i] = list(self.width_options[layer]).index(int(widths[layer]))
        free = [(name, len(keys[f"layer{name.split('.')[1]}"])) for i, (name, _) in enumerate(variables)
                if i not in fixed]
        return fixed, free

    def supernet(self, seed: int = 0, widths: Sequence[int] | None = None) -> Graph:
        """ProxylessNAS' over-parameterised chain with fixed ``widths`` (default: each layer's widest option).

        Layer ``i`` is a ``choice`` (key ``"layer{i}"``) over ``k{kernel}_e{expand}`` MBConvs; where it
        keeps shape (stride 1, width equal to its input) a residual ``add`` joins it and a ``skip``
        candidate (``zero``) drops the layer.
        """
        ws = [max(o) for o in self.width_options] if widths is None else _ints("widths", widths)
        if len(ws) != self.layers:
            raise ValueError(f"widths must give {self.layers} layer widths, got {list(ws)}")
        g = Graph("chain_supernet")
        h = self._stem(g, self.stem)
        for i, w in enumerate(ws):
            c_in = g.node(h).type.shape[0]
            residual = self.strides[i] == 1 and c_in == w
            cands = [{"name": f"k{k}_e{e}", "ops": mbconv_chain(c_in, k, e, w, self.strides[i])}
                     for k, e in self._cands(i)]
            if residual:
                cands.append({"name": "skip", "ops": [{"op": "zero"}]})
            y = g.add("choice", h, name=f"layer{i}", candidates=cands)
            h = g.add("add", h, y, name=f"layer{i}.add") if residual else y
        g.set_outputs(self._head(g, h))
        g.meta = {"space": self.name, "supernet": True, "widths": list(ws)}
        g.init_params(seed)
        return g.validate()

    def supernet_decisions(self, decisions: Mapping, supernet: Graph | None = None) -> dict[str, str]:
        d = self.decode(decisions)
        return {f"layer{i}": "skip" if layer["skip"] else f"k{layer['kernel']}_e{layer['expand']}"
                for i, layer in enumerate(d["layers"])}

    def derive(self, supernet: Graph, decisions: Mapping) -> Graph:
        ws = (supernet.meta or {}).get("widths")
        want = self.widths(decisions)
        if ws is not None and list(ws) != want:
            raise DecisionError(f"the supernet's widths {ws} are not these decisions' widths {want}",
                                hint="derive from space.supernet(widths=space.widths(decisions))")
        return super().derive(supernet, decisions)

    def __repr__(self) -> str:
        return (f"ChainSpace(input_shape={self.input_shape}, num_classes={self.num_classes}, layers={self.layers}, "
                f"stem={self.stem}, kernels={self.kernels}, expands={self.expands}, widths={self.width_sets})")


def _ints(name: str, values: Any) -> tuple[int, ...]:
    try:
        vals = tuple(values)
    except TypeError:
        vals = ()
    if not vals or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in vals):
        raise ValueError(f"{name} must be positive ints, got {values!r}")
    return tuple(int(v) for v in vals)
