"""Worker utilisation of asynchronous vs synchronous scheduling (issue 16).

A search's candidates take very different times to train (a deep, wide network next to a
shallow one), and with synchronous rounds every worker waits for the slowest candidate of its
round. This benchmark runs the same search (random search on the NAS-Bench-201 space, whose
candidates need no training here) with an evaluator that only *sleeps*, for a heavy-tailed
time drawn from the candidate's seed (``0.1 s * (1 + Pareto(1.5))``, capped at 3 s: mean about
0.3 s, one candidate in ten over 0.5 s), on the process executor with 2, 4 and 8 workers, once in
asynchronous mode (``round_size`` = workers in flight, the default) and once in synchronous
rounds of the same size (``--sync``). The candidate ids, hence seeds, hence sleep times are the
same in both modes.

Busy share = the time workers spend in candidates / (workers x the span), with each candidate's
start and end taken in the worker. The span starts when every worker has started its first
candidate (the pool's start-up costs the same in both modes and is left out). *Steady* ends when
the last candidate starts: the run is in its steady state, and an idle worker there is the
scheduler's doing. *Whole* ends when the last candidate ends, so it includes the drain (the budget
is spent and the last, possibly long, candidates finish while other workers have nothing to do:
in both modes). Goal: >= 90 % asynchronous (steady state).

    python benchmarks/async_utilization.py            # 2, 4, 8 workers, 16 candidates per worker
    python benchmarks/async_utilization.py --quick    # 2 workers, 4 per worker (the smoke test)

The scheduler overhead per candidate (serial executor, table evaluator) is printed by
``benchmarks/nb201_table.py``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo's packages before benchmarks/ (benchmarks/passes.py would shadow passes)

CAP_S = 3.0


def sleep_time(seed: int, scale: float = 0.1) -> float:
    """The heavy-tailed time a candidate of this seed takes (seconds)."""
    import numpy as np

    return min(CAP_S, scale * (1.0 + float(np.random.default_rng(seed).pareto(1.5))))


def sleepy_eval(request):
    """A callable evaluator (``search.evaluators.EvalRequest``) that sleeps for ``sleep_time(seed)``."""
    t0 = time.time()
    time.sleep(sleep_time(request.seed, float(os.environ.get("ARCHIR_SLEEP_SCALE", "0.1"))))
    t1 = time.time()
    return {"val_error": (request.seed % 1000) / 1000.0, "t_start": t0, "t_end": t1, "pid": float(os.getpid())}


def busy_share(cands, workers: int) -> tuple[float, float, float]:
    """(steady busy share, whole-run busy share, whole span s) of a run's evaluated candidates."""
    rows = [(c.metrics["t_start"], c.metrics["t_end"], c.metrics["pid"]) for c in cands
            if c.status == "done" and c.cache_of is None]
    first: dict[float, float] = {}
    for s, _, pid in rows:
        first[pid] = min(first.get(pid, s), s)
    t0 = max(first.values()) if len(first) == workers else min(s for s, _, _ in rows)

    def share(t1: float) -> float:
        return sum(max(0.0, min(e, t1) - max(s, t0)) for s, e, _ in rows) / (workers * (t1 - t0))

    last_start, last_end = max(s for s, _, _ in rows), max(e for _, e, _ in rows)
    return share(last_start), share(last_end), last_end - t0


def run(workers: int, per_worker: int, scheduling: str, out: Path) -> dict:
    from search.experiment import ExperimentConfig, run_search
    from search.store import Store

    fn = importlib.import_module("benchmarks.async_utilization").sleepy_eval  # importable by name in the workers
    cfg = ExperimentConfig(space="nb201", strategy="random", budget=f"{workers * per_worker}c", round_size=workers,
                           seed=0, objective="error", scheduling=scheduling)
    t = time.perf_counter()
    s = run_search(cfg, out, executor="process", executor_options={"workers": workers}, evaluator=fn)
    wall = time.perf_counter() - t
    with Store.open(out) as st:
        cands = st.candidates()
    steady, whole, span = busy_share(cands, workers)
    return {"steady": steady, "whole": whole, "span": span, "wall": wall, "done": s.counts["done"],
            "sleep": sum(c.metrics["t_end"] - c.metrics["t_start"] for c in cands if c.status == "done")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="2,4,8", help="worker counts (default 2,4,8)")
    p.add_argument("--per-worker", type=int, default=16, help="candidates per worker (default 16)")
    p.add_argument("--quick", action="store_true", help="2 workers, 4 candidates each")
    args = p.parse_args(argv)
    counts = [2] if args.quick else [int(w) for w in args.workers.split(",")]
    per = 4 if args.quick else args.per_worker
    print(f"busy share of the workers, process executor, sleep 0.1 s x (1 + Pareto(1.5)) capped at {CAP_S:g} s, "
          f"{per} candidates per worker; os.cpu_count() = {os.cpu_count()}")
    print(f"{'workers':>7} | {'async steady':>12} | {'sync steady':>11} | {'async whole':>11} | {'sync whole':>10} | "
          f"{'async span s':>12} | {'sync span s':>11} | goal async steady >= 90 %")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for w in counts:
            a = run(w, per, "async", Path(tmp) / f"a{w}")
            s = run(w, per, "sync", Path(tmp) / f"s{w}")
            assert a["done"] == s["done"] == w * per, (a, s)
            met = a["steady"] >= 0.90
            ok &= met
            print(f"{w:>7} | {100 * a['steady']:11.1f}% | {100 * s['steady']:10.1f}% | {100 * a['whole']:10.1f}% | "
                  f"{100 * s['whole']:9.1f}% | {a['span']:12.2f} | {s['span']:11.2f} | {'met' if met else 'MISSED'}")
    print("async: round_size = workers candidates in flight, a new one asked for whenever one finishes; "
          "sync: rounds of that size, each waiting for its slowest candidate")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
