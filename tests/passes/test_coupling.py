"""Tests of passes/coupling.py: exact layouts, groups, pins and edits on hand-built tiny graphs."""

import pytest

import archir
import archir.samples as S
from passes.coupling import ChannelRef, analyze, dependency_groups
from passes.infra import PreconditionError


def _finish(g, *outs):
    g.set_outputs(*outs)
    g.init_params(0)
    return g.validate()


def _free(cp):
    return {grp.producers: grp for grp in cp.groups() if grp.free}


def _group(cp, producers):
    return next(grp for grp in cp.groups() if set(grp.producers) == set(producers))


# --------------------------------------------------------------------------- plain chain


def test_chain_groups_carriers_consumers_and_pins():
    g = archir.Graph("t")
    x = g.input("x", (3, 6, 6))
    a = g.add("conv2d", x, out_channels=4, kernel_size=3, padding=1, name="a")
    h = g.add("relu", g.add("batchnorm2d", a, name="a.bn"), name="a.relu")
    b = g.add("conv2d", h, out_channels=6, kernel_size=1, name="b")
    f = g.add("flatten", g.add("global_avgpool", b, name="gap"), name="flat")
    y = g.add("linear", f, out_features=3, name="head")
    _finish(g, y)
    cp = analyze(g)
    groups = cp.groups()
    assert [grp.producers for grp in groups] == [("x",), ("a",), ("b",), ("head",)]
    assert [grp.size for grp in groups] == [3, 4, 6, 3]
    ga, gb = groups[1], groups[2]
    assert ga.free and gb.free
    assert ga.carriers == ("a.bn", "a.relu") and ga.consumers == ("b",)
    assert gb.carriers == ("gap", "flat") and gb.consumers == ("head",)
    assert [p.kind for p in groups[0].pins] == ["input"] and [p.kind for p in groups[3].pins] == ["output"]
    assert groups[0].consumers == ("a",)
    # after global_avgpool the flattened channels have width 1
    assert [w for _, w in cp.layout("flat")] == [1] * 6
    assert cp.layout("flat") == cp.layout("b")
    assert cp.rule("a").kind == "source" and cp.rule("a.bn").kind == "carrier"
    # every slice of channel 2 of "a"
    refs = set(ga.channel_refs(2))
    assert refs == {
        ChannelRef("a", "output", 0, 2, 3), ChannelRef("a", "weight", 0, 2, 3, "params"),
        ChannelRef("a", "bias", 0, 2, 3, "params"),
        ChannelRef("a.bn", "output", 0, 2, 3), ChannelRef("a.bn", "weight", 0, 2, 3, "params"),
        ChannelRef("a.bn", "bias", 0, 2, 3, "params"), ChannelRef("a.bn", "running_mean", 0, 2, 3, "buffers"),
        ChannelRef("a.bn", "running_var", 0, 2, 3, "buffers"), ChannelRef("a.relu", "output", 0, 2, 3),
        ChannelRef("b", "weight", 1, 2, 3, "params"),
    }


def test_flatten_without_pool_maps_each_channel_to_hw_columns():
    g = archir.Graph("t")
    x = g.input("x", (2, 3, 4))
    a = g.add("conv2d", x, out_channels=3, kernel_size=1, name="a")
    f = g.add("flatten", a, name="flat")
    h = g.add("linear", f, out_features=5, name="fc")
    _finish(g, g.add("linear", h, out_features=2, name="head"))
    cp = analyze(g)
    assert [w for _, w in cp.layout("flat")] == [12, 12, 12]
    ga = _group(cp, ["a"])
    assert ChannelRef("fc", "weight", 1, 12, 24, "params") in ga.channel_refs(1)
    gfc = _group(cp, ["fc"])
    assert gfc.free and gfc.consumers == ("head",) and gfc.size == 5


# --------------------------------------------------------------------------- ties


def test_residual_add_ties_producers():
    g = archir.Graph("t")
    x = g.input("x", (3, 6, 6))
    s = g.add("conv2d", x, out_channels=4, kernel_size=3, padding=1, name="stem")
    h = g.add("relu", s, name="stem.relu")
    a = g.add("conv2d", h, out_channels=4, kernel_size=3, padding=1, name="a")
    b = g.add("batchnorm2d", g.add("conv2d", a, out_channels=4, kernel_size=3, padding=1, name="b"), name="b.bn")
    r = g.add("relu", g.add("add", b, h, name="add"), name="out")
    _finish(g, g.add("conv2d", r, out_channels=2, kernel_size=1, name="head"))
    cp = analyze(g)
    free = _free(cp)
    assert set(free) == {("stem", "b"), ("a",)}
    res = free[("stem", "b")]
    assert res.size == 4
    assert res.carriers == ("stem.relu", "b.bn", "add", "out")
    assert res.consumers == ("a", "head")
    # channel i of stem is channel i of b: one class per index
    assert cp.layout("stem") == cp.layout("b") == cp.layout("add")
    assert free[("a",)].consumers == ("b",)


