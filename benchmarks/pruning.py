"""Pruning benchmark: the figures of issue 5 (is a pruned model really faster, not just smaller?).

For the sample networks (``archir.samples``: chain, ResNet-, DenseNet-, MobileNet- and DARTS-like,
built at a size where a forward pass is not all overhead: 64x64 inputs, 32-64 channels) and
``passes.prune_channels(ratio=r, criterion="l1")`` at ``r`` = 0.25, 0.5, 0.75 it prints, before
and after: parameters and MACs (``costmodels.count``), ONNX Runtime CPU latency
(``costmodels.measure(backend="ort-cpu", threads=1)``, batch 1), the speed-up, and the output
deviation of the pruned (untrained) network.

Method: one intra-op thread. Latency of the unpruned and the pruned model is measured side by
side in ``--rounds`` interleaved rounds (A B, then B A, ...), each a ``costmodels.measure`` call
(``--warmup`` untimed, ``--repeats`` timed runs, its median); a latency is the median over
rounds and a speed-up the median of the per-round ratios (paired, so load from other processes
on a shared machine hits both alike). The fastest run of each call is reported too: under load,
preemption inflates long runs more than short ones, which biases median speed-ups upwards; the
fastest run estimates the unloaded latency. This is a benchmark that prints figures, not a test: it
asserts only that every pruned graph validates and that its ONNX model (what is timed) agrees
with its torch.fx lowering.

Run it::

    python benchmarks/pruning.py            # the figures (a few minutes on 2 cores)
    python benchmarks/pruning.py --quick    # smoke run: the tiny default samples, seconds
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the checkout

import archir  # noqa: E402
from archir import samples  # noqa: E402

import costmodels  # noqa: E402
import passes  # noqa: E402
from passes.check import make_inputs, run_graph  # noqa: E402

RATIOS = (0.25, 0.5, 0.75)

#: the networks of the full run: big enough that latency is compute, not per-op overhead
FULL: dict[str, Callable[[], archir.Graph]] = {
    "chain": lambda: samples.chain(in_shape=(3, 64, 64), widths=(64, 128)),
    "resnet_like": lambda: samples.resnet_like(in_shape=(3, 64, 64), width=32),
    "densenet_like": lambda: samples.densenet_like(in_shape=(3, 64, 64), growth=16, layers=4),
    "mobilenet_like": lambda: samples.mobilenet_like(in_shape=(3, 64, 64), width=32),
    "darts_like": lambda: samples.darts_like(cells=8, channels=16),
}
#: the tiny defaults, for --quick
QUICK: dict[str, Callable[[], archir.Graph]] = {
    "chain": samples.chain, "resnet_like": samples.resnet_like, "densenet_like": samples.densenet_like,
    "mobilenet_like": samples.mobilenet_like, "darts_like": lambda: samples.darts_like(cells=2),
}


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r):
        return " | ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(header), "-+-".join("-" * w for w in widths), *[line(r) for r in rows]])


def _onnx_agrees(g: archir.Graph) -> float:
    """Max |ORT - fx| on seeded inputs; raises if they disagree (the timed model must be the right one)."""
    rep = archir.lower.verify_onnx(g, inputs=make_inputs(g, n=2, seed=1), atol=1e-4, rtol=1e-3, threads=1)
    rep.raise_if_failed()
    return rep.max_abs


def _latencies(a: archir.Graph, b: archir.Graph, rounds: int, warmup: int, repeats: int, batch: int
               ) -> dict[str, float]:
    """Latency (ms) of ``a`` and ``b`` over interleaved rounds: the median over rounds of each call's
    median and of each call's fastest run, and the medians of the per-round ratios a/b of both."""
    med: dict[int, list[float]] = {id(a): [], id(b): []}
    fast: dict[int, list[float]] = {id(a): [], id(b): []}
    for r in range(rounds):
        for g in ((a, b) if r % 2 == 0 else (b, a)):
            lat = costmodels.measure(g, backend="ort-cpu", threads=1, batch_size=batch, warmup=warmup,
                                     repeats=repeats, seed=r)
            med[id(g)].append(lat.median_ms)
            fast[id(g)].append(min(lat.samples_ms))
    m = statistics.median
    return {"before": m(med[id(a)]), "after": m(med[id(b)]),
            "speedup": m([x / y for x, y in zip(med[id(a)], med[id(b)])]),
            "before_min": m(fast[id(a)]), "after_min": m(fast[id(b)]),
            "speedup_min": m([x / y for x, y in zip(fast[id(a)], fast[id(b)])])}


