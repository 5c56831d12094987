"""``add_skip``: zero-initialised skip paths by add and by concat, on the sample nets."""

import numpy as np
import pytest

import archir
from archir import samples

import passes
from passes import PreconditionError, add_skip
from passes.skip import skip_targets
from tests.passes import SAMPLE_BUILDERS, assert_morphism, new_nodes, sample


def _spread(targets):
    """Per (dst, mode): the nearest and the farthest src (all pairs would be quadratic)."""
    groups = {}
    for kw in targets:
        groups.setdefault((kw["dst"], kw["mode"]), []).append(kw)
    out = []
    for g in groups.values():
        out += [g[0]] + ([g[-1]] if len(g) > 1 else [])
    return out


@pytest.mark.parametrize("net", list(SAMPLE_BUILDERS))
def test_legal_targets(net):
    g = sample(net)
    targets = skip_targets(g)
    assert targets == passes.legal_targets(g, "add_skip")
    assert {t["mode"] for t in targets} == {"add", "concat"}
    chosen = targets if net == "chain" else _spread(targets)
    for i, kw in enumerate(chosen):
        g2 = add_skip(g, **kw)
        added = new_nodes(g, g2)
        joint = f"{kw['dst']}.skip.{'add' if kw['mode'] == 'add' else 'cat'}"
        assert joint in added and g2.inputs_of(joint)[0] == kw["dst"]
        assert all(u == joint for u, _ in g2.users_of(kw["dst"]))
        if kw["mode"] == "add":
            assert len(added) == 2 and not g2.node(f"{kw['dst']}.skip.proj").params["weight"].any()
        assert_morphism(g, g2, onnx=i % 6 == 0)


def test_add_same_shape():
    g = samples.resnet_like()
    g2 = add_skip(g, src="stem.relu", dst="b2.b.bn", mode="add")
    proj, add = "b2.b.bn.skip.proj", "b2.b.bn.skip.add"
    assert new_nodes(g, g2) == {proj, add}
    assert g2.inputs_of(proj) == ["stem.relu"] and g2.inputs_of(add) == ["b2.b.bn", proj]
    assert g2.inputs_of("b2.add") == [add, "b1.out"]
    a = g2.node(proj).attrs
    assert a["kernel_size"] == 1 and a["stride"] == 1 and a["bias"] is False
    assert g2.node(proj).params["weight"].shape == (8, 8, 1, 1) and not g2.node(proj).params["weight"].any()
    assert_morphism(g, g2)


def test_add_strided_channel_mismatch():
    g = samples.resnet_like()
    assert g.node("stem.relu").type.shape == (8, 16, 16) and g.node("b3.b.bn").type.shape == (16, 8, 8)
    g2 = add_skip(g, src="stem.relu", dst="b3.b.bn")
    p = g2.node("b3.b.bn.skip.proj")
    assert p.attrs["stride"] == 2 and p.params["weight"].shape == (16, 8, 1, 1)
    assert_morphism(g, g2)


def test_add_onto_the_graph_output():
    g = samples.chain()
    g2 = add_skip(g, src="l0.relu", dst="l1.relu")
    assert_morphism(g, g2)
    g1 = g.copy()
    g1.set_outputs("l1.relu")
    g3 = add_skip(g1, src="l0.pool", dst="l1.relu")
    assert g3.outputs == ("l1.relu.skip.add",)
    assert_morphism(g1, g3)


def test_concat_zero_consumer_weights_through_bn_pool_flatten_linear():
    g = samples.chain()
    g2 = add_skip(g, src="l0.pool", dst="l1.conv", mode="concat")
    cat = "l1.conv.skip.cat"
    assert new_nodes(g, g2) == {cat} and g2.inputs_of(cat) == ["l1.conv", "l0.pool"]
    assert g2.node(cat).type.shape == (24, 8, 8)
    bn = g2.node("l1.bn")
    assert bn.params["weight"].shape == (24,) and np.array_equal(bn.params["weight"][:16],
                                                                  g.node("l1.bn").params["weight"])
    assert np.all(bn.buffers["running_var"][16:] == 1) and not bn.buffers["running_mean"][16:].any()
    head = g2.node("head").params["weight"]
    assert head.shape == (10, 24) and not head[:, 16:].any()
    assert np.array_equal(head[:, :16], g.node("head").params["weight"])
    assert_morphism(g, g2)


def test_concat_strided_projection_is_nonzero():
    g = samples.chain()
    g2 = add_skip(g, src="l0.relu", dst="l1.relu", mode="concat", seed=3)
    p = g2.node("l1.relu.skip.proj")
    assert p.attrs["stride"] == 2 and p.params["weight"].any()
    assert g2.node("head").params["weight"].shape == (10, 24)
    assert_morphism(g, g2)
    # the seed decides the projection
    g3 = add_skip(g, src="l0.relu", dst="l1.relu", mode="concat", seed=3)
    assert g3.weights_hash() == g2.weights_hash()


