"""The op registry: one :class:`OpDef` per op.

An ``OpDef`` is the executable spec of an op: its attributes (with types, defaults and
bounds), its arity, its shape rule, the shapes of its parameters and buffers, and how
they are initialised. ``Graph.validate`` checks every node against it.

Backends and cost models keep their per-op handlers in their own modules with
:class:`OpHandlers` (``@to_onnx.register("conv2d")``); a test asserts that every op has
every handler, so adding an op touches one file per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from archir.errors import OpSchemaError
from archir.types import TensorType

__all__ = ["AttrSpec", "OpDef", "OpHandlers", "register_op", "get_op", "op_names", "pair"]

_MISSING = object()


def pair(v: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    """``3 -> (3, 3)``, ``[3, 5] -> (3, 5)``: torch's convention for 2-d attrs."""
    if isinstance(v, (list, tuple)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


@dataclass(frozen=True)
class AttrSpec:
    """Type, default and bounds of one attribute.

    ``kind`` is one of ``int``, ``float``, ``bool``, ``str``, ``pair`` (an int or a list of
    two ints, torch's ``kernel_size=3`` or ``(3, 5)``), ``ints`` (a list of ints) or
    ``json`` (any JSON value; the op's ``check`` validates it).
    """

    kind: str
    default: Any = _MISSING
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    optional: bool = False  # None is allowed

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def normalize(self, name: str, value: Any, *, op: str, node: str | None) -> Any:
        """Check ``value`` and return its canonical JSON form, or raise ``OpSchemaError``."""

        def fail(what: str) -> OpSchemaError:
            return OpSchemaError(
                f"attribute {name!r} of op {op!r} {what} (got {value!r})",
                node=node,
                rule="attr",
                hint=f"pass {name}= {self._describe()}",
            )

        if value is None:
            if self.optional:
                return None
            raise fail("may not be None")
        k = self.kind
        if k == "int":
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise fail("must be an int")
            value = int(value)
            self._bounds(value, fail)
            return value
        if k == "float":
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise fail("must be a number")
            value = float(value)
            if not math.isfinite(value):
                raise fail("must be finite")
            self._bounds(value, fail)
            return value
        if k == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise fail("must be a bool")
            return bool(value)
        if k == "str":
            if not isinstance(value, str):
                raise fail("must be a string")
            if self.choices is not None and value not in self.choices:
                raise fail(f"must be one of {list(self.choices)}")
            return value
        if k == "pair":
            if isinstance(value, (list, tuple)):
                if len(value) != 2 or any(
                    isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) for v in value
                ):
                    raise fail("must be an int or a pair of ints")
                a, b = int(value[0]), int(value[1])
            elif isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
                a = b = int(value)
            else:
                raise fail("must be an int or a pair of ints")
            self._bounds(a, fail)
            self._bounds(b, fail)
            return a if a == b else [a, b]
        if k == "ints":
            if not isinstance(value, (list, tuple)) or any(
                isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) for v in value
            ):
                raise fail("must be a list of ints")
            out = [int(v) for v in value]
            for v in out:
                self._bounds(v, fail)
            return out
        if k == "json":
            return value
        raise AssertionError(f"unknown attr kind {k!r}")  # a bug in an OpDef, not user input

    def _bounds(self, v: float, fail: Callable[[str], OpSchemaError]) -> None:
        if self.min is not None and v < self.min:
            raise fail(f"must be >= {self.min}")
        if self.max is not None and v > self.max:
            raise fail(f"must be <= {self.max}")

    def _describe(self) -> str:
        d = {"int": "an int", "float": "a number", "bool": "True or False", "str": "a string",
             "pair": "an int or a pair of ints", "ints": "a list of ints", "json": "a JSON value"}[self.kind]
        if self.choices:
            d = f"one of {list(self.choices)}"
        if self.min is not None:
            d += f" >= {self.min}"
        if self.max is not None:
            d += f" <= {self.max}"
        return d


InferFn = Callable[[dict, list[TensorType], str | None], TensorType]
ShapesFn = Callable[[dict, list[TensorType]], dict[str, tuple[int, ...]]]
InitFn = Callable[[dict, list[TensorType], np.random.Generator], tuple[dict, dict]]


def _no_arrays(attrs: dict, ins: list[TensorType]) -> dict[str, tuple[int, ...]]:
    return {}


def _no_init(attrs: dict, ins: list[TensorType], rng: np.random.Generator) -> tuple[dict, dict]:
    return {}, {}


