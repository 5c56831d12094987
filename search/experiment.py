"""The search loop: ask a strategy, evaluate on an executor, record in the store, repeat.

::

    from search.experiment import ExperimentConfig, run_search
    cfg = ExperimentConfig(space="chain", strategy="evolution", dataset="digits", budget="3m",
                           objective="macs", seed=0)
    summary = run_search(cfg, "runs/demo", executor="process")
    summary.best.metrics["test_error"], [c.id for c in summary.frontier]

How a search runs, asynchronously (``scheduling="async"``, the default):

1. ``round_size`` candidates are kept in flight: whenever one finishes (and at the start) the
   strategy is asked for one more (``ask(1)``); it gets the next id, a seed derived from
   (experiment seed, id), ``round`` = the number of results told so far, and is recorded in the
   store as ``queued``; the executor evaluates it (build the graph, train it, count/measure its
   costs);
2. each result is recorded as it arrives (``done`` with the trained graph in ``graphs/<id>.json``,
   or ``failed`` with the reason: the search goes on) together with ``told``, its position in the
   order results are told, and is told to the strategy at once (``tell([c])``). A strategy that
   needs a result still in flight before it can propose more (a PNAS step, the hill climber's
   start graph) proposes nothing and the loop waits for the next result.

So no worker waits for the slowest candidate of a round (aging evolution is defined this way).
With the serial executor candidates finish first in, first out, so a seed gives bit-identical
results; with the process and Ray executors which candidate is asked next depends on which
result came first, and the store records that order: a killed search resumes exactly, because
``resume=True`` replays the stored asks and tells in that order through a fresh strategy
(checking each asked candidate matches), re-runs the candidates that were in flight, tells the
results that arrived after the last ask as arriving results, and continues. Nothing finished is
lost or evaluated twice.

In synchronous rounds (``scheduling="sync"``, ``archir search --sync``, and every run stored
before asynchronous scheduling existed):

1. the strategy is asked for ``round_size`` candidates (``round`` = the round's number);
2. the executor evaluates them; each result is recorded as it arrives;
3. the round's results are told to the strategy in id order, whatever order they finished in.

So the same seed gives the same candidates with *every* executor (the serial-equivalent mode),
and ``resume=True`` replays every stored round (ask, check the decisions match, tell the stored
results), re-runs the unfinished candidates of the last round, and continues.

**Budget**: ``"200c"`` stops after 200 candidates (failed ones count, cache hits do not unless
``count_duplicates``); ``"10m"`` / ``"90s"`` / ``"1h"`` is search wall time, summed over resumed
sessions; a new candidate (in rounds: a new round) is not started when the time left is less
than the mean candidate (round) time so far (the search ends near the budget, not a round after
it). ``resume=True`` with a larger budget of the same kind (``--resume --budget 400c`` on a 200c
run, or a longer time) extends a finished or killed run: the store's config takes the new budget
and the search goes on where it stopped; with the serial executor the extended run equals a
straight run with the larger budget (same seed, same strategy; in rounds, when the old budget is
a multiple of ``round_size``). A smaller budget, or one of another kind, is refused (a
``ConfigMismatch`` naming it); every other option must equal the stored one.

**De-duplication** (``dedup``, on by default): before a candidate is evaluated its architecture
key (:func:`search.evaluators.arch_key`: the space's architecture string, e.g. NB201's
``|nor_conv_3x3~0|+|...|``, or the canonical JSON of its decisions, which fix the structure a
space builds) is looked up among the ``done`` candidates; a match reuses that result (metrics,
costs, score, graph hash and graph file) and is recorded ``done`` with ``cache_of`` = the
original's id and no training time. Two equal candidates of one round (or in flight at once)
are evaluated once (the lower id; the other waits for it, without taking a worker). A failed result is not reused (the duplicate is evaluated).
Candidates grown from a trained parent (``search.morph``: hillclimb, petridish) are never
de-duplicated: their weights come from the parent's training and their own seed. A cache hit
is told to the strategy like any result; it does not count against a candidate budget unless
``count_duplicates`` (then the run asks exactly the budget's candidates), and a run asks at most
10 x the budget's candidates in all (a small space exhausted by a strategy that keeps proposing
known architectures ends there, with a progress line saying so).

**Objective** (lower is better; this is the ``score`` stored per candidate):

- ``error``: the validation error.
- ``macs`` | ``params`` | ``flops`` | ``latency:<backend>`` (``ort-cpu``, ``torch-cpu``,
  ``ort-cuda``, ``torch-cuda``): ``val_error + cost_weight * log2(cost)``, the additive form of
  MnasNet's ``accuracy * (cost / target) ** w`` reward: with the default ``cost_weight`` 0.02,
  halving the cost is worth 2 points of validation error. Latency is the median of
  ``costmodels.measure`` (batch 1, one thread, 5 warm-up and 20 timed runs) in milliseconds,
  taken in the worker right after training; counts come from ``costmodels.count`` (batch 1).
  Counts are exact and the same with every executor; a measured latency is not (with the
  ``process``/``ray`` executors another candidate may be training on the next core), so a
  latency objective makes the *choices* of evolution depend on timing noise. For comparable
  latencies use the ``serial`` executor on an idle machine, or a count objective.
- ``max_latency_ms``: a hard budget. Every candidate is still trained and recorded, but one over
  the budget is marked ``within_budget=False`` and is never selected (not as an evolution parent
  while a member within budget is drawn, not as the best, not on the Pareto frontier). Latency is
  measured on the objective's backend, or on ``latency_backend`` when the objective is not a
  latency.

The Pareto gallery plots validation error against the objective's cost (MACs for ``error``).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from archir.errors import ArchirError, is_user_error
from search.pareto import Point, frontier
from search.store import DB_NAME, Candidate, Store, StoreError

__all__ = ["ExperimentConfig", "ConfigError", "Progress", "Budget", "parse_budget", "Objective", "parse_objective",
           "run_search", "SearchSummary", "evaluate_candidate", "candidate_seed", "best_candidate",
           "frontier_candidates", "gallery_table", "dedup_key", "record_cache_hit", "check_resume_config",
           "MAX_ASKED_PER_BUDGET", "write_gallery", "export_candidate", "load_candidate_graph",
           "DEFAULT_TRAIN"]


class ConfigError(ArchirError, ValueError):
    """A bad experiment option (budget, objective, round size, ...).

    Attributes:
        hint: how to fix it (one line); ``message``, ``where`` and the rest as for
            :class:`archir.ArchirError` (``where=``/``file=``/``candidate=`` are accepted too).
    """

    def __init__(self, message: str, hint: str | None = None, **where: Any) -> None:
        super().__init__(message, hint=hint, **where)


# --------------------------------------------------------------------------- budget and objective


@dataclass(frozen=True)
class Budget:
    """``kind`` ``"time"`` (``value`` seconds) or ``"candidates"`` (``value`` a count)."""

    kind: str
    value: float

    def __str__(self) -> str:
        return f"{int(self.value)} candidates" if self.kind == "candidates" else _fmt_time(self.value)


_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_budget(text: str) -> Budget:
    """Parse ``"200c"`` (candidates), ``"90s"``, ``"10m"``, ``"1.5h"`` (search wall time).

    Raises:
        ConfigError: anything else, or a budget that is not positive.

    Example:
        >>> parse_budget("10m")
        Budget(kind='time', value=600.0)
        >>> parse_budget("200c")
        Budget(kind='candidates', value=200)
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([csmh])\s*", str(text))
    if not m:
        raise ConfigError(f"budget {text!r} is not a number with a unit",
                          hint="use e.g. 200c (candidates), 90s, 10m or 1h (wall time)")
    num, unit = float(m.group(1)), m.group(2)
    if unit == "c":
        if num != int(num) or num < 1:
            raise ConfigError(f"budget {text!r}: the number of candidates must be a whole number >= 1",
                              hint="use e.g. 200c")
        return Budget("candidates", int(num))
    if num <= 0:
        raise ConfigError(f"budget {text!r}: the time must be positive", hint="use e.g. 3m")
    return Budget("time", num * _UNITS[unit])


