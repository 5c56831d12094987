"""``archir build --genotype`` and ``archir search --start-genotype``: what a user types."""

from __future__ import annotations

import json

import pytest

import archir
import costmodels
from archir.cli.main import main
from search.store import Store


def test_build_darts_v2_prints_the_papers_count(tmp_path, capsys):
    out = tmp_path / "net.json"
    assert main(["build", "--genotype", "DARTS_V2", "--cells", "20", "--channels", "36", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3,349,342 params" in text and "528,359,040 MACs" in text and "archir export" in text
    g = archir.load(out)
    assert g.meta["decisions"]["normal"][0] == ["sep_conv_3x3", 0] and costmodels.count(g).params == 3_349_342


def test_build_the_imagenet_network_with_the_training_ops(tmp_path, capsys):
    out = tmp_path / "nasnet.json"
    assert main(["build", "--genotype", "nasnet", "--stem", "imagenet", "--cells", "5", "--channels", "8",
                 "--auxiliary", "--drop-path", "0.2", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "imagenet stem, input 3x224x224" in text and "excluded: " in text and "drop_path 0.2" in text
    g = archir.load(out)
    assert g.node(g.outputs[0]).type.shape == (1000,) and g.nodes("auxiliary") and g.nodes("drop_path")


def test_build_reads_a_genotype_json_file(tmp_path, capsys):
    from search.spaces.genotypes import SNAS

    path = tmp_path / "mine.json"
    path.write_text(json.dumps(SNAS._asdict()))
    assert main(["build", "--genotype", str(path), "--cells", "8", "--channels", "16", "-o",
                 str(tmp_path / "n.json")]) == 0
    assert "8 cells x 16 channels" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--genotype", "DARTS_V9"], "unknown genotype 'DARTS_V9'; known: DARTS_V1"),
    (["--genotype", "{tmp}/bad.json"], "cannot read it as JSON"),
    (["--genotype", "{tmp}/keys.json"], "expected the keys"),
    (["--genotype", "{tmp}/ops.json"], "sep_conv_9x9"),
    (["--genotype", "DARTS", "--input", "3x32"], "--input '3x32' is not CxHxW"),
    (["--genotype", "DARTS", "--cells", "0"], "cells must be a positive int"),
    (["--genotype", "DARTS", "--input", "3x16x16", "--auxiliary"], "auxiliary head needs a 8x8"),
])
def test_bad_input_is_one_clear_error(tmp_path, capsys, argv, message):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "keys.json").write_text(json.dumps({"normal": []}))
    from search.spaces.genotypes import DARTS

    bad = DARTS._asdict()
    bad["normal"] = [["sep_conv_9x9", 0]] + [list(p) for p in DARTS.normal[1:]]
    (tmp_path / "ops.json").write_text(json.dumps(bad))
    argv = ["build", *[a.format(tmp=tmp_path) for a in argv], "-o", str(tmp_path / "n.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("archir: error: ") and message in err, err
    assert "how to fix: " in err and "Traceback" not in err
    assert not (tmp_path / "n.json").exists()


@pytest.fixture(scope="module")
def darts_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("darts") / "run"
    assert main(["search", "--space", "darts", "--start-genotype", "DARTS_V2", "--space-opt", "cells=1",
                 "--space-opt", "channels=4", "--budget", "2c", "--epochs", "1", "--batch-size", "128",
                 "--quiet", "--out", str(out)]) == 0
    return out


def test_search_starts_from_a_published_genotype(darts_run, tmp_path, capsys):
    with Store.open(darts_run) as st:
        first = st.candidates()[0]
    assert first.op == "start" and first.decisions["normal"][0] == ["sep_conv_3x3", 0]
    assert main(["search", "--space", "chain", "--start-genotype", "DARTS_V2", "--out", str(tmp_path / "x"),
                 "--quiet"]) == 2
    assert "--start-genotype applies to --space darts" in capsys.readouterr().err


def test_build_transfers_a_searched_cell_to_the_evaluation_network(darts_run, tmp_path, capsys):
    # candidate 0 of the run is its start genotype, DARTS_V2: stacked 20 x 36 it is the paper's network
    out = tmp_path / "net.json"
    assert main(["build", "--run", str(darts_run), "--id", "0", "--cells", "20", "--channels", "36",
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"candidate 0 of {darts_run}" in text and "3,349,342 params" in text and "528,359,040 MACs" in text
    genotype = json.loads(text.split("genotype ", 1)[1].splitlines()[0])
    from search.spaces.darts import DartsSpace
    from search.spaces.genotypes import DARTS_V2, Genotype

    space = DartsSpace.for_genotype(DARTS_V2)  # the same cell (pairs of a node in canonical order)
    assert space.from_genotype(Genotype(**genotype)) == space.from_genotype(DARTS_V2)
    # the printed genotype, kept as a file, builds the same network
    (tmp_path / "g.json").write_text(json.dumps(genotype))
    assert main(["build", "--genotype", str(tmp_path / "g.json"), "-o", str(tmp_path / "same.json")]) == 0
    assert archir.load(tmp_path / "same.json").structural_hash() == archir.load(out).structural_hash()
    # --best: the best finished candidate's cell, with the training ops
    assert main(["build", "--run", str(darts_run), "--best", "--cells", "8", "--channels", "16", "--auxiliary",
                 "--drop-path", "0.2", "-o", str(tmp_path / "best.json")]) == 0
    g = archir.load(tmp_path / "best.json")
    assert g.nodes("auxiliary") and g.nodes("drop_path")


@pytest.mark.parametrize("argv, message", [
    (["--run", "{run}"], "say which candidate's cell to build"),
    (["--run", "{run}", "--id", "99"], "99"),
    (["--run", "{tmp}", "--best"], "no search"),
    (["--genotype", "DARTS", "--best"], "--best/--id pick a candidate of --run RUN"),
])
def test_build_from_a_run_refuses_clearly(darts_run, tmp_path, capsys, argv, message):
    argv = ["build", *[a.format(run=darts_run, tmp=tmp_path) for a in argv], "-o", str(tmp_path / "n.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("archir: error: ") and message in err, err
    assert "Traceback" not in err and not (tmp_path / "n.json").exists()


def test_build_from_a_run_of_another_space_says_so(tmp_path, capsys):
    from search.experiment import ExperimentConfig

    Store.create(tmp_path / "chain", ExperimentConfig(space="chain").to_dict()).close()
    assert main(["build", "--run", str(tmp_path / "chain"), "--best", "-o", str(tmp_path / "n.json")]) == 2
    err = capsys.readouterr().err
    assert "from the 'chain' space, not cells of the darts space" in err and "archir export RUN --best" in err
