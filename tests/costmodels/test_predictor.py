"""costmodels.Predictor and its metrics: Kendall tau, error reports, fused kernels, features,
fitting, saving and loading.

No latency is measured here: the predictor learns synthetic latencies (a known additive
function of the graph plus 2 % noise), so the tests check the learning machinery, not the
machine. How well it predicts real ONNX Runtime latencies is what
``benchmarks/latency_models.py`` reports.
"""

import itertools
import json
import math
import re

import numpy as np
import pytest

import archir
import costmodels
from archir import IRError, samples
from archir.ops import get_op
from costmodels import (ErrorReport, Latency, Predictor, PredictorFormatError, count, error_report, fused_kernels,
                        graph_features, kendall_tau)
from costmodels import predictor as pred_mod

# --------------------------------------------------------------------------- Kendall tau


def _tau_brute(x, y):
    """tau-b written out pair by pair (the textbook definition)."""
    n = len(x)
    c = d = tx = ty = 0
    for i, j in itertools.combinations(range(n), 2):
        sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if sx == 0:
            tx += 1
        if sy == 0:
            ty += 1
        if sx * sy > 0:
            c += 1
        elif sx * sy < 0:
            d += 1
    n0 = n * (n - 1) / 2
    return (c - d) / math.sqrt((n0 - tx) * (n0 - ty))


def test_kendall_tau_known_values():
    assert kendall_tau([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(4 / 6)  # 5 concordant, 1 discordant
    # with ties: x = [1, 1, 2], y = [1, 2, 3]: pairs (0,1) tied in x, (0,2) and (1,2) concordant
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(2 * 3))
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))


@pytest.mark.parametrize("seed", range(4))
def test_kendall_tau_matches_the_definition(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40))
    x = rng.integers(0, 6, n)  # many ties
    y = x + rng.integers(-3, 4, n)
    assert kendall_tau(x, y) == pytest.approx(_tau_brute(x, y), abs=1e-12)


def test_kendall_tau_in_blocks_matches_small():
    rng = np.random.default_rng(7)
    x = rng.normal(size=1100)  # more than one block of rows
    y = x + rng.normal(size=1100)
    sub = kendall_tau(x[:200], y[:200])
    assert sub == pytest.approx(_tau_brute(x[:200], y[:200]), abs=1e-12)
    assert -1 <= kendall_tau(x, y) <= 1


