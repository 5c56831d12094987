"""search.spaces: sampling, mutation, encode/decode, build (and NASNet transfer), supernet + derive.

Each space's sampled graphs validate and export to ONNX matching the fx module under ONNX
Runtime; a mutation changes exactly one thing; decisions round-trip through JSON and bad
ones are refused naming the place; ``derive(supernet, d)`` has the structure of ``build(d)``.
"""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import archir
from archir.lower import to_fx, verify_onnx
from search.spaces import ChainSpace, DartsSpace, DecisionError, Space, SpaceError, get_space, simplify, space_names
from search.spaces.darts import GENOTYPE_OPS, OPS

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module", params=["darts", "chain"])
def space(request) -> Space:
    return get_space(request.param, input_shape=SHAPE, num_classes=10)


def _supernet_for(space: Space, d: dict) -> archir.Graph:
    return space.supernet(widths=space.widths(d)) if isinstance(space, ChainSpace) else space.supernet()


def _x(shape=SHAPE, batch=3, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)


def _assert_onnx_matches_fx(g: archir.Graph) -> None:
    verify_onnx(g, inputs=_x(g.node(g.inputs[0]).type.shape), rtol=1e-4, atol=1e-5).raise_if_failed()


# --------------------------------------------------------------------------- registry


def test_get_space_by_name_and_refusals():
    assert space_names() == ["chain", "darts", "nb201", "start"]  # one registry (register_space)
    d = get_space("darts", input_shape=SHAPE, num_classes=10, cells=4, channels=6)
    assert isinstance(d, DartsSpace) and d.name == "darts" and (d.cells, d.channels) == (4, 6)
    assert isinstance(get_space("chain", input_shape=(3, 16, 16), num_classes=5), ChainSpace)
    with pytest.raises(SpaceError, match="unknown search space 'nasbench'") as e:  # a ValueError too
        get_space("nasbench")
    assert "darts" in e.value.hint and isinstance(e.value, ValueError)
    with pytest.raises(SpaceError, match="cellz"):
        get_space("darts", cellz=3)
    for bad in [dict(input_shape=(8, 8)), dict(input_shape=(1, 0, 8)), dict(num_classes=1),
                dict(num_classes=True)]:
        with pytest.raises(ValueError):
            get_space("chain", **bad)
    with pytest.raises(ValueError, match="cells"):
        get_space("darts", cells=0)


def test_sample_refuses_a_non_generator(space):
    with pytest.raises(TypeError, match="default_rng"):
        space.sample(0)


# --------------------------------------------------------------------------- sampling and building


def test_samples_validate_and_export_to_onnx_matching_fx(space):
    rng = np.random.default_rng(0)
    for _ in range(3):
        d = space.sample(rng)
        g = space.build(d, seed=1)
        g.validate()
        assert not g.nodes("choice") and g.node(g.inputs[0]).type.shape == SHAPE
        assert g.node(g.outputs[0]).type.shape == (10,)
        assert g.meta["decisions"] == d and g.meta["space"] == space.name
        json.dumps(d)  # plain JSON
        _assert_onnx_matches_fx(g)


@settings(max_examples=8)
@given(seed=st.integers(0, 2**32 - 1), name=st.sampled_from(["darts", "chain"]))
def test_sampling_is_seeded_and_canonical(seed, name):
    space = get_space(name, input_shape=SHAPE, num_classes=10)
    d = space.sample(np.random.default_rng(seed))
    assert d == space.sample(np.random.default_rng(seed))
    assert space.decode(d) == d and space.encode(d) == json.loads(json.dumps(d, sort_keys=True))
    g1, g2 = space.build(d, seed=3), space.build(d, seed=3)
    _assert_onnx_matches_fx(g1)
    assert g1.structural_hash() == g2.structural_hash() and g1.weights_hash() == g2.weights_hash()
    assert space.build(d, seed=4).weights_hash() != g1.weights_hash()
    assert isinstance(space.describe(d), str) and "\n" not in space.describe(d)


