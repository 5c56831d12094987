"""Tests of ``archir prune`` (archir/cli/prune.py) and ``archir export --canonicalize``."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest

import archir
from archir import samples
from archir.cli.main import main


@pytest.fixture(scope="module")
def net_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("prune")
    archir.save(samples.resnet_like(), d / "net.json")
    return d


def _one_line_error(rc: int, err: str, contains: str, code: int = 2) -> None:
    assert rc == code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("archir: error: ") and len(lines) == 2 and lines[1].startswith("  how to fix: "), err
    assert contains in err, err


def test_prune_writes_the_graph_and_prints_the_report(net_dir, capsys):
    out = net_dir / "small.json"
    assert main(["prune", str(net_dir / "net.json"), "--ratio", "0.5", "--criterion", "l1", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "28 channels removed" in text and "stem.conv, b1.b.conv, b2.b.conv    8 -> 4" in text
    assert "params: 6,450 -> 1,758" in text and "MACs:   874,656 -> 232,528" in text
    assert "output deviation (eval mode" in text and "skipped group 6 (head)" in text
    lat = re.search(r"^latency \(ort-cpu 1 thread, measured\): ([\d.e-]+) ms -> ([\d.e-]+) ms \(([\d.]+)x (faster|slower)\)$",
                    text, re.M)
    assert lat and float(lat.group(1)) > 0 and float(lat.group(2)) > 0 and float(lat.group(3)) > 0, text
    small = archir.load(out)
    assert small.node("b1.a.conv").attrs["out_channels"] == 4 and out.with_suffix(".safetensors").exists()


def test_prune_keep_and_groups(net_dir, capsys):
    out = net_dir / "k.json"
    assert main(["prune", str(net_dir / "net.json"), "--keep", "3", "--groups", "b1.a.conv", "--no-latency",
                 "-o", str(out)]) == 0
    assert "latency (" not in capsys.readouterr().out
    g = archir.load(out)
    assert g.node("b1.a.conv").attrs["out_channels"] == 3 and g.node("b2.a.conv").attrs["out_channels"] == 8
    assert main(["prune", str(net_dir / "net.json"), "--ratio", "0.75", "--round-to", "4", "-o", str(out)]) == 0
    assert archir.load(out).node("b1.a.conv").attrs["out_channels"] == 4  # 8 * 0.25 = 2, rounded up to 4


def test_prune_list(net_dir, capsys):
    assert main(["prune", str(net_dir / "net.json"), "--list"]) == 0
    text = capsys.readouterr().out
    assert "5 prunable group(s)" in text and "group 5: 16 channels, producers b3.b.conv, b3.proj.conv" in text


@pytest.mark.parametrize("argv,contains", [
    (["--ratio", "1.5", "-o", "s.json"], "--ratio must be in [0, 1)"),
    (["-o", "s.json"], "say how much to prune"),
    (["--ratio", "0.5"], "no output file"),
    (["--keep", "0", "-o", "s.json"], "--keep must be at least 1"),
    (["--ratio", "0.5", "--round-to", "0", "-o", "s.json"], "--round-to must be at least 1"),
    (["--ratio", "0.5", "-o", "s.onnx"], "must be a .json file"),
    (["--ratio", "0.5", "--groups", "head", "-o", "s.json"], "graph output 'head'"),
    (["--ratio", "0.5", "--groups", "nope", "-o", "s.json"], "no node 'nope'"),
    (["--ratio", "0.5", "--groups", " , ", "-o", "s.json"], "--groups is empty"),
    (["--ratio", "0.5", "-o", "missing/s.json"], "does not exist"),
])
def test_prune_refusals_are_one_line_and_write_nothing(net_dir, capsys, monkeypatch, argv, contains):
    monkeypatch.chdir(net_dir)
    before = sorted(p.name for p in net_dir.iterdir())
    rc = main(["prune", "net.json", *argv])
    _one_line_error(rc, capsys.readouterr().err, contains)
    assert sorted(p.name for p in net_dir.iterdir()) == before


def test_prune_missing_graph(tmp_path, capsys):
    rc = main(["prune", str(tmp_path / "none.json"), "--ratio", "0.5", "-o", str(tmp_path / "s.json")])
    assert rc == 2 and "Traceback" not in capsys.readouterr().err


def test_export_canonicalize(net_dir, capsys):
    out = net_dir / "net.onnx"
    assert main(["export", str(net_dir / "net.json"), "--onnx", str(out), "--canonicalize"]) == 0
    text = capsys.readouterr().out
    assert "canonicalized: 30 -> 22 nodes (8 BN folded)" in text and "outputs match" in text
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    plain = net_dir / "plain.onnx"
    assert main(["export", str(net_dir / "net.json"), "--onnx", str(plain)]) == 0
    assert "BatchNormalization" in {n.op_type for n in onnx.load(plain).graph.node}


def test_prune_on_an_unavailable_latency_backend_writes_nothing(net_dir, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no GPU, even on a GPU machine
    out = net_dir / "gpu.json"
    rc = main(["prune", str(net_dir / "net.json"), "--ratio", "0.5", "--latency", "torch-cuda", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "backend 'torch-cuda'" in err and "Traceback" not in err
    assert not out.exists() and not out.with_suffix(".safetensors").exists()
