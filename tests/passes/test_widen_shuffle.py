"""widen and add_skip(mode="concat") through channel shuffles (issue 17, item 3).

A shuffle of ``C = g * p`` channels puts input segment ``i``, row ``j`` at output ``j * g + i``. Widening a
class (row ``j`` of every segment, one class by construction) inserts a copy after row ``j`` of every
segment, so the shuffled output is the old output with a block of ``g`` copies inserted after block ``j``:
the output's position map is its input's permuted by the shuffle of the *new* count
(``passes.coupling.Coupling.carry``), not a copy next to every occurrence. Checked: the pass fired
(counts grew), the structure (groups unchanged, views' shapes reset), the numbers (``check_preserved``)
and ONNX Runtime against fx; on hand-built graphs, torchvision's view/transpose/view form, a
ShuffleNetV2-like unit and torchvision's ``shufflenet_v2_x0_5``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn
from torchvision.models.shufflenetv2 import channel_shuffle as tv_channel_shuffle

import archir
import passes
from archir.frontend import from_torch
from passes.check import check_preserved
from passes.coupling import analyze
from passes.infra import PreconditionError
from passes.skip import skip_targets
from tests.passes import assert_morphism
from tests.passes.test_prune_channels_last import convnext_block, shuffle_block


def conv_shuffle_conv(c: int = 6, groups: int = 3, seed: int = 0) -> archir.Graph:
    g = archir.Graph("csc")
    x = g.input("x", (4, 6, 6))
    a = g.add("conv2d", x, out_channels=c, kernel_size=3, padding=1, name="a")
    s = g.add("channel_shuffle", g.add("relu", a, name="r"), groups=groups, name="sh")
    g.set_outputs(g.add("conv2d", s, out_channels=5, kernel_size=1, name="b"))
    g.init_params(seed)
    return g.validate()


def test_the_shuffle_output_map_inserts_a_block_of_g_copies_after_the_block():
    g = conv_shuffle_conv(c=6, groups=3)  # rows j = 0, 1: classes {a0, a2, a4}, {a1, a3, a5}
    cp = analyze(g)
    row1 = cp.layout("a")[1][0]
    assert [c for c, _ in cp.layout("a")] == [cp.layout("a")[0][0], row1] * 3
    rm = cp.remap({row1: ("keep", "copy")})
    assert list(rm["a"].out.src) == [0, 1, 1, 2, 3, 3, 4, 5, 5]  # a copy after row 1 of every segment
    # old shuffle output [a0 a2 a4 | a1 a3 a5]; new: block 1, then its 3 copies (not interleaved copies)
    assert list(rm["sh"].out.src) == [0, 1, 2, 3, 4, 5, 3, 4, 5]
    assert list(rm["sh"].out.tag) == ["keep"] * 6 + ["copy"] * 3
    assert list(rm["b"].inp.share) == [1, 1, 1, 2, 2, 2, 2, 2, 2]


@pytest.mark.parametrize("mode", ["replicate", "zero"])
@pytest.mark.parametrize("out_channels", [9, 12, 15])
def test_widen_conv_shuffle_conv(mode, out_channels):
    g = conv_shuffle_conv()
    assert passes.widen_targets(g) == [{"node": "a", "out_channels": 12}]
    wide = passes.widen(g, node="a", out_channels=out_channels, mode=mode, seed=2)
    # every class is a row of all 3 segments: each added class grows every segment by one, 3 channels
    grown = out_channels - 6
    assert wide.node("a").attrs["out_channels"] == out_channels
    assert wide.node("sh").attrs["groups"] == 3 and wide.node("b").params["weight"].shape[1] == 6 + grown
    assert_morphism(g, wide)


@pytest.mark.parametrize("out_channels", [7, 8, 10])
def test_widen_through_a_shuffle_grows_by_whole_rows_only(out_channels):
    g = conv_shuffle_conv()
    with pytest.raises(PreconditionError, match=r"classes of 3 channels each") as e:
        passes.widen(g, node="a", out_channels=out_channels)
    assert e.value.node == "a" and "a multiple of 3" in str(e.value.hint)


def test_add_skip_concat_through_a_shuffle_needs_a_multiple_of_its_groups():
    g = conv_shuffle_conv(c=6, groups=3)
    concat = [(t["src"], t["dst"]) for t in skip_targets(g) if t["mode"] == "concat"]
    assert ("a", "r") in concat and ("x", "r") not in concat  # a has 6 channels, x has 4
    skip = passes.add_skip(g, src="a", dst="r", mode="concat")
    assert skip.node("sh").type.shape[0] == 12 and skip.node("b").params["weight"].shape[1] == 12
    assert_morphism(g, skip)
    with pytest.raises(PreconditionError, match="would get 10 channels, not a multiple of its 3 groups"):
        passes.add_skip(g, src="x", dst="r", mode="concat")


def test_a_tie_after_a_shuffle_on_one_side_only_is_refused_with_the_reason():
    g = archir.Graph("tie")
    x = g.input("x", (4, 6, 6))
    a = g.add("conv2d", x, out_channels=6, kernel_size=1, name="a")
    b = g.add("conv2d", x, out_channels=6, kernel_size=1, name="b")
    s = g.add("add", g.add("channel_shuffle", a, groups=2, name="sh"), b, name="sum")
    g.set_outputs(g.add("conv2d", s, out_channels=3, kernel_size=1, name="head"))
    g.init_params(0)
    g.validate()
    with pytest.raises(PreconditionError, match="'sum' combines .* would not line up"):
        passes.widen(g, node="a", out_channels=7)
    assert passes.widen_targets(g) == []


def test_a_slice_that_cuts_a_shuffle_row_is_refused_with_the_reason():
    g = archir.Graph("cut")
    x = g.input("x", (4, 6, 6))
    a = g.add("conv2d", x, out_channels=6, kernel_size=1, name="a")
    s = g.add("channel_shuffle", a, groups=2, name="sh")  # blocks [r0 r0 | r1 r1 | r2 r2]; 0:3 cuts r1
    lo = g.add("conv2d", g.add("slice", s, dim=1, start=0, end=3, name="lo"), out_channels=4, kernel_size=1, name="p")
    hi = g.add("conv2d", g.add("slice", s, dim=1, start=3, end=6, name="hi"), out_channels=4, kernel_size=1, name="q")
    g.set_outputs(g.add("add", lo, hi, name="out"))
    g.init_params(0)
    g.validate()
    with pytest.raises(PreconditionError, match="slice 'lo' .* no longer hold its channels as one range"):
        passes.widen(g, node="a", out_channels=8)
    assert "one range" in passes.widen_reason(g, "a") and passes.widen_targets(g) == []


def test_widen_of_channels_meeting_a_layernorm_over_channels_is_still_refused():
    g = convnext_block()
    with pytest.raises(PreconditionError, match="normalises over the channels"):
        passes.widen(g, node="stem", out_channels=12)


class _ShuffleNet(nn.Module):
    """conv -> BN -> ReLU -> torchvision's channel_shuffle (view / transpose / view) -> conv -> pool -> fc."""

    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(c, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x):
        return self.head(tv_channel_shuffle(self.stem(x), self.groups))


