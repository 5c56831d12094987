"""Pass infrastructure: errors, the ``@graph_pass`` decorator, and the pass context with its instruments.

A pass is a plain function ``fn(g: Graph, *args, **kwargs) -> Graph`` that returns a *new*
graph and leaves its input alone. ``@graph_pass(preserves=...)`` declares what the pass
promises and enforces the contract (as onnxscript's pass infrastructure does):

- returning the input object is an error addressed to the pass author;
- returning something that is not a ``Graph`` is an error;
- the input graph must not change (a cheap check: nodes, edges, inputs, outputs, and the
  identity of every node's attrs/params/buffers dicts; arrays are read-only anyway);
- a user-facing error (any ``archir.errors.ArchirError``: :class:`PreconditionError`, the pass
  cannot apply here and says why; ``archir.IRError`` ...) passes through with the pass name added
  to its place; any other exception is a bug (of the pass, or of archir) and propagates
  *unchanged*, keeping its type and traceback, with a note ``in pass 'name'``
  (``BaseException.add_note``).

**The pass context** (after TVM's ``PassContext`` + ``PassInstrument``). Instruments observe pass
calls through optional hooks ``run_before_pass(pass_, g)`` and ``run_after_pass(pass_, before,
after)`` (a ``PassManager`` also calls ``run_before_pipeline(g)``, ``run_after_pipeline(g)`` and
``annotate(record)``). They are active for every ``@graph_pass`` call, whoever makes it (a user,
a search driver, pruning, canonicalize, a ``PassManager``):

- inside ``with passes.instruments(Verify(), Timing(), DumpIR("dump")):`` (a
  ``contextvars.ContextVar``: per thread and per asyncio task; blocks nest and add up);
- for the whole process when the environment has ``ARCHIR_VERIFY=1``: a :class:`Verify` and a
  :class:`CheckPreserved` (the test suite sets it; an instrument of the same class in a block
  or a ``PassManager`` replaces the process one, so nothing runs twice).

*Nested passes.* A pass called inside another pass (canonicalize's rules, a helper pass of
pruning, the steps of a ``PassManager`` that runs inside a pass) is part of the outer pass. By
default an instrument sees only the **outermost** pass calls (depth 0): the outer result is
verified and checked once, which covers the inner ones, and the cost stays linear in the work
the caller asked for. An instrument with ``nested = True`` (``Timing(nested=True)``,
``Verify(nested=True)`` ...) sees every call at every depth.

*Did a pass change anything?* :func:`changed(before, after) <changed>` compares the structure,
attrs and weights of two graphs (weights by identity first: ``Graph.copy()`` shares the arrays),
so a pass keeps the plain ``fn(g) -> Graph`` API and a ``PassManager(...,
until_fixed_point=True)`` (or ``passes.fixed_point``) repeats passes until none changes the graph.

Errors::

    archir.errors.ArchirError
      PassError (RuntimeError)     a pass failed (names the pass)
        PreconditionError          the pass cannot apply to this target; says why
        PostconditionError         the pass broke its contract
          FunctionNotPreserved     a pass that promised to keep the function did not
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

import archir
from archir import Graph, IRError
from archir.errors import ArchirError

__all__ = ["PassError", "PreconditionError", "PostconditionError", "FunctionNotPreserved", "graph_pass",
           "PRESERVES", "pass_name", "preserves_of", "changed", "instruments", "active_instruments",
           "verify_from_env", "VERIFY_ENV", "PassInstrument", "Verify", "CheckPreserved", "Timing", "DumpIR"]

#: what a pass may promise: the computed function (within tolerance, eval mode), only the
#: interface shapes, or nothing.
PRESERVES = ("function", "shape", None)


class PassError(ArchirError, RuntimeError):
    """A pass failed. The message names the pass (and the node, when there is one).

    Args:
        message: what went wrong.
        pass_name: the pass that failed (added by ``@graph_pass`` when left out).
        node: the node id where it went wrong, if any.
        hint: how to mend it.
        where: other places (``file``, ``candidate``), as for ``archir.errors.ArchirError``.

    Attributes:
        message, pass_name, node, hint: as given; ``str(e)`` formats them together.
    """

    def __init__(self, message: str, *, pass_name: str | None = None, node: str | None = None,
                 hint: str | None = None, **kw: Any) -> None:
        super().__init__(message, pass_name=pass_name, node=node, hint=hint, **kw)

    def with_pass(self, name: str) -> "PassError":
        """Set the pass name if none is set yet (re-formatting the message); returns ``self``."""
        return self.with_where(pass_name=name)


class PreconditionError(PassError):
    """The pass cannot apply to this graph or target; the message says why.

    Search drivers catch this to skip an illegal move (and log the reason).
    """


class PostconditionError(PassError):
    """The pass ran but broke its contract (mutated its input, returned the input, ...)."""


class FunctionNotPreserved(PostconditionError):
    """A graph that should compute the same function does not (see ``passes.check_preserved``).

    Attributes:
        report: the :class:`passes.check.PreservationReport` (``None`` for an interface mismatch).
    """

    def __init__(self, message: str, *, report: Any = None, **kw: Any) -> None:
        self.report = report
        super().__init__(message, **kw)


def pass_name(p: Callable) -> str:
    """The name of a pass: ``.pass_name``, else the wrapped function's name (through ``partial``)."""
    name = getattr(p, "pass_name", None)
    if name:
        return name
    if isinstance(p, functools.partial):
        return pass_name(p.func)
    return getattr(p, "__name__", type(p).__name__)


