"""The report of a 10,000-candidate run: HTML size and render time in headless Chromium (issue 18).

A synthetic run is written through the store's API (``search.store.Store``: ``create``, ``add``,
``finish``, ``set_curve``, ``set_info``) in a temporary folder: ``--candidates`` candidates of the
``chain`` space (2 layers) as an evolution search records them -- sampled ones, then mutated
children of earlier ones (lineage), about 3 % failed with a reason, every done one with its metrics,
its counted costs (``params``/``macs``/``flops`` of its real graph), a measured-looking
``latency_ms``, timings and a ``--epochs``-epoch training curve -- and ``--graphs`` of them with a
real graph file (``graphs/<id>.json``: the candidate's network built by the space and saved with
``archir.save`` with its untrained weights), so the report draws and counts them. The figures are made up (seeded);
their shape is a real run's.

Then it prints

- the time ``search.report.write_report`` takes (the blob, drawings of ``--max-details`` candidates,
  the page) and the HTML size, against the goal of issue 18: under 20 MB;
- the render time in headless Chromium (``search.report_browser``): milliseconds from navigation start
  to the page's ready signal (``document.body.dataset.ready``, set once the scatter and progress plots
  have drawn), the median of ``--repeats`` fresh loads, against the goal: under 3 s; and the time a
  click on a candidate takes to show its detail pane (drawing and curve).

Run it::

    python benchmarks/report_scale.py                       # 10,000 candidates (about a minute on 2 cores)
    python benchmarks/report_scale.py --candidates 300 --graphs 20 --repeats 1   # smoke run: seconds

Without Chromium (``chromium`` and ``chromedriver`` on PATH) the render time is skipped and says so.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the checkout

GOAL_MB, GOAL_RENDER_S = 20.0, 3.0


def _mutate(space, decisions: dict, rng) -> tuple[dict, str]:
    """The space's own mutation, named as the evolution strategy names it (``mutate:<first changed key>``)."""
    d = space.mutate(decisions, rng)
    i = next((k for k, (x, y) in enumerate(zip(decisions["layers"], d["layers"])) if x != y), 0)
    changed = sorted(set(d["layers"][i]) ^ set(decisions["layers"][i]) |
                     {k for k in d["layers"][i] if decisions["layers"][i].get(k) != d["layers"][i][k]})
    return d, f"mutate:layers[{i}].{changed[0] if changed else 'skip'}"


def make_run(run_dir: Path, n: int, n_graphs: int, epochs: int, seed: int = 0) -> dict:
    """Write the synthetic run; returns how many candidates of each kind it holds."""
    import numpy as np

    import archir
    import costmodels
    from search.experiment import ExperimentConfig
    from search.morph import get_space
    from search.store import Candidate, Store

    rng = np.random.default_rng(seed)
    opts = {"layers": 2}
    space = get_space("chain", **opts)
    cfg = ExperimentConfig(space="chain", space_options=opts, strategy="evolution", budget=f"{n}c",
                           strategy_options={"population": 50, "sample": 10}, objective="latency:ort-cpu",
                           seed=seed).to_dict()
    counted: dict[str, tuple[dict, str]] = {}  # the costs and graph text of each architecture, built once
    with_graph = set(rng.choice(n, size=min(n_graphs, n), replace=False).tolist())
    t0 = time.time() - 3600.0
    kinds = {"done": 0, "failed": 0, "graphs": 0, "curves": 0}
    decs: list[dict] = []
    with Store.create(run_dir, cfg) as st:
        st.set_info("space_options", opts)
        batch = []
        for cid in range(n):
            if cid < 50 or not decs:
                d, op, parents = space.sample(rng), "sample", []
            else:
                p = int(rng.integers(max(0, cid - 200), cid))
                d, op = _mutate(space, decs[p], rng)
                parents = [p]
            decs.append(d)
            batch.append(Candidate(id=cid, round=cid, op=op, decisions=space.encode(d), seed=int(rng.integers(2**31)),
                                   parents=parents, created_at=t0 + 0.3 * cid))
        st.add(batch)
        gdir = run_dir / "graphs"
        for c in batch:
            key = json.dumps(c.decisions, sort_keys=True)
            if key not in counted:
                g = space.build(space.decode(c.decisions), seed=0)
                k = costmodels.count(g)
                counted[key] = ({"params": float(k.params), "macs": float(k.macs), "flops": float(k.flops)},
                                g.structural_hash())
            costs, ghash = counted[key]
            c.timings = {"build_s": 0.02, "train_s": float(rng.uniform(20, 60)), "cost_s": 0.4, "epochs": epochs}
            c.timings["total_s"] = sum(v for k, v in c.timings.items() if k != "epochs")
            c.finished_at = c.created_at + c.timings["total_s"]
            if rng.random() < 0.03 and c.id not in with_graph:
                c.status, c.error = "failed", "train: validation loss became nan after epoch 2"
                kinds["failed"] += 1
                st.finish(c)
                continue
            err = float(np.clip(0.9 - 0.08 * math.log10(costs["macs"]) + rng.normal(0, 0.03), 0.02, 0.95))
            c.metrics = {"val_error": err, "val_acc": 1 - err, "test_error": err + 0.01, "test_acc": 0.99 - err,
                         "train_loss": 2.3 * err, "val_loss": 2.5 * err, "test_loss": 2.5 * err + 0.02}
            c.costs = {**costs, "latency_ms": costs["macs"] * 2e-6 + float(rng.uniform(0.05, 0.2)),
                       "latency_iqr_ms": float(rng.uniform(0.001, 0.01))}
            c.graph_hash, c.status, c.score = ghash, "done", err + 0.01 * math.log2(c.costs["latency_ms"])
            if c.id in with_graph:
                g = space.build(space.decode(c.decisions), seed=c.seed)
                archir.save(g, gdir / f"{c.id}.json")  # with its (untrained) weights, as a run keeps them
                c.graph_path = f"graphs/{c.id}.json"
                kinds["graphs"] += 1
            hist = [{"epoch": e + 1, "train_loss": 2.3 * (1 - (1 - err) * (e + 1) / epochs) + 0.01,
                     "val_error": min(0.95, err + 0.3 * (epochs - e - 1) / epochs), "val_loss": 2.5 * err + 0.1,
                     "lr": 0.05 * 0.5 * (1 + math.cos(math.pi * (e + 1) / epochs))} for e in range(epochs)]
            st.set_curve(c.id, hist)
            kinds["curves"] += 1
            st.finish(c)
            kinds["done"] += 1
        st.add_elapsed(0.3 * n)
    return kinds


