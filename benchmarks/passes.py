"""Passes benchmark: the figures of issue 4 for a ~200-node DARTS-like network.

Prints, for ``archir.samples.darts_like(cells=5)`` (192 nodes; ``--cells``):

(a) time per morphism call (``deepen``, ``insert_bn``, ``enlarge_kernel``, ``add_skip`` and any
    other registered morphism) on random legal targets, the time to list its legal targets,
    and the time of the ``check_preserved`` that follows it;
(b) ``check_preserved`` on the network against itself: total, and its parts (``to_fx`` of one
    graph, one eval forward). Goal: a check under 0.2 s on CPU;
(c) how the error grows over 100 chained random morphisms (``random_morphism``, ``--steps``):
    the max abs / rel error of each step against the step before, and of the current graph
    against the original, at a few steps along the chain.

Method: fixed torch thread count (``--threads``, restored afterwards); a time is the median over
``--repeats`` calls (random legal targets drawn from ``--seed``). This is a benchmark that prints
figures, not a test: it asserts only that every morphism kept the function (``check_preserved``).

Run it::

    python benchmarks/passes.py              # the figures (about a minute on 2 cores)
    python benchmarks/passes.py --quick      # smoke run: cells=2, 20 chained steps, a few seconds
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the checkout

import archir  # noqa: E402
from archir.lower import to_fx  # noqa: E402
from archir.samples import darts_like  # noqa: E402

import passes  # noqa: E402
from passes.check import make_inputs  # noqa: E402

GOAL_CHECK_S = 0.2


def _median_time(f: Callable[[], object], repeats: int) -> tuple[float, object]:
    ts, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r):
        return " | ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(header), "-+-".join("-" * w for w in widths), *[line(r) for r in rows]])


def _ms(s: float) -> str:
    return f"{s * 1e3:.1f} ms"


def bench_morphisms(g: archir.Graph, rng: np.random.Generator, repeats: int) -> list[list[str]]:
    rows = []
    for name, (fn, targets_fn) in passes.MORPHISMS.items():
        t_targets, targets = _median_time(lambda: targets_fn(g), max(1, repeats // 3))
        if not targets:
            rows.append([name, "0", _ms(t_targets), "-", "-", "-"])
            continue
        t_pass, t_check, errs = [], [], []
        for _ in range(repeats):
            kw = targets[int(rng.integers(len(targets)))]
            t = time.perf_counter()
            g2 = fn(g, **kw)
            t_pass.append(time.perf_counter() - t)
            rep = passes.check_preserved(g, g2)
            t_check.append(rep.seconds)
            errs.append(rep.max_abs)
        rows.append([name, str(len(targets)), _ms(t_targets), _ms(statistics.median(t_pass)),
                     _ms(statistics.median(t_check)), f"{max(errs):.2g}"])
    return rows


def bench_check(g: archir.Graph, repeats: int) -> tuple[list[list[str]], float]:
    g2 = g.copy()
    passes.check_preserved(g, g2)  # warm-up: first torch calls
    t_check, _ = _median_time(lambda: passes.check_preserved(g, g2), repeats)
    t_validate, _ = _median_time(lambda: g.validate(), repeats)
    t_lower, gm = _median_time(lambda: to_fx(g), repeats)
    xs = make_inputs(g, n=4, seed=0)
    gm.eval()

    def fwd():
        with torch.no_grad():
            return gm(*xs)

    t_fwd, _ = _median_time(fwd, repeats)
    t_inputs, _ = _median_time(lambda: make_inputs(g, n=4, seed=0), repeats)
    rows = [["check_preserved(g, g.copy()), n=4", _ms(t_check),
             f"goal < {GOAL_CHECK_S * 1e3:.0f} ms: {'PASS' if t_check < GOAL_CHECK_S else 'FAIL'}"],
            ["  of which: to_fx (one graph)", _ms(t_lower), "x2 (both graphs)"],
            ["    (inside to_fx: validate)", _ms(t_validate), ""],
            ["  of which: eval forward, batch 4", _ms(t_fwd), "x2"],
            ["  of which: seeded inputs", _ms(t_inputs), "x1"]]
    return rows, t_check


def bench_chain(g: archir.Graph, rng: np.random.Generator, steps: int) -> tuple[list[list[str]], list[str]]:
    first, rows, moves = g, [], []
    marks = sorted({1, 2, 5, 10, 20, 50, steps} & set(range(1, steps + 1)) | {steps})
    worst_step = 0.0
    counts: dict[str, int] = {}
    t_total = 0.0
    for step in range(1, steps + 1):
        t = time.perf_counter()
        g2, desc = passes.random_morphism(g, rng)
        t_total += time.perf_counter() - t
        counts[desc.split("(")[0]] = counts.get(desc.split("(")[0], 0) + 1
        rep = passes.check_preserved(g, g2)  # raises if a step broke the function
        worst_step = max(worst_step, rep.max_abs)
        moves.append(desc)
        g = g2
        if step in marks:
            tot = passes.check_preserved(first, g, raise_on_failure=False)
            rows.append([str(step), str(len(g)), f"{rep.max_abs:.2g}", f"{worst_step:.2g}", f"{tot.max_abs:.2g}",
                         f"{tot.max_rel:.2g}", f"{tot.worst.ratio:.2g}"])
    moves.append(f"moves: {counts}; mean time per random_morphism call {_ms(t_total / steps)}")
    return rows, moves


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/passes.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=5, help="cells of darts_like (default 5: 192 nodes)")
    p.add_argument("--repeats", type=int, default=9, help="calls per timed figure (median; default 9)")
    p.add_argument("--steps", type=int, default=100, help="chained random morphisms for (c) (default 100)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random targets and moves")
    p.add_argument("--quick", action="store_true", help="smoke run: cells=2, 3 repeats, 20 steps")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.quick:
        args.cells, args.repeats, args.steps = 2, 3, min(args.steps, 20)
    command = "python benchmarks/passes.py" + ("" if not argv else " " + shlex.join(argv))
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        t0 = time.perf_counter()
        g = darts_like(cells=args.cells, seed=args.seed)
        rng = np.random.default_rng(args.seed)
        morph = bench_morphisms(g, rng, args.repeats)
        check_rows, t_check = bench_check(g, args.repeats)
        chain_rows, moves = bench_chain(g, rng, args.steps)
        load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    finally:
        torch.set_num_threads(threads)
    print(f"archir passes benchmark: darts_like(cells={args.cells}), {len(g)} nodes, {g.num_params():,} params, "
          f"input {g.node(g.inputs[0]).type.shape}")
    print(f"machine : {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs; "
          f"torch threads {args.threads}")
    print(f"software: python {platform.python_version()}, torch {torch.__version__}")
    print(f"command : {command}")
    print(f"load avg: {load0:.2f} at start, {load1:.2f} at end (1-min; other processes share this CPU)")
    print()
    print(f"(a) morphisms on random legal targets (median of {args.repeats} calls)")
    print(_table(["morphism", "targets", "list targets", "pass", "check after", "max abs err"], morph))
    print()
    print(f"(b) check_preserved on {len(g)} nodes (median of {args.repeats})")
    print(_table(["what", "time", "note"], check_rows))
    print()
    print(f"(c) error over {args.steps} chained random morphisms (every step checked against the one before)")
    print(_table(["step", "nodes", "step max abs", "worst step so far", "vs original max abs", "max rel",
                  "of tolerance"], chain_rows))
    print(f"  {moves[-1]}")
    print(f"  (tolerance: atol=1e-5 + rtol=1e-4*|ref|; 'of tolerance' > 1 means the chain as a whole drifted "
          f"past one step's tolerance)")
    print()
    print(f"goal: check under {GOAL_CHECK_S:.1f} s: {'PASS' if t_check < GOAL_CHECK_S else 'FAIL'} "
          f"({_ms(t_check)}); total time {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