def test_samples_cover_the_space():
    darts = DartsSpace(SHAPE, 10)
    rng = np.random.default_rng(0)
    ops, inputs = set(), set()
    for _ in range(30):
        d = darts.sample(rng)
        for kind in ("normal", "reduce"):
            for e, (op, j) in enumerate(d[kind]):
                ops.add(op)
                inputs.add((e // 2, j))
    assert ops == set(GENOTYPE_OPS) and "none" not in ops
    assert inputs == {(n, j) for n in range(4) for j in range(n + 2)}
    chain = ChainSpace(SHAPE, 10)
    seen = {f: set() for f in ("kernel", "expand", "width", "skip")}
    for _ in range(40):
        for i, layer in enumerate(chain.sample(rng)["layers"]):
            seen["skip"].add((i, layer["skip"]))
            for f in ("kernel", "expand", "width"):
                if f in layer:
                    seen[f].add(layer[f])
    assert seen["kernel"] == {3, 5} and seen["expand"] == {1, 3, 6} and seen["width"] == {8, 12, 16, 24, 32}
    assert (2, True) not in seen["skip"]  # the strided layer is never skipped
    assert {(i, True) for i in (0, 1, 3)} <= seen["skip"]


def test_darts_build_has_the_genotype_ops_and_tied_cells():
    space = DartsSpace(SHAPE, 10, cells=3, channels=4)
    d = {"normal": [["sep_conv_3x3", 0], ["skip_connect", 1], ["max_pool_3x3", 0], ["dil_conv_5x5", 2],
                    ["avg_pool_3x3", 1], ["sep_conv_5x5", 3], ["dil_conv_3x3", 2], ["skip_connect", 4]],
         "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 0], ["sep_conv_3x3", 2],
                    ["avg_pool_3x3", 1], ["skip_connect", 3], ["dil_conv_3x3", 3], ["sep_conv_5x5", 4]]}
    g = space.build(d)
    # cell0 is normal, cells 1 and 2 reduce (8x8 -> 4x4 -> 2x2), channels double
    assert g.node("cell0.out").type.shape == (16, 8, 8)
    assert g.node("cell1.out").type.shape == (32, 4, 4)
    assert g.node("cell2.out").type.shape == (64, 2, 2)
    # normal node 0: a sep conv 3x3 on input 0 (8 steps), input 1 straight in (skip)
    assert g.inputs_of("cell0.n0.add") == ["cell0.n0.i0.7", "cell0.pre1.2"]
    assert g.node("cell0.pre1.2").op == "batchnorm2d"
    assert g.node("cell0.n0.i0.1").attrs["kernel_size"] == 3 and g.node("cell0.n0.i0.1").attrs["groups"] == 4
    assert g.node("cell0.n1.i2.1").attrs["dilation"] == 2 and g.node("cell0.n1.i2.1").attrs["kernel_size"] == 5
    # reduction: edges from the cell inputs stride 2; a strided skip is DARTS' FactorizedReduce
    assert g.node("cell1.n0.i0.0").op == "maxpool2d" and g.node("cell1.n0.i0.0").attrs["stride"] == 2
    assert [g.node(f"cell1.n1.i0.{j}").op for j in range(7)] == ["relu", "conv2d", "slice", "slice", "conv2d",
                                                                 "concat", "batchnorm2d"]
    assert g.node("cell1.n1.i0.1").attrs["stride"] == 2 and g.node("cell1.n1.i0.1").attrs["out_channels"] == 4
    # the cell after a reduction preprocesses its older input with FactorizedReduce too
    assert g.node("cell2.pre0.2").op == "slice" and g.node("cell2.pre0.6").type.shape == (16, 4, 4)  # cell0 (8x8) to cell1 (4x4)
    # both reduction cells carry the same genotype
    for i in (1, 2):
        assert g.node(f"cell{i}.n3.i4.1").attrs["kernel_size"] == 5
        assert g.inputs_of(f"cell{i}.n2.add")[1] == f"cell{i}.n1.add"  # a skip from state 3 = node 1
    # nothing dead: every node reaches the output
    live = nx.ancestors(g.nx, g.outputs[0]) | {g.outputs[0]}
    assert set(g) == live


def test_nasnet_transfer_stacks_the_same_cells():
    for space in (DartsSpace(SHAPE, 10), ChainSpace(SHAPE, 10)):
        d = space.sample(np.random.default_rng(5))
        small = space.build(d, seed=0)
        large = space.build(d, seed=0, cells=6 if space.name == "darts" else 2, channels=16)
        large.validate()
        assert large.num_params() > 2 * small.num_params()
        assert large.meta["decisions"] == d
        _assert_onnx_matches_fx(large)
    darts = DartsSpace(SHAPE, 10)
    d = darts.sample(np.random.default_rng(6))
    big = darts.build(d, cells=6, channels=12)
    assert sum(1 for n in big if n.endswith(".out")) == 6
    assert big.node("stem.conv").attrs["out_channels"] == 36
    # cells of a kind repeat the genotype: the same node ops at the same places
    normal_cells = [i for i in range(6) if i not in (2, 4)]
    ops = [sorted(n.split(".", 1)[1] + ":" + big.node(n).op for n in big if n.startswith(f"cell{i}.n"))
           for i in normal_cells]
    assert all(o == ops[0] for o in ops[1:])


# --------------------------------------------------------------------------- mutation


@settings(max_examples=15)
@given(seed=st.integers(0, 2**32 - 1))
def test_darts_mutation_changes_exactly_one_edge(seed):
    space = DartsSpace(SHAPE, 10)
    rng = np.random.default_rng(seed)
    d = space.sample(rng)
    m = space.mutate(d, rng)
    assert m != d and space.decode(m) == m
    changed = []
    for kind in ("normal", "reduce"):
        for n in range(4):
            a = sorted(map(tuple, d[kind][2 * n: 2 * n + 2]))
            b = sorted(map(tuple, m[kind][2 * n: 2 * n + 2]))
            if a != b:
                changed.append((kind, n, set(a) ^ set(b)))
    assert len(changed) == 1
    (_, _, diff), = changed
    assert len(diff) == 2  # one (op, input) edge swapped for another: op or input changed, not both
    (o1, j1), (o2, j2) = sorted(diff)
    assert (o1 == o2) != (j1 == j2)
    assert d == space.sample(np.random.default_rng(seed))  # the input was not modified


@settings(max_examples=15)
@given(seed=st.integers(0, 2**32 - 1))
def test_chain_mutation_changes_exactly_one_field_of_one_layer(seed):
    space = ChainSpace(SHAPE, 10)
    rng = np.random.default_rng(seed)
    d = space.sample(rng)
    m = space.mutate(d, rng)
    assert m != d and space.decode(m) == m
    diffs = [i for i in range(space.layers) if d["layers"][i] != m["layers"][i]]
    assert len(diffs) == 1
    a, b = d["layers"][diffs[0]], m["layers"][diffs[0]]
    if a["skip"] or b["skip"]:
        assert a["skip"] != b["skip"]  # skipped <-> an MBConv layer
    else:
        assert sum(a[f] != b[f] for f in ("kernel", "expand", "width")) == 1


def test_mutation_chains_explore():
    for space in (DartsSpace(SHAPE, 10), ChainSpace(SHAPE, 10)):
        rng = np.random.default_rng(0)
        d = space.sample(rng)
        seen = {json.dumps(d, sort_keys=True)}
        for _ in range(20):
            d = space.mutate(d, rng)
            seen.add(json.dumps(d, sort_keys=True))
        assert len(seen) >= 15


# --------------------------------------------------------------------------- encode / decode


def test_encode_decode_round_trip_through_json(space):
    rng = np.random.default_rng(3)
    for _ in range(5):
        d = space.sample(rng)
        text = json.dumps(space.encode(d))
        assert space.decode(json.loads(text)) == d
        assert list(space.encode(d)) == sorted(space.encode(d))


def test_darts_decode_canonicalises_edge_order_and_numpy_ints():
    space = DartsSpace(SHAPE, 10)
    d = space.sample(np.random.default_rng(0))
    swapped = {k: [list(p) for p in v] for k, v in d.items()}
    swapped["normal"][0], swapped["normal"][1] = swapped["normal"][1], swapped["normal"][0]
    swapped["reduce"][6][1] = np.int64(swapped["reduce"][6][1])
    swapped["reduce"] = [tuple(p) for p in swapped["reduce"]]
    assert space.decode(swapped) == d
    assert space.build(swapped).structural_hash() == space.build(d).structural_hash()


def _darts_ok() -> dict:
    return DartsSpace(SHAPE, 10).sample(np.random.default_rng(0))


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.pop("reduce"), "keys"),
    (lambda d: d.update(extra=[]), "keys"),
    (lambda d: d.update(normal=d["normal"][:7]), "8 .op, input. pairs"),
    (lambda d: d["normal"].__setitem__(2, ["conv_7x7", 0]), r"normal\[2\]: op 'conv_7x7'"),
    (lambda d: d["normal"].__setitem__(2, ["none", 0]), r"normal\[2\]: op 'none'.*\n.*another input"),
    (lambda d: d["reduce"].__setitem__(0, ["sep_conv_3x3", 2]), r"reduce\[0\]: input 2 is not a state node 0"),
    (lambda d: d["reduce"].__setitem__(4, ["sep_conv_3x3", -1]), r"reduce\[4\]: input -1"),
    (lambda d: d["reduce"].__setitem__(4, ["sep_conv_3x3", True]), r"reduce\[4\]: input True"),
    (lambda d: d["reduce"].__setitem__(4, ["sep_conv_3x3", 1.0]), r"reduce\[4\]: input 1.0"),
    (lambda d: d["reduce"].__setitem__(4, "sep_conv_3x3"), r"reduce\[4\]: expected an \[op, input\] pair"),
    (lambda d: d["normal"].__setitem__(7, [d["normal"][6][0], d["normal"][6][1]]), "both edges of node 3"),
])
def test_darts_decode_rejects_bad_dicts(edit, match):
    d = json.loads(json.dumps(_darts_ok()))
    edit(d)
    with pytest.raises(DecisionError, match=match) as e:
        DartsSpace(SHAPE, 10).decode(d)
    assert isinstance(e.value, ValueError)
    with pytest.raises(DecisionError):
        DartsSpace(SHAPE, 10).build(d)
    with pytest.raises(DecisionError):
        DartsSpace(SHAPE, 10).decode([1, 2])


