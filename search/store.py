"""The experiment store: one SQLite database per search run, in WAL mode.

A run directory holds::

    runs/demo/
      search.db              # this store (SQLite, WAL): the config and every candidate
      graphs/<id>.json       # each finished candidate's graph (archir.save) ...
      graphs/<id>.safetensors  # ... with its trained weights
      pareto.png, best.onnx  # written by the gallery / export

Only the driver process writes the store (executors return results; the driver records
them), and a driver holds the folder's lock (``search.lock``) while it runs, so a second
``archir search --resume`` on the same folder is refused instead of duplicating work. WAL
mode lets ``archir gallery`` read while a search is running, and a search killed at any moment
(even ``SIGKILL``) leaves a consistent database: a candidate is either recorded with its result
or still ``queued``/``running``.

Every candidate row holds: ``id`` (0, 1, 2, ... in the order the driver asked for them),
``round`` (the ask/tell round it belongs to), ``parents`` (ids, JSON list), ``op`` (what made
it: ``"sample"``, ``"mutate:<decision key>"``), ``decisions`` (JSON), ``seed``, ``status``
(``queued`` -> ``running`` -> ``done`` | ``failed``), ``graph_hash``
(:meth:`archir.Graph.structural_hash`), ``graph_path`` (relative to the run directory),
``metrics``/``costs``/``timings`` (JSON), ``score`` (the scalarised objective, lower is better),
``within_budget``, ``error`` (the reason a candidate failed, one line) and ``traceback`` (the
Python traceback when it failed from an archir bug rather than a user error; ``None`` otherwise)
``cache_of`` (the id of the finished candidate of the same architecture whose result this one
reuses, not trained again: a de-duplication cache hit; ``None`` for a candidate that was evaluated)
and ``told`` (asynchronous runs: the order in which results were told to the strategy; with
``round`` = the results told before the candidate was asked, a resume replays exactly what
happened). A store written before ``traceback`` / ``cache_of`` / ``told`` existed gets the column
when a search resumes it (readers see ``None`` there).

The experiment's config (space, strategy, objective, budget, seeds, training) is stored once;
:meth:`Store.check_config` compares it with a resumed run's config and names every
difference, so ``--resume`` never mixes two different experiments in one store.

Example:
    >>> st = Store.create("runs/demo", {"space": "chain", "seed": 0})   # doctest: +SKIP
    >>> st.add(Candidate(id=0, round=0, op="sample", decisions={...}, seed=123))  # doctest: +SKIP
    >>> [c.status for c in st.candidates()]                              # doctest: +SKIP
    ['queued']
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from archir.errors import ArchirError

__all__ = ["Store", "Candidate", "StoreError", "ConfigMismatch", "STORE_SCHEMA_VERSION", "DB_NAME", "LOCK_NAME",
           "STATUSES"]

STORE_SCHEMA_VERSION = 1
DB_NAME = "search.db"
LOCK_NAME = "search.lock"
STATUSES = ("queued", "running", "done", "failed")


class StoreError(ArchirError, ValueError):
    """The store cannot be opened or used as asked (missing, not a store, newer schema, ...).

    Attributes:
        hint: how to fix it (one line); ``file`` (in ``where``): the run folder or store file.
        ``message`` and the rest as for :class:`archir.ArchirError`.
    """

    def __init__(self, message: str, hint: str | None = None, **where: Any) -> None:
        super().__init__(message, hint=hint, **where)


class ConfigMismatch(StoreError):
    """``--resume`` was given a config that differs from the stored experiment's config."""


