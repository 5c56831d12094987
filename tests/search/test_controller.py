"""search.controller: seeded sampling, valid choices, REINFORCE on a toy reward, the baseline, state round trips."""

from __future__ import annotations

import math

import pytest
import torch

from search.controller import Controller, ControllerError
from search.spaces import get_space


def _space(name: str):
    opts = {"layers": 3} if name == "chain" else {}
    return get_space(name, input_shape=(1, 8, 8), num_classes=10, **opts)


def _same_state(a: Controller, b: Controller) -> bool:
    (ma, ta), (mb, tb) = a.state(), b.state()
    return ma == mb and set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.mark.parametrize("name", ["chain", "darts"])
def test_seeded_sampling_gives_valid_choices(name):
    space = _space(name)
    a, b, c = (Controller(space.variables(), seed=s) for s in (3, 3, 4))
    with torch.no_grad():
        sa = [a.sample() for _ in range(6)]
        sb = [b.sample() for _ in range(6)]
        sc = [c.sample() for _ in range(6)]
    assert [s.choices for s in sa] == [s.choices for s in sb]
    assert [s.choices for s in sa] != [s.choices for s in sc]
    for s in sa:
        assert len(s.choices) == len(space.variables())
        assert all(0 <= v < n for v, (_, n) in zip(s.choices, space.variables()))
        d = space.from_choices(s.choices)  # every sample is a point of the space
        assert space.decode(d) == d
        assert s.log_prob.item() < 0 and s.entropy.item() > 0
        lp, ent = a.log_prob(s.choices)  # teacher forcing scores the same path the same way
        assert lp.item() == pytest.approx(s.log_prob.item(), abs=1e-5)
        assert ent.item() == pytest.approx(s.entropy.item(), abs=1e-5)
    # an untrained controller is near uniform: the entropy is close to the sum of log(n)
    top = sum(math.log(n) for _, n in space.variables())
    assert 0.9 * top < sa[0].entropy.item() <= top + 1e-4


def test_samples_do_not_depend_on_torch_threads():
    space = _space("chain")
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = Controller(space.variables(), seed=1)
        ca = [a.sample().choices for _ in range(4)]
        a.update(ca, [0.1, 0.5, 0.2, 0.9])
        torch.set_num_threads(1)
        b = Controller(space.variables(), seed=1)
        cb = [b.sample().choices for _ in range(4)]
        b.update(cb, [0.1, 0.5, 0.2, 0.9])
    finally:
        torch.set_num_threads(old)
    assert ca == cb and _same_state(a, b)
    assert torch.get_num_threads() == old


def test_reinforce_raises_the_probability_of_a_rewarded_choice():
    ctl = Controller([("a", 4), ("b", 3)], seed=0, lr=0.05, tanh_constant=None, entropy_weight=0.0)
    p0 = ctl.probabilities()[0][2]
    assert p0 == pytest.approx(0.25, abs=0.05)
    for _ in range(40):
        with torch.no_grad():
            batch = [ctl.sample().choices for _ in range(4)]
        ctl.update(batch, [1.0 if ch[0] == 2 else 0.0 for ch in batch])
    p = ctl.probabilities()[0]
    assert p[2] > 0.8 and p[2] == max(p)
    assert ctl.most_likely()[0] == 2
    assert ctl.updates == 40


def test_entropy_bonus_keeps_the_distribution_flatter():
    def train(weight: float) -> float:
        ctl = Controller([("a", 4)], seed=0, lr=0.05, tanh_constant=None, entropy_weight=weight)
        for _ in range(25):
            with torch.no_grad():
                batch = [ctl.sample().choices for _ in range(4)]
            ctl.update(batch, [1.0 if ch[0] == 0 else 0.0 for ch in batch])
        return ctl.log_prob([0])[1].item()

    assert train(0.5) > train(0.0) + 0.1


def test_moving_average_baseline():
    ctl = Controller([("a", 2)], seed=0, baseline_decay=0.5)
    s = ctl.update([[0], [1]], [1.0, 3.0])  # starts at the first batch's mean, 2.0
    assert s["advantage"] == pytest.approx(0.0) and s["reward"] == pytest.approx(2.0)
    assert ctl.baseline == pytest.approx(0.5 * (0.5 * 2.0 + 0.5 * 1.0) + 0.5 * 3.0)
    b = ctl.baseline
    s = ctl.update([[1]], [5.0])
    assert s["advantage"] == pytest.approx(5.0 - b) and ctl.baseline == pytest.approx(0.5 * b + 2.5)


def test_state_round_trip_through_a_file(tmp_path):
    space = _space("darts")
    a = Controller(space.variables(), seed=7, hidden=16)
    with torch.no_grad():
        batch = [a.sample().choices for _ in range(3)]
    a.update(batch, [0.2, 0.4, 0.9])
    path = a.save(tmp_path / "ctl.safetensors")
    b = Controller.load(path)
    assert _same_state(a, b) and b.options["hidden"] == 16 and b.baseline == a.baseline
    # the same future: the same draws and a bit-identical update
    with torch.no_grad():
        na = [a.sample().choices for _ in range(3)]
        nb = [b.sample().choices for _ in range(3)]
    assert na == nb
    a.update(na, [0.1, 0.2, 0.3])
    b.update(nb, [0.1, 0.2, 0.3])
    assert _same_state(a, b)
    # the file is safetensors (JSON header), not a pickle
    raw = path.read_bytes()
    assert raw[8:9] == b"{" and b"archir.controller" in raw[:int.from_bytes(raw[:8], "little") + 8]


def test_state_errors(tmp_path):
    a = Controller([("a", 2), ("b", 3)], seed=0)
    meta, tensors = a.state()
    with pytest.raises(ControllerError, match="variables differ"):
        Controller([("a", 2), ("b", 4)], seed=0).load_state(meta, tensors)
    with pytest.raises(ControllerError, match="options"):
        Controller([("a", 2), ("b", 3)], seed=0, hidden=8).load_state(meta, tensors)
    with pytest.raises(ControllerError, match="not a controller state"):
        a.load_state({**meta, "format": "x"}, tensors)
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00junk")
    with pytest.raises(ControllerError, match="bad.safetensors: not a readable"):
        Controller.load(tmp_path / "bad.safetensors")
    with pytest.raises(ControllerError, match="no such file"):
        Controller.load(tmp_path / "none.safetensors")


def test_bad_inputs_are_refused():
    ctl = Controller([("a", 2), ("b", 3)], seed=0)
    with pytest.raises(ControllerError, match="out of range 0..2"):
        ctl.log_prob([0, 3])
    with pytest.raises(ControllerError, match="expected 2 choices"):
        ctl.update([[0]], [1.0])
    with pytest.raises(ControllerError, match="finite"):
        ctl.update([[0, 1]], [math.nan])
    with pytest.raises(ControllerError, match="one reward per sample"):
        ctl.update([[0, 1]], [1.0, 2.0])
    with pytest.raises(ControllerError, match="unknown controller option"):
        Controller([("a", 2)], seed=0, hiden=3)
    with pytest.raises(ControllerError, match="baseline_decay"):
        Controller([("a", 2)], seed=0, baseline_decay=1.0)
    with pytest.raises(ControllerError, match="no variables"):
        Controller([], seed=0)