def _chain_ok() -> dict:
    return {"layers": [{"kernel": 3, "expand": 3, "width": 16, "skip": False}, {"skip": True},
                       {"kernel": 5, "expand": 1, "width": 24, "skip": False},
                       {"kernel": 3, "expand": 6, "width": 24, "skip": False}]}


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.update(extra=1), "one key 'layers'"),
    (lambda d: d["layers"].pop(), "4 layers"),
    (lambda d: d["layers"][0].update(kernel=4), r"layers\[0\].kernel: kernel 4 is not an option"),
    (lambda d: d["layers"][0].update(kernel="3"), r"layers\[0\].kernel"),
    (lambda d: d["layers"][0].update(width=32), r"layers\[0\].width: width 32 is not an option.*\n.*8, 12, 16"),
    (lambda d: d["layers"][3].update(expand=True), r"layers\[3\].expand"),
    (lambda d: d["layers"][3].pop("expand"), r"layers\[3\]: keys"),
    (lambda d: d["layers"][3].update(depth=2), r"layers\[3\]: keys"),
    (lambda d: d["layers"][2].update(skip=True), r"layers\[2\].skip: this layer has stride 2"),
    (lambda d: d["layers"].__setitem__(1, {"skip": True, "kernel": 3}), r"layers\[1\]: a skipped layer"),
    (lambda d: d["layers"].__setitem__(1, {"skip": "yes"}), r"layers\[1\].skip"),
    (lambda d: d["layers"].__setitem__(1, 7), r"layers\[1\]: expected a dict"),
])
def test_chain_decode_rejects_bad_dicts(edit, match):
    space = ChainSpace(SHAPE, 10)
    d = _chain_ok()
    assert space.decode(d) == d
    edit(d)
    with pytest.raises(DecisionError, match=match):
        space.decode(d)


