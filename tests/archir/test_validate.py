"""Graph.validate() and the builder on bad input (issue 2, "Bad input").

Every bad input must raise an ``IRError`` subclass (so never a raw traceback from torch or
networkx) whose message names the node and the rule and says how to fix it.
"""

from __future__ import annotations

import numpy as np
import pytest

import archir
from archir import GraphStructureError, IRError, OpSchemaError, ShapeError, WeightError


def net():
    """x -> c1 (conv) -> r (relu); s = add(c1, r); cat = concat(s, c1); gap -> fl -> head."""
    g = archir.Graph("t")
    x = g.input("x", (3, 8, 8))
    c1 = g.add("conv2d", x, out_channels=4, kernel_size=3, padding=1, name="c1")
    r = g.add("relu", c1, name="r")
    s = g.add("add", c1, r, name="s")
    cat = g.add("concat", s, c1, name="cat")
    y = g.add("linear", g.add("flatten", g.add("global_avgpool", cat, name="gap"), name="fl"), out_features=2,
              name="head")
    g.set_outputs(y)
    g.init_params(seed=0)
    return g.validate()


def check(excinfo, cls, *, node, rule, says=()):
    """The error is the right IRError subclass, names node and rule, and says how to fix it."""
    e = excinfo.value
    assert type(e) is cls, f"expected {cls.__name__}, got {type(e).__name__}: {e}"
    assert isinstance(e, IRError) and isinstance(e, ValueError)
    assert type(e).__module__ == "archir.errors"
    text = str(e)
    assert e.rule == rule and f"[{rule}]" in text
    if node is not None:
        assert e.node == node and f"node {node!r}" in text
    assert e.hint and "how to fix:" in text, f"no hint in: {text}"
    for s in says:
        assert s in text, f"{s!r} not in: {text}"
    return e


def edge_key(g, u, v, port):
    return next(k for a, b, k, p in g.nx.edges(keys=True, data="port") if (a, b, p) == (u, v, port))


def test_valid_graph_passes_and_returns_self():
    g = net()
    assert g.validate() is g
    assert g.validate(weights=False) is g


def test_irerror_is_a_value_error():
    assert issubclass(IRError, ValueError)
    for cls in (GraphStructureError, OpSchemaError, ShapeError, WeightError, archir.SerializationError,
                archir.LoweringError):
        assert issubclass(cls, IRError)
    with pytest.raises(ValueError):  # plain-Python callers can catch ValueError
        net().add("add", "x", "c1")


# --------------------------------------------------------------------------- structure


def test_cycle_by_set_input():
    g = net()
    g.set_input("c1", 0, "s")  # c1 now reads s, which reads c1
    e = check(pytest.raises(GraphStructureError, g.validate), GraphStructureError, node="c1", rule="acyclic",
              says=("has a cycle", "c1 -> r -> s -> c1", "remove one edge"))
    assert "around it:" in e.context  # the neighbourhood is shown


def test_cycle_by_editing_nx():
    g = net()
    g.nx.add_edge("head", "r", port=0)
    g.nx.remove_edge("c1", "r")
    e = check(pytest.raises(GraphStructureError, g.validate), GraphStructureError, node=None, rule="acyclic",
              says=("has a cycle",))
    assert e.node in {"r", "s", "cat", "gap", "fl", "head"} and e.node in str(e)


def test_self_loop():
    g = net()
    g.set_input("r", 0, "r")
    check(pytest.raises(GraphStructureError, g.validate), GraphStructureError, node="r", rule="acyclic",
          says=("r -> r",))


def test_cycle_also_reported_by_topo_order():
    g = net()
    g.set_input("c1", 0, "head")
    with pytest.raises(GraphStructureError, match="cycle"):
        g.topo_order()


def test_unfilled_port():
    g = net()
    g.nx.edges["c1", "cat", edge_key(g, "c1", "cat", 1)]["port"] = 2  # concat ports 0 and 2: port 1 is empty
    check(pytest.raises(GraphStructureError, g.validate), GraphStructureError, node="cat", rule="port",
          says=("[0, 2]", "port(s) [1] unfilled"))
    g = net()
    g.nx.edges["r", "s", edge_key(g, "r", "s", 1)]["port"] = 5
    check(pytest.raises(GraphStructureError, g.validate), GraphStructureError, node="s", rule="port",
          says=("port(s) [1] unfilled",))


def test_missing_edge_of_fixed_arity_op():
    g = net()
    g.nx.remove_edge("r", "s")  # add now has one input
    check(pytest.raises(OpSchemaError, g.validate), OpSchemaError, node="s", rule="arity",
          says=("takes 2 input(s), got 1",))


