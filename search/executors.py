"""Executors: where the candidates of a round are evaluated.

- ``serial`` (default): one after the other, in this process.
- ``process``: a local ``concurrent.futures.ProcessPoolExecutor`` with the ``spawn`` start
  method (no fork of a process holding torch threads); every worker runs torch with one thread.
- ``ray``: Ray Core tasks. ``ray.init(address="local")`` starts a new local Ray by default; ``address=`` joins an
  existing cluster (``"auto"`` or ``"ray://host:10001"``). ``num_cpus``/``num_gpus`` are the
  resources each candidate asks for. Every node of a cluster needs the same archir (and its
  dependencies) installed: tasks name ``search.evaluators.evaluate_candidate`` by reference.
  Ray gives a task with ``num_gpus`` its GPU(s) through ``CUDA_VISIBLE_DEVICES``, so a candidate
  trained with ``device="auto"`` (``archir search --device auto --gpus-per-candidate 1``) runs on its
  own GPU and N GPUs train N candidates at once.
- ``process`` with ``gpus=[0, 1, ...]``: worker ``i`` sees only GPU ``gpus[i % len(gpus)]``
  (``CUDA_VISIBLE_DEVICES``, set before torch starts in the worker), so with ``workers = len(gpus)``
  each GPU trains one candidate at a time (``archir search --executor process --gpus 0,1``).

A task is plain data (a dict of the space's name and options, the decisions, the seed, the
training and cost config); a result is plain data too (metrics, costs, and the trained graph as
its archir JSON text and safetensors bytes). User graphs are never pickled as a storage format;
in transit the executor uses its own serialisation of these plain values. Every candidate
trains with one torch thread and its own seed, so the same seeds give the same results with
every executor (the driver tells results to the strategy in id order, whatever order they
finish in).

Two ways to run tasks: ``map_unordered(fn, tasks)`` (a batch: a synchronous round) and
``submit(fn, task)`` / ``next_result()`` (one task at a time: the asynchronous scheduler keeps
every worker busy by submitting a new candidate whenever one finishes). ``map_unordered`` is built
on the second. The serial executor runs submitted tasks first in, first out inside
``next_result``, so an asynchronous search with it is deterministic.

Example:
    >>> with get_executor("process", workers=2) as ex:                  # doctest: +SKIP
    ...     for index, result in ex.map_unordered(evaluate_candidate, tasks):
    ...         print(index, result["status"])
"""

from __future__ import annotations

import itertools
import logging
import os
import traceback
from abc import ABC, abstractmethod
from collections import deque
from typing import Any, Callable, Iterator, Sequence

from archir.errors import ArchirError
from search.config import one_line

__all__ = ["Executor", "SerialExecutor", "ProcessExecutor", "RayExecutor", "EXECUTORS", "get_executor",
           "ExecutorError", "worker_env"]

Task = dict
Result = dict


class ExecutorError(ArchirError, RuntimeError):
    """An executor cannot be used (Ray not installed, a cluster address unreachable, bad options).

    Attributes:
        hint: how to fix it (one line); ``message``, ``where`` and the rest as for
            :class:`archir.ArchirError` (``where=``/``file=``/``candidate=`` are accepted too).
    """

    def __init__(self, message: str, hint: str | None = None, **where: Any) -> None:
        super().__init__(message, hint=hint, **where)


def _crashed(task: Task, reason: str, error: BaseException | None = None) -> Result:
    """The result of a candidate whose worker died or raised outside the evaluation function.

    ``error``: the exception, when there is one (its traceback is kept with the failed candidate).
    """
    tb = None if error is None else "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return {"id": task.get("id"), "status": "failed", "reason": reason, "metrics": {}, "costs": {}, "timings": {},
            "graph_hash": None, "graph_json": None, "weights": None, "traceback": tb}


