"""Training-time ops of the DARTS/NASNet evaluation recipe: ``drop_path`` and ``auxiliary`` outputs.

What is checked: drop-path is the identity in eval and drops whole samples with the right
expectation in training (seeded, the reference's draw), its ramp (``set_drop_path``); a graph
with an auxiliary head lowers to ``(main, aux)``, trains on ``CE(main) + w * CE(aux)`` (against a
hand computation) and exports one ONNX output that matches fx's main output; ``strip_training``
removes exactly the head; validation refuses misplaced auxiliary nodes; ``count`` leaves the
head out and says so; ``derive`` / ``finalize`` / ``measure`` / the predictor see the stripped
network; passes keep working.
"""

from __future__ import annotations

import json
import types

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

import archir
import costmodels
import passes
from archir.errors import ArchirError, GraphStructureError, LoweringError, OpSchemaError
from archir.lower import set_drop_path, to_fx, to_onnx, verify_onnx
from archir.lower.modules import DropPath
from archir.training import auxiliary_head, auxiliary_outputs, has_training_ops, strip_training
from search import train as train_mod
from search.train import TrainConfig, evaluate, train, training_loss

from tests.passes import assert_onnx_agrees

HEAD = {"aux.conv", "aux.relu", "aux.gap", "aux.flat", "aux.fc", "aux"}
CLASSES = 4


def aux_net(*, p: float = 0.2, weight: float = 0.4, seed: int = 0) -> archir.Graph:
    """stem -> cell (conv -> drop_path, + residual) -> head; the auxiliary head reads the cell output."""
    g = archir.Graph("auxnet")
    x = g.input("x", shape=(3, 8, 8))
    h = g.add("conv2d", x, out_channels=8, kernel_size=3, padding=1, name="stem.conv")
    h = g.add("relu", g.add("batchnorm2d", h, name="stem.bn"), name="stem.relu")
    d = g.add("drop_path", g.add("conv2d", h, out_channels=8, kernel_size=3, padding=1, name="cell.conv"), p=p,
              name="cell.dp")
    s = g.add("add", h, d, name="cell.add")
    a = g.add("relu", g.add("conv2d", s, out_channels=4, kernel_size=1, name="aux.conv"), name="aux.relu")
    a = g.add("linear", g.add("flatten", g.add("global_avgpool", a, name="aux.gap"), name="aux.flat"),
              out_features=CLASSES, name="aux.fc")
    y = g.add("linear", g.add("flatten", g.add("global_avgpool", s, name="gap"), name="flat"), out_features=CLASSES,
              name="head")
    g.set_outputs(y, g.add("auxiliary", a, weight=weight, name="aux"))
    g.meta["note"] = "kept"
    return g.init_params(seed=seed).validate()


def one_op(op: str, shape=(2, 3, 3), **attrs) -> archir.Graph:
    g = archir.Graph(op)
    g.set_outputs(g.add(op, g.input("x", shape), name="n", **attrs))
    return g.init_params(seed=0).validate()


# --------------------------------------------------------------------------- drop_path


def test_drop_path_attrs():
    assert archir.ops.get_op("drop_path").normalize_attrs({}) == {"p": 0.2}
    with pytest.raises(OpSchemaError, match=r"drops every sample") as ei:
        one_op("drop_path", p=1.0)
    assert ei.value.node == "n" and "[0, 1)" in ei.value.hint
    with pytest.raises(OpSchemaError, match=">= 0.0"):
        one_op("drop_path", p=-0.1)


def test_drop_path_is_identity_in_eval_mode():
    gm = to_fx(one_op("drop_path", p=0.9)).eval()
    x = torch.randn(16, 2, 3, 3)
    assert torch.equal(gm(x), x)


