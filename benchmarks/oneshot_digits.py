"""One-shot benchmark: the figures of issue 9 (DARTS, SNAS, PARSEC, ENAS on digits).

It prints, for the chain space (FBNet/ProxylessNAS-style MBConv layers with a skip option) and
the built-in digits dataset:

(a) SNAS with ``lam`` in {0, small, large} (``--lams``; the penalty is latency from the per-op
    latency table for ONNX Runtime CPU, objective ``latency:ort-cpu``): the derived model's
    architecture, its latency estimated by the table (what SNAS optimised), its *measured* ONNX
    Runtime latency (batch 1, one thread: the three derived models measured side by side,
    interleaved, ``--repeats`` runs each, median) and its test accuracy after the standard
    evaluation (fine-tuned from the supernet's weights with the run's training config: option
    ``inherit``, the default). Says whether the measured latency falls as ``lam`` grows.
(b) Peak memory of one search step (one batch of 64; ``search.oneshot.driver_step_peak``, the
    high-water mark of tensor storage allocated in the step) for DARTS, SNAS, PARSEC and ENAS (if
    registered), on the chain and the DARTS spaces, beside training the largest of PARSEC's
    sampled architectures alone (``train_step_peak``).
(c) Accuracy against search cost for every one-shot driver beside random search: each driver
    searches ``--steps`` epochs and its derived model is evaluated -- fine-tuned from the
    supernet's weights (``inherit``, the default; the row also gives the inherited weights'
    validation error before fine-tuning) and, in the row below (``<name>/scr``), the same derived
    architecture trained from scratch (``inherit=false``: ``evaluate_candidate`` without
    ``init_graph``) with the same epochs, so the two starts are compared side by side at equal
    training; random search evaluates
    ``--random`` candidates, and so do NAS-RL (``reinforce``) and PNAS (``pnas``, beam 2), each
    child trained separately (their rows: the best by validation after all of them). Cost =
    search seconds (supernet steps) + evaluation seconds (training the derived / sampled models),
    in wall time on this machine, one thread; accuracy = test accuracy of the best-by-validation
    model (random search: after each candidate).

This is a benchmark that prints figures, not a test: it asserts only that every run recorded
its derived candidate.

Run it::

    python benchmarks/oneshot_digits.py            # the figures: ~5 minutes on one core
    python benchmarks/oneshot_digits.py --tiny     # smoke run: 1 step of 2 batches, seconds
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the checkout

import numpy as np  # noqa: E402
import torch  # noqa: E402

TRAIN = {"epochs": 4, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 3e-4, "schedule": "cosine"}


def _config(strategy: str, steps: int, opts: dict, objective: str, train: dict, seed: int, space_options: dict):
    from search.experiment import ExperimentConfig

    return ExperimentConfig(space="chain", space_options=dict(space_options), strategy=strategy,
                            strategy_options=opts, objective=objective, budget=f"{steps}c", seed=seed,
                            train=dict(train))


def _run(cfg, out: Path):
    """Run one search; returns (summary, search seconds, candidates)."""
    from search.experiment import run_search
    from search.store import Store

    step_s: list[float] = []
    t = [time.perf_counter()]

    def on_step(driver, figures):  # noqa: ARG001
        now = time.perf_counter()
        step_s.append(now - t[0])
        t[0] = now

    from search.oneshot import ONESHOT, run_oneshot

    if cfg.strategy in ONESHOT:
        s = run_oneshot(cfg, out, on_step=on_step)
    else:
        s = run_search(cfg, out)
    with Store.open(out) as st:
        cands = st.candidates()
    return s, sum(step_s), cands


def snas_lambdas(lams: Sequence[float], steps: int, opts: dict, train: dict, seed: int, space_options: dict,
                 root: Path, repeats: int) -> list[dict]:
    import archir
    import costmodels

    rows = []
    table = root / "latency_table.sqlite"
    for lam in lams:
        cfg = _config("snas", steps, {**opts, "lam": lam, "table": str(table)}, "latency:ort-cpu", train, seed,
                      space_options)
        s, search_s, cands = _run(cfg, root / f"snas_lam{lam:g}")
        (c,) = cands
        assert c.status == "done" and c.op == "derive:snas", (c.status, c.error)
        g = archir.load(root / f"snas_lam{lam:g}" / c.graph_path)
        with costmodels.LatencyTable(table, "ort-cpu", threads=1, statistic="min", warmup=3, repeats=15) as t:
            est = t.estimate(g)
        rows.append({"lam": lam, "graph": g, "cand": c, "est_ms": est, "search_s": search_s})
    # measured side by side: interleaved rounds, so load on the machine hits all three alike
    meds: list[list[float]] = [[] for _ in rows]
    for _ in range(5):
        for i, r in enumerate(rows):
            lat = costmodels.measure(r["graph"], backend="ort-cpu", batch_size=1, threads=1, warmup=5,
                                     repeats=max(1, repeats // 5))
            meds[i].append(lat.median_ms)
    for r, m in zip(rows, meds):
        r["ort_ms"] = float(np.median(m))
    return rows


def memory(names: Sequence[str], tiny: bool) -> list[tuple[str, str, int]]:
    from search.data import load_dataset
    from search.experiment import ExperimentConfig
    from search.oneshot import ONESHOT, driver_step_peak, train_step_peak
    from search.spaces import get_space

    ds = load_dataset("digits")
    spaces = [("chain", get_space("chain", layers=2 if tiny else 4, input_shape=ds.input_shape,
                                  num_classes=ds.num_classes))]
    spaces.append(("darts", get_space("darts", cells=1 if tiny else 3, channels=4 if tiny else 8,
                                      input_shape=ds.input_shape, num_classes=ds.num_classes)))
    rows = []
    for label, space in spaces:
        for name in names:
            torch.manual_seed(0)
            drv = ONESHOT[name](space, ds, ExperimentConfig(), 0)
            rows.append((label, name, driver_step_peak(drv)))
            if name == "parsec":
                x, y = drv.x_train[:64], drv.y_train[:64]
                single = max(train_step_peak(drv.plain_graph(a), x, y) for a in drv.last_archs)
                rows.append((label, "one sampled arch", single))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6, help="search epochs per one-shot run (default 6)")
    ap.add_argument("--random", type=int, default=8, help="random search candidates (default 8)")
    ap.add_argument("--lams", default="0,0.1,1", help="SNAS lambdas (default 0,0.1,1)")
    ap.add_argument("--epochs", type=int, default=4, help="training epochs of each evaluated model (default 4)")
    ap.add_argument("--repeats", type=int, default=200, help="ORT runs per derived model in (a) (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="smoke run: 1 step of 2 batches, 1-epoch evaluation")
    ap.add_argument("--keep", default=None, metavar="DIR", help="keep the run folders under DIR")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from search.oneshot import ONESHOT

    steps, n_random = (1, 2) if args.tiny else (args.steps, args.random)
    train = {**TRAIN, "epochs": 1 if args.tiny else args.epochs}
    opts = {"max_batches": 2} if args.tiny else {}
    space_options = {"layers": 2} if args.tiny else {}
    lams = [float(v) for v in args.lams.split(",")]
    drivers = [n for n in ("darts", "snas", "parsec", "enas") if n in ONESHOT]
    drivers += sorted(n for n in ONESHOT if n not in drivers)
    cmd = "python benchmarks/oneshot_digits.py" + ("" if argv is None else "".join(" " + shlex.quote(a)
                                                                                for a in argv))
    print(f"command : {cmd}")
    print(f"machine : {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, 1 thread")
    print(f"setup   : chain space {space_options or '(4 layers)'}, digits, {steps} search steps per one-shot run "
          f"{opts or '(full epochs)'}, evaluated models trained {train['epochs']} epochs, seed {args.seed}")
    with tempfile.TemporaryDirectory(prefix="oneshot-bench-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)

        print("\n(a) SNAS, latency penalty from the ort-cpu latency table: lambda against the derived model")
        rows = snas_lambdas(lams, steps, opts, train, args.seed, space_options, root, 10 if args.tiny else
                            args.repeats)
        print(f"  {'lambda':>6} | {'table est ms':>12} | {'ORT ms':>8} | {'test acc':>8} | {'MACs':>9} | architecture")
        from search.spaces import get_space

        space = get_space("chain", input_shape=(1, 8, 8), num_classes=10, **space_options)
        for r in rows:
            c = r["cand"]
            print(f"  {r['lam']:>6g} | {r['est_ms']:>12.4f} | {r['ort_ms']:>8.4f} | "
                  f"{1 - c.metrics['test_error']:>8.3f} | {int(c.costs['macs']):>9,} | {space.describe(c.decisions)}")
        lat = [r["ort_ms"] for r in rows]
        falls = all(a > b for a, b in zip(lat, lat[1:]))
        print(f"  measured latency falls as lambda grows: {'yes' if falls else 'NO'} "
              f"({' > '.join(f'{v:.4f}' for v in lat)} ms)")

        print("\n(b) peak memory of one search step (batch 64), MB")
        for label, name, peak in memory(drivers, args.tiny):
            print(f"  {label:<6} {name:<17} {peak / 1e6:>8.2f}")

        print("\n(c) test accuracy against search cost (wall s, one thread)")
        print(f"  {'method':<10} | {'search s':>8} | {'eval s':>7} | {'total s':>7} | {'test acc':>8} | {'val err':>7}"
              " | start of the evaluated model")
        from search.experiment import candidate_task, evaluate_candidate

        for name in drivers:
            cfg = _config(name, steps, dict(opts), "error", train, args.seed, space_options)
            s, search_s, cands = _run(cfg, root / f"c_{name}")
            (c,) = cands
            assert c.status == "done" and c.op == f"derive:{name}", (name, c.status, c.error)
            assert c.metrics.get("inherited") == 1, (name, c.metrics)
            ev = c.timings.get("total_s", 0.0)
            print(f"  {name:<10} | {search_s:>8.1f} | {ev:>7.1f} | {search_s + ev:>7.1f} | "
                  f"{1 - c.metrics['test_error']:>8.3f} | {c.metrics['val_error']:>7.3f} | supernet weights "
                  f"(val err {c.metrics['inherited_val_error']:.3f} before fine-tuning)")
            # the same derived architecture from scratch (what inherit=false records), same training config
            full_opts = {**space_options, "input_shape": (1, 8, 8), "num_classes": 10}
            with torch.random.fork_rng(devices=[]):
                res = evaluate_candidate(candidate_task(cfg, full_opts, c, None))
            assert res["status"] == "ok" and "inherited" not in res["metrics"], (name, res["reason"])
            m, ev = res["metrics"], res["timings"]["total_s"]
            print(f"  {name + '/scr':<10} | {search_s:>8.1f} | {ev:>7.1f} | {search_s + ev:>7.1f} | "
                  f"{1 - m['test_error']:>8.3f} | {m['val_error']:>7.3f} | from scratch (inherit=false)")
        from search.experiment import ExperimentConfig

        cfg = ExperimentConfig(space="chain", space_options=dict(space_options), strategy="random",
                               budget=f"{n_random}c", seed=args.seed, train=dict(train), round_size=1)
        _, _, cands = _run(cfg, root / "c_random")
        assert len(cands) == n_random
        spent, best = 0.0, None
        for c in cands:
            spent += c.timings.get("total_s", 0.0)
            if c.status == "done" and (best is None or c.metrics["val_error"] < best.metrics["val_error"]):
                best = c
            if best is not None:
                print(f"  {'random@' + str(c.id + 1):<10} | {0.0:>8.1f} | {spent:>7.1f} | {spent:>7.1f} | "
                      f"{1 - best.metrics['test_error']:>8.3f} | {best.metrics['val_error']:>7.3f}")
        # the ask/tell controller and surrogate methods with random search's candidate budget (every child
        # trained separately): NAS-RL's REINFORCE controller, and PNAS with a beam of 2 (4 layers x 2 = 8
        # candidates reach full-size networks)
        for name, sopts in (("reinforce", {}), ("pnas", {"beam": 2, "ensemble": 1} if args.tiny else {"beam": 2})):
            cfg = ExperimentConfig(space="chain", space_options=dict(space_options), strategy=name,
                                   strategy_options=sopts, budget=f"{n_random}c", seed=args.seed, train=dict(train),
                                   round_size=2)
            _, _, cands = _run(cfg, root / f"c_{name}")
            assert len(cands) == n_random
            done = [c for c in cands if c.status == "done"]
            spent = sum(c.timings.get("total_s", 0.0) for c in cands)
            best = min(done, key=lambda c: (c.metrics["val_error"], c.id))
            print(f"  {name:<10} | {0.0:>8.1f} | {spent:>7.1f} | {spent:>7.1f} | "
                  f"{1 - best.metrics['test_error']:>8.3f} | {best.metrics['val_error']:>7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
