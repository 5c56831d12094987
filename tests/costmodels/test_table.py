"""costmodels.LatencyTable: what is measured, how it is keyed and stored, and what happens to
damaged files and concurrent users.

No test asserts a timing: measurements are real (tiny one-op graphs, few repeats) but only
their bookkeeping is checked; where a test must know that nothing was measured, the
measurement function is replaced by one that fails.
"""

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import archir
import costmodels
from archir import IRError, samples
from archir.ops import get_op
from costmodels import CorruptTableWarning, LatencyTable, MissingLatency
from costmodels import table as table_mod

FAST = {"warmup": 1, "repeats": 3}


def _free(op: str) -> bool:
    return get_op(op).traits.zero_cost
REPO = Path(__file__).resolve().parents[2]


def _no_measuring(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("LatencyTable measured although every entry was in the table")

    monkeypatch.setattr(table_mod, "measure", refuse)


def _distinct_keys(table: LatencyTable, g: archir.Graph) -> set:
    return {table.key(n.op, n.attrs, g.input_types(n.id)) for n in g.nodes() if not _free(n.op)}


# --------------------------------------------------------------------------- estimates


def test_estimate_measures_each_distinct_op_once_then_reads(tmp_path, monkeypatch):
    g = samples.resnet_like()
    with LatencyTable(tmp_path / "lut.sqlite", **FAST) as t:
        est = t.estimate(g)
        keys = _distinct_keys(t, g)
        assert len(keys) < len([n for n in g.nodes() if not _free(n.op)])  # repeats are shared
        assert len(t) == len(keys) + 1  # + the call overhead
        per_node = t.estimate_nodes(g)
        assert list(per_node) == g.topo_order()
        assert all(v >= 0 for v in per_node.values())
        assert all(per_node[n.id] == 0.0 for n in g.nodes() if _free(n.op))
        assert est == pytest.approx(t.overhead_ms + sum(per_node.values()), rel=1e-12)
        assert est > 0
        _no_measuring(monkeypatch)
        assert t.estimate(g) == est
        assert t.estimate(g, measure=False) == est
    # a new table on the same file reads what the first one stored
    with LatencyTable(tmp_path / "lut.sqlite", **FAST) as t2:
        assert t2.estimate(g, measure=False) == est


def test_node_estimate_is_entry_minus_overhead(tmp_path):
    g = samples.chain()
    with LatencyTable(tmp_path / "lut.sqlite", **FAST) as t:
        per_node = t.estimate_nodes(g)
        over = t.overhead_ms
        for n in g.nodes():
            if _free(n.op):
                continue
            raw = t.lookup(n.op, n.attrs, g.input_types(n.id), measure=False)
            assert per_node[n.id] == max(raw - over, 0.0)


def test_one_op_graph_is_measured_with_the_table_settings(tmp_path, monkeypatch):
    seen = []
    real = table_mod.measure

    def spy(g, **kw):
        seen.append((g, kw))
        return real(g, **kw)

    monkeypatch.setattr(table_mod, "measure", spy)
    with LatencyTable(tmp_path / "lut.sqlite", threads=1, batch_size=2, **FAST) as t:
        v = t.lookup("add", {}, [(4, 5, 5), (4, 5, 5)])
    assert v > 0
    (g, kw), = seen
    assert kw == {"backend": "ort-cpu", "batch_size": 2, "warmup": 1, "repeats": 3, "threads": 1, "seed": 0}
    assert [g.node(i).type.shape for i in g.inputs] == [(4, 5, 5), (4, 5, 5)]
    ops = [n for n in g.nodes() if n.op != "input"]
    assert [n.op for n in ops] == ["add"] and g.outputs == (ops[0].id,)
    assert g.inputs_of(ops[0].id) == list(g.inputs)


def test_attrs_are_canonical_json(tmp_path, monkeypatch):
    with LatencyTable(tmp_path / "lut.sqlite", **FAST) as t:
        short = t.key("conv2d", {"out_channels": 4, "kernel_size": 3}, [(3, 8, 8)])
        full = t.key("conv2d", {"kernel_size": [3, 3], "out_channels": 4, "stride": 1, "padding": 0, "groups": 1,
                                "dilation": 1, "bias": True}, [archir.TensorType((3, 8, 8))])
        assert short == full
        op, attrs, inputs = short
        assert json.loads(attrs)["kernel_size"] == 3 and json.loads(inputs) == [{"dtype": "float32",
                                                                                  "shape": [3, 8, 8]}]
        v = t.lookup("conv2d", {"out_channels": 4, "kernel_size": 3}, [(3, 8, 8)])
        _no_measuring(monkeypatch)
        assert t.lookup("conv2d", {"kernel_size": (3, 3), "out_channels": 4, "bias": True}, [(3, 8, 8)]) == v
    raw = sqlite3.connect(tmp_path / "lut.sqlite")
    rows = raw.execute("SELECT op, attrs, inputs FROM entries WHERE op = 'conv2d'").fetchall()
    raw.close()
    assert rows == [short]  # text, not pickled blobs


def test_missing_entries_without_measuring(tmp_path):
    with LatencyTable(tmp_path / "lut.sqlite", **FAST) as t:
        assert t.lookup("relu", {}, [(2, 4, 4)], measure=False) is None
        with pytest.raises(MissingLatency, match=r"not in latency table .*measure=True"):
            t.estimate(samples.chain(), measure=False)
        assert len(t) == 0


def test_put_first_value_wins_and_persists(tmp_path):
    path = tmp_path / "lut.sqlite"
    with LatencyTable(path, **FAST) as t:
        t.put("relu", {}, [(2, 4, 4)], 0.25)
        t.put("relu", {}, [(2, 4, 4)], 9.0)
        assert t.lookup("relu", {}, [(2, 4, 4)], measure=False) == 0.25
        with pytest.raises(ValueError, match="finite number"):
            t.put("relu", {}, [(2, 4, 4)], -1.0)
    with LatencyTable(path, **FAST) as t:
        assert t.lookup("relu", {}, [(2, 4, 4)], measure=False) == 0.25


def test_statistic_min_reads_the_fastest_run(tmp_path):
    path = tmp_path / "lut.sqlite"
    lat = costmodels.Latency(2.0, 1.5, 3.0, 3, 10.0, "cpu: test", {}, "ort-cpu", 1, 1, samples_ms=(1.0, 2.0, 3.0))
    with LatencyTable(path, **FAST) as t:
        t.put("relu", {}, [(2, 4, 4)], lat)
        assert t.lookup("relu", {}, [(2, 4, 4)], measure=False) == 2.0
    with LatencyTable(path, statistic="min", **FAST) as t:
        assert t.lookup("relu", {}, [(2, 4, 4)], measure=False) == 1.0


def test_fingerprint_keys_the_entries(tmp_path):
    path = tmp_path / "lut.sqlite"
    with LatencyTable(path, threads=1, **FAST) as t1:
        t1.put("relu", {}, [(2, 4, 4)], 0.5)
        fp = t1.fingerprint
    assert fp["backend"] == "ort-cpu" and fp["threads"] == 1 and fp["batch_size"] == 1
    assert fp["device"] == costmodels.cpu_fingerprint() and fp["versions"] == costmodels.versions()
    for other in ({"threads": 2}, {"batch_size": 4}, {"threads": None}):
        with LatencyTable(path, **{**FAST, **other}) as t:
            assert t.lookup("relu", {}, [(2, 4, 4)], measure=False) is None, other
    raw = sqlite3.connect(path)
    stored = [json.loads(r[0]) for r in raw.execute("SELECT fingerprint FROM devices")]
    raw.close()
    assert fp in stored and len(stored) == 4


def test_zero_cost_ops_are_never_measured(tmp_path, monkeypatch):
    assert all(_free(op) for op in ("input", "identity", "dropout", "flatten"))
    _no_measuring(monkeypatch)
    with LatencyTable(tmp_path / "lut.sqlite", **FAST) as t:
        assert t.lookup("identity", {}, [(2, 4, 4)]) == 0.0
        assert t.lookup("dropout", {"p": 0.3}, [(2, 4, 4)]) == 0.0


def test_refuses_what_cannot_be_measured(tmp_path):
    with LatencyTable(tmp_path / "lut.sqlite", **FAST) as t:
        with pytest.raises(IRError, match="derive"):
            t.estimate(_tiny_supernet())
        with pytest.raises(ValueError, match="training only.*finalize"):
            t.lookup("stop_forward", {}, [(2, 4, 4)])
        with pytest.raises(archir.ShapeError):
            t.lookup("add", {}, [(2, 4, 4), (3, 4, 4)])
        with pytest.raises(ValueError, match="per-sample shape"):
            t.lookup("relu", {}, [16])
        with pytest.raises(archir.OpSchemaError, match="unknown op"):
            t.lookup("conv3d", {}, [(2, 4, 4)])
        assert len(t) == 0


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown backend 'onnx'.*ort-cpu"):
        LatencyTable(tmp_path / "a.sqlite", backend="onnx")
    with pytest.raises(ValueError, match="threads"):
        LatencyTable(tmp_path / "a.sqlite", threads=0)
    with pytest.raises(ValueError, match="statistic"):
        LatencyTable(tmp_path / "a.sqlite", statistic="mean")
    t = LatencyTable(tmp_path / "a.sqlite")
    t.close()
    with pytest.raises(RuntimeError, match="closed"):
        len(t)


def _tiny_supernet():
    g = archir.Graph("s")
    x = g.input("x", (2, 4, 4))
    c = g.add("choice", x, candidates=[{"name": "a", "ops": [{"op": "relu"}]}, {"name": "b", "ops": []}])
    g.set_outputs(c)
    return g.init_params(0)


# --------------------------------------------------------------------------- storage


def test_file_is_wal_with_schema_version(tmp_path):
    path = tmp_path / "sub" / "dir" / "lut.sqlite"  # parents are created
    LatencyTable(path, **FAST).close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA user_version").fetchone()[0] == table_mod.TABLE_SCHEMA_VERSION
    assert raw.execute("PRAGMA application_id").fetchone()[0] == table_mod._APPLICATION_ID
    raw.close()


def test_readers_see_a_consistent_snapshot_while_a_writer_commits(tmp_path):
    path = tmp_path / "lut.sqlite"
    writer = LatencyTable(path, **FAST)
    reader = LatencyTable(path, **FAST)
    writer.put("relu", {}, [(1, 2, 2)], 0.1)
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN")  # a long read transaction in another connection
    before = raw.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    writer.put("relu", {}, [(1, 3, 3)], 0.2)  # WAL: the writer is not blocked by the reader
    assert raw.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == before  # snapshot isolation
    assert reader.lookup("relu", {}, [(1, 3, 3)], measure=False) == 0.2  # a fresh read sees the commit
    raw.execute("COMMIT")
    assert raw.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == before + 1
    raw.close()
    writer.close()
    reader.close()


_WRITER = """
import sys
from costmodels import LatencyTable
t = LatencyTable(sys.argv[1], warmup=1, repeats=3)
for i in range(1, 151):
    t.put("relu", {}, [(1, i, 2)], float(i))
print("wrote", len(t))
"""

_READER = """
import sys
from costmodels import LatencyTable
t = LatencyTable(sys.argv[1], warmup=1, repeats=3)
last, reads = 0, 0
while last < 151:
    n = len(t)
    assert n >= last, (n, last)   # never goes back
    for i in range(1, n):         # every committed entry is readable and whole
        v = t.lookup("relu", {}, [(1, i, 2)], measure=False)
        assert v == float(i), (i, v)
    last, reads = n, reads + 1
print("reads", reads)
"""


def test_two_processes_write_and_read_concurrently(tmp_path):
    path = tmp_path / "lut.sqlite"
    with LatencyTable(path, **FAST) as t:
        t.put("relu", {}, [(1, 999, 2)], 1.0)  # len 1 before the writer starts
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(src), str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=REPO) for src in (_WRITER, _READER)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    assert "wrote 151" in outs[0][0] and "reads" in outs[1][0]
    with LatencyTable(path, **FAST) as t:
        assert len(t) == 151


