"""Tests of ``archir.lower.verify_onnx`` (the one ONNX-vs-fx check) and of ONNX external data
(``to_onnx(g, external_data=...)``, models over protobuf's 2 GiB limit)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import archir
import archir.lower.onnx as lower_onnx
from archir import samples
from archir.errors import ArchirError, LoweringError
from archir.lower import OnnxMismatch, OnnxTooLarge, to_onnx, uses_external_data, verify_onnx, weight_bytes


def _corrupt(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """A copy of ``model`` with initializer ``name`` shifted by 1."""
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    (init,) = [t for t in bad.graph.initializer if t.name == name]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 1.0, name))
    return bad


# --------------------------------------------------------------------------- the verifier


@pytest.mark.parametrize("name", ["chain", "resnet_like", "mobilenet_like"])
def test_passes_on_a_good_graph(name):
    g = samples.SAMPLES[name]()
    rep = verify_onnx(g, atol=1e-5, rtol=1e-4)
    assert rep.ok, str(rep)
    assert [o.name for o in rep.outputs] == list(g.outputs)
    assert rep.max_abs <= 1e-5 and rep.n == 2 and rep.seed == 0 and rep.error is None
    assert rep.raise_if_failed() is rep
    d = rep.to_dict()
    assert d["ok"] and d["outputs"][0]["shape"] == [2, *g.node(g.outputs[0]).type.shape]


def test_model_proto_bytes_and_path_are_the_same_check(tmp_path):
    g = samples.chain()
    proto = to_onnx(g)
    onnx.save(proto, tmp_path / "net.onnx")
    for model, desc in ((proto, "ModelProto"), (proto.SerializeToString(), "bytes"),
                        (tmp_path / "net.onnx", str(tmp_path / "net.onnx"))):
        rep = verify_onnx(g, model, n=3, seed=7)
        assert rep.ok and rep.model == desc and rep.n == 3 and rep.seed == 7


def test_given_inputs_list_dict_tensor_and_values_kept():
    g = samples.chain()
    x = np.random.default_rng(1).standard_normal((4, *g.node("x").type.shape)).astype(np.float32)
    for inputs in (x, [x], {"x": x}, torch.from_numpy(x)):
        rep = verify_onnx(g, inputs=inputs, keep_values=True)
        assert rep.ok and rep.n == 4 and rep.seed is None
    with torch.no_grad():
        ref = archir.lower.to_fx(g).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(rep.fx_values[0], ref)
    np.testing.assert_allclose(rep.ort_values[0], ref, atol=1e-5, rtol=1e-4)


def test_fails_on_a_corrupted_model_naming_the_output():
    g = samples.chain()
    bad = _corrupt(to_onnx(g), "head.weight" if "head.weight" in {t.name for t in to_onnx(g).graph.initializer}
                   else to_onnx(g).graph.initializer[-1].name)
    rep = verify_onnx(g, bad)
    assert not rep.ok and rep.error is None
    assert rep.worst.name == "head" and rep.worst.ratio > 1 and not rep.worst.ok
    assert "FAIL" in str(rep) and "'head'" in rep.summary()
    with pytest.raises(OnnxMismatch) as e:
        rep.raise_if_failed(file="net.onnx")
    err = e.value
    assert isinstance(err, LoweringError) and isinstance(err, ArchirError)
    assert err.node == "head" and err.file == "net.onnx" and err.report is rep and err.exit_code == 1
    assert "differs from torch.fx" in str(err) and "how to fix" in str(err)


def test_tolerances_are_the_callers():
    g = samples.chain()
    rep = verify_onnx(g, atol=0.0, rtol=0.0)
    assert rep.atol == 0.0 and rep.rtol == 0.0
    # an exact match passes even at zero tolerance; any difference fails it
    assert rep.ok == (rep.max_abs == 0.0)
    assert verify_onnx(g, _corrupt(to_onnx(g), to_onnx(g).graph.initializer[0].name), atol=1e9, rtol=0).ok


def test_an_interface_that_does_not_fit_is_reported_not_raised():
    g = samples.chain()
    other = samples.resnet_like(in_shape=(3, 8, 8))
    rep = verify_onnx(g, to_onnx(other))
    assert not rep.ok and rep.error and "ONNX Runtime" in rep.summary()
    with pytest.raises(OnnxMismatch, match="could not verify"):
        rep.raise_if_failed()


@pytest.mark.parametrize("inputs, match", [
    ([], "0 input array"),
    ({"y": np.zeros((1, 3, 16, 16), np.float32)}, "no value for graph input"),
    (np.zeros((2, 3, 8, 8), np.float32), "has shape"),
    (np.zeros((3, 16, 16), np.float32), "has shape"),
])
def test_bad_inputs_are_lowering_errors(inputs, match):
    with pytest.raises(LoweringError, match=match) as e:
        verify_onnx(samples.chain(), inputs=inputs)
    assert e.value.hint


def test_bad_model_arguments_are_lowering_errors(tmp_path):
    g = samples.chain()
    with pytest.raises(LoweringError, match="no such ONNX model file"):
        verify_onnx(g, tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x07not a model at all")
    with pytest.raises(LoweringError, match="not an ONNX model") as e:
        verify_onnx(g, tmp_path / "junk.onnx")
    assert e.value.file == tmp_path / "junk.onnx"
    with pytest.raises(LoweringError, match="model must be None"):
        verify_onnx(g, 42)
    with pytest.raises(LoweringError, match="n must be a positive int"):
        verify_onnx(g, n=0)
    for bad in ({"atol": -1.0}, {"rtol": float("nan")}, {"atol": float("inf")}):
        with pytest.raises(LoweringError, match="must be a finite number >= 0"):
            verify_onnx(g, **bad)


# --------------------------------------------------------------------------- external data


def test_external_data_round_trip_on_a_small_model(tmp_path):
    g = samples.resnet_like()
    data = tmp_path / "net.onnx.data"
    proto = to_onnx(g, external_data=data, external_min_bytes=64)
    assert uses_external_data(proto) and data.is_file()
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    inline = [t for t in proto.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    assert all(t.raw_data == b"" and {e.key: e.value for e in t.external_data}["location"] == "net.onnx.data"
               for t in external)
    assert all(numpy_helper.to_array(t).nbytes < 64 for t in inline)
    assert data.stat().st_size >= sum(int(np.prod(t.dims)) * 4 for t in external)
    onnx.save(proto, tmp_path / "net.onnx")
    assert (tmp_path / "net.onnx").stat().st_size < data.stat().st_size
    # by path, and as a ModelProto told where its data is
    rep = verify_onnx(g, tmp_path / "net.onnx")
    assert rep.ok and rep.external_data
    assert verify_onnx(g, proto, external_data=data).ok
    assert verify_onnx(g, proto, external_data=tmp_path).ok
    # onnx loads it back to the same weights
    back = onnx.load(str(tmp_path / "net.onnx"))
    inline_proto = to_onnx(g)
    want = {t.name: numpy_helper.to_array(t) for t in inline_proto.graph.initializer}
    for t in back.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(t), want[t.name])
    # the checker ran on a temporary copy; nothing else is left beside the data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx", "net.onnx.data"]


def test_verify_builds_the_external_data_itself(tmp_path):
    g = samples.chain()
    rep = verify_onnx(g, external_data=tmp_path / "chain.onnx.data")
    assert rep.ok and rep.external_data and rep.model == "to_onnx"
    assert [p.name for p in tmp_path.iterdir()] == ["chain.onnx.data"]


def test_an_external_data_model_without_its_data_says_so(tmp_path):
    g = samples.chain()
    proto = to_onnx(g, external_data=tmp_path / "net.onnx.data", external_min_bytes=0)
    with pytest.raises(LoweringError, match="external data") as e:
        verify_onnx(g, proto)
    assert "external_data=" in e.value.hint
    onnx.save(proto, tmp_path / "net.onnx")
    (tmp_path / "net.onnx.data").unlink()
    rep = verify_onnx(g, tmp_path / "net.onnx")  # ORT cannot find the data: a report, not a traceback
    assert not rep.ok and "cannot load" in rep.error


def test_external_data_path_errors(tmp_path):
    g = samples.chain()
    with pytest.raises(LoweringError, match="does not exist"):
        to_onnx(g, external_data=tmp_path / "nope" / "net.onnx.data")
    with pytest.raises(LoweringError, match="existing folder"):
        to_onnx(g, external_data=tmp_path)
    with pytest.raises(LoweringError, match="external_min_bytes"):
        to_onnx(g, external_data=tmp_path / "d", external_min_bytes=-1)


def test_a_failed_lowering_removes_its_external_data(tmp_path, monkeypatch):
    def rejected(*args):
        raise LoweringError("the checker says no", rule="to_onnx")

    monkeypatch.setattr(lower_onnx, "_check_skeleton", rejected)
    with pytest.raises(LoweringError, match="checker says no"):
        to_onnx(samples.chain(), external_data=tmp_path / "net.onnx.data")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- over 2 GiB


def test_over_the_limit_without_external_data_is_refused_before_building(monkeypatch):
    g = samples.chain()
    monkeypatch.setattr(lower_onnx, "PROTOBUF_LIMIT", weight_bytes(g) - 1)
    built = []
    monkeypatch.setattr(lower_onnx, "_to_onnx", lambda *a, **k: built.append(1))
    with pytest.raises(OnnxTooLarge) as e:
        to_onnx(g)
    assert not built  # refused from the weights' size, before any weight was copied
    assert isinstance(e.value, LoweringError) and "2 GiB" in str(e.value) and "external_data" in e.value.hint
    assert "--external-data" in e.value.hint


def test_inline_bytes_past_the_limit_are_refused_while_lowering(monkeypatch, tmp_path):
    g = samples.chain()
    # the weights alone fit; with the names and dims of each initializer they do not
    monkeypatch.setattr(lower_onnx, "PROTOBUF_LIMIT", weight_bytes(g) + 16)
    with pytest.raises(OnnxTooLarge, match="2 GiB"):
        to_onnx(g)
    with pytest.raises(OnnxTooLarge, match="verify_onnx|2 GiB"):
        verify_onnx(g)
    # with external data the same graph lowers and verifies (its inline part is tiny) ...
    data = tmp_path / "net.onnx.data"
    assert verify_onnx(g, to_onnx(g, external_data=data, external_min_bytes=0), external_data=data).ok
    # ... unless too many small weights stay inline: the error says which knob to turn
    with pytest.raises(OnnxTooLarge, match="even with its weights of 1024 bytes or more") as e:
        to_onnx(g, external_data=data, external_min_bytes=1024)
    assert "external_min_bytes" in e.value.hint and not data.exists()


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return 0


@pytest.mark.slow
@pytest.mark.skipif(_available_ram() < 12 * 2**30, reason="needs about 8 GiB of free RAM (12 GiB available)")
def test_a_model_over_2_gib_exports_and_verifies_with_external_data(tmp_path):
    """Two 16384x16400 linear layers: 2.002 GiB of float32 weights.

    Needs about 8 GiB of RAM at its peak (the graph's weights, the fx module's copy, ONNX
    Runtime's copy) and 2 GiB of disk under ``tmp_path``; about 20 s on one core. The weights are
    rank-one outer products (no 540M random draws), with a ReLU between, so every weight matters.
    """
    d, h = 16384, 16400
    g = archir.Graph("big")
    x = g.input("x", (d,))
    y = g.add("linear", g.add("relu", g.add("linear", x, out_features=h, name="fc0"), name="r0"),
              out_features=d, name="fc1")
    g.set_outputs(y)
    rng = np.random.default_rng(0)

    def rank_one(o: int, i: int) -> np.ndarray:
        col = rng.uniform(0.5, 1.5, o).astype(np.float32)
        row = (rng.standard_normal(i) / np.sqrt(i)).astype(np.float32)
        return np.multiply.outer(col, row)

    g.set_params("fc0", weight=rank_one(h, d), bias=rng.normal(0, 0.1, h).astype(np.float32))
    g.set_params("fc1", weight=rank_one(d, h), bias=rng.normal(0, 0.1, d).astype(np.float32))
    g.validate()
    assert weight_bytes(g) > lower_onnx.PROTOBUF_LIMIT

    with pytest.raises(OnnxTooLarge, match="external"):
        to_onnx(g)
    data = tmp_path / "big.onnx.data"
    proto = to_onnx(g, external_data=data)
    assert uses_external_data(proto) and proto.ByteSize() < 2**20
    assert data.stat().st_size > lower_onnx.PROTOBUF_LIMIT
    onnx.save(proto, tmp_path / "big.onnx")
    del proto
    rep = verify_onnx(g, tmp_path / "big.onnx", atol=1e-5, rtol=1e-4)
    assert rep.ok and rep.external_data, str(rep)
    os.unlink(data)
