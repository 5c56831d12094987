"""Asynchronous scheduling (``search.experiment``, ``ExperimentConfig.scheduling``, issue 16).

The searches run on the NAS-Bench-201 space with Python-callable evaluators that train nothing
(a deterministic score per architecture; some sleep a seeded, uneven time so that a parallel
executor's results come back out of order), so they are quick.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from search.executors import ExecutorError, ProcessExecutor, SerialExecutor
from search.experiment import ExperimentConfig, run_search
from search.store import ConfigMismatch, Store

LOG = "ARCHIR_TEST_ASYNC_LOG"


def score(request) -> dict:
    edges = request.decisions["edges"]
    return {"val_error": 1 - (edges.count("nor_conv_3x3") + 0.5 * edges.count("nor_conv_1x1")) / 6
            + (sum(map(ord, json.dumps(edges))) % 13) / 1000, "test_error": 0.5}


def uneven(request) -> dict:
    """Sleeps 0-0.25 s (from the seed), logs the id it evaluated (to a file: process workers too)."""
    time.sleep(float(np.random.default_rng(request.seed).uniform(0.0, 0.25)))
    log = os.environ.get(LOG)
    if log:
        with open(log, "a") as f:
            f.write(f"{request.id}\n")
    return score(request)


def nb201(**kw) -> ExperimentConfig:
    return ExperimentConfig(**{"space": "nb201", "strategy": "evolution", "strategy_options": {"population": 4,
                                                                                               "sample": 2},
                               "budget": "8c", "round_size": 3, "seed": 3, "objective": "error", **kw})


def rows(run) -> list[tuple]:
    with Store.open(run) as st:
        return [(c.id, c.round, c.told, json.dumps(c.decisions, sort_keys=True), c.seed, c.status, c.metrics,
                 c.parents, c.cache_of) for c in st.candidates()]


# ------------------------------------------------------------------------------ executors: one task at a time


def _sleep_then_id(task):
    time.sleep(task["sleep"])
    return {"id": task["id"]}


def _die(task):
    if task["id"] == 1:
        os._exit(3)
    return {"id": task["id"], "status": "ok"}


def test_serial_executor_runs_submitted_tasks_first_in_first_out():
    ex = SerialExecutor()
    with pytest.raises(ExecutorError, match="no task in flight"):
        ex.next_result()
    tickets = [ex.submit(lambda t: t["id"] * 10, {"id": i}) for i in range(3)]
    assert ex.in_flight == 3 and tickets == [0, 1, 2]
    assert [ex.next_result() for _ in range(3)] == [(0, 0), (1, 10), (2, 20)] and ex.in_flight == 0


def test_process_executor_hands_back_what_finishes_first_and_survives_a_dead_worker():
    ex = ProcessExecutor(workers=2)
    try:
        # start both workers first (a worker's start-up, torch's import, can take seconds on a loaded machine)
        for _ in range(2):
            ex.submit(_sleep_then_id, {"id": -1, "sleep": 0.5})
        assert [ex.next_result()[1] for _ in range(2)] == [{"id": -1}, {"id": -1}]
        slow = ex.submit(_sleep_then_id, {"id": 0, "sleep": 2.0})
        fast = ex.submit(_sleep_then_id, {"id": 1, "sleep": 0.0})
        assert ex.in_flight == 2
        assert ex.next_result() == (fast, {"id": 1}) and ex.next_result() == (slow, {"id": 0})
        dead = ex.submit(_die, {"id": 1})
        ticket, res = ex.next_result()
        assert ticket == dead and res["status"] == "failed" and "worker process died" in res["reason"]
        after = ex.submit(_die, {"id": 2})  # a new pool
        assert ex.next_result() == (after, {"id": 2, "status": "ok"}) and ex.in_flight == 0
    finally:
        ex.close()


def test_a_task_of_a_dead_pool_does_not_take_down_the_new_pool():
    ex = ProcessExecutor(workers=2)
    try:
        for _ in range(2):  # both workers up first, so the two tasks below run at once on the same pool
            ex.submit(_sleep_then_id, {"id": -1, "sleep": 0.5})
        assert [ex.next_result()[1] for _ in range(2)] == [{"id": -1}, {"id": -1}]
        dead = {ex.submit(_sleep_then_id, {"id": 5, "sleep": 2.0}), ex.submit(_die, {"id": 1})}  # the pool dies
        ticket, res = ex.next_result()
        assert ticket in dead and res["status"] == "failed"
        fresh = ex.submit(_sleep_then_id, {"id": 7, "sleep": 0.0})  # a new pool, submitted before the other crash
        pool = ex._pool
        ticket2, res2 = ex.next_result()
        assert ticket2 in dead - {ticket} and res2["status"] == "failed" and "worker process died" in res2["reason"]
        assert ex._pool is pool is not None  # the second crash (of the old pool) left the new pool alone
        assert ex.next_result() == (fresh, {"id": 7})
    finally:
        ex.close()


# ------------------------------------------------------------------------------ the asynchronous run loop


def test_async_keeps_round_size_in_flight_and_is_deterministic_with_the_serial_executor(tmp_path):
    cfg = nb201()
    assert cfg.scheduling == "async" and cfg.to_dict()["scheduling"] == "async"
    run_search(cfg, tmp_path / "a", evaluator=score)
    r = rows(tmp_path / "a")
    # 3 asked at the start, then one per result (the serial executor finishes them first in, first out)
    assert [x[1] for x in r] == [0, 0, 0, 1, 2, 3, 4, 5] and [x[2] for x in r] == list(range(8))
    assert all(x[5] == "done" for x in r)
    run_search(cfg, tmp_path / "b", evaluator=score)
    assert rows(tmp_path / "b") == r  # bit-identical for the seed
    # the first 4 (the population) are samples; later candidates are mutants of told results only
    for x in r[4:]:
        (parent,) = x[7]
        assert r[parent][2] < x[1]  # the parent's result was told before the child was asked


def test_parallel_results_are_told_as_they_arrive_and_resume_replays_them(tmp_path, monkeypatch):
    log = tmp_path / "eval.log"
    monkeypatch.setenv(LOG, str(log))
    cfg = nb201(budget="10c")
    run = tmp_path / "run"
    run_search(cfg, run, evaluator=uneven, executor="process", executor_options={"workers": 3})
    r = rows(run)
    assert [x[0] for x in r] == list(range(10)) and all(x[5] == "done" for x in r)
    assert sorted(x[2] for x in r) == list(range(10))  # every result told once
    assert [x[1] for x in r] == sorted(x[1] for x in r)  # asked after a growing number of results
    evaluated = [int(ln) for ln in log.read_text().split()]
    assert sorted(evaluated) == list(range(10))  # each trained once
    # the same budget: the replay re-asks every stored candidate (it would raise if the told order were not
    # what the strategy saw) and nothing new runs
    s = run_search(cfg, run, evaluator=uneven, resume=True)
    assert s.resumed == 10 and rows(run) == r
    # a larger budget continues the run: the stored candidates unchanged, the new ones asked as results arrive
    s = run_search(nb201(budget="14c"), run, evaluator=uneven, executor="process", executor_options={"workers": 3},
                   resume=True)
    r2 = rows(run)
    assert r2[:10] == r and len(r2) == 14 and s.counts["done"] == 14
    assert sorted(x[2] for x in r2) == list(range(14))
    assert sorted(int(ln) for ln in log.read_text().split()) == list(range(14))


def test_a_killed_async_run_resumes_to_the_uninterrupted_run(tmp_path):
    def stop_after(n):
        seen = []

        def cb(c):
            seen.append(c.id)
            if len(seen) == n:
                raise KeyboardInterrupt

        return cb

    cfg = nb201(budget="9c")
    run_search(cfg, tmp_path / "whole", evaluator=score)
    for n in (1, 4, 7):
        run = tmp_path / f"cut{n}"
        with pytest.raises(KeyboardInterrupt):
            run_search(cfg, run, evaluator=score, on_candidate=stop_after(n))
        with Store.open(run) as st:
            unfinished = [c.id for c in st.candidates() if not c.finished]
        assert unfinished  # stopped with candidates in flight
        s = run_search(cfg, run, evaluator=score, resume=True)
        assert s.requeued == unfinished and rows(run) == rows(tmp_path / "whole")


def test_pnas_waits_for_a_step_before_ranking_the_next(tmp_path):
    cfg = nb201(strategy="pnas", strategy_options={"beam": 2, "surrogate_steps": 20, "ensemble": 1},
                budget="8c", round_size=3)
    run_search(cfg, tmp_path / "run", evaluator=score)
    with Store.open(tmp_path / "run") as st:
        cands = st.candidates()
    stage = {c.id: int(c.op.rsplit("node", 1)[-1]) if "node" in c.op else None for c in cands}
    assert [stage[c.id] for c in cands[:6]] == [1, 1, 2, 2, 3, 3], [c.op for c in cands]
    for c in cands[2:6]:  # a step is asked only when every child of the step before is told
        assert c.round >= sum(1 for d in cands if stage[d.id] is not None and stage[d.id] < stage[c.id])


def test_hillclimb_waits_for_its_start_graph(tmp_path):
    cfg = ExperimentConfig(space="start", strategy="hillclimb", strategy_options={"moves": 1,
                                                                                   "morphisms": ["deepen"]},
                           budget="3c", round_size=2, seed=0, objective="error",
                           train={"epochs": 1, "batch_size": 128, "lr": 0.05, "schedule": "sgdr"})
    run_search(cfg, tmp_path / "run")
    with Store.open(tmp_path / "run") as st:
        cands = st.candidates()
    assert [c.op for c in cands] == ["start", "morph:1", "morph:1"]
    assert [c.round for c in cands] == [0, 1, 1] and all(c.parents == [0] for c in cands[1:])


def test_a_run_in_rounds_resumes_only_in_rounds(tmp_path):
    sync = nb201(scheduling="sync", budget="4c")
    assert "scheduling" not in sync.to_dict()  # as runs stored before asynchronous scheduling existed
    assert ExperimentConfig.from_dict(sync.to_dict()).scheduling == "sync"
    run_search(sync, tmp_path / "run", evaluator=score)
    assert all(x[2] is None for x in rows(tmp_path / "run"))  # rounds record no told order
    with pytest.raises(ConfigMismatch, match="synchronous rounds.*without --sync") as e:
        run_search(nb201(budget="4c"), tmp_path / "run", evaluator=score, resume=True)
    assert "--sync" in e.value.hint
    assert run_search(sync, tmp_path / "run", evaluator=score, resume=True).resumed == 4
    with pytest.raises(Exception, match="scheduling must be 'async' or 'sync'"):
        run_search(nb201(scheduling="rounds"), tmp_path / "bad", evaluator=score)


def test_a_time_budget_ends_the_async_run(tmp_path):
    s = run_search(nb201(budget="1s", round_size=2), tmp_path / "run", evaluator=uneven)
    r = rows(tmp_path / "run")
    assert r and all(x[5] == "done" for x in r) and sorted(x[2] for x in r) == list(range(len(r)))
    # it stops asking when less than a mean candidate time is left, then waits for the (at most 2) in flight,
    # each at most 0.25 s: so it ends within the budget + 0.5 s, plus the store's and the clock's own time
    assert s.elapsed_s < 2.5


def test_cli_sync_flag(tmp_path):
    from archir.cli.main import main
    from tests.search.test_evaluators import write_table

    table = write_table(tmp_path / "t.csv")
    base = ["search", "--space", "nb201", "--strategy", "random", "--evaluator", f"table:{table}", "--budget", "4c",
            "--no-export", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 0
    assert main(base + ["--out", str(tmp_path / "s"), "--sync"]) == 0
    with Store.open(tmp_path / "a") as a, Store.open(tmp_path / "s") as s:
        assert a.config["scheduling"] == "async" and "scheduling" not in s.config
    assert main(base + ["--out", str(tmp_path / "s"), "--resume"]) == 2  # a run in rounds needs --sync
    assert main(base + ["--out", str(tmp_path / "s"), "--resume", "--sync"]) == 0
