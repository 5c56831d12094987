"""Pruning and widening through channels-last blocks (ConvNeXt) and channel shuffles (ShuffleNetV2).

The coupling analysis tracks the channel axis of every tensor: ``permute`` moves it, a ``linear`` over
it is a 1x1 conv, a ``layernorm`` over it has its affine follow the channels. A channel shuffle (the
``channel_shuffle`` op, or torchvision's ``view/transpose/view``) is pruned by whole rows of its groups
and widened through (tests/passes/test_widen_shuffle.py); channel slices (``chunk``) move with their
input's channels.

Checked on small hand-written graphs and on modules built from torchvision's own classes (one ConvNeXt
stage, two ShuffleNetV2 blocks): the pass fired (which channels, how many), the structure (shapes,
attrs), the numbers (fx vs ONNX Runtime; ``check_preserved`` for widen and for pruning channels that
contribute nothing).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.shufflenetv2 import InvertedResidual

import archir
import passes
from archir.frontend import from_torch
from passes.check import check_preserved
from passes.coupling import analyze
from passes.infra import PreconditionError
from passes.prune import prune_channels
from tests.passes import assert_morphism, assert_onnx_agrees

# --------------------------------------------------------------------------- builders


def convnext_block(c: int = 8, expand: int = 4, classes: int = 5, seed: int = 0) -> archir.Graph:
    """stem conv -> one ConvNeXt block (dwconv, permute, layernorm, linear, gelu, linear, permute, scale,
    residual add) -> layernorm over channels -> pool -> linear, with randomised norms and scale."""
    g = archir.Graph("cnx")
    x = g.input("x", (3, 8, 8))
    s = g.add("conv2d", x, out_channels=c, kernel_size=2, stride=2, name="stem")
    h = g.add("conv2d", s, out_channels=c, kernel_size=3, padding=1, groups=c, name="dw")
    h = g.add("permute", h, dims=[1, 2, 0], name="to_last")
    h = g.add("layernorm", h, axis="last", eps=1e-6, name="ln")
    h = g.add("linear", h, out_features=expand * c, name="pw1")
    h = g.add("gelu", h, name="act")
    h = g.add("linear", h, out_features=c, name="pw2")
    h = g.add("permute", h, dims=[2, 0, 1], name="to_first")
    h = g.add("scale", h, name="ls")
    h = g.add("add", h, s, name="res")
    h = g.add("layernorm", h, axis="channels", eps=1e-6, name="ln_head")
    h = g.add("flatten", g.add("global_avgpool", h, name="pool"), name="flat")
    g.set_outputs(g.add("linear", h, out_features=classes, name="head"))
    g.init_params(seed)
    rng = np.random.default_rng(seed)
    for n in ("ln", "ln_head"):
        g.set_params(n, weight=rng.uniform(0.5, 1.5, c).astype(np.float32), bias=rng.normal(0, 0.1, c).astype(np.float32))
    g.set_params("ls", weight=rng.uniform(0.5, 1.5, c).astype(np.float32))
    return g.validate()


def shuffle_block(c: int = 8, groups: int = 2, seed: int = 0) -> archir.Graph:
    """stem -> chunk into halves -> (x1, branch(x2)) -> concat -> channel_shuffle -> conv head -> linear:
    a ShuffleNetV2 stride-1 unit written with the IR's ops."""
    g = archir.Graph("shuf")
    x = g.input("x", (3, 8, 8))
    s = g.add("relu", g.add("batchnorm2d", g.add("conv2d", x, out_channels=c, kernel_size=3, padding=1, name="stem"),
                            name="stem.bn"), name="stem.relu")
    h = c // 2
    x1 = g.add("slice", s, dim=1, start=0, end=h, name="x1")
    x2 = g.add("slice", s, dim=1, start=h, name="x2")
    b = g.add("relu", g.add("batchnorm2d", g.add("conv2d", x2, out_channels=h, kernel_size=1, name="b.pw1"),
                            name="b.bn1"), name="b.relu1")
    b = g.add("batchnorm2d", g.add("conv2d", b, out_channels=h, kernel_size=3, padding=1, groups=h, name="b.dw"),
              name="b.bn2")
    b = g.add("relu", g.add("batchnorm2d", g.add("conv2d", b, out_channels=h, kernel_size=1, name="b.pw2"),
                            name="b.bn3"), name="b.relu3")
    cat = g.add("concat", x1, b, dim=1, name="cat")
    sh = g.add("channel_shuffle", cat, groups=groups, name="shuffle")
    y = g.add("relu", g.add("conv2d", sh, out_channels=16, kernel_size=1, name="conv5"), name="conv5.relu")
    g.set_outputs(g.add("linear", g.add("flatten", g.add("global_avgpool", y)), out_features=5, name="fc"))
    g.init_params(seed)
    rng = np.random.default_rng(seed + 1)
    for node in g.nodes("batchnorm2d"):
        k = node.type.shape[0]
        g.set_buffers(node.id, running_mean=rng.normal(0, 0.1, k).astype(np.float32),
                      running_var=rng.uniform(0.5, 1.5, k).astype(np.float32))
    return g.validate()


