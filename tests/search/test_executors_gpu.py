"""Executors hand each worker one GPU (CUDA_VISIBLE_DEVICES), and archir search passes --device and
--train-opt through to every candidate's training; checked on the CPU (no GPU is touched)."""

from __future__ import annotations

import pytest

from search.executors import ExecutorError, ProcessExecutor, _init_worker, get_executor, worker_env


def test_init_worker_takes_one_gpu_from_the_queue(monkeypatch):
    import queue

    q = queue.SimpleQueue()
    q.put(7)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    _init_worker(1, q)
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "7"


def test_process_workers_each_see_only_their_gpu():
    with get_executor("process", workers=2, gpus=[3, 5]) as ex:
        assert ex.describe() == "process (2 workers, GPUs 3,5)"
        res = [r for _, r in ex.map_unordered(worker_env, [{"id": i} for i in range(4)])]
    by_pid = {}
    for r in res:
        by_pid.setdefault(r["pid"], set()).add(r["CUDA_VISIBLE_DEVICES"])
    assert all(len(v) == 1 for v in by_pid.values())  # one GPU per worker, for all its tasks
    assert set().union(*by_pid.values()) <= {"3", "5"} and len(by_pid) <= 2
    if len(by_pid) == 2:
        assert set().union(*by_pid.values()) == {"3", "5"}


def test_bad_gpu_lists_are_refused():
    for bad in ([], [-1], ["0"], [True]):
        with pytest.raises(ExecutorError, match="gpus must be GPU indices"):
            ProcessExecutor(gpus=bad)
    assert ProcessExecutor(gpus=[0, 1, 2]).workers == 3


def test_search_passes_device_and_train_options_through(tmp_path, capsys):
    from archir.cli.main import main
    from search.store import Store

    out = tmp_path / "run"
    assert main(["search", "--out", str(out), "--budget", "2c", "--epochs", "1", "--device", "cpu",
                 "--train-opt", "augment=true", "--train-opt", "cutout=4", "--no-export", "--quiet"]) == 0
    with Store.open(out) as st:
        cands = st.candidates()
        cfg = st.config
    assert [c.status for c in cands] == ["done", "done"]
    assert cfg["train"]["augment"] is True and cfg["train"]["cutout"] == 4 and "device" not in cfg["train"]
    capsys.readouterr()

    def err(*argv) -> str:
        assert main(["search", "--out", str(tmp_path / "bad"), "--budget", "1c", *argv]) == 2
        return capsys.readouterr().err

    assert "TrainConfig.amp" in err("--train-opt", "amp=fp8")
    assert "set by the search itself" in err("--train-opt", "device=cuda")
    assert "--gpus applies to --executor process" in err("--gpus", "0")
    assert "not a list of GPU indices" in err("--executor", "process", "--gpus", "a,b")
    import torch

    if not torch.cuda.is_available():
        assert "CUDA is not available" in err("--device", "cuda")
