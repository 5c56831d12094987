"""The ``archir`` command line: ``show``, ``export``, ``draw``, ``demo``.

Usage::

    archir show net.json                      # node table with totals
    archir export net.json --onnx net.onnx    # ONNX, verified under ONNX Runtime
    archir export runs/demo --best --onnx m.onnx   # a search run's best candidate (or --id N)
    archir export big.json --onnx big.onnx --external-data   # weights in big.onnx.data (over 2 GiB)
    archir draw net.json -o net.svg           # Graphviz drawing (.dot needs no graphviz)
    archir demo --out ./archir-demo           # build, save, lower, export, verify a sample network
    archir --version

Exit codes: 0 success; 1 the ONNX export did not match torch.fx under ONNX Runtime;
2 bad input or usage (a bad graph file, a missing path, an unknown option). A user's
mistake (any ``archir.ArchirError``) is reported as one line (``archir: error: ...``) plus
a ``how to fix`` line, never as a traceback; a traceback means an archir bug. A model that
does not import (``archir import``) adds one ``  - op at node: reason`` line per kind of node
it could not map (the first node of each kind).

Adding a subcommand: write a module ``archir/cli/<name>.py`` that defines
``SUBCOMMANDS = [Subcommand(name, help, add_arguments, run)]``; :func:`build_parser` finds
every module of this package that defines ``SUBCOMMANDS``. ``run(args)`` returns the exit
code and raises an ``archir.ArchirError`` (:class:`CLIError`, ``archir.IRError``,
``passes.PassError``, the errors of ``costmodels`` and ``search``) for bad input; :func:`main`
turns it into the one-line message and exit code 2 (``e.exit_code`` where the error has one:
1 for a failed verification). Subcommand modules import ``passes``/``costmodels``/``search``
lazily, inside ``run``, so ``archir --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import archir
from archir.errors import ArchirError, is_user_error

__all__ = ["main", "build_parser", "Subcommand", "SUBCOMMANDS", "extra_modules", "CLIError", "to_dot",
           "export_verified", "ExportReport", "default_data_path", "run_candidate"]

PROG = "archir"


class CLIError(ArchirError):
    """A user-facing error of the command line that is not about a graph (a path, a tool).

    Args:
        message: what is wrong and where (one line).
        hint: how to fix it (one line), or None.
        exit_code: the process exit code (2: bad input; 1: a check failed).
        where: places (``file=``, ``candidate=`` ...), as for :class:`archir.ArchirError`.
    """

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int = 2, **where) -> None:
        self.exit_code = exit_code
        super().__init__(message, hint=hint, **where)


@dataclass(frozen=True)
class Subcommand:
    """One ``archir <name>`` subcommand.

    Attributes:
        name: the word after ``archir``.
        help: one line for ``archir --help``.
        add_arguments: adds the subcommand's arguments to its ``argparse`` parser.
        run: runs it on the parsed arguments; returns the exit code.
        description: the longer text of ``archir <name> --help`` (defaults to ``help``).

    ``run`` reports bad input by raising an ``archir.ArchirError`` (see :func:`main`).
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""


# --------------------------------------------------------------------------- helpers


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def _load(path: str) -> archir.Graph:
    """Load and validate a graph file; errors are ``IRError`` naming the file."""
    return archir.load(path)


def _check_out_path(path: Path, what: str, example: str) -> None:
    """Refuse an output path whose folder is missing or which is a folder, before any work."""
    if path.is_dir():
        raise CLIError(f"{path}: is a folder, not a file",
                       hint=f"give a file name for the {what}, e.g. {path / example}")
    if not path.parent.is_dir():
        raise CLIError(f"{path}: folder {path.parent} does not exist", hint=f"create it first (mkdir -p {path.parent})")


