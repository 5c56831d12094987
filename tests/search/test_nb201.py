"""The NAS-Bench-201 space (``search.spaces.nb201``): decisions, strings, the categorical view, and the network.

The network is checked against an independent transcription of NAS-Bench-201's ``TinyNetwork``
(``xautodl/models/cell_infers/tiny_network.py``, ``cells.py`` and ``cell_operations.py``, written out
again below): the same parameter count, and with the reference's weights copied in, the same eval-mode
output, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import costmodels
from archir.lower import to_fx, verify_onnx
from search.spaces import DecisionError, SpaceError, get_space
from search.spaces.nb201 import EDGES, OPS, Nb201Space
from search.strategies import get_strategy
from search.strategies.pnas import progressive_plan

EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
DEAD = "|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|"  # node 1 reaches no output
ALL_CONV3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"


# ------------------------------------------------------------------------------ the reference, transcribed
class Zero(nn.Module):
    def forward(self, x):
        return x.mul(0.0)


class ReLUConvBN(nn.Module):
    def __init__(self, c_in, c_out, k, stride, padding):
        super().__init__()
        self.op = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(c_in, c_out, k, stride, padding, bias=False),
                                nn.BatchNorm2d(c_out, affine=True, track_running_stats=True))

    def forward(self, x):
        return self.op(x)


def ref_op(name, c):
    return {"none": lambda: Zero(), "skip_connect": lambda: nn.Identity(),
            "nor_conv_1x1": lambda: ReLUConvBN(c, c, 1, 1, 0), "nor_conv_3x3": lambda: ReLUConvBN(c, c, 3, 1, 1),
            "avg_pool_3x3": lambda: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)}[name]()


class ResNetBasicblock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, stride, 1)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, 1)
        self.downsample = nn.Sequential(nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
                                        nn.Conv2d(c_in, c_out, kernel_size=1, stride=1, padding=0, bias=False))

    def forward(self, x):
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class InferCell(nn.Module):
    def __init__(self, genotype, c):  # genotype: per node, [(op, input), ...]
        super().__init__()
        self.layers, self.node_ix, self.node_in = nn.ModuleList(), [], []
        for node in genotype:
            ix, inn = [], []
            for op, src in node:
                ix.append(len(self.layers))
                inn.append(src)
                self.layers.append(ref_op(op, c))
            self.node_ix.append(ix)
            self.node_in.append(inn)

    def forward(self, x):
        nodes = [x]
        for ix, inn in zip(self.node_ix, self.node_in):
            nodes.append(sum(self.layers[i](nodes[j]) for i, j in zip(ix, inn)))
        return nodes[-1]


class TinyNetwork(nn.Module):
    def __init__(self, c, n, genotype, num_classes):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(c))
        channels = [c] * n + [2 * c] + [2 * c] * n + [4 * c] + [4 * c] * n
        reductions = [False] * n + [True] + [False] * n + [True] + [False] * n
        self.cells, prev = nn.ModuleList(), c
        for cc, red in zip(channels, reductions):
            self.cells.append(ResNetBasicblock(prev, cc, 2) if red else InferCell(genotype, cc))
            prev = cc
        self.lastact = nn.Sequential(nn.BatchNorm2d(prev), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x):
        h = self.stem(x)
        for cell in self.cells:
            h = cell(h)
        h = self.global_pooling(self.lastact(h))
        return self.classifier(h.view(h.size(0), -1))


def genotype_of(arch: str):
    return [[(item.split("~")[0], int(item.split("~")[1])) for item in node[1:-1].split("|")]
            for node in arch.split("+")]


def copy_reference_weights(ref: TinyNetwork, g) -> None:
    """Put ``ref``'s weights on archir's nodes (node ids mirror the reference's modules)."""
    def conv(node, m):
        g.set_params(node, **{"weight": m.weight.detach().numpy().copy()})

    def bn(node, m):
        g.set_params(node, weight=m.weight.detach().numpy().copy(), bias=m.bias.detach().numpy().copy())
        g.set_buffers(node, running_mean=m.running_mean.numpy().copy(), running_var=m.running_var.numpy().copy())

    ids = {n.id for n in g.nodes()}
    conv("stem.conv", ref.stem[0])
    bn("stem.bn", ref.stem[1])
    for idx, cell in enumerate(ref.cells):
        if isinstance(cell, ResNetBasicblock):
            for part, m in (("a", cell.conv_a), ("b", cell.conv_b)):
                conv(f"cell{idx}.{part}.conv", m.op[1])
                bn(f"cell{idx}.{part}.bn", m.op[2])
            conv(f"cell{idx}.down.conv", cell.downsample[1])
            continue
        for j, node in enumerate(cell.node_ix, start=1):
            for layer, i in zip(node, cell.node_in[j - 1]):
                m = cell.layers[layer]
                if isinstance(m, ReLUConvBN) and f"cell{idx}.e{j}{i}.1" in ids:  # a dead edge is not built
                    conv(f"cell{idx}.e{j}{i}.1", m.op[1])
                    bn(f"cell{idx}.e{j}{i}.2", m.op[2])
    bn("last.bn", ref.lastact[0])
    g.set_params("head", weight=ref.classifier.weight.detach().numpy().copy(),
                 bias=ref.classifier.bias.detach().numpy().copy())


def _randomise_bn(ref: nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) * 2 - 1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)


