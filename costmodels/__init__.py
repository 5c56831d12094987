"""costmodels: what a graph costs on hardware (DESIGN.md, "Cost models").

Public names:
    count, Counts, NodeCount, OpCost, COUNT_HANDLERS: analytic counts (params, MACs, FLOPs,
        activation/weight bytes, peak memory under the topological schedule), per node and total.
    roofline, Roofline, NodeRoofline, DeviceSpec, H100_SXM, H200, PRESETS: the lower bound on
        latency from peak compute and memory bandwidth.
    measure, Latency, BackendUnavailable, BACKENDS: real latency on ort-cpu, ort-cuda, torch-cpu,
        torch-cuda.
    cpu_fingerprint, gpu_fingerprint, versions: what a measurement was taken on.

``archir`` never imports this package; it builds on ``archir`` only.
"""

from costmodels.counts import COUNT_HANDLERS, Counts, NodeCount, OpCost, count
from costmodels.device import cpu_fingerprint, gpu_fingerprint, versions
from costmodels.measure import BACKENDS, BackendUnavailable, Latency, measure
from costmodels.roofline import H100_SXM, H200, PRESETS, DeviceSpec, NodeRoofline, Roofline, roofline

__all__ = [
    "count", "Counts", "NodeCount", "OpCost", "COUNT_HANDLERS",
    "roofline", "Roofline", "NodeRoofline", "DeviceSpec", "H100_SXM", "H200", "PRESETS",
    "measure", "Latency", "BackendUnavailable", "BACKENDS",
    "cpu_fingerprint", "gpu_fingerprint", "versions",
]