def test_chain_decode_fills_skip_false():
    space = ChainSpace(SHAPE, 10)
    d = _chain_ok()
    del d["layers"][0]["skip"]
    assert space.decode(d) == _chain_ok()


# --------------------------------------------------------------------------- supernets


def test_supernet_derive_equals_build(space):
    rng = np.random.default_rng(11)
    sups = {}
    for _ in range(4):
        d = space.sample(rng)
        key = json.dumps(space.widths(d)) if isinstance(space, ChainSpace) else ""
        sup = sups.setdefault(key, _supernet_for(space, d))
        derived = space.derive(sup, d)
        built = space.build(d)
        assert derived.structural_hash() == built.structural_hash()
        assert not derived.nodes("choice") and not derived.nodes("zero") and not derived.nodes("identity")
        # the plain archir.derive agrees too, before dropping the unselected edges
        raw = archir.derive(sup, space.supernet_decisions(d))
        assert simplify(raw.copy()).structural_hash() == built.structural_hash()
        # weight sharing: the derived graph carries the supernet's candidate weights
        assert derived.weights_hash() != built.weights_hash()


def test_darts_supernet_layout_and_ties():
    space = DartsSpace(SHAPE, 10, cells=3, channels=4)
    sup = space.supernet(seed=0)
    keys = archir.decision_keys(sup)
    # 2 kinds x (2 + 3 + 4 + 5) input edges, 8 ops each, tied across cells of a kind
    assert len(keys) == 2 * 14 and all(v == list(OPS) for v in keys.values())
    assert sum(1 for n in sup.nodes("choice") if n.attrs["tie"] == "reduce.n3.i4") == 2  # cells 1 and 2
    assert sum(1 for n in sup.nodes("choice") if n.attrs["tie"] == "normal.n0.i0") == 1
    assert sup.node("cell1.n0.i0").type.shape == (8, 4, 4)  # a strided reduction edge
    dec = space.supernet_decisions(space.sample(np.random.default_rng(0)))
    assert set(dec) == set(keys) and sum(v != "none" for v in dec.values()) == 16


