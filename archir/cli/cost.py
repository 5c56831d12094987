"""``archir cost`` and ``archir profile``: what a saved graph costs, counted and measured.

Usage::

    archir cost net.json                         # per-node table + totals (params, MACs, FLOPs, bytes, peak)
    archir cost net.json --by-op --batch-size 8  # per-op sums instead of per node
    archir cost net.json --json                  # machine-readable (costmodels.Counts.to_dict())

    archir profile net.json --backend ort-cpu --batch-size 1 --threads 1
    archir profile net.json --backend torch-cuda --device h100 --repeats 200
    archir profile net.json --table lut.sqlite   # + the latency-table estimate and its per-op breakdown

``cost`` prints :func:`costmodels.count` (the conventions are in its docstring: MACs are conv
and linear multiply-accumulates, as torchvision publishes them; FLOPs are all arithmetic).

``profile`` measures the latency with :func:`costmodels.measure` and prints the median with
its spread (p25, p75, the IQR, the number of timed runs) and the first run (session creation
or device transfer plus one inference) apart; beside it, the roofline lower bound
(:func:`costmodels.roofline`) on ``--device``: ``cpu`` (the default for the CPU backends: this
CPU's peaks measured by a quick probe, :meth:`costmodels.DeviceSpec.probe_cpu`, with the same
thread count) or a published preset (``h100``, ``h200``; the default for the CUDA backends
when the GPU is one of them). For stable numbers fix ``--threads``, keep the warm-up, use
enough ``--repeats`` and measure on an idle machine (see :func:`costmodels.measure`).
A backend that cannot run here is one error line naming what to install, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from archir.cli.main import CLIError, Subcommand, _load

__all__ = ["SUBCOMMANDS", "BACKENDS", "DEVICES"]

#: The ``--backend`` choices (``costmodels.BACKENDS``; a test keeps the two equal; listed here so
#: that ``archir --help`` does not import costmodels).
BACKENDS = ("ort-cpu", "ort-cuda", "torch-cpu", "torch-cuda")
#: ``--device`` choices besides the keys of ``costmodels.PRESETS``.
DEVICES = ("cpu",)


def _bytes(n: float) -> str:
    """``1,234,567 (1.18 MiB)``: exact, then readable."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n:,.0f} ({n / size:.2f} {unit})"
    return f"{n:,.0f} B"


