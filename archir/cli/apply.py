"""``archir apply``: run function-preserving morphisms on a saved graph, checked numerically.

Usage::

    archir apply net.json --pass widen:node=stem.conv,out_channels=32 --pass deepen:after=stem.relu -o out.json
    archir apply --list                 # the registered morphisms and their arguments
    archir apply net.json --list        # ... and every legal target on net.json, as --pass specs

A pass spec is ``NAME:KEY=VALUE,KEY=VALUE,...`` (``NAME`` alone when the morphism needs no
argument). ``NAME`` is a morphism registered in ``passes.MORPHISMS``; each ``KEY`` is one of its
keyword arguments. A value is converted to the type the morphism's signature declares for
that argument (``int``, ``float``, ``bool``: ``true``/``false``, ``str``; ``none`` where ``None``
is allowed); an argument without a declared type is read as an int, a float, a bool,
``none`` or a pair of ints (``5x3``: ``[5, 3]``) when it looks like one, else as a string. Node ids are strings, dots included
(``stem.conv``); a value cannot contain ``,``.

The passes run in order under ``passes.PassManager`` with the ``Verify`` (the result
validates) and ``CheckPreserved`` (seeded inputs, eval mode, ``--atol``/``--rtol``)
instruments; the check report of each pass (max abs/rel error per output, time) is printed.
Only when every pass applied and kept the function is the result written, atomically, with
``archir.save`` (``out.json`` + ``out.safetensors``). A refused pass (an illegal target: a
``passes.PreconditionError``) is one error line naming the pass and the reason, exit code 2;
a pass that did not keep the function (an archir bug) exits 1. Nothing is written then.
"""

from __future__ import annotations

import argparse
import inspect
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import archir
from archir.cli.main import CLIError, Subcommand, _check_out_path, _fmt_s, _load

__all__ = ["SUBCOMMANDS", "PassSpec", "parse_spec", "format_spec"]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null"}


@dataclass(frozen=True)
class PassSpec:
    """A parsed ``--pass`` value: the morphism name and its keyword arguments (raw strings).

    Attributes:
        name: the morphism name (a key of ``passes.MORPHISMS``).
        raw: ``key -> value`` as written, in order.
        text: the spec as given (for messages).
    """

    name: str
    raw: tuple[tuple[str, str], ...]
    text: str


def parse_spec(text: str) -> PassSpec:
    """Split ``NAME:KEY=VALUE,...`` into a :class:`PassSpec` (values stay strings).

    Args:
        text: the spec, e.g. ``"widen:node=stem.conv,out_channels=32"``.

    Returns:
        A :class:`PassSpec`.

    Raises:
        CLIError: the spec is malformed (no name, an item without ``=``, an empty key, a key twice).

    Example:
        >>> parse_spec("deepen:after=l0.relu,kernel_size=5").raw
        (('after', 'l0.relu'), ('kernel_size', '5'))
    """
    example = "e.g. --pass widen:node=stem.conv,out_channels=32"
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not name:
        raise CLIError(f"--pass {text!r}: no morphism name before ':'",
                       hint=f"write NAME:KEY=VALUE,... ({example}); 'archir apply --list' lists the morphisms")
    items: list[tuple[str, str]] = []
    if sep and rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key:
                raise CLIError(f"--pass {text!r}: {item.strip()!r} is not KEY=VALUE",
                               hint=f"separate arguments with ',' and give each as KEY=VALUE ({example})")
            if any(k == key for k, _ in items):
                raise CLIError(f"--pass {text!r}: argument {key!r} given twice", hint="give each argument once")
            items.append((key, value.strip()))
    return PassSpec(name, tuple(items), text)


def format_spec(name: str, kwargs: dict) -> str:
    """The ``--pass`` spec of a call: ``format_spec("widen", {"node": "l0.conv", "out_channels": 16})``
    is ``"widen:node=l0.conv,out_channels=16"`` (``None`` as ``none``, bools as ``true``/``false``)."""
    def fmt(v: Any) -> str:
        if v is None:
            return "none"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple)):  # a pair of ints, read back by an untyped argument
            return "x".join(str(x) for x in v)
        return str(v)

    args = ",".join(f"{k}={fmt(v)}" for k, v in kwargs.items())
    return f"{name}:{args}" if args else name


def _annotation(p: inspect.Parameter) -> str:
    a = p.annotation
    if a is inspect.Parameter.empty:
        return ""
    return a if isinstance(a, str) else getattr(a, "__name__", str(a))


