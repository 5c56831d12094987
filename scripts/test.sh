#!/usr/bin/env bash
# Install everything, then run the whole test suite. README's test command and .ci/run both call this.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/archir -k onnx).
#
# The report's browser tests (tests/search/test_report_browser.py, marker "browser") drive Debian's
# headless chromium + chromium-driver; the report draws with graphviz's dot. When one is missing and
# this runs as root with apt-get (CI containers), it is installed with apt first; without them (or if
# apt fails, or ARCHIR_NO_APT=1) those tests skip and say why -- the run never fails because of it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"

install_browser_tools() {
  local missing=()
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  command -v dot >/dev/null 2>&1 || missing+=(graphviz)
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "${ARCHIR_NO_APT:-0}" = 1 ] || [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "archir test: ${missing[*]} not installed (not root with apt-get, or ARCHIR_NO_APT=1): the browser tests" \
         "will skip" >&2
    return 0
  fi
  local log="${TMPDIR:-/tmp}/archir-apt.log"
  echo "archir test: installing ${missing[*]} with apt-get for the report's browser tests (log: $log)"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
       >"$log" 2>&1; then
    echo "archir test: apt-get could not install ${missing[*]} (see $log): the browser tests will skip" >&2
  fi
  return 0
}
install_browser_tools || true

WORKERS="${ARCHIR_TEST_WORKERS:-$(nproc 2>/dev/null || echo 2)}"
exec python -m pytest -n "$WORKERS" --durations=15 "$@"