def zero_contributions(g: archir.Graph, group, positions) -> archir.Graph:
    """A copy of ``g`` where the channels at ``positions`` of ``group`` contribute nothing: every filter
    row, depthwise filter and consumer column of theirs is zero (so their l1 importance is 0 and pruning
    them first keeps the function exactly, whatever constant a BN or bias gives them on the way)."""
    out = g.copy()
    for i in positions:
        for ref in group.channel_refs(i):
            if ref.array == "weight" and ref.kind == "params":
                w = np.array(out.node(ref.node).params["weight"])
                idx = [slice(None)] * w.ndim
                idx[ref.axis] = slice(ref.start, ref.stop)
                w[tuple(idx)] = 0.0
                out.set_params(ref.node, weight=w)
    return out.validate()


# --------------------------------------------------------------------------- ConvNeXt: the analysis


def test_the_channel_axis_moves_with_permute_and_the_linear_is_a_source_on_it():
    g = convnext_block()
    cp = analyze(g)
    assert [cp.channel_axis(n) for n in ("stem", "dw", "to_last", "ln", "pw1", "act", "pw2", "to_first", "res")] \
        == [0, 0, 2, 2, 2, 2, 2, 0, 0]
    assert cp.rule("pw1").kind == "source" and cp.rule("pw2").kind == "source"
    assert cp.rule("ln").kind == "carrier" and cp.rule("ln").mixes  # its statistics run over the channels
    hidden = cp.group_of("pw1")
    assert hidden.free and hidden.size == 32 and hidden.producers == ("pw1",) and hidden.consumers == ("pw2",)
    stream = cp.group_of("stem")
    assert stream.free and set(stream.producers) == {"stem", "pw2"}  # pw2 is tied to the stem through the add
    assert {"dw", "ln", "ls", "ln_head"} <= set(stream.carriers) and set(stream.consumers) == {"pw1", "head"}
    # a channel of the hidden layer is row i of pw1 and column i of pw2; its output slice is on axis 2
    refs = set(hidden.channel_refs(3))
    assert passes.coupling.ChannelRef("act", "output", 2, 3, 4) in refs
    assert passes.coupling.ChannelRef("pw2", "weight", 1, 3, 4, "params") in refs


def test_axis_zero_ops_on_channels_last_tensors_and_linears_over_space_pin_with_the_reason():
    g = archir.Graph("bad")
    x = g.input("x", (3, 8, 8))
    a = g.add("conv2d", x, out_channels=4, kernel_size=1, name="a")
    t = g.add("permute", a, dims=[1, 2, 0], name="t")  # (8, 8, 4)
    c = g.add("conv2d", t, out_channels=4, kernel_size=1, name="c")  # reads H as its channels
    w = g.add("linear", a, out_features=5, name="w")  # over W of a (C, H, W) map: mixes positions
    g.set_outputs(c, w)
    g.init_params(0)
    g.validate()
    cp = analyze(g)
    assert cp.rule("c").kind == "opaque" and "channels-last" in cp.rule("c").reason
    assert cp.rule("w").kind == "opaque" and "mixes positions" in cp.rule("w").reason
    with pytest.raises(PreconditionError, match="channels-last"):
        passes.coupling.analyze(g, strict=True)


# --------------------------------------------------------------------------- ConvNeXt: pruning


