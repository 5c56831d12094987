"""Smoke test of ``benchmarks/genotypes.py``: the quick run prints DARTS_V2's figures and PASS.

The quick run builds DARTS_V2's CIFAR and ImageNet networks and the reference transcription
side by side; the counts it prints must agree with each other and with the pinned figures of
``tests/search/darts_reference.py`` (the full run is the benchmark).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.benchmarks import load_benchmark

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "genotypes.py"


@pytest.fixture(scope="module")
def bench():
    mod = load_benchmark(SCRIPT)
    return mod


def test_quick_run_prints_equal_counts_and_the_stem_ratio(bench, capsys):
    from tests.search.darts_reference import REFERENCE_FIGURES

    assert bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^DARTS_V2 +(cifar10|imagenet) +([\d.]+) / +([\d.]+) / +\S+ +([\d.]+) / +([\d.]+) / +\S+ "
                      r"+[\d.]+ +yes$", out, re.M)
    assert [r[0] for r in rows] == ["cifar10", "imagenet"]
    for key, p_archir, p_ref, m_archir, m_ref in rows:
        assert p_archir == p_ref and m_archir == m_ref
    assert rows[0][1] == f"{REFERENCE_FIGURES['DARTS_V2']['cifar10']['params'] / 1e6:.2f}"
    ratio = re.search(r"CIFAR stem ([\d.]+) G MACs vs ImageNet stems (\d+) M MACs: (\d+)x", out)
    assert ratio and int(ratio.group(3)) > 30  # the 224x224 CIFAR stem costs tens of times more
    assert out.rstrip().endswith("for every genotype and size: PASS")