def _convert(spec: PassSpec, key: str, value: str, param: inspect.Parameter) -> Any:
    """``value`` as the type ``param`` declares (see the module docstring)."""
    ann = _annotation(param).replace(" ", "")
    kinds = set(ann.split("|")) if ann else set()
    low = value.lower()
    if "None" in kinds and low in _NONE:
        return None
    where = f"--pass {spec.text!r}: argument {key}={value!r}"
    if kinds & {"bool"}:
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise CLIError(f"{where} is not a bool", hint=f"write {key}=true or {key}=false")
    if kinds & {"int"}:
        try:
            return int(value)
        except ValueError:
            raise CLIError(f"{where} is not an int", hint=f"write a whole number, e.g. {key}=3") from None
    if kinds & {"float"}:
        try:
            return float(value)
        except ValueError:
            raise CLIError(f"{where} is not a number", hint=f"write a number, e.g. {key}=0.5") from None
    if kinds & {"str"}:
        if not value:
            raise CLIError(f"{where} is empty", hint=f"give a value after '{key}='")
        return value
    # no declared type: infer
    if low in _NONE:
        return None
    if low in ("true", "false"):
        return low == "true"
    if re.fullmatch(r"\d+x\d+", low):  # a pair of ints, e.g. kernel_size=5x3 (commas separate arguments)
        return [int(x) for x in low.split("x")]
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    if not value:
        raise CLIError(f"{where} is empty", hint=f"give a value after '{key}='")
    return value


