"""``costmodels.LatencyTable``: per-op latencies, measured once per device and cached in SQLite.

A network's latency is estimated as the sum of the latencies of its ops, each measured
alone: for every distinct ``(op, attrs, input shapes)`` the table builds a one-op graph (one
graph input per port, of the right shape, feeding the op) and times it with
:func:`costmodels.measure`; an entry is the median of its timed runs (or the fastest one,
``statistic="min"``). Entries are keyed by a *device fingerprint*: backend, device name
(CPU model or GPU name with its driver and CUDA runtime), library versions, thread count and
batch size, so numbers from another machine, another library version or another thread
count are never mixed in; they simply miss and are measured again.

The estimate of a network (:meth:`LatencyTable.estimate`) is::

    overhead + sum over nodes of max(entry(node) - overhead, 0)

where ``overhead`` is the latency of the emptiest graph (one input, one ``identity``): the
fixed cost of one ``session.run`` call (argument binding, output allocation, Python) that
every one-op measurement contains once but a network pays only once. Ops in
zero cost (``OpTraits.zero_cost``: the ``input`` and ``view`` categories) cost 0: ``input`` is no
op; ``identity`` and ``dropout`` (eval) are removed by ONNX Runtime's graph optimiser;
``flatten`` and ``stop_gradient`` are views of their input.

It is a sum over isolated ops, so it misses what a backend does across ops (ONNX Runtime
folds BN into the conv and fuses activations and residual adds into it, and changes the
memory layout between convs) and the caches an op finds warm in a network: it ranks well
and is biased. :class:`costmodels.Predictor` learns the correction from measured networks.

Storage: SQLite in WAL mode (readers never block the writer nor each other; any number of
processes may share one file), every write in a transaction (``BEGIN IMMEDIATE``), attrs
and shapes as canonical JSON text (never pickle). A file that is not a healthy table of this
version (garbage bytes, another schema, another ``user_version``, a failed
``PRAGMA integrity_check``, or SQLite reporting corruption later) is never trusted: it is
moved aside to ``<path>.corrupt-<UTC timestamp>`` (with its ``-wal``/``-shm`` files), a
:class:`CorruptTableWarning` says so, and an empty table is built in its place.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from archir.errors import ArchirError, IRError
from archir.graph import Graph
from archir.ops import get_op
from archir.training import auxiliary_head
from archir.types import TensorType
from costmodels.device import cpu_fingerprint, gpu_fingerprint, versions
from costmodels.measure import BACKENDS, Latency, measure

__all__ = ["LatencyTable", "CorruptTableWarning", "MissingLatency", "TABLE_SCHEMA_VERSION",
           "STATISTICS"]

#: ``PRAGMA user_version`` of the table files this module writes; another version is rebuilt.
TABLE_SCHEMA_VERSION = 1
#: ``PRAGMA application_id`` ("arLT"): marks a SQLite file as an archir latency table.
_APPLICATION_ID = 0x61724C54

#: The figures of an entry that a table can read (``statistic=``): median or fastest timed run.
STATISTICS = ("median", "min")

# The key of the per-call overhead row; registry names never start with "_".
_OVERHEAD_OP = "__call_overhead__"

_SCHEMA = {
    "devices": ("id", "fingerprint", "created_at"),
    "entries": ("device", "op", "attrs", "inputs", "median_ms", "p25_ms", "p75_ms", "min_ms", "n", "warmup",
                "measured_at"),
}
_DDL = """
CREATE TABLE devices (
    id INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE entries (
    device INTEGER NOT NULL REFERENCES devices(id),
    op TEXT NOT NULL,
    attrs TEXT NOT NULL,
    inputs TEXT NOT NULL,
    median_ms REAL NOT NULL CHECK (median_ms >= 0),
    p25_ms REAL NOT NULL CHECK (p25_ms >= 0),
    p75_ms REAL NOT NULL CHECK (p75_ms >= 0),
    min_ms REAL NOT NULL CHECK (min_ms >= 0),
    n INTEGER NOT NULL CHECK (n >= 1),
    warmup INTEGER NOT NULL,
    measured_at TEXT NOT NULL,
    PRIMARY KEY (device, op, attrs, inputs)
) WITHOUT ROWID;
CREATE INDEX entries_by_op ON entries (device, op);
"""
# SQLite result codes that mean "this file is damaged", not "busy, try again"
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


class CorruptTableWarning(UserWarning):
    """A latency-table file was damaged or foreign; it was moved aside and an empty table built.

    The message names the file, what was wrong and where the old file went. Nothing from it
    is used: the entries are measured again as they are needed.
    """


class MissingLatency(ArchirError, KeyError):
    """An entry is not in the table and measuring was not allowed (``measure=False``).

    Also a ``KeyError`` (a lookup that found nothing), but ``str(e)`` is the readable message,
    not the quoted ``repr`` a plain ``KeyError`` prints.
    """

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class _Corrupt(Exception):
    """Internal: the open file is not a healthy table (the reason is the message)."""


def _is_corruption(e: BaseException) -> bool:
    return isinstance(e, sqlite3.DatabaseError) and getattr(e, "sqlite_errorcode", None) in _CORRUPT_CODES


def _canon(value) -> str:
    """Canonical JSON text: sorted keys, no whitespace; the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _shapes(input_shapes: Iterable, where: str) -> list[TensorType]:
    out = []
    for i, s in enumerate(input_shapes):
        if isinstance(s, TensorType):
            out.append(s)
            continue
        if isinstance(s, int) or not isinstance(s, Sequence) or isinstance(s, str) or \
                any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in s):
            raise ValueError(f"{where}: input shape {i} is {s!r}; give each input's per-sample shape as a tuple of "
                             "positive ints (batch excluded), e.g. [(16, 32, 32)], or a TensorType")
        out.append(TensorType(tuple(s)))
    return out


