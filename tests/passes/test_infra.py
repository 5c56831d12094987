"""The pass contract: ``@graph_pass`` records what a pass promises and enforces the rules."""

import pickle

import pytest

import archir
from archir import samples

import passes
from passes.infra import FunctionNotPreserved, PassError, PostconditionError, PreconditionError, graph_pass


@pytest.fixture(scope="module")
def g():
    return samples.chain()


def test_decorator_records_name_and_promise():
    @graph_pass(preserves="function")
    def noop(g):
        return g.copy()

    assert noop.pass_name == "noop" and noop.preserves == "function"
    assert noop.__doc__ is None and noop.__wrapped__.__name__ == "noop"

    @graph_pass(name="renamed")
    def other(g):
        return g.copy()

    assert other.pass_name == "renamed" and other.preserves is None
    assert passes.pass_name(other) == "renamed"


def test_bad_preserves_value():
    with pytest.raises(ValueError, match="preserves must be one of"):
        graph_pass(preserves="everything")


def test_returning_the_input_is_an_error_for_the_author(g):
    @graph_pass(preserves="function")
    def lazy(g):
        return g

    with pytest.raises(PostconditionError, match="returned its input graph object") as ei:
        lazy(g)
    assert "pass 'lazy'" in str(ei.value) and "g.copy()" in str(ei.value)


def test_non_graph_return(g):
    @graph_pass()
    def bad(g):
        return 42

    with pytest.raises(PostconditionError, match="returned int, not an archir.Graph"):
        bad(g)


def test_non_graph_argument():
    @graph_pass()
    def p(g):
        return g.copy()

    with pytest.raises(PassError, match="expects an archir.Graph"):
        p("not a graph")


@pytest.mark.parametrize("edit, what", [
    (lambda g: g.set_attrs("l0.pool", kernel_size=1), "attrs of node 'l0.pool'"),
    (lambda g: g.set_params("head", bias=g.node("head").params["bias"] + 1), "params of node 'head'"),
    (lambda g: g.set_buffers("l0.bn", running_mean=g.node("l0.bn").buffers["running_mean"] * 0),
     "buffers of node 'l0.bn'"),
    (lambda g: g.set_outputs("flatten"), "inputs/outputs changed"),
    (lambda g: g.add("relu", "head"), "node count changed"),
    (lambda g: g.set_input("l1.relu", 0, "l1.conv"), "edges changed"),
])
def test_mutating_the_input_is_detected(edit, what):
    g = samples.chain()

    @graph_pass()
    def sneaky(g):
        edit(g)
        return g.copy()

    with pytest.raises(PostconditionError, match="changed its input graph") as ei:
        sneaky(g)
    assert what in str(ei.value)


def test_arrays_are_read_only(g):
    with pytest.raises(ValueError):
        g.node("head").params["weight"][0, 0] = 1.0


def test_a_bug_in_a_pass_keeps_its_type_and_traceback(g):
    @graph_pass()
    def buggy(g):
        return {}["missing"]

    with pytest.raises(KeyError) as ei:  # not a PassError: a bug is not a user error
        buggy(g)
    assert type(ei.value) is KeyError and ei.value.__notes__ == ["in pass 'buggy'"]
    assert ei.traceback[-1].name == "buggy"  # the traceback reaches the line that failed


def test_a_bug_in_a_nested_pass_names_every_pass(g):
    @graph_pass()
    def inner(g):
        return 1 / 0

    @graph_pass()
    def outer(g):
        return inner(g)

    with pytest.raises(ZeroDivisionError) as ei:
        outer(g)
    assert ei.value.__notes__ == ["in pass 'inner'", "in pass 'outer'"]
    from archir.errors import is_user_error

    assert not is_user_error(ei.value)


def test_precondition_passes_through_with_the_pass_name(g):
    @graph_pass(preserves="function")
    def picky(g):
        raise PreconditionError("target is not a conv", node="head", hint="pick a conv")

    with pytest.raises(PreconditionError) as ei:
        picky(g)
    msg = str(ei.value)
    assert msg.startswith("pass 'picky': node 'head': target is not a conv") and "how to fix: pick a conv" in msg
    assert ei.value.pass_name == "picky" and ei.value.node == "head"


def test_irerror_passes_through_with_the_pass_name(g):
    @graph_pass()
    def builds_bad(g):
        g = g.copy()
        g.add("conv2d", "flatten", out_channels=4, kernel_size=3)  # flatten is rank 1: ShapeError
        return g

    with pytest.raises(archir.ShapeError) as ei:
        builds_bad(g)
    assert "pass 'builds_bad'" in str(ei.value)


def test_error_hierarchy():
    assert issubclass(PassError, RuntimeError)
    assert issubclass(PreconditionError, PassError) and issubclass(PostconditionError, PassError)
    assert issubclass(FunctionNotPreserved, PostconditionError)


def test_errors_pickle_with_their_fields():
    e = PreconditionError("nope", pass_name="deepen", node="x", hint="do y")
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is PreconditionError and str(e2) == str(e) and e2.node == "x"
    f = FunctionNotPreserved("off", pass_name="p", report=None)
    assert str(pickle.loads(pickle.dumps(f))) == str(f)
