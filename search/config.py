"""The experiment's configuration and its display: what a search run is, below every driver.

:class:`ExperimentConfig` (what defines a run and is stored in it), :class:`Budget` /
:func:`parse_budget`, :class:`Objective` / :func:`parse_objective`, :class:`ConfigError`,
:class:`SearchSummary` (what a run leaves) and :class:`Progress` (the live display). The ask/tell
loop (``search.experiment``), the one-shot drivers (``search.oneshot``) and the run object they share
(``search.run``) all import from here; this module imports nothing of theirs. See
``search.experiment`` for what the options mean in a search.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from archir.errors import ArchirError
from search.store import Candidate

__all__ = ["ExperimentConfig", "ConfigError", "Budget", "parse_budget", "Objective", "parse_objective",
           "DEFAULT_TRAIN", "candidate_seed", "SearchSummary", "Progress", "fmt_time", "fmt_cost", "one_line"]


def one_line(e: BaseException) -> str:
    """``"<ExceptionType>: <first line of its message>"``: how a reason is shown in one line."""
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


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
        return f"{int(self.value)} candidates" if self.kind == "candidates" else fmt_time(self.value)


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


def fmt_time(s: float) -> str:
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f}s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def fmt_cost(key: str, v: float) -> str:
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
            left = f"{fmt_time(budget.value - elapsed)} left"
        if c.status == "done":
            what = f"#{c.id:<3} done   val_err {c.metrics['val_error']:.3f}  {cost_key} " \
                   f"{fmt_cost(cost_key, c.costs.get(cost_key, float('nan')))}" + ("" if c.within_budget else
                                                                                     "  OVER BUDGET") \
                + (f"  cache hit of #{c.cache_of}" if c.cache_of is not None else "")
        else:
            what = f"#{c.id:<3} FAILED ({c.error})"
        best_s = f"best #{best.id} val_err {best.metrics['val_error']:.3f}" if best else "best -"
        self.line(f"[{fmt_time(elapsed)} elapsed, {left}] {what} {c.op}"
                  f" | done {counts['done']} failed {counts['failed']} | {best_s} | frontier {frontier_size}"
                  + (f" | {describe}" if describe else ""), style=None if c.status == "done" else "red")