def test_doubly_filled_port():
    g = net()
    g.nx.add_edge("x", "r", port=0)
    check(pytest.raises(GraphStructureError, g.validate), GraphStructureError, node="r", rule="port",
          says=("port(s) [0] filled more than once",))


@pytest.mark.parametrize("port", [None, "1", 1.0, True])
def test_edge_without_int_port(port):
    g = net()
    if port is None:
        g.nx.add_edge("x", "cat")  # forgot port=
    else:
        g.nx.add_edge("x", "cat", port=port)
    check(pytest.raises(GraphStructureError, g.validate), GraphStructureError, node="cat", rule="port",
          says=("ports must be ints",))


def test_wrong_arity():
    g = net()
    check(pytest.raises(OpSchemaError, g.add, "add", "x", name="bad"), OpSchemaError, node="bad", rule="arity",
          says=("takes 2 input(s), got 1",))
    check(pytest.raises(OpSchemaError, g.add, "relu", "x", "x", name="bad"), OpSchemaError, node="bad",
          rule="arity")
    check(pytest.raises(OpSchemaError, g.add, "concat", name="bad"), OpSchemaError, node="bad", rule="arity",
          says=("at least 1",))
    g.nx.add_edge("x", "r", port=1)  # relu with two inputs
    check(pytest.raises(OpSchemaError, g.validate), OpSchemaError, node="r", rule="arity",
          says=("takes 1 input(s), got 2",))


def test_unknown_op():
    g = net()
    check(pytest.raises(OpSchemaError, g.add, "conv3d", "x", name="c3"), OpSchemaError, node="c3", rule="op",
          says=("unknown op 'conv3d'", "conv2d"))
    assert "c3" not in g
    g.nx.nodes["r"]["op"] = "relu7"
    check(pytest.raises(OpSchemaError, g.validate), OpSchemaError, node="r", rule="op",
          says=("unknown op 'relu7'",))


def test_unknown_attribute():
    g = net()
    check(pytest.raises(OpSchemaError, g.add, "conv2d", "x", out_channels=4, kernel_size=3, in_channels=3,
                        name="bad"),
          OpSchemaError, node="bad", rule="attr", says=("no attribute(s) ['in_channels']", "out_channels"))
    g.nx.nodes["r"]["attrs"]["inplace"] = True
    check(pytest.raises(OpSchemaError, g.validate), OpSchemaError, node="r", rule="attr", says=("inplace",))


@pytest.mark.parametrize("attrs,says", [
    (dict(out_channels="4", kernel_size=3), "'out_channels' of op 'conv2d' must be an int"),
    (dict(out_channels=4.0, kernel_size=3), "must be an int"),
    (dict(out_channels=4, kernel_size="3"), "'kernel_size' of op 'conv2d' must be an int or a pair"),
    (dict(out_channels=4, kernel_size=3, bias="yes"), "'bias' of op 'conv2d' must be a bool"),
    (dict(out_channels=4, kernel_size=3, padding=[1, 1, 1]), "'padding'"),
])
def test_wrong_attr_type(attrs, says):
    g = net()
    check(pytest.raises(OpSchemaError, g.add, "conv2d", "x", name="bad", **attrs), OpSchemaError, node="bad",
          rule="attr", says=(says, "pass "))


def test_wrong_attr_value():
    g = net()
    check(pytest.raises(OpSchemaError, g.add, "conv2d", "x", out_channels=-16, kernel_size=3, name="bad"),
          OpSchemaError, node="bad", rule="attr", says=("'out_channels'", "must be >= 1", "-16"))
    # groups must divide out_channels (an attribute rule) ...
    check(pytest.raises(OpSchemaError, g.add, "conv2d", "x", out_channels=4, kernel_size=3, groups=3, name="bad"),
          OpSchemaError, node="bad", rule="attr", says=("out_channels=4 is not divisible by groups=3",))
    # ... and the input channels (a shape rule: c1 has 4 channels)
    check(pytest.raises(ShapeError, g.add, "conv2d", "c1", out_channels=6, kernel_size=1, groups=3, name="bad"),
          ShapeError, node="bad", rule="shape", says=("input channels 4 not divisible by groups=3",))
    check(pytest.raises(OpSchemaError, g.add, "dropout", "x", p=2.0, name="bad"), OpSchemaError, node="bad",
          rule="attr", says=("<= 1.0",))
    check(pytest.raises(OpSchemaError, g.add, "maxpool2d", "x", kernel_size=2, padding=2, name="bad"),
          OpSchemaError, node="bad", rule="attr", says=("more than half",))
    assert "bad" not in g