class Executor(ABC):
    """Runs a function over tasks; results come back as they finish.

    Subclasses implement :meth:`submit`, :meth:`next_result` and :attr:`in_flight`.
    """

    name = ""

    @abstractmethod
    def submit(self, fn: Callable[[Task], Result], task: Task) -> int:
        """Start ``fn(task)``; returns a ticket (0, 1, 2, ... per executor) that :meth:`next_result` hands back."""

    @abstractmethod
    def next_result(self) -> tuple[int, Result]:
        """Wait for a submitted task to finish: ``(ticket, result)``. A worker that dies gives a failed result.

        Raises:
            ExecutorError: nothing is in flight (an archir bug: the scheduler asked for a result it never started).
        """

    @property
    @abstractmethod
    def in_flight(self) -> int:
        """How many submitted tasks have not been handed back by :meth:`next_result` yet."""

    def map_unordered(self, fn: Callable[[Task], Result], tasks: Sequence[Task]) -> Iterator[tuple[int, Result]]:
        """Yield ``(index, fn(tasks[index]))`` as each finishes. A worker that dies yields a failed result."""
        tickets = {self.submit(fn, t): i for i, t in enumerate(tasks)}
        for _ in range(len(tickets)):
            ticket, res = self.next_result()
            yield tickets[ticket], res

    def _nothing_in_flight(self) -> ExecutorError:
        return ExecutorError(f"{self.name} executor: next_result() with no task in flight",
                             hint="this is an archir bug: submit a task first")

    def close(self) -> None:
        """Release workers (idempotent)."""

    def describe(self) -> str:
        """One line for the progress display."""
        return self.name

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SerialExecutor(Executor):
    """One task after the other in this process: a submitted task runs in :meth:`next_result`, first in first out."""

    name = "serial"

    def __init__(self) -> None:
        self._queue: deque = deque()
        self._tickets = itertools.count()

    def submit(self, fn, task):
        ticket = next(self._tickets)
        self._queue.append((ticket, fn, task))
        return ticket

    def next_result(self):
        if not self._queue:
            raise self._nothing_in_flight()
        ticket, fn, task = self._queue.popleft()
        return ticket, fn(task)

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        self._queue.clear()


def _init_worker(threads: int, gpu_queue=None) -> None:
    # set before torch spins up its pools: one thread per worker, the workers are the parallelism
    if gpu_queue is not None:  # this worker's one GPU, before torch initialises CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_queue.get())
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


class ProcessExecutor(Executor):
    """A local pool of ``workers`` processes (``spawn`` start method, one torch thread each).

    A worker process that dies (segfault, out of memory) fails the candidates it held with the
    reason, and the pool is rebuilt for the next round: the search goes on.
    """

    name = "process"

    def __init__(self, workers: int | None = None, threads_per_worker: int = 1,
                 gpus: Sequence[int] | None = None) -> None:
        if gpus is not None:
            gpus = list(gpus)
            if not gpus or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gpus):
                raise ExecutorError(f"process executor: gpus must be GPU indices >= 0, got {gpus!r}",
                                    hint="pass --gpus 0,1 (one worker per GPU)")
        workers = (len(gpus) if gpus else min(4, os.cpu_count() or 1)) if workers is None else workers
        if not (isinstance(workers, int) and workers >= 1):
            raise ExecutorError(f"process executor: workers must be an int >= 1, got {workers!r}",
                                hint="pass --workers 2")
        self.gpus = gpus
        self.workers = workers
        self.threads = threads_per_worker
        self._pool = None
        self._futures: dict = {}  # future -> (ticket, task, the pool it runs on)
        self._tickets = itertools.count()

    def _get_pool(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            queue = None
            if self.gpus:
                queue = ctx.SimpleQueue()
                for i in range(self.workers):
                    queue.put(self.gpus[i % len(self.gpus)])
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                             initargs=(self.threads, queue))
        return self._pool

    def submit(self, fn, task):
        ticket = next(self._tickets)
        pool = self._get_pool()
        self._futures[pool.submit(fn, task)] = (ticket, task, pool)
        return ticket

    def next_result(self):
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        if not self._futures:
            raise self._nothing_in_flight()
        done, _ = wait(self._futures, return_when=FIRST_COMPLETED)
        f = min(done, key=lambda f: self._futures[f][0])  # of several finished at once, the first submitted
        ticket, task, pool = self._futures.pop(f)
        try:
            return ticket, f.result()
        except BrokenProcessPool as e:
            # every task the dead pool held fails the same way; later submits go to a new pool. A task of a
            # pool that was already replaced must not take the new, healthy pool down with it.
            if pool is self._pool:
                self._drop_pool()
            return ticket, _crashed(task, f"worker process died ({one_line(e)})")
        except Exception as e:  # an exception outside fn's own handling, e.g. a pickling error
            return ticket, _crashed(task, f"worker error: {one_line(e)}", e)

    @property
    def in_flight(self) -> int:
        return len(self._futures)

    def _drop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        self._futures.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def describe(self) -> str:
        gpus = f", GPUs {','.join(map(str, self.gpus))}" if self.gpus else ""
        return f"process ({self.workers} workers{gpus})"


