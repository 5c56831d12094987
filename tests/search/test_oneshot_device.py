"""One-shot drivers on a device (issue 15): everything on the run's device, CPU checkpoints, bf16, fp16 refused.

The CPU tests run the same code paths a GPU run does (the device is a parameter); the ``gpu``-marked
ones run DARTS and ENAS on CUDA and move a CUDA checkpoint to the CPU (they skip without a GPU).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from search.config import ConfigError
from search.data import load_dataset
from search.experiment import ExperimentConfig, run_search
from search.oneshot import ONESHOT, driver_step_peak, load_checkpoint, run_oneshot, save_checkpoint
from search.spaces import get_space
from search.store import Store, StoreError

OPTS = {"darts": {}, "snas": {"lam": 0.1}, "parsec": {"samples": 2},
        "enas": {"controller_steps": 1, "controller_batch": 2, "derive_samples": 1}}


@pytest.fixture(scope="module")
def ds():
    return load_dataset("digits")


def _driver(ds, name: str, device="cpu", amp=None, space: str = "chain", **opts):
    so = {"cells": 1, "channels": 4} if space == "darts" else {"layers": 2}
    sp = get_space(space, input_shape=ds.input_shape, num_classes=ds.num_classes, **so)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ONESHOT[name](sp, ds, ExperimentConfig(space=space), seed=1, device=device, amp=amp,
                             max_batches=2, batch_size=32, **{**OPTS[name], **opts})


def _devices(driver) -> dict[str, set[str]]:
    """Where the driver's tensors live: modules (parameters, buffers), optimiser state, data splits."""
    out: dict[str, set[str]] = {}
    for name, m in driver.modules().items():
        out[f"module {name}"] = {str(t.device) for t in [*m.parameters(), *m.buffers()]}
    for name, opt in driver.optimizers().items():
        # Adam's step counter is a CPU scalar by torch's design (unless fused/capturable): not a buffer
        out[f"optimizer {name}"] = {str(v.device) for st in opt.state.values() for k, v in st.items()
                                    if torch.is_tensor(v) and k != "step"}
    out["data"] = {str(t.device) for t in (driver.x_train, driver.y_train, driver.x_val, driver.y_val)}
    return out


def _same_state(a: tuple[dict, dict], b: tuple[dict, dict], *, skip=("rng/cuda",)) -> None:
    (ja, ta), (jb, tb) = a, b
    assert {k: v for k, v in ja.items() if k != "device"} == {k: v for k, v in jb.items() if k != "device"}
    assert set(ta) - set(skip) == set(tb) - set(skip)
    for k in set(ta) - set(skip):
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k


# --------------------------------------------------------------------------- CPU


@pytest.mark.parametrize("name", sorted(OPTS))
def test_a_cpu_driver_keeps_everything_on_the_cpu_and_checkpoints_cpu_tensors(ds, name):
    drv = _driver(ds, name, device="cpu")
    assert drv.device == torch.device("cpu") and drv.resident
    drv.step()
    where = _devices(drv)
    assert all(v <= {"cpu"} for v in where.values()), where
    assert where[f"module {next(iter(drv.modules()))}"] == {"cpu"} and any(where[k] for k in where if "optim" in k)
    js, tensors = drv.state()
    assert js["device"] == "cpu" and all(t.device.type == "cpu" for t in tensors.values())
    # state() copies: stepping on does not change a checkpoint already taken
    before = {k: t.clone() for k, t in tensors.items()}
    drv.step()
    assert all(torch.equal(before[k], tensors[k]) for k in tensors)


def test_a_checkpoint_loads_onto_a_cpu_driver_and_continues_the_same(ds, tmp_path):
    a = _driver(ds, "darts")
    a.step()
    save_checkpoint(tmp_path, *a.state())
    js, tensors = load_checkpoint(tmp_path)
    b = _driver(ds, "darts", device="cpu")
    b.load_state(js, tensors)
    _same_state(a.state(), b.state())
    figures = []
    for drv in (a, b):
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(tensors["rng/torch"])
            figures.append(drv.step())
    assert figures[0] == figures[1] and a.derive() == b.derive()


