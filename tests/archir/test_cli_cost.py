"""Tests of ``archir cost`` and ``archir profile`` (``archir/cli/cost.py``).

The printed numbers are checked against the library's (``costmodels.count``,
``costmodels.roofline``, ``costmodels.LatencyTable``); latencies are measured with few
repeats (no timing is asserted, only their consistency).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import archir
import costmodels
from archir import samples
from archir.cli import cost as cost_cli
from archir.cli.main import main
from archir.errors import ArchirError


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cost_nets")
    archir.save(samples.chain(), d / "chain.json")
    archir.save(samples.resnet_like(), d / "resnet_like.json")
    g = archir.Graph("super")
    x = g.input("x", (3, 8, 8))
    h = g.add("choice", x, name="cell.choice", candidates=[
        {"name": "conv", "ops": [{"op": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1}]},
        {"name": "skip", "ops": [{"op": "identity"}]}])
    g.set_outputs(g.add("linear", g.add("flatten", g.add("global_avgpool", h)), out_features=2, name="head"))
    g.init_params(seed=0).validate()
    archir.save(g, d / "super.json")
    return d


def _one_line_error(rc: int, err: str, *, contains: str = "") -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("archir: error: "), err
    assert len(lines) <= 2 and (len(lines) == 1 or lines[1].startswith("  how to fix: ")), err
    assert contains in err, err


def _total(out: str, label: str) -> int:
    m = re.search(rf"^  {label} +([\d,]+)", out, re.M)
    assert m, (label, out)
    return int(m.group(1).replace(",", ""))


def test_backends_match_costmodels():
    assert cost_cli.BACKENDS == tuple(costmodels.BACKENDS)
    names = [sc.name for sc in cost_cli.SUBCOMMANDS]
    assert names == ["cost", "profile"]
    # the CLI catches every ArchirError: the backend error is one
    assert issubclass(costmodels.BackendUnavailable, ArchirError)
    assert issubclass(costmodels.BackendUnavailable, RuntimeError)


@pytest.mark.parametrize("name", ["cost", "profile"])
def test_help(name, capsys):
    assert main(["--help"]) == 0
    assert re.search(rf"^    {name} +\w", capsys.readouterr().out, re.M)
    assert main([name, "--help"]) == 0
    assert "--json" in capsys.readouterr().out


# --------------------------------------------------------------------------- cost


@pytest.mark.parametrize("name", ["chain", "resnet_like"])
@pytest.mark.parametrize("batch", [1, 3])
def test_cost_totals_equal_count(nets, capsys, name, batch):
    path = nets / f"{name}.json"
    assert main(["cost", str(path), "--batch-size", str(batch)]) == 0
    out = capsys.readouterr().out
    c = costmodels.count(archir.load(path), batch_size=batch)
    assert f"batch {batch}" in out.splitlines()[0]
    for label, key in (("params", "params"), ("MACs", "macs"), ("FLOPs", "flops"),
                       ("activation bytes", "activation_bytes"), ("weight bytes", "weight_bytes"),
                       ("bytes moved", "bytes_moved"), ("peak bytes", "peak_bytes")):
        assert _total(out, label) == getattr(c, key), label
    assert f"at node {c.peak_node!r}" in out
    # one row per node with its numbers (the table of Counts.table())
    for r in c.nodes.values():
        row = re.search(rf"^{re.escape(r.id)} +{r.op} +([\d,]+) +([\d,]+) +([\d,]+)", out, re.M)
        assert row, r.id
        assert [int(v.replace(",", "")) for v in row.groups()] == [r.params, r.macs, r.flops]


def test_cost_json_is_counts_to_dict(nets, capsys):
    assert main(["cost", str(nets / "resnet_like.json"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads(json.dumps(costmodels.count(archir.load(nets / "resnet_like.json")).to_dict()))


def test_cost_by_op_sums(nets, capsys):
    assert main(["cost", str(nets / "resnet_like.json"), "--by-op"]) == 0
    out = capsys.readouterr().out
    by_op = costmodels.count(archir.load(nets / "resnet_like.json")).by_op()
    for op, d in by_op.items():
        row = re.search(rf"^{op} +(\d+) +([\d,]+) +([\d,]+) +([\d,]+)", out, re.M)
        assert row, op
        assert [int(v.replace(",", "")) for v in row.groups()] == [d["nodes"], d["params"], d["macs"], d["flops"]]


def test_cost_of_a_supernet_says_so(nets, capsys):
    assert main(["cost", str(nets / "super.json")]) == 0
    out = capsys.readouterr().out
    assert "a supernet (choice nodes): every candidate is counted" in out
    assert _total(out, "MACs") == costmodels.count(archir.load(nets / "super.json")).macs


@pytest.mark.parametrize("argv, contains", [
    (["{tmp}/missing.json"], "missing.json"),
    (["{net}", "--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_cost_errors(nets, tmp_path, capsys, argv, contains):
    rc = main(["cost", *[a.format(net=nets / "chain.json", tmp=tmp_path) for a in argv]])
    _one_line_error(rc, capsys.readouterr().err, contains=contains)


# --------------------------------------------------------------------------- profile


def _profile_json(argv: list[str], capsys) -> dict:
    assert main(["profile", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("backend", ["ort-cpu", "torch-cpu"])
def test_profile_reports_spread_and_the_roofline(nets, capsys, backend):
    net = str(nets / "chain.json")
    doc = _profile_json([net, "--backend", backend, "--threads", "1", "--warmup", "1", "--repeats", "7",
                         "--batch-size", "2", "--device", "h100"], capsys)
    lat = doc["latency"]
    assert lat["backend"] == backend and lat["batch_size"] == 2 and lat["threads"] == 1
    assert lat["n"] == 7 and len(lat["samples_ms"]) == 7
    assert 0 < lat["p25_ms"] <= lat["median_ms"] <= lat["p75_ms"]
    assert doc["iqr_ms"] == pytest.approx(lat["p75_ms"] - lat["p25_ms"])
    assert lat["first_run_ms"] > 0 and lat["device"].startswith("cpu: ")
    roof = costmodels.roofline(archir.load(net), costmodels.H100_SXM, batch_size=2)
    assert doc["roofline"]["device"] == costmodels.H100_SXM.name
    assert doc["roofline"]["time_ms"] == roof.time_ms
    assert doc["roofline"]["measured_over_bound"] == pytest.approx(lat["median_ms"] / roof.time_ms)


def test_profile_text(nets, capsys):
    net = str(nets / "chain.json")
    assert main(["profile", net, "--threads", "1", "--warmup", "0", "--repeats", "5", "--device", "h200",
                 "--precision", "tf32"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"latency +median ([\d.e+-]+) ms \(p25 ([\d.e+-]+), p75 ([\d.e+-]+); IQR .* n=5 timed runs "
                  r"after 0 warm-up\)", out)
    assert m, out
    med, p25, p75 = map(float, m.groups())
    assert p25 <= med <= p75
    assert re.search(r"first run +[\d.]+ ms", out)
    roof = costmodels.roofline(archir.load(net), costmodels.H200.with_precision("tf32"))
    assert f"roofline   >= {roof.time_ms:.4g} ms on NVIDIA H200 SXM (tf32)" in out
    assert "onnxruntime" in out and "device     cpu: " in out


def test_profile_probes_the_cpu_by_default(nets, capsys):
    doc = _profile_json([str(nets / "chain.json"), "--threads", "1", "--warmup", "0", "--repeats", "3",
                         "--probe-seconds", "0.05"], capsys)
    assert doc["roofline"]["device"].endswith("[1 threads, probed]")
    assert doc["roofline"]["time_ms"] > 0


def test_profile_table_estimate_equals_the_library(nets, tmp_path, capsys):
    net = str(nets / "chain.json")
    lut = tmp_path / "lut.sqlite"
    doc = _profile_json([net, "--threads", "1", "--warmup", "1", "--repeats", "3", "--device", "h100",
                         "--table", str(lut)], capsys)
    g = archir.load(net)
    with costmodels.LatencyTable(lut, "ort-cpu", threads=1, warmup=1, repeats=3) as table:
        per_node = table.estimate_nodes(g, measure=False)  # everything was measured by the CLI
        assert doc["table"]["estimate_ms"] == pytest.approx(table.estimate(g, measure=False), rel=1e-12)
        assert doc["table"]["overhead_ms"] == table.overhead_ms
    for op, d in doc["table"]["per_op"].items():
        nodes = [n for n in g.topo_order() if g.node(n).op == op]
        assert d["nodes"] == len(nodes)
        assert d["ms"] == pytest.approx(sum(per_node[n] for n in nodes), rel=1e-12)
    # text mode prints the same estimate and a per-op breakdown
    assert main(["profile", net, "--threads", "1", "--warmup", "1", "--repeats", "3", "--device", "h100",
                 "--table", str(lut)]) == 0
    out = capsys.readouterr().out
    assert f"table      estimate {doc['table']['estimate_ms']:.4g} ms from {lut}" in out
    assert re.search(r"^    conv2d +2 +[\d.e-]+ +[\d.]+%$", out, re.M)
    assert "(call overhead)" in out


@pytest.mark.parametrize("backend", ["torch-cuda", "ort-cuda"])
def test_unavailable_backend_is_one_line_naming_what_to_install(nets, tmp_path, capsys, monkeypatch, backend):
    # make the backend unavailable even on a GPU machine
    import onnxruntime
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    rc = main(["profile", str(nets / "chain.json"), "--backend", backend, "--repeats", "1",
               "--table", str(tmp_path / "lut.sqlite")])
    err = capsys.readouterr().err
    _one_line_error(rc, err, contains=f"backend {backend!r}")
    assert ("install" in err) and ("use backend" in err)
    assert list(tmp_path.iterdir()) == []  # no latency table was created


def test_profile_of_a_supernet_is_a_clear_error(nets, capsys):
    rc = main(["profile", str(nets / "super.json"), "--repeats", "1", "--device", "h100"])
    _one_line_error(rc, capsys.readouterr().err, contains="choice")


@pytest.mark.parametrize("argv, contains", [
    (["{tmp}/missing.json"], "missing.json"),
    (["{net}", "--repeats", "0"], "--repeats must be >= 1"),
    (["{net}", "--warmup", "-1"], "--warmup must be >= 0"),
    (["{net}", "--threads", "0"], "--threads must be >= 1"),
    (["{net}", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["{net}", "--device", "tpu"], "--device 'tpu' is not known; choose one of cpu, h100"),
    (["{net}", "--probe-seconds", "0"], "--probe-seconds must be a positive number"),
    (["{net}", "--table", "{tmp}/no/such/lut.sqlite"], "does not exist"),
    (["{net}", "--table", "{tmp}"], "is a folder"),
])
def test_profile_errors(nets, tmp_path, capsys, argv, contains):
    before = {p.name for p in tmp_path.iterdir()}
    rc = main(["profile", *[a.format(net=nets / "chain.json", tmp=tmp_path) for a in argv]])
    _one_line_error(rc, capsys.readouterr().err, contains=contains)
    assert {p.name for p in tmp_path.iterdir()} == before


def test_unknown_backend_is_a_usage_error(nets, capsys):
    assert main(["profile", str(nets / "chain.json"), "--backend", "tpu"]) == 2
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch-cuda", "ort-cuda"])
def test_profile_on_the_gpu(nets, capsys, backend):
    import onnxruntime

    if backend == "ort-cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime here has no CUDAExecutionProvider")
    doc = _profile_json([str(nets / "resnet_like.json"), "--backend", backend, "--repeats", "20"], capsys)
    assert doc["latency"]["device"].startswith("gpu: ") and doc["latency"]["n"] == 20
    gpu = doc["latency"]["device"].lower()
    if "h100" in gpu or "h200" in gpu:
        assert doc["roofline"]["time_ms"] > 0
    else:
        assert doc["roofline"] is None and "--device" in doc["roofline_skipped"]
