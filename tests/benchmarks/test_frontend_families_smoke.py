"""Smoke test of ``benchmarks/frontend_families.py``: the quick run prints the import row and the passes row.

No timing is asserted. The figures asserted are the ones the script computes, not constants of
it: squeezenet1_1 imports, its parameter count is torchvision's, its ORT error is float32-small,
every random morphism was accepted by check_preserved and the pruned graph validates and agrees
with ONNX Runtime. A model that does not import prints its reasons instead of a traceback.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.benchmarks import load_benchmark

pytest.importorskip("torchvision")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "frontend_families.py"


@pytest.fixture(scope="module")
def families():
    return load_benchmark(SCRIPT)


def test_quick_run_prints_import_and_passes_rows(families, capsys):
    threads = torch.get_num_threads()
    families.main(["--quick"])
    assert torch.get_num_threads() == threads  # restored
    out = capsys.readouterr().out
    row = re.search(r"^squeezenet1_1 +squeezenet +64 +yes +(\d+) +[\d.]+ +[\d.]+ +([\d.e+-]+) +([\d.e+-]+) +"
                    r"([\d.]+) +0\.349 +(\S+)", out, re.M)
    assert row, out
    assert int(row.group(1)) > 50 and float(row.group(2)) < 1e-5 and float(row.group(3)) < 1e-5
    assert row.group(5) == "yes"                      # params exactly torchvision's
    assert abs(float(row.group(4)) - 0.349) < 5e-4    # MACs counted at 224 (the published size), not 64
    assert "1 of 1 models import" in out
    # groups pruned, channels removed, groups skipped, MACs kept, validates, ORT vs fx
    prow = re.search(r"^squeezenet1_1 +2 +2 +0 +(\d+) +(\d+) +\d+ +(0\.\d\d) +yes +([\d.e+-]+)", out, re.M)
    assert prow, out
    assert int(prow.group(1)) > 0 and int(prow.group(2)) >= int(prow.group(1))
    assert float(prow.group(3)) < 0.9 and float(prow.group(4)) < 1e-5


def test_a_model_that_does_not_import_lists_its_reasons(families, monkeypatch):
    from archir.frontend.common import Unsupported, UnsupportedModelError

    def refuse(*a, **k):
        raise UnsupportedModelError("m", [Unsupported("function torch.roll", "blocks.0", "no op"),
                                          Unsupported("function torch.roll", "blocks.1", "no op"),
                                          Unsupported("module LayerNorm", "norm", "no op")])

    monkeypatch.setattr(families, "from_torch", refuse)
    row, g = families.import_row("squeezenet1_1", 64, False)
    assert g is None and row[:3] == ["squeezenet1_1", "squeezenet", "64"]
    assert row[3] == "does not import: function torch.roll; module LayerNorm"