class RayExecutor(Executor):
    """Ray Core tasks, one per candidate.

    Args:
        address: None starts a new local Ray (``ray.init(address="local")``: never joins a cluster
            that happens to run on this machine); otherwise the address of an existing cluster
            (``"auto"``: the one started here with ``ray start``, ``"HOST:6379"``, ``"ray://head:10001"``).
        num_cpus, num_gpus: resources each candidate task asks for (default 1 CPU, 0 GPUs).
        workers: CPUs of the local Ray when it is started here (default: all).
        max_retries: how often Ray runs a candidate again whose worker process or node died
            (killed, out of memory, a machine gone) before it is recorded failed with the reason
            (default 2). A candidate that raises is not retried: that is its result. A retry
            trains from the same seed, so it gives the result the first try would have.

    Raises:
        ExecutorError: Ray is not installed, or the cluster cannot be reached.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0,
                 workers: int | None = None, max_retries: int = 2) -> None:
        try:
            import ray
        except ImportError:
            raise ExecutorError("the ray executor needs Ray, which is not installed",
                                hint="pip install 'archir[ray]' (or pip install ray), or use --executor process"
                                ) from None
        if not num_cpus > 0 or num_gpus < 0:
            raise ExecutorError(f"ray executor: num_cpus must be > 0 and num_gpus >= 0 (got {num_cpus}, {num_gpus})",
                                hint="pass --cpus-per-candidate 1 --gpus-per-candidate 0")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ExecutorError(f"ray executor: max_retries must be an int >= 0, got {max_retries!r}",
                                hint="e.g. max_retries=2 (0: a candidate whose worker dies is recorded failed)")
        self._ray = ray
        self.address = address
        self._started = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": logging.ERROR}
            try:
                if address is None:  # "local": a new Ray here, never a cluster that happens to run on this machine
                    ray.init(address="local", num_cpus=workers, **kw)
                else:
                    ray.init(address=address, **kw)
            except Exception as e:  # ConnectionError, RuntimeError, ...: Ray's own types vary by version
                raise ExecutorError(f"ray executor: cannot start or join Ray at {address or 'local'}: {one_line(e)}",
                                    hint="check --address (e.g. ray://head:10001 or auto) and that the cluster "
                                         "runs the same Ray and Python versions") from None
            self._started = True
        self.num_cpus, self.num_gpus, self.max_retries = num_cpus, num_gpus, max_retries
        self._remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries,
                                  retry_exceptions=False)(_ray_entry)
        self._refs: dict = {}  # object ref -> (ticket, task), in submit order
        self._tickets = itertools.count()

    def submit(self, fn, task):
        ticket = next(self._tickets)
        self._refs[self._remote.remote(fn, task)] = (ticket, task)
        return ticket

    def next_result(self):
        ray = self._ray
        if not self._refs:
            raise self._nothing_in_flight()
        done, _ = ray.wait(list(self._refs), num_returns=1)
        ticket, task = self._refs.pop(done[0])
        try:
            return ticket, ray.get(done[0])
        except Exception as e:  # RayTaskError, WorkerCrashedError (after max_retries), ...
            tries = f" (tried {self.max_retries + 1} times)" if self.max_retries else ""
            return ticket, _crashed(task, f"ray task failed{tries}: {one_line(e)}", e)

    @property
    def in_flight(self) -> int:
        return len(self._refs)

    def close(self) -> None:
        self._refs.clear()
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False

    def describe(self) -> str:
        where = self.address or "local"
        return f"ray ({where}, {self.num_cpus:g} CPU / {self.num_gpus:g} GPU per candidate)"


def worker_env(task: Task) -> Result:
    """What a worker sees: ``{"id", "pid", "CUDA_VISIBLE_DEVICES"}`` (to check the GPU handout)."""
    return {"id": task.get("id"), "pid": os.getpid(), "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}


def _ray_entry(fn, task):
    _init_worker(int(task.get("threads", 1)))
    return fn(task)


EXECUTORS: dict[str, type[Executor]] = {"serial": SerialExecutor, "process": ProcessExecutor, "ray": RayExecutor}


def get_executor(name: str, **options) -> Executor:
    """The executor called ``name`` (``serial``, ``process``, ``ray``) built with its ``options``.

    Options that do not apply to the executor (e.g. ``address`` for ``serial``) are refused.

    Raises:
        ExecutorError: unknown name, an option it does not take, or Ray missing.
    """
    if name not in EXECUTORS:
        raise ExecutorError(f"unknown executor {name!r}", hint=f"choose one of {sorted(EXECUTORS)}")
    import inspect

    cls = EXECUTORS[name]
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    given = {k: v for k, v in options.items() if v is not None}
    bad = sorted(set(given) - allowed)
    if bad:
        raise ExecutorError(f"executor {name!r} takes no option(s) {bad}",
                            hint=f"its options are {sorted(allowed) or 'none'}; drop the others or change --executor")
    return cls(**given)