def bench(name: str, g: archir.Graph, ratios: Sequence[float], rounds: int, warmup: int, repeats: int,
          batch: int, round_to: int | None = None) -> list[list[str]]:
    c0 = costmodels.count(g)
    rows = [[name, "-", f"{c0.params:,}", f"{c0.macs:,}"] + [""] * 8]
    for r in ratios:
        small, rep = passes.prune_channels(g, ratio=r, criterion="l1", cost=costmodels.count, round_to=round_to)
        small.validate()
        _onnx_agrees(small)
        t = _latencies(g, small, rounds, warmup, repeats, batch)
        rows.append([name, f"{r:g}", f"{rep.params_after:,} ({rep.params_after / rep.params_before:.0%})",
                     f"{rep.macs_after:,} ({rep.macs_after / rep.macs_before:.0%})",
                     f"{t['before']:.3f}", f"{t['after']:.3f}", f"{t['speedup']:.2f}x",
                     f"{t['before_min']:.3f}", f"{t['after_min']:.3f}", f"{t['speedup_min']:.2f}x",
                     f"{rep.macs_before / rep.macs_after:.2f}x", f"{rep.max_abs_deviation:.2g}"])
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the tiny default samples, 1 round, few repeats")
    p.add_argument("--networks", default=None, help="comma-separated subset of " + ",".join(FULL))
    p.add_argument("--ratios", default=",".join(str(r) for r in RATIOS), help="comma-separated (default 0.25,0.5,0.75)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per pair (default 5; quick 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measure call (default 50; quick 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs per measure call (default 10; quick 1)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size of the timed runs (default 1)")
    p.add_argument("--round-to", type=int, default=None, help="prune_channels(round_to=N): aligned channel counts")
    args = p.parse_args(argv)
    nets = QUICK if args.quick else FULL
    chosen = [s.strip() for s in args.networks.split(",")] if args.networks else list(nets)
    unknown = [n for n in chosen if n not in nets]
    if unknown:
        p.error(f"unknown network(s) {unknown}; choose from {list(nets)}")
    ratios = [float(x) for x in args.ratios.split(",")]
    rounds = args.rounds or (1 if args.quick else 5)
    repeats = args.repeats or (5 if args.quick else 50)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 10)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        rows = []
        for n in chosen:
            rows += bench(n, nets[n](), ratios, rounds, warmup, repeats, args.batch_size, args.round_to)
        load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    finally:
        torch.set_num_threads(threads)
    import onnxruntime

    extra = f", round_to={args.round_to}" if args.round_to else ""
    print(f"pruning benchmark (issue 5): passes.prune_channels(ratio=r, criterion='l1'{extra}) on the sample networks")
    print(f"command : python benchmarks/pruning.py {shlex.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"machine : {costmodels.device.cpu_fingerprint()}, {os.cpu_count()} logical CPUs")
    print(f"software: python {platform.python_version()}, torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}")
    print(f"latency : ORT CPU, 1 intra-op thread, batch {args.batch_size}; median of {rounds} interleaved round(s) "
          f"of costmodels.measure (warmup {warmup}, {repeats} timed runs); speed-up = median per-round ratio")
    print("          'min' columns: each call's fastest run (on a loaded machine preemption inflates a long run "
          "more than a short one; the fastest run is the best estimate of the unloaded latency)")
    print(f"load avg: {load0:.2f} at start, {load1:.2f} at end (1-min; other processes share this CPU)")
    print()
    print(_table(["network", "ratio", "params", "MACs", "before ms", "after ms", "speed-up", "before min",
                  "after min", "speed-up (min)", "MACs ratio", "max |dev|"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
