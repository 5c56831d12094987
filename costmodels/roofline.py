"""``costmodels.roofline``: the lower bound on latency from peak compute and memory bandwidth.

Each node takes at least ``max(flops / peak_flops, bytes_moved / mem_bandwidth)``; the
network takes at least the sum over nodes (ops run one after another, nothing overlaps
across nodes, and no kernel-launch or framework overhead is charged). A node is
*compute-bound* when its compute time is the larger, *memory-bound* otherwise.

:class:`DeviceSpec` holds a device's peaks. Presets :data:`H100_SXM` and :data:`H200` carry
NVIDIA's published figures; :meth:`DeviceSpec.probe_cpu` measures the local CPU.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import numpy as np

from archir.graph import Graph
from costmodels.counts import Counts, count
from costmodels.device import cpu_fingerprint

__all__ = ["DeviceSpec", "H100_SXM", "H200", "PRESETS", "Roofline", "NodeRoofline", "roofline"]

_PRECISIONS = ("fp32", "tf32", "fp16")


@dataclass(frozen=True)
class DeviceSpec:
    """Peak compute and memory bandwidth of a device.

    Args:
        name: a readable name (``"NVIDIA H100 SXM5 (fp32)"``).
        peak_flops: the FLOP/s the roofline divides by (for archir's float32 graphs, the
            dense FP32 non-tensor-core peak on a GPU).
        mem_bandwidth: main-memory bandwidth in bytes/s (HBM on a GPU, DRAM on a CPU).
        peak_flops_fp32: dense FP32 peak without tensor cores (``None`` if unknown).
        peak_flops_tf32: dense TF32 tensor-core peak (``None`` if unknown or none).
        peak_flops_fp16: dense FP16 tensor-core peak (``None`` if unknown or none).
        source: where the figures come from (a URL, or ``"measured ..."``).
        measured: the figures were measured here rather than published.

    Raises:
        ValueError: a peak or the bandwidth is not a positive finite number.

    Example:
        >>> spec = DeviceSpec("toy", peak_flops=1e12, mem_bandwidth=1e11)
        >>> spec.ridge_point      # FLOP per byte where compute- and memory-bound meet
        10.0
        >>> H100_SXM.with_precision("tf32").peak_flops
        494700000000000.0
    """

    name: str
    peak_flops: float
    mem_bandwidth: float
    peak_flops_fp32: float | None = None
    peak_flops_tf32: float | None = None
    peak_flops_fp16: float | None = None
    source: str = ""
    measured: bool = False

    def __post_init__(self) -> None:
        for k in ("peak_flops", "mem_bandwidth", "peak_flops_fp32", "peak_flops_tf32", "peak_flops_fp16"):
            v = getattr(self, k)
            if v is None and k not in ("peak_flops", "mem_bandwidth"):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"DeviceSpec {self.name!r}: {k} must be a positive finite number, got {v!r}")
            object.__setattr__(self, k, float(v))

    @property
    def ridge_point(self) -> float:
        """Arithmetic intensity (FLOP/byte) above which a kernel is compute-bound."""
        return self.peak_flops / self.mem_bandwidth

    def with_precision(self, precision: str) -> "DeviceSpec":
        """This device with ``peak_flops`` set to its ``"fp32"``, ``"tf32"`` or ``"fp16"`` peak.

        Raises:
            ValueError: unknown precision, or this device has no figure for it.
        """
        if precision not in _PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {list(_PRECISIONS)}")
        peak = getattr(self, f"peak_flops_{precision}")
        if peak is None:
            raise ValueError(f"DeviceSpec {self.name!r} has no {precision} peak; pass peak_flops= yourself")
        base = self.name.rsplit(" (", 1)[0] if self.name.endswith(")") else self.name
        return dataclasses.replace(self, name=f"{base} ({precision})", peak_flops=peak)

    @classmethod
    def probe_cpu(cls, seconds: float = 1.0, *, refresh: bool = False) -> "DeviceSpec":
        """Measure this CPU's peak FLOP/s and memory bandwidth with a quick probe.

        Peak compute is the best of repeated float32 ``torch.matmul`` of 1024x1024 matrices
        (``2 n^3`` FLOP each) with torch's current thread count; bandwidth is the best of
        repeated copies of a 64 MiB float32 array (bytes read plus bytes written). Each takes
        about half of ``seconds``. The result is cached per process and thread count: a
        second call returns the first measurement unless ``refresh=True``.

        Measured peaks are attainable figures, below the vendor's theoretical ones, and depend
        on load: probe on an idle machine.

        Args:
            seconds: the time budget of the probe (at least a few repetitions run regardless).
            refresh: measure again instead of returning the cached spec.

        Returns:
            A ``DeviceSpec`` named after the CPU, with ``measured=True``.

        Raises:
            ValueError: ``seconds`` is not a positive number.

        Example:
            >>> cpu = DeviceSpec.probe_cpu(seconds=0.2)    # doctest: +SKIP
            >>> costmodels.roofline(g, cpu).time_ms        # doctest: +SKIP
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ValueError(f"probe_cpu: seconds must be a positive number, got {seconds!r}")
        import torch

        threads = torch.get_num_threads()
        with _PROBE_LOCK:
            if not refresh and threads in _PROBE_CACHE:
                return _PROBE_CACHE[threads]
            flops = _probe_matmul(torch, seconds / 2)
            bw = _probe_copy(seconds / 2)
            spec = cls(name=f"{cpu_fingerprint()} [{threads} threads, probed]", peak_flops=flops, mem_bandwidth=bw,
                       peak_flops_fp32=flops, source=f"measured by DeviceSpec.probe_cpu(seconds={seconds})",
                       measured=True)
            _PROBE_CACHE[threads] = spec
            return spec


