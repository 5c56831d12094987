"""NAS-Bench-201 tabular benchmark: random, evolution, REINFORCE and PNAS on a table of trained cells (issue 16).

Every strategy runs through the real run loop -- ``search.experiment.run_search`` on the ``nb201``
space with the table evaluator (``evaluator="table:FILE.csv"``), the serial executor and the SQLite
store, in a temporary folder -- for ``--seeds`` experiment seeds of ``--queries`` candidates each
(one candidate per round: the asynchronous, one-at-a-time search of the papers). The search sees the
table's validation accuracy (``--metric``, default ``cifar10_val``); a run's result is the test
accuracy (``--test-metric``, default ``cifar10_test``) of its best-by-validation candidate. It prints

- per strategy: the mean +/- standard deviation (over seeds) of that test accuracy, its median and the
  share of seeds that found the table's best-by-validation cell;
- the table's own best-by-validation cell and its test accuracy (the ceiling of this protocol);
- the goals of issue 16: evolution >= 88.75 and the best strategy >= 88.85 (at 200 queries, on
  NAS-Bench-201's 12-epoch CIFAR-10 table), met or missed;
- the scheduler overhead per candidate: the run loop's wall time per candidate less the evaluator's
  own time (asking the strategy, the store's writes, the progress bookkeeping), per strategy, and for
  random search once more in the system's temporary folder on disk when the runs used a RAM disk
  (the store commits with ``synchronous=FULL``, so on a disk each commit waits for an fsync).

Options of the strategies are their defaults except evolution's, which are the textbook aging
evolution of NAS-Bench-201's baselines (population 20, sample 5; ``--population``/``--sample``; a repeated
child is mutated again, archir's default: ``--retries 0`` is the textbook algorithm), and PNAS's
surrogate, trained 100 Adam steps with 2 ensemble members instead of 300 and 3 (``--pnas-steps``,
``--pnas-ensemble``) so that 50 seeds take minutes, not most of an hour (the surrogate's fits are
PNAS's whole cost here).

Run it::

    python benchmarks/nb201_table.py ../shared/benchmarks/nb201_cifar10_12epoch.csv            # 50 seeds x 200
    python benchmarks/nb201_table.py FILE.csv --seeds 5 --queries 50 --strategies random,evolution

The table is an argument; nothing here reads a fixed path.
"""

from __future__ import annotations

import argparse
import csv
import math
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the checkout

STRATEGIES = ("random", "evolution", "reinforce", "pnas")
GOAL_EVOLUTION, GOAL_BEST = 88.75, 88.85
#: measured on the same table with a textbook aging evolution (P 20, S 5) and random search, 200 queries
REFERENCE = {"random": (88.32, 0.38), "evolution": (88.77, 0.34)}