def test_kendall_tau_errors():
    with pytest.raises(ValueError, match="equal-length"):
        kendall_tau([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="finite"):
        kendall_tau([1, float("nan")], [1, 2])


def test_error_report_by_hand():
    r = error_report([1.05, 2.5, 2.7, 4.0], [1.0, 2.0, 3.0, 4.0])
    # relative errors +5 %, +25 %, -10 %, 0 %: three within +/-10 % (the boundary counts)
    assert r.n == 4 and r.within_10 == 0.75
    assert r.mape == pytest.approx((5 + 25 + 10 + 0) / 4)
    assert r.median_ape == pytest.approx(7.5) and r.max_ape == pytest.approx(25)
    assert r.bias == pytest.approx(2.5)
    assert r.kendall_tau == 1.0
    assert "75.0% within +/-10%" in str(r)
    assert ErrorReport(**json.loads(json.dumps(r.to_dict()))) == r
    with pytest.raises(ValueError, match="positive"):
        error_report([1.0], [0.0])
    with pytest.raises(ValueError, match="equal-length"):
        error_report([1.0, 2.0], [1.0])


# --------------------------------------------------------------------------- fused kernels and features


def test_fused_kernels_of_a_resnet():
    g = samples.resnet_like()
    k = fused_kernels(g)
    assert k["stem.bn"] == k["stem.relu"] == "stem.conv"  # conv + BN + act
    assert k["b1.b.bn"] == k["b1.add"] == k["b1.out"] == "b1.b.conv"  # conv + BN + residual add + act
    assert k["b3.proj.bn"] == "b3.proj.conv" and k["b3.add"] == "b3.b.conv"  # one add, into one conv
    assert k["pool"] == "pool" and k["head"] == "head"
    assert "flatten" not in k and "x" not in k  # views and inputs are no kernels
    assert sum(r == n for n, r in k.items()) == 10


def test_fused_kernels_respect_consumers_order_and_duplicates():
    g = archir.Graph("t")
    x = g.input("x", (8, 6, 6))
    c = g.add("conv2d", x, out_channels=8, kernel_size=3, padding=1, name="c")
    bn = g.add("batchnorm2d", c, name="bn")
    r1 = g.add("relu", bn, name="r1")
    r2 = g.add("relu", bn, name="r2")  # the same as r1: ORT computes it once
    c2 = g.add("conv2d", x, out_channels=8, kernel_size=1, name="c2")
    other = g.add("relu", c2, name="other")  # c2 has two consumers: nothing fuses into it
    b2 = g.add("batchnorm2d", c2, name="b2")
    a = g.add("add", g.add("add", r1, r2, name="a0"), g.add("add", other, b2, name="a1"), name="a")
    r3 = g.add("relu", x, name="r3")
    r4 = g.add("relu", x, name="r4")
    g.set_outputs(g.add("concat", a, r3, r4, name="cat"))
    k = fused_kernels(g)
    # r2 repeats r1 and is merged into it first (as ORT's CSE does); then bn has one reader, so
    # conv + bn + relu make one kernel
    assert k["bn"] == k["r1"] == k["r2"] == "c"
    assert k["a0"] == "a0"  # an add after the activation does not fuse
    assert k["r4"] == k["r3"] == "r3"
    assert k["other"] == "other" and k["b2"] == "b2"
    feats = graph_features(g)
    assert feats["n_merged"] == 2
    assert feats["n_fused_bn"] == 1 and feats["n_standalone_bn"] == 1


def test_relu_after_bn_fuses_when_it_is_the_only_reader():
    g = archir.Graph("t")
    x = g.input("x", (8, 6, 6))
    h = g.add("relu", g.add("batchnorm2d", g.add("conv2d", x, out_channels=8, kernel_size=3, name="c"), name="b"),
              name="r")
    g.set_outputs(g.add("relu", h, name="r2"))  # an activation after an activation does not fuse again
    k = fused_kernels(g)
    assert k == {"c": "c", "b": "c", "r": "c", "r2": "r2"}


def test_graph_features_names_and_values():
    a, b = samples.chain(), samples.mobilenet_like()
    fa, fb = graph_features(a), graph_features(b)
    assert list(fa) == list(fb)  # the same names in the same order for every graph
    assert all(isinstance(v, float) and math.isfinite(v) for v in fa.values())
    c = count(b)
    assert fb["macs"] == c.macs and fb["flops"] == c.flops and fb["params"] == c.params
    assert fb["n_op_conv2d"] == len(b.nodes("conv2d"))
    assert fb["n_conv_dw"] == 3 and fb["n_conv_pw"] + fb["n_conv_dense"] + fb["n_conv_dw"] == 14
    assert fb["macs_conv_dw"] + fb["macs_conv_pw"] + fb["macs_conv_dense"] + fb["macs_linear"] == c.macs
    assert sum(fb[f"macs_conv_{k}_{a}"] for k in ("dense", "pw", "dw", "grouped") for a in ("a16", "a8", "a1")) \
        == c.macs - fb["macs_linear"]
    assert fb["n_kernels"] == sum(r == n for n, r in fused_kernels(b).items())
    assert fb["roofline_compute_bound_ms"] + fb["roofline_memory_bound_ms"] > 0
    assert graph_features(a, batch_size=3)["macs"] == 3 * fa["macs"]
    assert not any(k.startswith("table_") for k in fa)


class _StubTable:
    """Enough of a LatencyTable for the features: 0.01 ms per non-view node, 0.005 ms overhead."""

    batch_size = 1
    overhead_ms = 0.005
    fingerprint = {"device": "cpu: stub"}
    statistic = "median"

    def estimate_nodes(self, g):
        return {n.id: 0.0 if get_op(n.op).traits.zero_cost else 0.01 for n in g.nodes()}


def test_table_features():
    g = samples.resnet_like()
    f = graph_features(g, table=_StubTable())
    nonzero = [n for n in g.nodes() if not get_op(n.op).traits.zero_cost]
    assert f["table_ms"] == pytest.approx(0.005 + 0.01 * len(nonzero))
    parts = [k for k in f if k.startswith("table_") and k != "table_ms"]
    assert sum(f[k] for k in parts) == pytest.approx(0.01 * len(nonzero))
    assert f["table_fused_ms"] == pytest.approx(0.01 * sum(r != n for n, r in fused_kernels(g).items()))
    with pytest.raises(ValueError, match="batch"):
        graph_features(g, batch_size=2, table=_StubTable())


def test_supernets_are_refused():
    g = archir.Graph("s")
    g.set_outputs(g.add("choice", g.input("x", (2, 4, 4)), candidates=[{"name": "a", "ops": [{"op": "relu"}]},
                                                                      {"name": "b", "ops": []}]))
    g.init_params(0)
    with pytest.raises(IRError, match="derive"):
        graph_features(g)


# --------------------------------------------------------------------------- fitting


def _zoo() -> list[archir.Graph]:
    out = []
    for s, (w1, w2) in itertools.product((12, 16, 24), ((8, 16), (16, 16), (8, 32), (24, 8))):
        out.append(samples.chain(in_shape=(3, s, s), widths=(w1, w2)))
    for s, w in itertools.product((12, 16, 20), (4, 8, 12)):
        out.append(samples.resnet_like(in_shape=(3, s, s), width=w))
        out.append(samples.mobilenet_like(in_shape=(3, s, s), width=w))
    for cells, ch in ((2, 4), (3, 4), (2, 8), (4, 4)):
        out.append(samples.darts_like(cells=cells, channels=ch, in_shape=(3, 12, 12)))
    return out


def _synthetic_ms(g: archir.Graph) -> float:
    """A known additive latency: overhead, per kernel, per MAC, per standalone elementwise byte."""
    f = graph_features(g)
    return 0.02 + 2e-3 * f["n_kernels"] + 4e-8 * f["macs"] + 5e-8 * f["standalone_eltwise_bytes"]


@pytest.fixture(scope="module")
def data():
    graphs = _zoo()
    rng = np.random.default_rng(0)
    y = np.array([_synthetic_ms(g) for g in graphs]) * rng.uniform(0.98, 1.02, len(graphs))
    test = np.zeros(len(graphs), bool)
    test[rng.permutation(len(graphs))[: len(graphs) // 3]] = True
    return graphs, y, test


def _split(data):
    graphs, y, test = data
    tr = [g for g, t in zip(graphs, test) if not t]
    te = [g for g, t in zip(graphs, test) if t]
    return tr, y[~test], te, y[test]


def test_fit_predicts_held_out_networks(data):
    tr, ytr, te, yte = _split(data)
    p = Predictor().fit(tr, ytr)
    r = p.evaluate(te, yte)
    assert r.n == len(te)
    assert r.within_10 >= 0.95 and r.mape < 5 and r.kendall_tau > 0.9, str(r)
    assert p.train_report.n == len(tr) and p.alpha_ in Predictor.ALPHAS
    assert p.predict(te[0]) == pytest.approx(p.predict_many(te)[0], rel=1e-12)
    # a constant guess is far worse: the report can fail
    bad = error_report(np.full(len(yte), np.median(ytr)), yte)
    assert bad.within_10 < 0.6


def test_log_model_and_fixed_alpha(data):
    tr, ytr, te, yte = _split(data)
    r = Predictor(model="log").fit(tr, ytr).evaluate(te, yte)
    assert r.kendall_tau > 0.85 and r.mape < 15, str(r)
    p = Predictor(alpha=1e-3).fit(tr, ytr)
    assert p.alpha_ == 1e-3


def test_far_extrapolation_warns(data):
    tr, ytr, _, _ = _split(data)
    p = Predictor().fit(tr, ytr)
    big = samples.darts_like(cells=6, channels=16, in_shape=(3, 32, 32))  # far larger than any training net
    with pytest.warns(RuntimeWarning, match="outside the latencies it was fitted on"):
        v = p.predict(big)
    assert v > 0


def test_fit_accepts_latency_results(data):
    tr, ytr, _, _ = _split(data)
    lats = [Latency(float(v), float(v), float(v), 1, 1.0, "cpu: test", {"onnxruntime": "x"}, "ort-cpu", 1, 1)
            for v in ytr]
    p = Predictor().fit(tr, lats)
    assert p.meta["backend"] == "ort-cpu" and p.meta["device"] == "cpu: test"
    np.testing.assert_allclose(p.predict_many(tr), Predictor().fit(tr, ytr).predict_many(tr))


def test_fit_errors(data):
    tr, ytr, _, _ = _split(data)
    with pytest.raises(ValueError, match="at least 5"):
        Predictor().fit(tr[:3], ytr[:3])
    with pytest.raises(ValueError, match="graphs but"):
        Predictor().fit(tr, ytr[:-1])
    with pytest.raises(ValueError, match="positive finite"):
        Predictor().fit(tr, np.r_[ytr[:-1], 0.0])
    with pytest.raises(RuntimeError, match="not fitted"):
        Predictor().predict(tr[0])
    with pytest.raises(ValueError, match="unknown model"):
        Predictor(model="forest")
    with pytest.raises(ValueError, match="alpha"):
        Predictor(alpha=-1)


# --------------------------------------------------------------------------- files


def test_save_load_round_trip_is_exact(data, tmp_path):
    tr, ytr, te, _ = _split(data)
    p = Predictor().fit(tr, ytr)
    path = p.save(tmp_path / "p.json")
    text = path.read_text()
    doc = json.loads(text)  # plain JSON, no pickle
    assert doc["format"] == "archir.costmodels.Predictor" and doc["version"] == pred_mod.PREDICTOR_FORMAT_VERSION
    q = Predictor.load(path)
    np.testing.assert_array_equal(q.predict_many(te), p.predict_many(te))
    assert q.train_report == p.train_report and q.alpha_ == p.alpha_
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_load_refuses_other_versions_and_other_files(data, tmp_path):
    tr, ytr, _, _ = _split(data)
    path = Predictor().fit(tr, ytr).save(tmp_path / "p.json")
    doc = json.loads(path.read_text())
    doc["version"] = 999
    (tmp_path / "v.json").write_text(json.dumps(doc))
    with pytest.raises(PredictorFormatError, match=r"format version 999.*reads version 1.*Refit"):
        Predictor.load(tmp_path / "v.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "archir.graph", "version": 1}))
    with pytest.raises(PredictorFormatError, match="not a predictor file"):
        Predictor.load(tmp_path / "other.json")
    (tmp_path / "bin").write_bytes(b"\x80\x04\x95 pickle")
    with pytest.raises(PredictorFormatError, match="not JSON"):
        Predictor.load(tmp_path / "bin")
    doc["version"] = 1
    doc["coef"] = doc["coef"][:-1]
    (tmp_path / "broken.json").write_text(json.dumps(doc))
    with pytest.raises(PredictorFormatError, match="broken"):
        Predictor.load(tmp_path / "broken.json")


def test_table_features_need_a_table_after_loading(data, tmp_path):
    tr, ytr, te, _ = _split(data)
    p = Predictor(table=_StubTable()).fit(tr, ytr)
    assert "table_ms" in p.feature_names
    path = p.save(tmp_path / "p.json")
    with pytest.raises(ValueError, match="table"):
        Predictor.load(path)
    q = Predictor.load(path, table=_StubTable())
    np.testing.assert_array_equal(q.predict_many(te), p.predict_many(te))
    other = _StubTable()
    other.fingerprint = {"device": "cpu: elsewhere"}
    with pytest.warns(RuntimeWarning, match="another fingerprint"):
        Predictor.load(path, table=other)


# --------------------------------------------------------------------------- the benchmark


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # a predictor fitted on 8 networks extrapolates
def test_benchmark_quick_run_prints_every_row(capsys, tmp_path):
    """benchmarks/latency_models.py runs end to end (tiny: 6 networks per space) and prints its table.

    Nothing about the figures is asserted (the machine is shared): only that every row is there.
    """
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "latency_models.py"
    spec = importlib.util.spec_from_file_location("benchmarks_latency_models", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    for build in (mod.chain_net, mod.darts_net):  # the spaces build valid, varied networks
        gs = [build(rng, i) for i in range(3)]
        assert len({g.structural_hash() for g in gs}) == 3
    assert mod.main(["--quick", "--n", "6", "--rounds", "1", "--repeats", "2", "--table",
                     str(tmp_path / "lut.sqlite")]) == 0
    out = capsys.readouterr().out
    assert "command : python benchmarks/latency_models.py --quick --n 6" in out
    assert "onnxruntime" in out and "machine : cpu: " in out
    for row in ("MACs x scale", "FLOPs x scale", "roofline (probed CPU) x scale", "latency table sum",
                "Predictor (IR features)", "Predictor (IR + table features)", "repeatability [min]"):
        assert row in out, row
    assert re.search(r"goal: Predictor .* -> (PASS|FAIL)", out)
    assert (tmp_path / "lut.sqlite").exists()
