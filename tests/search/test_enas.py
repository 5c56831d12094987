"""--strategy enas: weight sharing through the fixed-mode supernet, a tiny digits search, checkpoints and resume."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from safetensors.torch import load_file

import archir
from archir.lower import sync_back, to_fx
from search.data import load_dataset
from search.experiment import ExperimentConfig, export_candidate, run_search
from search.oneshot import ONESHOT, run_oneshot
from search.oneshot.enas import ENAS
from search.spaces import get_space
from search.store import Store
from search.strategies import StrategyError

OPTS = {"max_batches": 3, "controller_steps": 2, "controller_batch": 2, "batch_size": 32, "derive_samples": 3}


def _cfg(space: str = "darts", **kw) -> ExperimentConfig:
    so = {"cells": 2, "channels": 4} if space == "darts" else {"layers": 2}
    return ExperimentConfig(**{"space": space, "space_options": so, "strategy": "enas", "strategy_options": OPTS,
                               "budget": "2c", "train": {"epochs": 1, "batch_size": 128, "lr": 0.05}, **kw})


def _driver(space_name: str) -> ENAS:
    ds = load_dataset("digits")
    so = {"cells": 2, "channels": 4} if space_name == "darts" else {"layers": 2}
    space = get_space(space_name, input_shape=ds.input_shape, num_classes=ds.num_classes, **so)
    return ENAS(space, ds, _cfg(space_name), seed=0, **OPTS)


@pytest.mark.parametrize("space_name", ["darts", "chain"])
def test_a_sample_runs_the_shared_weights_of_its_derived_network(space_name):
    torch.manual_seed(0)
    drv = _driver(space_name)
    drv.step()  # train the shared weights a little, so they are not the initial ones
    drv.module.eval()
    x = drv.x_val[:8]
    for _ in range(3):
        with torch.no_grad():
            arch = drv.controller.sample().choices
        drv.select(arch)
        d = drv.decisions_of(arch)
        plain = drv.space.derive(sync_back(drv.supernet, drv.module), d)  # the shared weights, cut out
        assert plain.structural_hash() == drv.space.build(d).structural_hash()
        with torch.no_grad():
            want = to_fx(plain).eval()(x)
            got = drv.module(x)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_chain_controller_sees_only_what_the_supernet_expresses():
    drv = _driver("chain")
    # widths are fixed at the supernet's; layer 0 (input 8 != width 16: no residual) cannot be skipped
    assert [n for n, _ in drv.controller.variables] == ["layers.0.block", "layers.1.block"]
    assert [n for _, n in drv.controller.variables] == [6, 6]  # 2 kernels x 3 expands; layer 1 has stride 2
    d = drv.decisions_of([5, 0])
    assert drv.space.widths(d) == drv.supernet.meta["widths"]


def test_derive_does_not_move_the_search():
    drv = _driver("darts")
    before = drv.controller.generator.get_state().clone()
    d1 = drv.derive()
    assert torch.equal(drv.controller.generator.get_state(), before)
    assert drv.derive() == d1 and drv.space.decode(d1) == d1


def test_registered_and_options_checked():
    assert ONESHOT["enas"] is ENAS
    ds = load_dataset("digits")
    space = get_space("chain", input_shape=ds.input_shape, num_classes=ds.num_classes, layers=2)
    with pytest.raises(StrategyError, match="controller_batch"):
        ENAS(space, ds, _cfg("chain"), seed=0, controller_batch=0)
    with pytest.raises(StrategyError, match="unknown option"):
        ENAS(space, ds, _cfg("chain"), seed=0, population=3)
    with pytest.raises(StrategyError, match="baseline_decay"):
        ENAS(space, ds, _cfg("chain"), seed=0, baseline_decay=2.0)


def test_tiny_search_on_digits_exports_checkpoints_and_resumes(tmp_path):
    run_search(_cfg(), tmp_path / "full")  # run_search hands --strategy enas to run_oneshot
    with Store.open(tmp_path / "full") as st:
        (c,) = st.candidates()
    assert c.status == "done" and c.op == "derive:enas" and c.round == 2
    export_candidate(tmp_path / "full", tmp_path / "best.onnx", best=True)
    onnx.checker.check_model(onnx.load(tmp_path / "best.onnx"), full_check=True)
    ck = json.loads((tmp_path / "full" / "oneshot" / "state.json").read_text())["state"]
    assert ck["driver"] == "enas" and ck["steps_done"] == 2 and ck["extra"]["updates"] == 4
    fig = ck["figures"]  # what the progress line showed: the controller's reward, baseline and entropy
    assert 0 <= fig["reward"] <= 1 and 0 <= fig["baseline"] <= 1 and fig["entropy"] > 0 and fig["loss"] > 0
    tensors = load_file(tmp_path / "full" / "oneshot" / "state.safetensors")
    assert any(k.startswith("module/controller/lstm.") for k in tensors) and "extra/controller_rng" in tensors
    assert any(k.startswith("optim/controller.") for k in tensors)

    # stop after the first step (its checkpoint is written), resume: the same end state as uninterrupted
    def stop(d, f):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_oneshot(_cfg(), tmp_path / "cut", on_step=stop)
    again = run_search(_cfg(), tmp_path / "cut", resume=True)
    assert again.counts["done"] == 1
    cut = load_file(tmp_path / "cut" / "oneshot" / "state.safetensors")
    assert set(cut) == set(tensors)
    assert all(torch.equal(cut[k], tensors[k]) for k in tensors)
    with Store.open(tmp_path / "cut") as st:
        (c2,) = st.candidates()
    assert c2.decisions == c.decisions
    assert archir.load(tmp_path / "cut" / c2.graph_path).structural_hash() == c.graph_hash