_PROBE_CACHE: dict[int, DeviceSpec] = {}
_PROBE_LOCK = threading.Lock()


def _best_rate(work: float, fn, budget: float, min_reps: int = 3) -> float:
    # Best-of-N: the fastest repetition is the one least disturbed by other processes.
    best, t_end, reps = math.inf, time.perf_counter() + budget, 0
    while reps < min_reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        reps += 1
        if reps >= 1000:
            break
    return work / max(best, 1e-9)


def _probe_matmul(torch, budget: float) -> float:
    n = 1024
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    out = torch.empty(n, n)
    torch.matmul(a, b, out=out)  # warm-up: thread pool start, first-touch of the pages
    return _best_rate(2.0 * n ** 3, lambda: torch.matmul(a, b, out=out), budget)


def _probe_copy(budget: float) -> float:
    n = 16 * 1024 * 1024  # 64 MiB of float32, far beyond any last-level cache
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # warm-up and first touch
    return _best_rate(2.0 * src.nbytes, lambda: np.copyto(dst, src), budget)


# Published peaks. NVIDIA lists tensor-core figures "with sparsity"; the dense figures used
# here are half of those. Sources:
#   H100 SXM5: NVIDIA H100 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/h100/
#     FP32 67 TFLOPS, TF32 tensor core 989 TFLOPS sparse (494.7 dense), FP16 1,979 sparse (989.4 dense),
#     HBM3 3.35 TB/s. Per-precision peaks as tabulated at https://glennklockwood.com/garden/processors/h100
#     (FP32 66.9, TF32 494.7, FP16 989.4 dense).
#   H200 SXM: NVIDIA H200 Tensor Core GPU page, https://www.nvidia.com/en-us/data-center/h200/
#     same GH100 compute as H100 SXM (FP32 67, TF32 989 / FP16 1,979 TFLOPS with sparsity),
#     141 GB HBM3e at 4.8 TB/s.
H100_SXM = DeviceSpec(
    name="NVIDIA H100 SXM5 (fp32)", peak_flops=67e12, mem_bandwidth=3.35e12, peak_flops_fp32=67e12,
    peak_flops_tf32=494.7e12, peak_flops_fp16=989.4e12,
    source="NVIDIA H100 datasheet, https://www.nvidia.com/en-us/data-center/h100/ (tensor-core figures dense)")
H200 = DeviceSpec(
    name="NVIDIA H200 SXM (fp32)", peak_flops=67e12, mem_bandwidth=4.8e12, peak_flops_fp32=67e12,
    peak_flops_tf32=494.7e12, peak_flops_fp16=989.4e12,
    source="NVIDIA H200 product page, https://www.nvidia.com/en-us/data-center/h200/ (tensor-core figures dense)")

#: Published presets by short name.
PRESETS: Mapping[str, DeviceSpec] = MappingProxyType({"h100": H100_SXM, "h100_sxm": H100_SXM, "h200": H200})


# --------------------------------------------------------------------------- roofline


@dataclass(frozen=True)
class NodeRoofline:
    """The roofline of one node.

    Attributes:
        id, op: the node.
        flops, bytes_moved: from :func:`costmodels.count`.
        compute_s: ``flops / peak_flops``; memory_s: ``bytes_moved / mem_bandwidth``.
        time_s: ``max(compute_s, memory_s)``, the node's lower bound.
        bound: ``"compute"``, ``"memory"``, or ``"none"`` for a node that costs nothing (views, inputs).
        intensity: ``flops / bytes_moved`` (FLOP/byte; ``inf`` for flops without traffic, 0 for neither).
    """

    id: str
    op: str
    flops: int
    bytes_moved: int
    compute_s: float
    memory_s: float
    time_s: float
    bound: str
    intensity: float


