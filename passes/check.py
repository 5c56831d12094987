"""The numeric function-preservation check: ``check_preserved(before, after)``.

Both graphs are lowered with ``archir.lower.to_fx`` and run on the same seeded inputs in
**eval mode** under ``torch.no_grad``. Eval mode matters: an identity-initialised BatchNorm
(running mean 0, variance 1, weight ``sqrt(1 + eps)``, bias 0) is the identity only when it
normalises by its running statistics; in train mode it normalises by batch statistics and
changes the function. Dropout is the identity in eval mode too.

**Precision (issue 17).** The check runs both graphs in **float64** (the float32 weights and the
float32 seeded inputs convert exactly) and compares each output with its **output scale**
``S = max |before|`` (over the whole output, every sample). An element passes when::

    |after - before| <= atol * S + rtol * |before| + store_tol * F
                                          (defaults: atol = 1e-9, rtol = 0, store_tol = 8)

where ``F`` is the output's float32 *storage floor*, measured only when the first two terms are
not enough (below).

*Why float64.* A morphism's promise is exact. What a numeric check sees besides a real violation
is rounding, of size ``u * K * A``: the unit roundoff ``u``, an accumulation factor ``K`` (depth,
fan-in) and the size ``A`` of the *intermediate* activations, which on deep randomly initialised
networks is far above the output's. In float32 (``u = 6e-8``) that noise is 6e-7..1.5e-5 of
the output scale over legal morphisms on the torchvision families, and the old fixed
``atol=1e-5 + rtol=1e-4*|before|`` refused 6 of 84 sampled legal morphisms (5 of 12 on a deep
random Inception v3, whose activations reach ~1e8: widen, enlarge_kernel of 1x1 convs); an
absolute ``atol`` also meant nothing on an output of scale 1e-9 (MobileNetV2 as torchvision
initialises it, where a change of 6000 times the output's scale passed). Scaling a float32 tolerance by a measured noise floor
cannot fix it: a weight off by 1e-3 of its magnitude moves the output by as little as 3.6e-7 of
its scale, inside float32's own noise. In float64 (``u = 1.1e-16``) the same rounding measured at
most 6.2e-15 of the output scale over those 84 morphisms, so ``atol = 1e-9`` of the scale sits
more than five orders of magnitude above it and 2.5 below the smallest deliberate violation; the
check refuses one weight changed by 4e-7..3e-6 of its tensor's max magnitude
(``python benchmarks/passes.py --only-precision``, section (d), prints these per family).
The tolerance is relative to the output *scale*, not to each
element, because rounding error is proportional to the magnitudes that were summed, not to a
(possibly cancelled) result; it is relative at all because a network's output units are arbitrary.

*BN constants as a float32 runtime holds them.* What float64 does not remove is float32
*storage*. An identity BN stores ``weight = float32(sqrt(1 + eps))``: in exact arithmetic
``weight / sqrt(1 + eps) = 1 + 7e-9`` (eps 1e-5), amplified to ~1e-7 of the output scale by the
BNs after it. A float32 runtime never applies that ratio: eval-mode BN is the per-channel map
``alpha * x + beta``, ``alpha = weight / sqrt(var + eps)``, ``beta = bias - mean * alpha``, held
in float32 (torch's eval BN; ONNX Runtime folds BN into the conv). The check evaluates exactly
that: ``alpha`` and ``beta`` computed in float64, rounded to float32, applied in float64. The
identity BN is then the identity, and any BN change a float32 deployment can see still shows.

*The storage floor ``F``.* A rewrite that writes weights which are not exact in float32 (a widen
past a doubling divides consumers by 3; folding BN into a conv multiplies every weight) changes
the function by their rounding, ~1e-8 of the scale: not a violation, but far above ``atol``. So
when an output misses ``atol * S + rtol * |before|``, the check measures ``F``: the largest change
of that output (float64) when every *written* element of ``after`` -- one that differs from
``before``'s array (every element of a new node or a new shape), is not zero and is not exact
(not a significand ``before`` held, i.e. not a copy or a copy scaled by a power of two; not a
constant of at most 8 significant bits such as 1 or 0.5) -- moves one float32 ulp (twice the
largest rounding error) up or down, seeded signs, max over two draws. Exact rewrites (every
registered morphism at its listed targets: copies, zeros, halvings, identity kernels) never pay
for it, and a deliberate change of a weight is itself written and counted with its one-ulp
effect, ~1e-4 of the change (1e-3 / 2**-23): it stays visible by orders of magnitude.

``atol`` and ``rtol`` keep their roles, in float64 and relative to the output: ``atol`` is a
fraction of the output scale (``atol=1e-5`` allows 1e-5 of the largest output magnitude), ``rtol``
the ``torch.allclose``-style per-element tolerance (``before`` the reference). ``atol=rtol=0``
and ``store_tol=0`` ask for bit-equal float64 outputs. ``dtype="float32"`` runs both graphs in
float32 as the check did before issue 17 (for error-growth studies and for the figure; no floor).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from archir import Graph
from archir.lower import to_fx

from passes.infra import FunctionNotPreserved

__all__ = ["check_preserved", "PreservationReport", "OutputError", "make_inputs", "run_graph", "perturb_live_weight"]


@dataclass(frozen=True)
class OutputError:
    """The error of one output.

    Attributes:
        name: the output node id in ``before`` (``after``'s id is ``after_name``).
        after_name: the output node id in ``after``.
        shape: per-sample shape.
        max_abs: ``max |after - before|``.
        max_rel: ``max |after - before| / scale``, the error relative to the output scale (0 when
            the outputs are equal, ``inf`` when ``before`` is all zeros and ``after`` is not).
        ratio: ``max |after - before| / (atol * scale + rtol * |before|)``; the output passes iff
            ``<= 1`` (and nothing is NaN).
        scale: the output scale ``max |before|`` (over the whole output, every sample).
        floor: the measured float32 storage floor of the rewritten weights on this output
            (``max |after' - after|``, ``after'`` with every written weight moved one float32 ulp);
            0 where it was not needed (the outputs agree to ``atol * scale + rtol * |before|``).
    """

    name: str
    after_name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    ratio: float
    scale: float = float("nan")
    floor: float = 0.0

    @property
    def ok(self) -> bool:
        return self.ratio <= 1.0  # NaN compares False: a NaN output fails


@dataclass
class PreservationReport:
    """The result of :func:`check_preserved`.

    Attributes:
        outputs: one :class:`OutputError` per graph output, in order.
        atol, rtol: the tolerances used (``atol`` a fraction of each output's scale, ``rtol`` per
            element; see the module docstring).
        n, seed: the number of samples and the input seed.
        seconds: wall time of the check (lowering included).
        mode: ``"eval"``: the mode both graphs ran in.
        dtype: ``"float64"`` (default) or ``"float32"``: the precision both graphs ran in.
        store_tol: the multiple of the float32 storage floor allowed on top of ``atol``/``rtol``.
    """

    outputs: list[OutputError]
    atol: float
    rtol: float
    n: int
    seed: int | None
    seconds: float = 0.0
    dtype: str = "float64"
    store_tol: float = 0.0
    mode: str = field(default="eval", init=False)

    @property
    def ok(self) -> bool:
        """True when every output is within tolerance."""
        return all(o.ok for o in self.outputs)

    passed = ok

    @property
    def worst(self) -> OutputError:
        """The output furthest outside (or closest to) its tolerance."""
        return max(self.outputs, key=lambda o: (math.isnan(o.ratio), o.ratio if not math.isnan(o.ratio) else 0.0))

    @property
    def max_abs(self) -> float:
        return max(o.max_abs for o in self.outputs)

    @property
    def max_rel(self) -> float:
        return max(o.max_rel for o in self.outputs)

    def __str__(self) -> str:
        head = (f"preservation check ({self.mode} mode, n={self.n}, seed={self.seed}, atol={self.atol:g}, "
                f"rtol={self.rtol:g}): {'ok' if self.ok else 'FAILED'} in {self.seconds * 1e3:.1f} ms "
                f"({self.dtype}; atol is a fraction of each output's scale, store_tol={self.store_tol:g})")
        rows = [f"  {o.name}{'' if o.after_name == o.name else ' / ' + o.after_name} {o.shape}: "
                f"max_abs={o.max_abs:.3g} max_rel={o.max_rel:.3g} scale={o.scale:.3g}"
                f"{f' floor={o.floor:.3g}' if o.floor else ''} ({o.ratio:.3g} of tolerance)"
                f"{'' if o.ok else '  <-- FAIL'}" for o in self.outputs]
        return "\n".join([head, *rows])


def _shapes(g: Graph, ids: Sequence[str]) -> list[tuple[int, ...]]:
    out = []
    for i in ids:
        t = g.node(i).type
        out.append(tuple(t.shape) if t is not None else None)
    return out


def make_inputs(g: Graph, inputs: Any = None, *, n: int = 4, seed: int = 0) -> list[torch.Tensor]:
    """The input tensors for ``g``: ``n`` standard-normal samples per graph input from ``seed``,
    or ``inputs`` converted to float32 tensors.

    Args:
        g: the graph.
        inputs: ``None`` (generate), one tensor/array (single-input graphs), a sequence in the
            order of ``g.inputs``, or a mapping from input id to tensor/array.
        n: batch size of generated inputs.
        seed: seed of generated inputs (``torch.Generator``; the same on every machine).
    """
    if inputs is None:
        gen = torch.Generator().manual_seed(int(seed))
        return [torch.randn((n, *g.node(i).type.shape), generator=gen) for i in g.inputs]
    if isinstance(inputs, Mapping):
        missing = [i for i in g.inputs if i not in inputs]
        if missing:
            raise ValueError(f"inputs has no value for graph input(s) {missing}; it has {sorted(inputs)}")
        inputs = [inputs[i] for i in g.inputs]
    elif isinstance(inputs, (torch.Tensor, np.ndarray)):
        inputs = [inputs]
    inputs = list(inputs)
    if len(inputs) != len(g.inputs):
        raise ValueError(f"got {len(inputs)} input tensor(s) for {len(g.inputs)} graph input(s) {list(g.inputs)}")
    return [torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32)
            for x in inputs]


_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")


def _float32_bn_constants(gm: torch.nn.Module) -> None:
    """Make every BatchNorm of the float64 module ``gm`` apply ``alpha * x + beta`` with the float32
    ``alpha = weight / sqrt(var + eps)`` and ``beta = bias - mean * alpha`` of a float32 runtime
    (computed in float64, rounded to float32): see the module docstring. Eval mode only."""
    with torch.no_grad():
        for m in gm.modules():
            if not isinstance(m, torch.nn.modules.batchnorm._BatchNorm) or m.running_var is None:
                continue
            alpha = torch.rsqrt(m.running_var + m.eps)
            if m.weight is not None:
                alpha = alpha * m.weight
            beta = -m.running_mean * alpha + (m.bias if m.bias is not None else 0.0)
            alpha, beta = alpha.float().double(), beta.float().double()
            # BN(x) = (x - 0) / sqrt(1 + 0) * alpha + beta: sqrt(1) and the division by 1 are exact
            m.running_mean = torch.zeros_like(alpha)
            m.running_var = torch.ones_like(alpha)
            m.eps = 0.0
            m.weight = torch.nn.Parameter(alpha, requires_grad=False)
            m.bias = torch.nn.Parameter(beta, requires_grad=False)


def run_graph(g: Graph, xs: Sequence[torch.Tensor], *, dtype: Any = "float32") -> list[torch.Tensor]:
    """Lower ``g`` with ``to_fx`` and run it in eval mode without gradients; one tensor per output.

    ``dtype="float64"`` runs it as :func:`check_preserved` does: the module and the inputs in
    float64, each BatchNorm's per-channel scale and shift as a float32 runtime holds them (see
    the module docstring). The default is float32, what a training or deployment run computes.
    """
    dt = _dtype(dtype)
    gm = to_fx(g)
    gm.eval()
    if dt == torch.float64:
        gm = gm.double()
        _float32_bn_constants(gm)
    with torch.no_grad():
        out = gm(*[x.to(dt) for x in xs])
    return list(out) if isinstance(out, tuple) else [out]


def perturb_live_weight(g: Graph, node: str, xs: Sequence[torch.Tensor], rel: float = 1e-3) -> Graph:
    """A copy of ``g`` with one weight of ``node`` (a conv or linear) moved by ``rel * max|W|``: the
    smallest honest violation, for measuring what :func:`check_preserved` can see
    (``benchmarks/passes.py`` (d), the precision tests).

    The weight moved is the centre tap (convs) of the (out, in) pair with the largest
    ``|W| * mean |input channel|`` on ``xs``: a weight whose input is live (one on a dead ReLU
    channel changes nothing any input sample can show). The move is made in float32, the weights'
    storage type, so the written array differs from the old one in exactly one element.
    """
    w = np.asarray(g.node(node).params["weight"], dtype=np.float32)
    h = g.copy()
    h.set_outputs(g.inputs_of(node)[0])
    x = run_graph(h, xs, dtype="float64")[0]
    act = x.abs().mean(dim=[d for d in range(x.dim()) if d != 1]).numpy()
    if w.ndim == 4:
        c = (w.shape[2] // 2, w.shape[3] // 2)
        o, j = np.indices(w.shape[:2])
        groups = act.shape[0] // w.shape[1]
        score = np.abs(w[:, :, c[0], c[1]]) * act[(o // (w.shape[0] // groups)) * w.shape[1] + j]
        idx = (*np.unravel_index(np.argmax(score), score.shape), *c)
    else:
        score = np.abs(w) * act[None, :]
        idx = np.unravel_index(np.argmax(score), score.shape)
    w2 = w.copy()
    w2[idx] += np.float32(rel * np.abs(w).max())
    out = g.copy()
    out.set_params(node, weight=w2)
    return out


def _quot(diff: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """``diff / denom`` where an exact match (``diff == 0``) is 0 even when ``denom`` is 0 (atol=rtol=0)."""
    return torch.where(diff == 0, torch.zeros_like(diff), diff / denom)


def _exact(arr: np.ndarray, prev: np.ndarray | None) -> np.ndarray:
    """The elements of a written float32 array that carry no rounding: a significand of at most 8
    bits (0, 1, 0.5, 1.5 ...: a constant, not a rounded real; a rounded real ends in 16 zero bits
    with probability 2**-16), or the significand of a value the node held before (a copy, or a copy
    scaled by a power of two: a halving consumer of a doubling widen)."""
    a = np.ascontiguousarray(arr, dtype=np.float32)
    short = (a.view(np.uint32) & np.uint32(0xFFFF)) == 0
    if prev is None or not np.size(prev):
        return short
    old = np.unique(np.abs(np.frexp(np.asarray(prev, dtype=np.float32))[0]))
    return short | np.isin(np.abs(np.frexp(a)[0]), old)


def _written(before: Graph, after: Graph) -> list[tuple[str, str, str, np.ndarray]]:
    """The float elements ``after``'s rewrite wrote that may carry float32 rounding:
    ``(node, "params"|"buffers", key, mask)``. An element counts when it differs from ``before``'s
    array of the same shape (every element of a new node, key or shape) and is not exact
    (:func:`_exact`). Arrays shared with ``before`` are left out without comparing them (a pass
    assigns new arrays, it never mutates one)."""
    out = []
    for nid in after:
        a = after.node(nid)
        b = before.node(nid) if nid in before else None
        for kind in ("params", "buffers"):
            old = (getattr(b, kind) or {}) if b is not None and b.op == a.op else {}
            for key, arr in (getattr(a, kind) or {}).items():
                arr = np.asarray(arr)
                if arr.dtype.kind != "f" or not arr.size:
                    continue
                prev = old.get(key)
                if prev is arr:
                    continue
                mask = arr != 0
                if prev is not None and np.shape(prev) == arr.shape:
                    mask &= np.asarray(prev) != arr
                if mask.any():
                    mask &= ~_exact(arr, prev)
                if mask.any():
                    out.append((nid, kind, key, mask))
    return out


def _storage_floor(after: Graph, written: list, xs: Sequence[torch.Tensor], got: Sequence[torch.Tensor],
                   seed: int, draws: int = 2) -> list[float]:
    """Per output, ``max |after' - after|`` (float64) over ``draws`` copies ``after'`` whose written
    elements are each moved one float32 ulp up or down (seeded signs; zeros stay exact zeros)."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 17])
    floor = [0.0] * len(got)
    for _ in range(draws):
        g = after.copy()
        for nid, kind, key, mask in written:
            a = np.asarray(getattr(g.node(nid), kind)[key], dtype=np.float32)
            step = np.nextafter(a, np.where(rng.random(a.shape) < 0.5, -np.inf, np.inf).astype(np.float32))
            moved = np.where(mask, step, a)
            (g.set_params if kind == "params" else g.set_buffers)(nid, **{key: moved})
        with torch.no_grad():
            for i, (o, ref) in enumerate(zip(run_graph(g, xs, dtype=torch.float64), got)):
                if o.numel():
                    floor[i] = max(floor[i], float((o - ref).abs().max()))
    return floor


