"""The one ONNX verifier: ``verify_onnx`` runs an ONNX model under ONNX Runtime against ``to_fx``.

Every place in archir that checks an ONNX model numerically (``archir export``, the Pareto
gallery's export, the benchmarks, the tests) calls :func:`verify_onnx`: the graph is lowered
with :func:`archir.lower.to_fx` in **eval mode** (BatchNorm by its running statistics, dropout
the identity), both run on the same seeded inputs, and every output is compared with
``torch.allclose`` semantics: an element passes when ``|fx - ort| <= atol + rtol * |fx|`` (the
fx module is the reference; equal values, infinities included, pass; NaN never does).

A failed verification is a result, not an exception: the :class:`VerifyReport` says what
differs, and :meth:`VerifyReport.raise_if_failed` turns it into :class:`OnnxMismatch` (a
``LoweringError``, so an ``archir.ArchirError``, with ``exit_code`` 1 for the command line).
Models with ONNX external data (weights over protobuf's 2 GiB limit) are loaded by path, so
ONNX Runtime finds the data file beside the model.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from archir.errors import LoweringError
from archir.graph import Graph

__all__ = ["verify_onnx", "VerifyReport", "OutputDiff", "OnnxMismatch", "DEFAULT_ATOL", "DEFAULT_RTOL"]

DEFAULT_ATOL, DEFAULT_RTOL = 1e-5, 1e-4


class OnnxMismatch(LoweringError):
    """An ONNX model's outputs under ONNX Runtime differ from ``to_fx`` (or ORT cannot run it).

    Attributes:
        report: the :class:`VerifyReport` that failed.
        exit_code: 1, the command line's code for a failed verification (bad input is 2).
    """

    exit_code = 1

    def __init__(self, message: str, *, report: "VerifyReport | None" = None, **kw: Any) -> None:
        self.report = report
        kw.setdefault("rule", "verify_onnx")
        super().__init__(message, **kw)


@dataclass(frozen=True)
class OutputDiff:
    """How one output of the ONNX model compares with the fx module's.

    Attributes:
        name: the graph output (node id) it stands for.
        shape: the fx output's shape, batch included.
        ort_shape: ONNX Runtime's output shape (``None``: ORT gave no such output).
        max_abs: ``max |fx - ort|`` (``inf`` when the shapes differ, NaN when a value is NaN).
        max_rel: ``max |fx - ort| / max(|fx|, atol)`` (floored so that zeros do not divide by zero).
        ratio: ``max |fx - ort| / (atol + rtol * |fx|)``; the output passes iff ``<= 1``.
    """

    name: str
    shape: tuple[int, ...]
    ort_shape: tuple[int, ...] | None
    max_abs: float
    max_rel: float
    ratio: float

    @property
    def ok(self) -> bool:
        return self.shape == self.ort_shape and self.ratio <= 1.0  # NaN compares False: it fails


@dataclass
class VerifyReport:
    """The result of :func:`verify_onnx`.

    Attributes:
        outputs: one :class:`OutputDiff` per graph output, in order.
        atol, rtol: the tolerances used.
        n: the number of samples (the batch) run through both.
        seed: the seed of the generated inputs (``None`` when ``inputs`` were given).
        ort_version: ``onnxruntime.__version__``.
        seconds: wall time of the whole verification (lowering, loading, both runs).
        model: what was run: ``"to_onnx"`` (built here), ``"ModelProto"``, ``"bytes"`` or the path.
        external_data: True when the model keeps its weights in ONNX external data.
        error: why ONNX Runtime could not load or run the model, or why the model's interface
            does not fit the graph (then ``ok`` is False and ``outputs`` may be empty).
        fx_values, ort_values: the outputs themselves (``keep_values=True`` only).
    """

    outputs: list[OutputDiff]
    atol: float
    rtol: float
    n: int
    seed: int | None
    ort_version: str
    seconds: float = 0.0
    model: str = "to_onnx"
    external_data: bool = False
    error: str | None = None
    fx_values: list[np.ndarray] | None = field(default=None, repr=False)
    ort_values: list[np.ndarray] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """True when ORT ran the model and every output is within tolerance."""
        return self.error is None and bool(self.outputs) and all(o.ok for o in self.outputs)

    @property
    def worst(self) -> OutputDiff | None:
        """The output furthest outside (or closest to) its tolerance; ``None`` without outputs."""
        if not self.outputs:
            return None
        return max(self.outputs, key=lambda o: (not o.ok, math.isnan(o.ratio), 0.0 if math.isnan(o.ratio) else o.ratio))

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=float("nan"))

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=float("nan"))

    def summary(self) -> str:
        """One line: what failed (or the worst error when everything passed)."""
        if self.error is not None:
            return f"ONNX Runtime {self.ort_version} could not verify the model: {self.error}"
        w = self.worst
        if w is None:
            return "nothing was compared"
        if w.shape != w.ort_shape:
            return (f"ONNX Runtime {self.ort_version} output {w.name!r} has shape {w.ort_shape}, torch.fx "
                    f"{w.shape}")
        verdict = "matches" if self.ok else "differs from"
        return (f"ONNX Runtime {self.ort_version} output {w.name!r} {verdict} torch.fx: max |fx - ort| = "
                f"{w.max_abs:.3g} (max relative {w.max_rel:.3g}; {w.ratio:.3g} of atol {self.atol:g} + "
                f"rtol {self.rtol:g} * |fx|) on {self.n} sample(s), eval mode")

    def __str__(self) -> str:
        head = (f"ONNX verification (eval mode, n={self.n}, seed={self.seed}, atol={self.atol:g}, rtol={self.rtol:g}, "
                f"onnxruntime {self.ort_version}, {self.model}{', external data' if self.external_data else ''}): "
                f"{'ok' if self.ok else 'FAILED'} in {self.seconds * 1e3:.1f} ms")
        if self.error is not None:
            return head + f"\n  {self.error}"
        rows = [f"  {o.name} {o.shape}" + ("" if o.ort_shape == o.shape else f" vs ort {o.ort_shape}")
                + f": max_abs={o.max_abs:.3g} max_rel={o.max_rel:.3g} ({o.ratio:.3g} of tolerance)"
                + ("" if o.ok else "  <-- FAIL") for o in self.outputs]
        return "\n".join([head, *rows])

    def to_dict(self) -> dict:
        """JSON-ready: the figures, without the output values."""
        return {"ok": self.ok, "atol": self.atol, "rtol": self.rtol, "n": self.n, "seed": self.seed,
                "ort_version": self.ort_version, "seconds": self.seconds, "model": self.model,
                "external_data": self.external_data, "error": self.error, "max_abs": self.max_abs,
                "max_rel": self.max_rel,
                "outputs": [{"name": o.name, "shape": list(o.shape),
                             "ort_shape": None if o.ort_shape is None else list(o.ort_shape),
                             "max_abs": o.max_abs, "max_rel": o.max_rel, "ratio": o.ratio, "ok": o.ok}
                            for o in self.outputs]}

    def raise_if_failed(self, *, file: Any = None) -> "VerifyReport":
        """Raise :class:`OnnxMismatch` (naming the worst output, or ORT's error) unless ``ok``; else ``self``.

        Args:
            file: the model file to name in the error, if any.
        """
        if self.ok:
            return self
        w = self.worst
        hint = ("this is an archir lowering bug; please report it with the graph file (or loosen atol/rtol "
                "if the difference is acceptable)")
        if self.model != "to_onnx":
            hint = ("check that the model was exported from this graph (archir export); if it was, this is an "
                    "archir lowering bug: please report it with the graph file (or loosen atol/rtol if the "
                    "difference is acceptable)")
        if self.error is not None:
            hint = ("check that the model is this graph's, and that its external data file sits beside it; "
                    "otherwise this is an archir lowering bug: please report it with the graph file")
        raise OnnxMismatch(self.summary(), report=self, node=None if w is None or self.error else w.name,
                           file=file, hint=hint)


# --------------------------------------------------------------------------- inputs


def _seeded(graph: Graph, n: int, seed: int) -> list[np.ndarray]:
    import torch

    gen = torch.Generator().manual_seed(int(seed))  # the same numbers on every machine
    return [torch.randn((n, *graph.node(i).type.shape), generator=gen).numpy() for i in graph.inputs]


def _given(graph: Graph, inputs: Any) -> list[np.ndarray]:
    if isinstance(inputs, Mapping):
        missing = [i for i in graph.inputs if i not in inputs]
        if missing:
            raise LoweringError(f"inputs has no value for graph input(s) {missing}; it has {sorted(inputs)}",
                                rule="verify_onnx", hint="give one array per graph input, keyed by its node id")
        inputs = [inputs[i] for i in graph.inputs]
    elif isinstance(inputs, np.ndarray) or hasattr(inputs, "numpy"):
        inputs = [inputs]
    inputs = list(inputs)
    if len(inputs) != len(graph.inputs):
        raise LoweringError(f"got {len(inputs)} input array(s) for {len(graph.inputs)} graph input(s) "
                            f"{list(graph.inputs)}", rule="verify_onnx",
                            hint="give one array per graph input (a list in graph order, or a dict by node id)")
    out = []
    for i, x in zip(graph.inputs, inputs):
        x = x.detach().cpu().numpy() if hasattr(x, "detach") else x
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        want = tuple(graph.node(i).type.shape)
        if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want:
            raise LoweringError(f"input {i!r} has shape {tuple(x.shape)}; the graph takes (N, {', '.join(map(str, want))})",
                                rule="verify_onnx", hint="give a batch of inputs of the graph input's shape")
        out.append(x)
    return out


# --------------------------------------------------------------------------- the model


def _session_source(graph: Graph, model: Any, external_data: Any, tmp: list[Path]):
    """What ONNX Runtime loads (bytes or a path), a description, and whether it has external data."""
    import onnx

    from archir.lower.onnx import to_onnx, uses_external_data

    def beside(proto_bytes: bytes, folder: Path) -> str:
        # external data resolves against the model file's folder: save a temporary model beside it
        fd, path = tempfile.mkstemp(prefix=".archir-verify.", suffix=".onnx", dir=folder)
        tmp.append(Path(path))
        with os.fdopen(fd, "wb") as f:
            f.write(proto_bytes)
        return path

    def folder_of(ext) -> Path:
        p = Path(ext)
        return p if p.is_dir() else p.parent

    if model is None:
        if external_data is None:
            return _serialize(to_onnx(graph)), "to_onnx", False
        proto = to_onnx(graph, external_data=external_data)
        return beside(_serialize(proto), Path(external_data).parent), "to_onnx", True
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise LoweringError("no such ONNX model file", file=path, rule="verify_onnx",
                                hint="give the path of an .onnx file (its external data beside it), or model=None")
        ext = uses_external_data(_parse(lambda: onnx.load_model(str(path), load_external_data=False), path))
        return str(path), str(path), ext
    if isinstance(model, onnx.ModelProto):
        ext = uses_external_data(model)
        data = _serialize(model)
        desc = "ModelProto"
    elif isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
        ext = uses_external_data(_parse(lambda: onnx.load_model_from_string(data), None))
        desc = "bytes"
    else:
        raise LoweringError(f"model must be None, an onnx.ModelProto, bytes or a path, not {type(model).__name__}",
                            rule="verify_onnx", hint="pass the model to_onnx returned, or the .onnx file's path")
    if ext:
        if external_data is None:
            raise LoweringError("the ONNX model keeps its weights in external data, and no external_data= says "
                                "where that file is", rule="verify_onnx",
                                hint="pass external_data= the data file (or its folder), or the .onnx file's path")
        return beside(data, folder_of(external_data)), desc, True
    return data, desc, False


def _parse(load, path):
    from google.protobuf.message import DecodeError

    try:
        return load()
    except (DecodeError, ValueError, RuntimeError) as e:  # not a protobuf ModelProto
        raise LoweringError(f"not an ONNX model: {_first_line(e)}", file=path, rule="verify_onnx",
                            hint="give an .onnx file written by archir export or onnx.save") from None


def _serialize(proto) -> bytes:
    from google.protobuf.message import EncodeError

    try:
        return proto.SerializeToString()
    except (EncodeError, ValueError) as e:  # protobuf refuses messages of 2 GiB or more
        raise LoweringError(f"the ONNX model is too large to serialize (protobuf's limit is 2 GiB): {e}",
                            rule="verify_onnx",
                            hint="keep its weights in external data: to_onnx(g, external_data='net.onnx.data') "
                                 "or verify_onnx(g, external_data=...)") from None


# --------------------------------------------------------------------------- comparison


def _compare(name: str, ref: np.ndarray, got: np.ndarray | None, atol: float, rtol: float) -> OutputDiff:
    shape = tuple(ref.shape)
    if got is None or tuple(got.shape) != shape:
        inf = float("inf")
        return OutputDiff(name, shape, None if got is None else tuple(got.shape), inf, inf, inf)
    if ref.size == 0:
        return OutputDiff(name, shape, shape, 0.0, 0.0, 0.0)
    r = ref.astype(np.float64)
    o = got.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        diff = np.where(r == o, 0.0, np.abs(r - o))  # equal infinities are equal
        if np.isnan(diff).any():
            nan = float("nan")
            return OutputDiff(name, shape, shape, nan, nan, nan)
        mag = np.abs(r)
        floor = atol if atol > 0 else np.finfo(np.float32).tiny
        rel = np.where(diff == 0, 0.0, diff / np.maximum(mag, floor))
        tol = atol + rtol * mag
        ratio = np.where(diff == 0, 0.0, diff / np.where(tol > 0, tol, 0.0))  # tol 0: any difference is inf
    return OutputDiff(name, shape, shape, float(diff.max()), float(np.nan_to_num(rel, nan=np.inf).max()),
                      float(np.nan_to_num(ratio, nan=np.inf).max()))


# --------------------------------------------------------------------------- entry point


def verify_onnx(graph: Graph, model: Any = None, *, inputs: Any = None, n: int = 2, seed: int = 0,
                atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, external_data: str | os.PathLike | None = None,
                module: Any = None, threads: int | None = 1, optimize: bool = True,
                keep_values: bool = False) -> VerifyReport:
    """Run an ONNX model of ``graph`` under ONNX Runtime (CPU) and compare it with ``to_fx(graph)``.

    The fx module runs in **eval mode** under ``torch.no_grad`` (an identity-initialised
    BatchNorm is the identity only there; dropout is the identity); an element passes when
    ``|fx - ort| <= atol + rtol * |fx|``, NaN never passes. Outputs are compared in order; inputs
    are fed by name when the model's input names are the graph's input ids, else by position (a
    model from another exporter). The main outputs are compared: auxiliary training outputs
    (``auxiliary`` nodes), which ``to_onnx`` leaves out, are not (the reference is
    ``to_fx(graph, training_ops=False)``, or the given ``module`` without its auxiliary outputs).

    Args:
        graph: a valid plain graph with weights (the reference).
        model: what to verify: ``None`` (build it with ``to_onnx(graph)``), an
            ``onnx.ModelProto``, its serialized bytes, or the path of an ``.onnx`` file (its
            external data file, if any, beside it: ONNX Runtime loads it by path).
        inputs: the inputs (float32, batch first): one array for a single-input graph, a list
            in ``graph.inputs`` order, or a dict by input id; numpy arrays or torch tensors. By
            default ``n`` standard-normal samples per input from ``seed`` (``torch.Generator``,
            the same numbers on every machine).
        n: the batch of generated inputs.
        seed: the seed of generated inputs.
        atol, rtol: the tolerances.
        external_data: where ONNX external data lives. With ``model=None``: the data file to
            write, i.e. ``to_onnx(graph, external_data=external_data)`` (needed for graphs of
            2 GiB or more; the file is left there). With a ModelProto or bytes whose weights are
            external: the data file or its folder. Not needed for a path.
        module: ``to_fx(graph)``, if the caller already has it (put in eval mode here).
        threads: ONNX Runtime's intra-op threads (default 1: verification batches are small;
            ``None``: ORT's default, all cores).
        optimize: ORT's default graph optimisations (``False``: ``ORT_DISABLE_ALL``, the model as
            written).
        keep_values: keep both runs' outputs in ``report.fx_values`` / ``report.ort_values``.

    Returns:
        A :class:`VerifyReport`: per output ``max_abs``, ``max_rel`` and ``ratio`` of tolerance;
        ``ok``; ``ort_version``, ``seconds``, ``n``. A mismatch, a model ONNX Runtime cannot load
        or run (``report.error``), or a model whose outputs do not fit the graph's is reported,
        not raised: call ``report.raise_if_failed()`` to raise :class:`OnnxMismatch`.

    Raises:
        IRError: ``graph`` is invalid or cannot be lowered (``to_fx``/``to_onnx`` validate it).
        OnnxTooLarge: ``model=None`` and the graph is over protobuf's 2 GiB limit without
            ``external_data``.
        LoweringError: bad arguments: negative tolerances, inputs of the wrong shape or number, no such model file,
            an external-data model without ``external_data``, a model too large to serialize.

    Example:
        >>> rep = archir.lower.verify_onnx(g)                        # doctest: +SKIP
        >>> rep.ok, rep.max_abs < 1e-5
        (True, True)
        >>> archir.lower.verify_onnx(g, "net.onnx", n=4).raise_if_failed()   # doctest: +SKIP
        >>> big = archir.lower.verify_onnx(g, external_data="big.onnx.data")  # > 2 GiB  # doctest: +SKIP
    """
    import onnxruntime as ort
    import torch

    t0 = time.perf_counter()
    for name, tol in (("atol", atol), ("rtol", rtol)):
        if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol >= 0 or math.isinf(tol):
            raise LoweringError(f"{name} must be a finite number >= 0, got {tol!r}", rule="verify_onnx",
                                hint="pass tolerances >= 0 (atol=1e-5, rtol=1e-4 are the defaults)")
    if inputs is None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise LoweringError(f"n must be a positive int (samples per input), got {n!r}", rule="verify_onnx",
                            hint="pass n >= 1, or inputs=")
    from archir.training import auxiliary_outputs

    if module is None:
        from archir.lower.fx import to_fx

        module = to_fx(graph, training_ops=False)  # validates the graph
    aux = auxiliary_outputs(graph)  # to_onnx leaves them out: compare the main outputs
    module.eval()
    xs = _seeded(graph, n, seed) if inputs is None else _given(graph, inputs)
    with torch.no_grad():
        ref = module(*[torch.from_numpy(x) for x in xs])
    refs = [r.detach().cpu().numpy() for r in (ref if isinstance(ref, (tuple, list)) else (ref,))]
    main = [o for k, o in enumerate(graph.outputs) if k not in aux]
    if aux and len(refs) == len(graph.outputs):  # a caller's module with the auxiliary outputs
        refs = [r for k, r in enumerate(refs) if k not in aux]
    report = VerifyReport([], atol, rtol, int(xs[0].shape[0]) if xs else n, seed if inputs is None else None,
                          ort.__version__)

    tmp: list[Path] = []
    try:
        source, report.model, report.external_data = _session_source(graph, model, external_data, tmp)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # ORT's warnings are not the user's concern here
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        if not optimize:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            sess = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT's own error types (InvalidGraph, Fail, ...)
            report.error = f"ONNX Runtime cannot load the model: {_first_line(e)}"
            report.seconds = time.perf_counter() - t0
            return report
    finally:
        for p in tmp:  # ORT has read the model (and opened its data) by now
            p.unlink(missing_ok=True)
    names = [i.name for i in sess.get_inputs()]
    if set(names) == set(graph.inputs):
        feeds = dict(zip(graph.inputs, xs))
    elif len(names) == len(xs):
        feeds = dict(zip(names, xs))
    else:
        report.error = f"the model takes {len(names)} input(s) {names}; the graph {len(xs)} {list(graph.inputs)}"
        report.seconds = time.perf_counter() - t0
        return report
    try:
        got = sess.run(None, feeds)
    except Exception as e:
        report.error = f"ONNX Runtime cannot run the model: {_first_line(e)}"
        report.seconds = time.perf_counter() - t0
        return report
    if len(got) != len(refs):
        report.error = f"the model has {len(got)} output(s); the graph {len(refs)} {main}"
    report.outputs = [_compare(name, r, got[k] if k < len(got) else None, atol, rtol)
                      for k, (name, r) in enumerate(zip(main, refs))]
    if keep_values:
        report.fx_values, report.ort_values = refs, list(got)
    report.seconds = time.perf_counter() - t0
    return report


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {(text.splitlines() or [''])[0]}"
