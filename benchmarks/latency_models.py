"""Latency-model benchmark (issue 6): how well each estimate ranks and predicts measured latency.

Builds random networks from two search spaces with the public ``archir.Graph`` API (the
builders are below, in this file):

- a **chain space** in the style of FBNet / ProxylessNAS: a stem, five stages of inverted
  residual blocks (1x1 expand, kxk depthwise, 1x1 project, residual add where shapes allow);
  per layer a kernel of 3/5/7, an expansion of 1/3/6 or *skip* (the layer is left out); per
  stage a width and an activation (relu6 or hardswish); input resolution 64/96/128;
- a **DARTS-like cell space**: a stem, 3-8 cells (reductions at 1/3 and 2/3) of four nodes,
  each the sum of two edges drawn from DARTS' ops (sep_conv 3x3/5x5, dil_conv 3x3/5x5,
  max/avg pool 3x3, skip_connect; a factorised reduce on strided skips), one random normal and
  one random reduction genotype per network, 8-24 channels.

Every network is measured on ONNX Runtime CPU (``costmodels.measure``, ``--threads`` intra-op
threads, batch 1) in ``--rounds`` rounds; each round visits all networks in a new random
order (so load from other processes spreads over all of them) and records the median of
``--repeats`` timed runs; a network's latency is the median over rounds. The networks are
split per space into a training (70 %) and a held-out (30 %) set, and each estimate is
scored on the held-out set:

- MACs, FLOPs, the roofline bound (``DeviceSpec.probe_cpu()`` with the same thread count) and
  the latency-table sum (``costmodels.LatencyTable``): each times one scale factor fitted on
  the training set (the median of measured / estimate), so that "within +/-10 %" is
  meaningful for counts; the table sum is also shown unscaled;
- ``costmodels.Predictor`` fitted on the training set, without and with the table features.

Metrics: Kendall's tau-b, the share within +/-10 %, MAPE. The *repeatability* line is the
noise floor: the share of networks whose single-round medians lie within +/-10 % of their
final latency (no model can be judged more precisely than the measurements it is scored on).
Goal (issue 6): the Predictor within +/-10 % on >= 95 % of held-out networks, and better
than the table sum and than MACs.

Run it::

    python benchmarks/latency_models.py            # 100 networks per space (a few minutes)
    python benchmarks/latency_models.py --quick    # 20 per space, fewer repeats: a smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

import archir
import costmodels
from archir.cells import add_steps, cell_network, cell_op
from search.spaces.darts import GENOTYPE_OPS
from costmodels import DeviceSpec, LatencyTable, Predictor, count, error_report, kendall_tau, measure, roofline

GOAL_WITHIN_10 = 0.95
STATISTICS = ("min", "median")
TRAIN_SHARE = 0.7

# --------------------------------------------------------------------------- the chain space


def _round8(x: float) -> int:
    return max(8, int(round(x / 8)) * 8)


def _cba(g: archir.Graph, x: str, c: int, name: str, k: int = 1, s: int = 1, groups: int = 1,
         act: str | None = "relu6") -> str:
    h = g.add("conv2d", x, out_channels=c, kernel_size=k, stride=s, padding=k // 2, groups=groups, bias=False,
              name=f"{name}.conv")
    h = g.add("batchnorm2d", h, name=f"{name}.bn")
    return g.add(act, h, name=f"{name}.{act}") if act else h


#: (base width, layers, stride) per stage, MobileNetV2-like at a small scale.
CHAIN_STAGES = ((16, 1, 1), (24, 2, 2), (32, 3, 2), (64, 3, 2), (96, 2, 1))


def chain_net(rng: np.random.Generator, index: int = 0) -> archir.Graph:
    """A random FBNet/ProxylessNAS-style network (see the module docstring)."""
    res = int(rng.choice([64, 96, 128]))
    g = archir.Graph(f"chain{index}")
    h = _cba(g, g.input("x", (3, res, res)), 16, "stem", k=3, s=2, act="relu6")
    arch = [f"r{res}"]
    for si, (base, layers, stride) in enumerate(CHAIN_STAGES):
        c = _round8(base * float(rng.choice([0.75, 1.0, 1.25])))
        act = str(rng.choice(["relu6", "hardswish"]))
        arch.append(f"s{si}:c{c}:{act}")
        for li in range(layers):
            first = li == 0
            if not first and rng.random() < 0.2:
                arch.append("skip")
                continue  # FBNet's "skip": the layer is left out
            k, e = int(rng.choice([3, 5, 7])), int(rng.choice([1, 3, 6]))
            arch.append(f"k{k}e{e}")
            name = f"s{si}.l{li}"
            cin = g.node(h).type.shape[0]
            s = stride if first else 1
            y = h if e == 1 else _cba(g, h, cin * e, f"{name}.expand", act=act)
            y = _cba(g, y, cin * e, f"{name}.dw", k=k, s=s, groups=cin * e, act=act)
            y = _cba(g, y, c, f"{name}.project", act=None)
            h = g.add("add", h, y, name=f"{name}.add") if (s == 1 and cin == c) else y
    h = _cba(g, h, 256, "head.conv", act="relu6")
    h = g.add("flatten", g.add("global_avgpool", h, name="head.pool"), name="head.flatten")
    g.set_outputs(g.add("linear", h, out_features=100, name="head.fc"))
    g.meta["arch"] = " ".join(arch)
    g.init_params(index)
    return g.validate()


# --------------------------------------------------------------------------- the DARTS-like cell space

# the seven ops a selected DARTS edge may use (search.spaces.darts.GENOTYPE_OPS), in this script's draw order
DARTS_OPS = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "max_pool_3x3", "avg_pool_3x3",
             "skip_connect")


assert set(DARTS_OPS) == set(GENOTYPE_OPS)


def _genotype(rng: np.random.Generator) -> list[tuple[tuple[str, int], tuple[str, int]]]:
    """Four nodes, each two (op, input state) edges; state 0/1 are the cell inputs."""
    nodes = []
    for n in range(4):
        picks = rng.choice(n + 2, size=2, replace=n + 2 < 2)
        nodes.append(tuple((str(rng.choice(DARTS_OPS)), int(j)) for j in picks))
    return nodes


def darts_net(rng: np.random.Generator, index: int = 0) -> archir.Graph:
    """A random network of a DARTS-like cell space (see the module docstring): the cell wiring of
    ``archir.cells.cell_network`` with its edge ops (``archir.cells.cell_op``)."""
    cells = int(rng.integers(3, 9))
    c = int(rng.choice([8, 12, 16, 24]))
    normal, reduce = _genotype(rng), _genotype(rng)
    g = archir.Graph(f"darts{index}")

    def node(i: int, red: bool, n: int, states: list[str], ch: int) -> str:
        outs = [add_steps(g, states[j], cell_op(op, ch, 2 if (red and j < 2) else 1), f"cell{i}.n{n}.e{e}")
                for e, (op, j) in enumerate((reduce if red else normal)[n])]
        return g.add("add", *outs, name=f"cell{i}.n{n}.add")

    g.set_outputs(*cell_network(g, g.input("x", (3, 32, 32)), cells=cells, channels=c, classes=10, node=node))
    c_last = c * 2 ** len({cells // 3, 2 * cells // 3})
    g.meta["arch"] = f"cells={cells} C={c_last} normal={normal} reduce={reduce}"
    g.init_params(index)
    return g.validate()


# --------------------------------------------------------------------------- measuring


def measure_all(graphs: list[archir.Graph], args, rng: np.random.Generator, log) -> dict[str, np.ndarray]:
    """Per statistic ("min", "median" of a round's timed runs): an array (rounds, networks) of ms;
    under "iqr", the interquartile range of each round's timed runs (the spread of one measure call)."""
    rounds = {k: np.empty((args.rounds, len(graphs))) for k in STATISTICS + ("iqr",)}
    for r in range(args.rounds):
        t0 = time.perf_counter()
        for i in rng.permutation(len(graphs)):
            lat = measure(graphs[i], backend="ort-cpu", threads=args.threads, warmup=args.warmup,
                          repeats=args.repeats, seed=0)
            rounds["median"][r, i] = lat.median_ms
            rounds["min"][r, i] = min(lat.samples_ms)
            rounds["iqr"][r, i] = lat.iqr_ms
        log(f"round {r + 1}/{args.rounds} measured {len(graphs)} networks in {time.perf_counter() - t0:.1f} s")
    return rounds


def _scaled(est_train, y_train, est_test) -> np.ndarray:
    s = float(np.median(np.asarray(y_train) / np.asarray(est_train)))
    return s * np.asarray(est_test)


def _row(name: str, pred, y) -> tuple[str, ...]:
    r = error_report(pred, y)
    return (name, f"{r.kendall_tau:.3f}", f"{100 * r.within_10:.1f}%", f"{r.mape:.1f}%", f"{r.max_ape:.1f}%")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100, help="networks per space (default 100)")
    p.add_argument("--quick", action="store_true", help="smoke run: 20 networks per space, fewer repeats")
    p.add_argument("--seed", type=int, default=0, help="seed of the networks, the split and the orders")
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (default 1)")
    p.add_argument("--rounds", type=int, default=3, help="measurement rounds per network (default 3)")
    p.add_argument("--repeats", type=int, default=40, help="timed runs per network and round (default 40)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs before each measurement (default 10)")
    p.add_argument("--statistic", choices=STATISTICS, default="min",
                   help="a round's figure of its timed runs: 'min' (default: the run least disturbed by other "
                        "processes) or 'median'; the other one is reported too")
    p.add_argument("--table", type=Path, default=None,
                   help="latency table file to use and keep (default: a temporary one, measured from scratch)")
    p.add_argument("--save-predictor", type=Path, default=None, help="write the fitted predictor (JSON) here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; returns 0 (the goal is reported, not enforced)."""
    args = build_parser().parse_args(argv)
    if args.quick:
        args.n = min(args.n, 20)
        args.rounds = min(args.rounds, 2)
        args.repeats = min(args.repeats, 10)
        args.warmup = min(args.warmup, 2)
    for name in ("n", "threads", "rounds", "repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"latency_models.py: error: --{name} must be >= 1")
    if args.n < 5:
        raise SystemExit("latency_models.py: error: --n must be >= 5 (a train and a held-out split per space)")
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = "python benchmarks/latency_models.py" + ("" if not argv_list else " " + shlex.join(argv_list))
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    notes: list[str] = []
    log = lambda m: print(f"  .. {m}", flush=True)  # noqa: E731

    import onnxruntime as ort
    import torch

    vers = costmodels.versions()
    print("archir latency-model benchmark (issue 6)")
    print(f"command : {command}")
    print(f"machine : {costmodels.cpu_fingerprint()}, {platform.system()} {platform.machine()}")
    print(f"software: python {vers['python']}, numpy {vers['numpy']}, torch {vers['torch']}, onnxruntime "
          f"{ort.__version__}, archir {archir.__version__}")
    print(f"method  : ort-cpu, batch 1, {args.threads} intra-op thread(s), {args.rounds} rounds x (warmup "
          f"{args.warmup}, {args.repeats} timed runs); a network's latency = the median over rounds of each round's "
          f"{args.statistic} (the latency table reads the same statistic of its per-op runs)")
    print(f"load avg: {load_start[0]:.2f} (1-min) at start; other processes share this CPU", flush=True)

    rng = np.random.default_rng(args.seed)
    spaces = {"chain": [chain_net(rng, i) for i in range(args.n)],
              "darts": [darts_net(rng, i) for i in range(args.n)]}
    graphs = spaces["chain"] + spaces["darts"]
    space_of = np.array(["chain"] * args.n + ["darts"] * args.n)
    log(f"built {len(graphs)} networks ({np.mean([len(g) for g in spaces['chain']]):.0f} nodes per chain network, "
        f"{np.mean([len(g) for g in spaces['darts']]):.0f} per DARTS-like one)")

    all_rounds = measure_all(graphs, args, np.random.default_rng(args.seed + 1), log)
    rounds = all_rounds[args.statistic]
    y = np.median(rounds, axis=0)
    other = next(k for k in STATISTICS if k != args.statistic)
    y_other = np.median(all_rounds[other], axis=0)

    split_rng = np.random.default_rng(args.seed + 2)
    test = np.zeros(len(graphs), bool)
    for s in ("chain", "darts"):
        idx = np.flatnonzero(space_of == s)
        test[split_rng.permutation(idx)[: int(round((1 - TRAIN_SHARE) * len(idx)))]] = True
    train = ~test

    # estimates
    macs = np.array([count(g).macs for g in graphs], float)
    flops = np.array([count(g).flops for g in graphs], float)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        cpu = DeviceSpec.probe_cpu(seconds=1.0)
    finally:
        torch.set_num_threads(old_threads)
    roof = np.array([roofline(g, cpu).time_ms for g in graphs])

    tmp = None
    table_path = args.table
    if table_path is None:
        tmp = tempfile.TemporaryDirectory(prefix="archir-lut-")
        table_path = Path(tmp.name) / "latency_table.sqlite"
    t0 = time.perf_counter()
    table = LatencyTable(table_path, "ort-cpu", threads=args.threads, batch_size=1, warmup=args.warmup,
                         repeats=args.repeats, statistic=args.statistic)
    n_before = len(table)
    lut = np.array([table.estimate(g) for g in graphs])
    log(f"latency table: {len(table) - n_before} entries measured ({len(table)} in the table) in "
        f"{time.perf_counter() - t0:.1f} s")

    gtr = [g for g, m in zip(graphs, train) if m]
    gte = [g for g, m in zip(graphs, test) if m]
    t0 = time.perf_counter()
    pred_plain = Predictor().fit(gtr, y[train])
    pred_table = Predictor(table=table).fit(gtr, y[train])
    p_plain = pred_plain.predict_many(gte)
    p_table = pred_table.predict_many(gte)
    log(f"predictors fitted and evaluated in {time.perf_counter() - t0:.1f} s "
        f"(ridge alpha {pred_plain.alpha_:.1g} without the table, {pred_table.alpha_:.1g} with it)")
    if args.save_predictor is not None:
        pred_table.save(args.save_predictor)
        notes.append(f"predictor with table features saved to {args.save_predictor} (load it with that table)")

    yte = y[test]
    rows = [
        _row("MACs x scale", _scaled(macs[train], y[train], macs[test]), yte),
        _row("FLOPs x scale", _scaled(flops[train], y[train], flops[test]), yte),
        _row("roofline (probed CPU) x scale", _scaled(roof[train], y[train], roof[test]), yte),
        _row("latency table sum", lut[test], yte),
        _row("latency table sum x scale", _scaled(lut[train], y[train], lut[test]), yte),
        _row("Predictor (IR features)", p_plain, yte),
        _row("Predictor (IR + table features)", p_table, yte),
    ]
    per_space = []
    for s in ("chain", "darts"):
        m = space_of[test] == s
        per_space.append(_row(f"  Predictor (IR + table), {s} only", p_table[m], yte[m]))
        per_space.append(_row(f"  latency table sum x scale, {s} only",
                              _scaled(lut[train], y[train], lut[test])[m], yte[m]))

    # the same with the other statistic as "the latency" (the table reads that statistic too)
    table_o = LatencyTable(table_path, "ort-cpu", threads=args.threads, batch_size=1, warmup=args.warmup,
                           repeats=args.repeats, statistic=other)
    lut_o = np.array([table_o.estimate(g) for g in graphs])
    yo_te = y_other[test]
    rows_other = [
        _row(f"MACs x scale [{other}]", _scaled(macs[train], y_other[train], macs[test]), yo_te),
        _row(f"latency table sum x scale [{other}]", _scaled(lut_o[train], y_other[train], lut_o[test]), yo_te),
        _row(f"Predictor (IR features) [{other}]", Predictor().fit(gtr, y_other[train]).predict_many(gte), yo_te),
        _row(f"Predictor (IR + table features) [{other}]",
             Predictor(table=table_o).fit(gtr, y_other[train]).predict_many(gte), yo_te),
    ]
    load_end = os.getloadavg()

    def repeatability(r: np.ndarray, final: np.ndarray) -> str:
        dev = np.abs(r / final[None, :] - 1.0)
        per_round = ", ".join(f"{100 * float(np.mean(d <= 0.10)):.0f}%" for d in dev)
        worst = 100 * float(np.median(dev.max(axis=0)))
        return (f"{100 * float(np.mean(dev <= 0.10)):.1f}% of single rounds within +/-10% of the final latency "
                f"(per round: {per_round}), median worst-round deviation {worst:.1f}%")

    print()
    print(f"networks: {args.n} per space ({len(graphs)} total); {int(train.sum())} train / {int(test.sum())} held out "
          f"(split per space); measured latency {y.min():.3f} .. {y.max():.3f} ms (median {np.median(y):.3f})")
    print(f"roofline device: {cpu.name}: {cpu.peak_flops / 1e9:.1f} GFLOP/s, {cpu.mem_bandwidth / 1e9:.1f} GB/s")
    print(f"repeatability [{args.statistic}]: {repeatability(rounds, y)}")
    print(f"repeatability [{other}]: {repeatability(all_rounds[other], y_other)}")
    rel_iqr = all_rounds["iqr"] / all_rounds["median"]
    print(f"spread of one measure call ({args.repeats} timed runs): IQR / median = {100 * np.median(rel_iqr):.1f}% "
          f"(median over networks and rounds), {100 * np.percentile(rel_iqr, 90):.1f}% at the 90th percentile")
    print("  (the noise floor: no estimate can be judged more precisely than the measurements it is scored on)")
    print()
    header = (f"estimate (held-out networks) [{args.statistic}]", "Kendall tau", "within +/-10%", "MAPE", "max APE")
    table_rows = [header] + rows + per_space + rows_other
    widths = [max(len(r[i]) for r in table_rows) for i in range(len(header))]
    line = lambda r: " | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    print(line(header))
    print("-+-".join("-" * w for w in widths))
    for r in rows + per_space:
        print(line(r))
    print(f"-- the same scored against the {other} statistic (predictors refitted on it):")
    for r in rows_other:
        print(line(r))
    print()
    rb = error_report(p_table, yte)
    r_lut = error_report(_scaled(lut[train], y[train], lut[test]), yte)
    r_macs = error_report(_scaled(macs[train], y[train], macs[test]), yte)
    ok1 = rb.within_10 >= GOAL_WITHIN_10
    ok2 = rb.within_10 > max(r_lut.within_10, r_macs.within_10) and rb.mape < min(r_lut.mape, r_macs.mape)
    print(f"goal: Predictor (IR + table features) within +/-10% on >= {100 * GOAL_WITHIN_10:.0f}% of held-out "
          f"networks: {100 * rb.within_10:.1f}% -> {'PASS' if ok1 else 'FAIL'}")
    print(f"goal: Predictor better than the table sum (x scale) and MACs (x scale) in within +/-10% and MAPE: "
          f"{'PASS' if ok2 else 'FAIL'}")
    print(f"Kendall tau on all {len(graphs)} networks, MACs vs latency: {kendall_tau(macs, y):.3f}; "
          f"table sum vs latency: {kendall_tau(lut, y):.3f}")
    for n in notes:
        print(f"note: {n}")
    print(f"load avg: {load_end[0]:.2f} (1-min) at end; total time {time.perf_counter() - t_start:.1f} s")
    table.close()
    table_o.close()
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
