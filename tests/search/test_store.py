"""search.store: the SQLite store, and resuming a search killed with SIGKILL mid-run.

The resume test starts a real search in a subprocess, kills it (SIGKILL) once some candidates
are recorded, resumes it here, and checks that nothing finished was lost or evaluated twice,
and that the run ends with the same candidates (decisions, seeds, metrics) as an uninterrupted
run with the same seed.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import pytest

import archir
from search.store import DB_NAME, Candidate, ConfigMismatch, Store, StoreError
from tests.search.sigkill import sigkill_when

ROOT = Path(__file__).resolve().parents[2]


def _cand(i: int, rnd: int = 0) -> Candidate:
    return Candidate(id=i, round=rnd, op="sample", decisions={"x": i, "l": [1, 2]}, seed=100 + i)


def test_create_add_finish_roundtrip(tmp_path):
    run = tmp_path / "run"
    with Store.create(run, {"space": "chain", "seed": 0, "train": {"epochs": 1}}) as st:
        assert (run / "graphs").is_dir()
        assert st._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        st.add([_cand(0), _cand(1)])
        assert st.counts() == {"queued": 2, "running": 0, "done": 0, "failed": 0}
        st.mark_running([0, 1])
        c = st.get(0)
        c.status, c.metrics, c.costs, c.score, c.graph_hash = "done", {"val_error": 0.25}, {"macs": 10.0}, 0.3, "ab"
        c.timings = {"train_s": 1.5}
        st.finish(c)
        f = st.get(1)
        f.status, f.error = "failed", "train: loss is NaN"
        st.finish(f)
        assert st.next_id() == 2
        st.add_elapsed(2.5)
        st.add_elapsed(1.0)
        st.set_info("space_options", {"input_shape": [1, 8, 8]})
    with Store.open(run) as st:
        a, b = st.candidates()
        assert (a.status, a.metrics, a.costs, a.score, a.graph_hash, a.decisions) == (
            "done", {"val_error": 0.25}, {"macs": 10.0}, 0.3, "ab", {"x": 0, "l": [1, 2]})
        assert a.finished_at is not None and a.timings == {"train_s": 1.5}
        assert (b.status, b.error) == ("failed", "train: loss is NaN")
        assert [c.id for c in st.candidates("failed")] == [1]
        assert st.elapsed_s == pytest.approx(3.5)
        assert st.info("space_options") == {"input_shape": [1, 8, 8]} and st.info("nope", 7) == 7
        assert st.config == {"space": "chain", "seed": 0, "train": {"epochs": 1}}


def test_ids_are_never_duplicated(tmp_path):
    with Store.create(tmp_path, {}) as st:
        st.add(_cand(0))
        with pytest.raises(StoreError, match="already recorded"):
            st.add([_cand(1), _cand(0)])
        assert [c.id for c in st.candidates()] == [0]  # the failed batch wrote nothing


def test_requeue_unfinished(tmp_path):
    with Store.create(tmp_path, {}) as st:
        st.add([_cand(0), _cand(1), _cand(2)])
        st.mark_running([0, 1])
        c = st.get(0)
        c.status = "done"
        c.score = 0.1
        st.finish(c)
        assert st.requeue_unfinished() == [1, 2]
        assert [c.status for c in st.candidates()] == ["done", "queued", "queued"]


def test_config_mismatch_names_the_differences(tmp_path):
    with Store.create(tmp_path, {"space": "chain", "seed": 0, "train": {"epochs": 2}}) as st:
        st.check_config({"space": "chain", "seed": 0, "train": {"epochs": 2}})
        with pytest.raises(ConfigMismatch) as e:
            st.check_config({"space": "darts", "seed": 0, "train": {"epochs": 3}, "budget": "3m"})
    msg = str(e.value)
    assert "space: stored 'chain', given 'darts'" in msg and "train.epochs: stored 2, given 3" in msg
    assert "budget: not in the stored config" in msg and "new --out" in e.value.hint


def test_open_and_create_errors(tmp_path):
    with pytest.raises(StoreError, match="no search store") as e:
        Store.open(tmp_path / "nothing")
    assert "--out" in e.value.hint
    Store.create(tmp_path / "r", {}).close()
    with pytest.raises(StoreError, match="already holds a search") as e:
        Store.create(tmp_path / "r", {})
    assert "--resume" in e.value.hint
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not an archir search store"):
        Store.open(tmp_path / "bad")
    other = tmp_path / "other"
    other.mkdir()
    sqlite3.connect(other / DB_NAME).execute("CREATE TABLE meta (key TEXT, value TEXT)").connection.commit()
    with pytest.raises(StoreError, match="not an archir search store"):
        Store.open(other)
    with pytest.raises(StoreError, match="no candidate 5") as e:  # an ArchirError naming the run folder
        with Store.open(tmp_path / "r") as st:
            st.get(5)
    assert e.value.file == tmp_path / "r" and str(e.value).startswith(f"{tmp_path / 'r'}: no candidate 5")


def test_a_failed_candidates_traceback_is_stored_and_old_stores_get_the_column(tmp_path):
    run = tmp_path / "run"
    with Store.create(run, {"seed": 0}) as st:
        st.add([_cand(0), _cand(1)])
        c = st.get(0)
        c.status, c.error, c.traceback = "failed", "build: ZeroDivisionError: division by zero", "Traceback ...\n"
        st.finish(c)
        assert st.get(0).traceback == "Traceback ...\n" and st.get(1).traceback is None
    # a store written before the traceback column existed
    con = sqlite3.connect(run / DB_NAME)
    con.execute("ALTER TABLE candidates DROP COLUMN traceback")
    con.commit()
    con.close()
    with Store.open(run) as st:  # a reader does not write: the missing column reads as None
        assert [c.traceback for c in st.candidates()] == [None, None] and st.get(0).error.startswith("build: ")
    cols = [r[1] for r in sqlite3.connect(run / DB_NAME).execute("PRAGMA table_info(candidates)")]
    assert "traceback" not in cols
    with Store.open(run, lock=True) as st:  # a resuming driver adds it, and records tracebacks again
        c = st.get(1)
        c.status, c.error, c.traceback = "failed", "x", "tb"
        st.finish(c)
        assert st.get(1).traceback == "tb" and st.get(0).traceback is None


# --------------------------------------------------------------------------- resume after SIGKILL

CONFIG = dict(space="chain", space_options={"layers": 2}, strategy="evolution",
              strategy_options={"population": 2, "sample": 2}, budget="6c", round_size=2, seed=3,
              train={"epochs": 2, "batch_size": 128, "lr": 0.05})

CHILD = """
import json, sys
from search.experiment import ExperimentConfig, run_search
run_search(ExperimentConfig(**json.loads(sys.argv[1])), sys.argv[2])
"""


def _finished(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM candidates WHERE status IN ('done', 'failed')").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # the child has not made the table yet
        return 0


def _snapshot(run: Path) -> list[tuple]:
    with Store.open(run) as st:
        cands = st.candidates()
    out = []
    for c in cands:
        g = archir.load(run / c.graph_path) if c.graph_path else None
        out.append((c.id, c.round, c.op, c.parents, json.dumps(c.decisions, sort_keys=True), c.seed, c.status,
                    c.metrics, c.costs.get("macs"), c.graph_hash, c.score, g.weights_hash() if g else None))
    return out


@pytest.mark.slow
def test_resume_after_sigkill_loses_nothing_and_duplicates_nothing(tmp_path):
    from search.experiment import ExperimentConfig, run_search

    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # kill inside round 1 (ids 2, 3) or just after it
    proc = sigkill_when(CHILD, [json.dumps(CONFIG), str(run)], lambda: _finished(run / DB_NAME) >= 3, env=env,
                        poll=0.02)
    assert proc.returncode == -signal.SIGKILL
    with Store.open(run) as st:
        before = {c.id: c for c in st.candidates()}
    kept = {i: c for i, c in before.items() if c.finished}
    assert 3 <= len(kept) < 6 and len(before) > len(kept)  # killed mid-run, with unfinished candidates

    s = run_search(ExperimentConfig(**CONFIG), run, resume=True)
    assert sorted(s.requeued) == sorted(i for i, c in before.items() if not c.finished)
    with Store.open(run) as st:
        after = st.candidates()
    assert [c.id for c in after] == list(range(6)) and all(c.finished for c in after)  # nothing lost or doubled
    for c in after:
        if c.id in kept:  # a finished candidate was kept as it was, not evaluated again
            assert (c.finished_at, c.metrics, c.graph_hash) == (kept[c.id].finished_at, kept[c.id].metrics,
                                                                 kept[c.id].graph_hash)
    assert sorted(p.name for p in (run / "graphs").iterdir()) == sorted(
        f"{c.id}.{ext}" for c in after if c.status == "done" for ext in ("json", "safetensors"))

    whole = tmp_path / "whole"
    run_search(ExperimentConfig(**CONFIG), whole)
    assert _snapshot(run) == _snapshot(whole)  # the same candidates, results and trained weights


def test_one_driver_at_a_time(tmp_path):
    st = Store.create(tmp_path / "run", {})
    try:
        with pytest.raises(StoreError, match=rf"another search \(pid {os.getpid()}\) is writing") as e:
            Store.open(tmp_path / "run", lock=True)
        assert "--resume" in e.value.hint
        with Store.open(tmp_path / "run") as reader:  # readers (gallery, export) need no lock
            assert reader.counts()["queued"] == 0
    finally:
        st.close()
    Store.open(tmp_path / "run", lock=True).close()  # released on close
