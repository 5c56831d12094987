"""archir against its peers on real models (issue 19): ``to_onnx`` against torch's two ONNX exporters.

For each model (torchvision's resnet18, resnet50, efficientnet_b0, densenet121, mobilenet_v2
imported with ``from_torch`` at 3x224x224, and DARTS_V2 built at 20 cells x 36 channels on
3x32x32) it prints, measured side by side in one run:

- ``to_onnx(g)`` with its checker on, the checker's cache cleared before each call (the cost of
  a graph lowered for the first time), and again warm (the same graph lowered again);
- ``torch.onnx.export(dynamo=False)`` (TorchScript) and ``torch.onnx.export(dynamo=True)`` of the
  ``to_fx`` module of the same graph, into memory;
- the copy floor: the time to copy the model's weight bytes once (``ndarray.tobytes`` of every
  weight), which no exporter that returns an in-memory model can beat;
- ``to_fx(g)``: building the trainable ``GraphModule`` (modules are made on the meta device, so
  nothing is randomly initialised only to be overwritten; the weights are then copied in once),
  and its ratio to the same copy floor;
- the ratios, against the goals: ``to_onnx`` >= 10x faster than TorchScript, >= 100x than dynamo,
  and within 2x of the copy floor.

Medians of interleaved calls (archir's calls run between the peers' so both sample the same
minutes of a shared machine). The pruning comparison with Torch-Pruning is not in this script yet.

    python benchmarks/peers.py                       # every model (several minutes: dynamo is slow)
    python benchmarks/peers.py --models resnet18 --no-dynamo --repeats 3
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    print(f"command : python benchmarks/peers.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"software: torch {torch.__version__}; one intra-op thread; medians of {args.repeats} interleaved calls\n")
    head = (f"{'model':16s} {'nodes':>5s} {'weights':>9s} | {'floor':>8s} {'to_onnx':>8s} {'warm':>8s} | "
            f"{'TorchScr':>8s} {'x':>6s} | {'dynamo':>8s} {'x':>6s} | {'/floor':>6s} | {'to_fx':>8s} {'/floor':>6s}")
    print(head + "\n" + "-" * len(head))
    goals = []
    for name in args.models:
        g, x = build(name)
        gm = to_fx(g).eval()
        arrays = [a for n in g.nodes() for a in (*n.params.values(), *n.buffers.values())]
        mb = sum(a.nbytes for a in arrays) / 2**20
        t = {"floor": [], "cold": [], "warm": [], "ts": [], "dyn": [], "fx": []}
        for _ in range(args.repeats):
            t["floor"].append(_time(lambda: [a.tobytes() for a in arrays]))
            _cold()
            t["cold"].append(_time(lambda: to_onnx(g)))
            t["warm"].append(_time(lambda: to_onnx(g)))
            t["fx"].append(_time(lambda: to_fx(g)))
            t["ts"].append(_time(lambda: torch.onnx.export(gm, (x,), io.BytesIO(), dynamo=False)))
            if not args.no_dynamo:
                t["dyn"].append(_time(lambda: torch.onnx.export(gm, (x,), dynamo=True)))
        m = {k: statistics.median(v) if v else float("nan") for k, v in t.items()}
        ts_x, dyn_x, fl_x = m["ts"] / m["cold"], m["dyn"] / m["cold"], m["cold"] / m["floor"]
        print(f"{name:16s} {len(g.nx):5d} {mb:7.1f}MB | {m['floor'] * 1e3:6.1f}ms {m['cold'] * 1e3:6.1f}ms "
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


if __name__ == "__main__":
    raise SystemExit(main())