def test_squeeze_excite_mul_ties_gate_and_depthwise_passes_through():
    g = archir.Graph("t")
    x = g.input("x", (3, 6, 6))
    e = g.add("conv2d", x, out_channels=6, kernel_size=1, name="expand")
    dw = g.add("conv2d", e, out_channels=6, kernel_size=3, padding=1, groups=6, name="dw")
    s = g.add("global_avgpool", dw, name="se.pool")
    s = g.add("relu", g.add("conv2d", s, out_channels=2, kernel_size=1, name="fc1"), name="se.relu")
    s = g.add("sigmoid", g.add("conv2d", s, out_channels=6, kernel_size=1, name="fc2"), name="gate")
    m = g.add("mul", dw, s, name="mul")
    _finish(g, g.add("conv2d", m, out_channels=4, kernel_size=1, name="project"))
    cp = analyze(g)
    assert cp.rule("dw").kind == "carrier"
    arrays = [(a.name, a.axis, a.role) for a in cp.rule("dw").arrays]
    assert arrays == [("weight", 0, "channel"), ("bias", 0, "channel")]
    grp = _group(cp, ["expand", "fc2"])
    assert grp.free and grp.size == 6
    assert grp.carriers == ("dw", "se.pool", "gate", "mul")
    assert grp.consumers == ("fc1", "project")
    assert cp.layout("fc2") == cp.layout("expand") == cp.layout("mul")


def test_concat_offsets_and_separate_groups():
    g = archir.Graph("t")
    x = g.input("x", (3, 6, 6))
    a = g.add("conv2d", x, out_channels=2, kernel_size=1, name="a")
    b = g.add("conv2d", x, out_channels=3, kernel_size=1, name="b")
    c = g.add("concat", a, b, name="cat")
    _finish(g, g.add("conv2d", g.add("batchnorm2d", c, name="bn"), out_channels=4, kernel_size=1, name="c"))
    cp = analyze(g)
    ga, gb = _group(cp, ["a"]), _group(cp, ["b"])
    assert ga.free and gb.free and (ga.size, gb.size) == (2, 3)
    assert ga.consumers == gb.consumers == ("c",)
    assert ga.carriers == gb.carriers == ("cat", "bn")
    assert cp.layout("cat") == cp.layout("a") + cp.layout("b")
    # b's channel 1 sits at offset 2 + 1 in the concat and in c's weight columns
    refs = set(gb.channel_refs(1))
    assert ChannelRef("cat", "output", 0, 3, 4) in refs
    assert ChannelRef("bn", "running_var", 0, 3, 4, "buffers") in refs
    assert ChannelRef("c", "weight", 1, 3, 4, "params") in refs
    assert ChannelRef("b", "weight", 0, 1, 2, "params") in refs


def test_add_of_concat_and_conv_splits_the_conv_between_segments():
    g = archir.Graph("t")
    x = g.input("x", (3, 6, 6))
    a = g.add("conv2d", x, out_channels=2, kernel_size=1, name="a")
    b = g.add("conv2d", x, out_channels=3, kernel_size=1, name="b")
    c = g.add("conv2d", x, out_channels=5, kernel_size=1, name="c")
    s = g.add("add", g.add("concat", a, b, name="cat"), c, name="add")
    _finish(g, g.add("conv2d", s, out_channels=2, kernel_size=1, name="head"))
    cp = analyze(g)
    grp = _group(cp, ["a", "b", "c"])
    assert grp.free and grp.size == 5
    assert cp.layout("c") == cp.layout("a") + cp.layout("b")
    assert grp.consumers == ("head",)


def test_concat_on_a_spatial_axis_ties_like_add():
    g = archir.Graph("t")
    x = g.input("x", (3, 6, 6))
    a = g.add("conv2d", x, out_channels=4, kernel_size=1, name="a")
    b = g.add("conv2d", x, out_channels=4, kernel_size=1, name="b")
    cat = g.add("concat", a, b, dim=2, name="cat")
    _finish(g, g.add("conv2d", cat, out_channels=2, kernel_size=1, name="head"))
    cp = analyze(g)
    assert cp.layout("a") == cp.layout("b") == cp.layout("cat")
    assert _group(cp, ["a", "b"]).size == 4


