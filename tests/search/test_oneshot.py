"""The one-shot framework: dispatch from run_search, the store record, checkpoints and resume, options."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import archir
from search.data import load_dataset
from search.experiment import ExperimentConfig, export_candidate, load_candidate_graph, run_search, write_gallery
from search.oneshot import (ONESHOT, COMMON_OPTIONS, OneShotDriver, PeakMemory, categorical_entropy,
                            decisions_from_probs, load_checkpoint, register_oneshot)
from search.spaces import get_space
from search.store import Store, StoreError
from search.strategies import StrategyError

TRAIN = {"epochs": 1, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 3e-4, "schedule": "cosine"}


def tiny(strategy: str, budget: str = "2c", **opts) -> ExperimentConfig:
    return ExperimentConfig(space="chain", space_options={"layers": 2}, strategy=strategy, budget=budget,
                            strategy_options={"max_batches": 2, **opts}, train=dict(TRAIN), seed=3)


def test_registry_has_the_drivers():
    assert {"darts", "snas", "parsec"} <= set(ONESHOT)
    assert all(issubclass(c, OneShotDriver) and c.name == n for n, c in ONESHOT.items())
    with pytest.raises(TypeError, match="taken"):
        @register_oneshot
        class Other(ONESHOT["darts"]):
            name = "darts"


def test_run_search_hands_over_and_records_the_derived_architecture(tmp_path):
    s = run_search(tiny("darts", evaluate_every=1), tmp_path / "r", on_candidate=lambda c: None)
    with Store.open(tmp_path / "r") as st:
        cands = st.candidates()
        info = st.info("oneshot")
    assert info["driver"] == "darts" and [h["step"] for h in info["history"]] == [1, 2]  # every step's figures
    assert all({"loss", "val_error", "entropy", "elapsed_s"} <= set(h) for h in info["history"])
    assert info["history"][-1]["entropy"] == pytest.approx(load_checkpoint(tmp_path / "r")[0]["figures"]["entropy"])
    # evaluate_every=1 with 2 steps: the architectures after step 1 and step 2
    assert [(c.op, c.round, c.parents, c.status) for c in cands] == [("derive:darts", 1, [], "done"),
                                                                     ("derive:darts", 2, [], "done")]
    space = get_space("chain", layers=2, input_shape=(1, 8, 8), num_classes=10)
    for c in cands:
        d = space.decode(c.decisions)
        g, _ = load_candidate_graph(tmp_path / "r", cid=c.id)
        assert g.structural_hash() == space.build(d).structural_hash() == c.graph_hash
        assert {"params", "macs"} <= set(c.costs) and 0 <= c.metrics["val_error"] <= 1
    assert s.counts["done"] == 2 and s.best is not None
    rep, best = export_candidate(tmp_path / "r", tmp_path / "best.onnx", best=True)
    assert rep.max_abs_err < 1e-4 and best.id == s.best.id
    table, _ = write_gallery(tmp_path / "r", draw=False)
    assert "derive:darts" in table
    ck = load_checkpoint(tmp_path / "r")
    assert ck is not None and ck[0]["steps_done"] == 2 and ck[0]["driver"] == "darts"
    assert any(k.startswith("module/supernet/archir_arch.") for k in ck[1])


class _Stop(Exception):
    pass


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    cfg = tiny("parsec", budget="3c", samples=2)
    full = run_search(cfg, tmp_path / "full")

    def stop_after_first(driver, figures):
        if driver.steps_done == 1:
            raise _Stop

    from search.oneshot import run_oneshot

    with pytest.raises(_Stop):
        run_oneshot(cfg, tmp_path / "cut", on_step=stop_after_first)
    assert load_checkpoint(tmp_path / "cut")[0]["steps_done"] == 1
    with Store.open(tmp_path / "cut") as st:
        assert st.candidates() == []
    seen = []
    resumed = run_search(cfg, tmp_path / "cut", resume=True, on_candidate=seen.append)
    assert len(seen) == 1 and resumed.counts["done"] == 1
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "cut")
    assert a[0]["steps_done"] == b[0]["steps_done"] == 3
    assert a[0]["rng"] == b[0]["rng"]
    assert set(a[1]) == set(b[1])
    for k in a[1]:  # bit-identical: the resumed search is the uninterrupted one
        assert torch.equal(a[1][k], b[1][k]), k
    assert full.best.decisions == resumed.best.decisions
    with Store.open(tmp_path / "full") as st, Store.open(tmp_path / "cut") as sc:  # the history survives the cut
        hf, hc = st.info("oneshot")["history"], sc.info("oneshot")["history"]
    assert [h["step"] for h in hc] == [1, 2, 3]
    assert [{k: v for k, v in h.items() if k != "elapsed_s"} for h in hc] == \
        [{k: v for k, v in h.items() if k != "elapsed_s"} for h in hf]
    # resuming a finished run adds nothing
    again = run_search(cfg, tmp_path / "cut", resume=True)
    assert again.counts["done"] == 1


def test_resume_refuses_a_broken_checkpoint_and_a_new_run_refuses_an_old_folder(tmp_path):
    cfg = tiny("darts", budget="1c")
    run_search(cfg, tmp_path / "r")
    with pytest.raises(StoreError):
        run_search(cfg, tmp_path / "r")
    p = tmp_path / "r" / "oneshot" / "state.safetensors"
    p.write_bytes(p.read_bytes()[:-3] + b"xyz")
    with pytest.raises(StoreError, match="do not belong together"):
        run_search(cfg, tmp_path / "r", resume=True)


def test_bad_options_are_strategy_errors():
    ds = load_dataset("digits")
    space = get_space("chain", input_shape=ds.input_shape, num_classes=ds.num_classes)
    with pytest.raises(StrategyError, match="unknown option"):
        ONESHOT["darts"](space, ds, ExperimentConfig(), 0, bogus=1)
    with pytest.raises(StrategyError, match="max_batches"):
        ONESHOT["parsec"](space, ds, ExperimentConfig(), 0, max_batches=-1)
    with pytest.raises(StrategyError, match="order"):
        ONESHOT["darts"](space, ds, ExperimentConfig(), 0, order=3)
    with pytest.raises(StrategyError, match="lam"):
        ONESHOT["snas"](space, ds, ExperimentConfig(), 0, lam=float("nan"))
    assert set(COMMON_OPTIONS) <= set(ONESHOT["darts"](space, ds, ExperimentConfig(), 0).options)


def test_cli_search_with_a_oneshot_strategy(tmp_path, capsys):
    from archir.cli.main import main

    rc = main(["search", "--space", "chain", "--space-opt", "layers=2", "--strategy", "snas", "--budget", "1c",
               "--epochs", "1", "--strategy-opt", "max_batches=1", "--strategy-opt", "lam=0.5",
               "--objective", "params", "--out", str(tmp_path / "r"), "--quiet"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "best ONNX" in out.out and (tmp_path / "r" / "best.onnx").exists()
    rc = main(["search", "--strategy", "snas", "--budget", "1c", "--strategy-opt", "cost=watts",
               "--out", str(tmp_path / "bad"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "cost='watts'" in err and "Traceback" not in err


def test_entropy_and_derivation_helpers():
    assert categorical_entropy({"a": np.zeros(3), "b": np.array([100.0, 0.0])}) == pytest.approx(np.log(3), abs=1e-6)
    space = get_space("darts", input_shape=(1, 8, 8), num_classes=10, cells=1, channels=4)
    sup = space.supernet()
    keys = archir.decision_keys(sup)
    probs = {k: np.full(len(v), 1e-3) for k, v in keys.items()}
    # node 0: edge i0 prefers sep_conv_3x3, edge i1 prefers none (zero) but its best op is strong
    probs["normal.n0.i0"][4] = 0.5
    probs["normal.n0.i1"][0], probs["normal.n0.i1"][5] = 0.9, 0.6
    darts = decisions_from_probs(space, sup, probs)
    snas = decisions_from_probs(space, sup, probs, drop_zero=True)
    assert darts["normal"][:2] == [["sep_conv_3x3", 0], ["sep_conv_5x5", 1]]
    # SNAS: i1's argmax is none, but node 0 has only these two inputs: the genotype keeps both
    assert snas["normal"][:2] == darts["normal"][:2]
    # node 1 (inputs 0..2): i2 survives with the lowest weight, i0 and i1 are deleted by their none argmax
    for j, w in enumerate((0.5, 0.4, 0.2)):
        probs[f"normal.n1.i{j}"][:] = 1e-3
        probs[f"normal.n1.i{j}"][6] = w
    probs["normal.n1.i0"][0] = probs["normal.n1.i1"][0] = 0.9
    assert decisions_from_probs(space, sup, probs)["normal"][2:4] == [["dil_conv_3x3", 0], ["dil_conv_3x3", 1]]
    assert decisions_from_probs(space, sup, probs, drop_zero=True)["normal"][2:4] == [["dil_conv_3x3", 0],
                                                                                       ["dil_conv_3x3", 2]]


def test_peak_memory_counts_live_tensors():
    with PeakMemory() as m:
        a = torch.ones(1000)
        b = torch.ones(1000)
        del a, b
        c = torch.ones(500)
    assert m.peak == 8000 and m.current == 2000
    del c


def test_checkpoint_json_is_plain_json(tmp_path):
    run_search(tiny("darts", budget="1c"), tmp_path / "r")
    doc = json.loads((tmp_path / "r" / "oneshot" / "state.json").read_text())
    assert doc["format"] == "archir-oneshot-checkpoint" and doc["state"]["options"]["max_batches"] == 2


def test_a_step_pairs_every_training_batch_with_a_validation_batch():
    ds = load_dataset("digits")
    space = get_space("chain", layers=2, input_shape=ds.input_shape, num_classes=ds.num_classes)
    drv = ONESHOT["darts"](space, ds, ExperimentConfig(), 0)
    n = drv.steps_per_epoch()
    assert n == -(-len(ds.y_train) // 64) and len(ds.y_val) < len(ds.y_train)
    train, val = list(drv.batches("train")), list(drv.batches("val"))
    assert len(train) == len(val) == n
    assert sum(len(y) for _, y in train) == len(ds.y_train)  # one pass over the training split
    drv.options["max_batches"] = 3
    assert len(list(drv.batches("val"))) == 3