def _fingerprint(g: Graph) -> tuple:
    """What a pass must not change in its input: structure and the identity of per-node dicts.

    ``Graph.set_params``/``set_buffers``/``set_attrs`` replace a node's dict, so holding the
    dicts themselves (not their ids, which could be reused) detects every edit made through
    the Graph API at O(nodes + edges) cost, without hashing any array.
    """
    nxg = g.nx
    nodes = tuple((n, d["op"], d["attrs"], d["params"], d["buffers"]) for n, d in nxg.nodes(data=True))
    edges = frozenset(nxg.edges(keys=True, data="port"))
    return nodes, edges, g.inputs, g.outputs, tuple(g.arch.items())


def _same(a: tuple, b: tuple) -> str | None:
    """None if the fingerprints agree, else a short description of the first difference."""
    (na, ea, ia, oa, xa), (nb, eb, ib, ob, xb) = a, b
    if len(na) != len(nb):
        return f"its node count changed from {len(na)} to {len(nb)}"
    if ea != eb:
        return f"its edges changed ({len(ea)} -> {len(eb)} edges)"
    if ia != ib or oa != ob:
        return f"its inputs/outputs changed from {list(ia)}/{list(oa)} to {list(ib)}/{list(ob)}"
    for x, y in zip(na, nb):
        if x[0] != y[0] or x[1] != y[1]:
            return f"node {x[0]!r} changed"
        for what, u, v in zip(("attrs", "params", "buffers"), x[2:], y[2:]):
            if u is not v:
                return f"the {what} of node {x[0]!r} were reassigned"
    if len(xa) != len(xb) or any(k1 != k2 or v1 is not v2 for (k1, v1), (k2, v2) in zip(xa, xb)):
        return "its architecture logits (g.arch) changed"
    return None


def preserves_of(p: Callable) -> str | None:
    """What a pass promises (``.preserves``), looking through ``functools.partial``."""
    while isinstance(p, functools.partial) and not hasattr(p, "preserves"):
        p = p.func
    return getattr(p, "preserves", None)


def _same_arrays(a: dict, b: dict) -> bool:
    if a is b:
        return True
    if a.keys() != b.keys():
        return False
    for k, x in a.items():
        y = b[k]
        # shared (Graph.copy) arrays are the common case; equal new arrays count as unchanged
        if x is not y and (x.shape != y.shape or x.dtype != y.dtype or not np.array_equal(x, y)):
            return False
    return True


