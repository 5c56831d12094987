#!/usr/bin/env bash
# Install everything, then run the whole test suite. README's test command and .ci/run both call this.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/archir -k onnx).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
WORKERS="${ARCHIR_TEST_WORKERS:-$(nproc 2>/dev/null || echo 2)}"
exec python -m pytest -n "$WORKERS" --durations=15 "$@"
