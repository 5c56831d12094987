"""Frontend figures: all 20 torchvision classification families, imported at full size, and what passes do on them.

For one model per family (two where the family has two kinds; random weights, nothing downloaded;
BN statistics randomised so outputs are O(1) to O(10); weight tensors that torchvision initialises to
all zeros, ViT's head and class token, drawn from N(0, 0.02)) it prints, at the family's own evaluation
size (``weights.transforms``' crop: 224, Inception v3 299, EfficientNetV2-S 384; ``--size`` for
another):

- whether it imports; where it does not, the reasons ``UnsupportedModelError`` gives (the kinds of
  node archir has no op for, first place of each), so this table is also the list of what still does
  not import;
- ``from_torch`` time (including its own numeric check of ``to_fx`` against the module) and the
  number of IR nodes;
- ``to_onnx`` time and max |ORT - torch| / max |torch| on a seeded batch of 2 (relative to the output's
  scale: a randomly initialised deep net's logits can be O(1e4));
- ``torch.onnx.export(dynamo=False)`` then ``from_onnx``: the same relative error of that graph (``n/a``
  where torch's exporter refuses the model: adaptive pooling to a size that does not divide the input);
  with ``--dynamo`` the same for the dynamo exporter;
- ``costmodels.count`` MACs (GMACs, torchvision's convention) against torchvision's published GFLOPS
  (``Weights.DEFAULT.meta["_ops"]``) and the parameter count against ``num_params`` (exact or not);
  published figures are at the evaluation size, so the count is too (with ``--size``, of a second
  import at the evaluation size).

With ``--passes``, a second table per imported family, on the import at ``--passes-size`` (64 by
default: the passes' cost grows with the activations, and their promises do not depend on the size):

- ``--morphisms`` random legal morphisms (``passes.random_morphism``, seeded), each checked by
  ``passes.check_preserved``: how many applied, how many were accepted as preserving the function,
  how many refused (a refusal of a legal morphism is a false alarm or a bug: the goal is none);
- ``passes.prune_channels(ratio=0.5, criterion="l1")``: groups pruned, channels removed (the groups'
  independent channels: one tied through a residual add or a channel shuffle counts once), groups
  skipped (with the first reason other than the graph's interface, whose channels are always kept),
  MACs kept, whether the
  pruned graph validates, and max |ORT - to_fx| / max |to_fx| on it (``archir.lower.verify_onnx``'s
  outputs; relative to the output's scale, as above).

Timings are single runs (an import is a one-off cost, not a hot path) with one torch thread.

Run it::

    python benchmarks/frontend_families.py                        # every family, full size (several minutes)
    python benchmarks/frontend_families.py --passes               # and the morphism / pruning table
    python benchmarks/frontend_families.py resnet18 convnext_tiny --size 64 --passes
    python benchmarks/frontend_families.py --quick                # smoke run: squeezenet1_1 at 64x64
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision.models as tvm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's packages, not benchmarks/passes.py

import archir  # noqa: E402
import costmodels  # noqa: E402
import passes  # noqa: E402
from archir.frontend import from_onnx, from_torch  # noqa: E402
from archir.frontend.common import UnsupportedModelError  # noqa: E402

#: torchvision model -> (family, constructor options). One model per family, two where the family has two kinds.
FAMILIES: dict[str, tuple[str, dict]] = {
    "alexnet": ("alexnet", {}),
    "convnext_tiny": ("convnext", {}),
    "densenet121": ("densenet", {}),
    "efficientnet_b0": ("efficientnet", {}),
    "efficientnet_v2_s": ("efficientnet_v2", {}),
    "googlenet": ("googlenet", {"aux_logits": False, "init_weights": True}),
    "inception_v3": ("inception_v3", {"aux_logits": False, "init_weights": True}),
    "maxvit_t": ("maxvit", {}),
    "mnasnet1_0": ("mnasnet", {}),
    "mobilenet_v2": ("mobilenet_v2", {}),
    "mobilenet_v3_small": ("mobilenet_v3", {}),
    "mobilenet_v3_large": ("mobilenet_v3", {}),
    "regnet_y_400mf": ("regnet", {}),
    "regnet_x_400mf": ("regnet", {}),
    "resnet18": ("resnet", {}),
    "resnet50": ("resnet", {}),
    "resnext50_32x4d": ("resnext", {}),
    "shufflenet_v2_x1_0": ("shufflenet_v2", {}),
    "squeezenet1_0": ("squeezenet", {}),
    "squeezenet1_1": ("squeezenet", {}),
    "swin_t": ("swin", {}),
    "swin_v2_t": ("swin", {}),  # swin: V2 (cosine attention, cpb_mlp position bias), at its evaluation size 256
    "vgg11": ("vgg", {}),
    "vgg16_bn": ("vgg", {}),
    "vit_b_16": ("vit", {}),
    "wide_resnet50_2": ("wide_resnet", {}),
}
#: why a figure differs from the published one, where that is known and not archir's doing
NOTES = {"inception_v3": "; the published count includes the auxiliary classifier, not built with aux_logits=False"}
#: models whose input size is fixed by their constructor (``image_size`` / ``input_size``): --size is passed there
_SIZED = {"vit_b_16": "image_size", "maxvit_t": "input_size"}


def _randomize_bn(m: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            # torchvision zero-initialises ViT's head and class token: the logits would be 0 and every parity
            # figure vacuous (0.0e+00); draw such all-zero weight tensors (biases stay) from N(0, 0.02)
            if p.dim() >= 2 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                c = mod.num_features
                mod.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(c, generator=gen) + 0.5)


def _time(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def eval_size(name: str) -> int:
    """The crop size of the family's published evaluation (what its published GFLOPS are measured at)."""
    return int(tvm.get_model_weights(name).DEFAULT.transforms.keywords.get("crop_size", 224))