def check_preserved(before: Graph, after: Graph, *, inputs: Any = None, n: int = 4, seed: int = 0,
                    atol: float = 1e-9, rtol: float = 0.0, store_tol: float = 8.0, raise_on_failure: bool = True,
                    dtype: str = "float64") -> PreservationReport:
    """Check numerically that ``after`` computes what ``before`` computes (eval mode, float64).

    Both graphs are lowered with ``archir.lower.to_fx``, put in **eval mode**, converted to
    **float64** (each BatchNorm's per-channel scale and shift as a float32 runtime holds them) and
    run under ``torch.no_grad`` on the same inputs. Eval mode is essential: an
    identity-initialised BatchNorm preserves the function in eval mode only (train mode
    normalises by batch statistics). Per output, with ``S = max |before|`` its scale, an element
    passes when ``|after - before| <= atol * S + rtol * |before| + store_tol * F`` (``F`` the
    float32 storage floor of the weights ``after`` wrote, measured only when needed); NaN never
    passes. The module docstring gives the reasoning and the measured margins: float64 rounding
    is ~1e-15 of ``S``, a weight off by 1e-3 of its magnitude moves the output by >= ~1e-6 of ``S``.

    Args:
        before: the reference graph.
        after: the rewritten graph; same number of inputs and outputs with the same shapes.
        inputs: explicit inputs (see :func:`make_inputs`); by default ``n`` standard-normal
            samples per graph input from ``seed``.
        n: samples per input when generated.
        seed: seed of generated inputs.
        atol: tolerance as a fraction of each output's scale ``max |before|`` (default 1e-9).
        rtol: relative tolerance per element, ``torch.allclose`` style (default 0).
        store_tol: multiple of the measured float32 storage floor of the weights ``after`` wrote,
            allowed on top (default 8; measured only when ``atol``/``rtol`` are not met; 0: off).
        raise_on_failure: raise ``FunctionNotPreserved`` when an output is out of tolerance
            (default); ``False`` returns the failing report instead (for error-growth studies).
        dtype: ``"float64"`` (default) or ``"float32"``, the check before issue 17 (whose float32
            rounding on large activations is far above the default tolerance: pass a looser one).

    Returns:
        A :class:`PreservationReport`: per output ``scale``, ``max_abs``, ``max_rel`` (relative to
        the scale) and ``ratio``.

    Raises:
        FunctionNotPreserved: an output is out of tolerance (naming the worst output, its
            max abs/rel error, its scale and the tolerances; ``e.report`` holds the report), or the
            two graphs have different interfaces (input/output count or shapes). An interface
            mismatch raises even with ``raise_on_failure=False``.
        archir.IRError: a graph is invalid (``to_fx`` validates it).
        ValueError: ``n`` is not a positive int, ``dtype`` is not float64/float32, or a tolerance
            is negative.

    Example:
        >>> g2 = passes.deepen(g, after="l0.relu")          # doctest: +SKIP
        >>> passes.check_preserved(g, g2).max_rel < 1e-12   # doctest: +SKIP
        True
    """
    t0 = time.perf_counter()
    if inputs is None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive int (samples per input), got {n!r}")
    dt = _dtype(dtype)
    if not (atol >= 0 and rtol >= 0 and store_tol >= 0):  # NaN fails too
        raise ValueError(f"atol, rtol and store_tol must be non-negative, got atol={atol!r}, rtol={rtol!r}, "
                         f"store_tol={store_tol!r}")
    si, sa = _shapes(before, before.inputs), _shapes(after, after.inputs)
    if si != sa:
        raise FunctionNotPreserved(
            f"the graphs have different inputs: before {dict(zip(before.inputs, si))}, "
            f"after {dict(zip(after.inputs, sa))}",
            hint="a function-preserving rewrite keeps the number, order and shapes of the graph inputs")
    so, sao = _shapes(before, before.outputs), _shapes(after, after.outputs)
    if so != sao:
        raise FunctionNotPreserved(
            f"the graphs have different outputs: before {dict(zip(before.outputs, so))}, "
            f"after {dict(zip(after.outputs, sao))}",
            hint="a function-preserving rewrite keeps the number, order and shapes of the graph outputs")
    xs = make_inputs(before, inputs, n=n, seed=seed)
    ref = run_graph(before, xs, dtype=dt)
    got = run_graph(after, xs, dtype=dt)
    diffs = [(a - b).abs() for a, b in zip(got, ref)]
    scales = [float(b.abs().max()) if b.numel() else 0.0 for b in ref]

    def ratios(floor: Sequence[float]) -> list[float]:
        out = []
        for d, b, sc, fl in zip(diffs, ref, scales, floor):
            if not d.numel():
                out.append(0.0)
            elif bool(torch.isnan(d).any()):
                out.append(float("nan"))
            else:
                out.append(float(_quot(d, atol * sc + rtol * b.abs() + store_tol * fl).max()))
        return out

    floor = [0.0] * len(ref)
    ratio = ratios(floor)
    if dt == torch.float64 and store_tol > 0 and not all(r <= 1.0 for r in ratio):
        # not exact to float64 rounding: is it within what storing the rewritten weights in float32 does?
        written = _written(before, after)
        if written:
            floor = _storage_floor(after, written, xs, got, seed if inputs is None else 0)
            ratio = ratios(floor)
    errs = []
    for name, aname, shape, d, sc, r, fl in zip(before.outputs, after.outputs, so, diffs, scales, ratio, floor):
        if not d.numel():
            max_abs = max_rel = 0.0
        elif bool(torch.isnan(d).any()):
            max_abs = max_rel = float("nan")
        else:
            max_abs = float(d.max())
            max_rel = 0.0 if max_abs == 0 else max_abs / sc if sc > 0 else math.inf
        errs.append(OutputError(name, aname, tuple(shape), max_abs, max_rel, r, sc, fl))
    report = PreservationReport(errs, atol, rtol, n if inputs is None else int(xs[0].shape[0]) if xs else 0,
                                seed if inputs is None else None, time.perf_counter() - t0,
                                "float64" if dt == torch.float64 else "float32", store_tol)
    if not report.ok and raise_on_failure:
        w = report.worst
        raise FunctionNotPreserved(
            f"output {w.name!r} {w.shape} differs: max abs error {w.max_abs:.3g}, {w.max_rel:.3g} of its scale "
            f"max|before|={w.scale:.3g} (tolerance atol={atol:g}*scale + rtol={rtol:g}*|before| + "
            f"store_tol={store_tol:g}*float32 storage floor {w.floor:.3g}, exceeded "
            f"{w.ratio:.3g}x) in eval mode, {report.dtype}, on {report.n} sample(s)",
            report=report,
            hint="the rewrite changed what the network computes; check its initialisation (identity/zero "
                 "weights, BN stats, consumers of new channels)")
    return report
