"""``PassManager``: run a pipeline of passes with instruments (after TVM's ``Sequential`` + ``PassInstrument``).

A pass is any callable ``Graph -> Graph``: a ``@graph_pass`` function bound to its arguments
with :func:`bind` (or ``functools.partial``). Instruments observe the pipeline through hooks,
each optional:

- ``run_before_pipeline(g)`` / ``run_after_pipeline(g)``
- ``run_before_pass(pass_, g)`` / ``run_after_pass(pass_, before, after)``
- ``annotate(record)``: add figures to the :class:`PassRecord` of the pass that just ran

Built in (defined in :mod:`passes.infra`, where ``@graph_pass`` runs them for every pass call):
:class:`Verify` (validate after each pass), :class:`CheckPreserved` (numeric check where a pass
declares ``preserves="function"``), :class:`Timing`, :class:`DumpIR` (one JSON file per step:
``000_input.json``, ``001_deepen.json``, ...).

The manager is one user of the pass context (``passes.instruments``): each step runs its
explicit instruments *and* the ambient ones (``with passes.instruments(...)`` blocks,
``ARCHIR_VERIFY=1``), each once; the pipeline hooks go to its explicit instruments only. A
manager that runs inside a pass (canonicalize's fixed point) is nested: ambient instruments
see its steps only when they observe nested passes (``nested = True``).

``PassManager(..., until_fixed_point=True)`` repeats the pipeline until a whole round changes
nothing (``passes.changed``); :func:`fixed_point` makes such a pipeline one pass.

A failing pass (or instrument) raises an error of the same class as the cause (any
``ArchirError``: ``PreconditionError``, ``FunctionNotPreserved``, ``IRError`` ...), naming the
pass, its position and the passes that ran before it:
``pass 3 'widen' failed after: deepen, insert_bn: ...``. Any other exception is a bug and
propagates unchanged, with that line added as a note.
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from archir import Graph
from archir.errors import ArchirError

from passes._util import fmt_call
from passes.infra import (CheckPreserved, DumpIR, PassInstrument, PostconditionError, Timing, Verify,
                          _DEPTH, _hook, _nested, active_instruments, changed, graph_pass, pass_name, preserves_of,
                          run_after, run_before)

__all__ = ["PassManager", "PassRecord", "PassInstrument", "Verify", "CheckPreserved", "Timing", "DumpIR", "bind",
           "preserves_of", "fixed_point"]


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


def _graph_pass_of(p: Callable) -> Callable | None:
    """The ``@graph_pass`` wrapper that calling ``p`` calls first (through ``bind``/``partial``), if any."""
    while True:
        if isinstance(p, BoundPass):
            p = p.fn
        elif isinstance(p, functools.partial):
            p = p.func
        else:
            break
    return p if hasattr(p, "pass_name") and hasattr(p, "__wrapped__") and hasattr(p, "preserves") else None


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
        round: the round of a fixed-point pipeline (1 otherwise).
        changed: whether the pass changed the graph (``passes.changed``).
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
    round: int = 1
    changed: bool | None = None

    @property
    def node_delta(self) -> int:
        return self.nodes_after - self.nodes_before

    def __str__(self) -> str:
        err = "" if self.max_abs is None else f", max_abs={self.max_abs:.3g}, max_rel={self.max_rel:.3g}"
        rnd = "" if self.round == 1 else f" [round {self.round}]"
        same = ", unchanged" if self.changed is False else ""
        return f"{self.index:3d} {self.call}{rnd}: {self.seconds * 1e3:.1f} ms, nodes {self.node_delta:+d}{same}{err}"


class PassManager:
    """Run passes in order, with instruments, keeping a :class:`PassRecord` per pass.

    Args:
        passes: callables ``Graph -> Graph`` (``bind(pass, **kw)`` or ``functools.partial``).
        instruments: objects with any of the hooks listed in this module's docstring, e.g.
            ``(Verify(), CheckPreserved(), Timing(), DumpIR("dump"))``. The ambient
            instruments (``passes.instruments`` blocks, ``ARCHIR_VERIFY=1``) run too, after these.
        until_fixed_point: repeat the pipeline until a whole round changes nothing
            (``passes.changed``); the records then hold every round (``PassRecord.round``).
        max_rounds: the most rounds of a fixed-point pipeline; a pipeline still changing the
            graph after them raises ``PostconditionError``.

    Example:
        >>> pm = PassManager([bind(passes.deepen, after="l0.relu"), bind(passes.insert_bn, after="l1.conv")],
        ...                  instruments=[Verify(), CheckPreserved()])       # doctest: +SKIP
        >>> g2 = pm.run(g)                                                   # doctest: +SKIP
        >>> print(*pm.records, sep="\\n")                                    # doctest: +SKIP
    """

    def __init__(self, passes: Iterable[Callable[[Graph], Graph]], instruments: Sequence[Any] = (), *,
                 until_fixed_point: bool = False, max_rounds: int = 100) -> None:
        self.passes = list(passes)
        for i, p in enumerate(self.passes, 1):
            if not callable(p):
                raise TypeError(f"pass {i} is {p!r}, not a callable Graph -> Graph (use bind(fn, **kwargs))")
        if not isinstance(max_rounds, int) or max_rounds < 1:
            raise ValueError(f"max_rounds must be a positive int, got {max_rounds!r}")
        self.instruments = list(instruments)
        self.until_fixed_point = bool(until_fixed_point)
        self.max_rounds = max_rounds
        self.records: list[PassRecord] = []
        self.rounds = 0

    def _where(self, i: int, p: Callable, done: list[str], rnd: int) -> str:
        at = f" (round {rnd})" if rnd > 1 else ""
        return f"pass {i} {pass_name(p)!r}{at} failed after: {', '.join(done) if done else '(nothing)'}"

    @staticmethod
    def _fail(where: str, e: ArchirError) -> ArchirError:
        new = copy.copy(e)
        new.where = dict(e.where)
        new.message = f"{where}: {e.message}"
        new.pass_name = None  # the prefix already names it
        return new.refresh()

    def run(self, g: Graph) -> Graph:
        """Run the pipeline on ``g`` and return the result (``g`` is not changed).

        Raises:
            ArchirError: a pass or an instrument failed with a user-facing error; the same class
                as the cause (``PreconditionError``, ``FunctionNotPreserved``, ``IRError`` ...), raised
                ``from`` it, naming the pass, its position and the passes before it.
            PostconditionError: a fixed-point pipeline still changed the graph after ``max_rounds``.
            Exception: any other exception (a bug) propagates unchanged, with a note naming the pass.
        """
        self.records = []
        self.rounds = 0
        insts = active_instruments(self.instruments, depth=_DEPTH.get())
        for inst in self.instruments:
            if (h := _hook(inst, "run_before_pipeline")):
                h(g)
        for rnd in range(1, self.max_rounds + 1):
            self.rounds = rnd
            done: list[str] = []
            round_changed: list[str] = []
            for i, p in enumerate(self.passes, 1):
                name = pass_name(p)
                try:
                    with _nested(claim=_graph_pass_of(p)):
                        run_before(insts, p, g)
                        t0 = time.perf_counter()
                        out = p(g)
                        seconds = time.perf_counter() - t0
                        if out is g or not isinstance(out, Graph):
                            raise PostconditionError(
                                "returned its input graph object" if out is g else f"returned {type(out).__name__}",
                                hint="a pass returns a new archir.Graph (declare it with @graph_pass to get this "
                                     "checked)")
                        run_after(insts, p, g, out)
                except ArchirError as e:
                    raise self._fail(self._where(i, p, done, rnd), e) from e
                except Exception as e:  # a bug: keep its type and traceback
                    e.add_note(f"in {self._where(i, p, done, rnd)}")
                    raise
                ch = changed(g, out)
                rec = PassRecord(i, name, repr(p) if isinstance(p, BoundPass) else name, seconds, len(g), len(out),
                                 round=rnd, changed=ch)
                for inst in insts:
                    if (h := _hook(inst, "annotate")):
                        h(rec)
                self.records.append(rec)
                done.append(name)
                if ch:
                    round_changed.append(name)
                g = out
            if not self.until_fixed_point or not round_changed:
                break
        else:
            e = PostconditionError(
                f"the pipeline {', '.join(pass_name(p) for p in self.passes)} did not reach a fixed point in "
                f"{self.max_rounds} rounds (the last round changed the graph in: {', '.join(round_changed)})",
                hint="two passes undo each other, or one always changes the graph (a bug in a pass); "
                     "or raise max_rounds")
            e.bug = True  # not the user's input: keep the traceback (archir.errors.is_user_error)
            raise e
        for inst in self.instruments:
            if (h := _hook(inst, "run_after_pipeline")):
                h(g)
        return g

    __call__ = run

    def report(self) -> str:
        """The records, one line per pass."""
        return "\n".join(str(r) for r in self.records)


def _weakest(promises: Sequence[str | None]) -> str | None:
    if all(p == "function" for p in promises):
        return "function"
    if all(p in ("function", "shape") for p in promises):
        return "shape"  # a function-preserving pass keeps the interface shapes too
    return None


def fixed_point(passes: Iterable[Callable[[Graph], Graph]], *, max_rounds: int = 100,
                name: str | None = None) -> Callable[[Graph], Graph]:
    """One pass that repeats ``passes`` in order until a whole round changes nothing.

    It is a ``@graph_pass`` promising what every one of ``passes`` promises (``"function"`` if all
    do, else ``"shape"`` if all keep shapes, else nothing); the passes inside it are nested, so
    ambient instruments check the fixed point's result once (see ``passes.infra``).

    Args:
        passes: callables ``Graph -> Graph`` (``bind(pass, **kw)``, ``functools.partial``).
        max_rounds: the most rounds (``PostconditionError`` after them).
        name: the pass name (default ``fixed_point(a, b, ...)``).

    Returns:
        A pass ``fn(g) -> Graph`` (``PassManager(passes, until_fixed_point=True).run``).

    Example:
        >>> import archir.samples as S, passes
        >>> simplify = fixed_point([passes.eliminate_identity, passes.eliminate_dead], name="simplify")
        >>> simplify.pass_name, simplify.preserves
        ('simplify', 'function')
        >>> len(simplify(S.chain())) == len(S.chain())
        True
    """
    steps = list(passes)
    PassManager(steps, max_rounds=max_rounds)  # checks the arguments now, not at the first call
    pname = name or f"fixed_point({', '.join(pass_name(p) for p in steps)})"

    @graph_pass(preserves=_weakest([preserves_of(p) for p in steps]), name=pname)
    def run(g: Graph) -> Graph:
        out = PassManager(steps, until_fixed_point=True, max_rounds=max_rounds).run(g)
        return g.copy() if out is g else out

    return run
