#!/usr/bin/env bash
# Install everything, then run archir's main job: a search on the bundled digits dataset
# (a few minutes on 2 CPU cores) that ends with the Pareto gallery and an exported,
# ONNX-Runtime-verified ONNX model of the best candidate. Arguments go to `archir search`
# (e.g. --budget 10m, --strategy random, --executor serial, --out runs/mine).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
OUT="runs/demo-$(date +%Y%m%d-%H%M%S)"
exec archir search --space chain --strategy evolution --dataset digits --budget 3m \
  --objective latency:ort-cpu --executor process --out "$OUT" "$@"
