"""SNAS: the penalty's gradient against finite differences, a tiny search, lambda lowers the cost, latency costs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import costmodels
from archir.ops import get_op
from search.data import load_dataset
from search.experiment import ExperimentConfig, export_candidate, run_search
from search.oneshot import ONESHOT
from search.spaces import get_space

TRAIN = {"epochs": 1, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 3e-4, "schedule": "cosine"}


@pytest.fixture(scope="module")
def ds():
    return load_dataset("digits")


def _fd_check(drv, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    logits = {k: torch.tensor(rng.normal(size=len(v)), dtype=torch.float64, requires_grad=True)
              for k, v in drv.costs.candidates.items()}
    pen = drv.penalty(logits)
    grads = torch.autograd.grad(pen, list(logits.values()))
    h = 1e-6
    for (k, v), g in zip(logits.items(), grads):
        for i in range(len(v)):
            plus = {kk: vv.detach().clone() for kk, vv in logits.items()}
            minus = {kk: vv.detach().clone() for kk, vv in logits.items()}
            plus[k][i] += h
            minus[k][i] -= h
            fd = (float(drv.penalty(plus)) - float(drv.penalty(minus))) / (2 * h)
            assert abs(fd - float(g[i])) <= 1e-6 + 1e-5 * abs(fd), (k, i, fd, float(g[i]))
    assert max(float(g.abs().max()) for g in grads) > 1e-3  # not a vacuous check


@pytest.mark.parametrize("cost", ["macs", "params"])
def test_penalty_gradient_matches_finite_differences(ds, cost):
    space = get_space("chain", layers=3, input_shape=ds.input_shape, num_classes=ds.num_classes)
    drv = ONESHOT["snas"](space, ds, ExperimentConfig(), 0, lam=0.7, cost=cost)
    _fd_check(drv)
    # the penalty is lam * E[cost] / E_uniform[cost]: at uniform logits it is lam
    uniform = {k: torch.zeros(len(v), dtype=torch.float64) for k, v in drv.costs.candidates.items()}
    assert float(drv.penalty(uniform)) == pytest.approx(0.7)
    assert drv.cost_uniform == pytest.approx(float(costmodels.expected_cost(
        drv.supernet, {k: torch.softmax(v, -1) for k, v in uniform.items()}, cost=cost)))


def test_latency_penalty_from_the_latency_table(tmp_path):
    # 32x32 images and wide layers: every candidate's convs take far longer than one call's overhead, so the
    # table's entries stay positive after the overhead is subtracted, however loaded the machine is (at 8x8 they
    # are within the timing noise of it)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rgb32.npz", x=rng.normal(size=(40, 3, 32, 32)).astype(np.float32),
             y=np.arange(40) % 4)
    big = load_dataset(tmp_path / "rgb32.npz")
    space = get_space("chain", layers=2, kernels=(3,), expands=(1, 3), stem=32, widths=((64,), (64,)),
                      input_shape=big.input_shape, num_classes=big.num_classes)
    cfg = ExperimentConfig(objective="latency:ort-cpu")
    drv = ONESHOT["snas"](space, big, cfg, 0, lam=1.0, run_dir=tmp_path)
    assert drv.cost_source == "latency" and drv.backend == "ort-cpu"
    assert (tmp_path / "latency_table.sqlite").exists()
    per = drv.costs.per_decision
    names = drv.costs.candidates
    # the per-candidate costs are the table's entries (less the per-call overhead), read back from its file
    import archir
    from archir.ops import candidate_steps

    table = costmodels.LatencyTable(tmp_path / "latency_table.sqlite", "ort-cpu", threads=1, statistic="min",
                                    warmup=3, repeats=15)
    over = table.overhead_ms
    for node in drv.supernet.nodes("choice"):
        key = archir.graph.arch_key(node.id, node.attrs)
        (t_in,) = drv.supernet.input_types(node.id)
        for k, cand in enumerate(node.attrs["candidates"]):
            want = 0.0
            for st in candidate_steps(cand["ops"], t_in, node.id):
                if not get_op(st.op).traits.zero_cost:
                    want += max(table.lookup(st.op, st.attrs, [t.shape for t in st.in_types], measure=False) - over,
                                0.0)
            assert per[key][k] == pytest.approx(want, rel=1e-9, abs=1e-12), (key, names[key][k])
    # every non-empty candidate has a cost: at least a conv of 32 -> 64 channels at 32x32
    assert all(float(v.min()) > 0 for v in per.values()), per
    _fd_check(drv, seed=1)


def test_snas_search_yields_an_exportable_child(tmp_path):
    cfg = ExperimentConfig(space="chain", space_options={"layers": 2}, strategy="snas", budget="2c",
                           objective="macs", strategy_options={"max_batches": 2, "lam": 0.3}, train=dict(TRAIN))
    s = run_search(cfg, tmp_path / "r")
    assert s.counts["done"] == 1 and s.best.op == "derive:snas"
    rep, _ = export_candidate(tmp_path / "r", tmp_path / "m.onnx", best=True)
    assert rep.max_abs_err < 1e-4


def test_lambda_lowers_the_expected_and_derived_cost(ds):
    space = get_space("chain", layers=3, input_shape=ds.input_shape, num_classes=ds.num_classes)
    out = {}
    for lam in (0.0, 2.0):
        torch.manual_seed(0)
        drv = ONESHOT["snas"](space, ds, ExperimentConfig(objective="macs"), 0, lam=lam, arch_lr=0.05,
                              max_batches=4)
        for _ in range(3):
            drv.step()
            drv.steps_done += 1
        out[lam] = (drv.expected_cost(), drv.child_cost(), drv.tau())
    assert out[2.0][0] < 0.7 * out[0.0][0], out
    assert out[2.0][1] < out[0.0][1], out
    assert out[0.0][2] == pytest.approx(0.9 ** 3)  # tau annealed per step


def test_child_is_the_argmax_with_zero_deleting_layers(ds):
    space = get_space("chain", layers=3, input_shape=ds.input_shape, num_classes=ds.num_classes)
    drv = ONESHOT["snas"](space, ds, ExperimentConfig(), 0)
    s = drv.samplers()
    with torch.no_grad():
        s["layer0"].logits.zero_()
        s["layer0"].logits[drv.costs.candidates["layer0"].index("k5_e3")] = 3.0
        s["layer2"].logits.zero_()
        s["layer2"].logits[drv.costs.candidates["layer2"].index("skip")] = 3.0
    d = drv.derive()
    assert d["layers"][0] == {"expand": 3, "kernel": 5, "skip": False, "width": 16}
    assert d["layers"][2] == {"skip": True}
    assert drv.child_cost() == pytest.approx(costmodels.count(space.build(d)).macs)
