"""search.executors with grown candidates: hill climbing and Petridish give the same search everywhere.

A grown candidate's task carries its parent's trained graph as plain data (archir JSON text +
safetensors bytes, ``search.morph.graph_to_data``), and the worker grows, checks and trains it.
For the same seed the ``process`` and ``ray`` executors must give exactly the candidates of
``serial``: decisions, parents, graph hashes, weights, metrics and costs. The Ray tests share one
local 2-CPU Ray (started once for the module) and skip cleanly when Ray is not installed
(``pip install 'archir[ray]'``).
"""

from __future__ import annotations

import json

import pytest

import archir
from search.experiment import ExperimentConfig, run_search
from search.store import Store

TRAIN = {"epochs": 1, "batch_size": 128, "lr": 0.05, "schedule": "sgdr"}
CONFIGS = {
    # round 0: the start graph; round 1: two children of it, grown and trained in parallel
    "hillclimb": dict(space="start", strategy="hillclimb", strategy_options={"moves": 2}, budget="3c", round_size=2,
                      seed=3, objective="error", train=dict(TRAIN)),
    "petridish": dict(space="start", strategy="petridish", strategy_options={"ops": ["conv3x3", "identity"]},
                      budget="3c", round_size=2, seed=3, objective="error", train=dict(TRAIN)),
}


def _snapshot(run) -> list[tuple]:
    with Store.open(run) as st:
        cands = st.candidates()
    return [(c.id, c.op, c.parents, json.dumps(c.decisions, sort_keys=True), c.seed, c.status, c.error, c.metrics,
             c.costs, c.graph_hash, c.score, archir.load(run / c.graph_path).weights_hash(),
             archir.load(run / c.graph_path).meta.get("grown")) for c in cands]


@pytest.fixture(scope="module")
def serial_runs(tmp_path_factory):
    out = {}
    for name, config in CONFIGS.items():
        run = tmp_path_factory.mktemp(f"serial-{name}") / "run"
        run_search(ExperimentConfig(**config), run, executor="serial")
        snap = _snapshot(run)
        # the search did grow: a start graph and two trained children of it, each with its recorded moves
        assert [s[5] for s in snap] == ["done"] * 3, snap
        assert snap[0][1] == "start" and [s[2] for s in snap[1:]] == [[0], [0]]
        assert all(s[12]["method"] == CONFIGS[name]["strategy"].replace("hillclimb", "morph") and s[12]["moves"]
                   for s in snap[1:])
        assert len({s[9] for s in snap}) >= 2  # children differ from the start graph
        out[name] = snap
    return out


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for every Ray test of the module (``ray.init`` takes seconds); the executor joins it."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'archir[ray]')")
    import logging

    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        started = True
    yield ray
    if started:
        ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", sorted(CONFIGS))
def test_process_pool_grows_the_same_candidates_as_serial(serial_runs, tmp_path, strategy):
    run_search(ExperimentConfig(**CONFIGS[strategy]), tmp_path / "run", executor="process",
               executor_options={"workers": 2})
    assert _snapshot(tmp_path / "run") == serial_runs[strategy]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", sorted(CONFIGS))
def test_ray_grows_the_same_candidates_as_serial(ray_session, serial_runs, tmp_path, strategy):
    run_search(ExperimentConfig(**CONFIGS[strategy]), tmp_path / "run", executor="ray")
    assert _snapshot(tmp_path / "run") == serial_runs[strategy]
    assert ray_session.is_initialized()  # the executor joined the module's Ray and left it running