@dataclass
class Candidate:
    """One candidate architecture of a search, as recorded in the store.

    Attributes:
        id: its number in the run (0, 1, 2, ... in the order the driver asked for them).
        round: the ask/tell round it was asked in.
        op: what produced it: ``"sample"``, ``"mutate:<decision key>"``, ...
        decisions: the space's decisions (plain JSON).
        seed: the seed of its weights and training.
        parents: ids of the candidates it was derived from.
        status: ``"queued"``, ``"running"``, ``"done"`` or ``"failed"``.
        graph_hash: the structural hash of its graph (None until evaluated).
        graph_path: its graph file, relative to the run directory (None until done).
        metrics: training metrics (``val_error``, ``test_error``, ...).
        costs: hardware costs (``params``, ``macs``, ``latency_ms``, ...).
        timings: seconds spent (``build_s``, ``train_s``, ``cost_s``, ``total_s``) and ``epochs``.
        score: the scalarised objective (lower is better), None unless done.
        within_budget: False when a hard budget (``--max-latency-ms``) is exceeded.
        error: one line: why it failed.
        traceback: the traceback of the exception it failed from when that was a bug (not an
            ``archir.ArchirError`` user error such as a refused pass), else None.
        cache_of: the id of the finished candidate of the same architecture whose result it reuses
            (a de-duplication cache hit: not trained), else None.
        told: in an asynchronous run, the position (0, 1, 2, ...) at which its result was told to the
            strategy (results are told as they arrive); None in a synchronous run and until told.
            ``round`` is then the number of results told before it was asked. Both together let a
            resume replay the run's asks and tells in exactly the order they happened.
    """

    id: int
    round: int
    op: str
    decisions: dict
    seed: int
    parents: list[int] = field(default_factory=list)
    status: str = "queued"
    graph_hash: str | None = None
    graph_path: str | None = None
    metrics: dict = field(default_factory=dict)
    costs: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    score: float | None = None
    within_budget: bool = True
    error: str | None = None
    created_at: float = 0.0
    finished_at: float | None = None
    traceback: str | None = None
    cache_of: int | None = None
    told: int | None = None

    @property
    def finished(self) -> bool:
        """True when done or failed."""
        return self.status in ("done", "failed")


_COLUMNS = ("id", "round", "op", "decisions", "seed", "parents", "status", "graph_hash", "graph_path", "metrics",
            "costs", "timings", "score", "within_budget", "error", "created_at", "finished_at", "traceback",
            "cache_of", "told")
