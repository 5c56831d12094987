"""Passes benchmark: the figures of issue 4 for a ~200-node DARTS-like network.

Prints, for ``archir.samples.darts_like(cells=5)`` (192 nodes; ``--cells``):

(a) time per morphism call (``deepen``, ``insert_bn``, ``enlarge_kernel``, ``add_skip`` and any
    other registered morphism) on random legal targets, the time to list its legal targets,
    and the time of the ``check_preserved`` that follows it;
(b) ``check_preserved`` on the network against itself: total, and its parts (``to_fx`` of one
    graph, one eval forward). Goal: a check under 0.2 s on CPU;
(c) how the error grows over 100 chained random morphisms (``random_morphism``, ``--steps``):
    the max abs / rel error of each step against the step before, and of the current graph
    against the original, at a few steps along the chain;
(d) the precision of ``check_preserved`` (issue 17) on imported torchvision families (random
    weights, BN statistics calibrated on one train-mode batch; ``inception_v3`` as torchvision
    initialises it, activations ~1e8): over a seeded sample of legal morphisms (``--precision-k``
    per morphism, plus a pointwise widen and a 1x1 enlarge_kernel) the float64 noise (max
    ``|after - before|`` / output scale) beside the float32 one, how many the old float32 check
    (``atol=1e-5 + rtol=1e-4*|before|``) refused, the output change of a deliberately broken
    morphism (one weight moved by 1e-3 of its tensor's max magnitude) and the smallest detectable
    perturbation (bisected relative weight change until the check refuses), and the check's time
    in float64 against float32. ``--quick`` runs it on ``archir.samples.resnet_like`` only.

Method: fixed torch thread count (``--threads``, restored afterwards); a time is the median over
``--repeats`` calls (random legal targets drawn from ``--seed``). This is a benchmark that prints
figures, not a test: it asserts only that every morphism kept the function (``check_preserved``).

Run it::

    python benchmarks/passes.py              # the figures: (a)-(c) about a minute on 2 cores, (d) ~11 minutes
    python benchmarks/passes.py --quick      # smoke run: cells=2, 20 chained steps, a few seconds
    python benchmarks/passes.py --only-precision                 # just (d), every family (~11 min, 2 shared cores)
    python benchmarks/passes.py --only-precision --families resnet18,googlenet
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
from passes.check import make_inputs, perturb_live_weight, run_graph  # noqa: E402

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
    t_check32, _ = _median_time(lambda: passes.check_preserved(g, g2, dtype="float32"), repeats)
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
            ["  the same in float32 (before issue 17)", _ms(t_check32), f"float64 costs x{t_check / t_check32:.2f}"],
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


#: (d): family -> (constructor kwargs, input H=W, calibrate BN); "samples.X" is archir.samples.X
PRECISION_FAMILIES = {
    "resnet18": ({}, 64, True), "mobilenet_v2": ({}, 64, True), "mobilenet_v2-default": ({}, 64, False),
    "googlenet": ({"aux_logits": False, "init_weights": True}, 64, True), "mnasnet0_5": ({}, 64, True),
    "densenet121": ({}, 64, True), "inception_v3": ({"aux_logits": False, "init_weights": True}, 75, False),
}


def _import_family(family: str) -> archir.Graph:
    if family.startswith("samples."):
        from archir import samples

        return getattr(samples, family.split(".", 1)[1])()
    import torchvision.models as tvm

    from archir.frontend import from_torch

    kw, size, calibrate = PRECISION_FAMILIES.get(family, ({}, 64, True))
    torch.manual_seed(0)
    m = getattr(tvm, family.split("-")[0])(weights=None, **kw).eval()
    if calibrate:  # BN statistics of one train-mode batch, as a trained network's: unit-scale activations
        bns = [b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]
        for b in bns:
            b.reset_running_stats()
            b.momentum = None
        m.train()
        with torch.no_grad():
            m(torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(5)))
        for b in bns:
            b.momentum = 0.1
        m.eval()
    return from_torch(m, (torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1)),))


def _is_pointwise(g: archir.Graph, n: str) -> bool:
    return g.node(n).op == "conv2d" and tuple(np.atleast_1d(g.node(n).attrs["kernel_size"])) in ((1,), (1, 1))


def _precision_targets(g: archir.Graph, rng: np.random.Generator, k: int) -> list[tuple[str, dict]]:
    out = []
    for name, (_, targets_fn) in passes.MORPHISMS.items():
        ts = targets_fn(g)
        out += [(name, ts[int(i)]) for i in rng.choice(len(ts), size=min(k, len(ts)), replace=False)] if ts else []
    for name in ("widen", "enlarge_kernel"):
        pw = [t for t in passes.MORPHISMS[name][1](g) if _is_pointwise(g, t["node"])]
        out += [(name, pw[int(rng.integers(len(pw)))])] if pw else []
    return out


def _touched_conv(before: archir.Graph, after: archir.Graph) -> str:
    for n in after:
        d = after.node(n)
        if d.op in ("conv2d", "linear") and np.abs(d.params["weight"]).max() > 0 and (
                n not in before or d.params["weight"] is not before.node(n).params["weight"]):
            return n
    return next(n for n in after if after.node(n).op in ("conv2d", "linear"))


def _smallest_detectable(g, g2, node, xs, steps: int = 10) -> float:
    """Bisect log10 of the relative weight change in [1e-10, 1e-2] until ``check_preserved`` refuses."""
    lo, hi = -10.0, -2.0  # refused at 10**hi (asserted), accepted at 10**lo (or the answer is <= 1e-10)
    refused = lambda e: not passes.check_preserved(g, perturb_live_weight(g2, node, xs, 10 ** e),  # noqa: E731
                                                   raise_on_failure=False).ok
    if not refused(hi):
        return float("nan")
    if refused(lo):
        return 10 ** lo
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if refused(mid) else (mid, hi)
    return 10 ** hi


def bench_precision(families: Sequence[str], k: int, seed: int) -> list[list[str]]:
    rows = []
    for fam in families:
        try:
            g = _import_family(fam)
        except ImportError as e:  # torchvision is not installed: say so, do not fail the benchmark
            rows.append([fam, "-", "-", "-", "-", "-", "-", "-", "-", f"skipped ({e.name} not installed)"])
            continue
        rng = np.random.default_rng(seed)
        xs = make_inputs(g, n=4, seed=0)
        ref32 = run_graph(g, xs)
        scale = max(float(r.abs().max()) for r in ref32)
        noise64 = noise32 = 0.0
        old_refused = refused64 = 0
        t64, t32, broken = [], [], []
        cases = _precision_targets(g, rng, k)
        for name, kw in cases:
            g2 = MORPH[name](g, **kw)
            rep = passes.check_preserved(g, g2, raise_on_failure=False)
            rep32 = passes.check_preserved(g, g2, dtype="float32", raise_on_failure=False)
            t64.append(rep.seconds)
            t32.append(rep32.seconds)
            noise64, noise32 = max(noise64, rep.max_rel), max(noise32, rep32.max_rel)
            refused64 += not rep.ok
            got32 = run_graph(g2, xs)
            old_refused += not all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(got32, ref32))
            node = _touched_conv(g, g2)
            bad = passes.check_preserved(g, perturb_live_weight(g2, node, xs, 1e-3), raise_on_failure=False)
            broken.append((bad.max_rel, bad.ok, g2, node))
        changed = [b for b in broken if b[0] > 1e-12]  # else its path is dead on these inputs: nothing to see
        weakest = min(changed, key=lambda b: b[0]) if changed else None
        r_min = _smallest_detectable(g, weakest[2], weakest[3], xs) if weakest else float("nan")
        rows.append([fam, str(len(g)), f"{scale:.2g}", f"{len(cases)} ({refused64} refused)", f"{noise64:.1e}",
                     f"{noise32:.1e}", str(old_refused),
                     f"{weakest[0] if weakest else float('nan'):.1e} ({sum(not b[1] for b in changed)}/{len(changed)} "
                     f"refused{f', {len(broken) - len(changed)} unchanged' if len(changed) < len(broken) else ''})",
                     f"{r_min:.1e}",
                     f"{statistics.median(t64) * 1e3:.0f} / {statistics.median(t32) * 1e3:.0f} ms"])
    return rows


MORPH = {name: fn for name, (fn, _) in passes.MORPHISMS.items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/passes.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=5, help="cells of darts_like (default 5: 192 nodes)")
    p.add_argument("--repeats", type=int, default=9, help="calls per timed figure (median; default 9)")
    p.add_argument("--steps", type=int, default=100, help="chained random morphisms for (c) (default 100)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random targets and moves")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: cells=2, 3 repeats, 20 steps, (d) on archir.samples.resnet_like")
    p.add_argument("--families", default=",".join(PRECISION_FAMILIES),
                   help="(d): comma-separated torchvision families (or samples.NAME); default: all of "
                        + ", ".join(PRECISION_FAMILIES))
    p.add_argument("--precision-k", type=int, default=2, help="(d): legal targets per morphism (default 2)")
    p.add_argument("--only-precision", action="store_true", help="print section (d) only")
    return p


PRECISION_HEADER = ["family", "nodes", "out scale", "legal morphisms", "f64 noise/scale", "f32 noise/scale",
                    "old f32 refused", "broken: min change/scale", "smallest detectable", "check f64 / f32"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.quick:
        args.cells, args.repeats, args.steps = 2, 3, min(args.steps, 20)
    families = ["samples.resnet_like"] if args.quick and "--families" not in argv else \
        [f for f in args.families.split(",") if f]
    command = "python benchmarks/passes.py" + ("" if not argv else " " + shlex.join(argv))
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        t0 = time.perf_counter()
        g = darts_like(cells=args.cells, seed=args.seed)
        rng = np.random.default_rng(args.seed)
        if not args.only_precision:
            morph = bench_morphisms(g, rng, args.repeats)
            check_rows, t_check = bench_check(g, args.repeats)
            chain_rows, moves = bench_chain(g, rng, args.steps)
        t_prec = time.perf_counter()
        prec_rows = bench_precision(families, args.precision_k, args.seed)
        t_prec = time.perf_counter() - t_prec
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
    if not args.only_precision:
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
        print("  (tolerance: float64, atol=1e-9 * max|ref| + 8 x the float32 storage floor of the written weights; "
              "max rel is relative to max|ref|; 'of tolerance' > 1 means the chain as a whole drifted past one "
              "step's tolerance)")
        print()
    print(f"(d) precision of check_preserved (issue 17): {args.precision_k} seeded legal target(s) per morphism "
          f"+ a pointwise widen and a 1x1 enlarge_kernel per family; {t_prec:.1f} s")
    print(_table(PRECISION_HEADER, prec_rows))
    print("  noise/scale: max |after - before| / max |before| over the legal morphisms (float64: the check; float32: "
          "the same graphs in float32); old f32 refused: legal morphisms the float32 check (atol=1e-5 + "
          "rtol=1e-4*|before|) refused; broken: a legal morphism then one weight moved by 1e-3 of its tensor's max "
          "magnitude, the smallest output change over the morphisms and how many the check refused (of those that changed "
          "the output at all: 'unchanged' ones sit on a path dead on the inputs, no check can see them); smallest "
          "detectable: the relative weight change (of that weakest case) the check starts refusing at (bisected); "
          "check: median time of one check_preserved")
    print()
    if not args.only_precision:
        print(f"goal: check under {GOAL_CHECK_S:.1f} s: {'PASS' if t_check < GOAL_CHECK_S else 'FAIL'} "
              f"({_ms(t_check)}); total time {time.perf_counter() - t0:.1f} s")
    else:
        print(f"total time {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
