"""Lowering benchmark: the figures of issue 2 for the DARTS-like network.

Prints, for ``archir.samples.darts_like(cells=20)`` (the defaults):

(a) ``archir.lower.to_onnx`` time against ``torch.onnx.export`` of the same ``to_fx``
    module (dynamo, the default exporter of this torch; also ``dynamo=False``), as a ratio.
    Goal: to_onnx is at least 100x faster. to_onnx is timed with its ONNX checker on
    (the default) and off.
(b) forward time of the ``to_fx`` module against a hand-written ``torch.nn.Module`` of the
    same network (below: nested modules in the style of the DARTS reference code, loaded
    with the same weights, outputs asserted equal first). Goal: ratio <= 1.05 on CPU.
(c) ONNX Runtime CPU latency against torch eager CPU latency (the ``to_fx`` module).

Method: fixed thread counts (``--threads``, torch and ORT alike); every timed pair runs in
interleaved blocks (A B, then B A, ...) so that load from other processes hits both sides
alike; a block repeats a call until it lasts long enough to time, and a figure is the median
over ``--repeats`` blocks. In (b), (c) ratios are the median of the per-round ratios (paired, so a slow
round on a shared machine cancels out); for (a), a block of to_onnx calls runs right before
each export call, and the ratio is that of the medians. This is a benchmark that prints figures, not a test:
it asserts only that the compared programs compute the same thing.

Run it::

    python benchmarks/lowering.py                 # the figures (a few minutes on 2 cores)
    python benchmarks/lowering.py --quick --cells 2   # smoke run, a few seconds
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

import archir
from archir.samples import darts_like

GOAL_EXPORT_SPEEDUP = 100.0  # (a): to_onnx at least 100x faster than torch.onnx.export
GOAL_FORWARD_RATIO = 1.05  # (b): to_fx forward at most 5% slower than hand-written


# --------------------------------------------------------------------------- the hand-written network
# Written the way the DARTS reference code (quark0/darts, cnn/operations.py and model.py) writes
# it: nn.Sequential ops, a Cell module holding its ops in a ModuleList, a Network with a stem,
# cells and a classifier. It mirrors archir.samples.darts_like op for op; `bind` records which
# IR node each leaf module takes its weights from.


class ReLUConvBN(nn.Module):
    """relu -> 1x1 conv (stride) -> bn: the preprocessing of a cell's two inputs."""

    def __init__(self, c_in: int, c_out: int, stride: int, bind: Callable, name: str) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            bind(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), f"{name}.1"),
            bind(nn.BatchNorm2d(c_out), f"{name}.2"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class FactorizedReduce(nn.Module):
    """relu, then two 1x1 stride-2 convs to c_out / 2, the second on x shifted by one pixel; cat; bn."""

    def __init__(self, c_in: int, c_out: int, bind: Callable, name: str) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = bind(nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False), f"{name}.1")
        self.conv_2 = bind(nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False), f"{name}.4")
        self.bn = bind(nn.BatchNorm2d(c_out), f"{name}.6")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


