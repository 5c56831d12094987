"""The archir error hierarchy.

Every error says *what* is wrong, *where* (node id, file, pass) and *how to mend it*.
All of them derive from :class:`IRError`, so a caller can catch one class.

``IRError`` also derives from ``ValueError``: bad input is a value error, and code
written against plain Python conventions catches it.
"""

from __future__ import annotations

__all__ = [
    "IRError",
    "GraphStructureError",
    "OpSchemaError",
    "ShapeError",
    "WeightError",
    "SerializationError",
    "LoweringError",
]


class IRError(ValueError):
    """Base class of every archir error about a graph or a file.

    Args:
        message: what is wrong.
        node: the node id where it is wrong, if any.
        rule: the short name of the rule that was broken (``"port"``, ``"arity"`` ...).
        hint: how to mend it.
        context: extra lines shown under the message (e.g. the neighbourhood of a node).
    """

    def __init__(
        self,
        message: str,
        *,
        node: str | None = None,
        rule: str | None = None,
        hint: str | None = None,
        context: str | None = None,
    ) -> None:
        self.message = message
        self.node = node
        self.rule = rule
        self.hint = hint
        self.context = context
        super().__init__(self._format())

    def _format(self) -> str:
        head = ""
        if self.rule:
            head += f"[{self.rule}] "
        if self.node is not None:
            head += f"node {self.node!r}: "
        text = head + self.message
        if self.hint:
            text += f"\n  how to fix: {self.hint}"
        if self.context:
            text += "\n" + self.context
        return text


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
