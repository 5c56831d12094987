"""Smoke test of ``benchmarks/train_throughput.py``: the quick run prints both loops' images/s and the ratio.

The figure itself is the benchmark's (printed, not asserted here: timings are not tests); the smoke
test checks that both loops train the same network on the same data and that the table is complete.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.benchmarks import load_benchmark

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"


@pytest.fixture(scope="module")
def bench():
    mod = load_benchmark(SCRIPT)
    return mod


def test_quick_run_prints_both_loops_and_the_ratio(bench, capsys):
    assert bench.main(["--quick", "--images", "256", "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    a = re.search(r"^search\.train +(\d+) +(\d+) +(\d+)$", out, re.M)
    p = re.search(r"^plain PyTorch +(\d+) +(\d+) +(\d+)$", out, re.M)
    r = re.search(r"ratio search\.train / plain = ([\d.]+)x \((meets|misses) the goal >= 0\.95x\)", out)
    assert a and p and r, out
    assert int(a.group(1)) > 0 and int(p.group(1)) > 0
    assert float(r.group(1)) == pytest.approx(int(a.group(1)) / int(p.group(1)), rel=0.01)


def test_cuda_is_refused_cleanly_without_a_gpu(bench, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert bench.main(["--device", "cuda", "--quick"]) == 2
    assert "CUDA is not available" in capsys.readouterr().out


def test_every_network_builds_with_cifar_inputs(bench):
    for name in ("small", "resnet_like"):
        g = bench.build(name)
        assert g.node(g.inputs[0]).type.shape == (3, 32, 32)


def test_gpu_check_script_stops_clearly_without_cuda():
    import subprocess

    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the script would run the full check")
    script = SCRIPT.parents[1] / "scripts" / "gpu_check.sh"
    res = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no CUDA GPU here" in res.stderr