def test_prune_convnext_block_removes_hidden_and_stream_channels_and_agrees_with_onnx():
    g = convnext_block()
    small, report = prune_channels(g, ratio=0.5)
    by = {gp.producers[0]: gp for gp in report.groups}
    assert (by["pw1"].before, by["pw1"].after) == (32, 16)
    assert (by["stem"].before, by["stem"].after) == (8, 4)
    assert report.channels_removed == 20
    assert small.node("pw1").params["weight"].shape == (16, 4) and small.node("pw2").params["weight"].shape == (4, 16)
    assert small.node("ln").params["weight"].shape == (4,) and small.node("ln_head").params["bias"].shape == (4,)
    assert small.node("dw").attrs["groups"] == 4 and small.node("ls").params["weight"].shape == (4,)
    assert small.node("to_last").type.shape == (4, 4, 4) and small.node("act").type.shape == (4, 4, 16)
    assert small.node("head").params["weight"].shape == (5, 4)
    # the kept rows are the original rows of the kept channels (the l1 order chose them)
    kept = [i for i in range(32) if i not in by["pw1"].removed]
    np.testing.assert_array_equal(small.node("pw1").params["bias"], g.node("pw1").params["bias"][kept])
    assert_onnx_agrees(small)


def test_pruning_hidden_channels_that_contribute_nothing_keeps_the_function():
    g = convnext_block()
    grp = analyze(g).group_of("pw1")
    dead = [1, 5, 6, 20, 31]
    g0 = zero_contributions(g, grp, dead)
    small, report = prune_channels(g0, keep=32 - len(dead), groups=["pw1"])
    assert report.groups[0].removed == tuple(dead)
    assert small.node("pw1").attrs["out_features"] == 27
    assert check_preserved(g0, small).ok  # gelu(bias) of a dead channel met only zero columns


def test_torchvision_convnext_stage_prunes_its_linears():
    torch.manual_seed(0)
    m = ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10).eval()
    g = from_torch(m, torch.randn(1, 3, 32, 32))
    assert any(n.op == "permute" for n in g.nodes()) and any(n.op == "linear" and n.type.rank == 3 for n in g.nodes())
    small, report = prune_channels(g, ratio=0.5)
    got = {gp.producers[0]: (gp.before, gp.after) for gp in report.groups}
    assert got == {"features.0.0": (16, 8), "features.1.0.block.3": (64, 32),
                   "features.2.1": (32, 16), "features.3.0.block.3": (128, 64)}
    assert [s.producers for s in report.skipped] == [("x",), ("classifier.2",)]  # the interface only
    assert small.node("features.1.0.block.5").params["weight"].shape == (8, 32)
    assert_onnx_agrees(small)


# --------------------------------------------------------------------------- ConvNeXt: widening


@pytest.mark.parametrize("mode", ["replicate", "zero"])
def test_widen_a_channels_last_linear_keeps_the_function(mode):
    g = convnext_block()
    assert [t["node"] for t in passes.widen_targets(g)] == ["pw1"]  # the stream meets two layernorms
    wide = passes.widen(g, node="pw1", out_channels=45, mode=mode, seed=3)
    assert wide.node("pw1").params["weight"].shape == (45, 8) and wide.node("pw2").params["weight"].shape == (8, 45)
    assert wide.node("act").type.shape == (4, 4, 45)
    assert_morphism(g, wide)


def test_widen_the_convnext_stream_is_refused_at_the_layernorm():
    with pytest.raises(PreconditionError, match="normalises over the channels") as e:
        passes.widen(convnext_block(), node="pw2", out_channels=12)
    assert e.value.node == "ln"


# --------------------------------------------------------------------------- channel shuffle


def test_channel_shuffle_ties_rows_of_its_groups():
    g = shuffle_block(c=8, groups=2)
    cp = analyze(g)
    lay = [cls for cls, _ in cp.layout("cat")]
    assert lay[:4] == lay[4:]  # x1's channel j and the branch's channel j are one class
    assert [cls for cls, _ in cp.layout("shuffle")] == [lay[i] for i in (0, 4, 1, 5, 2, 6, 3, 7)]
    grp = cp.group_of("b.pw2")  # the stem's channels: 4 tied to the branch's (x1), 4 read by the branch (x2)
    assert grp.size == 8 and grp.producers == ("stem", "b.pw2") and grp.free
    assert set(grp.classes) == set(lay) | {cls for cls, _ in cp.layout("x2")}
    assert cp.rule("x1").flow == "slice" and cp.rule("x2").flow == "slice"


