"""search.train: learning on digits, determinism, failures recorded (never raised), LR schedules."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import archir
from search.data import load_dataset
from search.spaces import ChainSpace, DartsSpace
from search.train import TrainConfig, TrainResult, evaluate, learning_rate, train

TINY = {"layers": [{"kernel": 3, "expand": 3, "width": 16, "skip": False}, {"skip": True},
                   {"kernel": 3, "expand": 3, "width": 32, "skip": False}, {"skip": True}]}
FAST = TrainConfig(epochs=2, lr=0.2, seed=0)  # 17 steps an epoch on digits: a high rate learns in 2 epochs


@pytest.fixture(scope="module")
def ds():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def tiny(ds) -> archir.Graph:
    return ChainSpace(ds.input_shape, ds.num_classes).build(TINY, seed=0)


@pytest.fixture(scope="module")
def trained(ds, tiny) -> TrainResult:
    return train(tiny, ds, FAST)


# --------------------------------------------------------------------------- learning


def test_loss_decreases_and_metrics_are_sane(trained, tiny, ds):
    res = trained
    assert res.status == "ok" and res.ok and res.reason is None and res.epochs == 2
    losses = [h["train_loss"] for h in res.history]
    assert len(losses) == 2 and losses[1] < losses[0] < math.log(10) + 0.5
    m = res.metrics
    assert set(m) >= {"train_loss", "val_error", "val_acc", "test_error", "test_acc"}
    for k in ("val_error", "val_acc", "test_error", "test_acc"):
        assert 0.0 <= m[k] <= 1.0 and isinstance(m[k], float)
    assert m["val_acc"] == pytest.approx(1 - m["val_error"]) and m["test_acc"] == pytest.approx(1 - m["test_error"])
    assert m["val_error"] < 0.5 and m["test_error"] < 0.5  # far better than chance (0.9) after 2 epochs
    assert m["train_loss"] == losses[-1]
    assert res.seconds > 0


def test_trained_weights_are_synced_back(trained, tiny, ds):
    g = trained.graph
    assert isinstance(g, archir.Graph) and g.structural_hash() == tiny.structural_hash()
    assert g.weights_hash() != tiny.weights_hash()
    assert tiny.weights_hash() == ChainSpace(ds.input_shape, ds.num_classes).build(TINY, seed=0).weights_hash()
    err, loss = evaluate(g, ds.x_test, ds.y_test)
    assert err == pytest.approx(trained.metrics["test_error"]) and loss == pytest.approx(trained.metrics["test_loss"],
                                                                                       rel=1e-5)
    err0, loss0 = evaluate(tiny, ds.x_test, ds.y_test, batch_size=100)
    assert err0 > err and loss0 > loss
    # BN running stats came back too (training moved them off 0/1)
    assert not np.allclose(g.node("stem.bn").buffers["running_mean"], 0)


def test_same_seed_same_weights_other_seed_other_weights(trained, tiny, ds):
    again = train(tiny, ds, FAST)
    assert again.graph.weights_hash() == trained.graph.weights_hash()
    assert again.metrics == trained.metrics
    other = train(tiny, ds, dataclasses.replace(FAST, seed=1))
    assert other.graph.weights_hash() != trained.graph.weights_hash()


def test_darts_candidate_trains(ds):
    space = DartsSpace(ds.input_shape, ds.num_classes, cells=2, channels=4)
    g = space.build(space.sample(np.random.default_rng(0)), seed=0)
    res = train(g, ds, TrainConfig(epochs=1, schedule="sgdr"))
    assert res.status == "ok" and res.metrics["val_error"] < 0.9


def test_threads_and_torch_rng_are_restored(tiny, ds, monkeypatch):
    import search.train as T

    seen = []
    real = T.to_fx
    monkeypatch.setattr(T, "to_fx", lambda g, *a, **k: (seen.append(torch.get_num_threads()), real(g, *a, **k))[1])
    before = torch.get_num_threads()
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    small = dataclasses.replace(ds, x_train=ds.x_train[:64], y_train=ds.y_train[:64], x_val=ds.x_val[:32],
                                y_val=ds.y_val[:32], x_test=ds.x_test[:32], y_test=ds.y_test[:32])
    res = train(tiny, small, TrainConfig(epochs=1, threads=2))
    assert res.ok and seen == [2]
    assert torch.get_num_threads() == before
    torch.testing.assert_close(torch.rand(3), want)  # the caller's RNG stream is untouched


# --------------------------------------------------------------------------- failures


def _exploding(ds) -> archir.Graph:
    g = ChainSpace(ds.input_shape, ds.num_classes).build(TINY, seed=0)
    w = g.node("head").params["weight"]
    g.set_params("head", weight=np.full(w.shape, 3e38, dtype=np.float32))  # finite, but logits overflow
    return g.validate()


def test_nan_loss_is_recorded_as_failed(ds):
    res = train(_exploding(ds), ds, TrainConfig(epochs=2))
    assert res.status == "failed" and not res.ok and res.graph is None and res.metrics == {}
    assert res.reason.startswith("loss became nan in epoch 1, step 1") and "\n" not in res.reason
    assert res.epochs == 1


def test_exception_in_the_candidate_is_recorded_as_failed(tiny, ds, monkeypatch):
    import search.train as T

    calls = {"n": 0}
    real = T.F.cross_entropy

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 20:  # step 20 of epoch 2 (17 steps per epoch)
            raise RuntimeError("boom\nsecond line")
        return real(*a, **k)

    monkeypatch.setattr(T.F, "cross_entropy", flaky)
    before = torch.get_num_threads()
    res = train(tiny, ds, TrainConfig(epochs=3, threads=1))
    assert res.status == "failed" and res.reason == "epoch 2: RuntimeError: boom" and res.epochs == 2
    assert res.graph is None and len(res.history) == 1
    assert torch.get_num_threads() == before


def test_unlowerable_or_mismatched_graphs_fail_with_a_reason(ds):
    sup = DartsSpace(ds.input_shape, ds.num_classes, cells=1, channels=2).supernet()
    res = train(sup, ds, TrainConfig(epochs=1))
    assert res.status == "failed" and "LoweringError" in res.reason and "choice" in res.reason
    assert res.epochs == 0
    rgb = ChainSpace((3, 8, 8), 10).build(TINY)
    res = train(rgb, ds, TrainConfig(epochs=1))
    assert res.status == "failed" and "takes (3, 8, 8) but the data is (1, 8, 8)" in res.reason


def test_keyboard_interrupt_is_not_swallowed(tiny, ds, monkeypatch):
    import search.train as T

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "sync_back", stop)
    with pytest.raises(KeyboardInterrupt):
        train(tiny, ds, TrainConfig(epochs=1))


# --------------------------------------------------------------------------- config and schedules


def test_cosine_schedule_values():
    cfg = TrainConfig(epochs=4, lr=0.1, lr_min=0.01)
    assert learning_rate(cfg, 0) == pytest.approx(0.1)
    assert learning_rate(cfg, 2) == pytest.approx(0.055)
    assert learning_rate(cfg, 1) == pytest.approx(0.01 + 0.09 * (1 + math.cos(math.pi / 4)) / 2)
    assert learning_rate(cfg, 4) == pytest.approx(0.01)
    assert learning_rate(TrainConfig(schedule="constant", lr=0.3), 2.5) == 0.3


def test_sgdr_schedule_values():
    cfg = TrainConfig(epochs=7, lr=0.1, schedule="sgdr", sgdr_t0=1, sgdr_mult=2)
    # periods [0, 1), [1, 3), [3, 7): each restarts at lr and anneals to 0
    want = {0: 0.1, 0.5: 0.05, 0.999: 0.0, 1: 0.1, 2: 0.05, 3: 0.1, 4: 0.1 * (1 + math.cos(math.pi / 4)) / 2,
            5: 0.05, 6: 0.1 * (1 + math.cos(3 * math.pi / 4)) / 2, 7: 0.1}
    for t, lr in want.items():
        assert learning_rate(cfg, t) == pytest.approx(lr, abs=1e-4), t
    flat = TrainConfig(epochs=4, lr=0.2, schedule="sgdr", sgdr_t0=2, sgdr_mult=1)
    assert [learning_rate(flat, t) for t in (0, 1, 2, 3)] == pytest.approx([0.2, 0.1, 0.2, 0.1])


def test_history_records_the_schedule(ds, tiny):
    res = train(tiny, ds, TrainConfig(epochs=2, lr=0.05, schedule="sgdr", sgdr_t0=1, sgdr_mult=1))
    assert [h["lr"] for h in res.history] == pytest.approx([0.05, 0.05])  # restarted at each epoch end
    res = train(tiny, ds, TrainConfig(epochs=2, lr=0.05))
    assert [h["lr"] for h in res.history] == pytest.approx([0.025, 0.0])


@pytest.mark.parametrize("kw,field", [
    (dict(epochs=0), "epochs"), (dict(epochs=1.5), "epochs"), (dict(batch_size=0), "batch_size"),
    (dict(lr=0), "lr"), (dict(lr=float("nan")), "lr"), (dict(momentum=1.0), "momentum"),
    (dict(weight_decay=-1), "weight_decay"), (dict(schedule="step"), "schedule"), (dict(sgdr_t0=0), "sgdr_t0"),
    (dict(threads=0), "threads"), (dict(seed="0"), "seed"), (dict(lr_min=1.0), "lr_min"),
    (dict(grad_clip=0), "grad_clip"), (dict(epochs=True), "epochs"),
])
def test_config_refuses_bad_values(kw, field):
    with pytest.raises(ValueError, match=f"TrainConfig.{field} ="):
        TrainConfig(**kw)


def test_config_to_dict_and_bad_arguments(tiny, ds):
    assert TrainConfig(epochs=2).to_dict()["epochs"] == 2
    with pytest.raises(TypeError, match="TrainConfig"):
        train(tiny, ds, {"epochs": 1})
    with pytest.raises(ValueError, match="evaluate needs"):
        evaluate(tiny, ds.x_test[:0], ds.y_test[:0])
    with pytest.raises(ValueError, match="takes"):
        evaluate(tiny, np.zeros((2, 3, 8, 8), np.float32), np.zeros(2, np.int64))
