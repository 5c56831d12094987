"""The numeric function-preservation check: ``check_preserved(before, after)``.

Both graphs are lowered with ``archir.lower.to_fx`` and run on the same seeded inputs in
**eval mode** under ``torch.no_grad``. Eval mode matters: an identity-initialised BatchNorm
(running mean 0, variance 1, weight ``sqrt(1 + eps)``, bias 0) is the identity only when it
normalises by its running statistics; in train mode it normalises by batch statistics and
changes the function. Dropout is the identity in eval mode too.

Every output is compared with ``torch.allclose`` semantics: an element passes when
``|after - before| <= atol + rtol * |before|`` (``before`` is the reference).
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

__all__ = ["check_preserved", "PreservationReport", "OutputError", "make_inputs", "run_graph"]


@dataclass(frozen=True)
class OutputError:
    """The error of one output.

    Attributes:
        name: the output node id in ``before`` (``after``'s id is ``after_name``).
        after_name: the output node id in ``after``.
        shape: per-sample shape.
        max_abs: ``max |after - before|``.
        max_rel: ``max |after - before| / max(|before|, atol)`` (relative error, floored at
            ``atol`` so that exact zeros in ``before`` do not divide by zero).
        ratio: ``max |after - before| / (atol + rtol * |before|)``; the output passes iff ``<= 1``
            (and nothing is NaN).
    """

    name: str
    after_name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    ratio: float

    @property
    def ok(self) -> bool:
        return self.ratio <= 1.0  # NaN compares False: a NaN output fails


@dataclass
class PreservationReport:
    """The result of :func:`check_preserved`.

    Attributes:
        outputs: one :class:`OutputError` per graph output, in order.
        atol, rtol: the tolerances used.
        n, seed: the number of samples and the input seed.
        seconds: wall time of the check (lowering included).
    """

    outputs: list[OutputError]
    atol: float
    rtol: float
    n: int
    seed: int | None
    seconds: float = 0.0
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
                f"rtol={self.rtol:g}): {'ok' if self.ok else 'FAILED'} in {self.seconds * 1e3:.1f} ms")
        rows = [f"  {o.name}{'' if o.after_name == o.name else ' / ' + o.after_name} {o.shape}: "
                f"max_abs={o.max_abs:.3g} max_rel={o.max_rel:.3g} ({o.ratio:.3g} of tolerance)"
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


def run_graph(g: Graph, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Lower ``g`` with ``to_fx`` and run it in eval mode without gradients; one tensor per output."""
    gm = to_fx(g)
    gm.eval()
    with torch.no_grad():
        out = gm(*xs)
    return list(out) if isinstance(out, tuple) else [out]


def _quot(diff: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """``diff / denom`` where an exact match (``diff == 0``) is 0 even when ``denom`` is 0 (atol=rtol=0)."""
    return torch.where(diff == 0, torch.zeros_like(diff), diff / denom)


def check_preserved(before: Graph, after: Graph, *, inputs: Any = None, n: int = 4, seed: int = 0,
                    atol: float = 1e-5, rtol: float = 1e-4, raise_on_failure: bool = True) -> PreservationReport:
    """Check numerically that ``after`` computes what ``before`` computes (eval mode).

    Both graphs are lowered with ``archir.lower.to_fx``, put in **eval mode** and run under
    ``torch.no_grad`` on the same inputs. Eval mode is essential: an identity-initialised
    BatchNorm preserves the function in eval mode only (train mode normalises by batch
    statistics). An element passes when ``|after - before| <= atol + rtol * |before|``
    (``torch.allclose`` semantics, ``before`` the reference); NaN never passes.

    Args:
        before: the reference graph.
        after: the rewritten graph; same number of inputs and outputs with the same shapes.
        inputs: explicit inputs (see :func:`make_inputs`); by default ``n`` standard-normal
            samples per graph input from ``seed``.
        n: samples per input when generated.
        seed: seed of generated inputs.
        atol, rtol: tolerances.
        raise_on_failure: raise ``FunctionNotPreserved`` when an output is out of tolerance
            (default); ``False`` returns the failing report instead (for error-growth studies).

    Returns:
        A :class:`PreservationReport`: per output ``max_abs``, ``max_rel`` and ``ratio``.

    Raises:
        FunctionNotPreserved: an output is out of tolerance (naming the worst output, its
            max abs/rel error and the tolerances; ``e.report`` holds the report), or the two
            graphs have different interfaces (input/output count or shapes). An interface
            mismatch raises even with ``raise_on_failure=False``.
        archir.IRError: a graph is invalid (``to_fx`` validates it).

    Example:
        >>> g2 = passes.deepen(g, after="l0.relu")          # doctest: +SKIP
        >>> passes.check_preserved(g, g2).max_abs < 1e-5    # doctest: +SKIP
        True
    """
    t0 = time.perf_counter()
    if inputs is None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive int (samples per input), got {n!r}")
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
    ref = run_graph(before, xs)
    got = run_graph(after, xs)
    errs = []
    with torch.no_grad():
        for name, aname, shape, b, a in zip(before.outputs, after.outputs, so, ref, got):
            diff = (a - b).abs()
            mag = b.abs()
            nan = bool(torch.isnan(diff).any())
            max_abs = float("nan") if nan else float(diff.max()) if diff.numel() else 0.0
            max_rel = float("nan") if nan else float(_quot(diff, mag.clamp_min(atol)).max()) if diff.numel() else 0.0
            ratio = float("nan") if nan else float(_quot(diff, atol + rtol * mag).max()) if diff.numel() else 0.0
            errs.append(OutputError(name, aname, tuple(shape), max_abs, max_rel, ratio))
    report = PreservationReport(errs, atol, rtol, n if inputs is None else int(xs[0].shape[0]) if xs else 0,
                                seed if inputs is None else None, time.perf_counter() - t0)
    if not report.ok and raise_on_failure:
        w = report.worst
        raise FunctionNotPreserved(
            f"output {w.name!r} {w.shape} differs: max abs error {w.max_abs:.3g}, max rel error {w.max_rel:.3g} "
            f"(tolerance atol={atol:g} + rtol={rtol:g}*|before|, exceeded {w.ratio:.3g}x) "
            f"in eval mode on {report.n} sample(s)",
            report=report,
            hint="the rewrite changed what the network computes; check its initialisation (identity/zero "
                 "weights, BN stats, consumers of new channels)")
    return report
