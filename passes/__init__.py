"""passes: graph-to-graph rewrites of archir graphs, checked numerically.

Public names:
    Infrastructure: graph_pass, pass_name, PassError, PreconditionError, PostconditionError,
        FunctionNotPreserved.
    The numeric check: check_preserved, PreservationReport, OutputError (eval mode).
    The pass context: instruments (``with passes.instruments(Verify(), Timing()):`` observes every
        pass called inside it; ``ARCHIR_VERIFY=1`` turns on Verify + CheckPreserved for the process),
        PassInstrument and the instruments Verify, CheckPreserved, Timing, DumpIR; changed (did a
        pass change the graph?).
    Pipelines: PassManager (``until_fixed_point=True``), PassRecord, bind, fixed_point.
    Morphisms (function-preserving): deepen, insert_bn, enlarge_kernel, add_skip, widen
        (and widen_noisy, its noisy Net2Net variant; widen_targets, widen_reason).
    Channel coupling (shared by widen and pruning): analyze, dependency_groups, Coupling, Group.
    Pruning: prune_channels (-> PruneResult(graph, report)), prune_channels_pass, prunable_groups,
        PruneReport, PruneResult; remove_op, prune_zero_paths (SNAS edge deletion).
    Canonicalization (function-preserving, eval mode): fold_batchnorm, eliminate_identity,
        eliminate_dead, canonicalize.
    Petridish: finalize (removes stop_gradient / stop_forward after candidate selection), stop_ops.
    Search helpers: MORPHISMS, register_morphism, legal_targets, random_morphism.
"""

from passes.infra import (
    FunctionNotPreserved,
    PassError,
    PostconditionError,
    PreconditionError,
    changed,
    graph_pass,
    instruments,
    pass_name,
)
from passes.check import OutputError, PreservationReport, check_preserved
from passes.manager import (
    CheckPreserved,
    DumpIR,
    PassInstrument,
    PassManager,
    PassRecord,
    Timing,
    Verify,
    bind,
    fixed_point,
)
from passes.deepen import deepen
from passes.insert_bn import insert_bn
from passes.enlarge_kernel import enlarge_kernel
from passes.skip import add_skip
from passes.widen import widen, widen_noisy, widen_reason, widen_targets
from passes.coupling import Coupling, Group, analyze, dependency_groups
from passes.prune import PruneReport, PruneResult, prunable_groups, prune_channels, prune_channels_pass
from passes.remove_op import prune_zero_paths, remove_op
from passes.canonicalize import canonicalize, eliminate_dead, eliminate_identity, fold_batchnorm
from passes.finalize import finalize, stop_ops
from passes.targets import MORPHISMS, legal_targets, random_morphism, register_morphism

__all__ = [
    "graph_pass", "pass_name", "PassError", "PreconditionError", "PostconditionError", "FunctionNotPreserved",
    "check_preserved", "PreservationReport", "OutputError",
    "instruments", "changed", "PassManager", "PassRecord", "PassInstrument", "bind", "fixed_point",
    "Verify", "CheckPreserved", "Timing", "DumpIR",
    "deepen", "insert_bn", "enlarge_kernel", "add_skip", "widen", "widen_noisy", "widen_targets", "widen_reason",
    "analyze", "dependency_groups", "Coupling", "Group",
    "prune_channels", "prune_channels_pass", "prunable_groups", "PruneReport", "PruneResult",
    "remove_op", "prune_zero_paths",
    "fold_batchnorm", "eliminate_identity", "eliminate_dead", "canonicalize",
    "finalize", "stop_ops",
    "MORPHISMS", "register_morphism", "legal_targets", "random_morphism",
]