def test_drop_path_drops_whole_samples_with_the_right_expectation():
    p = 0.3
    gm = to_fx(one_op("drop_path", p=p)).train()
    x = torch.randn(4000, 2, 3, 3)
    torch.manual_seed(0)
    y = gm(x)
    flat_x, flat_y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    dropped = (flat_y == 0).all(1)
    kept = ~dropped
    torch.testing.assert_close(flat_y[kept], flat_x[kept] / (1 - p))  # survivors: x / (1 - p), whole samples
    assert abs(float(dropped.float().mean()) - p) < 0.03
    ones = torch.ones(4000, 2, 3, 3)
    assert abs(float(gm(ones).mean()) - 1.0) < 0.05  # E[y] = x
    # seeded: the reference's own draw (DARTS: FloatTensor(N, 1, 1, 1).bernoulli_(keep); x / keep * mask)
    torch.manual_seed(7)
    mask = torch.empty(len(x), 1, 1, 1).bernoulli_(1 - p)
    torch.manual_seed(7)
    assert torch.equal(gm(x), x / (1 - p) * mask)


def test_set_drop_path_scales_the_rate():
    g = one_op("drop_path", p=0.5)
    gm = to_fx(g).train()
    (m,) = [m for m in gm.modules() if isinstance(m, DropPath)]
    assert m.scale == 1.0 and m.rate == 0.5
    assert set_drop_path(gm, 0.5) == 1 and m.scale == 0.5 and m.rate == 0.25
    x = torch.ones(4000, 2, 3, 3)
    torch.manual_seed(0)
    y = gm(x).reshape(4000, -1)
    assert abs(float((y == 0).all(1).float().mean()) - 0.25) < 0.03
    assert torch.allclose(y[y[:, 0] != 0], torch.full_like(y[y[:, 0] != 0], 1 / 0.75))
    assert set_drop_path(gm, 0) == 1
    state = torch.random.get_rng_state()
    assert torch.equal(gm(x), x)  # rate 0: the identity, and no draw
    assert torch.equal(torch.random.get_rng_state(), state)
    assert set_drop_path(to_fx(one_op("relu")), 0.5) == 0
    for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(LoweringError, match=r"scale must be a number in \[0, 1\]"):
            set_drop_path(gm, bad)


# --------------------------------------------------------------------------- auxiliary: lowering


def test_to_fx_returns_main_and_aux_in_train_and_eval():
    g = aux_net()
    gm = to_fx(g)
    assert gm.meta["archir_auxiliary"] == {1: 0.4} and gm.meta["archir_training_ops"] is True
    x = torch.randn(5, 3, 8, 8)
    for mode in (gm.train, gm.eval):
        mode()
        out = gm(x)
        assert isinstance(out, tuple) and len(out) == 2 and out[0].shape == out[1].shape == (5, CLASSES)
    lean = to_fx(g, training_ops=False).eval()
    assert lean.meta["archir_auxiliary"] == {} and lean.meta["archir_training_ops"] is False
    assert not [m for m in lean.modules() if isinstance(m, DropPath)]
    with torch.no_grad():
        torch.testing.assert_close(lean(x), to_fx(g).eval()(x)[0], rtol=0, atol=0)  # (gm's BN stats moved)
    with pytest.raises(LoweringError, match="training_ops must be True or False"):
        to_fx(g, training_ops="no")


def test_to_onnx_has_one_output_matching_fx_main_output():
    g = aux_net()
    model = to_onnx(g)
    assert [o.name for o in model.graph.output] == ["head"]
    assert {n.op_type for n in model.graph.node}.isdisjoint({"Dropout"})
    assert not any(i.name.startswith("aux.") for i in model.graph.initializer)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    (got,) = sess.run(None, {"x": x})
    with torch.no_grad():
        main, _ = to_fx(g).eval()(torch.from_numpy(x))
    np.testing.assert_allclose(got, main.numpy(), rtol=1e-4, atol=1e-5)
    assert_onnx_agrees(g)
    assert verify_onnx(g, module=to_fx(g)).ok  # a caller's module with the auxiliary output too
    rep = verify_onnx(g)
    assert rep.ok and [o.name for o in rep.outputs] == ["head"]


def test_sync_back_carries_the_head_and_refuses_a_stripped_module():
    g = aux_net()
    gm = to_fx(g)
    with torch.no_grad():
        gm.get_submodule("aux.fc").weight.add_(1.0)
    g2 = archir.lower.sync_back(g, gm)
    np.testing.assert_allclose(g2.node("aux.fc").params["weight"], g.node("aux.fc").params["weight"] + 1.0)
    lean = to_fx(g, training_ops=False)
    with pytest.raises(LoweringError, match="training_ops=False") as ei:
        archir.lower.sync_back(g, lean)
    assert ei.value.node in HEAD and "strip_training" in ei.value.hint
    assert archir.lower.sync_back(strip_training(g), lean).outputs == ("head",)


