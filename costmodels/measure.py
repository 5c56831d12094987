"""``costmodels.measure``: the real latency of a graph on ONNX Runtime or torch, CPU or CUDA.

FLOPs and rooflines rank networks only roughly; what a deployment (and a search that
optimises for it) needs is measured time on the target. ``measure`` lowers the graph with
:func:`archir.lower.to_onnx` or :func:`archir.lower.to_fx`, runs it on seeded inputs, and
reports the median and interquartile range of ``repeats`` timed runs after ``warmup`` untimed
ones, the first run (session creation + first inference) separately, and the device
fingerprint and library versions the numbers belong to.

Stable numbers
--------------
A latency is a distribution, not a number: every :class:`Latency` carries its spread
(``p25_ms``/``p75_ms``, ``iqr_ms``, every timed run in ``samples_ms``, ``n``), and measuring
the same network again gives another sample of it. To make two measurements comparable:

- **threads**: pass ``threads=`` (``1`` for per-core latency, or the number of *physical*
  cores). The default lets the backend pick, which depends on the machine and its load;
  oversubscribing cores (several processes each with all threads) makes the IQR explode.
- **warm-up**: keep ``warmup >= 10``. The first runs pay for allocation, page faults, cache
  misses, thread-pool start-up, cuDNN/ORT kernel selection; ``first_run_ms`` reports the very
  first one apart and it is never part of the median.
- **repeats**: ``repeats >= 50`` and compare *medians*; read ``iqr_ms / median_ms`` as the
  relative spread (a few percent on an idle CPU). On a shared machine the fastest run
  (``min(samples_ms)``) is the figure least disturbed by other processes, and repeating whole
  measurements in rounds (visiting the networks in a new order each round) spreads the load
  evenly, as ``benchmarks/latency_models.py`` does.
- **CPU frequency**: turbo and power saving change the clock under you. Where you can, set
  the governor to ``performance`` (``sudo cpupower frequency-set -g performance``), turn off
  turbo for the session (``echo 1 | sudo tee /sys/devices/system/cpu/intel_pstate/no_turbo``
  with Intel's pstate driver, ``echo 0 | sudo tee /sys/devices/system/cpu/cpufreq/boost`` where
  the cpufreq driver offers that switch), and pin the process to fixed cores
  (``taskset -c 2,3 python ...``). In a VM or container these knobs are usually out of reach:
  then the rounds and the fastest run above matter all the more. On a GPU, let it warm up
  and do not share it; the clocks settle after the warm-up runs.
- **an idle machine**: no builds, tests or other benchmarks at the same time (check the load
  average before and after), and compare numbers only when ``device`` and ``versions`` match.

From the command line: ``archir profile net.json --backend ort-cpu --threads 1 --repeats 100``
prints the median with p25, p75 and the IQR beside the roofline bound.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from archir.errors import ArchirError
from archir.graph import Graph
from archir.training import strip_training
from costmodels.device import cpu_fingerprint, gpu_fingerprint, versions

__all__ = ["measure", "Latency", "BackendUnavailable", "BACKENDS"]

#: The backends ``measure`` knows.
BACKENDS = ("ort-cpu", "ort-cuda", "torch-cpu", "torch-cuda")

_TORCH_CUDA_HINT = "install a CUDA build of torch (https://pytorch.org/get-started/locally/)"


class BackendUnavailable(ArchirError, RuntimeError):
    """A measurement backend cannot run here; the message names what to install or check.

    Example:
        >>> try:                                                  # doctest: +SKIP
        ...     costmodels.measure(g, backend="torch-cuda")
        ... except costmodels.BackendUnavailable as e:
        ...     print(e)
    """


@dataclass(frozen=True)
class Latency:
    """A measured latency (wall time of one forward pass of a batch).

    Attributes:
        median_ms, p25_ms, p75_ms: median and quartiles of the timed runs, in milliseconds.
        n: the number of timed runs (``repeats``).
        first_run_ms: session creation plus the first inference, timed apart (ORT: building the
            ``InferenceSession``, which optimises the graph, then one run; torch: moving the module
            and inputs to the device, then one forward). Lowering the graph is not included.
        device: the fingerprint of the device (:func:`costmodels.device.cpu_fingerprint` or
            :func:`~costmodels.device.gpu_fingerprint`).
        versions: library versions (``python``, ``numpy``, ``torch``, ``onnxruntime``; ``cuda``,
            torch's CUDA runtime, on ``torch-cuda``).
        backend: the backend name; batch_size: the batch size.
        threads: the intra-op thread count asked for (``None``: the backend's default).
        samples_ms: every timed run, in order.

    Example:
        >>> lat = costmodels.measure(g, backend="ort-cpu", threads=1)   # doctest: +SKIP
        >>> print(lat)                                                  # doctest: +SKIP
        0.183 ms (IQR 0.180-0.190, n=50, first run 12.4 ms) ort-cpu batch 1 on cpu: ...
    """

    median_ms: float
    p25_ms: float
    p75_ms: float
    n: int
    first_run_ms: float
    device: str
    versions: dict
    backend: str
    batch_size: int
    threads: int | None = None
    samples_ms: tuple = field(default=(), repr=False)

    @property
    def iqr_ms(self) -> float:
        """The interquartile range ``p75_ms - p25_ms``: the spread of the timed runs."""
        return self.p75_ms - self.p25_ms

    def to_dict(self) -> dict:
        """JSON-ready form (``samples_ms`` as a list)."""
        d = asdict(self)
        d["samples_ms"] = list(self.samples_ms)
        return d

    def __str__(self) -> str:
        return (f"{self.median_ms:.4g} ms (IQR {self.p25_ms:.4g}-{self.p75_ms:.4g}, n={self.n}, first run "
                f"{self.first_run_ms:.4g} ms) {self.backend} batch {self.batch_size}"
                f"{'' if self.threads is None else f', {self.threads} threads'} on {self.device}")


# --------------------------------------------------------------------------- checks


def _positive_int(name: str, v, *, allow_zero: bool = False, allow_none: bool = False):
    if v is None and allow_none:
        return None
    lo = 0 if allow_zero else 1
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"measure: {name} must be an int >= {lo}{' or None' if allow_none else ''}, got {v!r}")
    return int(v)


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"measure: unknown backend {backend!r}; use one of {', '.join(repr(b) for b in BACKENDS)}")
    if backend.startswith("ort"):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailable(f"backend {backend!r} needs onnxruntime, which does not import ({e}); "
                                     "install it: pip install onnxruntime (CPU) or pip install archir[gpu] (CUDA)"
                                     ) from e
        if backend == "ort-cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable(
                f"backend 'ort-cuda' needs ONNX Runtime's CUDAExecutionProvider, which onnxruntime {ort.__version__} "
                f"here lacks (providers: {ort.get_available_providers()}); install the GPU build with "
                "`pip install archir[gpu]` (onnxruntime-gpu, in place of onnxruntime) on a machine with an NVIDIA GPU "
                "and driver, or use backend 'ort-cpu'")
    else:
        import torch

        if backend == "torch-cuda":
            if torch.version.cuda is None:
                raise BackendUnavailable(f"backend 'torch-cuda': torch {torch.__version__} is a CPU-only build; "
                                         f"{_TORCH_CUDA_HINT}, or use backend 'torch-cpu'")
            if not torch.cuda.is_available():
                raise BackendUnavailable(
                    f"backend 'torch-cuda': torch {torch.__version__} is built for CUDA {torch.version.cuda} but sees "
                    "no GPU (torch.cuda.is_available() is False); run on a machine with an NVIDIA GPU, check the "
                    f"driver and CUDA_VISIBLE_DEVICES, {_TORCH_CUDA_HINT.replace('install', 'or install')} that "
                    "matches the driver, or use backend 'torch-cpu'")


def _inputs(g: Graph, batch_size: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: rng.standard_normal((batch_size, *g.node(i).type.shape), dtype=np.float32) for i in g.inputs}


def _timed(run: Callable[[], None], warmup: int, repeats: int) -> list[float]:
    """Wall-clock milliseconds of ``repeats`` calls of ``run`` (which must return only once done)."""
    for _ in range(warmup):
        run()
    out = []
    gc_was = gc.isenabled()
    gc.disable()  # a collection inside a timed run is noise, not the network's cost
    try:
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            run()
            out.append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        if gc_was:
            gc.enable()
    return out


# --------------------------------------------------------------------------- backends


def _measure_ort(g: Graph, cuda: bool, feeds: dict, warmup: int, repeats: int, threads: int | None, *,
                 iobinding: bool | None = None):
    """ORT timing; ``iobinding`` defaults to on for CUDA (a test runs that path on the CPU too)."""
    import onnxruntime as ort

    from archir.lower import to_onnx

    iobinding = cuda if iobinding is None else iobinding
    dev = "cuda" if cuda else "cpu"
    blob = to_onnx(g).SerializeToString()
    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: the CUDA EP warns about CPU fallbacks of tiny ops
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"] if cuda \
        else ["CPUExecutionProvider"]
    t0 = time.perf_counter_ns()
    sess = ort.InferenceSession(blob, so, providers=providers)
    if cuda and "CUDAExecutionProvider" not in sess.get_providers():
        raise BackendUnavailable(
            "backend 'ort-cuda': ONNX Runtime could not start the CUDAExecutionProvider (session providers: "
            f"{sess.get_providers()}); the CUDA/cuDNN libraries that onnxruntime-gpu {ort.__version__} needs are "
            "missing or do not match the driver; see https://onnxruntime.ai/docs/execution-providers/"
            "CUDA-ExecutionProvider.html#requirements, or use backend 'ort-cpu'")
    if not iobinding:
        sess.run(None, feeds)
        first = (time.perf_counter_ns() - t0) / 1e6
        return first, _timed(lambda: sess.run(None, feeds), warmup, repeats)
    # IOBinding: inputs live on the device and outputs stay there, so no host copy is timed.
    io = sess.io_binding()
    device_inputs = {name: ort.OrtValue.ortvalue_from_numpy(arr, dev, 0) for name, arr in feeds.items()}
    for name, ov in device_inputs.items():  # the dict keeps the device buffers alive while timing
        io.bind_ortvalue_input(name, ov)
    names = [o.name for o in sess.get_outputs()]
    for name in names:
        io.bind_output(name, dev, 0)
    sess.run_with_iobinding(io)
    io.synchronize_outputs()
    first = (time.perf_counter_ns() - t0) / 1e6
    outs = io.get_outputs()  # reuse the first run's device buffers: no allocation in timed runs
    io.clear_binding_outputs()
    for name, ov in zip(names, outs):
        io.bind_ortvalue_output(name, ov)

    def run():
        # run_with_iobinding synchronises the CUDA stream before it returns (unless a RunOptions
        # disables it); synchronize_outputs makes sure, so wall time covers the GPU work.
        sess.run_with_iobinding(io)
        io.synchronize_outputs()

    return first, _timed(run, warmup, repeats)


def _measure_torch(g: Graph, cuda: bool, feeds: dict, warmup: int, repeats: int, threads: int | None):
    import torch

    from archir.lower import to_fx

    gm = to_fx(g).eval()
    dev = torch.device("cuda", 0) if cuda else torch.device("cpu")
    old_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            if cuda:
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter_ns()
            gm = gm.to(dev)
            xs = [torch.from_numpy(a).to(dev) for a in feeds.values()]
            gm(*xs)
            if cuda:
                torch.cuda.synchronize(dev)
            first = (time.perf_counter_ns() - t0) / 1e6
            if not cuda:
                return first, _timed(lambda: gm(*xs), warmup, repeats)
            for _ in range(warmup):
                gm(*xs)
            torch.cuda.synchronize(dev)
            # CUDA events time the GPU work itself, without host-side launch jitter of the timer
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
            for s, e in zip(starts, ends):
                s.record()
                gm(*xs)
                e.record()
            torch.cuda.synchronize(dev)
            return first, [float(s.elapsed_time(e)) for s, e in zip(starts, ends)]
    finally:
        torch.set_num_threads(old_threads)


# --------------------------------------------------------------------------- measure


def measure(g: Graph, backend: str = "ort-cpu", batch_size: int = 1, warmup: int = 10, repeats: int = 50,
            threads: int | None = None, seed: int = 0) -> Latency:
    """Measure the latency of one forward pass of ``g`` on a real backend.

    Backends:

    - ``"ort-cpu"``: ONNX Runtime, ``CPUExecutionProvider``, on ``archir.lower.to_onnx(g)``;
      ``threads`` sets ``intra_op_num_threads``. Wall time of ``session.run``.
    - ``"ort-cuda"``: ONNX Runtime, ``CUDAExecutionProvider``, with IOBinding: inputs are copied
      to the GPU once and outputs stay there, so host copies are not timed. Wall time around
      ``run_with_iobinding`` (which synchronises the stream before returning) is used rather
      than CUDA events: ORT exposes no stream to record events on.
    - ``"torch-cpu"``: ``to_fx(g).eval()`` under ``torch.inference_mode()``; ``threads`` calls
      ``torch.set_num_threads`` and the previous count is restored afterwards.
    - ``"torch-cuda"``: the same on GPU 0, timed with ``torch.cuda.Event(enable_timing=True)``
      pairs around each forward after warm-up and ``torch.cuda.synchronize``.

    What is timed is the inference network, ``archir.strip_training(g)``: ``drop_path`` is
    bypassed and auxiliary outputs with their heads are left out, on every backend.

    Inputs are standard normal float32 arrays of shape ``(batch_size, *shape)`` from ``seed``.
    The first run (session creation or device transfer, plus the first inference) is reported
    as ``first_run_ms``; then ``warmup`` untimed runs; then ``repeats`` timed runs, with Python's
    garbage collector paused.

    How to get stable numbers:

    - fix ``threads`` (e.g. ``threads=1`` for per-core latency, or the number of physical cores);
      the default lets the backend choose, which varies with the machine and its load;
    - keep ``warmup`` (>= 10): the first runs pay for allocation, caches and lazy initialisation;
    - use enough ``repeats`` (>= 50) and compare medians, reading the IQR as the spread;
    - measure on an idle machine (no other benchmarks, builds or tests), with the CPU frequency
      governor on ``performance`` where you can; on a GPU, let it warm up and avoid sharing it;
    - compare numbers only when ``device`` and ``versions`` match.

    Args:
        g: a plain graph (no choice / stop_* nodes) with initialised weights.
        backend: one of ``"ort-cpu"``, ``"ort-cuda"``, ``"torch-cpu"``, ``"torch-cuda"``.
        batch_size: the batch size (>= 1).
        warmup: untimed runs after the first run (>= 0).
        repeats: timed runs (>= 1).
        threads: intra-op threads, or ``None`` for the backend's default.
        seed: the seed of the random inputs.

    Returns:
        A :class:`Latency`.

    Raises:
        ValueError: an unknown backend (the message lists the options) or a bad count.
        BackendUnavailable: the backend cannot run here (no GPU, no CUDA build of torch, no
            ``CUDAExecutionProvider``); the message says what to install.
        IRError: the graph is invalid, or cannot be lowered (``LoweringError``: a supernet needs
            ``archir.derive`` first).

    Example:
        >>> lat = costmodels.measure(archir.samples.resnet_like(), backend="ort-cpu", threads=1)  # doctest: +SKIP
        >>> lat.median_ms, lat.iqr_ms, lat.n                                                      # doctest: +SKIP
    """
    if not isinstance(backend, str):
        raise ValueError(f"measure: backend must be a string, one of {', '.join(repr(b) for b in BACKENDS)}; "
                         f"got {backend!r}")
    batch_size = _positive_int("batch_size", batch_size)
    warmup = _positive_int("warmup", warmup, allow_zero=True)
    repeats = _positive_int("repeats", repeats)
    threads = _positive_int("threads", threads, allow_none=True)
    seed = _positive_int("seed", seed, allow_zero=True)
    _check_backend(backend)
    g.validate()
    g = strip_training(g)  # the network as deployed: no drop_path, no auxiliary head
    feeds = _inputs(g, batch_size, seed)
    cuda = backend.endswith("cuda")
    if backend.startswith("ort"):
        first, samples = _measure_ort(g, cuda, feeds, warmup, repeats, threads)
    else:
        first, samples = _measure_torch(g, cuda, feeds, warmup, repeats, threads)
    p25, med, p75 = (float(v) for v in np.percentile(samples, [25, 50, 75]))
    vers = versions()
    if backend == "torch-cuda":  # onnxruntime-gpu does not report its CUDA version at run time
        import torch

        vers["cuda"] = str(torch.version.cuda)
    return Latency(median_ms=med, p25_ms=p25, p75_ms=p75, n=len(samples), first_run_ms=first,
                   device=gpu_fingerprint(0) if cuda else cpu_fingerprint(), versions=vers, backend=backend,
                   batch_size=batch_size, threads=threads, samples_ms=tuple(samples))
