"""PARSEC: a tiny search, single-path memory, the empirical-Bayes updates, transfer to a larger network."""

from __future__ import annotations

import pytest
import torch

from search.data import load_dataset
from search.experiment import ExperimentConfig, export_candidate, load_candidate_graph, run_search
from search.oneshot import ONESHOT, driver_step_peak, train_step_peak
from search.spaces import get_space

TRAIN = {"epochs": 1, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 3e-4, "schedule": "cosine"}


@pytest.fixture(scope="module")
def ds():
    return load_dataset("digits")


def test_parsec_search_on_the_darts_space(tmp_path):
    cfg = ExperimentConfig(space="darts", space_options={"cells": 1, "channels": 4}, strategy="parsec", budget="1c",
                           strategy_options={"samples": 2, "max_batches": 2}, train=dict(TRAIN))
    s = run_search(cfg, tmp_path / "r")
    assert s.counts["done"] == 1 and s.best.op == "derive:parsec"
    g, c = load_candidate_graph(tmp_path / "r", best=True)
    assert not g.nodes("choice")
    rep, _ = export_candidate(tmp_path / "r", tmp_path / "m.onnx", best=True)
    assert rep.max_abs_err < 1e-4


def test_peak_memory_is_that_of_one_sampled_architecture(ds):
    """PARSEC's step (K=4 samples) within 1.3x of training the largest of its sampled architectures alone;
    DARTS on the same space holds every candidate's activations."""
    space = get_space("chain", layers=3, input_shape=ds.input_shape, num_classes=ds.num_classes)
    drv = ONESHOT["parsec"](space, ds, ExperimentConfig(), 0, samples=4)
    peak = driver_step_peak(drv)
    x, y = drv.x_train[:64], drv.y_train[:64]
    singles = [train_step_peak(drv.plain_graph(a), x, y) for a in drv.last_archs]
    assert len(drv.last_archs) == 4
    assert peak <= 1.3 * max(singles), (peak, singles)
    darts = driver_step_peak(ONESHOT["darts"](space, ds, ExperimentConfig(), 0))
    assert darts > 2.5 * peak, (darts, peak)


def test_only_the_sampled_path_is_trained_and_the_prior_moves_towards_it(ds):
    space = get_space("chain", layers=3, input_shape=ds.input_shape, num_classes=ds.num_classes)
    drv = ONESHOT["parsec"](space, ds, ExperimentConfig(), 0, samples=3, max_batches=1)
    arch = [1, 4, 2]  # per layer a candidate index (view="supernet": one categorical per decision key)
    assert drv.view == "supernet" and [n for _, n in drv.variables] == [6, 6, 7]
    drv.sample = lambda: list(arch)  # every sample is this architecture: importance weights are uniform
    before = {n: p.detach().clone() for n, p in drv.gm.named_parameters()}
    probs0 = drv.prior_probs()
    drv.batch_step(drv.x_train[:64], drv.y_train[:64])
    changed = {n for n, p in drv.gm.named_parameters() if not torch.equal(p.detach(), before[n])}
    paths = drv.gm.meta["archir_modules"]
    for i, k in enumerate(arch):
        pre = paths[f"layer{i}"] + ".cands."
        on = {n for n in changed if n.startswith(pre)}
        assert on and all(n.startswith(f"{pre}{k}.") for n in on), (i, sorted(on)[:3])
    assert any(n.startswith("stem") or n.startswith("head") for n in changed)
    for p0, p1, k in zip(probs0, drv.prior_probs(), arch):
        assert p1[k] > p0[k] and p1.sum() == pytest.approx(1.0)


def test_importance_weights_favour_the_likelier_architecture(ds):
    space = get_space("chain", layers=3, input_shape=ds.input_shape, num_classes=ds.num_classes)
    drv = ONESHOT["parsec"](space, ds, ExperimentConfig(), 0, samples=2, max_batches=1)
    a, b = [0, 0, 0], [0, 0, 6]  # differ in the last layer only (6: skip it)
    seq = iter([a, b])
    drv.sample = lambda: next(seq)
    x, y = drv.x_train[:64], drv.y_train[:64]
    lls = []
    for arch in (a, b):
        drv.set_arch(arch)
        with torch.no_grad():
            lls.append(-float(torch.nn.functional.cross_entropy(drv.gm(x), y, reduction="sum")))
    w_a = float(torch.softmax(torch.tensor(lls, dtype=torch.float64), 0)[0])
    assert abs(w_a - 0.5) > 1e-3  # the two likelihoods differ
    probs0 = drv.prior_probs()[2]
    drv.batch_step(x, y)
    p1 = drv.prior_probs()[2]  # the last variable: mass moves to the option with the larger weight
    assert (p1[0] > probs0[0]) == (w_a > 0.5)
    assert (p1[6] > probs0[6]) == (w_a < 0.5)
    assert p1[3] < probs0[3]  # an option no sample took loses mass


def test_learned_prior_transfers_to_a_larger_network_and_fine_tunes(ds):
    space = get_space("darts", cells=1, channels=4, input_shape=ds.input_shape, num_classes=ds.num_classes)
    drv = ONESHOT["parsec"](space, ds, ExperimentConfig(), 0, samples=2, max_batches=2, prior_lr=0.2)
    drv.step()
    assert drv.view == "space" and drv.entropy() < ONESHOT["parsec"](space, ds, ExperimentConfig(), 0).entropy()
    big = drv.transfer(cells=3, channels=6)
    assert big.entropy() == pytest.approx(drv.entropy()) and big.derive() == drv.derive()
    assert len(big.supernet.nodes()) > len(drv.supernet.nodes())
    assert {k.split(".")[0] for k in big.keys} == {"normal", "reduce"}
    before = [p.detach().clone() for p in big.prior]
    figures = big.step()  # fine-tune the distribution on the larger supernet
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, big.prior))
    assert 0 <= figures["mode_val_error"] <= 1
    g = space.build(big.derive(), cells=3, channels=6)
    assert g.structural_hash() == space.derive(big.supernet, big.derive()).structural_hash()
    with pytest.raises(Exception, match="categorical view"):
        ONESHOT["parsec"](get_space("chain", input_shape=(1, 8, 8), num_classes=10), ds, ExperimentConfig(),
                          0).transfer(cells=2)
