"""Smoke test of ``benchmarks/peers.py``: one model, one call each, prints the row and the goal lines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.benchmarks import load_benchmark

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "peers.py"


@pytest.mark.slow
def test_one_model_prints_its_row_and_every_goal(capsys):
    pytest.importorskip("torchvision")
    mod = load_benchmark(SCRIPT)
    assert mod.main(["--models", "mobilenet_v2", "--no-dynamo", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    # nodes, weights | floor, protobuf's own copy, to_onnx cold, warm | TorchScript, ratio
    row = re.search(r"^mobilenet_v2 +(\d+) +([\d.]+)MB \| +([\d.]+)ms +([\d.]+)ms +([\d.]+)ms +([\d.]+)ms \| +(\d+)ms "
                    r"+([\d.]+)x", out, re.M)
    assert row and int(row.group(1)) > 100 and 13 < float(row.group(2)) < 14  # 3.5 M float32 params + BN buffers
    assert all(float(row.group(k)) > 0 for k in (3, 4, 5, 6))
    assert re.search(r"^goal: to_onnx >= 10x faster than torch.onnx.export\(dynamo=False\): (PASS|FAIL)", out, re.M)
    fx = re.search(r"^mobilenet_v2 .*\| +([\d.]+)ms +([\d.]+)x$", out, re.M)  # the to_fx column and its ratio
    assert fx and float(fx.group(1)) > 0 and float(fx.group(2)) > 0
    assert re.search(r"^goal: to_onnx within 2x of the copy floor: (PASS|FAIL)", out, re.M)


@pytest.mark.slow
def test_prune_table_prints_the_peer_row_and_the_goal(capsys):
    pytest.importorskip("torchvision")
    pytest.importorskip("torch_pruning")
    mod = load_benchmark(SCRIPT)
    assert mod.main(["--prune", "--models", "resnet18", "--ratios", "0.5", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    row = re.search(r"^resnet18 +0\.50 \| +([\d.]+) / +([\d.]+) \| +([\d.]+) / +([\d.]+) \| +(yes|no) \| "
                    r"+([\d.]+)ms +([\d.]+)ms +([\d.]+)x$", out, re.M)
    assert row, out
    assert 0.2 < float(row.group(2)) < 0.35 and float(row.group(6)) > 0 and float(row.group(7)) > 0
    assert re.search(r"^goal: archir's pruned network at or below Torch-Pruning's ORT latency .*: (PASS|FAIL)", out,
                     re.M)
