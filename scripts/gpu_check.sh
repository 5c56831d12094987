#!/usr/bin/env bash
# The GPU check (issue 15): under 6 minutes on one H100.
#   1. the gpu-marked tests;
#   2. training images/s (fp32, bf16, channels_last) of a ResNet-18-sized and a DARTS-V2-sized network,
#      search.train next to a hand-written PyTorch loop on the same device (benchmarks/train_throughput.py);
#   3. costmodels.measure latency on torch-cuda and ort-cuda, median with its IQR;
#   4. one-shot DARTS search steps/s (first order, DARTS' 8-cell C=16 search network, batch 64, 3x32x32
#      synthetic images resident on the GPU) in fp32 and bf16 autocast (search.oneshot on --device cuda).
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
timeout 210 python -m pytest -q -m gpu tests/

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

echo "== 4. one-shot DARTS search steps/s on the GPU (fp32, bf16)"
timeout 120 python - <<'PY'
import time

import numpy as np
import torch

from search.data import Dataset
from search.experiment import ExperimentConfig
from search.oneshot import ONESHOT
from search.spaces import get_space

bs, nb, cells, channels = 64, 8, 8, 16  # DARTS' search network (Liu et al. 2019) at CIFAR size
rng = np.random.default_rng(0)
x = rng.standard_normal((2 * bs * nb, 3, 32, 32)).astype(np.float32)
y = rng.integers(0, 10, len(x)).astype(np.int64)
h = len(x) // 2
ds = Dataset("synthetic-cifar", x[:h], y[:h], x[h:], y[h:], x[:bs], y[:bs], 10, (0.0,) * 3, (1.0,) * 3,
             tuple(map(str, range(10))), "gpu_check", 0)
space = get_space("darts", input_shape=(3, 32, 32), num_classes=10, cells=cells, channels=channels)
for amp in (None, "bf16"):
    drv = ONESHOT["darts"](space, ds, ExperimentConfig(space="darts"), seed=0, device="cuda", amp=amp,
                           max_batches=nb, batch_size=bs)
    drv.step()  # warm-up: cuDNN autotuning, the caching allocator
    torch.cuda.synchronize()
    t0, reps = time.perf_counter(), 2
    for _ in range(reps):
        drv.step()  # nb batch pairs (an architecture and a weight update each) and a validation pass
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / (reps * nb)
    print(f"one-shot darts ({cells} cells, C={channels}, batch {bs}) on {torch.cuda.get_device_name(drv.device)} "
          f"{amp or 'fp32':<4}: {1 / dt:6.2f} search steps/s ({2 * bs / dt:7.0f} images/s)")
PY