# --------------------------------------------------------------------------- strip_training


def test_strip_training_removes_exactly_the_head_and_bypasses_drop_path():
    g = aux_net()
    before = g.weights_hash()
    assert auxiliary_outputs(g) == {1: 0.4} and set(auxiliary_head(g)) == HEAD and has_training_ops(g)
    s = strip_training(g)
    assert set(g) - set(s) == HEAD | {"cell.dp"} and set(s) <= set(g)
    assert s.outputs == ("head",) and s.inputs == g.inputs and s.meta == g.meta == {"note": "kept"}
    assert s.inputs_of("cell.add") == ["stem.relu", "cell.conv"]
    assert not has_training_ops(s) and g.weights_hash() == before  # g is untouched
    # eval mode: the main output is computed exactly
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(to_fx(s).eval()(x), to_fx(g).eval()(x)[0])
    plain = strip_training(s)
    assert plain is not s and plain.structural_hash() == s.structural_hash()


def test_strip_training_keeps_output_ids_and_inputs_only_the_head_reads():
    g = archir.Graph("edge")
    x = g.input("x", (2, 3, 3))
    side = g.input("side", (5,))
    dp = g.add("drop_path", g.add("relu", x, name="r"), name="dp")  # an output itself
    dead = g.add("relu", g.add("linear", side, out_features=3, name="aux.fc"), name="dead")  # hangs off the head
    g.set_outputs(dp, g.add("auxiliary", "aux.fc", name="aux"))
    g.init_params(seed=0).validate()
    assert auxiliary_head(g) == ["aux.fc", "dead", "aux"]
    s = strip_training(g)
    assert s.outputs == ("dp",) and s.node("dp").op == "identity"
    assert s.inputs == ("x", "side") and set(s) == {"x", "side", "r", "dp"}
    assert dead not in s


def test_auxiliary_reading_the_main_output_is_its_own_head():
    g = archir.Graph("same")
    y = g.add("relu", g.input("x", (3,)), name="y")
    g.set_outputs(y, g.add("auxiliary", y, weight=1.5, name="aux"))
    g.validate()
    assert auxiliary_outputs(g) == {1: 1.5} and auxiliary_head(g) == ["aux"]
    assert set(strip_training(g)) == {"x", "y"}


# --------------------------------------------------------------------------- validation


def _with_aux(outputs, *, consumer: bool = False):
    g = archir.Graph("bad")
    x = g.input("x", (3,))
    y = g.add("relu", x, name="y")
    a = g.add("auxiliary", g.add("tanh", x, name="t"), name="aux")
    if consumer:
        y = g.add("add", y, a, name="sum")
    g.set_outputs(*[{"y": y, "aux": a}[o] for o in outputs])
    return g


@pytest.mark.parametrize("outputs,consumer,match,fix", [
    (["y"], False, "is not a graph output", "g.set_outputs(main, 'aux')"),
    (["aux", "y"], False, "first graph output, which is the main one", "main output first"),
    (["aux"], False, "first graph output", "main output first"),
    (["y", "aux", "aux"], False, "listed 2 times", "once"),
    (["y", "aux"], True, r"is read by \['sum'\]", "g.set_input('sum', port, 't')"),
])
def test_validation_refuses_misplaced_auxiliary_nodes(outputs, consumer, match, fix):
    g = _with_aux(outputs, consumer=consumer)
    with pytest.raises(GraphStructureError, match=match) as ei:
        g.validate()
    e = ei.value
    assert isinstance(e, ArchirError) and e.node == "aux" and e.rule == "auxiliary" and fix in e.hint
    _with_aux(["y", "aux"]).validate()  # the right way round


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_auxiliary_weight_must_be_positive(bad):
    g = archir.Graph("w")
    with pytest.raises(OpSchemaError, match="weight") as ei:
        g.add("auxiliary", g.input("x", (2,)), weight=bad, name="aux")
    assert ei.value.node == "aux"
    assert archir.ops.get_op("auxiliary").normalize_attrs({}) == {"weight": 0.4}