def test_attr_edited_in_place_is_caught():
    g = net()
    g.nx.nodes["c1"]["attrs"]["out_channels"] = -1
    check(pytest.raises(OpSchemaError, g.validate), OpSchemaError, node="c1", rule="attr", says=("must be >= 1",))
    g = net()
    g.nx.nodes["c1"]["attrs"]["kernel_size"] = [3, 3]  # valid, but not the canonical form (3)
    check(pytest.raises(OpSchemaError, g.validate), OpSchemaError, node="c1", rule="attr",
          says=("canonical form", "set_attrs"))


def test_mismatched_shapes_at_build_time():
    g = net()
    check(pytest.raises(ShapeError, g.add, "add", "x", "c1", name="bad"), ShapeError, node="bad", rule="shape",
          says=("add needs equal shapes", "(N, 3, 8, 8)", "(N, 4, 8, 8)"))
    gap = g.add("global_avgpool", "x", name="g2")
    check(pytest.raises(ShapeError, g.add, "concat", "x", gap, name="bad"), ShapeError, node="bad", rule="shape",
          says=("concat on dim 1 needs equal other dims",))
    check(pytest.raises(ShapeError, g.add, "conv2d", "x", out_channels=4, kernel_size=9, name="bad"), ShapeError,
          node="bad", rule="shape", says=("kernel 9x9", "does not fit input (N, 3, 8, 8)"))
    check(pytest.raises(ShapeError, g.add, "conv2d", "fl", out_channels=4, kernel_size=1, name="bad"), ShapeError,
          node="bad", rule="shape", says=("rank-3",))
    assert "bad" not in g


def test_mismatched_shapes_found_by_validate_downstream():
    # set_attrs re-infers only the edited node; validate re-infers everything downstream
    g = net()
    g.set_attrs("c1", padding=0)  # c1 -> (4, 6, 6), r follows; add(c1, r) is still fine ...
    g.init_params(seed=0)
    g.set_input("s", 1, "x")  # ... until it reads x: add((4, 6, 6), (3, 8, 8))
    check(pytest.raises(ShapeError, g.validate), ShapeError, node="s", rule="shape",
          says=("add needs equal shapes", "(N, 4, 6, 6) and (N, 3, 8, 8)", "around it:"))
    g = net()
    g.set_attrs("c1", padding=0)  # concat(s, c1) still agrees; the conv shrank both
    g.set_input("cat", 1, "x")    # concat((4, 6, 6), (3, 8, 8)) on channels
    check(pytest.raises(ShapeError, g.validate), ShapeError, node="cat", rule="shape",
          says=("needs equal other dims",))


# --------------------------------------------------------------------------- weights


def test_nan_and_inf_weights():
    g = net()
    w = np.array(g.node("c1").params["weight"])
    w[0, 0, 0, 0] = np.nan
    g.set_params("c1", weight=w)
    check(pytest.raises(WeightError, g.validate), WeightError, node="c1", rule="finite",
          says=("param 'weight' has 1 NaN/Inf value(s)",))
    g.validate(weights=False)  # structure alone is fine
    g = net()
    b = np.array(g.node("head").params["bias"])
    b[:] = np.inf
    g.set_params("head", bias=b)
    check(pytest.raises(WeightError, g.validate), WeightError, node="head", rule="finite",
          says=("param 'bias' has 2 NaN/Inf",))


def test_nan_buffer_and_arch_logits():
    g = archir.Graph("g")
    bn = g.add("batchnorm2d", g.input("x", (2, 4, 4)), name="bn")
    c = g.add("choice", bn, name="ch", candidates=[{"name": "a", "ops": [{"op": "relu"}]}, {"name": "b", "ops": []}])
    g.set_outputs(c)
    g.init_params(0)
    g.validate()
    g.set_buffers("bn", running_var=[1.0, -np.inf])
    check(pytest.raises(WeightError, g.validate), WeightError, node="bn", rule="finite",
          says=("buffer 'running_var'",))
    g.set_buffers("bn", running_var=[1.0, 1.0])
    g.arch["ch"] = archir.graph.freeze_array([0.0, np.nan])
    e = pytest.raises(WeightError, g.validate).value
    assert e.rule == "finite" and "architecture logits of 'ch'" in str(e)


def test_missing_params_before_init():
    g = archir.Graph("g")
    x = g.input("x", (3, 8, 8))
    g.set_outputs(g.add("conv2d", g.add("relu", x), out_channels=2, kernel_size=1, name="conv"))
    assert g.validate(weights=False) is g
    check(pytest.raises(WeightError, g.validate), WeightError, node="conv", rule="weights",
          says=("params ['bias', 'weight'] are missing", "init_params"))


