"""``archir.Graph``: a network as a graph of typed ops with shapes and weights.

A ``Graph`` wraps a ``networkx.MultiDiGraph`` (``Graph.nx``). One node is one op with
exactly one output tensor; node ids are readable strings where a dot marks scope
(``"cell3.n2.conv"``). Edges carry ``port``, the input index at the consumer, so
``add(x, x)`` is two parallel edges with ports 0 and 1.

Node data (see :class:`Node`): ``op``, ``attrs`` (JSON values), ``params`` and
``buffers`` (read-only float32 ``numpy`` arrays), ``type`` (:class:`TensorType`).
Graph data: ordered ``inputs``, ordered ``outputs``, ``meta`` (JSON), and ``arch``:
the architecture logits of choice nodes, one array per decision key (the node id, or
``attrs["tie"]`` when several choice nodes share one decision).

Graphs are values: a pass copies a graph (``copy()`` shares arrays) and assigns new
arrays; arrays are never written in place (they are flagged read-only to make sure).
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
import weakref
from types import MappingProxyType
from typing import Any, Iterable, Iterator, Mapping

import networkx as nx
import numpy as np

from archir.errors import GraphStructureError, IRError, OpSchemaError, ShapeError, WeightError
from archir.ops import get_op
from archir.types import TensorType

__all__ = ["Graph", "Node", "freeze_array", "weight_bytes_of", "arch_key"]

_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_][A-Za-z0-9_\-]*)*$")
MAX_NODES = 1_000_000


def freeze_array(value: Any, *, what: str = "array", node: str | None = None) -> np.ndarray:
    """A read-only float32 C-contiguous array of ``value`` (copied unless it already is one).

    The copy lives in a ``bytes`` object (``np.frombuffer``): it can never be made writable again,
    and the ONNX lowering hands those bytes to ``TensorProto.raw_data`` without copying them first
    (:func:`weight_bytes_of`).
    """
    if isinstance(value, np.ndarray) and value.dtype == np.float32 and not value.flags.writeable \
            and value.flags.c_contiguous:
        return value
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise WeightError(f"{what} is not a float32 array: {e}", node=node, rule="weights",
                          hint="pass a numpy array (or anything np.asarray accepts) of numbers") from None
    # one copy, in C order and little-endian (the float32 dtype is native), into immutable bytes
    return np.frombuffer(arr.tobytes(order="C"), dtype=np.float32).reshape(arr.shape)


def weight_bytes_of(arr: np.ndarray) -> bytes:
    """The little-endian bytes of ``arr`` in C order: a frozen weight's own buffer (no copy), else a copy."""
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    base = arr.base
    while isinstance(base, np.ndarray):
        base = base.base
    # a C-contiguous view as long as the whole buffer starts at its first byte: it is the buffer
    if isinstance(base, bytes) and arr.flags.c_contiguous and len(base) == arr.nbytes:
        return base
    return arr.tobytes(order="C")


def _frozen(arr: np.ndarray) -> bool:
    """Whether ``arr`` views immutable ``bytes`` (a :func:`freeze_array` result): its values can never change."""
    if arr.flags.writeable:
        return False
    base = arr.base
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, bytes)


#: frozen arrays already found free of NaN/Inf, by ``id`` (an entry leaves with its array: no stale id
#: can match a new array, which is checked by identity too)
_FINITE: "weakref.WeakValueDictionary[int, np.ndarray]" = weakref.WeakValueDictionary()


def all_finite(arr: np.ndarray) -> bool:
    """``np.isfinite(arr).all()``, remembered for frozen arrays (their values cannot change).

    A graph validated again (every ``to_onnx``, every pass) re-checks only the arrays it has not
    seen: a pass shares the arrays it does not touch, so the scan over the weights is paid once.
    """
    if _FINITE.get(id(arr)) is arr:
        return True
    if not np.isfinite(arr).all():
        return False
    if _frozen(arr):
        _FINITE[id(arr)] = arr
    return True


def arch_key(node_id: str, attrs: Mapping) -> str:
    """The decision key of a choice node: its ``tie`` attr, or its own id."""
    return attrs.get("tie") or node_id