class SepConv(nn.Module):
    """DARTS sep_conv_3x3: (relu, depthwise 3x3, pointwise 1x1, bn) twice; the first depthwise strides."""

    def __init__(self, c: int, stride: int, bind: Callable, name: str) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for r in range(2):
            layers += [nn.ReLU(inplace=False),
                       bind(nn.Conv2d(c, c, 3, stride=stride if r == 0 else 1, padding=1, groups=c, bias=False),
                            f"{name}.{4 * r + 1}"),
                       bind(nn.Conv2d(c, c, 1, bias=False), f"{name}.{4 * r + 2}"),
                       bind(nn.BatchNorm2d(c), f"{name}.{4 * r + 3}")]
        self.op = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class DilConv(nn.Module):
    """DARTS dil_conv_3x3: relu, depthwise 3x3 dilation 2, pointwise 1x1, bn."""

    def __init__(self, c: int, stride: int, bind: Callable, name: str) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            bind(nn.Conv2d(c, c, 3, stride=stride, padding=2, dilation=2, groups=c, bias=False), f"{name}.1"),
            bind(nn.Conv2d(c, c, 1, bias=False), f"{name}.2"),
            bind(nn.BatchNorm2d(c), f"{name}.3"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


def make_op(kind: int, c: int, stride: int, bind: Callable, name: str) -> nn.Module:
    """The op of a cell edge; ``kind`` cycles through sep_conv, dil_conv, max_pool, skip/avg_pool."""
    if kind == 0:
        return SepConv(c, stride, bind, name)
    if kind == 1:
        return DilConv(c, stride, bind, name)
    if kind == 2:
        return nn.MaxPool2d(3, stride=stride, padding=1)
    if stride == 1:
        return nn.Identity()
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


class Cell(nn.Module):
    """A DARTS cell: two preprocessed inputs, four nodes of two ops each, concat of the four nodes."""

    def __init__(self, index: int, c_prev_prev: int, c_prev: int, c: int, reduction: bool, reduction_prev: bool,
                 bind: Callable) -> None:
        super().__init__()
        name = f"cell{index}"
        self.pre0 = (FactorizedReduce(c_prev_prev, c, bind, f"{name}.pre0") if reduction_prev
                     else ReLUConvBN(c_prev_prev, c, 1, bind, f"{name}.pre0"))
        self.pre1 = ReLUConvBN(c_prev, c, 1, bind, f"{name}.pre1")
        self.ops = nn.ModuleList()
        self.sources: list[int] = []
        for n in range(4):
            for e, src in enumerate((n, n + 1)):  # node n reads states n and n+1
                stride = 2 if reduction and src < 2 else 1
                self.ops.append(make_op((n + e + index) % 4, c, stride, bind, f"{name}.n{n}.e{e}"))
                self.sources.append(src)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for n in range(4):
            a = self.ops[2 * n](states[self.sources[2 * n]])
            b = self.ops[2 * n + 1](states[self.sources[2 * n + 1]])
            states.append(a + b)
        return torch.cat(states[2:], dim=1)


class HandDarts(nn.Module):
    """The network of ``archir.samples.darts_like``, written by hand.

    Args:
        cells: number of cells (reductions at ``cells // 3`` and ``2 * cells // 3``).
        channels: channels of the first cells.
        classes: outputs of the classifier.
    """

    def __init__(self, cells: int = 20, channels: int = 16, classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self._ir: list[tuple[nn.Module, str]] = []  # (leaf module, IR node id) for load_ir_weights

        def bind(module: nn.Module, node_id: str) -> nn.Module:
            self._ir.append((module, node_id))
            return module

        c_stem = 3 * channels
        self.stem = nn.Sequential(bind(nn.Conv2d(in_channels, c_stem, 3, padding=1, bias=False), "stem.conv"),
                                  bind(nn.BatchNorm2d(c_stem), "stem.bn"))
        reductions = {cells // 3, 2 * cells // 3} if cells >= 3 else set()
        c_pp, c_p, c = c_stem, c_stem, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(cells):
            reduction = i in reductions
            if reduction:
                c *= 2
            self.cells.append(Cell(i, c_pp, c_p, c, reduction, reduction_prev, bind))
            reduction_prev = reduction
            c_pp, c_p = c_p, 4 * c
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = bind(nn.Linear(c_p, classes), "head")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1))

    @torch.no_grad()
    def load_ir_weights(self, g: archir.Graph) -> "HandDarts":
        """Copy every parameter and buffer from the IR graph; refuse any mismatch (the structures must agree)."""
        loaded: set[int] = set()
        for module, nid in self._ir:
            if nid not in g:
                raise RuntimeError(f"the graph has no node {nid!r}: the hand-written network does not mirror "
                                   "darts_like any more (or was built with other cells/channels); update it")
            node = g.node(nid)
            for kind in ("params", "buffers"):
                for k, a in getattr(node, kind).items():
                    t = getattr(module, k)
                    if tuple(t.shape) != a.shape:
                        raise RuntimeError(f"hand-written module for {nid!r}.{k} has shape {tuple(t.shape)}, "
                                           f"the graph has {a.shape}: the hand-written network does not mirror "
                                           "darts_like any more; update it")
                    t.copy_(torch.from_numpy(np.array(a)))
                    loaded.add(id(t))
        unloaded = [n for n, p in self.named_parameters() if id(p) not in loaded]
        with_weights = {n.id for n in g.nodes() if n.params or n.buffers}
        unbound = sorted(with_weights - {nid for _, nid in self._ir})
        if unloaded or unbound:
            raise RuntimeError(f"weights not matched: hand-written params {unloaded[:5]}, graph nodes {unbound[:5]}; "
                               "the hand-written network does not mirror darts_like any more; update it")
        return self


# --------------------------------------------------------------------------- timing


def _median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, min_block_s: float) -> tuple[dict, dict, int]:
    """Time zero-argument callables in interleaved blocks; returns per-call seconds per block.

    Each callable runs once to warm up; a block calls it ``number`` times, with ``number``
    chosen so the slowest block lasts about ``min_block_s``. Round ``r`` runs the callables
    in order, round ``r + 1`` in reverse, so neither side always runs first.

    Returns:
        ``(samples, ratios, number)``: ``samples[name]`` is the list of per-call seconds (one per
        round); ``ratios[(a, b)]`` the per-round ratios ``a / b`` for the first two names.
    """
    names = list(fns)
    for f in fns.values():
        f()
    slowest = 0.0
    for f in fns.values():
        t = time.perf_counter()
        f()
        slowest = max(slowest, time.perf_counter() - t)
    number = max(1, math.ceil(min_block_s / max(slowest, 1e-9)))
    samples: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        for k in (names if r % 2 == 0 else names[::-1]):
            f = fns[k]
            t = time.perf_counter()
            for _ in range(number):
                f()
            samples[k].append((time.perf_counter() - t) / number)
    a, b = names[0], names[1]
    ratios = {(a, b): [x / y for x, y in zip(samples[a], samples[b])]}
    return samples, ratios, number


