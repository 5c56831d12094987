"""Evaluators (``search.evaluators``): the table of a tabular benchmark, a Python callable, and their CLI flags.

Every table here is synthetic, written in ``tmp_path``: all 15,625 NAS-Bench-201 cells with made-up
accuracies (more 3x3 convs: better), so no test reads a shared file.
"""

from __future__ import annotations

from dataclasses import replace

import csv
import itertools
import json

import pytest

from archir.cli.main import main
from search.data import DataError
from search.evaluators import TABLE_DEFAULTS, callable_name, load_table, parse_evaluator
from search.experiment import ConfigError, ExperimentConfig, run_search
from search.spaces.nb201 import OPS, Nb201Space
from search.store import ConfigMismatch, Store

SPACE = Nb201Space()


def fake_acc(edges) -> tuple[float, float]:
    """(val, test) accuracy in percent: 3x3 convs help, none hurts; deterministic."""
    v = 60.0 + 4.0 * edges.count("nor_conv_3x3") + 2.0 * edges.count("nor_conv_1x1") - 3.0 * edges.count("none")
    v += 0.01 * sum(OPS.index(op) * (k + 1) for k, op in enumerate(edges))
    return round(v, 4), round(v + 3.0, 4)


def write_table(path, rows=None, extra=False):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "cellstr", "cifar10_val", "cifar10_test"] + (["other_val"] if extra else []))
        for n, edges in enumerate(rows if rows is not None else itertools.product(OPS, repeat=6)):
            edges = list(edges)
            val, test = fake_acc(edges)
            w.writerow([n, SPACE.to_string({"edges": edges}), val, test] + ([50.0] if extra else []))
    return path


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return write_table(tmp_path_factory.mktemp("tables") / "nb201_fake.csv", extra=True)


def config(table, **kw):
    opts = {"population": 4, "sample": 2} if kw.get("strategy", "evolution") == "evolution" else {}
    return ExperimentConfig(**{"space": "nb201", "strategy": "evolution", "budget": "12c", "round_size": 1,
                               "strategy_options": opts, "evaluator": f"table:{table}", **kw})


# ------------------------------------------------------------------------------ specs and the table
def test_parse_evaluator_and_unknown_specs():
    assert parse_evaluator("train") == ("train", None)
    assert parse_evaluator("table:x.csv") == ("table", "x.csv")
    for bad in ("tabel:x.csv", "table:", "", 3, None):
        with pytest.raises(ConfigError, match="unknown evaluator") as e:
            parse_evaluator(bad)
        assert "table:FILE.csv" in e.value.hint


def test_table_lookup_converts_accuracy_to_error(table):
    t = load_table(table)
    assert t.key == "cellstr" and len(t.rows) == 5 ** 6 and load_table(table) is t  # read once
    d = SPACE.from_string("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|"
                          "skip_connect~2|")
    val, test = fake_acc(d["edges"])
    m = t.lookup(SPACE.to_string(d), "cifar10_val", "cifar10_test")
    assert m == pytest.approx({"val_acc": val / 100, "val_error": 1 - val / 100, "test_acc": test / 100,
                               "test_error": 1 - test / 100})
    assert set(t.lookup(SPACE.to_string(d), "other_val", None)) == {"val_acc", "val_error"}


def test_missing_architecture_names_it_and_the_file(tmp_path):
    small = write_table(tmp_path / "small.csv", rows=[["none"] * 6])
    arch = "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    with pytest.raises(DataError) as e:
        load_table(small).lookup(arch, "cifar10_val", "cifar10_test")
    assert arch in e.value.message and str(e.value.file) == str(small)
    # in a search, a missing architecture fails that candidate with the reason; the search goes on
    s = run_search(config(small, strategy="random", budget="3c"), tmp_path / "run")
    with Store.open(tmp_path / "run") as st:
        failed = st.candidates("failed")
    assert s.counts["failed"] == len(failed) >= 2 and "is not in the table" in failed[0].error
    assert failed[0].traceback is None  # a user error, not an archir bug


