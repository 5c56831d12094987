"""The general DARTS/NASNet cell space: N nodes, any of the reference's ops, a node that reads one
state twice, NASNet's loose-ends concat, the ImageNet stem, the auxiliary head and drop-path; and
every one-shot and ask/tell driver on a 5-node space."""

from __future__ import annotations

import json
import types

import networkx as nx
import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from networkx.algorithms import isomorphism

import archir
import costmodels
from archir.errors import ArchirError
from archir.cells import PRIMITIVES, cell_op
from archir.frontend import from_torch
from archir.lower import to_fx, to_onnx
from search.experiment import ExperimentConfig, export_candidate, load_candidate_graph, run_search
from search.spaces import DartsSpace, DecisionError, SpaceError, get_space
from search.spaces.darts import KINDS, OPS
from search.spaces.genotypes import GENOTYPES
from search.store import Store
from search.train import TrainConfig, train, training_loss
from tests.passes import assert_onnx_agrees
from tests.search.darts_reference import REFERENCE_FIGURES, NetworkCIFAR

SHAPE = (1, 8, 8)
#: a NASNet-style space: 5 nodes, the 7x7 separable conv and the 1x7-7x1 conv, one state read twice
FIVE = {"nodes": 5, "ops": ["sep_conv_3x3", "sep_conv_7x7", "max_pool_3x3", "skip_connect", "conv_7x1_1x7"],
        "same_input": True}
TRAIN = {"epochs": 1, "batch_size": 128, "lr": 0.05}


def _space(**kw) -> DartsSpace:
    return DartsSpace(SHAPE, 10, **{"cells": 3, "channels": 4, **kw})


# --------------------------------------------------------------------------- space options

def test_options_are_checked_and_every_problem_is_listed():
    with pytest.raises(SpaceError) as e:
        _space(nodes=0, ops=["sep_conv_9x9", "none"], concat="ends", stem="mnist")
    msg = str(e.value)
    for part in ("nodes must be", "sep_conv_9x9", "concat must be", "stem must be"):
        assert part in msg, part
    with pytest.raises(SpaceError, match="besides 'none'"):
        _space(ops=["none"])
    with pytest.raises(SpaceError, match="twice"):
        _space(ops=["sep_conv_3x3", "sep_conv_3x3"])
    with pytest.raises(SpaceError, match="cells must be a positive int"):
        _space(cells=0)


def test_a_genotype_the_space_cannot_hold_lists_every_reason():
    from search.spaces.genotypes import DARTS_V2, NASNet

    darts = DartsSpace((3, 32, 32), 10)  # 4 nodes, DARTS' ops, every node concatenated, two distinct inputs
    with pytest.raises(DecisionError) as e:
        darts.from_genotype(NASNet)
    msg = str(e.value)
    # the node count of both cells, the op it lacks, a node reading one state twice: all in one error
    assert "normal: expected a list of 8 [op, input] pairs (4 nodes), got 10" in msg and "reduce: expected" in msg
    assert "reduce[1]: op 'sep_conv_7x7' is not a genotype op" in msg
    assert "normal[2]: both edges of node 1 read input 0" in msg and "for_genotype" in msg
    bad = DARTS_V2._replace(normal=[("sep_conv_9x9", 0), ("sep_conv_3x3", 7), *DARTS_V2.normal[2:]],
                            reduce_concat=[2, 3])
    with pytest.raises(DecisionError) as e:
        darts.from_genotype(bad)
    msg = str(e.value)
    assert "3 problems" in msg
    assert "normal[0]: op 'sep_conv_9x9'" in msg and "normal[1]: input 7 is not a state node 0 can read" in msg
    assert "reduce_concat: concat [2, 3] is not [2, 3, 4, 5]" in msg
    with pytest.raises(DecisionError, match="needs the reduce cell"):
        darts.from_genotype(DARTS_V2.normal)