# --------------------------------------------------------------------------- damaged files


def _corrupt_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".corrupt-*"))


def _assert_rebuilt(path: Path, match: str):
    with pytest.warns(CorruptTableWarning, match=match) as rec:
        t = LatencyTable(path, **FAST)
    msg = str(rec[0].message)
    assert str(path) in msg and "moved it to" in msg and "empty table" in msg
    moved = _corrupt_files(path)
    assert len(moved) == 1 and str(moved[0]) in msg
    assert len(t) == 0  # nothing from the old file is trusted
    assert t.lookup("relu", {}, [(2, 4, 4)], measure=False) is None
    t.put("relu", {}, [(2, 4, 4)], 0.5)  # and the new table works
    assert t.lookup("relu", {}, [(2, 4, 4)], measure=False) == 0.5
    t.close()
    return moved[0]


def _good_table(path: Path) -> None:
    with LatencyTable(path, **FAST) as t:
        for i in range(1, 40):
            t.put("relu", {}, [(2, i, 4)], 0.1 * i)


def test_garbage_bytes_are_moved_aside(tmp_path):
    path = tmp_path / "lut.sqlite"
    path.write_bytes(b"this is not a database\x00" * 200)
    moved = _assert_rebuilt(path, "not a readable SQLite database")
    assert moved.read_bytes().startswith(b"this is not a database")


