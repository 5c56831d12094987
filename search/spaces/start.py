"""The ``start`` space: a start graph and the ways to grow a trained parent (morphism search).

Its only "sampled" network is the start graph -- the built-in :func:`starter` net, or any graph
file (``archir search --strategy hillclimb --start net.json``, e.g. one imported from PyTorch; its
weights, if saved, are kept: a warm start). Its decisions say how a child is *grown* from a
trained parent (``{"method": "morph", "parent": 3, ...}``); ``search.morph`` grows them in the
worker. Registered as ``"start"`` with :func:`search.spaces.register_space`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

import archir
from archir import Graph
from archir.errors import ArchirError
from search.spaces.base import DecisionError, Space, SpaceError, register_space

__all__ = ["StartSpace", "starter", "graph_to_data", "graph_from_data", "graph_file_data", "bounds_of", "past_bounds",
           "DEFAULT_MORPHISMS", "METHODS"]

#: NASH's morphism types: deeper (I), wider (III), skip by add/concat (II/IV: ``add_skip``'s two modes),
#: larger kernel
DEFAULT_MORPHISMS = ("deepen", "widen", "add_skip", "enlarge_kernel")
METHODS = ("start", "morph", "petridish")


def starter(input_shape=(1, 8, 8), num_classes: int = 10, *, channels: int = 8, seed: int = 0) -> Graph:
    """The built-in small start network of morphism search (NASH starts from a small CNN).

    ``conv3x3(channels)-bn-relu -> conv3x3(channels, stride 2)-bn-relu -> flatten -> linear`` (flatten, not
    global pooling: on 8x8 digits the layout of the strokes is what tells the classes apart).

    Args:
        input_shape: ``(C, H, W)``.
        num_classes: outputs of the head.
        channels: width of both convolutions.
        seed: weight initialisation.

    Example:
        >>> starter((1, 8, 8), 10).num_params()
        1970
    """
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise SpaceError(f"starter: channels must be an int >= 1, got {channels!r}",
                         hint="pass --space-opt channels=8")
    g = Graph("starter")
    h = g.input("x", shape=tuple(int(v) for v in input_shape))
    for i in range(2):
        h = g.add("conv2d", h, out_channels=channels, kernel_size=3, padding=1, stride=1 + i, bias=False,
                  name=f"c{i}.conv")
        h = g.add("batchnorm2d", h, name=f"c{i}.bn")
        h = g.add("relu", h, name=f"c{i}.relu")
    h = g.add("flatten", h, name="flatten")
    g.set_outputs(g.add("linear", h, out_features=int(num_classes), name="head"))
    return g.init_params(seed=seed).validate()


# --------------------------------------------------------------------------- graphs as plain data


def graph_to_data(g: Graph) -> dict:
    """``{"json": archir JSON text, "weights": safetensors bytes or None}`` (what executors can ship)."""
    with tempfile.TemporaryDirectory(prefix="archir-graph-") as tmp:
        p = archir.save(g, Path(tmp) / "g.json")
        w = p.with_suffix(".safetensors")
        return {"json": p.read_text(), "weights": w.read_bytes() if w.exists() else None}


def graph_from_data(data: Mapping[str, Any]) -> Graph:
    """The graph of :func:`graph_to_data` (checked by ``archir.load``: schema, weights' sha256, validity)."""
    with tempfile.TemporaryDirectory(prefix="archir-graph-") as tmp:
        p = Path(tmp) / "g.json"
        if data.get("weights") is not None:
            try:  # the JSON names its weights file (e.g. graphs/3.json -> "3.safetensors")
                wname = (json.loads(data["json"]).get("weights") or {}).get("file") or "g.safetensors"
            except (ValueError, AttributeError):
                wname = "g.safetensors"  # archir.load reports the bad JSON
            if Path(wname).name != wname or not wname.endswith(".safetensors"):
                raise ValueError(f"graph data names the weights file {wname!r}; expected a plain *.safetensors name")
            (Path(tmp) / wname).write_bytes(data["weights"])
        p.write_text(data["json"])
        return archir.load(p)


def graph_file_data(path: Path) -> dict:
    """:func:`graph_to_data` of a saved graph file (its JSON text and its safetensors bytes, if any)."""
    w = path.with_suffix(".safetensors")
    return {"json": path.read_text(), "weights": w.read_bytes() if w.exists() else None}


# --------------------------------------------------------------------------- the space


@register_space
class StartSpace(Space):
    """The space of morphism search: a start graph and the ways to grow a trained parent (see the module docstring).

    Args:
        input_shape, num_classes: the dataset's.
        start: ``"starter"`` (the built-in :func:`starter`) or the path of an archir graph file
            (``archir.save``; e.g. from ``archir import``). A file's weights are kept if saved
            (warm start), else initialised from the candidate seed.
        channels: the starter's width.
        max_params: the most trainable parameters a grown child may have (None: no bound).
        max_macs: the most MACs (``costmodels.count(g).macs``, batch 1) a grown child may have (None: no bound).
    """

    name = "start"
    grows = True  # candidates are grown from parents' trained graphs (search.strategies check this)

    def __init__(self, input_shape=(1, 8, 8), num_classes: int = 10, start: str = "starter", channels: int = 8,
                 max_params: int | None = None, max_macs: int | None = None) -> None:
        super().__init__(input_shape, num_classes)
        if not isinstance(start, str) or not start:
            raise SpaceError(f"start must be 'starter' or a graph file path, got {start!r}",
                             hint="pass --start net.json")
        for key, v in (("max_params", max_params), ("max_macs", max_macs)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
                raise SpaceError(f"start space: {key} must be an int >= 1 (or left out: no bound), got {v!r}",
                                 hint=f"pass --space-opt {key}=20000")
        self.start, self.channels = start, channels
        self.max_params = None if max_params is None else int(max_params)
        self.max_macs = None if max_macs is None else int(max_macs)
        self._graph: Graph | None = None
        if start != "starter" and not Path(start).is_file():
            raise SpaceError(f"start graph {start!r} does not exist",
                             hint="pass --start PATH of a graph written by archir.save / archir import")
        try:  # check the starter's options, or load and check the file, now (not in a worker)
            self.start_graph()
        except SpaceError:
            raise
        except (ArchirError, OSError) as e:  # archir.load: not archir JSON, weights missing or not matching, ...
            first = e.one_line() if isinstance(e, ArchirError) else f"{e.strerror or e}"
            raise SpaceError(f"start graph {start}: {first}",
                             hint="pass a graph written by archir.save or 'archir import'") from None
        over = past_bounds(self.start_graph(), self.options_bounds()) if self.options_bounds() else None
        if over:
            raise SpaceError(f"start graph {start} is already past the space's bound: {over}",
                             hint="raise --space-opt max_params/max_macs, or start from a smaller network")

    def options_bounds(self) -> dict:
        """The space's bounds on a grown child, ``{"max_params": N, "max_macs": M}`` (only those set)."""
        return {k: v for k, v in (("max_params", self.max_params), ("max_macs", self.max_macs)) if v is not None}

    def start_graph(self, seed: int = 0) -> Graph:
        """The start graph (a file is loaded and checked against the dataset's shapes once)."""
        if self.start == "starter":
            return starter(self.input_shape, self.num_classes, channels=self.channels, seed=seed)
        if self._graph is None:
            g = archir.load(self.start)
            if len(g.inputs) != 1 or tuple(g.node(g.inputs[0]).type.shape) != self.input_shape:
                raise SpaceError(f"start graph {self.start}: its input {[g.node(i).type.shape for i in g.inputs]} "
                                 f"does not fit the dataset's {self.input_shape}",
                                 hint="import the model with --input-shape matching the data")
            outs = [g.node(o).type.shape for o in g.outputs]
            if outs != [(self.num_classes,)]:
                raise SpaceError(f"start graph {self.start}: its outputs {outs} are not one ({self.num_classes},) "
                                 "logits vector", hint="give it a linear head with num_classes outputs")
            self._graph = g
        g = self._graph.copy()
        g.init_params(seed=seed, only_missing=True)  # a file saved without weights: fresh ones from the seed
        return g.validate()

    def start_data(self, seed: int = 0) -> dict:
        """The start graph as plain data (for the root candidate's task); ``seed``: the starter's weights."""
        return graph_to_data(self.start_graph(seed))

    # ---------------------------------------------------------------- Space protocol

    def sample(self, rng) -> dict:
        """The start decisions (the only network of this space that needs no parent)."""
        return {"method": "start"}

    def mutate(self, decisions: Mapping, rng: np.random.Generator) -> dict:
        """Not available: a child needs its parent's id and trained graph, which hillclimb and petridish supply."""
        raise DecisionError("the start space grows children from parents' trained graphs; mutate has no parent id",
                            hint="use --strategy hillclimb or petridish with --space start")

    def decode(self, obj: Any) -> dict:
        """Check grow decisions and return them canonical (keys sorted, ints as ints)."""
        if not isinstance(obj, Mapping):
            raise DecisionError(f"expected an object, got {type(obj).__name__}")
        method = obj.get("method")
        if method not in METHODS:
            raise DecisionError(f"unknown method {method!r}", where="method", hint=f"use one of {list(METHODS)}")
        want = {"start": {"method"},
                "morph": {"method", "parent", "seed", "n", "ops"},
                "petridish": {"method", "parent", "seed", "n", "ops", "inputs", "select", "epochs", "l1"}}[method]
        if set(obj) != want:
            raise DecisionError(f"{method} decisions need exactly the keys {sorted(want)}, got {sorted(obj)}")
        out: dict[str, Any] = {"method": method}
        if method == "start":
            return out

        def int_key(k: str, lo: int) -> int:
            v = obj[k]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise DecisionError(f"must be an int >= {lo}, got {v!r}", where=k)
            return int(v)

        out["parent"] = int_key("parent", 0)
        out["seed"] = int_key("seed", 0)
        out["n"] = int_key("n", 1)
        ops = obj["ops"]
        if not isinstance(ops, (list, tuple)) or not ops or not all(isinstance(o, str) for o in ops):
            raise DecisionError(f"must be a non-empty list of names, got {ops!r}", where="ops")
        if method == "morph":
            import passes

            unknown = [o for o in ops if o not in passes.MORPHISMS]
            if unknown:
                raise DecisionError(f"unknown morphism(s) {unknown}", where="ops",
                                    hint=f"registered morphisms: {sorted(passes.MORPHISMS)}")
        else:
            from search.petridish import CANDIDATE_OPS

            unknown = [o for o in ops if o not in CANDIDATE_OPS]
            if unknown:
                raise DecisionError(f"unknown candidate op(s) {unknown}", where="ops",
                                    hint=f"choose from {sorted(CANDIDATE_OPS)}")
            out["inputs"] = int_key("inputs", 1)
            out["select"] = int_key("select", 1)
            out["epochs"] = int_key("epochs", 1)
            l1 = obj["l1"]
            if isinstance(l1, bool) or not isinstance(l1, (int, float)) or not np.isfinite(l1) or l1 < 0:
                raise DecisionError(f"must be a finite number >= 0, got {l1!r}", where="l1")
            out["l1"] = float(l1)
        out["ops"] = list(ops)
        return json.loads(json.dumps(out, sort_keys=True))

    def build(self, decisions: Mapping, seed: int = 0, cells: int | None = None, channels: int | None = None) -> Graph:
        """The start graph for ``{"method": "start"}``; grown children need their parent (see :func:`grow`)."""
        d = self.decode(decisions)
        if d["method"] != "start":
            raise DecisionError(f"a {d['method']} child is grown from candidate {d['parent']}'s trained graph, "
                                "not built from decisions", hint="evaluate it with search.morph.grow(task, dataset)")
        return self.start_graph(seed)

    def supernet(self, seed: int = 0) -> Graph:
        raise DecisionError("the start space has no supernet", hint="use --space chain or darts for one-shot search")

    def supernet_decisions(self, decisions: Mapping, supernet: Graph | None = None) -> dict[str, str]:
        raise DecisionError("the start space has no supernet", hint="use --space chain or darts for one-shot search")

    def describe(self, decisions: Mapping) -> str:
        d = self.decode(decisions)
        if d["method"] == "start":
            return f"start ({self.start})"
        if d["method"] == "morph":
            return f"#{d['parent']} + {d['n']} morphism{'s' if d['n'] > 1 else ''} (seed {d['seed']})"
        return (f"#{d['parent']} + petridish at {d['n']} node{'s' if d['n'] > 1 else ''}, "
                f"best {d['select']} of {len(d['ops'])} ops x {d['inputs']} inputs (seed {d['seed']})")


def _macs(g: Graph) -> float:
    import costmodels

    return float(costmodels.count(g).macs)


def bounds_of(space_options: Mapping[str, Any] | None) -> dict:
    """``passes.random_morphism``'s bound arguments for a start space's options (``{}`` without bounds).

    ``max_macs`` comes with ``macs_fn`` (``costmodels.count(g).macs``, batch 1: the MACs the store records).
    """
    opts = dict(space_options or {})
    out: dict[str, Any] = {k: opts[k] for k in ("max_params", "max_macs") if opts.get(k) is not None}
    if "max_macs" in out:
        out["macs_fn"] = _macs
    return out


def past_bounds(g: Graph, bounds: Mapping[str, Any]) -> str | None:
    """Why ``g`` is past a bound of :func:`bounds_of` (``"2,340 params > max_params=2,000"``), or None."""
    if bounds.get("max_params") is not None and g.num_params() > bounds["max_params"]:
        return f"{g.num_params():,} params > max_params={bounds['max_params']:,}"
    if bounds.get("max_macs") is not None:
        macs = (bounds.get("macs_fn") or _macs)(g)
        if macs > bounds["max_macs"]:
            return f"{macs:,.0f} macs > max_macs={bounds['max_macs']:,}"
    return None