@contextmanager
def _atomic_target(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    The temporary file sits in the same folder so the final ``os.replace`` is atomic: a
    failure (or a failed check inside the block) leaves an old ``path`` untouched.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:  # flush the data to disk before the rename makes it visible
            os.fsync(f.fileno())
        # mkstemp makes the file 0600; give it the mode a plain open() would (0666 less the umask)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read the umask is to set it; put it back at once
    os.umask(mask)
    return mask


def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


# --------------------------------------------------------------------------- export + verification


@dataclass
class ExportReport:
    """What :func:`export_verified` did: the file(s), the timings and the numeric agreement.

    ``data_path``/``data_bytes``: the ONNX external data file beside the model (``None``/0 when
    the weights are inline); ``verify``: the :class:`archir.lower.VerifyReport`.
    """

    path: Path
    bytes: int
    to_onnx_s: float
    verify_s: float
    max_abs_err: float
    max_rel_err: float
    ok: bool
    atol: float
    rtol: float
    ort_version: str
    batch_size: int
    output_shapes: list[tuple[int, ...]] = field(default_factory=list)
    data_path: Path | None = None
    data_bytes: int = 0
    verify: object = None


def _seeded_inputs(graph: archir.Graph, batch_size: int, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    return [torch.randn((batch_size, *graph.node(i).type.shape), generator=gen) for i in graph.inputs]


def default_data_path(out: str | os.PathLike) -> Path:
    """The external data file of ``out`` when none is named: ``NET.onnx.data`` beside ``NET.onnx``."""
    out = Path(out)
    return out.with_name(out.name + ".data")


def _data_path(out: Path, external_data) -> Path | None:
    if external_data is None or external_data is False:
        return None
    data = default_data_path(out) if external_data in (True, "") else Path(external_data)
    if data.parent.resolve() != out.parent.resolve():
        raise CLIError(f"{data}: the external data file must sit in the model's folder {out.parent}",
                       hint=f"give a file name beside the model, e.g. --external-data {default_data_path(out)} "
                            "(the model refers to it by its name)")
    if data.name == out.name:
        raise CLIError(f"{data}: the external data file cannot be the model file itself",
                       hint=f"give another name, e.g. --external-data {default_data_path(out)}")
    if data.is_dir():
        raise CLIError(f"{data}: is a folder, not a file", hint=f"give a file name, e.g. {default_data_path(out)}")
    return data


def _publish(tmp: Path, path: Path) -> None:
    """Flush ``tmp`` to disk, give it a plain file's mode and rename it over ``path`` (atomic)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp/mkdtemp files are 0600: the mode a plain open() gives
    os.replace(tmp, path)


def export_verified(graph: archir.Graph, out: str | os.PathLike, *, atol: float = 1e-5, rtol: float = 1e-4,
                    batch_size: int = 2, seed: int = 0, module=None,
                    external_data: str | os.PathLike | bool | None = None) -> ExportReport:
    """Export ``graph`` to ONNX at ``out`` and verify it under ONNX Runtime (CPU) against torch.fx.

    The model is written to a temporary file beside ``out`` and checked with
    :func:`archir.lower.verify_onnx` (seeded random inputs, the ``to_fx`` module in eval mode).
    Only when the outputs match (``|fx - ort| <= atol + rtol * |fx|`` everywhere) is the file
    renamed to ``out``; otherwise an old ``out`` is left as it was.

    With ``external_data`` the weights go to an ONNX external data file beside ``out`` (needed
    for models over protobuf's 2 GiB limit): both files are written into a temporary folder
    beside ``out``, verified there, then renamed into place, the data file first. Each rename is
    atomic; a failure before them leaves the old files as they were.

    Args:
        graph: a valid plain graph with weights.
        out: the ``.onnx`` file to write.
        atol, rtol: the tolerances of the comparison.
        batch_size: the batch of the seeded inputs.
        seed: the seed of the inputs.
        module: the ``to_fx`` module of ``graph``, if the caller already has one.
        external_data: ``None`` (weights inline), ``True`` (``OUT.onnx.data`` beside ``out``) or
            the data file's path (in ``out``'s folder).

    Returns:
        An :class:`ExportReport`.

    Raises:
        IRError: the graph is invalid or cannot be exported (e.g. it still has choice nodes).
        CLIError: the output path is unusable, the model is over 2 GiB without
            ``external_data``, or the outputs do not match (``exit_code`` 1).
    """
    import onnx

    from archir.lower import OnnxTooLarge, verify_onnx

    out = Path(out)
    _check_out_path(out, "ONNX model", "net.onnx")
    data_path = _data_path(out, external_data)
    if data_path is None:
        t0 = time.perf_counter()
        try:
            proto = archir.lower.to_onnx(graph)
        except OnnxTooLarge as e:
            raise CLIError(f"{out}: {e.message}", hint=f"pass --external-data to write the weights to "
                           f"{default_data_path(out)} beside the model (ONNX external data)") from None
        from google.protobuf.message import EncodeError

        try:
            data = proto.SerializeToString()
        except (EncodeError, ValueError) as e:  # protobuf refuses messages over 2 GiB (the check above should catch it)
            raise CLIError(f"{out}: the ONNX model is too large to serialize ({e})",
                           hint="pass --external-data to write the weights as ONNX external data") from None
        to_onnx_s = time.perf_counter() - t0
        del proto
        t1 = time.perf_counter()
        with _atomic_target(out) as tmp:
            tmp.write_bytes(data)
            rep = verify_onnx(graph, tmp, n=batch_size, seed=seed, atol=atol, rtol=rtol, module=module,
                              threads=None)
            _raise_unverified(rep, out)
        size, data_bytes = len(data), 0
    else:
        folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            t0 = time.perf_counter()
            proto = archir.lower.to_onnx(graph, external_data=folder / data_path.name)
            model_tmp = folder / out.name
            onnx.save_model(proto, str(model_tmp))
            to_onnx_s = time.perf_counter() - t0
            del proto
            t1 = time.perf_counter()
            rep = verify_onnx(graph, model_tmp, n=batch_size, seed=seed, atol=atol, rtol=rtol, module=module,
                              threads=None)
            _raise_unverified(rep, out)
            size, data_bytes = model_tmp.stat().st_size, (folder / data_path.name).stat().st_size
            _publish(folder / data_path.name, data_path)
            _publish(model_tmp, out)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return ExportReport(out, size, to_onnx_s, time.perf_counter() - t1, rep.max_abs, rep.max_rel, rep.ok, atol,
                        rtol, rep.ort_version, batch_size, [o.shape for o in rep.outputs],
                        data_path=data_path, data_bytes=data_bytes, verify=rep)


def _raise_unverified(rep, out: Path) -> None:
    """CLIError (exit 1) naming the worst output unless ``rep`` passed; nothing is written then."""
    if rep.ok:
        return
    w = rep.worst
    hint = ("this is an archir lowering bug; please report it with the graph file (or loosen --atol/--rtol if the "
            "difference is acceptable)")
    where = {} if w is None or rep.error else {"node": w.name}
    if rep.error is None and w is not None and w.shape == w.ort_shape:
        msg = (f"ONNX Runtime {rep.ort_version} output {w.name!r} differs from torch.fx: max |fx - ort| = "
               f"{w.max_abs:.3g} exceeds atol {rep.atol:g} + rtol {rep.rtol:g} * |fx|")
    else:
        msg = rep.summary()
    raise CLIError(f"{out}: {msg}; the file was not written", hint=hint, exit_code=1, **where)


def _print_verified(r: ExportReport) -> None:
    print(f"max |fx - ort| = {r.max_abs_err:.3g} (max relative {r.max_rel_err:.3g}; atol {r.atol:g}, rtol {r.rtol:g}, "
          f"batch {r.batch_size}, seeded random input)")
    print(f"verified with ONNX Runtime {r.ort_version}: outputs match")


# --------------------------------------------------------------------------- show


def _add_show(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph", help="the graph's .json file (its .safetensors weights beside it)")


def _run_show(args: argparse.Namespace) -> int:
    g = _load(args.graph)
    print(g.summary())
    nodes = g.nodes()
    n_params = g.num_params()
    n_buffers = sum(int(a.size) for n in nodes for a in n.buffers.values())
    n_arch = sum(int(a.size) for a in g.arch.values())
    ops = Counter(n.op for n in nodes)
    outs = ", ".join(f"{o} {g.node(o).type}" for o in g.outputs)
    print()
    print(f"total: {len(g)} nodes, {n_params:,} params ({n_params * 4 / 2**20:.2f} MiB float32), "
          f"{n_buffers:,} buffer values" + (f", {n_arch:,} architecture logits" if n_arch else ""))
    print("ops: " + ", ".join(f"{op} x{k}" for op, k in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))))
    print(f"outputs: {outs}")
    return 0


# --------------------------------------------------------------------------- export


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph", help="the graph's .json file (its .safetensors weights beside it), or the run folder "
                                 "of 'archir search' with --best or --id N")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument("--external-data", nargs="?", const="", default=None, metavar="PATH",
                   help="write the weights as ONNX external data (needed for models over protobuf's 2 GiB limit) "
                        "into PATH, beside the model (default: OUT.onnx.data)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--best", action="store_true", help="run folder: export the best candidate")
    which.add_argument("--id", type=int, default=None, metavar="N", help="run folder: export candidate N")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance of the check (default: 1e-5)")
    p.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance of the check (default: 1e-4)")
    p.add_argument("--batch-size", type=int, default=2, help="batch of the seeded check input (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the check input (default: 0)")
    p.add_argument("--canonicalize", action="store_true",
                   help="fold BN into convs, drop identities/dropout/dead nodes first (passes.canonicalize; "
                        "checked against the original graph in eval mode)")


def _canonicalized(g: archir.Graph, args: argparse.Namespace) -> archir.Graph:
    """``passes.canonicalize(g, dropout=True)``, checked numerically against ``g`` (exit 1 if it differs)."""
    import passes

    c = passes.canonicalize(g, dropout=True)
    rep = passes.check_preserved(g, c, atol=args.atol, rtol=args.rtol, seed=args.seed, raise_on_failure=False)
    if not rep.ok:
        raise CLIError(f"canonicalize changed the function: max abs error {rep.max_abs:.3g} (atol {args.atol:g}, "
                       f"rtol {args.rtol:g}); nothing was written", exit_code=1,
                       hint="this is an archir bug; please report it with the graph file (or export without "
                            "--canonicalize)")
    print(f"canonicalized: {len(g)} -> {len(c)} nodes ({len(g.nodes('batchnorm2d')) - len(c.nodes('batchnorm2d'))} "
          f"BN folded); max |canonical - original| = {rep.max_abs:.3g} (eval mode)")
    return c


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise CLIError(f"{name} must be positive, got {value}", hint=f"pass {name} with a value > 0")


def run_candidate(args: argparse.Namespace, verb: str):
    """``(graph, candidate)`` of the search run folder ``args.graph``'s ``--best`` / ``--id N`` candidate.

    Raises:
        CLIError: neither option was given (the message says what to ``verb``), or the store refuses.
    """
    if not (args.best or args.id is not None):
        raise CLIError(f"{args.graph}: is a folder: say which candidate of the search run to {verb}",
                       hint="add --best, or --id N (archir gallery lists the ids)")
    from search.experiment import load_candidate_graph
    from search.store import StoreError

    try:
        return load_candidate_graph(args.graph, cid=args.id, best=args.best)
    except StoreError as e:
        raise CLIError(str(e), hint=e.hint) from None


def _load_candidate(args: argparse.Namespace) -> archir.Graph:
    """The trained graph of a search run's candidate (``--best`` or ``--id N``)."""
    g, c = run_candidate(args, "export")
    print(f"candidate {c.id} of {args.graph}: val error {c.metrics.get('val_error', float('nan')):.3f}, "
          f"test error {c.metrics.get('test_error', float('nan')):.3f}")
    return g


def _run_export(args: argparse.Namespace) -> int:
    _positive("--batch-size", args.batch_size)
    if args.atol < 0 or args.rtol < 0:
        raise CLIError(f"tolerances must be >= 0 (got --atol {args.atol}, --rtol {args.rtol})",
                       hint="pass --atol/--rtol values >= 0")
    _check_out_path(Path(args.onnx), "ONNX model", "net.onnx")
    _data_path(Path(args.onnx), args.external_data)  # refuse a bad data path before any work
    if Path(args.graph).is_dir():
        g = _load_candidate(args)
    elif args.best or args.id is not None:
        raise CLIError(f"{args.graph}: --best/--id pick a candidate of a search run folder, and this is not a folder",
                       hint="give the --out folder of 'archir search', or drop --best/--id for a graph file")
    else:
        g = _load(args.graph)
    if args.canonicalize:
        g = _canonicalized(g, args)
    r = export_verified(g, args.onnx, atol=args.atol, rtol=args.rtol, batch_size=args.batch_size, seed=args.seed,
                        external_data=args.external_data)
    print(f"wrote {r.path} ({r.bytes:,} bytes, opset {archir.lower.onnx.OPSET}, dynamic batch axis; "
          f"to_onnx {_fmt_s(r.to_onnx_s)})")
    if r.data_path is not None:
        print(f"wrote {r.data_path} ({r.data_bytes:,} bytes of ONNX external data; keep it beside {r.path.name})")
    _print_verified(r)
    return 0


# --------------------------------------------------------------------------- draw

_DOT_TEXT = {".dot", ".gv"}
_DOT_RENDERED = {".svg": "svg", ".png": "png", ".pdf": "pdf"}


def _q(s: str) -> str:
    """A DOT double-quoted string (escapes quotes and backslashes; newlines become \\n)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(graph: archir.Graph) -> str:
    """The Graphviz DOT text of ``graph``.

    Nodes are labelled ``id / op / output shape``; edges into a node with more than one
    input are labelled with the consumer's input port. Nodes are grouped in a cluster per
    top-level scope (``cell3.*``), graph inputs are ovals and outputs double-bordered.
    """
    lines = [f"digraph {_q(graph.name)} {{", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fillcolor="#f5f5f5", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=8];']
    outputs = set(graph.outputs)

    def node_line(nid: str) -> str:
        node = graph.node(nid)
        label = f"{nid}\n{node.op}\n{node.type}"
        extra = ""
        if node.op == "input":
            extra = ', shape=oval, fillcolor="#dbeafe"'
        elif node.params:
            extra = ', fillcolor="#fef3c7"'
        if nid in outputs:
            extra += ", peripheries=2"
        return f"{_q(nid)} [label={_q(label)}{extra}];"

    scopes: dict[str | None, list[str]] = {}
    order = graph.topo_order()
    for nid in order:
        scope = nid.split(".", 1)[0] if "." in nid else None
        scopes.setdefault(scope, []).append(nid)
    for scope, ids in scopes.items():
        if scope is None or len(ids) == 1:
            lines += [f"  {node_line(n)}" for n in ids]
            continue
        lines.append(f"  subgraph {_q('cluster_' + scope)} {{")
        lines.append(f'    label={_q(scope)}; style="rounded,dashed"; color="#9ca3af";')
        lines += [f"    {node_line(n)}" for n in ids]
        lines.append("  }")
    for nid in order:
        srcs = graph.inputs_of(nid)
        for port, src in enumerate(srcs):
            attr = f" [label={_q(str(port))}]" if len(srcs) > 1 else ""
            lines.append(f"  {_q(src)} -> {_q(nid)}{attr};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _add_draw(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph", help="the graph's .json file")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="net.dot / net.gv (DOT text, no graphviz needed) or net.svg / .png / .pdf "
                        "(rendered with graphviz's dot)")


def _run_draw(args: argparse.Namespace) -> int:
    out = Path(args.output)
    suffix = out.suffix.lower()
    if suffix not in _DOT_TEXT and suffix not in _DOT_RENDERED:
        raise CLIError(f"{out}: unknown drawing format {suffix or '(no suffix)'!r}",
                       hint="name the output .dot (text) or .svg, .png, .pdf (needs graphviz)")
    _check_out_path(out, "drawing", "net.dot")
    dot_bin = None
    if suffix in _DOT_RENDERED:
        dot_bin = shutil.which("dot")
        if dot_bin is None:  # check before loading the graph: fail fast
            raise CLIError(f"{out}: drawing {suffix} needs graphviz's 'dot' program, which is not on PATH",
                           hint="install graphviz (apt-get install graphviz) or write .dot instead")
    g = _load(args.graph)
    text = to_dot(g)
    with _atomic_target(out) as tmp:
        if dot_bin is None:
            tmp.write_text(text)
        else:
            res = subprocess.run([dot_bin, f"-T{_DOT_RENDERED[suffix]}", "-o", str(tmp)], input=text.encode(),
                                 capture_output=True)
            if res.returncode != 0:
                msg = _first_line(res.stderr.decode(errors="replace")) or f"exit code {res.returncode}"
                raise CLIError(f"{out}: graphviz dot failed: {msg}",
                               hint="write .dot instead and render it yourself, or check your graphviz install")
    print(f"wrote {out} ({len(g)} nodes)")
    return 0


# --------------------------------------------------------------------------- demo


def _add_demo(p: argparse.ArgumentParser) -> None:
    from archir.samples import SAMPLES

    p.add_argument("--out", default="archir-demo", metavar="DIR", help="folder for the files (default: ./archir-demo)")
    p.add_argument("--sample", default="darts_like", choices=sorted(SAMPLES),
                   help="which sample network to build (default: darts_like)")
    p.add_argument("--cells", type=int, default=None, help="cells of darts_like (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default: 0)")
    p.add_argument("--batch-size", type=int, default=8, help="batch to run through torch.fx and ORT (default: 8)")


def _run_demo(args: argparse.Namespace) -> int:
    import onnxruntime as ort
    import torch

    from archir.samples import SAMPLES

    _positive("--batch-size", args.batch_size)
    kw = {}
    if args.cells is not None:
        if args.sample != "darts_like":
            raise CLIError(f"--cells applies to --sample darts_like, not {args.sample}",
                           hint="drop --cells, or use --sample darts_like")
        _positive("--cells", args.cells)
        kw["cells"] = args.cells
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}

    t = time.perf_counter()
    g = SAMPLES[args.sample](seed=args.seed, **kw)
    times["build"] = time.perf_counter() - t
    t = time.perf_counter()
    g.validate()
    times["validate"] = time.perf_counter() - t

    json_path = out / f"{g.name}.json"
    t = time.perf_counter()
    archir.save(g, json_path)
    g2 = archir.load(json_path)
    times["save + load"] = time.perf_counter() - t
    if g2.structural_hash() != g.structural_hash() or g2.weights_hash() != g.weights_hash():
        raise CLIError(f"{json_path}: the reloaded graph differs from the saved one",
                       hint="this is an archir serialization bug; please report it", exit_code=1)

    t = time.perf_counter()
    module = archir.lower.to_fx(g)
    times["to_fx"] = time.perf_counter() - t
    module.eval()
    x = _seeded_inputs(g, args.batch_size, args.seed)
    with torch.no_grad():
        module(*x)  # first call: one-off allocations, not part of the timing
        t = time.perf_counter()
        y = module(*x)
        times["fx forward"] = time.perf_counter() - t
    ys = y if isinstance(y, tuple) else (y,)

    onnx_path = out / f"{g.name}.onnx"
    r = export_verified(g, onnx_path, batch_size=args.batch_size, seed=args.seed, module=module)
    times["to_onnx"] = r.to_onnx_s
    times["ORT verify"] = r.verify_s

    weights = json_path.with_suffix(".safetensors")
    print(f"archir demo: sample {args.sample!r} (seed {args.seed})")
    print(f"  graph      {g.name}: {len(g)} nodes, {g.num_params():,} params, valid")
    print(f"  input      {', '.join(f'{i} {g.node(i).type}' for i in g.inputs)}")
    print(f"  output     {', '.join(f'{o} {g.node(o).type}' for o in g.outputs)}; "
          f"torch.fx on a batch of {args.batch_size}: {', '.join(str(tuple(v.shape)) for v in ys)}")
    print(f"  files      {json_path}")
    if weights.exists():
        print(f"             {weights}")
    print(f"             {onnx_path} ({r.bytes:,} bytes, opset {archir.lower.onnx.OPSET})")
    print(f"  check      reloaded {json_path.name}: same structure and weights hashes")
    print(f"  check      max |fx - ort| = {r.max_abs_err:.3g} (atol {r.atol:g}, rtol {r.rtol:g}): "
          f"verified with ONNX Runtime {ort.__version__}: outputs match")
    print("  timings    " + ", ".join(f"{k} {_fmt_s(v)}" for k, v in times.items()))
    print(f"  next       archir show {json_path}  |  archir draw {json_path} -o {out / (g.name + '.dot')}")
    return 0


# --------------------------------------------------------------------------- registry and entry point

SUBCOMMANDS: list[Subcommand] = [
    Subcommand("show", "print a graph's node table (node, op, output shape, params) with totals", _add_show, _run_show),
    Subcommand("export", "export a graph to ONNX and verify it under ONNX Runtime", _add_export, _run_export,
               "Export a graph to ONNX (opset 17, dynamic batch axis), then run the torch.fx module and "
               "ONNX Runtime (CPU) on the same seeded random input and compare. The file is written "
               "atomically and only when the outputs match: a failure leaves an old file untouched. "
               "Exit code 1 when the outputs differ."),
    Subcommand("draw", "draw a graph as Graphviz DOT (or SVG/PNG/PDF with graphviz installed)", _add_draw,
               _run_draw),
    Subcommand("demo", "build a sample network, save it, lower it to torch.fx and ONNX, verify, summarise",
               _add_demo, _run_demo,
               "The main job until 'archir search' exists: build a sample network (archir.samples), "
               "validate it, save it (.json + .safetensors), lower it to torch.fx and run a batch, export "
               "ONNX, verify it under ONNX Runtime, and print a summary with timings."),
]

def extra_modules() -> list[str]:
    """The modules of ``archir.cli`` besides this one, sorted (each may define ``SUBCOMMANDS``)."""
    import archir.cli as pkg
    return sorted(f"{pkg.__name__}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)
                  if m.name != "main" and not m.name.startswith("_"))


def _all_subcommands() -> list[Subcommand]:
    subs = list(SUBCOMMANDS)
    for mod in extra_modules():
        subs += list(getattr(importlib.import_module(mod), "SUBCOMMANDS", []))
    names = [s.name for s in subs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise RuntimeError(f"archir CLI: subcommand(s) {dup} defined twice under archir/cli/")
    return subs


def build_parser() -> argparse.ArgumentParser:
    """The ``argparse`` parser of ``archir`` with every subcommand; ``args.run`` runs the chosen one."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="archir: a graph-IR compiler toolkit for neural architecture search.",
        epilog="exit codes: 0 success, 1 a verification failed, 2 bad input or usage. "
               "Run 'archir <command> --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"{PROG} {archir.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for sc in _all_subcommands():
        p = sub.add_parser(sc.name, help=sc.help, description=sc.description or sc.help)
        sc.add_arguments(p)
        p.set_defaults(run=sc.run)
    return parser


def _error(message: str, hint: str | None) -> None:
    print(f"{PROG}: error: {_first_line(message)}", file=sys.stderr)
    if hint:
        print(f"  how to fix: {_first_line(hint)}", file=sys.stderr)


#: the most kinds of unsupported node whose first reason ``archir import`` prints
MAX_REASONS = 12


def _unsupported_reasons(e: ArchirError) -> None:
    """After an import's one-line error: the reason of the first node of each unsupported kind (the first line
    only names them; without the reason a user cannot tell an op archir lacks from a form it refuses)."""
    items = getattr(e, "unsupported", None) or []
    first: dict[str, object] = {}
    for u in items:
        first.setdefault(u.what, u)
    for u in list(first.values())[:MAX_REASONS]:
        print(f"  - {_first_line(str(u))}", file=sys.stderr)
    if len(items) > len(first) or len(first) > MAX_REASONS:
        print(f"  ({len(items)} node(s) in all; archir.frontend's UnsupportedModelError.unsupported lists each)",
              file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``archir`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code.

    Bad input (any ``archir.ArchirError``: a :class:`CLIError`, ``archir.IRError``,
    ``passes.PassError``, a ``search``/``costmodels`` error; or an unreadable path) is printed
    as one line on stderr with a ``how to fix`` line, exit code 2 (``e.exit_code`` where the
    error has one: 1 for a failed verification). Any other exception is an archir bug and
    propagates with its traceback, and so does an ``ArchirError`` raised ``from`` such a bug
    (``archir.errors.is_user_error``).

    Example:
        >>> main(["show", "net.json"])   # doctest: +SKIP
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help/--version (0) or a usage error (2): argparse already printed
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        return int(args.run(args) or 0)
    except ArchirError as e:
        if not is_user_error(e):
            raise  # a bug wrapped in a user-facing class (e.g. inside a pass): keep the traceback
        # the first line says what and where; the hint says how to fix (context lines are for the API)
        _error(e.one_line(), e.hint)
        _unsupported_reasons(e)
        return int(getattr(e, "exit_code", 2))
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        _error(f"{where}{e.strerror or e}", "check the path and its permissions")
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
