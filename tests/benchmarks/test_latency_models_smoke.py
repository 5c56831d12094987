"""Smoke test of ``benchmarks/latency_models.py``: a tiny run prints issue 6's comparison.

A tiny run (6 networks per space, one round of 3 timed runs) exercises every code path:
both search spaces, measurement, the latency table, the predictors and the report. Its
figures mean nothing and are not asserted, only that each estimate gets its three metrics.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.benchmarks import load_benchmark

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "latency_models.py"

TINY = ["--quick", "--n", "6", "--rounds", "1", "--repeats", "3", "--warmup", "1"]


@pytest.fixture(scope="module")
def bench():
    # benchmarks/ is a folder of scripts, not a package: load the file by path
    mod = load_benchmark(SCRIPT)
    return mod


@pytest.mark.slow
def test_tiny_run_prints_every_estimate_with_its_metrics(bench, tmp_path, capsys):
    pred = tmp_path / "predictor.json"
    assert bench.main([*TINY, "--save-predictor", str(pred)]) == 0
    out = capsys.readouterr().out
    assert f"command : python benchmarks/latency_models.py {' '.join(TINY)} --save-predictor {pred}" in out
    assert re.search(r"^networks: 6 per space \(12 total\); 8 train / 4 held out", out, re.M)
    assert re.search(r"^spread of one measure call \(3 timed runs\): IQR / median = [\d.]+%", out, re.M)
    assert re.search(r"^repeatability \[min\]: ", out, re.M)
    metrics = r" +\| (-?[\d.]+|nan) +\| [\d.]+% +\| [\d.]+% +\| [\d.]+%$"
    for name in ("MACs x scale", "FLOPs x scale", "roofline \\(probed CPU\\) x scale", "latency table sum",
                 "latency table sum x scale", "Predictor \\(IR features\\)", "Predictor \\(IR \\+ table features\\)"):
        assert re.search(rf"^{name}{metrics}", out, re.M), name
    assert re.search(r"^goal: Predictor \(IR \+ table features\) within \+/-10% on >= 95% of held-out networks: "
                     r"[\d.]+% -> (PASS|FAIL)$", out, re.M)
    assert re.search(r"^goal: Predictor better than the table sum .*: (PASS|FAIL)$", out, re.M)
    assert pred.exists() and "saved to" in out


def test_spaces_build_valid_seeded_networks(bench):
    for build in (bench.chain_net, bench.darts_net):
        rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
        a = [build(rng_a, i) for i in range(3)]
        b = [build(rng_b, i) for i in range(3)]
        for x, y in zip(a, b):  # the same seed gives the same network and weights
            assert x.structural_hash() == y.structural_hash() and x.weights_hash() == y.weights_hash()
        assert len({g.structural_hash() for g in a}) > 1  # and the space is not a single network


def test_too_few_networks_is_refused(bench):
    with pytest.raises(SystemExit, match="--n must be >= 5"):
        bench.main(["--n", "4"])
