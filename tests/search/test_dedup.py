"""De-duplication and budgets extended on resume (``search.experiment``).

The searches here run on a chain space of five architectures (one layer: a skip, or a block of
two kinds at two widths) with random search that never re-draws (``retries=0``), so duplicates
are certain, and on evaluators that train nothing (a Python callable that logs what it
evaluates, a table written in ``tmp_path``), so the tests are quick.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import time
from pathlib import Path

import pytest

from archir.cli.main import main
from search.evaluators import arch_key
from search.experiment import MAX_ASKED_PER_BUDGET, ConfigError, ExperimentConfig, gallery_table, run_search
from search.morph import get_space
from search.store import ConfigMismatch, Store
from tests.search.sigkill import sigkill_when

ROOT = Path(__file__).resolve().parents[2]
TINY = {"layers": 1, "kernels": [3], "expands": [1, 3], "widths": [[8, 16], [8, 16]]}
SPACE = get_space("chain", input_shape=(1, 8, 8), num_classes=10, **TINY)
CALLS: list[str] = []  # the architecture keys the callable evaluated, in order


def score_of(key: str) -> float:
    """A deterministic validation error per architecture (distinct for the five)."""
    return (sum(map(ord, key)) % 97) / 100.0


def logging_eval(request):
    key = arch_key(request.space, request.decisions)
    CALLS.append(key)
    log = os.environ.get("ARCHIR_TEST_EVAL_LOG")
    if log:  # the kill test: what every session evaluated, on disk; the child hangs in its STALL-th + 1 evaluation
        stall = int(os.environ.get("ARCHIR_TEST_EVAL_STALL", "0"))
        if stall and len(_log(Path(log))) >= stall:
            time.sleep(600)  # killed here, mid-candidate
        with open(log, "a") as f:
            f.write(json.dumps([request.id, key]) + "\n")
    return {"val_error": score_of(key), "test_error": score_of(key) + 0.01}


def tiny(**kw) -> ExperimentConfig:
    return ExperimentConfig(**{"space": "chain", "space_options": dict(TINY), "strategy": "random",
                               "strategy_options": {"retries": 0}, "budget": "4c", "round_size": 2, "seed": 0, **kw})


def rows(run) -> list[tuple]:
    with Store.open(run) as st:
        return [(c.id, c.round, json.dumps(c.decisions, sort_keys=True), c.seed, c.status, c.metrics, c.score,
                 c.cache_of) for c in st.candidates()]


def test_duplicates_reuse_the_result_and_do_not_count(tmp_path):
    CALLS.clear()
    s = run_search(tiny(round_size=3), tmp_path / "run", evaluator=logging_eval)
    with Store.open(tmp_path / "run") as st:
        cands = st.candidates()
    evaluated = [c for c in cands if c.cache_of is None]
    hits = [c for c in cands if c.cache_of is not None]
    assert len(evaluated) == 4 and hits and s.cache_hits == len(hits)  # the budget counts evaluations only
    assert len(CALLS) == 4 == len(set(CALLS))  # nothing evaluated twice, also not two equal ones of one round
    by_id = {c.id: c for c in cands}
    for c in hits:
        orig = by_id[c.cache_of]
        assert orig.id < c.id and orig.cache_of is None and orig.status == c.status == "done"
        assert arch_key(SPACE, orig.decisions) == arch_key(SPACE, c.decisions)
        assert (c.metrics, c.score, c.graph_hash, c.graph_path) == (orig.metrics, orig.score, orig.graph_hash,
                                                                    orig.graph_path)
        assert c.timings == {"total_s": 0.0, "epochs": 0}
    assert all(c.score == score_of(arch_key(SPACE, c.decisions)) for c in cands)
    assert {c.id for c in s.frontier} <= {c.id for c in evaluated}  # a hit is on the frontier as its original
    table = gallery_table(cands, "macs")
    assert f"{len(hits)} cache hits" in table and "4 shown" in table

    # --count-duplicates: hits count, so exactly the budget is asked
    CALLS.clear()
    s2 = run_search(tiny(round_size=3, count_duplicates=True), tmp_path / "counted", evaluator=logging_eval)
    with Store.open(tmp_path / "counted") as st:
        counted = st.candidates()
        assert st.config["count_duplicates"] is True
    assert len(counted) == 4 and len(CALLS) == 4 - s2.cache_hits
    assert rows(tmp_path / "counted") == rows(tmp_path / "run")[:4]  # the same candidates, fewer of them
    # --no-dedup: every candidate is evaluated (as before de-duplication existed)
    CALLS.clear()
    s3 = run_search(tiny(round_size=3, dedup=False), tmp_path / "raw", evaluator=logging_eval)
    assert s3.cache_hits == 0 and len(CALLS) == 4 and len(set(CALLS)) < 4
    with pytest.raises(ConfigError, match="needs de-duplication"):
        run_search(tiny(dedup=False, count_duplicates=True), tmp_path / "bad", evaluator=logging_eval)
    # the defaults are not stored: configs of runs from before de-duplication are unchanged
    assert not {"dedup", "count_duplicates"} & set(ExperimentConfig().to_dict())


def test_an_exhausted_space_stops_at_the_ask_limit(tmp_path):
    CALLS.clear()
    s = run_search(tiny(budget="6c", round_size=2), tmp_path / "run", evaluator=logging_eval)  # only 5 exist
    assert len(CALLS) == 5 and s.counts["done"] == MAX_ASKED_PER_BUDGET * 6 and s.cache_hits == 55


def chain_table(path: Path) -> Path:
    seen = set()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "cifar10_val", "cifar10_test"])
        for d in [{"layers": [{"skip": True}]}] + [{"layers": [{"kernel": 3, "expand": e, "width": wd}]}
                                                   for e in (1, 3) for wd in (8, 16)]:
            k = arch_key(SPACE, SPACE.decode(d))
            seen.add(k)
            w.writerow([k, 100 - 100 * score_of(k), 99 - 100 * score_of(k)])
    assert len(seen) == 5
    return path


def test_process_executor_gives_the_same_cache_hits(tmp_path):
    # rounds: the serial-equivalent mode (asynchronously, which candidate is asked depends on arrival order)
    cfg = tiny(evaluator=f"table:{chain_table(tmp_path / 't.csv')}", budget="5c", scheduling="sync")
    s = run_search(cfg, tmp_path / "serial")
    run_search(cfg, tmp_path / "proc", executor="process", executor_options={"workers": 2})
    assert s.cache_hits > 0 and rows(tmp_path / "proc") == rows(tmp_path / "serial")


CHILD = """
import importlib, json, sys
from search.experiment import ExperimentConfig, run_search
fn = importlib.import_module("tests.search.test_dedup").logging_eval
run_search(ExperimentConfig(**json.loads(sys.argv[1])), sys.argv[2], evaluator=fn)
"""


def _log(path: Path) -> list[list]:
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def _running(run: Path) -> set[int]:
    """The ids of the candidates the store says are running."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{run / 'search.db'}?mode=ro", uri=True, timeout=5)
        try:
            return {r[0] for r in con.execute("SELECT id FROM candidates WHERE status = 'running'")}
        finally:
            con.close()
    except sqlite3.OperationalError:  # no store yet
        return set()