class LatencyTable:
    """Per-op latencies on one device, measured once and cached in a SQLite file.

    Args:
        path: the SQLite file (created, with its parent folders, if missing). Several tables
            (processes, threads) may share one file.
        backend: the :func:`costmodels.measure` backend: ``"ort-cpu"``, ``"ort-cuda"``,
            ``"torch-cpu"`` or ``"torch-cuda"``.
        threads: intra-op threads of every measurement (``None``: the backend's default, which
            depends on the machine's load: fix it for stable numbers).
        batch_size: the batch size every op is measured at.
        warmup, repeats: of each measurement (see :func:`costmodels.measure`).
        seed: of the one-op graphs' weights and inputs.
        statistic: which figure of an entry's timed runs :meth:`lookup` and :meth:`estimate` use:
            ``"median"`` (the default), or ``"min"``, the fastest run, which load from other
            processes disturbs least (best-of-N, like the roofline probe): use it on a shared
            machine. Both are stored for every entry, so one file serves both.

    Attributes:
        path, backend, threads, batch_size, warmup, repeats, statistic: as given.
        fingerprint: the device fingerprint (a dict: ``backend``, ``device``, ``versions``,
            ``threads``, ``batch_size``) that keys this table's entries in the file.

    Raises:
        ValueError: an unknown backend or a bad count.
        OSError: the file's folder cannot be created or the file cannot be opened.

    Example:
        >>> with costmodels.LatencyTable("lut.sqlite", "ort-cpu", threads=1) as table:   # doctest: +SKIP
        ...     table.estimate(archir.samples.resnet_like())       # measures missing ops, then sums
        ...     table.lookup("relu", {}, [(16, 32, 32)])           # one entry, in ms
        0.0821...
    """

    def __init__(self, path: str | os.PathLike, backend: str = "ort-cpu", *, threads: int | None = 1,
                 batch_size: int = 1, warmup: int = 10, repeats: int = 50, seed: int = 0,
                 statistic: str = "median") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"LatencyTable: unknown backend {backend!r}; use one of "
                             f"{', '.join(repr(b) for b in BACKENDS)}")

        def count(name, v, lo, none_ok=False):
            if v is None and none_ok:
                return None
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"LatencyTable: {name} must be an int >= {lo}{' or None' if none_ok else ''}, "
                                 f"got {v!r}")
            return v

        self.path = Path(path)
        self.backend = backend
        self.threads = count("threads", threads, 1, none_ok=True)
        self.batch_size = count("batch_size", batch_size, 1)
        self.warmup = count("warmup", warmup, 0)
        self.repeats = count("repeats", repeats, 1)
        self.seed = count("seed", seed, 0)
        if statistic not in STATISTICS:
            raise ValueError(f"LatencyTable: statistic must be one of {list(STATISTICS)}, got {statistic!r}")
        self.statistic = statistic
        device = gpu_fingerprint(0) if backend.endswith("cuda") else cpu_fingerprint()
        self.fingerprint = {"backend": backend, "device": device, "versions": versions(), "threads": self.threads,
                            "batch_size": self.batch_size}
        self._lock = threading.RLock()  # one connection, used from any thread one call at a time
        self._conn: sqlite3.Connection | None = None
        self._device_id: int | None = None
        self._cache: dict[tuple[str, str, str], float] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()

    # ------------------------------------------------------------------ file handling

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; every write says BEGIN IMMEDIATE itself
        conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 60000")
        return conn

    def _verify(self, conn: sqlite3.Connection) -> bool:
        """Check the file; True if it is empty (a new table to create). Raises _Corrupt."""
        try:
            app = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            objects = conn.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
        except sqlite3.DatabaseError as e:
            if _is_corruption(e) or not isinstance(e, sqlite3.OperationalError):
                raise _Corrupt(f"it is not a readable SQLite database ({e})") from None
            raise
        if app == 0 and version == 0 and not objects:
            return True
        if app != _APPLICATION_ID:
            raise _Corrupt(f"it is a SQLite database of another application (application_id {app:#x}, "
                           f"an archir latency table has {_APPLICATION_ID:#x})")
        if version != TABLE_SCHEMA_VERSION:
            raise _Corrupt(f"its schema version (user_version) is {version}, this archir reads version "
                           f"{TABLE_SCHEMA_VERSION}")
        for table, cols in _SCHEMA.items():
            have = tuple(r[1] for r in conn.execute(f"PRAGMA table_info({table})"))
            if have != cols:
                raise _Corrupt(f"its table {table!r} has columns {list(have)}, expected {list(cols)}")
        try:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check(20)")]
        except sqlite3.DatabaseError as e:
            raise _Corrupt(f"PRAGMA integrity_check failed ({e})") from None
        if rows != ["ok"]:
            raise _Corrupt(f"PRAGMA integrity_check failed: {'; '.join(rows[:5])}")
        return False

    def _open(self) -> None:
        for attempt in range(3):
            ident = self._identity()
            conn = self._connect()
            try:
                fresh = self._verify(conn)
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                if fresh:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        # another process may have built it while we waited for the write lock
                        if not conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone():
                            for stmt in filter(str.strip, _DDL.split(";")):
                                conn.execute(stmt)
                            conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
                            conn.execute(f"PRAGMA user_version = {TABLE_SCHEMA_VERSION}")
                        conn.execute("COMMIT")
                    finally:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                    self._verify(conn)
                self._conn = conn
                self._device_id = self._device_row()
                return
            except _Corrupt as e:
                conn.close()
                self._quarantine(str(e), ident)
            except sqlite3.DatabaseError as e:
                conn.close()
                if not _is_corruption(e):
                    raise
                self._quarantine(f"SQLite reports it damaged ({e})", ident)
        raise OSError(f"latency table {self.path}: could not build a healthy table after moving damaged files "
                      "aside three times; check the disk and the folder's permissions")

    def _identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def _quarantine(self, reason: str, ident: tuple[int, int] | None) -> None:
        """Move the damaged file (and its -wal/-shm) aside, unless another process already did."""
        if ident is not None and self._identity() == ident:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            dest = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
            k = 1
            while dest.exists():
                dest = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{k}")
                k += 1
            try:
                os.replace(self.path, dest)
            except FileNotFoundError:  # another process moved it first
                dest = None
            for suffix in ("-wal", "-shm"):
                side = Path(f"{self.path}{suffix}")
                if side.exists() and dest is not None:
                    try:
                        os.replace(side, Path(f"{dest}{suffix}"))
                    except FileNotFoundError:
                        pass
            where = f"moved it to {dest}" if dest is not None else "another process moved it aside"
        else:
            where = "another process already replaced it"
        warnings.warn(f"latency table {self.path}: {reason}; not trusting it: {where} and started an empty table "
                      "(entries will be measured again)", CorruptTableWarning, stacklevel=4)

    def _device_row(self) -> int:
        key = _canon(self.fingerprint)
        row = self._conn.execute("SELECT id FROM devices WHERE fingerprint = ?", (key,)).fetchone()
        if row:
            return row[0]
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute("INSERT OR IGNORE INTO devices (fingerprint, created_at) VALUES (?, ?)",
                               (key, datetime.now(timezone.utc).isoformat()))
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        return self._conn.execute("SELECT id FROM devices WHERE fingerprint = ?", (key,)).fetchone()[0]

    def _db(self, fn):
        """Run ``fn(conn)``; on corruption found in use, move the file aside, rebuild, retry once."""
        with self._lock:
            if self._conn is None:
                raise RuntimeError(f"latency table {self.path} is closed; open a new LatencyTable")
            try:
                return fn(self._conn)
            except sqlite3.DatabaseError as e:
                if not _is_corruption(e):
                    raise
                ident = self._identity()
                self._conn.close()
                self._conn = None
                self._cache.clear()
                self._quarantine(f"SQLite reports it damaged ({e})", ident)
                self._open()
                return fn(self._conn)

    def close(self) -> None:
        """Close the file (pending writes are already committed). Idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "LatencyTable":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __len__(self) -> int:
        """The number of entries of this table's fingerprint (the overhead row included)."""
        return self._db(lambda c: c.execute("SELECT COUNT(*) FROM entries WHERE device = ?",
                                            (self._device_id,)).fetchone()[0])

    def __repr__(self) -> str:
        return (f"<LatencyTable {str(self.path)!r} {self.backend}, threads={self.threads}, batch {self.batch_size}, "
                f"{self.statistic}, {self.fingerprint['device']}>")

    # ------------------------------------------------------------------ keys

    def key(self, op: str, attrs: Mapping | None = None, input_shapes: Iterable = ()) -> tuple[str, str, str]:
        """The canonical key ``(op, attrs JSON, inputs JSON)`` of one entry.

        Attributes are normalised by the op's schema (defaults filled in), so ``{"kernel_size": 3}``
        and ``{"kernel_size": 3, "stride": 1}`` are the same entry.

        Raises:
            OpSchemaError: unknown op or bad attributes. ValueError: bad shapes.
        """
        if op == _OVERHEAD_OP:
            return op, "{}", "[]"
        opdef = get_op(op)
        norm = opdef.normalize_attrs(dict(attrs or {}), node=f"<LatencyTable key {op}>")
        types = _shapes(input_shapes, f"LatencyTable key of {op!r}")
        return op, _canon(norm), _canon([{"dtype": t.dtype, "shape": list(t.shape)} for t in types])

    # ------------------------------------------------------------------ reading and writing

    def _get(self, key: tuple[str, str, str]) -> float | None:
        if key in self._cache:
            return self._cache[key]
        row = self._db(lambda c: c.execute(
            f"SELECT {self.statistic}_ms FROM entries WHERE device = ? AND op = ? AND attrs = ? AND inputs = ?",
            (self._device_id, *key)).fetchone())
        if row is None or not isinstance(row[0], float) or not math.isfinite(row[0]):
            return None
        self._cache[key] = row[0]
        return row[0]

    def _put(self, rows: list[tuple[tuple[str, str, str], Latency]]) -> None:
        now = datetime.now(timezone.utc).isoformat()

        def write(c):
            c.execute("BEGIN IMMEDIATE")
            try:
                c.executemany(
                    "INSERT OR IGNORE INTO entries (device, op, attrs, inputs, median_ms, p25_ms, p75_ms, min_ms, n, "
                    "warmup, measured_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(self._device_id, *k, float(lat.median_ms), float(lat.p25_ms), float(lat.p75_ms),
                      float(min(lat.samples_ms, default=lat.median_ms)), int(lat.n), self.warmup, now)
                     for k, lat in rows])
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise

        self._db(write)

    def put(self, op: str, attrs: Mapping | None, input_shapes: Iterable, latency: Latency | float) -> None:
        """Record a latency measured elsewhere (another tool, an earlier run) for one entry.

        An entry already present is kept (first measurement wins, in every process alike).

        Args:
            op, attrs, input_shapes: the entry (see :meth:`key`).
            latency: a :class:`~costmodels.Latency`, or a median in ms (then quartiles = median, n = 1).

        Raises:
            ValueError: a negative or non-finite latency, or bad shapes. OpSchemaError: bad op/attrs.

        Example:
            >>> table.put("relu", {}, [(16, 32, 32)], 0.012)      # doctest: +SKIP
        """
        k = self.key(op, attrs, input_shapes)
        if not isinstance(latency, Latency):
            if isinstance(latency, bool) or not isinstance(latency, (int, float)) or not math.isfinite(latency) \
                    or latency < 0:
                raise ValueError(f"LatencyTable.put: latency must be a finite number of ms >= 0, got {latency!r}")
            v = float(latency)
            latency = Latency(v, v, v, 1, 0.0, self.fingerprint["device"], {}, self.backend, self.batch_size)
        self._put([(k, latency)])
        self._cache.pop(k, None)

    def _measure_entry(self, key: tuple[str, str, str]) -> Latency:
        op, attrs_json, inputs_json = key
        g = Graph(f"lut_{op.strip('_')}")
        if op == _OVERHEAD_OP:
            x = g.input("x", (1,))
            g.set_outputs(g.add("identity", x, name="op"))
        else:
            opdef = get_op(op)
            if op == "choice":
                raise ValueError("LatencyTable: a choice node has no latency of its own; derive a plain graph "
                                 "(archir.derive) or price a supernet with costmodels.expected_cost(cost='latency')")
            if opdef.training_only:
                raise ValueError(f"LatencyTable: op {op!r} exists for training only and cannot be measured; "
                                 f"remove it with {opdef.removed_by or 'its finalising pass'} before estimating")
            ins = [g.input(f"x{i}", t["shape"]) for i, t in enumerate(json.loads(inputs_json))]
            g.set_outputs(g.add(op, *ins, name="op", **json.loads(attrs_json)))
        g.init_params(self.seed)
        return measure(g, backend=self.backend, batch_size=self.batch_size, warmup=self.warmup,
                       repeats=self.repeats, threads=self.threads, seed=self.seed)

    def _ensure(self, keys: Iterable[tuple[str, str, str]], allow_measure: bool, where: str) -> dict:
        out, missing = {}, []
        for k in dict.fromkeys(keys):
            v = self._get(k)
            if v is None:
                missing.append(k)
            else:
                out[k] = v
        if missing and not allow_measure:
            shown = ", ".join(f"{op}{json.loads(a) or ''} on {[t['shape'] for t in json.loads(i)]}"
                              for op, a, i in missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise MissingLatency(f"{where}: {len(missing)} entr{'y is' if len(missing) == 1 else 'ies are'} not in "
                                 f"latency table {self.path} for this device ({shown}); call with measure=True to "
                                 "measure them here")
        for k in missing:  # each in its own transaction: a killed run keeps what it measured
            self._put([(k, self._measure_entry(k))])
            v = self._get(k)
            out[k] = v
        return out

    @property
    def overhead_ms(self) -> float:
        """The fixed cost of one backend call (one input -> ``identity``), measured once per device."""
        k = (_OVERHEAD_OP, "{}", "[]")
        return self._ensure([k], True, "LatencyTable.overhead_ms")[k]

    def lookup(self, op: str, attrs: Mapping | None = None, input_shapes: Iterable = (), *,
               measure: bool = True) -> float | None:
        """The latency of one op alone, in ms (the median, or :attr:`statistic`, of the one-op graph's timed runs).

        This is the raw entry: it contains one call overhead (:attr:`overhead_ms`), which
        :meth:`estimate` subtracts. Zero-cost ops (``OpTraits.zero_cost``) return ``0.0``.

        Args:
            op: the registry key (``"conv2d"``).
            attrs: its attributes (defaults are filled in).
            input_shapes: per-sample shape of each input in port order (batch excluded), as
                tuples or :class:`~archir.TensorType`.
            measure: measure a missing entry now (and store it); ``False`` returns ``None`` instead.

        Returns:
            Milliseconds, or ``None`` when missing and ``measure=False``.

        Raises:
            OpSchemaError: unknown op or bad attributes. ShapeError: the shapes do not fit the op.
            ValueError: bad shapes, or an op that cannot be measured alone (``choice``, training-only ops).
            BackendUnavailable: the table's backend cannot run here.

        Example:
            >>> conv = {"out_channels": 16, "kernel_size": 3, "padding": 1}      # doctest: +SKIP
            >>> table.lookup("conv2d", conv, [(16, 32, 32)])                    # doctest: +SKIP
            0.147...
        """
        if get_op(op).traits.zero_cost:
            return 0.0
        k = self.key(op, attrs, input_shapes)
        # check the shapes fit before anything is measured or stored
        get_op(op).infer(json.loads(k[1]), _shapes(input_shapes, "lookup"), f"<LatencyTable lookup {op}>")
        v = self._get(k)
        if v is None and measure:
            v = self._ensure([k], True, "lookup")[k]
        return v

    def _node_keys(self, g: Graph) -> dict[str, tuple[str, str, str] | None]:
        g.validate(weights=False)
        keys = {}
        head = set(auxiliary_head(g))  # training only: not part of the deployed network
        for n in g.topo_order():
            node = g.node(n)
            if n in head or get_op(node.op, node.id).traits.zero_cost:
                keys[n] = None
                continue
            if node.op == "choice":
                raise IRError("graph has choice nodes (a supernet); a latency table prices plain graphs", node=n,
                              rule="choice", hint="derive a plain graph with archir.derive(g, decisions), or price "
                              "the supernet with costmodels.expected_cost(g, probs, cost='latency', table=table)")
            keys[n] = self.key(node.op, node.attrs, g.input_types(n))
        return keys

    def estimate_nodes(self, g: Graph, *, measure: bool = True) -> dict[str, float]:
        """Per-node latency in ms: the node's entry minus the call overhead (at least 0).

        Args:
            g: a plain graph (no choice nodes); weights are not needed.
            measure: measure missing entries now; ``False`` raises :class:`MissingLatency` instead.

        Returns:
            Node id -> ms, in topological order; 0.0 for zero-cost ops (``OpTraits.zero_cost``,
            ``drop_path`` and ``auxiliary`` among them) and for the nodes of an auxiliary head
            (``archir.training.auxiliary_head``: training only, as ``costmodels.count`` excludes them).

        Raises:
            IRError: the graph is invalid or a supernet.
            MissingLatency: an entry is missing and ``measure=False``.

        Example:
            >>> per_node = table.estimate_nodes(g)       # doctest: +SKIP
            >>> max(per_node, key=per_node.get)          # the most expensive node  # doctest: +SKIP
        """
        keys = self._node_keys(g)
        need = [k for k in keys.values() if k is not None] + [(_OVERHEAD_OP, "{}", "[]")]
        values = self._ensure(need, measure, f"LatencyTable.estimate of graph {g.name!r}")
        over = values[(_OVERHEAD_OP, "{}", "[]")]
        return {n: 0.0 if k is None else max(values[k] - over, 0.0) for n, k in keys.items()}

    def estimate(self, g: Graph, *, measure: bool = True) -> float:
        """The latency estimate of a network in ms: ``overhead_ms + sum(estimate_nodes(g).values())``.

        Only missing entries are measured; a graph whose ops are all in the table costs a few
        SQLite reads.

        Args:
            g: a plain graph (no choice nodes).
            measure: measure missing entries; ``False`` raises :class:`MissingLatency` instead.

        Returns:
            Milliseconds.

        Raises:
            IRError: the graph is invalid or a supernet. MissingLatency: see ``measure``.
            BackendUnavailable: the backend cannot run here and an entry is missing.

        Example:
            >>> costmodels.LatencyTable("lut.sqlite").estimate(archir.samples.chain())   # doctest: +SKIP
            0.0913...
        """
        per_node = self.estimate_nodes(g, measure=measure)
        return self.overhead_ms + math.fsum(per_node.values())
