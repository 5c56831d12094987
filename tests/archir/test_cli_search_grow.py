"""``archir search --strategy petridish`` through the CLI: a grown run, its gallery and export; warm start; bad --start."""

from __future__ import annotations

import re

import numpy as np
import pytest

import archir
import passes
from archir.cli.main import main
from archir.lower import verify_onnx
from search.experiment import load_candidate_graph
from search.morph import starter
from search.store import Store

TINY = ["--budget", "3c", "--epochs", "1", "--batch-size", "128", "--strategy-opt", 'ops=["conv3x3","identity"]',
        "--quiet"]


def _grow(out, *extra) -> int:
    return main(["search", "--strategy", "petridish", "--out", str(out), *TINY, *extra])


def _candidates(run):
    with Store.open(run) as st:
        return st.config, st.candidates()


def _verified(g, path):
    """``path`` checked against ``g`` under ONNX Runtime (atol 1e-4, rtol 1e-4, a batch of 3)."""
    x = np.random.default_rng(0).normal(size=(3, 1, 8, 8)).astype(np.float32)
    return verify_onnx(g, path, inputs=x, atol=1e-4, rtol=1e-4).raise_if_failed()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("grow") / "run"
    assert _grow(out) == 0
    return out


def test_petridish_search_ends_with_a_gallery_and_a_verified_best_onnx(run, capsys):
    # the fixture's output is gone; a resume of the finished run prints the summary again, training nothing
    assert _grow(run, "--resume") == 0
    out = capsys.readouterr().out
    assert re.search(r"search finished: 3 candidates \(3 done, 0 failed\)", out), out
    assert f"gallery: {run / 'pareto.png'}" in out and f"best ONNX: {run / 'best.onnx'}" in out
    assert "verified with ONNX Runtime" in out
    assert (run / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    config, cands = _candidates(run)
    assert config["space"] == "start" and config["strategy"] == "petridish"
    assert config["train"]["schedule"] == "sgdr" and config["strategy_options"] == {"ops": ["conv3x3", "identity"]}
    # the start graph, then two Petridish children of it: grown (no stop op left), exactly preserving before training
    assert [c.status for c in cands] == ["done"] * 3
    assert cands[0].op == "start" and [c.parents for c in cands[1:]] == [[0], [0]]
    for c in cands[1:]:
        g = archir.load(run / c.graph_path)
        assert c.op == "petridish:1" and c.metrics["preserve_max_abs"] == 0.0
        assert g.meta["grown"]["method"] == "petridish" and len(g.meta["grown"]["moves"]) == 1
        assert not passes.stop_ops(g) and g.nodes("scale")
        assert c.graph_hash != cands[0].graph_hash
    # best.onnx is the best candidate's graph: ONNX Runtime computes what torch.fx does
    best = min(cands, key=lambda c: (c.score, c.id))
    _verified(archir.load(run / best.graph_path), run / "best.onnx")


def test_gallery_and_export_of_the_grown_run(run, tmp_path, capsys):
    png = tmp_path / "p.png"
    assert main(["gallery", str(run), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "* on the Pareto frontier" in out and f"wrote {png}" in out and png.read_bytes()[:4] == b"\x89PNG"
    assert out.count("#0 + petridish at 1 node") == 2, out  # both children, described by the space
    assert main(["export", str(run), "--best", "--onnx", str(tmp_path / "x.onnx")]) == 0
    out = capsys.readouterr().out
    assert "outputs match" in out
    assert (tmp_path / "x.onnx").read_bytes() == (run / "best.onnx").read_bytes()
    g, _ = load_candidate_graph(run, best=True)
    assert _verified(g, tmp_path / "x.onnx").outputs[0].shape == (3, 10)


def test_warm_start_from_a_saved_graph(run, tmp_path, capsys):
    from search.data import load_dataset
    from search.train import TrainConfig, train

    res = train(starter((1, 8, 8), 10), load_dataset("digits"), TrainConfig(epochs=2, schedule="sgdr"))
    assert res.ok
    archir.save(res.graph, tmp_path / "net.json")
    out = tmp_path / "warm"
    assert _grow(out, "--start", str(tmp_path / "net.json"), "--no-export") == 0
    assert "search finished: 3 candidates (3 done, 0 failed)" in capsys.readouterr().out
    config, cands = _candidates(out)
    assert config["space_options"]["start"] == str(tmp_path / "net.json")
    assert [c.status for c in cands] == ["done"] * 3 and [c.parents for c in cands[1:]] == [[0], [0]]
    # the file's trained weights were kept: one more epoch from them beats one epoch of the cold built-in starter
    _, cold = _candidates(run)
    assert cands[0].metrics["val_error"] < cold[0].metrics["val_error"]
    assert not (out / "best.onnx").exists()  # --no-export


@pytest.mark.parametrize("make, message", [
    (None, "no such file"),
    (lambda p: p.mkdir(), "is a folder, not a graph file"),
    (lambda p: p.write_text("this is not JSON"), "start graph"),
    (lambda p: p.write_text('{"bad": 1}'), "start graph"),
    (lambda p: archir.save(starter((3, 8, 8), 10), p), "does not fit the dataset's (1, 8, 8)"),
    (lambda p: archir.save(starter((1, 8, 8), 5), p), "are not one (10,) logits vector"),
])
def test_bad_start_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, make, message):
    start = tmp_path / "net.json"
    if make is not None:
        make(start)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert _grow(tmp_path / "new", "--start", str(start)) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0].startswith("archir: error: ") and message in lines[0], err
    assert len(lines) == 2 and lines[1].startswith("  how to fix: "), err
    assert "Traceback" not in err
    assert not (tmp_path / "new").exists() and sorted(p.name for p in tmp_path.iterdir()) == before
