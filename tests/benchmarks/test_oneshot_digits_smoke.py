"""Smoke test of ``benchmarks/oneshot_digits.py``: its tiny mode runs and prints the three figures.

No latency, accuracy or timing is asserted (a benchmark is not a timed test); the script itself
asserts that every run recorded its derived candidate.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.benchmarks import load_benchmark

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "oneshot_digits.py"


@pytest.fixture(scope="module")
def bench():
    # benchmarks/ is a folder of scripts, not a package: load the file by path
    mod = load_benchmark(SCRIPT)
    return mod


@pytest.mark.slow
def test_tiny_run_prints_the_figures(bench, capsys, tmp_path):
    from search.oneshot import ONESHOT

    assert bench.main(["--tiny", "--keep", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "command : python benchmarks/oneshot_digits.py --tiny --keep" in out
    # (a) one row per lambda, then the verdict
    rows = re.findall(r"^ +(\d+(?:\.\d+)?) \| +\d+\.\d{4} \| +\d+\.\d{4} \| +\d\.\d{3} \| +[\d,]+ \| stem8 ", out, re.M)
    assert rows == ["0", "0.1", "1"]
    assert re.search(r"^  measured latency falls as lambda grows: (yes|NO) \(", out, re.M)
    # (b) every registered driver on both spaces, and the single-architecture baseline
    for space in ("chain", "darts"):
        for name in [*ONESHOT, "one sampled arch"]:
            assert re.search(rf"^  {space} +{re.escape(name)} +\d+\.\d\d$", out, re.M), (space, name)
    # (c) every driver, random search's two candidates, and the controller/surrogate strategies
    from search.strategies import STRATEGIES

    for name in [*ONESHOT, "random@1", "random@2", *(n for n in ("reinforce", "pnas") if n in STRATEGIES)]:
        assert re.search(rf"^  {re.escape(name)} +\| +\d+\.\d \| +\d+\.\d \| +\d+\.\d \| +\d\.\d{{3}} \|", out,
                         re.M), name
    assert (tmp_path / "snas_lam1" / "search.db").exists() and (tmp_path / "c_parsec" / "oneshot").is_dir()