def _ms(s: float) -> str:
    if s >= 1.0:
        return f"{s:.2f} s"
    if s >= 0.01:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e3:.2f} ms"


# --------------------------------------------------------------------------- the figures


def _torch_export(module: nn.Module, x: torch.Tensor, mode: str):
    """One ``torch.onnx.export`` of ``module``; returns the ONNX ModelProto.

    ``mode``: ``dynamo`` (the default call: no dynamic shapes), ``dynamo-dynbatch`` (a dynamic
    batch axis, the artifact to_onnx makes) or ``legacy`` (``dynamo=False``, dynamic batch).
    """
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation warning, dynamo's notices
        if mode == "dynamo":
            return torch.onnx.export(module, (x,), dynamo=True, verbose=False).model_proto
        if mode == "dynamo-dynbatch":
            return torch.onnx.export(module, (x,), dynamo=True, verbose=False,
                                     dynamic_shapes=({0: torch.export.Dim("batch")},)).model_proto
        buf = io.BytesIO()
        # output_names is required here: without it, torch 2.14's legacy exporter reads
        # `model.graph.outputs()` and a GraphModule's `.graph` (an fx.Graph) has no such method
        torch.onnx.export(module, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
        return onnx.load_from_string(buf.getvalue())


def _ort_session(model_bytes: bytes, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def _ort_max_err(g: archir.Graph, proto, x: torch.Tensor, fx_mod, threads: int) -> float:
    """Max |ORT - to_fx| of ``proto`` (to_onnx's or a torch exporter's model) on ``x``: ``verify_onnx``'s figure."""
    return archir.lower.verify_onnx(g, proto, inputs=x, module=fx_mod, threads=threads).max_abs


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of the benchmark."""
    p = argparse.ArgumentParser(prog="benchmarks/lowering.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=20, help="cells of darts_like (default: 20)")
    p.add_argument("--batch-size", type=int, default=32, help="batch of the large-batch rows of (b), (c) "
                                                              "(default: 32; batch 1 is always measured too)")
    p.add_argument("--repeats", type=int, default=15, help="timed blocks per figure, median taken (default: 15)")
    p.add_argument("--export-repeats", type=int, default=5, help="timed torch.onnx.export calls per exporter "
                                                                 "(default: 5; each takes seconds)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of torch and ORT (default: 1)")
    p.add_argument("--quick", action="store_true", help="small numbers for a smoke run (a few seconds with --cells 2): "
                                                        "3 repeats, 1 export, no exporter warm-up, no dynamic-batch "
                                                        "dynamo export")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; returns 0 (goals are reported, not enforced)."""
    args = build_parser().parse_args(argv)
    for name in ("cells", "batch_size", "repeats", "export_repeats", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"lowering.py: error: --{name.replace('_', '-')} must be >= 1")
    if args.quick:
        args.repeats = min(args.repeats, 3)
        args.export_repeats = 1
        args.batch_size = min(args.batch_size, 4)
    min_block = 0.01 if args.quick else 0.2
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = "python benchmarks/lowering.py" + ("" if not argv_list else " " + shlex.join(argv_list))

    import onnx
    import onnxruntime as ort

    old_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    try:
        rows, notes = _run(args, min_block)
    finally:
        torch.set_num_threads(old_threads)
    load_end = os.getloadavg()

    try:
        import onnxscript

        oscript = f", onnxscript {onnxscript.__version__}"
    except ImportError:
        oscript = ""
    g_desc = notes.pop("graph")
    print(f"archir lowering benchmark: {g_desc}")
    print(f"machine : {_cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.machine()}; "
          f"threads: torch {args.threads} intra-op, ORT {args.threads} intra-op / 1 inter-op")
    print(f"software: python {platform.python_version()}, torch {torch.__version__}, onnx {onnx.__version__}, "
          f"onnxruntime {ort.__version__}{oscript}, archir {archir.__version__}")
    print(f"command : {command}")
    print(f"load avg: {load_start[0]:.2f} at start, {load_end[0]:.2f} at end (1-min; other processes share this CPU)")
    print()
    header = ("figure", "archir", "reference", "ratio", "goal", "result")
    table = [header] + rows
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    line = lambda r: " | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    print(line(header))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    print()
    print("notes:")
    for n in notes["lines"]:
        print(f"  - {n}")
    goals = [r for r in rows if r[5] in ("PASS", "FAIL")]
    passed = sum(r[5] == "PASS" for r in goals)
    print(f"goals met: {passed}/{len(goals)}; total time {time.perf_counter() - t_start:.1f} s")
    return 0


def _run(args, min_block: float) -> tuple[list[tuple], dict]:
    rows: list[tuple[str, ...]] = []
    lines: list[str] = []
    g = darts_like(cells=args.cells)
    in_shape = g.node(g.inputs[0]).type.shape
    graph_desc = (f"darts_like(cells={args.cells}): {len(g)} nodes, {g.num_params():,} params, "
                  f"input (N, {', '.join(map(str, in_shape))})")

    t = time.perf_counter()
    fx_mod = archir.lower.to_fx(g).eval()
    lines.append(f"to_fx took {_ms(time.perf_counter() - t)} (one call, for reference)")

    # ---- (a) to_onnx vs torch.onnx.export
    # to_onnx blocks (checker on, checker off) run right before each export call, so both sides are
    # sampled over the same minutes of a shared machine; the figure is the ratio of the medians.
    to_onnx_fns = {"check": lambda: archir.lower.to_onnx(g), "nocheck": lambda: archir.lower.to_onnx(g, check=False)}
    s, _, n_onnx = interleaved(to_onnx_fns, args.repeats, min_block)  # warm-up, calibration, checker cost
    checker_cost = _median(s["check"]) - _median(s["nocheck"])
    proto = archir.lower.to_onnx(g)
    xb = torch.randn(2, *in_shape, generator=torch.Generator().manual_seed(0))
    lines.append(f"(a) to_onnx model under ORT vs to_fx: max |diff| "
                 f"{_ort_max_err(g, proto, xb, fx_mod, args.threads):.2g}")

    modes = ["dynamo", "legacy"] if args.quick else ["dynamo", "dynamo-dynbatch", "legacy"]
    if not args.quick:
        # pay the exporters' one-off costs (imports, registries, dispatcher caches) outside the timing
        warm = archir.lower.to_fx(darts_like(cells=2)).eval()
        for mode in modes:
            try:
                _torch_export(warm, xb, mode)
            except Exception:  # reported below, where the real export fails too
                pass
    export_times: dict[str, list[float]] = {m: [] for m in modes}
    paired: dict[str, dict[str, list[float]]] = {m: {"check": [], "nocheck": []} for m in modes}
    onnx_times: dict[str, list[float]] = {"check": [], "nocheck": []}
    export_err: dict[str, str] = {}
    for r in range(args.export_repeats):
        for mode in modes:  # round-robin over the exporters
            if mode in export_err:
                continue
            adjacent = {}
            for k in (("check", "nocheck") if r % 2 == 0 else ("nocheck", "check")):
                t = time.perf_counter()
                for _ in range(n_onnx):
                    to_onnx_fns[k]()
                adjacent[k] = (time.perf_counter() - t) / n_onnx
            t = time.perf_counter()
            try:
                tp = _torch_export(fx_mod, xb, mode)
            except Exception as e:  # a failing exporter is a figure too: report it, keep going
                export_err[mode] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
                continue
            te = time.perf_counter() - t
            export_times[mode].append(te)
            for k, v in adjacent.items():
                onnx_times[k].append(v)
                paired[mode][k].append(te / v)
            if len(export_times[mode]) == 1:
                err = _ort_max_err(g, tp, xb, fx_mod, args.threads)
                opset = next((o.version for o in tp.opset_import if o.domain in ("", "ai.onnx")), "?")
                lines.append(f"(a) torch.onnx.export {mode}: opset {opset}, {len(tp.graph.node)} ONNX nodes, "
                             f"under ORT vs to_fx: max |diff| {err:.2g}")
    labels = {"dynamo": "torch.onnx.export(dynamo=True)",
              "dynamo-dynbatch": "torch.onnx.export(dynamo=True, dyn. batch)",
              "legacy": "torch.onnx.export(dynamo=False)"}
    t_chk = _median(onnx_times["check"] or s["check"])
    t_nochk = _median(onnx_times["nocheck"] or s["nocheck"])
    for mode in modes:
        label = labels[mode]
        if mode in export_err:
            rows.append((f"(a) to_onnx vs {label}", _ms(t_chk), "failed", "n/a", "", export_err[mode]))
            continue
        te = _median(export_times[mode])
        goal = mode == "dynamo"  # the goal is against the default exporter, called the default way
        sp = te / t_chk  # ratio of medians: an export call lasts seconds, one to_onnx block a fraction of one
        rows.append((f"(a) to_onnx vs {label}", _ms(t_chk), _ms(te), f"{sp:.1f}x faster",
                     f">= {GOAL_EXPORT_SPEEDUP:.0f}x" if goal else "-",
                     ("PASS" if sp >= GOAL_EXPORT_SPEEDUP else "FAIL") if goal else "info"))
        if mode == "dynamo":
            rows.append((f"(a) to_onnx(check=False) vs {label}", _ms(t_nochk), _ms(te),
                         f"{te / t_nochk:.1f}x faster", "-", "info"))
        lines.append(f"(a) {label}: calls took " + ", ".join(_ms(v) for v in export_times[mode])
                     + "; each over the to_onnx block just before it: "
                     + ", ".join(f"{v:.1f}x" for v in paired[mode]["check"]))
    lines.append(f"(a) torch.onnx.export: median of {args.export_repeats} call(s) per exporter, in memory, default "
                 "options; 'dynamo' is the default call (static shapes), 'dyn. batch' adds a dynamic batch axis "
                 "like to_onnx's; dynamo=False writes to a BytesIO"
                 + ("" if not args.quick else "; --quick: no warm-up"))
    lines.append(f"(a) to_onnx: median of blocks of {n_onnx} call(s), one run just before each export call, so both "
                 f"sides are sampled over the same minutes; in {args.repeats} separate interleaved blocks, the checker "
                 f"(onnx.checker full_check) cost {_ms(checker_cost)} per call")

    # ---- (b) to_fx forward vs hand-written, (c) ORT vs torch eager
    hand = HandDarts(cells=args.cells).load_ir_weights(g).eval()
    sess = _ort_session(proto.SerializeToString(), args.threads)
    iname = sess.get_inputs()[0].name
    rows_b: list[tuple[str, ...]] = []
    rows_c: list[tuple[str, ...]] = []
    for bs in sorted({1, args.batch_size}):
        x = torch.randn(bs, *in_shape, generator=torch.Generator().manual_seed(bs))
        xn = x.numpy()
        with torch.inference_mode():
            y_fx, y_hand = fx_mod(x), hand(x)
        diff = float((y_fx - y_hand).abs().max())
        torch.testing.assert_close(y_hand, y_fx, rtol=0, atol=1e-5,
                                   msg=lambda m: f"hand-written network differs from to_fx: {m}")
        ort_diff = _ort_max_err(g, proto, x, fx_mod, args.threads)
        lines.append(f"batch {bs}: hand-written vs to_fx max |diff| {diff:.2g} (asserted <= 1e-5); "
                     f"ORT vs to_fx max |diff| {ort_diff:.2g}")

        def run_fx(x=x):
            with torch.inference_mode():
                return fx_mod(x)

        def run_hand(x=x):
            with torch.inference_mode():
                return hand(x)

        s, r, n = interleaved({"fx": run_fx, "hand": run_hand}, args.repeats, min_block)
        ratio = _median(r[("fx", "hand")])
        rows_b.append((f"(b) to_fx forward / hand-written nn.Module, batch {bs}", _ms(_median(s["fx"])),
                     _ms(_median(s["hand"])), f"{ratio:.3f}", f"<= {GOAL_FORWARD_RATIO:.2f}",
                     "PASS" if ratio <= GOAL_FORWARD_RATIO else "FAIL"))
        lines.append(f"(b) batch {bs}: {args.repeats} interleaved blocks x {n} call(s); per-round ratios "
                     f"min {min(r[('fx', 'hand')]):.3f} max {max(r[('fx', 'hand')]):.3f}")

        s, r, n = interleaved({"ort": lambda: sess.run(None, {iname: xn}), "torch": run_fx}, args.repeats, min_block)
        ratio = _median(r[("ort", "torch")])
        rows_c.append((f"(c) ORT CPU / torch eager CPU latency, batch {bs}", _ms(_median(s["ort"])),
                     _ms(_median(s["torch"])), f"{ratio:.3f} ({1 / ratio:.2f}x {'faster' if ratio < 1 else 'slower'})",
                     "-", "info"))
        lines.append(f"(c) batch {bs}: {args.repeats} interleaved blocks x {n} call(s); torch eager = the to_fx "
                     "module under inference_mode; ORT = the to_onnx model, default graph optimisations")
    return rows + rows_b + rows_c, {"graph": graph_desc, "lines": lines}


if __name__ == "__main__":
    sys.exit(main())
