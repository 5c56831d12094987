"""Smoke test of ``benchmarks/nb201_table.py``: a tiny run on a synthetic table prints every figure.

The table is made here, in ``tmp_path`` (all 15,625 NAS-Bench-201 cells with made-up accuracies):
the test never reads the shared benchmark file. No accuracy or timing is asserted.
"""

from __future__ import annotations

import csv
import itertools
import re
from pathlib import Path

from search.spaces.nb201 import OPS, Nb201Space
from tests.benchmarks import load_benchmark

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "nb201_table.py"


def test_tiny_run_prints_the_table(tmp_path, capsys):
    space = Nb201Space()
    table = tmp_path / "fake.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "cellstr", "cifar10_val", "cifar10_test"])
        for n, edges in enumerate(itertools.product(OPS, repeat=6)):
            v = 50.0 + 5.0 * edges.count("nor_conv_3x3") + 0.001 * n
            w.writerow([n, space.to_string({"edges": list(edges)}), round(v, 3), round(v + 2.0, 3)])
    bench = load_benchmark(SCRIPT)
    assert bench.main([str(table), "--seeds", "2", "--queries", "12", "--pnas-steps", "10", "--pnas-ensemble", "1",
                       "--workdir", str(tmp_path), "--no-disk-check"]) == 0
    out = capsys.readouterr().out
    # the all-3x3 cell (index 3 * (5**5 + ... + 1) in product order) is the table's best
    assert "best by cifar10_val: 91.72 -> cifar10_test 93.72 (|nor_conv_3x3~0|+" in out
    for s in ("random", "evolution", "reinforce", "pnas"):
        assert re.search(rf"^  {s:<9} \| +\d+\.\d\d \+/- \d\.\d\d \| +\d+\.\d\d \| +\d/2 ", out, re.M), (s, out)
    assert "the goals are set at 200 queries" in out
    assert re.search(r"^overhead: run-loop wall per candidate .* random \d+\.\d\d ms", out, re.M)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("nb201-bench-")]  # run folders cleaned up