def test_bad_tables_and_columns_are_refused(tmp_path, table):
    with pytest.raises(DataError, match="no such table file"):
        config(tmp_path / "nope.csv").check()
    with pytest.raises(ConfigError, match="no column 'val'") as e:
        config(table, evaluator_options={"metric": "val"}).check()
    assert "--table-metric" in e.value.hint
    with pytest.raises(ConfigError, match="unknown table evaluator option"):
        config(table, evaluator_options={"metrc": "x"}).check()
    with pytest.raises(ConfigError, match="gives no latency"):
        config(table, objective="latency:ort-cpu").check()
    with pytest.raises(ConfigError, match="apply to --evaluator table"):
        ExperimentConfig(evaluator_options={"metric": "x"}).check()
    (tmp_path / "dup.csv").write_text("cellstr,cifar10_val\na,1\na,2\n")
    with pytest.raises(DataError, match="appears twice"):
        load_table(tmp_path / "dup.csv")
    (tmp_path / "pct.csv").write_text("cellstr,cifar10_val,cifar10_test\n"
                                      + "".join(f"{SPACE.to_string({'edges': list(e)})},0.9,180\n"
                                                for e in itertools.product(OPS, repeat=6)))
    s = run_search(config(tmp_path / "pct.csv", budget="1c"), tmp_path / "run")
    assert s.counts["failed"] == 1  # 180 is not an accuracy in percent


# ------------------------------------------------------------------------------ the run loop
def test_search_on_the_table_records_the_looked_up_metrics(table, tmp_path):
    s = run_search(config(table), tmp_path / "run")
    assert s.counts["done"] == 12 and s.distinct >= 2
    with Store.open(tmp_path / "run") as st:
        cands = st.candidates()
        stored = st.config
        assert st.info("evaluator_table")["rows"] == 5 ** 6
    for c in cands:
        val, test = fake_acc(c.decisions["edges"])
        assert c.score == pytest.approx(1 - val / 100) and c.metrics["test_acc"] == pytest.approx(test / 100)
        assert c.graph_path is None and c.costs == {}
    assert stored["evaluator"] == f"table:{table}" and "evaluator_options" not in stored
    # the default evaluator is not stored: configs of runs from before evaluators existed are unchanged
    assert "evaluator" not in ExperimentConfig().to_dict() and "evaluator_options" not in ExperimentConfig().to_dict()
    assert ExperimentConfig.from_dict(ExperimentConfig().to_dict()).evaluator == "train"


def test_count_objective_builds_and_counts(table, tmp_path):
    s = run_search(config(table, objective="params", budget="3c", strategy="random"), tmp_path / "run")
    assert s.counts["done"] == 3
    for c in s.frontier:
        assert c.costs["params"] > 0 and c.graph_hash
        assert c.costs["params"] == pytest.approx(
            __import__("costmodels").count(SPACE.build(c.decisions)).params)


@pytest.mark.parametrize("strategy", ["random", "evolution", "reinforce", "pnas"])
def test_every_strategy_runs_on_the_table(table, tmp_path, strategy):
    opts = {"population": 4, "sample": 2} if strategy == "evolution" else \
        {"surrogate_steps": 20, "ensemble": 1} if strategy == "pnas" else {}
    s = run_search(config(table, strategy=strategy, strategy_options=opts, budget="10c"), tmp_path / "run")
    assert s.counts["done"] == 10 and s.best is not None


def test_resume_with_a_changed_evaluator_or_table_is_refused(table, tmp_path):
    run = tmp_path / "run"
    run_search(config(table, budget="4c"), run)
    other = write_table(tmp_path / "other.csv", extra=True)
    with pytest.raises(ConfigMismatch, match="evaluator"):
        run_search(config(other, budget="4c"), run, resume=True)
    with pytest.raises(ConfigMismatch, match="evaluator_options"):
        run_search(config(table, budget="4c", evaluator_options={"metric": "other_val"}), run, resume=True)
    with pytest.raises(ConfigMismatch, match="evaluator"):
        run_search(ExperimentConfig(**{**config(table, budget="4c").__dict__, "evaluator": "train"}), run,
                   resume=True)
    s = run_search(config(table, budget="4c"), run, resume=True)  # the same evaluator: resumes
    assert s.counts["done"] == 4 and s.resumed == 4
    # the same path with other contents
    own = tmp_path / "own.csv"
    own.write_bytes(table.read_bytes())
    run_search(config(own, budget="2c"), tmp_path / "run2")
    rows = own.read_text().splitlines()
    own.write_text("\n".join(rows[:1] + rows[1:][::-1]) + "\n")  # the same rows, another order
    with pytest.raises(ConfigError, match="changed table"):
        run_search(config(own, budget="2c"), tmp_path / "run2", resume=True)


# ------------------------------------------------------------------------------ a Python callable
def conv_counter(request):
    edges = request.decisions["edges"]
    assert request.space.name == "nb201" and isinstance(request.seed, int)
    if edges.count("none") == 6:
        raise ValueError("all none")
    return {"val_error": 1 - edges.count("nor_conv_3x3") / 6, "test_error": 0.5, "params": 10.0 * request.id + 1}