def test_save_load_round_trip(tmp_path):
    g = aux_net()
    archir.save(g, tmp_path / "net.json")
    h = archir.load(tmp_path / "net.json")
    assert h.outputs == g.outputs and auxiliary_outputs(h) == {1: 0.4}
    assert h.structural_hash() == g.structural_hash() and h.weights_hash() == g.weights_hash()


# --------------------------------------------------------------------------- training


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, CLASSES, n).astype(np.int64)
    return types.SimpleNamespace(x_train=x, y_train=y, x_val=x[:16], y_val=y[:16], x_test=x[16:32], y_test=y[16:32])


def test_training_loss_is_main_plus_weighted_aux():
    out = (torch.randn(6, CLASSES), torch.randn(6, CLASSES), torch.randn(6, CLASSES))
    y = torch.randint(0, CLASSES, (6,))
    want = F.cross_entropy(out[0], y) + 0.4 * F.cross_entropy(out[1], y) + 2.0 * F.cross_entropy(out[2], y)
    torch.testing.assert_close(training_loss(out, y, {1: 0.4, 2: 2.0}), want)
    assert torch.equal(training_loss(out[0], y), F.cross_entropy(out[0], y))


def test_train_uses_the_aux_loss_and_reports_the_main_output():
    g = aux_net(weight=0.4)
    ds = _data()
    cfg = TrainConfig(epochs=1, batch_size=len(ds.y_train), lr=0.05, schedule="constant", grad_clip=None,
                      weight_decay=0.0, momentum=0.0)
    res = train(g, ds, cfg)
    assert res.ok, res.reason
    # the one step's loss by hand, with the initial weights (drop-path rate 0 in the first epoch)
    gm = to_fx(g).train()
    assert set_drop_path(gm, 0.0) == 1
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    main, aux = gm(x)
    hand = F.cross_entropy(main, y) + 0.4 * F.cross_entropy(aux, y)
    assert res.history[0]["train_loss"] == pytest.approx(hand.item(), rel=1e-5)
    assert res.metrics["train_loss"] == pytest.approx(hand.item(), rel=1e-5)
    assert hand.item() > F.cross_entropy(main, y).item()  # the aux term is in it
    # ... and the step SGD took on it (plain SGD, lr 0.05): the aux head was trained and synced back
    hand.backward()
    for node, path in (("aux.fc", "aux.fc"), ("head", "head"), ("stem.conv", "stem.conv")):
        p = gm.get_submodule(path).weight
        np.testing.assert_allclose(res.graph.node(node).params["weight"], (p - 0.05 * p.grad).detach().numpy(),
                                   rtol=1e-4, atol=1e-6)
    assert res.graph.outputs == g.outputs and auxiliary_outputs(res.graph) == {1: 0.4}
    # error and loss come from the main output alone
    err, loss = evaluate(res.graph, ds.x_test, ds.y_test)
    assert res.metrics["test_error"] == pytest.approx(err) and res.metrics["test_loss"] == pytest.approx(loss)
    with torch.no_grad():
        trained_main, _ = to_fx(res.graph).eval()(torch.from_numpy(ds.x_test))
    assert loss == pytest.approx(float(F.cross_entropy(trained_main, torch.from_numpy(ds.y_test))), rel=1e-5)


def test_train_ramps_drop_path_linearly_and_is_deterministic(monkeypatch):
    scales = []
    real = train_mod.set_drop_path

    def spy(gm, scale):
        scales.append(scale)
        return real(gm, scale)

    monkeypatch.setattr(train_mod, "set_drop_path", spy)
    g = aux_net(p=0.5)
    ds = _data()
    cfg = TrainConfig(epochs=4, batch_size=16, seed=3)
    a = train(g, ds, cfg)
    assert a.ok, a.reason
    assert scales == [0.0, 0.25, 0.5, 0.75]  # DARTS: drop_prob = p * epoch / epochs
    b = train(g, ds, cfg)
    assert a.graph.weights_hash() == b.graph.weights_hash() and a.metrics == b.metrics


# --------------------------------------------------------------------------- costs