_COUNT_COSTS = ("macs", "params", "flops")
_LATENCY_BACKENDS = ("ort-cpu", "torch-cpu", "ort-cuda", "torch-cuda")


@dataclass(frozen=True)
class Objective:
    """A parsed objective: ``cost`` is None (error only), a count, or ``"latency"`` on ``backend``."""

    cost: str | None
    backend: str | None = None

    @property
    def cost_key(self) -> str:
        """The key of the cost in a candidate's ``costs`` (the gallery's x axis)."""
        if self.cost is None:
            return "macs"
        return "latency_ms" if self.cost == "latency" else self.cost

    @property
    def cost_label(self) -> str:
        """The x axis label of the gallery."""
        return {"macs": "MACs", "params": "parameters", "flops": "FLOPs"}.get(
            self.cost_key, f"latency ms ({self.backend}, batch 1)")


def parse_objective(text: str) -> Objective:
    """Parse ``error``, ``macs``, ``params``, ``flops`` or ``latency:<backend>``.

    Raises:
        ConfigError: anything else (the message lists the choices).

    Example:
        >>> parse_objective("latency:ort-cpu")
        Objective(cost='latency', backend='ort-cpu')
    """
    t = str(text).strip()
    if t == "error":
        return Objective(None)
    if t in _COUNT_COSTS:
        return Objective(t)
    if t.startswith("latency"):
        backend = t.partition(":")[2] or "ort-cpu"
        if backend not in _LATENCY_BACKENDS:
            raise ConfigError(f"objective {text!r}: unknown latency backend {backend!r}",
                              hint=f"use latency:<backend> with one of {', '.join(_LATENCY_BACKENDS)}")
        return Objective("latency", backend)
    raise ConfigError(f"unknown objective {text!r}",
                      hint="use error, macs, params, flops or latency:ort-cpu (latency:torch-cpu, ...)")


# --------------------------------------------------------------------------- config

DEFAULT_TRAIN: dict[str, Any] = {"epochs": 4, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 3e-4,
                                 "schedule": "cosine"}


