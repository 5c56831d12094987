"""Evaluators: how a candidate's metrics are produced (candidate in, metrics out).

- ``"train"`` (the default): build the network, train it on the dataset, count (and measure) it --
  :func:`evaluate_candidate` (below; re-exported by ``search.experiment``).
- ``"table:FILE.csv"``: a tabular benchmark (NAS-Bench-201 and the like). The candidate's metrics are
  looked up by its architecture string (``space.to_string(decisions)``: NAS-Bench-201's own format in
  the ``nb201`` space; the canonical JSON of the decisions in a space without one); nothing is built or
  trained. The CSV is read once per process (``csv`` module) and kept, keyed by that string.
  ``metric`` names the column the search sees (the validation accuracy, default ``cifar10_val``),
  ``test_metric`` the one reported as test (default ``cifar10_test``; ``"none"``: no test metric),
  ``key`` the column of architecture strings (default ``cellstr`` when the file has it, else ``arch``).
  The columns hold **accuracies in percent** (as NAS-Bench-201's tables do); the search minimises
  error, so the metrics are recorded as a trained candidate's are, as fractions:
  ``val_error = 1 - acc / 100``, ``val_acc = acc / 100`` (and ``test_error``/``test_acc``).
  With a count objective (``macs``, ``params``, ``flops``) the network is built and counted too
  (``costmodels.count``, cached per architecture); a latency objective or budget needs ``train``.
- a Python callable for library users: ``run_search(config, out, evaluator=fn)``. ``fn(request)``
  gets an :class:`EvalRequest` (``id``, ``seed``, ``decisions``, ``space``, ``dataset``, ``train``)
  and returns a mapping of floats with at least ``val_error``; the keys ``params``, ``macs``,
  ``flops``, ``latency_ms`` are recorded as costs, the others as metrics. An exception fails the
  candidate with its one-line reason (the search goes on). The run's stored config names the
  function (``evaluator = "callable:<module>:<qualname>"``), never the function itself: a resumed
  search must be given a function of the same name again (``--resume`` from the command line, which
  has no function to give, is refused). Callables run with the serial executor.

None of them trains a graph for the table or a callable, so such candidates have no
``graphs/<id>.json``: ``archir export`` has nothing to export (build the architecture with
``space.build(decisions)`` and train it).

Example:
    >>> from search.experiment import ExperimentConfig, run_search            # doctest: +SKIP
    >>> cfg = ExperimentConfig(space="nb201", strategy="evolution", budget="200c",
    ...                        evaluator="table:nb201_cifar10_12epoch.csv")
    >>> run_search(cfg, "runs/nb201").best.metrics["test_acc"]
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from archir.errors import is_user_error
from search.config import ConfigError, one_line
from search.data import cached_dataset

__all__ = ["Table", "load_table", "parse_evaluator", "check_evaluator", "evaluate_task", "evaluate_callable",
           "callable_name", "resolve_callable", "check_importable", "evaluate_callable_task", "evaluate_candidate",
           "EvalRequest", "arch_key", "COST_KEYS", "TABLE_DEFAULTS"]

#: keys of a callable's result that are costs (the rest are metrics)
COST_KEYS = ("params", "macs", "flops", "latency_ms", "latency_iqr_ms")
#: the table evaluator's options and their defaults (NAS-Bench-201's CIFAR-10 columns)
TABLE_DEFAULTS = {"metric": "cifar10_val", "test_metric": "cifar10_test", "key": None}


def _config_error(message: str, hint: str | None = None, **where: Any):
    return ConfigError(message, hint=hint, **where)


def parse_evaluator(spec: Any) -> tuple[str, str | None]:
    """``(kind, argument)`` of an evaluator spec: ``("train", None)``, ``("table", FILE)`` or
    ``("callable", "module:qualname")``.

    Raises:
        ConfigError: anything else (the message lists the forms).

    Example:
        >>> parse_evaluator("table:nb201.csv")
        ('table', 'nb201.csv')
    """
    text = str(spec).strip() if isinstance(spec, str) else None
    if text == "train":
        return "train", None
    if text is not None:
        kind, colon, arg = text.partition(":")
        if colon and kind in ("table", "callable") and arg.strip():
            return kind, arg.strip()
    raise _config_error(f"unknown evaluator {spec!r}",
                        hint="use --evaluator train (train every candidate) or --evaluator table:FILE.csv (look its "
                             "metrics up in a tabular benchmark); in Python also run_search(..., evaluator=fn)")


# --------------------------------------------------------------------------- the table


@dataclass
class Table:
    """A tabular benchmark read from a CSV file: ``rows[key] = {column: value}`` (values as text).

    Attributes:
        path: the file; ``key``: the column of architecture strings; ``columns``: every column.
    """

    path: Path
    key: str
    columns: list[str]
    rows: dict[str, dict[str, str]] = field(repr=False)

    def lookup(self, arch: str, metric: str, test_metric: str | None) -> dict[str, float]:
        """The metrics of architecture ``arch`` (see the module docstring for the conversion).

        Raises:
            DataError: ``arch`` is not in the table, or a value is not an accuracy in percent.
        """
        from search.data import DataError

        row = self.rows.get(arch)
        if row is None:
            raise DataError(f"architecture {arch!r} is not in the table", where=self.path,
                            hint=f"the table's {self.key!r} column must hold every architecture of the space, "
                                 "in the space's string form (space.to_string)")
        out: dict[str, float] = {}
        for name, col in (("val", metric), ("test", test_metric)):
            if col is None:
                continue
            try:
                acc = float(row[col])
            except ValueError:
                acc = math.nan
            if not 0.0 <= acc <= 100.0:
                raise DataError(f"column {col!r} of architecture {arch!r} is {row[col]!r}, not an accuracy in "
                                "percent (0..100)", where=self.path,
                                hint="name a column of accuracies with --table-metric / --table-test-metric")
            out[f"{name}_acc"] = acc / 100.0
            out[f"{name}_error"] = 1.0 - acc / 100.0
        return out


_TABLES: dict[tuple, Table] = {}


def load_table(path: str | os.PathLike, key: str | None = None) -> Table:
    """Read (once per process and file version) the CSV benchmark at ``path``, keyed by column ``key``
    (default ``cellstr`` when there is one, else ``arch``).

    Raises:
        DataError: no such file, no header, no such key column, or a key that appears twice.
    """
    from search.data import DataError

    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        raise DataError("no such table file", where=p,
                        hint="give the CSV of the benchmark: --evaluator table:FILE.csv") from None
    ck = (str(p.resolve()), st.st_mtime_ns, st.st_size, key)
    if ck in _TABLES:
        return _TABLES[ck]
    with open(p, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise DataError("the table file is empty (no header row)", where=p, hint="give a CSV with a header row")
        header = [h.strip() for h in header]
        col = key if key is not None else ("cellstr" if "cellstr" in header else "arch")
        if col not in header:
            raise DataError(f"the table has no column {col!r} of architecture strings (columns: {header})",
                            where=p, hint="name it with evaluator_options={'key': COLUMN}")
        k = header.index(col)
        rows: dict[str, dict[str, str]] = {}
        for line, values in enumerate(reader, start=2):
            if not values:
                continue
            if len(values) != len(header):
                raise DataError(f"line {line} has {len(values)} values, the header {len(header)}", where=p,
                                hint="every row needs one value per column")
            arch = values[k].strip()
            if arch in rows:
                raise DataError(f"architecture {arch!r} appears twice (again on line {line})", where=p,
                                hint="keep one row per architecture")
            rows[arch] = dict(zip(header, (v.strip() for v in values)))
    table = Table(p, col, header, rows)
    _TABLES[ck] = table
    return table


def _table_options(options: Mapping[str, Any] | None) -> dict:
    opts = {**TABLE_DEFAULTS, **dict(options or {})}
    unknown = sorted(set(opts) - set(TABLE_DEFAULTS))
    if unknown:
        raise _config_error(f"unknown table evaluator option(s) {unknown}",
                            hint=f"its options are {sorted(TABLE_DEFAULTS)} (--table-metric, --table-test-metric)")
    if isinstance(opts["test_metric"], str) and opts["test_metric"].lower() == "none":
        opts["test_metric"] = None
    return opts


def check_evaluator(spec: str, options: Mapping[str, Any] | None, *, objective_cost: str | None = None,
                    latency_budget: bool = False) -> tuple[str, str | None]:
    """Check an evaluator and its options before a search starts (the table is read here, once).

    Returns:
        ``parse_evaluator(spec)``.

    Raises:
        ConfigError: an unknown evaluator or option, a table column that is not there, or an objective
            the evaluator cannot give (latency from a table). DataError: the table cannot be read.
    """
    kind, arg = parse_evaluator(spec)
    if kind != "table":
        if options:
            raise _config_error(f"evaluator options {dict(options)} apply to --evaluator table:FILE, not {spec}",
                                hint="drop --table-metric / --table-test-metric, or use --evaluator table:FILE.csv")
        return kind, arg
    opts = _table_options(options)
    if objective_cost == "latency" or latency_budget:
        raise _config_error(f"evaluator {spec}: a table gives no latency", hint="use a count objective (error, "
                            "macs, params, flops) with a table, or --evaluator train to measure latency")
    table = load_table(arg, opts["key"])
    for flag, col in (("--table-metric", opts["metric"]), ("--table-test-metric", opts["test_metric"])):
        if col is not None and col not in table.columns:
            raise _config_error(f"the table has no column {col!r} (columns: {table.columns})", file=table.path,
                                hint=f"pass {flag} COLUMN" + (" (or none)" if flag == "--table-test-metric" else ""))
    return kind, arg


def table_fingerprint(path: str | os.PathLike) -> dict:
    """``{"sha256", "rows"}`` of a table file: a resumed search checks that its table did not change."""
    import hashlib

    p = Path(path)
    return {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "rows": len(load_table(p).rows)}


# --------------------------------------------------------------------------- the worker side


_SPACES: dict[str, Any] = {}
_COUNTS: dict[tuple, dict] = {}


def _space(name: str, options: Mapping[str, Any]):
    k = json.dumps([name, dict(options)], sort_keys=True, default=list)
    if k not in _SPACES:
        from search.morph import get_space

        _SPACES[k] = get_space(name, **dict(options))
    return _SPACES[k]


def arch_key(space, decisions: Mapping) -> str:
    """The string a table is keyed by: ``space.to_string(decisions)``, or the canonical JSON of the decisions."""
    to_string = getattr(space, "to_string", None)
    if callable(to_string):
        return to_string(decisions)
    return json.dumps(space.encode(decisions), sort_keys=True)


def _result(task: Mapping[str, Any]) -> dict:
    return {"id": task["id"], "status": "failed", "reason": None, "metrics": {}, "costs": {}, "timings": {},
            "epochs": 0, "graph_hash": None, "graph_json": None, "weights": None, "traceback": None}


def evaluate_task(task: Mapping[str, Any]) -> dict:
    """Evaluate one candidate with the task's ``evaluator`` (``table:FILE``): the result of
    :func:`evaluate_candidate`, without a graph. Never raises for a bad candidate."""
    t0 = time.perf_counter()
    out = _result(task)
    stage = "lookup"
    try:
        kind, arg = parse_evaluator(task["evaluator"])
        if kind != "table":
            raise _config_error(f"evaluator {task['evaluator']!r} cannot run in a worker",
                                hint="pass the callable to run_search(..., evaluator=fn) with the serial executor")
        opts = _table_options(task.get("evaluator_options"))
        space = _space(task["space"], task["space_options"])
        d = space.decode(task["decisions"])
        arch = arch_key(space, d)
        out["metrics"] = load_table(arg, opts["key"]).lookup(arch, opts["metric"], opts["test_metric"])
        if task.get("costs"):  # a count objective: build and count (cached per architecture)
            stage = "cost"
            ck = (task["space"], json.dumps(task["space_options"], sort_keys=True, default=list), arch)
            if ck not in _COUNTS:
                import costmodels

                g = space.build(d, seed=0)
                c = costmodels.count(g)
                _COUNTS[ck] = {"costs": {"params": float(c.params), "macs": float(c.macs), "flops": float(c.flops)},
                               "graph_hash": g.structural_hash()}
            out["costs"] = dict(_COUNTS[ck]["costs"])
            out["graph_hash"] = _COUNTS[ck]["graph_hash"]
        out["status"] = "ok"
    except Exception as e:  # a bad candidate is recorded as failed with the reason; the search goes on
        out["reason"] = f"{stage}: {one_line(e)}"
        out["traceback"] = None if is_user_error(e) else traceback.format_exc()
    out["timings"] = {"evaluate_s": time.perf_counter() - t0, "total_s": time.perf_counter() - t0}
    return out


@dataclass(frozen=True)
class EvalRequest:
    """What a callable evaluator gets: the candidate and the experiment's context.

    Attributes:
        id, seed: the candidate's id and seed (use the seed for any randomness).
        decisions: the canonical decisions; ``space``: the search space (``space.build(decisions, seed=seed)``
            gives the network); ``dataset``: the experiment's dataset spec; ``train``: its training options.
    """

    id: int
    seed: int
    decisions: dict
    space: Any
    dataset: str
    train: dict


def callable_name(fn: Callable) -> str:
    """``"callable:<module>:<qualname>"``: how a run's config names a callable evaluator."""
    if not callable(fn):
        raise _config_error(f"evaluator {fn!r} is not callable", hint="pass a function fn(request) -> metrics")
    mod = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__qualname__
    return f"callable:{mod}:{name}"