def test_other_schema_version_is_rebuilt(tmp_path):
    path = tmp_path / "lut.sqlite"
    _good_table(path)
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    _assert_rebuilt(path, "schema version .* is 99")


def test_foreign_sqlite_file_is_rebuilt(tmp_path):
    path = tmp_path / "lut.sqlite"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE songs (title TEXT)")
    raw.commit()
    raw.close()
    _assert_rebuilt(path, "another application")


def test_wrong_columns_are_rebuilt(tmp_path):
    path = tmp_path / "lut.sqlite"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA application_id = {table_mod._APPLICATION_ID}")
    raw.execute(f"PRAGMA user_version = {table_mod.TABLE_SCHEMA_VERSION}")
    raw.execute("CREATE TABLE devices (id INTEGER PRIMARY KEY, fingerprint TEXT, created_at TEXT)")
    raw.execute("CREATE TABLE entries (device INTEGER, op TEXT, blob BLOB)")
    raw.commit()
    raw.close()
    _assert_rebuilt(path, "table 'entries' has columns")


def test_failed_integrity_check_is_rebuilt(tmp_path):
    path = tmp_path / "lut.sqlite"
    _good_table(path)
    # make the index disagree with its table: drop the index from the schema, change rows, put it back
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA writable_schema = ON")
    name, tbl, root, sql = raw.execute(
        "SELECT name, tbl_name, rootpage, sql FROM sqlite_master WHERE name = 'entries_by_op'").fetchone()
    raw.execute("DELETE FROM sqlite_master WHERE name = 'entries_by_op'")
    raw.close()
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("UPDATE entries SET op = 'relu6'")
    raw.execute("PRAGMA writable_schema = ON")
    raw.execute("INSERT INTO sqlite_master (type, name, tbl_name, rootpage, sql) VALUES ('index', ?, ?, ?, ?)",
                (name, tbl, root, sql))
    raw.close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] != "ok"  # the file really is damaged
    raw.close()
    _assert_rebuilt(path, "integrity_check failed")