def test_count_excludes_the_head_and_says_so():
    g = aux_net()
    c, s = costmodels.count(g, batch_size=2), costmodels.count(strip_training(g), batch_size=2)
    dp = c["cell.dp"].activation_bytes  # drop_path stays (a view, counted as views are), the head goes
    assert c.totals() == {**s.totals(), "activation_bytes": s.activation_bytes + dp} and c.peak_node == s.peak_node
    assert set(c.excluded) == HEAD and not set(c.nodes) & HEAD
    aux_params = sum(int(a.size) for n in HEAD for a in g.node(n).params.values())
    assert c.auxiliary_params == aux_params > 0 and c.params == g.num_params() - aux_params
    assert c.excluded["aux.fc"].macs == 2 * 4 * CLASSES
    assert c.table().splitlines()[-1].startswith("excluded: 6 auxiliary-head node(s)")
    d = json.loads(json.dumps(c.to_dict()))
    assert d["auxiliary_params"] == aux_params and {r["id"] for r in d["excluded"]} == HEAD
    plain = costmodels.count(strip_training(g))
    assert plain.excluded == {} and plain.auxiliary_params == 0 and "excluded" not in plain.table()
    r = costmodels.roofline(g, costmodels.H100_SXM)
    assert r.time_s == costmodels.roofline(strip_training(g), costmodels.H100_SXM).time_s
    assert costmodels.graph_features(g) == costmodels.graph_features(strip_training(g))
    cc = costmodels.candidate_costs(g, "params")
    assert cc.fixed == c.params


def test_measure_times_the_stripped_graph():
    lat = costmodels.measure(aux_net(), backend="torch-cpu", warmup=0, repeats=2, threads=1)
    assert lat.n == 2
    lat = costmodels.measure(aux_net(), backend="ort-cpu", warmup=0, repeats=2, threads=1)
    assert lat.n == 2


def test_archir_cost_prints_the_exclusion(tmp_path, capsys):
    from archir.cli.main import main

    archir.save(aux_net(), tmp_path / "net.json")
    assert main(["cost", str(tmp_path / "net.json")]) == 0
    out = capsys.readouterr().out
    assert "excluded: 6 auxiliary-head node(s)" in out and "auxiliary head" in out
    assert main(["cost", str(tmp_path / "net.json"), "--by-op"]) == 0
    assert "note: excluded: 6" in capsys.readouterr().out


# --------------------------------------------------------------------------- derive, finalize, passes


def test_derive_and_finalize_strip():
    g = archir.Graph("super")
    x = g.input("x", (3, 8, 8))
    h = g.add("choice", x, name="cell.e0", candidates=[
        {"name": "conv", "ops": [{"op": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1}]},
        {"name": "skip", "ops": [{"op": "identity"}]}])
    h = g.add("add", x, g.add("drop_path", h, name="cell.dp"), name="cell.add")
    y = g.add("linear", g.add("flatten", g.add("global_avgpool", h, name="gap"), name="flat"), out_features=2,
              name="head")
    a = g.add("linear", g.add("flatten", g.add("global_avgpool", h, name="aux.gap"), name="aux.flat"),
              out_features=2, name="aux.fc")
    g.set_outputs(y, g.add("auxiliary", a, name="aux"))
    g.init_params(seed=0).validate()
    d = archir.derive(g, {"cell.e0": "conv"})
    assert not has_training_ops(d) and d.outputs == ("head",) and "aux.fc" not in d
    assert d.meta["derived"] == {"cell.e0": "conv"}
    f = passes.finalize(aux_net())
    assert not has_training_ops(f) and f.outputs == ("head",) and set(f) == set(strip_training(aux_net()))


def test_morphisms_and_pruning_keep_the_head():
    g = aux_net()
    for g2 in (passes.widen(g, node="stem.conv", out_channels=12), passes.deepen(g, after="stem.relu"),
               passes.insert_bn(g, after="cell.conv")):
        assert g2.outputs == g.outputs and set(auxiliary_head(g2)) == HEAD
        rep = passes.check_preserved(g, g2)  # eval mode; the auxiliary output is compared too
        assert rep.ok and [o.name for o in rep.outputs] == ["head", "aux"]
        assert_onnx_agrees(g2)
    res = passes.prune_channels(g, ratio=0.5)
    assert res.graph.outputs == g.outputs and res.graph.node("stem.conv").attrs["out_channels"] < 8
    assert_onnx_agrees(res.graph)
    assert passes.canonicalize(g).outputs == g.outputs