# ------------------------------------------------------------------------------ decisions and strings
def test_string_round_trip_and_edge_order():
    s = Nb201Space()
    d = s.from_string(EXAMPLE)
    assert d == {"edges": ["nor_conv_3x3", "nor_conv_3x3", "avg_pool_3x3", "skip_connect", "nor_conv_3x3",
                           "skip_connect"]}
    assert s.to_string(d) == EXAMPLE and s.decode(EXAMPLE) == d and s.encode(d) == d
    assert s.describe(d) == EXAMPLE
    rng = np.random.default_rng(0)
    for _ in range(50):
        d = s.sample(rng)
        assert s.from_string(s.to_string(d)) == d
    assert EDGES == ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))


@pytest.mark.parametrize("bad", ["|nor_conv_3x3~0|+|none~0|none~1|", "|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|",
                                 "|none~1|+|none~0|none~1|+|none~0|none~1|none~2|",
                                 "none~0+|none~0|none~1|+|none~0|none~1|none~2|", 3])
def test_bad_strings_are_refused(bad):
    with pytest.raises(DecisionError):
        Nb201Space().decode(bad)


def test_bad_decisions_and_options_are_refused():
    s = Nb201Space()
    with pytest.raises(DecisionError, match="edges\\[2\\]"):
        s.decode({"edges": ["none", "none", "sep_conv_3x3", "none", "none", "none"]})
    with pytest.raises(DecisionError):
        s.decode({"edges": ["none"] * 5})
    with pytest.raises(SpaceError):
        get_space("nb201", cells=0)
    assert get_space("nb201").name == "nb201" and "nb201" in __import__("search.spaces").spaces.space_names()


def test_sampling_covers_every_op_and_mutation_changes_one_edge():
    s = Nb201Space()
    rng = np.random.default_rng(1)
    seen = {op for _ in range(100) for op in s.sample(rng)["edges"]}
    assert seen == set(OPS)
    d = s.from_string(EXAMPLE)
    for _ in range(100):
        m = s.mutate(d, rng)
        assert sum(a != b for a, b in zip(m["edges"], d["edges"])) == 1
    with pytest.raises(TypeError):
        s.sample(0)


def test_categorical_view_and_progressive_plan():
    s = Nb201Space()
    assert s.variables() == [(f"edge.{j}.{i}", 5) for j, i in EDGES]
    d = s.from_string(EXAMPLE)
    assert s.from_choices(s.to_choices(d)) == d
    with pytest.raises(DecisionError):
        s.from_choices([5, 0, 0, 0, 0, 0])
    plan = progressive_plan(s)
    assert plan.stages == ((0,), (1, 2), (3, 4, 5)) and plan.unit == "node"
    # undecided nodes pass the node before them on: skip from j-1, none from the others
    assert s.to_string(s.from_choices(plan.filler)) == \
        "|skip_connect~0|+|none~0|skip_connect~1|+|none~0|none~1|skip_connect~2|"


@pytest.mark.parametrize("name", ["random", "evolution", "reinforce", "pnas"])
def test_strategies_ask_and_tell_on_nb201(name):
    from search.store import Candidate

    s = Nb201Space()
    opts = {"surrogate_steps": 20, "ensemble": 1} if name == "pnas" else {}
    strat = get_strategy(name, s, seed=0, **opts)
    for r in range(8):
        specs = strat.ask(2)
        rows = []
        for k, spec in enumerate(specs):
            d = s.decode(spec.decisions)
            err = 1.0 - d["edges"].count("nor_conv_3x3") / 6
            rows.append(Candidate(id=2 * r + k, round=r, op=spec.op, decisions=d, seed=0, status="done",
                                  score=err, metrics={"val_error": err}, parents=list(spec.parents)))
        strat.tell(rows)