def build(name: str, size: int) -> torch.nn.Module:
    _, kw = FAMILIES.get(name, (name, {}))
    kw = dict(kw)
    if name in _SIZED:
        kw[_SIZED[name]] = size if name != "maxvit_t" else (size, size)
    torch.manual_seed(0)
    m = getattr(tvm, name)(weights=None, **kw).eval()
    _randomize_bn(m)
    return m


def refusal(e: UnsupportedModelError, limit: int = 4) -> str:
    """The kinds of unsupported node, each once, first few: the column 'does not import'."""
    kinds: list[str] = []
    for u in e.unsupported:
        if u.what not in kinds:
            kinds.append(u.what)
    more = f" (+{len(kinds) - limit} more)" if len(kinds) > limit else ""
    return "; ".join(kinds[:limit]) + more


def _onnx_roundtrip_err(m, g, x, ref, *, dynamo: bool) -> float | str:
    """max |from_onnx(torch's export) - torch| / max |torch|, or why there is none."""
    if not dynamo and any(any(i % o for i, o in zip(g.input_types(n.id)[0].shape[1:], np.broadcast_to(
            np.atleast_1d(n.attrs["output_size"]), 2))) for n in g.nodes("adaptive_avgpool2d")):
        # torch's TorchScript exporter refuses adaptive pooling to a size that does not divide its input
        return "n/a"
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if dynamo:
                with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
                    torch.onnx.export(m, (x,), buf, dynamo=True, input_names=["x"],
                                      dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
            else:
                torch.onnx.export(m, (x,), buf, dynamo=False, opset_version=17, input_names=["x"],
                                  dynamic_axes={"x": {0: "batch"}})
        except Exception as e:  # the peer's exporter failed: reported, not ours to fix
            return f"export failed: {type(e).__name__}"
    try:
        g2 = from_onnx(buf.getvalue())
    except UnsupportedModelError as e:
        return "refused: " + refusal(e, 2)
    with torch.no_grad():
        return float(np.abs(archir.lower.to_fx(g2).eval()(x).numpy() - ref).max()) / (float(np.abs(ref).max()) or 1.0)


def min_size(name: str) -> int:
    """The smallest input the family accepts (torchvision's ``meta["min_size"]``: ViT and MaxViT 224)."""
    return int(tvm.get_model_weights(name).DEFAULT.meta.get("min_size", (1, 1))[0])


def _not_in_eval_graph(name: str) -> tuple[int, str]:
    """Parameters the published count includes but the eval-mode graph does not use (inception: the aux head)."""
    if name == "inception_v3":
        from torchvision.models.inception import InceptionAux

        return sum(p.numel() for p in InceptionAux(768, 1000).parameters()), "auxiliary classifier"
    return 0, ""


def import_row(name: str, size: int | None, dynamo: bool) -> tuple[list[str], archir.Graph | None]:
    s = max(size, min_size(name)) if size else eval_size(name)
    m = build(name, s)
    x = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m(x).numpy()
    fam = FAMILIES.get(name, (name, {}))[0]
    try:
        g, t_import = _time(lambda: from_torch(m, x[:1]))
    except UnsupportedModelError as e:
        return [name, fam, str(s), "does not import: " + refusal(e)], None
    proto, t_onnx = _time(lambda: archir.lower.to_onnx(g))
    rep = archir.lower.verify_onnx(g, proto, inputs=x, threads=1, keep_values=True)
    if rep.ort_values is None:  # ORT could not load or run it: the verifier says why
        rep.raise_if_failed()
    scale = float(np.abs(ref).max()) or 1.0
    ort_err = float(np.abs(rep.ort_values[0] - ref).max()) / scale
    fmt = lambda v: v if isinstance(v, str) else f"{v:.1e}"  # noqa: E731
    row = [name, fam, str(s), "yes", str(len(g)), f"{t_import:.2f}", f"{t_onnx:.2f}", f"{ort_err:.1e}",
           fmt(_onnx_roundtrip_err(m, g, x, ref, dynamo=False))]
    if dynamo:
        row.append(fmt(_onnx_roundtrip_err(m, g, x, ref, dynamo=True)))
    meta = tvm.get_model_weights(name).DEFAULT.meta
    full = eval_size(name)  # the published figures' size
    c = costmodels.count(g if s == full else from_torch(build(name, full), torch.randn(1, 3, full, full), check=False))
    extra = _not_in_eval_graph(name)
    row += [f"{c.macs / 1e9:.4f}", f"{meta['_ops']:.3f}", "yes" if c.params == meta["num_params"] else
            f"yes, with the {extra[1]} ({c.params:,} + {extra[0]:,})" if c.params + extra[0] == meta["num_params"]
            else f"NO ({c.params} vs {meta['num_params']}{NOTES.get(name, '')})"]
    return row, g


def passes_row(name: str, g: archir.Graph, morphisms: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    applied = accepted = refused = 0
    cur = g
    no_target = ""
    for _ in range(morphisms):
        try:
            nxt, _desc = passes.random_morphism(cur, rng)
        except passes.PreconditionError as e:  # no legal target left (or none to begin with)
            no_target = f" (stopped: {str(e).splitlines()[0][:60]})"
            break
        applied += 1
        rep = passes.check_preserved(cur, nxt, raise_on_failure=False)
        if rep.ok:
            accepted += 1
            cur = nxt
        else:
            refused += 1
    small, report = passes.prune_channels(g, ratio=0.5, criterion="l1", cost=costmodels.count)
    try:
        small.validate()
        valid = "yes"
    except archir.IRError as e:
        valid = f"NO: {str(e).splitlines()[0][:60]}"
    ver = archir.lower.verify_onnx(small, archir.lower.to_onnx(small), threads=1, keep_values=True)
    if ver.ort_values is None:  # ORT could not load or run it: the verifier says why
        ver.raise_if_failed()
    # relative to the output's scale, as the import table: verify_onnx's elementwise atol/rtol fails on
    # float32 noise alone where randomly initialised logits reach O(1e4) (Inception v3)
    rel = max(float(np.abs(f - o).max()) / (float(np.abs(f).max()) or 1.0) for f, o in zip(ver.fx_values, ver.ort_values))
    kept = report.macs_after / report.macs_before if report.macs_before else float("nan")
    # the interface's channels (graph input, graph output) are always kept: name the first other reason
    other = [k.reason for k in report.skipped if "graph input" not in k.reason and "graph output" not in k.reason]
    skip = other[0].splitlines()[0][:60] if other else ""
    return [name, f"{applied}{no_target}", str(accepted), str(refused), str(len(report.groups)),
            str(report.channels_removed), f"{len(report.skipped)}" + (f" ({skip})" if skip else ""), f"{kept:.2f}", valid,
            f"{rel:.1e}"]


def _table(head: list[str], rows: list[list[str]]) -> None:
    # a short row (a model that does not import) spans the rest with its last cell: that cell sets no width
    widths = [max([len(h)] + [len(r[i]) for r in rows if i < len(r) - (len(r) < len(head))])
              for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        if len(r) < len(head):  # a family that does not import: its reason spans the rest
            print("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1])
        else:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("families", nargs="*", default=list(FAMILIES), help="torchvision model names")
    ap.add_argument("--size", type=int, default=None,
                    help="input H=W of the import table, or the family's smallest input where that is larger "
                         "(default: each family's evaluation size)")
    ap.add_argument("--dynamo", action="store_true", help="also export with torch's dynamo exporter and re-import")
    ap.add_argument("--passes", action="store_true", help="also the morphism and pruning table")
    ap.add_argument("--passes-size", type=int, default=64, help="input H=W of the passes table (default 64)")
    ap.add_argument("--morphisms", type=int, default=10, help="random morphisms per family (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: squeezenet1_1 at 64x64, 2 morphisms")
    args = ap.parse_args(argv)
    if args.quick:
        args.families, args.size, args.passes, args.morphisms = ["squeezenet1_1"], 64, True, 2
    unknown = [f for f in args.families if not hasattr(tvm, f)]
    if unknown:
        ap.error(f"not torchvision models: {', '.join(unknown)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(args)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> None:
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}; "
          f"{'each family at its evaluation size' if args.size is None else f'3x{args.size}x{args.size}'}; "
          "times in seconds, one thread")
    head = ["model", "family", "size", "imports", "nodes", "from_torch", "to_onnx", "ORT rel err", "TS->from_onnx"]
    if args.dynamo:
        head.append("dynamo->from_onnx")
    head += ["GMACs", "published", "params exact"]
    rows, graphs = [], {}
    for name in args.families:
        row, g = import_row(name, args.size, args.dynamo)
        rows.append(row)
        print("  ".join(row), flush=True)  # progress: the table is printed aligned at the end
        if g is not None and args.passes:
            # the passes' table at --passes-size, except where the model fixes its size (ViT, MaxViT)
            ps = max(args.passes_size, min_size(name))
            graphs[name] = g if int(row[2]) == ps else from_torch(build(name, ps), torch.randn(1, 3, ps, ps))
    print()
    _table(head, rows)
    n_ok = sum(r[3] == "yes" for r in rows)
    print(f"\n{n_ok} of {len(rows)} models import ({len({r[1] for r in rows if r[3] == 'yes'})} of "
          f"{len({r[1] for r in rows})} families)")
    if args.passes and graphs:
        print(f"\nmorphisms (checked by check_preserved) and pruning at ratio 0.5, 3x{args.passes_size}x"
              f"{args.passes_size} (a family's smallest input where that is larger)")
        prow = [passes_row(name, g, args.morphisms, args.seed) for name, g in graphs.items()]
        _table(["model", "morphisms applied", "accepted", "refused", "groups pruned", "channels removed", "groups skipped",
                "MACs kept", "validates", "ORT vs fx rel err"], prow)


if __name__ == "__main__":
    main()