def test_callable_evaluator(tmp_path):
    cfg = ExperimentConfig(space="nb201", strategy="evolution", budget="10c", round_size=2,
                           strategy_options={"population": 4, "sample": 2})
    s = run_search(cfg, tmp_path / "run", evaluator=conv_counter)
    assert s.counts["done"] == 10
    with Store.open(tmp_path / "run") as st:
        stored, cands = st.config, st.candidates()
    assert stored["evaluator"] == callable_name(conv_counter) == f"callable:{__name__}:conv_counter"
    for c in cands:
        assert c.score == pytest.approx(1 - c.decisions["edges"].count("nor_conv_3x3") / 6)
        assert c.costs == {"params": 10.0 * c.id + 1} and c.metrics["test_error"] == 0.5
    # resume: the same function resumes; another one, or none, is refused
    assert run_search(cfg, tmp_path / "run", evaluator=conv_counter, resume=True).resumed == 10
    with pytest.raises(ConfigMismatch, match="evaluator"):
        run_search(cfg, tmp_path / "run", evaluator=lambda r: {"val_error": 0.1}, resume=True)
    with pytest.raises(ConfigMismatch, match="evaluator"):
        run_search(cfg, tmp_path / "run", resume=True)
    # process workers import a top-level function by its name (rounds: the same results as serial);
    # a lambda or a nested function cannot be imported there and is refused before anything runs
    sync = replace(cfg, scheduling="sync")
    run_search(sync, tmp_path / "ser", evaluator=conv_counter)
    run_search(sync, tmp_path / "proc", evaluator=conv_counter, executor="process", executor_options={"workers": 2})
    with Store.open(tmp_path / "ser") as a, Store.open(tmp_path / "proc") as b:
        assert [(c.decisions, c.metrics, c.costs) for c in a.candidates()] == \
            [(c.decisions, c.metrics, c.costs) for c in b.candidates()]
    with pytest.raises(ConfigError, match="cannot be imported by name in a worker"):
        run_search(cfg, tmp_path / "run3", evaluator=lambda r: {"val_error": 0.1}, executor="process")
    assert not (tmp_path / "run3").exists()
    with pytest.raises(ConfigError, match="was not given"):
        run_search(ExperimentConfig(evaluator=callable_name(conv_counter)), tmp_path / "run4")


def test_callable_failures_and_bad_results_fail_the_candidate(tmp_path):
    s = run_search(ExperimentConfig(space="nb201", strategy="random", budget="3c"), tmp_path / "run",
                   evaluator=lambda r: {"loss": 1.0})
    with Store.open(tmp_path / "run") as st:
        failed = st.candidates("failed")
    assert s.counts["failed"] == 3 and "not a mapping with 'val_error'" in failed[0].error
    s = run_search(ExperimentConfig(space="nb201", strategy="random", budget="2c", objective="macs"),
                   tmp_path / "run2", evaluator=lambda r: {"val_error": 0.5})
    with Store.open(tmp_path / "run2") as st:
        failed = st.candidates("failed")
    assert s.counts["failed"] == 2 and "returned no 'macs'" in failed[0].error and failed[0].traceback is None


@pytest.mark.parametrize("space,strategy", [("darts", "darts"), ("start", "hillclimb")])
def test_strategies_that_train_refuse_another_evaluator(table, tmp_path, space, strategy):
    with pytest.raises(ConfigError, match="cannot use another evaluator"):
        run_search(ExperimentConfig(space=space, strategy=strategy, evaluator=f"table:{table}"), tmp_path / "r")
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------ the command line
def test_cli_flags(table, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["search", "--space", "nb201", "--evaluator", f"table:{table}", "--table-metric", "other_val",
                 "--table-test-metric", "cifar10_test", "--budget", "5c", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "search finished: 5 candidates (5 done, 0 failed)" in text and "architecture: |" in text
    assert "no gallery plot or best.onnx" in text and not (out / "best.onnx").exists()
    with Store.open(out) as st:
        assert st.config["evaluator_options"] == {"metric": "other_val", "test_metric": "cifar10_test"}
        assert all(c.metrics["val_acc"] == 0.5 for c in st.candidates())
    assert main(["search", "--space", "nb201", "--evaluator", "tabel:x", "--out", str(tmp_path / "x")]) == 2
    assert "unknown evaluator" in capsys.readouterr().err
    assert main(["search", "--table-metric", "x", "--out", str(tmp_path / "y")]) == 2
    assert "apply to --evaluator table" in capsys.readouterr().err
    # resume with another evaluator: refused
    assert main(["search", "--space", "nb201", "--budget", "6c", "--out", str(out), "--resume", "--quiet"]) == 2
    assert "evaluator" in capsys.readouterr().err
    assert json.loads(json.dumps(TABLE_DEFAULTS))["metric"] == "cifar10_val"