def changed(before: Graph, after: Graph) -> bool:
    """Whether ``after`` differs from ``before``: nodes (ids, ops, attrs), edges and ports, graph
    inputs and outputs, params, buffers and architecture logits.

    Arrays compare by identity first (``Graph.copy()`` shares them), then by value, so a pass
    that copies its input and edits nothing has not changed it, and neither has one that
    reassigns equal weights. ``meta`` and the inferred types are not compared (the types follow
    from the rest). Node *order* does not count. Cost: O(nodes + edges), plus the values of
    arrays that were reassigned.

    This is how a pass "reports" that it did something while keeping the plain
    ``fn(g) -> Graph`` API: ``PassRecord.changed`` holds it, and ``PassManager(...,
    until_fixed_point=True)`` stops after a round in which no pass changed the graph.

    Example:
        >>> import archir.samples as S, passes
        >>> g = S.chain()
        >>> changed(g, g.copy()), changed(g, passes.fold_batchnorm(g))
        (False, True)
    """
    if before is after:
        return False
    a, b = before.nx, after.nx
    if a.number_of_nodes() != b.number_of_nodes() or a.number_of_edges() != b.number_of_edges():
        return True
    if tuple(before.inputs) != tuple(after.inputs) or tuple(before.outputs) != tuple(after.outputs):
        return True
    bn = b.nodes
    for n, d in a.nodes(data=True):
        if n not in bn:
            return True
        e = bn[n]
        if d["op"] != e["op"] or d["attrs"] != e["attrs"]:
            return True
        if not _same_arrays(d["params"], e["params"]) or not _same_arrays(d["buffers"], e["buffers"]):
            return True
    if set(a.edges(data="port")) != set(b.edges(data="port")):
        return True
    return not _same_arrays(before.arch, after.arch)


# --------------------------------------------------------------------------- the pass context

#: the environment variable that turns on Verify + CheckPreserved for every pass of the process
VERIFY_ENV = "ARCHIR_VERIFY"

_CONTEXT: contextvars.ContextVar[tuple] = contextvars.ContextVar("archir_pass_instruments", default=())
_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("archir_pass_depth", default=0)
# the graph_pass wrapper whose call a PassManager instruments itself (so the wrapper does not again)
_CLAIM: contextvars.ContextVar[Any] = contextvars.ContextVar("archir_pass_claim", default=None)
_ENV_INSTRUMENTS: tuple | None = None


def verify_from_env() -> bool:
    """True when ``ARCHIR_VERIFY`` is set to something other than ``""``, ``0``, ``false``, ``no``, ``off``."""
    v = os.environ.get(VERIFY_ENV, "")
    return v.strip().lower() not in ("", "0", "false", "no", "off")


def _env_instruments() -> tuple:
    global _ENV_INSTRUMENTS
    if _ENV_INSTRUMENTS is None:  # one pair for the process; the reports are not kept (they would pile up)
        _ENV_INSTRUMENTS = (Verify(), CheckPreserved(keep_reports=False))
    return _ENV_INSTRUMENTS


def _merge(first: Sequence[Any], ambient: Sequence[Any]) -> list:
    out = list(first)
    seen = {id(i) for i in out}
    for i in ambient:
        if id(i) not in seen:
            seen.add(id(i))
            out.append(i)
    return out


def active_instruments(explicit: Sequence[Any] = (), *, depth: int | None = None) -> list:
    """The instruments that observe a pass call made now: ``explicit`` (a ``PassManager``'s),
    then those of the enclosing ``with instruments(...)`` blocks (outer first), then the process
    ones of ``ARCHIR_VERIFY=1`` whose class none of the others has. Each instance once.

    Args:
        explicit: instruments given for this call (they always run).
        depth: the nesting depth of the call (default: the current one). Below the outermost
            pass call (``depth > 0``) only ambient instruments with ``nested = True`` are kept.
    """
    depth = _DEPTH.get() if depth is None else depth
    ambient = list(_CONTEXT.get())
    if verify_from_env():
        kinds = {type(i) for i in (*explicit, *ambient)}
        ambient += [i for i in _env_instruments() if type(i) not in kinds]
    if depth > 0:
        ambient = [i for i in ambient if getattr(i, "nested", False)]
    return _merge(explicit, ambient)