def test_corruption_reported_while_in_use_rebuilds_and_retries(tmp_path):
    path = tmp_path / "lut.sqlite"
    _good_table(path)
    t = LatencyTable(path, **FAST)
    assert t.lookup("relu", {}, [(2, 3, 4)], measure=False) == pytest.approx(0.3)

    class Damaged:  # a connection on which SQLite reports SQLITE_CORRUPT
        def __init__(self, real):
            self.real = real

        def execute(self, *a):
            e = sqlite3.DatabaseError("database disk image is malformed")
            e.sqlite_errorcode = 11
            raise e

        def close(self):
            self.real.close()

    t._conn = Damaged(t._conn)
    with pytest.warns(CorruptTableWarning, match="SQLite reports it damaged"):
        assert t.lookup("relu", {}, [(2, 5, 4)], measure=False) is None  # rebuilt: the old entries are gone
    assert len(_corrupt_files(path)) == 1
    assert t.lookup("relu", {}, [(2, 3, 4)], measure=False) is None  # the cache was dropped too
    t.put("relu", {}, [(2, 3, 4)], 0.7)
    assert t.lookup("relu", {}, [(2, 3, 4)], measure=False) == 0.7
    t.close()


def test_stale_wal_beside_a_damaged_file_does_not_leak_into_the_new_table(tmp_path):
    path = tmp_path / "lut.sqlite"
    path.write_bytes(b"\x00garbage" * 100)
    Path(f"{path}-wal").write_bytes(b"stale wal")
    _assert_rebuilt(path, "not a readable")
    wal = Path(f"{path}-wal")
    assert not wal.exists() or wal.read_bytes() != b"stale wal"
