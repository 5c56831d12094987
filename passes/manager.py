"""``PassManager``: run a pipeline of passes with instruments (after TVM's ``Sequential`` + ``PassInstrument``).

A pass is any callable ``Graph -> Graph``: a ``@graph_pass`` function bound to its arguments
with :func:`bind` (or ``functools.partial``). Instruments observe the pipeline through hooks,
each optional:

- ``run_before_pipeline(g)`` / ``run_after_pipeline(g)``
- ``run_before_pass(pass_, g)`` / ``run_after_pass(pass_, before, after)``
- ``annotate(record)``: add figures to the :class:`PassRecord` of the pass that just ran

Built in: :class:`Verify` (validate after each pass), :class:`CheckPreserved` (numeric check
where a pass declares ``preserves="function"``), :class:`Timing`, :class:`DumpIR` (one JSON file
per step: ``000_input.json``, ``001_deepen.json``, ...).

A failing pass (or instrument) raises a ``PassError`` of the same class as the cause, naming the
pass, its position and the passes that ran before it:
``pass 3 'widen' failed after: deepen, insert_bn: ...``.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import archir
from archir import Graph, IRError

from passes._util import fmt_call
from passes.check import PreservationReport, check_preserved
from passes.infra import PassError, PostconditionError, pass_name

__all__ = ["PassManager", "PassRecord", "PassInstrument", "Verify", "CheckPreserved", "Timing", "DumpIR", "bind",
           "preserves_of"]


def preserves_of(p: Callable) -> str | None:
    """What a pass promises (``.preserves``), looking through ``functools.partial``."""
    while isinstance(p, functools.partial) and not hasattr(p, "preserves"):
        p = p.func
    return getattr(p, "preserves", None)


class BoundPass:
    """A pass with its arguments bound: ``BoundPass(deepen, after="l0.relu")(g)``.

    Carries ``pass_name`` and ``preserves`` of the pass; ``repr`` reads like the call.
    """

    def __init__(self, fn: Callable[..., Graph], **kwargs: Any) -> None:
        self.fn = fn
        self.kwargs = kwargs
        self.pass_name = pass_name(fn)
        self.preserves = preserves_of(fn)

    def __call__(self, g: Graph) -> Graph:
        return self.fn(g, **self.kwargs)

    def __repr__(self) -> str:
        return fmt_call(self.pass_name, self.kwargs)


def bind(fn: Callable[..., Graph], **kwargs: Any) -> BoundPass:
    """Bind a pass to its keyword arguments: ``bind(passes.deepen, after="l0.relu")``."""
    return BoundPass(fn, **kwargs)


@dataclass
class PassRecord:
    """What happened in one pass.

    Attributes:
        index: 1-based position in the pipeline.
        name: the pass name.
        call: the bound call (``repr`` of the pass).
        seconds: time in the pass itself (instruments excluded).
        nodes_before, nodes_after: node counts.
        max_abs, max_rel: the numeric check's worst errors, when ``CheckPreserved`` checked it.
        check_seconds: time of the numeric check, when checked.
    """

    index: int
    name: str
    call: str
    seconds: float
    nodes_before: int
    nodes_after: int
    max_abs: float | None = None
    max_rel: float | None = None
    check_seconds: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def node_delta(self) -> int:
        return self.nodes_after - self.nodes_before

    def __str__(self) -> str:
        err = "" if self.max_abs is None else f", max_abs={self.max_abs:.3g}, max_rel={self.max_rel:.3g}"
        return f"{self.index:3d} {self.call}: {self.seconds * 1e3:.1f} ms, nodes {self.node_delta:+d}{err}"


class PassInstrument:
    """Base class of instruments (every hook is optional; this one does nothing)."""

    def run_before_pipeline(self, g: Graph) -> None:
        pass

    def run_after_pipeline(self, g: Graph) -> None:
        pass

    def run_before_pass(self, pass_: Callable, g: Graph) -> None:
        pass

    def run_after_pass(self, pass_: Callable, before: Graph, after: Graph) -> None:
        pass


class Verify(PassInstrument):
    """Validate the graph after every pass; an invalid result raises ``PostconditionError``."""

    def run_after_pass(self, pass_, before, after):
        try:
            after.validate()
        except IRError as e:
            raise PostconditionError(f"produced an invalid graph: {e}", pass_name=pass_name(pass_),
                                     hint="the pass broke an IR invariant; this is a bug in the pass") from e


class CheckPreserved(PassInstrument):
    """Check numerically (eval mode, see ``check_preserved``) after every pass declared
    ``preserves="function"``. Keeps every report in ``reports`` and adds the errors to the records.

    Args:
        atol, rtol, n, seed: passed to ``check_preserved``.
    """

    def __init__(self, *, atol: float = 1e-5, rtol: float = 1e-4, n: int = 4, seed: int = 0) -> None:
        self.atol, self.rtol, self.n, self.seed = atol, rtol, n, seed
        self.reports: list[tuple[str, PreservationReport]] = []
        self._last: PreservationReport | None = None

    def run_before_pass(self, pass_, g):
        self._last = None

    def run_after_pass(self, pass_, before, after):
        if preserves_of(pass_) != "function":
            return
        rep = check_preserved(before, after, n=self.n, seed=self.seed, atol=self.atol, rtol=self.rtol)
        self._last = rep
        self.reports.append((pass_name(pass_), rep))

    def annotate(self, record: PassRecord) -> None:
        if self._last is not None:
            record.max_abs, record.max_rel = self._last.max_abs, self._last.max_rel
            record.check_seconds = self._last.seconds


class Timing(PassInstrument):
    """Wall time per pass (instruments that run before it included, those after excluded).

    ``timings`` is a list of ``(name, seconds)``; ``summary()`` a small table.
    """

    def __init__(self) -> None:
        self.timings: list[tuple[str, float]] = []
        self._t0 = 0.0

    def run_before_pass(self, pass_, g):
        self._t0 = time.perf_counter()

    def run_after_pass(self, pass_, before, after):
        self.timings.append((pass_name(pass_), time.perf_counter() - self._t0))

    def summary(self) -> str:
        total = sum(s for _, s in self.timings)
        lines = [f"{i:3d} {n:<24} {s * 1e3:9.2f} ms" for i, (n, s) in enumerate(self.timings, 1)]
        return "\n".join(lines + [f"    {'total':<24} {total * 1e3:9.2f} ms"])


class DumpIR(PassInstrument):
    """Save the graph before the pipeline and after every pass with ``archir.save``:
    ``dir/000_input.json``, ``dir/001_deepen.json``, ... (each with its ``.safetensors``).

    Args:
        directory: where to write (created if missing).
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.dir = Path(directory)
        self.paths: list[Path] = []
        self._i = 0

    def run_before_pipeline(self, g):
        self.dir.mkdir(parents=True, exist_ok=True)
        self._i = 0
        self.paths.append(archir.save(g, self.dir / "000_input.json"))

    def run_after_pass(self, pass_, before, after):
        self._i += 1
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", pass_name(pass_)).strip("_.") or "pass"
        self.paths.append(archir.save(after, self.dir / f"{self._i:03d}_{safe}.json"))


