"""``archir search`` and ``archir gallery``: architecture search on a dataset, and its Pareto gallery.

Usage::

    archir search --out runs/demo                                   # chain space, evolution, digits, 3 minutes
    archir search --space darts --strategy random --budget 200c --objective latency:ort-cpu --out runs/d
    archir search --out runs/demo --executor process --workers 2    # candidates of a round in parallel
    archir search --out runs/demo --executor ray [--address auto]   # Ray Core tasks (pip install 'archir[ray]')
    archir search --out runs/demo --device cuda --train-opt amp=bf16 --train-opt augment=true   # on a GPU
    archir search --out runs/demo --executor process --gpus 0,1 --device auto   # one candidate per GPU
    archir search --out runs/demo --resume                          # continue a killed search (same options)
    archir search --out runs/demo --resume --budget 400c            # extend a finished 200c run to 400 candidates
    archir search --strategy hillclimb --out runs/h [--start net.json]   # NASH: grow a start net by morphisms
    archir search --strategy petridish --out runs/p --strategy-opt 'ops=["conv3x3","maxpool3x3"]'
    archir search --space darts --strategy darts --budget 5c --out runs/o   # one-shot: 5 supernet epochs, then derive
    archir search --space darts --strategy darts --budget 5c --out runs/g --device cuda --train-opt amp=bf16
    archir search --space darts --start-genotype DARTS_V2 --out runs/g     # evolution from a published cell
    archir search --space darts --space-opt nodes=5 --space-opt 'ops=["sep_conv_7x7","max_pool_3x3"]' --out runs/n
    archir search --strategy snas --objective latency:ort-cpu --strategy-opt lam=0.5 --out runs/s
    archir search --space nb201 --evaluator table:nb201.csv --budget 200c --out runs/t   # a tabular benchmark
    archir gallery runs/demo                                        # table + runs/demo/pareto.png
    archir gallery runs/demo --traceback [ID]                       # why candidates failed from an archir bug
    archir export runs/demo --best --onnx model.onnx                # (or --id N) verified under ONNX Runtime

A search records every candidate in ``<out>/search.db`` (SQLite) and its trained graph in
``<out>/graphs/<id>.json``; at the end it writes the gallery (``<out>/pareto.png``) and the best
candidate as ``<out>/best.onnx`` (verified under ONNX Runtime) and prints where they are.
The objective and budget are explained in :mod:`search.experiment`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from archir.cli.main import CLIError, Subcommand

__all__ = ["SUBCOMMANDS"]


# --------------------------------------------------------------------------- search


def _add_search(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="the run folder (search.db, graphs/, pareto.png, "
                                                             "best.onnx)")
    p.add_argument("--space", default=None,
                   help="search space: chain (default), darts, nb201 (NAS-Bench-201's cell), or start (grow a start "
                        "graph: the default and only space of hillclimb and petridish)")
    p.add_argument("--strategy", default="evolution",
                   help="random, evolution (default), reinforce (NAS-RL: an LSTM controller), pnas (progressive, "
                        "with a surrogate), hillclimb (NASH: morphisms of the best) or petridish (grow parents near "
                        "the Pareto frontier); one-shot: darts, snas, parsec, enas (a supernet; --budget Nc is N "
                        "search epochs)")
    p.add_argument("--evaluator", default="train", metavar="train|table:FILE.csv",
                   help="how candidates are evaluated: train (default: build, train, count) or table:FILE.csv (a "
                        "tabular benchmark such as NAS-Bench-201's: metrics looked up by architecture string, "
                        "nothing trained, no dataset loaded)")
    p.add_argument("--table-metric", default=None, metavar="COLUMN",
                   help="table: the column of validation accuracies (%%) the search sees (default cifar10_val)")
    p.add_argument("--table-test-metric", default=None, metavar="COLUMN",
                   help="table: the column of accuracies (%%) reported as test (default cifar10_test; none: no test)")
    p.add_argument("--dataset", default="digits",
                   help="digits (built in, default), a .npz file with arrays x and y, or an image folder")
    p.add_argument("--budget", default="3m",
                   help="wall time (90s, 3m, 1h) or a number of candidates (200c); default 3m. With --resume a "
                        "larger budget of the same kind extends the run")
    p.add_argument("--count-duplicates", action="store_true",
                   help="cache hits (a candidate of an architecture already evaluated, which reuses that result "
                        "instead of training) count against a candidate budget (default: they do not)")
    p.add_argument("--no-dedup", action="store_true",
                   help="evaluate every candidate, also one of an architecture already evaluated")
    p.add_argument("--objective", default="error",
                   help="error (default), macs, params, flops or latency:ort-cpu / latency:torch-cpu / ... : "
                        "val_error + cost_weight * log2(cost)")
    p.add_argument("--cost-weight", type=float, default=0.02,
                   help="weight of log2(cost) in the score (default 0.02: halving the cost is worth 2 points "
                        "of error)")
    p.add_argument("--max-latency-ms", type=float, default=None,
                   help="hard latency budget: candidates over it are recorded but never selected")
    p.add_argument("--latency-backend", default="ort-cpu",
                   help="where --max-latency-ms is measured when the objective is not a latency (default ort-cpu)")
    p.add_argument("--seed", type=int, default=0, help="experiment seed (default 0)")
    p.add_argument("--round-size", type=int, default=2,
                   help="candidates in flight, evaluated in parallel by process/ray: a new one is asked for "
                        "whenever one finishes (with --sync: candidates per round) (default 2)")
    p.add_argument("--sync", action="store_true",
                   help="synchronous rounds: ask --round-size candidates, wait for all of them, tell the round "
                        "(runs stored before asynchronous scheduling existed resume only with --sync)")
    p.add_argument("--population", type=int, default=None, help="evolution: population size P (default 10)")
    p.add_argument("--sample", type=int, default=None, help="evolution: tournament sample size S (default 3)")
    p.add_argument("--start", default=None, metavar="GRAPH",
                   help="hillclimb/petridish: the start graph (an archir .json, e.g. from 'archir import'; its "
                        "weights are kept); default: a built-in small net")
    p.add_argument("--start-genotype", default=None, metavar="NAME",
                   help="darts space: evolution and random search start from this genotype of "
                        "search.spaces.genotypes (DARTS_V2, NASNet, AmoebaNet, PNAS, ENAS, ...)")
    p.add_argument("--strategy-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a strategy option (repeatable), VALUE as JSON: hillclimb moves=3, morphisms=[...]; "
                        "petridish ops=[...], targets=1, inputs=2, select=1, epochs=1, l1=0.001, near=0.01; "
                        "darts order=2, arch_lr=0.003; snas lam=0.5, cost=latency; parsec samples=4; one-shot "
                        "max_batches=N, evaluate_every=K (search.oneshot)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per candidate (default 4)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size (default 64)")
    p.add_argument("--lr", type=float, default=None, help="SGD learning rate (default 0.05)")
    p.add_argument("--schedule", default=None, help="cosine (default) or sgdr (default for hillclimb and petridish)")
    p.add_argument("--space-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a space option (repeatable), VALUE as JSON: darts cells=2, channels=8; chain layers=3, "
                        "stem=8, kernels=[3,5]; start channels=8, max_params=20000, max_macs=1000000 (bounds "
                        "on every grown child)")
    p.add_argument("--device", default="cpu",
                   help="where candidates train: cpu (default), auto (CUDA when present), cuda, cuda:N; with "
                        "--executor process --gpus or ray --gpus-per-candidate each worker gets its own GPU; a "
                        "one-shot strategy trains its supernet there too (--train-opt amp=bf16 for autocast)")
    p.add_argument("--train-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a search.train.TrainConfig field (repeatable), VALUE as JSON: amp=bf16, channels_last=true, "
                        "augment=true, cutout=16, grad_clip=5, weight_decay=3e-4, workers=2, ...")
    p.add_argument("--gpus", default=None, metavar="0,1,...",
                   help="process: one worker per listed GPU, each seeing only its own (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--executor", default="serial", choices=["serial", "process", "ray"],
                   help="where candidates are evaluated (default serial)")
    p.add_argument("--workers", type=int, default=None,
                   help="process: pool size (default: --round-size); ray: CPUs of a local Ray started here")
    p.add_argument("--address", default=None, help="ray: address of an existing cluster (auto, ray://host:10001)")
    p.add_argument("--cpus-per-candidate", type=float, default=None, help="ray: CPUs per candidate task (default 1)")
    p.add_argument("--gpus-per-candidate", type=float, default=None, help="ray: GPUs per candidate task (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the search stored in --out (same options)")
    p.add_argument("--no-export", action="store_true", help="do not write pareto.png and best.onnx at the end")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _key_values(items: list[str], flag: str, example: str) -> dict:
    """``KEY=VALUE`` options as a dict; VALUE is read as JSON, else kept as the bare string."""
    out = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise CLIError(f"{flag} {item!r} is not KEY=VALUE", hint=f"e.g. {flag} {example}")
        try:
            out[key.strip()] = json.loads(text)
        except ValueError:
            out[key.strip()] = text  # a bare word: the string itself
    return out


def _config(args: argparse.Namespace):
    from search.experiment import DEFAULT_TRAIN, ExperimentConfig
    from search.strategies import STRATEGIES

    train = dict(DEFAULT_TRAIN)
    # strategies that grow trained parents (hillclimb, petridish) train children from inherited weights
    grows = getattr(STRATEGIES.get(args.strategy), "GROWS", False)
    if grows:
        train["schedule"] = "sgdr"  # as NASH trains its children
    for k in ("epochs", "batch_size", "lr", "schedule"):
        v = getattr(args, k)
        if v is not None:
            train[k] = v
    extra = _key_values(args.train_opt, "--train-opt", "amp=bf16")
    for k in ("seed", "threads", "device"):
        if k in extra:
            raise CLIError(f"--train-opt {k}=... is set by the search itself" + (" (use --device)" if k == "device"
                                                                                   else ""),
                           hint="drop it" + (", and pass --device" if k == "device" else ""))
    train.update(extra)
    space_options = _key_values(args.space_opt, "--space-opt", "cells=2")
    strategy_options = {k: getattr(args, k) for k in ("population", "sample") if getattr(args, k) is not None}
    strategy_options.update(_key_values(args.strategy_opt, "--strategy-opt", "moves=3"))
    space = args.space or ("start" if grows or args.start is not None else "chain")
    if args.start is not None:
        if space != "start":
            raise CLIError(f"--start applies to --space start (hillclimb, petridish), not --space {space}",
                           hint="drop --space, or drop --start")
        if not Path(args.start).is_file():
            what = "is a folder, not a graph file" if Path(args.start).is_dir() else "no such file"
            raise CLIError(f"--start {args.start}: {what}",
                           hint="give a graph written by archir.save or 'archir import' (net.json)")
        space_options["start"] = args.start
    if args.start_genotype is not None:
        if space != "darts":
            raise CLIError(f"--start-genotype applies to --space darts, not --space {space}",
                           hint="pass --space darts, or drop --start-genotype")
        space_options["start_genotype"] = args.start_genotype
    evaluator_options = {k: v for k, v in (("metric", args.table_metric), ("test_metric", args.table_test_metric))
                         if v is not None}
    if evaluator_options and not args.evaluator.startswith("table:"):
        raise CLIError(f"--table-metric / --table-test-metric apply to --evaluator table:FILE, not {args.evaluator}",
                       hint="pass --evaluator table:FILE.csv, or drop them")
    return ExperimentConfig(space=space, space_options=space_options, strategy=args.strategy,
                            strategy_options=strategy_options, dataset=args.dataset, objective=args.objective,
                            cost_weight=args.cost_weight, max_latency_ms=args.max_latency_ms,
                            latency_backend=args.latency_backend, budget=args.budget, seed=args.seed,
                            round_size=args.round_size, train=train, evaluator=args.evaluator,
                            evaluator_options=evaluator_options, dedup=not args.no_dedup,
                            count_duplicates=bool(args.count_duplicates),
                            scheduling="sync" if args.sync else "async")


def _executor_options(args: argparse.Namespace) -> dict:
    gpus = None
    if args.gpus is not None:
        if args.executor != "process":
            raise CLIError(f"--gpus applies to --executor process, not {args.executor}",
                           hint="pass --executor process, or --gpus-per-candidate 1 with --executor ray")
        try:
            gpus = [int(v) for v in args.gpus.split(",")]
        except ValueError:
            raise CLIError(f"--gpus {args.gpus!r} is not a list of GPU indices", hint="e.g. --gpus 0,1") from None
    if args.executor == "serial":
        for flag in ("workers", "address", "cpus_per_candidate", "gpus_per_candidate"):
            if getattr(args, flag) is not None:
                raise CLIError(f"--{flag.replace('_', '-')} applies to --executor process or ray, not serial",
                               hint="drop it, or pass --executor process / --executor ray")
        return {}
    if args.executor == "process":
        for flag in ("address", "cpus_per_candidate", "gpus_per_candidate"):
            if getattr(args, flag) is not None:
                raise CLIError(f"--{flag.replace('_', '-')} applies to --executor ray, not process",
                               hint="drop it, or pass --executor ray")
        if gpus:
            return {"workers": args.workers or len(gpus), "gpus": gpus}
        return {"workers": args.workers or args.round_size}
    return {"address": args.address, "workers": args.workers, "num_cpus": args.cpus_per_candidate,
            "num_gpus": args.gpus_per_candidate}


def _run_search(args: argparse.Namespace) -> int:
    from search.config import fmt_time
    from search.experiment import Progress, export_candidate, parse_objective, run_search, write_gallery
    from search.pareto import PlotUnavailable

    cfg = _config(args)
    cfg.check()
    opts = _executor_options(args)
    out = Path(args.out)
    progress = Progress(None if args.quiet else sys.stderr)
    try:
        s = run_search(cfg, out, executor=args.executor, executor_options=opts, resume=args.resume,
                       progress=progress, device=args.device)
    except KeyboardInterrupt:
        print(f"search interrupted: every finished candidate is kept in {out}; continue it with the same command "
              "and --resume", file=sys.stderr)
        raise
    c = s.counts
    print(f"search finished: {c['done'] + c['failed']} candidates ({c['done']} done, {c['failed']} failed) in "
          f"{fmt_time(s.session_s)}" + (f" ({fmt_time(s.elapsed_s)} over all sessions)" if args.resume else "")
          + f"; {s.distinct} distinct architectures"
          + (f"; {s.cache_hits} cache hits (an architecture already evaluated: its result reused, not trained)"
             if s.cache_hits else ""))
    if c["failed"]:
        from search.store import Store

        with Store.open(out) as st:
            bugs = [x.id for x in st.candidates("failed") if x.traceback]
        if bugs:
            print(f"{len(bugs)} candidate(s) failed from an archir bug, not from their architecture "
                  f"(#{', #'.join(map(str, bugs[:8]))}{', ...' if len(bugs) > 8 else ''}): their tracebacks: "
                  f"archir gallery {out} --traceback (please report it)")
    if s.best is None:
        print("no candidate finished within the budget: nothing to export "
              "(give a larger --budget, or relax --max-latency-ms)")
        return 0
    b = s.best
    key = parse_objective(cfg.objective).cost_key
    obj = "" if cfg.objective == "error" else f" (lowest val_error + {cfg.cost_weight:g} * log2({key}))"
    costs = "".join(f", {int(b.costs[k]):,} {label}" for k, label in (("params", "params"), ("macs", "MACs"))
                    if k in b.costs)
    print(f"best{obj}: candidate {b.id}: val error {b.metrics['val_error']:.3f}, test error "
          f"{b.metrics.get('test_error', float('nan')):.3f}{costs}"
          + (f", {b.costs['latency_ms']:.3g} ms" if "latency_ms" in b.costs else ""))
    if cfg.evaluator != "train":  # looked up, not trained: no graph to export
        from search.morph import get_space
        from search.store import Store

        with Store.open(out) as st:
            opts = st.info("space_options") or {}
        print(f"architecture: {get_space(cfg.space, **opts).describe(b.decisions)}")
        print(f"evaluator {cfg.evaluator}: candidates are looked up, not trained, so there is no gallery plot or "
              "best.onnx; train the architecture with --evaluator train to get one")
        return 0
    print(f"Pareto frontier: {len(s.frontier)} candidates ({', '.join(str(f.id) for f in s.frontier)})")
    if args.no_export:
        return 0
    try:
        _, png = write_gallery(out)
        print(f"gallery: {png}  (table: archir gallery {out})")
    except PlotUnavailable as e:
        print(f"gallery: not drawn ({e.message}; {e.hint}); table: archir gallery {out}")
    rep, _ = export_candidate(out, out / "best.onnx", best=True)
    print(f"best ONNX: {rep.path} ({rep.bytes:,} bytes; verified with ONNX Runtime {rep.ort_version}: "
          f"max |fx - ort| = {rep.max_abs_err:.3g})")
    return 0


# --------------------------------------------------------------------------- gallery


def _add_gallery(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="the run folder of 'archir search' (--out)")
    p.add_argument("--png", default=None, metavar="PATH", help="where to write the plot (default: RUN/pareto.png)")
    p.add_argument("--no-plot", action="store_true", help="print the table only")
    p.add_argument("--traceback", nargs="?", const="all", default=None, metavar="ID",
                   help="print the traceback of candidate ID (default: of every candidate that failed from an "
                        "archir bug, marked ! in the table) instead of the table")


def _print_tracebacks(run: Path, which: str) -> int:
    """``archir gallery RUN --traceback [ID]``: what a failed candidate failed from, with its traceback."""
    from search.store import Store

    if which != "all":
        try:
            cid = int(which)
        except ValueError:
            raise CLIError(f"--traceback {which!r} is not a candidate id", hint="pass --traceback 3 (an id from "
                           f"archir gallery {run}) or --traceback alone for every bug") from None
    with Store.open(run) as st:
        cands = [st.get(cid)] if which != "all" else [c for c in st.candidates("failed") if c.traceback]
    if not cands:
        print(f"no candidate of {run} failed from an archir bug: no tracebacks (the failed ones and why: "
              f"archir gallery {run} --no-plot)")
        return 0
    for c in cands:
        if c.status != "failed":
            print(f"candidate {c.id} is {c.status}: it did not fail, no traceback")
        elif not c.traceback:
            print(f"candidate {c.id} failed: {c.error}\n(a user error or a failed training, not a bug: "
                  "no traceback was recorded)")
        else:
            print(f"candidate {c.id} ({c.op}) failed from an archir bug: {c.error}\n{c.traceback.rstrip()}")
            print("please report it with this traceback")
    return 0


def _run_gallery(args: argparse.Namespace) -> int:
    from search.experiment import write_gallery

    run = Path(args.run_dir)
    if args.traceback is not None:
        return _print_tracebacks(run, args.traceback)
    if args.no_plot:
        print(write_gallery(run, draw=False)[0])
        return 0
    if args.png is not None and not Path(args.png).parent.is_dir():
        raise CLIError(f"{args.png}: folder {Path(args.png).parent} does not exist", hint="create it first")
    table, png = write_gallery(run, args.png)
    print(table)
    print(f"wrote {png}" if png else "no finished candidate yet: no plot")
    return 0


SUBCOMMANDS = [
    Subcommand("search", "search a space of architectures on a dataset under a cost objective",
               _add_search, _run_search,
               "Search a space (chain or darts) with random search or regularized evolution, or grow a start "
               "network with NASH hill climbing or Petridish (--strategy hillclimb/petridish, --start): every "
               "candidate is built, trained on the dataset, priced (params, MACs, optionally latency) and recorded in "
               "OUT/search.db with its trained graph. Ends with the Pareto gallery (OUT/pareto.png) and the "
               "best model exported to OUT/best.onnx, verified under ONNX Runtime. --resume continues a "
               "killed search with the same options."),
    Subcommand("gallery", "print a search run's candidates and Pareto frontier, and plot it (pareto.png)",
               _add_gallery, _run_gallery,
               "The table of a run's finished candidates by cost (* marks the Pareto frontier of "
               "validation error against the objective's cost), the failed ones with their reasons (! marks "
               "a failure from an archir bug: --traceback ID prints its traceback), and a PNG of all "
               "candidates with the frontier (needs matplotlib)."),
]