def render_times(page: Path, repeats: int) -> tuple[list[float], float | None]:
    """Fresh loads of ``page`` (ms from navigation start to ready) and a click's time to show a detail pane."""
    from search.report_browser import console_errors, headless_chromium, load, wait_for

    times, click = [], None
    with headless_chromium() as drv:
        for _ in range(repeats):
            drv.get("about:blank")
            times.append(load(drv, page.resolve().as_uri(), timeout=120))
        errs = console_errors(drv)
        if errs:
            raise RuntimeError(f"the page logged console errors: {errs[:2]}")
        cid = drv.execute_script("const d = JSON.parse(document.getElementById('report-data').textContent);"
                                 "return Number(Object.keys(d.details)[0]);")
        t = time.perf_counter()
        drv.execute_script(f"window.archirSelect({cid});")
        wait_for(drv, "const e = document.getElementById('detail-id'); return e && "
                      f"e.dataset.id === '{cid}' && document.querySelector('#drawing svg') !== null", 60)
        click = (time.perf_counter() - t) * 1000
    return times, click


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidates", type=int, default=10_000)
    ap.add_argument("--graphs", type=int, default=300, help="candidates with a graph file (default 300)")
    ap.add_argument("--epochs", type=int, default=10, help="epochs of each training curve (default 10)")
    ap.add_argument("--max-details", type=int, default=None, help="archir report's --max-details (default 150)")
    ap.add_argument("--repeats", type=int, default=3, help="fresh page loads timed (default 3)")
    ap.add_argument("--workdir", default=None, help="where the run goes (default: /dev/shm if there, else tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the run folder and the page (prints where)")
    a = ap.parse_args(argv)

    from search.report import DEFAULT_MAX_DETAILS, page_data, write_report
    from search.report_browser import chromium_paths

    base = a.workdir or ("/dev/shm" if Path("/dev/shm").is_dir() else None)
    work = Path(tempfile.mkdtemp(prefix="report-scale-", dir=base))
    try:
        t = time.perf_counter()
        kinds = make_run(work / "run", a.candidates, a.graphs, a.epochs)
        t_store = time.perf_counter() - t
        print(f"store: {a.candidates} candidates ({kinds['done']} done, {kinds['failed']} failed; {kinds['graphs']} "
              f"with a graph file, {kinds['curves']} with a {a.epochs}-epoch curve) written through the store API "
              f"in {t_store:.1f} s")
        t = time.perf_counter()
        page, data = write_report(work / "run", work / "report.html",
                                  max_details=DEFAULT_MAX_DETAILS if a.max_details is None else a.max_details)
        t_write = time.perf_counter() - t
        mb = page.stat().st_size / 1e6
        blob_mb = len(json.dumps(page_data(data), separators=(",", ":"))) / 1e6
        print(f"archir report: {t_write:.1f} s ({len(data['details'])} drawings, "
              f"{'graphviz' if data['graphviz'] else 'fallback layout'})")
        print(f"html size: {mb:.2f} MB (the page's data {blob_mb:.2f} MB, plotly.js and the page's code the rest); "
              f"goal < {GOAL_MB:g} MB: {'PASS' if mb < GOAL_MB else 'FAIL'}")
        if chromium_paths() is None:
            print("render: skipped (no chromium and chromedriver on PATH; Debian: apt-get install chromium "
                  "chromium-driver)")
        else:
            times, click = render_times(page, max(1, a.repeats))
            med = statistics.median(times) / 1000
            print(f"render: {med:.2f} s median from navigation start to ready over {len(times)} load(s) "
                  f"({', '.join(f'{x / 1000:.2f}' for x in times)} s); goal < {GOAL_RENDER_S:g} s: "
                  f"{'PASS' if med < GOAL_RENDER_S else 'FAIL'}")
            print(f"select: {click / 1000:.2f} s from a click to the candidate's detail pane (drawing and curve)")
        if a.keep:
            print(f"kept: {work}")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
