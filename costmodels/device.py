"""Device fingerprints and library versions: what a measured latency was measured *on*.

A latency means nothing without the machine it came from. ``measure`` stamps every
:class:`~costmodels.measure.Latency` with :func:`cpu_fingerprint` or :func:`gpu_fingerprint`
and :func:`versions`, and a latency cache keys on them, so numbers from two machines or two
library versions are never mixed.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import subprocess
import sys

__all__ = ["cpu_fingerprint", "gpu_fingerprint", "versions"]


@functools.lru_cache(maxsize=None)
def _cpu_model() -> str:
    # /proc/cpuinfo names the model on Linux ("model name" on x86, "Model"/"CPU part" on ARM);
    # platform.processor() is often empty or just "x86_64" there, so it is the fallback.
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
        for key in ("model name", "Model", "Hardware", "cpu model"):
            m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
            if m and m.group(1).strip():
                return " ".join(m.group(1).split())
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                 timeout=5)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown cpu"


def cpu_fingerprint() -> str:
    """The CPU this process runs on: model name, logical CPU count and architecture.

    Returns:
        e.g. ``"cpu: AMD EPYC 7B13 (16 logical, x86_64)"``.

    Example:
        >>> cpu_fingerprint().startswith("cpu: ")
        True
    """
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)
    return f"cpu: {_cpu_model()} ({n} logical, {platform.machine() or 'unknown arch'})"


@functools.lru_cache(maxsize=None)
def _nvidia_driver() -> str | None:
    try:  # the kernel module states its version here on Linux, no subprocess needed
        with open("/proc/driver/nvidia/version", encoding="utf-8", errors="replace") as f:
            m = re.search(r"Kernel Module(?: for \w+)?\s+([0-9][0-9.]+)", f.read())
            if m:
                return m.group(1)
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0].strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return None


def _gpu_name_smi(index: int) -> str | None:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, f"--id={index}", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def gpu_fingerprint(index: int = 0) -> str:
    """The GPU ``index``: its name, the NVIDIA driver version and the CUDA runtime of torch.

    The name comes from torch when it sees the GPU, else from ``nvidia-smi``.

    Args:
        index: the CUDA device index.

    Returns:
        e.g. ``"gpu: NVIDIA H100 80GB HBM3 (driver 550.54.15, cuda 12.4)"``; parts that
        cannot be found read ``unknown``.

    Example:
        >>> gpu_fingerprint()            # doctest: +SKIP
        'gpu: NVIDIA H100 80GB HBM3 (driver 550.54.15, cuda 12.4)'
    """
    name, cuda = None, None
    try:
        import torch

        cuda = torch.version.cuda
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(index)
    except Exception:  # a broken CUDA install must not break the fingerprint
        pass
    name = name or _gpu_name_smi(index) or "unknown gpu"
    return f"gpu: {name} (driver {_nvidia_driver() or 'unknown'}, cuda {cuda or 'unknown'})"


def versions() -> dict[str, str]:
    """Versions of the libraries that decide a latency: python, numpy, torch, onnxruntime.

    A library that is not installed reads ``"absent"``.

    Returns:
        ``{"python": "3.11.9", "numpy": ..., "torch": ..., "onnxruntime": ...}``.

    Example:
        >>> sorted(versions())
        ['numpy', 'onnxruntime', 'python', 'torch']
    """
    out = {"python": platform.python_version()}
    for mod in ("numpy", "torch", "onnxruntime"):
        try:
            out[mod] = str(__import__(mod).__version__)
        except Exception:
            out[mod] = "absent"
    return out
