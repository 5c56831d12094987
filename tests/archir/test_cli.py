"""Tests of the ``archir`` command line (``archir/cli/main.py``).

Most tests call ``main([...])`` in-process (fast); one runs the installed ``archir``
entry point in a subprocess to check the real exit code and stderr.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import onnx
import pytest

import archir
from archir import samples
from archir.cli import main as cli
from archir.cli.main import SUBCOMMANDS, Subcommand, main, to_dot
from archir.errors import ArchirError

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def net_dir(tmp_path_factory) -> Path:
    """A folder with a small plain graph (chain.json + .safetensors) and a supernet."""
    d = tmp_path_factory.mktemp("nets")
    archir.save(samples.chain(), d / "chain.json")
    g = archir.Graph("super")
    x = g.input("x", (3, 8, 8))
    h = g.add("choice", x, name="cell.choice", candidates=[
        {"name": "conv", "ops": [{"op": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1}]},
        {"name": "skip", "ops": [{"op": "identity"}]}])
    y = g.add("linear", g.add("flatten", g.add("global_avgpool", h)), out_features=2, name="head")
    g.set_outputs(y)
    g.init_params(seed=0).validate()
    archir.save(g, d / "super.json")
    return d


@pytest.fixture
def net(net_dir) -> str:
    return str(net_dir / "chain.json")


def _assert_one_line_error(rc: int, err: str, *, code: int = 2, contains: str = "") -> None:
    """A user mistake: the exit code, one ``archir: error:`` line (plus a how-to-fix line), no traceback."""
    assert rc == code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("archir: error: "), err
    assert len(lines) <= 2, err
    if len(lines) == 2:
        assert lines[1].startswith("  how to fix: "), err
    assert contains in err


def _tmp_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- general


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"archir {archir.__version__}"


@pytest.mark.parametrize("name", [sc.name for sc in SUBCOMMANDS])
def test_every_subcommand_has_help(name, capsys):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: archir {name}")
    assert len(out.splitlines()) > 4


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "usage: archir" in capsys.readouterr().err


def test_unknown_option_is_a_usage_error(capsys):
    assert main(["show", "--bogus", "x.json"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --bogus" in err and "Traceback" not in err


class _Refused(ArchirError):  # a subcommand's own user error: any ArchirError is one
    def __init__(self, msg, hint):
        super().__init__(msg, hint=hint)


def test_extra_modules_add_subcommands(monkeypatch, capsys):
    # how a later issue adds `archir search`: a module under archir/cli with SUBCOMMANDS
    mod = types.ModuleType("archir_cli_fake_ext")

    def add(p):
        p.add_argument("--who", default="world")

    def run(args):
        if args.who == "nobody":
            raise _Refused("nobody to greet", "pass --who NAME")
        if args.who == "bug":
            raise KeyError("a bug")
        if args.who == "wrapped":  # a bug wrapped in a user-facing class (as @graph_pass does) is still a bug
            try:
                1 / 0
            except ZeroDivisionError as e:
                raise _Refused("failed with ZeroDivisionError", "report it") from e
        print(f"hello {args.who}")
        return 0

    mod.SUBCOMMANDS = [Subcommand("hello", "say hello", add, run)]
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr(cli, "extra_modules", lambda: [mod.__name__])
    assert main(["hello", "--who", "archir"]) == 0
    assert capsys.readouterr().out == "hello archir\n"
    # a user error (an ArchirError): one line and a hint, exit 2, no traceback
    assert main(["hello", "--who", "nobody"]) == 2
    err = capsys.readouterr().err
    assert err == "archir: error: nobody to greet\n  how to fix: pass --who NAME\n"
    # anything else is a bug and propagates
    with pytest.raises(KeyError):
        main(["hello", "--who", "bug"])
    with pytest.raises(_Refused) as e:
        main(["hello", "--who", "wrapped"])
    assert isinstance(e.value.__cause__, ZeroDivisionError)


def test_subcommand_modules_are_discovered():
    # every module under archir/cli (besides main) is searched for SUBCOMMANDS
    mods = cli.extra_modules()
    assert "archir.cli.main" not in mods
    names = [a.dest for a in cli.build_parser()._subparsers._group_actions[0]._choices_actions]
    assert len(names) == len(set(names)) and {"show", "export", "draw", "demo"} <= set(names)


def test_nothing_imports_archir_cli():
    # DESIGN.md: the CLI sits at the top; no library module may import it
    pattern = re.compile(r"^\s*(from\s+archir\.cli|import\s+archir\.cli|from\s+archir\s+import\s+.*\bcli\b)", re.M)
    offenders = []
    for pkg in ("archir", "passes", "costmodels", "search"):
        for path in (ROOT / pkg).rglob("*.py"):
            if path.is_relative_to(ROOT / "archir" / "cli"):
                continue
            if pattern.search(path.read_text()):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


# --------------------------------------------------------------------------- show


def test_show_prints_table_and_totals(net, capsys):
    assert main(["show", net]) == 0
    out = capsys.readouterr().out
    g = archir.load(net)
    header = next(line for line in out.splitlines() if line.startswith("node"))
    assert header.split() == ["node", "op", "output", "params"]
    for n in g.nodes():
        assert re.search(rf"^{re.escape(n.id)}\s+{n.op}\s+{re.escape(str(n.type))}", out, re.M), n.id
    assert f"total: {len(g)} nodes, {g.num_params():,} params" in out
    assert "conv2d x2" in out
    assert "outputs: head (N, 10)" in out


# --------------------------------------------------------------------------- export


def test_export_writes_a_verified_model(net, tmp_path, capsys):
    out = tmp_path / "chain.onnx"
    assert main(["export", net, "--onnx", str(out)]) == 0
    text = capsys.readouterr().out
    import onnxruntime

    assert f"verified with ONNX Runtime {onnxruntime.__version__}: outputs match" in text
    err = float(re.search(r"max \|fx - ort\| = (\S+)", text).group(1))
    assert 0 <= err <= 1e-5
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["x"]
    assert _tmp_leftovers(tmp_path) == []
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # like a plain open(), not mkstemp's 0600


def test_export_mismatch_exits_1_and_keeps_old_file(net, tmp_path, monkeypatch, capsys):
    import onnxruntime

    out = tmp_path / "chain.onnx"
    out.write_bytes(b"old model")
    real_run = onnxruntime.InferenceSession.run

    def wrong_run(self, names, feeds, *a, **kw):  # ORT "computes" something else
        return [o + 1.0 for o in real_run(self, names, feeds, *a, **kw)]

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", wrong_run)
    rc = main(["export", net, "--onnx", str(out)])
    _assert_one_line_error(rc, capsys.readouterr().err, code=1, contains="differs from torch.fx")
    assert out.read_bytes() == b"old model"
    assert _tmp_leftovers(tmp_path) == []


def test_export_write_failure_keeps_old_file(net, tmp_path, monkeypatch, capsys):
    out = tmp_path / "chain.onnx"
    out.write_bytes(b"old model")

    def full_disk(self, data):
        raise OSError(28, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    rc = main(["export", net, "--onnx", str(out)])
    _assert_one_line_error(rc, capsys.readouterr().err, contains="No space left on device")
    monkeypatch.undo()
    assert out.read_bytes() == b"old model"
    assert _tmp_leftovers(tmp_path) == []


def test_export_of_a_supernet_is_a_clear_error(net_dir, tmp_path, capsys):
    out = tmp_path / "super.onnx"
    out.write_bytes(b"old model")
    rc = main(["export", str(net_dir / "super.json"), "--onnx", str(out)])
    err = capsys.readouterr().err
    _assert_one_line_error(rc, err, contains="cell.choice")
    assert "archir.derive" in err  # names the pass that removes choice nodes
    assert out.read_bytes() == b"old model"
    assert _tmp_leftovers(tmp_path) == []


def test_export_with_external_data_writes_both_files(net, tmp_path, capsys):
    from archir.lower import uses_external_data, verify_onnx

    out = tmp_path / "chain.onnx"
    assert main(["export", net, "--onnx", str(out), "--external-data"]) == 0
    printed = capsys.readouterr().out
    data = tmp_path / "chain.onnx.data"
    assert f"wrote {data}" in printed and "verified with ONNX Runtime" in printed
    assert uses_external_data(onnx.load(str(out), load_external_data=False))
    assert verify_onnx(archir.load(net), out).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chain.onnx", "chain.onnx.data"]  # no temporary left
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == data.stat().st_mode & 0o777 == 0o666 & ~umask
    # a named data file beside the model
    assert main(["export", net, "--onnx", str(out), "--external-data", str(tmp_path / "w.bin")]) == 0
    assert (tmp_path / "w.bin").is_file() and verify_onnx(archir.load(net), out).ok


@pytest.mark.parametrize("where, contains", [("elsewhere", "must sit in the model's folder"),
                                             ("same", "cannot be the model file itself")])
def test_export_external_data_path_errors(net, tmp_path, capsys, where, contains):
    out = tmp_path / "chain.onnx"
    (tmp_path / "sub").mkdir()
    data = tmp_path / "sub" / "w.bin" if where == "elsewhere" else out
    rc = main(["export", net, "--onnx", str(out), "--external-data", str(data)])
    _assert_one_line_error(rc, capsys.readouterr().err, contains=contains)
    assert not out.exists()


def test_export_over_2_gib_without_external_data_says_to_pass_it(tmp_path, monkeypatch, capsys):
    import archir.lower.onnx as lower_onnx

    g = samples.chain(widths=(32, 64))
    archir.save(g, tmp_path / "wide.json")
    net = str(tmp_path / "wide.json")
    monkeypatch.setattr(lower_onnx, "PROTOBUF_LIMIT", lower_onnx.weight_bytes(g) - 1)  # "over 2 GiB"
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    out = tmp_path / "chain.onnx"
    out.write_bytes(b"old model")
    rc = main(["export", net, "--onnx", str(out)])
    err = capsys.readouterr().err
    _assert_one_line_error(rc, err, contains="2 GiB")
    assert "--external-data" in err and "chain.onnx.data" in err
    assert out.read_bytes() == b"old model" and sorted(p.name for p in tmp_path.iterdir()) == ["chain.onnx"]
    # with it the same "too large" model exports: only its small weights stay inline
    assert main(["export", net, "--onnx", str(out), "--external-data"]) == 0
    assert out.stat().st_size < (tmp_path / "chain.onnx.data").stat().st_size


def test_export_mismatch_with_external_data_keeps_the_old_files(net, tmp_path, monkeypatch, capsys):
    import onnxruntime

    out, data = tmp_path / "chain.onnx", tmp_path / "chain.onnx.data"
    out.write_bytes(b"old model")
    data.write_bytes(b"old data")
    real_run = onnxruntime.InferenceSession.run

    def wrong_run(self, names, feeds, *a, **kw):
        return [o + 1.0 for o in real_run(self, names, feeds, *a, **kw)]

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", wrong_run)
    rc = main(["export", net, "--onnx", str(out), "--external-data"])
    _assert_one_line_error(rc, capsys.readouterr().err, code=1, contains="differs from torch.fx")
    assert out.read_bytes() == b"old model" and data.read_bytes() == b"old data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chain.onnx", "chain.onnx.data"]


@pytest.mark.parametrize("args, contains", [
    (["--onnx", "{tmp}/missing/x.onnx"], "does not exist"),
    (["--onnx", "{tmp}"], "is a folder"),
    (["--onnx", "{tmp}/x.onnx", "--batch-size", "0"], "--batch-size must be positive"),
    (["--onnx", "{tmp}/x.onnx", "--atol", "-1"], "tolerances must be >= 0"),
])
def test_export_bad_arguments(net, tmp_path, capsys, args, contains):
    rc = main(["export", net] + [a.format(tmp=tmp_path) for a in args])
    _assert_one_line_error(rc, capsys.readouterr().err, contains=contains)


# --------------------------------------------------------------------------- bad graph files


def _hostile_files(folder: Path, net: str) -> dict[str, Path]:
    doc = json.loads(Path(net).read_text())
    files = {}

    def put(name: str, text: str | bytes) -> None:
        files[name] = folder / f"{name}.json"
        files[name].write_bytes(text if isinstance(text, bytes) else text.encode())

    put("future_version", json.dumps({**doc, "schema_version": 99}))
    put("deep_nesting", "[" * 100_000 + "]" * 100_000)
    put("truncated", Path(net).read_text()[:200])
    put("not_an_object", "[1, 2, 3]")
    put("binary", b"\xff\xfe\x00\x89PNG garbage")
    absurd = json.loads(json.dumps(doc))
    absurd["nodes"][0]["attrs"]["shape"] = [3, 10**9, 10**9]
    put("absurd_dims", json.dumps(absurd))
    put("weights_escape", json.dumps({**doc, "weights": {**doc["weights"], "file": "../../etc/passwd.safetensors"}}))
    put("weights_missing", json.dumps({**doc, "weights": {**doc["weights"], "file": "nowhere.safetensors"}}))
    cycle = json.loads(json.dumps(doc))
    cycle["nodes"][1]["inputs"] = [cycle["nodes"][-1]["id"]]
    put("cycle", json.dumps(cycle))
    files["missing"] = folder / "no_such_file.json"
    files["folder"] = folder
    return files


HOSTILE = ["future_version", "deep_nesting", "truncated", "not_an_object", "binary", "absurd_dims", "weights_escape",
           "weights_missing", "cycle", "missing", "folder"]


@pytest.mark.parametrize("kind", HOSTILE)
@pytest.mark.parametrize("command", ["show", "export", "draw"])
def test_bad_graph_file_is_one_clear_line(net, tmp_path, capsys, kind, command):
    bad = str(_hostile_files(tmp_path, net)[kind])
    extra = {"show": [], "export": ["--onnx", str(tmp_path / "o.onnx")], "draw": ["-o", str(tmp_path / "o.dot")]}
    rc = main([command, bad] + extra[command])
    out, err = capsys.readouterr()
    _assert_one_line_error(rc, err)
    assert not (tmp_path / "o.onnx").exists() and not (tmp_path / "o.dot").exists()


# --------------------------------------------------------------------------- draw


def test_draw_dot(tmp_path, capsys):
    g = archir.Graph("twice")
    x = g.input("x", (2, 4, 4))
    h = g.add("relu", x, name="blk.relu")
    y = g.add("add", h, h, name="blk.add")  # two parallel edges: ports 0 and 1
    g.set_outputs(y)
    g.init_params(0).validate()
    archir.save(g, tmp_path / "twice.json")
    out = tmp_path / "twice.dot"
    assert main(["draw", str(tmp_path / "twice.json"), "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    text = out.read_text()
    assert text == to_dot(g)
    assert text.startswith('digraph "twice" {') and text.rstrip().endswith("}")
    assert '"blk.relu" [label="blk.relu\\nrelu\\n(N, 2, 4, 4)"' in text
    assert '"blk.relu" -> "blk.add" [label="0"];' in text
    assert '"blk.relu" -> "blk.add" [label="1"];' in text
    assert '"x" -> "blk.relu";' in text  # one input: no port label
    assert 'subgraph "cluster_blk"' in text
    assert text.count("->") == g.nx.number_of_edges()


def test_draw_sample_has_every_node_and_edge(net, tmp_path):
    out = tmp_path / "chain.gv"
    assert main(["draw", net, "-o", str(out)]) == 0
    text = out.read_text()
    g = archir.load(net)
    for n in g:
        assert f'"{n}" [label=' in text
    assert text.count("->") == g.nx.number_of_edges()


def _fake_dot(folder: Path, body: str) -> None:
    folder.mkdir()
    script = folder / "dot"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)


def test_draw_svg_runs_graphviz(net, tmp_path, monkeypatch, capsys):
    # a stand-in `dot`: records its arguments and writes an SVG to the -o path
    bin_dir = tmp_path / "bin"
    _fake_dot(bin_dir, 'echo "$@" > "$(dirname "$0")/args"\n'
                       'while [ $# -gt 0 ]; do [ "$1" = "-o" ] && out="$2"; shift; done\n'
                       'cat > /dev/null; echo "<svg/>" > "$out"\n')
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ.get("PATH", ""))  # ours comes first
    out = tmp_path / "chain.svg"
    assert main(["draw", net, "-o", str(out)]) == 0
    assert out.read_text() == "<svg/>\n"
    assert (bin_dir / "args").read_text().startswith("-Tsvg -o ")
    assert _tmp_leftovers(tmp_path) == []


def test_draw_svg_graphviz_failure_keeps_old_file(net, tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    _fake_dot(bin_dir, 'cat > /dev/null; echo "Error: syntax error in line 3" >&2; exit 1\n')
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ.get("PATH", ""))  # ours comes first
    out = tmp_path / "chain.svg"
    out.write_text("old")
    rc = main(["draw", net, "-o", str(out)])
    _assert_one_line_error(rc, capsys.readouterr().err, contains="graphviz dot failed: Error: syntax error")
    assert out.read_text() == "old"
    assert _tmp_leftovers(tmp_path) == []


def test_draw_svg_without_graphviz(net, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    rc = main(["draw", net, "-o", str(tmp_path / "chain.svg")])
    err = capsys.readouterr().err
    _assert_one_line_error(rc, err, contains="apt-get install graphviz")
    assert ".dot" in err
    assert not (tmp_path / "chain.svg").exists()


def test_draw_unknown_format(net, tmp_path, capsys):
    rc = main(["draw", net, "-o", str(tmp_path / "chain.jpeg")])
    _assert_one_line_error(rc, capsys.readouterr().err, contains="unknown drawing format")


# --------------------------------------------------------------------------- demo


def test_demo_darts_like(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--cells", "2", "--batch-size", "2"]) == 0
    text = capsys.readouterr().out
    for name in ("darts_like_2.json", "darts_like_2.safetensors", "darts_like_2.onnx"):
        assert (out / name).is_file()
        assert str(out / name) in text
    g = archir.load(out / "darts_like_2.json")
    assert f"{len(g)} nodes, {g.num_params():,} params" in text
    assert "torch.fx on a batch of 2: (2, 10)" in text
    assert "verified with ONNX Runtime" in text and "outputs match" in text
    assert re.search(r"to_fx [\d.]+ m?s", text) and re.search(r"to_onnx [\d.]+ m?s", text)
    onnx.checker.check_model(onnx.load(str(out / "darts_like_2.onnx")), full_check=True)


@pytest.mark.parametrize("sample", ["chain", "resnet_like", "densenet_like", "mobilenet_like"])
def test_demo_other_samples(sample, tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--sample", sample, "--batch-size", "1"]) == 0
    assert "outputs match" in capsys.readouterr().out
    assert (tmp_path / f"{sample}.onnx").is_file()


def test_demo_bad_arguments(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path), "--sample", "chain", "--cells", "3"])
    _assert_one_line_error(rc, capsys.readouterr().err, contains="--cells applies to --sample darts_like")
    assert main(["demo", "--sample", "nope"]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc = main(["demo", "--out", str(blocker / "sub"), "--sample", "chain"])
    _assert_one_line_error(rc, capsys.readouterr().err, contains=str(blocker))


# --------------------------------------------------------------------------- the installed entry point


def _entry_point() -> list[str]:
    exe = Path(sys.executable).parent / "archir"
    if exe.is_file():
        return [str(exe)]
    pytest.skip("the 'archir' entry point is not installed next to this python (pip install -e .)")


def test_installed_entry_point_reports_user_errors_in_one_line(net_dir, tmp_path):
    out = tmp_path / "super.onnx"
    res = subprocess.run(_entry_point() + ["export", str(net_dir / "super.json"), "--onnx", str(out)],
                         capture_output=True, text=True, timeout=300)
    _assert_one_line_error(res.returncode, res.stderr, contains="training-only")
    assert res.stdout == ""
    assert not out.exists()
