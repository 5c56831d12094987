"""The morphism registry, ``legal_targets`` and ``random_morphism``."""

import numpy as np
import pytest
from hypothesis import given, note, settings, strategies as st

from archir import samples

import passes
from passes import MORPHISMS, PreconditionError, legal_targets, random_morphism, register_morphism
from passes.targets import morphism_names
from tests.passes import ATOL, RTOL, assert_morphism
from tests.strategies import graphs


def test_registry_has_the_morphisms():
    assert {"deepen", "insert_bn", "enlarge_kernel", "add_skip", "widen"} <= set(MORPHISMS)
    for name, (fn, tf) in MORPHISMS.items():
        assert fn.preserves == "function" and callable(tf), name


def test_legal_targets_by_name_or_function():
    g = samples.chain()
    assert legal_targets(g, "enlarge_kernel") == [{"node": "l0.conv", "kernel_size": 5},
                                                  {"node": "l1.conv", "kernel_size": 5}]
    assert legal_targets(g, passes.enlarge_kernel) == legal_targets(g, "enlarge_kernel")
    acts = {t["after"]: t["activation"] for t in legal_targets(g, "deepen")}
    assert acts["l0.relu"] == "relu" and acts["l0.pool"] == "relu" and acts["l0.bn"] is None and acts["x"] is None


def test_unknown_morphism():
    with pytest.raises(PreconditionError, match="unknown morphism 'grow'") as ei:
        legal_targets(samples.chain(), "grow")
    assert "deepen" in str(ei.value)
    with pytest.raises(PreconditionError, match="not a registered morphism"):
        legal_targets(samples.chain(), print)


def test_register_morphism():
    @passes.graph_pass(preserves="function")
    def noop(g, seed=0):
        return g.copy()

    def targets(g):
        return [{}]

    try:
        register_morphism("noop", noop, targets)
        register_morphism("noop", noop, targets)  # same entry again: fine
        with pytest.raises(ValueError, match="already registered"):
            register_morphism("noop", noop, lambda g: [])
        assert legal_targets(samples.chain(), "noop") == [{}]
        g2, desc = random_morphism(samples.chain(), 0, morphisms=["noop"])
        assert desc.startswith("noop(seed=")
        with pytest.raises(ValueError, match="callable"):
            register_morphism("bad", noop, None)
    finally:
        MORPHISMS.pop("noop", None)
    assert "noop" not in morphism_names()


def test_random_morphism_is_seeded_and_preserving():
    g = samples.resnet_like()
    a, da = random_morphism(g, np.random.default_rng(5))
    b, db = random_morphism(g, 5)
    assert da == db and a.structural_hash() == b.structural_hash() and a.weights_hash() == b.weights_hash()
    name = da.split("(")[0]
    assert name in MORPHISMS
    assert_morphism(g, a)
    seen = {random_morphism(g, s)[1].split("(")[0] for s in range(40)}
    assert seen == {"deepen", "insert_bn", "enlarge_kernel", "add_skip", "widen"}  # morphism first, then target


def test_random_morphism_restricted_and_no_targets():
    g = samples.chain()
    _, desc = random_morphism(g, 1, morphisms=["enlarge_kernel"])
    assert desc.startswith("enlarge_kernel(node=")
    g2 = passes.enlarge_kernel(passes.enlarge_kernel(g, "l0.conv", 5), "l0.conv", 7)
    g2 = passes.enlarge_kernel(passes.enlarge_kernel(g2, "l1.conv", 5), "l1.conv", 7)
    assert legal_targets(g2, "enlarge_kernel") == []
    with pytest.raises(PreconditionError, match="no morphism among \\['enlarge_kernel'\\] has a legal target"):
        random_morphism(g2, 0, morphisms=["enlarge_kernel"])


def test_random_morphism_reports_refused_moves():
    @passes.graph_pass(preserves="function")
    def always_refuses(g):
        raise PreconditionError("never")

    MORPHISMS["refuser"] = (always_refuses, lambda g: [{}])
    try:
        with pytest.raises(PreconditionError, match="3 random moves were all refused") as ei:
            random_morphism(samples.chain(), 0, morphisms=["refuser"], max_tries=3)
        assert "refuser(): pass 'always_refuses': never" in str(ei.value)
    finally:
        MORPHISMS.pop("refuser")


# --------------------------------------------------------------------------- widen's drawn width


def test_random_widen_draws_its_width_and_keeps_the_function():
    g = samples.resnet_like()
    widths = {}
    for s in range(30):
        g2, desc = random_morphism(g, s, morphisms=["widen"])
        node = desc.split("node=")[1].split("'")[1]
        c = g.node(node).attrs["out_channels" if g.node(node).op == "conv2d" else "out_features"]
        n = g2.node(node).attrs["out_channels" if g2.node(node).op == "conv2d" else "out_features"]
        assert c < n <= 2 * c, desc  # at most a doubling, as widen_targets lists
        assert f"out_channels={n}" in desc
        widths.setdefault(c, set()).add(n)
        if s < 6:
            passes.check_preserved(g, g2)
    assert max(len(v) for v in widths.values()) >= 4, widths  # the width is drawn, not always 2c


def test_widen_draw_range():
    from passes.widen import widen_draw

    g = samples.chain()  # l0.conv has 8 channels
    rng = np.random.default_rng(0)
    seen = {widen_draw(g, {"node": "l0.conv", "out_channels": 16}, rng)["out_channels"] for _ in range(200)}
    assert seen == set(range(9, 17))
    seen = {widen_draw(g, {"node": "l0.conv", "out_channels": 16}, rng, max_ratio=1.1)["out_channels"]
            for _ in range(20)}
    assert seen == {9}  # floor(8 * 1.1) = 8: still one channel more
    with pytest.raises(ValueError, match="max_ratio"):
        widen_draw(g, {"node": "l0.conv"}, rng, max_ratio=1)
    # the explicit API takes the width it is given
    assert passes.widen(g, "l0.conv", 16).node("l0.conv").attrs["out_channels"] == 16


