#!/usr/bin/env bash
# The GPU check (issue 15): under 6 minutes on one H100.
#   1. the gpu-marked tests;
#   2. training images/s (fp32, bf16, channels_last) of a ResNet-18-sized and a DARTS-V2-sized network,
#      search.train next to a hand-written PyTorch loop on the same device (benchmarks/train_throughput.py);
#   3. costmodels.measure latency on torch-cuda and ort-cuda, median with its IQR.
# Without CUDA it stops at once with exit code 2 and says so.
#   usage: scripts/gpu_check.sh            (from the repository root, with the venv active or in .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); run it on a GPU machine" >&2
  exit 2
fi
python -c "import torch; print('gpu_check on', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"

echo "== 1. gpu-marked tests"
timeout 150 python -m pytest -q -m gpu tests/

echo "== 2. training throughput (search.train vs plain PyTorch, same network, data and device)"
for net in resnet18 darts_v2; do
  imgs=4096; [ "$net" = darts_v2 ] && imgs=1536
  for opt in "" "--amp bf16" "--channels-last" "--amp bf16 --channels-last"; do
    # shellcheck disable=SC2086
    timeout 120 python benchmarks/train_throughput.py --device cuda --network "$net" --images "$imgs" \
      --batch-size 96 --repeats 3 $opt | grep -E "^train throughput|^ratio|^search.train|^plain"
  done
done

echo "== 3. costmodels.measure latency (batch 1 and 64), median and IQR"
timeout 120 python - <<'PY'
import importlib.util
import costmodels

spec = importlib.util.spec_from_file_location("tt", "benchmarks/train_throughput.py")
tt = importlib.util.module_from_spec(spec); spec.loader.exec_module(tt)
for net in ("resnet18", "darts_v2"):
    g = tt.build(net)
    for backend in ("torch-cuda", "ort-cuda"):
        for bs in (1, 64):
            try:
                lat = costmodels.measure(g, backend=backend, batch_size=bs, warmup=10, repeats=50)
                print(f"{net:<9} {backend:<10} batch {bs:>2}: median {lat.median_ms:.3f} ms, IQR {lat.iqr_ms:.3f} ms "
                      f"({lat.p25_ms:.3f}-{lat.p75_ms:.3f}), n={lat.n}")
            except Exception as e:  # e.g. onnxruntime-gpu not installed: say so, keep going
                print(f"{net:<9} {backend:<10} batch {bs:>2}: not measured: {type(e).__name__}: {str(e).splitlines()[0]}")
PY
