"""``archir prune``: structured channel pruning of a saved graph, with a report.

Usage::

    archir prune net.json --ratio 0.5 --criterion l1 -o small.json
    archir prune net.json --keep 8 --groups l1.conv,b1.a.conv -o small.json
    archir prune net.json --list                  # the prunable groups (producers, channels)

Runs ``passes.prune_channels`` (every free dependency group loses ``--ratio`` of its channels,
or keeps ``--keep``; ``--groups`` restricts it to the groups of the named nodes) and prints the
report: channels removed per group, the skipped groups and why, params and MACs before and
after (``costmodels.count``), the output deviation from the unpruned graph (eval mode,
seeded inputs), and the measured speed-up (``--latency ort-cpu`` by default: one thread, batch 1,
three paired rounds of ``costmodels.measure``; ``--no-latency`` skips it). The result is written with ``archir.save`` (``small.json`` +
``small.safetensors``, atomically). A refused request (a pinned group, a bad ratio) is one
error line with the reason and how to fix it, exit code 2; nothing is written then.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from archir.cli.main import CLIError, Subcommand, _check_out_path, _fmt_s, _load

__all__ = ["SUBCOMMANDS"]


def _add_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph", help="the graph's .json file (its .safetensors weights beside it)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--ratio", type=float, help="fraction of each group's channels to remove, in [0, 1)")
    how.add_argument("--keep", type=int, help="channels to keep per group (groups smaller than it stay)")
    p.add_argument("--criterion", default="l1", choices=["l1", "l2", "bn_gamma", "random"],
                   help="channel importance (default: l1; summed over each group)")
    p.add_argument("--groups", metavar="NODE,NODE", help="prune only the groups of these nodes (comma-separated "
                                                          "producer ids; default: every prunable group)")
    p.add_argument("--seed", type=int, default=0, help="seed of --criterion random (default: 0)")
    p.add_argument("--round-to", type=int, default=None, metavar="N",
                   help="keep channel counts multiples of N (e.g. 8: faster SIMD kernels)")
    p.add_argument("--latency", default="ort-cpu", metavar="BACKEND",
                   choices=["ort-cpu", "ort-cuda", "torch-cpu", "torch-cuda"],
                   help="measure the latency before and after on this backend and report the speed-up "
                        "(default: ort-cpu, one thread, batch 1)")
    p.add_argument("--no-latency", action="store_true", help="do not measure the speed-up (faster)")
    p.add_argument("-o", "--out", metavar="OUT.json", help="the pruned graph to write (.json + .safetensors)")
    p.add_argument("--list", action="store_true", help="list the prunable groups and exit")


def _run_prune(args: argparse.Namespace) -> int:
    import costmodels
    import passes

    if args.list:
        g = _load(args.graph)
        groups = passes.prunable_groups(g)
        print(f"{g.name}: {len(groups)} prunable group(s)")
        for t in groups:
            print(f"  group {t['group']}: {t['channels']} channels, producers {', '.join(t['producers'])}")
        return 0
    if args.ratio is None and args.keep is None:
        raise CLIError("say how much to prune: --ratio R (fraction removed per group) or --keep N",
                       hint=f"e.g. archir prune {args.graph} --ratio 0.5 -o small.json")
    if args.ratio is not None and not 0.0 <= args.ratio < 1.0:
        raise CLIError(f"--ratio must be in [0, 1), got {args.ratio:g}",
                       hint="--ratio is the fraction of each group's channels to remove, e.g. --ratio 0.5")
    if args.keep is not None and args.keep < 1:
        raise CLIError(f"--keep must be at least 1, got {args.keep}", hint="e.g. --keep 8")
    if args.round_to is not None and args.round_to < 1:
        raise CLIError(f"--round-to must be at least 1, got {args.round_to}", hint="e.g. --round-to 8")
    if not args.out:
        raise CLIError("no output file", hint=f"pass -o small.json (archir prune {args.graph} ... -o small.json)")
    out = Path(args.out)
    if out.suffix != ".json":
        raise CLIError(f"{out}: the output must be a .json file (the weights go beside it as .safetensors)",
                       hint=f"pass -o {out.with_suffix('.json')}")
    _check_out_path(out, "pruned graph", "small.json")
    groups = [s.strip() for s in args.groups.split(",") if s.strip()] if args.groups else None
    if args.groups is not None and not groups:
        raise CLIError("--groups is empty", hint="name nodes, e.g. --groups l1.conv (see archir prune NET --list)")
    g = _load(args.graph)
    import time

    t0 = time.perf_counter()
    small, report = passes.prune_channels(g, ratio=args.ratio, keep=args.keep, criterion=args.criterion,
                                          groups=groups, seed=args.seed, cost=costmodels.count,
                                          round_to=args.round_to)
    took = time.perf_counter() - t0
    import archir

    if not args.no_latency:  # before writing: a backend that cannot run (no GPU) leaves nothing behind
        _measure_speedup(report, g, small, args.latency)
    archir.save(small, out)
    print(report)
    print(f"wrote {out} and {out.with_suffix('.safetensors')} ({len(small)} nodes; pruned and checked in "
          f"{_fmt_s(took)})")
    return 0


def _measure_speedup(report, before, after, backend: str, rounds: int = 3) -> None:
    """Fill ``report``'s latency fields: paired rounds (before, after, then after, before ...), medians.

    One intra-op thread on the CPU backends (per-core latency, steadier under load); the speed-up
    is the median of the per-round ratios, so load from other processes hits both sides alike.
    """
    import statistics

    import costmodels

    threads = 1 if backend.endswith("-cpu") else None
    b, a = [], []
    for r in range(rounds):
        pair = [(before, b), (after, a)]
        for g, into in (pair if r % 2 == 0 else pair[::-1]):
            into.append(costmodels.measure(g, backend=backend, warmup=5, repeats=20, threads=threads).median_ms)
    report.latency_backend = backend + (" 1 thread" if threads == 1 else "")
    report.latency_before_ms, report.latency_after_ms = statistics.median(b), statistics.median(a)
    report.speedup = statistics.median(x / y for x, y in zip(b, a))


SUBCOMMANDS = [
    Subcommand("prune", "prune channels of a graph over its dependency groups and print the report", _add_prune,
               _run_prune,
               "Structured channel pruning (passes.prune_channels): remove the least important channels of "
               "every dependency group (channels tied through add/mul/concat, BN, depthwise convs and "
               "flatten->linear go together), write the pruned graph and print channels removed per group, "
               "params and MACs before and after, the output deviation (eval mode) and the measured "
               "speed-up (--latency BACKEND, default ort-cpu; --no-latency skips it)."),
]
