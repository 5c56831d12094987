"""Smoke tests of the ``benchmarks/`` scripts (a folder of scripts, not a package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def load_benchmark(script: Path) -> ModuleType:
    """The benchmark script at ``script``, loaded by path as module ``benchmarks_<name>``."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{script.stem}", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
