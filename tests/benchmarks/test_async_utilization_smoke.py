"""Smoke test of ``benchmarks/async_utilization.py``: its quick run prints the busy-share table.

Run as a subprocess (the process executor's workers import the benchmark's sleeping evaluator by its
module name, ``benchmarks.async_utilization``). No share is asserted beyond being a percentage: the
figures are the benchmark's to print, not a timed test's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_prints_the_busy_shares():
    env = {**os.environ, "ARCHIR_SLEEP_SCALE": "0.02", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "async_utilization.py"), "--quick"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert "async steady" in out.stdout, out.stdout + out.stderr
    row = next(ln for ln in out.stdout.splitlines() if ln.strip().startswith("2 |"))
    shares = [float(v) for v in re.findall(r"([\d.]+)%", row)]
    assert len(shares) == 4 and all(0 < v <= 100 for v in shares), row
    assert out.returncode in (0, 1), out.stderr  # 1: the goal was missed (printed as MISSED), not a crash
