"""costmodels.measure: structure of the result, argument checks, unavailable backends.

No test asserts a timing (the machine is shared); they check what a Latency must satisfy
whatever the load. GPU tests are marked ``gpu`` and skip cleanly without one.
"""

import json

import numpy as np
import pytest
import torch

import archir
import costmodels
from archir import samples
from costmodels import BACKENDS, BackendUnavailable, Latency, measure

FAST = {"warmup": 2, "repeats": 7}


def _has_ort_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def _check(lat: Latency, backend: str, batch_size: int = 1, repeats: int = FAST["repeats"]) -> None:
    assert isinstance(lat, Latency)
    assert lat.backend == backend and lat.batch_size == batch_size
    assert lat.n == repeats == len(lat.samples_ms)
    assert all(s > 0 for s in lat.samples_ms)
    assert 0 < lat.p25_ms <= lat.median_ms <= lat.p75_ms
    assert min(lat.samples_ms) <= lat.median_ms <= max(lat.samples_ms)
    assert lat.iqr_ms >= 0
    assert lat.first_run_ms > 0
    assert isinstance(lat.device, str) and lat.device
    assert {"python", "numpy", "torch", "onnxruntime"} <= set(lat.versions)
    assert lat.versions["torch"] == torch.__version__
    json.dumps(lat.to_dict())
    assert backend in str(lat)


@pytest.mark.parametrize("backend", ["ort-cpu", "torch-cpu"])
def test_cpu_backends(backend):
    lat = measure(samples.resnet_like(), backend=backend, threads=1, **FAST)
    _check(lat, backend)
    assert lat.device.startswith("cpu: ") and lat.threads == 1


def test_batch_size_and_default_threads():
    lat = measure(samples.chain(), backend="ort-cpu", batch_size=3, warmup=0, repeats=3)
    _check(lat, "ort-cpu", batch_size=3, repeats=3)
    assert lat.threads is None


def test_torch_threads_are_restored():
    before = torch.get_num_threads()
    measure(samples.chain(), backend="torch-cpu", threads=1, **FAST)
    assert torch.get_num_threads() == before
    measure(samples.chain(), backend="torch-cpu", threads=before + 1, **FAST)
    assert torch.get_num_threads() == before


def test_multi_input_multi_output_graph():
    g = archir.Graph("two_in_two_out")
    x = g.input("x", shape=(3, 8, 8))
    y = g.input("y", shape=(3, 8, 8))
    s = g.add("add", g.add("conv2d", x, out_channels=3, kernel_size=3, padding=1), y, name="s")
    g.set_outputs(s, g.add("relu", s, name="r"))
    g.init_params(0)
    for backend in ("ort-cpu", "torch-cpu"):
        _check(measure(g, backend=backend, **FAST), backend)


def test_bad_backend_lists_the_options():
    with pytest.raises(ValueError) as e:
        measure(samples.chain(), backend="onnx-tpu")
    msg = str(e.value)
    assert "onnx-tpu" in msg and all(b in msg for b in BACKENDS)
    with pytest.raises(ValueError, match="ort-cpu"):
        measure(samples.chain(), backend=None)


@pytest.mark.parametrize("kw", [{"repeats": 0}, {"warmup": -1}, {"batch_size": 0}, {"threads": 0},
                                {"repeats": 2.5}, {"seed": -1}, {"threads": True}])
def test_bad_counts(kw):
    name = next(iter(kw))
    with pytest.raises(ValueError, match=name):
        measure(samples.chain(), backend="ort-cpu", **kw)


def test_supernet_must_be_derived_first():
    cands = [{"name": "a", "ops": [{"op": "relu"}]}, {"name": "b", "ops": []}]
    g = archir.Graph("sup")
    g.set_outputs(g.add("choice", g.input("x", shape=(2, 4, 4)), candidates=cands, name="ch"))
    g.init_params(0)
    for backend in ("ort-cpu", "torch-cpu"):
        with pytest.raises(archir.LoweringError, match="ch"):
            measure(g, backend=backend, **FAST)


def test_backend_unavailable_is_a_runtime_error():
    assert issubclass(BackendUnavailable, RuntimeError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: torch-cuda is available")
def test_torch_cuda_unavailable_here():
    with pytest.raises(BackendUnavailable) as e:
        measure(samples.chain(), backend="torch-cuda")
    assert "CUDA build of torch" in str(e.value) and "torch-cpu" in str(e.value)


@pytest.mark.skipif(_has_ort_cuda(), reason="onnxruntime-gpu is installed: ort-cuda is available")
def test_ort_cuda_unavailable_here():
    with pytest.raises(BackendUnavailable) as e:
        measure(samples.chain(), backend="ort-cuda")
    assert "pip install archir[gpu]" in str(e.value) and "CUDAExecutionProvider" in str(e.value)


def test_fingerprints_and_versions():
    assert costmodels.cpu_fingerprint().startswith("cpu: ")
    assert costmodels.gpu_fingerprint().startswith("gpu: ")  # names parts 'unknown' without a GPU
    v = costmodels.versions()
    assert v["numpy"] == np.__version__ and set(v) == {"python", "numpy", "torch", "onnxruntime"}


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_torch_cuda():
    lat = measure(samples.resnet_like(), backend="torch-cuda", batch_size=4, **FAST)
    _check(lat, "torch-cuda", batch_size=4)
    assert lat.device.startswith("gpu: ") and torch.cuda.get_device_name(0) in lat.device
    assert lat.versions["cuda"] == torch.version.cuda


@pytest.mark.gpu
def test_ort_cuda():
    if not _has_ort_cuda():
        pytest.skip("onnxruntime-gpu is not installed (pip install archir[gpu])")
    lat = measure(samples.resnet_like(), backend="ort-cuda", batch_size=4, **FAST)
    _check(lat, "ort-cuda", batch_size=4)
    assert lat.device.startswith("gpu: ")


@pytest.mark.gpu
def test_cuda_measure_leaves_cpu_threads_alone():
    before = torch.get_num_threads()
    measure(samples.chain(), backend="torch-cuda", threads=1, **FAST)
    assert torch.get_num_threads() == before


def test_iobinding_path_runs_on_cpu():
    # ort-cuda's IOBinding code path, exercised on the CPU so that it is tested without a GPU
    from costmodels.measure import _inputs, _measure_ort

    g = samples.resnet_like()
    feeds = _inputs(g, 2, 0)
    first, runs = _measure_ort(g, False, feeds, 1, 4, 1, iobinding=True)
    assert first > 0 and len(runs) == 4 and all(t > 0 for t in runs)