def _hook(inst: Any, name: str) -> Callable | None:
    fn = getattr(inst, name, None)
    return fn if callable(fn) else None


class PassManager:
    """Run passes in order, with instruments, keeping a :class:`PassRecord` per pass.

    Args:
        passes: callables ``Graph -> Graph`` (``bind(pass, **kw)`` or ``functools.partial``).
        instruments: objects with any of the hooks listed in this module's docstring, e.g.
            ``(Verify(), CheckPreserved(atol=1e-5), Timing(), DumpIR("dump"))``.

    Example:
        >>> pm = PassManager([bind(passes.deepen, after="l0.relu"), bind(passes.insert_bn, after="l1.conv")],
        ...                  instruments=[Verify(), CheckPreserved()])       # doctest: +SKIP
        >>> g2 = pm.run(g)                                                   # doctest: +SKIP
        >>> print(*pm.records, sep="\\n")                                    # doctest: +SKIP
    """

    def __init__(self, passes: Iterable[Callable[[Graph], Graph]], instruments: Sequence[Any] = ()) -> None:
        self.passes = list(passes)
        for i, p in enumerate(self.passes, 1):
            if not callable(p):
                raise TypeError(f"pass {i} is {p!r}, not a callable Graph -> Graph (use bind(fn, **kwargs))")
        self.instruments = list(instruments)
        self.records: list[PassRecord] = []

    def _fail(self, i: int, p: Callable, done: list[str], e: BaseException) -> PassError:
        name = pass_name(p)
        where = f"pass {i} {name!r} failed after: {', '.join(done) if done else '(nothing)'}"
        if isinstance(e, PassError):
            new = copy.copy(e)
            new.message = f"{where}: {e.message}"
            new.pass_name = None  # the prefix already names it
            new.args = (new._format(),)
            return new
        return PassError(f"{where}: {type(e).__name__}: {e}")

    def run(self, g: Graph) -> Graph:
        """Run the pipeline on ``g`` and return the result (``g`` is not changed).

        Raises:
            PassError: a pass or an instrument failed; same class as the cause when it is a
                ``PassError`` (``PreconditionError``, ``FunctionNotPreserved`` ...), raised ``from`` it,
                naming the pass, its position and the passes before it.
        """
        self.records = []
        for inst in self.instruments:
            if (h := _hook(inst, "run_before_pipeline")):
                h(g)
        done: list[str] = []
        for i, p in enumerate(self.passes, 1):
            name = pass_name(p)
            try:
                for inst in self.instruments:
                    if (h := _hook(inst, "run_before_pass")):
                        h(p, g)
                t0 = time.perf_counter()
                out = p(g)
                seconds = time.perf_counter() - t0
                if out is g or not isinstance(out, Graph):
                    raise PostconditionError(
                        "returned its input graph object" if out is g else f"returned {type(out).__name__}",
                        hint="a pass returns a new archir.Graph (declare it with @graph_pass to get this checked)")
                for inst in self.instruments:
                    if (h := _hook(inst, "run_after_pass")):
                        h(p, g, out)
            except Exception as e:
                raise self._fail(i, p, done, e) from e
            rec = PassRecord(i, name, repr(p) if isinstance(p, BoundPass) else name, seconds, len(g), len(out))
            for inst in self.instruments:
                if (h := _hook(inst, "annotate")):
                    h(rec)
            self.records.append(rec)
            done.append(name)
            g = out
        for inst in self.instruments:
            if (h := _hook(inst, "run_after_pipeline")):
                h(g)
        return g

    __call__ = run

    def report(self) -> str:
        """The records, one line per pass."""
        return "\n".join(str(r) for r in self.records)
