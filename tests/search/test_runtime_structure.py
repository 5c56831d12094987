"""The search runtime's structure (issue 16, item 1), checked on the source with ``ast``.

- no module of ``search/`` reaches into another module's private names (``from search.x import _y``,
  or ``mod._y`` on an imported ``search`` module);
- the drivers (strategies, one-shot drivers) ask the ``Space`` protocol rather than testing the
  concrete space classes (no ``ChainSpace`` / ``DartsSpace`` / ``Nb201Space`` / ``StartSpace`` name);
- ``search.config`` (the experiment's config) imports no driver (its check asks ``search.evaluators``
  whether an evaluator spec is valid, which is not a driver).

Each checker is first run on a small synthetic source that breaks the rule, so it can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEARCH = ROOT / "search"
CONCRETE = {"ChainSpace", "DartsSpace", "Nb201Space", "StartSpace"}


def private_reaches(src: str) -> list[str]:
    """``from search.x import _y`` and ``m._y`` where ``m`` names an imported ``search`` module."""
    tree = ast.parse(src)
    out, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("search"):
            for a in node.names:
                if a.name.startswith("_"):
                    out.append(f"from {node.module} import {a.name}")
                elif node.module == "search":  # from search import experiment as ex
                    modules.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("search"):
                    modules.add(a.asname or a.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            if isinstance(base, ast.Name) and base.id in modules:
                out.append(f"{base.id}.{node.attr}")
    return out


def concrete_names(src: str) -> list[str]:
    return sorted({n.id for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Name) and n.id in CONCRETE}
                  | {a.name for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)
                     for a in n.names if a.name in CONCRETE})


def test_the_checkers_can_fail():
    assert private_reaches("from search.experiment import _dataset\n") == ["from search.experiment import _dataset"]
    assert private_reaches("from search import experiment as ex\nex._one_line(e)\n") == ["ex._one_line"]
    assert private_reaches("import numpy as np\nnp._x\nfrom search.run import SearchRun\n") == []
    assert concrete_names("from search.spaces.chain import ChainSpace\nisinstance(s, ChainSpace)\n") == ["ChainSpace"]


def test_no_search_module_reaches_into_another_ones_private_names():
    bad = {str(p.relative_to(ROOT)): r for p in SEARCH.rglob("*.py") if (r := private_reaches(p.read_text()))}
    assert not bad, bad


def test_drivers_ask_the_space_protocol_not_the_concrete_spaces():
    drivers = [*(SEARCH / "strategies").glob("*.py"), *(SEARCH / "oneshot").glob("*.py"), SEARCH / "asktell.py",
               SEARCH / "run.py", SEARCH / "experiment.py"]
    bad = {str(p.relative_to(ROOT)): r for p in drivers if (r := concrete_names(p.read_text()))}
    assert not bad, bad


def test_the_config_imports_no_driver():
    tree = ast.parse((SEARCH / "config.py").read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    drivers = ("search.experiment", "search.run", "search.asktell", "search.oneshot", "search.strategies",
               "search.executors", "search.morph")
    assert not {m for m in mods if m and m.startswith(drivers)}, mods