def resolve_callable(name: str) -> Callable:
    """The function a ``"callable:<module>:<qualname>"`` name refers to, imported (no ``eval``).

    Raises:
        ConfigError: the module cannot be imported or holds no such attribute.
    """
    import importlib

    kind, arg = parse_evaluator(name)
    mod, _, qual = (arg or "").partition(":")
    if kind != "callable" or not mod or not qual or "<" in qual or mod == "__main__":
        raise _config_error(f"evaluator {name!r} cannot be imported by name in a worker process",
                            hint="define the evaluator at the top level of an importable module (not __main__, "
                                 "not inside a function), or use the serial executor")
    try:
        obj: Any = importlib.import_module(mod)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise _config_error(f"evaluator {name!r} cannot be imported: {one_line(e)}",
                            hint="make its module importable where the workers run (PYTHONPATH, an installed "
                                 "package), or use the serial executor") from None
    return obj


def check_importable(fn: Callable) -> str:
    """``callable_name(fn)``, checked to import back to ``fn`` itself (so workers of a process or Ray
    executor can run it by name). Raises ConfigError (see :func:`resolve_callable`) otherwise."""
    name = callable_name(fn)
    if resolve_callable(name) is not fn:
        raise _config_error(f"evaluator {name[9:]} imports as another object than the one given",
                            hint="pass the module-level function itself, or use the serial executor")
    return name


