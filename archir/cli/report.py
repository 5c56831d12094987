"""``archir report`` and ``archir dashboard``: a search run's page, as a file or served live.

Usage::

    archir report runs/demo -o report.html        # one self-contained HTML file (opens offline)
    archir report runs/demo -o r.html --max-details 500   # drawings for up to 500 candidates (default 150)
    archir dashboard runs/demo                    # http://127.0.0.1:8050/, refreshing as the store grows
    archir dashboard runs/demo --port 9000 --host 0.0.0.0   # reachable from other machines (a warning says so)

Both read the run's store without its lock (``search.report``), so they work on a finished, a
killed or a still-running search. The dashboard is read-only: it answers ``GET``/``HEAD`` on
``/`` (the page), ``/data.json`` (the blob) and ``/stamp.json`` (a digest the page polls every few
seconds, reloading the blob when it changes); any other method is refused with 405. It binds to
127.0.0.1 unless ``--host`` says otherwise. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from archir.cli.main import CLIError, Subcommand

__all__ = ["SUBCOMMANDS", "make_dashboard", "Dashboard"]

LOOPBACK = "127.0.0.1"


# --------------------------------------------------------------------------- report


def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="the run folder of 'archir search' (its --out)")
    p.add_argument("-o", "--output", default=None, metavar="HTML",
                   help="the page to write (default: RUN/report.html); written atomically")
    p.add_argument("--max-details", type=int, default=None, metavar="N",
                   help="precompute drawings and per-node costs for at most N candidates, the frontier first "
                        "(default 150)")


def _run_report(args: argparse.Namespace) -> int:
    from search.report import DEFAULT_MAX_DETAILS, write_report

    out = Path(args.output) if args.output else Path(args.run_dir) / "report.html"
    n = DEFAULT_MAX_DETAILS if args.max_details is None else args.max_details
    if n < 0:
        raise CLIError(f"--max-details {n}: must be >= 0", hint="pass --max-details 150")
    path, data = write_report(args.run_dir, out, max_details=n)
    c = data["run"]["counts"]
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, self-contained; {len(data['candidates'])} candidates: "
          f"{c['done']} done, {c['failed']} failed, {c['running'] + c['queued']} unfinished; run {data['run']['state']})")
    if data.get("details_note"):
        print(f"note: {data['details_note']}")
    if not data.get("graphviz"):
        print("note: graphviz's 'dot' is not on PATH: drawings use a simple layered layout "
              "(apt-get install graphviz for better ones)")
    return 0


# --------------------------------------------------------------------------- dashboard


class Dashboard:
    """The dashboard's state: the run folder and a cache of drawings (one per candidate), shared by requests."""

    def __init__(self, run_dir: str | Path, *, max_details: int | None = None, poll_s: float = 3.0) -> None:
        from search.report import DEFAULT_MAX_DETAILS

        self.run_dir = Path(run_dir)
        self.max_details = DEFAULT_MAX_DETAILS if max_details is None else int(max_details)
        self.poll_s = float(poll_s)
        self._cache: dict = {}
        self._lock = threading.Lock()  # one report at a time: the cache is a plain dict
        self._page: tuple[str, str] | None = None  # (stamp, html)

    def data(self) -> dict:
        """The current blob (drawings of candidates already seen come from the cache)."""
        from search.report import report_data

        with self._lock:
            return report_data(self.run_dir, max_details=self.max_details, cache=self._cache)

    def page(self) -> str:
        """The live page (re-rendered only when the run has changed)."""
        from search.report import render_html

        d = self.data()
        with self._lock:
            if self._page is None or self._page[0] != d["stamp"]:
                self._page = (d["stamp"], render_html(d, live=True, poll_s=self.poll_s))
            return self._page[1]

    def stamp(self) -> dict:
        """``{"stamp": ...}``: what the page polls to know when to reload the data."""
        from search.report import run_stamp

        return {"stamp": run_stamp(self.run_dir)}