@dataclass(frozen=True)
class Roofline:
    """The result of :func:`roofline`.

    Attributes:
        graph, device, batch_size: what was bounded, on what.
        nodes: node id -> :class:`NodeRoofline`, in schedule order.
        compute_s, memory_s: the sums of the per-node compute and memory times.
        time_s: the sum of the per-node bounds (``>= max(compute_s, memory_s)``).
        counts: the :class:`~costmodels.Counts` it was computed from.
    """

    graph: str
    device: DeviceSpec
    batch_size: int
    nodes: Mapping[str, NodeRoofline]
    compute_s: float
    memory_s: float
    time_s: float
    counts: Counts

    @property
    def time_ms(self) -> float:
        """The lower bound in milliseconds."""
        return 1e3 * self.time_s

    @property
    def compute_bound(self) -> list[str]:
        """Ids of the compute-bound nodes, in schedule order."""
        return [n for n, r in self.nodes.items() if r.bound == "compute"]

    @property
    def memory_bound(self) -> list[str]:
        """Ids of the memory-bound nodes, in schedule order."""
        return [n for n, r in self.nodes.items() if r.bound == "memory"]

    def __getitem__(self, node_id: str) -> NodeRoofline:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise KeyError(f"no node {node_id!r} in the roofline of graph {self.graph!r}") from None

    def summary(self) -> str:
        """One line: the bound, its split, and how many nodes are compute- or memory-bound."""
        return (f"roofline of {self.graph!r} on {self.device.name}, batch {self.batch_size}: "
                f">= {self.time_ms:.4g} ms (compute {1e3 * self.compute_s:.4g} ms, memory {1e3 * self.memory_s:.4g} "
                f"ms); {len(self.compute_bound)} compute-bound, {len(self.memory_bound)} memory-bound nodes")

    def to_dict(self) -> dict:
        """JSON-ready form (the device as its fields, per-node records as a list)."""
        return {"graph": self.graph, "device": dataclasses.asdict(self.device), "batch_size": self.batch_size,
                "time_s": self.time_s, "compute_s": self.compute_s, "memory_s": self.memory_s,
                "nodes": [dataclasses.asdict(r) for r in self.nodes.values()]}


def roofline(g: Graph, device: DeviceSpec, batch_size: int = 1) -> Roofline:
    """The roofline lower bound on the latency of ``g`` on ``device``.

    Per node, compute time is ``flops / device.peak_flops`` and memory time is
    ``bytes_moved / device.mem_bandwidth`` (inputs read, output written and weights read once;
    FLOPs and bytes as :func:`costmodels.count` defines them). The node's bound is the larger
    of the two, and the network's is the sum over nodes: nodes run one after another, and
    nothing is charged for kernel launches, framework overhead or caches, so measured latency
    is above it (often far above at batch size 1). A supernet is bounded as the sum over all
    candidates, as ``count`` counts it.

    It is a bound on the graph *as counted*, node by node: a backend that fuses nodes (ONNX
    Runtime folds BN into the conv and fuses the activation) does less arithmetic and traffic,
    and a probed CPU spec holds attainable rather than theoretical peaks, so on a CPU a measured
    latency can fall below the probed roofline. Rank with it; do not treat it as a guarantee.

    Args:
        g: the graph.
        device: a :class:`DeviceSpec` (``H100_SXM``, ``H200``, ``DeviceSpec.probe_cpu()``, your own).
        batch_size: the batch size (a positive int).

    Returns:
        A :class:`Roofline` with per-node records and the totals.

    Raises:
        TypeError: ``device`` is not a ``DeviceSpec``.
        ValueError: ``batch_size`` is not a positive int.
        IRError: the graph is invalid (see :func:`costmodels.count`).

    Example:
        >>> r = costmodels.roofline(archir.samples.resnet_like(), costmodels.H100_SXM)   # doctest: +SKIP
        >>> r.time_ms, r.memory_bound[:3]                                                 # doctest: +SKIP
    """
    if not isinstance(device, DeviceSpec):
        raise TypeError(f"roofline: device must be a costmodels.DeviceSpec, got {type(device).__name__}; "
                        f"use a preset ({', '.join(sorted(PRESETS))}) or DeviceSpec.probe_cpu()")
    c = count(g, batch_size=batch_size)
    nodes = {}
    for n, r in c.nodes.items():
        comp = r.flops / device.peak_flops
        mem = r.bytes_moved / device.mem_bandwidth
        bound = "none" if comp == 0 and mem == 0 else ("compute" if comp > mem else "memory")
        nodes[n] = NodeRoofline(id=n, op=r.op, flops=r.flops, bytes_moved=r.bytes_moved, compute_s=comp,
                                memory_s=mem, time_s=max(comp, mem), bound=bound,
                                intensity=r.flops / r.bytes_moved if r.bytes_moved else (math.inf if r.flops else 0.0))
    return Roofline(graph=g.name, device=device, batch_size=c.batch_size, nodes=MappingProxyType(nodes),
                    compute_s=sum(r.compute_s for r in nodes.values()),
                    memory_s=sum(r.memory_s for r in nodes.values()),
                    time_s=sum(r.time_s for r in nodes.values()), counts=c)