def test_save_checkpoint_refuses_tensors_off_the_cpu(tmp_path):
    good = {"module/supernet/w": torch.zeros(3)}
    bad = {**good, "optim/w.0.momentum_buffer": torch.zeros(3, device="meta")}  # any device but the CPU
    with pytest.raises(StoreError, match="not on the CPU.*momentum_buffer") as e:
        save_checkpoint(tmp_path, {"driver": "darts"}, bad)
    assert "cpu()" in e.value.hint and not (tmp_path / "oneshot").exists()
    save_checkpoint(tmp_path, {"driver": "darts"}, good)
    assert load_checkpoint(tmp_path)[1]["module/supernet/w"].device.type == "cpu"


def test_fp16_and_unknown_amp_are_refused_before_anything_is_written(ds, tmp_path):
    for amp, match in (("fp16", "amp='fp16'.*GradScaler"), ("int8", "amp='int8'")):
        with pytest.raises(ConfigError, match=match) as e:
            _driver(ds, "enas", amp=amp)
        assert "bf16" in e.value.hint
    cfg = ExperimentConfig(space="chain", space_options={"layers": 2}, strategy="darts", budget="1c",
                           strategy_options={"max_batches": 1}, train={"epochs": 1, "amp": "fp16"})
    with pytest.raises(ConfigError, match="fp16"):
        run_search(cfg, tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", ["darts", "parsec"])
def test_bf16_autocast_trains_the_supernet_in_float32_weights(ds, name):
    fp32, bf16 = _driver(ds, name), _driver(ds, name, amp="bf16")
    fa, fb = fp32.step(), bf16.step()
    assert all(math.isfinite(v) for v in fb.values()) and fb["loss"] < 2.5
    assert fa["loss"] != fb["loss"]  # autocast is on: the same batches give other roundings
    assert {p.dtype for p in bf16.modules()["supernet"].parameters()} == {torch.float32}
    assert bf16.derive() is not None


def test_a_parsec_transfer_keeps_the_device_and_amp(ds):
    drv = _driver(ds, "parsec", amp="bf16", space="darts")
    big = drv.transfer(cells=2, channels=4)
    assert (big.device, big.amp) == (drv.device, "bf16")
    assert {str(p.device) for p in big.prior} == {str(drv.device)}


def test_second_order_darts_stays_float32_under_bf16(ds):
    drv = _driver(ds, "darts", amp="bf16", order=2)
    xt, yt, xv, yv = drv.x_train[:16], drv.y_train[:16], drv.x_val[:16], drv.y_val[:16]
    with torch.random.fork_rng(devices=[]):
        g_bf16 = drv._unrolled_arch_grads(xt, yt, xv, yv)
    drv.amp = None
    with torch.random.fork_rng(devices=[]):
        g_fp32 = drv._unrolled_arch_grads(xt, yt, xv, yv)
    assert all(torch.equal(a, b) for a, b in zip(g_bf16, g_fp32))


def test_the_device_is_a_run_time_choice_handed_to_the_supernet_and_the_derived_candidate(tmp_path, monkeypatch):
    import search.evaluators as evaluators

    seen: list[tuple[str, object]] = []
    real = evaluators.evaluate_candidate
    monkeypatch.setattr(evaluators, "evaluate_candidate", lambda task: (seen.append(("task", task["device"])),
                                                                       real(task))[1])
    cfg = ExperimentConfig(space="chain", space_options={"layers": 2}, strategy="darts", budget="1c",
                           strategy_options={"max_batches": 1}, train={"epochs": 1}, seed=2)
    run_search(cfg, tmp_path / "auto", device="auto")
    want = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    assert seen == [("task", "auto")]  # the candidate resolves "auto" where it trains
    assert load_checkpoint(tmp_path / "auto")[0]["device"] == str(want)  # the supernet trained there
    run_search(cfg, tmp_path / "cpu", device="cpu")
    with Store.open(tmp_path / "auto") as a, Store.open(tmp_path / "cpu") as b:
        assert a.config == b.config and "device" not in a.config  # not part of the experiment
        if want.type == "cpu":
            assert [c.metrics for c in a.candidates()] == [c.metrics for c in b.candidates()]


def test_a_bad_device_is_refused_before_the_run_folder_is_made(tmp_path):
    from search.train import DeviceError

    cfg = ExperimentConfig(space="chain", space_options={"layers": 2}, strategy="enas", budget="1c",
                           strategy_options={"max_batches": 1}, train={"epochs": 1})
    with pytest.raises(DeviceError, match="cuda:99|CUDA is not available"):
        run_search(cfg, tmp_path / "r", device="cuda:99")
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- GPU


def _on_cuda(where: dict[str, set[str]], *, cpu_ok=()) -> bool:
    return all(v == {"cuda:0"} or (k in cpu_ok and v <= {"cpu"}) for k, v in where.items() if v)


@pytest.mark.gpu
@pytest.mark.parametrize("name,amp,opts", [("darts", None, {}), ("darts", "bf16", {}), ("darts", None, {"order": 2}),
                                           ("enas", None, {}), ("enas", "bf16", {}), ("snas", "bf16", {}),
                                           ("parsec", None, {})])
def test_cuda_drivers_train_on_the_gpu(ds, name, amp, opts):
    drv = _driver(ds, name, device="cuda", amp=amp, space="darts", **opts)
    figs = [drv.step() for _ in range(2)]
    assert all(math.isfinite(v) for f in figs for k, v in f.items() if k not in ("baseline", "reward")), figs
    # ENAS' controller stays on the CPU by design (search.oneshot.enas: Devices)
    assert _on_cuda(_devices(drv), cpu_ok=("module controller", "optimizer controller")), _devices(drv)
    d = drv.derive()
    g = drv.derived_graph(d)
    assert all(isinstance(v, np.ndarray) for n in g.nodes() for v in n.params.values())
    assert all(t.device.type == "cpu" for t in drv.state()[1].values())
    assert driver_step_peak(drv) > 0


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["darts", "enas"])
def test_a_cuda_checkpoint_resumes_on_the_cpu_to_the_same_state(ds, tmp_path, name):
    gpu = _driver(ds, name, device="cuda", space="darts")
    gpu.step()
    save_checkpoint(tmp_path, *gpu.state())
    js, tensors = load_checkpoint(tmp_path)
    assert js["device"] == "cuda:0" and "rng/cuda" in tensors
    cpu = _driver(ds, name, device="cpu", space="darts")
    cpu.load_state(js, tensors)
    _same_state(gpu.state(), cpu.state())
    assert math.isfinite(cpu.step()["loss"])
    back = _driver(ds, name, device="cuda", space="darts")  # and a CPU checkpoint onto the GPU
    back.load_state(*cpu.state())
    _same_state(cpu.state(), back.state())
    assert math.isfinite(back.step()["loss"])