@dataclass
class ExperimentConfig:
    """Everything that defines a search run (stored in the run's store; ``--resume`` must match it).

    Attributes:
        space: ``"chain"`` or ``"darts"`` (``search.spaces.get_space``), or ``"start"`` for the strategies
            that grow trained networks (hillclimb, petridish; ``search.morph.StartSpace``).
        space_options: extra keyword arguments of the space (e.g. ``cells``, ``channels``).
        strategy: ``"random"``, ``"evolution"`` (``search.strategies.STRATEGIES``).
        strategy_options: e.g. ``{"population": 10, "sample": 3}`` for evolution.
        dataset: ``"digits"`` or a path (``.npz`` / image folder) for ``search.data.load_dataset``.
        objective: see the module docstring.
        cost_weight: the weight of ``log2(cost)`` in the score.
        max_latency_ms: hard latency budget, or None.
        latency_backend: where latency is measured for ``max_latency_ms`` when the objective has none.
        budget: ``"200c"`` or ``"10m"`` (see :func:`parse_budget`).
        seed: the experiment seed (strategy, candidate seeds).
        round_size: candidates asked per round (evaluated in parallel by a parallel executor).
        train: ``search.train.TrainConfig`` fields except ``seed`` (per candidate) and ``threads`` (1).
        evaluator: how a candidate's metrics are produced (``search.evaluators``): ``"train"`` (default),
            ``"table:FILE.csv"`` (a tabular benchmark: looked up, not trained; the dataset is not loaded), or
            ``"callable:<module>:<qualname>"`` (set by ``run_search(..., evaluator=fn)``).
        evaluator_options: the table's ``metric``, ``test_metric`` and ``key`` columns.
        dedup: de-duplication (default on): a candidate of the same architecture as a finished one
            reuses that one's result (a cache hit, ``Candidate.cache_of``) instead of being evaluated
            again; see the module docstring.
        count_duplicates: cache hits count against a candidate budget (default: they do not).
        scheduling: ``"async"`` (default): ``round_size`` candidates are kept in flight, a new one is asked
            for whenever one finishes and each result is told as it arrives; ``"sync"``: rounds of
            ``round_size``, each told when all of it is in (``--sync``). See the module docstring.

    ``evaluator``, ``evaluator_options``, ``dedup`` and ``count_duplicates`` are stored only when not
    the defaults, and ``scheduling`` only when ``"async"``, so runs stored before they existed (which
    ran in rounds) resume unchanged: a stored config without ``scheduling`` reads as ``"sync"``.
    """

    space: str = "chain"
    space_options: dict = field(default_factory=dict)
    strategy: str = "evolution"
    strategy_options: dict = field(default_factory=dict)
    dataset: str = "digits"
    objective: str = "error"
    cost_weight: float = 0.02
    max_latency_ms: float | None = None
    latency_backend: str = "ort-cpu"
    budget: str = "20c"
    seed: int = 0
    round_size: int = 2
    train: dict = field(default_factory=lambda: dict(DEFAULT_TRAIN))
    evaluator: str = "train"
    evaluator_options: dict = field(default_factory=dict)
    dedup: bool = True
    count_duplicates: bool = False
    scheduling: str = "async"

    def to_dict(self) -> dict:
        """The JSON form stored in the run (``evaluator`` left out when ``"train"``, its options when empty,
        ``dedup`` when on, ``count_duplicates`` when off)."""
        d = asdict(self)
        if d["evaluator"] == "train":
            del d["evaluator"]
        if not d["evaluator_options"]:
            del d["evaluator_options"]
        if d["dedup"] is True:
            del d["dedup"]
        if d["count_duplicates"] is False:
            del d["count_duplicates"]
        if d["scheduling"] == "sync":
            del d["scheduling"]
        return json.loads(json.dumps(d, sort_keys=True))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ExperimentConfig":
        """The config of a stored run."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{"scheduling": "sync", **{k: v for k, v in d.items() if k in known}})

    def check(self) -> tuple[Budget, Objective]:
        """Check every option; returns the parsed budget and objective.

        Raises:
            ConfigError: the first bad option, with how to fix it.
        """
        budget = parse_budget(self.budget)
        obj = parse_objective(self.objective)
        if not (isinstance(self.round_size, int) and self.round_size >= 1):
            raise ConfigError(f"round size must be an int >= 1, got {self.round_size!r}", hint="pass --round-size 2")
        if not (isinstance(self.cost_weight, (int, float)) and math.isfinite(self.cost_weight)
                and self.cost_weight >= 0):
            raise ConfigError(f"cost weight must be a finite number >= 0, got {self.cost_weight!r}",
                              hint="pass --cost-weight 0.02")
        if self.max_latency_ms is not None and not self.max_latency_ms > 0:
            raise ConfigError(f"--max-latency-ms must be positive, got {self.max_latency_ms}",
                              hint="pass a latency budget in milliseconds, e.g. --max-latency-ms 0.5")
        if self.latency_backend not in _LATENCY_BACKENDS:
            raise ConfigError(f"unknown latency backend {self.latency_backend!r}",
                              hint=f"use one of {', '.join(_LATENCY_BACKENDS)}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an int >= 0, got {self.seed!r}", hint="pass --seed 0")
        for name in ("dedup", "count_duplicates"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}",
                                  hint=f"pass {name}=True or {name}=False")
        if self.scheduling not in ("async", "sync"):
            raise ConfigError(f"scheduling must be 'async' or 'sync', got {self.scheduling!r}",
                              hint="drop the option (asynchronous), or pass --sync for rounds")
        if self.count_duplicates and not self.dedup:
            raise ConfigError("count_duplicates (--count-duplicates) needs de-duplication, which is off (--no-dedup)",
                              hint="drop one of them: without de-duplication every candidate is evaluated and counts")
        from search.evaluators import check_evaluator

        check_evaluator(self.evaluator, self.evaluator_options, objective_cost=obj.cost,
                        latency_budget=self.max_latency_ms is not None)
        return budget, obj

    def latency_backend_used(self) -> str | None:
        """The backend latency is measured on, or None when latency is not needed."""
        obj = parse_objective(self.objective)
        if obj.cost == "latency":
            return obj.backend
        return self.latency_backend if self.max_latency_ms is not None else None


def candidate_seed(seed: int, cid: int) -> int:
    """The seed of candidate ``cid`` of an experiment seeded ``seed`` (weights and training)."""
    return int(np.random.SeedSequence([int(seed), int(cid)]).generate_state(1)[0] & 0x7FFFFFFF)


# --------------------------------------------------------------------------- the worker side


_DATASETS: dict[str, Any] = {}


def _dataset(spec: str):
    if spec not in _DATASETS:
        from search.data import load_dataset

        _DATASETS[spec] = load_dataset(spec)
    return _DATASETS[spec]


def _one_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def evaluate_candidate(task: Mapping[str, Any]) -> dict:
    """Evaluate one candidate (runs in the executor's worker): build, train, cost, serialise.

    Args:
        task: plain data: ``id``, ``seed``, ``space`` (name), ``space_options`` (incl.
            ``input_shape``, ``num_classes``), ``decisions``, ``dataset``, ``train`` (TrainConfig
            fields), ``latency_backend`` (or None), ``threads``. Optional ``init_graph``
            (``search.morph.graph_to_data``; one-shot ``inherit``): start from that graph and its
            weights instead of ``space.build(decisions)`` -- training fine-tunes it, and the metrics
            add ``inherited_val_error`` (before training) and ``inherited = 1``.

    Returns:
        Plain data: ``id``, ``status`` (``ok``/``failed``), ``reason``, ``metrics``, ``costs``,
        ``timings``, ``epochs``, ``graph_hash``, ``graph_json`` (archir JSON text) and
        ``weights`` (safetensors bytes) of the trained graph, ``history`` (the per-epoch training figures,
        ``search.train.TrainResult.history``) and ``traceback``. Never raises for a
        bad candidate: ``reason`` is one line (``"<stage>: <ExceptionType>: <first line>"``), and
        ``traceback`` is the full traceback when the exception is an archir bug rather than a user
        error (``archir.errors.is_user_error``: an ``ArchirError`` such as a refused pass, not raised
        from another exception), else None. A task with an ``evaluator`` other than ``"train"`` is
        looked up instead (``search.evaluators.evaluate_task``: no graph, no training).
    """
    if task.get("evaluator", "train") != "train":
        from search.evaluators import evaluate_task

        return evaluate_task(task)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"id": task["id"], "status": "failed", "reason": None, "metrics": {}, "costs": {},
                           "timings": {}, "epochs": 0, "graph_hash": None, "graph_json": None, "weights": None,
                           "traceback": None}
    stage = "build"
    try:
        import archir
        from search.morph import get_space, grow
        from search.train import TrainConfig, train

        grown: dict[str, Any] = {"metrics": {}, "epochs": 0}
        if "parent_graph" in task:  # morphism search: the parent's trained graph + rewrites (search.morph)
            g, grown = grow(task, _dataset(task["dataset"]))
        elif "init_graph" in task:  # one-shot inherit: the architecture cut out of the trained supernet
            from search.morph import graph_from_data
            from search.train import evaluate

            g = graph_from_data(task["init_graph"])
            ds0 = _dataset(task["dataset"])
            grown["metrics"] = {"inherited_val_error": float(evaluate(g, ds0.x_val, ds0.y_val)[0]), "inherited": 1.0}
        else:
            space = get_space(task["space"], **dict(task["space_options"]))
            g = space.build(space.decode(task["decisions"]), seed=int(task["seed"]))
        out["graph_hash"] = g.structural_hash()
        t1 = time.perf_counter()
        out["timings"]["build_s"] = t1 - t0
        stage = "train"
        ds = _dataset(task["dataset"])
        cfg = TrainConfig(**{**task["train"], "seed": int(task["seed"]), "threads": int(task.get("threads", 1)),
                             **({"device": task["device"]} if task.get("device") else {})})
        res = train(g, ds, cfg)
        t2 = time.perf_counter()
        out["timings"]["train_s"] = t2 - t1
        out["epochs"] = int(res.epochs) + int(grown["epochs"])  # candidate-epochs, growing included
        out["metrics"] = {**{k: float(v) for k, v in res.metrics.items()}, **grown["metrics"]}
        out["history"] = [dict(h) for h in res.history]  # per epoch: the store keeps it apart (Store.set_curve)
        if res.status != "ok" or res.graph is None:
            out["reason"] = res.reason or "training failed"
            out["traceback"] = getattr(res, "traceback", None)
            return out
        stage = "cost"
        import costmodels

        tg = res.graph
        c = costmodels.count(tg)
        costs = {"params": float(c.params), "macs": float(c.macs), "flops": float(c.flops)}
        if task.get("latency_backend"):
            lat = costmodels.measure(tg, backend=task["latency_backend"], batch_size=1, threads=1,
                                     warmup=int(task.get("latency_warmup", 5)),
                                     repeats=int(task.get("latency_repeats", 20)))
            costs["latency_ms"] = float(lat.median_ms)
            costs["latency_iqr_ms"] = float(lat.iqr_ms)
        out["costs"] = costs
        t3 = time.perf_counter()
        out["timings"]["cost_s"] = t3 - t2
        stage = "save"
        with tempfile.TemporaryDirectory(prefix="archir-cand-") as tmp:
            p = archir.save(tg, Path(tmp) / f"{task['id']}.json")
            out["graph_json"] = p.read_text()
            w = p.with_suffix(".safetensors")
            out["weights"] = w.read_bytes() if w.exists() else None
        out["status"] = "ok"
    except Exception as e:  # a bad candidate is recorded as failed with the reason; the search goes on
        out["reason"] = f"{stage}: {_one_line(e)}"
        # a user error (a refused pass, a bad decision) is its one line; anything else is a bug: keep the traceback
        out["traceback"] = None if is_user_error(e) else traceback.format_exc()
    finally:
        out["timings"]["total_s"] = time.perf_counter() - t0
    return out


# --------------------------------------------------------------------------- the driver side


def _score(cfg: ExperimentConfig, obj: Objective, metrics: Mapping, costs: Mapping) -> float:
    err = float(metrics["val_error"])
    if obj.cost is None:
        return err
    cost = float(costs[obj.cost_key])
    return err + float(cfg.cost_weight) * math.log2(max(cost, 1e-12))


def _within_budget(cfg: ExperimentConfig, costs: Mapping) -> bool:
    if cfg.max_latency_ms is None:
        return True
    return float(costs.get("latency_ms", math.inf)) <= cfg.max_latency_ms


def best_candidate(cands: Sequence[Candidate]) -> Candidate | None:
    """The done, within-budget candidate with the lowest score (lowest id on ties), or None."""
    ok = [c for c in cands if c.status == "done" and c.within_budget and c.score is not None]
    return min(ok, key=lambda c: (c.score, c.id)) if ok else None


def frontier_candidates(cands: Sequence[Candidate], cost_key: str) -> list[Candidate]:
    """The done candidates on the Pareto frontier of (validation error, ``costs[cost_key]``); a cache hit
    (``cache_of``) is left out: its architecture is there as the candidate it reused."""
    by_id = {c.id: c for c in cands}
    pts = [Point(c.id, float(c.metrics["val_error"]), float(c.costs[cost_key]), c.within_budget)
           for c in cands if c.status == "done" and "val_error" in c.metrics and cost_key in c.costs
           and c.cache_of is None]
    return [by_id[p.id] for p in frontier(pts)]


@dataclass
class SearchSummary:
    """What :func:`run_search` leaves: the run folder, the counts, the best and the frontier."""

    run_dir: Path
    config: ExperimentConfig
    counts: dict
    best: Candidate | None
    frontier: list[Candidate]
    elapsed_s: float
    session_s: float
    resumed: int = 0
    requeued: list[int] = field(default_factory=list)
    distinct: int = 0  # distinct architectures among the evaluated candidates (by structural hash)
    cache_hits: int = 0  # candidates that reused a finished one's result (de-duplication), over all sessions


def _fmt_time(s: float) -> str:
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f}s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def _fmt_cost(key: str, v: float) -> str:
    if key == "latency_ms":
        return f"{v:.3g} ms"
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:.3g}"


class Progress:
    """The live progress display: one line per finished candidate (coloured with rich if installed).

    Args:
        stream: where to write (default stderr); ``None`` turns the display off.
    """

    def __init__(self, stream=sys.stderr, use_rich: bool | None = None) -> None:
        self.stream = stream
        self._console = None
        if stream is not None and use_rich is not False:
            try:
                from rich.console import Console

                if use_rich or stream.isatty():
                    self._console = Console(file=stream, highlight=False)
            except ImportError:
                pass

    def line(self, text: str, style: str | None = None) -> None:
        """Write one line."""
        if self.stream is None:
            return
        if self._console is not None:
            self._console.print(text, style=style, markup=False)
        else:
            print(text, file=self.stream, flush=True)

    def candidate(self, c: Candidate, *, counts: Mapping[str, int], best: Candidate | None, frontier_size: int,
                  elapsed: float, budget: Budget, cost_key: str, describe: str = "") -> None:
        """The line for one finished candidate with the running totals."""
        finished = counts["done"] + counts["failed"]
        if budget.kind == "candidates":
            left = f"{finished}/{int(budget.value)} candidates"
        else:
            left = f"{_fmt_time(budget.value - elapsed)} left"
        if c.status == "done":
            what = f"#{c.id:<3} done   val_err {c.metrics['val_error']:.3f}  {cost_key} " \
                   f"{_fmt_cost(cost_key, c.costs.get(cost_key, float('nan')))}" + ("" if c.within_budget else
                                                                                     "  OVER BUDGET") \
                + (f"  cache hit of #{c.cache_of}" if c.cache_of is not None else "")
        else:
            what = f"#{c.id:<3} FAILED ({c.error})"
        best_s = f"best #{best.id} val_err {best.metrics['val_error']:.3f}" if best else "best -"
        self.line(f"[{_fmt_time(elapsed)} elapsed, {left}] {what} {c.op}"
                  f" | done {counts['done']} failed {counts['failed']} | {best_s} | frontier {frontier_size}"
                  + (f" | {describe}" if describe else ""), style=None if c.status == "done" else "red")


def _rounds(cands: Sequence[Candidate]) -> list[list[Candidate]]:
    out: dict[int, list[Candidate]] = {}
    for c in cands:
        out.setdefault(c.round, []).append(c)
    return [out[r] for r in sorted(out)]


def _same(space, a: Mapping, b: Mapping) -> bool:
    return json.dumps(space.encode(a), sort_keys=True) == json.dumps(space.encode(b), sort_keys=True)


def replay_async(strat, space, stored: Sequence[Candidate],
                 run_dir: Path) -> tuple[list[Candidate], list[Candidate]]:
    """Replay an asynchronous run's asks and tells through a fresh strategy, up to its last ask (``resume``).

    Candidate ``c`` was asked when ``c.round`` results had been told, and its result was the
    ``c.told``-th told: so the replay tells results in ``told`` order up to each candidate's
    ``round`` and asks one candidate (checking it proposes the stored decisions). Returns
    ``(tail, unfinished)``: the results told after the last ask, in told order, not told to the
    strategy yet (the run loop tells them as if they were arriving, asking for new candidates in
    between as the run would have: so a resume with a larger budget continues the run as a longer
    run would have gone on), and the unfinished candidates (in flight when the run stopped), in id order.

    Raises:
        StoreError: the store does not hold what an asynchronous run writes, or the strategy now
            proposes something else (the space or strategy code changed).
    """
    told = sorted((c for c in stored if c.told is not None), key=lambda c: c.told)
    if [c.told for c in told] != list(range(len(told))) or any(c.finished != (c.told is not None) for c in stored):
        raise StoreError("cannot resume: the told order of the stored results has gaps, or a finished candidate was "
                         "never told (or an unfinished one was): the store was not written by an asynchronous "
                         "archir search", file=run_dir, hint="start a new run (another --out folder)")
    t = 0
    for c in stored:
        if c.round > len(told) or c.round < t:
            raise StoreError(f"cannot resume: candidate {c.id} was asked after {c.round} results, but "
                             f"{len(told)} were told ({t} before the candidate before it)", file=run_dir,
                             hint="start a new run (another --out folder)")
        while t < c.round:
            strat.tell([told[t]])
            t += 1
        specs = strat.ask(1)
        if not specs or not _same(space, specs[0].decisions, c.decisions):
            got = specs[0].decisions if specs else "nothing (it waits for a result)"
            raise StoreError(f"cannot resume: candidate {c.id} (asked after {c.round} results) was {c.decisions} "
                             f"but the strategy now proposes {got}; the space or strategy code changed since this "
                             "run started", file=run_dir,
                             hint="start a new run (another --out folder) with this version of archir")
    return told[t:], [c for c in stored if not c.finished]


def _write_graph(run_dir: Path, cid: int, text: str, weights: bytes | None) -> str:
    from archir.serialize import atomic_write

    gdir = run_dir / "graphs"
    gdir.mkdir(exist_ok=True)
    if weights is not None:  # the weights first: the JSON names them and checks their sha256
        atomic_write(gdir / f"{cid}.safetensors", weights)
    atomic_write(gdir / f"{cid}.json", text.encode())
    return f"graphs/{cid}.json"


def _check_latency_backend(space, backend: str) -> None:
    """Refuse a latency backend that cannot run here before any candidate is trained."""
    import costmodels

    g = space.build(space.sample(np.random.default_rng(0)), seed=0)
    try:
        costmodels.measure(g, backend=backend, batch_size=1, warmup=0, repeats=1, threads=1)
    except costmodels.BackendUnavailable as e:
        raise ConfigError(f"latency backend {backend!r} cannot run here: {e}",
                          hint="use --objective latency:ort-cpu (or --latency-backend ort-cpu), or run on a machine "
                               "where the backend works") from None


class SearchClock:
    """Search time, summed over resumed sessions and added to the store as it passes.

    Args:
        store: the run's store (its ``elapsed_s`` is the time spent before this session).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.start = time.perf_counter()
        self.before = store.elapsed_s
        self._last = self.start

    def elapsed(self) -> float:
        """Seconds spent on this search, earlier sessions included."""
        return self.before + (time.perf_counter() - self.start)

    def session(self) -> float:
        """Seconds spent in this session."""
        return time.perf_counter() - self.start

    def tick(self) -> None:
        """Add the time since the last tick to the store."""
        now = time.perf_counter()
        self.store.add_elapsed(now - self._last)
        self._last = now


def candidate_task(config: ExperimentConfig, space_options: Mapping[str, Any], c: Candidate,
                   latency_backend: str | None) -> dict:
    """The plain-data task of :func:`evaluate_candidate` for candidate ``c`` (built from its decisions)."""
    task = {"id": c.id, "seed": c.seed, "space": config.space, "space_options": dict(space_options),
            "decisions": c.decisions, "dataset": config.dataset, "train": dict(config.train),
            "latency_backend": latency_backend, "threads": 1}
    if config.evaluator != "train":  # a lookup (search.evaluators): it counts only when the objective needs it
        obj = parse_objective(config.objective)
        task.update(evaluator=config.evaluator, evaluator_options=dict(config.evaluator_options),
                    costs=obj.cost is not None, need=obj.cost_key if obj.cost is not None else None)
    return task


def record_result(c: Candidate, res: Mapping, *, run_dir: Path, config: ExperimentConfig, obj: Objective,
                  store: Store) -> None:
    """Put an :func:`evaluate_candidate` result on ``c`` (graph file, score, status) and store it finished."""
    c.metrics = dict(res.get("metrics") or {})
    c.costs = dict(res.get("costs") or {})
    c.timings = {**(res.get("timings") or {}), "epochs": int(res.get("epochs") or 0)}
    c.graph_hash = res.get("graph_hash")
    c.traceback = None
    if res.get("status") == "ok":
        try:
            # an evaluator that trains nothing (a table, a callable) leaves no graph
            c.graph_path = None if config.evaluator != "train" and not res.get("graph_json") else \
                _write_graph(run_dir, c.id, res["graph_json"], res.get("weights"))
            c.score = _score(config, obj, c.metrics, c.costs)
            if not math.isfinite(c.score):
                raise ValueError(f"score {c.score} is not finite")
            c.within_budget = _within_budget(config, c.costs)
            c.status, c.error = "done", None
        except (OSError, KeyError, ValueError) as e:
            c.status, c.error, c.score = "failed", f"record: {_one_line(e)}", None
            c.traceback = traceback.format_exc() if isinstance(e, KeyError) else None  # a result lacking a field
    else:
        c.status, c.error, c.score = "failed", res.get("reason") or "failed (no reason given)", None
        c.traceback = res.get("traceback")
    if res.get("history"):  # the training curve, beside the row: the metrics (and recorded-run hashes) stay as they are
        store.set_curve(c.id, res["history"])
    store.finish(c)


#: a candidate budget of N asks at most this many times N candidates, cache hits included
MAX_ASKED_PER_BUDGET = 10


def dedup_key(space, decisions: Mapping) -> str | None:
    """The architecture key de-duplication compares (:func:`search.evaluators.arch_key`), or None when
    the candidate is never de-duplicated (grown from a trained parent, or decisions the space rejects)."""
    from search.evaluators import arch_key

    if getattr(space, "grows", False) or "parent" in decisions:
        return None
    try:
        return arch_key(space, decisions)
    except (ArchirError, ValueError, TypeError, KeyError):  # a bad candidate fails in its evaluation instead
        return None


def record_cache_hit(c: Candidate, orig: Candidate, store: Store) -> None:
    """Record ``c`` done with the result of ``orig`` (the same architecture, evaluated): a cache hit."""
    c.status, c.error, c.traceback = "done", None, None
    c.metrics, c.costs = dict(orig.metrics), dict(orig.costs)
    c.timings = {"total_s": 0.0, "epochs": 0}
    c.graph_hash, c.graph_path = orig.graph_hash, orig.graph_path
    c.score, c.within_budget = orig.score, orig.within_budget
    c.cache_of = orig.id
    store.finish(c)


def check_resume_config(store: Store, cfg_dict: Mapping[str, Any], budget: Budget) -> str | None:
    """Check a resumed run's config against the stored one; returns the stored budget when ``budget``
    extends it (same kind, larger), else None.

    Raises:
        ConfigMismatch: any other difference (all of them named), or a budget that is smaller than the
            stored one or of another kind.
    """
    from search.store import ConfigMismatch

    stored = store.config
    if "scheduling" not in stored and cfg_dict.get("scheduling") == "async" and "strategy" in stored:
        try:
            store.check_config({k: v for k, v in cfg_dict.items() if k != "scheduling"})
        except ConfigMismatch:
            pass  # other differences too: name them all below
        else:
            raise ConfigMismatch("--resume of a run in synchronous rounds (stored before asynchronous scheduling "
                                 "existed, or run with --sync) without --sync", file=store.run_dir,
                                 hint="add --sync (ExperimentConfig(scheduling='sync')) to resume it as it ran")
    old_text = stored.get("budget")
    if old_text is None or old_text == cfg_dict.get("budget"):
        store.check_config(cfg_dict)
        return None
    try:
        store.check_config({**cfg_dict, "budget": old_text})
    except ConfigMismatch:
        store.check_config(cfg_dict)  # name every difference, the budget's included
        raise
    try:
        old = parse_budget(old_text)
    except ConfigError:
        old = None
    if old is None or old.kind != budget.kind or budget.value < old.value:
        what = "of another kind" if old is not None and old.kind != budget.kind else "smaller"
        raise ConfigMismatch(f"--resume with budget {cfg_dict.get('budget')!r}, {what} than the run's budget "
                             f"{old_text!r}: a resume can only extend the budget", file=store.run_dir,
                             hint=f"pass --budget {old_text} (continue) or a larger budget of the same kind "
                                  "(extend); to stop earlier, stop the search: its finished candidates are kept")
    return None if budget.value == old.value else old_text


def run_search(config: ExperimentConfig, out: str | os.PathLike, *, executor: str = "serial",
               executor_options: Mapping[str, Any] | None = None, resume: bool = False,
               progress: Progress | None = None, on_candidate: Callable[[Candidate], None] | None = None,
               device: str = "cpu", evaluator: Callable[[Any], Mapping[str, float]] | None = None) -> SearchSummary:
    """Run (or resume) a search into the run folder ``out``.

    Args:
        config: the experiment.
        out: the run folder (``search.db``, ``graphs/``); must not hold a search unless ``resume``.
        executor: ``"serial"``, ``"process"`` or ``"ray"``.
        device: where candidates train (``search.train.TrainConfig.device``: ``"cpu"``, ``"auto"``,
            ``"cuda"``, ``"cuda:N"``); a run-time choice, not part of the stored experiment (a search
            resumed on another machine may train elsewhere). Default ``"cpu"``.
        executor_options: e.g. ``{"workers": 2}`` (process), ``{"address": "auto", "num_cpus": 1}`` (ray).
        resume: continue the search stored in ``out`` (its config must equal ``config``).
        progress: the display (default: none).
        on_candidate: called with every candidate as it is recorded finished (tests, notebooks).
        evaluator: a Python callable that evaluates candidates instead of training them
            (``search.evaluators``: ``fn(EvalRequest) -> {"val_error": ..., ...}``). With the process and
            Ray executors the workers import it by name, so it must be a top-level function of an
            importable module (checked before anything runs). The stored config names it (``config.evaluator = "callable:<module>:<qualname>"``); a resume
            must pass a function of the same name.

    Returns:
        A :class:`SearchSummary`.

    Raises:
        ConfigError: a bad option. StoreError / ConfigMismatch: ``out`` already holds a search
        (without ``resume``), holds none (with ``resume``), or holds a different experiment.
        search.data.DataError: the dataset cannot be loaded. ExecutorError: the executor cannot start.
    """
    from search.executors import get_executor
    from search.morph import get_space, parent_task
    from search.strategies import get_strategy
    from search.oneshot import ONESHOT, run_oneshot

    if (evaluator is not None or config.evaluator != "train") and (config.strategy in ONESHOT
                                                                   or config.space == "start"):
        raise ConfigError(f"strategy {config.strategy!r} on space {config.space!r} trains what it evaluates (a "
                          "supernet, or children grown from trained parents): it cannot use another evaluator",
                          hint="use --evaluator train, or an ask/tell strategy (random, evolution, reinforce, pnas) "
                               "on a space of decisions (nb201, darts, chain)")
    if config.strategy in ONESHOT and (not config.dedup or config.count_duplicates):
        raise ConfigError(f"strategy {config.strategy!r} trains one supernet: de-duplication options do not apply",
                          hint="drop --no-dedup / --count-duplicates")
    if config.strategy in ONESHOT:  # DARTS, SNAS, PARSEC, ENAS: one supernet, no ask/tell rounds, no executor
        from search.train import resolve_device

        if resolve_device(device).type != "cpu":  # never a silent fall-back to the CPU
            raise ConfigError(f"strategy {config.strategy!r} trains its supernet on the CPU only; device {device!r} "
                              "is not supported by the one-shot drivers yet",
                              hint="use --device cpu with this strategy, or an ask/tell strategy on the GPU")
        return run_oneshot(config, out, resume=resume, progress=progress, on_candidate=on_candidate)
    if evaluator is not None:
        from dataclasses import replace

        from search.evaluators import callable_name

        name = callable_name(evaluator)
        if config.evaluator not in ("train", name):
            raise ConfigError(f"run_search got evaluator={name[9:]} but the config says evaluator={config.evaluator!r}",
                              hint="give one of them")
        if executor != "serial":  # the workers import it by name
            from search.evaluators import check_importable

            check_importable(evaluator)
        config = replace(config, evaluator=name)
    elif config.evaluator.startswith("callable:"):
        raise ConfigError(f"the config's evaluator is the Python function {config.evaluator[9:]}, which was not given",
                          hint="pass it again: run_search(config, out, evaluator=fn)")
    budget, obj = config.check()
    run_dir = Path(out)
    progress = progress or Progress(None)
    space_options = dict(config.space_options)
    if not config.evaluator.startswith("table:"):  # a table needs no data: shapes from the options or the space
        ds = _dataset(config.dataset)
        space_options.update(input_shape=tuple(ds.input_shape), num_classes=int(ds.num_classes))
    try:
        space = get_space(config.space, **space_options)
    except ArchirError as e:  # SpaceError: an unknown space or option, a bad start graph
        raise ConfigError(e.message, hint=e.hint or "check --space and --space-opt", where=e.where) from None
    except ValueError as e:  # an option value the space rejects
        raise ConfigError((str(e).strip().splitlines() or [""])[0], hint="check --space and --space-opt") from None
    space_options.update(input_shape=tuple(space.input_shape), num_classes=int(space.num_classes))
    strat = get_strategy(config.strategy, space, seed=np.random.default_rng([int(config.seed), 1]),
                         **config.strategy_options)
    from search.train import TrainConfig

    try:
        TrainConfig(**{**config.train, "seed": 0, "threads": 1})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"training options {config.train}: {_one_line(e)}",
                          hint="check the --epochs / --batch-size / --lr values") from None
    if not (executor == "ray" and (executor_options or {}).get("address")):  # a cluster's workers decide for themselves
        from search.train import resolve_device

        resolve_device(device)  # a DeviceError before any candidate trains

    latency_backend = config.latency_backend_used()
    if latency_backend and not (executor == "ray" and (executor_options or {}).get("address")):
        _check_latency_backend(space, latency_backend)  # here, not in every worker: a missing GPU fails at once

    cfg_dict = config.to_dict()
    requeued: list[int] = []
    extended_from: str | None = None  # the stored budget a resume extends
    if resume:  # check before the executor starts (Ray takes seconds), and before anything is written
        with Store.open(run_dir, lock=True) as st:  # lock: fail now if another search is writing it
            extended_from = check_resume_config(st, cfg_dict, budget)
    elif (run_dir / DB_NAME).exists():
        Store.create(run_dir, cfg_dict)  # raises: the folder already holds a search
    ex = get_executor(executor, **dict(executor_options or {}))  # a bad executor leaves no run folder behind
    try:
        if resume:
            store = Store.open(run_dir, lock=True)
            requeued = store.requeue_unfinished()
            if extended_from is not None:  # the next resume compares with the extended budget
                store.set_config(cfg_dict)
                store.set_info("budget_history", [*store.info("budget_history", [extended_from]), config.budget])
        else:
            store = Store.create(run_dir, cfg_dict)
        store.set_info("space_options", {**space_options, "input_shape": list(space_options["input_shape"])})
        if config.evaluator.startswith("table:"):  # the table is part of the experiment: a resume checks it
            from search.evaluators import table_fingerprint

            fp, was = table_fingerprint(config.evaluator[6:]), store.info("evaluator_table")
            if was is not None and was != fp:
                store.close()
                raise ConfigError(f"--resume with a changed table {config.evaluator[6:]}: its sha256 was "
                                  f"{was['sha256'][:12]}... ({was['rows']} rows), now {fp['sha256'][:12]}... "
                                  f"({fp['rows']} rows)", file=run_dir,
                                  hint="resume with the table the search started with, or use a new --out folder")
            store.set_info("evaluator_table", fp)
    except BaseException:
        ex.close()
        raise

    def task_of(c: Candidate) -> dict:
        return {**candidate_task(config, space_options, c, latency_backend), "device": device,
                **parent_task(space, c.decisions, run_dir, _parent_path(c), seed=c.seed)}

    if evaluator is not None and executor != "serial":  # workers import the function by its name
        from search.evaluators import evaluate_callable_task

        work: Callable[[dict], dict] = evaluate_callable_task
    elif evaluator is not None:
        from functools import partial

        from search.evaluators import evaluate_callable

        work = partial(evaluate_callable, evaluator, space, need=obj.cost_key if obj.cost is not None else None)
    else:
        work = evaluate_candidate

    def _parent_path(c: Candidate) -> str | None:  # a grown candidate's parent graph (search.morph)
        pid = c.decisions.get("parent")
        return all_cands[pid].graph_path if isinstance(pid, int) and pid in all_cands else None

    all_cands: dict[int, Candidate] = {}
    seen: dict[str, Candidate] = {}  # architecture key -> the first done, evaluated candidate of it (dedup)
    keys: dict[int, str | None] = {}

    def key_of(c: Candidate) -> str | None:
        if c.id not in keys:
            keys[c.id] = dedup_key(space, c.decisions) if config.dedup else None
        return keys[c.id]

    def remember(c: Candidate) -> None:
        k = key_of(c)
        if k is not None and c.status == "done" and c.cache_of is None:
            seen.setdefault(k, c)

    clock = SearchClock(store)
    elapsed, tick = clock.elapsed, clock.tick
    round_times: list[float] = []

    def counts() -> dict:
        out_ = {"queued": 0, "running": 0, "done": 0, "failed": 0}
        for c in all_cands.values():
            out_[c.status] += 1
        return out_

    try:
        # ---- replay the stored rounds (or asks and tells) through a fresh strategy (resume)
        stored = store.candidates()
        n_resumed = sum(c.finished for c in stored)  # before this session finishes any of them
        pending: list[Candidate] = []
        rounds = _rounds(stored) if config.scheduling == "sync" else []
        tail: list[Candidate] = []
        if config.scheduling == "async":
            strat.asynchronous = True
            tail, pending = replay_async(strat, space, stored, run_dir)
            all_cands.update({c.id: c for c in stored})
            for c in stored:
                if c not in tail:  # the tail's results arrive again in the run loop
                    remember(c)
        for k, rnd in enumerate(rounds):
            specs = strat.ask(len(rnd))
            for spec, c in zip(specs, rnd):
                if not _same(space, spec.decisions, c.decisions):
                    raise StoreError(f"cannot resume: candidate {c.id} (round {c.round}) was {c.decisions} "
                                     f"but the strategy now proposes {spec.decisions}; the space or strategy code "
                                     "changed since this run started", file=run_dir,
                                     hint="start a new run (another --out folder) with this version of archir")
            all_cands.update({c.id: c for c in rnd})
            for c in rnd:
                remember(c)
            if all(c.finished for c in rnd):
                strat.tell(rnd)
            else:
                if k != len(rounds) - 1:
                    raise StoreError(f"round {rnd[0].round} is unfinished but later rounds exist; "
                                     "the store was not written by archir search", file=run_dir, hint="start a new run")
                pending = rnd
        for rnd in rounds:  # the time budget's round-time estimate starts from the stored rounds
            if all(c.finished and c.finished_at for c in rnd):
                round_times.append(max(c.finished_at for c in rnd) - min(c.created_at for c in rnd))
        if stored:
            progress.line(f"resumed {run_dir}: {n_resumed} finished candidates kept, "
                          f"{len(requeued)} re-queued ({', '.join(map(str, requeued)) or 'none'}); "
                          f"{_fmt_time(clock.before)} spent before")

        progress.line(f"search: space {config.space}, strategy {config.strategy}, objective {config.objective}, "
                      f"budget {budget}, dataset {config.dataset}, seed {config.seed}, executor {ex.describe()}, "
                      f"run folder {run_dir}")

        def finished(c: Candidate) -> None:
            tick()
            cs = counts()
            done = [x for x in all_cands.values() if x.status == "done"]
            progress.candidate(c, counts=cs, best=best_candidate(done),
                               frontier_size=len(frontier_candidates(done, obj.cost_key)),
                               elapsed=elapsed(), budget=budget, cost_key=obj.cost_key)
            if on_candidate is not None:
                on_candidate(c)

        def run_round(rnd: list[Candidate]) -> None:
            remaining = [c for c in rnd if not c.finished]
            t0 = time.perf_counter()
            while remaining:  # waves: a duplicate of a candidate of this round waits for that one's result
                todo, later, leaders = [], [], set()
                for c in remaining:
                    k = key_of(c)
                    if k is not None and k in seen:
                        record_cache_hit(c, seen[k], store)
                        finished(c)
                    elif k is not None and k in leaders:
                        later.append(c)
                    else:
                        todo.append(c)
                        if k is not None:
                            leaders.add(k)
                remaining = later
                if not todo:
                    continue
                store.mark_running([c.id for c in todo])
                for c in todo:
                    c.status = "running"
                tasks = [task_of(c) for c in todo]
                for i, res in ex.map_unordered(work, tasks):
                    c = todo[i]
                    _record(c, res)
                    remember(c)
                    finished(c)
            round_times.append(time.perf_counter() - t0)
            strat.tell(sorted(rnd, key=lambda c: c.id))
            status = strat.status()
            if status:
                progress.line(status)

        def _record(c: Candidate, res: Mapping) -> None:
            record_result(c, res, run_dir=run_dir, config=config, obj=obj, store=store)

        def run_async(resumed: list[Candidate], tail: list[Candidate]) -> None:
            """Keep ``round_size`` candidates in flight: ask for one whenever one finishes, tell each result as
            it arrives (recording the order), until the budget is spent and the last result is in.

            ``resumed``: candidates in flight when a resumed run stopped; ``tail``: results it told after
            its last ask (:func:`replay_async`), told again here first, as arriving results."""
            told = [sum(1 for c in all_cands.values() if c.told is not None)]  # results told so far
            in_flight: dict[int, tuple[Candidate, float]] = {}  # executor ticket -> (candidate, submit time)
            leaders: dict[str, Candidate] = {}  # architecture key -> its candidate in flight
            parked: dict[str, list[Candidate]] = {}  # key -> candidates waiting for that leader's result
            durations = [float(c.timings.get("total_s") or 0.0) for c in all_cands.values()
                         if c.finished and c.cache_of is None and c.timings.get("total_s")]
            virtual = list(tail)  # results that arrive again (in their told order) before any real one
            exhausted: list[int] = []  # the asks when the space was found exhausted (said once)
            for c in virtual:
                k = key_of(c)
                if k is not None and c.cache_of is None:
                    leaders.setdefault(k, c)

            def tell(c: Candidate) -> None:
                strat.tell([c])
                remember(c)
                finished(c)
                if told[0] % config.round_size == 0:
                    status = strat.status()
                    if status:
                        progress.line(status)

            def next_told() -> int:
                told[0] += 1
                return told[0] - 1

            def dispatch(c: Candidate) -> None:
                k = key_of(c)
                if k is not None and k in seen:
                    c.told = next_told()
                    record_cache_hit(c, seen[k], store)
                    tell(c)
                elif k is not None and k in leaders:
                    parked.setdefault(k, []).append(c)
                else:
                    if k is not None:
                        leaders[k] = c
                    store.mark_running([c.id])
                    c.status = "running"
                    in_flight[ex.submit(work, task_of(c))] = (c, time.perf_counter())

            def may_ask() -> bool:
                n_asked = len(all_cands)
                if budget.kind == "candidates":
                    n_counted = n_asked if config.count_duplicates else \
                        sum(1 for c in all_cands.values() if c.cache_of is None)
                    if n_counted >= int(budget.value):
                        return False
                    if n_asked >= MAX_ASKED_PER_BUDGET * int(budget.value):
                        if not exhausted:
                            exhausted.append(n_asked)
                            progress.line(f"search: stopped after asking {n_asked} candidates for a budget of "
                                          f"{budget}: {n_asked - n_counted} were cache hits of known architectures "
                                          "(the space looks exhausted for this strategy)")
                        return False
                    return True
                left = budget.value - elapsed()
                mean = sum(durations) / len(durations) if durations else 0.0
                return left > 0 and not (durations and left < mean)

            def release(c: Candidate) -> None:  # c's result is in: its duplicates waiting for it go on
                k = key_of(c)
                if k is not None and leaders.get(k) is c:
                    del leaders[k]
                    for p_ in parked.pop(k, []):  # a cache hit now, or (the leader failed) evaluated itself
                        dispatch(p_)

            told[0] -= len(virtual)  # told again below
            for c in resumed:  # the candidates in flight when the run stopped: asked already, evaluated first
                dispatch(c)
            while True:
                busy = len(in_flight) + sum(1 for c in virtual if c.cache_of is None)
                asking = False  # the budget allows another candidate, and the strategy proposed none
                while busy < config.round_size and may_ask():
                    specs = strat.ask(1)
                    if not specs:  # the strategy waits for a result in flight
                        asking = True
                        break
                    s_ = specs[0]
                    cid = store.next_id()
                    c = Candidate(id=cid, round=told[0], op=s_.op, decisions=s_.decisions, parents=list(s_.parents),
                                  seed=candidate_seed(config.seed, cid))
                    store.add([c])
                    all_cands[c.id] = c
                    dispatch(c)
                    busy = len(in_flight) + sum(1 for c in virtual if c.cache_of is None)
                if virtual:  # a stored result arriving again: told as it was, with the cache hits told after it
                    c = virtual.pop(0)
                    while True:
                        told[0] += 1
                        strat.tell([c])
                        remember(c)
                        release(c)
                        if not (virtual and virtual[0].cache_of is not None):
                            break
                        c = virtual.pop(0)
                    continue
                if not in_flight:
                    if asking:  # nothing running and nothing proposed: the strategy cannot go on
                        raise RuntimeError(f"strategy {config.strategy!r} proposed no candidate with none in flight "
                                           f"after {told[0]} results: it would wait forever")
                    break
                ticket, res = ex.next_result()
                c, t0 = in_flight.pop(ticket)
                c.told = next_told()
                _record(c, res)
                durations.append(float(c.timings.get("total_s") or time.perf_counter() - t0))
                tell(c)
                release(c)

        try:
            if config.scheduling == "async":
                run_async(pending, tail)
            elif pending:
                run_round(pending)
            while config.scheduling == "sync":
                n_asked = len(all_cands)
                if budget.kind == "candidates":
                    n_counted = n_asked if config.count_duplicates else \
                        sum(1 for c in all_cands.values() if c.cache_of is None)
                    n = min(config.round_size, int(budget.value) - n_counted)
                    if n <= 0:
                        break
                    if n_asked >= MAX_ASKED_PER_BUDGET * int(budget.value):
                        progress.line(f"search: stopped after asking {n_asked} candidates for a budget of {budget}: "
                                      f"{n_asked - n_counted} were cache hits of known architectures (the space "
                                      "looks exhausted for this strategy)")
                        break
                else:
                    left = budget.value - elapsed()
                    mean_round = sum(round_times) / len(round_times) if round_times else 0.0
                    if left <= 0 or (round_times and left < mean_round):
                        break
                    n = config.round_size
                specs = strat.ask(n)
                rnd_no = (max(c.round for c in all_cands.values()) + 1) if all_cands else 0
                first = store.next_id()
                rnd = [Candidate(id=first + i, round=rnd_no, op=s.op, decisions=s.decisions, parents=list(s.parents),
                                 seed=candidate_seed(config.seed, first + i)) for i, s in enumerate(specs)]
                store.add(rnd)
                all_cands.update({c.id: c for c in rnd})
                run_round(rnd)
        finally:
            ex.close()
            tick()
        final = store.candidates()
        return SearchSummary(run_dir, config, store.counts(), best_candidate(final),
                             frontier_candidates(final, obj.cost_key), store.elapsed_s,
                             clock.session(), resumed=n_resumed, requeued=requeued,
                             cache_hits=sum(1 for c in final if c.cache_of is not None),
                             distinct=len({c.graph_hash for c in final if c.graph_hash}
                                          | {json.dumps(c.decisions, sort_keys=True) for c in final
                                             if c.status == "done" and not c.graph_hash}))
    finally:
        ex.close()  # idempotent: also when the replay failed before the rounds began
        store.close()


