"""Smoke test of ``benchmarks/pruning.py``: it runs and prints a row per network and ratio.

No timing is asserted (a benchmark is not a timed test); the script itself asserts that every
pruned graph validates and that its ONNX model agrees with torch.fx.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.benchmarks import load_benchmark

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "pruning.py"


@pytest.fixture(scope="module")
def pruning():
    # benchmarks/ is a folder of scripts, not a package: load the file by path
    mod = load_benchmark(SCRIPT)
    return mod


@pytest.mark.slow
def test_quick_run_prints_every_network_and_ratio(pruning, capsys):
    threads = torch.get_num_threads()
    assert pruning.main(["--quick", "--networks", "chain,resnet_like,mobilenet_like", "--repeats", "3"]) == 0
    assert torch.get_num_threads() == threads  # the script restores the global thread count
    out = capsys.readouterr().out
    assert "command : python benchmarks/pruning.py --quick" in out
    assert re.search(r"onnxruntime \d", out)
    for net in ("chain", "resnet_like", "mobilenet_like"):
        for r in ("0.25", "0.5", "0.75"):
            row = rf"^{net} +\| {re.escape(r)} +\| +[\d,]+ \(\d+%\) \| +[\d,]+ \(\d+%\) \| +\d+\.\d{{3}} \| " \
                  rf"+\d+\.\d{{3}} \| +\d+\.\d\dx \| +\d+\.\d{{3}} \| +\d+\.\d{{3}} \| +\d+\.\d\dx \| +\d+\.\d\dx \|"
            assert re.search(row, out, re.M), (net, r)
    # MACs fall as the ratio grows (hand-checked in tests/passes/test_prune.py; here: monotone)
    pattern = r"^chain +\| [\d.]+ +\| +[\d,]+ \(\d+%\) \| +([\d,]+) "
    macs = [int(m.replace(",", "")) for m in re.findall(pattern, out, re.M)]
    assert len(macs) == 3 and macs[0] > macs[1] > macs[2]


def test_unknown_network_is_a_usage_error(pruning, capsys):
    with pytest.raises(SystemExit) as e:
        pruning.main(["--quick", "--networks", "vgg"])
    assert e.value.code == 2 and "unknown network" in capsys.readouterr().err