def test_each_primitive_is_defined_once_and_keeps_the_shape():
    g = archir.Graph("ops")
    x = g.input("x", (8, 8, 8))
    for op in PRIMITIVES:
        for stride in (1, 2):
            from archir.cells import add_steps
            y = add_steps(g, x, cell_op(op, 8, stride), f"{op}.s{stride}")
            assert g.node(y).type.shape == ((8, 8, 8) if stride == 1 else (8, 4, 4)), (op, stride)
    with pytest.raises(ArchirError, match="unknown cell op"):
        cell_op("sep_conv_9x9", 8)


@settings(max_examples=12, deadline=None)
@given(nodes=st.integers(1, 6), same=st.booleans(), concat=st.sampled_from(["all", "loose"]),
       ops=st.sets(st.sampled_from([op for op in PRIMITIVES if op != "none"]), min_size=1, max_size=4),
       seed=st.integers(0, 2**31))
def test_any_setting_samples_mutates_encodes_and_builds(nodes, same, concat, ops, seed):
    space = DartsSpace(SHAPE, 10, cells=3, channels=4, nodes=nodes, ops=sorted(ops), same_input=same,
                       concat=concat)
    rng = np.random.default_rng(seed)
    d = space.sample(rng)
    assert space.decode(d) == d and space.decode(json.loads(json.dumps(space.encode(d)))) == d
    assert space.from_choices(space.to_choices(d)) == d
    assert space.from_genotype(space.to_genotype(d)) == d
    for kind in KINDS:
        assert len(d[kind]) == 2 * nodes
        for n in range(nodes):
            (a, i), (b, j) = d[kind][2 * n: 2 * n + 2]
            assert {a, b} <= ops and 0 <= i <= j < n + 2 and (same or i < j)
    if nodes == 1 and len(ops) == 1 and not same:
        with pytest.raises(DecisionError, match="no mutation"):  # a space of one point
            space.mutate(d, rng)
        return
    m = space.mutate(d, rng)
    changed = [(k, e) for k in KINDS for e in range(2 * nodes) if m[k][e] != d[k][e]]
    assert m != d and space.decode(m) == m and len({k for k, _ in changed}) == 1
    g = space.build(d, seed=1)
    assert g.node(g.outputs[0]).type.shape == (10,)
    # the cell output concatenates exactly the states the rule names
    for kind, cell in (("normal", 0), ("reduce", 1)):
        states = space.concat_of(d, kind)
        width = len(states) * 4 * (2 if kind == "reduce" else 1)
        out = f"cell{cell}.out"
        if len(states) > 1 and out in g:  # (a cell nothing reads later is dropped)
            assert g.node(out).type.shape[0] == width
    assert_onnx_agrees(g)


def test_a_node_may_read_one_state_twice_only_when_the_space_says_so():
    pairs = [["sep_conv_3x3", 0], ["max_pool_3x3", 0]] + [["sep_conv_3x3", 0], ["sep_conv_3x3", 1]] * 3
    d = {"normal": pairs, "reduce": pairs}
    with pytest.raises(DecisionError, match="both edges of node 0 read input 0") as e:
        _space().decode(d)
    assert "same_input=True" in e.value.hint or "same_input=True" in str(e.value)
    space = _space(same_input=True)
    g = space.build(space.decode(d))
    # two edges of node 0 read state 0: two differently named edge chains, one sum
    assert g.node("cell0.n0.i0.0").op == "maxpool2d" and g.node("cell0.n0.i0.s1.0").op == "relu"
    assert_onnx_agrees(g)