# --------------------------------------------------------------------------- gallery and export


def gallery_table(cands: Sequence[Candidate], cost_key: str, *, space=None, only_frontier: bool = False,
                  run: str | os.PathLike | None = None, max_failed: int = 10) -> str:
    """A text table of the frontier (``*``) and other finished candidates, by cost, then the failed ones.

    Every failed candidate (at most ``max_failed``, those that failed from an archir bug first)
    is listed with its one-line reason; one that failed from a bug (its traceback is in the
    store) is marked ``!``, and a note says how to print the traceback
    (``archir gallery RUN --traceback ID``; ``run`` names the folder in it). ``only_frontier``
    lists the frontier only, without the failed candidates.
    """
    front = {c.id for c in frontier_candidates(cands, cost_key)}
    hits = sum(1 for c in cands if c.cache_of is not None)
    rows = [c for c in cands if c.status == "done" and c.cache_of is None and (c.id in front or not only_frontier)]
    rows.sort(key=lambda c: (c.costs.get(cost_key, math.inf), c.metrics.get("val_error", math.inf), c.id))
    keys = ["params", "macs"] + ([cost_key] if cost_key not in ("params", "macs") else [])
    head = f"{'':1} {'id':>4} {'val_err':>7} {'test_err':>8} " + " ".join(f"{k:>10}" for k in keys) + \
        f"  {'op':<20} architecture"
    lines = [head, "-" * len(head)]
    for c in rows:
        desc = ""
        if space is not None:
            try:
                desc = space.describe(c.decisions)
            except Exception:  # an old run's decisions no longer fit: show the raw decisions
                desc = json.dumps(c.decisions, sort_keys=True)[:60]
        flag = "*" if c.id in front else ("x" if not c.within_budget else "")
        lines.append(f"{flag:1} {c.id:>4} {c.metrics.get('val_error', math.nan):>7.3f} "
                     f"{c.metrics.get('test_error', math.nan):>8.3f} "
                     + " ".join(f"{_fmt_cost(k, c.costs.get(k, math.nan)):>10}" for k in keys)
                     + f"  {c.op[:20]:<20} {desc}")
    failed = [c for c in cands if c.status == "failed"]
    lines.append(f"* on the Pareto frontier ({len(front)}); x over the hard budget; {len(rows)} shown, "
                 f"{len(failed)} failed" + (f"; {hits} cache hits (an architecture already evaluated, its result "
                                            "reused) not shown" if hits else ""))
    if failed and not only_frontier:
        bugs = [c for c in failed if c.traceback]
        lines.append(f"failed candidates ({len(failed)}" + (f"; {len(bugs)} from an archir bug, marked !" if bugs
                                                            else "") + "):")
        shown = sorted(sorted(failed, key=lambda c: (not c.traceback, c.id))[:max(0, int(max_failed))],
                       key=lambda c: c.id)
        for c in shown:
            reason = c.error or "failed (no reason given)"
            lines.append(f"{'!' if c.traceback else '':1} {c.id:>4} {c.op[:20]:<20} {reason}")
        if len(failed) > len(shown):
            lines.append(f"  ... and {len(failed) - len(shown)} more")
        if bugs:
            lines.append(f"! a bug in archir, not in the candidate: archir gallery {run or 'RUN'} --traceback "
                         f"{bugs[0].id} prints its traceback (please report it)")
    return "\n".join(lines)