@dataclass
class OpDef:
    """The executable spec of one op.

    Attributes:
        name: the registry key (``"conv2d"``).
        arity: the number of inputs, or ``None`` for variadic ops (then ``min_inputs``).
        attrs: attribute specs by name.
        infer: ``(attrs, input_types, node_id) -> TensorType``; raises ``ShapeError``.
        param_shapes / buffer_shapes: ``(attrs, input_types) -> {name: shape}``.
        init: ``(attrs, input_types, rng) -> (params, buffers)`` of float32 arrays.
        check: extra cross-attribute validation ``(attrs, node_id) -> None``.
        training_only: the op exists for training only (``stop_gradient``...): ONNX refuses it,
            naming ``removed_by``.
        doc: one line shown by ``archir show`` and in errors.
    """

    name: str
    arity: int | None
    infer: InferFn
    attrs: dict[str, AttrSpec] = field(default_factory=dict)
    min_inputs: int = 1
    param_shapes: ShapesFn = _no_arrays
    buffer_shapes: ShapesFn = _no_arrays
    init: InitFn = _no_init
    check: Callable[[dict, str | None], dict | None] | None = None
    training_only: bool = False
    removed_by: str | None = None
    doc: str = ""

    def normalize_attrs(self, attrs: dict, node: str | None = None) -> dict:
        """Fill defaults, type-check and canonicalise attributes, or raise ``OpSchemaError``."""
        unknown = sorted(set(attrs) - set(self.attrs))
        if unknown:
            raise OpSchemaError(
                f"op {self.name!r} has no attribute(s) {unknown}",
                node=node,
                rule="attr",
                hint=f"{self.name} takes {sorted(self.attrs) or 'no attributes'}",
            )
        out = {}
        for name, spec in self.attrs.items():
            if name in attrs:
                out[name] = spec.normalize(name, attrs[name], op=self.name, node=node)
            elif spec.required:
                raise OpSchemaError(
                    f"op {self.name!r} needs attribute {name!r}",
                    node=node,
                    rule="attr",
                    hint=f"pass {name}= {spec._describe()}",
                )
            else:
                out[name] = spec.default
        if self.check is not None:
            # a check may return a canonicalised copy (choice normalises its candidates)
            out = self.check(out, node) or out
        return out

    def check_arity(self, n: int, node: str | None = None) -> None:
        if self.arity is not None and n != self.arity:
            raise OpSchemaError(
                f"op {self.name!r} takes {self.arity} input(s), got {n}",
                node=node,
                rule="arity",
                hint=f"give {self.name} exactly {self.arity} input(s)",
            )
        if self.arity is None and n < self.min_inputs:
            raise OpSchemaError(
                f"op {self.name!r} takes at least {self.min_inputs} input(s), got {n}",
                node=node,
                rule="arity",
                hint=f"give {self.name} {self.min_inputs} or more inputs",
            )


_REGISTRY: dict[str, OpDef] = {}


def register_op(opdef: OpDef) -> OpDef:
    """Add an op to the registry. Registering a name twice is a bug and raises."""
    if opdef.name in _REGISTRY:
        raise ValueError(f"op {opdef.name!r} is already registered")
    _REGISTRY[opdef.name] = opdef
    return opdef


def get_op(name: str, node: str | None = None) -> OpDef:
    """The ``OpDef`` of ``name``; an unknown name raises ``OpSchemaError`` listing the known ops."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise OpSchemaError(
            f"unknown op {name!r}",
            node=node,
            rule="op",
            hint=f"use one of: {', '.join(sorted(_REGISTRY))}",
        ) from None


def op_names() -> list[str]:
    """All registered op names, sorted."""
    return sorted(_REGISTRY)


class OpHandlers:
    """A per-op dispatch table that a backend or cost model owns.

    Example:
        >>> macs = OpHandlers("macs")
        >>> @macs.register("relu")
        ... def _relu(node, ins, out):
        ...     return 0
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._table: dict[str, Callable] = {}

    def register(self, *ops: str) -> Callable[[Callable], Callable]:
        def deco(fn: Callable) -> Callable:
            for op in ops:
                if op in self._table:
                    raise ValueError(f"{self.what}: op {op!r} already has a handler")
                self._table[op] = fn
            return fn

        return deco

    def get(self, op: str, node: str | None = None) -> Callable:
        try:
            return self._table[op]
        except KeyError:
            raise OpSchemaError(
                f"{self.what} has no handler for op {op!r}",
                node=node,
                rule="handler",
                hint=f"register one with @{self.what}.register({op!r})",
            ) from None

    def ops(self) -> set[str]:
        return set(self._table)

    def missing(self, names: Iterable[str] | None = None) -> list[str]:
        """Registered ops that have no handler here (a test asserts this is empty)."""
        return sorted(set(names if names is not None else op_names()) - set(self._table))
