"""The layering of DESIGN.md's table, checked on every import of the source tree.

Arrows only point down the table::

    archir/cli/   may import everything; nothing imports it
    search/       may import archir, passes, costmodels, search
    passes/       archir (not archir.cli) and itself          } not each other,
    costmodels/   archir (not archir.cli) and itself          } not search
    archir/       archir only (not archir.cli)

Every import is read with ``ast``: module level and inside functions (a lazy import is still an
arrow), ``import a.b``, ``from a import b`` (``from archir import cli`` is an import of
``archir.cli``), relative imports (resolved against the file's package), and
``importlib.import_module("...")`` / ``import_module("...")`` / ``__import__("...")`` with a literal
name (a relative literal with ``package=`` a literal, ``__name__`` or ``__package__``). A name built
at run time (an f-string) cannot be resolved and is not checked.

The checker is run on a small synthetic tree first (``test_checker_reports_bad_arrows``), so this
test is shown to be able to fail.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("archir", "passes", "costmodels", "search")
CLI = "archir.cli"

#: layer -> the layers it may import (a module outside PACKAGES, e.g. numpy, is not a layer)
ALLOWED = {
    "archir": {"archir"},
    "passes": {"archir", "passes"},
    "costmodels": {"archir", "costmodels"},
    "search": {"archir", "passes", "costmodels", "search"},
    "cli": {"archir", "passes", "costmodels", "search", "cli"},
}


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name (``"archir.cli.main"`` -> ``"cli"``), None outside the four packages."""
    if module == CLI or module.startswith(CLI + "."):
        return "cli"
    top = module.split(".")[0]
    return top if top in PACKAGES else None


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    importer: str
    target: str
    source: str

    def __str__(self) -> str:
        src, tgt = layer_of(self.importer), layer_of(self.target)
        why = ("it cannot be resolved; import by absolute name" if tgt is None else
               "nothing imports archir.cli (the command line sits on top)" if tgt == "cli" else
               f"{src} may import only {sorted(ALLOWED[src])}")
        return f"{self.path}:{self.line}: {self.importer} imports {self.target} ({self.source.strip()}): {why}"


