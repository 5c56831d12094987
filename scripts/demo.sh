#!/usr/bin/env bash
# Install everything, then run archir's main job: build a sample network, save it, lower it to
# torch.fx, export ONNX, verify it under ONNX Runtime and print the summary (archir demo --help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
exec archir demo "$@"