# ------------------------------------------------------------------------------ the network
def test_params_and_macs_of_the_all_conv3x3_network():
    c = costmodels.count(Nb201Space().build(ALL_CONV3))
    ref = TinyNetwork(16, 5, genotype_of(ALL_CONV3), 10)
    assert c.params == sum(p.numel() for p in ref.parameters()) == 1_531_546  # NAS-Bench-201's largest: 1.53 M
    assert round(c.macs / 1e6) == 220  # the "220 M FLOPs" of NAS-Bench-201's largest cell (multiply-adds)


@pytest.mark.parametrize("arch", [EXAMPLE, ALL_CONV3,
                                  "|none~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|none~0|none~1|skip_connect~2|",
                                  "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
                                  "|nor_conv_1x1~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|none~1|nor_conv_1x1~2|",
                                  DEAD])
def test_build_is_the_reference_network(arch):
    # with the reference's weights (and non-trivial BN statistics), the same eval-mode output
    ref = TinyNetwork(8, 2, genotype_of(arch), 10).eval()
    _randomise_bn(ref)
    g = Nb201Space().build(arch, cells=2, channels=8)
    copy_reference_weights(ref, g)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = to_fx(g).eval()(x), ref(x)
    assert torch.equal(ours, theirs), (ours - theirs).abs().max()  # bit for bit (sums in the reference's order)
    verify_onnx(g, inputs=[x.numpy()], rtol=1e-4, atol=1e-5).raise_if_failed()


def test_dead_edges_are_not_counted():
    # node 1's conv feeds only none edges: it cannot change the output, and archir drops it (the reference
    # keeps and counts it): a c x c 3x3 conv and a BN of c in each of the 5 cells of each stage
    ref = TinyNetwork(16, 5, genotype_of(DEAD), 10)
    dead = sum(5 * (c * c * 9 + 2 * c) for c in (16, 32, 64))
    assert costmodels.count(Nb201Space().build(DEAD)).params == sum(p.numel() for p in ref.parameters()) - dead


def test_params_match_the_reference_for_every_op():
    # each op alone on every edge: params equal the reference's
    for op in OPS:
        arch = "+".join("|" + "|".join(f"{op}~{i}" for i in range(j)) + "|" for j in (1, 2, 3))
        ref = TinyNetwork(16, 5, genotype_of(arch), 10)
        assert costmodels.count(Nb201Space().build(arch)).params == sum(p.numel() for p in ref.parameters()), op


def test_supernet_derives_the_built_network():
    s = Nb201Space()
    sn = s.supernet(cells=1, channels=4)
    rng = np.random.default_rng(3)
    for _ in range(5):
        d = s.sample(rng)
        assert s.derive(sn, d).structural_hash() == s.build(d, cells=1, channels=4).structural_hash()
    assert s.supernet_decisions(EXAMPLE)["edge.2.1"] == "avg_pool_3x3"


def _evolve(retries: int, n: int = 150) -> list[str]:
    from search.store import Candidate

    s = Nb201Space()
    strat = get_strategy("evolution", s, seed=0, population=20, sample=5, retries=retries)
    asked = []
    for i in range(n):
        (spec,) = strat.ask(1)
        d = s.decode(spec.decisions)
        asked.append(s.to_string(d))
        err = 1.0 - (d["edges"].count("nor_conv_3x3") + 0.5 * d["edges"].count("skip_connect")) / 6
        strat.tell([Candidate(id=i, round=i, op=spec.op, decisions=d, seed=0, status="done", score=err,
                              metrics={"val_error": err}, parents=list(spec.parents))])
    return asked


def test_evolution_does_not_ask_for_an_architecture_twice():
    # textbook aging evolution (retries=0) re-evaluates repeats once the population converges; by default a
    # repeated child is mutated again from the same parent
    assert len(set(_evolve(0))) < 150
    assert len(set(_evolve(20))) == 150
    with pytest.raises(ValueError, match="retries"):
        get_strategy("evolution", Nb201Space(), seed=0, retries=-1)