def evaluate_callable_task(task: Mapping[str, Any]) -> dict:
    """:func:`evaluate_callable` in a worker: the function is imported by the task's ``evaluator`` name and
    the space built from the task's ``space`` and ``space_options``. Never raises for a bad candidate."""
    try:
        fn = resolve_callable(task["evaluator"])
        space = _space(task["space"], task["space_options"])
    except Exception as e:  # the worker cannot import the function: every candidate says why
        out = _result(task)
        out["reason"] = f"evaluate: {one_line(e)}"
        out["traceback"] = None if is_user_error(e) else traceback.format_exc()
        return out
    return evaluate_callable(fn, space, task, need=task.get("need"))


def evaluate_callable(fn: Callable, space, task: Mapping[str, Any], need: str | None = None) -> dict:
    """Run a callable evaluator on one task (in this process); the result of ``evaluate_candidate``
    without a graph. ``need``: the cost the objective scores (``macs``, ``latency_ms``, ...), which the
    result must then hold. Never raises for a bad candidate: its exception is the one-line reason."""
    t0 = time.perf_counter()
    out = _result(task)
    try:
        req = EvalRequest(id=int(task["id"]), seed=int(task["seed"]), decisions=space.decode(task["decisions"]),
                          space=space, dataset=task.get("dataset"), train=dict(task.get("train") or {}))
        res = fn(req)
        if not isinstance(res, Mapping) or "val_error" not in res:
            raise _config_error(f"the evaluator returned {res!r:.80}, not a mapping with 'val_error'",
                                hint="return e.g. {'val_error': 0.12, 'test_error': 0.13, 'params': 1.2e6}")
        for k, v in res.items():
            v = float(v)
            (out["costs"] if k in COST_KEYS else out["metrics"])[str(k)] = v
        if need is not None and need not in out["costs"]:
            raise _config_error(f"the evaluator returned no {need!r}, the cost the objective scores",
                                hint=f"return {need!r} too, or search with objective='error'")
        out["metrics"].setdefault("val_acc", 1.0 - out["metrics"]["val_error"])
        out["status"] = "ok"
    except Exception as e:
        out["reason"] = f"evaluate: {one_line(e)}"  # the user's code, not archir's: no traceback marked as a bug
    out["timings"] = {"evaluate_s": time.perf_counter() - t0, "total_s": time.perf_counter() - t0}
    return out


# ------------------------------------------------------------------------------ the train evaluator


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
            g, grown = grow(task, cached_dataset(task["dataset"]))
        elif "init_graph" in task:  # one-shot inherit: the architecture cut out of the trained supernet
            from search.morph import graph_from_data
            from search.train import evaluate

            g = graph_from_data(task["init_graph"])
            ds0 = cached_dataset(task["dataset"])
            grown["metrics"] = {"inherited_val_error": float(evaluate(g, ds0.x_val, ds0.y_val)[0]), "inherited": 1.0}
        else:
            space = get_space(task["space"], **dict(task["space_options"]))
            g = space.build(space.decode(task["decisions"]), seed=int(task["seed"]))
        out["graph_hash"] = g.structural_hash()
        t1 = time.perf_counter()
        out["timings"]["build_s"] = t1 - t0
        stage = "train"
        ds = cached_dataset(task["dataset"])
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
        out["reason"] = f"{stage}: {one_line(e)}"
        # a user error (a refused pass, a bad decision) is its one line; anything else is a bug: keep the traceback
        out["traceback"] = None if is_user_error(e) else traceback.format_exc()
    finally:
        out["timings"]["total_s"] = time.perf_counter() - t0
    return out
