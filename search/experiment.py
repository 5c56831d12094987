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
are evaluated once (the lower id; the other waits for it, without taking a worker). A failed
result is not reused (the duplicate is evaluated).
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
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from search.pareto import Point
from search.store import Candidate, Store, StoreError

__all__ = ["ExperimentConfig", "ConfigError", "Progress", "Budget", "parse_budget", "Objective", "parse_objective",
           "run_search", "SearchSummary", "evaluate_candidate", "candidate_seed", "best_candidate",
           "frontier_candidates", "gallery_table", "dedup_key", "record_cache_hit", "check_resume_config",
           "MAX_ASKED_PER_BUDGET", "write_gallery", "export_candidate", "load_candidate_graph",
           "DEFAULT_TRAIN"]


from search.config import (DEFAULT_TRAIN, Budget, ConfigError, ExperimentConfig, Objective, Progress,  # noqa: F401
                           SearchSummary, candidate_seed, fmt_cost, fmt_time, one_line, parse_budget,
                           parse_objective)
from search.evaluators import evaluate_candidate  # noqa: F401  (the train evaluator; Ray tasks name it)
from search.asktell import AskTell, replay_async  # noqa: F401
from search.run import (MAX_ASKED_PER_BUDGET, SearchClock, SearchRun, best_candidate,  # noqa: F401
                        candidate_task, check_resume_config, dedup_key, frontier_candidates, record_cache_hit,
                        record_result)


# --------------------------------------------------------------------------- the worker side


# --------------------------------------------------------------------------- the driver side


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
            resumed on another machine may train elsewhere). A one-shot strategy trains its supernet
            there as well (``search.oneshot.base``). Default ``"cpu"``.
        executor_options: e.g. ``{"workers": 2}`` (process), ``{"address": "auto", "num_cpus": 1}`` (ray).
        resume: continue the search stored in ``out`` (its config must equal ``config``).
        progress: the display (default: none).
        on_candidate: called with every candidate as it is recorded finished (tests, notebooks).
        evaluator: a Python callable that evaluates candidates instead of training them
            (``search.evaluators``: ``fn(EvalRequest) -> {"val_error": ..., ...}``). With the process and
            Ray executors the workers import it by name, so it must be a top-level function of an
            importable module (checked before anything runs). The stored config names it
            (``config.evaluator = "callable:<module>:<qualname>"``); a resume must pass a function of
            the same name.

    Returns:
        A :class:`SearchSummary`.

    Raises:
        ConfigError: a bad option. StoreError / ConfigMismatch: ``out`` already holds a search
        (without ``resume``), holds none (with ``resume``), or holds a different experiment.
        search.data.DataError: the dataset cannot be loaded. ExecutorError: the executor cannot start.
    """
    from search.executors import get_executor
    from search.morph import parent_task
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
        # the supernet and the derived candidates train on `device` (search.oneshot.base: Devices)
        return run_oneshot(config, out, resume=resume, progress=progress, on_candidate=on_candidate, device=device)
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
    remote = executor == "ray" and bool((executor_options or {}).get("address"))  # a cluster's workers decide
    run = SearchRun(config, out, progress=progress, on_candidate=on_candidate,
                    needs_data=not config.evaluator.startswith("table:"), check_local=not remote, device=device)
    obj, run_dir, space = run.obj, run.run_dir, run.space
    strat = get_strategy(config.strategy, space, seed=np.random.default_rng([int(config.seed), 1]),
                         **config.strategy_options)
    if not remote:
        from search.train import resolve_device

        resolve_device(device)  # a DeviceError before any candidate trains

    run.check_folder(resume)
    ex = get_executor(executor, **dict(executor_options or {}))  # a bad executor leaves no run folder behind
    try:
        store = run.open(resume)
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

    if evaluator is not None and executor != "serial":  # workers import the function by its name
        from search.evaluators import evaluate_callable_task

        work: Callable[[dict], dict] = evaluate_callable_task
    elif evaluator is not None:
        from functools import partial

        from search.evaluators import evaluate_callable

        work = partial(evaluate_callable, evaluator, space, need=obj.cost_key if obj.cost is not None else None)
    else:
        work = evaluate_candidate

    def task_of(c: Candidate) -> dict:
        pid = c.decisions.get("parent")  # a grown candidate's parent graph (search.morph)
        parent = loop.cands[pid].graph_path if isinstance(pid, int) and pid in loop.cands else None
        return {**run.task(c), "device": device, **parent_task(space, c.decisions, run.run_dir, parent, seed=c.seed)}

    loop = AskTell(run, strat, ex, work, task_of)
    try:
        return loop.run_all()
    finally:
        ex.close()  # idempotent: also when the replay failed before the rounds began
        run.close()


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
                     + " ".join(f"{fmt_cost(k, c.costs.get(k, math.nan)):>10}" for k in keys)
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