@pytest.mark.parametrize("mode", ["softmax", "gumbel", "sample", "fixed"])
def test_supernets_train_under_every_choice_mode(space, mode):
    d = space.sample(np.random.default_rng(2))
    sup = _supernet_for(space, d)
    kw = {"decisions": space.supernet_decisions(d)} if mode == "fixed" else {}
    torch.manual_seed(0)
    gm = to_fx(sup, choice_mode=mode, **kw).train()
    x = torch.from_numpy(_x(batch=4))
    loss = torch.nn.functional.cross_entropy(gm(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = [p.grad for p in archir.lower.weight_parameters(gm) if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if mode in ("softmax", "gumbel"):
        assert all(p.grad is not None for p in archir.lower.arch_parameters(gm))


def test_fixed_mode_supernet_computes_the_derived_graph():
    for space in (DartsSpace(SHAPE, 10, cells=2, channels=4), ChainSpace(SHAPE, 10)):
        d = space.sample(np.random.default_rng(4))
        sup = _supernet_for(space, d)
        x = torch.from_numpy(_x())
        with torch.no_grad():
            fixed = to_fx(sup, choice_mode="fixed", decisions=space.supernet_decisions(d, sup)).eval()(x)
            derived = to_fx(space.derive(sup, d)).eval()(x)
        torch.testing.assert_close(fixed, derived, rtol=1e-5, atol=1e-5)


def test_darts_genotype_of_takes_the_strongest_non_none_edges():
    space = DartsSpace(SHAPE, 10, cells=1, channels=4)
    sup = space.supernet()
    d = space.sample(np.random.default_rng(9))
    from archir.graph import freeze_array
    for key, op in space.supernet_decisions(d).items():
        logits = np.zeros(len(OPS))
        logits[0] = 5.0  # "none" strongest everywhere: DARTS ignores it
        if op != "none":
            logits[OPS.index(op)] = 3.0
        sup.arch[key] = freeze_array(logits)
    assert space.genotype_of(sup) == d


def test_chain_supernet_widths_and_skip_candidates():
    space = ChainSpace(SHAPE, 10)
    sup = space.supernet()
    assert sup.meta["widths"] == [16, 16, 32, 32]
    names = archir.decision_keys(sup)
    assert list(names) == ["layer0", "layer1", "layer2", "layer3"]
    assert "skip" not in names["layer0"] and "skip" in names["layer1"]  # stem 8 -> 16 changes shape
    assert "skip" not in names["layer2"] and "skip" in names["layer3"]  # stride 2 vs same shape
    assert len(names["layer0"]) == 6
    d = {"layers": [{"kernel": 3, "expand": 1, "width": 16, "skip": False}, {"skip": True},
                    {"kernel": 5, "expand": 6, "width": 32, "skip": False}, {"skip": True}]}
    assert space.widths(d) == [16, 16, 32, 32]
    assert space.derive(sup, d).structural_hash() == space.build(d).structural_hash()
    other = {"layers": [dict(d["layers"][0], width=8)] + d["layers"][1:]}
    with pytest.raises(DecisionError, match="widths"):
        space.derive(sup, other)


@pytest.mark.parametrize("name", ["darts", "chain"])
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_categorical_view_round_trips(name, seed):
    # controllers and priors see a space as categorical variables; every point maps to one index list
    space = get_space(name)
    rng = np.random.default_rng(seed)
    d = space.sample(rng)
    names = space.variables()
    ch = space.to_choices(d)
    assert len(ch) == len(names) and all(0 <= c < n for c, (_, n) in zip(ch, names))
    assert space.from_choices(ch) == d
    # and every index list is a point of the space
    rand = [int(rng.integers(n)) for _, n in names]
    d2 = space.from_choices(rand)
    assert space.decode(d2) == d2


@pytest.mark.parametrize("name", ["darts", "chain"])
def test_categorical_view_refuses_bad_choices(name):
    space = get_space(name)
    names = space.variables()
    with pytest.raises(DecisionError, match="expected"):
        space.from_choices([0] * (len(names) - 1))
    bad = [0] * len(names)
    bad[0] = names[0][1]
    with pytest.raises(DecisionError, match="out of range"):
        space.from_choices(bad)


def test_register_space_adds_a_space_by_name_and_refuses_a_clash():
    from search.spaces import Nb201Space, register_space
    from search.spaces import base as spaces_base

    class Tiny201(Nb201Space):
        name = "tiny201-test"

    try:
        assert register_space(Tiny201) is Tiny201 and register_space(Tiny201) is Tiny201  # idempotent
        assert "tiny201-test" in space_names() and isinstance(get_space("tiny201-test"), Tiny201)

        class Other(Nb201Space):
            name = "tiny201-test"

        with pytest.raises(SpaceError, match="registered already"):
            register_space(Other)

        class Nameless(Nb201Space):
            name = ""

        with pytest.raises(SpaceError, match="has no name"):
            register_space(Nameless)
    finally:
        spaces_base._REGISTRY.pop("tiny201-test", None)