def write_gallery(run_dir: str | os.PathLike, png: str | os.PathLike | None = None, *,
                  draw: bool = True) -> tuple[str, Path | None]:
    """The gallery table of a run and its ``pareto.png`` (written to ``png``, default ``run_dir/pareto.png``).

    ``draw=False`` gives the table only (no matplotlib needed).

    Returns:
        (table text, the PNG path or None when no candidate finished).

    Raises:
        StoreError: no run there. search.pareto.PlotUnavailable: matplotlib is missing.
    """
    from search.pareto import plot

    run_dir = Path(run_dir)
    with Store.open(run_dir) as st:
        cfg = ExperimentConfig.from_dict(st.config)
        cands = st.candidates()
        opts = st.info("space_options")
    obj = parse_objective(cfg.objective)
    space = None
    try:
        from search.morph import get_space

        space = get_space(cfg.space, **opts) if opts else None
    except Exception:  # the table is still useful without the architecture descriptions
        space = None
    table = gallery_table(cands, obj.cost_key, space=space, run=run_dir)
    pts = [Point(c.id, float(c.metrics["val_error"]), float(c.costs[obj.cost_key]), c.within_budget)
           for c in cands if c.status == "done" and obj.cost_key in c.costs and c.cache_of is None]
    if not pts or not draw:
        return table, None
    path = Path(png) if png is not None else run_dir / "pareto.png"
    plot(pts, path, cost_label=obj.cost_label,
         title=f"{cfg.space} / {cfg.strategy} on {cfg.dataset}: {len(pts)} candidates")
    return table, path


