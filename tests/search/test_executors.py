"""search.executors: process and Ray give the same results as serial for a seed; failures and errors.

The Ray test starts a local 2-CPU Ray and skips cleanly when Ray is not installed
(``pip install 'archir[ray]'``).
"""

from __future__ import annotations

import json
import os
import sys

import pytest

import archir
from search.executors import ExecutorError, ProcessExecutor, SerialExecutor, get_executor
from search.experiment import ExperimentConfig, run_search
from search.store import Store

# synchronous rounds: the serial-equivalent mode, where every executor gives the serial run's results
CONFIG = dict(space="chain", space_options={"layers": 2}, strategy="evolution",
              strategy_options={"population": 2, "sample": 2}, budget="4c", round_size=2, seed=7,
              objective="params", train={"epochs": 1, "batch_size": 128, "lr": 0.05}, scheduling="sync")


def _snapshot(run) -> list[tuple]:
    with Store.open(run) as st:
        cands = st.candidates()
    return [(c.id, c.op, c.parents, json.dumps(c.decisions, sort_keys=True), c.seed, c.status, c.metrics,
             c.costs, c.graph_hash, c.score, archir.load(run / c.graph_path).weights_hash()) for c in cands]


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("serial") / "run"
    run_search(ExperimentConfig(**CONFIG), run, executor="serial")
    snap = _snapshot(run)
    assert [s[5] for s in snap] == ["done"] * 4
    return snap


@pytest.mark.slow
def test_process_pool_equals_serial(serial_run, tmp_path):
    run_search(ExperimentConfig(**CONFIG), tmp_path / "run", executor="process", executor_options={"workers": 2})
    assert _snapshot(tmp_path / "run") == serial_run


@pytest.mark.slow
def test_ray_equals_serial(serial_run, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'archir[ray]')")
    run_search(ExperimentConfig(**CONFIG), tmp_path / "run", executor="ray", executor_options={"workers": 2})
    assert _snapshot(tmp_path / "run") == serial_run


def _die(task):
    if task["id"] == 1:
        os._exit(3)  # a worker that dies (as on a segfault or the OOM killer)
    return {"id": task["id"], "status": "ok"}


def test_a_dying_worker_fails_its_candidate_and_the_pool_recovers():
    ex = ProcessExecutor(workers=1)
    try:
        res = dict(ex.map_unordered(_die, [{"id": 0}, {"id": 1}]))
        assert res[1]["status"] == "failed" and "worker process died" in res[1]["reason"]
        again = dict(ex.map_unordered(_die, [{"id": 2}, {"id": 3}]))  # a new pool for the next round
        assert [again[i]["status"] for i in (0, 1)] == ["ok", "ok"]
    finally:
        ex.close()


def test_serial_yields_in_order():
    assert list(SerialExecutor().map_unordered(lambda t: t["id"] * 2, [{"id": 1}, {"id": 2}])) == [(0, 2), (1, 4)]


def test_executor_errors(monkeypatch):
    with pytest.raises(ExecutorError, match="unknown executor 'dask'") as e:
        get_executor("dask")
    assert "process" in e.value.hint
    with pytest.raises(ExecutorError, match=r"executor 'serial' takes no option\(s\) \['address'\]"):
        get_executor("serial", address="auto")
    with pytest.raises(ExecutorError, match="workers must be"):
        get_executor("process", workers=0)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ExecutorError, match="needs Ray, which is not installed") as e:
        get_executor("ray")
    assert "pip install 'archir[ray]'" in e.value.hint