def test_loose_concat_takes_the_nodes_nothing_reads():
    space = _space(concat="loose")
    pairs = [["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ["sep_conv_3x3", 0], ["sep_conv_3x3", 2],
             ["sep_conv_3x3", 1], ["sep_conv_3x3", 3], ["sep_conv_3x3", 0], ["sep_conv_3x3", 1]]
    d = space.decode({"normal": pairs, "reduce": pairs})
    assert space.concat_of(d, "normal") == [4, 5]  # nodes 0 and 1 (states 2, 3) are read
    g = space.build(d)
    assert [g.node(p).id for p in g.inputs_of("cell0.out")] == ["cell0.n2.add", "cell0.n3.add"]
    assert g.node("cell0.out").type.shape == (8, 8, 8)
    with pytest.raises(SpaceError, match="no supernet"):
        space.supernet()
    all_ = _space()
    assert all_.concat_of(all_.decode(d), "normal") == [2, 3, 4, 5]


def test_five_node_supernet_derives_exactly_the_built_network():
    space = _space(**FIVE)
    sup = space.supernet()
    keys = archir.decision_keys(sup)
    # every node n reads each of its n + 2 states on two edges
    assert len([k for k in keys if k.startswith("normal.")]) == 2 * sum(n + 2 for n in range(5))
    d = space.sample(np.random.default_rng(3))
    derived = space.derive(sup, d)
    assert derived.structural_hash() == space.build(d).structural_hash()
    assert space.genotype_from_probs({}) == space.decode(space.genotype_from_probs({}))


def test_start_genotype_fills_the_options_it_needs():
    space = get_space("darts", input_shape=(3, 32, 32), num_classes=10, start_genotype="NASNet")
    assert (space.nodes, space.same_input, space.concat) == (5, True, "loose")
    from search.spaces.genotypes import NASNet
    assert space.seeds == [space.from_genotype(NASNet)] and space.to_genotype(space.seeds[0]).reduce_concat == [4, 5, 6]
    darts = get_space("darts", start_genotype="DARTS_V2")
    assert (darts.nodes, darts.same_input, darts.concat, darts.supernet_ops) == (4, False, "all", OPS)
    with pytest.raises(DecisionError, match="pairs"):  # an explicit option the genotype does not fit
        get_space("darts", start_genotype="NASNet", nodes=4)
    with pytest.raises(SpaceError, match="DARTS_V2"):
        get_space("darts", start_genotype="DARTS_V9")


# --------------------------------------------------------------------------- evaluation networks

def test_imagenet_stem_runs_the_cells_at_an_eighth_of_the_input():
    space = DartsSpace((3, 64, 64), 100, cells=3, channels=8, stem="imagenet")
    d = space.sample(np.random.default_rng(0))
    g = space.build(d)
    assert g.node("stem0.bn1").type.shape == (8, 16, 16) and g.node("stem1.2").type.shape == (8, 8, 8)
    assert g.node("cell0.pre0.0").op == "relu" and "slice" in {n.op for n in g.nodes() if n.id.startswith("cell0.pre0.")}
    assert g.node("cell2.out").type.shape[1:] == (2, 2)
    assert_onnx_agrees(g)
    with pytest.warns(UserWarning, match="stem='imagenet'"):
        DartsSpace((3, 224, 224), 1000, cells=3, channels=8).build(d)


def _aux_net(drop_path=0.2):
    space = DartsSpace((3, 32, 32), 10, cells=3, channels=4)
    d = space.sample(np.random.default_rng(1))
    return space, d, space.build(d, auxiliary=True, drop_path=drop_path)


def test_auxiliary_head_and_drop_path_train_and_vanish_from_the_export():
    space, d, g = _aux_net()
    plain = space.build(d)
    assert [n.id for n in g.nodes("auxiliary")] == ["aux"] and g.outputs[1] == "aux" and g.node("aux").attrs["weight"] == 0.4
    drops = g.nodes("drop_path")
    assert drops and all(n.attrs["p"] == 0.2 for n in drops)
    # one per edge that is not an identity (a strided skip is FactorizedReduce: dropped too)
    red = {0: False, 1: True, 2: True}
    assert len(drops) == sum(1 for cell in range(3) for op, j in d["reduce" if red[cell] else "normal"]
                             if op != "skip_connect" or (red[cell] and j < 2))
    c, c0 = costmodels.count(g), costmodels.count(plain)
    assert (c.params, c.macs) == (c0.params, c0.macs)  # the head is trained, not counted
    assert c.auxiliary_params > 0 and "auxiliary" in c.excluded_note()
    # trains with CE(main) + 0.4 CE(aux)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 24).astype(np.int64)
    ds = types.SimpleNamespace(x_train=x, y_train=y, x_val=x[:8], y_val=y[:8], x_test=x[8:16], y_test=y[8:16])
    res = train(g, ds, TrainConfig(epochs=1, batch_size=24, lr=0.05))
    assert res.ok, res.reason
    gm = to_fx(g).train()
    main, aux = gm(torch.from_numpy(x))
    assert training_loss((main, aux), torch.from_numpy(y), gm.meta["archir_auxiliary"]) > \
        torch.nn.functional.cross_entropy(main, torch.from_numpy(y))
    m = to_onnx(g)
    assert len(m.graph.output) == 1
    assert not {n.op_type for n in m.graph.node} & {"Dropout", "RandomUniformLike", "Bernoulli"}
    assert archir.strip_training(g).structural_hash() == plain.structural_hash()


def test_the_auxiliary_head_needs_the_papers_map_size():
    space = DartsSpace((3, 16, 16), 10, cells=3, channels=4)
    with pytest.raises(ArchirError, match="auxiliary head needs a 8x8"):
        space.build(space.sample(np.random.default_rng(0)), auxiliary=True)


# --------------------------------------------------------------------------- every driver on a 5-node space

@pytest.mark.parametrize("strategy, options", [
    ("darts", {"max_batches": 1}), ("snas", {"max_batches": 1}), ("parsec", {"samples": 2, "max_batches": 1}),
    ("enas", {"max_batches": 1, "controller_steps": 1, "controller_batch": 1, "derive_samples": 2}),
])
def test_one_shot_drivers_search_a_five_node_space(tmp_path, strategy, options):
    cfg = ExperimentConfig(space="darts", space_options={"cells": 1, "channels": 4, **FIVE}, strategy=strategy,
                           budget="1c", strategy_options=options, train=dict(TRAIN, batch_size=64))
    s = run_search(cfg, tmp_path / "r")
    assert s.counts["done"] == 1 and s.best.op == f"derive:{strategy}"
    g, c = load_candidate_graph(tmp_path / "r", best=True)
    assert not g.nodes("choice")
    space = get_space("darts", input_shape=SHAPE, num_classes=10, cells=1, channels=4, **FIVE)
    d = space.decode(c.decisions)
    assert len(d["normal"]) == 10 and {op for op, _ in d["normal"]} <= set(FIVE["ops"])
    rep, _ = export_candidate(tmp_path / "r", tmp_path / "m.onnx", best=True)
    assert rep.max_abs_err < 1e-4


@pytest.mark.parametrize("strategy, options", [
    ("random", {}), ("evolution", {"population": 2, "sample": 2}), ("reinforce", {}),
    ("pnas", {"beam": 1, "surrogate_steps": 20, "ensemble": 1}),
])
def test_ask_tell_drivers_search_a_five_node_loose_space(tmp_path, strategy, options):
    opts = {"cells": 1, "channels": 4, **FIVE, "concat": "loose"}
    if strategy == "pnas":
        opts["concat"] = "all"  # PNAS cells concatenate every node
    cfg = ExperimentConfig(space="darts", space_options=opts, strategy=strategy, strategy_options=options,
                           budget="3c", round_size=1, train=dict(TRAIN))
    s = run_search(cfg, tmp_path / "r")
    assert s.counts["done"] == 3
    space = get_space("darts", input_shape=SHAPE, num_classes=10, **opts)
    with Store.open(tmp_path / "r") as st:
        for c in st.candidates():
            assert space.decode(c.decisions) == c.decisions
    export_candidate(tmp_path / "r", tmp_path / "m.onnx", best=True)
    onnx.checker.check_model(onnx.load(tmp_path / "m.onnx"))


def test_evolution_starts_from_the_start_genotype(tmp_path):
    cfg = ExperimentConfig(space="darts", space_options={"cells": 1, "channels": 4, "start_genotype": "AmoebaNet"},
                           strategy="evolution", strategy_options={"population": 2, "sample": 2}, budget="2c",
                           round_size=1, train=dict(TRAIN))
    run_search(cfg, tmp_path / "r")
    with Store.open(tmp_path / "r") as st:
        first = st.candidates()[0]
    from search.spaces.genotypes import AmoebaNet
    space = get_space("darts", input_shape=SHAPE, num_classes=10, cells=1, channels=4, start_genotype="AmoebaNet")
    assert first.op == "start" and first.decisions == space.from_genotype(AmoebaNet)
    bad = ExperimentConfig(space="darts", space_options={"cells": 1, "start_genotype": "DARTS_V2"},
                           strategy="darts", budget="1c")
    with pytest.raises(ArchirError, match="start"):
        run_search(bad, tmp_path / "o")


# --------------------------------------------------------------------------- the published cells, as the reference builds them

def _labelled(g: archir.Graph) -> "nx.DiGraph":
    # op + attrs + shape per node, the consumer port per edge (none into a sum: a + b = b + a)
    h = nx.DiGraph()
    for n in g.nodes():
        h.add_node(n.id, label=json.dumps([n.op, dict(n.attrs), str(n.type)], sort_keys=True))
    for n in g.nodes():
        for port, u in enumerate(g.inputs_of(n.id)):
            h.add_edge(u, n.id, port=None if n.op == "add" else port)
    return h


class _Logits(torch.nn.Module):
    def __init__(self, net) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[0]  # the reference returns (logits, logits_aux)


@pytest.mark.parametrize("name", [n for n in GENOTYPES if n != "DARTS"])
def test_every_genotype_builds_the_reference_network(name):
    genotype = GENOTYPES[name]
    # the papers' layouts: exactly the reference's parameters and MACs, CIFAR and ImageNet
    for stem, shape, classes, cells, channels, key in (("cifar", (3, 32, 32), 10, 20, 36, "cifar10"),
                                                       ("imagenet", (3, 224, 224), 1000, 14, 48, "imagenet")):
        space = DartsSpace.for_genotype(genotype, shape, classes, stem=stem)
        g = space.build(space.from_genotype(genotype), cells=cells, channels=channels, auxiliary=True)
        c = costmodels.count(g)
        assert {"params": c.params, "macs": c.macs} == REFERENCE_FIGURES[name][key], (name, key)
        assert space.to_genotype(space.from_genotype(genotype)).normal_concat == sorted(genotype.normal_concat)
    # a small CIFAR network: the reference imports as the same graph (up to the order of a sum's
    # inputs), and with its weights archir's network computes exactly what the reference does
    ref = NetworkCIFAR(8, 10, 5, False, genotype).eval()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    imported = from_torch(_Logits(ref), torch.randn(1, 3, 32, 32))
    space = DartsSpace.for_genotype(genotype, (3, 32, 32), 10)
    built = space.build(space.from_genotype(genotype), cells=5, channels=8)
    match = isomorphism.DiGraphMatcher(_labelled(built), _labelled(imported),
                                       node_match=lambda a, b: a["label"] == b["label"],
                                       edge_match=lambda a, b: a["port"] == b["port"])
    mapping = next(match.isomorphisms_iter(), None)
    assert mapping is not None, f"{name}: archir's network and the reference differ in structure"
    for n in built.nodes():
        src = imported.node(mapping[n.id])
        if src.params:
            built.set_params(n.id, **dict(src.params))
        if src.buffers:
            built.set_buffers(n.id, **dict(src.buffers))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(to_fx(built).eval()(x), ref(x)[0])
    assert_onnx_agrees(built)
