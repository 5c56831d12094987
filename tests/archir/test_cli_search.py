"""``archir search``, ``archir gallery`` and ``archir export RUN --best/--id`` on a tiny budget."""

from __future__ import annotations

import re

import numpy as np
import pytest

from archir.cli.main import main
from archir.lower import verify_onnx
from search.experiment import load_candidate_graph
from search.store import Store

TINY = ["--budget", "4c", "--space-opt", "layers=2", "--epochs", "1", "--batch-size", "128", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "demo"
    assert main(["search", "--out", str(out), "--objective", "params", *TINY]) == 0
    return out


def _onnx_runs(path, run, **which) -> tuple:
    """The output shape of the ONNX file at ``path``, checked against the run's candidate graph."""
    g, _ = load_candidate_graph(run, **which)
    rep = verify_onnx(g, path, inputs=np.zeros((2, 1, 8, 8), np.float32)).raise_if_failed()
    return rep.outputs[0].shape


def test_search_prints_where_the_gallery_and_best_onnx_are(run, capsys):
    # the fixture's output is gone; run the summary again on a resumed, finished run (nothing new is trained)
    assert main(["search", "--out", str(run), "--objective", "params", *TINY, "--resume"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"search finished: 4 candidates \(4 done, 0 failed\) in \d+s \(\d+s over all sessions\); "
                     r"[1-4] distinct architectures", out), out
    assert f"gallery: {run / 'pareto.png'}" in out and f"best ONNX: {run / 'best.onnx'}" in out
    assert "verified with ONNX Runtime" in out
    with Store.open(run) as st:
        assert len(st.candidates()) == 4  # the resume added nothing
    assert (run / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert _onnx_runs(run / "best.onnx", run, best=True) == (2, 10)


def test_gallery_prints_the_table_and_writes_the_plot(run, tmp_path, capsys):
    png = tmp_path / "p.png"
    assert main(["gallery", str(run), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "val_err" in out and "* on the Pareto frontier" in out and f"wrote {png}" in out
    rows = [line for line in out.splitlines() if line[:1] in ("*", " ") and line[2:6].strip().isdigit()]
    assert len(rows) == 4
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_export_best_and_by_id(run, tmp_path, capsys):
    assert main(["export", str(run), "--best", "--onnx", str(tmp_path / "b.onnx")]) == 0
    assert main(["export", str(run), "--id", "2", "--onnx", str(tmp_path / "2.onnx")]) == 0
    out = capsys.readouterr().out
    assert "candidate 2 of" in out and out.count("outputs match") == 2
    assert _onnx_runs(tmp_path / "2.onnx", run, cid=2) == (2, 10)
    assert (tmp_path / "b.onnx").read_bytes() == (run / "best.onnx").read_bytes()


@pytest.mark.parametrize("argv, message", [
    (["export", "{run}", "--onnx", "{tmp}/x.onnx"], "is a folder: say which candidate"),
    (["export", "{run}", "--id", "99", "--onnx", "{tmp}/x.onnx"], "no candidate 99 (this run has ids 0..3)"),
    (["search", "--out", "{run}", *TINY], "already holds a search"),
    (["search", "--out", "{run}", *TINY, "--resume", "--seed", "5"], "seed: stored 0, given 5"),
    (["search", "--out", "{tmp}/new", *TINY, "--address", "auto"], "--address applies to --executor process or ray"),
    (["search", "--out", "{tmp}/new", "--budget", "ten minutes"], "budget 'ten minutes' is not a number"),
    (["search", "--out", "{tmp}/new", "--objective", "speed"], "unknown objective 'speed'"),
    (["search", "--out", "{tmp}/new", "--strategy", "anneal", *TINY], "unknown strategy 'anneal'"),
    (["search", "--out", "{tmp}/new", "--space", "resnet", *TINY], "unknown search space 'resnet'"),
    (["search", "--out", "{tmp}/new", "--dataset", "{tmp}/none.npz", *TINY], "none.npz"),
    (["search", "--out", "{tmp}/new", "--space-opt", "layers", *TINY], "is not KEY=VALUE"),
    (["gallery", "{tmp}"], "no search store"),
])
def test_bad_input_is_one_line_and_exit_2(run, tmp_path, capsys, argv, message):
    argv = [a.format(run=run, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0].startswith("archir: error: ") and message in lines[0], err
    assert len(lines) == 2 and lines[1].startswith("  how to fix: ")
    assert not (tmp_path / "new").exists()


def test_gallery_without_matplotlib_is_one_line(run, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["gallery", str(run), "--png", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "archir: error: the Pareto plot needs matplotlib, which is not installed"
    assert err[1].startswith("  how to fix: pip install matplotlib")
    assert main(["gallery", str(run), "--no-plot"]) == 0  # the table needs no matplotlib
