"""Search benchmark: the figures of issue 7 (does evolution beat random search on digits?).

For random search and regularized evolution (``search.strategies``) over ``--seeds`` experiment
seeds (default 3) on the chain space and the built-in digits dataset, each run evaluating
``--candidates`` candidates (``search.experiment.run_search``, objective ``--objective``), it prints:

(a) test accuracy reached against training compute: at 25/50/75/100 % of the run's compute
    (candidate-epochs = the epochs actually trained, summed over candidates), the test accuracy of
    the best candidate so far *by validation error* (the test split never guides the choice),
    mean and standard deviation over the seeds, and the share of seeds where evolution is ahead;
(b) the Pareto frontier (validation error vs. MACs) of each run: its size, mean over the seeds,
    and the best validation error;
(c) candidates that failed and the wall time of each strategy's runs.

Both strategies see the same candidate seeds and training configuration, so the only difference
is which architectures they choose. The first ``population`` candidates of evolution are random
samples from the same generator as random search's (they stay identical until random search
re-draws a sample it has already evaluated), so the two curves share their start.

This is a benchmark that prints figures, not a test: it asserts only that each run recorded
exactly the asked number of candidates and that the reported accuracies are those in the store.

Run it::

    python benchmarks/search_digits.py                 # the figures: ~10 minutes on 2 cores (2 workers)
    python benchmarks/search_digits.py --tiny          # smoke run: 3 seeds x 4 one-epoch candidates, seconds
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the checkout

import torch  # noqa: E402

from search.experiment import DEFAULT_TRAIN, ExperimentConfig, frontier_candidates, run_search  # noqa: E402
from search.store import Store  # noqa: E402

STRATEGIES = ("random", "evolution")
FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def curve(cands) -> list[tuple[int, float, float]]:
    """(cumulative candidate-epochs, best val error so far, test accuracy of that best) per candidate, in id order."""
    out, spent, best = [], 0, None
    for c in sorted(cands, key=lambda c: c.id):
        spent += int(c.timings.get("epochs", 0))
        if c.status == "done" and (best is None or (c.metrics["val_error"], c.id) < (best.metrics["val_error"],
                                                                                      best.id)):
            best = c
        out.append((spent, best.metrics["val_error"] if best else float("nan"),
                    best.metrics["test_acc"] if best else float("nan")))
    return out


def at(cv: list[tuple[int, float, float]], compute: float) -> float:
    """Test accuracy of the best-by-validation candidate once ``compute`` candidate-epochs are spent."""
    acc = float("nan")
    for spent, _, a in cv:
        if spent > compute + 1e-9:
            break
        acc = a
    return acc


def _ms(xs: Sequence[float]) -> str:
    xs = [x for x in xs if x == x]
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs) * 100:5.1f} ± {sd * 100:3.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="smoke run: 4 one-epoch candidates per run, 2-layer chain")
    p.add_argument("--seeds", type=int, default=3, help="experiment seeds per strategy (default 3)")
    p.add_argument("--candidates", type=int, default=None, help="candidates per run (default 48; tiny 4)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per candidate (default 4; tiny 1)")
    p.add_argument("--population", type=int, default=None, help="evolution population P (default 12; tiny 2)")
    p.add_argument("--sample", type=int, default=None, help="evolution tournament size S (default 4; tiny 2)")
    p.add_argument("--objective", default="error", help="the search objective (default error)")
    p.add_argument("--executor", default="process", help="serial, process (default) or ray")
    p.add_argument("--workers", type=int, default=2, help="parallel candidates (= round size; default 2)")
    p.add_argument("--keep", default=None, metavar="DIR", help="keep the run folders here (default: a temp folder)")
    args = p.parse_args(argv)
    n = args.candidates or (4 if args.tiny else 48)
    epochs = args.epochs or (1 if args.tiny else DEFAULT_TRAIN["epochs"])
    pop = args.population or (2 if args.tiny else 12)
    samp = args.sample or (2 if args.tiny else 4)
    space_options = {"layers": 2} if args.tiny else {}
    seeds = list(range(args.seeds))
    executor_options = {"workers": args.workers} if args.executor in ("process", "ray") else {}

    threads = torch.get_num_threads()
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print("search_digits: random search vs regularized evolution on digits (chain space)")
    print(f"command : python benchmarks/search_digits.py {shlex.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(f"machine : {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
          f"1-min load {load0:.1f}; python {platform.python_version()}, torch {torch.__version__}")
    print(f"setup   : {len(seeds)} seeds x {n} candidates per strategy, {epochs} epochs each, objective "
          f"{args.objective}, evolution P={pop} S={samp}, executor {args.executor} ({args.workers} per round)")
    results: dict[str, list] = {s: [] for s in STRATEGIES}
    walls = {s: 0.0 for s in STRATEGIES}
    with tempfile.TemporaryDirectory(prefix="archir-bench-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            for strat in STRATEGIES:
                cfg = ExperimentConfig(space="chain", space_options=space_options, strategy=strat,
                                       strategy_options={"population": pop, "sample": samp} if strat == "evolution"
                                       else {}, objective=args.objective, budget=f"{n}c", seed=seed,
                                       round_size=args.workers, train={**DEFAULT_TRAIN, "epochs": epochs})
                run = root / f"{strat}-seed{seed}"
                t0 = time.perf_counter()
                run_search(cfg, run, executor=args.executor, executor_options=executor_options)
                walls[strat] += time.perf_counter() - t0
                with Store.open(run) as st:
                    cands = st.candidates()
                assert len(cands) == n and sorted(c.id for c in cands) == list(range(n)), run
                cv = curve(cands)
                best = min((c for c in cands if c.status == "done"), key=lambda c: (c.metrics["val_error"], c.id),
                           default=None)
                assert best is None or cv[-1][2] == best.metrics["test_acc"]
                results[strat].append({"curve": cv, "frontier": len(frontier_candidates(cands, "macs")),
                                       "failed": sum(c.status == "failed" for c in cands),
                                       "best_val": best.metrics["val_error"] if best else float("nan"),
                                       "compute": cv[-1][0]})
                print(f"  {strat:9} seed {seed}: best val error {results[strat][-1]['best_val']:.3f}, test acc "
                      f"{cv[-1][2]:.3f}, frontier {results[strat][-1]['frontier']}, {cv[-1][0]} candidate-epochs, "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
    torch.set_num_threads(threads)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    compute = min(r["compute"] for rs in results.values() for r in rs)
    print()
    print("(a) test accuracy (%) of the best-by-validation candidate vs training compute, mean ± sd over seeds")
    print(f"{'candidate-epochs':>17} | {'random':>12} | {'evolution':>12} | evolution ahead")
    for f in FRACTIONS:
        c = compute * f
        r = [at(x["curve"], c) for x in results["random"]]
        e = [at(x["curve"], c) for x in results["evolution"]]
        ahead = sum(b > a for a, b in zip(r, e))
        ties = sum(b == a for a, b in zip(r, e))
        print(f"{c:>17.0f} | {_ms(r):>12} | {_ms(e):>12} | {ahead}/{len(seeds)} seeds (ties {ties})")
    print()
    print("(b) Pareto frontier (validation error vs MACs) per run; best validation error")
    for s in STRATEGIES:
        fr = [x["frontier"] for x in results[s]]
        print(f"  {s:9}: frontier size {statistics.mean(fr):.1f} (per seed {fr}); best val error "
              f"{_ms([x['best_val'] for x in results[s]])} %")
    print()
    print("(c) failed candidates and wall time")
    for s in STRATEGIES:
        print(f"  {s:9}: {sum(x['failed'] for x in results[s])} failed of {n * len(seeds)}; "
              f"wall {walls[s]:.0f} s for {len(seeds)} runs")
    print(f"load    : 1-min load average {load0:.1f} at start, {load1:.1f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