@contextlib.contextmanager
def instruments(*insts: Any) -> Iterator[tuple]:
    """Make ``insts`` observe every pass called inside the block, directly or not.

    Blocks nest: an inner block adds its instruments to the outer ones. The block yields the
    instruments given, so ``with passes.instruments(Timing()) as (t,):`` keeps a handle.

    Args:
        insts: objects with any of the hooks (``run_before_pass``, ``run_after_pass``); see
            :class:`PassInstrument`.

    Example:
        >>> import archir.samples as S, passes
        >>> with passes.instruments(passes.Verify(), passes.Timing()) as (_, t):
        ...     g2 = passes.deepen(S.chain(), after="l0.relu")
        >>> [name for name, _ in t.timings]
        ['deepen']
    """
    for i in insts:
        if not any(callable(getattr(i, h, None)) for h in _HOOKS):
            raise TypeError(f"{i!r} is not a pass instrument: it has none of the hooks {', '.join(_HOOKS)}")
    token = _CONTEXT.set(tuple(_merge(_CONTEXT.get(), insts)))
    try:
        yield insts
    finally:
        _CONTEXT.reset(token)


_HOOKS = ("run_before_pass", "run_after_pass", "run_before_pipeline", "run_after_pipeline", "annotate")


def _hook(inst: Any, name: str) -> Callable | None:
    fn = getattr(inst, name, None)
    return fn if callable(fn) else None


def run_before(insts: Sequence[Any], pass_: Callable, g: Graph) -> None:
    """Call ``run_before_pass`` of each instrument (used by ``@graph_pass`` and ``PassManager``)."""
    for inst in insts:
        if (h := _hook(inst, "run_before_pass")):
            h(pass_, g)


def run_after(insts: Sequence[Any], pass_: Callable, before: Graph, after: Graph) -> None:
    """Call ``run_after_pass`` of each instrument; an ``ArchirError`` it raises names the pass."""
    for inst in insts:
        if (h := _hook(inst, "run_after_pass")):
            try:
                h(pass_, before, after)
            except ArchirError as e:
                raise e.with_where(pass_name=pass_name(pass_))


@contextlib.contextmanager
def _nested(claim: Any = None) -> Iterator[None]:
    """Run the block one level deeper; ``claim`` is the ``@graph_pass`` wrapper the caller instruments."""
    d, c = _DEPTH.set(_DEPTH.get() + 1), _CLAIM.set(claim)
    try:
        yield
    finally:
        _CLAIM.reset(c)
        _DEPTH.reset(d)


