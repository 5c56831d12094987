"""search.experiment: budgets, objectives, failed candidates, hard budgets, the time budget."""

from __future__ import annotations

import io
import math
import re

import onnxruntime as ort
import pytest

import archir
import search.train
from search.experiment import (ConfigError, ExperimentConfig, Progress, candidate_seed, parse_budget, parse_objective,
                               run_search, write_gallery)
from search.store import ConfigMismatch, Store, StoreError

_ORT_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
TINY = dict(space="chain", space_options={"layers": 2}, train={"epochs": 1, "batch_size": 128, "lr": 0.05})


def tiny(**kw) -> ExperimentConfig:
    return ExperimentConfig(**{**TINY, **kw})


@pytest.mark.parametrize("text, kind, value", [("200c", "candidates", 200), ("10m", "time", 600.0),
                                                ("90s", "time", 90.0), ("1.5h", "time", 5400.0),
                                                (" 3m ", "time", 180.0)])
def test_parse_budget(text, kind, value):
    b = parse_budget(text)
    assert (b.kind, b.value) == (kind, value)


@pytest.mark.parametrize("text, match", [("10", "not a number with a unit"), ("10x", "not a number with a unit"),
                                         ("", "not a number"), ("1.5c", "whole number"), ("0c", "whole number"),
                                         ("0m", "must be positive"), ("-3m", "not a number")])
def test_parse_budget_errors(text, match):
    with pytest.raises(ConfigError, match=match) as e:
        parse_budget(text)
    assert "200c" in e.value.hint or "3m" in e.value.hint


def test_parse_objective():
    assert parse_objective("error").cost is None and parse_objective("error").cost_key == "macs"
    assert parse_objective("params").cost_key == "params"
    o = parse_objective("latency:torch-cpu")
    assert (o.cost, o.backend, o.cost_key) == ("latency", "torch-cpu", "latency_ms")
    assert parse_objective("latency").backend == "ort-cpu"
    with pytest.raises(ConfigError, match="unknown latency backend 'tpu'"):
        parse_objective("latency:tpu")
    with pytest.raises(ConfigError, match="unknown objective 'accuracy'") as e:
        parse_objective("accuracy")
    assert "macs" in e.value.hint


@pytest.mark.parametrize("kw, match", [({"round_size": 0}, "round size"), ({"cost_weight": -1.0}, "cost weight"),
                                       ({"max_latency_ms": 0.0}, "max-latency-ms"), ({"seed": -1}, "seed"),
                                       ({"latency_backend": "gpu"}, "latency backend"),
                                       pytest.param({"objective": "latency:ort-cuda"},
                                                    "latency backend 'ort-cuda' cannot run",
                                                    marks=pytest.mark.skipif(_ORT_CUDA, reason="ort-cuda runs here")),
                                       ({"space": "nope"}, "unknown search space"),
                                       ({"space_options": {"colour": 1}}, "search space 'chain'"),
                                       ({"train": {"epochs": 1, "momentun": 0.9}}, "training options")])
