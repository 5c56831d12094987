"""Training throughput: ``search.train`` against a hand-written PyTorch loop, side by side in one run.

Both train the same network (built by archir, lowered with ``archir.lower.to_fx``) on the same
in-memory data (seeded random CIFAR-shaped images), with the same SGD settings, batch size and
threads, one epoch per repeat; the repeats are interleaved (archir, plain, archir, plain, ...) so
that machine drift hits both. The figure is training images per second over the training steps
only (``TrainResult.train_images / train_seconds``; the plain loop is timed over the same steps),
the median of the repeats, and the ratio archir / plain (goal: >= 0.95).

The plain loop is what a PyTorch user writes: a seeded permutation per epoch, index the batch,
forward, cross-entropy, ``zero_grad``, backward, clip the gradient norm, ``step``, ``loss.item()``
(on CUDA: resident data, the loss accumulated on the device, one sync at the end).

Usage::

    python benchmarks/train_throughput.py --quick                 # small network, CPU, seconds
    python benchmarks/train_throughput.py                         # resnet_like 3x32x32, CPU
    python benchmarks/train_throughput.py --device cuda --network resnet18 --amp bf16 --channels-last
    python benchmarks/train_throughput.py --device cuda --network darts_v2
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

NETWORKS = ("small", "resnet_like", "resnet18", "darts_v2")


def build(name: str, classes: int = 10):
    """The archir graph of network ``name`` (all take 3x32x32 inputs)."""
    if name == "small":
        from archir.samples import resnet_like

        return resnet_like(seed=0, in_shape=(3, 32, 32), width=8, classes=classes)
    if name == "resnet_like":
        from archir.samples import resnet_like

        return resnet_like(seed=0, in_shape=(3, 32, 32), width=32, classes=classes)
    if name == "resnet18":  # torchvision's ResNet-18 (11.2M params), imported into archir
        import torchvision

        from archir.frontend import from_torch

        m = torchvision.models.resnet18(num_classes=classes).eval()
        return from_torch(m, torch.randn(1, 3, 32, 32), name="resnet18")
    if name == "darts_v2":  # DARTS' CIFAR-10 network: 20 cells x 36 channels (3.3M params), no aux head
        from search.spaces.darts import DartsSpace
        from search.spaces.genotypes import get_genotype

        gt = get_genotype("DARTS_V2")
        space = DartsSpace.for_genotype(gt, (3, 32, 32), classes)
        return space.build(space.from_genotype(gt), seed=0, cells=20, channels=36)
    raise SystemExit(f"unknown network {name!r}; choose one of {NETWORKS}")


class _Data:
    def __init__(self, n: int, classes: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.x_train = rng.normal(size=(n, 3, 32, 32)).astype(np.float32)
        self.y_train = (np.arange(n) % classes).astype(np.int64)
        self.x_val, self.y_val = self.x_train[:0], self.y_train[:0]  # no evaluation in the figure
        self.x_test, self.y_test = self.x_train[:64], self.y_train[:64]
        self.mean, self.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def plain_loop(graph, data: _Data, *, batch_size: int, lr: float, device: str, amp: str | None,
               channels_last: bool, seed: int) -> float:
    """One epoch of the hand-written loop; returns images/s over its steps."""
    from archir.lower import to_fx

    dev = torch.device(device)
    torch.manual_seed(seed)
    gm = to_fx(graph).to(dev)
    if channels_last:
        gm = gm.to(memory_format=torch.channels_last)
    aux = gm.meta["archir_auxiliary"]
    opt = torch.optim.SGD(gm.parameters(), lr=lr, momentum=0.9, weight_decay=3e-4)
    x = torch.from_numpy(data.x_train).to(dev)
    y = torch.from_numpy(data.y_train).to(dev)
    n = len(y)
    gm.train()
    rng = np.random.default_rng(seed)
    order = torch.from_numpy(rng.permutation(n)).to(dev)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize(dev)
    total = torch.zeros((), device=dev, dtype=torch.float64) if cuda else 0.0
    t = time.perf_counter()
    for s in range(math.ceil(n / batch_size)):
        idx = order[s * batch_size:(s + 1) * batch_size]
        xb, yb = x[idx], y[idx]
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            out = gm(xb)
            loss = F.cross_entropy(out[0] if isinstance(out, tuple) else out, yb)
            for k, w in aux.items():
                loss = loss + w * F.cross_entropy(out[k], yb)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(gm.parameters(), 5.0)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(gm.parameters(), 5.0)
            opt.step()
        if cuda:
            total += loss.detach()
        else:
            total += loss.item()
    if cuda:
        torch.cuda.synchronize(dev)
        float(total)
    return n / (time.perf_counter() - t)


def archir_epoch(graph, data: _Data, *, batch_size: int, lr: float, device: str, amp: str | None,
                 channels_last: bool, seed: int, threads: int) -> float:
    """One epoch of ``search.train``; returns images/s over its training steps."""
    from search.train import TrainConfig, train

    cfg = TrainConfig(epochs=1, batch_size=batch_size, lr=lr, schedule="constant", seed=seed, threads=threads,
                      device=device, amp=amp, channels_last=channels_last, grad_clip=5.0)
    res = train(graph, data, cfg)
    if not res.ok:
        raise SystemExit(f"search.train failed: {res.reason}\n{res.traceback or ''}")
    return res.train_images / res.train_seconds


def measure(network: str, *, device: str = "cpu", amp: str | None = None, channels_last: bool = False,
            images: int = 1024, batch_size: int = 64, repeats: int = 5, threads: int | None = None) -> dict:
    """Interleaved repeats of both loops; the medians and the ratio."""
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    g = build(network)
    data = _Data(images, 10)
    kw = dict(batch_size=batch_size, lr=0.01, device=device, amp=amp, channels_last=channels_last, seed=0)
    archir_epoch(g, _Data(2 * batch_size, 10), threads=threads, **kw)  # warm-up: allocator, kernels, lowering caches
    plain_loop(g, _Data(2 * batch_size, 10), **kw)
    a, p = [], []
    for _ in range(repeats):
        a.append(archir_epoch(g, data, threads=threads, **kw))
        torch.set_num_threads(threads)
        p.append(plain_loop(g, data, **kw))
    ma, mp = statistics.median(a), statistics.median(p)
    return {"network": network, "params": g.num_params(), "device": device, "amp": amp or "fp32",
            "channels_last": channels_last, "archir": ma, "plain": mp, "ratio": ma / mp,
            "spread_archir": (min(a), max(a)), "spread_plain": (min(p), max(p)), "threads": threads,
            "images": images, "batch_size": batch_size, "repeats": repeats}


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the small network, 512 images, 3 repeats")
    p.add_argument("--network", choices=NETWORKS, default=None, help="default resnet_like (small with --quick)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--images", type=int, default=None, help="images per epoch (default 2048; 512 with --quick)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 5; 3 with --quick)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: CUDA is not available here; use --device cpu")
        return 2
    net = args.network or ("small" if args.quick else "resnet_like")
    r = measure(net, device=args.device, amp=args.amp, channels_last=args.channels_last,
                images=args.images or (512 if args.quick else 2048), batch_size=args.batch_size,
                repeats=args.repeats or (3 if args.quick else 5), threads=args.threads)
    print(f"train throughput: {r['network']} ({r['params']:,} params), {r['images']} images 3x32x32, batch "
          f"{r['batch_size']}, {r['device']} ({_device_name(r['device'])}, {r['threads']} threads), {r['amp']}"
          f"{', channels_last' if r['channels_last'] else ''}; median of {r['repeats']} interleaved repeats")
    print(f"{'loop':<14} {'images/s':>10} {'min':>10} {'max':>10}")
    print(f"{'search.train':<14} {r['archir']:>10.0f} {r['spread_archir'][0]:>10.0f} {r['spread_archir'][1]:>10.0f}")
    print(f"{'plain PyTorch':<14} {r['plain']:>10.0f} {r['spread_plain'][0]:>10.0f} {r['spread_plain'][1]:>10.0f}")
    verdict = "meets" if r["ratio"] >= 0.95 else "misses"
    print(f"ratio search.train / plain = {r['ratio']:.3f}x ({verdict} the goal >= 0.95x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