def graph_pass(preserves: str | None = None, name: str | None = None) -> Callable[[Callable], Callable]:
    """Declare a function ``fn(g, *args, **kwargs) -> Graph`` as a pass and enforce its contract.

    Every call runs the active instruments (:func:`instruments` blocks, ``ARCHIR_VERIFY=1``; see
    the module docstring): outermost calls by default, nested ones for ``nested = True`` instruments.

    Args:
        preserves: what the pass promises: ``"function"`` (outputs equal within tolerance in
            eval mode; the ``CheckPreserved`` instrument checks it numerically), ``"shape"``
            (graph interface shapes only), or ``None``.
        name: the pass name used in messages and records (default: the function's name).

    Returns:
        A decorator. The wrapper carries ``.pass_name``, ``.preserves`` and ``.__wrapped__``.

    Raises (from the wrapped pass):
        PreconditionError: the pass cannot apply (raised by the pass; the pass name is added).
        archir.IRError: the pass built an invalid graph or got a bad argument (pass name added);
            likewise any other ``ArchirError``.
        PostconditionError: the pass returned its input object or a non-Graph, or changed its input;
            or an instrument found a broken promise (``FunctionNotPreserved``, an invalid result).
        Exception: any other exception is a bug: it propagates unchanged (type and traceback),
            with the note ``in pass 'name'``.

    Example:
        >>> @graph_pass(preserves="function")
        ... def noop(g):
        ...     return g.copy()
        >>> noop.pass_name, noop.preserves
        ('noop', 'function')
    """
    if preserves not in PRESERVES:
        raise ValueError(f"preserves must be one of {PRESERVES}, got {preserves!r}")

    def decorate(fn: Callable) -> Callable:
        pname = name or fn.__name__

        def call(g: Graph, args: tuple, kwargs: dict) -> Graph:
            before = _fingerprint(g)
            try:
                out = fn(g, *args, **kwargs)
            except ArchirError as e:  # PreconditionError, IRError, ...: user-facing, with the pass named
                raise e.with_where(pass_name=pname)
            except Exception as e:  # a bug: keep its type and traceback
                e.add_note(f"in pass {pname!r}")
                raise
            if out is g:
                raise PostconditionError(
                    "returned its input graph object; a pass must return a new graph",
                    pass_name=pname,
                    hint="start the pass with `g = g.copy()` and edit the copy (Graph.copy() shares the "
                         "read-only arrays, so it is cheap); assign new arrays with set_params()")
            if not isinstance(out, Graph):
                raise PostconditionError(f"returned {type(out).__name__}, not an archir.Graph", pass_name=pname,
                                         hint="a pass returns the new graph (return extra results another way)")
            diff = _same(before, _fingerprint(g))
            if diff:
                raise PostconditionError(
                    f"changed its input graph: {diff}", pass_name=pname,
                    hint="graphs are values: edit a copy (`g = g.copy()`), never the graph you were given")
            return out

        @functools.wraps(fn)
        def wrapper(g: Graph, *args: Any, **kwargs: Any) -> Graph:
            if not isinstance(g, Graph):
                raise PassError(f"expects an archir.Graph as its first argument, got {type(g).__name__}",
                                pass_name=pname, hint=f"call {pname}(graph, ...)")
            if _CLAIM.get() is wrapper:  # a PassManager step: the manager runs the instruments
                token = _CLAIM.set(None)
                try:
                    return call(g, args, kwargs)
                finally:
                    _CLAIM.reset(token)
            insts = active_instruments()
            with _nested():
                if not insts:
                    return call(g, args, kwargs)
                run_before(insts, wrapper, g)
                out = call(g, args, kwargs)
                run_after(insts, wrapper, g, out)
                return out

        wrapper.pass_name = pname
        wrapper.preserves = preserves
        return wrapper

    return decorate


# --------------------------------------------------------------------------- instruments


class PassInstrument:
    """Base class of instruments (every hook is optional; this one does nothing).

    Attributes:
        nested: also observe passes called inside other passes (default ``False``: the
            outermost calls only; see the module docstring).
    """

    nested: bool = False

    def run_before_pipeline(self, g: Graph) -> None:
        pass

    def run_after_pipeline(self, g: Graph) -> None:
        pass

    def run_before_pass(self, pass_: Callable, g: Graph) -> None:
        pass

    def run_after_pass(self, pass_: Callable, before: Graph, after: Graph) -> None:
        pass


class Verify(PassInstrument):
    """Validate the graph after every pass; an invalid result raises ``PostconditionError`` naming the pass.

    Args:
        nested: also after passes called inside other passes.
    """

    def __init__(self, *, nested: bool = False) -> None:
        self.nested = nested

    def run_after_pass(self, pass_, before, after):
        try:
            after.validate()
        except IRError as e:
            raise PostconditionError(f"produced an invalid graph: {e}", pass_name=pass_name(pass_),
                                     hint="the pass broke an IR invariant; this is a bug in the pass") from e