def _signature(fn) -> dict[str, inspect.Parameter]:
    """The keyword arguments of a morphism (its graph argument left out)."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    return {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _usage(name: str, fn) -> str:
    """``widen:node=STR,out_channels=INT[,mode=STR][,noise=FLOAT][,seed=INT]``."""
    parts = []
    for p in _signature(fn).values():
        t = (_annotation(p).replace(" ", "").replace("|None", "|none") or "value").upper()
        parts.append(f"{p.name}={t}" if p.default is inspect.Parameter.empty else f"[{p.name}={t}]")
    req = ",".join(x for x in parts if not x.startswith("["))
    opt = "".join(f"[,{x[1:-1]}]" for x in parts if x.startswith("["))
    return f"{name}:{req}{opt}" if req else f"{name}[:{opt[2:-1]}]" if opt else name


def resolve(spec: PassSpec, morphisms: dict) -> tuple[Any, dict]:
    """The morphism and the converted keyword arguments of ``spec``.

    Raises:
        CLIError: an unknown morphism (listing the registered ones), an unknown argument
            (listing the accepted ones), a missing required argument, or a value of the wrong type.
    """
    if spec.name not in morphisms:
        raise CLIError(f"--pass {spec.text!r}: unknown morphism {spec.name!r}; registered: {', '.join(morphisms)}",
                       hint="run 'archir apply --list' for the morphisms and their arguments")
    fn = morphisms[spec.name][0]
    sig = _signature(fn)
    kwargs = {}
    for key, value in spec.raw:
        if key not in sig:
            raise CLIError(f"--pass {spec.text!r}: {spec.name} has no argument {key!r}; it takes "
                           f"{', '.join(sig)}", hint=f"usage: --pass {_usage(spec.name, fn)}")
        kwargs[key] = _convert(spec, key, value, sig[key])
    missing = [k for k, p in sig.items() if p.default is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise CLIError(f"--pass {spec.text!r}: {spec.name} needs argument(s) {', '.join(missing)}",
                       hint=f"usage: --pass {_usage(spec.name, fn)}")
    return fn, kwargs


# --------------------------------------------------------------------------- the subcommand


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph", nargs="?", help="the graph's .json file (its .safetensors weights beside it)")
    p.add_argument("--pass", dest="passes", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                   help="a morphism to apply (repeat for a pipeline, applied in order), "
                        "e.g. widen:node=stem.conv,out_channels=32")
    p.add_argument("-o", "--output", metavar="OUT.json",
                   help="where to write the result (OUT.json + OUT.safetensors); required with --pass")
    p.add_argument("--list", action="store_true",
                   help="list the registered morphisms and their arguments (with a graph: its legal targets)")
    p.add_argument("--max-targets", type=int, default=20, metavar="N",
                   help="with --list and a graph: targets shown per morphism (default 20; 0 shows all)")
    p.add_argument("--atol", type=float, default=None,
                   help="tolerance of the check as a fraction of each output's scale, max|before| (default: "
                        "check_preserved's, 1e-9: the check runs in float64)")
    p.add_argument("--rtol", type=float, default=None,
                   help="per-element relative tolerance of the check (default: check_preserved's, 0)")
    p.add_argument("--n", type=int, default=4, help="samples of the seeded check input (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the check input (default: 0)")


def _run_list(args: argparse.Namespace, passes) -> int:
    g = _load(args.graph) if args.graph else None
    if args.max_targets < 0:
        raise CLIError(f"--max-targets must be >= 0, got {args.max_targets}", hint="pass 0 to show every target")
    print("registered morphisms (passes.MORPHISMS); a --pass spec is NAME:KEY=VALUE,...")
    for name, (fn, _) in passes.MORPHISMS.items():
        doc = (inspect.getdoc(fn) or "").strip().splitlines()
        print(f"  {_usage(name, fn)}")
        if doc:
            print(f"      {doc[0]}")
    if g is None:
        print("(give a graph file to list its legal targets)")
        return 0
    print()
    print(f"legal targets on {args.graph} ({g.name!r}, {len(g)} nodes):")
    for name in passes.MORPHISMS:
        targets = passes.legal_targets(g, name)
        print(f"  {name}: {len(targets)} target(s)")
        shown = targets if args.max_targets == 0 else targets[:args.max_targets]
        for t in shown:
            print(f"    --pass {format_spec(name, t)}")
        if len(shown) < len(targets):
            print(f"    ... and {len(targets) - len(shown)} more (--max-targets 0 shows all)")
    return 0


def _run(args: argparse.Namespace) -> int:
    import passes

    if args.list:
        if args.passes:
            raise CLIError("--list cannot be combined with --pass", hint="run --list first, then apply with --pass")
        return _run_list(args, passes)
    if not args.graph:
        raise CLIError("no graph file given", hint="archir apply net.json --pass NAME:KEY=VALUE,... -o out.json")
    if not args.passes:
        raise CLIError("no --pass given: nothing to apply",
                       hint="add --pass NAME:KEY=VALUE,... ('archir apply net.json --list' lists the legal ones)")
    if not args.output:
        raise CLIError("no output file given", hint="add -o out.json (the weights go to out.safetensors beside it)")
    if (args.atol or 0) < 0 or (args.rtol or 0) < 0:
        raise CLIError(f"tolerances must be >= 0 (got --atol {args.atol}, --rtol {args.rtol})",
                       hint="pass --atol/--rtol values >= 0")
    if args.n < 1:
        raise CLIError(f"--n must be >= 1, got {args.n}", hint="pass --n 4 (samples of the check input)")
    out = Path(args.output)
    _check_out_path(out, "result graph", "out.json")
    if out.suffix != ".json":
        raise CLIError(f"{out}: the output must be a .json file", hint=f"write -o {out.with_suffix('.json')} "
                       "(the weights go to a .safetensors file beside it)")
    # parse every spec before loading or running anything: a typo in the last one costs nothing
    calls = [resolve(parse_spec(s), passes.MORPHISMS) for s in args.passes]
    g = _load(args.graph)
    check = passes.CheckPreserved(atol=args.atol, rtol=args.rtol, n=args.n, seed=args.seed)
    pm = passes.PassManager([passes.bind(fn, **kw) for fn, kw in calls], instruments=[passes.Verify(), check])
    t0 = time.perf_counter()
    try:
        g2 = pm.run(g)
    except passes.PreconditionError as e:  # an illegal target: the user's mistake
        i = len(pm.records)  # the passes before the refused one all applied
        cause = e.__cause__ if isinstance(e.__cause__, passes.PreconditionError) else e
        where = f" at node {cause.node!r}" if cause.node is not None else ""
        done = f" (after {i} pass(es) applied)" if i else ""
        raise CLIError(f"pass {i + 1} {passes.pass_name(calls[i][0])!r} (--pass {args.passes[i]}) refused{where}: "
                       f"{cause.message}{done}; nothing was written", hint=cause.hint) from e
    except passes.PostconditionError as e:  # the pass broke its promise (FunctionNotPreserved) or the IR
        raise CLIError(f"{str(e).splitlines()[0]}; nothing was written",
                       hint="this is a bug in the morphism; please report it with the graph file and the --pass "
                            "specs" + (" (or loosen --atol/--rtol)" if isinstance(e, passes.FunctionNotPreserved)
                                       else ""), exit_code=1) from e
    total = time.perf_counter() - t0
    reports = iter(check.reports)
    print(f"archir apply: {args.graph} ({g.name!r}, {len(g)} nodes, {g.num_params():,} params)")
    for rec in pm.records:
        print(f"pass {rec.index} {rec.call}: {_fmt_s(rec.seconds)}, nodes {rec.nodes_before} -> {rec.nodes_after} "
              f"({rec.node_delta:+d})")
        if rec.max_abs is not None:
            _, rep = next(reports)
            for line in str(rep).splitlines():
                print(f"  {line.strip() if line.startswith('preservation') else line}")
        else:
            print("  (this pass promises no preserved function: not checked)")
    archir.save(g2, out)
    weights = out.with_suffix(".safetensors")
    print(f"wrote {out}" + (f" + {weights.name}" if weights.exists() else "")
          + f": {len(g2)} nodes, {g2.num_params():,} params ({len(pm.records)} pass(es) in {_fmt_s(total)}, "
            "checks included)")
    return 0


SUBCOMMANDS = [
    Subcommand("apply", "apply function-preserving morphisms to a graph, checking each numerically",
               _add_arguments, _run,
               "Apply morphisms (passes.MORPHISMS) in order to a saved graph: each --pass is "
               "NAME:KEY=VALUE,... (e.g. widen:node=stem.conv,out_channels=32). Every result is "
               "validated and checked numerically against its input (eval mode, seeded inputs); the "
               "check report of each pass is printed, and the final graph is written atomically to "
               "-o OUT.json (+ OUT.safetensors) only if every pass applied. A refused pass (illegal "
               "target) exits 2, a pass that changed the function exits 1; nothing is written then. "
               "--list shows the morphisms and, with a graph, its legal targets."),
]
