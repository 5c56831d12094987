"""Smoke test of ``benchmarks/passes.py``: a tiny run prints issue 4's three figures and issue 17's
precision figure (section (d), on ``archir.samples.resnet_like`` in ``--quick``).

No timing is asserted (a benchmark is not a timed test); the script itself checks that every
morphism it times kept the function (``check_preserved`` raises otherwise).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import passes
from tests.benchmarks import load_benchmark

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "passes.py"


@pytest.fixture(scope="module")
def bench():
    # benchmarks/ is a folder of scripts, not a package: load the file by path
    mod = load_benchmark(SCRIPT)
    return mod


@pytest.mark.slow
def test_quick_run_prints_the_three_figures(bench, capsys):
    threads = torch.get_num_threads()
    assert bench.main(["--quick", "--steps", "6"]) == 0
    assert torch.get_num_threads() == threads  # the script restores the global thread count
    out = capsys.readouterr().out
    assert re.search(r"^archir passes benchmark: darts_like\(cells=2\), \d+ nodes", out, re.M)
    assert "command : python benchmarks/passes.py --quick --steps 6" in out
    # (a) one row per registered morphism: targets, time to list them, pass time, check time, error
    assert "(a) morphisms on random legal targets (median of 3 calls)" in out
    for name in passes.MORPHISMS:
        row = rf"^{name} +\| +(\d+) \| +[\d.]+ ms \| +[\d.]+ ms \| +[\d.]+ ms \| +[\d.e+-]+$"
        m = re.search(row, out, re.M)
        assert m, name
        assert int(m.group(1)) > 0
    # (b) the check on the whole network against the 0.2 s goal
    assert re.search(r"^check_preserved\(g, g\.copy\(\)\), n=4 +\| +[\d.]+ ms \| goal < 200 ms: (PASS|FAIL)$", out, re.M)
    assert re.search(r"^  the same in float32 \(before issue 17\) +\| +[\d.]+ ms \| float64 costs x[\d.]+$", out, re.M)
    # (c) the error over the chain: a row at the last step, every error within one step's tolerance
    rows = re.findall(r"^(\d+) +\| +\d+ \| +([\d.e+-]+) \| +([\d.e+-]+) \| +([\d.e+-]+) \| +([\d.e+-]+) \| +"
                      r"([\d.e+-]+)$", out, re.M)
    assert [int(r[0]) for r in rows] == [1, 2, 5, 6]
    assert all(float(r[1]) <= 1e-5 for r in rows)  # each step passed check_preserved (atol 1e-5 at most)
    # (d) precision: every legal morphism accepted, float64 noise far under the 1e-9 tolerance, broken ones refused
    assert "(d) precision of check_preserved (issue 17)" in out
    m = re.search(r"^samples\.resnet_like +\| +\d+ \| +[\d.e+-]+ \| +(\d+) \(0 refused\) \| +([\d.e+-]+) \| +"
                  r"([\d.e+-]+) \| +\d+ \| +([\d.e+-]+) \((\d+)/(\d+) refused", out, re.M)
    assert m, out
    assert int(m.group(1)) > 5 and float(m.group(2)) < 1e-12 and float(m.group(4)) > 1e-7
    assert m.group(5) == m.group(6)  # every broken morphism that changed the output was refused
    assert re.search(r"^goal: check under 0\.2 s: (PASS|FAIL) \([\d.]+ ms\); total time", out, re.M)


def test_bad_option_is_a_usage_error(bench, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--cells", "two"])
    assert e.value.code == 2