def module_name(root: Path, path: Path) -> tuple[str, bool]:
    """``(dotted module name, is a package __init__)`` of a source file under ``root``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts = parts[:-1]
    return ".".join(parts), is_pkg


def _resolve(module: str, is_pkg: bool, level: int, name: str | None) -> str | None:
    """The absolute module of a relative import (``level`` dots then ``name``), None if it leaves the top package."""
    if level == 0:
        return name
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    if level - 1 >= len(base):
        return None
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _dynamic_target(call: ast.Call, module: str, is_pkg: bool) -> str | None:
    """The module a literal ``import_module("...")``/``__import__("...")`` call names, else None."""
    f = call.func
    fname = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    if fname not in ("import_module", "__import__") or not call.args:
        return None
    name = _literal(call.args[0])
    if name is None:
        return None
    if fname == "__import__":  # __import__(name, globals, locals, fromlist, level)
        lv = call.args[4] if len(call.args) > 4 else next((k.value for k in call.keywords if k.arg == "level"), None)
        level = lv.value if isinstance(lv, ast.Constant) and isinstance(lv.value, int) else 0
        return _resolve(module, is_pkg, level, name) if level > 0 else name
    if not name.startswith("."):
        return name
    pkg_arg = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "package"), None)
    if isinstance(pkg_arg, ast.Name) and pkg_arg.id == "__name__":
        package = module
    elif isinstance(pkg_arg, ast.Name) and pkg_arg.id == "__package__":
        package = module if is_pkg else module.rpartition(".")[0]
    else:
        package = _literal(pkg_arg) if pkg_arg is not None else None
    if package is None:
        return None
    level = len(name) - len(name.lstrip("."))
    return _resolve(package, True, level, name.lstrip(".") or None)


def imports_of(root: Path, path: Path) -> list[tuple[int, str, str]]:
    """Every ``(line, imported module, source line)`` of one file (see the module docstring)."""
    module, is_pkg = module_name(root, path)
    text = path.read_text()
    lines = text.splitlines()
    out: list[tuple[int, str, str]] = []

    def add(node: ast.AST, target: str | None) -> None:
        if target:
            out.append((node.lineno, target, lines[node.lineno - 1] if node.lineno <= len(lines) else ""))

    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(node, a.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_pkg, node.level, node.module)
            if base is None:
                add(node, f"<relative import beyond the top package: {'.' * node.level}{node.module or ''}>")
                continue
            add(node, base)
            for a in node.names:  # `from archir import cli` imports archir.cli
                if a.name != "*" and layer_of(f"{base}.{a.name}") != layer_of(base):
                    add(node, f"{base}.{a.name}")
        elif isinstance(node, ast.Call):
            add(node, _dynamic_target(node, module, is_pkg))
    return out


def check_layering(root: Path) -> list[Violation]:
    """Every import under ``root``'s four packages whose arrow points up DESIGN.md's table."""
    bad: list[Violation] = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            importer, _ = module_name(root, path)
            src = layer_of(importer)
            for line, target, source in imports_of(root, path):
                tgt = layer_of(target)
                if target.startswith("<relative") or (tgt is not None and tgt not in ALLOWED[src]):
                    bad.append(Violation(str(path.relative_to(root)), line, importer, target, source))
    return bad


def test_the_tree_keeps_its_layers():
    bad = check_layering(ROOT)
    assert not bad, "imports that point up DESIGN.md's layering table:\n" + "\n".join(map(str, bad))


def test_the_checker_sees_the_tree():
    # the checker reads real imports here (guards against a checker that silently finds nothing)
    found = {t for t in (imp[1] for imp in imports_of(ROOT, ROOT / "search" / "morph.py"))}
    assert {"archir", "passes", "search.spaces.base"} <= found


SYNTHETIC = {
    "archir/__init__.py": "from archir.graph import Graph\n",
    "archir/graph.py": ("import numpy as np\n"
                        "def f():\n"
                        "    import passes.widen\n"  # lazy, inside a function: line 3
                        "    return passes\n"),
    "archir/lazy.py": ("import importlib\n"
                       "m = importlib.import_module('search.store')\n"  # line 2
                       "n = importlib.import_module(f'archir.{1}')\n"),  # not resolvable: not checked
    "archir/rel.py": "from .cli import main\n",  # relative, into the CLI: line 1
    "archir/cli/__init__.py": "",
    "archir/cli/main.py": ("import search, passes, costmodels\n"
                           "from archir.cli import util\n"
                           "def main(): pass\n"),
    "archir/cli/util.py": "",
    "passes/__init__.py": "from archir import Graph\nfrom passes.a import x\n",
    "passes/a.py": ("from archir import Graph\n"
                    "from costmodels.counts import count\n"  # line 2
                    "x = __import__('search')\n"  # line 3
                    "y = __import__('counts', globals(), None, [], 1)\n"),  # passes.counts: fine
    "passes/sub/__init__.py": "from .. import a\nfrom . import b\n",
    "passes/sub/b.py": "from ...archir import Graph\n",  # beyond the top package: line 1
    "costmodels/__init__.py": ("import archir\n"
                               "from archir import cli\n"),  # line 2
    "costmodels/m.py": ("import importlib\n"
                        "def g():\n"
                        "    return importlib.import_module('.passes', package='search')\n"),  # line 3
    "search/__init__.py": "import archir, passes, costmodels\nfrom search import store\n",
    "search/store.py": "from archir.cli.main import main\n",  # line 1
}


def test_checker_reports_bad_arrows(tmp_path):
    for rel, text in SYNTHETIC.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    bad = check_layering(tmp_path)
    got = {(v.path, v.line, v.target) for v in bad}
    assert got == {
        ("archir/graph.py", 3, "passes.widen"),
        ("archir/lazy.py", 2, "search.store"),
        ("archir/rel.py", 1, "archir.cli"),
        ("passes/a.py", 2, "costmodels.counts"),
        ("passes/a.py", 3, "search"),
        ("passes/sub/b.py", 1, "<relative import beyond the top package: ...archir>"),
        ("costmodels/__init__.py", 2, "archir.cli"),
        ("costmodels/m.py", 3, "search.passes"),
        ("search/store.py", 1, "archir.cli.main"),
    }, sorted(got)
    msg = "\n".join(map(str, bad))
    assert "archir/graph.py:3: archir.graph imports passes.widen (import passes.widen): archir may import only ['archir']" in msg
    assert "search/store.py:1: search.store imports archir.cli.main" in msg and "nothing imports archir.cli" in msg


@pytest.mark.parametrize("module,is_pkg,level,name,want", [
    ("search.strategies.hillclimb", False, 1, "base", "search.strategies.base"),
    ("search.strategies.hillclimb", False, 2, "morph", "search.morph"),
    ("search.strategies", True, 1, "base", "search.strategies.base"),
    ("search.strategies", True, 1, None, "search.strategies"),
    ("search.morph", False, 2, "x", None),
])
def test_relative_imports_resolve(module, is_pkg, level, name, want):
    assert _resolve(module, is_pkg, level, name) == want