def test_bad_config_is_refused_before_any_work(tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        run_search(tiny(**kw), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_failed_candidates_are_recorded_and_the_search_goes_on(tmp_path, monkeypatch):
    real = search.train.train
    calls = []

    def flaky(graph, ds, cfg):
        calls.append(cfg.seed)
        if len(calls) == 2:
            raise RuntimeError("boom in the trainer")
        return real(graph, ds, cfg)

    monkeypatch.setattr(search.train, "train", flaky)
    shown = io.StringIO()
    s = run_search(tiny(budget="4c", strategy="evolution", strategy_options={"population": 2, "sample": 2}),
                   tmp_path / "run", progress=Progress(shown))
    lines = shown.getvalue().splitlines()
    assert lines[0].startswith("search: space chain, strategy evolution, objective error, budget 4 candidates")
    assert len(lines) == 5  # the header, then one line per finished candidate with the running totals
    assert re.match(r"\[\d+s elapsed, 2/4 candidates\] #1 +FAILED \(train: RuntimeError: boom in the trainer\) "
                    r"sample \| done 1 failed 1 \| best #0 val_err 0\.\d{3} \| frontier 1", lines[2]), lines[2]
    assert re.search(r"4/4 candidates\] #3 +done +val_err 0\.\d{3} +macs [\d.]+k mutate:.* \| done 3 failed 1 \|",
                     lines[4]), lines[4]
    with Store.open(tmp_path / "run") as st:
        cands = st.candidates()
    assert [c.status for c in cands] == ["done", "failed", "done", "done"]
    bad = cands[1]
    assert bad.error == "train: RuntimeError: boom in the trainer" and bad.score is None and bad.graph_path is None
    # not an ArchirError: a bug, recorded with its traceback (the one line stays the reason)
    assert "in flaky" in bad.traceback and bad.traceback.rstrip().endswith("RuntimeError: boom in the trainer")
    assert not (tmp_path / "run" / "graphs" / "1.json").exists()
    assert s.counts == {"queued": 0, "running": 0, "done": 3, "failed": 1}
    # evolution went on from the finished candidates only: the children's parents never include the failed one
    assert all(1 not in c.parents for c in cands)
    for c in cands:
        assert c.seed == candidate_seed(0, c.id)
        if c.status == "done":
            g = archir.load(tmp_path / "run" / c.graph_path)
            assert g.structural_hash() == c.graph_hash
            assert 0.0 <= c.metrics["val_error"] <= 1.0 and c.timings["epochs"] == 1
            assert c.score == c.metrics["val_error"]  # objective "error"
    assert s.best is not None and s.best.id in {0, 2, 3}


def test_cost_objective_and_hard_budget(tmp_path):
    s = run_search(tiny(budget="2c", objective="macs", max_latency_ms=1e-6), tmp_path / "run")
    with Store.open(tmp_path / "run") as st:
        cands = st.candidates()
    for c in cands:
        assert c.status == "done"
        assert c.score == pytest.approx(c.metrics["val_error"] + 0.02 * math.log2(c.costs["macs"]))
        assert c.costs["latency_ms"] > 1e-6 and not c.within_budget  # measured on ort-cpu, over the budget
        assert c.costs["params"] == archir.load(tmp_path / "run" / c.graph_path).num_params()
    assert s.best is None and s.frontier == []  # recorded, never selected
    table, png = write_gallery(tmp_path / "run")
    assert png is not None and png.is_file()
    assert "on the Pareto frontier (0)" in table and table.count("\nx ") == 2


def test_time_budget_stops_the_search(tmp_path):
    # two trainings take longer than 0.1 s anywhere: exactly the first round runs (one always does)
    s = run_search(tiny(budget="0.1s", round_size=2), tmp_path / "run")
    n = s.counts["done"] + s.counts["failed"]
    assert n == 2 and s.elapsed_s > 0.1
    with Store.open(tmp_path / "run") as st:
        assert st.elapsed_s == pytest.approx(s.elapsed_s) and st.elapsed_s > 0
    # a finished time budget resumes to nothing new: the spent time counts across sessions
    s2 = run_search(tiny(budget="0.1s", round_size=2), tmp_path / "run", resume=True)
    assert s2.counts["done"] + s2.counts["failed"] == n


def test_resume_refuses_another_config_and_create_refuses_an_existing_run(tmp_path):
    run_search(tiny(budget="1c"), tmp_path / "run")
    with pytest.raises(ConfigMismatch, match=r"seed: stored 0, given 1"):
        run_search(tiny(budget="1c", seed=1), tmp_path / "run", resume=True)
    with pytest.raises(StoreError, match="already holds a search"):
        run_search(tiny(budget="1c"), tmp_path / "run")
    with pytest.raises(StoreError, match="no search store"):
        run_search(tiny(budget="1c"), tmp_path / "none", resume=True)


def test_a_bad_executor_leaves_no_run_folder(tmp_path):
    from search.executors import ExecutorError

    with pytest.raises(ExecutorError, match="takes no option"):
        run_search(tiny(budget="1c"), tmp_path / "run", executor="serial", executor_options={"address": "auto"})
    assert not (tmp_path / "run").exists()
