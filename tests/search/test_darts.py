"""DARTS: a tiny search end to end, the second-order gradient against exact autograd, memory growth."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from search.data import load_dataset
from search.experiment import ExperimentConfig, export_candidate, load_candidate_graph, run_search
from search.oneshot import ONESHOT, driver_step_peak
from search.spaces import get_space
from search.store import Store

TRAIN = {"epochs": 1, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 3e-4, "schedule": "cosine"}


@pytest.fixture(scope="module")
def ds():
    return load_dataset("digits")


def test_second_order_darts_search_on_the_darts_space(tmp_path):
    cfg = ExperimentConfig(space="darts", space_options={"cells": 1, "channels": 4}, strategy="darts", budget="1c",
                           strategy_options={"order": 2, "max_batches": 1}, train=dict(TRAIN))
    s = run_search(cfg, tmp_path / "r")
    assert s.counts["done"] == 1 and s.best.op == "derive:darts"
    g, c = load_candidate_graph(tmp_path / "r", best=True)
    assert not g.nodes("choice")
    space = get_space("darts", cells=1, channels=4, input_shape=(1, 8, 8), num_classes=10)
    d = space.decode(c.decisions)
    for n in range(4):  # top-2 distinct inputs per node, no none op
        (op0, i0), (op1, i1) = d["normal"][2 * n: 2 * n + 2]
        assert i0 != i1 and "none" not in (op0, op1)
    rep, _ = export_candidate(tmp_path / "r", tmp_path / "m.onnx", best=True)
    assert rep.max_abs_err < 1e-4
    with Store.open(tmp_path / "r") as st:
        assert st.info("oneshot")["driver"] == "darts" and [h["step"] for h in st.info("oneshot")["history"]] == [1]


def test_derive_is_the_darts_argmax_of_the_trained_logits(ds):
    space = get_space("darts", cells=1, channels=4, input_shape=ds.input_shape, num_classes=ds.num_classes)
    drv = ONESHOT["darts"](space, ds, ExperimentConfig(), 0, max_batches=2, arch_lr=0.05)
    drv.step()
    trained = drv.trained_supernet()
    # DartsSpace.genotype_of is DARTS' derivation; the reduce kind is absent in a 1-cell net
    # DARTS' derivation (DartsSpace.genotype_of needs both cell kinds; a 1-cell net has only normal cells)
    assert drv.derive()["normal"] == space.decode({"normal": _normal_genotype(trained),
                                                   "reduce": drv.derive()["reduce"]})["normal"]


def _normal_genotype(sup):
    import numpy as np

    from search.spaces.darts import OPS

    pairs = []
    for n in range(4):
        best = []
        for j in range(n + 2):
            w = np.exp(sup.arch[f"normal.n{n}.i{j}"] - sup.arch[f"normal.n{n}.i{j}"].max())
            w = w / w.sum()
            k = 1 + int(np.argmax(w[1:]))
            best.append((-float(w[k]), j, OPS[k]))
        pairs += [[op, j] for _, j, op in sorted(best)[:2]]
    return pairs


def test_second_order_gradient_matches_exact_unrolled_autograd(ds):
    space = get_space("chain", layers=2, kernels=(3,), expands=(1, 3), input_shape=ds.input_shape,
                      num_classes=ds.num_classes)
    drv = ONESHOT["darts"](space, ds, ExperimentConfig(), 0, order=2, w_decay=1e-3, xi=0.1)
    xt, yt = drv.x_train[:32], drv.y_train[:32]
    xv, yv = drv.x_val[:32], drv.y_val[:32]
    gm = drv.gm
    names = [n for n, p in gm.named_parameters()]
    params = dict(gm.named_parameters())
    wnames = [n for n in names if not n.startswith("archir_arch.")]
    anames = [n for n in names if n.startswith("archir_arch.")]
    before = {n: p.detach().clone() for n, p in params.items()}
    approx = drv._unrolled_arch_grads(xt, yt, xv, yv)
    for n, p in params.items():  # the weights are restored
        assert torch.equal(p.detach(), before[n]), n

    def loss(ps, x, y):
        return F.cross_entropy(functional_call(gm, ps, (x,)), y)

    # exact: d/d alpha of L_val(w - xi * (grad_w L_train(w, alpha) + wd * w), alpha)
    ps = {n: params[n] for n in names}
    gw = torch.autograd.grad(loss(ps, xt, yt), [ps[n] for n in wnames], create_graph=True)
    unrolled = {**ps, **{n: ps[n] - 0.1 * (g + 1e-3 * ps[n]) for n, g in zip(wnames, gw)}}
    exact = torch.autograd.grad(loss(unrolled, xv, yv), [ps[n] for n in anames])
    flat = lambda ts: torch.cat([t.reshape(-1) for t in ts])  # noqa: E731
    a, e = flat(approx), flat(exact)
    assert e.abs().max() > 0
    assert torch.allclose(a, e, rtol=0.05, atol=0.02 * float(e.abs().max())), (a - e).abs().max()


def test_darts_memory_grows_with_the_number_of_candidates(ds):
    peaks = {}
    for label, opts in (("one", {"kernels": (3,), "expands": (1,)}),
                        ("six", {"kernels": (3, 5), "expands": (1, 3, 6)})):
        space = get_space("chain", layers=2, input_shape=ds.input_shape, num_classes=ds.num_classes, **opts)
        peaks[label] = driver_step_peak(ONESHOT["darts"](space, ds, ExperimentConfig(), 0))
    assert peaks["six"] > 3 * peaks["one"], peaks