def test_prune_through_chunk_and_shuffle_keeps_groups_equal_and_agrees_with_onnx():
    g = shuffle_block(c=8, groups=2)
    small, report = prune_channels(g, ratio=0.5)
    by = {gp.producers[0]: gp for gp in report.groups}
    assert (by["stem"].before, by["stem"].after) == (8, 4)
    assert (by["b.pw1"].before, by["b.pw1"].after) == (4, 2)
    # a removed shuffle row takes one stem channel (in x1) and one branch channel; an x2 channel, one stem channel
    rows = sum(1 for i in by["stem"].removed if i < 4)
    assert small.node("stem").attrs["out_channels"] == 4 and small.node("b.pw2").attrs["out_channels"] == 4 - rows
    assert small.node("cat").type.shape[0] == small.node("shuffle").type.shape[0] == 2 * (4 - rows)
    assert (small.node("x1").attrs["start"], small.node("x1").attrs["end"]) == (0, 4 - rows)
    assert (small.node("x2").attrs["start"], small.node("x2").attrs["end"]) == (4 - rows, 4)
    assert small.node("b.pw1").params["weight"].shape == (2, rows, 1, 1)
    assert small.node("conv5").params["weight"].shape == (8, 2 * (4 - rows), 1, 1)  # its own group: 16 -> 8
    assert_onnx_agrees(small)


def test_pruning_shuffled_rows_that_contribute_nothing_keeps_the_function():
    g = shuffle_block(c=8, groups=2)
    grp = analyze(g).group_of("b.pw2")
    g0 = zero_contributions(g, grp, [2])
    small, report = prune_channels(g0, keep=7, groups=["b.pw2"])
    assert report.groups[0].removed == (2,)  # stem channel 2 and branch channel 2: one row of the shuffle
    assert small.node("stem").attrs["out_channels"] == 7 and small.node("shuffle").type.shape[0] == 6
    assert check_preserved(g0, small).ok


def test_widen_follows_channels_through_a_shuffle():
    # (this was a refusal: "a copy would land where the new channel count puts it"; the shuffle's map is now
    # propagated, see passes/coupling.py Coupling.carry)
    g = shuffle_block()
    targets = [t["node"] for t in passes.widen_targets(g)]
    assert targets == ["stem", "b.pw1", "b.pw2", "conv5"]
    wide = passes.widen(g, node="b.pw2", out_channels=6)
    assert wide.node("shuffle").attrs["groups"] == 2 and wide.node("shuffle").type.shape[0] == 12
    assert_morphism(g, wide)
    assert_morphism(g, passes.widen(g, node="b.pw1", out_channels=7))


def test_widen_through_a_channel_slice_moves_its_range_and_keeps_the_function():
    g = archir.Graph("sl")
    x = g.input("x", (3, 6, 6))
    a = g.add("relu", g.add("conv2d", x, out_channels=8, kernel_size=3, padding=1, name="a"), name="a.relu")
    lo = g.add("conv2d", g.add("slice", a, dim=1, start=0, end=3, name="lo"), out_channels=4, kernel_size=1, name="p")
    hi = g.add("conv2d", g.add("slice", a, dim=1, start=3, end=8, name="hi"), out_channels=4, kernel_size=1, name="q")
    g.set_outputs(g.add("add", lo, hi, name="out"))
    g.init_params(0)
    g.validate()
    for mode in ("replicate", "zero"):
        wide = passes.widen(g, node="a", out_channels=13, mode=mode, seed=1)
        lo_n, hi_n = wide.node("lo").type.shape[0], wide.node("hi").type.shape[0]
        assert lo_n + hi_n == 13 and wide.node("hi").attrs["start"] == lo_n
        assert wide.node("p").params["weight"].shape[1] == lo_n
        assert_morphism(g, wide)
    # (this was refused, "slices the channels"): the new channels come after the old last one, so the slice
    # that ends there takes them in and its consumer reads them with zero weight; the other slice is unchanged
    skip = passes.add_skip(g, src="x", dst="a.relu", mode="concat")
    assert skip.node("hi").attrs["end"] == 11 and skip.node("lo").attrs["end"] == 3
    assert not skip.node("q").params["weight"][:, 5:].any()
    assert_morphism(g, skip)


