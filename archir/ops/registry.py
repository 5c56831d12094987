"""The op registry: one :class:`OpDef` per op.

An ``OpDef`` is the executable spec of an op: its attributes (with types, defaults and
bounds), its arity, its shape rule, the shapes of its parameters and buffers, and how
they are initialised. ``Graph.validate`` checks every node against it. Its :class:`OpTraits`
are the facts about the op that passes and cost models reason with (is it channel-wise, does
it keep zeros, what range do its values have, what kernel category is it): every op declares
every trait, and nothing outside the registry keeps a set of op names.

Backends and cost models keep their per-op handlers in their own modules with
:class:`OpHandlers` (``@to_onnx.register("conv2d")``); a test asserts that every op has
every handler, so adding an op touches one file per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from archir.errors import OpSchemaError
from archir.types import TensorType

__all__ = ["AttrSpec", "OpDef", "OpTraits", "OpHandlers", "register_op", "get_op", "op_names", "pair", "CATEGORIES",
           "MERGES"]

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


#: what an op is, for passes and cost models (``OpTraits.category``)
CATEGORIES = {
    "input": "a graph input",
    "conv": "a convolution (weights over a spatial window)",
    "linear": "a fully connected layer",
    "norm": "a normalisation with per-channel statistics",
    "activation": "a rectifier-like nonlinearity that makes features (relu, silu, ...)",
    "gate": "a saturating nonlinearity with a bounded range, used to gate (sigmoid, tanh, ...)",
    "eltwise": "elementwise arithmetic (sums, products, per-channel scales, constants)",
    "pool": "pooling over spatial windows, per channel",
    "concat": "concatenation of its inputs",
    "copy": "data movement with no arithmetic (a slice, a pad): one copy kernel at inference",
    "view": "no computation at inference: the output is its input, reshaped or passed through",
    "search": "a search-space construct that archir.derive replaces",
}
#: how an op with several inputs combines them (``OpTraits.merge``)
MERGES = ("sum", "product", "concat", "difference", "quotient")
#: how zeros pass through an op (``OpTraits.zero_preserving``)
ZERO_RULES = ("all", "any", "always")

_UNDECLARED = object()


@dataclass(frozen=True)
class OpTraits:
    """What passes and cost models know about an op. Every op declares every field.

    Attributes:
        category: one of :data:`CATEGORIES` (cost models group kernels by it; ``"input"`` and
            ``"view"`` cost nothing at inference: :attr:`zero_cost`).
        merge: for an op that combines several inputs, how: ``"sum"``, ``"product"``
            (broadcasting), ``"concat"``, ``"difference"`` (input 0 minus input 1) or ``"quotient"``
            (input 0 divided by input 1); ``None`` for single-input ops.
        channelwise: a single-input op whose output channel ``k`` is computed from input
            channel ``k`` alone, with the channel count kept (activations, BN, pools, ...):
            channels pass through it index for index. A ``(C, H, W)`` map's channels are axis
            0; a vector's features are its channels.
        zero_preserving: when an all-zero input gives an all-zero output (for finite inputs):
            ``"all"`` (when every input is zero: ``f(0) = 0``), ``"any"`` (when one input is
            zero: a product), ``"always"`` (the output is zero whatever the input), ``None``
            (not in general), or a callable ``attrs -> one of those`` (a conv keeps zeros
            only without bias).
        value_range: a sound interval for the output values: ``None`` (unknown), ``(lo, hi)``
            (whatever the input), ``"input"`` (inside the input's interval: subsets or
            averages of input values), or a callable ``(attrs, input_ranges) -> (lo, hi) |
            None`` (an input range is ``None`` where unknown).
        identity_on: for an activation, the input interval on which it is the identity
            (``relu``: ``[0, inf)``), which ``deepen`` needs to insert it; else ``None``.
        conv_epilogue: where an inference runtime fuses the op into a preceding ``conv2d``
            (ONNX Runtime's Conv+BN fusion, its NCHWc conv's ``Sum`` input, FusedConv's
            activation): 1 a BN, 2 a residual add, 3 an activation; ``None`` if never.
        blocked_layout: ONNX Runtime's CPU provider can run the op in its blocked NCHWc
            layout (so a conv next to it needs no layout change).
    """

    category: Any = _UNDECLARED
    merge: Any = _UNDECLARED
    channelwise: Any = _UNDECLARED
    zero_preserving: Any = _UNDECLARED
    value_range: Any = _UNDECLARED
    identity_on: Any = _UNDECLARED
    conv_epilogue: Any = _UNDECLARED
    blocked_layout: Any = _UNDECLARED

    def missing(self) -> list[str]:
        """The traits this declaration leaves out (an op must declare every one)."""
        return [f.name for f in fields(self) if getattr(self, f.name) is _UNDECLARED]

    def problems(self) -> list[str]:
        """What is missing or malformed in this declaration (empty when it is complete)."""
        out = [f"trait {name!r} is not declared" for name in self.missing()]
        if out:
            return out
        if self.category not in CATEGORIES:
            out.append(f"category {self.category!r} is not one of {sorted(CATEGORIES)}")
        if self.merge is not None and self.merge not in MERGES:
            out.append(f"merge {self.merge!r} is not None or one of {MERGES}")
        if not isinstance(self.channelwise, bool) or not isinstance(self.blocked_layout, bool):
            out.append("channelwise and blocked_layout are True or False")
        if not (self.zero_preserving is None or self.zero_preserving in ZERO_RULES or callable(self.zero_preserving)):
            out.append(f"zero_preserving {self.zero_preserving!r} is not None, one of {ZERO_RULES} or a callable")
        v = self.value_range
        if not (v is None or v == "input" or callable(v) or _interval(v)):
            out.append(f"value_range {v!r} is not None, 'input', (lo, hi) or a callable")
        if not (self.identity_on is None or _interval(self.identity_on)):
            out.append(f"identity_on {self.identity_on!r} is not None or (lo, hi)")
        if self.conv_epilogue not in (None, 1, 2, 3):
            out.append(f"conv_epilogue {self.conv_epilogue!r} is not None, 1, 2 or 3")
        return out

    @property
    def zero_cost(self) -> bool:
        """No kernel runs for the op at inference (graph inputs and views)."""
        return self.category in ("input", "view")

    def zeros(self, attrs: Mapping) -> str | None:
        """:attr:`zero_preserving` for a node with these attrs."""
        z = self.zero_preserving
        return z(attrs) if callable(z) else z

    def range_of(self, attrs: Mapping, ins: Sequence) -> tuple[float, float] | None:
        """The output interval of a node with these attrs and input intervals (``None``: unknown)."""
        v = self.value_range
        if v is None:
            return None
        if v == "input":
            return ins[0] if ins else None
        if callable(v):
            return v(attrs, list(ins))
        return (float(v[0]), float(v[1]))


def _interval(v: Any) -> bool:
    return (isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)
            and v[0] <= v[1])


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
        traits: what passes and cost models know about the op (:class:`OpTraits`; required).
        training_only: the op exists for training only (``stop_gradient``...): ONNX refuses it,
            naming ``removed_by`` (``to_onnx`` itself first runs ``archir.strip_training``, which
            removes the ops whose ``removed_by`` is ``"archir.strip_training"``).
        auxiliary_output: a node of the op marks an auxiliary training output (``auxiliary``: its
            value is its input, its ``weight`` attr the loss weight). ``Graph.validate`` requires
            it to be a graph output other than the first, listed once and read by no node;
            ``archir.strip_training`` removes it with the nodes only it needs.
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
    traits: OpTraits | None = None
    training_only: bool = False
    removed_by: str | None = None
    auxiliary_output: bool = False
    doc: str = ""

    @property
    def stateless(self) -> bool:
        """The op has no params or buffers, whatever its attrs."""
        return self.param_shapes is _no_arrays and self.buffer_shapes is _no_arrays

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
    """Add an op to the registry.

    Raises:
        ValueError: the name is taken, or the op does not declare every trait (a bug in the
            op's definition: the message lists what is missing).
    """
    if opdef.name in _REGISTRY:
        raise ValueError(f"op {opdef.name!r} is already registered")
    problems = ["no traits= given"] if opdef.traits is None else opdef.traits.problems()
    if problems:
        raise ValueError(f"op {opdef.name!r} cannot be registered: {'; '.join(problems)}. Declare every trait: "
                         f"OpDef(..., traits=OpTraits({', '.join(f.name + '=...' for f in fields(OpTraits))})), "
                         "see archir/ops/registry.py")
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