def test_wrong_param_shape_and_extra_param():
    g = net()
    g.set_params("head", weight=np.zeros((2, 5)))
    check(pytest.raises(WeightError, g.validate), WeightError, node="head", rule="weights",
          says=("param 'weight' has shape (2, 5), op needs (2, 8)",))
    g = net()
    g.set_params("r", alpha=np.zeros(1))
    check(pytest.raises(WeightError, g.validate), WeightError, node="r", rule="weights",
          says=("params ['alpha'] are not used by op 'relu'",))
    g = net()
    g.set_attrs("c1", bias=False)  # the bias param is now extra
    check(pytest.raises(WeightError, g.validate), WeightError, node="c1", rule="weights", says=("['bias']",))


def test_wrong_param_dtype_written_behind_the_api():
    g = net()
    g.nx.nodes["head"]["params"] = {**g.nx.nodes["head"]["params"], "bias": np.zeros(2, np.float64)}
    check(pytest.raises(WeightError, g.validate), WeightError, node="head", rule="weights",
          says=("must be a float32 ndarray", "float64"))


# --------------------------------------------------------------------------- inputs / outputs


def test_no_outputs():
    g = archir.Graph("g")
    g.add("relu", g.input("x", (3,)))
    check(pytest.raises(GraphStructureError, g.validate), GraphStructureError, node=None, rule="outputs",
          says=("graph 'g' has no outputs", "set_outputs"))
    check(pytest.raises(GraphStructureError, g.set_outputs), GraphStructureError, node=None, rule="outputs",
          says=("at least one output",))
    with pytest.raises(GraphStructureError, match="no node 'nope'"):
        g.set_outputs("nope")


def test_output_not_reachable_from_an_input():
    # Every non-input op takes at least one input, so a node cut off from the inputs fails the
    # port/arity rule first: an orphan output is rejected, naming it.
    g = net()
    g.nx.add_node("orphan", op="relu", attrs={}, params={}, buffers={}, type=None)
    g.set_outputs("head", "orphan")
    check(pytest.raises(OpSchemaError, g.validate), OpSchemaError, node="orphan", rule="arity",
          says=("takes 1 input(s), got 0",))
    # an input node that is not a declared graph input does not count as one
    g = net()
    g.nx.add_node("y", op="input", attrs={"shape": [3, 8, 8], "dtype": "float32"}, params={}, buffers={}, type=None)
    g.set_input("r", 0, "y")
    check(pytest.raises(GraphStructureError, g.validate), GraphStructureError, node="y", rule="inputs",
          says=("not listed in graph inputs",))


def test_declared_input_must_be_an_input_node_listed_once():
    g = net()
    g._inputs.append("r")
    e = pytest.raises(GraphStructureError, g.validate).value
    assert e.node == "r" and e.rule == "inputs" and "not an input node" in str(e)
    g = net()
    g._inputs.append("x")
    check(pytest.raises(GraphStructureError, g.validate), GraphStructureError, node="x", rule="inputs",
          says=("more than once",))


def test_unreadable_id_written_behind_the_api():
    g = net()
    g.nx.add_node("bad id", op="relu", attrs={}, params={}, buffers={}, type=None)
    g.nx.add_edge("x", "bad id", port=0)
    check(pytest.raises(GraphStructureError, g.validate), GraphStructureError, node="bad id", rule="id",
          says=("not a readable id",))


def test_shape_errors_carry_the_neighbourhood():
    g = net()
    g.set_input("s", 1, "x")
    e = pytest.raises(ShapeError, g.validate).value
    lines = e.context.splitlines()
    assert lines[0].strip() == "around it:"
    assert any(">>> s: add" in line for line in lines)
    assert any("in  x: input -> (N, 3, 8, 8)" in line for line in lines)
    assert any("out cat: concat" in line for line in lines)


def test_hints_everywhere():
    """A sample of errors from each class: every one says how to fix it."""
    cases = []
    g = net()
    for fn in (lambda: g.add("add", "x", "c1"), lambda: g.add("nope", "x"), lambda: g.add("relu", "x", name="r"),
               lambda: g.add("conv2d", "x", out_channels=0, kernel_size=1), lambda: g.node("zz"),
               lambda: g.remove("c1"), lambda: archir.Graph("e").validate()):
        with pytest.raises(IRError) as ei:
            fn()
        cases.append(ei.value)
    assert len(cases) == 7
    for e in cases:
        assert e.hint and "how to fix: " + e.hint in str(e)