def test_torchvision_shufflenet_units_prune_through_view_transpose_view():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                      InvertedResidual(16, 32, 2), InvertedResidual(32, 32, 1),
                      nn.Conv2d(32, 24, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 5)).eval()
    g = from_torch(m, torch.randn(1, 3, 16, 16))
    assert [n.op for n in g.nodes() if n.op in ("reshape", "permute")] == ["reshape", "permute", "reshape"] * 2
    cp = analyze(g)
    assert {cp.rule(n.id).flow for n in g.nodes("reshape")} == {"shuffle_split", "shuffle_merge"}
    small, report = prune_channels(g, ratio=0.5)
    assert [s.producers for s in report.skipped] == [("input",), ("9",)]  # the interface only
    stream = next(gp for gp in report.groups if "3.branch1.2" in gp.producers)
    assert stream.producers == ("3.branch1.2", "3.branch2.5", "4.branch2.5") and (stream.before, stream.after) == (16, 8)
    assert report.channels_removed == 8 + 8 + 8 + 8 + 12  # stem, stream, two branch-hidden groups, the 1x1 head
    for unit in ("3", "4"):  # each view of a shuffle holds the pruned channels as 2 equal groups
        c = small.node(f"{unit}.concat").type.shape[0]
        assert small.node(f"{unit}.reshape").attrs["shape"][:2] == [2, c // 2] and c % 2 == 0
        assert small.node(f"{unit}.reshape_1").attrs["shape"][0] == c
    x1, x2 = small.node("4.slice").attrs, small.node("4.slice_1").attrs
    assert x1["start"] == 0 and x1["end"] == x2["start"] and x2["end"] == small.node("3.concat").type.shape[0]
    assert small.node("4.branch2.5").attrs["out_channels"] == x1["end"]  # the branch keeps x1's rows
    assert_onnx_agrees(small)
    wide = passes.widen(g, node="3.branch1.2", out_channels=20)  # (this was refused, "channel shuffle")
    assert wide.node("3.reshape").attrs["shape"][:2] == [2, 20] and wide.node("4.reshape_1").attrs["shape"][0] == 40
    assert_morphism(g, wide)


# --------------------------------------------------------------------------- random shapes


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=st.sampled_from([4, 6, 8, 12]), groups=st.sampled_from([1, 2, 4]), expand=st.integers(1, 4),
       ratio=st.sampled_from([0.25, 0.5, 0.75]), seed=st.integers(0, 3))
def test_random_shuffle_and_convnext_blocks_prune_validly(c, groups, expand, ratio, seed):
    if c % groups:
        groups = 2
    g = shuffle_block(c=c, groups=groups, seed=seed)
    small, report = prune_channels(g, ratio=ratio, criterion="random", seed=seed)
    n = small.node("shuffle").type.shape[0]
    assert n % groups == 0 and report.channels_removed > 0  # the branch's hidden group always has 2+ channels
    assert_onnx_agrees(small)
    g = convnext_block(c=c, expand=expand, seed=seed)
    small, report = prune_channels(g, ratio=ratio, criterion="random", seed=seed)
    assert small.node("pw1").attrs["out_features"] == max(1, int(np.floor(expand * c * (1 - ratio) + 1e-9)))
    assert_onnx_agrees(small)
    wide = passes.widen(g, node="pw1", out_channels=expand * c + 3, seed=seed)
    assert check_preserved(g, wide).ok


def test_add_skip_concat_refuses_a_channels_last_dst_and_a_stream_meeting_a_layernorm():
    g = convnext_block()
    with pytest.raises(PreconditionError, match="channels-last") as e:  # (4, 4, 8): axis 0 is H
        passes.add_skip(g, src="x", dst="to_last", mode="concat")
    assert e.value.node == "to_last"
    assert not any(t["dst"] in ("to_last", "ln", "pw1", "act", "pw2") and t["mode"] == "concat"
                   for t in passes.skip.skip_targets(g))
    with pytest.raises(PreconditionError, match="normalises over the channels"):  # the stream meets layernorms
        passes.add_skip(g, src="stem", dst="res", mode="concat")


@pytest.mark.parametrize("keepdim", [False, True])
def test_a_reduction_over_space_keeps_the_channel_axis_where_it_lands(keepdim):
    g = archir.Graph("red")
    x = g.input("x", (3, 6, 6))
    h = g.add("permute", g.add("conv2d", x, out_channels=6, kernel_size=3, name="c"), dims=[1, 2, 0], name="t")
    h = g.add("gelu", g.add("linear", h, out_features=10, name="fc1"), name="act")
    m = g.add("mean", h, dims=[1, 2], keepdim=keepdim, name="m")  # (10,) or (1, 1, 10)
    g.set_outputs(g.add("linear", m, out_features=3, name="head"))
    g.init_params(0)
    g.validate()
    cp = analyze(g)
    assert cp.channel_axis("m") == (2 if keepdim else 0) and cp.rule("head").kind == "source"
    assert cp.group_of("fc1").consumers == ("head",)
    small, report = prune_channels(g, ratio=0.5, groups=["fc1"])
    assert small.node("m").type.shape == ((1, 1, 5) if keepdim else (5,))
    assert small.node("head").params["weight"].shape == (3, 5)
    assert_onnx_agrees(small)
    assert_morphism(g, passes.widen(g, node="fc1", out_channels=13))
