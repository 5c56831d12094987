"""Search benchmark: the figures of issues 7 and 8 (evolution, NASH hill climbing and Petridish vs random search).

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

Issue 8 adds the strategies that grow a trained network (``--space start``, the built-in starter
net; ``search.morph``): NASH hill climbing (``hillclimb``: ``--children`` children of the best per
round, 3 random morphisms each) and Petridish (``petridish``: parents near the frontier, one join
point, conv3x3 / sep_conv3x3 / max and avg pool / identity candidates, the best one kept). Their
children are trained ``--grow-epochs`` epochs with SGDR from the inherited weights (Petridish adds
one epoch of candidate training, counted in its compute). Each gets ``--grow-fraction`` (default
1/3) of random search's training compute, in candidate-epochs, so the run answers directly:

(d) does each reach random search's final test accuracy with at most a third of its compute
    (per seed, the best-by-validation candidate once that compute is spent)?
(e) does Petridish's Pareto frontier of (validation error, latency) dominate random search's?
    Latency is measured after the runs for every finished candidate of both (ONNX Runtime CPU,
    batch 1, one thread, median of 20 runs): the count of random's frontier points that some
    Petridish frontier point dominates (no worse in both, better in one), per seed.

This is a benchmark that prints figures, not a test: it asserts only that each run recorded
exactly the asked number of candidates and that the reported accuracies are those in the store.

Run it::

    python benchmarks/search_digits.py                 # the figures: ~10 minutes on 2 cores (2 workers)
    python benchmarks/search_digits.py --tiny          # smoke run: 3 seeds x 4 one-epoch candidates, seconds
    python benchmarks/search_digits.py --strategies random,evolution   # issue 7's figures only
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
GROWN = ("hillclimb", "petridish")  # grow the start net (search.morph); compared with random search
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
    p.add_argument("--strategies", default=",".join(STRATEGIES + GROWN),
                   help="comma-separated, from random, evolution, hillclimb, petridish (default: all four)")
    p.add_argument("--grow-fraction", type=float, default=1 / 3,
                   help="hillclimb/petridish training compute as a fraction of random search's (default 1/3)")
    p.add_argument("--grow-epochs", type=int, default=1, help="SGDR epochs per grown child (default 1)")
    p.add_argument("--children", type=int, default=4, help="hillclimb/petridish children per round (default 4)")
    args = p.parse_args(argv)
    chosen = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if not set(chosen) <= set(STRATEGIES + GROWN) or "random" not in chosen:
        p.error(f"--strategies {args.strategies!r}: pick from {', '.join(STRATEGIES + GROWN)}, random included "
                "(everything is compared with it)")
    n = args.candidates or (4 if args.tiny else 48)
    epochs = args.epochs or (1 if args.tiny else DEFAULT_TRAIN["epochs"])
    pop = args.population or (2 if args.tiny else 12)
    samp = args.sample or (2 if args.tiny else 4)
    space_options = {"layers": 2} if args.tiny else {}
    seeds = list(range(args.seeds))
    executor_options = {"workers": args.workers} if args.executor in ("process", "ray") else {}

    threads = torch.get_num_threads()
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"search_digits: {', '.join(chosen)} on digits (random and evolution: chain space; hillclimb and "
          "petridish: grown from the starter net)")
    print(f"command : python benchmarks/search_digits.py {shlex.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(f"machine : {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
          f"1-min load {load0:.1f}; python {platform.python_version()}, torch {torch.__version__}")
    print(f"setup   : {len(seeds)} seeds x {n} candidates per strategy, {epochs} epochs each, objective "
          f"{args.objective}, evolution P={pop} S={samp}, executor {args.executor} ({args.workers} per round)")
    grown = [s for s in GROWN if s in chosen]
    grow_compute = int(args.grow_fraction * n * epochs)
    if grown:
        print(f"grown   : {', '.join(grown)} from the starter net, {args.children} children per round, "
              f"{args.grow_epochs} SGDR epoch(s) per child (+1 candidate-training epoch for petridish), "
              f"{grow_compute} candidate-epochs each (= {args.grow_fraction:.3g} x random's {n * epochs})")
    results: dict[str, list] = {s: [] for s in chosen}
    walls = {s: 0.0 for s in chosen}
    runs: dict[tuple[str, int], Path] = {}
    with tempfile.TemporaryDirectory(prefix="archir-bench-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            for strat in chosen:
                if strat in GROWN:  # compute per child: the SGDR epochs, plus petridish's candidate training
                    per = args.grow_epochs + (1 if strat == "petridish" else 0)
                    want = max(2, grow_compute // per)
                    cfg = ExperimentConfig(space="start", strategy=strat, objective=args.objective,
                                           budget=f"{want}c", seed=seed, round_size=args.children,
                                           train={**DEFAULT_TRAIN, "epochs": args.grow_epochs, "schedule": "sgdr"})
                else:
                    want = n
                    cfg = ExperimentConfig(space="chain", space_options=space_options, strategy=strat,
                                           strategy_options={"population": pop, "sample": samp}
                                           if strat == "evolution" else {}, objective=args.objective,
                                           budget=f"{n}c", seed=seed, round_size=args.workers,
                                           train={**DEFAULT_TRAIN, "epochs": epochs})
                run = root / f"{strat}-seed{seed}"
                runs[(strat, seed)] = run
                t0 = time.perf_counter()
                run_search(cfg, run, executor=args.executor, executor_options=executor_options)
                walls[strat] += time.perf_counter() - t0
                with Store.open(run) as st:
                    cands = st.candidates()
                assert len(cands) == want and sorted(c.id for c in cands) == list(range(want)), run
                cv = curve(cands)
                best = min((c for c in cands if c.status == "done"), key=lambda c: (c.metrics["val_error"], c.id),
                           default=None)
                assert best is None or cv[-1][2] == best.metrics["test_acc"]
                results[strat].append({"curve": cv, "frontier": len(frontier_candidates(cands, "macs")),
                                       "failed": sum(c.status == "failed" for c in cands),
                                       "best_val": best.metrics["val_error"] if best else float("nan"),
                                       "compute": cv[-1][0]})
                results[strat][-1]["cands"] = cands
                print(f"  {strat:9} seed {seed}: best val error {results[strat][-1]['best_val']:.3f}, test acc "
                      f"{cv[-1][2]:.3f}, frontier {results[strat][-1]['frontier']}, {cv[-1][0]} candidate-epochs, "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
        if "petridish" in chosen:  # (e) needs the latency of every finished candidate, measured side by side
            t0 = time.perf_counter()
            for strat in ("random", "petridish"):
                for seed, res in zip(seeds, results[strat]):
                    res["latency"] = latencies(runs[(strat, seed)], res["cands"])
            print(f"  latency of {sum(len(r['latency']) for s in ('random', 'petridish') for r in results[s])} "
                  f"candidates measured in {time.perf_counter() - t0:.0f} s", flush=True)
    torch.set_num_threads(threads)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    base = [s for s in STRATEGIES if s in chosen]
    compute = min(r["compute"] for s in base for r in results[s])
    print()
    print("(a) test accuracy (%) of the best-by-validation candidate vs training compute, mean ± sd over seeds")
    print(f"{'candidate-epochs':>17} | " + " | ".join(f"{s:>12}" for s in base)
          + (" | evolution ahead" if "evolution" in base else ""))
    for f in FRACTIONS:
        c = compute * f
        r = [at(x["curve"], c) for x in results["random"]]
        line = f"{c:>17.0f} | {_ms(r):>12}"
        if "evolution" in base:
            e = [at(x["curve"], c) for x in results["evolution"]]
            ahead = sum(b > a for a, b in zip(r, e))
            ties = sum(b == a for a, b in zip(r, e))
            line += f" | {_ms(e):>12} | {ahead}/{len(seeds)} seeds (ties {ties})"
        print(line)
    print()
    print("(b) Pareto frontier (validation error vs MACs) per run; best validation error")
    for s in chosen:
        fr = [x["frontier"] for x in results[s]]
        print(f"  {s:9}: frontier size {statistics.mean(fr):.1f} (per seed {fr}); best val error "
              f"{_ms([x['best_val'] for x in results[s]])} %")
    print()
    print("(c) failed candidates and wall time")
    for s in chosen:
        print(f"  {s:9}: {sum(x['failed'] for x in results[s])} failed of {sum(len(x['cands']) for x in results[s])}; "
              f"wall {walls[s]:.0f} s for {len(seeds)} runs")
    if grown:
        print()
        print("(d) grown networks vs random search: test accuracy (%) of the best-by-validation candidate at a "
              "fraction of random's compute (per seed: its own)")
        print(f"{'of random compute':>17} | {'random':>12} | " + " | ".join(f"{s:>12}" for s in grown))
        for frac in (1 / 12, 1 / 6, 1 / 4, 1 / 3, 1.0):
            accs = {s: [at(x["curve"], r["compute"] * frac) for x, r in zip(results[s], results["random"])]
                    for s in ["random", *grown]}
            print(f"{frac:>17.3g} | " + " | ".join(f"{_ms(accs[s]):>12}" for s in ["random", *grown]))
        final = [r["curve"][-1][2] for r in results["random"]]
        peak = [max(a for _, _, a in r["curve"]) for r in results["random"]]  # its pick's best moment
        for s in grown:
            got = [at(x["curve"], r["compute"] * args.grow_fraction) for x, r in zip(results[s], results["random"])]
            spent = [x["compute"] for x in results[s]]
            hit = sum(g >= f for g, f in zip(got, final))
            print(f"  {s:9}: reaches random's final test accuracy with {args.grow_fraction:.3g} of its compute on "
                  f"{hit}/{len(seeds)} seeds (at that compute {_ms(got)} % vs random's final {_ms(final)} %; "
                  f"spent {spent} candidate-epochs); random's peak over its run {_ms(peak)} % reached on "
                  f"{sum(g >= p for g, p in zip(got, peak))}/{len(seeds)}")
    if "petridish" in chosen:
        print()
        print("(e) Pareto frontier of (validation error, latency ms: ort-cpu, batch 1, 1 thread): random vs petridish")
        n_dom = 0
        for seed, r, pd in zip(seeds, results["random"], results["petridish"]):
            fr, fp = lat_frontier(r), lat_frontier(pd)
            dom = sum(any(dominates(q, p) for q in fp) for p in fr)
            n_dom += dom == len(fr)
            print(f"  seed {seed}: random frontier {len(fr)} points (val err {fmt_front(fr)}), petridish {len(fp)} "
                  f"(val err {fmt_front(fp)}); {dom}/{len(fr)} of random's points dominated by petridish's")
        print(f"  petridish's frontier dominates random's (every point) on {n_dom}/{len(seeds)} seeds")
    print(f"load    : 1-min load average {load0:.1f} at start, {load1:.1f} at end")
    return 0


def latencies(run: Path, cands) -> dict[int, float]:
    """Median ORT-CPU latency (batch 1, one thread) in ms of every finished candidate of a run."""
    import archir
    import costmodels

    return {c.id: float(costmodels.measure(archir.load(run / c.graph_path), backend="ort-cpu", batch_size=1,
                                           warmup=5, repeats=20, threads=1).median_ms)
            for c in cands if c.status == "done"}


def lat_frontier(res: dict) -> list[tuple[float, float]]:
    """The (val error, latency) Pareto frontier of one run, by latency."""
    from search.pareto import Point, frontier

    by_id = {c.id: c for c in res["cands"]}
    pts = [Point(i, float(by_id[i].metrics["val_error"]), ms) for i, ms in res["latency"].items()]
    return [(p.error, p.cost) for p in frontier(pts)]


def dominates(q: tuple[float, float], p: tuple[float, float]) -> bool:
    """``q`` is no worse than ``p`` in (error, latency) and better in one."""
    return q[0] <= p[0] and q[1] <= p[1] and (q[0] < p[0] or q[1] < p[1])


def fmt_front(front: list[tuple[float, float]]) -> str:
    return ", ".join(f"{e * 100:.1f}%@{ms * 1e3:.0f}us" for e, ms in front)


if __name__ == "__main__":
    sys.exit(main())
