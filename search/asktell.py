"""The ask/tell driver of a search run: a strategy proposes, an executor evaluates, the run records.

:class:`AskTell` drives an ask/tell strategy (``search.strategies``) on a
:class:`search.run.SearchRun` with an executor (``search.executors``), asynchronously (a new
candidate whenever one finishes, each result told as it arrives, the told order stored) or in
synchronous rounds, with de-duplication and exact replay on resume. ``search.experiment.run_search``
sets it up; the module docstring there says what the options mean.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from search.config import SearchSummary, candidate_seed, fmt_time
from search.run import MAX_ASKED_PER_BUDGET, SearchRun, dedup_key
from search.store import Candidate, StoreError

__all__ = ["AskTell", "replay_async"]


def _rounds(cands: Sequence[Candidate]) -> list[list[Candidate]]:
    out: dict[int, list[Candidate]] = {}
    for c in cands:
        out.setdefault(c.round, []).append(c)
    return [out[r] for r in sorted(out)]


def _same(space, a: Mapping, b: Mapping) -> bool:
    return json.dumps(space.encode(a), sort_keys=True) == json.dumps(space.encode(b), sort_keys=True)


def _changed(c: Candidate, proposed: Any, run_dir: Path, when: str) -> StoreError:
    return StoreError(f"cannot resume: candidate {c.id} ({when}) was {c.decisions} but the strategy now proposes "
                      f"{proposed}; the space or strategy code changed since this run started", file=run_dir,
                      hint="start a new run (another --out folder) with this version of archir")


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
            raise _changed(c, specs[0].decisions if specs else "nothing (it waits for a result)", run_dir,
                           f"asked after {c.round} results")
    return told[t:], [c for c in stored if not c.finished]


class AskTell:
    """An ask/tell strategy driven on a run (see the module docstring of ``search.experiment``).

    Args:
        run: the prepared, opened :class:`SearchRun`.
        strat: the strategy (``search.strategies.Strategy``), fresh: a resume replays the store into it.
        ex: the executor; ``work``: the function it runs on a task (``fn(task) -> result``).
        task_of: the plain-data task of a candidate.
    """

    def __init__(self, run: SearchRun, strat, ex, work: Callable[[dict], dict],
                 task_of: Callable[[Candidate], dict]) -> None:
        self.run, self.strat, self.ex, self.work, self.task_of = run, strat, ex, work, task_of
        self.config, self.budget, self.store, self.space = run.config, run.budget, run.store, run.space
        self.cands: dict[int, Candidate] = {}  # every candidate of the run, by id
        self.seen: dict[str, Candidate] = {}  # architecture key -> the first done, evaluated candidate of it
        self._keys: dict[int, str | None] = {}
        self.round_times: list[float] = []  # rounds: wall seconds per round (the time budget's estimate)
        self._said_exhausted = False  # the "space looks exhausted" line is shown once

    # ---------------------------------------------------------------- shared

    def key_of(self, c: Candidate) -> str | None:
        """``c``'s de-duplication key (None: never de-duplicated, or de-duplication off)."""
        if c.id not in self._keys:
            self._keys[c.id] = dedup_key(self.space, c.decisions) if self.config.dedup else None
        return self._keys[c.id]

    def remember(self, c: Candidate) -> None:
        k = self.key_of(c)
        if k is not None and c.status == "done" and c.cache_of is None:
            self.seen.setdefault(k, c)

    def finished(self, c: Candidate) -> None:
        self.run.finished(c, list(self.cands.values()))

    def show_status(self) -> None:
        status = self.strat.status()
        if status:
            self.run.progress.line(status)

    def counted(self) -> int:
        """Candidates that count against a candidate budget (cache hits only with ``count_duplicates``)."""
        if self.config.count_duplicates:
            return len(self.cands)
        return sum(1 for c in self.cands.values() if c.cache_of is None)

    def exhausted(self) -> bool:
        """True (and said once) when the run has asked the most candidates a candidate budget allows."""
        n_asked = len(self.cands)
        if n_asked < MAX_ASKED_PER_BUDGET * int(self.budget.value):
            return False
        if not self._said_exhausted:
            self._said_exhausted = True
            self.run.progress.line(f"search: stopped after asking {n_asked} candidates for a budget of "
                                   f"{self.budget}: {n_asked - self.counted()} were cache hits of known "
                                   "architectures (the space looks exhausted for this strategy)")
        return True

    def new_candidates(self, specs, round_no: int) -> list[Candidate]:
        """Record the strategy's proposals as queued candidates (the next ids, seeds from the ids)."""
        first = self.store.next_id()
        new = [Candidate(id=first + i, round=round_no, op=s.op, decisions=s.decisions, parents=list(s.parents),
                         seed=candidate_seed(self.config.seed, first + i)) for i, s in enumerate(specs)]
        self.store.add(new)
        self.cands.update({c.id: c for c in new})
        return new

    # ---------------------------------------------------------------- the whole run

    def run_all(self) -> SearchSummary:
        """Replay the store (resume), run until the budget is spent, and return the summary."""
        run, config = self.run, self.config
        stored = self.store.candidates()
        n_resumed = sum(c.finished for c in stored)  # before this session finishes any of them
        if config.scheduling == "async":
            self.strat.asynchronous = True
            tail, pending = replay_async(self.strat, self.space, stored, run.run_dir)
            self.cands.update({c.id: c for c in stored})
            for c in stored:
                if c not in tail:  # the tail's results arrive again in the run loop
                    self.remember(c)
        else:
            tail, pending = [], self.replay_rounds(stored)
        if stored:
            rq = run.requeued
            run.progress.line(f"resumed {run.run_dir}: {n_resumed} finished candidates kept, {len(rq)} re-queued "
                              f"({', '.join(map(str, rq)) or 'none'}); {fmt_time(run.clock.before)} spent before")
        run.progress.line(f"search: space {config.space}, strategy {config.strategy}, objective {config.objective}, "
                          f"budget {self.budget}, dataset {config.dataset}, seed {config.seed}, executor "
                          f"{self.ex.describe()}, run folder {run.run_dir}")
        try:
            if config.scheduling == "async":
                self.run_async(pending, tail)
            else:
                self.run_rounds(pending)
        finally:
            self.ex.close()
        return run.summary(n_resumed)

    # ---------------------------------------------------------------- synchronous rounds

    def replay_rounds(self, stored: Sequence[Candidate]) -> list[Candidate]:
        """Replay the stored rounds (ask, check, tell); returns the last round when it is unfinished."""
        pending: list[Candidate] = []
        rounds = _rounds(stored)
        for k, rnd in enumerate(rounds):
            specs = self.strat.ask(len(rnd))
            for spec, c in zip(specs, rnd):
                if not _same(self.space, spec.decisions, c.decisions):
                    raise _changed(c, spec.decisions, self.run.run_dir, f"round {c.round}")
            self.cands.update({c.id: c for c in rnd})
            for c in rnd:
                self.remember(c)
            if all(c.finished for c in rnd):
                self.strat.tell(rnd)
            else:
                if k != len(rounds) - 1:
                    raise StoreError(f"round {rnd[0].round} is unfinished but later rounds exist; the store was not "
                                     "written by archir search", file=self.run.run_dir, hint="start a new run")
                pending = rnd
        for rnd in rounds:  # the time budget's round-time estimate starts from the stored rounds
            if all(c.finished and c.finished_at for c in rnd):
                self.round_times.append(max(c.finished_at for c in rnd) - min(c.created_at for c in rnd))
        return pending

    def run_rounds(self, pending: list[Candidate]) -> None:
        """Rounds of ``round_size``: ask, evaluate all, tell the round in id order; until the budget is spent."""
        config, budget = self.config, self.budget
        if pending:
            self.run_round(pending)
        while True:
            if budget.kind == "candidates":
                n = min(config.round_size, int(budget.value) - self.counted())
                if n <= 0 or self.exhausted():
                    break
            else:
                left = budget.value - self.run.elapsed()
                mean_round = sum(self.round_times) / len(self.round_times) if self.round_times else 0.0
                if left <= 0 or (self.round_times and left < mean_round):
                    break
                n = config.round_size
            specs = self.strat.ask(n)
            rnd_no = (max(c.round for c in self.cands.values()) + 1) if self.cands else 0
            self.run_round(self.new_candidates(specs, rnd_no))

    def run_round(self, rnd: list[Candidate]) -> None:
        remaining = [c for c in rnd if not c.finished]
        t0 = time.perf_counter()
        while remaining:  # waves: a duplicate of a candidate of this round waits for that one's result
            todo, later, leaders = [], [], set()
            for c in remaining:
                k = self.key_of(c)
                if k is not None and k in self.seen:
                    self.run.cache_hit(c, self.seen[k])
                    self.finished(c)
                elif k is not None and k in leaders:
                    later.append(c)
                else:
                    todo.append(c)
                    if k is not None:
                        leaders.add(k)
            remaining = later
            if not todo:
                continue
            self.store.mark_running([c.id for c in todo])
            for c in todo:
                c.status = "running"
            for i, res in self.ex.map_unordered(self.work, [self.task_of(c) for c in todo]):
                c = todo[i]
                self.run.record(c, res)
                self.remember(c)
                self.finished(c)
        self.round_times.append(time.perf_counter() - t0)
        self.strat.tell(sorted(rnd, key=lambda c: c.id))
        self.show_status()

    # ---------------------------------------------------------------- asynchronous

    def run_async(self, resumed: list[Candidate], tail: list[Candidate]) -> None:
        """Keep ``round_size`` candidates in flight: ask for one whenever one finishes, tell each result as it
        arrives (recording the order), until the budget is spent and the last result is in.

        ``resumed``: candidates in flight when a resumed run stopped; ``tail``: results it told after its
        last ask (:func:`replay_async`), told again here first, as arriving results."""
        config, budget, store, strat, run = self.config, self.budget, self.store, self.strat, self.run
        told = sum(1 for c in self.cands.values() if c.told is not None) - len(tail)  # results told so far
        in_flight: dict[int, tuple[Candidate, float]] = {}  # executor ticket -> (candidate, submit time)
        leaders: dict[str, Candidate] = {}  # architecture key -> its candidate in flight
        parked: dict[str, list[Candidate]] = {}  # key -> candidates waiting for that leader's result
        durations = [float(c.timings["total_s"]) for c in self.cands.values()
                     if c.finished and c.cache_of is None and c.timings.get("total_s")]
        virtual = list(tail)  # results that arrive again (in their told order) before any real one
        for c in virtual:
            k = self.key_of(c)
            if k is not None and c.cache_of is None:
                leaders.setdefault(k, c)

        def tell(c: Candidate) -> None:
            strat.tell([c])
            self.remember(c)
            self.finished(c)
            if told % config.round_size == 0:
                self.show_status()

        def dispatch(c: Candidate) -> None:
            nonlocal told
            k = self.key_of(c)
            if k is not None and k in self.seen:
                c.told, told = told, told + 1
                run.cache_hit(c, self.seen[k])
                tell(c)
            elif k is not None and k in leaders:
                parked.setdefault(k, []).append(c)
            else:
                if k is not None:
                    leaders[k] = c
                store.mark_running([c.id])
                c.status = "running"
                in_flight[self.ex.submit(self.work, self.task_of(c))] = (c, time.perf_counter())

        def may_ask() -> bool:
            if budget.kind == "candidates":
                return self.counted() < int(budget.value) and not self.exhausted()
            left = budget.value - run.elapsed()
            mean = sum(durations) / len(durations) if durations else 0.0
            return left > 0 and not (durations and left < mean)

        def release(c: Candidate) -> None:  # c's result is in: its duplicates waiting for it go on
            k = self.key_of(c)
            if k is not None and leaders.get(k) is c:
                del leaders[k]
                for p in parked.pop(k, []):  # a cache hit now, or (the leader failed) evaluated itself
                    dispatch(p)

        def busy() -> int:
            return len(in_flight) + sum(1 for c in virtual if c.cache_of is None)

        for c in resumed:  # the candidates in flight when the run stopped: asked already, evaluated first
            dispatch(c)
        while True:
            waiting = False  # the budget allows another candidate, and the strategy proposed none
            while busy() < config.round_size and may_ask():
                specs = strat.ask(1)
                if not specs:  # the strategy waits for a result in flight
                    waiting = True
                    break
                (c,) = self.new_candidates(specs[:1], told)
                dispatch(c)
            if virtual:  # a stored result arriving again: told as it was, with the cache hits told after it
                c = virtual.pop(0)
                while True:
                    told += 1
                    strat.tell([c])
                    self.remember(c)
                    release(c)
                    if not (virtual and virtual[0].cache_of is not None):
                        break
                    c = virtual.pop(0)
                continue
            if not in_flight:
                if waiting:  # nothing running and nothing proposed: the strategy cannot go on
                    raise RuntimeError(f"strategy {config.strategy!r} proposed no candidate with none in flight "
                                       f"after {told} results: it would wait forever")
                break
            ticket, res = self.ex.next_result()
            c, t0 = in_flight.pop(ticket)
            c.told, told = told, told + 1
            run.record(c, res)
            durations.append(float(c.timings.get("total_s") or time.perf_counter() - t0))
            tell(c)
            release(c)
