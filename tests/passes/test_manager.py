"""``PassManager``: order, records, instruments, and messages naming the failing pass and those before it."""

import functools

import pytest

import archir
from archir import samples

import passes
from passes import (CheckPreserved, DumpIR, FunctionNotPreserved, PassError, PassManager, PostconditionError,
                    PreconditionError, Timing, Verify, bind, graph_pass)
from tests.passes import breaks_function


@pytest.fixture(scope="module")
def g():
    return samples.chain()


def _pipeline():
    return [bind(passes.deepen, after="l0.relu"), bind(passes.insert_bn, after="l1.conv"),
            bind(passes.enlarge_kernel, node="l1.conv", kernel_size=5)]


@graph_pass(preserves="shape")
def breaks_function_but_only_promises_shape(g):
    return breaks_function.__wrapped__(g)


def test_runs_in_order_and_records(g):
    pm = PassManager(_pipeline(), instruments=[Verify(), CheckPreserved(), Timing()])
    out = pm.run(g)
    assert "l0.relu.deepen.conv" in out and "l1.conv.bn" in out and out.node("l1.conv").attrs["kernel_size"] == 5
    assert [r.name for r in pm.records] == ["deepen", "insert_bn", "enlarge_kernel"]
    assert [r.node_delta for r in pm.records] == [3, 1, 0] and [r.index for r in pm.records] == [1, 2, 3]
    assert all(r.max_abs is not None and r.max_abs < 1e-5 and r.seconds > 0 for r in pm.records)
    assert pm.records[0].call == "deepen(after='l0.relu')"
    assert "deepen(after='l0.relu')" in pm.report() and "nodes +3" in pm.report()
    passes.check_preserved(g, out)
    assert len(g) == len(out) - 4  # the input is untouched


def test_partial_and_plain_callables(g):
    pm = PassManager([functools.partial(passes.insert_bn, after="l0.conv"), lambda x: x.copy()],
                     instruments=[CheckPreserved()])
    pm.run(g)
    assert [r.name for r in pm.records] == ["insert_bn", "<lambda>"]
    assert pm.records[0].max_abs is not None and pm.records[1].max_abs is None  # a lambda promises nothing


def test_failure_names_the_pass_and_those_before(g):
    pm = PassManager(_pipeline() + [bind(passes.deepen, after="nope")])
    with pytest.raises(PreconditionError) as ei:
        pm.run(g)
    msg = str(ei.value)
    assert msg.startswith("pass 4 'deepen' failed after: deepen, insert_bn, enlarge_kernel: no node 'nope'"), msg
    assert "legal after targets include" in msg
    assert isinstance(ei.value.__cause__, PreconditionError)


def test_first_pass_failure(g):
    with pytest.raises(PreconditionError, match=r"pass 1 'enlarge_kernel' failed after: \(nothing\): "):
        PassManager([bind(passes.enlarge_kernel, node="l0.conv", kernel_size=1)]).run(g)


def test_check_preserved_instrument_catches_a_broken_promise(g):
    pm = PassManager([bind(passes.deepen, after="l0.relu"), breaks_function], instruments=[CheckPreserved()])
    with pytest.raises(FunctionNotPreserved) as ei:
        pm.run(g)
    msg = str(ei.value)
    assert msg.startswith("pass 2 'breaks_function' failed after: deepen: output 'head'") and "max abs error" in msg
    assert ei.value.report is not None and not ei.value.report.ok
    # a pass that promises only shapes is not checked numerically
    PassManager([breaks_function_but_only_promises_shape], instruments=[CheckPreserved()]).run(g)


def test_verify_instrument():
    def corrupt(g):  # an undeclared pass that leaves a NaN weight
        import numpy as np

        g = g.copy()
        w = g.node("head").params["weight"].copy()
        w[0, 0] = np.nan
        g.set_params("head", weight=w)
        return g

    g = samples.chain()
    with pytest.raises(PostconditionError, match=r"pass 1 'corrupt' failed after: \(nothing\): produced an invalid "
                                                 r"graph: \[finite\] node 'head'"):
        PassManager([corrupt], instruments=[Verify()]).run(g)


def test_undeclared_pass_returning_its_input(g):
    with pytest.raises(PostconditionError, match="returned its input graph object"):
        PassManager([lambda x: x]).run(g)
    with pytest.raises(PostconditionError, match="returned NoneType"):
        PassManager([lambda x: None]).run(g)


def test_a_bug_propagates_unchanged_naming_the_pass(g):
    def boom(g):
        raise ZeroDivisionError("oops")

    with pytest.raises(ZeroDivisionError, match="oops") as ei:
        PassManager([bind(passes.insert_bn, after="l0.conv"), boom]).run(g)
    assert ei.value.__notes__ == ["in pass 2 'boom' failed after: insert_bn"]
    assert ei.traceback[-1].name == "boom"


def test_an_irerror_keeps_its_class(g):
    @graph_pass()
    def builds_bad(g):
        g = g.copy()
        g.add("conv2d", "flatten", out_channels=4, kernel_size=3)  # flatten is rank 1: ShapeError
        return g

    with pytest.raises(archir.ShapeError, match=r"^\[shape\] node '.*': pass 1 'builds_bad' failed after: "
                                               r"\(nothing\): conv2d expects") as ei:
        PassManager([builds_bad]).run(g)
    assert isinstance(ei.value.__cause__, archir.ShapeError) and ei.value.__cause__.pass_name == "builds_bad"


def test_not_callable():
    with pytest.raises(TypeError, match="pass 1 is 'deepen', not a callable"):
        PassManager(["deepen"])


def test_timing_instrument(g):
    t = Timing()
    PassManager(_pipeline(), instruments=[t]).run(g)
    assert [n for n, _ in t.timings] == ["deepen", "insert_bn", "enlarge_kernel"]
    assert "total" in t.summary() and all(s > 0 for _, s in t.timings)


def test_dump_ir_writes_loadable_files(g, tmp_path):
    d = DumpIR(tmp_path / "dump")
    out = PassManager(_pipeline(), instruments=[d]).run(g)
    names = sorted(p.name for p in (tmp_path / "dump").glob("*.json"))
    assert names == ["000_input.json", "001_deepen.json", "002_insert_bn.json", "003_enlarge_kernel.json"]
    assert (tmp_path / "dump" / "001_deepen.safetensors").exists()
    first, last = archir.load(tmp_path / "dump" / "000_input.json"), archir.load(tmp_path / "dump" / names[-1])
    assert first.structural_hash() == g.structural_hash() and last.weights_hash() == out.weights_hash()
    passes.check_preserved(first, last)


def test_dump_ir_file_names_are_safe(g, tmp_path):
    PassManager([lambda x: x.copy()], instruments=[DumpIR(tmp_path)]).run(g)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["000_input.json", "001_lambda.json"]


def test_custom_instrument_hooks_in_order(g):
    seen = []

    class Spy:
        def run_before_pipeline(self, g):
            seen.append("start")

        def run_before_pass(self, p, g):
            seen.append(f"before {passes.pass_name(p)}")

        def run_after_pass(self, p, before, after):
            seen.append(f"after {passes.pass_name(p)} {len(before)}->{len(after)}")

        def run_after_pipeline(self, g):
            seen.append("end")

    PassManager(_pipeline()[:2], instruments=[Spy()]).run(g)
    assert seen == ["start", "before deepen", f"after deepen {len(g)}->{len(g) + 3}", "before insert_bn",
                    f"after insert_bn {len(g) + 3}->{len(g) + 4}", "end"]
