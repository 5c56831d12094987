#!/usr/bin/env bash
# Create (or reuse) the project virtualenv at $ARCHIR_VENV (default: .venv) and install archir with
# everything it needs. Sourced by scripts/demo.sh and scripts/test.sh, so both install the same way.
#
# PyTorch: we pin torch 2.14.1 + torchvision 0.29.1 (torchvision's models are test material for the
# frontends). On machines that keep these wheels on local disk pip takes them from there; elsewhere
# pip downloads them from PyPI. Override with ARCHIR_TORCH_SPEC="torch==2.13.0" for a CPU-only build
# without torchvision.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ARCHIR_VENV:-$ROOT/.venv}"
PY="${ARCHIR_PYTHON:-python3}"
TORCH_SPEC="${ARCHIR_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "archir setup: needs Python >= 3.11 ($PY is $("$PY" --version 2>&1)); set ARCHIR_PYTHON=/path/to/python3.11" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "archir setup: creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
# Re-install only when the project's requirements changed (a stamp of pyproject.toml + this script).
STAMP="$VENV/.archir-setup-stamp"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -d' ' -f1) $TORCH_SPEC"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "archir setup: installing $TORCH_SPEC and archir[dev] into $VENV (a minute or two the first time)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install --quiet $TORCH_SPEC
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[dev]"
  echo "$WANT" > "$STAMP"
else
  echo "archir setup: $VENV is up to date"
fi
export PATH="$VENV/bin:$PATH"
