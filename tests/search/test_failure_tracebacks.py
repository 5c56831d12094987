"""A bug inside a pass during a search is a bug, not a bad candidate: it keeps its traceback.

A hill-climbing run (serial executor) grows children with ``deepen``; a ``ZeroDivisionError`` is
injected inside ``passes.deepen`` (the ``@graph_pass`` wrapper lets it through unchanged, with a note
naming the pass). The children are recorded as failed with a one-line reason and the full
traceback, and ``archir gallery`` marks them and prints the traceback on ``--traceback``. A user
error from a pass (a ``PreconditionError``) stays one line, without a traceback.
"""

from __future__ import annotations

import importlib

import pytest

from archir.cli.main import main
from passes import PreconditionError
from search.experiment import ExperimentConfig, run_search
from search.store import Store

TRAIN = {"epochs": 1, "batch_size": 128, "lr": 0.05, "schedule": "sgdr"}
# round 0: the start graph; round 1: two children, each one deepen away from it
CONFIG = dict(space="start", strategy="hillclimb", strategy_options={"moves": 1, "morphisms": ["deepen"]},
              budget="3c", round_size=2, seed=3, objective="error", train=dict(TRAIN))


def _injected_bug(*args, **kwargs):
    return 1 / 0


def _refused(*args, **kwargs):
    raise PreconditionError("no room here", pass_name="deepen", hint="pick another node")


@pytest.fixture()
def deepen_module():
    return importlib.import_module("passes.deepen")


def test_a_bug_in_a_pass_is_stored_with_its_traceback_and_the_gallery_shows_it(tmp_path, monkeypatch, capsys,
                                                                               deepen_module):
    monkeypatch.setattr(deepen_module, "fresh_scope", _injected_bug)  # called inside deepen, past its checks
    run = tmp_path / "run"
    s = run_search(ExperimentConfig(**CONFIG), run, executor="serial")
    assert s.counts["done"] == 1 and s.counts["failed"] == 2
    with Store.open(run) as st:
        cands = st.candidates()
    assert [c.status for c in cands] == ["done", "failed", "failed"]
    assert cands[0].traceback is None
    for c in cands[1:]:
        assert c.error.startswith("build: ") and "ZeroDivisionError" in c.error and "\n" not in c.error, c.error
        assert "_injected_bug" in c.traceback and "ZeroDivisionError: division by zero" in c.traceback, c.traceback

    assert main(["gallery", str(run), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "failed candidates (2; 2 from an archir bug, marked !):" in out, out
    marked = [line for line in out.splitlines() if line.startswith("!    ")]
    assert len(marked) == 2 and all("ZeroDivisionError" in line for line in marked), out
    assert f"archir gallery {run} --traceback 1 prints its traceback" in out, out

    assert main(["gallery", str(run), "--traceback", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("candidate 1 (") and "failed from an archir bug" in out
    assert "_injected_bug" in out and "ZeroDivisionError: division by zero" in out
    assert main(["gallery", str(run), "--traceback"]) == 0  # every bug
    out = capsys.readouterr().out
    assert out.count("Traceback (most recent call last)") >= 2 and "candidate 2 (" in out
    assert main(["gallery", str(run), "--traceback", "0"]) == 0
    assert "candidate 0 is done: it did not fail" in capsys.readouterr().out
    assert main(["gallery", str(run), "--traceback", "x"]) == 2
    assert "is not a candidate id" in capsys.readouterr().err


def test_a_user_error_from_a_pass_stays_one_line(tmp_path, monkeypatch, capsys, deepen_module):
    monkeypatch.setattr(deepen_module, "fresh_scope", _refused)
    run = tmp_path / "run"
    run_search(ExperimentConfig(**dict(CONFIG, budget="2c", round_size=1)), run, executor="serial")
    with Store.open(run) as st:
        cands = st.candidates()
    assert [c.status for c in cands] == ["done", "failed"]
    bad = cands[1]
    assert bad.error.startswith("build: PreconditionError: ") and "\n" not in bad.error, bad.error
    assert bad.traceback is None
    assert main(["gallery", str(run), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "failed candidates (1):" in out and "from an archir bug" not in out and "--traceback" not in out, out
    assert main(["gallery", str(run), "--traceback"]) == 0
    assert "no candidate of" in capsys.readouterr().out


def test_a_bug_inside_training_keeps_its_traceback_and_a_user_error_does_not(monkeypatch):
    import archir
    import search.train
    from search.data import load_dataset
    from search.morph import starter
    from search.train import TrainConfig, train

    ds = load_dataset("digits")
    g = starter(tuple(ds.input_shape), int(ds.num_classes))
    cfg = TrainConfig(epochs=1, batch_size=128)
    monkeypatch.setattr(search.train, "to_fx", _injected_bug)
    res = train(g, ds, cfg)
    assert res.status == "failed" and res.reason == "lowering: ZeroDivisionError: division by zero"
    assert "_injected_bug" in res.traceback

    def refuse(graph):
        raise archir.LoweringError("cannot lower this op", node="x", hint="use another op")

    monkeypatch.setattr(search.train, "to_fx", refuse)
    res = train(g, ds, cfg)
    assert res.status == "failed" and "LoweringError" in res.reason and res.traceback is None
