"""Tests of ``archir apply`` (``archir/cli/apply.py``): specs, the pipeline, the report, refusals.

The subcommand is run in-process with ``archir.cli.main.main``; its output graph is compared
with the same passes called directly (structural and weights hashes).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import archir
import passes
from archir import samples
from archir.cli import apply as apply_cli
from archir.cli.main import CLIError, main
from archir.errors import ArchirError

# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("apply_nets")
    archir.save(samples.chain(), d / "chain.json")
    archir.save(samples.resnet_like(), d / "resnet_like.json")
    return d


def _one_line_error(rc: int, err: str, *, code: int = 2, contains: str = "") -> str:
    assert rc == code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("archir: error: "), err
    assert len(lines) <= 2, err
    if len(lines) == 2:
        assert lines[1].startswith("  how to fix: "), err
    assert contains in err, err
    return lines[0]


def _nothing_written(folder: Path, before: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == before  # no result, no .tmp leftovers


# --------------------------------------------------------------------------- specs


def test_parse_spec_splits_name_and_items():
    s = apply_cli.parse_spec("widen:node=stem.conv,out_channels=32")
    assert s.name == "widen" and s.raw == (("node", "stem.conv"), ("out_channels", "32"))
    assert apply_cli.parse_spec("insert_bn").raw == ()
    assert apply_cli.parse_spec("insert_bn:").raw == ()


@pytest.mark.parametrize("spec, contains", [
    (":node=a", "no morphism name"),
    ("widen:node", "'node' is not KEY=VALUE"),
    ("widen:node=a,,out_channels=3", "'' is not KEY=VALUE"),
    ("widen:=3", "is not KEY=VALUE"),
    ("widen:node=a,node=b", "argument 'node' given twice"),
])
def test_parse_spec_refuses_malformed(spec, contains):
    with pytest.raises(CLIError, match=re.escape(contains)):
        apply_cli.parse_spec(spec)


def test_values_follow_the_signature():
    fn, kw = apply_cli.resolve(apply_cli.parse_spec(
        "deepen:after=1.5,kernel_size=5,with_bn=false,activation=none,seed=7"), passes.MORPHISMS)
    assert fn is passes.deepen
    # a node id that looks like a number stays a string: the signature says str
    assert kw == {"after": "1.5", "kernel_size": 5, "with_bn": False, "activation": None, "seed": 7}
    assert type(kw["kernel_size"]) is int
    _, kw = apply_cli.resolve(apply_cli.parse_spec("widen:node=a.b.c,out_channels=9,noise=0.5,mode=zero"),
                              passes.MORPHISMS)
    assert kw == {"node": "a.b.c", "out_channels": 9, "noise": 0.5, "mode": "zero"}
    # enlarge_kernel's kernel_size has no declared type: read as an int when it looks like one
    _, kw = apply_cli.resolve(apply_cli.parse_spec("enlarge_kernel:node=c,kernel_size=5"), passes.MORPHISMS)
    assert kw == {"node": "c", "kernel_size": 5} and type(kw["kernel_size"]) is int
    _, kw = apply_cli.resolve(apply_cli.parse_spec("enlarge_kernel:node=c,kernel_size=5x3"), passes.MORPHISMS)
    assert kw == {"node": "c", "kernel_size": [5, 3]}
    assert apply_cli.format_spec("enlarge_kernel", kw) == "enlarge_kernel:node=c,kernel_size=5x3"


def test_a_pair_kernel_size_applies(nets, tmp_path, capsys):
    out = tmp_path / "k.json"
    assert main(["apply", str(nets / "chain.json"), "--pass", "enlarge_kernel:node=l1.conv,kernel_size=5x3",
                 "-o", str(out)]) == 0
    expected = passes.enlarge_kernel(archir.load(nets / "chain.json"), node="l1.conv", kernel_size=[5, 3])
    assert archir.load(out).weights_hash() == expected.weights_hash()
    assert archir.load(out).node("l1.conv").params["weight"].shape[2:] == (5, 3)


@pytest.mark.parametrize("spec, contains", [
    ("frobnicate:x=1", "unknown morphism 'frobnicate'; registered: deepen, insert_bn"),
    ("widen:node=l0.conv,size=3", "widen has no argument 'size'; it takes node, out_channels"),
    ("widen:node=l0.conv", "widen needs argument(s) out_channels"),
    ("widen:node=l0.conv,out_channels=3.5", "argument out_channels='3.5' is not an int"),
    ("deepen:after=l0.relu,with_bn=maybe", "argument with_bn='maybe' is not a bool"),
    ("insert_bn:after=l0.relu,eps=tiny", "argument eps='tiny' is not a number"),
    ("insert_bn:after=", "argument after='' is empty"),
])
def test_resolve_refuses_bad_arguments(spec, contains):
    with pytest.raises(CLIError, match=re.escape(contains)) as e:
        apply_cli.resolve(apply_cli.parse_spec(spec), passes.MORPHISMS)
    assert e.value.hint  # says how to fix (usage or --list)


def test_format_spec_round_trips_every_legal_target(nets):
    g = archir.load(nets / "resnet_like.json")
    for name in passes.MORPHISMS:
        for t in passes.legal_targets(g, name)[:5]:
            fn, kw = apply_cli.resolve(apply_cli.parse_spec(apply_cli.format_spec(name, t)), passes.MORPHISMS)
            assert fn is passes.MORPHISMS[name][0] and kw == t


def test_help_lists_apply(capsys):
    assert main(["--help"]) == 0
    assert re.search(r"^    apply +apply function-preserving morphisms", capsys.readouterr().out, re.M)
    assert main(["apply", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--pass NAME:KEY=VALUE,..." in out and "--list" in out


def test_pass_errors_are_user_errors_of_the_cli():
    (sc,) = apply_cli.SUBCOMMANDS
    assert sc.name == "apply"
    assert issubclass(passes.PassError, ArchirError)  # main() catches ArchirError: no per-command list


# --------------------------------------------------------------------------- happy path


def test_apply_equals_calling_the_passes_directly(nets, tmp_path, capsys):
    out = tmp_path / "out.json"
    rc = main(["apply", str(nets / "chain.json"), "--pass", "widen:node=l0.conv,out_channels=16",
               "--pass", "deepen:after=l0.relu,kernel_size=3", "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    g = archir.load(nets / "chain.json")
    expected = passes.deepen(passes.widen(g, node="l0.conv", out_channels=16), after="l0.relu", kernel_size=3)
    got = archir.load(out)
    assert out.with_suffix(".safetensors").exists()
    assert got.structural_hash() == expected.structural_hash()
    assert got.weights_hash() == expected.weights_hash()
    # one record and one check report per pass, with the numbers of check_preserved
    assert re.search(r"^pass 1 widen\(node='l0.conv', out_channels=16\): .* nodes 11 -> 11 \(\+0\)$", text, re.M)
    assert re.search(r"^pass 2 deepen\(after='l0.relu', kernel_size=3\): .* nodes 11 -> 14 \(\+3\)$", text, re.M)
    assert len(re.findall(r"preservation check \(eval mode, n=4, seed=0, atol=1e-09, rtol=0\): ok in "
                          r"[\d.]+ ms \(float64", text)) == 2  # check_preserved's own defaults
    mid = passes.widen(g, node="l0.conv", out_channels=16)
    rep = passes.check_preserved(g, mid)
    first = text.split("pass 2")[0]
    assert f"head (10,): max_abs={rep.outputs[0].max_abs:.3g} max_rel={rep.outputs[0].max_rel:.3g}" in first
    assert f"wrote {out} + out.safetensors: {len(expected)} nodes, {expected.num_params():,} params" in text


def test_apply_on_a_residual_net_follows_coupling(nets, tmp_path, capsys):
    g = archir.load(nets / "resnet_like.json")
    target = passes.legal_targets(g, "widen")[0]
    skip = passes.legal_targets(g, "add_skip")[-1]
    specs = [apply_cli.format_spec("widen", target), apply_cli.format_spec("add_skip", skip)]
    out = tmp_path / "r.json"
    rc = main(["apply", str(nets / "resnet_like.json"), *sum((["--pass", s] for s in specs), []), "-o", str(out)])
    assert rc == 0, capsys.readouterr()
    expected = passes.add_skip(passes.widen(g, **target), **skip)
    got = archir.load(out)
    assert (got.structural_hash(), got.weights_hash()) == (expected.structural_hash(), expected.weights_hash())
    passes.check_preserved(g, got)


def test_overwrites_an_old_result_atomically(nets, tmp_path, capsys):
    out = tmp_path / "o.json"
    archir.save(samples.chain(seed=3), out)
    assert main(["apply", str(nets / "chain.json"), "--pass", "insert_bn:after=l0.relu", "-o", str(out)]) == 0
    expected = passes.insert_bn(archir.load(nets / "chain.json"), after="l0.relu")
    assert archir.load(out).weights_hash() == expected.weights_hash()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_list_without_and_with_a_graph(nets, capsys):
    assert main(["apply", "--list"]) == 0
    out = capsys.readouterr().out
    for name in passes.MORPHISMS:
        assert re.search(rf"^  {name}[:\[]", out, re.M), name
    assert "widen:node=STR,out_channels=INT[,mode=STR][,noise=FLOAT][,seed=INT]" in out

    assert main(["apply", str(nets / "chain.json"), "--list", "--max-targets", "0"]) == 0
    out = capsys.readouterr().out
    g = archir.load(nets / "chain.json")
    for name in passes.MORPHISMS:
        targets = passes.legal_targets(g, name)
        assert f"  {name}: {len(targets)} target(s)" in out
        for t in targets:
            assert f"    --pass {apply_cli.format_spec(name, t)}\n" in out
    assert main(["apply", str(nets / "chain.json"), "--list", "--max-targets", "1"]) == 0
    assert "... and 71 more" in capsys.readouterr().out  # add_skip has 72 targets on the chain


# --------------------------------------------------------------------------- refusals: nothing written


@pytest.mark.parametrize("argv, contains", [
    (["--pass", "frob:x=1"], "unknown morphism 'frob'; registered: deepen, insert_bn, enlarge_kernel, add_skip"),
    (["--pass", "widen:node"], "'node' is not KEY=VALUE"),
    (["--pass", "widen:node=l0.conv,width=3"], "widen has no argument 'width'"),
    (["--pass", "widen:node=l0.conv"], "needs argument(s) out_channels"),
    # the last spec is checked before anything runs
    (["--pass", "insert_bn:after=l0.relu", "--pass", "deepen:afterr=l0.relu"], "deepen has no argument 'afterr'"),
])
def test_bad_specs_are_one_line_and_write_nothing(nets, tmp_path, capsys, argv, contains):
    before = {p.name for p in tmp_path.iterdir()}
    rc = main(["apply", str(nets / "chain.json"), *argv, "-o", str(tmp_path / "out.json")])
    _one_line_error(rc, capsys.readouterr().err, contains=contains)
    _nothing_written(tmp_path, before)


@pytest.mark.parametrize("argv, contains", [
    # shrinking through widen
    (["--pass", "widen:node=l0.conv,out_channels=4"],
     "pass 1 'widen' (--pass widen:node=l0.conv,out_channels=4) refused at node 'l0.conv': widen only grows"),
    # an unknown node
    (["--pass", "widen:node=nope,out_channels=16"], "pass 1 'widen' (--pass widen:node=nope,out_channels=16) "
                                                    "refused: no node 'nope' in graph 'chain'"),
    # an illegal target, after a pass that applied
    (["--pass", "deepen:after=l0.relu", "--pass", "add_skip:src=l1.relu,dst=l0.conv"],
     "pass 2 'add_skip' (--pass add_skip:src=l1.relu,dst=l0.conv) refused at node 'l0.conv'"),
    (["--pass", "enlarge_kernel:node=l0.bn,kernel_size=5"], "pass 1 'enlarge_kernel'"),
])
def test_refused_pass_exits_2_and_writes_nothing(nets, tmp_path, capsys, argv, contains):
    old = tmp_path / "out.json"
    archir.save(samples.chain(seed=5), old)
    old_bytes = old.read_bytes(), old.with_suffix(".safetensors").read_bytes()
    before = {p.name for p in tmp_path.iterdir()}
    rc = main(["apply", str(nets / "chain.json"), *argv, "-o", str(old)])
    line = _one_line_error(rc, capsys.readouterr().err, contains=contains)
    assert line.endswith("nothing was written")
    _nothing_written(tmp_path, before)
    assert (old.read_bytes(), old.with_suffix(".safetensors").read_bytes()) == old_bytes


def test_a_pass_that_breaks_the_function_exits_1(nets, tmp_path, capsys, monkeypatch):
    @passes.graph_pass(preserves="function")
    def bad(g, node: str):
        g = g.copy()
        w = g.node(node).params["weight"]
        g.set_params(node, weight=(w * 2).astype(np.float32))
        return g

    monkeypatch.setitem(passes.MORPHISMS, "bad", (bad, lambda g: []))
    before = {p.name for p in tmp_path.iterdir()}
    rc = main(["apply", str(nets / "chain.json"), "--pass", "bad:node=head", "-o", str(tmp_path / "o.json")])
    _one_line_error(rc, capsys.readouterr().err, code=1, contains="output 'head' (10,) differs")
    _nothing_written(tmp_path, before)


@pytest.mark.parametrize("argv, contains", [
    (["{net}", "--pass", "insert_bn:after=l0.relu"], "no output file given"),
    (["{net}", "-o", "{tmp}/o.json"], "no --pass given"),
    (["--pass", "insert_bn:after=l0.relu", "-o", "{tmp}/o.json"], "no graph file given"),
    (["{tmp}/missing.json", "--pass", "insert_bn:after=l0.relu", "-o", "{tmp}/o.json"], "missing.json"),
    (["{net}", "--pass", "insert_bn:after=l0.relu", "-o", "{tmp}/no/such/o.json"], "does not exist"),
    (["{net}", "--pass", "insert_bn:after=l0.relu", "-o", "{tmp}/o.onnx"], "the output must be a .json file"),
    (["{net}", "--pass", "insert_bn:after=l0.relu", "-o", "{tmp}"], "is a folder, not a file"),
    (["{net}", "--pass", "insert_bn:after=l0.relu", "-o", "{tmp}/o.json", "--atol", "-1"], "tolerances must be"),
    (["{net}", "--pass", "insert_bn:after=l0.relu", "-o", "{tmp}/o.json", "--n", "0"], "--n must be >= 1"),
    (["{net}", "--list", "--pass", "insert_bn:after=l0.relu"], "--list cannot be combined with --pass"),
    (["{net}", "--list", "--max-targets", "-1"], "--max-targets must be >= 0"),
])
def test_usage_errors(nets, tmp_path, capsys, argv, contains):
    before = {p.name for p in tmp_path.iterdir()}
    rc = main(["apply", *[a.format(net=nets / "chain.json", tmp=tmp_path) for a in argv]])
    _one_line_error(rc, capsys.readouterr().err, contains=contains)
    _nothing_written(tmp_path, before)


def test_installed_entry_point_refusal(nets, tmp_path):
    # the real process: exit code 2, one line on stderr, nothing on stdout, nothing written
    exe = Path(sys.executable).with_name("archir")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "archir.cli.main"]
    res = subprocess.run([*cmd, "apply", str(nets / "chain.json"), "--pass", "widen:node=l0.conv,out_channels=2",
                          "-o", str(tmp_path / "o.json")], capture_output=True, text=True, timeout=120)
    _one_line_error(res.returncode, res.stderr, contains="pass 1 'widen'")
    assert res.stdout == ""
    assert list(tmp_path.iterdir()) == []
