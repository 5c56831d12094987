"""A search run: what every driver shares (the ask/tell loop of ``search.experiment`` and the
one-shot drivers of ``search.oneshot``).

:class:`SearchRun` prepares an experiment (checks the config, loads the dataset, builds the space,
checks the training options and the latency backend), creates, opens or resumes its store (a
resume checks the config and may extend the budget), keeps the budget clock, records results
(graph files, score, status) and cache hits, shows progress and builds the
:class:`~search.config.SearchSummary`. The helpers it uses (:func:`record_result`,
:func:`candidate_task`, :func:`check_resume_config`, ...) are public here, so no driver reaches
into another module's private names.
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from archir.errors import ArchirError
from search.config import (Budget, ConfigError, ExperimentConfig, Objective, Progress, SearchSummary, one_line,
                           parse_budget, parse_objective)
from search.pareto import Point, frontier
from search.store import DB_NAME, Candidate, Store

__all__ = ["SearchRun", "SearchClock", "candidate_task", "record_result", "record_cache_hit", "dedup_key",
           "check_resume_config", "best_candidate", "frontier_candidates", "check_latency_backend",
           "MAX_ASKED_PER_BUDGET"]


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


def _write_graph(run_dir: Path, cid: int, text: str, weights: bytes | None) -> str:
    from archir.serialize import atomic_write

    gdir = run_dir / "graphs"
    gdir.mkdir(exist_ok=True)
    if weights is not None:  # the weights first: the JSON names them and checks their sha256
        atomic_write(gdir / f"{cid}.safetensors", weights)
    atomic_write(gdir / f"{cid}.json", text.encode())
    return f"graphs/{cid}.json"


def check_latency_backend(space, backend: str) -> None:
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
            c.status, c.error, c.score = "failed", f"record: {one_line(e)}", None
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


# --------------------------------------------------------------------------- the run object


class SearchRun:
    """One run of a search, shared by every driver: preparation, the store, the clock, recording.

    Construction prepares the experiment and writes nothing: the config is checked
    (``config.check()``), the dataset loaded (unless ``needs_data`` is False: a table evaluator
    needs none), the space built (``search.spaces.get_space``: an unknown space or a bad option is
    a :class:`ConfigError`), the training options checked and the latency backend tried once here,
    so that a missing backend fails before any candidate trains (``check_local=False`` skips that
    when a remote cluster's workers measure instead); ``device`` is where candidates train (the
    training options are checked for it: fp16 needs CUDA). Then :meth:`check_folder` (before an executor
    starts: nothing written), :meth:`open` (create, or resume: re-queue what was running and
    record an extended budget), :meth:`record` / :meth:`cache_hit` / :meth:`finished` per
    candidate, :meth:`summary` and :meth:`close`.

    Attributes:
        config, budget, obj, run_dir, progress, dataset (or None), space, space_options (with the
        dataset's ``input_shape`` and ``num_classes``), latency_backend (or None), store and clock
        (after :meth:`open`), requeued (ids re-queued by a resume).
    """

    def __init__(self, config: ExperimentConfig, out: str | os.PathLike, *, progress: Progress | None = None,
                 on_candidate: Callable[[Candidate], None] | None = None, needs_data: bool = True,
                 check_local: bool = True, device: str = "cpu") -> None:
        from search.data import cached_dataset
        from search.spaces import get_space
        from search.train import TrainConfig

        self.config = config
        self.budget, self.obj = config.check()
        self.run_dir = Path(out)
        self.progress = progress or Progress(None)
        self.on_candidate = on_candidate
        self.dataset = cached_dataset(config.dataset) if needs_data else None
        opts = dict(config.space_options)
        if self.dataset is not None:  # without data: the shapes come from the options or the space's defaults
            opts.update(input_shape=tuple(self.dataset.input_shape), num_classes=int(self.dataset.num_classes))
        try:
            self.space = get_space(config.space, **opts)
        except ArchirError as e:  # SpaceError: an unknown space or option, a bad start graph
            raise ConfigError(e.message, hint=e.hint or "check --space and --space-opt", where=e.where) from None
        except ValueError as e:  # an option value the space rejects
            raise ConfigError((str(e).strip().splitlines() or [""])[0], hint="check --space and --space-opt") from None
        opts.update(input_shape=tuple(self.space.input_shape), num_classes=int(self.space.num_classes))
        self.space_options = opts
        try:
            TrainConfig(**{**config.train, "seed": 0, "threads": 1, "device": device})  # (fp16 needs CUDA)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"training options {config.train}: {one_line(e)}",
                              hint="check the --epochs / --batch-size / --lr values") from None
        self.latency_backend = config.latency_backend_used()
        if self.latency_backend and check_local:  # here, not in every worker: a missing GPU fails at once
            check_latency_backend(self.space, self.latency_backend)
        self.store: Store | None = None
        self.clock: SearchClock | None = None
        self.requeued: list[int] = []
        self._extended_from: str | None = None

    def check_folder(self, resume: bool, *, extend: bool = True) -> None:
        """Refuse the run folder before anything is written (and before an executor starts, which may take
        seconds): a resume checks the stored config (``extend``: a larger budget is accepted,
        :func:`check_resume_config`) under the folder's lock; a new run refuses a folder holding a search.

        Raises:
            ConfigMismatch / StoreError: as :func:`check_resume_config` and :meth:`Store.create`.
        """
        cfg = self.config.to_dict()
        if resume:
            with Store.open(self.run_dir, lock=True) as st:  # lock: fail now if another search is writing it
                if extend:
                    self._extended_from = check_resume_config(st, cfg, self.budget)
                else:
                    st.check_config(cfg)
        elif (self.run_dir / DB_NAME).exists():
            Store.create(self.run_dir, cfg)  # raises: the folder already holds a search

    def open(self, resume: bool) -> Store:
        """Create the store, or open it to resume (the unfinished candidates are re-queued, an extended budget
        is recorded in the config and ``budget_history``); starts the clock."""
        cfg = self.config.to_dict()
        if resume:
            store = Store.open(self.run_dir, lock=True)
            self.requeued = store.requeue_unfinished()
            if self._extended_from is not None:  # the next resume compares with the extended budget
                store.set_config(cfg)
                store.set_info("budget_history", [*store.info("budget_history", [self._extended_from]),
                                                  self.config.budget])
        else:
            store = Store.create(self.run_dir, cfg)
        store.set_info("space_options", {**self.space_options, "input_shape": list(self.space_options["input_shape"])})
        self.store, self.clock = store, SearchClock(store)
        return store

    def elapsed(self) -> float:
        """Search seconds, earlier sessions included."""
        return self.clock.elapsed()

    def task(self, c: Candidate) -> dict:
        """The plain-data evaluation task of ``c`` (:func:`candidate_task`)."""
        return candidate_task(self.config, self.space_options, c, self.latency_backend)

    def record(self, c: Candidate, res: Mapping) -> None:
        """Record an evaluation result on ``c`` (:func:`record_result`)."""
        record_result(c, res, run_dir=self.run_dir, config=self.config, obj=self.obj, store=self.store)

    def cache_hit(self, c: Candidate, orig: Candidate) -> None:
        """Record ``c`` as a cache hit of ``orig`` (:func:`record_cache_hit`)."""
        record_cache_hit(c, orig, self.store)

    def finished(self, c: Candidate, cands: Sequence[Candidate], *, budget: Budget | None = None,
                 describe: str | None = None) -> None:
        """After ``c`` is recorded: add the time to the store, show the progress line (``cands``: the run's
        candidates, for the counts, the best and the frontier), call ``on_candidate``."""
        self.clock.tick()
        counts = {"queued": 0, "running": 0, "done": 0, "failed": 0}
        for x in cands:
            counts[x.status] += 1
        done = [x for x in cands if x.status == "done"]
        self.progress.candidate(c, counts=counts, best=best_candidate(done),
                                frontier_size=len(frontier_candidates(done, self.obj.cost_key)),
                                elapsed=self.elapsed(), budget=budget or self.budget, cost_key=self.obj.cost_key,
                                describe=describe)
        if self.on_candidate is not None:
            self.on_candidate(c)

    def summary(self, resumed: int) -> SearchSummary:
        """The :class:`SearchSummary` of the store as it is now (``resumed``: candidates finished before
        this session)."""
        self.clock.tick()
        final = self.store.candidates()
        return SearchSummary(self.run_dir, self.config, self.store.counts(), best_candidate(final),
                             frontier_candidates(final, self.obj.cost_key), self.store.elapsed_s,
                             self.clock.session(), resumed=resumed, requeued=list(self.requeued),
                             cache_hits=sum(1 for c in final if c.cache_of is not None),
                             distinct=len({c.graph_hash for c in final if c.graph_hash}
                                          | {json.dumps(c.decisions, sort_keys=True) for c in final
                                             if c.status == "done" and not c.graph_hash}))

    def close(self) -> None:
        """Close the store (idempotent)."""
        if self.store is not None:
            self.store.close()
