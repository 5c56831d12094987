"""search.report: the report's JSON blob on small real runs (finished, killed, running, one-shot, morphism).

The runs are made once per module (tiny budgets, one epoch); a killed run and one with failed
candidates are copies of the evolution run changed through the store's own API.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from search.experiment import ExperimentConfig, frontier_candidates, run_search
from search.store import Candidate, Store, StoreError
from search import report as rp
from search.report import move_of, render_html, report_data, write_report

TRAIN = {"epochs": 1, "batch_size": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 3e-4, "schedule": "cosine"}
EVIL = "train: ValueError: shape <script>alert('x')</script> & </div> mismatch"


def _evolution(out: Path) -> Path:
    run_search(ExperimentConfig(space="chain", space_options={"layers": 2}, strategy="evolution",
                                strategy_options={"population": 2, "sample": 2}, budget="4c", train=dict(TRAIN),
                                seed=1), out)
    return out


def _hillclimb(out: Path) -> Path:
    run_search(ExperimentConfig(space="start", strategy="hillclimb", strategy_options={"moves": 2}, budget="3c",
                                round_size=1, train={**TRAIN, "schedule": "sgdr"}), out)
    return out


def _oneshot(out: Path) -> Path:
    run_search(ExperimentConfig(space="chain", space_options={"layers": 2}, strategy="darts", budget="2c",
                                strategy_options={"max_batches": 2, "evaluate_every": 1}, train=dict(TRAIN), seed=3), out)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("report-runs")
    evo, hc, osr = _evolution(base / "evo"), _hillclimb(base / "hc"), _oneshot(base / "oneshot")
    # a run with a failed candidate (its reason holds HTML) and a killed one: copies changed through the store API
    failed = base / "failed"
    shutil.copytree(evo, failed)
    with Store.open(failed, lock=True) as st:
        nid = st.next_id()
        st.add(Candidate(id=nid, round=99, op="mutate:layers[0].kernel", decisions={}, seed=1, parents=[0]))
        st.finish(Candidate(id=nid, round=99, op="mutate:layers[0].kernel", decisions={}, seed=1, parents=[0],
                            status="failed", error=EVIL, traceback="Traceback (most recent call last):\n  <bug>"))
    killed = base / "killed"
    shutil.copytree(evo, killed)
    with Store.open(killed, lock=True) as st:
        nid = st.next_id()
        st.add([Candidate(id=nid, round=98, op="sample", decisions={}, seed=2),
                Candidate(id=nid + 1, round=98, op="sample", decisions={}, seed=3)])
        st.mark_running([nid])
    return {"evo": evo, "hc": hc, "oneshot": osr, "failed": failed, "killed": killed}


def _stored(run: Path) -> list[Candidate]:
    with Store.open(run) as st:
        return st.candidates()


def test_move_of_names_the_move():
    assert [move_of(o) for o in ("mutate:a+b", "morph:2", "petridish:1", "derive:snas", "sample", "start")] == \
        ["mutation", "morphism", "morphism", "derive", "sample", "start"]


@pytest.mark.parametrize("name", ["evo", "hc", "oneshot", "failed", "killed"])
def test_the_blob_counts_what_the_store_holds(runs, name):
    d = report_data(runs[name])
    cands = _stored(runs[name])
    assert [(c["id"], c["status"], c["op"]) for c in d["candidates"]] == [(c.id, c.status, c.op) for c in cands]
    with Store.open(runs[name]) as st:
        assert d["run"]["counts"] == st.counts()
    done = [c for c in cands if c.status == "done"]
    assert set(d["details"]) == {str(c.id) for c in done}  # under the cap every done candidate has its drawing
    json.dumps(d, allow_nan=False)  # plain JSON: no NaN, no objects


@pytest.mark.parametrize("name", ["evo", "hc", "failed"])
def test_frontier_flags_equal_search_pareto(runs, name):
    d = report_data(runs[name])
    cands = _stored(runs[name])
    assert {c["key"] for c in d["costs"]} >= {"macs", "params"}
    for key in (c["key"] for c in d["costs"]):
        want = [c.id for c in frontier_candidates(cands, key)]
        assert d["frontier"][key] == want
        assert [r["id"] for r in d["candidates"] if r["frontier"][key]] == sorted(want)


def test_lineage_of_an_evolution_run(runs):
    d = report_data(runs["evo"])
    rows = {r["id"]: r for r in d["candidates"]}
    muts = [r for r in rows.values() if r["move"] == "mutation"]
    assert muts and all(r["parents"] for r in muts)  # population 2: candidates 2 and 3 are mutated children
    for r in rows.values():
        for p in r["parents"]:
            assert r["id"] in rows[p]["children"]
    assert all(r["preservation"]["checked"] is False for r in rows.values())


def test_morphism_lineage_preservation_and_moves(runs):
    d = report_data(runs["hc"])
    cands = {c.id: c for c in _stored(runs["hc"])}
    grown = [r for r in d["candidates"] if r["move"] == "morphism"]
    assert grown
    for r in grown:
        c = cands[r["id"]]
        assert r["parents"] == c.parents and r["id"] in d["candidates"][c.parents[0]]["children"]
        pres = r["preservation"]
        assert pres["checked"] and pres["passed"] and pres["max_abs"] == c.metrics["preserve_max_abs"]
        assert "check_preserved" in pres["text"]
        meta = json.loads((runs["hc"] / c.graph_path).read_text())["meta"]["grown"]["moves"]
        assert d["details"][str(r["id"])]["moves"] == meta and meta


def test_per_node_costs_and_drawing(runs):
    d = report_data(runs["evo"])
    for r in d["candidates"]:
        det = d["details"][str(r["id"])]
        assert sum(n["macs"] for n in det["nodes"]) == r["costs"]["macs"]  # costmodels.count, batch 1, as stored
        assert sum(n["params"] for n in det["nodes"]) == r["costs"]["params"]
        assert det["svg"].lstrip().startswith("<svg")
        assert det["drawing"] == ("graphviz" if shutil.which("dot") else "fallback")
    assert d["graphviz"] == bool(shutil.which("dot"))


def test_fallback_drawing_without_graphviz(runs, monkeypatch):
    monkeypatch.setattr(rp, "_dot_binary", lambda: None)
    d = report_data(runs["hc"])
    det = d["details"]["1"]
    assert det["drawing"] == "fallback" and "graphviz" in det["drawing_note"] and "not found" in det["drawing_note"]
    assert det["svg"].startswith("<svg") and det["svg"].count('class="node"') == det["n_nodes"]
    assert d["graphviz"] is False


def test_the_training_curve_is_what_the_store_records(runs, tmp_path):
    run = run_search(ExperimentConfig(space="chain", space_options={"layers": 2}, strategy="random", budget="1c",
                                      train={**TRAIN, "epochs": 2}, seed=4), tmp_path / "two")
    with Store.open(tmp_path / "two") as st:
        (c0,) = st.candidates()
        history = st.curves()[0]
        assert st.curves([5]) == {} and list(st.curves([0])) == [0]
    assert run.counts["done"] == 1 and [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["val_error"] == c0.metrics["val_error"] and "history" not in c0.metrics  # the row is unchanged
    curve = report_data(tmp_path / "two")["candidates"][0]["curve"]
    assert curve["recorded"] == "per_epoch" and curve["note"] is None
    assert curve["epochs"] == 2 and {k: curve[k] for k in ("epoch", "train_loss", "val_error", "val_loss")} == \
        {k: [h[k] for h in history] for k in ("epoch", "train_loss", "val_error", "val_loss")}


def test_a_store_from_before_curves_were_recorded(runs, tmp_path):
    import sqlite3

    old = tmp_path / "old"
    shutil.copytree(runs["evo"], old)
    with Store.open(old) as st:
        assert sorted(st.curves()) == [c.id for c in st.candidates()]  # every trained candidate has one
    with sqlite3.connect(old / "search.db") as conn:  # what a store written before the curves table looks like
        conn.execute("DROP TABLE curves")
    with Store.open(old) as st:
        assert st.curves() == {}
    c0 = _stored(old)[0]
    curve = report_data(old)["candidates"][0]["curve"]
    assert curve["recorded"] == "final" and curve["final"]["val_error"] == c0.metrics["val_error"]
    assert curve["note"].startswith("no curve recorded")
    with Store.open(old, lock=True) as st:  # a resumed search makes the table on its first curve
        st.set_curve(0, [{"epoch": 1, "train_loss": 2.0, "val_error": 0.5, "val_loss": 1.5, "lr": 0.1}])
        st.set_curve(0, [{"epoch": 1, "train_loss": 1.0, "val_error": 0.4, "val_loss": 1.2, "lr": 0.1}])
        assert st.curves() == {0: [{"epoch": 1, "train_loss": 1.0, "val_error": 0.4, "val_loss": 1.2, "lr": 0.1}]}


def test_failed_candidates_carry_their_reason_and_the_page_escapes_it(runs):
    d = report_data(runs["failed"])
    bad = [r for r in d["candidates"] if r["status"] == "failed"]
    assert len(bad) == 1 and bad[0]["error"] == EVIL and bad[0]["traceback"].startswith("Traceback")
    page = render_html(d)
    assert "<script>alert" not in page and "</div> mismatch" not in page
    blob = page.split('<script type="application/json" id="report-data">', 1)[1].split("</script>", 1)[0]
    assert "</" not in blob and "<" not in blob
    table = json.loads(blob)["candidates"]  # as columns (page_data)
    assert table["rows"][-1][table["columns"].index("error")] == EVIL  # the page reads back exactly the reason
    # nothing is loaded from elsewhere (plotly.js is inline; the favicon is a data: URL)
    assert re.search(r'<(script|link|img)[^>]*(src|href)="(?!data:)', page) is None


def test_a_killed_run(runs):
    d = report_data(runs["killed"])
    st = {r["id"]: r["status"] for r in d["candidates"]}
    assert sorted(st.values()).count("running") == 1 and sorted(st.values()).count("queued") == 1
    assert d["run"]["state"] == "stopped" and "--resume" in d["run"]["state_text"]
    unfinished = [r for r in d["candidates"] if r["status"] in ("queued", "running")]
    assert all(not r["has_detail"] for r in unfinished)
    assert len(d["progress"]["by_candidates"]) == sum(v in ("done", "failed") for v in st.values())


def test_a_running_run_is_read_without_blocking_its_writer(runs, tmp_path):
    run = tmp_path / "live"
    shutil.copytree(runs["evo"], run)
    (run / "search.lock").unlink()
    writer = textwrap.dedent(f"""
        import sys
        from search.store import Candidate, Store
        with Store.open({str(run)!r}, lock=True) as st:
            nid = st.next_id()
            st.add(Candidate(id=nid, round=50, op="sample", decisions={{}}, seed=1))
            st.mark_running([nid])
            print("ready", flush=True)
            sys.stdin.readline()
            st.finish(Candidate(id=nid, round=50, op="sample", decisions={{}}, seed=1, status="failed", error="x"))
            print("wrote", flush=True)
            sys.stdin.readline()
    """)
    p = subprocess.Popen([sys.executable, "-c", writer], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    try:
        assert p.stdout.readline().strip() == "ready"
        d = report_data(run)
        assert d["run"]["state"] == "running" and d["candidates"][-1]["status"] == "running"
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "wrote"  # the writer was not blocked by the reader
        d2 = report_data(run)
        assert d2["candidates"][-1]["status"] == "failed" and d2["stamp"] != d["stamp"]
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_oneshot_entropy_per_step_is_what_the_run_recorded(runs, tmp_path):
    d = report_data(runs["oneshot"])
    state = json.loads((runs["oneshot"] / "oneshot" / "state.json").read_text())["state"]
    with Store.open(runs["oneshot"]) as st:
        history = st.info("oneshot")["history"]
    o = d["oneshot"]
    assert o["driver"] == "darts" and o["steps_done"] == state["steps_done"] == 2
    assert o["entropy"] == [{"step": h["step"], "entropy": h["entropy"]} for h in history]
    assert [e["step"] for e in o["entropy"]] == [1, 2] and o["entropy"][-1]["entropy"] == state["figures"]["entropy"]
    assert o["per_epoch_recorded"] is True
    assert {r["move"] for r in d["candidates"]} == {"derive"}
    assert report_data(runs["evo"])["oneshot"] is None
    # a run from before the history was recorded: the checkpoint's last step, and the page says so
    old = tmp_path / "old"
    shutil.copytree(runs["oneshot"], old)
    with Store.open(old, lock=True) as st:
        st.set_info("oneshot", {"driver": "darts"})
    o = report_data(old)["oneshot"]
    assert o["entropy"] == [{"step": 2, "entropy": state["figures"]["entropy"]}]
    assert o["per_epoch_recorded"] is False and "not recorded" in o["note"]


def test_progress_is_the_running_best(runs):
    d = report_data(runs["evo"])
    cands = sorted((c for c in _stored(runs["evo"]) if c.finished), key=lambda c: (c.finished_at, c.id))
    best, want = math.inf, []
    for c in cands:
        if c.status == "done":
            best = min(best, c.metrics["val_error"])
        want.append(best)
    assert [b for _, b, _ in d["progress"]["by_candidates"]] == want
    secs = [s for s, _, _ in d["progress"]["by_seconds"]]
    assert secs == sorted(secs) and secs[0] >= 0


def test_the_detail_cap_keeps_the_frontier_first_and_says_so(runs):
    d = report_data(runs["evo"], max_details=1)
    front = d["frontier"][d["run"]["cost_key"]]
    rows = {r["id"]: r for r in d["candidates"]}
    (kept,) = [int(k) for k in d["details"]]  # the frontier's lowest validation error
    assert kept in front and rows[kept]["val_error"] == min(rows[i]["val_error"] for i in front)
    assert [r["id"] for r in d["candidates"] if r["has_detail"]] == [kept]
    assert "1 of 4" in d["details_note"] and "--max-details" in d["details_note"]


def test_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(StoreError, match="no search store") as e:
        report_data(tmp_path)
    assert str(tmp_path) in str(e.value) and "archir search" in e.value.hint


def test_write_report_is_atomic(runs, tmp_path, monkeypatch):
    out = tmp_path / "report.html"
    path, d = write_report(runs["hc"], out)
    assert path == out and out.read_text().startswith("<!DOCTYPE html>")
    out.write_text("old report")

    def broken(data, **kw):
        raise RuntimeError("render failed")

    monkeypatch.setattr(rp, "render_html", broken)
    with pytest.raises(RuntimeError, match="render failed"):
        write_report(runs["hc"], out)
    assert out.read_text() == "old report" and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    with pytest.raises(rp.ReportError, match="does not exist"):
        write_report(runs["hc"], tmp_path / "nope" / "r.html")


@pytest.mark.parametrize("name", ["evo", "killed", "oneshot"])
def test_run_stamp_is_the_blobs_stamp(runs, name):
    assert rp.run_stamp(runs[name]) == report_data(runs[name])["stamp"]


def test_oneshot_entropy_per_step_when_the_store_records_it(runs, tmp_path):
    run = tmp_path / "os"
    shutil.copytree(runs["oneshot"], run)
    hist = [{"step": 1, "entropy": 3.58}, {"step": 2, "entropy": 3.57}]
    with Store.open(run, lock=True) as st:
        st.set_info("oneshot", {"driver": "darts", "history": hist})
    o = report_data(run)["oneshot"]
    assert o["per_epoch_recorded"] is True and o["entropy"] == hist


def table_run(out: Path, objective: str = "error") -> Path:
    """A table-evaluator run (synthetic NAS-Bench-201 table, as tests/search/test_evaluators.py writes one):
    no training, no graph files, and with ``objective="error"`` no costs either."""
    from tests.search.test_evaluators import write_table

    out.mkdir(parents=True)
    csv_path = write_table(out.parent / f"{out.name}.csv")
    run_search(ExperimentConfig(space="nb201", strategy="random", budget="4c", round_size=1, objective=objective,
                                evaluator=f"table:{csv_path}", seed=2), out / "run")
    return out / "run"


@pytest.mark.parametrize("objective", ["error", "params"])
def test_a_table_evaluator_run(tmp_path, objective):
    run = table_run(tmp_path / "t", objective)
    d = report_data(run)
    cands = _stored(run)
    assert len(cands) == 4 and all(c.status == "done" and c.graph_path is None for c in cands)
    assert d["details"] == {} and d["details_note"] is None  # no graph: nothing to draw, nothing capped
    assert [r["curve"]["recorded"] for r in d["candidates"]] == ["final"] * 4  # trained nothing: no curve
    assert all(r["curve"]["note"].startswith("no curve recorded") for r in d["candidates"])
    if objective == "error":
        assert d["costs"] == [] and d["frontier"] == {}
    else:
        assert [c["key"] for c in d["costs"]] == ["macs", "params", "flops"] and d["frontier"]["params"]
    page = render_html(d)
    json.loads(page.split('<script type="application/json" id="report-data">', 1)[1].split("</script>", 1)[0])


def test_page_data_packs_rounds_and_omits(runs):
    d = report_data(runs["evo"])
    p = rp.page_data(d)
    cols, rows = p["candidates"]["columns"], p["candidates"]["rows"]
    assert not set(rp.PAGE_OMITS) & set(cols) and len(rows) == len(d["candidates"])
    for r, row in zip(d["candidates"], rows):
        got = dict(zip(cols, row))
        assert got["id"] == r["id"] and got["costs"]["macs"] == r["costs"]["macs"]  # integral: exact
        assert got["val_error"] == float(f"{r['val_error']:.{rp.PAGE_DIGITS}g}")
        assert got["curve"]["train_loss"] == [float(f"{v:.{rp.PAGE_DIGITS}g}") for v in r["curve"]["train_loss"]]
    assert {k: v for k, v in p.items() if k != "candidates"}.keys() == {k for k in d if k != "candidates"}


def _dedup_eval(request):
    """A deterministic result per architecture, with a cost, so the report has a frontier."""
    from search.evaluators import arch_key

    key = arch_key(request.space, request.decisions)
    return {"val_error": (sum(map(ord, key)) % 97) / 100.0, "params": float(len(key))}


def test_cache_hits_are_marked_and_left_off_the_frontier(tmp_path):
    tiny = {"layers": 1, "kernels": [3], "expands": [1, 3], "widths": [[8, 16], [8, 16]]}  # five architectures
    cfg = ExperimentConfig(space="chain", space_options=tiny, strategy="random", strategy_options={"retries": 0},
                           budget="4c", round_size=3, seed=0, objective="params")
    run_search(cfg, tmp_path / "run", evaluator=_dedup_eval)
    blob = report_data(tmp_path / "run")
    rows = {r["id"]: r for r in blob["candidates"]}
    hits = [r for r in rows.values() if r.get("cache_of") is not None]
    assert hits, "the tiny space must force duplicates"
    for r in hits:
        assert rows[r["cache_of"]].get("cache_of") is None and r["val_error"] == rows[r["cache_of"]]["val_error"]
        assert not any(r["frontier"].values())
    with Store.open(tmp_path / "run") as st:
        want = [c.id for c in frontier_candidates(st.candidates(), "params")]
    assert blob["frontier"]["params"] == want and want
    packed = rp.page_data(blob)["candidates"]  # the page gets the field (its detail panel shows the badge)
    col = packed["columns"].index("cache_of")
    assert sorted(r[col] for r in packed["rows"] if r[col] is not None) == sorted(r["cache_of"] for r in hits)