class CheckPreserved(PassInstrument):
    """Check numerically (eval mode, see ``check_preserved``) after every pass declared
    ``preserves="function"``; a difference raises ``FunctionNotPreserved`` naming the pass. Keeps
    every report in ``reports`` and adds the errors to ``PassManager`` records.

    A supernet (a graph with ``choice`` nodes) computes a function only once its decisions are
    fixed, so its check is skipped and listed in ``skipped`` (check the derived graphs instead).

    Args:
        atol, rtol, n, seed: passed to ``check_preserved`` (``None``: its defaults; ``atol`` is a
            fraction of each output's scale, see ``passes.check``).
        nested: also check passes called inside other passes (the outer check covers them).
        keep_reports: keep ``(pass name, report)`` in ``reports`` (the process-wide instance of
            ``ARCHIR_VERIFY=1`` does not, or they would pile up).
    """

    def __init__(self, *, atol: float | None = None, rtol: float | None = None, n: int = 4, seed: int = 0,
                 nested: bool = False,
                 keep_reports: bool = True) -> None:
        self.atol, self.rtol, self.n, self.seed = atol, rtol, n, seed
        self.nested, self.keep_reports = nested, keep_reports
        self.reports: list[tuple[str, Any]] = []
        self.skipped: list[tuple[str, str]] = []
        self._last: Any = None

    def run_before_pass(self, pass_, g):
        self._last = None

    def run_after_pass(self, pass_, before, after):
        self._last = None
        if preserves_of(pass_) != "function":
            return
        from passes.check import check_preserved  # passes.check imports this module

        if any(d["op"] == "choice" for gr in (before, after) for _, d in gr.nx.nodes(data=True)):
            if self.keep_reports:
                self.skipped.append((pass_name(pass_), "a supernet (choice nodes): no function without decisions"))
            return
        try:
            tols = {k: v for k, v in (("atol", self.atol), ("rtol", self.rtol)) if v is not None}
            rep = check_preserved(before, after, n=self.n, seed=self.seed, **tols)
        except FunctionNotPreserved as e:
            e.hint = (f"{pass_name(pass_)} is declared @graph_pass(preserves='function'): {e.hint or ''}").rstrip()
            raise e.with_pass(pass_name(pass_))
        self._last = rep
        if self.keep_reports:
            self.reports.append((pass_name(pass_), rep))

    def annotate(self, record: Any) -> None:
        if self._last is not None:
            record.max_abs, record.max_rel = self._last.max_abs, self._last.max_rel
            record.check_seconds = self._last.seconds


class Timing(PassInstrument):
    """Wall time per pass (instruments that run before it included, those after excluded).

    ``timings`` is a list of ``(name, seconds)`` in the order the passes finish (with
    ``nested=True`` an inner pass comes before the pass that called it); ``summary()`` a small table.

    Args:
        nested: also time passes called inside other passes.
    """

    def __init__(self, *, nested: bool = False) -> None:
        self.nested = nested
        self.timings: list[tuple[str, float]] = []
        self._t0: list[float] = []

    def run_before_pass(self, pass_, g):
        self._t0.append(time.perf_counter())

    def run_after_pass(self, pass_, before, after):
        self.timings.append((pass_name(pass_), time.perf_counter() - self._t0.pop()))

    def summary(self) -> str:
        total = sum(s for _, s in self.timings)
        lines = [f"{i:3d} {n:<24} {s * 1e3:9.2f} ms" for i, (n, s) in enumerate(self.timings, 1)]
        return "\n".join(lines + [f"    {'total':<24} {total * 1e3:9.2f} ms"])


class DumpIR(PassInstrument):
    """Save the first input and the graph after every pass with ``archir.save``:
    ``dir/000_input.json``, ``dir/001_deepen.json``, ... (each with its ``.safetensors``).

    In a ``PassManager`` the input is the pipeline's (each run starts again at ``000``); in a
    ``with passes.instruments(DumpIR(dir))`` block it is the input of the first pass called.

    Args:
        directory: where to write (created if missing).
        nested: also dump after passes called inside other passes.
    """

    def __init__(self, directory: str | os.PathLike, *, nested: bool = False) -> None:
        self.dir = Path(directory)
        self.nested = nested
        self.paths: list[Path] = []
        self._i: int | None = None

    def _start(self, g: Graph) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._i = 0
        self.paths.append(archir.save(g, self.dir / "000_input.json"))

    def run_before_pipeline(self, g):
        self._start(g)

    def run_before_pass(self, pass_, g):
        if self._i is None:
            self._start(g)

    def run_after_pass(self, pass_, before, after):
        if self._i is None:
            self._start(before)
        self._i += 1
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", pass_name(pass_)).strip("_.") or "pass"
        self.paths.append(archir.save(after, self.dir / f"{self._i:03d}_{safe}.json"))