# --------------------------------------------------------------------------- pins and unknown coupling


def test_graph_input_and_output_pin_tied_channels():
    g = archir.Graph("t")
    x = g.input("x", (3, 6, 6))
    a = g.add("conv2d", x, out_channels=3, kernel_size=1, name="a")
    s = g.add("add", a, x, name="res")
    b = g.add("conv2d", s, out_channels=4, kernel_size=1, name="b")
    _finish(g, g.add("relu", b, name="out"))
    cp = analyze(g)
    ga, gb = _group(cp, ["x", "a"]), _group(cp, ["b"])
    assert [p.kind for p in ga.pins] == ["input"]
    assert [(p.kind, p.node) for p in gb.pins] == [("output", "out")]
    with pytest.raises(PreconditionError, match="graph output 'out'"):
        gb.require_free("prune b")


def _unknown(build):
    g = archir.Graph("t")
    x = g.input("x", (4, 6, 6))
    a = g.add("conv2d", x, out_channels=4, kernel_size=1, name="a")
    out = build(g, a)
    return _finish(g, out)


UNKNOWN = {
    "grouped conv": (lambda g, a: g.add("conv2d", a, out_channels=4, kernel_size=1, groups=2, name="odd"),
                     "grouped conv"),
    "depthwise multiplier": (lambda g, a: g.add("conv2d", a, out_channels=8, kernel_size=1, groups=4, name="odd"),
                             "channel multiplier"),
    "flatten start_dim 2": (lambda g, a: g.add("linear", g.add("flatten", a, start_dim=2, name="odd"),
                                               out_features=3), "flatten\\(start_dim=2\\)"),
    "linear on a map": (lambda g, a: g.add("linear", a, out_features=3, name="odd"), "last axis"),
    "mul across channels": (lambda g, a: g.add("mul", a, g.add("conv2d", a, out_channels=1, kernel_size=1),
                                               name="odd"), "across the channel axis"),
    "choice": (lambda g, a: g.add("choice", a, candidates=[{"name": "r", "ops": [{"op": "relu"}]},
                                                            {"name": "i", "ops": [{"op": "identity"}]}],
                                  name="odd"), "archir.derive"),
}


@pytest.mark.parametrize("case", sorted(UNKNOWN))
def test_unknown_coupling_pins_and_strict_raises(case):
    build, pattern = UNKNOWN[case]
    g = _unknown(build)
    cp = analyze(g)
    ga = _group(cp, ["a"])
    unknown = [p for p in ga.pins if p.kind == "unknown"]
    assert unknown and unknown[0].node == "odd"
    assert cp.rule("odd").kind == "opaque"
    with pytest.raises(PreconditionError, match=pattern) as e:
        ga.require_free("prune a")
    assert "how to fix" in str(e.value)
    with pytest.raises(PreconditionError, match=pattern) as e:
        dependency_groups(g, strict=True)
    assert e.value.node == "odd"


# --------------------------------------------------------------------------- edits


def test_remap_inserts_after_each_occurrence_and_removes():
    g = archir.Graph("t")
    x = g.input("x", (3, 6, 6))
    a = g.add("conv2d", x, out_channels=2, kernel_size=1, name="a")
    b = g.add("conv2d", x, out_channels=3, kernel_size=1, name="b")
    c = g.add("concat", a, b, name="cat")
    _finish(g, g.add("conv2d", c, out_channels=4, kernel_size=1, name="c"))
    cp = analyze(g)
    a0, a1 = (cls for cls, _ in cp.layout("a"))
    b0 = cp.layout("b")[0][0]
    rm = cp.remap({a0: ("keep", "copy", "copy"), b0: ()})
    assert list(rm) == ["a", "b", "cat", "c"]
    assert rm["a"].attrs == {"out_channels": 4} and rm["b"].attrs == {"out_channels": 2}
    assert rm["cat"].out.src.tolist() == [0, 0, 0, 1, 3, 4]
    assert rm["cat"].out.tag.tolist() == ["keep", "copy", "copy", "keep", "keep", "keep"]
    assert rm["c"].out is None and rm["c"].inp.share.tolist() == [3, 3, 3, 1, 1, 1]
    zero = cp.remap({a1: ("keep", "new")})
    assert zero["c"].inp.tag.tolist() == ["keep", "keep", "new", "keep", "keep", "keep"]
    assert zero["c"].inp.share.tolist() == [1] * 6
    with pytest.raises(PreconditionError, match="graph input"):
        cp.remap({cp.layout("x")[0][0]: ("keep", "copy")})
    with pytest.raises(PreconditionError, match="no channels"):
        cp.remap({a0: (), a1: ()})