def test_legal_targets_of_widen_still_double():
    assert legal_targets(samples.chain(), "widen") == [{"node": "l0.conv", "out_channels": 16},
                                                      {"node": "l1.conv", "out_channels": 32}]


def test_register_morphism_with_a_draw():
    @passes.graph_pass(preserves="function")
    def noop(g, k=0, seed=0):
        return g.copy()

    def draw(g, target, rng):
        return {**target, "k": int(rng.integers(100, 200))}

    try:
        register_morphism("noop", noop, lambda g: [{"k": 1}], draw=draw)
        assert legal_targets(samples.chain(), "noop") == [{"k": 1}]
        _, desc = random_morphism(samples.chain(), 0, morphisms=["noop"])
        assert desc.startswith("noop(k=1") and int(desc.split("k=")[1].split(",")[0]) >= 100
        with pytest.raises(ValueError, match="already registered"):
            register_morphism("noop", noop, MORPHISMS["noop"][1])  # same fn/targets, no draw: a change
        with pytest.raises(ValueError, match="callable"):
            register_morphism("noop2", noop, lambda g: [], draw=3)
    finally:
        MORPHISMS.pop("noop", None)
        passes.targets._DRAWS.pop("noop", None)


# --------------------------------------------------------------------------- bounds


def _macs(g):
    import costmodels  # tests may import everything; passes itself never imports costmodels

    return costmodels.count(g).macs


def test_a_bound_never_reached_does_not_change_the_move():
    g = samples.resnet_like()
    for s in range(6):
        ops = ["deepen", "add_skip", "enlarge_kernel", "insert_bn"]
        a, da = random_morphism(g, s, morphisms=ops)
        b, db = random_morphism(g, s, morphisms=ops, max_params=10 ** 9, max_macs=10 ** 12, macs_fn=_macs)
        assert da == db and a.weights_hash() == b.weights_hash()


def test_params_bound_refuses_every_move_with_the_reason():
    g = samples.chain()
    with pytest.raises(PreconditionError) as ei:
        random_morphism(g, 0, max_params=g.num_params())
    msg = str(ei.value)
    assert f"past the bound max_params={g.num_params():,}" in msg and f"params {g.num_params():,}" in msg
    assert "deepen(" in msg and "params > max_params=" in msg  # each refused move with its size
    assert "how to fix" in msg and "--space-opt max_params=N" in msg


def test_macs_bound_needs_a_counter_and_refuses():
    g = samples.chain()
    with pytest.raises(ValueError, match="max_macs needs macs_fn"):
        random_morphism(g, 0, max_macs=10 ** 9)
    with pytest.raises(PreconditionError, match="past the bound max_macs=") as ei:
        random_morphism(g, 0, morphisms=["deepen", "enlarge_kernel", "widen"], max_macs=_macs(g), macs_fn=_macs)
    assert "macs > max_macs=" in str(ei.value)
    for bad in (0, -5, float("nan"), True, "100"):
        with pytest.raises(ValueError, match="positive number"):
            random_morphism(g, 0, max_params=bad)


def test_a_morphism_that_cannot_fit_gives_way():
    # deepen adds a conv (C*C*9 weights), far past this bound; insert_bn adds 2 per channel and fits
    g = samples.chain()
    bound = g.num_params() + 40
    names = set()
    for s in range(25):
        g2, desc = random_morphism(g, s, morphisms=["deepen", "insert_bn"], max_params=bound)
        assert g2.num_params() <= bound, desc
        names.add(desc.split("(")[0])
    assert names == {"insert_bn"}


def test_widen_under_a_bound_takes_a_width_that_fits():
    # l0.conv may grow by 1-3 channels, l1.conv by 1-7: the drawn widths past that are refused, others fit
    g = samples.chain()
    bound = g.num_params() + 600
    fits, widths = 0, set()
    for s in range(25):
        try:
            g2, desc = random_morphism(g, s, morphisms=["widen"], max_params=bound)
        except PreconditionError as e:
            assert "past the bound max_params=" in str(e) and "widen(node=" in str(e)
            continue
        assert g2.num_params() <= bound, desc
        fits += 1
        widths.add(desc.split("out_channels=")[1].split(",")[0])
    assert fits >= 15 and len(widths) >= 3, (fits, widths)


@settings(max_examples=max(5, settings().max_examples // 2), deadline=None)
@given(g=graphs(max_nodes=10), seed=st.integers(0, 2 ** 32 - 1), slack=st.integers(0, 3000),
       mac_slack=st.integers(0, 30000), steps=st.integers(1, 6))
def test_bounds_hold_over_many_draws(g, seed, slack, mac_slack, steps):
    max_params, max_macs = g.num_params() + slack, _macs(g) + mac_slack
    rng = np.random.default_rng(seed)
    prev = g
    for _ in range(steps):
        try:
            g2, desc = random_morphism(prev, rng, max_params=max_params, max_macs=max_macs, macs_fn=_macs)
        except PreconditionError as e:  # nothing legal, or nothing small enough: said so
            assert "has a legal target" in str(e) or "past the bound" in str(e), str(e)
            break
        note(desc)
        assert g2.num_params() <= max_params and _macs(g2) <= max_macs, desc
        passes.check_preserved(prev, g2, atol=ATOL, rtol=RTOL)
        prev = g2