def load_candidate_graph(run_dir: str | os.PathLike, *, cid: int | None = None, best: bool = False):
    """The trained graph of candidate ``cid`` (or of the best one) of a run, with its row.

    Returns:
        (archir.Graph, Candidate).

    Raises:
        StoreError: no run, no such candidate, or the candidate did not finish successfully.
    """
    import archir

    if (cid is None) == (not best):
        raise ValueError("give exactly one of cid= or best=True")
    run_dir = Path(run_dir)
    with Store.open(run_dir) as st:
        if best:
            c = best_candidate(st.candidates("done"))
            if c is None:
                raise StoreError("no finished candidate within the budget yet",
                                 file=run_dir, hint="let the search run longer (archir search ... --resume)")
        else:
            c = st.get(cid)
    if c.status != "done" or not c.graph_path:
        raise StoreError(f"candidate {c.id} is {c.status}" + (f" ({c.error})" if c.error else "")
                         + "; it has no trained graph", file=run_dir, hint="pick a done candidate (see archir gallery)")
    return archir.load(run_dir / c.graph_path), c


def export_candidate(run_dir: str | os.PathLike, onnx_path: str | os.PathLike, *, cid: int | None = None,
                     best: bool = False):
    """Export a run's candidate (``cid`` or the best) to ONNX, verified under ONNX Runtime.

    Returns:
        (search.pareto.VerifiedExport, Candidate).
    """
    from search.pareto import export_onnx

    g, c = load_candidate_graph(run_dir, cid=cid, best=best)
    return export_onnx(g, onnx_path), c
