"""The archir error hierarchy: one base, :class:`ArchirError`, for every user-facing error.

Every error says *what* is wrong, *where* (node id, pass, file, candidate) and *how to mend
it*. Every package derives its user-facing errors from :class:`ArchirError` (IR, pass,
frontend, cost, data, store, strategy, executor and config errors), so a caller (and the
command line, which prints it as one line plus ``how to fix`` and exits 2) catches one class.
Anything that is not an ``ArchirError`` is an archir bug and keeps its traceback.

::

    ArchirError                      message, where = {node, pass, file, candidate}, hint
      IRError (also ValueError)      a graph or a file is wrong
        GraphStructureError, OpSchemaError, ShapeError, WeightError, SerializationError, LoweringError
      passes.PassError (also RuntimeError)
      ... (costmodels, search: each package's own, all below ArchirError)

``IRError`` also derives from ``ValueError``: bad input is a value error, and code written
against plain Python conventions catches it.
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = [
    "ArchirError",
    "WHERE_KEYS",
    "is_user_error",
    "IRError",
    "GraphStructureError",
    "OpSchemaError",
    "ShapeError",
    "WeightError",
    "SerializationError",
    "LoweringError",
]

#: the places an error can name, in the order its message names them
WHERE_KEYS = ("file", "candidate", "pass", "node")


class ArchirError(Exception):
    """Base class of every user-facing archir error.

    Args:
        message: what is wrong.
        where: where it is wrong: a mapping with any of ``file``, ``candidate``, ``pass``,
            ``node`` (``None`` values are dropped). The keyword shortcuts ``node=``, ``file=``,
            ``candidate=`` and ``pass_name=`` fill the same mapping.
        hint: how to mend it (one line).
        context: extra lines shown under the message (e.g. the neighbourhood of a node).

    Attributes:
        message, where, hint, context: as given; ``node``, ``file``, ``candidate`` and
        ``pass_name`` read ``where``. ``str(e)`` is the message with its place, then
        ``how to fix: ...`` and the context; :meth:`one_line` is the first line alone.

    Example:
        >>> e = ArchirError("no such op", node="l0.conv", hint="use conv2d")
        >>> print(e)
        node 'l0.conv': no such op
          how to fix: use conv2d
    """

    def __init__(self, message: str, *, where: Mapping[str, Any] | None = None, hint: str | None = None,
                 context: str | None = None, node: str | None = None, file: Any = None, candidate: Any = None,
                 pass_name: str | None = None) -> None:
        w = dict(where or {})
        for k, v in (("node", node), ("file", file), ("candidate", candidate), ("pass", pass_name)):
            if v is not None:
                w.setdefault(k, v)
        self.message = message
        self.where = {k: w[k] for k in WHERE_KEYS if w.get(k) is not None}
        self.where.update({k: v for k, v in w.items() if k not in WHERE_KEYS and v is not None})
        self.hint = hint
        self.context = context
        super().__init__(self._format())

    # the places, read and written through ``where`` (setting one re-formats the message)
    def _get(self, key: str):
        return self.__dict__.get("where", {}).get(key)

    def _set(self, key: str, value: Any) -> None:
        if value is None:
            self.where.pop(key, None)
        else:
            self.where[key] = value

    node = property(lambda self: self._get("node"), lambda self, v: self._set("node", v))
    file = property(lambda self: self._get("file"), lambda self, v: self._set("file", v))
    candidate = property(lambda self: self._get("candidate"), lambda self, v: self._set("candidate", v))
    pass_name = property(lambda self: self._get("pass"), lambda self, v: self._set("pass", v))

    def _place(self) -> str:
        out = ""
        w = self.where
        if w.get("file") is not None:
            out += f"{w['file']}: "
        if w.get("candidate") is not None:
            out += f"candidate {w['candidate']}: "
        if w.get("pass") is not None:
            out += f"pass {w['pass']!r}: "
        if w.get("node") is not None:
            out += f"node {w['node']!r}: "
        return out

    def _format(self) -> str:
        text = self._place() + self.message
        if self.hint:
            text += f"\n  how to fix: {self.hint}"
        if self.context:
            text += "\n" + self.context
        return text

    def refresh(self) -> "ArchirError":
        """Re-format ``str(self)`` after ``message``/``where``/``hint`` changed; returns ``self``."""
        self.args = (self._format(),)
        return self

    def with_where(self, **where: Any) -> "ArchirError":
        """Fill places not set yet (``with_where(file="net.json")``), re-formatting; returns ``self``."""
        for k, v in where.items():
            k = "pass" if k == "pass_name" else k
            if v is not None and self.where.get(k) is None:
                self.where[k] = v
        return self.refresh()

    def one_line(self) -> str:
        """The first line of the message, with its place (what the CLI prints before ``how to fix``)."""
        return (str(self).strip().splitlines() or [""])[0]

    def __reduce__(self):  # keep the keyword fields across processes (process-pool and Ray executors)
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls, state):
    e = cls.__new__(cls)
    e.__dict__.update(state)
    Exception.__init__(e, e._format())
    return e


#: causes that do not make an error a bug: the environment (a path, a disk, a missing package)
_ENVIRONMENT = (OSError, ImportError)


def is_user_error(e: BaseException) -> bool:
    """True when ``e`` is a user-facing error: print it as one line plus ``how to fix``.

    That is an :class:`ArchirError` not marked as a bug (a class or instance attribute
    ``bug = True``, e.g. a pass manager's fixed point that never settles) whose ``__cause__``
    chain holds only ``ArchirError`` instances or environment errors (``OSError``, ``ImportError``). An
    ``ArchirError`` raised ``from`` any other exception (``raise PassError(...) from e`` around a
    ``ZeroDivisionError``) wraps an archir bug: it keeps its traceback (the command line lets it
    propagate; a search records the traceback with the failed candidate).

    Example:
        >>> is_user_error(ArchirError("bad option")), is_user_error(ValueError("x"))
        (True, False)
    """
    seen: set[int] = set()
    first = True
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ArchirError):
            if getattr(e, "bug", False):
                return False
        elif first or not isinstance(e, _ENVIRONMENT):
            return False
        first = False
        e = e.__cause__
    return True


class IRError(ArchirError, ValueError):
    """Base class of every archir error about a graph or a file.

    Args:
        message: what is wrong.
        node: the node id where it is wrong, if any.
        rule: the short name of the rule that was broken (``"port"``, ``"arity"`` ...).
        hint: how to mend it.
        context: extra lines shown under the message (e.g. the neighbourhood of a node).
        where: other places (``file``, ``pass`` ...), as for :class:`ArchirError`.
    """

    def __init__(self, message: str, *, node: str | None = None, rule: str | None = None, hint: str | None = None,
                 context: str | None = None, where: Mapping[str, Any] | None = None, **places: Any) -> None:
        self.rule = rule
        super().__init__(message, node=node, hint=hint, context=context, where=where, **places)

    def _place(self) -> str:
        rule = self.__dict__.get("rule")
        return (f"[{rule}] " if rule else "") + super()._place()


class GraphStructureError(IRError):
    """The wiring is wrong: a cycle, an unfilled or doubly filled port, a dangling id."""


class OpSchemaError(IRError):
    """An op is unknown, has the wrong number of inputs, or an attribute is invalid."""


class ShapeError(IRError):
    """Shapes do not fit: shape inference failed at a node."""


class WeightError(IRError):
    """A parameter or buffer is missing, has the wrong shape or dtype, or is not finite."""


class SerializationError(IRError):
    """A graph file (JSON structure or safetensors weights) cannot be read or written."""


class LoweringError(IRError):
    """A graph cannot be lowered to the requested backend (torch.fx, ONNX)."""
