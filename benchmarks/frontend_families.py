"""Frontend figures: per torchvision family, import and round-trip times, and MACs against torchvision.

For each family (random weights, nothing downloaded) it prints:

- ``from_torch`` time at the check size (default 3x64x64; 299 is not needed), including its own
  numeric check of ``to_fx`` against the module;
- ``to_onnx`` time and the max absolute |ORT - torch| on a seeded batch of 2 (BN statistics are
  randomised so outputs are O(1) to O(10));
- ``torch.onnx.export`` (``dynamo=False``) time and ``from_onnx`` time of that file, with the
  max |from_onnx graph - torch| (``-`` where torch's exporter cannot export the model at
  that size: adaptive pooling to a size that does not divide the input, VGG and AlexNet at 64x64);
- ``costmodels.count(...).macs`` at 224x224 against torchvision's published GFLOPS
  (``Weights.DEFAULT.meta["_ops"]``, GMACs in torchvision's convention) and params against
  ``num_params``.

Timings are single runs (the import is a one-off cost, not a hot path) with one torch thread.

Run it::

    python benchmarks/frontend_families.py                       # every family (~2 minutes on 2 cores)
    python benchmarks/frontend_families.py resnet18 googlenet    # some families
"""

from __future__ import annotations

import argparse
import io
import time
import warnings

import numpy as np
import onnxruntime as ort
import torch
import torchvision.models as tvm

import archir
import costmodels
from archir.frontend import from_onnx, from_torch

FAMILIES = {
    "resnet18": {}, "resnet50": {}, "resnext50_32x4d": {}, "wide_resnet50_2": {}, "vgg11": {}, "vgg16_bn": {},
    "alexnet": {}, "mobilenet_v2": {}, "mobilenet_v3_small": {}, "mobilenet_v3_large": {}, "efficientnet_b0": {},
    "mnasnet1_0": {}, "regnet_y_400mf": {}, "regnet_x_400mf": {}, "densenet121": {}, "squeezenet1_0": {},
    "squeezenet1_1": {}, "googlenet": {"aux_logits": False, "init_weights": True},
    "convnext_tiny": {}, "shufflenet_v2_x0_5": {}, "shufflenet_v2_x1_0": {},
}


def _randomize_bn(m: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                c = mod.num_features
                mod.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(c, generator=gen) + 0.5)


def _time(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("families", nargs="*", default=list(FAMILIES), help="torchvision model names")
    ap.add_argument("--size", type=int, default=64, help="input H=W of the round trip (default 64)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}; round trip at 3x{args.size}x{args.size}, "
          "MACs at 3x224x224; times in seconds, one thread")
    head = (f"{'family':20s} {'from_torch':>10s} {'to_onnx':>8s} {'ort err':>8s} {'tv export':>9s} "
            f"{'from_onnx':>9s} {'onnx err':>8s} {'GMACs':>8s} {'published':>9s} {'params ok':>9s}")
    print(head)
    print("-" * len(head))
    for fam in args.families:
        kw = FAMILIES.get(fam, {})
        torch.manual_seed(0)
        m = getattr(tvm, fam)(weights=None, **kw).eval()
        _randomize_bn(m)
        x = torch.randn(2, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ref = m(x).numpy()
        g, t_import = _time(lambda: from_torch(m, x[:1]))
        proto, t_onnx = _time(lambda: archir.lower.to_onnx(g))
        # ORT runs archir's model once, through the one verifier; the column is its error against torchvision
        rep = archir.lower.verify_onnx(g, proto, inputs=x, threads=1, keep_values=True)
        if rep.ort_values is None:  # ORT could not load or run it: the verifier says why
            rep.raise_if_failed()
        ort_err = float(np.abs(rep.ort_values[0] - ref).max())
        exp_s = imp_s = onnx_err = None
        if g.nodes("adaptive_avgpool2d"):
            # torch's TorchScript exporter refuses adaptive pooling to a size that does not divide the input
            # (VGG's 7x7 and AlexNet's 6x6 at small inputs); archir's to_onnx lowers it (column "ort err")
            exp_s = "n/a"
        else:
            buf = io.BytesIO()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, exp_s = _time(lambda: torch.onnx.export(m, (x,), buf, dynamo=False, opset_version=17,
                                                           input_names=["x"], dynamic_axes={"x": {0: "batch"}}))
            g2, imp_s = _time(lambda: from_onnx(buf.getvalue()))
            with torch.no_grad():
                onnx_err = float(np.abs(archir.lower.to_fx(g2).eval()(x).numpy() - ref).max())
        meta = tvm.get_model_weights(fam).DEFAULT.meta
        c = costmodels.count(from_torch(m, torch.randn(1, 3, 224, 224), check=False))
        fmt = lambda v, f: "-" if v is None else (v if isinstance(v, str) else format(v, f))  # noqa: E731
        print(f"{fam:20s} {t_import:10.2f} {t_onnx:8.2f} {ort_err:8.1e} {fmt(exp_s, '9.2f'):>9s} "
              f"{fmt(imp_s, '9.2f'):>9s} {fmt(onnx_err, '8.1e'):>8s} {c.macs / 1e9:8.4f} {meta['_ops']:9.3f} "
              f"{'yes' if c.params == meta['num_params'] else 'NO':>9s}")


if __name__ == "__main__":
    main()
