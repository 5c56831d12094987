#!/usr/bin/env bash
# The README's picture of `archir report` (docs/report.png): a small real search (a hill-climbing
# morphism search on digits: a few candidates, 3 epochs each, about a minute on 2 cores), its report,
# and a screenshot of the page in headless Chromium with the best grown candidate selected. The browser
# code is search.report_browser, the one the browser tests use.
#   usage: scripts/report_screenshot.sh [RUN [PNG]]
#     RUN: an existing run folder to show instead of a new search; PNG: default docs/report.png
#   needs: chromium + chromedriver on PATH (Debian: apt-get install chromium chromium-driver), selenium;
#   run from the checkout with its virtualenv active (or .venv in the checkout).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi
PY="${PYTHON:-python}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
RUN="${1:-}"
PNG="${2:-$ROOT/docs/report.png}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
if [ -z "$RUN" ]; then
  RUN="$TMP/run"
  "$PY" -m archir.cli.main search --space start --strategy hillclimb --strategy-opt moves=2 --budget 6c \
    --round-size 1 --epochs 3 --dataset digits --out "$RUN" --no-export --quiet
fi
"$PY" - "$RUN" "$TMP/report.html" "$PNG" <<'PYEOF'
import sys

from search.report import write_report
from search.report_browser import screenshot

run, page, png = sys.argv[1:4]
path, data = write_report(run, page)
rows = [r for r in data["candidates"] if r["status"] == "done" and r["has_detail"]]
grown = [r for r in rows if r["parents"]] or rows
pick = min(grown, key=lambda r: (r["val_error"] is None, r["val_error"] or 0.0, r["id"]))["id"] if grown else None
screenshot(path, png, select=pick)
print(f"wrote {png} (the report of {run}" + (f", candidate #{pick} selected)" if pick is not None else ")"))
PYEOF