class _Stop(Exception):
    pass


@pytest.mark.gpu
def test_archir_search_darts_on_cuda_end_to_end_and_a_killed_cuda_run_resumes_on_the_cpu(tmp_path):
    from archir.cli.main import main

    out = tmp_path / "cli"
    assert main(["search", "--space", "darts", "--space-opt", "cells=1", "--space-opt", "channels=4", "--strategy",
                 "darts", "--strategy-opt", "max_batches=2", "--epochs", "1", "--budget", "1c", "--device", "cuda",
                 "--train-opt", "amp=bf16", "--out", str(out)]) == 0
    assert load_checkpoint(out)[0]["device"].startswith("cuda")
    with Store.open(out) as st:
        assert [c.status for c in st.candidates()] == ["done"]

    cfg = ExperimentConfig(space="darts", space_options={"cells": 1, "channels": 4}, strategy="darts", budget="2c",
                           strategy_options={"max_batches": 2}, train={"epochs": 1}, seed=4)

    def stop(driver, figures):
        raise _Stop

    with pytest.raises(_Stop):
        run_oneshot(cfg, tmp_path / "r", device="cuda", on_step=stop)
    assert load_checkpoint(tmp_path / "r")[0]["steps_done"] == 1
    s = run_search(cfg, tmp_path / "r", resume=True, device="cpu")
    js, _ = load_checkpoint(tmp_path / "r")
    assert js["steps_done"] == 2 and js["device"] == "cpu" and s.counts["done"] == 1
