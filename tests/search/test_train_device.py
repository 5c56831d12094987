"""search.train at scale: devices, mixed precision, channels_last, compile's fallback, the DataLoader path,
seeded augmentation, resume from a TrainState, an empty validation split; GPU tests marked ``gpu``."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from search.augment import Augment
from search.data import load_dataset
from search.spaces import ChainSpace
from search.train import (DeviceError, TrainConfig, TrainConfigError, recipe_config, resolve_device, train)

TINY = {"layers": [{"kernel": 3, "expand": 3, "width": 8, "skip": False}, {"skip": True},
                   {"kernel": 3, "expand": 3, "width": 16, "skip": False}, {"skip": True}]}
CFG = TrainConfig(epochs=2, lr=0.2, batch_size=128, seed=0)


@pytest.fixture(scope="module")
def ds():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def tiny(ds):
    return ChainSpace(ds.input_shape, ds.num_classes).build(TINY, seed=0)


def _w(res):
    return {(n.id, k): v for n in res.graph.nodes() for k, v in {**n.params, **n.buffers}.items()}


def _same(a, b) -> bool:
    wa, wb = _w(a), _w(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def base(tiny, ds):
    return train(tiny, ds, CFG)


# --------------------------------------------------------------------------- devices and config


def test_explicit_cpu_device_is_today_s_run(tiny, ds, base):
    res = train(tiny, ds, dataclasses.replace(CFG, device="cpu"))
    assert res.ok and res.device == "cpu" and _same(res, base) and res.metrics == base.metrics
    assert res.train_images == 2 * len(ds.y_train) and res.train_seconds > 0
    auto = train(tiny, ds, dataclasses.replace(CFG, device="auto"))
    assert auto.ok and auto.device == str(resolve_device("auto")) and set(auto.metrics) == set(base.metrics)


def test_resolve_device_and_config_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        for d in ("cuda", "cuda:1"):
            with pytest.raises(DeviceError, match="CUDA is not available") as e:
                resolve_device(d)
            assert "--device cpu" in e.value.hint
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")
    for kw, match in [({"device": "gpu"}, "device"), ({"device": "cuda:x"}, "device"), ({"amp": "fp8"}, "amp"),
                      ({"amp": "fp16", "device": "cpu"}, "fp16 autocast needs a CUDA"),
                      ({"channels_last": 1}, "channels_last"), ({"cutout": -1}, "cutout"),
                      ({"workers": 1.5}, "workers"), ({"drop_path": 1.0}, "drop_path"),
                      ({"auxiliary_weight": -0.1}, "auxiliary_weight")]:
        with pytest.raises(TrainConfigError, match=match):
            TrainConfig(**kw)
    with pytest.raises(ValueError, match="unknown recipe"):  # TrainConfigError is a ValueError
        recipe_config("nasnet")


def test_fp16_on_the_cpu_fails_the_run_with_the_reason(tiny, ds):
    if torch.cuda.is_available():
        pytest.skip("auto is CUDA here")
    res = train(tiny, ds, dataclasses.replace(CFG, device="auto", amp="fp16"))
    assert not res.ok and "fp16" in res.reason and res.traceback is None  # a user error, not a bug


def test_bf16_and_channels_last_train_on_the_cpu(tiny, ds, base):
    slow = dataclasses.replace(CFG, epochs=1, lr=0.01)  # a few small steps: rounding differences stay small
    ref, cl = train(tiny, ds, slow), train(tiny, ds, dataclasses.replace(slow, channels_last=True))
    assert cl.ok
    for k, v in _w(ref).items():
        np.testing.assert_allclose(_w(cl)[k], v, rtol=1e-2, atol=1e-3)  # the same math in another layout
    bf = train(tiny, ds, dataclasses.replace(CFG, amp="bf16"))
    assert bf.ok and abs(bf.metrics["val_error"] - base.metrics["val_error"]) < 0.05 and not _same(bf, base)
    assert all(a.dtype == np.float32 for a in _w(bf).values() if a.dtype.kind == "f")  # synced back as float32


def test_compile_failure_falls_back_to_eager_with_a_warning(tiny, ds, base, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match="torch.compile is not available .*no C\\+\\+ compiler.*eagerly"):
        res = train(tiny, ds, dataclasses.replace(CFG, compile=True))
    assert res.ok and _same(res, base)


def test_dataloader_workers_give_the_same_run(tiny, ds, base):
    res = train(tiny, ds, dataclasses.replace(CFG, workers=1))
    assert res.ok and _same(res, base)


def test_empty_validation_split_is_skipped(tiny, ds):
    import types

    nov = types.SimpleNamespace(x_train=ds.x_train, y_train=ds.y_train, x_val=ds.x_val[:0], y_val=ds.y_val[:0],
                                x_test=ds.x_test, y_test=ds.y_test)
    res = train(tiny, nov, dataclasses.replace(CFG, epochs=1))
    assert res.ok and np.isnan(res.metrics["val_error"]) and 0 <= res.metrics["test_error"] <= 1


# --------------------------------------------------------------------------- augmentation


def test_augment_is_seeded_and_does_what_it_says():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    aug = Augment(crop_padding=2, flip=True, cutout=4, pad_value=(-1.0, -2.0, -3.0))
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(torch.cat([x] * 8), torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(c[:2], a)
    # crop alone: every output is an 8x8 window of the padded image
    crop = Augment(crop_padding=2, pad_value=(-1.0, -2.0, -3.0))
    y = crop(x, torch.Generator().manual_seed(1))
    pad = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for ch, v in enumerate((-1.0, -2.0, -3.0)):
        pad[:, ch][pad[:, ch] == 0] = v  # (x is never 0 away from index 0 of image 0)
    pad[0, 0, 2, 2] = 0.0
    for i in range(2):
        assert any(torch.equal(y[i], pad[i, :, r:r + 8, s:s + 8]) for r in range(5) for s in range(5))
    # flip alone: each image is itself or its mirror, both happen over many images
    many = torch.randn(64, 3, 8, 8)
    f = Augment(flip=True)(many, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(f[i], many[i].flip(2)) for i in range(64)]
    assert all(m or torch.equal(f[i], many[i]) for i, m in enumerate(mirrored)) and 10 < sum(mirrored) < 54
    # cutout alone: a zero square of side <= 4 (clipped at the border), the rest untouched
    ones = torch.ones(32, 1, 8, 8)
    cut = Augment(cutout=4)(ones, torch.Generator().manual_seed(0))
    zeros = (cut == 0).sum(dim=(1, 2, 3))
    assert zeros.max() == 16 and zeros.min() >= 4 and set(cut.unique().tolist()) <= {0.0, 1.0}
    assert not Augment().active and aug.active


def test_training_with_augmentation_is_deterministic_and_differs(tiny, ds, base):
    cfg = dataclasses.replace(CFG, augment=True, crop_padding=1, cutout=4)
    a, b = train(tiny, ds, cfg), train(tiny, ds, cfg)
    assert a.ok and _same(a, b) and not _same(a, base)
    c = train(tiny, ds, dataclasses.replace(cfg, seed=1))
    assert not _same(a, c)


# --------------------------------------------------------------------------- resume


def test_resume_from_a_train_state_is_bit_identical(tiny, ds):
    cfg = dataclasses.replace(CFG, epochs=3, augment=True, crop_padding=1)
    full = train(tiny, ds, cfg)
    states = []
    train(tiny, ds, cfg, on_epoch=lambda info: states.append(info.state()) if info.epoch == 1 else None)
    assert len(states) == 1 and states[0].epoch == 1 and states[0].tensors["rng.torch"].dtype == torch.uint8
    resumed = train(tiny, ds, cfg, resume=states[0])
    assert resumed.ok and _same(resumed, full) and resumed.history == full.history


def test_callback_exceptions_propagate(tiny, ds):
    def boom(info):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        train(tiny, ds, dataclasses.replace(CFG, epochs=1), on_epoch=boom)


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_cuda_training_has_the_cpu_result_structure(tiny, ds, base):
    res = train(tiny, ds, dataclasses.replace(CFG, device="cuda"))
    assert res.ok and res.device.startswith("cuda") and set(res.metrics) == set(base.metrics)
    assert _w(res).keys() == _w(base).keys() and abs(res.metrics["val_error"] - base.metrics["val_error"]) < 0.1
    for k, v in _w(res).items():
        assert isinstance(v, np.ndarray) and v.dtype == _w(base)[k].dtype


@pytest.mark.gpu
def test_cuda_deterministic_runs_agree_and_amp_works(tiny, ds):
    cfg = dataclasses.replace(CFG, device="cuda", deterministic=True, augment=True)
    a, b = train(tiny, ds, cfg), train(tiny, ds, cfg)
    assert a.ok and _same(a, b)
    for amp in ("bf16", "fp16"):
        r = train(tiny, ds, dataclasses.replace(CFG, device="cuda", amp=amp, channels_last=True))
        assert r.ok and r.metrics["train_loss"] < 2.3, (amp, r.reason)


def test_a_search_checks_its_training_options_for_its_device(tmp_path):
    """fp16 needs CUDA: a search on the CPU refuses it before anything runs, one on "cuda" does not (the device
    itself is then checked: here, with no GPU, a DeviceError)."""
    from search.config import ConfigError, ExperimentConfig
    from search.run import SearchRun

    cfg = ExperimentConfig(strategy="random", space="chain", budget="2c", train={"epochs": 1, "amp": "fp16"})
    with pytest.raises(ConfigError, match="fp16"):
        SearchRun(cfg, tmp_path / "cpu", device="cpu")
    run = SearchRun(cfg, tmp_path / "cuda", device="cuda")  # prepared: the options fit a CUDA device
    assert run.config.train["amp"] == "fp16"
    if not torch.cuda.is_available():
        from search.experiment import run_search

        with pytest.raises(DeviceError):
            run_search(cfg, tmp_path / "run", device="cuda")
