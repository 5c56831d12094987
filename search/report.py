"""The run report: one JSON blob from a run's store, rendered into one self-contained HTML page.

::

    from search.report import report_data, render_html, write_report
    data = report_data("runs/demo")          # plain JSON: candidates, frontier flags, drawings, progress
    html = render_html(data)                  # plotly.js and the page's own script embedded: no network
    write_report("runs/demo", "report.html")  # atomically (a temporary file beside it, then renamed)

``archir report RUN -o report.html`` writes the page; ``archir dashboard RUN`` serves it on
127.0.0.1 and the page refreshes itself as the store grows (``archir/cli/report.py``).

**What is read.** Only the store's public reading API (:meth:`search.store.Store.open` without
the driver lock, ``candidates()``, ``curves()``, ``config``, ``info()``, ``counts()``, ``elapsed_s``), the
candidates' graph files (``graphs/<id>.json``, read with :func:`archir.load`) and, for one-shot
runs, the checkpoint's ``oneshot/state.json``. A reader never takes ``search.lock`` and SQLite's
WAL mode lets it read while the driver writes, so a finished, a killed or a still-running run
can be reported; candidates still ``queued``/``running`` are listed as such.

**What the blob holds** (``report_data``'s docstring lists the keys): every candidate with its
status, op, the move that made it (``mutation``, ``morphism``, ``derive``, ``sample``, ...),
parents and children, metrics, costs, failure reason, Pareto-frontier flags for every cost
(computed with :func:`search.pareto.frontier`, as the gallery does), the preservation check of a
grown candidate (``preserve_max_abs`` in its metrics), and -- because the page must work
offline -- the per-node cost table (:func:`costmodels.count`) and the SVG drawing of each done
candidate's graph, precomputed for at most ``max_details`` candidates (the frontier first; the
page says when the cap was hit). Drawings use Graphviz ``dot -Tsvg`` when ``dot`` is on PATH,
else a layered layout drawn here, and the page says which.

**What is not recorded, and said so.** The training curve of a candidate is the per-epoch history the
driver stores beside it (:meth:`search.store.Store.curves`: train loss, validation error and loss per
epoch); a candidate without one -- a table evaluator trains nothing, a run from before curves were
recorded kept only the final figures -- shows its final figures and says "no curve recorded". A one-shot run records
every step's figures (entropy included) in the store's ``info("oneshot")["history"]``, which the
page charts; a run from before that was recorded has only its checkpoint's *latest* step, and the
page shows that one value and says so. Nothing is interpolated or invented.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

from archir.errors import ArchirError
from search.store import DB_NAME, LOCK_NAME, Candidate, Store, StoreError

__all__ = ["report_data", "page_data", "render_html", "write_report", "data_stamp", "ReportError", "REPORT_FORMAT",
           "DEFAULT_MAX_DETAILS", "move_of", "draw_svg", "run_stamp"]

REPORT_FORMAT = "archir.report"
REPORT_VERSION = 1
#: at most this many candidates get a precomputed drawing and per-node cost table
DEFAULT_MAX_DETAILS = 150
#: the wall-clock limit of one ``dot`` call (a huge graph falls back to the layered drawing)
DOT_TIMEOUT_S = 20.0
_TRACEBACK_CHARS = 6000
_COST_LABELS = {"macs": "MACs", "params": "parameters", "flops": "FLOPs"}
#: the per-epoch figures of a training curve in the blob (``curve["train_loss"][i]`` is epoch ``curve["epoch"][i]``'s)
_CURVE_KEYS = ("epoch", "train_loss", "val_error", "val_loss")
#: significant digits of the page's non-integral numbers (the blob of report_data keeps them exact)
PAGE_DIGITS = 6
#: candidate fields of the blob that the page does not show, left out of it (:func:`page_data`)
PAGE_OMITS = ("decisions", "metrics", "strategy", "finished_s")


class ReportError(ArchirError, ValueError):
    """The report cannot be written as asked (an output folder that does not exist, ...)."""

    def __init__(self, message: str, hint: str | None = None, **where: Any) -> None:
        super().__init__(message, hint=hint, **where)


# --------------------------------------------------------------------------- small helpers


def move_of(op: str) -> str:
    """The kind of move that made a candidate, from its ``op``.

    Example:
        >>> [move_of(o) for o in ("mutate:layers[0].kernel", "morph:3", "petridish:1", "derive:darts", "sample")]
        ['mutation', 'morphism', 'morphism', 'derive', 'sample']
    """
    head = str(op).split(":", 1)[0]
    return {"mutate": "mutation", "morph": "morphism", "petridish": "morphism", "derive": "derive"}.get(head, head)


def _num(v: Any) -> float | None:
    """A JSON-safe float (NaN/inf become None: JSON has no NaN)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _clean(v: Any) -> Any:
    """``v`` with every non-finite float replaced by None, so ``json.dumps(allow_nan=False)`` works."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def _cost_label(key: str, backend: str | None) -> str:
    if key in _COST_LABELS:
        return _COST_LABELS[key]
    if key == "latency_ms":
        return f"latency ms ({backend or 'measured'}, batch 1)"
    return key.replace("_", " ")


def _cost_keys(cands: list[Candidate]) -> list[str]:
    """The costs the scatter can plot: counts first, then every measured latency (not its IQR)."""
    have = set()
    for c in cands:
        if c.status == "done":
            have |= {k for k, v in c.costs.items() if _num(v) is not None}
    keys = [k for k in ("macs", "params", "flops") if k in have]
    keys += sorted(k for k in have if k.startswith("latency") and not k.endswith("iqr_ms"))
    return keys


def _run_state(run_dir: Path, counts: Mapping[str, int]) -> tuple[str, str]:
    """``(state, text)``: ``running`` when the pid in ``search.lock`` is alive, else ``stopped`` (unfinished
    candidates left: killed or interrupted) or ``finished``. Reads the lock file; never takes the lock."""
    pid = None
    try:
        pid = int((run_dir / LOCK_NAME).read_text().strip() or "0") or None
    except (OSError, ValueError):
        pid = None
    alive = False
    if pid is not None and pid != os.getpid():
        try:
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
            alive = True
        except PermissionError:
            alive = True
        except OSError:
            alive = False
    unfinished = counts.get("queued", 0) + counts.get("running", 0)
    if alive:
        return "running", f"a search (pid {pid}) appears to be writing this run; {unfinished} candidate(s) unfinished"
    if unfinished:
        return "stopped", (f"stopped with {unfinished} unfinished candidate(s) (killed or interrupted); "
                           f"'archir search ... --out {run_dir} --resume' continues it")
    return "finished", "finished"


# --------------------------------------------------------------------------- drawings


def _dot_binary() -> str | None:
    """Graphviz's ``dot``, or None when it is not on PATH (tests replace this to force the fallback)."""
    return shutil.which("dot")