def _handler(dash: Dashboard) -> type[BaseHTTPRequestHandler]:
    from search.report import _script_json  # the same JSON as the page embeds (no '<', NaN as null)

    class Handler(BaseHTTPRequestHandler):
        server_version = "archir-dashboard"

        def log_message(self, fmt, *a):  # quiet: one line per request would drown the terminal
            pass

        def _send(self, code: int, body: bytes, ctype: str, head_only: bool = False) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            if code == 405:
                self.send_header("Allow", "GET, HEAD")
            self.end_headers()
            if not head_only:
                self.wfile.write(body)

        def _get(self, head_only: bool) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path in ("/", "/index.html"):
                    self._send(200, dash.page().encode(), "text/html; charset=utf-8", head_only)
                elif path == "/data.json":
                    self._send(200, _script_json(dash.data()).encode(), "application/json", head_only)
                elif path == "/stamp.json":
                    self._send(200, json.dumps(dash.stamp()).encode(), "application/json", head_only)
                else:
                    self._send(404, b"not found: the dashboard serves /, /data.json and /stamp.json\n",
                               "text/plain; charset=utf-8", head_only)
            except Exception as e:  # the run folder vanished, a bad store: answer, keep serving
                msg = f"archir dashboard: cannot read {dash.run_dir}: {type(e).__name__}: {e}\n"
                self._send(500, msg.encode(), "text/plain; charset=utf-8", head_only)

        def do_GET(self):  # noqa: N802 (http.server's naming)
            self._get(False)

        def do_HEAD(self):  # noqa: N802
            self._get(True)

        def _refuse(self):
            self._send(405, b"the archir dashboard is read-only: GET and HEAD only\n", "text/plain; charset=utf-8")

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815

    return Handler


def make_dashboard(run_dir: str | Path, *, host: str = LOOPBACK, port: int = 8050, max_details: int | None = None,
                   poll_s: float = 3.0) -> ThreadingHTTPServer:
    """A dashboard server for ``run_dir`` bound to ``host:port`` (``port=0``: a free port); call ``serve_forever``.

    The run is read once first, so a folder that is not a run fails here (``StoreError``), not on the first request.

    Raises:
        StoreError: not a run folder. CLIError: the address cannot be bound.
    """
    dash = Dashboard(run_dir, max_details=max_details, poll_s=poll_s)
    dash.data()
    try:
        srv = ThreadingHTTPServer((host, int(port)), _handler(dash))
    except OSError as e:
        raise CLIError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                       hint="pick another --port (or --port 0 for any free one)") from None
    srv.daemon_threads = True
    srv.dashboard = dash  # type: ignore[attr-defined]
    return srv


def _add_dashboard(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="the run folder of 'archir search' (its --out); may still be running")
    p.add_argument("--port", type=int, default=8050, help="TCP port (default 8050; 0 picks a free one)")
    p.add_argument("--host", default=LOOPBACK,
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 serves every network "
                        "this machine is on -- the page shows the whole run to anyone who can reach it)")
    p.add_argument("--poll", type=float, default=3.0, metavar="SECONDS",
                   help="how often the page asks whether the run has changed (default 3)")
    p.add_argument("--max-details", type=int, default=None, metavar="N",
                   help="drawings and per-node costs for at most N candidates (default 150)")


def _run_dashboard(args: argparse.Namespace) -> int:
    srv = make_dashboard(args.run_dir, host=args.host, port=args.port, max_details=args.max_details, poll_s=args.poll)
    host, port = srv.server_address[:2]
    if args.host not in (LOOPBACK, "localhost", "::1"):
        print(f"warning: serving on {host}:{port}, not loopback: anyone who can reach this machine can read the "
              f"run (read-only); drop --host to serve on {LOOPBACK} only", file=sys.stderr)
    shown = LOOPBACK if host in ("0.0.0.0", "::") else host
    print(f"archir dashboard: http://{shown}:{port}/ for {args.run_dir} (read-only, refreshes every {args.poll:g} s; "
          f"bound to {host}" + ("; --host 0.0.0.0 serves other machines too" if host == LOOPBACK else "")
          + "; Ctrl-C stops it)", flush=True)
    try:
        srv.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        print("archir dashboard: stopped", file=sys.stderr)
    finally:
        srv.server_close()
    return 0


SUBCOMMANDS = [
    Subcommand("report", "write a search run's report: one self-contained HTML page", _add_report, _run_report,
               "Write one HTML file (plotly.js embedded: it opens without network) with the (error, cost) scatter "
               "and Pareto frontier, the candidates table, each candidate's drawing, per-node costs, lineage and "
               "preservation check, and the search's progress. Works on a finished, killed or running run."),
    Subcommand("dashboard", "serve a search run's report on 127.0.0.1, refreshing as the run grows", _add_dashboard,
               _run_dashboard,
               "Serve the report page of a run (finished or still running) over HTTP, read-only (GET only), on "
               "127.0.0.1:8050 by default; the page reloads its data when the store changes. Ctrl-C stops it."),
]
