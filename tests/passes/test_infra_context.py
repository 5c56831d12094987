"""The pass context: instruments for every ``@graph_pass`` call (``passes.instruments``, ``ARCHIR_VERIFY``),
nested passes, ``passes.changed``, fixed points from the manager, and bugs that keep their traceback."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings

import archir
from archir import samples

import passes
from passes import (CheckPreserved, DumpIR, FunctionNotPreserved, PassManager, PostconditionError, Timing, Verify,
                    bind, changed, fixed_point, graph_pass, instruments)
from passes.canonicalize import _elim_identity, _fold_bn
from passes._rewrite import remove_dead
from passes.infra import active_instruments
from passes.remove_op import zero_paths
from tests.passes import SAMPLE_BUILDERS, breaks_function, sample
from tests.strategies import graphs


@pytest.fixture(scope="module")
def g():
    return samples.chain()


@graph_pass(preserves="function")
def leaves_nan(g):
    g = g.copy()
    w = g.node("head").params["weight"].copy()
    w[0, 0] = np.nan
    g.nx.nodes["head"]["params"] = {**g.nx.nodes["head"]["params"], "weight": w}  # past set_params' check
    return g


class Spy:
    nested = False

    def __init__(self, nested=False):
        self.nested = nested
        self.seen = []

    def run_before_pass(self, p, g):
        self.seen.append(f"before {passes.pass_name(p)}")

    def run_after_pass(self, p, before, after):
        self.seen.append(f"after {passes.pass_name(p)}")


# --------------------------------------------------------------------------- the context


def test_instruments_apply_to_a_direct_call_inside_the_block_only(g, monkeypatch):
    monkeypatch.setenv("ARCHIR_VERIFY", "0")
    spy = Spy()
    passes.deepen(g, after="l0.relu")
    with instruments(spy) as got:
        assert got == (spy,)
        passes.deepen(g, after="l0.relu")
        passes.insert_bn(g, after="l1.conv")
    passes.insert_bn(g, after="l1.conv")
    assert spy.seen == ["before deepen", "after deepen", "before insert_bn", "after insert_bn"]
    with pytest.raises(TypeError, match="is not a pass instrument"):
        with instruments(object()):
            pass


def test_check_preserved_in_a_block_catches_a_direct_call_and_names_the_pass(g, monkeypatch):
    monkeypatch.setenv("ARCHIR_VERIFY", "0")
    breaks_function(g)  # no instruments: nothing checks the promise
    chk = CheckPreserved()
    with instruments(chk):
        passes.deepen(g, after="l0.relu")
        with pytest.raises(FunctionNotPreserved) as ei:
            breaks_function(g)
    msg = str(ei.value)
    assert ei.value.pass_name == "breaks_function" and msg.startswith("pass 'breaks_function': output 'head'"), msg
    assert "declared @graph_pass(preserves='function')" in msg and not ei.value.report.ok
    assert [name for name, _ in chk.reports] == ["deepen"]


def test_verify_in_a_block(g, monkeypatch):
    monkeypatch.setenv("ARCHIR_VERIFY", "0")
    leaves_nan(g)
    with instruments(Verify()):
        with pytest.raises(PostconditionError, match=r"pass 'leaves_nan': produced an invalid graph: \[finite\]"):
            leaves_nan(g)


def test_timing_records_direct_calls(g):
    with instruments(Timing()) as (t,):
        passes.deepen(g, after="l0.relu")
        passes.canonicalize(g)  # its rules are nested: not timed on their own
    assert [n for n, _ in t.timings] == ["deepen", "canonicalize"] and all(s > 0 for _, s in t.timings)
    with instruments(Timing(nested=True)) as (t,):
        passes.canonicalize(g)
    names = [n for n, _ in t.timings]
    assert names[-1] == "canonicalize" and names[:4] == ["eliminate_identity", "fold_batchnorm",
                                                         "prune_zero_paths", "eliminate_dead"]
    assert len(names) == 1 + 4 * 2  # two rounds: the second changes nothing


def test_dump_ir_writes_files_for_direct_calls(g, tmp_path):
    with instruments(DumpIR(tmp_path / "d")) as (d,):
        g2 = passes.deepen(g, after="l0.relu")
        g3 = passes.insert_bn(g2, after="l1.conv")
    names = sorted(p.name for p in (tmp_path / "d").glob("*.json"))
    assert names == ["000_input.json", "001_deepen.json", "002_insert_bn.json"] and len(d.paths) == 3
    assert archir.load(tmp_path / "d" / "000_input.json").weights_hash() == g.weights_hash()
    assert archir.load(tmp_path / "d" / "002_insert_bn.json").weights_hash() == g3.weights_hash()


def test_blocks_nest_and_add_up(g, monkeypatch):
    monkeypatch.setenv("ARCHIR_VERIFY", "0")
    a, b = Spy(), Spy()
    with instruments(a):
        with instruments(b, a):  # a is already active: it runs once
            assert active_instruments() == [a, b]
            passes.deepen(g, after="l0.relu")
        passes.insert_bn(g, after="l1.conv")
    assert a.seen == ["before deepen", "after deepen", "before insert_bn", "after insert_bn"]
    assert b.seen == ["before deepen", "after deepen"]
    assert active_instruments() == []


def test_nested_passes_are_instrumented_once_by_default(g, monkeypatch):
    monkeypatch.setenv("ARCHIR_VERIFY", "0")
    outer_only, every = Spy(), Spy(nested=True)

    @graph_pass(preserves="function")
    def two_steps(g):
        return passes.insert_bn(passes.deepen(g, after="l0.relu"), after="l1.conv")

    with instruments(outer_only, every):
        two_steps(g)
    assert outer_only.seen == ["before two_steps", "after two_steps"]
    assert every.seen == ["before two_steps", "before deepen", "after deepen", "before insert_bn",
                          "after insert_bn", "after two_steps"]


# --------------------------------------------------------------------------- ARCHIR_VERIFY


@pytest.mark.no_verify(reason="the test turns ARCHIR_VERIFY on and off itself")
def test_archir_verify_env_catches_a_non_preserving_pass(g, monkeypatch):
    breaks_function(g)  # the marker turned it off
    monkeypatch.setenv("ARCHIR_VERIFY", "1")
    with pytest.raises(FunctionNotPreserved, match=r"^pass 'breaks_function': output 'head'"):
        breaks_function(g)
    with pytest.raises(PostconditionError, match=r"^pass 'leaves_nan': produced an invalid graph"):
        leaves_nan(g)
    passes.deepen(g, after="l0.relu")  # a pass that keeps its promise is fine
    kinds = [type(i) for i in active_instruments()]
    assert kinds == [Verify, CheckPreserved]
    monkeypatch.setenv("ARCHIR_VERIFY", "0")
    breaks_function(g)


def test_the_suite_runs_with_verification_on():
    if os.environ.get("ARCHIR_VERIFY") != "1":
        pytest.skip("this run turned ARCHIR_VERIFY off (tests/conftest.py only sets a default)")
    assert passes.infra.verify_from_env()
    assert [type(i) for i in active_instruments()] == [Verify, CheckPreserved]


def test_check_preserved_skips_a_supernet(monkeypatch):
    monkeypatch.setenv("ARCHIR_VERIFY", "0")
    g = archir.Graph("super")
    x = g.input("x", (3, 8, 8))
    h = g.add("relu", g.add("conv2d", x, out_channels=4, kernel_size=3, padding=1, name="c"), name="r")
    h = g.add("choice", h, name="ch", candidates=[{"name": "r", "ops": [{"op": "relu"}]},
                                                   {"name": "i", "ops": [{"op": "identity"}]}])
    g.set_outputs(g.add("global_avgpool", h, name="y"))
    g.init_params(0).validate()
    chk = CheckPreserved()
    with instruments(chk):
        passes.insert_bn(g, after="c")  # to_fx cannot run a supernet without its decisions
    assert chk.skipped == [("insert_bn", "a supernet (choice nodes): no function without decisions")]
    assert chk.reports == []


def test_archir_verify_and_an_explicit_instrument_do_not_run_twice(g, monkeypatch):
    monkeypatch.setenv("ARCHIR_VERIFY", "1")
    chk = CheckPreserved()
    pm = PassManager([bind(passes.deepen, after="l0.relu")], instruments=[chk])
    assert [type(i) for i in active_instruments(pm.instruments)] == [CheckPreserved, Verify]
    pm.run(g)
    assert len(chk.reports) == 1 and pm.records[0].max_abs is not None
    spy = Spy()
    with instruments(spy):  # the block's instruments run for the manager's steps, once
        PassManager([bind(passes.deepen, after="l0.relu"), lambda x: x.copy()]).run(g)
    assert spy.seen == ["before deepen", "after deepen", "before <lambda>", "after <lambda>"]


# --------------------------------------------------------------------------- changed


@graph_pass(preserves="function")
def does_nothing(g):
    return g.copy()


def test_changed_is_false_for_a_pass_that_does_nothing_and_true_for_one_that_edits(g):
    assert not changed(g, does_nothing(g)) and not changed(g, g)
    assert changed(g, passes.deepen(g, after="l0.relu"))  # new nodes
    assert changed(g, passes.fold_batchnorm(g))  # new weights, fewer nodes
    assert changed(g, passes.enlarge_kernel(g, node="l1.conv", kernel_size=5))  # attrs and weights
    assert changed(g, breaks_function.__wrapped__(g))  # one bias only
    h = g.copy()
    h.set_params("head", bias=np.array(g.node("head").params["bias"]))  # an equal new array
    assert not changed(g, h)
    h.set_outputs("flatten")
    assert changed(g, h)
    pm = PassManager([does_nothing, bind(passes.deepen, after="l0.relu")])
    pm.run(g)
    assert [r.changed for r in pm.records] == [False, True] and "unchanged" in str(pm.records[0])


# --------------------------------------------------------------------------- fixed points


def _reference_canonicalize(g: archir.Graph, dropout: bool = False) -> archir.Graph:
    """canonicalize as it was before its fixed point moved to the PassManager: one private loop."""
    out = g.copy()
    while True:
        k = _elim_identity(out, dropout) + _fold_bn(out) + zero_paths(out) + remove_dead(out)
        if not k:
            return out.validate()


def _identical(a: archir.Graph, b: archir.Graph) -> bool:
    return (list(a) == list(b) and a.structural_hash() == b.structural_hash() and a.weights_hash() == b.weights_hash()
            and [a.node(n).attrs for n in a] == [b.node(n).attrs for n in b])


@pytest.mark.parametrize("name", sorted(SAMPLE_BUILDERS))
def test_the_managers_fixed_point_gives_canonicalizes_result(name):
    g = sample(name)
    c = passes.canonicalize(g)
    assert _identical(c, _reference_canonicalize(g))
    simplify = fixed_point([passes.eliminate_identity, passes.fold_batchnorm, passes.prune_zero_paths,
                            passes.eliminate_dead])
    assert simplify.preserves == "function" and simplify.pass_name.startswith("fixed_point(eliminate_identity, ")
    assert _identical(simplify(g), c)
    pm = PassManager([passes.eliminate_identity, passes.fold_batchnorm, passes.prune_zero_paths,
                      passes.eliminate_dead], until_fixed_point=True)
    assert _identical(pm.run(g), c)
    last = [r for r in pm.records if r.round == pm.rounds]
    assert len(last) == 4 and not any(r.changed for r in last)


@settings(max_examples=15)
@given(graphs(max_nodes=12))
def test_random_graphs_canonicalize_as_the_private_loop_did(g):
    for dropout in (False, True):
        assert _identical(passes.canonicalize(g, dropout=dropout), _reference_canonicalize(g, dropout))


def test_a_pipeline_that_never_settles_is_a_bug():
    @graph_pass()
    def flip(g):
        g = g.copy()
        g.set_params("head", bias=-g.node("head").params["bias"])
        return g

    with pytest.raises(PostconditionError, match=r"did not reach a fixed point in 3 rounds \(the last round changed "
                                                 r"the graph in: flip\)") as ei:
        PassManager([flip], until_fixed_point=True, max_rounds=3).run(samples.chain())
    from archir.errors import is_user_error

    assert not is_user_error(ei.value)
    with pytest.raises(PostconditionError, match=r"^pass 'fixed_point\(flip\)': the pipeline flip did not reach"):
        fixed_point([flip], max_rounds=2)(samples.chain())
    with pytest.raises(ValueError, match="max_rounds"):
        PassManager([flip], max_rounds=0)


def test_fixed_point_promises_what_every_pass_promises():
    assert fixed_point([passes.deepen, passes.eliminate_dead]).preserves == "function"
    assert fixed_point([passes.remove_op, passes.eliminate_dead]).preserves == "shape"
    assert fixed_point([passes.finalize, passes.eliminate_dead], name="x").preserves is None


# --------------------------------------------------------------------------- bugs keep their traceback


def test_a_bug_inside_a_pass_under_instruments_keeps_its_type_and_traceback(g):
    @graph_pass(preserves="function")
    def buggy(g):
        return [][1]

    @graph_pass(preserves="function")
    def calls_buggy(g):
        return buggy(g)

    with instruments(Verify(), CheckPreserved(), Timing()):
        with pytest.raises(IndexError) as ei:
            calls_buggy(g)
    assert type(ei.value) is IndexError and ei.traceback[-1].name == "buggy"
    assert ei.value.__notes__ == ["in pass 'buggy'", "in pass 'calls_buggy'"]
    with pytest.raises(IndexError) as ei:
        PassManager([calls_buggy]).run(g)
    assert ei.value.__notes__[-1] == "in pass 1 'calls_buggy' failed after: (nothing)"