def _dq(s: str) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dot_text(g) -> str:
    """The DOT text of a graph: ``id / op / shape`` boxes, inputs as ovals, outputs double-bordered.

    (``archir draw`` has its own in ``archir.cli``; search may not import the command line.)
    """
    lines = [f"digraph {_dq(g.name)} {{", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fillcolor="#f5f5f5", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=8];']
    outs = set(g.outputs)
    order = g.topo_order()
    for nid in order:
        n = g.node(nid)
        extra = ', shape=oval, fillcolor="#dbeafe"' if n.op == "input" else (
            ', fillcolor="#fef3c7"' if n.params else "")
        if nid in outs:
            extra += ", peripheries=2"
        label = _dq(f"{nid}\n{n.op}\n{n.type}")
        lines.append(f"  {_dq(nid)} [id={_dq('node-' + nid)}, label={label}{extra}];")
    for nid in order:
        srcs = g.inputs_of(nid)
        for port, src in enumerate(srcs):
            lines.append(f"  {_dq(src)} -> {_dq(nid)}" + (f" [label={_dq(str(port))}]" if len(srcs) > 1 else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _fallback_svg(g) -> str:
    """A layered drawing (topological generations, one row each) for when graphviz is missing."""
    import networkx as nx

    esc = html.escape
    layers = [sorted(layer, key=str) for layer in nx.topological_generations(g.nx)]
    bw, bh, gx, gy = 170, 40, 20, 36
    width = max(len(layer) for layer in layers) * (bw + gx) + gx if layers else 200
    pos: dict[str, tuple[float, float]] = {}
    for r, layer in enumerate(layers):
        row_w = len(layer) * (bw + gx) - gx
        x0 = (width - row_w) / 2
        for i, nid in enumerate(layer):
            pos[nid] = (x0 + i * (bw + gx), gy / 2 + r * (bh + gy))
    height = len(layers) * (bh + gy) + 4
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
             f'viewBox="0 0 {width:.0f} {height:.0f}" class="fallback-drawing">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
             'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#6b7280"/></marker></defs>']
    for nid in g.topo_order():
        x2, y2 = pos[nid]
        for src in g.inputs_of(nid):
            x1, y1 = pos[src]
            parts.append(f'<line x1="{x1 + bw / 2:.1f}" y1="{y1 + bh:.1f}" x2="{x2 + bw / 2:.1f}" y2="{y2:.1f}" '
                         'stroke="#6b7280" stroke-width="1" marker-end="url(#arrow)"/>')
    outs = set(g.outputs)
    for nid in g.topo_order():
        n = g.node(nid)
        x, y = pos[nid]
        fill = "#dbeafe" if n.op == "input" else ("#fef3c7" if n.params else "#f5f5f5")
        stroke = 2 if nid in outs else 1
        label = nid if len(nid) <= 26 else nid[:12] + "…" + nid[-12:]
        parts.append(f'<g class="node" id="{esc("node-" + nid)}"><title>{esc(nid)}: {esc(n.op)} {esc(str(n.type))}'
                     f'</title><rect x="{x:.1f}" y="{y:.1f}" width="{bw}" height="{bh}" rx="6" fill="{fill}" '
                     f'stroke="#374151" stroke-width="{stroke}"/>'
                     f'<text x="{x + bw / 2:.1f}" y="{y + 16:.1f}" font-family="Helvetica" font-size="10" '
                     f'text-anchor="middle">{esc(label)}</text>'
                     f'<text x="{x + bw / 2:.1f}" y="{y + 31:.1f}" font-family="Helvetica" font-size="9" '
                     f'text-anchor="middle" fill="#4b5563">{esc(n.op)} {esc(str(n.type))}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def draw_svg(g, *, timeout: float = DOT_TIMEOUT_S) -> tuple[str, str, str | None]:
    """The SVG drawing of a graph: ``(svg, engine, note)``.

    ``engine`` is ``"graphviz"`` (``dot -Tsvg``) or ``"fallback"`` (a layered layout drawn here,
    used when ``dot`` is not on PATH, fails or takes longer than ``timeout`` seconds); ``note``
    says why the fallback was used (None with graphviz).
    """
    dot = _dot_binary()
    note = "graphviz's 'dot' was not found on PATH: a simple layered drawing (install graphviz for a better one)"
    if dot is not None:
        try:
            res = subprocess.run([dot, "-Tsvg"], input=_dot_text(g).encode(), capture_output=True, timeout=timeout)
            if res.returncode == 0:
                svg = res.stdout.decode("utf-8", errors="replace")
                start = svg.find("<svg")  # drop the XML prolog and DOCTYPE: the SVG goes inline into the page
                svg = re.sub(r">\s+<", "><", re.sub(r"<!--.*?-->", "", svg[start:] if start >= 0 else svg, flags=re.S))
                svg = svg.replace(' font-family="Helvetica,sans-Serif"', "")  # the page's CSS sets it: a third smaller
                return svg, "graphviz", None
            err = (res.stderr.decode(errors="replace").strip().splitlines() or [f"exit code {res.returncode}"])[0]
            note = f"graphviz's dot failed ({err}): a simple layered drawing instead"
        except subprocess.TimeoutExpired:
            note = f"graphviz's dot took over {timeout:g} s: a simple layered drawing instead"
        except OSError as e:
            note = f"graphviz's dot could not run ({e}): a simple layered drawing instead"
    return _fallback_svg(g), "fallback", note


def _detail(run_dir: Path, c: Candidate) -> dict:
    """The per-candidate part that needs its graph: per-node costs, the drawing, the recorded moves."""
    import archir
    import costmodels

    try:
        g = archir.load(run_dir / c.graph_path)
    except (ArchirError, OSError, ValueError) as e:  # a killed run may lack a file; say so, do not fail the page
        return {"error": f"cannot read {c.graph_path}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"}
    counts = costmodels.count(g).to_dict()
    shapes = {n: str(g.node(n).type) for n in g.topo_order()}
    nodes = [{"id": r["id"], "op": r["op"], "shape": shapes.get(r["id"], ""), "params": r.get("params"),
              "macs": r.get("macs"), "flops": r.get("flops"), "activation_bytes": r.get("activation_bytes")}
             for r in counts.get("nodes", [])]
    svg, engine, note = draw_svg(g)
    grown = (g.meta or {}).get("grown") if isinstance(g.meta, dict) else None
    return {"nodes": nodes, "totals": counts.get("totals", {}), "peak_node": counts.get("peak_node"),
            "svg": svg, "drawing": engine, "drawing_note": note, "n_nodes": len(nodes),
            "moves": list((grown or {}).get("moves") or [])}


# --------------------------------------------------------------------------- the blob


def _preservation(c: Candidate, move: str) -> dict:
    m = c.metrics.get("preserve_max_abs")
    if m is not None and _num(m) is not None:
        return {"checked": True, "passed": True, "max_abs": float(m),
                "text": f"passed: passes.check_preserved(parent, child) in eval mode before training, "
                        f"max |parent - child| = {float(m):.3g}"}
    if move == "morphism":
        if c.status == "failed":
            return {"checked": True, "passed": False, "max_abs": None,
                    "text": "not passed or not reached: the candidate failed (see its reason)"}
        return {"checked": False, "passed": None, "max_abs": None,
                "text": "not recorded for this candidate (no preserve_max_abs in its metrics)"}
    return {"checked": False, "passed": None, "max_abs": None,
            "text": f"not applicable: a {move} candidate is not grown from a parent by function-preserving rewrites"}


def _curve(c: Candidate, history: Any = None) -> dict:
    """The candidate's training curve: the per-epoch history the store keeps (:meth:`Store.curves`), or, for a
    candidate with none (a table evaluator's, a run from before curves were recorded), its final figures."""
    hist = history if history is not None else c.metrics.get("history")
    rows = [h for h in hist if isinstance(h, dict)] if isinstance(hist, list) else []
    if rows:  # one list per figure (a 10,000-candidate page would repeat every key of every epoch otherwise)
        cols = {k: [h.get(k) if k == "epoch" else _num(h.get(k)) for h in rows] for k in _CURVE_KEYS}
        return {"recorded": "per_epoch", "epochs": len(rows), **cols, "note": None}
    final = {k: _num(c.metrics[k]) for k in ("train_loss", "val_loss", "val_error", "test_error")
             if k in c.metrics}
    return {"recorded": "final" if final else "none", "final": final, "epochs_trained": c.timings.get("epochs"),
            "note": "no curve recorded: this candidate has no per-epoch history in the store (a lookup evaluator "
                    "trains nothing; runs from before curves were recorded kept only the final figures)"}


def _oneshot(run_dir: Path, info: Any) -> dict | None:
    if not info:
        return None
    out = {"driver": (info or {}).get("driver"), "steps_done": None, "entropy": [], "per_epoch_recorded": False,
           "note": None}
    path = run_dir / "oneshot" / "state.json"
    try:
        state = json.loads(path.read_text()).get("state", {})
    except (OSError, ValueError):
        out["note"] = "no readable one-shot checkpoint (oneshot/state.json): the entropy is unavailable"
        return out
    out["steps_done"] = state.get("steps_done")
    hist = (info or {}).get("history")
    if isinstance(hist, list) and any(_num((h or {}).get("entropy")) is not None for h in hist if isinstance(h, dict)):
        # search.oneshot records every step's figures in the store's info
        out["entropy"] = [{"step": h.get("step"), "entropy": float(h["entropy"])} for h in hist
                          if isinstance(h, dict) and _num(h.get("entropy")) is not None]
        out["per_epoch_recorded"] = True
        out["figures"] = _clean({k: _num(v) for k, v in (state.get("figures") or {}).items()})
        return out
    fig = state.get("figures") or {}
    if _num(fig.get("entropy")) is not None:
        out["entropy"] = [{"step": state.get("steps_done"), "entropy": float(fig["entropy"])}]
    out["figures"] = _clean({k: _num(v) for k, v in fig.items()})
    out["note"] = ("the one-shot checkpoint keeps only the latest step's figures (it is replaced after every step), "
                   "so the entropy per epoch is not recorded; shown: the entropy after the last step")
    return out


def _progress(cands: list[Candidate], t0: float | None) -> dict:
    """Best validation error (done, within budget) after each finished candidate, in finishing order."""
    fin = sorted((c for c in cands if c.finished and c.finished_at), key=lambda c: (c.finished_at, c.id))
    best = math.inf
    by_n, by_s = [], []
    for k, c in enumerate(fin, 1):
        e = _num(c.metrics.get("val_error")) if c.status == "done" and c.within_budget else None
        if e is not None and e < best:
            best = e
        b = best if math.isfinite(best) else None
        by_n.append([k, b, c.id])
        by_s.append([round(float(c.finished_at) - float(t0 or c.finished_at), 3), b, c.id])
    return {"by_candidates": by_n, "by_seconds": by_s,
            "seconds_note": "wall-clock seconds since the first candidate was asked (a stopped-and-resumed run "
                            "includes the time it was stopped)"}


def _frontiers(cands: list[Candidate], keys: list[str]) -> dict[str, list[int]]:
    """Frontier ids per cost key: ``search.experiment.frontier_candidates`` (cache hits left out) of the
    candidates whose cost is a finite number."""
    from search.run import frontier_candidates

    return {k: [c.id for c in frontier_candidates([c for c in cands if _num(c.costs.get(k)) is not None], k)]
            for k in keys}


def report_data(run_dir: str | os.PathLike, *, max_details: int = DEFAULT_MAX_DETAILS,
                cache: dict | None = None) -> dict:
    """The report of a run as one JSON-able dict (what the page renders; also ``/data.json`` of the dashboard).

    Args:
        run_dir: the run folder (``search.db``, ``graphs/``); finished, killed or still running.
        max_details: at most this many done candidates get a precomputed drawing and per-node cost table
            (the frontier of the objective's cost first, then by validation error); the rest are listed
            without them and ``details_note`` says so.
        cache: a dict kept between calls (the dashboard's) so each graph is drawn and counted once.

    Returns:
        ``{"format", "version", "stamp", "generated_at", "run": {dir, config, objective, cost_key, state,
        state_text, counts, elapsed_s, strategy, space}, "costs": [{key, label}], "frontier": {cost key: [ids]},
        "candidates": [{id, round, status, op, move, strategy, parents, children, error, traceback,
        metrics, costs, val_error, test_error, score, within_budget, seed, timings, describe, finished_s,
        frontier: {cost key: bool}, preservation, curve, cache_of, has_detail}], "details": {id: {nodes, totals, svg,
        drawing, drawing_note, moves}}, "details_note", "graphviz", "progress", "oneshot"}``. Floats that are
        not finite are None. A candidate's ``curve`` is ``{"recorded": "per_epoch", "epochs": n, "epoch": [...],
        "train_loss": [...], "val_error": [...], "val_loss": [...]}`` (one list per figure) when the store holds
        its history, else ``{"recorded": "final" | "none", "final": {...}, "note": "no curve recorded: ..."}``.
        The page embeds :func:`page_data` of this blob (packed, rounded), not the blob itself.

    Raises:
        StoreError: ``run_dir`` is not a run folder (the message names it; the hint says what to give).
    """
    run_dir = Path(run_dir)
    with _reading(run_dir), Store.open(run_dir) as st:  # no lock: a reader must never stop the driver from writing
        config = st.config
        cands = st.candidates()
        counts = st.counts()
        curves = st.curves()
        elapsed = st.elapsed_s
        opts = st.info("space_options")
        oneshot_info = st.info("oneshot")
    from search.config import parse_objective

    try:
        obj = parse_objective(config.get("objective", "error"))
        cost_key, backend = obj.cost_key, obj.backend or config.get("latency_backend")
    except ArchirError:
        cost_key, backend = "macs", None
    space = None
    try:
        from search.morph import get_space

        space = get_space(config.get("space", "chain"), **opts) if opts else None
    except Exception:  # the report is still useful without the architecture descriptions
        space = None

    keys = _cost_keys(cands)
    fronts = _frontiers(cands, keys)
    children: dict[int, list[int]] = {}
    for c in cands:
        for p in c.parents:
            children.setdefault(int(p), []).append(c.id)
    t0 = min((c.created_at for c in cands if c.created_at), default=None)
    rows = []
    for c in cands:
        move = move_of(c.op)
        desc = ""
        if space is not None:
            try:
                desc = space.describe(c.decisions)
            except Exception:  # an old run's decisions that no longer fit the space
                desc = ""
        rows.append(_clean({
            "id": c.id, "round": c.round, "status": c.status, "op": c.op, "move": move,
            "strategy": config.get("strategy"), "parents": list(c.parents), "children": children.get(c.id, []),
            "error": c.error, "traceback": (c.traceback[-_TRACEBACK_CHARS:] if c.traceback else None),
            "metrics": {k: _num(v) for k, v in c.metrics.items() if not isinstance(v, (list, dict))},
            "costs": {k: _num(v) for k, v in c.costs.items()},
            "val_error": _num(c.metrics.get("val_error")), "test_error": _num(c.metrics.get("test_error")),
            "score": _num(c.score), "within_budget": bool(c.within_budget), "seed": c.seed,
            "timings": {k: _num(v) for k, v in c.timings.items()}, "describe": desc,
            "decisions": c.decisions, "graph_path": c.graph_path,
            "finished_s": (None if not (c.finished_at and t0) else round(c.finished_at - t0, 3)),
            "frontier": {k: c.id in set(ids) for k, ids in fronts.items()},
            "preservation": _preservation(c, move), "curve": _curve(c, curves.get(c.id)), "cache_of": c.cache_of}))

    # which done candidates get a drawing and a node table (the page must work offline, so precompute)
    done = [c for c in cands if c.status == "done" and c.graph_path]
    on = set(fronts.get(cost_key, []))
    ranked = sorted(done, key=lambda c: (c.id not in on, _num(c.metrics.get("val_error")) or math.inf, c.id))
    chosen = ranked[:max(0, int(max_details))]
    details: dict[str, dict] = {}
    for c in chosen:
        ck = (c.id, c.graph_path, c.finished_at, c.graph_hash)
        if cache is not None and ck in cache:
            details[str(c.id)] = cache[ck]
            continue
        d = _clean(_detail(run_dir, c))
        details[str(c.id)] = d
        if cache is not None:
            cache[ck] = d
    for r in rows:
        r["has_detail"] = str(r["id"]) in details
    note = None
    if len(done) > len(chosen):
        note = (f"drawings and per-node costs are included for {len(chosen)} of {len(done)} done candidates "
                f"(the frontier first, then the lowest validation error); "
                f"'archir report {run_dir} --max-details {len(done)}' includes them all")
    state, state_text = _run_state(run_dir, counts)
    data = {
        "format": REPORT_FORMAT, "version": REPORT_VERSION, "generated_at": time.time(),
        "run": {"dir": str(run_dir), "config": _clean(config), "objective": config.get("objective", "error"),
                "cost_key": cost_key if cost_key in keys else (keys[0] if keys else cost_key),
                "strategy": config.get("strategy"), "space": config.get("space"), "dataset": config.get("dataset"),
                "state": state, "state_text": state_text, "counts": counts, "elapsed_s": _num(elapsed)},
        "costs": [{"key": k, "label": _cost_label(k, backend)} for k in keys],
        "frontier": fronts, "candidates": rows, "details": details, "details_note": note,
        "graphviz": _dot_binary() is not None, "progress": _progress(cands, t0),
        "oneshot": _oneshot(run_dir, oneshot_info),
    }
    data["stamp"] = data_stamp(data)
    return data


@contextlib.contextmanager
def _reading(run_dir: Path):
    """Turn SQLite's error for a store damaged past its header (a page of garbage met while reading the
    candidates) into a :class:`StoreError` naming the file; :meth:`Store.open` already refuses one that is no
    database at all."""
    try:
        yield
    except sqlite3.DatabaseError as e:
        raise StoreError(f"the store is damaged ({e})", file=run_dir / DB_NAME,
                         hint=f"restore {DB_NAME} from a copy, or salvage it with 'sqlite3 {run_dir / DB_NAME} "
                              f".recover' into a new file") from None


def _stamp(rows: list[tuple], state: str | None, steps: Any) -> str:
    return hashlib.sha256(json.dumps([rows, [state, steps]], sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_stamp(data: Mapping) -> str:
    """A short digest of what a report shows (statuses, errors, run state, one-shot steps): the dashboard
    reloads the data when it changes. Equals :func:`run_stamp` of the run at the time ``data`` was read."""
    rows = [(c["id"], c["status"], c.get("val_error"), c.get("error")) for c in data.get("candidates", [])]
    return _stamp(rows, data.get("run", {}).get("state"), (data.get("oneshot") or {}).get("steps_done"))


def run_stamp(run_dir: str | os.PathLike) -> str:
    """:func:`data_stamp` of a run read now, without drawing or counting anything (what the dashboard polls)."""
    run_dir = Path(run_dir)
    with _reading(run_dir), Store.open(run_dir) as st:
        cands = st.candidates()
        counts = st.counts()
        oneshot = st.info("oneshot")
    rows = [(c.id, c.status, _num(c.metrics.get("val_error")), c.error) for c in cands]
    steps = (_oneshot(run_dir, oneshot) or {}).get("steps_done") if oneshot else None
    return _stamp(rows, _run_state(run_dir, counts)[0], steps)


# --------------------------------------------------------------------------- the page


def _round(v: Any, digits: int) -> Any:
    """``v`` with every non-integral float rounded to ``digits`` significant digits (integral ones, counts such
    as MACs, stay exact)."""
    if isinstance(v, float):
        return v if v.is_integer() or not math.isfinite(v) else float(f"{v:.{digits}g}")
    if isinstance(v, dict):
        return {k: _round(x, digits) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_round(x, digits) for x in v]
    return v


def page_data(data: Mapping, digits: int = PAGE_DIGITS) -> dict:
    """The blob as the page embeds it (and the dashboard's ``/data.json`` serves it): the candidates as
    columns (``{"columns": [key, ...], "rows": [[value, ...], ...]}``, which the page's script unpacks),
    without the fields the page does not show (:data:`PAGE_OMITS`: the raw decisions -- ``describe`` shows
    them --, the metrics dict -- its figures are ``val_error``, ``test_error`` and the curve --, ...) and
    non-integral numbers rounded to ``digits`` significant digits. It keeps a 10,000-candidate page under
    20 MB; the figures shown have at most 4 digits, and the frontier and sorting come from the exact values."""
    out = {k: v for k, v in data.items() if k != "candidates"}
    rows = list(data.get("candidates") or [])
    cols = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in PAGE_OMITS]
    out["candidates"] = {"columns": cols, "rows": [[r.get(k) for k in cols] for r in rows]}
    return _round(_clean(out), digits)


def _script_json(data: Any) -> str:
    """:func:`page_data` as JSON for inside a ``<script>`` element: no ``<``, ``>`` or ``&`` (so no ``</script>``,
    no ``<!--``)."""
    text = json.dumps(page_data(data), sort_keys=True, allow_nan=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def render_html(data: Mapping, *, live: bool = False, poll_s: float = 3.0) -> str:
    """The self-contained page of a :func:`report_data` blob (plotly.js embedded: opens without network).

    Args:
        data: the blob.
        live: the dashboard's page: it polls ``stamp.json`` every ``poll_s`` seconds and reloads
            ``data.json`` when the run has changed.

    Raises:
        ReportError: plotly is not installed (``pip install 'archir[report]'``).
    """
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise ReportError("the report page needs plotly, which is not installed",
                          hint="pip install 'archir[report]' (or pip install plotly)") from None
    title = f"archir report: {data.get('run', {}).get('dir', '')}"
    live_js = json.dumps({"live": bool(live), "poll_ms": int(max(0.5, float(poll_s)) * 1000)})
    return (_PAGE.replace("%%TITLE%%", html.escape(title))
            .replace("%%STYLE%%", _STYLE)
            .replace("%%PLOTLY%%", get_plotlyjs().replace("</script", "<\\/script"))
            .replace("%%LIVE%%", live_js)
            .replace("%%APP%%", _APP)
            .replace("%%DATA%%", _script_json(data)))


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike, *,
                 max_details: int = DEFAULT_MAX_DETAILS) -> tuple[Path, dict]:
    """Write the report page of ``run_dir`` to ``out`` atomically (an old ``out`` survives any failure).

    Returns:
        ``(path, data)``: the file written and the blob it shows.

    Raises:
        StoreError: ``run_dir`` is not a run folder. ReportError: ``out``'s folder does not exist or
        ``out`` is a folder; plotly is missing.
    """
    from archir.serialize import atomic_write

    out = Path(out)
    if out.is_dir():
        raise ReportError("is a folder, not a file", file=out, hint=f"give a file name, e.g. {out / 'report.html'}")
    if not out.parent.is_dir():
        raise ReportError(f"folder {out.parent} does not exist", file=out,
                          hint=f"create it first (mkdir -p {out.parent})")
    data = report_data(run_dir, max_details=max_details)
    page = render_html(data)
    atomic_write(out, page.encode("utf-8"))
    return out, data


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#111827;background:#f9fafb}
header{background:#1f2937;color:#f9fafb;padding:10px 18px}
header h1{font-size:18px;margin:0 0 4px 0}
header .sub{font-size:13px;color:#d1d5db}
main{padding:12px 18px}
.notes{font-size:13px;color:#92400e;background:#fffbeb;border:1px solid #fcd34d;border-radius:6px;padding:6px 10px;margin:6px 0}
.notes:empty{display:none}
.grid{display:grid;grid-template-columns:minmax(420px,1fr) minmax(420px,1fr);gap:14px}
.card{font-size:13px;background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:10px 12px;margin-bottom:14px;min-width:0}
.card h2{font-size:15px;margin:2px 0 8px 0}
.card h3{font-size:13px;margin:12px 0 4px 0}
table{border-collapse:collapse;font-size:12px;width:100%}
th,td{border-bottom:1px solid #e5e7eb;padding:3px 6px;text-align:left;white-space:nowrap}
td.reason{white-space:normal;max-width:360px;color:#991b1b}
th{background:#f3f4f6;position:sticky;top:0;cursor:pointer;user-select:none}
th.sorted-asc::after{content:" \\25B2"} th.sorted-desc::after{content:" \\25BC"}
tr.row:hover{background:#eff6ff;cursor:pointer} tr.row.selected{background:#dbeafe}
tr.failed td{color:#991b1b}
.tablewrap{max-height:420px;overflow:auto}
.controls{font-size:13px;margin-bottom:6px;display:flex;gap:12px;flex-wrap:wrap;align-items:center}
#detail{position:sticky;top:8px;align-self:start;max-height:calc(100vh - 16px);overflow:auto}
.drawing{overflow:auto;max-height:420px;border:1px solid #e5e7eb;border-radius:6px;background:#fff}
.drawing svg{max-width:none} .drawing svg text{font-family:Helvetica,Arial,sans-serif}
.kv{font-size:12px} .kv td:first-child{color:#6b7280}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
pre{background:#f3f4f6;padding:6px;border-radius:4px;overflow:auto;max-height:260px;white-space:pre-wrap}
a.cid{color:#1d4ed8;cursor:pointer;text-decoration:underline}
.muted{color:#6b7280;font-size:12px}
.plot{width:100%;height:380px} .plot.small{height:260px}
.badge{display:inline-block;font-size:11px;border-radius:9px;padding:0 7px;background:#e5e7eb;margin-left:4px}
.badge.done{background:#d1fae5} .badge.failed{background:#fee2e2} .badge.running,.badge.queued{background:#fef3c7}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>%%TITLE%%</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>%%STYLE%%</style>
<script>%%PLOTLY%%</script>
</head><body>
<header><h1 id="title">archir report</h1><div class="sub" id="subtitle"></div></header>
<main>
<div class="notes" id="notes"></div>
<div class="grid">
 <div>
  <div class="card"><h2>Validation error against cost</h2>
   <div class="controls"><label>cost axis <select id="cost-key"></select></label>
    <span class="muted" id="scatter-note"></span></div>
   <div id="scatter" class="plot"></div></div>
  <div class="card"><h2>Progress</h2><div id="progress-n" class="plot small"></div>
   <div id="progress-s" class="plot small"></div><div class="muted" id="progress-note"></div></div>
  <div class="card" id="oneshot-card"><h2>One-shot: architecture distribution</h2><div id="oneshot"></div></div>
 </div>
 <div class="card" id="detail"><h2>Selected candidate</h2><div id="detail-body" class="muted">
  click a point or a table row</div></div>
</div>
<div class="card"><h2>Candidates</h2>
 <div class="controls">
  <label>status <select id="f-status"><option value="">all</option></select></label>
  <label>move <select id="f-move"><option value="">all</option></select></label>
  <label><input type="checkbox" id="f-frontier"> frontier only</label>
  <label>text <input type="search" id="f-text" placeholder="op, reason, ..."></label>
  <span class="muted" id="table-count"></span></div>
 <div class="tablewrap"><table id="cands"><thead></thead><tbody></tbody></table></div>
 <button id="table-more" style="display:none">show more rows</button></div>
</main>
<script>window.ARCHIR_REPORT = %%LIVE%%;</script>
<script type="application/json" id="report-data">%%DATA%%</script>
<script>%%APP%%</script>
</body></html>
"""

# The page's own script: table, filters, sorting, selection, the detail pane and the live refresh.
# Every string from the store goes in as text (textContent) or through esc(); SVG drawings come
# from graphviz or _fallback_svg, which escape their labels.
_APP = r"""
(function () {
'use strict';
const TABLE_PAGE = 500;  // table rows drawn at first (and per "show more"): 10,000 rows of DOM take seconds
// the page's blob holds the candidates as columns ({"columns": [...], "rows": [[...], ...]}): unpack them
function unpack(d) {
  const t = d.candidates;
  if (t && !Array.isArray(t)) d.candidates = t.rows.map((r) => Object.fromEntries(t.columns.map((k, i) => [k, r[i]])));
  return d;
}
let D = unpack(JSON.parse(document.getElementById('report-data').textContent));
const S = {costKey: null, selected: null, sortKey: 'id', sortDir: 1, drawn: [], limit: TABLE_PAGE};
const $ = (id) => document.getElementById(id);
function esc(s) { return String(s == null ? '' : s).replace(/[&<>"']/g, (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c])); }
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v; else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  for (const k of kids) { if (k === null || k === undefined) continue; e.append(k instanceof Node ? k : document.createTextNode(String(k))); }
  return e;
}
function fmt(v, key) {
  if (v === null || v === undefined || v === '') return '';
  if (typeof v !== 'number') return String(v);
  if (key && key.startsWith('latency')) return v.toPrecision(3) + ' ms';
  if (key === 'val_error' || key === 'test_error' || key === 'score') return v.toFixed(4);
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toPrecision(3) + 'G';
  if (a >= 1e6) return (v / 1e6).toPrecision(3) + 'M';
  if (a >= 1e3) return (v / 1e3).toPrecision(3) + 'k';
  return Number.isInteger(v) ? String(v) : v.toPrecision(3);
}
let ID_MAP = null, ID_OF = null;  // the id -> candidate map of the current blob (rebuilt when the blob is replaced)
const byId = () => { if (ID_OF !== D) { ID_MAP = new Map(D.candidates.map((c) => [c.id, c])); ID_OF = D; } return ID_MAP; };
function costLabel(k) { const c = D.costs.find((x) => x.key === k); return c ? c.label : k; }

function renderHeader() {
  const r = D.run, n = r.counts;
  $('title').textContent = 'archir report: ' + r.dir;
  $('subtitle').textContent = `${r.space} space, ${r.strategy} strategy, objective ${r.objective}, dataset ${r.dataset}` +
    ` | ${n.done} done, ${n.failed} failed, ${n.running} running, ${n.queued} queued | ${r.state_text}` +
    (r.elapsed_s != null ? ` | search time ${Math.round(r.elapsed_s)} s` : '') +
    (window.ARCHIR_REPORT.live ? ' | live: refreshes as the store grows' : '');
  const notes = [];
  if (D.details_note) notes.push(D.details_note);
  if (!D.graphviz) notes.push("graphviz's 'dot' was not found when this report was made: drawings use a simple layered layout.");
  $('notes').textContent = notes.join(' ');
}

function renderCostSelect() {
  const sel = $('cost-key');
  if (!D.costs.length) {  // a lookup evaluator with an error-only objective counts nothing
    S.costKey = null; sel.replaceChildren(el('option', {value: ''}, 'none recorded: candidate id')); sel.disabled = true; return;
  }
  sel.disabled = false;
  if (!S.costKey || !D.costs.some((c) => c.key === S.costKey)) S.costKey = D.run.cost_key;
  sel.replaceChildren(...D.costs.map((c) => el('option', {value: c.key}, c.label)));
  sel.value = S.costKey;
}

function renderScatter() {
  const k = S.costKey, all = D.candidates.filter((c) => c.status === 'done');
  const xOf = (c) => (k === null ? c.id : c.costs[k]);  // no cost recorded: error against candidate id
  const pts = all.filter((c) => c.val_error !== null && xOf(c) !== null && xOf(c) !== undefined);
  const hover = (c) => `#${c.id} ${esc(c.op)}<br>val error ${fmt(c.val_error, 'val_error')}` + (k === null ? '' : `<br>${esc(costLabel(k))} ${fmt(c.costs[k], k)}`) +
    (c.describe ? '<br>' + esc(c.describe) : '');
  const on = new Set((D.frontier[k] || []));
  const groups = [
    ['candidates', pts.filter((c) => !on.has(c.id) && c.within_budget), {color: '#9ca3af', size: 8}],
    ['over budget', pts.filter((c) => !c.within_budget), {color: '#f87171', size: 9, symbol: 'x'}],
    ['Pareto frontier', pts.filter((c) => on.has(c.id)), {color: '#2563eb', size: 10}],
  ];
  const traces = groups.filter((g) => g[1].length).map(([name, cs, marker]) => ({
    type: 'scatter', mode: 'markers', name: `${name} (${cs.length})`, meta: 'points', x: cs.map(xOf),
    y: cs.map((c) => c.val_error), customdata: cs.map((c) => c.id), text: cs.map(hover), hoverinfo: 'text', marker}));
  const ids = byId(), front = (D.frontier[k] || []).map((i) => ids.get(i)).filter(Boolean);
  if (front.length > 1) traces.unshift({type: 'scatter', mode: 'lines', name: 'frontier', meta: 'frontier-line', showlegend: false,
    x: front.map((c) => c.costs[k]), y: front.map((c) => c.val_error), line: {shape: 'hv', color: '#93c5fd', width: 1.5}, hoverinfo: 'skip'});
  const sel = pts.find((c) => c.id === S.selected);
  if (sel) traces.push({type: 'scatter', mode: 'markers', name: 'selected', meta: 'selected', showlegend: false, hoverinfo: 'skip',
    x: [xOf(sel)], y: [sel.val_error], marker: {size: 18, color: 'rgba(0,0,0,0)', line: {color: '#111827', width: 2}}});
  const xs = k === null ? [] : pts.map((c) => c.costs[k]).filter((v) => v > 0);
  let lo = Infinity, hi = -Infinity; for (const v of xs) { if (v < lo) lo = v; if (v > hi) hi = v; }
  const log = xs.length && hi / lo > 10;
  const drawn = Plotly.react('scatter', traces, {margin: {l: 55, r: 10, t: 10, b: 45}, hovermode: 'closest', legend: {orientation: 'h', y: -0.2},
    xaxis: {title: {text: k === null ? 'candidate id (no cost recorded)' : costLabel(k)}, type: log ? 'log' : 'linear'}, yaxis: {title: {text: 'validation error'}}},
    {displaylogo: false, responsive: true});
  const missing = all.length - pts.length;
  if (S.drawn) S.drawn.push(drawn);
  $('scatter-note').textContent = `${pts.length} done candidates` + (missing ? `; ${missing} lack this cost` : '') +
    (k === null ? '; no cost was recorded (a lookup evaluator with an error-only objective counts nothing)' : '') +
    (D.candidates.length > all.length ? `; ${D.candidates.length - all.length} not done (see the table)` : '');
}

const COLS = [['id', 'id'], ['status', 'status'], ['op', 'op'], ['move', 'move'], ['parents', 'parents'],
  ['val_error', 'val err'], ['test_error', 'test err'], ['params', 'params'], ['macs', 'MACs'], ['lat', 'latency'],
  ['score', 'score'], ['frontier', 'frontier'], ['error', 'reason (failed)']];
function cellValue(c, key) {
  if (key === 'params' || key === 'macs') return c.costs[key];
  if (key === 'lat') { const k = D.costs.find((x) => x.key.startsWith('latency')); return k ? c.costs[k.key] : null; }
  if (key === 'frontier') return c.frontier[S.costKey] ? 1 : 0;
  if (key === 'parents') return c.parents.join(', ');
  return c[key];
}
function renderFilters() {
  for (const [id, key] of [['f-status', 'status'], ['f-move', 'move']]) {
    const sel = $(id), cur = sel.value;
    const vals = [...new Set(D.candidates.map((c) => c[key]))].sort();
    sel.replaceChildren(el('option', {value: ''}, 'all'), ...vals.map((v) => el('option', {value: v}, v)));
    sel.value = vals.includes(cur) ? cur : '';
  }
}
function renderTable() {
  const hasLat = D.costs.some((x) => x.key.startsWith('latency'));
  const cols = COLS.filter(([k]) => k !== 'lat' || hasLat);
  $('cands').tHead.replaceChildren(el('tr', {}, ...cols.map(([k, label]) => el('th', {'data-key': k,
    class: S.sortKey === k ? (S.sortDir > 0 ? 'sorted-asc' : 'sorted-desc') : null,
    onclick: () => { S.sortDir = S.sortKey === k ? -S.sortDir : 1; S.sortKey = k; renderTable(); }}, label))));
  const fs = $('f-status').value, fm = $('f-move').value, ff = $('f-frontier').checked, ft = $('f-text').value.toLowerCase();
  let rows = D.candidates.filter((c) => (!fs || c.status === fs) && (!fm || c.move === fm) && (!ff || c.frontier[S.costKey]) &&
    (!ft || JSON.stringify([c.op, c.error, c.describe, c.status, c.move]).toLowerCase().includes(ft)));
  const key = S.sortKey, dir = S.sortDir;
  rows.sort((a, b) => {
    const x = cellValue(a, key), y = cellValue(b, key);
    if (x === y) return a.id - b.id;
    if (x === null || x === undefined || x === '') return 1;
    if (y === null || y === undefined || y === '') return -1;
    return (typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y))) * dir;
  });
  const body = $('cands').tBodies[0], total = rows.length;
  const sel = rows.findIndex((c) => c.id === S.selected);
  rows = rows.slice(0, S.limit).concat(sel >= S.limit ? [rows[sel]] : []);  // the selected row stays listed
  body.replaceChildren(...rows.map((c) => el('tr', {class: 'row' + (c.status === 'failed' ? ' failed' : '') + (c.id === S.selected ? ' selected' : ''),
    'data-id': c.id, onclick: () => select(c.id)}, ...cols.map(([k]) => {
      const v = cellValue(c, k);
      if (k === 'frontier') return el('td', {}, v ? '\u2605' : '');
      if (k === 'error') return el('td', {class: 'reason'}, c.error || '');
      return el('td', {}, k === 'status' || k === 'op' || k === 'move' || k === 'parents' ? (v || '') : fmt(v, k === 'lat' ? 'latency' : k));
    }))));
  $('table-count').textContent = total > rows.length ? `${rows.length} of ${total} matching rows drawn (of ${D.candidates.length})`
    : `${rows.length} of ${D.candidates.length} shown`;
  $('table-more').style.display = total > rows.length ? '' : 'none';
}

function kvTable(pairs) {
  return el('table', {class: 'kv'}, ...pairs.filter(([, v]) => v !== null && v !== undefined && v !== '').map(([k, v]) => el('tr', {}, el('td', {}, k), el('td', {}, v))));
}
function cidLink(i) { return el('a', {class: 'cid', onclick: () => select(i)}, '#' + i); }

function renderDetail() {
  const box = $('detail-body');
  const c = byId().get(S.selected);
  if (!c) { box.className = 'muted'; box.replaceChildren('click a point or a table row'); return; }
  box.className = '';
  const d = D.details[String(c.id)];
  const parts = [el('div', {id: 'detail-id', 'data-id': c.id}, el('b', {}, `Candidate #${c.id}`), el('span', {class: 'badge ' + c.status}, c.status),
      ' ', el('code', {}, c.op), c.frontier[S.costKey] ? el('span', {class: 'badge'}, 'on the frontier') : null,
      c.cache_of != null ? el('span', {class: 'badge', id: 'cache-of'}, 'cache hit: the result of ', cidLink(c.cache_of)) : null)];
  if (c.describe) parts.push(el('div', {class: 'muted'}, c.describe));
  parts.push(kvTable([['validation error', fmt(c.val_error, 'val_error')], ['test error', fmt(c.test_error, 'test_error')],
    ...D.costs.map((x) => [x.label, fmt(c.costs[x.key], x.key)]), ['score', fmt(c.score, 'score')],
    ['within budget', c.within_budget ? 'yes' : 'no (over the hard budget)'], ['round / seed', `${c.round} / ${c.seed}`],
    ['train time', c.timings.train_s != null ? c.timings.train_s.toFixed(2) + ' s' : null]]));
  if (c.status === 'failed') {
    parts.push(el('h3', {}, 'Why it failed'), el('div', {class: 'reason', id: 'detail-reason'}, c.error || 'failed (no reason given)'));
    if (c.traceback) parts.push(el('pre', {}, c.traceback));
  }
  // lineage
  const lin = el('div', {id: 'lineage'});
  if (c.parents.length) lin.append(el('div', {}, 'parents: ', ...c.parents.flatMap((p, i) => [i ? ', ' : '', cidLink(p)]),
    ` \u2192 this candidate by ${c.move} (${c.op})`));
  else lin.append(el('div', {}, `no parents: made by ${c.move} (${c.op})`));
  if (d && d.moves && d.moves.length) lin.append(el('div', {class: 'muted'}, 'rewrites applied: ' + d.moves.join('; ')));
  const kids = c.children.map((i) => byId().get(i)).filter(Boolean);
  lin.append(kids.length ? el('div', {}, 'children: ', ...kids.flatMap((k, i) => [i ? ', ' : '', cidLink(k.id), ` (${k.move}: ${k.op})`]))
    : el('div', {class: 'muted'}, 'no children'));
  parts.push(el('h3', {}, 'Lineage'), lin);
  parts.push(el('h3', {}, 'Preservation check'), el('div', {id: 'preservation'}, c.preservation.text));
  // training
  parts.push(el('h3', {}, 'Training'));
  if (c.curve.recorded === 'per_epoch') {
    const cv = c.curve, div = el('div', {class: 'plot small', id: 'curve', 'data-epochs': cv.epochs}); parts.push(div);
    const tr = [{type: 'scatter', mode: 'lines+markers', name: 'train loss', meta: 'train_loss', x: cv.epoch, y: cv.train_loss},
      {type: 'scatter', mode: 'lines+markers', name: 'val error', meta: 'val_error', yaxis: 'y2', x: cv.epoch, y: cv.val_error}];
    if (cv.val_loss.some((v) => v !== null))
      tr.push({type: 'scatter', mode: 'lines', name: 'val loss', meta: 'val_loss', line: {dash: 'dot'}, x: cv.epoch, y: cv.val_loss});
    setTimeout(() => Plotly.react(div, tr, {margin: {l: 50, r: 60, t: 10, b: 40}, legend: {orientation: 'h', x: 0, y: 1.12},
      xaxis: {title: {text: 'epoch'}, dtick: 1}, yaxis: {title: {text: 'loss'}},
      yaxis2: {title: {text: 'val error'}, overlaying: 'y', side: 'right'}}, {displaylogo: false}), 0);
  } else {
    parts.push(el('div', {class: 'muted', id: 'no-curve'}, c.curve.note ? c.curve.note + '.' : 'no curve recorded.'));
    if (c.curve.recorded === 'final')
      parts.push(kvTable(Object.entries(c.curve.final).map(([k, v]) => [k, fmt(v, k.endsWith('error') ? 'val_error' : null)]).concat([['epochs', c.curve.epochs_trained]])));
  }
  // drawing + per-node costs
  parts.push(el('h3', {}, 'Architecture'));
  if (d && d.error) parts.push(el('div', {class: 'reason'}, d.error));
  else if (d) {
    const draw = el('div', {class: 'drawing', id: 'drawing', 'data-engine': d.drawing}); draw.innerHTML = d.svg;
    parts.push(el('div', {class: 'muted'}, d.drawing === 'graphviz' ? `${d.n_nodes} nodes, drawn with graphviz dot` : `${d.n_nodes} nodes; ${d.drawing_note}`), draw);
    parts.push(el('h3', {}, 'Per-node costs (costmodels.count, batch 1)'));
    const t = el('table', {id: 'node-costs'}, el('tr', {}, ...['node', 'op', 'output', 'params', 'MACs', 'FLOPs', 'activation bytes'].map((h) => el('th', {}, h))),
      ...d.nodes.map((n) => el('tr', {}, el('td', {}, n.id), el('td', {}, n.op), el('td', {}, n.shape), el('td', {}, fmt(n.params)),
        el('td', {}, fmt(n.macs)), el('td', {}, fmt(n.flops)), el('td', {}, fmt(n.activation_bytes)))));
    parts.push(el('div', {class: 'tablewrap'}, t));
  } else if (c.status === 'done' && !c.graph_path) parts.push(el('div', {class: 'muted', id: 'no-graph'},
    'no graph recorded: the evaluator looked this candidate up without building or training it'));
  else if (c.status === 'done') parts.push(el('div', {class: 'muted'}, D.details_note || 'no drawing included for this candidate'));
  else parts.push(el('div', {class: 'muted'}, `no graph: the candidate is ${c.status}`));
  if (c.status === 'done' && c.graph_path) parts.push(el('h3', {}, 'Export'), el('div', {}, 'run: ', el('code', {id: 'export-cmd'},
    `archir export ${D.run.dir} --id ${c.id} --onnx candidate_${c.id}.onnx`), el('span', {class: 'muted'}, ' (verified under ONNX Runtime)')));
  box.replaceChildren(...parts);
}

function renderProgress() {
  const P = D.progress, lay = (x) => ({margin: {l: 50, r: 10, t: 20, b: 40}, xaxis: {title: {text: x}}, yaxis: {title: {text: 'best val error'}}});
  const tr = (rows) => [{type: 'scatter', mode: 'lines+markers', line: {shape: 'hv'}, x: rows.map((r) => r[0]), y: rows.map((r) => r[1]),
    customdata: rows.map((r) => r[2]), hovertemplate: 'after #%{customdata}: %{y:.4f}<extra></extra>'}];
  const pn = Plotly.react('progress-n', tr(P.by_candidates), lay('candidates finished'), {displaylogo: false, responsive: true});
  const ls = lay('seconds since the first candidate was asked'); ls.xaxis.rangemode = 'tozero';
  const ps = Plotly.react('progress-s', tr(P.by_seconds), ls, {displaylogo: false, responsive: true});
  if (S.drawn) S.drawn.push(pn, ps);
  $('progress-note').textContent = 'Best validation error among done candidates within the budget. Seconds: ' + P.seconds_note + '.';
}
function renderOneShot() {
  const o = D.oneshot, box = $('oneshot');
  if (!o) { $('oneshot-card').style.display = 'none'; return; }
  $('oneshot-card').style.display = '';
  const parts = [el('div', {}, `driver ${o.driver}, ${o.steps_done == null ? '?' : o.steps_done} search steps done`)];
  if (o.per_epoch_recorded && o.entropy.length > 1) {
    const div = el('div', {class: 'plot small', id: 'entropy'}); parts.push(div);
    setTimeout(() => Plotly.react(div, [{type: 'scatter', mode: 'lines+markers', x: o.entropy.map((e) => e.step), y: o.entropy.map((e) => e.entropy)}],
      {margin: {l: 50, r: 10, t: 10, b: 40}, xaxis: {title: {text: 'epoch'}}, yaxis: {title: {text: 'entropy (nats)'}}}, {displaylogo: false}), 0);
  } else if (o.entropy.length) parts.push(el('div', {id: 'entropy-last'}, `entropy after step ${o.entropy[0].step}: ${o.entropy[0].entropy.toFixed(4)} nats`));
  if (o.note) parts.push(el('div', {class: 'muted', id: 'entropy-note'}, o.note + '.'));
  box.replaceChildren(...parts);
}

function markSelected() {  // move the ring of the selected point (re-drawing 10,000 points per click is slow)
  const gd = $('scatter'), k = S.costKey, c = byId().get(S.selected);
  const x = c && c.status === 'done' && c.val_error !== null ? (k === null ? c.id : c.costs[k]) : null;
  const xy = x === null || x === undefined ? {x: [[]], y: [[]]} : {x: [[x]], y: [[c.val_error]]};
  const i = (gd.data || []).findIndex((t) => t.meta === 'selected');
  if (i >= 0) return Plotly.restyle(gd, xy, [i]);
  return Plotly.addTraces(gd, {type: 'scatter', mode: 'markers', name: 'selected', meta: 'selected', showlegend: false, hoverinfo: 'skip',
    x: xy.x[0], y: xy.y[0], marker: {size: 18, color: 'rgba(0,0,0,0)', line: {color: '#111827', width: 2}}});
}
function select(id) {
  S.selected = id; renderDetail(); markSelected();
  for (const tr of $('cands').tBodies[0].rows) tr.classList.toggle('selected', Number(tr.dataset.id) === id);
}
window.archirSelect = select;
function renderAll() {
  renderHeader(); renderCostSelect(); renderFilters(); renderScatter(); renderTable(); renderDetail(); renderProgress(); renderOneShot();
}
$('cost-key').addEventListener('change', (e) => { S.costKey = e.target.value; renderScatter(); renderTable(); renderDetail(); });
for (const id of ['f-status', 'f-move', 'f-frontier', 'f-text']) $(id).addEventListener('input', () => { S.limit = TABLE_PAGE; renderTable(); });
$('table-more').addEventListener('click', () => { S.limit += TABLE_PAGE; renderTable(); });
renderAll();
$('scatter').on('plotly_click', (ev) => { const p = ev.points && ev.points[0]; if (p && p.customdata !== undefined) select(p.customdata); });
if (window.ARCHIR_REPORT.live) {
  setInterval(async () => {
    try {
      const s = await (await fetch('stamp.json', {cache: 'no-store'})).json();
      if (s.stamp === D.stamp) return;
      D = unpack(await (await fetch('data.json', {cache: 'no-store'})).json());
      renderAll();
    } catch (e) { $('notes').textContent = 'the dashboard is not answering (stopped?): showing the last data'; }
  }, window.ARCHIR_REPORT.poll_ms);
}
// the ready signal (tests, benchmarks/report_scale.py, scripts/report_screenshot.sh): set once the first
// scatter and progress plots have drawn
const first = S.drawn; S.drawn = null;
Promise.all(first).then(() => {
  document.body.dataset.readyMs = performance.now().toFixed(1);  // ms since navigation start
  window.archirReady = true; document.body.dataset.ready = '1';
},
  (e) => { console.error('archir report: a plot failed to draw: ' + e); });
})();
"""