#: columns added after schema 1 was first released: (name, SQL type); an older store gets them on a locked open
_ADDED_COLUMNS = (("traceback", "TEXT"), ("cache_of", "INTEGER"), ("told", "INTEGER"))
_JSON_COLUMNS = {"decisions", "parents", "metrics", "costs", "timings"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY,
    round INTEGER NOT NULL,
    op TEXT NOT NULL,
    decisions TEXT NOT NULL,
    seed INTEGER NOT NULL,
    parents TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    graph_hash TEXT,
    graph_path TEXT,
    metrics TEXT NOT NULL,
    costs TEXT NOT NULL,
    timings TEXT NOT NULL,
    score REAL,
    within_budget INTEGER NOT NULL,
    error TEXT,
    created_at REAL NOT NULL,
    finished_at REAL,
    traceback TEXT,
    cache_of INTEGER,
    told INTEGER
);
CREATE INDEX IF NOT EXISTS candidates_status ON candidates(status);
"""


def _dumps(v: Any) -> str:
    return json.dumps(v, sort_keys=True, allow_nan=True)


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Readable differences between two JSON values (``key: stored X, given Y``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            p = f"{path}.{k}" if path else str(k)
            if k not in a:
                out.append(f"{p}: not in the stored config, given {b[k]!r}")
            elif k not in b:
                out.append(f"{p}: stored {a[k]!r}, not given")
            else:
                out += _diff(a[k], b[k], p)
        return out
    return [] if a == b else [f"{path or 'config'}: stored {a!r}, given {b!r}"]


class Store:
    """The SQLite store of one search run (see the module docstring).

    Use :meth:`create` for a new run and :meth:`open` to read or resume one. The store is
    a context manager; :meth:`close` closes the connection.
    """

    def __init__(self, run_dir: Path, conn: sqlite3.Connection, lock_fd: int | None = None,
                 missing: frozenset[str] = frozenset()) -> None:
        self.run_dir = run_dir
        self.path = run_dir / DB_NAME
        self._conn = conn
        self._lock_fd = lock_fd
        # what SELECT reads for each column: a column an old store lacks (opened read-only) reads as NULL
        self._select = ", ".join("NULL" if c in missing else c for c in _COLUMNS)

    @staticmethod
    def _add_columns(conn: sqlite3.Connection, lock: bool) -> frozenset[str]:
        """Give a store written before a column existed that column (only under the driver lock: readers
        never write); returns the columns still missing."""
        have = {r[1] for r in conn.execute("PRAGMA table_info(candidates)")}
        missing = [(name, sql) for name, sql in _ADDED_COLUMNS if name not in have]
        if missing and lock:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                for name, sql in missing:
                    conn.execute(f"ALTER TABLE candidates ADD COLUMN {name} {sql}")
            return frozenset()
        return frozenset(name for name, _ in missing)

    @staticmethod
    def _lock(run_dir: Path) -> int | None:
        """Take the run folder's driver lock (``search.lock``, ``flock``), or raise if another driver holds it.

        The OS drops the lock when the process ends, however it ends (``SIGKILL`` included), so a
        killed search never leaves a stale lock behind. Without ``fcntl`` (Windows) nothing is locked.
        """
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return None
        fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise StoreError(f"another search (pid {pid}) is writing this run folder", file=run_dir,
                             hint="wait for it to finish or stop it, then --resume; or use another --out folder"
                             ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return fd

    # ------------------------------------------------------------------ open / create

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a finished candidate survives a crash
        except sqlite3.DatabaseError as e:
            conn.close()
            raise StoreError(f"not an archir search store ({e})", file=path,
                             hint="point at a run directory written by 'archir search', or use a new --out") from None
        return conn

    @classmethod
    def create(cls, run_dir: str | Path, config: Mapping[str, Any]) -> "Store":
        """Create a new store in ``run_dir`` (made if missing) holding ``config``.

        Raises:
            StoreError: ``run_dir`` already holds a store (resume it, or pick a new folder).
        """
        run_dir = Path(run_dir)
        if (run_dir / DB_NAME).exists():
            raise StoreError(f"already holds a search ({DB_NAME})",
                             file=run_dir, hint="pass --resume to continue it, or choose another --out folder")
        if run_dir.exists() and not run_dir.is_dir():
            raise StoreError("exists and is not a folder", file=run_dir, hint="choose another --out folder")
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = cls._lock(run_dir)
        (run_dir / "graphs").mkdir(exist_ok=True)
        try:
            conn = cls._connect(run_dir / DB_NAME)
        except BaseException:
            cls._unlock(lock)
            raise
        with conn:
            conn.execute("BEGIN")
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [
                ("format", "archir.search"), ("schema_version", str(STORE_SCHEMA_VERSION)),
                ("config", _dumps(dict(config))), ("created_at", repr(time.time())), ("elapsed_s", "0.0")])
        return cls(run_dir, conn, lock)

    @staticmethod
    def _unlock(fd: int | None) -> None:
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    @classmethod
    def open(cls, run_dir: str | Path, *, lock: bool = False) -> "Store":
        """Open the store of an existing run.

        Args:
            run_dir: the run folder.
            lock: take the driver lock (a search that will write); readers (gallery, export) need none.

        Raises:
            StoreError: no store there, not an archir store, written by a newer archir, or (``lock``)
                another search is writing it.
        """
        run_dir = Path(run_dir)
        path = run_dir / DB_NAME
        if not path.is_file():
            raise StoreError(f"no search store ({DB_NAME}) in this folder",
                             file=run_dir, hint="give the --out folder of an 'archir search' run")
        conn = cls._connect(path)
        try:
            rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as e:
            conn.close()
            raise StoreError(f"not an archir search store ({e})",
                             file=path, hint="point at a run directory written by 'archir search'") from None
        if rows.get("format") != "archir.search":
            conn.close()
            raise StoreError("not an archir search store", file=path,
                             hint="point at a run directory of 'archir search'")
        ver = int(rows.get("schema_version", "0"))
        if ver > STORE_SCHEMA_VERSION:
            conn.close()
            raise StoreError(f"written with store schema {ver}; this archir reads up to "
                             f"{STORE_SCHEMA_VERSION}", file=path, hint="upgrade archir to read this run")
        try:
            fd = cls._lock(run_dir) if lock else None
        except BaseException:
            conn.close()
            raise
        try:
            missing = cls._add_columns(conn, lock)
        except BaseException:
            conn.close()
            cls._unlock(fd)
            raise
        return cls(run_dir, conn, fd, missing)

    def close(self) -> None:
        """Close the connection (WAL contents are checkpointed by SQLite) and release the driver lock."""
        self._conn.close()
        self._unlock(self._lock_fd)
        self._lock_fd = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ meta / config

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, key: str, value: str) -> None:
        self._conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                           "excluded.value", (key, value))

    @property
    def config(self) -> dict:
        """The experiment config stored at creation."""
        return json.loads(self._meta("config") or "{}")

    def check_config(self, config: Mapping[str, Any]) -> None:
        """Raise :class:`ConfigMismatch` naming every difference between ``config`` and the stored one."""
        stored = self.config
        given = json.loads(_dumps(dict(config)))  # compare JSON forms (tuples become lists)
        diffs = _diff(stored, given)
        if diffs:
            shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
            raise ConfigMismatch(f"--resume with a different experiment config: {shown}", file=self.run_dir,
                                 hint="resume with the same options as the first run, or use a new --out folder")

    def set_config(self, config: Mapping[str, Any]) -> None:
        """Replace the stored experiment config (``--resume`` with a larger budget records the new budget)."""
        self._set_meta("config", _dumps(dict(config)))

    def info(self, key: str, default: Any = None) -> Any:
        """A JSON value the driver stored beside the config with :meth:`set_info` (e.g. resolved shapes)."""
        v = self._meta(f"info.{key}")
        return default if v is None else json.loads(v)

    def set_info(self, key: str, value: Any) -> None:
        """Store a JSON value under ``key`` (not part of the config that ``--resume`` compares)."""
        self._set_meta(f"info.{key}", _dumps(value))

    @property
    def elapsed_s(self) -> float:
        """Search wall time spent in earlier sessions (added up by :meth:`add_elapsed`)."""
        return float(self._meta("elapsed_s") or 0.0)

    def add_elapsed(self, seconds: float) -> None:
        """Add ``seconds`` of search wall time (time budgets count across resumed sessions)."""
        self._set_meta("elapsed_s", repr(self.elapsed_s + float(seconds)))

    # ------------------------------------------------------------------ candidates

    @staticmethod
    def _row(c: Candidate) -> tuple:
        vals = []
        for col in _COLUMNS:
            v = getattr(c, col)
            if col in _JSON_COLUMNS:
                v = _dumps(v)
            elif col == "within_budget":
                v = int(bool(v))
            vals.append(v)
        return tuple(vals)

    @staticmethod
    def _from_row(row: tuple) -> Candidate:
        kw = {}
        for col, v in zip(_COLUMNS, row):
            if col in _JSON_COLUMNS:
                v = json.loads(v)
            elif col == "within_budget":
                v = bool(v)
            kw[col] = v
        return Candidate(**kw)

    def add(self, cands: Candidate | Iterable[Candidate]) -> None:
        """Record new candidates (status ``queued``) in one transaction.

        Raises:
            StoreError: a candidate id is already recorded (nothing is written then).
        """
        cands = [cands] if isinstance(cands, Candidate) else list(cands)
        now = time.time()
        for c in cands:
            c.created_at = c.created_at or now
        try:
            with self._conn:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(f"INSERT INTO candidates({', '.join(_COLUMNS)}) VALUES "
                                       f"({', '.join('?' * len(_COLUMNS))})", [self._row(c) for c in cands])
        except sqlite3.IntegrityError as e:
            raise StoreError(f"candidate id already recorded ({e})",
                             file=self.path, hint="this is an archir bug: ids are given out once") from None

    def mark_running(self, ids: Iterable[int]) -> None:
        """Set the status of queued candidates to ``running``."""
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("UPDATE candidates SET status = 'running' WHERE id = ? AND status = 'queued'",
                                   [(int(i),) for i in ids])

    def finish(self, c: Candidate) -> None:
        """Write a finished candidate's result (``status`` done or failed) over its row."""
        if c.status not in ("done", "failed"):
            raise ValueError(f"candidate {c.id}: finish() needs status done or failed, not {c.status!r}")
        c.finished_at = c.finished_at or time.time()
        row = self._row(c)
        sets = ", ".join(f"{col} = ?" for col in _COLUMNS[1:])
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            cur = self._conn.execute(f"UPDATE candidates SET {sets} WHERE id = ?", (*row[1:], c.id))
            if cur.rowcount != 1:
                raise StoreError(f"candidate {c.id} was never recorded", file=self.path, hint="this is an archir bug")

    def requeue_unfinished(self) -> list[int]:
        """Set every ``running`` candidate back to ``queued`` (after a killed search); returns the ids."""
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            ids = [r[0] for r in self._conn.execute(
                "SELECT id FROM candidates WHERE status IN ('queued', 'running') ORDER BY id")]
            self._conn.execute("UPDATE candidates SET status = 'queued' WHERE status = 'running'")
        return ids

    def candidates(self, status: str | Iterable[str] | None = None) -> list[Candidate]:
        """Recorded candidates in id order, optionally only those of ``status``."""
        q = f"SELECT {self._select} FROM candidates"
        args: tuple = ()
        if status is not None:
            sts = [status] if isinstance(status, str) else list(status)
            q += f" WHERE status IN ({', '.join('?' * len(sts))})"
            args = tuple(sts)
        return [self._from_row(r) for r in self._conn.execute(q + " ORDER BY id", args)]

    def get(self, cid: int) -> Candidate:
        """The candidate with id ``cid``.

        Raises:
            StoreError: no such candidate (the message gives the range of ids).
        """
        row = self._conn.execute(f"SELECT {self._select} FROM candidates WHERE id = ?", (int(cid),)).fetchone()
        if row is None:
            n = self._conn.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]
            raise StoreError(f"no candidate {cid} (this run has ids 0..{n - 1})" if n else
                             f"no candidate {cid} (this run has none yet)", file=self.run_dir,
                             hint="run 'archir gallery' on the folder to list the candidates")
        return self._from_row(row)

    def counts(self) -> dict[str, int]:
        """How many candidates have each status."""
        out = dict.fromkeys(STATUSES, 0)
        for st, n in self._conn.execute("SELECT status, COUNT(*) FROM candidates GROUP BY status"):
            out[st] = n
        return out

    def next_id(self) -> int:
        """The id the next asked candidate gets."""
        return int(self._conn.execute("SELECT COALESCE(MAX(id) + 1, 0) FROM candidates").fetchone()[0])

    # ------------------------------------------------------------------ training curves

    #: a candidate's per-epoch training history, one JSON list per candidate (added after schema 1 was released:
    #: the driver makes the table on its first write, so an older store opens unchanged and reads as "no curves")
    _CURVES_TABLE = "CREATE TABLE IF NOT EXISTS curves (id INTEGER PRIMARY KEY, history TEXT NOT NULL)"

    def set_curve(self, cid: int, history: Iterable[Mapping[str, Any]]) -> None:
        """Record candidate ``cid``'s per-epoch training history (``search.train.TrainResult.history``:
        ``[{"epoch", "train_loss", "val_error", "val_loss", "lr"}, ...]``), replacing any earlier one.

        The curve is kept apart from the candidate's row (its metrics, costs and score are unchanged by it).
        """
        rows = [dict(h) for h in history]
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(self._CURVES_TABLE)
            self._conn.execute("INSERT INTO curves(id, history) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET "
                               "history = excluded.history", (int(cid), _dumps(rows)))

    def curves(self, ids: Iterable[int] | None = None) -> dict[int, list[dict]]:
        """The recorded training histories by candidate id (only ``ids`` when given); a candidate without
        one (a table evaluator's, a run from before curves were recorded) is absent."""
        have = self._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'curves'").fetchone()
        if have is None:
            return {}
        q, args = "SELECT id, history FROM curves", ()
        if ids is not None:
            want = [int(i) for i in ids]
            if not want:
                return {}
            q += f" WHERE id IN ({', '.join('?' * len(want))})"
            args = tuple(want)
        return {int(i): json.loads(h) for i, h in self._conn.execute(q + " ORDER BY id", args)}