# --------------------------------------------------------------------------- the sample networks


def test_sample_networks_groups():
    free = lambda g: {grp.producers for grp in dependency_groups(g) if grp.free}  # noqa: E731
    assert free(S.resnet_like()) == {("stem.conv", "b1.b.conv", "b2.b.conv"), ("b1.a.conv",), ("b2.a.conv",),
                                     ("b3.a.conv",), ("b3.b.conv", "b3.proj.conv")}
    assert free(S.densenet_like()) == {("stem.conv",), ("d0.conv",), ("d1.conv",), ("d2.conv",), ("trans.conv",)}
    mob = free(S.mobilenet_like())
    assert ("stem.conv", "ir1.project.conv") in mob and ("ir1.expand.conv", "ir1.se.fc2") in mob
    assert ("ir2.project.conv", "ir3.project.conv") in mob and ("ir2.expand.conv",) in mob
    cp = analyze(S.mobilenet_like())
    assert "ir1.dw.conv" in cp.group_of("ir1.expand.conv").carriers
    dg = S.darts_like(cells=2)
    darts = analyze(dg)
    assert all(grp.free for grp in darts.groups() if grp.producers not in {("x",), ("head",)})
    # cell0's four adds chain through pools and skips: one group of the op convs they sum, laid
    # four times side by side in the cell's output concat, read by a sep conv and the next cell
    # (steps are named <edge>.<j>: .6 the second pointwise conv of a sep conv)
    grp = darts.group_of("cell0.n0.add")
    assert grp.producers == ("cell0.n0.e0.6", "cell0.n0.e1.2", "cell0.n1.e0.2", "cell0.n3.e1.6")
    assert all(dg.node(p).op == "conv2d" and dg.node(p).attrs["kernel_size"] == 1 for p in grp.producers)
    assert {"cell0.n1.add", "cell0.n2.add", "cell0.n3.add", "cell0.out"} <= set(grp.carriers)
    assert grp.consumers == ("cell0.n3.e1.2", "cell1.pre1.1")
    assert [c for c, _ in darts.layout("cell0.out")] == list(grp.classes) * 4
    # in cell1 the skip edges tie the preprocessing conv into the adds
    assert "cell1.pre1.1" in darts.group_of("cell1.n0.add").producers


# --------------------------------------------------------------------------- the rule table


def test_every_registered_op_has_a_coupling_rule():
    # an op without a rule is treated as unknown coupling (its channels pinned, never guessed), which
    # silently makes every group it touches unprunable: a new op registers a rule in passes/coupling.py,
    # or, if it is a parameter-free channel-wise op, declares OpTraits(channelwise=True) and needs none
    from archir.ops import op_names
    from passes import coupling

    assert coupling.missing_rules() == []
    assert coupling.missing_rules(["conv2d", "relu", "adaptive_avgpool2d"]) == []
    assert coupling.rule_of("relu") is coupling.rule_of("adaptive_avgpool2d")  # the trait-derived pass-through
    assert coupling.rule_of("conv2d") is coupling.COUPLING_RULES.get("conv2d")
    with pytest.raises(ValueError, match="already has a handler"):
        coupling.register("conv2d")(lambda *a: None)
    assert set(op_names()) - coupling.COUPLING_RULES.ops() == {
        op for op in op_names() if coupling.rule_of(op) is coupling.rule_of("relu")}


def test_rules_say_how_channels_flow():
    g = S.resnet_like()
    cp = analyze(g)
    flows = {n: cp.rule(n).flow for n in g.topo_order()}
    assert flows["b1.add"] == "tie" and flows["stem.bn"] == "pass" and flows["stem.conv"] is None
    assert cp.rule("stem.conv").count_attrs == ("out_channels",)


@pytest.mark.parametrize("call", [
    lambda cp: cp.layout("nope"), lambda cp: cp.classes("nope"), lambda cp: cp.rule("nope"),
    lambda cp: cp.input_of("nope"), lambda cp: cp.group_of("nope"), lambda cp: cp.refs(10**6),
    lambda cp: cp.holders(-1), lambda cp: cp.pins([0, "x"]), lambda cp: cp.remap({0: ("keep", "twice")}),
])
def test_public_methods_raise_pass_errors_naming_what(call):
    from passes.infra import PassError

    cp = analyze(S.chain())
    with pytest.raises(PassError) as ei:
        call(cp)
    e = ei.value
    assert not isinstance(e, KeyError) and e.hint
    assert "nope" in str(e) or "class" in str(e)
    if "nope" in str(e):
        assert e.node == "nope"
