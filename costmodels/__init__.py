"""costmodels: what a graph costs on hardware (DESIGN.md, "Cost models").

Public names:
    count, Counts, NodeCount, OpCost, COUNT_HANDLERS: analytic counts (params, MACs, FLOPs,
        activation/weight bytes, peak memory under the topological schedule), per node and total.
    roofline, Roofline, NodeRoofline, DeviceSpec, H100_SXM, H200, PRESETS: the lower bound on
        latency from peak compute and memory bandwidth.
    measure, Latency, BackendUnavailable, BACKENDS: real latency on ort-cpu, ort-cuda, torch-cpu,
        torch-cuda.
    cpu_fingerprint, gpu_fingerprint, versions: what a measurement was taken on.
    LatencyTable, CorruptTableWarning, MissingLatency: per-op latencies measured
        once per device fingerprint and cached in SQLite; a network's estimate is their sum.
    Predictor, ErrorReport, error_report, kendall_tau, graph_features, fused_kernels,
        PredictorFormatError: a latency model learned from measured networks, and its error report.
    expected_cost, candidate_costs, CandidateCosts, arch_probs: the differentiable expected cost
        of a supernet under architecture probabilities (SNAS's resource penalty).

``archir`` never imports this package; it builds on ``archir`` only.
"""

from costmodels.counts import COUNT_HANDLERS, Counts, NodeCount, OpCost, count
from costmodels.device import cpu_fingerprint, gpu_fingerprint, versions
from costmodels.measure import BACKENDS, BackendUnavailable, Latency, measure
from costmodels.roofline import H100_SXM, H200, PRESETS, DeviceSpec, NodeRoofline, Roofline, roofline
from costmodels.table import CorruptTableWarning, LatencyTable, MissingLatency
from costmodels.predictor import (ErrorReport, Predictor, PredictorFormatError, error_report, fused_kernels,
                                  graph_features, kendall_tau)
from costmodels.expected import CandidateCosts, arch_probs, candidate_costs, expected_cost

__all__ = [
    "count", "Counts", "NodeCount", "OpCost", "COUNT_HANDLERS",
    "roofline", "Roofline", "NodeRoofline", "DeviceSpec", "H100_SXM", "H200", "PRESETS",
    "measure", "Latency", "BackendUnavailable", "BACKENDS",
    "cpu_fingerprint", "gpu_fingerprint", "versions",
    "LatencyTable", "CorruptTableWarning", "MissingLatency",
    "Predictor", "ErrorReport", "error_report", "kendall_tau", "graph_features", "fused_kernels",
    "PredictorFormatError",
    "expected_cost", "candidate_costs", "CandidateCosts", "arch_probs",
]