def table_best(path: Path, metric: str, test_metric: str) -> tuple[str, float, float, int]:
    """The table's best-by-``metric`` row: (architecture, its metric, its test metric, rows)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    best = max(rows, key=lambda r: float(r[metric]))
    key = "cellstr" if "cellstr" in best else "arch"
    return best[key], float(best[metric]), float(best[test_metric]), len(rows)


def run_one(table: Path, strategy: str, seed: int, queries: int, work: Path, options: dict, metric: str,
            test_metric: str) -> dict:
    """One search; returns the best-by-validation candidate's figures and the run's timings."""
    from search.experiment import ExperimentConfig, run_search
    from search.store import Store

    cfg = ExperimentConfig(space="nb201", strategy=strategy, strategy_options=dict(options), budget=f"{queries}c",
                           round_size=1, seed=seed, objective="error", evaluator=f"table:{table}",
                           evaluator_options={"metric": metric, "test_metric": test_metric})
    run = Path(tempfile.mkdtemp(prefix=f"nb201-{strategy}-{seed}-", dir=work))
    t0 = time.perf_counter()
    s = run_search(cfg, run / "run", executor="serial")
    wall = time.perf_counter() - t0
    with Store.open(run / "run") as st:
        cands = st.candidates()
    # the budget counts table queries; a repeat of an architecture is a cache hit, not a query (de-duplication)
    queried = [c for c in cands if c.cache_of is None]
    assert len(queried) == queries and all(c.status == "done" for c in cands), (strategy, seed, s.counts)
    evaluate = sum(float(c.timings.get("total_s", 0.0)) for c in cands)
    b = s.best
    return {"test": 100.0 * b.metrics["test_acc"], "val": 100.0 * b.metrics["val_acc"], "arch": b.decisions,
            "wall": wall, "overhead_ms": 1000.0 * (wall - evaluate) / len(cands),
            "evaluate_ms": 1000.0 * evaluate / queries, "distinct": s.distinct, "asked": len(cands)}


def _fmt(xs: Sequence[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):6.2f} +/- {sd:4.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("table", type=Path, help="the NAS-Bench-201 CSV (columns cellstr, cifar10_val, cifar10_test)")
    p.add_argument("--seeds", type=int, default=50, help="experiment seeds per strategy (default 50)")
    p.add_argument("--queries", type=int, default=200, help="candidates (table queries) per run (default 200)")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma-separated (default {','.join(STRATEGIES)})")
    p.add_argument("--population", type=int, default=20, help="evolution: population (default 20, textbook REA)")
    p.add_argument("--sample", type=int, default=5, help="evolution: tournament sample (default 5, textbook REA)")
    p.add_argument("--retries", type=int, default=20,
                   help="evolution: re-mutations of a repeated child (default 20; 0: textbook REA)")
    p.add_argument("--pnas-steps", type=int, default=100, help="pnas: surrogate Adam steps per fit (default 100)")
    p.add_argument("--pnas-ensemble", type=int, default=2, help="pnas: surrogate ensemble members (default 2)")
    p.add_argument("--metric", default="cifar10_val", help="the column the search sees (default cifar10_val)")
    p.add_argument("--test-metric", default="cifar10_test", help="the column reported (default cifar10_test)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the run folders go (default: /dev/shm when there is one, else the system temp)")
    p.add_argument("--no-disk-check", action="store_true", help="skip the overhead run in the system temp folder")
    a = p.parse_args(argv)
    strategies = [s.strip() for s in a.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or a.seeds < 1 or a.queries < 1:
        p.error(f"unknown strategies {unknown}" if unknown else "--seeds and --queries must be >= 1")
    if not a.table.is_file():
        p.error(f"{a.table}: no such file")
    shm = Path("/dev/shm")
    base = a.workdir or (shm if shm.is_dir() else Path(tempfile.gettempdir()))
    options = {"evolution": {"population": a.population, "sample": a.sample, "retries": a.retries},
               "pnas": {"surrogate_steps": a.pnas_steps, "ensemble": a.pnas_ensemble}}
    import torch

    torch.set_num_threads(1)  # the controllers and the surrogate are tiny; one thread, as in a worker
    print("command :", "python benchmarks/nb201_table.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:])))
    arch, bval, btest, n = table_best(a.table, a.metric, a.test_metric)
    print(f"table   : {a.table} ({n} rows); best by {a.metric}: {bval:.2f} -> {a.test_metric} {btest:.2f} ({arch})")
    print(f"runs    : {a.seeds} seeds x {a.queries} queries per strategy, round size 1, serial executor, "
          f"run folders under {base}; evolution population {a.population}, sample {a.sample}, retries {a.retries}; "
          f"pnas surrogate {a.pnas_steps} steps x {a.pnas_ensemble} members")
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="nb201-bench-", dir=base) as work:
        for s in strategies:
            t0 = time.perf_counter()
            results[s] = [run_one(a.table, s, seed, a.queries, Path(work), options.get(s, {}), a.metric,
                                  a.test_metric) for seed in range(a.seeds)]
            print(f"  {s:<9} done in {time.perf_counter() - t0:6.1f} s", flush=True)
    disk = None
    if not a.no_disk_check and base == shm:
        with tempfile.TemporaryDirectory(prefix="nb201-bench-disk-") as work:
            disk = run_one(a.table, "random", 0, a.queries, Path(work), {}, a.metric, a.test_metric)

    print(f"\ntest accuracy (%) of the best-by-validation architecture after {a.queries} queries "
          f"(mean +/- sd over {a.seeds} seeds)")
    print(f"  {'strategy':<9} | {'test acc':>15} | {'median':>6} | {'found best':>10} | {'distinct':>8} | "
          f"{'overhead ms/cand':>16} | reference")
    means = {}
    for s, rs in results.items():
        tests = [r["test"] for r in rs]
        means[s] = statistics.fmean(tests)
        found = sum(abs(r["val"] - bval) < 1e-6 for r in rs)
        ref = REFERENCE.get(s)
        print(f"  {s:<9} | {_fmt(tests):>15} | {statistics.median(tests):6.2f} | {found:>4}/{len(rs):<5} | "
              f"{statistics.fmean(r['distinct'] for r in rs):8.1f} | "
              f"{statistics.fmean(r['overhead_ms'] for r in rs):16.2f} | "
              + (f"{ref[0]:.2f} +/- {ref[1]:.2f}" if ref else "-"))
    print(f"  {'table':<9} | {btest:6.2f}          | best by validation (the ceiling of this protocol)")
    if a.queries == 200:
        if "evolution" in means:
            ok = means["evolution"] >= GOAL_EVOLUTION
            print(f"goal    : evolution >= {GOAL_EVOLUTION}: {means['evolution']:.2f} -> {'met' if ok else 'MISSED'}")
        best = max(means, key=means.get)
        ok = means[best] >= GOAL_BEST
        print(f"goal    : best strategy >= {GOAL_BEST}: {best} {means[best]:.2f} -> {'met' if ok else 'MISSED'}")
    else:
        print(f"goal    : the goals are set at 200 queries (this run: {a.queries}); not judged")
    ev = statistics.fmean(r["evaluate_ms"] for rs in results.values() for r in rs)
    print(f"overhead: run-loop wall per candidate less the evaluator's time ({ev:.3f} ms per lookup), "
          f"store in {base}: " + ", ".join(f"{s} {statistics.fmean(r['overhead_ms'] for r in rs):.2f} ms"
                                            for s, rs in results.items()))
    if disk is not None:
        print(f"overhead: random search with the store on disk ({tempfile.gettempdir()}): "
              f"{disk['overhead_ms']:.2f} ms per candidate (SQLite synchronous=FULL: an fsync per commit)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
