"""search.pareto: the non-dominated set (by hand and against a brute-force definition), the plot, export."""

from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given
from hypothesis import strategies as st

import archir
from archir.lower import verify_onnx
from search.pareto import ExportMismatch, Point, dominates, export_onnx, frontier, plot


def test_frontier_by_hand():
    pts = [Point(0, 0.10, 5.0), Point(1, 0.20, 1.0), Point(2, 0.30, 6.0),  # 2: dominated by 0 and 1
           Point(3, 0.05, 9.0), Point(4, 0.20, 2.0),                        # 4: dominated by 1 (same error, dearer)
           Point(5, 0.10, 5.0),                                             # 5: the same point as 0: 0 represents
           Point(6, 0.01, 0.5, eligible=False)]                             # 6: would dominate all, but is over budget
    f = frontier(pts)
    assert [p.id for p in f] == [1, 0, 3]  # by increasing cost, decreasing error
    assert dominates(pts[1], pts[4]) and not dominates(pts[4], pts[1])
    assert not dominates(pts[0], pts[5]) and not dominates(pts[5], pts[0])
    assert frontier([]) == []
    assert [p.id for p in frontier([Point(0, float("nan"), 1.0), Point(1, 0.5, 2.0)])] == [1]


@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6), st.booleans()), max_size=25))
def test_frontier_is_the_non_dominated_set(raw):
    pts = [Point(i, e / 6, float(c), ok) for i, (e, c, ok) in enumerate(raw)]
    eligible = [p for p in pts if p.eligible]
    f = frontier(pts)
    ids = {p.id for p in f}
    # nothing on the frontier is dominated; everything off it (eligible) is dominated or duplicates a member
    for p in f:
        assert not any(dominates(q, p) for q in eligible)
    for p in eligible:
        if p.id not in ids:
            assert any(dominates(q, p) for q in eligible) or any(
                (q.error, q.cost) == (p.error, p.cost) and q.id < p.id for q in f)
    # pairwise non-dominated, distinct points, sorted by cost
    assert len({(p.error, p.cost) for p in f}) == len(f)
    for a, b in itertools.combinations(f, 2):
        assert not dominates(a, b) and not dominates(b, a)
    assert [p.cost for p in f] == sorted(p.cost for p in f)


def test_plot_writes_a_png(tmp_path):
    pts = [Point(i, 0.5 / (i + 1), 10.0 * (i + 1), eligible=i != 2) for i in range(6)]
    out = plot(pts, tmp_path / "pareto.png", cost_label="MACs")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left no temporary file


def _tiny_graph() -> archir.Graph:
    g = archir.Graph("tiny")
    x = g.input("x", shape=(1, 8, 8))
    h = g.add("relu", g.add("conv2d", x, out_channels=4, kernel_size=3, padding=1))
    y = g.add("linear", g.add("flatten", g.add("global_avgpool", h)), out_features=10)
    g.set_outputs(y)
    g.init_params(seed=0)
    return g


def test_export_onnx_verifies_under_ort(tmp_path):
    g = _tiny_graph()
    rep = export_onnx(g, tmp_path / "m.onnx")
    assert rep.path.is_file() and rep.bytes == rep.path.stat().st_size and rep.max_abs_err < 1e-5
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    check = verify_onnx(g, rep.path, inputs=x)  # the written file, on another batch size
    assert check.ok and check.outputs[0].shape == (3, 10)


def test_export_onnx_refuses_a_mismatch_and_writes_nothing(tmp_path, monkeypatch):
    real_run = ort.InferenceSession.run

    def wrong_run(self, names, feeds, *a, **kw):  # ORT "computes" something else
        return [o + 1e-3 for o in real_run(self, names, feeds, *a, **kw)]

    monkeypatch.setattr(ort.InferenceSession, "run", wrong_run)
    with pytest.raises(ExportMismatch, match="differs from torch.fx") as e:
        export_onnx(_tiny_graph(), tmp_path / "m.onnx")
    assert e.value.exit_code == 1 and e.value.node is not None
    assert not (tmp_path / "m.onnx").exists()


def test_plot_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    import sys

    from search.pareto import PlotUnavailable

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    with pytest.raises(PlotUnavailable, match="needs matplotlib") as e:
        plot([Point(0, 0.1, 1.0)], tmp_path / "p.png")
    assert "pip install matplotlib" in e.value.hint
    assert not (tmp_path / "p.png").exists()
