"""archir train: the DARTS recipe's auxiliary loss and drop-path ramp (read back from the log), checkpoints,
kill + --resume giving the uninterrupted run's final weights, the exports, and every bad input one clear error."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import archir
from archir.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def aux_net(path: Path, p: float = 0.3, weight: float = 0.7) -> Path:
    """A small digits network with a drop_path node and an auxiliary head (weight ``weight``)."""
    g = archir.Graph("auxnet")
    x = g.input("x", shape=(1, 8, 8))
    h = g.add("relu", g.add("batchnorm2d", g.add("conv2d", x, out_channels=8, kernel_size=3, padding=1, name="c")))
    h = g.add("drop_path", h, p=p, name="dp")
    logits = g.add("linear", g.add("flatten", g.add("global_avgpool", h)), out_features=10, name="head")
    a = g.add("linear", g.add("flatten", g.add("global_avgpool", x, name="aux.gap"), name="aux.flat"),
              out_features=10, name="aux.fc")
    g.set_outputs(logits, g.add("auxiliary", a, weight=weight, name="aux"))
    g.init_params(seed=0).validate()
    return archir.save(g, path)


def _log(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def net(tmp_path_factory) -> Path:
    return aux_net(tmp_path_factory.mktemp("net") / "net.json")


def test_darts_recipe_applies_aux_weight_and_drop_path_ramp(net, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(net), "--epochs", "4", "--recipe", "darts", "--device", "cpu", "-o", str(out),
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    log = _log(out)
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    for r in log:
        # the recipe's 0.4 replaced the graph's own 0.7, and the total is main + 0.4 * aux
        assert r["aux_weight"] == {"1": 0.4}
        assert r["train_loss"] == pytest.approx(r["main_loss"] + 0.4 * r["aux_loss"]["1"], rel=1e-5)
        assert r["aux_loss"]["1"] > 0.1
        # drop-path 0.2 (not the graph's 0.3), linearly ramped from 0 at the start of each epoch
        assert r["drop_path"] == [pytest.approx(0.2 * (r["epoch"] - 1) / 4)]
        assert r["images"] == 1079 and r["images_per_s"] > 0 and 0 <= r["train_acc"] <= 1
    assert [r["lr"] for r in log] == pytest.approx([0.025 * 0.5 * (1 + np.cos(np.pi * e / 4)) for e in (1, 2, 3, 4)])
    res = json.loads((out / "result.json").read_text())
    assert res["config"]["batch_size"] == 96 and res["config"]["cutout"] == 16 and res["config"]["grad_clip"] == 5.0
    assert f"final test accuracy {res['metrics']['test_acc']:.4f}" in text
    trained = archir.load(out / "net.json")
    assert trained.outputs == archir.load(net).outputs  # the trained graph keeps its auxiliary head
    import onnx

    m = onnx.load(str(out / "net.onnx"))
    assert len(m.graph.output) == 1  # the inference network: the head and drop-path stripped


def test_plain_recipe_keeps_the_graph_s_own_rates(net, tmp_path):
    out = tmp_path / "plain"
    assert main(["train", str(net), "--epochs", "2", "--recipe", "plain", "--device", "cpu", "-o", str(out),
                 "--quiet", "--no-export"]) == 0
    log = _log(out)
    assert [r["aux_weight"] for r in log] == [{"1": 0.7}] * 2
    assert [r["drop_path"] for r in log] == [[0.0], [pytest.approx(0.15)]]
    assert log[0]["train_loss"] == pytest.approx(log[0]["main_loss"] + 0.7 * log[0]["aux_loss"]["1"], rel=1e-5)
    assert not (out / "net.onnx").exists()


def _weights(out: Path) -> dict:
    g = archir.load(out / "net.json")
    return {(n.id, k): v for n in g.nodes() for k, v in {**n.params, **n.buffers}.items()}


def test_kill_and_resume_give_the_uninterrupted_final_weights(net, tmp_path):
    common = ["train", str(net), "--epochs", "5", "--recipe", "darts", "--device", "cpu", "--quiet", "--no-export"]
    full = tmp_path / "full"
    assert main([*common, "-o", str(full)]) == 0
    # a real kill: SIGKILL as soon as the first checkpoint is there
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "archir.cli.main", *common, "-o", str(run)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (run / "checkpoint.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    done = json.loads((run / "checkpoint.json").read_text())["epoch"]
    assert 1 <= done < 5 and not (run / "net.json").exists()
    assert main([*common, "-o", str(run), "--resume"]) == 0
    a, b = _weights(full), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))  # bit-identical
    assert [r["epoch"] for r in _log(run)] == [1, 2, 3, 4, 5]
    assert [r["train_loss"] for r in _log(run)] == [r["train_loss"] for r in _log(full)]


def test_resume_from_every_epoch_in_process(net, tmp_path):
    """Stop after epoch k (a KeyboardInterrupt out of the epoch callback), resume: the same weights."""
    import archir.cli.train as cli_train

    common = ["train", str(net), "--epochs", "3", "--recipe", "darts", "--device", "cpu", "--quiet", "--no-export"]
    full = tmp_path / "full"
    assert main([*common, "-o", str(full)]) == 0
    real = cli_train._write_checkpoint
    for k in (1, 2):
        run = tmp_path / f"stop{k}"

        def stop(out, state, options, k=k):
            real(out, state, options)
            if state.epoch == k:
                raise KeyboardInterrupt

        cli_train._write_checkpoint = stop
        try:
            assert main([*common, "-o", str(run)]) == 130
        finally:
            cli_train._write_checkpoint = real
        assert json.loads((run / "checkpoint.json").read_text())["epoch"] == k
        assert main([*common, "-o", str(run), "--resume"]) == 0
        a, b = _weights(full), _weights(run)
        assert all(np.array_equal(a[key], b[key]) for key in a)


def test_bad_inputs_are_one_clear_error(net, tmp_path, capsys):
    def err(*argv) -> str:
        assert main(["train", *argv]) == 2
        text = capsys.readouterr().err
        assert text.startswith("archir: error: ") and "how to fix" in text and "Traceback" not in text
        return text

    out = tmp_path / "o"
    assert "no checkpoint to resume" in err(str(net), "--epochs", "1", "-o", str(out), "--resume")
    assert "fp16 autocast needs a CUDA device" in err(str(net), "--epochs", "1", "-o", str(out), "--device", "cpu", "--amp", "fp16")
    assert "TrainConfig.device = 'tpu'" in err(str(net), "--epochs", "1", "-o", str(out), "--device", "tpu")
    assert "no such file" in err(str(net), "--epochs", "1", "-o", str(out), "--device", "cpu",
                                 "--dataset", str(tmp_path / "missing.npz"))
    assert "--epochs must be >= 1" in err(str(net), "--epochs", "0", "-o", str(out))
    assert main(["train", str(net), "--epochs", "1", "--device", "cpu", "-o", str(out), "--quiet",
                 "--no-export"]) == 0
    capsys.readouterr()
    assert "holds the checkpoint" in err(str(net), "--epochs", "1", "-o", str(out), "--device", "cpu")
    assert "epochs was 1, now 3" in err(str(net), "--epochs", "3", "-o", str(out), "--device", "cpu", "--resume")
    assert "has all 1 epochs" in err(str(net), "--epochs", "1", "-o", str(out), "--device", "cpu", "--resume")


def test_cuda_without_a_gpu_is_a_clear_error(net, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert main(["train", str(net), "--epochs", "1", "-o", str(tmp_path / "o"), "--device", "cuda"]) == 2
    text = capsys.readouterr().err
    assert "CUDA is not available" in text and "--device cpu" in text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _epochs_of(bar) -> None:
    for epoch in (1, 2):
        for step in (1, 2, 3):
            bar.step(epoch, step, 3, {"images": 96 * step, "seconds": 0.5 * step, "loss": 2.0 / epoch, "acc": 0.25})
    bar.close()


def test_progress_is_a_rich_bar_on_a_terminal_and_a_line_per_epoch_elsewhere():
    pytest.importorskip("rich")
    from archir.cli.train import _Bar

    term = _Terminal()
    _epochs_of(_Bar(False, file=term))
    text = term.getvalue()
    assert "\x1b[" in text  # drawn live, with terminal control codes
    assert "epoch 1" in text and "epoch 2" in text and "3/3" in text and "192 img/s" in text
    log = io.StringIO()  # a log file or CI: no live bar, one finished line per epoch
    _epochs_of(_Bar(False, file=log))
    assert log.getvalue().splitlines() == [
        "epoch 1 3/3  loss 2.0000  acc 0.250  192 img/s  eta 0s", "epoch 2 3/3  loss 1.0000  acc 0.250  192 img/s  eta 0s"]
    quiet = _Terminal()
    _epochs_of(_Bar(True, file=quiet))
    assert quiet.getvalue() == ""