def test_concat_through_concat_consumers_keeps_offsets():
    g = samples.densenet_like()
    g2 = add_skip(g, src="x", dst="stem.conv", mode="concat")
    # stem.conv (8 ch) + x (3 ch): d1.cat = [stem 8 | new 3 | d0 4]
    w = g2.node("d1.conv").params["weight"]
    assert w.shape[1] == 8 + 3 + 4 and not w[:, 8:11].any()
    assert np.array_equal(w[:, :8], g.node("d1.conv").params["weight"][:, :8])
    assert np.array_equal(w[:, 11:], g.node("d1.conv").params["weight"][:, 8:])
    assert_morphism(g, g2)


@pytest.mark.parametrize("net, dst, why", [
    ("resnet_like", "b1.b.bn", "is an add whose other operand 'stem.relu'"),
    ("mobilenet_like", "ir1.expand.relu6", "grouped conv"),
    ("mobilenet_like", "ir1.dw.relu6", "is a mul whose other operand 'ir1.se.gate'"),
])
def test_concat_refuses_consumers_it_cannot_extend(net, dst, why):
    g = sample(net)
    src = g.inputs_of(g.inputs_of(dst)[0])[0] if g.inputs_of(dst) else "x"
    with pytest.raises(PreconditionError, match=why) as ei:
        add_skip(g, src=src, dst=dst, mode="concat")
    assert "pass 'add_skip'" in str(ei.value) and "mode='add'" in str(ei.value)
    assert not any(t["dst"] == dst and t["mode"] == "concat" for t in skip_targets(g))


def test_concat_refuses_reaching_a_graph_output():
    g = samples.chain()
    g1 = g.copy()
    g1.set_outputs("l1.relu")
    with pytest.raises(PreconditionError, match="graph output 'l1.relu'"):
        add_skip(g1, src="l0.pool", dst="l1.bn", mode="concat")
    with pytest.raises(PreconditionError, match="it is a graph output"):
        add_skip(g1, src="l0.pool", dst="l1.relu", mode="concat")


def test_refuses_non_ancestors_and_cycles():
    g = samples.resnet_like()
    with pytest.raises(PreconditionError, match="not an earlier tensor on a path"):
        add_skip(g, src="b2.out", dst="b1.out")  # later -> earlier: a cycle
    with pytest.raises(PreconditionError, match="not an earlier tensor"):
        add_skip(g, src="b1.out", dst="b1.out")
    with pytest.raises(PreconditionError, match="not an earlier tensor"):
        add_skip(g, src="b3.proj.bn", dst="b3.b.bn")  # parallel branches


def test_refuses_non_integer_stride():
    g = archir.Graph("odd")
    x = g.input("x", (3, 16, 16))
    h = g.add("conv2d", x, out_channels=4, kernel_size=3, padding=1, name="c")
    p = g.add("maxpool2d", h, kernel_size=4, stride=2, name="p")  # 16 -> 7: no 1x1 stride gives 7
    g.set_outputs(g.add("relu", p, name="r"))
    g.init_params(0).validate()
    assert g.node("p").type.shape == (4, 7, 7)
    with pytest.raises(PreconditionError, match="integer stride"):
        add_skip(g, src="c", dst="r")
    assert not any(t["src"] == "c" and t["dst"] in ("p", "r") for t in skip_targets(g))


def test_refuses_bad_mode_rank_and_unknown_nodes():
    g = samples.chain()
    with pytest.raises(PreconditionError, match="mode must be one of"):
        add_skip(g, src="l0.relu", dst="l1.relu", mode="mul")
    with pytest.raises(PreconditionError, match=r"\(C, H, W\)"):
        add_skip(g, src="l0.relu", dst="flatten")
    with pytest.raises(PreconditionError, match="no node 'l7.relu' .* as src") as ei:
        add_skip(g, src="l7.relu", dst="l1.relu")
    assert "legal src targets include 'x'" in str(ei.value)


def test_concat_extends_through_adaptive_pooling_like_widen_and_pruning():
    # the drift issue 13 names: add_skip(mode="concat") kept its own list of channel-wise ops, without
    # adaptive_avgpool2d; it now walks the consumers with passes.coupling's rules, as widen and pruning do
    g = archir.Graph("adaptive")
    x = g.input("x", (3, 8, 8))
    c = g.add("conv2d", x, name="c0", out_channels=6, kernel_size=3, padding=1)
    r = g.add("relu", c, name="r0")
    p = g.add("adaptive_avgpool2d", r, name="pool", output_size=3)
    f = g.add("flatten", p, name="flat")
    g.set_outputs(g.add("linear", f, name="head", out_features=5))
    g.init_params(seed=0)
    assert {"src": "c0", "dst": "r0", "mode": "concat"} in skip_targets(g)
    g2 = add_skip(g, src="c0", dst="r0", mode="concat")
    w = g2.node("head").params["weight"]
    assert w.shape == (5, (6 + 6) * 9) and not w[:, 6 * 9:].any()
    assert_morphism(g, g2)
    # and the widen of the same conv agrees about what is coupled
    g3 = passes.widen(g, "c0", 9)
    assert g3.node("head").params["weight"].shape == (5, 9 * 9)
