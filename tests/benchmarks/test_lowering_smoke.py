"""Smoke test of ``benchmarks/lowering.py``: it runs and prints its three figures.

No timing is asserted (a benchmark is not a timed test); the script itself asserts that the
hand-written network and the ``to_fx`` module compute the same outputs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import archir
from tests.benchmarks import load_benchmark

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "lowering.py"


@pytest.fixture(scope="module")
def lowering():
    # benchmarks/ is a folder of scripts, not a package: load the file by path
    mod = load_benchmark(SCRIPT)
    return mod


@pytest.mark.slow
def test_quick_run_prints_the_three_figures(lowering, capsys):
    threads = torch.get_num_threads()
    assert lowering.main(["--quick", "--cells", "2"]) == 0
    assert torch.get_num_threads() == threads  # the script restores the global thread count
    out = capsys.readouterr().out
    assert "darts_like(cells=2)" in out
    assert "command : python benchmarks/lowering.py --quick --cells 2" in out
    for v in ("torch", "onnx", "onnxruntime"):
        assert re.search(rf"\b{v} \d", out), v
    # (a) export speed-up, (b) forward ratio, (c) ORT vs torch latency: each a row with a number
    row = r"^\(a\) to_onnx vs torch\.onnx\.export\(dynamo=True\) .*\| \d+\.\dx faster +\| >= 100x \| (PASS|FAIL)"
    assert re.search(row, out, re.M)
    row = r"^\(b\) to_fx forward / hand-written nn\.Module, batch 1 .*\| \d+\.\d{3} +\| <= 1\.05 \| (PASS|FAIL)"
    assert re.search(row, out, re.M)
    assert re.search(r"^\(c\) ORT CPU / torch eager CPU latency, batch 1 .*\| \d+\.\d{3} \(", out, re.M)
    assert "goals met:" in out


def test_hand_written_network_mirrors_darts_like(lowering):
    g = lowering.darts_like(cells=3)  # cell 1 reduces, cell 2 reduces after a reduction: every branch
    fx = archir.lower.to_fx(g).eval()
    hand = lowering.HandDarts(cells=3).load_ir_weights(g).eval()
    assert sum(p.numel() for p in hand.parameters()) == g.num_params()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(hand(x), fx(x), rtol=0, atol=1e-5)


def test_hand_written_network_refuses_other_weights(lowering):
    g = lowering.darts_like(cells=3)
    with pytest.raises(RuntimeError, match="does not mirror darts_like"):
        lowering.HandDarts(cells=4).load_ir_weights(g)