def _big(n: float) -> str:
    """``129,184 (129.2 K)``."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n:,.0f} ({n / size:.1f} {unit})"
    return f"{n:,.0f}"


def _int_at_least(name: str, v: int | None, lo: int) -> None:
    if v is not None and v < lo:
        raise CLIError(f"{name} must be >= {lo}, got {v}", hint=f"pass {name} with a value >= {lo}")


# --------------------------------------------------------------------------- cost


def _add_cost(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph", help="the graph's .json file (weights are not needed)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size to count for (default: 1)")
    p.add_argument("--by-op", action="store_true", help="sum per op instead of one row per node")
    p.add_argument("--json", action="store_true", help="print costmodels.Counts.to_dict() as JSON instead")


def _by_op_table(c) -> str:
    rows = [("op", "nodes", "params", "MACs", "FLOPs", "act bytes", "weight bytes", "bytes moved")]
    for op, d in sorted(c.by_op().items(), key=lambda kv: (-kv[1]["flops"], kv[0])):
        rows.append((op, *(f"{d[k]:,}" for k in ("nodes", "params", "macs", "flops", "activation_bytes",
                                                  "weight_bytes", "bytes_moved"))))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    fmt = lambda r: "  ".join(x.ljust(w[i]) if i == 0 else x.rjust(w[i]) for i, x in enumerate(r))  # noqa: E731
    return "\n".join([fmt(rows[0]), "  ".join("-" * x for x in w), *map(fmt, rows[1:])])


def _run_cost(args: argparse.Namespace) -> int:
    import costmodels

    _int_at_least("--batch-size", args.batch_size, 1)
    g = _load(args.graph)
    c = costmodels.count(g, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(c.to_dict(), indent=1))
        return 0
    print(f"archir cost: {args.graph} ({g.name!r}, {len(g)} nodes), batch {c.batch_size}")
    if c.supernet:
        print("note: a supernet (choice nodes): every candidate is counted (the sum over all of them)")
    if c.excluded and args.by_op:  # (c.table() ends with this line itself)
        print(f"note: {c.excluded_note()}")
    print()
    print(_by_op_table(c) if args.by_op else c.table())
    print()
    print(f"totals (batch {c.batch_size}; conventions: help(costmodels.count)):")
    for label, value in (("params", _big(c.params)), ("MACs", _big(c.macs)), ("FLOPs", _big(c.flops)),
                         ("activation bytes", _bytes(c.activation_bytes)), ("weight bytes", _bytes(c.weight_bytes)),
                         ("bytes moved", _bytes(c.bytes_moved)),
                         ("peak bytes", f"{_bytes(c.peak_bytes)} at node {c.peak_node!r} (activations live at "
                                        f"once under the topological schedule; weights excluded)")):
        print(f"  {label:<17} {value}")
    if c.excluded:
        print(f"  {'auxiliary head':<17} {len(c.excluded)} node(s), {_big(c.auxiliary_params)} params: training only, "
              "in none of the totals")
    return 0


# --------------------------------------------------------------------------- profile


def _add_profile(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph", help="the graph's .json file (its .safetensors weights beside it)")
    p.add_argument("--backend", default="ort-cpu", choices=BACKENDS, help="where to run it (default: ort-cpu)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size (default: 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads (default: the backend's own choice; fix it for stable numbers)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs before timing (default: 10)")
    p.add_argument("--repeats", type=int, default=50, help="timed runs (default: 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input (default: 0)")
    p.add_argument("--device", default=None, metavar="NAME",
                   help="the roofline's device: cpu (probe this CPU), h100, h200, ... (default: cpu for the CPU "
                        "backends; the GPU's preset for the CUDA ones when it has one)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "fp16"),
                   help="the peak of a GPU preset the roofline divides by (default: fp32, archir's graphs)")
    p.add_argument("--probe-seconds", type=float, default=1.0,
                   help="time budget of the CPU probe for --device cpu (default: 1.0)")
    p.add_argument("--table", type=Path, default=None, metavar="LUT.sqlite",
                   help="also print the costmodels.LatencyTable estimate from this file (missing entries are "
                        "measured and stored) and its per-op breakdown")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead")


def _roofline_device(args: argparse.Namespace, costmodels) -> tuple[object | None, str | None]:
    """The DeviceSpec for the roofline, or (None, why not)."""
    name = args.device
    if name is None:
        if args.backend.endswith("cpu"):
            name = "cpu"
        else:
            gpu = costmodels.gpu_fingerprint(0)
            name = next((k for k in ("h200", "h100") if k in gpu.lower()), None)
            if name is None:
                return None, (f"no preset for {gpu}; pass --device with one of "
                              f"{', '.join(DEVICES + tuple(sorted(costmodels.PRESETS)))}")
    if name == "cpu":
        import torch

        old = torch.get_num_threads()
        try:
            if args.threads is not None:
                torch.set_num_threads(args.threads)  # probe with the thread count that was measured
            return costmodels.DeviceSpec.probe_cpu(seconds=args.probe_seconds), None
        finally:
            torch.set_num_threads(old)
    spec = costmodels.PRESETS[name]
    return spec.with_precision(args.precision), None


def _check_profile_args(args: argparse.Namespace, costmodels) -> None:
    if tuple(costmodels.BACKENDS) != BACKENDS:  # pragma: no cover - a test keeps them equal
        raise RuntimeError(f"archir/cli/cost.py BACKENDS {BACKENDS} != costmodels.BACKENDS {costmodels.BACKENDS}")
    _int_at_least("--batch-size", args.batch_size, 1)
    _int_at_least("--threads", args.threads, 1)
    _int_at_least("--warmup", args.warmup, 0)
    _int_at_least("--repeats", args.repeats, 1)
    _int_at_least("--seed", args.seed, 0)
    if not (args.probe_seconds > 0 and math.isfinite(args.probe_seconds)):
        raise CLIError(f"--probe-seconds must be a positive number, got {args.probe_seconds}",
                       hint="pass --probe-seconds 1.0")
    choices = DEVICES + tuple(sorted(costmodels.PRESETS))
    if args.device is not None and args.device not in choices:
        raise CLIError(f"--device {args.device!r} is not known; choose one of {', '.join(choices)}",
                       hint="cpu probes this machine's CPU; the others are published GPU figures")
    if args.device not in (None, "cpu") and args.precision != "fp32":
        spec = costmodels.PRESETS[args.device]
        if getattr(spec, f"peak_flops_{args.precision}") is None:
            raise CLIError(f"--device {args.device} has no {args.precision} peak", hint="use --precision fp32")
    if args.table is not None:
        if args.table.is_dir():
            raise CLIError(f"{args.table}: is a folder, not a latency table file",
                           hint=f"give a file name, e.g. {args.table / 'lut.sqlite'}")
        if not args.table.parent.is_dir():
            raise CLIError(f"{args.table}: folder {args.table.parent} does not exist",
                           hint=f"create it first (mkdir -p {args.table.parent})")


def _run_profile(args: argparse.Namespace) -> int:
    import costmodels

    _check_profile_args(args, costmodels)
    g = _load(args.graph)
    lat = costmodels.measure(g, backend=args.backend, batch_size=args.batch_size, warmup=args.warmup,
                             repeats=args.repeats, threads=args.threads, seed=args.seed)
    spec, why_not = _roofline_device(args, costmodels)
    roof = costmodels.roofline(g, spec, batch_size=args.batch_size) if spec is not None else None
    per_op: dict[str, list] = {}
    estimate = None
    if args.table is not None:
        with costmodels.LatencyTable(args.table, args.backend, threads=args.threads, batch_size=args.batch_size,
                                     warmup=args.warmup, repeats=args.repeats, seed=args.seed) as table:
            per_node = table.estimate_nodes(g)
            overhead = table.overhead_ms
        estimate = overhead + math.fsum(per_node.values())
        for n, ms in per_node.items():
            d = per_op.setdefault(g.node(n).op, [0, 0.0])
            d[0] += 1
            d[1] += ms

    if args.json:
        doc = {"graph": g.name, "file": str(args.graph), "latency": lat.to_dict(), "iqr_ms": lat.iqr_ms,
               "roofline": None if roof is None else {
                   "device": spec.name, "time_ms": roof.time_ms, "compute_ms": 1e3 * roof.compute_s,
                   "memory_ms": 1e3 * roof.memory_s, "measured_over_bound": lat.median_ms / roof.time_ms},
               "roofline_skipped": why_not}
        if estimate is not None:
            doc["table"] = {"path": str(args.table), "estimate_ms": estimate, "overhead_ms": overhead,
                            "per_op": {op: {"nodes": k, "ms": ms} for op, (k, ms) in per_op.items()}}
        print(json.dumps(doc, indent=1))
        return 0

    threads = "the backend's default threads" if args.threads is None else f"{args.threads} thread(s)"
    print(f"archir profile: {args.graph} ({g.name!r}, {len(g)} nodes) on {args.backend}, batch {args.batch_size}, "
          f"{threads}")
    spread = 100 * lat.iqr_ms / lat.median_ms if lat.median_ms > 0 else float("nan")
    print(f"  latency    median {lat.median_ms:.4g} ms (p25 {lat.p25_ms:.4g}, p75 {lat.p75_ms:.4g}; IQR "
          f"{lat.iqr_ms:.3g} ms = {spread:.1f}% of the median; n={lat.n} timed runs after {args.warmup} warm-up)")
    print(f"  first run  {lat.first_run_ms:.4g} ms (session creation / transfer + first inference; not in the "
          "figures above)")
    print(f"  device     {lat.device}")
    print("  versions   " + ", ".join(f"{k} {v}" for k, v in lat.versions.items()))
    if roof is not None:
        print(f"  roofline   >= {roof.time_ms:.4g} ms on {spec.name} (compute {1e3 * roof.compute_s:.4g} ms, "
              f"memory {1e3 * roof.memory_s:.4g} ms); measured median / bound = "
              f"{lat.median_ms / roof.time_ms:.3g}x")
    else:
        print(f"  roofline   skipped: {why_not}")
    if estimate is not None:
        print(f"  table      estimate {estimate:.4g} ms from {args.table} (sum of per-op latencies measured alone; "
              f"call overhead {overhead:.4g} ms counted once); measured / estimate = "
              f"{lat.median_ms / estimate:.3g}x" if estimate > 0 else f"  table      estimate {estimate:.4g} ms")
        rows = [("op", "nodes", "ms", "share")] + [
            (op, str(k), f"{ms:.4g}", f"{100 * ms / estimate:.1f}%" if estimate > 0 else "-")
            for op, (k, ms) in sorted(per_op.items(), key=lambda kv: -kv[1][1])]
        rows.append(("(call overhead)", "", f"{overhead:.4g}", f"{100 * overhead / estimate:.1f}%"
                     if estimate > 0 else "-"))
        w = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            print("    " + "  ".join(x.ljust(w[i]) if i == 0 else x.rjust(w[i]) for i, x in enumerate(r)))
    return 0


SUBCOMMANDS = [
    Subcommand("cost", "count a graph's params, MACs, FLOPs and memory, per node and in total", _add_cost, _run_cost,
               "Count a graph with costmodels.count: a table per node (params, MACs, FLOPs, activation and "
               "weight bytes, live bytes) and the totals, with the peak of live activation bytes under the "
               "topological schedule. --by-op sums per op; --json prints machine-readable output."),
    Subcommand("profile", "measure a graph's latency (median with spread) beside its roofline bound", _add_profile,
               _run_profile,
               "Measure the latency of one forward pass with costmodels.measure on ONNX Runtime or torch, CPU or "
               "CUDA: the median of --repeats timed runs after --warmup untimed ones, with p25/p75 and the first "
               "run apart. Beside it, the roofline lower bound on --device (this CPU, probed, or a GPU preset). "
               "For stable numbers fix --threads and measure on an idle machine. --table adds the latency-table "
               "estimate and its per-op breakdown."),
]