def test_sigkill_and_resume_keep_the_cache(tmp_path, monkeypatch):
    cfg = tiny(budget="5c", round_size=2, seed=1)
    run, log = tmp_path / "killed", tmp_path / "eval.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ARCHIR_TEST_EVAL_LOG": str(log),
           "ARCHIR_TEST_EVAL_STALL": "3", "PYTHONPATH": str(ROOT)}
    # kill in the 4th evaluation (the child hangs there): running, and not logged as evaluated
    sigkill_when(CHILD, [json.dumps(cfg.to_dict()), str(run)],
                 lambda: len(_log(log)) >= 3 and bool(_running(run) - {i for i, _ in _log(log)}), env=env)
    with Store.open(run) as st:
        before = {c.id: c for c in st.candidates()}
    done_keys = {arch_key(SPACE, c.decisions) for c in before.values() if c.status == "done"}
    assert done_keys and not all(c.finished for c in before.values()), [(c.id, c.status, c.cache_of) for c in before.values()]
    n_log = len(_log(log))

    monkeypatch.setenv("ARCHIR_TEST_EVAL_LOG", str(log))
    monkeypatch.delenv("ARCHIR_TEST_EVAL_STALL", raising=False)
    fn = importlib.import_module("tests.search.test_dedup").logging_eval  # the child's name for it
    s = run_search(cfg, run, evaluator=fn, resume=True)
    again = [k for _, k in _log(log)[n_log:]]
    assert not set(again) & done_keys  # nothing finished before the kill is evaluated again
    assert s.counts["done"] == len(rows(run)) and sum(r[7] is None for r in rows(run)) == 5
    for c in before.values():
        if c.finished:
            assert rows(run)[c.id][4:] == (c.status, c.metrics, c.score, c.cache_of)
    whole = tmp_path / "whole"
    run_search(cfg, whole, evaluator=fn)
    assert rows(run) == rows(whole)  # the same candidates and the same cache hits as a run never killed


