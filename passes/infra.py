"""Pass infrastructure: the error hierarchy and the ``@graph_pass`` decorator.

A pass is a plain function ``fn(g: Graph, *args, **kwargs) -> Graph`` that returns a *new*
graph and leaves its input alone. ``@graph_pass(preserves=...)`` declares what the pass
promises and enforces the contract (as onnxscript's pass infrastructure does):

- returning the input object is an error addressed to the pass author;
- returning something that is not a ``Graph`` is an error;
- the input graph must not change (a cheap check: nodes, edges, inputs, outputs, and the
  identity of every node's attrs/params/buffers dicts; arrays are read-only anyway);
- an unexpected exception is wrapped in :class:`PassError` naming the pass (``raise ... from``
  the cause), while :class:`PreconditionError` (the pass cannot apply here, with the reason)
  and ``archir.IRError`` pass through with the pass name added to their message.

Errors::

    archir.errors.ArchirError
      PassError (RuntimeError)     a pass failed (names the pass)
        PreconditionError          the pass cannot apply to this target; says why
        PostconditionError         the pass broke its contract
          FunctionNotPreserved     a pass that promised to keep the function did not
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from archir import Graph, IRError
from archir.errors import ArchirError

__all__ = ["PassError", "PreconditionError", "PostconditionError", "FunctionNotPreserved", "graph_pass",
           "PRESERVES", "pass_name"]

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


def graph_pass(preserves: str | None = None, name: str | None = None) -> Callable[[Callable], Callable]:
    """Declare a function ``fn(g, *args, **kwargs) -> Graph`` as a pass and enforce its contract.

    Args:
        preserves: what the pass promises: ``"function"`` (outputs equal within tolerance in
            eval mode; ``PassManager`` checks it numerically with the ``CheckPreserved``
            instrument), ``"shape"`` (graph interface shapes only), or ``None``.
        name: the pass name used in messages and records (default: the function's name).

    Returns:
        A decorator. The wrapper carries ``.pass_name``, ``.preserves`` and ``.__wrapped__``.

    Raises (from the wrapped pass):
        PreconditionError: the pass cannot apply (raised by the pass; the pass name is added).
        archir.IRError: the pass built an invalid graph or got a bad argument (pass name added).
        PostconditionError: the pass returned its input object or a non-Graph, or changed its input.
        PassError: any other exception, wrapped (``from`` the cause) and naming the pass.

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

        @functools.wraps(fn)
        def wrapper(g: Graph, *args: Any, **kwargs: Any) -> Graph:
            if not isinstance(g, Graph):
                raise PassError(f"expects an archir.Graph as its first argument, got {type(g).__name__}",
                                pass_name=pname, hint=f"call {pname}(graph, ...)")
            before = _fingerprint(g)
            try:
                out = fn(g, *args, **kwargs)
            except PassError as e:
                raise e.with_pass(pname)
            except IRError as e:
                raise e.with_where(pass_name=pname)
            except Exception as e:
                raise PassError(f"failed with {type(e).__name__}: {e}", pass_name=pname,
                                hint="this is a bug in the pass (or a bad argument); see the cause above") from e
            if out is g:
                raise PostconditionError(
                    "returned its input graph object; a pass must return a new graph",
                    pass_name=pname,
                    hint="start the pass with `g = g.copy()` and edit the copy (Graph.copy() shares the "
                         "read-only arrays, so it is cheap); assign new arrays with set_params()")
            if not isinstance(out, Graph):
                raise PostconditionError(f"returned {type(out).__name__}, not an archir.Graph", pass_name=pname,
                                         hint="a pass returns the new graph (return extra results another way)")
            changed = _same(before, _fingerprint(g))
            if changed:
                raise PostconditionError(
                    f"changed its input graph: {changed}", pass_name=pname,
                    hint="graphs are values: edit a copy (`g = g.copy()`), never the graph you were given")
            return out

        wrapper.pass_name = pname
        wrapper.preserves = preserves
        return wrapper

    return decorate
