"""Smoke test of ``benchmarks/search_digits.py``: its tiny mode runs and prints the three figures.

No accuracy or timing is asserted (a benchmark is not a timed test); the script itself asserts
that every run recorded the asked candidates and that it reports the stored accuracies.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.benchmarks import load_benchmark

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "search_digits.py"


@pytest.fixture(scope="module")
def bench():
    # benchmarks/ is a folder of scripts, not a package: load the file by path
    mod = load_benchmark(SCRIPT)
    return mod


@pytest.mark.slow
def test_tiny_run_prints_the_figures(bench, capsys, tmp_path):
    assert bench.main(["--tiny", "--executor", "serial", "--keep", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "command : python benchmarks/search_digits.py --tiny --executor serial" in out
    assert "3 seeds x 4 candidates per strategy" in out
    # (a) four compute checkpoints with mean ± sd for both strategies
    rows = re.findall(r"^ +\d+ \| +\d+\.\d ± \d+\.\d \| +\d+\.\d ± \d+\.\d \| \d/3 seeds", out, re.M)
    assert len(rows) == 4
    assert re.search(r"^  random   : frontier size \d\.\d \(per seed \[\d+, \d+, \d+\]\)", out, re.M)
    assert re.search(r"^  evolution: frontier size \d\.\d", out, re.M)
    assert re.search(r"^  evolution: \d+ failed of 12; wall \d+ s for 3 runs", out, re.M)
    # issue 8: hill climbing and Petridish against random search (d), Petridish's latency frontier (e)
    assert re.search(r"^  hillclimb: reaches random's final test accuracy with 0.333 of its compute on \d/3 seeds",
                     out, re.M)
    assert re.search(r"^  petridish's frontier dominates random's \(every point\) on \d/3 seeds", out, re.M)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{s}-seed{i}" for s in ("random", "evolution", "hillclimb", "petridish") for i in range(3))


def test_curve_tracks_the_best_by_validation_not_by_test(bench):
    from search.store import Candidate

    def c(i, val, test_acc, status="done"):
        return Candidate(id=i, round=i, op="sample", decisions={}, seed=0, status=status,
                         metrics={"val_error": val, "test_acc": test_acc} if status == "done" else {},
                         timings={"epochs": 2})

    cv = bench.curve([c(0, 0.5, 0.4), c(1, 0.6, 0.9), c(2, 0.0, 0.0, "failed"), c(3, 0.2, 0.7)])
    assert cv == [(2, 0.5, 0.4), (4, 0.5, 0.4), (6, 0.5, 0.4), (8, 0.2, 0.7)]  # 1 has a better test acc: ignored
    assert bench.at(cv, 5) == 0.4 and bench.at(cv, 8) == 0.7 and bench.at(cv, 1) != bench.at(cv, 1)  # nan before