class Node:
    """A read-only view of one node. Change a node through ``Graph`` methods.

    Attributes:
        id: the node id.
        op: the registry key of its op.
        attrs: attributes with defaults filled in (a read-only mapping).
        params / buffers: read-only mappings of read-only float32 arrays.
        type: the output :class:`TensorType` (batch excluded).
    """

    __slots__ = ("id", "_d")

    def __init__(self, node_id: str, data: dict) -> None:
        self.id = node_id
        self._d = data

    @property
    def op(self) -> str:
        return self._d["op"]

    @property
    def attrs(self) -> Mapping[str, Any]:
        return MappingProxyType(self._d["attrs"])

    @property
    def params(self) -> Mapping[str, np.ndarray]:
        return MappingProxyType(self._d["params"])

    @property
    def buffers(self) -> Mapping[str, np.ndarray]:
        return MappingProxyType(self._d["buffers"])

    @property
    def type(self) -> TensorType | None:
        return self._d.get("type")

    def __repr__(self) -> str:
        attrs = ", ".join(f"{k}={v!r}" for k, v in self._d["attrs"].items())
        return f"Node({self.id!r}, {self.op}({attrs}) -> {self.type})"


class Graph:
    """A neural network as a DAG of typed ops.

    Args:
        name: a name for the graph (used in files and ONNX).

    Example:
        >>> import archir
        >>> g = archir.Graph("tiny")
        >>> x = g.input("x", shape=(3, 8, 8))
        >>> h = g.add("conv2d", x, out_channels=4, kernel_size=3, padding=1, name="stem.conv")
        >>> y = g.add("linear", g.add("flatten", g.add("global_avgpool", h)), out_features=2)
        >>> g.set_outputs(y); _ = g.init_params(seed=0); _ = g.validate()
        >>> g.node("stem.conv").type
        TensorType(shape=(4, 8, 8), dtype='float32')
    """

    def __init__(self, name: str = "graph") -> None:
        if not isinstance(name, str) or not name:
            raise IRError(f"graph name must be a non-empty string, got {name!r}", rule="name")
        self.name = name
        self._g = nx.MultiDiGraph()
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        self.meta: dict[str, Any] = {}
        self.arch: dict[str, np.ndarray] = {}
        self._counter = 0
        #: the last successful validation: (fingerprint, arrays it names by id, weights checked, topo order)
        self._valid: tuple | None = None

    # ------------------------------------------------------------------ access

    @property
    def nx(self) -> nx.MultiDiGraph:
        """The underlying ``networkx.MultiDiGraph`` (for your own graph algorithms; edit through Graph)."""
        return self._g

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(self._inputs)

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(self._outputs)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._g

    def __len__(self) -> int:
        return self._g.number_of_nodes()

    def __iter__(self) -> Iterator[str]:
        return iter(self._g.nodes)

    def node(self, node_id: str) -> Node:
        """The :class:`Node` view of ``node_id``; an unknown id raises ``GraphStructureError``."""
        return Node(node_id, self._data(node_id))

    def nodes(self, op: str | None = None) -> list[Node]:
        """All nodes in insertion order, or those of one op."""
        return [Node(n, d) for n, d in self._g.nodes(data=True) if op is None or d["op"] == op]

    def _data(self, node_id: str) -> dict:
        try:
            return self._g.nodes[node_id]
        except (KeyError, TypeError):
            raise GraphStructureError(f"no node {node_id!r} in graph {self.name!r}", node=node_id, rule="id",
                                      hint="use an id returned by g.add()/g.input() (see list(g))") from None

    def inputs_of(self, node_id: str) -> list[str]:
        """Producers of ``node_id`` in port order."""
        self._data(node_id)
        # the adjacency dicts directly (pred[u][key] = edge data): the hottest query of passes and lowering
        ported = [(d.get("port"), u) for u, keyed in self._g._pred[node_id].items() for d in keyed.values()]
        ported.sort(key=lambda e: e[0])
        return [u for _, u in ported]

    def users_of(self, node_id: str) -> list[tuple[str, int]]:
        """Consumers of ``node_id`` as ``(consumer, port)`` pairs, in insertion order."""
        self._data(node_id)
        return [(v, d.get("port")) for v, keyed in self._g._succ[node_id].items() for d in keyed.values()]

    def input_types(self, node_id: str) -> list[TensorType]:
        return [self._data(u)["type"] for u in self.inputs_of(node_id)]

    def topo_order(self) -> list[str]:
        """Node ids in a deterministic topological order (ties broken by insertion order)."""
        index = {n: i for i, n in enumerate(self._g.nodes)}
        try:
            return list(nx.lexicographical_topological_sort(self._g, key=index.__getitem__))
        except nx.NetworkXUnfeasible:
            cycle = nx.find_cycle(self._g)
            path = " -> ".join(str(u) for u, *_ in cycle) + f" -> {cycle[0][0]}"
            raise GraphStructureError(f"graph {self.name!r} has a cycle: {path}", node=cycle[0][0], rule="acyclic",
                                      hint="a network is a DAG: remove one edge of the cycle") from None

    # ------------------------------------------------------------------ building

    def _fresh_id(self, op: str) -> str:
        while True:
            self._counter += 1
            cand = f"{op}_{self._counter}"
            if cand not in self._g:
                return cand

    def _check_new_id(self, name: str) -> None:
        if not isinstance(name, str) or not _ID_RE.match(name):
            raise GraphStructureError(
                f"node id {name!r} is not a readable id", node=str(name), rule="id",
                hint="use letters, digits, '_' and '-', with '.' between scopes (e.g. 'cell3.n2.conv')")
        if name in self._g:
            raise GraphStructureError(f"node id {name!r} already exists", node=name, rule="id",
                                      hint="pick a unique name= (or leave it out for an automatic one)")
        if len(self._g) >= MAX_NODES:
            raise GraphStructureError(f"graph has {MAX_NODES} nodes, the most archir accepts", rule="size")

    def input(self, name: str, shape: Iterable[int], dtype: str = "float32") -> str:
        """Add a graph input of per-sample ``shape`` (batch excluded); returns its id."""
        self._check_new_id(name)
        opdef = get_op("input")
        attrs = opdef.normalize_attrs({"shape": list(shape) if not isinstance(shape, int) else [shape],
                                       "dtype": dtype}, node=name)
        self._g.add_node(name, op="input", attrs=attrs, params={}, buffers={},
                         type=opdef.infer(attrs, [], name))
        self._inputs.append(name)
        return name

    def add(self, op: str, *inputs: str, name: str | None = None, **attrs: Any) -> str:
        """Add a node applying ``op`` to ``inputs`` (ids, in port order); returns the new id.

        Attributes are checked against the op's schema and defaults are filled in; the
        output type is inferred at once, so a shape mismatch is reported here, naming
        the node.

        Raises:
            OpSchemaError: unknown op, wrong arity or a bad attribute.
            GraphStructureError: an unknown input id or a duplicate name.
            ShapeError: the inputs' shapes do not fit the op.
        """
        opdef = get_op(op, name)
        if op == "input":
            raise OpSchemaError("inputs are added with g.input(name, shape)", node=name, rule="op",
                                hint="call g.input(...) instead of g.add('input', ...)")
        node_id = name if name is not None else self._fresh_id(op)
        self._check_new_id(node_id)
        opdef.check_arity(len(inputs), node_id)
        for i, src in enumerate(inputs):
            if not isinstance(src, str) or src not in self._g:
                raise GraphStructureError(f"input {i} of {op} is {src!r}, which is not a node of this graph",
                                          node=node_id, rule="id", hint="pass ids returned by g.add()/g.input()")
        attrs = opdef.normalize_attrs(attrs, node=node_id)
        in_types = [self._g.nodes[s]["type"] for s in inputs]
        out_type = opdef.infer(attrs, in_types, node_id) if all(t is not None for t in in_types) else None
        if op == "choice":
            self._check_arch_key(node_id, attrs)
        self._g.add_node(node_id, op=op, attrs=attrs, params={}, buffers={}, type=out_type)
        for port, src in enumerate(inputs):
            self._g.add_edge(src, node_id, port=port)
        if op == "choice":
            key = arch_key(node_id, attrs)
            if key not in self.arch:
                self.arch[key] = freeze_array(np.zeros(len(attrs["candidates"]), np.float32))
        return node_id

    def _check_arch_key(self, node_id: str, attrs: dict) -> None:
        key = arch_key(node_id, attrs)
        k = len(attrs["candidates"])
        for other in self.nodes("choice"):
            if arch_key(other.id, other.attrs) == key:
                names = [c["name"] for c in other.attrs["candidates"]]
                if names != [c["name"] for c in attrs["candidates"]]:
                    raise OpSchemaError(
                        f"choice tied as {key!r} has candidates {[c['name'] for c in attrs['candidates']]}, "
                        f"but {other.id!r} with the same tie has {names}", node=node_id, rule="tie",
                        hint="nodes sharing a decision must list the same candidates in the same order")
        if key in self.arch and self.arch[key].shape != (k,):
            raise OpSchemaError(f"decision {key!r} has {self.arch[key].shape[0]} logits, this choice has {k} candidates",
                                node=node_id, rule="tie", hint="use another tie name")

    def set_outputs(self, *ids: str) -> None:
        """Declare the graph outputs, in order."""
        if not ids:
            raise GraphStructureError("a graph needs at least one output", rule="outputs",
                                      hint="g.set_outputs(node_id, ...)")
        for i in ids:
            self._data(i)
        self._outputs = list(ids)

    def init_params(self, seed: int | np.random.Generator = 0, *, only_missing: bool = False) -> "Graph":
        """Initialise every parameter and buffer from ``seed`` (torch's default initialisers).

        Nodes are visited in topological order with one generator, so the same graph
        and seed give the same weights. Architecture logits start at ``1e-3 * N(0, 1)``
        (as in DARTS). Returns ``self``.
        """
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.infer_shapes()
        for n in self.topo_order():
            d = self._g.nodes[n]
            if only_missing and (d["params"] or d["buffers"]):
                continue
            opdef = get_op(d["op"], n)
            params, buffers = opdef.init(d["attrs"], self.input_types(n), rng)
            d["params"] = {k: freeze_array(v) for k, v in params.items()}
            d["buffers"] = {k: freeze_array(v) for k, v in buffers.items()}
        for key in sorted(self.arch):
            if not only_missing:
                self.arch[key] = freeze_array(1e-3 * rng.standard_normal(self.arch[key].shape[0]))
        return self

    # ------------------------------------------------------------------ editing (for passes)

    def set_params(self, node_id: str, **arrays: Any) -> None:
        """Replace parameters of a node with read-only float32 copies (shapes are checked by validate)."""
        d = self._data(node_id)
        new = dict(d["params"])
        new.update({k: freeze_array(v, what=f"param {k!r}", node=node_id) for k, v in arrays.items()})
        d["params"] = new

    def set_buffers(self, node_id: str, **arrays: Any) -> None:
        """Replace buffers of a node with read-only float32 copies."""
        d = self._data(node_id)
        new = dict(d["buffers"])
        new.update({k: freeze_array(v, what=f"buffer {k!r}", node=node_id) for k, v in arrays.items()})
        d["buffers"] = new

    def set_attrs(self, node_id: str, **attrs: Any) -> None:
        """Change attributes of a node (checked against the schema) and re-infer its type."""
        d = self._data(node_id)
        opdef = get_op(d["op"], node_id)
        new = opdef.normalize_attrs({**d["attrs"], **attrs}, node=node_id)
        in_types = self.input_types(node_id)
        t = opdef.infer(new, in_types, node_id) if all(x is not None for x in in_types) else None
        d["attrs"], d["type"] = new, t

    def set_input(self, consumer: str, port: int, producer: str) -> None:
        """Rewire input ``port`` of ``consumer`` to read ``producer``."""
        self._data(producer)
        edges = [(u, k) for u, _, k, p in self._g.in_edges(consumer, keys=True, data="port") if p == port]
        if not edges:
            raise GraphStructureError(f"node has no input port {port}", node=consumer, rule="port")
        for u, k in edges:
            self._g.remove_edge(u, consumer, k)
        self._g.add_edge(producer, consumer, port=port)

    def replace_uses(self, old: str, new: str, *, exclude: Iterable[str] = ()) -> None:
        """Make every consumer of ``old`` (and the graph outputs) read ``new`` instead."""
        self._data(new)
        skip = set(exclude) | {new}
        for v, p in self.users_of(old):
            if v not in skip:
                self.set_input(v, p, new)
        self._outputs = [new if o == old else o for o in self._outputs]

    def remove(self, node_id: str) -> None:
        """Remove a node that nothing reads (and that is not an output)."""
        self._data(node_id)
        users = self.users_of(node_id)
        if users or node_id in self._outputs:
            raise GraphStructureError(
                f"cannot remove a node that is still used (users: {[u for u, _ in users]}, "
                f"output: {node_id in self._outputs})", node=node_id, rule="remove",
                hint="rewire its users with replace_uses() first")
        op = self._g.nodes[node_id]["op"]
        self._g.remove_node(node_id)
        if op == "input":
            self._inputs.remove(node_id)

    def copy(self, name: str | None = None) -> "Graph":
        """A new graph with copied structure that shares the (read-only) arrays."""
        g = Graph(name or self.name)
        for n, d in self._g.nodes(data=True):
            g._g.add_node(n, op=d["op"], attrs=json.loads(json.dumps(d["attrs"])), params=dict(d["params"]),
                          buffers=dict(d["buffers"]), type=d.get("type"))
        for u, v, p in self._g.edges(data="port"):
            g._g.add_edge(u, v, port=p)
        g._inputs, g._outputs = list(self._inputs), list(self._outputs)
        g.meta = json.loads(json.dumps(self.meta))
        g.arch = dict(self.arch)
        g._counter = self._counter
        return g

    # ------------------------------------------------------------------ checking

    def infer_shapes(self) -> "Graph":
        """Recompute every node's output type in topological order; raises ``ShapeError`` naming the node."""
        return self._infer_shapes(self.topo_order())

    def _infer_shapes(self, order: list[str]) -> "Graph":
        for n in order:
            d = self._g.nodes[n]
            opdef = get_op(d["op"], n)
            try:
                d["type"] = opdef.infer(d["attrs"], self.input_types(n), n)
            except IRError as e:
                if e.context is None:
                    e.context = self._neighbourhood(n)
                    e.args = (e._format(),)
                raise
        return self

    def validate(self, *, weights: bool = True) -> "Graph":
        """Check every invariant of the IR; return ``self`` or raise an ``IRError``.

        Invariants, in the order they are checked:

        1. graph inputs are ``input`` nodes; there is at least one output and every output exists;
        2. every node has a known op, a readable id, attributes that fit the op's schema;
        3. every input port ``0..arity-1`` is filled exactly once (arity per op schema); a node that
           marks an auxiliary output (``auxiliary``, ``OpDef.auxiliary_output``) is a graph output,
           not the first one (the first output is the main one), listed once, and read by no node;
        4. the graph is acyclic;
        5. shapes infer at every node;
        6. every output depends on a graph input;
        7. (``weights=True``) every parameter and buffer is present, float32, of the shape the
           op asks for, with no NaN/Inf; every choice decision has finite logits, one per candidate.

        The error names the node and the rule, says how to mend it, and lists the node's neighbours.
        """
        self.validated_order(weights=weights)
        return self

    def validated_order(self, *, weights: bool = True) -> list[str]:
        """:meth:`validate`, then the :meth:`topo_order` it checked (what a lowering walks; a copy).

        An unchanged graph is validated once: validation remembers a fingerprint of everything
        it reads (inputs and outputs; per node, in order: id, op, attrs, output type, input edges
        and ports, the identity of each param and buffer; the architecture logits' values) and
        skips the checks when the fingerprint is equal again. Weights count by identity only
        where they are frozen (:func:`freeze_array`: their values cannot change); a graph holding
        any other array is validated in full every time. The fingerprint is built from the
        networkx data itself, so it sees an edit made through ``g.nx`` as well as one through
        ``Graph``'s methods. Costs a few microseconds per node, against tens for validation.
        """
        if self._valid is not None and (self._valid[2] or not weights):
            fp = self._fingerprint()
            if fp is not None and self._valid[0] == fp[0]:
                return list(self._valid[3])
        self._valid = None
        try:
            order = self._validate(weights)
        except IRError as e:
            if e.node is not None and e.node in self._g and e.context is None:
                e.context = self._neighbourhood(e.node)
                e.args = (e._format(),)
            raise
        fp = self._fingerprint()  # after validation wrote the output types: what now holds
        if fp is not None:
            self._valid = (fp[0], fp[1], weights, tuple(order))
        return order

    def _fingerprint(self) -> tuple[tuple, list] | None:
        """(what validation reads, the frozen arrays it names by ``id``), or None if an array is not frozen."""
        keep: list[np.ndarray] = []  # held by the cache, so no id in the fingerprint is reused meanwhile
        parts: list = [tuple(self._inputs), tuple(self._outputs)]
        pred = self._g._pred
        for n, d in self._g.nodes(data=True):
            arrays = []
            for kind in ("params", "buffers"):
                for k, a in d.get(kind, {}).items():
                    if not isinstance(a, np.ndarray) or not _frozen(a):
                        return None
                    keep.append(a)
                    arrays.append((kind, k, id(a)))
            edges = tuple((u, e.get("port")) for u, keyed in pred[n].items() for e in keyed.values())
            parts.append((n, d.get("op"), repr(d.get("attrs")), d.get("type"), edges, tuple(arrays)))
        for k, a in self.arch.items():
            if not isinstance(a, np.ndarray):
                return None
            parts.append((k, a.dtype.str, a.shape, a.tobytes()))
        return tuple(parts), keep

    def _validate(self, weights: bool) -> list[str]:
        if not self._outputs:
            raise GraphStructureError(f"graph {self.name!r} has no outputs", rule="outputs",
                                      hint="call g.set_outputs(node_id, ...)")
        for i in self._inputs:
            if i not in self._g or self._g.nodes[i]["op"] != "input":
                raise GraphStructureError("listed as a graph input but is not an input node", node=i, rule="inputs")
            if self._inputs.count(i) > 1:
                raise GraphStructureError("listed more than once as a graph input", node=i, rule="inputs",
                                          hint="list each input node once in the graph inputs")
        for o in self._outputs:
            self._data(o)
        for n, d in self._g.nodes(data=True):
            if not isinstance(n, str) or not _ID_RE.match(n):
                raise GraphStructureError(f"node id {n!r} is not a readable id", node=str(n), rule="id",
                                          hint="use letters, digits, '_', '-' and '.' between scopes")
            opdef = get_op(d.get("op"), n)
            if d["op"] == "input" and n not in self._inputs:
                raise GraphStructureError("input node is not listed in graph inputs", node=n, rule="inputs",
                                          hint="create inputs with g.input()")
            attrs = opdef.normalize_attrs(d["attrs"], node=n)
            if attrs != d["attrs"]:
                raise OpSchemaError(f"attributes {d['attrs']} are not in canonical form (expected {attrs})",
                                    node=n, rule="attr", hint="set attributes with g.set_attrs()")
            ports = [p for _, _, p in self._g.in_edges(n, data="port")]
            # check before sorting: an edge added through g.nx without port=... has port None
            if any(not isinstance(p, int) or isinstance(p, bool) for p in ports):
                raise GraphStructureError(f"edge ports must be ints, got {ports}", node=n, rule="port",
                                          hint="give every edge port=<input index> (use g.add()/set_input())")
            ports.sort()
            dup = sorted({p for p in ports if ports.count(p) > 1})
            if dup:
                raise GraphStructureError(f"input port(s) {dup} filled more than once", node=n, rule="port",
                                          hint="each input port takes exactly one edge; use set_input() to rewire")
            opdef.check_arity(len(ports), n)
            if ports != list(range(len(ports))):
                missing = sorted(set(range(len(ports))) - set(ports))
                raise GraphStructureError(f"input ports {ports} leave port(s) {missing} unfilled", node=n,
                                          rule="port", hint="connect every port 0..n-1")
            if opdef.auxiliary_output:
                self._check_auxiliary(n, d["op"])
        order = self.topo_order()
        self._infer_shapes(order)
        reach = set()
        for i in self._inputs:
            reach |= nx.descendants(self._g, i) | {i}
        for o in self._outputs:
            if o not in reach:
                raise GraphStructureError("output does not depend on any graph input", node=o, rule="reachable",
                                          hint="connect it to an input or drop it from the outputs")
        if weights:
            for n in order:
                self._check_weights(n)
            self._check_arch()
        return order

    def _check_auxiliary(self, n: str, op: str) -> None:
        """An auxiliary-output node ends the graph as one of its later outputs."""
        outs = self._outputs
        fix = f"g.set_outputs(main, {n!r}): the main output first, auxiliary outputs after it"
        if n not in outs:
            raise GraphStructureError(f"{op} node marks an auxiliary training output but is not a graph output",
                                      node=n, rule="auxiliary", hint=f"list it among the outputs, {fix}; or remove it")
        if outs[0] == n:
            raise GraphStructureError(f"{op} node is the first graph output, which is the main one", node=n,
                                      rule="auxiliary", hint=f"put the main output first, {fix}")
        if outs.count(n) > 1:
            raise GraphStructureError(f"{op} node is listed {outs.count(n)} times among the graph outputs", node=n,
                                      rule="auxiliary", hint="list each auxiliary output once (its loss would count "
                                                             "several times)")
        users = sorted({v for v, _ in self.users_of(n)})
        if users:
            raise GraphStructureError(f"{op} node is read by {users}; an auxiliary output ends the graph", node=n,
                                      rule="auxiliary",
                                      hint=f"make {users[0]!r} read the {op} node's input instead "
                                           f"(g.set_input({users[0]!r}, port, {self.inputs_of(n)[0]!r}))")

    def _check_weights(self, n: str) -> None:
        d = self._g.nodes[n]
        opdef = get_op(d["op"], n)
        ins = self.input_types(n)
        for kind, want in (("params", opdef.param_shapes(d["attrs"], ins)),
                           ("buffers", opdef.buffer_shapes(d["attrs"], ins))):
            have = d[kind]
            missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
            if missing:
                raise WeightError(f"{kind} {missing} are missing", node=n, rule="weights",
                                  hint="call g.init_params(seed=...) or load the weights file")
            if extra:
                raise WeightError(f"{kind} {extra} are not used by op {d['op']!r}", node=n, rule="weights",
                                  hint="remove them, or fix the op's attributes")
            for k, shape in want.items():
                a = have[k]
                if not isinstance(a, np.ndarray) or a.dtype != np.float32:
                    raise WeightError(f"{kind[:-1]} {k!r} must be a float32 ndarray, got "
                                      f"{type(a).__name__} {getattr(a, 'dtype', '')}", node=n, rule="weights",
                                      hint="assign it with g.set_params()")
                if a.shape != tuple(shape):
                    raise WeightError(f"{kind[:-1]} {k!r} has shape {a.shape}, op needs {tuple(shape)}", node=n,
                                      rule="weights", hint="re-initialise it or fix the op's attributes")
                if not all_finite(a):
                    bad = int((~np.isfinite(a)).sum())
                    raise WeightError(f"{kind[:-1]} {k!r} has {bad} NaN/Inf value(s)", node=n, rule="finite",
                                      hint="the weights are broken (diverged training?); re-initialise or reload")

    def _check_arch(self) -> None:
        keys: dict[str, int] = {}
        for node in self.nodes("choice"):
            keys[arch_key(node.id, node.attrs)] = len(node.attrs["candidates"])
        for key, k in keys.items():
            a = self.arch.get(key)
            if a is None or a.shape != (k,):
                raise WeightError(f"decision {key!r} needs {k} architecture logits, has "
                                  f"{None if a is None else a.shape}", rule="arch",
                                  hint="call g.init_params() or load the weights file")
            if not np.isfinite(a).all():
                raise WeightError(f"architecture logits of {key!r} contain NaN/Inf", rule="finite")
        extra = sorted(set(self.arch) - set(keys))
        if extra:
            raise WeightError(f"architecture logits {extra} belong to no choice node", rule="arch",
                              hint="delete them from g.arch")

    def _neighbourhood(self, n: str) -> str:
        """A few lines around node ``n`` for error messages (what JAX's check_jaxpr prints)."""
        def line(m: str, mark: str) -> str:
            d = self._g.nodes[m]
            return f"    {mark} {m}: {d['op']} -> {d.get('type')}"

        lines = ["  around it:"]
        try:
            lines += [line(u, "in ") for u in self.inputs_of(n)]
            lines.append(line(n, ">>>"))
            lines += [line(v, "out") for v, _ in self.users_of(n)][:8]
        except Exception:  # a broken graph (e.g. non-int ports) must not hide the original error
            return ""
        return "\n".join(lines)

    # ------------------------------------------------------------------ identity

    def structural_hash(self) -> str:
        """A hash of the structure that ignores node names and weights.

        networkx's Weisfeiler-Lehman hash over op + attrs + output type labels, with the
        consumer port on each edge and input/output positions marked; iterations cover
        the longest path so every label sees its whole ancestry.
        """
        h = nx.DiGraph()
        outs = {o: i for i, o in enumerate(self._outputs)}
        ins = {x: i for i, x in enumerate(self._inputs)}
        for n, d in self._g.nodes(data=True):
            label = json.dumps([d["op"], d["attrs"], str(d.get("type")), ins.get(n), outs.get(n)], sort_keys=True)
            h.add_node(n, label=label)
        for u, v, p in self._g.edges(data="port"):
            prev = h.edges[u, v]["port"] + "," if h.has_edge(u, v) else ""
            h.add_edge(u, v, port=prev + str(p))
        for u, v in h.edges:
            h.edges[u, v]["port"] = ",".join(sorted(h.edges[u, v]["port"].split(",")))
        depth = nx.dag_longest_path_length(h) if nx.is_directed_acyclic_graph(h) else len(h)
        with warnings.catch_warnings():  # networkx >= 3.5 warns that directed hashes changed in 3.5
            warnings.simplefilter("ignore", UserWarning)
            return nx.weisfeiler_lehman_graph_hash(h, node_attr="label", edge_attr="port",
                                                   iterations=max(2, depth + 1), digest_size=16)

    def weights_hash(self) -> str:
        """sha256 over every node's params and buffers (by node id and name) and the arch logits."""
        sha = hashlib.sha256()
        for n in sorted(self._g.nodes):
            d = self._g.nodes[n]
            for kind in ("params", "buffers"):
                for k in sorted(d[kind]):
                    a = d[kind][k]
                    sha.update(f"{n}/{kind}/{k}/{a.shape}".encode())
                    sha.update(np.ascontiguousarray(a).tobytes())
        for k in sorted(self.arch):
            sha.update(f"arch/{k}".encode())
            sha.update(np.ascontiguousarray(self.arch[k]).tobytes())
        return sha.hexdigest()

    def num_params(self) -> int:
        """Number of trainable parameters (architecture logits excluded)."""
        return sum(int(a.size) for _, d in self._g.nodes(data=True) for a in d["params"].values())

    # ------------------------------------------------------------------ display

    def summary(self) -> str:
        """A table of node, op, output shape and parameter count, in topological order."""
        rows = [("node", "op", "output", "params")]
        for n in self.topo_order():
            d = self._g.nodes[n]
            nparams = sum(int(a.size) for a in d["params"].values())
            rows.append((n, d["op"], str(d.get("type")), f"{nparams:,}" if nparams else "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        fmt = lambda r: "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        lines = [f"graph {self.name!r}: {len(self)} nodes, {self.num_params():,} params, "
                 f"inputs {list(self._inputs)}, outputs {list(self._outputs)}", fmt(rows[0]),
                 "  ".join("-" * w for w in widths)]
        lines += [fmt(r) for r in rows[1:]]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<archir.Graph {self.name!r}: {len(self)} nodes, inputs={self._inputs}, outputs={self._outputs}>"