# --------------------------------------------------------------------------- budgets extended on resume


def nb201(table, **kw) -> ExperimentConfig:
    return ExperimentConfig(**{"space": "nb201", "strategy": "evolution", "strategy_options": {"population": 4,
                                                                                              "sample": 2},
                               "budget": "4c", "round_size": 2, "evaluator": f"table:{table}", "seed": 2, **kw})


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    from tests.search.test_evaluators import write_table

    return write_table(tmp_path_factory.mktemp("tables") / "nb201_fake.csv")


def test_resume_with_a_larger_budget_extends_the_run(table, tmp_path):
    run = tmp_path / "run"
    run_search(nb201(table), run)
    s = run_search(nb201(table, budget="8c"), run, resume=True)
    assert s.resumed == 4 and s.counts["done"] == 8
    run_search(nb201(table, budget="8c"), tmp_path / "whole")
    assert rows(run) == rows(tmp_path / "whole")  # the same 8 candidates as a straight 8c run
    with Store.open(run) as st:
        assert st.config["budget"] == "8c" and st.info("budget_history") == ["4c", "8c"]
    # the stored budget is now 8c: 8c resumes to nothing new, a smaller or another kind of budget is refused
    assert run_search(nb201(table, budget="8c"), run, resume=True).counts["done"] == 8
    with pytest.raises(ConfigMismatch, match=r"budget '4c', smaller than the run's budget '8c'.*only extend"):
        run_search(nb201(table), run, resume=True)
    with pytest.raises(ConfigMismatch, match="of another kind"):
        run_search(nb201(table, budget="10m"), run, resume=True)
    # another changed option is refused with every difference named, the budget's too
    with pytest.raises(ConfigMismatch, match=r"budget: stored '8c', given '12c'.*seed: stored 2, given 3"):
        run_search(nb201(table, budget="12c", seed=3), run, resume=True)
    with Store.open(run) as st:
        assert st.config["budget"] == "8c" and len(st.candidates()) == 8  # refused: nothing written


def test_a_killed_run_extends_and_a_time_budget_extends(table, tmp_path):
    run = tmp_path / "run"
    run_search(nb201(table, budget="6c"), run)
    with Store.open(run, lock=True) as st:  # as a kill leaves it: the last round unfinished
        c = st.candidates()[-1]
        st._conn.execute("UPDATE candidates SET status = 'running', metrics = '{}', score = NULL, told = NULL "
                         "WHERE id = ?", (c.id,))
    s = run_search(nb201(table, budget="10c"), run, resume=True)
    assert s.requeued == [5] and s.counts["done"] == 10
    run_search(nb201(table, budget="10c"), tmp_path / "whole")
    assert rows(run) == rows(tmp_path / "whole")

    timed = tmp_path / "timed"
    s1 = run_search(nb201(table, budget="0.3s"), timed)
    n = len(rows(timed))
    s2 = run_search(nb201(table, budget="0.6s"), timed, resume=True)
    assert len(rows(timed)) > n and s2.elapsed_s > s1.elapsed_s and s2.resumed == n


def test_cli_flags(table, tmp_path, capsys):
    out = tmp_path / "cli"
    base = ["search", "--space", "chain", "--space-opt", "layers=1", "--space-opt", "kernels=[3]",
            "--space-opt", "expands=[1,3]", "--space-opt", "widths=[[8,16],[8,16]]", "--strategy", "random",
            "--strategy-opt", "retries=0", "--evaluator", f"table:{chain_table(tmp_path / 't.csv')}",
            "--seed", "0", "--out", str(out), "--no-export", "--quiet"]
    assert main(base + ["--budget", "3c"]) == 0
    assert main(base + ["--budget", "5c", "--resume"]) == 0
    text = capsys.readouterr().out
    assert "cache hits (an architecture already evaluated" in text
    with Store.open(out) as st:
        cands = st.candidates()
        assert st.config["budget"] == "5c"
    assert sum(c.cache_of is None for c in cands) == 5 and len(cands) > 5
    assert main(base + ["--budget", "4c", "--resume"]) == 2
    assert "only extend" in capsys.readouterr().err
    assert main(base + ["--budget", "3c", "--count-duplicates", "--out", str(tmp_path / "c")]) == 0
    with Store.open(tmp_path / "c") as st:
        assert len(st.candidates()) == 3 and st.config["count_duplicates"] is True
