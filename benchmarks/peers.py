"""archir against its peers on real models (issue 19): ``to_onnx`` against torch's two ONNX exporters.

For each model (torchvision's resnet18, resnet50, efficientnet_b0, densenet121, mobilenet_v2
imported with ``from_torch`` at 3x224x224, and DARTS_V2 built at 20 cells x 36 channels on
3x32x32) it prints, measured side by side in one run:

- ``to_onnx(g)`` with its checker on, of a fresh copy of the graph with the checker's cache
  cleared before each call (the cost of a graph lowered for the first time: its structure
  validated in full and checked in full; its weights are shared with ``g``, which ``from_torch``
  validated, so they are known free of NaN/Inf, as after any pass), and again warm (the same graph lowered again: its validation and check are
  remembered, so what is left is building the protobuf message and copying the weights in);
- ``torch.onnx.export(dynamo=False)`` (TorchScript) and ``torch.onnx.export(dynamo=True)`` of the
  ``to_fx`` module of the same graph, into memory;
- the copy floor: the time to copy the model's weight bytes once (``ndarray.tobytes`` of every
  weight), which no exporter that returns an in-memory model can beat;
- ``pb copy``: protobuf's own ``ModelProto.CopyFrom`` of the finished model, the time protobuf's
  C code needs to build this message (every node, value and weight) with no Python in the loop:
  how far the lowering's per-node Python cost is from what protobuf itself costs;
- ``to_fx(g)``: building the trainable ``GraphModule`` (modules are made on the meta device, so
  nothing is randomly initialised only to be overwritten; the weights are then copied in once),
  and its ratio to the same copy floor;
- the ratios, against the goals: ``to_onnx`` >= 10x faster than TorchScript, >= 100x than dynamo,
  and within 2x of the copy floor.

Medians of interleaved calls (archir's calls run between the peers' so both sample the same
minutes of a shared machine).

``--prune`` prints the second table instead: structured pruning against Torch-Pruning (the peer;
skipped, saying so, when ``torch_pruning`` is not installed). For each torchvision model and ratio
(0.5 and 0.3 by default): Torch-Pruning's ``MagnitudePruner`` (L1 importance, per-layer ratio,
the classifier kept) on the torch model, and ``passes.prune_channels(ratio=, criterion="l1")`` on
its ``from_torch`` import; MACs and params kept (``costmodels.count``; the peer's model imported
too, so both are counted alike), whether every conv kept the same number of channels, and ONNX
Runtime CPU latency (one thread, batch 1) of archir's ``to_onnx`` against the peer's own
``torch.onnx.export(dynamo=False)`` -- paired rounds (alternating which side goes first), each
latency the fastest run over all rounds: on a shared machine load only ever adds time, so the
fastest run estimates the unloaded latency best (medians moved by +-5 % between two identical
networks in a run beside other jobs). Goal: archir's pruned network at or below the peer's
latency (ratio <= 1.02) at equal or lower MACs.

    python benchmarks/peers.py                       # every model (several minutes: dynamo is slow)
    python benchmarks/peers.py --models resnet18 --no-dynamo --repeats 3
    python benchmarks/peers.py --prune --models resnet18 mobilenet_v2 efficientnet_b0 densenet121
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import onnx  # noqa: E402
import torch  # noqa: E402

from archir.frontend import from_torch  # noqa: E402
from archir.lower import onnx as lower_onnx  # noqa: E402
from archir.lower import to_fx, to_onnx  # noqa: E402

MODELS = ["resnet18", "resnet50", "efficientnet_b0", "densenet121", "mobilenet_v2", "darts_v2"]


def build(name: str):
    """(graph, example input) of a model by name."""
    if name == "darts_v2":
        from search.spaces.darts import DartsSpace
        from search.spaces.genotypes import DARTS_V2

        space = DartsSpace.for_genotype(DARTS_V2)
        return space.build(space.from_genotype(DARTS_V2), cells=20, channels=36), torch.randn(1, 3, 32, 32)
    import torchvision

    x = torch.randn(1, 3, 224, 224)
    return from_torch(getattr(torchvision.models, name)().eval(), x), x


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _cold():
    lower_onnx._CHECKED.clear()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--repeats", type=int, default=5, help="calls per exporter (default 5)")
    p.add_argument("--no-dynamo", action="store_true", help="skip the dynamo exporter (slow)")
    p.add_argument("--prune", action="store_true", help="the pruning table against Torch-Pruning instead")
    p.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.3], help="pruning ratios (default 0.5 0.3)")
    p.add_argument("--rounds", type=int, default=5, help="paired latency rounds per pruned pair (default 5)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    print(f"command : python benchmarks/peers.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    if args.prune:
        return prune_table([m for m in args.models if m != "darts_v2"], args.ratios, args.rounds)
    print(f"software: torch {torch.__version__}; one intra-op thread; medians of {args.repeats} interleaved calls\n")
    head = (f"{'model':16s} {'nodes':>5s} {'weights':>9s} | {'floor':>8s} {'pb copy':>8s} {'to_onnx':>8s} {'warm':>8s} | "
            f"{'TorchScr':>8s} {'x':>6s} | {'dynamo':>8s} {'x':>6s} | {'/floor':>6s} | {'to_fx':>8s} {'/floor':>6s}")
    print(head + "\n" + "-" * len(head))
    goals = []
    for name in args.models:
        g, x = build(name)
        gm = to_fx(g).eval()
        arrays = [a for n in g.nodes() for a in (*n.params.values(), *n.buffers.values())]
        mb = sum(a.nbytes for a in arrays) / 2**20
        t = {"floor": [], "pb": [], "cold": [], "warm": [], "ts": [], "dyn": [], "fx": []}
        for _ in range(args.repeats):
            t["floor"].append(_time(lambda: [a.tobytes() for a in arrays]))
            fresh = g.copy()  # never validated: the cold call validates it in full, as a first lowering does
            _cold()
            t["cold"].append(_time(lambda: to_onnx(fresh)))
            t["warm"].append(_time(lambda: to_onnx(g)))
            model = to_onnx(g)
            t["pb"].append(_time(lambda: onnx.ModelProto().CopyFrom(model)))
            t["fx"].append(_time(lambda: to_fx(g)))
            t["ts"].append(_time(lambda: torch.onnx.export(gm, (x,), io.BytesIO(), dynamo=False)))
            if not args.no_dynamo:
                with contextlib.redirect_stdout(io.StringIO()):  # its per-stage progress lines
                    t["dyn"].append(_time(lambda: torch.onnx.export(gm, (x,), dynamo=True)))
        m = {k: statistics.median(v) if v else float("nan") for k, v in t.items()}
        ts_x, dyn_x, fl_x = m["ts"] / m["cold"], m["dyn"] / m["cold"], m["cold"] / m["floor"]
        print(f"{name:16s} {len(g.nx):5d} {mb:7.1f}MB | {m['floor'] * 1e3:6.1f}ms {m['pb'] * 1e3:6.1f}ms "
              f"{m['cold'] * 1e3:6.1f}ms "
              f"{m['warm'] * 1e3:6.1f}ms | {m['ts'] * 1e3:6.0f}ms {ts_x:5.1f}x | {m['dyn']:7.2f}s {dyn_x:5.0f}x | "
              f"{fl_x:5.2f}x | {m['fx'] * 1e3:6.1f}ms {m['fx'] / m['floor']:5.2f}x")
        goals.append((name, ts_x >= 10, args.no_dynamo or dyn_x >= 100, fl_x <= 2))
    print()
    for what, i in (("to_onnx >= 10x faster than torch.onnx.export(dynamo=False)", 1),
                    ("to_onnx >= 100x faster than torch.onnx.export(dynamo=True)", 2),
                    ("to_onnx within 2x of the copy floor", 3)):
        missed = [gl[0] for gl in goals if not gl[i]]
        print(f"goal: {what}: {'PASS' if not missed else 'FAIL (' + ', '.join(missed) + ')'}"
              + (" (dynamo skipped)" if i == 2 and args.no_dynamo else ""))
    return 0


def _ort(model_bytes: bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def _fastest_ms(sess, x, warmup: int = 3, repeats: int = 10) -> float:
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(warmup):
        sess.run(None, feed)
    return 1e3 * min(_time(lambda: sess.run(None, feed)) for _ in range(repeats))


def prune_table(models: list[str], ratios: list[float], rounds: int) -> int:
    """The pruning table: Torch-Pruning against ``passes.prune_channels`` on torchvision models."""
    try:
        import torch_pruning as tp
    except ImportError:
        print("peer skipped: torch_pruning is not installed (pip install torch-pruning; it is in archir[dev])")
        return 0
    import torchvision

    import costmodels
    import passes

    print(f"peer    : torch-pruning {getattr(tp, '__version__', '?')} MagnitudePruner(p=1), classifier kept; "
          f"ORT CPU, one thread, batch 1, {rounds} paired rounds\n")
    head = (f"{'model':16s} {'ratio':>5s} | {'MACs kept TP/ar':>15s} | {'params kept TP/ar':>17s} | "
            f"{'same convs':>10s} | {'ORT TP':>8s} {'archir':>8s} {'ar/TP':>6s}")
    print(head + "\n" + "-" * len(head))
    missed = []
    x = torch.randn(1, 3, 224, 224)
    xn = x.numpy()
    for name in models:
        def fresh():
            torch.manual_seed(0)
            return getattr(torchvision.models, name)().eval()

        g0 = from_torch(fresh(), x)
        c0 = costmodels.count(g0)
        for ratio in ratios:
            peer = fresh()
            keep = [m for m in peer.modules() if isinstance(m, torch.nn.Linear)]
            tp.pruner.MagnitudePruner(peer, x, importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=ratio, ignored_layers=keep).step()
            gp = from_torch(peer, x)
            ga, _ = passes.prune_channels(g0, ratio=ratio, criterion="l1")
            cp, ca = costmodels.count(gp), costmodels.count(ga)
            same = ([n.attrs["out_channels"] for n in gp.nodes("conv2d")]
                    == [n.attrs["out_channels"] for n in ga.nodes("conv2d")])
            buf = io.BytesIO()
            torch.onnx.export(peer, (x,), buf, dynamo=False)
            s_peer, s_ar = _ort(buf.getvalue()), _ort(to_onnx(ga).SerializeToString())
            lp, la = [], []
            for r in range(rounds):  # paired, alternating which goes first
                for sess, into in ((s_peer, lp), (s_ar, la))[:: 1 if r % 2 == 0 else -1]:
                    into.append(_fastest_ms(sess, xn))
            mp, ma = min(lp), min(la)
            rel = ma / mp
            print(f"{name:16s} {ratio:5.2f} | {cp.macs / c0.macs:6.3f} / {ca.macs / c0.macs:6.3f} | "
                  f"{cp.params / c0.params:7.3f} / {ca.params / c0.params:7.3f} | {'yes' if same else 'no':>10s} | "
                  f"{mp:6.2f}ms {ma:6.2f}ms {rel:5.3f}x")
            if not (rel <= 1.02 and ca.macs <= cp.macs):
                missed.append(f"{name}@{ratio:g}")
    print()
    print("goal: archir's pruned network at or below Torch-Pruning's ORT latency at equal or lower MACs: "
          + ("PASS" if not missed else "FAIL (" + ", ".join(missed) + ")"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
