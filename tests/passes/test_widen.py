"""Tests of passes/widen.py: the pass fired, the structure is right, the numbers match (fx and ONNX)."""

import functools

import numpy as np
import pytest
from hypothesis import given, strategies as st

import archir
import archir.samples as S
from archir.lower import verify_onnx
from passes.check import check_preserved, make_inputs, run_graph
from passes.coupling import analyze
from passes.infra import FunctionNotPreserved, PreconditionError
from passes.widen import widen, widen_noisy, widen_reason, widen_targets
from tests.strategies import graphs


BUILDERS = {"chain": S.chain, "resnet_like": S.resnet_like, "densenet_like": S.densenet_like,
            "mobilenet_like": S.mobilenet_like, "darts_like": functools.partial(S.darts_like, cells=2)}


@functools.lru_cache(maxsize=None)
def sample(name: str) -> archir.Graph:
    return BUILDERS[name]()


def _ort_agrees(g: archir.Graph, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """ONNX Runtime (CPU) on ``to_onnx(g)`` matches the fx lowering on seeded inputs (``verify_onnx``)."""
    verify_onnx(g, inputs=make_inputs(g, n=2, seed=1), atol=atol, rtol=rtol).raise_if_failed()


def _rows_map(old: np.ndarray, new: np.ndarray) -> list[int]:
    """For each row of ``new``, the index of the equal row of ``old`` (rows of random weights are distinct)."""
    flat_old, flat_new = old.reshape(old.shape[0], -1), new.reshape(new.shape[0], -1)
    out = []
    for row in flat_new:
        hits = np.flatnonzero((flat_old == row).all(axis=1))
        assert len(hits) == 1, "every widened row is a copy of exactly one old row"
        out.append(int(hits[0]))
    return out


def _channels(g, n):
    return g.node(n).type.shape[0]


# --------------------------------------------------------------------------- every legal target, both modes

CASES = [(name, t["node"], t["out_channels"], mode) for name in BUILDERS for t in widen_targets(sample(name))
         for mode in ("replicate", "zero")]


def test_every_sample_has_targets():
    counts = {name: sum(1 for c in CASES if c[0] == name) // 2 for name in BUILDERS}
    assert counts == {"chain": 2, "resnet_like": 8, "densenet_like": 5, "mobilenet_like": 11, "darts_like": 17}


@pytest.mark.parametrize("name,node,n,mode", CASES, ids=[f"{c[0]}-{c[1]}-{c[3]}" for c in CASES])
def test_every_legal_target_preserves_function_and_onnx_agrees(name, node, n, mode):
    g = sample(name)
    before = g.weights_hash()
    g2 = widen(g, node=node, out_channels=n, mode=mode, seed=3)
    assert _channels(g2, node) == n and g2.node(node).params["weight"].shape[0] == n  # fired
    for grp_node in analyze(g).group_of(node).producers:  # every tied producer grew
        assert _channels(g2, grp_node) > _channels(g, grp_node)
    assert g.weights_hash() == before  # the input is untouched
    check_preserved(g, g2, atol=1e-5, rtol=1e-4)
    _ort_agrees(g2)


# --------------------------------------------------------------------------- structure


def test_residual_stream_widens_all_producers_with_one_replication_map():
    g = S.resnet_like()
    g2 = widen(g, node="b1.b.conv", out_channels=12, seed=5)
    stream = ["stem", "b1.b", "b2.b"]
    maps = []
    for s in stream:
        assert g2.node(f"{s}.conv").attrs["out_channels"] == 12
        m = _rows_map(g.node(f"{s}.conv").params["weight"], g2.node(f"{s}.conv").params["weight"])
        maps.append(m)
        for k in ("running_mean", "running_var"):
            np.testing.assert_array_equal(g2.node(f"{s}.bn").buffers[k], g.node(f"{s}.bn").buffers[k][m])
        np.testing.assert_array_equal(g2.node(f"{s}.bn").params["weight"], g.node(f"{s}.bn").params["weight"][m])
    assert maps[0] == maps[1] == maps[2]
    m = maps[0]
    assert sorted(set(m)) == list(range(8)) and len(m) == 12
    counts = np.bincount(m)
    for consumer in ("b1.a.conv", "b2.a.conv", "b3.a.conv", "b3.proj.conv"):
        w_old, w_new = g.node(consumer).params["weight"], g2.node(consumer).params["weight"]
        assert w_new.shape[1] == 12
        np.testing.assert_allclose(w_new, w_old[:, m] / counts[m][None, :, None, None], rtol=1e-6)
    # the channels not in the stream keep their width
    assert g2.node("b1.a.conv").attrs["out_channels"] == 8 and g2.node("b3.b.conv").attrs["out_channels"] == 16
    check_preserved(g, g2)


def test_zero_mode_new_filters_random_consumer_columns_zero_bn_identity_safe():
    g = S.resnet_like()
    g2 = widen(g, node="stem.conv", out_channels=11, mode="zero", seed=2)
    for s in ("stem", "b1.b", "b2.b"):
        w_old, w_new = g.node(f"{s}.conv").params["weight"], g2.node(f"{s}.conv").params["weight"]
        np.testing.assert_array_equal(w_new[:8], w_old)
        assert np.abs(w_new[8:]).min() > 0  # fresh random filters
        bn = g2.node(f"{s}.bn")
        np.testing.assert_array_equal(bn.params["weight"][8:], 1.0)
        np.testing.assert_array_equal(bn.params["bias"][8:], 0.0)
        np.testing.assert_array_equal(bn.buffers["running_mean"][8:], 0.0)
        np.testing.assert_array_equal(bn.buffers["running_var"][8:], 1.0)
    for consumer in ("b1.a.conv", "b2.a.conv", "b3.a.conv", "b3.proj.conv"):
        w_old, w_new = g.node(consumer).params["weight"], g2.node(consumer).params["weight"]
        np.testing.assert_array_equal(w_new[:, :8], w_old)
        np.testing.assert_array_equal(w_new[:, 8:], 0.0)
    check_preserved(g, g2)


def test_concat_shifts_offsets_for_consumers():
    g = S.densenet_like()  # stem 8 | d0 4 | d1 4 | d2 4
    g2 = widen(g, node="d0.conv", out_channels=6, seed=0)
    assert _channels(g2, "d1.cat") == 14 and _channels(g2, "d2.cat") == 18 and _channels(g2, "dense.out") == 22
    assert g2.node("d1.bn").params["weight"].shape == (14,)
    m = _rows_map(g.node("d0.conv").params["weight"], g2.node("d0.conv").params["weight"])
    counts = np.bincount(m, minlength=4)
    w_old, w_new = g.node("trans.conv").params["weight"], g2.node("trans.conv").params["weight"]
    assert w_new.shape == (8, 22, 1, 1)
    np.testing.assert_array_equal(w_new[:, :8], w_old[:, :8])  # stem segment: untouched
    np.testing.assert_allclose(w_new[:, 8:14], w_old[:, 8:12][:, m] / counts[m][None, :, None, None], rtol=1e-6)
    np.testing.assert_array_equal(w_new[:, 14:22], w_old[:, 12:20])  # d1, d2 segments: shifted by 2
    d2 = g2.node("d2.bn").buffers["running_mean"]
    np.testing.assert_array_equal(d2[14:], g.node("d2.bn").buffers["running_mean"][12:])
    check_preserved(g, g2)
    _ort_agrees(g2)


def test_depthwise_and_squeeze_excite_follow():
    g = S.mobilenet_like()
    g2 = widen(g, node="ir1.expand.conv", out_channels=24, seed=1)
    dw = g2.node("ir1.dw.conv")
    assert dw.attrs["out_channels"] == dw.attrs["groups"] == 24 and dw.params["weight"].shape == (24, 1, 3, 3)
    m = _rows_map(g.node("ir1.expand.conv").params["weight"], g2.node("ir1.expand.conv").params["weight"])
    assert _rows_map(g.node("ir1.dw.conv").params["weight"], dw.params["weight"]) == m
    assert _rows_map(g.node("ir1.se.fc2").params["weight"], g2.node("ir1.se.fc2").params["weight"]) == m
    assert g2.node("ir1.se.fc1").params["weight"].shape[1] == 24
    assert g2.node("ir1.project.conv").params["weight"].shape[1] == 24
    check_preserved(g, g2)
    # the residual add of ir1 ties stem and ir1.project
    g3 = widen(g, node="stem.conv", out_channels=12, mode="zero")
    assert _channels(g3, "ir1.project.conv") == 12 and g3.node("ir2.expand.conv").params["weight"].shape[1] == 12
    check_preserved(g, g3)


def _flat_net():
    g = archir.Graph("flat")
    x = g.input("x", (2, 3, 3))
    a = g.add("conv2d", x, out_channels=2, kernel_size=3, padding=1, name="a")
    f = g.add("flatten", g.add("relu", a, name="a.relu"), name="flat")
    h = g.add("relu", g.add("linear", f, out_features=4, name="fc"), name="fc.relu")
    g.set_outputs(g.add("linear", h, out_features=2, name="head"))
    return g.init_params(3).validate()


def test_flatten_linear_blocks_rescaled():
    g = _flat_net()
    g2 = widen(g, node="a", out_channels=3, seed=0)
    m = _rows_map(g.node("a").params["weight"], g2.node("a").params["weight"])
    r = next(i for i in set(m) if m.count(i) == 2)
    w_old, w_new = g.node("fc").params["weight"], g2.node("fc").params["weight"]
    assert w_new.shape == (4, 27)
    blocks_old = w_old.reshape(4, 2, 9)
    blocks_new = w_new.reshape(4, 3, 9)
    for j, src in enumerate(m):
        np.testing.assert_allclose(blocks_new[:, j], blocks_old[:, src] / (2 if src == r else 1), rtol=1e-6)
    check_preserved(g, g2)
    g3 = widen(g, node="a", out_channels=5, mode="zero", seed=0)
    np.testing.assert_array_equal(g3.node("fc").params["weight"].reshape(4, 5, 9)[:, 2:], 0.0)
    check_preserved(g, g3)
    _ort_agrees(g3)


def test_widen_linear():
    g = _flat_net()
    g2 = widen(g, node="fc", out_channels=7, seed=4)
    assert g2.node("fc").attrs["out_features"] == 7 and g2.node("head").params["weight"].shape == (2, 7)
    check_preserved(g, g2)


def test_seed_determines_the_result():
    g = S.chain()
    a = widen(g, node="l0.conv", out_channels=12, seed=7)
    b = widen(g, node="l0.conv", out_channels=12, seed=7)
    c = widen(g, node="l0.conv", out_channels=12, seed=8)
    assert a.weights_hash() == b.weights_hash() != c.weights_hash()
    assert a.structural_hash() == c.structural_hash()


def test_replicate_more_than_double_spreads_copies():
    g = S.chain()
    g2 = widen(g, node="l0.conv", out_channels=21, seed=0)  # 8 -> 21: every channel copied once or twice
    m = _rows_map(g.node("l0.conv").params["weight"], g2.node("l0.conv").params["weight"])
    assert sorted(np.bincount(m).tolist()) == [2] * 3 + [3] * 5
    check_preserved(g, g2)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("n", [8, 4])
def test_refuses_shrinking(n):
    with pytest.raises(PreconditionError, match="only grows") as e:
        widen(S.chain(), node="l0.conv", out_channels=n)
    assert e.value.node == "l0.conv" and e.value.pass_name == "widen" and "prune" in str(e.value)


def test_refuses_unknown_node_and_lists_targets():
    with pytest.raises(PreconditionError, match="no node 'nope'") as e:
        widen(S.chain(), node="nope", out_channels=4)
    assert "l0.conv" in str(e.value)


def test_refuses_channels_that_reach_a_graph_output():
    with pytest.raises(PreconditionError, match="graph output 'head'"):
        widen(S.chain(), node="head", out_channels=20)
    g = archir.Graph("t")
    x = g.input("x", (3, 6, 6))
    a = g.add("conv2d", x, out_channels=4, kernel_size=1, name="a")
    g.set_outputs(g.add("relu", g.add("batchnorm2d", a, name="bn"), name="out"))
    g.init_params(0).validate()
    with pytest.raises(PreconditionError, match="graph output 'out'") as e:
        widen(g, node="a", out_channels=8)
    assert e.value.node == "a" and "how to fix" in str(e.value)
    assert widen_targets(g) == []


def test_refuses_channels_tied_to_a_graph_input():
    g = archir.Graph("t")
    x = g.input("x", (3, 6, 6))
    a = g.add("conv2d", x, out_channels=3, kernel_size=1, name="a")
    g.set_outputs(g.add("conv2d", g.add("add", x, a, name="res"), out_channels=2, kernel_size=1, name="head"))
    g.init_params(0).validate()
    with pytest.raises(PreconditionError, match="graph input 'x'"):
        widen(g, node="a", out_channels=6)


@pytest.mark.parametrize("node,pattern", [("l0.bn", "batchnorm2d"), ("l0.relu", "relu"), ("flatten", "flatten")])
def test_refuses_non_conv_linear_targets(node, pattern):
    with pytest.raises(PreconditionError, match=pattern) as e:
        widen(S.chain(), node=node, out_channels=64)
    assert "conv2d or linear" in str(e.value)
    if node.startswith("l0"):
        assert "l0.conv" in e.value.hint  # says which producer to widen instead


def test_refuses_depthwise_and_grouped_convs():
    with pytest.raises(PreconditionError, match="depthwise") as e:
        widen(S.mobilenet_like(), node="ir1.dw.conv", out_channels=32)
    assert "ir1.expand.conv" in e.value.hint
    g = archir.Graph("t")
    x = g.input("x", (4, 6, 6))
    a = g.add("conv2d", x, out_channels=4, kernel_size=1, name="a")
    b = g.add("conv2d", a, out_channels=4, kernel_size=1, groups=2, name="grouped")
    g.set_outputs(g.add("conv2d", b, out_channels=2, kernel_size=1, name="head"))
    g.init_params(0).validate()
    with pytest.raises(PreconditionError, match="grouped conv"):
        widen(g, node="grouped", out_channels=8)
    with pytest.raises(PreconditionError, match="'grouped'.*grouped conv"):  # a's channels meet it
        widen(g, node="a", out_channels=8)


def test_refuses_unknown_coupling_downstream():
    g = archir.Graph("t")
    x = g.input("x", (3, 4, 4))
    a = g.add("conv2d", x, out_channels=4, kernel_size=1, name="a")
    f = g.add("flatten", a, start_dim=2, name="flat2")
    g.set_outputs(g.add("linear", f, out_features=3, name="head"))
    g.init_params(0).validate()
    with pytest.raises(PreconditionError, match=r"'flat2'.*flatten\(start_dim=2\)"):
        widen(g, node="a", out_channels=8)


def test_refuses_bad_arguments():
    g = S.chain()
    with pytest.raises(PreconditionError, match="unknown mode"):
        widen(g, node="l0.conv", out_channels=16, mode="copy")
    with pytest.raises(PreconditionError, match="must be an int"):
        widen(g, node="l0.conv", out_channels=16.0)
    with pytest.raises(PreconditionError, match="widen_noisy"):
        widen(g, node="l0.conv", out_channels=16, noise=0.1)
    with pytest.raises(PreconditionError, match="noise must be"):
        widen_noisy(g, node="l0.conv", out_channels=16, noise=-1.0)


def test_widen_noisy_promises_nothing_and_changes_the_function():
    g = S.chain()
    assert widen.preserves == "function" and widen_noisy.preserves is None
    assert widen_noisy(g, node="l0.conv", out_channels=16, noise=0.0, seed=1).weights_hash() == \
        widen(g, node="l0.conv", out_channels=16, seed=1).weights_hash()
    for mode in ("replicate", "zero"):
        noisy = widen_noisy(g, node="l0.conv", out_channels=16, mode=mode, noise=0.5, seed=1)
        assert noisy.node("l0.conv").attrs["out_channels"] == 16
        with pytest.raises(FunctionNotPreserved):
            check_preserved(g, noisy)


def test_targets_and_reasons():
    assert widen_targets(S.chain()) == [{"node": "l0.conv", "out_channels": 16},
                                        {"node": "l1.conv", "out_channels": 32}]
    mob = [t["node"] for t in widen_targets(S.mobilenet_like())]
    assert "ir1.dw.conv" not in mob and "head" not in mob and "ir1.se.fc2" in mob
    assert widen_reason(S.chain(), "l0.conv") is None
    assert "graph output" in widen_reason(S.chain(), "head")
    assert "only grows" in widen_reason(S.chain(), "l0.conv", 3)


# --------------------------------------------------------------------------- properties


@given(name=st.sampled_from(sorted(BUILDERS)), steps=st.lists(
    st.tuples(st.integers(0, 10_000), st.floats(1.1, 3.0), st.sampled_from(["replicate", "zero"]),
              st.integers(0, 2**31 - 1)), min_size=1, max_size=3))
def test_property_random_widenings_of_sample_nets(name, steps):
    g0 = sample(name)
    g = g0
    for pick, factor, mode, seed in steps:
        targets = widen_targets(g)
        t = targets[pick % len(targets)]
        c = t["out_channels"] // 2
        n = max(c + 1, int(c * factor))
        g = widen(g, node=t["node"], out_channels=n, mode=mode, seed=seed)
        assert _channels(g, t["node"]) == n
        check_preserved(g0, g)


@given(g=graphs(max_nodes=14), data=st.data())
def test_property_random_graphs_widen_or_refuse(g, data):
    """On random valid graphs every conv/linear either widens (function kept) or is refused with a reason."""
    legal = {t["node"] for t in widen_targets(g)}
    for node in [n.id for n in g.nodes() if n.op in ("conv2d", "linear")]:
        c = _channels(g, node)
        n = c + data.draw(st.integers(1, 2 * c), label=f"extra channels for {node}")
        try:
            g2 = widen(g, node=node, out_channels=n, mode=data.draw(st.sampled_from(["replicate", "zero"])))
        except PreconditionError as e:
            assert node not in legal and e.node is not None and e.hint
            continue
        assert node in legal
        check_preserved(g, g2)
