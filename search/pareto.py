"""The Pareto gallery: the non-dominated candidates in (error, cost), a plot, ONNX export.

A candidate *a* dominates *b* when ``a.error <= b.error`` and ``a.cost <= b.cost`` with at
least one strict. The frontier is the set no candidate dominates; among candidates with equal
(error, cost) the lowest id represents them. Error is the validation error (selection never
looks at the test set); the cost is the experiment's objective cost (``macs``, ``params``,
``latency_ms``, ...).

Example:
    >>> pts = [Point(0, 0.1, 5.0), Point(1, 0.2, 1.0), Point(2, 0.3, 6.0)]
    >>> [p.id for p in frontier(pts)]
    [1, 0]
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from archir.errors import ArchirError

__all__ = ["Point", "frontier", "dominates", "plot", "export_onnx", "PlotUnavailable", "ExportMismatch",
           "VerifiedExport"]


@dataclass(frozen=True)
class Point:
    """One candidate in the (error, cost) plane.

    Attributes:
        id: the candidate's id.
        error: its validation error in [0, 1].
        cost: its cost (>= 0).
        eligible: False when it is over a hard budget: it is drawn but never on the frontier.
    """

    id: int
    error: float
    cost: float
    eligible: bool = True


def dominates(a: Point, b: Point) -> bool:
    """True when ``a`` is no worse than ``b`` in both error and cost and better in one."""
    return a.error <= b.error and a.cost <= b.cost and (a.error < b.error or a.cost < b.cost)


def frontier(points: Iterable[Point]) -> list[Point]:
    """The non-dominated eligible points, by increasing cost (then error, then id).

    Points with a NaN coordinate and ineligible points are left out. ``O(n log n)``: after
    sorting by (cost, error, id), a point is on the frontier iff its error is lower than every
    error before it.
    """
    pts = sorted((p for p in points if p.eligible and not (math.isnan(p.error) or math.isnan(p.cost))),
                 key=lambda p: (p.cost, p.error, p.id))
    out: list[Point] = []
    best = math.inf
    for p in pts:
        if p.error < best:
            out.append(p)
            best = p.error
    return out


class PlotUnavailable(ArchirError, ImportError):
    """matplotlib is not installed (the plot needs it); ``hint`` says what to install."""

    def __init__(self, message: str, *, hint: str | None = None, **where: Any) -> None:
        super().__init__(message, hint=hint or "pip install matplotlib (or pip install 'archir[search]')", **where)


def plot(points: Sequence[Point], path: str | os.PathLike, *, cost_label: str = "cost",
         title: str = "archir search: Pareto frontier", log_cost: bool = True) -> Path:
    """Write a PNG of every candidate (grey; over-budget ones as crosses) with the frontier (a line).

    Args:
        points: all finished candidates.
        path: the ``.png`` to write (atomically: a failure leaves an old file as it was).
        cost_label: the x axis label (e.g. ``"MACs"``, ``"latency ms (ort-cpu)"``).
        title: the plot's title.
        log_cost: a logarithmic cost axis when the costs span more than a factor of 10.

    Returns:
        The path written.

    Raises:
        PlotUnavailable: matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable("the Pareto plot needs matplotlib, which is not installed") from None
    import io

    from archir.serialize import atomic_write

    path = Path(path)
    front = frontier(points)
    on = {p.id for p in front}
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    try:
        rest = [p for p in points if p.id not in on and p.eligible]
        over = [p for p in points if not p.eligible]
        if rest:
            ax.scatter([p.cost for p in rest], [p.error for p in rest], s=18, c="#9ca3af", label="candidates")
        if over:
            ax.scatter([p.cost for p in over], [p.error for p in over], s=22, c="#f87171", marker="x",
                       label="over budget")
        if front:
            ax.step([p.cost for p in front], [p.error for p in front], where="post", c="#2563eb", lw=1.2)
            ax.scatter([p.cost for p in front], [p.error for p in front], s=30, c="#2563eb",
                       label=f"Pareto frontier ({len(front)})", zorder=3)
            for p in front:
                ax.annotate(str(p.id), (p.cost, p.error), textcoords="offset points", xytext=(4, 4), fontsize=7)
        costs = [p.cost for p in points]
        if log_cost and costs and min(costs) > 0 and max(costs) / min(costs) > 10:  # log only over a wide range
            ax.set_xscale("log")
        else:
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_xlabel(cost_label)
        ax.set_ylabel("validation error")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if points:
            ax.legend(loc="upper right", fontsize=8)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write(path, buf.getvalue())
    return path


class ExportMismatch(ArchirError, RuntimeError):
    """The exported ONNX model's output under ONNX Runtime differs from torch.fx.

    A failed verification: the command line exits with ``exit_code`` 1 (not 2, bad input).
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, **where: Any) -> None:
        super().__init__(message, hint=hint or "this is an archir lowering bug; please report it with the graph file",
                         **where)


@dataclass(frozen=True)
class VerifiedExport:
    """What :func:`export_onnx` wrote and how closely ONNX Runtime matched torch.fx."""

    path: Path
    bytes: int
    max_abs_err: float
    ort_version: str


def export_onnx(graph, path: str | os.PathLike, *, atol: float = 1e-5, rtol: float = 1e-4, batch_size: int = 2,
                seed: int = 0) -> VerifiedExport:
    """Export a frontier model to ONNX and verify it under ONNX Runtime (CPU) before writing.

    The model from ``archir.lower.to_onnx`` is checked with :func:`archir.lower.verify_onnx`
    against the ``to_fx`` module (eval mode) on seeded random input; the file is written
    atomically and only when ``|fx - ort| <= atol + rtol * |fx|`` everywhere.

    Raises:
        ExportMismatch: the outputs differ (nothing is written).
        archir.IRError: the graph cannot be lowered (``archir.lower.OnnxTooLarge`` for a model over
            2 GiB: export it with ``archir export ... --external-data``).
    """
    import archir
    from archir.serialize import atomic_write

    path = Path(path)
    data = archir.lower.to_onnx(graph).SerializeToString()
    rep = archir.lower.verify_onnx(graph, data, n=batch_size, seed=seed, atol=atol, rtol=rtol, threads=None)
    if not rep.ok:
        raise ExportMismatch(f"{path}: {rep.summary()}; the file was not written",
                             node=None if rep.worst is None or rep.error else rep.worst.name)
    atomic_write(path, data)
    worst = rep.max_abs
    return VerifiedExport(path, len(data), worst, rep.ort_version)
