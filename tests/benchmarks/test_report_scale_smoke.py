"""Smoke test of ``benchmarks/report_scale.py``: a small synthetic store prints every figure.

No size or time goal is asserted (the benchmark prints PASS/FAIL); the store it writes is checked
against what it says it wrote, and the render line is there when Chromium is (skipped and said so
otherwise).
"""

from __future__ import annotations

import re
from pathlib import Path

from search.report_browser import chromium_paths
from search.store import Store
from tests.benchmarks import load_benchmark

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "report_scale.py"


def test_small_store_prints_the_figures(tmp_path, capsys):
    bench = load_benchmark(SCRIPT)
    kinds = bench.make_run(tmp_path / "run", 60, 5, 3)
    with Store.open(tmp_path / "run") as st:
        cands = st.candidates()
        curves = st.curves()
    assert len(cands) == 60 and sum(c.status == "done" for c in cands) == kinds["done"]
    assert sum(c.graph_path is not None for c in cands) == kinds["graphs"] == 5
    assert sorted(curves) == [c.id for c in cands if c.status == "done"] and all(len(h) == 3 for h in curves.values())
    assert all(c.parents and c.parents[0] < c.id for c in cands if c.op.startswith("mutate:"))

    assert bench.main(["--candidates", "40", "--graphs", "4", "--epochs", "2", "--repeats", "1",
                       "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^store: 40 candidates \(\d+ done, \d+ failed; 4 with a graph file", out, re.M), out
    assert re.search(r"^html size: \d+\.\d\d MB .* goal < 20 MB: (PASS|FAIL)$", out, re.M), out
    if chromium_paths() is not None:
        assert re.search(r"^render: \d+\.\d\d s median .* goal < 3 s: (PASS|FAIL)$", out, re.M), out
        assert re.search(r"^select: \d+\.\d\d s", out, re.M), out
    else:
        assert "render: skipped" in out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("report-scale-")] == []  # cleaned up