@pytest.mark.parametrize("mode", ["replicate", "zero"])
def test_widen_through_the_view_transpose_view_form_resets_the_views(mode):
    torch.manual_seed(0)
    g = from_torch(_ShuffleNet(6, 3).eval(), torch.randn(1, 3, 8, 8))
    split, merge = [n.id for n in g.nodes("reshape")]
    assert {analyze(g).rule(n).flow for n in (split, merge)} == {"shuffle_split", "shuffle_merge"}
    stem = next(n.id for n in g.nodes("conv2d"))
    assert stem in [t["node"] for t in passes.widen_targets(g)]
    wide = passes.widen(g, node=stem, out_channels=12, mode=mode, seed=1)
    assert wide.node(stem).attrs["out_channels"] == 12  # two more rows, each a row of all 3 groups
    assert wide.node(split).attrs["shape"][:2] == [3, 4] and wide.node(merge).attrs["shape"][0] == 12
    assert_morphism(g, wide)
    skip = passes.add_skip(g, src=stem, dst=g.inputs_of(split)[0], mode="concat")  # 6 more: a multiple of 3
    assert skip.node(split).attrs["shape"][:2] == [3, 4] and skip.node(merge).attrs["shape"][0] == 12
    assert_morphism(g, skip)


def test_every_widen_and_concat_skip_of_a_shufflenet_unit_keeps_the_function():
    g = shuffle_block(c=8, groups=2)
    targets = passes.widen_targets(g)
    assert [t["node"] for t in targets] == ["stem", "b.pw1", "b.pw2", "conv5"]
    for t in targets:
        for mode in ("replicate", "zero"):
            wide = passes.widen(g, node=t["node"], out_channels=t["out_channels"] // 2 + 3, mode=mode, seed=4)
            assert wide.node("shuffle").attrs["groups"] == 2
            assert wide.node(t["node"]).attrs["out_channels"] > g.node(t["node"]).attrs["out_channels"]
            assert check_preserved(g, wide).ok
    # the chunk -> branch -> concat -> shuffle: widening the branch's output grows x1's rows too (one class each)
    wide = passes.widen(g, node="b.pw2", out_channels=6, mode="zero")
    assert wide.node("x1").attrs["end"] == 6 and wide.node("x2").attrs["start"] == 6
    assert wide.node("cat").type.shape[0] == wide.node("shuffle").type.shape[0] == 12
    assert_morphism(g, wide)
    concat = [t for t in skip_targets(g) if t["mode"] == "concat" and t["dst"] in ("b.relu3", "cat")]
    assert {(t["src"], t["dst"]) for t in concat} >= {("stem", "cat"), ("b.pw2", "b.relu3")}
    for t in concat:
        assert check_preserved(g, passes.add_skip(g, **t)).ok
    assert_morphism(g, passes.add_skip(g, src="stem", dst="cat", mode="concat"))


@pytest.fixture(scope="module")
def shufflenet():
    tvm = pytest.importorskip("torchvision.models")
    from tests.archir.test_frontend_families import randomize

    torch.manual_seed(0)
    return from_torch(randomize(tvm.shufflenet_v2_x0_5(weights=None)), torch.randn(1, 3, 32, 32))


@pytest.mark.no_verify(reason="widens all 28 targets in both modes for structure; checks the numbers itself, once per "
                               "channel group and mode (tied producers make the same edit)")
def test_torchvision_shufflenet_v2_widens_through_its_shuffles(shufflenet):
    g = shufflenet
    cp = analyze(g)
    sources = [n for n in cp.order if cp.rule(n).kind == "source"]
    legal = [t["node"] for t in passes.widen_targets(g)]
    refused = {n: passes.widen_reason(g, n) for n in sources if n not in legal}
    # 28 of the 38 (18 before: every conv whose channels reached a shuffle was refused); the head is the
    # interface, and stage 3's stream (8 units: its rows have merged into classes that straddle the chunk
    # bound) cannot keep each chunk one range
    assert len(legal) == 28 and set(refused) == {"fc"} | {n for n in sources if n.startswith("stage3.")} - set(legal)
    assert all("one range" in r for n, r in refused.items() if n != "fc")
    streams = [n for n in legal if cp.shufflers(cp.classes(n))]
    assert len(streams) == 10 and {cp.group_of(n).index for n in streams} == {cp.group_of("stage2.0.branch2.5").index,
                                                                              cp.group_of("stage4.0.branch2.5").index}
    splits = [m.id for m in g.nodes("reshape") if cp.rule(m.id).flow == "shuffle_split"]
    checked = set()
    for i, n in enumerate(legal):
        c = g.node(n).attrs["out_channels"]
        for mode in ("replicate", "zero"):
            # a stream's classes are rows of the shuffles' groups (2, 4 or 8 channels once shuffles compose):
            # it grows by whole classes
            step = c // len({cls for cls, _ in cp.layout(n)})
            wide = passes.widen(g, node=n, out_channels=c + step * (1 + i % 3), mode=mode, seed=i)
            assert wide.node(n).attrs["out_channels"] == c + step * (1 + i % 3)
            assert all(wide.node(s).attrs["shape"][0] == 2 for s in splits)  # the groups stay 2
            if (cp.group_of(n).index, mode) not in checked:
                checked.add((cp.group_of(n).index, mode))
                if n in streams:
                    assert check_preserved(g, wide).ok, (n, mode)
    # ONNX Runtime agrees on one widened stream of stage 2 and one of stage 4
    for n, mode in (("stage2.0.branch2.5", "replicate"), ("stage4.1.branch2.5", "zero")):
        assert_morphism(g, passes.widen(g, node=n, out_channels=g.node(n).attrs["out_channels"] + 8, mode=mode))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=st.sampled_from([4, 6, 8, 12]), groups=st.sampled_from([1, 2, 3, 4]), extra=st.integers(1, 9),
       mode=st.sampled_from(["replicate", "zero"]), pick=st.integers(0, 10), seed=st.integers(0, 5))
def test_random_shuffle_units_widen_preserved(c, groups, extra, mode, pick, seed):
    if c % groups:
        groups = 2
    g = shuffle_block(c=c, groups=groups, seed=seed)
    targets = passes.widen_targets(g)
    assert targets  # b.pw1 (the branch's hidden layer) never meets the shuffle
    t = targets[pick % len(targets)]
    wide = passes.widen(g, node=t["node"], out_channels=g.node(t["node"]).attrs["out_channels"] + extra,
                        mode=mode, seed=seed)
    assert wide.node("shuffle").type.shape[0] % groups == 0
    assert_morphism(g, wide)
